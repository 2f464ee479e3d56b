"""Steady state and time to accuracy: seed-cnn trained for whole epochs, dpnn beside PyTorch.

    python -m benchmarks.steady_state --json steady_state.json --plot steady_state.png
    python -m benchmarks.steady_state --epochs 1 --limit 512 --contestants dpnn-workers,torch

Every contestant trains seed-cnn on the same data (Fashion-MNIST by default) with the same batch
size (64), Adam at lr 1e-3 and the same number of epochs (5), each in its own long-lived process
(benchmarks/contestants.py): dpnn with one worker per core, dpnn in one process, PyTorch as its
users run it (DataLoader and torch.optim.Adam with their defaults, one thread per core), PyTorch
with torch.set_flush_denormal(True), and dpnn's workers with IEEE denormals kept
(DPNN_DENORMALS=keep), which shows what flushing is worth. The contestants take turns epoch by
epoch, the order rotating, so a machine whose speed drifts slows them all alike.

Reported per contestant: samples/s of every epoch, the training time (the epochs' wall time; the
start-up and the test-set scoring after each epoch are reported apart), the test accuracy after
every epoch, the training time until it first reached --target-accuracy, and the last/first
epoch ratio; the machine's CPU and load average before and after; the targets of issue 22; and
(--repeats) what denormal Adam moments cost one update and one step, flushed and not
(benchmarks/denormals.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time

from .contestants import Contestant, ContestantProcess

USER_ENV = dict(os.environ)       # before anything imports dpnn (which fills in thread variables)

KEYS = ("dpnn-workers", "dpnn-process", "torch", "torch-flush", "dpnn-workers-ieee")


def contestants(keys: list[str], workers: int, threads: int) -> dict[str, Contestant]:
    """The contestants named by ``keys`` (see KEYS), with ``workers`` dpnn workers and ``threads``
    PyTorch threads."""
    table = {
        "dpnn-workers": Contestant(f"dpnn, {workers} workers", "dpnn", workers=workers),
        "dpnn-process": Contestant("dpnn, one process", "dpnn"),
        "torch": Contestant(f"PyTorch, {threads} threads", "torch", threads=threads, flush=False),
        "torch-flush": Contestant(f"PyTorch, {threads} thr, flush", "torch", threads=threads),
        "dpnn-workers-ieee": Contestant(f"dpnn, {workers} workers, IEEE", "dpnn", workers=workers, flush=False),
    }
    return {k: table[k] for k in keys}


def key_list(text: str) -> list[str]:
    """'dpnn-workers,torch' -> ['dpnn-workers', 'torch']; unknown names are refused."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in KEYS]
    if not keys or bad:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(KEYS)}; got {text!r}")
    return list(dict.fromkeys(keys))


