"""What ``dpnn train`` writes and prints: the output paths it checks and locks before training,
the outputs, the summary, the interrupt notice."""
from __future__ import annotations

import json
import math
import os
import shlex
import signal

from dpnn import Callback, placement
from dpnn.errors import OutputError
from dpnn.files import input_problem
from dpnn.io import architecture_path, atomic_write, weights_path
from dpnn.signals import Terminated, held_signals, say
from dpnn.training import TrainingInterrupted

from . import checkpoint as ckpt
from . import runnable
from .plot import plot_history


class EpochLog(Callback):
    """Adds time and throughput to the history; remembers the parallel layout for the summary
    and what the callbacks announced (``events``: early stopping, restored weights, lr cuts)."""

    def __init__(self, history: dict) -> None:
        self.history, self.workers, self.threads, self.epoch = history, 1, None, None
        self.ranks = 1                 # MPI ranks (--backend mpi), each with `workers` workers
        self.stage = "training"        # then "evaluating", then "writing" (for the Ctrl-C notice)
        self.events: list[dict] = []

    def on_train_begin(self, logs):
        self.events = self.session.history.events      # fit's list: filled as training goes
        self.workers = logs.get("workers", 1)
        self.threads = logs.get("threads_per_worker")
        self.ranks = logs.get("ranks", 1)

    def on_epoch_begin(self, epoch, logs):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs):
        self.history.setdefault("time", []).append(float(logs["time"]))
        self.history.setdefault("samples_per_s", []).append(float(logs["samples_per_s"]))
        self.epoch = None


