"""benchmarks.profile's step budget, dpnn beside PyTorch layer by layer: its structure only.

Tiny batches and two steps: nothing here is a timing claim (speed is measured in benchmarks/).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED_CNN = ["Conv2D", "Activation", "MaxPool2D", "Conv2D", "Activation", "MaxPool2D", "Flatten", "Dense",
            "Activation", "Dropout", "Dense"]
NO_TORCH = "PyTorch is the optional reference: pip install torch==2.13.0"


def kinds(budget: dict) -> list[str]:
    return [r["layer"].split("(")[0] for r in budget["layers"]]


def check_budget(b: dict) -> None:
    """Every layer once, by index; the step is the parts plus the unattributed remainder."""
    n = len(b["layers"])
    assert [r["index"] for r in b["layers"]] == list(range(n))
    assert sorted(b["execution_order"]) == list(range(n))
    parts = sum(r["forward_s"] + r["backward_s"] for r in b["layers"]) + b["loss_s"] + b["optimizer_s"]
    assert b["step_s"] == pytest.approx(parts + b["unattributed_s"], rel=1e-12, abs=1e-12)
    assert min(min(r["forward_s"], r["backward_s"]) for r in b["layers"]) >= 0
    assert b["loss_s"] > 0 and b["optimizer_s"] > 0 and b["plain_step_s"] > 0 and b["steps"] == 2


def expected_ratio(a: float, b: float):
    return a / b if b > 0 else None


def test_step_budget_pairs_every_layer_with_pytorch():
    pytest.importorskip("torch", reason=NO_TORCH)
    from benchmarks.profile import step_budgets
    from benchmarks.torch_ref import LAYER_PAIRS
    res = step_budgets("seed-cnn", batch=4, steps=2, warmup=1)
    d, t, c = res["dpnn"], res["torch"], res["comparison"]
    assert kinds(d) == SEED_CNN and kinds(t) == [LAYER_PAIRS[k] for k in SEED_CNN]
    assert d["execution_order"][:3] == [0, 2, 1] and t["execution_order"] == list(range(11))
    check_budget(d)
    check_budget(t)
    assert [r["index"] for r in c["layers"]] == list(range(11))
    for cr, dr, tr in zip(c["layers"], d["layers"], t["layers"]):
        assert (cr["dpnn_layer"], cr["torch_layer"]) == (dr["layer"], tr["layer"])
        assert cr["forward"] == expected_ratio(dr["forward_s"], tr["forward_s"])
        assert cr["backward"] == expected_ratio(dr["backward_s"], tr["backward_s"])
        assert cr["total"] == expected_ratio(dr["forward_s"] + dr["backward_s"], tr["forward_s"] + tr["backward_s"])
    for key in ("loss_s", "optimizer_s", "step_s", "plain_step_s"):
        assert c[key] == expected_ratio(d[key], t[key]), key


def run_profile(tmp_path, *args, prelude: str = "") -> tuple[str, dict]:
    out = tmp_path / "profile.json"
    argv = ["--batch-size", "4", "--steps", "2", "--no-concurrency", "--json", str(out), *args]
    code = f"import sys; {prelude}from benchmarks.profile import main; sys.exit(main({argv!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_profile_prints_and_writes_both_frameworks(tmp_path):
    pytest.importorskip("torch", reason=NO_TORCH)
    stdout, res = run_profile(tmp_path)
    assert res["torch"].startswith("2.") and "dpnn runs 0 2 1 3 5 4 6 7 8 9 10 (Model.execution_order)" in stdout
    lines = stdout.splitlines()
    table = [line for line in lines if line[:2].strip().isdigit() and "/" in line]
    assert [line.split()[1] for line in table] == [f"{k}/{v}" for k, v in zip(
        SEED_CNN, ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU",
                   "Dropout", "Linear"])]
    assert all(len(line.split()) == 11 for line in table)          # index, pair, 6 ms, 3 ratios
    for row in ("layers, sum", "loss, fwd + bwd", "optimizer step", "unattributed", "= step with the hooks",
                "step without hooks"):
        assert any(line.strip().startswith(row) for line in lines), row
    for name in ("dpnn", "torch"):
        check_budget(res["step"][name])
    assert [r["index"] for r in res["layers"]] == res["step"]["dpnn"]["execution_order"]   # as before
    assert len(res["step"]["comparison"]["layers"]) == 11


@pytest.mark.slow
@pytest.mark.parametrize("case, prelude, args, note", [
    ("torch absent", "sys.modules['torch'] = None; ", (), "pip install torch"),
    ("no PyTorch twin", "", ("--model", "mlp"), None),
])
def test_profile_without_pytorch_keeps_the_dpnn_table(tmp_path, case, prelude, args, note):
    if note is None:
        pytest.importorskip("torch", reason=NO_TORCH)
        note = "no mlp twin"
    stdout, res = run_profile(tmp_path, *args, prelude=prelude)
    lines = stdout.splitlines()
    assert note in lines[0] and "ms per step" in lines[1] and "layer (execution order)" in lines[3]
    assert res["torch"] is None and res["step"]["torch"] is None and res["step"]["comparison"] is None
    assert note in res["torch_note"]
    check_budget(res["step"]["dpnn"])
    assert sum(r["share"] for r in res["layers"]) == pytest.approx(1.0)
