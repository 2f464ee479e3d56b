"""The scaling benchmark's report: serial fraction, columns and issue 13's targets, computed
from synthetic rows (nothing is timed here)."""
import json

import pytest

from benchmarks.projection import StepModel, project
from benchmarks.scaling_report import derive, serial_fraction, table, targets, targets_text

CORES = [1, 2, 4, 8, 16, 32, 64]


def measured(workers: int, batch: int, samples_per_s: float, step_s: float = 0.020, compute: float = 0.015,
             update: float | None = None, sync: float | None = None) -> dict:
    """A strong-scaling row as benchmarks.measure returns it (times are per-step means, seconds)."""
    times = {"compute": compute, "wait": 0.0002, "reduce": 0.0, "optimizer": 0.0, "straggler": 0.0001}
    if update is not None:
        times["update"] = update
    if sync is not None:
        times["sync"] = sync
    return {"kind": "strong", "workers": workers, "threads": 1, "batch": batch, "samples_per_s": samples_per_s,
            "step_mean_s": step_s, "times": times, "startup_s": 0.25, "worker_peak_mb": [90.0] * workers,
            "coordinator_rss_mb": 200.0}


def derived(rows: list[dict]) -> list[dict]:
    for r in rows:
        one = next(q for q in rows if q["workers"] == 1 and q["batch"] == r["batch"])
        derive(r, one, flops=25_000_000, peak_per_core=60.0, cores=2, local={}, torch={})
    return rows


def by_id(result: list[dict]) -> dict:
    return {t["id"]: t for t in result}


@pytest.mark.parametrize("step, compute, update, expected", [
    (0.010, 0.006, 0.0025, 0.15),      # (10 - 6 - 2.5) / 10
    (0.010, 0.006, None, 0.40),        # no parallel update (coordinator optimizer): all of it is serial
    (0.020, 0.019, 0.0, 0.05),
    (0.010, 0.009, 0.002, 0.0),        # timer noise past the step is no negative share
])
def test_serial_fraction_is_the_step_time_in_which_no_worker_computes(step, compute, update, expected):
    times = {"compute": compute} if update is None else {"compute": compute, "update": update}
    assert serial_fraction(step, times) == pytest.approx(expected)


def test_rows_get_update_sync_and_serial_columns():
    rows = derived([measured(1, 64, 1000.0, update=0.001), measured(2, 64, 1800.0, step_s=0.010, compute=0.007,
                                                                   update=0.0012, sync=0.0003)])
    two = rows[1]
    assert (two["update_ms"], two["sync_ms"]) == (pytest.approx(1.2), pytest.approx(0.3))
    assert two["serial"] == pytest.approx((10 - 7 - 1.2) / 10)
    assert rows[0]["sync_ms"] == 0.0                             # an engine without the key: 0, not an error
    head = table(rows).splitlines()[0].split()
    assert {"update", "sync", "serial"} <= set(head) and "ovh" not in head
    assert "18.0%" in table(rows).splitlines()[3]                # the 2-worker row's serial share


def two_core_run(gemm: float, two_over_one: float = 1.80, update: float = 0.0005) -> list[dict]:
    """Targets of a 2-core run: 1 and 2 workers at batch 64 and 256, PyTorch with 1 and 2 threads."""
    rows = derived([measured(1, 64, 1000.0), measured(2, 64, 1000.0 * two_over_one, update=update),
                    measured(1, 256, 1200.0), measured(2, 256, 2200.0)])
    torch = {(64, 1): {"samples_per_s": 950.0}, (64, 2): {"samples_per_s": 1500.0},
             (256, 1): {"samples_per_s": 1000.0}, (256, 2): {"samples_per_s": 1600.0}}
    return targets(rows, torch, {"gemm": gemm, "stream": 1.4}, {})