def check_writable(path: str, flag: str, usage_error) -> None:
    """``path`` is a regular file or nothing yet, in a directory this process may write."""
    if path == "":
        raise usage_error(f"{flag} is empty; give the path of a file to write")
    if path.endswith((os.sep, "/")):
        raise usage_error(f"{flag} {path} names a directory (it ends with /); give a file path "
                          f"such as {os.path.join(path, 'weights.hdf5')}")
    problem = input_problem(path)
    if problem not in (None, "not found", "is a broken symbolic link"):   # a rename replaces a link
        raise usage_error(f"{flag} {path} {problem}; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise usage_error(f"{flag} {path}: cannot create files in {parent}")


FILE_FLAGS = ("--out", "--history", "--plot")
DEFAULT_OUT = "weights.hdf5"          # --out when not given (arguments.py's default)


def _files(args) -> list[tuple[str, str]]:
    """(flag, path) of the file outputs given."""
    return [(flag, path) for flag, path in zip(FILE_FLAGS, (args.out, args.history, args.plot)) if path]


def _folders(args) -> list[tuple[str, str]]:
    """(flag, path) of the folder outputs given."""
    return [(flag, path) for flag, path in (("--checkpoint-dir", args.checkpoint_dir),
                                            ("--tensorboard", getattr(args, "tensorboard", None))) if path]


def planned_outputs(args) -> list[tuple[str, str, str]]:
    """(label, description, path) of every file, folder and lock this run writes, in a fixed
    order; a label names the path as the user gave it, a description says what it is."""
    guarded = _guarded(args)
    return [(label, what, path) for label, what, path, _ in guarded] + \
        [(f"the lock file of {what} ({lock})", f"the lock file of {what}", lock) for _, what, _, lock in guarded]


def run_locks(args) -> list[tuple[str, str]]:
    """(lock file, what it guards, as the user named it) of every output: a file's lock beside
    it (the architecture file of --out too, so no other run writes it as --history), a
    folder's lock inside it."""
    return [(lock, label) for label, _, _, lock in _guarded(args)]


def _guarded(args) -> list[tuple[str, str, str, str]]:
    """(label, description, path, lock file) of each output."""
    found = []
    for flag, path in _files(args):
        target = weights_path(path) if flag == "--out" else path
        found.append((f"{flag} {path}", flag, target, path + ".lock"))
        if flag == "--out":
            arch = architecture_path(target)
            found.append((f"the architecture file of --out ({arch})", "the architecture file of --out",
                          arch, arch + ".lock"))
    found += [(f"{flag} {path}", flag, path, os.path.join(path, ".lock")) for flag, path in _folders(args)]
    return found


def input_paths(args) -> list[tuple[str, str]]:
    """(what, path) of what this run reads, so that no output replaces it: the --dataset folder
    (every file in it), a --model architecture file, the --plugin files."""
    found = []
    if os.path.isdir(args.dataset):
        found.append((f"the data set --dataset {args.dataset}", args.dataset))
    if args.model.endswith(".json") or os.path.isfile(args.model):
        found.append((f"--model {args.model}", args.model))
    found += [(f"--plugin {p}", p) for p in (getattr(args, "plugin", None) or [])]
    return found


def check_distinct(args, usage_error) -> None:
    """Every output and lock of the run is a different file, none is an input of the run (the
    data, the model file, a plugin) and none inside --checkpoint-dir is named like a checkpoint
    (pruning would delete it, or it would replace one)."""
    seen: dict[str, str] = {}
    for label, what, path in planned_outputs(args):
        key = os.path.realpath(path)
        if key in seen:
            raise usage_error(f"{label} is also {seen[key]}; give each output its own path")
        seen[key] = what
    for what, path in input_paths(args):
        read = os.path.realpath(path)
        for label, _, out in planned_outputs(args):
            key = os.path.realpath(out)
            inside = os.path.isdir(read) and os.path.lexists(out) and key.startswith(read + os.sep)
            if key == read or inside:
                raise usage_error(f"{label} is {'in ' * (key != read)}{what}, which this run reads; "
                                  "give each output its own path")
    d = args.checkpoint_dir
    if not d:
        return
    for flag, path in _files(args):
        if os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(d) \
                and ckpt.named_like_checkpoint(path):
            raise usage_error(f"{flag} {path} is inside --checkpoint-dir {d} and named like a checkpoint, "
                              "which pruning deletes or a later checkpoint replaces; choose another name")


def check_outputs(args, locks: ckpt.RunLocks, usage_error) -> None:
    """Output paths are writable files (folders for --checkpoint-dir and --tensorboard),
    distinct from each other, from the locks and from the inputs; this run alone holds them,
    no earlier run is overwritten; ``usage_error(message)`` is raised otherwise."""
    for flag, path in zip(FILE_FLAGS, (args.out, args.history, args.plot)):
        if path is not None:                   # "" too: refused as empty
            check_writable(path, flag, usage_error)
    for flag, path in _folders(args):
        if os.path.lexists(path) and not os.path.isdir(path):
            problem = input_problem(path) or "exists and is not a directory"
            raise usage_error(f"{flag} {path} {problem}; give a folder")
        check_writable(os.path.join(path, ".lock"), flag, usage_error)
    check_distinct(args, usage_error)
    d = args.checkpoint_dir
    if d is None and args.resume:
        raise usage_error("--resume needs --checkpoint-dir DIR")
    for lock, label in run_locks(args):
        locks.acquire(lock, label, usage_error)
    found = ckpt.list_checkpoints(d) if d and os.path.isdir(d) else []
    if found and not args.resume:
        raise usage_error(f"{d} already holds checkpoints of an earlier run (up to epoch {found[-1][0]}); "
                         "pass --resume to continue it, or choose another --checkpoint-dir, or delete them")


def lock_checkpoints(args, locks: ckpt.RunLocks, usage_error) -> None:
    d = args.checkpoint_dir
    locks.acquire(os.path.join(d, ".lock"), f"--checkpoint-dir {d}", usage_error)


def history_report(history: dict, events: list[dict]) -> tuple[dict, dict]:
    """(the history without lists that stayed empty (val_* without validation data), the early
    stopping summary: ``stopped_epoch`` and ``restored_epoch``, 1-based, None when not)."""
    kept = {k: v for k, v in history.items() if not (isinstance(v, list) and not v)}
    found = {e["event"]: e["epoch"] for e in events}
    return kept, {"stopped_epoch": found.get("early_stopping"),
                  "restored_epoch": found.get("restored_best_weights")}


def write_outputs(run, config: dict, test_loss: float, test_acc: float, events: list[dict] = ()) -> None:
    """--out, --history and --plot, each atomically, with Ctrl-C held back until they are done.
    ``events``: what fit's callbacks announced (in the history JSON, marked on the plot)."""
    a, model = run.args, run.model
    model.metadata.update({"test_accuracy": test_acc, "test_loss": test_loss,
                           "epochs": len(run.history["loss"])})
    history, stopping = history_report(run.history, list(events))
    report = {"config": config, "dataset": run.info["name"], "test_loss": test_loss,
              "test_accuracy": test_acc, "history": history, "early_stopping": stopping,
              "events": list(events)}
    with held_signals():
        if a.out:
            with ckpt.writing("--out", a.out):
                os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
                model.save(a.out)
        if a.history:
            text = json.dumps(ckpt.json_safe(report), indent=1) + "\n"
            with ckpt.writing("--history", a.history):
                atomic_write(a.history, lambda tmp: _write_text(tmp, text))
        if a.plot:
            with ckpt.writing("--plot", a.plot):
                plot_history(history, a.plot, f"{a.model} on {run.info['name']}", list(events))


def after_write_error(run, error: OutputError, prog: str) -> str:
    """What is left and what to do after ``error`` (the rest of its one-line message)."""
    d = run.args.checkpoint_dir
    resume = resume_command(run.args) if d else None
    if error.what in ("checkpoint", "--tensorboard"):
        return f"the checkpoints before it are intact; free some space, then resume with: {resume}"
    if resume:
        return (f"the previous file is unchanged and training is saved in {d}; free some space, "
                f"then {resume} writes the outputs again")
    return "the previous file is unchanged; free some space and run again"


def resume_command(args) -> str:
    """The command that resumes this run, writing the same outputs: --resume takes the outputs
    from its command line only (a checkpoint never decides which files are replaced)."""
    words = [runnable("train"), "--resume", "--checkpoint-dir", shlex.quote(args.checkpoint_dir)]
    given = [("--out", args.out if args.out != DEFAULT_OUT else None), ("--history", args.history),
             ("--plot", args.plot), ("--tensorboard", getattr(args, "tensorboard", None))]
    words += [f"{flag} {shlex.quote(path)}" for flag, path in given if path]
    return " ".join(words)


def summary(run, log: EpochLog, test_loss: float, test_acc: float) -> str:
    a, h = run.args, run.history
    times = h.get("time", [])
    per_epoch = sum(times) / len(times) if times else math.nan
    rate = sum(h.get("samples_per_s", [])) / len(times) if times else math.nan
    blas = log.threads or (placement.current_blas_threads() if log.workers == 1 else "?")
    epochs = len(h["loss"])
    n_val = int(round(len(run.train) * a.val_split))            # as fit splits it: the start line's count
    held = f" ({n_val:,} more held out for validation)" if n_val else ""
    lines = [f"summary: {a.model} on {run.info['name']}, {epochs} epoch{'s' * (epochs != 1)}, "
             f"{len(run.train) - n_val:,} training samples{held}",
             f"  test accuracy   {test_acc:.4f} (loss {test_loss:.4f}, {len(run.test):,} samples)"
             if len(run.test) else "  test accuracy   none (no test set: --test-split 0)",
             f"  time per epoch  {per_epoch:.1f} s (mean of {len(times)}; {rate:,.0f} samples/s)",
             f"  workers         {f'{log.ranks} MPI ranks x ' if log.ranks > 1 else ''}"
             f"{log.workers} x {blas} thread{'s' * (blas != 1)}"]
    _, stopping = history_report(h, log.events)
    if stopping["stopped_epoch"]:
        restored = stopping["restored_epoch"]
        lines.append(f"  early stopping  after epoch {stopping['stopped_epoch']}"
                     + (f"; weights of epoch {restored} restored" if restored else ""))
    outputs = [(a.out, "weights"), (a.history, "history"), (a.plot, "plot")]
    lines += [f"  {name:<15} {path}" for path, name in outputs if path]
    return "\n".join(lines)


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    if isinstance(exc, TrainingInterrupted):
        return 128 + exc.signum
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def interrupted(run, log: EpochLog, exc: KeyboardInterrupt, prog: str, saved: str | None = None) -> int:
    """The notice after Ctrl-C/SIGTERM: where training stopped, the checkpoint, how to resume.

    ``saved``: the checkpoint just written at the step where ``fit`` stopped, if any."""
    a = run.args
    if log.stage == "writing":         # the outputs were finished before the interrupt was taken
        say(f"{prog}: interrupted; the outputs were completed first")
        return exit_status(exc)
    progress = exc.progress if isinstance(exc, TrainingInterrupted) else None
    if log.stage == "evaluating":
        where = "while evaluating on the test set"
    elif progress is not None and progress.step:
        where = f"during epoch {progress.epoch + 1}/{a.epochs}, after step {progress.step}"
    elif log.epoch is not None and progress is None:
        where = f"during epoch {log.epoch + 1}/{a.epochs}"
    else:
        where = "between epochs"
    lines = [f"{prog}: interrupted {where}; --out was not written"]
    latest = saved
    if latest is None and a.checkpoint_dir and os.path.isdir(a.checkpoint_dir):
        latest = ckpt.latest_checkpoint(a.checkpoint_dir)
    if latest:
        lines += [f"last complete checkpoint: {latest}",
                  f"resume with: {resume_command(a)}"]
    else:
        lines.append("no checkpoint was written yet; run the command again to start over")
    say("\n".join(lines))           # never raises: a closed pipe must not cost the exit status
    return exit_status(exc)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
