"""Throughput of the MPI backend for ranks x workers, measured under mpiexec.

    python -m benchmarks.mpi_scaling --ranks 1,2 --workers 1 --batch-size 64 --steps 30
    python -m benchmarks.mpi_scaling --ranks 2,4 --workers 8 --mpiexec-args "-f hosts -ppn 1"
    python -m benchmarks.mpi_scaling --ranks 2,4 --modes default,deterministic --json out.json

For each (ranks, workers per rank) the driver runs ``mpiexec -n RANKS python -m
benchmarks.mpi_scaling --child ...``: every rank trains the model on the same synthetic
global batch with ``fit``'s MPI engine (``dpnn.distributed.DistributedEngine``), and rank
0 reports the median step time and the mean time per step spent in the all-reduces
(which includes waiting for the slowest rank). The table gives samples/s, speed-up over
the first row, the share of a step spent reducing across ranks, and the bytes each rank sends
and receives per step (the most any rank moves; ``dpnn.comm.Traffic``: point-to-point messages
exactly, collectives as their bandwidth-optimal algorithms move them), for each mode
(``--modes``: the default all-reduce, and deterministic mode's ordered chain). On one machine the
ranks share its cores: keep ranks x workers x threads within the core count, or the
figures measure oversubscription.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from .args import add_run_flags, positive_int, positive_ints

MARK = "MPI_SCALING "


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mpi_scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", type=positive_ints, help="MPI rank counts, e.g. 1,2,4 (default 1,2)")
    p.add_argument("--workers", default="1", type=positive_ints,
                   help="shared-memory workers per rank, e.g. 1,2 (default 1)")
    p.add_argument("--threads-per-worker", type=positive_int, default=1, help="BLAS threads per worker (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="global batch size (default 64)")
    p.add_argument("--modes", default="default,deterministic", type=modes,
                   help="comma-separated: default, deterministic (default: both)")
    add_run_flags(p, steps=30, warmup=3)
    p.add_argument("--mpiexec", default=None, help="mpiexec to use (default: the one beside python, or PATH)")
    p.add_argument("--mpiexec-args", default="", help="extra mpiexec arguments, e.g. \"-f hosts -ppn 1\"")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per configuration")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def modes(text: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    if not vals or set(vals) - {"default", "deterministic"}:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of default, deterministic; got {text!r}")
    return vals


def child(a) -> None:
    """One configuration, inside mpiexec: rank 0 prints one JSON line."""
    import numpy as np

    from dpnn.comm import get_communicator
    from dpnn.distributed import DistributedEngine
    from dpnn.random import sample_keys

    from .measure import synthetic_batch
    from .models import build

    comm = get_communicator("mpi")
    x, y = synthetic_batch(a.batch_size, 0)
    det = a.modes[0] == "deterministic"
    engine = DistributedEngine(build(a.model, seed=0), comm, workers=a.workers[0], deterministic=det,
                               threads_per_worker=a.threads_per_worker, check_every=10**9,
                               batch_size=a.batch_size)
    keys = np.arange(a.batch_size)
    try:
        for i in range(a.warmup):
            engine.train_step(x, y, sample_keys(0, i, keys))
        comm.barrier()
        traffic0 = (comm.traffic.sent, comm.traffic.received)
        walls, reduce_s, compute_s = [], 0.0, 0.0
        for i in range(a.steps):
            t0 = time.perf_counter()
            stats = engine.train_step(x, y, sample_keys(0, a.warmup + i, keys))
            walls.append(time.perf_counter() - t0)
            reduce_s, compute_s = reduce_s + stats.times["reduce"], compute_s + stats.times["compute"]
        moved = np.array([comm.traffic.sent - traffic0[0], comm.traffic.received - traffic0[1]]) / a.steps
    finally:
        engine.close()
    moved = comm.allgather(moved)                                 # (ranks, 2) bytes per step
    if comm.rank == 0:
        step = statistics.median(walls)
        row = {"ranks": comm.size, "workers": engine.describe().workers, "threads": a.threads_per_worker,
               "batch": a.batch_size, "step_s": step, "samples_per_s": a.batch_size / step,
               "reduce_s": reduce_s / a.steps, "compute_s": compute_s / a.steps,
               "grad_mb": engine.model.params.nbytes / 1e6, "mode": a.modes[0],
               "sent_mb": float(moved[:, 0].max()) / 1e6, "received_mb": float(moved[:, 1].max()) / 1e6}
        print(MARK + json.dumps(row), flush=True)


def find_mpiexec(explicit: str | None) -> str:
    import shutil
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = explicit or (beside if os.access(beside, os.X_OK) else shutil.which("mpiexec"))
    if not found:
        raise SystemExit("error: mpiexec not found; pip install 'dpnn[mpi]' (mpi4py + mpich)")
    return found


def run_one(a, mpiexec: str, ranks: int, workers: int, mode: str) -> dict:
    cmd = [mpiexec, "-n", str(ranks), *shlex.split(a.mpiexec_args), sys.executable, "-m",
           "benchmarks.mpi_scaling", "--child", "--workers", str(workers), "--modes", mode,
           "--threads-per-worker", str(a.threads_per_worker), "--batch-size", str(a.batch_size),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--model", a.model]
    threads = str(a.threads_per_worker)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    rows = [json.loads(line[len(MARK):]) for line in r.stdout.splitlines() if line.startswith(MARK)]
    if r.returncode != 0 or not rows:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return rows[0]


def table(rows: list[dict]) -> str:
    base = rows[0]
    out = [f"{'mode':<13} {'ranks':>5} {'workers':>7} {'threads':>7} {'cores':>5} {'batch':>5} {'step ms':>8} "
           f"{'samples/s':>10} {'speed-up':>8} {'reduce ms':>9} {'of step':>7} {'sent MB':>8} {'recv MB':>8}"]
    for r in rows:
        cores = r["ranks"] * r["workers"] * r["threads"]
        out.append(f"{r['mode']:<13} {r['ranks']:>5} {r['workers']:>7} {r['threads']:>7} {cores:>5} {r['batch']:>5} "
                   f"{r['step_s'] * 1e3:>8.1f} {r['samples_per_s']:>10,.0f} "
                   f"{r['samples_per_s'] / base['samples_per_s']:>7.2f}x {r['reduce_s'] * 1e3:>9.2f} "
                   f"{r['reduce_s'] / r['step_s']:>7.1%} {r['sent_mb']:>8.2f} {r['received_mb']:>8.2f}")
    return "\n".join(out)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.child:
        child(a)
        return 0
    mpiexec = find_mpiexec(a.mpiexec)
    rows = []
    for ranks in a.ranks:
        for workers in a.workers:
            for mode in a.modes:
                rows.append(run_one(a, mpiexec, ranks, workers, mode))
                print(f"  {mode}: {ranks} ranks x {workers} workers: {rows[-1]['samples_per_s']:,.0f} samples/s",
                      file=sys.stderr, flush=True)
    print(f"{a.model}, global batch {a.batch_size}, gradient {rows[0]['grad_mb']:.2f} MB, "
          f"median of {a.steps} steps (cores = ranks x workers x threads; {os.cpu_count()} CPUs here); "
          "sent/recv MB: per step, by the rank that moves most")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "argv": sys.argv[1:], "load_average": os.getloadavg()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