def test_issue_13_targets_are_ratios_of_this_runs_rows():
    t = by_id(two_core_run(gemm=2.0))
    assert list(t) == ["1a", "1b", "2a", "2b", "3", "4", "5a", "5b"]
    assert (t["1a"]["value"], t["1a"]["goal"], t["1a"]["met"]) == (pytest.approx(1000 / 950), 1.0, True)
    assert (t["1b"]["value"], t["1b"]["goal"], t["1b"]["met"]) == (pytest.approx(1.2), 1.3, False)
    assert (t["2a"]["value"], t["2a"]["goal"], t["2a"]["met"]) == (pytest.approx(1.2), 1.25, False)
    assert (t["2b"]["value"], t["2b"]["goal"], t["2b"]["met"]) == (pytest.approx(2200 / 1600), 1.25, True)
    assert (t["3"]["value"], t["3"]["goal"], t["3"]["met"]) == (pytest.approx(1.8), 1.92, False)


@pytest.mark.parametrize("gemm, two_over_one, met", [(1.95, 1.93, True), (2.0, 1.90, False), (1.94, 1.99, None),
                                                     (1.51, 1.77, None)])
def test_two_workers_over_one_is_a_goal_only_where_the_machines_gemm_scales(gemm, two_over_one, met):
    t = by_id(two_core_run(gemm, two_over_one))["3"]
    assert t["value"] == pytest.approx(two_over_one) and t["met"] is met
    if met is None:
        assert t["note"] == f"GEMM scaling {gemm:.2f}x < 1.95x"


def test_target_3_reads_n_a_with_its_reason_and_stays_honest_in_json():
    res = two_core_run(gemm=1.51, two_over_one=1.77)
    t = json.loads(json.dumps(res))[4]
    assert (t["id"], t["met"], t["value"]) == ("3", None, pytest.approx(1.77))
    text = targets_text(res, {"gemm": 1.51, "stream": 1.42}, 2, [])
    assert ("  [n/a ] 3. 2 workers / 1 worker, batch 64: 1.77x (goal >= 1.92x; n/a: GEMM scaling 1.51x < 1.95x)"
            in text.splitlines())
    assert "GEMM 1.51x, memory stream 1.42x" in text.splitlines()[0]


@pytest.mark.parametrize("update, serial, met", [(0.0005, 0.225, False), (0.0047, 0.015, True),
                                                 (0.00442, 0.029, True), (0.0043, 0.035, False)])
def test_serial_fraction_target_counts_the_workers_update_as_parallel(update, serial, met):
    # the 2-worker batch-64 row: step 20 ms, compute 15 ms; serial = (20 - 15 - update) / 20
    t = by_id(two_core_run(gemm=2.0, update=update))["4"]
    assert (t["value"], t["goal"], t["op"], t["met"]) == (pytest.approx(serial), 0.03, "<=", met)


def test_projection_targets_read_the_projected_curves():
    model = StepModel(compute_per_sample=1e-3, wait_fraction=0.02, copy_s=2e-4, optimizer_s=2e-4,
                      fixed_one_s=3e-4, sync_s=5e-5, fixed_s=2e-4, message_s=1e-4, grad_bytes=4_000_000,
                      measured_cores=2, stream_scaling=1.5)
    curves = {**project(model, [64], CORES, per_worker_batch=64)["curves"],
              **project(model, [256], CORES, per_worker_batch=256)["curves"]}        # as scaling._projection
    t = by_id(targets([], {}, {}, {"curves": curves}))
    strong16 = next(p["efficiency"] for p in curves["strong, batch 256"] if p["cores"] == 16)
    weak64 = next(p["efficiency"] for p in curves["weak, 64/worker"] if p["cores"] == 64)
    assert t["5a"]["value"] == strong16 and t["5a"]["met"] is (strong16 >= 0.85) and t["5a"]["projected"]
    assert t["5b"]["value"] == weak64 and t["5b"]["met"] is (weak64 >= 0.95) and t["5b"]["projected"]
    assert strong16 != weak64
    line = next(s for s in targets_text(list(t.values()), {}, 1, []).splitlines() if " 5a. " in s)
    assert line.endswith("(goal >= 85.0%) (projected, not measured)") and f"{strong16:.1%}" in line