def fraction(text: str) -> float:
    """'0.9' -> 0.9, in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r}")
    return v


def parse_args(argv=None) -> argparse.Namespace:
    from dpnn.placement import usable_cores

    from .args import non_negative_int, positive_int
    cores = usable_cores()
    p = argparse.ArgumentParser(prog="python -m benchmarks.steady_state", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist",
                   help="named data set or directory, as launch.train --dataset (default fashion-mnist)")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs for every contestant (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default 64)")
    p.add_argument("--workers", type=positive_int, default=cores,
                   help=f"dpnn's worker processes (default: the usable cores, {cores})")
    p.add_argument("--threads", type=positive_int, default=cores,
                   help=f"PyTorch's threads (default: the usable cores, {cores})")
    p.add_argument("--contestants", type=key_list, default=list(KEYS),
                   help=f"comma-separated, from {', '.join(KEYS)} (default all; PyTorch's are skipped "
                        "with a note when it is not installed)")
    p.add_argument("--limit", type=positive_int, help="train on the first N training samples (default all)")
    p.add_argument("--test-limit", type=positive_int, help="score the first N test samples (default all)")
    p.add_argument("--target-accuracy", type=fraction, default=0.90,
                   help="test accuracy whose time to reach is reported (default 0.90)")
    p.add_argument("--repeats", type=non_negative_int, default=20,
                   help="timed repeats of the denormal-moment update and step; 0 skips them (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of every contestant (default 0)")
    p.add_argument("--json", help="write every measurement to this JSON file")
    p.add_argument("--plot", help="draw samples/s per epoch and accuracy against time into this PNG")
    return p.parse_args(argv)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_data(a: argparse.Namespace, path: str) -> dict:
    """Write the data set (limited) to ``path`` for the contestants; its sizes."""
    import numpy as np

    from dpnn.datasets import load_dataset
    train, test, info = load_dataset(a.dataset)
    x, y = train.X[:a.limit], train.y[:a.limit]
    xt, yt = test.X[:a.test_limit], test.y[:a.test_limit]
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return {"name": info.get("name", a.dataset), "train": len(x), "test": len(xt), "input": list(x.shape[1:])}


def run(a: argparse.Namespace, chosen: dict[str, Contestant], data_path: str) -> tuple[dict, list, int]:
    """Start every contestant (one after another), then epochs in turns; ({key: result}, load log,
    epochs done). Ctrl-C or SIGTERM ends the run early: the report covers the epochs every
    contestant finished."""
    procs, rows, loads = {}, {k: [] for k in chosen}, []
    try:
        for k, c in chosen.items():
            procs[k] = ContestantProcess(c, data_path, a.batch_size, a.seed, USER_ENV)
            print(f"started {c.label}: {procs[k].ready['engine']}, denormals {procs[k].ready['denormals']}, "
                  f"{procs[k].ready['startup_s']:.1f} s", flush=True)
        names = list(chosen)
        for e in range(a.epochs):
            loads.append(os.getloadavg())
            for k in names[e % len(names):] + names[:e % len(names)]:
                row = procs[k].epoch(e)
                row["load"] = os.getloadavg()[0]
                rows[k].append(row)
                print(f"epoch {e + 1}/{a.epochs} {chosen[k].label:<30} {row['samples_per_s']:8,.0f} samples/s "
                      f"{row['train_s']:7.1f} s  median step {a.batch_size / row['step_median_s']:6,.0f}/s  "
                      f"test acc {row['test_acc']:.4f}  load {row['load']:.2f}", flush=True)
    except KeyboardInterrupt:
        if min(map(len, rows.values())) == 0:
            raise
        print("interrupted: the report covers the epochs every contestant finished", flush=True)
    finally:
        for p in procs.values():
            p.close()
    done = min(map(len, rows.values()))
    return ({k: summarize(chosen[k], procs[k].ready, rows[k][:done], a.target_accuracy, a.batch_size)
             for k in chosen}, loads, done)


def summarize(c: Contestant, ready: dict, rows: list[dict], target: float, batch: int) -> dict:
    """One contestant's row of the report."""
    rates = [r["samples_per_s"] for r in rows]
    steady = [batch / r["step_median_s"] for r in rows]
    elapsed, reached = 0.0, None
    for r in rows:
        elapsed += r["train_s"]
        if reached is None and r["test_acc"] >= target:
            reached = elapsed
    return {"label": c.label, "kind": c.kind, "workers": c.workers, "threads": c.threads, "flush": c.flush,
            "engine": ready["engine"], "denormals": ready["denormals"], "startup_s": ready["startup_s"],
            "samples_per_s": rates, "train_s": sum(r["train_s"] for r in rows),
            "last_over_first": rates[-1] / rates[0], "median_step_samples_per_s": steady,
            "median_last_over_first": steady[-1] / steady[0], "test_acc": [r["test_acc"] for r in rows],
            "time_to_target_s": reached, "loss": [r["loss"] for r in rows], "epochs": rows}


def targets(res: dict) -> list[dict]:
    """Issue 22's targets, every one listed: 'met' is None, with the reason, where a contestant it
    compares did not run (PyTorch not installed) or a single epoch leaves nothing to compare."""
    out = []
    for k, label in (("dpnn-workers", "dpnn, 2 workers"), ("dpnn-process", "dpnn, one process")):
        r = res.get(k)
        target = f"{r['label'] if r else label}: last epoch >= 0.95x the first"
        if r and len(r["samples_per_s"]) > 1:
            out.append({"target": target, "value": r["last_over_first"], "met": r["last_over_first"] >= 0.95,
                        "median_step_value": r["median_last_over_first"]})
        else:
            out.append({"target": target, "value": None, "met": None,
                        "why": "one epoch: nothing to compare" if r else f"{k} did not run"})
    w = res.get("dpnn-workers")
    who = w["label"] if w else "dpnn, 2 workers"
    for k, limit in (("torch", 0.8), ("torch-flush", 1.0)):
        name = res[k]["label"] if k in res else k
        texts = (f"{who}: trains in <= {limit}x the time of {name}",
                 f"{who}: test accuracy within 0.5 points of {name}")
        if not (w and k in res):
            why = "PyTorch is not installed (pip install torch)" if k not in res else "dpnn-workers did not run"
            out += [{"target": t, "value": None, "met": None, "why": why} for t in texts]
            continue
        r = w["train_s"] / res[k]["train_s"]
        d = 100 * (w["test_acc"][-1] - res[k]["test_acc"][-1])
        out += [{"target": texts[0], "value": r, "met": r <= limit},
                {"target": texts[1], "value": d, "met": abs(d) <= 0.5}]
    return out


