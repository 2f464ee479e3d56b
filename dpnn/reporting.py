"""What ``fit`` prints, as callbacks the loop calls (replace one by passing your own).

``verbose=1``: a progress bar per epoch while it runs (on a terminal only), then one line per
epoch; ``verbose=2``: the line alone; ``verbose=0``: nothing. Output that is not a terminal
(``make train > log``) gets the lines, never bar refreshes. The line::

    epoch 3/5: loss 0.3121, acc 0.8874, val_loss 0.3302, val_acc 0.8801, lr 0.001, 4,210 samples/s, 12.8 s

The engine's split of a step (compute / update / wait / reduce / optimizer) is shown only when
asked (``fit(show_step_times=True)``, ``dpnn train --show-step-times``).
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .callbacks import Callback
from .placement import contention_note
from .signals import say

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def write(line: str) -> None:
    """One line to stdout, clear of any progress bar (tqdm's bar is on stderr); a closed pipe
    (``| head``, ``| tee`` ended by Ctrl-C) silences it instead of stopping training."""
    try:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
    except (OSError, ValueError):
        say("", sys.stdout)                 # points the broken stdout at /dev/null


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:           # a closed stream
        return False


def step_split(times: dict) -> str:
    """'compute 89% update 7% wait 4% reduce 0% optimizer 0%' of summed step times."""
    total = sum(times.values()) or 1.0
    return " ".join(f"{k} {100 * v / total:.0f}%" for k, v in times.items())


def epoch_line(epoch: int, epochs: int, logs: dict, step_times: dict | None = None) -> str:
    """The one line of an epoch (see the module docstring)."""
    parts = [f"loss {logs['loss']:.4f}"]
    for key in ("acc", "val_loss", "val_acc"):
        if key in logs and logs[key] == logs[key]:          # not NaN (a regression has no acc)
            parts.append(f"{key} {logs[key]:.4f}")
    parts += [f"lr {logs['lr']:.4g}", f"{logs['samples_per_s']:,.0f} samples/s", f"{logs['time']:.1f} s"]
    if step_times:
        parts.append(f"step: {step_split(step_times)}")
    return f"epoch {epoch + 1}/{epochs}: " + ", ".join(parts)


class EpochLogger(Callback):
    """``verbose=2``: the line before training (what runs where) and one line per epoch."""

    def __init__(self, show_step_times: bool = False) -> None:
        self.show_step_times = show_step_times
        self.epochs = 0

    def on_train_begin(self, logs):
        self.epochs = logs["epochs"]
        n = logs["epochs"] - logs["initial_epoch"]
        write(f"training {logs['samples']:,} samples, {n} epoch{'s' * (n != 1)}, on {logs['engine_text']}")
        for note in (logs.get("workers_note"), contention_note(logs.get("threads_per_worker"))):
            if note:
                write(note)

    def on_epoch_end(self, epoch, logs):
        times = self.session.step_times if self.show_step_times else None
        write(epoch_line(epoch, self.epochs, logs, times))


class ProgressBar(EpochLogger):
    """``verbose=1``: :class:`EpochLogger`'s lines, and while an epoch runs a bar (stderr) with
    the running loss, accuracy and samples/s (one speed figure), refreshed a few times a second.
    Without a terminal it is the EpochLogger alone."""

    def __init__(self, show_step_times: bool = False, stream=None, mininterval: float = 0.2) -> None:
        super().__init__(show_step_times)
        self.stream, self.mininterval = stream, mininterval
        self.bar = None

    def on_epoch_begin(self, epoch, logs):
        stream = self.stream or sys.stderr
        if not (is_terminal(stream) and (self.stream is not None or is_terminal(sys.stdout))):
            return
        self.bar = tqdm(total=logs["samples"], desc=f"epoch {epoch + 1}/{logs['epochs']}", unit="sample",
                        leave=False, file=stream, dynamic_ncols=True, bar_format=BAR_FORMAT,
                        mininterval=self.mininterval)

    def on_batch_end(self, step, logs):
        p, bar = self.session.progress, self.bar
        if bar is None or p is None or not p.seen:
            return
        post = {"loss": f"{p.loss_sum / p.seen:.4f}"}
        if p.correct >= 0:
            post["acc"] = f"{p.correct / p.seen:.4f}"
        post["samples/s"] = f"{p.seen / max(p.elapsed, 1e-9):,.0f}"
        if self.show_step_times:
            post["step"] = step_split(self.session.step_times)
        bar.set_postfix(post, refresh=False)
        bar.update(p.seen - bar.n)                 # redraws (with the postfix) when it is time

    def on_epoch_end(self, epoch, logs):
        self.close()
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def default_reporter(verbose: int, show_step_times: bool = False) -> Callback | None:
    """The reporter fit adds for ``verbose`` (0, 1 or 2) unless the caller passed one of these classes."""
    if verbose == 0:
        return None
    return ProgressBar(show_step_times) if verbose == 1 else EpochLogger(show_step_times)