def test_what_the_run_did_not_measure_is_n_a_not_a_miss():
    rows = derived([measured(1, 64, 1000.0), measured(2, 64, 1700.0)])
    res = targets(rows, {}, {}, {})          # one core: no all-core scaling; no PyTorch; no projection
    t = by_id(res)
    assert all(t[k]["met"] is None and t[k]["value"] is None for k in ("1a", "1b", "2a", "2b", "5a", "5b"))
    assert t["3"]["met"] is None and "not measured (one core)" in t["3"]["note"]
    assert t["4"]["met"] is False                                     # measured: (20 - 15) / 20 = 25 %
    lines = targets_text(res, {}, 1, rows).splitlines()
    assert "  [n/a ] 1b. 1 worker x 1 thread / PyTorch 1 thread, batch 256: not measured in this run" in lines[2]
    assert lines[-1] == "  pool start-up, 2 workers: 0.25 s (information, no goal)"
    assert not any("MET" in s or "MISS" in s for s in lines if " 4. " not in s)


def test_a_target_exactly_at_its_goal_is_met():
    rows = derived([measured(1, 64, 1000.0), measured(2, 64, 1250.0)])
    rows[1]["serial"] = 0.03
    t = by_id(targets(rows, {(64, 1): {"samples_per_s": 1000.0}, (64, 2): {"samples_per_s": 1000.0}}, {}, {}))
    assert t["1a"]["met"] is True and t["2a"]["met"] is True and t["4"]["met"] is True


def test_serial_fraction_prefers_the_workers_busy_span():
    # 20 ms step; the workers were busy (first start to last end) for 19.4 ms in all, although
    # the slowest compute + slowest update add up to only 18 ms (they overlap other workers' work)
    times = {"compute": 0.015, "update": 0.003, "busy": 0.0194}
    assert serial_fraction(0.020, times) == pytest.approx(0.03)
    assert serial_fraction(0.020, {k: v for k, v in times.items() if k != "busy"}) == pytest.approx(0.1)


def test_plot_puts_points_at_the_cores_in_use_and_tells_the_projections_apart():
    """Issue 21.9: 4 workers on a 2-core machine sit at 2 cores (marked), each projection has its own
    colour, and the throughput panel spans the measured cores, not the projection's 64."""
    pytest.importorskip("matplotlib")
    import matplotlib.colors
    import matplotlib.pyplot as plt

    from benchmarks.scaling_report import figure, measured_groups
    rows = derived([measured(1, 64, 400.0), measured(2, 64, 700.0), measured(4, 64, 650.0)])
    assert [p[0] for p in measured_groups(rows)[("strong", 64, 1)]] == [1, 2, 2]
    assert [p[4] for p in measured_groups(rows)[("strong", 64, 1)]] == [False, False, True]
    model = StepModel(compute_per_sample=1e-3, wait_fraction=0.02, copy_s=2e-4, optimizer_s=2e-4,
                      fixed_one_s=3e-4, sync_s=5e-5, fixed_s=2e-4, message_s=1e-4, grad_bytes=4_000_000,
                      measured_cores=2, stream_scaling=1.5)
    projection = {"curves": {**project(model, [64], CORES, per_worker_batch=64)["curves"],
                             **project(model, [256], CORES, per_worker_batch=256)["curves"]}}
    fig = figure(rows, {}, {}, projection, flops=25_000_000, peak=60.0)
    ax, ax2 = fig.axes
    colours = [matplotlib.colors.to_hex(line.get_color()) for line in ax2.lines
               if line.get_label().startswith("projection")]
    assert len(colours) == len(projection["curves"]) == len(set(colours))
    assert ax.get_xlim()[1] <= 8 and ax2.get_xlim()[1] >= 64
    assert any("4 workers on 2 cores" in t.get_text() for t in ax.texts)
    plt.close(fig)
