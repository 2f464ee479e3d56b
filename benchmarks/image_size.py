"""Users' own photos: speed and memory from 32 to 224 px, dpnn against PyTorch (issue 28).

    python -m benchmarks.image_size                                   # both models, 32/64/128/224 px
    python -m benchmarks.image_size --models gap-cnn --sizes 32,64 --rounds 2
    python -m benchmarks.image_size --background 2                    # 2 spinning processes beside
    python -m benchmarks.image_size --background 1 --unpinned         # and dpnn with unpinned workers

Two models users train on photos, RGB, batch 32: ``gap-cnn`` (Conv 32-64-128, 3x3 'same', ReLU,
max pools between, global average pooling, Dense) and the ``resnet`` preset (the wide ResNet-8
``dpnn train --model resnet`` trains). Two contestants, as users run them: dpnn with one
single-threaded worker per core (``workers=N, threads_per_worker=1``) and PyTorch with one thread
per core (``torch.set_num_threads(N)``). Each contestant lives in its own process (its threads,
its memory), holds the same random images, and takes turns with the other: each round every
contestant trains for ``--turn-s`` seconds (at least one step), the order alternating.

Reported per model and size: samples/s (median over rounds), dpnn/PyTorch, and the peak memory of
all of a contestant's processes (the coordinator and its workers for dpnn), the sum of their
proportional set sizes (Pss, /proc/PID/smaps_rollup) sampled every 20 ms: a page shared by several
processes (the shared-memory parameters and data) is counted once in all. ``--background K``
starts K processes that spin on the CPU for the whole run (a machine shared with other jobs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from benchmarks.args import positive_int, positive_ints

MODELS = ("gap-cnn", "resnet")
BATCH = 32
CLASSES = 10


# -- the models, twice ---------------------------------------------------------------------------
def dpnn_model(name: str, size: int, budget: int | None | str = "default"):
    """The dpnn model, built for RGB ``size`` px; ``budget``: every Conv2D's im2col_budget in bytes
    (None: the whole batch at once; 'default': the layer's own)."""
    from dpnn import Activation, Conv2D, Dense, GlobalAvgPool2D, MaxPool2D, Model
    from dpnn.cli.presets import resnet
    from dpnn.layers import walk_layers
    if name == "gap-cnn":
        layers = [Conv2D(32, 3, padding="same"), Activation("relu"), MaxPool2D(2),
                  Conv2D(64, 3, padding="same"), Activation("relu"), MaxPool2D(2),
                  Conv2D(128, 3, padding="same"), Activation("relu"), GlobalAvgPool2D(), Dense(CLASSES)]
    else:
        layers = resnet(CLASSES)
    for layer in walk_layers(layers):
        if isinstance(layer, Conv2D) and budget != "default":
            layer.im2col_budget = budget
    model = Model(layers, seed=0)
    model.compile("categorical_crossentropy", "adam", lr=1e-3)
    return model.build((1, size, size, 3))


def torch_model(name: str):
    import torch.nn as nn

    def cbr(c_in, c_out, stride=1):
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    class Block(nn.Module):             # dpnn.cli.presets.basic_block
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.main = nn.Sequential(*cbr(c_in, c_out, stride)[:3],
                                      nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)) \
                if stride != 1 or c_in != c_out else nn.Identity()

        def forward(self, x):
            return (self.main(x) + self.short(x)).relu()

    if name == "gap-cnn":
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(128, CLASSES))
    return nn.Sequential(*cbr(3, 32), Block(32, 32, 1), Block(32, 64, 2), Block(64, 128, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, CLASSES))


# -- a contestant: its own process, driven over stdin/stdout --------------------------------------------
class DpnnTrainer:
    def __init__(self, model: str, size: int, cores: int, x, y, pin: bool = True, budget="default") -> None:
        from dpnn.engine import make_engine
        self.engine = make_engine(dpnn_model(model, size, budget), workers=cores, threads_per_worker=1, pin=pin)
        self.engine.place_data(x, y)
        self.rows = len(x)

    def step(self, i: int) -> None:
        import numpy as np
        self.engine.train_rows(np.arange(i * BATCH, (i + 1) * BATCH) % self.rows)

    def close(self) -> None:
        self.engine.close()


