"""Throughput and scaling of the data-parallel engine, beside single-process BLAS and PyTorch.

    python -m benchmarks.scaling --workers 1,2,4 --threads-per-worker 1 --batch-size 64,256 \\
        --steps 50 --json out.json --plot scaling.png
    python -m benchmarks.scaling --workers auto          # calibrate a workers x threads split

For every (workers, threads, batch): strong scaling (global batch fixed) and weak scaling
(per-worker batch fixed: global batch = batch x workers). In the same run: the float32
GEMM peak of one core, dpnn in one process with T BLAS threads, PyTorch CPU with T
threads (T = cores in use), issue 13's targets, and a projection to 64 cores
and across nodes from the measured step breakdown.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from dpnn.placement import usable_cores

from . import measure, peak, profile, scaling_report, torch_ref
from .args import add_run_flags, input_shape_arg, positive_int, positive_ints
from .models import build, flops_per_sample
from .projection import check, from_measurements, project


def worker_counts(text: str) -> list[int] | str:
    """'1,2,4' -> [1, 2, 4]; 'auto' stays 'auto' (calibrate a split)."""
    return "auto" if text.strip() == "auto" else positive_ints(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", type=worker_counts, help="worker counts, e.g. 1,2,4; or "
                   "'auto' to calibrate a workers x threads split on this machine (default 1,2)")
    p.add_argument("--threads-per-worker", default="1", type=positive_ints,
                   help="BLAS threads per worker, e.g. 1 or 1,2 (default 1)")
    p.add_argument("--batch-size", default="64,256", type=positive_ints, help="global batch sizes for "
                   "strong scaling; also the per-worker batches for weak scaling (default 64,256)")
    add_run_flags(p, steps=50, warmup=5)
    p.add_argument("--rounds", type=positive_int, default=5, help="the configurations of one batch size "
                   "take turns: each runs steps/rounds steps per round (default 5)")
    p.add_argument("--input", default="28x28x1", type=input_shape_arg, metavar="HxWxC",
                   help="image shape of the synthetic batches, e.g. 32x32x3 (default 28x28x1)")
    p.add_argument("--backend", default="shm", choices=("shm", "mpi"),
                   help="shm: this machine's workers; mpi: ranks x workers under mpiexec (default shm)")
    p.add_argument("--ranks", default="1,2", type=positive_ints,
                   help="with --backend mpi: MPI rank counts (default 1,2)")
    p.add_argument("--no-weak", action="store_true", help="skip the weak-scaling rows")
    p.add_argument("--shard-optimizer", default="auto", choices=("auto", "on", "off"),
                   help="optimizer step on the workers (on), the coordinator (off) or from 2 workers "
                        "(auto, DataParallel's default)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--calibration-steps", type=positive_int, default=6, help="steps per split for --workers auto")
    p.add_argument("--project-cores", default="1,2,4,8,16,32,64", type=positive_ints,
                   help="core counts of the projection")
    p.add_argument("--cores-per-node", type=positive_int, default=16, help="node size in the multi-node projection")
    p.add_argument("--node-stream", type=float, default=4.0,
                   help="projection: a node's aggregate memory bandwidth in units of one core's (assumed; default 4)")
    p.add_argument("--net-latency-us", type=float, default=20.0, help="all-reduce alpha, microseconds")
    p.add_argument("--net-gbps", type=float, default=10.0, help="all-reduce link bandwidth, Gbit/s")
    p.add_argument("--seed", type=int, default=0, help="seed of the models and the synthetic batches (default 0)")
    p.add_argument("--plot", help="draw throughput/efficiency vs cores into this PNG")
    a = p.parse_args(argv)
    a.auto = a.workers == "auto"
    a.shard_optimizer = {"auto": "auto", "on": True, "off": False}[a.shard_optimizer]
    if a.net_latency_us < 0 or a.net_gbps <= 0 or not a.node_stream >= 1:
        p.error("--net-latency-us must be >= 0, --net-gbps > 0 and --node-stream >= 1")
    if a.auto and a.backend == "mpi":
        p.error("--workers auto calibrates this machine's workers; with --backend mpi give worker counts")
    return a


def check_backend(backend: str) -> None:
    """Exit with a readable message when the engine (or the requested backend) is missing."""
    try:
        from dpnn.workers import DataParallel  # noqa: F401 -- imported only to learn whether it imports
    except ImportError as e:
        raise SystemExit(f"error: the data-parallel engine is not available ({e})") from None


def calibrate(a, cores: int, log) -> tuple[int, int, list[dict]]:
    """Try each workers x threads split that fills the cores; keep the fastest."""
    splits = [(n, cores // n) for n in range(1, cores + 1) if cores % n == 0]
    b = a.batch_size[0]
    trials = []
    for n, t in splits:
        r = measure.data_parallel(a.model, n, t, b, a.calibration_steps, 2, a.backend, a.seed, a.input)
        trials.append({"workers": n, "threads": t, "samples_per_s": r["samples_per_s"]})
        log(f"  calibrate {n} workers x {t} threads, batch {b}: {r['samples_per_s']:,.0f} samples/s")
    best = max(trials, key=lambda r: r["samples_per_s"])
    others = ", ".join(f"{r['workers']}x{r['threads']}: {r['samples_per_s']:,.0f}" for r in trials
                       if r is not best)
    log(f"  auto chose {best['workers']} workers x {best['threads']} threads: fastest at "
        f"{best['samples_per_s']:,.0f} samples/s (vs {others or 'no other split'})")
    return best["workers"], best["threads"], trials


def measure_batch(a, b: int, configs: list[tuple[int, int]], cores: int, has_torch: bool, log) -> dict:
    """Every configuration for global batch ``b``, taking turns: {('local'|'torch', threads) or
    ('strong'|'weak', workers, threads): row}. Every worker pool is stopped before returning."""
    runners = {}
    try:
        for t_total in sorted({min(n * t, cores) for n, t in configs}):
            runners[("local", t_total)] = measure.LocalRunner(a.model, t_total, b, a.seed, a.input)
            if has_torch:
                runners[("torch", t_total)] = measure.TorchRunner(t_total, b, a.seed, a.input)
        for kind in ("strong", "weak"):
            for n, t in configs:
                if kind == "weak" and (a.no_weak or n == 1):
                    continue
                gb = b if kind == "strong" else b * n
                runners[(kind, n, t)] = measure.DataParallelRunner(a.model, n, t, gb, a.backend, a.seed,
                                                                   a.shard_optimizer, a.input)
        log(f"  batch {b}: {len(runners)} configurations, {a.steps} steps each, taking turns in "
            f"{a.rounds} rounds")
        res = measure.interleaved(runners, a.steps, a.warmup, a.rounds)
    finally:
        for r in runners.values():      # every pool stops, even after an error or Ctrl-C
            r.close()
    for t_total in sorted(k[1] for k in res if k[0] == "local"):
        log(f"  baselines batch {b}, {t_total} thread(s): dpnn 1 process "
            f"{res[('local', t_total)]['samples_per_s']:,.0f} samples/s"
            + (f", PyTorch {res[('torch', t_total)]['samples_per_s']:,.0f}" if has_torch else ""))
    return res


def run(a) -> dict:
    def log(s=""):
        print(s, flush=True)
    cores = usable_cores()
    check_backend(a.backend)
    probe = build(a.model, (1,) + a.input, seed=a.seed)
    flops = flops_per_sample(probe)["total"]
    grad_bytes = probe.params.size * 4
    log(f"dpnn scaling benchmark: model {a.model}, input {'x'.join(map(str, a.input))} "
        f"({flops / 1e6:.1f} MFLOP per training sample, "
        f"{probe.param_count():,} params), {cores} usable cores, {platform.processor() or platform.machine()}")
    res_load = [load_note(cores)]
    log(f"before: {res_load[0]}")
    pk = peak.peak_per_core()
    log(f"measured float32 GEMM peak: {pk:.1f} GFLOP/s per core -> limit {pk * 1e9 / flops:,.0f} "
        "samples/s per core")
    machine = profile.all_core_scaling(cores) if cores > 1 else {}
    if machine:
        log(f"this machine, all {cores} cores at once vs one: {machine['gemm']:.2f}x for a cache-resident "
            f"GEMM, {machine['stream']:.2f}x for a memory stream (what {cores} workers can reach lies "
            "in between)")
    auto = None
    configs = [(n, t) for t in a.threads_per_worker for n in ([] if a.auto else a.workers)]
    if a.auto:
        n, t, trials = calibrate(a, cores, log)
        auto = {"workers": n, "threads": t, "trials": trials}
        configs = sorted({(1, t), (n, t)})
    rows, local, torch = [], {}, {}
    has_torch, torch_note = (False, "skipped (--no-torch)") if a.no_torch else torch_ref.available()
    if not has_torch:
        log(f"PyTorch comparison: {torch_note}")
    for b in a.batch_size:
        res = measure_batch(a, b, configs, cores, has_torch, log)
        for key, r in res.items():
            if key[0] == "local":
                local[(b, key[1])] = r
            elif key[0] == "torch":
                torch[(b, key[1])] = r
            else:
                rows.append(dict(r, kind=key[0]))
                log(f"  {key[0]:<6} {r['workers']} workers x {r['threads']} threads, batch {r['batch']}: "
                    f"{r['samples_per_s']:,.0f} samples/s")
    for r in rows:
        per = r["batch"] if r["kind"] == "strong" else r["batch"] // r["workers"]
        one = next((q for q in rows if q["kind"] == "strong" and q["workers"] == 1
                    and q["threads"] == r["threads"] and q["batch"] == per), None)
        scaling_report.derive(r, one, flops, pk, cores, local, torch)
    proj = _projection(a, rows, grad_bytes, cores, machine)
    res_load.append(load_note(cores))
    log(f"after: {res_load[1]}")
    return {"model": a.model, "input": list(a.input), "flops_per_sample": flops, "params": probe.param_count(),
            "cores": cores, "machine": platform.platform(), "python": sys.version.split()[0],
            "peak_gflops_per_core": pk, "all_core_scaling": machine, "torch": torch_note,
            "load": res_load, "auto": auto, "rows": rows,
            "local": [dict(v, batch=k[0], threads=k[1]) for k, v in local.items()],
            "pytorch": [dict(v, batch=k[0], threads=k[1]) for k, v in torch.items()],
            "targets": scaling_report.targets(rows, torch, machine, proj), "projection": proj,
            "_local": local, "_torch": torch}


def _projection(a, rows: list[dict], grad_bytes: int, cores: int, machine: dict) -> dict:
    """One projection per strong-scaling batch, each from its own 1-worker and 2-worker rows
    (one thread per worker: the projection counts cores), with the model beside every row."""
    strong = [r for r in rows if r["kind"] == "strong" and r["threads"] == 1]
    out: dict = {}
    for b in sorted({r["batch"] for r in strong}):
        one = next((r for r in strong if r["workers"] == 1 and r["batch"] == b), None)
        if one is None:
            continue
        two = next((r for r in strong if r["workers"] == 2 and r["batch"] == b and cores >= 2), None)
        model = from_measurements(one, two, grad_bytes, machine, cores, node_stream=a.node_stream,
                                  net_alpha=a.net_latency_us * 1e-6, net_beta=a.net_gbps * 1e9 / 8,
                                  cores_per_node=a.cores_per_node)
        p = project(model, [b], a.project_cores, per_worker_batch=b)
        out.setdefault("models", {})[f"batch {b}"] = p["model"]
        out.setdefault("assumptions", []).extend(f"batch {b}: {s}" for s in p["assumptions"])
        out.setdefault("curves", {}).update(p["curves"])
        out.setdefault("check", []).extend(check(model, [r for r in strong if r["batch"] == b]))
    return out


def load_note(cores: int) -> str:
    """The 1-minute load average, and a warning when other work shares the cores."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "load average unknown"
    busy = " - the machine is busy, absolute figures are lower than on an idle one" if load > 0.5 * cores else ""
    return f"1-min load average {load:.1f} on {cores} cores{busy}"