def report(res: dict, meta: dict, tgts: list, denormal_lines: list[str]) -> str:
    d, target = meta["data"], meta["target_accuracy"]
    lines = [f"steady state: seed-cnn on {d['name']}, {d['train']:,} training / {d['test']:,} test samples, "
             f"{meta['epochs']} epochs, batch {meta['batch']}, Adam lr 0.001, seed {meta['seed']}",
             f"machine: {meta['cpu']}, {meta['cores']} usable cores; load average (1, 5, 15 min) before "
             f"{' '.join(f'{v:.2f}' for v in meta['load_before'])}, after "
             f"{' '.join(f'{v:.2f}' for v in meta['load_after'])}",
             "contestants take turns epoch by epoch (the order rotates); train s = the epochs' wall time "
             "(start-up and test scoring apart)", ""]
    epochs = meta["epochs"]
    head = (f"{'contestant':<30} {'denormals':<9} " + " ".join(f"{'ep ' + str(i + 1):>7}" for i in range(epochs))
            + f" {'train s':>8} {'last/1st':>8} {'test acc':>8} {f'to {target:.0%}':>8} {'start s':>7}")
    lines += [head, "-" * len(head)]
    for r in res.values():
        to = f"{r['time_to_target_s']:8.1f}" if r["time_to_target_s"] is not None else f"{'-':>8}"
        lines.append(f"{r['label']:<30} {r['denormals']:<9} " + " ".join(f"{v:7,.0f}" for v in r["samples_per_s"])
                     + f" {r['train_s']:8.1f} {r['last_over_first']:8.2f} {100 * r['test_acc'][-1]:7.2f}% {to}"
                     f" {r['startup_s']:7.1f}")
    lines += ["", "samples/s at the median step of each epoch (a burst of other load moves it less):"]
    lines += [f"  {r['label']:<30} " + " ".join(f"{v:7,.0f}" for v in r["median_step_samples_per_s"])
              + f"   last/1st {r['median_last_over_first']:.2f}" for r in res.values()]
    lines += ["", "test accuracy after each epoch:"]
    lines += [f"  {r['label']:<30} " + " ".join(f"{100 * v:6.2f}" for v in r["test_acc"]) for r in res.values()]
    lines += ["", "engines: " + "; ".join(f"{r['label']}: {r['engine']}" for r in res.values())]
    lines += ["", "targets (issue 22):"]
    for t in tgts:
        if t["met"] is None:
            lines.append(f"  [n/a] {t['target']}: {t['why']}")
        else:
            lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']:.2f}"
                         + (f" (median steps: {t['median_step_value']:.2f})" if "median_step_value" in t else ""))
    for note in meta.get("notes", []):
        lines.append(f"note: {note}")
    if denormal_lines:
        lines += [""] + denormal_lines
    return "\n".join(lines)


def plot(path: str, res: dict, target: float) -> None:
    """samples/s per epoch (left) and test accuracy against training time (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for r in res.values():
        style = "-o" if r["kind"] == "dpnn" else "--^"
        ax.plot(range(1, len(r["samples_per_s"]) + 1), r["samples_per_s"], style, label=r["label"])
        t = [sum(e["train_s"] for e in r["epochs"][:i + 1]) for i in range(len(r["epochs"]))]
        ax2.plot(t, [100 * v for v in r["test_acc"]], style, label=r["label"])
    ax.set(xlabel="epoch", ylabel="samples/s", title="throughput per epoch")
    ax.set_ylim(bottom=0)
    ax2.axhline(100 * target, color="0.6", lw=0.8, ls=":")
    ax2.set(xlabel="training time, s", ylabel="test accuracy, %", title="time to accuracy")
    for a_ in (ax, ax2):
        a_.grid(alpha=0.3)
        a_.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)     # like Ctrl-C: report the epochs measured so far
    from dpnn.placement import usable_cores

    # everything imported before a long run: the working tree may change meanwhile
    from .denormals import denormal_costs
    from .denormals import report as denormal_report
    from .torch_ref import available
    chosen = contestants(a.contestants, a.workers, a.threads)
    notes = []
    has_torch, why = available()
    if not has_torch and any(c.kind == "torch" for c in chosen.values()):
        chosen = {k: c for k, c in chosen.items() if c.kind != "torch"}
        notes.append(f"PyTorch contestants skipped: {why}")
    if not chosen:
        print("nothing to run: no contestant left", file=sys.stderr)
        return 2
    meta = {"epochs": a.epochs, "batch": a.batch_size, "seed": a.seed, "target_accuracy": a.target_accuracy,
            "cpu": cpu_name(), "cores": usable_cores(), "machine": platform.platform(),
            "python": sys.version.split()[0],
            "load_before": list(os.getloadavg()), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "notes": notes}
    with tempfile.TemporaryDirectory(prefix="dpnn-steady-") as tmp:
        data_path = os.path.join(tmp, "data.npz")
        meta["data"] = load_data(a, data_path)
        res, loads, done = run(a, chosen, data_path)
    meta["load_after"], meta["load_per_round"] = list(os.getloadavg()), [list(v) for v in loads]
    if done < a.epochs:
        meta["epochs"] = done
        notes.append(f"interrupted: {done} of {a.epochs} epochs measured for every contestant")
    denormal = None
    if a.repeats and done == a.epochs:           # interrupted: report at once
        denormal = denormal_costs(a.repeats, a.batch_size)
    tgts = targets(res)
    print("\n" + report(res, meta, tgts, denormal_report(denormal) if denormal else []))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**meta, "contestants": res, "targets": tgts, "denormal_moments": denormal}, f, indent=1)
    if a.plot:
        plot(a.plot, res, a.target_accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
