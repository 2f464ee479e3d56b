"""The scaling benchmark runs end to end with tiny settings (it measures nothing here)."""
import contextlib
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpnn.layers import walk_layers

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scaling_benchmark_takes_colour_input_with_pytorch_beside(tmp_path):
    """--input 32x32x3: dpnn and (when installed) PyTorch train seed-cnn on colour images."""
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--workers", "2", "--threads-per-worker", "1",
           "--batch-size", "8", "--steps", "2", "--warmup", "1", "--no-weak", "--input", "32x32x3",
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["input"] == [32, 32, 3] and "input 32x32x3" in proc.stdout
    assert res["flops_per_sample"] > 24_995_328                 # more pixels and channels than 28x28x1
    assert {r["batch"] for r in res["rows"]} == {8} and all(r["samples_per_s"] > 0 for r in res["rows"])


@pytest.mark.slow
def test_data_path_benchmark_compares_copied_and_placed_batches():
    cmd = [sys.executable, "-m", "benchmarks.data_path", "--inputs", "8x8x1,8x8x3", "--batch-size", "16",
           "--steps", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "copied: data" in lines[1] and [line.split()[0] for line in lines[2:]] == ["8x8x1", "8x8x3"]


@pytest.mark.slow
def test_scaling_benchmark_writes_table_json_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "out.json", tmp_path / "scaling.png"
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--workers", "1,2", "--threads-per-worker", "1",
           "--batch-size", "16", "--steps", "2", "--warmup", "1", "--no-torch",
           "--json", str(out), "--plot", str(png)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "samples/s" in proc.stdout and "targets" in proc.stdout
    res = json.loads(out.read_text())
    assert res["flops_per_sample"] == 24_995_328          # seed-cnn, counted from its layer shapes
    assert res["peak_gflops_per_core"] > 0
    if res["cores"] > 1:                                   # all cores at once vs one, measured in the run
        assert set(res["all_core_scaling"]) == {"gemm", "stream"} and min(res["all_core_scaling"].values()) > 0
    rows = {(r["kind"], r["workers"], r["threads"], r["batch"]) for r in res["rows"]}
    assert rows == {("strong", 1, 1, 16), ("strong", 2, 1, 16), ("weak", 2, 1, 32)}
    for r in res["rows"]:
        for key in ("samples_per_s", "speedup", "efficiency", "gflops", "peak_fraction", "startup_s",
                    "mb_per_worker", "mb_total", "serial"):
            assert r[key] >= 0, key
        assert {"compute", "wait", "reduce", "optimizer"} <= set(r["times"])
        assert len(r["worker_peak_mb"]) == r["workers"]
    assert {(b["batch"], b["threads"]) for b in res["local"]} == {(16, 1), (16, 2)}
    assert res["projection"]["assumptions"] and res["projection"]["curves"]
    assert [t["id"] for t in res["targets"]] == ["1a", "1b", "2a", "2b", "3", "4", "5a", "5b"]
    assert all(t["met"] is None for t in res["targets"])              # batch 16, no PyTorch: nothing applies
    assert "serial = step time in which no worker computes" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_scaling_benchmark_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--workers", "0,x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--workers" in proc.stderr


@pytest.mark.parametrize("module, argv, named", [
    ("scaling", ["--workers", "0,x"], "--workers"),
    ("scaling", ["--threads-per-worker", ""], "--threads-per-worker"),
    ("scaling", ["--steps", "0"], "--steps"),
    ("scaling", ["--input", "28x28x2"], "--input"),
    ("scaling", ["--backend", "mpi", "--workers", "auto"], "--workers auto"),
    ("mpi_scaling", ["--ranks", "1,-2"], "--ranks"),
    ("mpi_scaling", ["--warmup", "-1"], "--warmup"),
    ("mpi_scaling", ["--batch-size", "0"], "--batch-size"),
    ("mpi_scaling", ["--model", "resnet-9000"], "--model"),
])
def test_benchmarks_refuse_bad_arguments_naming_the_flag(module, argv, named, capsys):
    parse_args = importlib.import_module(f"benchmarks.{module}").parse_args
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and named in capsys.readouterr().err


def test_both_scaling_benchmarks_read_the_shared_flags_alike():
    from benchmarks import mpi_scaling, scaling
    argv = ["--workers", "1,2,4", "--steps", "7", "--warmup", "0", "--model", "mlp", "--json", "x.json"]
    s, m = scaling.parse_args(argv), mpi_scaling.parse_args(argv)
    assert s.workers == m.workers == [1, 2, 4]
    assert (s.steps, s.warmup, s.model, s.json) == (m.steps, m.warmup, m.model, m.json) == (7, 0, "mlp", "x.json")
    assert scaling.parse_args(["--workers", " auto"]).workers == "auto"
    assert scaling.parse_args([]).input == (28, 28, 1) and scaling.parse_args(["--input", "32x32"]).input == (32, 32, 1)


def test_scaling_hands_the_mpi_backend_to_mpi_scaling(monkeypatch):
    from benchmarks import mpi_scaling, scaling
    seen = []
    monkeypatch.setattr(mpi_scaling, "main", lambda argv: seen.append(mpi_scaling.parse_args(argv)) or 0)
    assert scaling.main(["--backend", "mpi", "--ranks", "1,2", "--workers", "2,3", "--batch-size", "32,64",
                         "--model", "mlp", "--steps", "3", "--warmup", "1"]) == 0
    a = seen[0]
    assert (a.ranks, a.workers, a.batch_size, a.threads_per_worker) == ([1, 2], [2, 3], 32, 1)
    assert (a.model, a.steps, a.warmup, a.json) == ("mlp", 3, 1, None)


def test_configurations_take_turns_in_rounds():
    from benchmarks.measure import interleaved
    calls = []

    class Fake:
        batch = 8

        def __init__(self, name):
            self.name = name

        def turn(self):
            calls.append((self.name, "turn"))
            return contextlib.nullcontext()

        def step(self, i):
            calls.append((self.name, i))
            return {"compute": 0.001}

        def result(self):
            return {"name": self.name}

    res = interleaved({"a": Fake("a"), "b": Fake("b")}, steps=5, warmup=1, rounds=2)
    # warm-up first, then rounds of 3 and 2 steps, each runner in turn, the order rotating
    turns = [i for i, c in enumerate(calls) if c[1] == "turn"]
    assert [c for c in calls if c[1] != "turn"] == [
        ("a", 0), ("b", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3),
        ("b", 4), ("b", 5), ("a", 4), ("a", 5)]
    assert [calls[i + 1][0] for i in turns] == ["a", "b", "a", "b", "b", "a"]   # a turn before each run
    assert res["a"]["steps"] == res["b"]["steps"] == 5 and res["b"]["name"] == "b"
    assert res["a"]["times"]["compute"] == pytest.approx(0.001)


@pytest.mark.slow
def test_pytorch_baseline_runs_when_installed():
    pytest.importorskip("torch", reason="PyTorch is the optional reference: pip install torch==2.13.0")
    from benchmarks.measure import TorchRunner, interleaved
    res = interleaved({"t": TorchRunner(1, 8)}, steps=2, warmup=1)
    assert res["t"]["samples_per_s"] > 0 and res["t"]["threads"] == 1


@pytest.mark.slow
def test_profile_reports_layers_gemms_and_concurrency(tmp_path):
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "-m", "benchmarks.profile", "--batch-size", "4", "--steps", "2", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    names = [r["layer"].split("(")[0] for r in res["layers"]]
    assert names[:3] == ["Conv2D", "MaxPool2D", "Activation"]           # execution order
    assert sum(r["share"] for r in res["layers"]) == pytest.approx(1.0)
    gemms = {g["gemm"]: (g["M"], g["K"], g["N"]) for g in res["gemms"]}
    assert gemms["3 Conv2D forward"] == (4 * 14 * 14, 3 * 3 * 32, 64)
    assert gemms["0 Conv2D forward"] == (4 * 28 * 28, 3 * 3 * 1 + 1, 32)  # bias folded in
    assert not any(g.startswith("0 Conv2D input grad") for g in gemms)   # first layer: no dx
    assert gemms["3 Conv2D input grad, 9x"] == (4 * 14 * 14, 64, 32)     # one GEMM per window offset
    assert all(g["gflops"] > 0 for g in res["gemms"])
    for kind in ("stream", "gemm"):
        assert res["concurrency"][kind]["one"] > 0 and res["concurrency"][kind]["all"] > 0


def test_projection_models_the_sharded_step_from_the_measured_phases():
    from benchmarks.projection import from_measurements
    one = {"batch": 64, "workers": 1, "step_mean_s": 0.060,
           "times": {"compute": 0.050, "reduce": 0.001, "optimizer": 0.002, "straggler": 0.0}}
    two = {"batch": 64, "workers": 2, "step_mean_s": 0.030,
           "times": {"compute": 0.026, "straggler": 0.0013, "sync": 0.0001, "update": 0.0015,
                     "wait": 0.0004, "scatter": 0.0002, "reduce": 0.0001, "optimizer": 0.0}}
    m = from_measurements(one, two, grad_bytes=10**6, machine={"stream": 1.5}, cores=2)
    assert m.compute_per_sample == pytest.approx(0.050 / 64)
    assert m.wait_fraction == pytest.approx(0.05) and m.message_s == pytest.approx(0.0002)
    assert m.step_time(64, 1) == pytest.approx(0.060)                  # the 1-worker row, exactly
    # 2 workers: half the compute plus 5 % straggling, barrier, each worker's update under the
    # measured contention (1.5x on 2 cores: 0.75 of a core each), coordinator, signalling
    update = (0.002 / 2 + 0.001 * 1.5 / 2) / 0.75
    assert m.step_time(64, 2) == pytest.approx(0.025 * 1.05 + 0.0001 + update + 0.0003 + 2 * 0.0002)
    # beyond the measured cores the node's assumed bandwidth (4 cores' worth) is shared
    assert m.share(16) == pytest.approx(4 / 16) and m.share(3) == pytest.approx(0.75)
    # with the workers' busy span measured, the serial rest is what the step spent outside it
    timed = dict(two, times=dict(two["times"], busy=0.0285))
    assert from_measurements(one, timed, 10**6, {"stream": 1.5}, 2).fixed_s == pytest.approx(0.030 - 0.0285 - 0.0004)
    # more nodes: each node's workers sum and update their chunks around the ranks' all-reduce
    t32 = m.step_time(64, 32)
    assert t32 == pytest.approx(0.050 / 32 * 1.05 + 0.0001 + m.update_time(16) + 2 * 0.001 + m.ring_allreduce(2)
                                + 0.0003 + 2 * 16 * 0.0002)


@pytest.mark.slow
def test_ablation_runs_every_variant():
    cmd = [sys.executable, "-m", "benchmarks.ablation", "--batch-size", "4,70", "--steps", "1", "--rounds", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("relu before pool", "im2col input grad", "whole shard", "gradient norm", "Adam update", "sharded:"):
        assert name in proc.stdout
    assert "its x is the noise" in proc.stdout.splitlines()[1]         # shard 4 is never cut
    assert "its x is the noise" not in proc.stdout.splitlines()[2]     # shard 70 is


@pytest.mark.slow
def test_ablation_variants_compute_the_same_gradients():
    from benchmarks.ablation import variant
    from benchmarks.measure import synthetic_batch
    from dpnn.random import sample_keys
    from dpnn.recipe import shard_gradients
    x, y = synthetic_batch(70)
    keys = sample_keys(0, 1, np.arange(70))                  # the same dropout masks for every variant
    grads = {}
    for name in ("default", "relu before pool", "im2col input grad", "whole shard"):
        m = variant("seed-cnn", name)
        shard_gradients(m, x, y, 70, keys)
        grads[name] = m.grads.copy()
    for name, g in grads.items():
        np.testing.assert_allclose(g, grads["default"], rtol=1e-3, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_steady_state_benchmark_runs_every_contestant_in_its_own_mode(tmp_path):
    """benchmarks.steady_state, tiny: every contestant trains in its own process, in turns; dpnn
    flushes denormals unless told to keep them, PyTorch (when installed) only when told to."""
    out = tmp_path / "steady.json"
    cmd = [sys.executable, "-m", "benchmarks.steady_state", "--dataset", "synthetic", "--epochs", "1",
           "--limit", "192", "--test-limit", "64", "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    rows = res["contestants"]
    have_torch = importlib.util.find_spec("torch") is not None
    expected = {"dpnn-workers": "flushed", "dpnn-process": "flushed", "dpnn-workers-ieee": "IEEE",
                **({"torch": "IEEE", "torch-flush": "flushed"} if have_torch else {})}
    assert {k: r["denormals"] for k, r in rows.items()} == expected
    for r in rows.values():
        assert len(r["samples_per_s"]) == len(r["test_acc"]) == 1 and r["train_s"] > 0
        assert 0 <= r["test_acc"][0] <= 1 and r["last_over_first"] == 1.0
    assert res["data"] == {"name": "synthetic", "train": 192, "test": 64, "input": [28, 28, 1]}
    assert len(res["load_before"]) == len(res["load_after"]) == 3
    assert set(res["denormal_moments"]["step"]) == {"flush, denormal moments", "flush, zeroed",
                                                    "IEEE, denormal moments", "IEEE, zeroed"}
    assert "targets (issue 22):" in proc.stdout and "last/1st" in proc.stdout
    tgts = res["targets"]                     # every target listed; one epoch or no PyTorch: not measured
    assert len(tgts) == 6 and all(t["met"] is None and t["why"] for t in tgts[:2])
    assert all((t["met"] is None) != have_torch for t in tgts[2:])
    assert proc.stdout.count("[n/a]") == sum(t["met"] is None for t in tgts)


@pytest.mark.slow
def test_one_worker_benchmark_times_both_engines_in_turns(tmp_path):
    """benchmarks.one_worker, tiny: both engines trained in every round, their phases and faults
    reported, the JSON written."""
    out = tmp_path / "one.json"
    cmd = [sys.executable, "-m", "benchmarks.one_worker", "--batch-size", "8", "--steps", "2", "--rounds", "2",
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["batch"] == 8 and set(row["ms_per_step"]) == {"process", "pool", "pool, asleep"}
    assert all(len(v) == 2 for v in row["ms_per_step"].values())
    assert all(p["compute"] > 0 for p in row["phases_ms"].values())
    assert "pool speed / process speed" in proc.stdout and "pool, asleep speed / process speed" in proc.stdout


@pytest.mark.slow
def test_image_size_benchmark_measures_speed_and_memory_of_each_contestant(tmp_path):
    """benchmarks.image_size, tiny: one size, the contestants in their own processes (dpnn unpinned
    too), a peak memory for each, and a background spinner that is gone afterwards."""
    out = tmp_path / "size.json"
    cmd = [sys.executable, "-m", "benchmarks.image_size", "--models", "gap-cnn", "--sizes", "16", "--rounds", "1",
           "--turn-s", "0.05", "--background", "1", "--unpinned", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    kinds = {"dpnn", "dpnn-unpinned"} | ({"torch"} if importlib.util.find_spec("torch") else set())
    assert [(r["model"], r["size"]) for r in res["rows"]] == [("gap-cnn", 16)]
    for r in res["rows"]:
        assert set(r["median"]) == set(r["peak_mb"]) == kinds
        assert all(v > 0 for v in r["median"].values()) and all(v > 10 for v in r["peak_mb"].values())
    assert res["background"] == 1 and "dpnn s/s" in proc.stdout and "unpinned" in proc.stdout


@pytest.mark.parametrize("model", ["gap-cnn", "resnet"])
def test_image_size_models_have_the_same_parameters_in_pytorch(model):
    """The PyTorch twins of benchmarks.image_size hold the same parameter tensors as dpnn's."""
    pytest.importorskip("torch", reason="PyTorch is the optional reference: pip install torch==2.13.0")
    from benchmarks.image_size import dpnn_model, torch_model
    ours = sorted(p.size for layer in walk_layers(dpnn_model(model, 32).layers) if not layer.sublayers()
                  for p in layer.params.values())
    theirs = sorted(p.numel() for p in torch_model(model).parameters())
    assert ours == theirs