def run_mpi(a) -> int:
    """--backend mpi: ranks x workers under mpiexec, measured by benchmarks.mpi_scaling."""
    from . import mpi_scaling
    argv = ["--ranks", ",".join(map(str, a.ranks)), "--workers", ",".join(map(str, a.workers)),
            "--threads-per-worker", str(a.threads_per_worker[0]), "--batch-size", str(a.batch_size[0]),
            "--steps", str(a.steps), "--warmup", str(a.warmup), "--model", a.model]
    return mpi_scaling.main(argv + (["--json", a.json] if a.json else []))


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.backend == "mpi":
        return run_mpi(a)
    res = run(a)
    local, torch = res.pop("_local"), res.pop("_torch")
    print()
    print(f"load: before {res['load'][0]}; after {res['load'][1]}")
    print(scaling_report.table(res["rows"]))
    print()
    print(scaling_report.baseline_table(local, torch, res["flops_per_sample"], res["peak_gflops_per_core"]))
    print("\ncolumns: /BLAS = dpnn workers vs dpnn single process with the same total threads; /torch = vs "
          "PyTorch CPU with the same threads; update = the workers' reduce + optimizer on their chunks; "
          "sync = barrier latency; serial = step time in which no worker computes")
    print("\ntargets of issue 13, each computed from this run:")
    print(scaling_report.targets_text(res["targets"], res["all_core_scaling"], res["cores"], res["rows"]))
    if res["projection"]:
        print("\nprojection (model, not measured):")
        for name, pts in res["projection"]["curves"].items():
            print(f"  {name}: " + ", ".join(f"{p['cores']}c {p['samples_per_s']:,.0f}/s ({p['efficiency']:.0%})"
                                             for p in pts))
        print("  the model beside what was measured (step ms): " + ", ".join(
            f"{c['workers']}w b{c['batch']} {c['model_ms']:.1f} vs {c['measured_ms']:.1f}"
            for c in res["projection"].get("check", [])))
        print("  assumptions:")
        for s in res["projection"]["assumptions"]:
            print(f"   - {s}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.plot:
        title = (f"{a.model}, {res['flops_per_sample'] / 1e6:.1f} MFLOP/sample, {res['cores']} cores, "
                 f"GEMM peak {res['peak_gflops_per_core']:.0f} GFLOP/s/core")
        scaling_report.plot(a.plot, res["rows"], local, torch, res["projection"], res["flops_per_sample"],
                    res["peak_gflops_per_core"], title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