class TorchTrainer:
    def __init__(self, model: str, size: int, cores: int, x, y) -> None:
        import torch
        torch.set_num_threads(cores)
        torch.manual_seed(0)
        self.torch, self.net = torch, torch_model(model)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())          # NHWC -> NCHW
        self.y = torch.from_numpy(y)
        self.loss = torch.nn.CrossEntropyLoss()

    def step(self, i: int) -> None:
        rows = self.torch.arange(i * BATCH, (i + 1) * BATCH) % len(self.x)
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.net(self.x[rows]), self.y[rows]).backward()
        self.opt.step()

    def close(self) -> None:
        pass


def serve(spec: dict) -> None:
    """The contestant's loop: build, one warm-up step, then turns of ``{"seconds": s}``."""
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.random((4 * BATCH, spec["size"], spec["size"], 3), dtype=np.float32)
    y = rng.integers(0, CLASSES, 4 * BATCH)
    args = (spec["model"], spec["size"], spec["cores"], x, y)
    kind = spec["kind"]
    trainer = TorchTrainer(*args) if kind == "torch" else DpnnTrainer(*args, pin=kind == "dpnn",
                                                                      budget=spec.get("budget", "default"))
    i = 0
    trainer.step(i)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            order = json.loads(line)
            if order.get("stop"):
                break
            t0, steps = time.perf_counter(), 0
            while steps == 0 or time.perf_counter() - t0 < order["seconds"]:
                i += 1
                trainer.step(i)
                steps += 1
            print(json.dumps({"samples_per_s": steps * BATCH / (time.perf_counter() - t0), "steps": steps}),
                  flush=True)
    finally:
        trainer.close()


def pss_mb(pid: int) -> float:
    """Pss of ``pid`` and every descendant, MB (shared pages divided among their mappers)."""
    import psutil
    total = 0
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


