"""The contestants of ``benchmarks.steady_state``: each a long-lived process, driven epoch by epoch.

Every contestant runs in its own Python process, started with the environment its users would
have (the thread variables dpnn's own import sets in the driver are taken out again), so its
thread count and its floating-point mode are its own: PyTorch never sees dpnn's flush-to-zero,
and dpnn's in-process engine gets the BLAS threads ``import dpnn`` gives it. Between its turns a
contestant keeps all of its state (dpnn: an engine left open, so the workers live on; PyTorch:
the model, the optimizer and the ``DataLoader``) and waits on its pipe.

Pipe protocol, one JSON object per line::

    driver -> contestant   {"epoch": e}          train epoch e, then score the test set
                           {"stop": true}
    contestant -> driver   {"ready": true, "startup_s", "denormals", "engine"}
                           {"epoch", "train_s", "samples_per_s", "step_median_s", "loss", "acc",
                            "test_acc", "test_s"}
                           {"error": traceback}

``step_median_s`` is the epoch's median step (wall time from one step's end to the next): a
burst of other load on a shared machine stretches the epoch's wall time, much less its median.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass

# Nothing from dpnn at module level: importing dpnn switches flush-to-zero on, and the PyTorch
# contestants import this module.
BITS = 0x00100000          # the float32 2**-129, a denormal


@dataclass(frozen=True)
class Contestant:
    """One way of training seed-cnn that the benchmark times."""
    label: str               # the row's name in the table
    kind: str                # 'dpnn' or 'torch'
    workers: int = 1         # dpnn: worker processes (1: in this process, as fit(workers=1))
    threads: int = 0         # torch: torch.set_num_threads (0: PyTorch's default)
    flush: bool = True       # dpnn: DPNN_DENORMALS flush/keep; torch: torch.set_flush_denormal


def flushes_denormals() -> bool:
    """Whether this thread reads a denormal as zero, found by adding denormals (no dpnn import)."""
    import numpy as np
    return float(np.full(8, BITS, np.uint32).view(np.float32).sum()) == 0.0


def contestant_env(c: Contestant, user_env: dict) -> dict:
    """The environment a user would start this contestant with: the driver's as it was before
    ``import dpnn`` filled in thread variables, plus the denormal switch for dpnn."""
    env = dict(user_env)
    env.pop("DPNN_DENORMALS", None)
    if c.kind == "dpnn" and not c.flush:
        env["DPNN_DENORMALS"] = "keep"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def median(values: list[float]) -> float:
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def step_clock():
    """A dpnn Callback that keeps each step's wall time (``steps``) of the epoch being trained."""
    import dpnn

    class StepClock(dpnn.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.steps, self.last = [], time.perf_counter()

        def on_batch_end(self, step, logs=None):
            now = time.perf_counter()
            self.steps.append(now - self.last)
            self.last = now

    return StepClock()


class DpnnTrainer:
    """seed-cnn with ``fit`` on an engine left open between epochs (workers > 1: a worker pool)."""

    def __init__(self, c: Contestant, data: dict, batch: int, seed: int) -> None:
        from dpnn.engine import make_engine

        from .models import build
        self.X, self.y, self.batch, self.seed = data["x_train"], data["y_train"], batch, seed
        self.model = build("seed-cnn", (1,) + self.X.shape[1:], num_classes=int(self.y.max()) + 1, seed=seed)
        self.engine = make_engine(self.model, workers=c.workers, seed=seed)
        self.engine.place_data(self.X, self.y)          # a pool starts here (start-up, not training)
        self.engine_text = str(self.engine.describe())
        self.clock = step_clock()

    def epoch(self, e: int) -> dict:
        h = self.model.fit(self.X, self.y, epochs=e + 1, initial_epoch=e, batch_size=self.batch,
                           seed=self.seed, engine=self.engine, verbose=0, callbacks=[self.clock])
        return {"loss": h["loss"][-1], "acc": h["acc"][-1], "step_median_s": median(self.clock.steps)}

    def test(self, x, y) -> float:
        return self.engine.evaluate(x, y)[1]

    def close(self) -> None:
        self.engine.close()


class TorchTrainer:
    """seed-cnn in PyTorch as its users train it: ``DataLoader`` (defaults), ``torch.optim.Adam``."""

    def __init__(self, c: Contestant, data: dict, batch: int, seed: int) -> None:
        import numpy as np
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        from .torch_ref import seed_cnn
        if c.flush:
            torch.set_flush_denormal(True)      # before any thread of PyTorch's pool exists
        if c.threads:
            torch.set_num_threads(c.threads)
        torch.manual_seed(seed)
        self.torch = torch
        x, y = data["x_train"], data["y_train"]
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))         # NHWC -> NCHW
        self.loader = DataLoader(TensorDataset(xt, torch.from_numpy(y.astype(np.int64))),
                                 batch_size=batch, shuffle=True)
        self.net = seed_cnn(int(y.max()) + 1, x.shape[1:])
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.engine_text = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"

    def epoch(self, e: int) -> dict:
        self.net.train()
        loss_sum = hits = n = 0
        steps, last = [], time.perf_counter()
        for xb, yb in self.loader:
            self.opt.zero_grad()
            out = self.net(xb)
            loss = self.loss_fn(out, yb)
            loss.backward()
            self.opt.step()
            loss_sum += loss.item() * len(yb)
            hits += int((out.argmax(1) == yb).sum())
            n += len(yb)
            now = time.perf_counter()
            steps.append(now - last)
            last = now
        return {"loss": loss_sum / n, "acc": hits / n, "step_median_s": median(steps)}

    def test(self, x, y) -> float:
        import numpy as np
        self.net.eval()
        hits = 0
        with self.torch.no_grad():
            for a in range(0, len(x), 1000):
                xb = self.torch.from_numpy(np.ascontiguousarray(x[a:a + 1000].transpose(0, 3, 1, 2)))
                hits += int((self.net(xb).argmax(1).numpy() == y[a:a + 1000]).sum())
        return hits / len(x)

    def close(self) -> None:
        pass


def serve(contestant: dict, data_path: str, batch: int, seed: int) -> None:
    """A contestant's process: build its trainer, then answer the driver's lines (module docstring)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)      # the pipe; anything printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    c = Contestant(**contestant)
    try:
        import numpy as np
        with np.load(data_path) as f:
            data = {k: f[k] for k in f.files}
        t0 = time.perf_counter()
        trainer = (DpnnTrainer if c.kind == "dpnn" else TorchTrainer)(c, data, batch, seed)
        out.write(json.dumps({"ready": True, "startup_s": time.perf_counter() - t0, "engine": trainer.engine_text,
                              "denormals": "flushed" if flushes_denormals() else "IEEE"}) + "\n")
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("stop"):
                break
            t0 = time.perf_counter()
            row = trainer.epoch(msg["epoch"])
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            test_acc = trainer.test(data["x_test"], data["y_test"])
            row.update(epoch=msg["epoch"], train_s=train_s, samples_per_s=len(data["x_train"]) / train_s,
                       test_acc=test_acc, test_s=time.perf_counter() - t1)
            out.write(json.dumps(row) + "\n")
        trainer.close()
    except Exception:
        out.write(json.dumps({"error": traceback.format_exc()}) + "\n")


class ContestantProcess:
    """The driver's handle on one contestant's process."""

    def __init__(self, c: Contestant, data_path: str, batch: int, seed: int, user_env: dict) -> None:
        self.contestant = c
        code = ("import json, sys; from benchmarks.contestants import serve; "
                "serve(json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))")
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(asdict(c)), data_path, str(batch),
                                      str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=contestant_env(c, user_env), start_new_session=True)
        self.ready = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"contestant {self.contestant.label!r} exited (status {self.proc.wait()})")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"contestant {self.contestant.label!r} failed:\n{msg['error']}")
        return msg

    def epoch(self, e: int) -> dict:
        """Train epoch ``e`` in the contestant's process; its row (times, accuracies)."""
        self.proc.stdin.write(json.dumps({"epoch": e}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"stop": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