class Contestant:
    """A contestant's process, and a thread that keeps the peak Pss of its process tree."""

    def __init__(self, kind: str, model: str, size: int, cores: int, budget="default") -> None:
        self.kind, self.peak, self._done = kind, 0.0, threading.Event()
        spec = json.dumps({"kind": kind, "model": model, "size": size, "cores": cores, "budget": budget})
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.image_size", "--serve", spec],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=user_env())
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self._read()                                                     # ready

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, pss_mb(self.proc.pid))
            time.sleep(0.02)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} contestant died (exit {self.proc.wait()})")
        return json.loads(line)

    def turn(self, seconds: float) -> float:
        self.proc.stdin.write(json.dumps({"seconds": seconds}) + "\n")
        self.proc.stdin.flush()
        return self._read()["samples_per_s"]

    def close(self) -> None:
        self._done.set()
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"stop": true}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def user_env() -> dict:
    """The environment a user starts a contestant with: no thread variables of dpnn's import."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS", "DPNN_DENORMALS")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return env


def measure(model: str, size: int, cores: int, rounds: int, turn_s: float, kinds: list[str],
            budget="default") -> dict:
    contestants = {}
    try:
        for kind in kinds:                                   # one at a time: start-up is not timed
            contestants[kind] = Contestant(kind, model, size, cores, budget)
        rates = {k: [] for k in kinds}
        for r in range(rounds):
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                rates[kind].append(contestants[kind].turn(turn_s))
    finally:
        for c in contestants.values():
            c.close()
    row = {"model": model, "size": size, "samples_per_s": rates,
           "median": {k: statistics.median(v) for k, v in rates.items()},
           "peak_mb": {k: c.peak for k, c in contestants.items()}}
    if "torch" in kinds:
        row["ratio"] = row["median"]["dpnn"] / row["median"]["torch"]
        row["memory_ratio"] = row["peak_mb"]["dpnn"] / row["peak_mb"]["torch"]
    return row


def budget_text(budget) -> str:
    if budget == "default":
        from dpnn.layers.conv import IM2COL_BUDGET
        return f"Conv2D's own ({IM2COL_BUDGET / 2**20:g} MiB)"
    return "none (the whole batch at once)" if budget is None else f"{budget / 2**20:g} MiB"


def report(rows: list[dict], meta: dict) -> str:
    lines = [f"image size: batch {BATCH}, RGB, dpnn {meta['cores']} workers x 1 thread against PyTorch "
             f"{meta['cores']} threads ({meta['torch']}); {meta['rounds']} rounds of {meta['turn_s']} s, "
             f"taking turns; background: {meta['background']} spinning processes; im2col budget: "
             f"{budget_text(meta.get('im2col_budget', 'default'))}",
             f"load average before {' '.join(f'{v:.2f}' for v in meta['load_before'])}, after "
             f"{' '.join(f'{v:.2f}' for v in meta['load_after'])}", ""]
    head = (f"{'model':<8} {'px':>4} {'dpnn s/s':>9} {'torch s/s':>9} {'ratio':>6} {'dpnn MB':>8} "
            f"{'torch MB':>8} {'mem':>5}")
    lines += [head, "-" * len(head)]
    for r in rows:
        m, p = r["median"], r["peak_mb"]
        t = f"{m['torch']:9.1f} {r['ratio']:6.2f}" if "torch" in m else f"{'-':>9} {'-':>6}"
        tm = f"{p['torch']:8.0f} {r['memory_ratio']:5.2f}" if "torch" in p else f"{'-':>8} {'-':>5}"
        u = "dpnn-unpinned"
        unpinned = f"  unpinned {m[u]:.1f} s/s, {p[u]:.0f} MB" if u in m else ""
        lines.append(f"{r['model']:<8} {r['size']:>4} {m['dpnn']:9.1f} {t} {p['dpnn']:8.0f} {tm}{unpinned}")
    return "\n".join(lines)


def spinners(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.image_size", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--sizes", type=positive_ints, default=[32, 64, 128, 224], help="image sizes in pixels")
    p.add_argument("--cores", type=positive_int, default=None,
                   help="dpnn workers and PyTorch threads (default: the usable cores)")
    p.add_argument("--rounds", type=positive_int, default=3, help="turns of each contestant (default 3)")
    p.add_argument("--turn-s", type=float, default=4.0, help="seconds of training per turn (default 4)")
    p.add_argument("--background", type=int, default=0, metavar="K", help="K spinning processes beside")
    p.add_argument("--no-torch", action="store_true", help="dpnn alone")
    p.add_argument("--unpinned", action="store_true", help="a third contestant: dpnn with workers not pinned "
                   "to cores (pin=False), the OS free to move them")
    p.add_argument("--im2col-budget", type=float, metavar="MIB", help="every dpnn Conv2D's im2col_budget in "
                   "MiB, 0 for the whole batch at once (default: the layer's own, 2)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--serve", help=argparse.SUPPRESS)                  # a contestant's process
    a = p.parse_args(argv)
    if a.serve:
        serve(json.loads(a.serve))
        return 0
    models = [m for m in a.models.split(",") if m]
    if any(m not in MODELS for m in models) or not models:
        p.error(f"--models: choose from {', '.join(MODELS)}")
    from benchmarks import torch_ref
    from dpnn import placement
    have_torch, torch_version = torch_ref.available()
    kinds = ["dpnn"] + (["torch"] if have_torch and not a.no_torch else []) + (["dpnn-unpinned"] if a.unpinned else [])
    cores = a.cores or placement.usable_cores()
    if a.im2col_budget is not None and a.im2col_budget < 0:
        p.error("--im2col-budget must be >= 0 (0: the whole batch at once)")
    budget = "default" if a.im2col_budget is None else int(a.im2col_budget * 2**20) or None
    meta = {"cores": cores, "rounds": a.rounds, "turn_s": a.turn_s, "background": a.background, "im2col_budget": budget,
            "torch": torch_version if "torch" in kinds else "not measured", "batch": BATCH,
            "load_before": os.getloadavg()}
    spin = spinners(a.background)
    try:
        rows = []
        for model in models:
            for size in a.sizes:
                rows.append(measure(model, size, cores, a.rounds, a.turn_s, kinds, budget))
                r = rows[-1]
                print(f"  {model} {size}px: " + ", ".join(f"{k} {v:.1f} samples/s, {r['peak_mb'][k]:.0f} MB"
                                                          for k, v in r["median"].items()), flush=True)
    finally:
        for s in spin:
            s.kill()
            s.wait()
    meta["load_after"] = os.getloadavg()
    print(report(rows, meta))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
