"""Train a CNN from the shell on real data, on every core, with checkpoints and a saved model.

    python -m launch.train --workers auto                       # seed-cnn on Fashion-MNIST, 5 epochs
    python -m launch.train --dataset mnist-5k --model lenet5 --epochs 10 --plot curves.png
    python -m launch.train --dataset ./mnist_dataset --limit 2000 --epochs 1 --quiet
    python -m launch.train --dataset ./my_photos --image-size 32x32x3 --val-split 0.1 --plot curves.png
    python -m launch.train --resume --checkpoint-dir checkpoints  # continue an interrupted run
    mpiexec -n 2 python -m launch.train --backend mpi --workers auto

Exit status: 0 done, 1 training failed or an output could not be written (full disk), 2 bad
arguments or data (or the outputs are in use by another run), 130 interrupted (Ctrl-C), 143
terminated (SIGTERM). Ctrl-C or SIGTERM stops after the current step, writes a checkpoint at
that step and prints how to resume; --resume then continues bitwise (with --deterministic).
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import signal
import sys
from contextlib import closing
from types import SimpleNamespace

from dpnn import EarlyStopping, threads
from dpnn.callbacks import LRScheduler
from dpnn.augment import SPEC_HELP, parse_spec
from dpnn.datasets import LOADERS, load_dataset
from dpnn.engine import Engine, make_engine
from dpnn.errors import DataError, OutputError, WeightsError, WorkerError
from dpnn.training import Progress, TrainingDiverged, TrainingInterrupted
from launch import checkpoint as ckpt
from launch import mpi
from launch import outputs
from launch.data import checked_text, image_size_arg
from launch.plot import INSTALL_HINT, matplotlib_available
from launch.presets import PRESETS, build_model

PROG = "python -m launch.train"
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.01}
DEFAULT_MOMENTUM = 0.9
# Settings that define the computation: --resume takes them from the checkpoint and refuses
# a different value on the command line. Every other flag may change when resuming.
RUN_KEYS = ("dataset", "image_size", "label_column", "model", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
            "clip_norm", "val_split", "early_stopping", "patience", "min_delta", "lr_schedule",
            "seed", "deterministic", "limit", "augment")


class UsageError(ValueError):
    """A bad command line; printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Adds '(default: X)' to each option's help unless the help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


augment_arg = checked_text(parse_spec)               # --augment SPEC (grammar in --help)


def workers_arg(text: str):
    try:
        return threads.parse_count(text, "--workers")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter,
                      epilog="--augment " + SPEC_HELP)
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="fashion-mnist", metavar="NAME|DIR",
                   help=f"named data set ({', '.join(LOADERS)}) or a directory of your own data: "
                        "four IDX files, train.npz, train.csv or train/<class>/*.png folders; "
                        "'python -m launch.data' lists what is installed, 'python -m launch.data "
                        "--inspect DIR' what a directory holds")
    g.add_argument("--image-size", type=image_size_arg, default=None, metavar="HxW[xC]",
                   help="--dataset DIR of image folders: resize every image to it; of CSV or flat npz "
                        "rows: the image each row holds (default: images as they are, square "
                        "grayscale rows)")
    g.add_argument("--label-column", default=None, metavar="N|NAME",
                   help="--dataset DIR of CSV files: the label column, an index (0 first, -1 last) or "
                        "a header name (default: detected)")
    g.add_argument("--model", default="seed-cnn", metavar="PRESET|FILE.json",
                   help=f"preset ({', '.join(PRESETS)}) or an architecture JSON as model.save() writes it")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="train on the first N training samples only (quick runs); the test set is kept whole "
                        "(default: all samples)")
    g.add_argument("--val-split", type=finite_float, default=0.0, metavar="F",
                   help="hold out the last fraction F of the training samples for validation (0: none)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=5, metavar="N", help="total number of epochs (also when resuming)")
    g.add_argument("--batch-size", type=int, default=64, metavar="N", help="global batch size, split across the workers")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="optimizer")
    g.add_argument("--lr", type=finite_float, default=None,
                   help="learning rate (default: 0.001 for adam, 0.01 for sgd)")
    g.add_argument("--momentum", type=finite_float, default=None, metavar="M",
                   help=f"SGD momentum, only with --optimizer sgd (default: {DEFAULT_MOMENTUM})")
    g.add_argument("--weight-decay", type=finite_float, default=0.0, metavar="WD",
                   help="L2 weight decay added to the gradients")
    g.add_argument("--clip-norm", type=finite_float, default=None, metavar="C",
                   help="clip the global gradient norm to C (default: no clipping)")
    g.add_argument("--lr-schedule", choices=("none", "plateau", "cosine"), default="none",
                   help="plateau: halve the lr after 2 epochs without improvement; cosine: decay to 1e-6 over --epochs")
    g.add_argument("--early-stopping", action="store_true",
                   help="stop when validation accuracy (training accuracy without --val-split) stops "
                        "improving, and keep the best weights")
    g.add_argument("--patience", type=int, default=None, metavar="N",
                   help="epochs without improvement before early stopping (default: 3)")
    g.add_argument("--min-delta", type=finite_float, default=None, metavar="D",
                   help="smallest accuracy gain that counts as an improvement (default: 0.0)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="seed for initialisation, shuffling and dropout")
    g.add_argument("--augment", type=augment_arg, default="none", metavar="SPEC",
                   help="augment every training batch inside the workers, e.g. shift=2,flip "
                        "(grammar below; keyed per sample, so any worker count trains alike)")
    g.add_argument("--deterministic", action="store_true",
                   help="bitwise reproducible results whatever the worker count (a little slower)")
    g = p.add_argument_group("parallelism")
    g.add_argument("--workers", type=workers_arg, default="auto", metavar="N|auto",
                   help="data-parallel worker processes, which also score the validation and test sets; "
                        "auto: one per usable core; 1: everything in this process")
    g.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                   help="BLAS threads per worker (default: chosen with --workers)")
    g.add_argument("--backend", choices=("shm", "mpi"), default="shm",
                   help="shm: shared memory on this machine; mpi: across the ranks of mpiexec, "
                        "shared memory within each")
    g.add_argument("--oversubscribe", action="store_true",
                   help="allow more workers (x threads) than a sane multiple of the usable cores")
    g.add_argument("--worker-timeout", type=finite_float, default=None, metavar="SECONDS",
                   help="a worker silent for this long during a step counts as hung and is replaced "
                        "(default: the engine's)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="weights.hdf5", metavar="PATH",
                   help="trained weights (HDF5; the architecture JSON goes beside it), written once at the end")
    g.add_argument("--checkpoint-dir", default="checkpoints", metavar="DIR",
                   help=f"write a checkpoint after every epoch here (the newest {ckpt.KEEP} are kept); "
                        "'none' disables checkpoints")
    g.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also write a checkpoint every N steps within an epoch (default: only after "
                        "each epoch, and at the step where Ctrl-C or SIGTERM stopped training)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --checkpoint-dir (an epoch's "
                        "end or a step within one) with its saved settings; damaged ones are skipped")
    g.add_argument("--history", default=None, metavar="PATH", help="write the per-epoch history, test accuracy and configuration as JSON (default: none)")
    g.add_argument("--plot", default=None, metavar="PATH", help="write loss/accuracy curves as a PNG; needs matplotlib (default: none)")
    g.add_argument("--quiet", action="store_true", help="print only the final summary")
    return p


def explicit_args(argv) -> dict:
    """Only the options actually given on the command line (to compare with a checkpoint)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


# -- validation (right after parsing) ---------------------------------------------------------
def check_args(args) -> None:
    """Range checks; raises UsageError with a one-line message."""
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr is None or args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (args.momentum is None or 0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}"),
        (args.momentum is None or args.optimizer == "sgd", "--momentum applies to --optimizer sgd only"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (args.clip_norm is None or args.clip_norm > 0, f"--clip-norm must be > 0, got {args.clip_norm}"),
        (0 <= args.val_split < 1, f"--val-split must be in [0, 1), got {args.val_split}"),
        (args.patience is None or args.patience >= 1, f"--patience must be >= 1, got {args.patience}"),
        (args.min_delta is None or args.min_delta >= 0, f"--min-delta must be >= 0, got {args.min_delta}"),
        (args.early_stopping or (args.patience is None and args.min_delta is None),
         "--patience and --min-delta need --early-stopping"),
        (args.limit is None or args.limit >= 1, f"--limit must be >= 1, got {args.limit}"),
        (args.threads_per_worker is None or args.threads_per_worker >= 1,
         f"--threads-per-worker must be >= 1, got {args.threads_per_worker}"),
        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
        (args.worker_timeout is None or args.worker_timeout > 0,
         f"--worker-timeout must be > 0 seconds, got {args.worker_timeout}"),
        (args.checkpoint_every is None or args.checkpoint_every >= 1,
         f"--checkpoint-every must be >= 1, got {args.checkpoint_every}"),
        (args.plot is None or matplotlib_available(), f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def resolve_defaults(args) -> None:
    """Fill the defaults that depend on other flags, so the saved configuration is explicit."""
    args.lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    if args.optimizer == "sgd" and args.momentum is None:
        args.momentum = DEFAULT_MOMENTUM
    if args.early_stopping:
        args.patience = 3 if args.patience is None else args.patience
        args.min_delta = 0.0 if args.min_delta is None else args.min_delta
    if args.checkpoint_dir in ("", "none"):
        args.checkpoint_dir = None


def engine_available() -> bool:
    try:
        from dpnn.workers import DataParallel  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_workers(args, note, comm=None) -> None:
    """Turn --workers/--backend into make_engine() arguments: args.engine_workers, args.engine_options."""
    args.engine_workers, args.engine_options = args.workers, {}
    if args.backend == "mpi":
        if importlib.util.find_spec("mpi4py") is None:
            raise UsageError("--backend mpi needs mpi4py and an MPI library: pip install mpi4py mpich")
        args.engine_options = {"backend": comm or "mpi"}
    if args.oversubscribe:                  # given only when set: otherwise the engine's defaults
        args.engine_options["oversubscribe"] = True
    if args.worker_timeout is not None:
        args.engine_options["worker_timeout"] = args.worker_timeout
    try:                                    # the thread policy's limits, before any data is read
        threads.resolve_workers(args.workers, comm.local_size if comm else 1, args.oversubscribe)
    except ValueError as e:
        raise UsageError(f"--workers: {e}") from None
    if engine_available():
        return
    if args.workers not in (1, "auto"):
        raise UsageError(f"--workers {args.workers}" + (" --backend mpi" if args.backend == "mpi" else "")
                         + " needs the data-parallel engine (dpnn.workers), which this installation "
                           "lacks; use --workers 1")
    if args.workers == "auto":
        note("note: the data-parallel engine (dpnn.workers) is not available; training in one process")
    args.engine_workers = 1


def mpi_rank(args) -> int:
    """This process's MPI rank from the launcher's environment (0 without MPI): only rank 0 writes.

    Read whatever --backend says: under mpiexec, --resume takes the backend from the checkpoint."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


# -- preparing a run --------------------------------------------------------------------------
def merge_checkpoint_config(args, explicit: dict, comm=None):
    """--resume: the newest checkpoint's configuration, with the flags allowed to change applied."""
    damaged = os.path.isdir(args.checkpoint_dir) and ckpt.list_checkpoints(args.checkpoint_dir)
    missing = UsageError(f"--resume: no {'complete ' if damaged else ''}checkpoint in {args.checkpoint_dir}; "
                         "start a new run without --resume (or point --checkpoint-dir at the old one)")
    path, model, info, state = mpi.newest_checkpoint(args.checkpoint_dir, comm, missing)   # rank 0 reads
    saved = info["config"]
    for key in RUN_KEYS:
        if key in explicit and explicit[key] != saved.get(key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {explicit[key]} differs from the checkpoint's {saved.get(key)}; "
                             f"--resume continues {path} with its own settings (drop {flag})")
    merged = {**vars(args), **{k: v for k, v in saved.items() if k in vars(args)}}
    merged.update({k: v for k, v in explicit.items() if k not in RUN_KEYS})
    merged.update(resume=True, checkpoint_dir=args.checkpoint_dir, quiet=args.quiet)
    if info["epoch"] + (info["step"] > 0) > merged["epochs"]:
        raise UsageError(f"{path} has already trained {done(info)}, more than --epochs "
                         f"{merged['epochs']}; pass a larger --epochs")
    return argparse.Namespace(**merged), SimpleNamespace(path=path, model=model, info=info, state=state)


def done(info: dict) -> str:
    """'3 epochs' or '3 epochs and 17 steps' of a checkpoint."""
    return f"{info['epoch']} epochs" + (f" and {info['step']} steps" if info["step"] else "")


def load_data(args, note):
    """(train, test, info) with --limit applied; DataError for anything wrong with the files.

    What the loader says a user should know (a test split held out) goes to ``note``."""
    train, test, info = load_dataset(args.dataset, args.image_size, args.label_column)
    for line in info.get("notes", []):
        note(f"note: {line}")
    if args.limit:
        train = train.subset(args.limit)
    n_val = int(round(len(train) * args.val_split))
    if len(train) - n_val < 1:
        raise UsageError(f"--val-split {args.val_split} leaves no training samples out of {len(train)}")
    return train, test, info


def make_model(args, train, info, resumed):
    """A built, compiled model: fresh from --model, or the checkpoint's with its optimizer state."""
    num_classes = len(info["class_names"])
    try:
        model = resumed.model if resumed else build_model(args.model, num_classes, seed=args.seed)
        model.build((1,) + train.X.shape[1:])
    except ValueError as e:            # includes WeightsError from an architecture JSON
        raise UsageError(f"--model {args.model}: {e}") from None
    if model.output_shape[1:] != (num_classes,):
        raise UsageError(f"--model {args.model} outputs shape {model.output_shape[1:]} but "
                         f"{info['name']} has {num_classes} classes; end the model with Dense({num_classes})")
    extra = {"momentum": args.momentum} if args.optimizer == "sgd" else {}
    model.compile(loss="categorical_crossentropy", optimizer=args.optimizer, lr=args.lr,
                  weight_decay=args.weight_decay, clip_norm=args.clip_norm, **extra)
    if resumed:
        model.optimizer.load_state_dict(resumed.info["optimizer"])
    model.metadata.update({"class_names": list(info["class_names"]), "dataset": info["name"],
                           "preset": args.model})
    return model


def prepare(args, argv, note, locks: ckpt.RunLocks, comm=None):
    """Everything between parsing and training: validate, lock the outputs, resume, load data,
    build the model."""
    check_args(args)
    resumed = None
    if args.resume:
        resolve_defaults(args)
        if args.checkpoint_dir is None:
            raise UsageError("--resume needs --checkpoint-dir DIR")
        mpi.rank0_only(comm, outputs.lock_checkpoints, args, locks, UsageError)   # before reading it
        args, resumed = merge_checkpoint_config(args, explicit_args(argv), comm)
        note(f"resuming from {resumed.path} ({done(resumed.info)} done)")
        check_args(args)
    resolve_defaults(args)
    mpi.check_backend(comm, args.backend, UsageError)
    mpi.rank0_only(comm, outputs.check_outputs, args, locks, UsageError)     # only rank 0 writes files
    resolve_workers(args, note, comm)
    train, test, info = load_data(args, note)
    model = make_model(args, train, info, resumed)
    saved = resumed.info["history"] if resumed else {k: [] for k in ("loss", "acc", "val_loss", "val_acc", "lr")}
    history = {k: [math.nan if v is None else v for v in vs] for k, vs in saved.items()}
    step = resumed.info["step"] if resumed else 0            # a step checkpoint: inside an epoch
    progress = Progress(resumed.info["epoch"], step, **resumed.info["progress"]) if step else None
    return SimpleNamespace(args=args, model=model, train=train, test=test, info=info,
                           history=history, initial_epoch=resumed.info["epoch"] if resumed else 0,
                           progress=progress,
                           resume_state=resumed.state if resumed else None,
                           resumed_from=resumed.path if resumed else None)


# -- running it -------------------------------------------------------------------------------
def config_of(args) -> dict:
    """The command's full configuration (every flag, defaults resolved) for checkpoints."""
    return {a.dest: getattr(args, a.dest) for a in build_parser()._actions if a.dest != "help"}


def make_callbacks(run, rank: int) -> tuple[outputs.EpochLog, ckpt.Checkpointer, list]:
    a = run.args
    log = outputs.EpochLog(run.history)
    cbs = [log]
    if a.lr_schedule != "none":
        cbs.append(LRScheduler(a.lr_schedule, a.epochs))
    if a.early_stopping:
        cbs.append(EarlyStopping(patience=a.patience, min_delta=a.min_delta))
    n_train = len(run.train) - int(round(len(run.train) * a.val_split))     # as fit splits it
    saver = ckpt.Checkpointer(a.checkpoint_dir, config_of(a), a.seed, run.history,
                              resume_state=run.resume_state, write=rank == 0, every=a.checkpoint_every,
                              steps_per_epoch=-(-n_train // a.batch_size))
    return log, saver, cbs + [saver]        # the checkpointer last: it sees the others' state


def augmentation(spec: str | None):
    """The --augment spec as fit's augment function (None for no augmentation)."""
    return None if spec in (None, "", "none") else parse_spec(spec)


def open_engine(run) -> Engine:
    """The engine of --workers/--backend: fit trains with it, then the test pass runs on it
    (--workers 1: the in-process engine, under the same thread policy)."""
    a = run.args
    return make_engine(run.model, a.engine_workers, a.threads_per_worker, a.deterministic, seed=a.seed,
                       augment=augmentation(a.augment), **a.engine_options)


def fit(run, callbacks, engine: Engine) -> None:
    a = run.args
    kwargs = dict(epochs=a.epochs, batch_size=a.batch_size, validation_split=a.val_split,
                  callbacks=callbacks, seed=a.seed, verbose=0 if a.quiet else 1, engine=engine,
                  initial_epoch=run.initial_epoch, progress=run.progress, history=run.history)
    run.model.fit(run.train.X, run.train.y, **kwargs)


def execute(run, rank: int) -> int:
    """Train, evaluate on the test set, write the outputs; returns the exit status."""
    log, saver, callbacks = make_callbacks(run, rank)
    try:
        with closing(open_engine(run)) as engine:     # closed on every way out, before the except
            fit(run, callbacks, engine)
            log.stage = "evaluating"              # on the same workers (MPI: each rank a slice)
            test_loss, test_acc = engine.evaluate(run.test.X, run.test.y)
        log.stage = "writing"
        if rank == 0:
            outputs.write_outputs(run, config_of(run.args), test_loss, test_acc)
    except TrainingInterrupted as e:       # stopped between two steps: keep that step
        try:
            saved = saver.save_interrupted(e.progress)
        except OutputError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            saved = None
        return outputs.interrupted(run, log, e, PROG, saved)
    except KeyboardInterrupt as e:         # a second signal, or one outside fit's steps
        return outputs.interrupted(run, log, e, PROG)
    except (TrainingDiverged, WorkerError) as e:
        print(f"{PROG}: training failed: {e}", file=sys.stderr)
        return 1
    except OutputError as e:
        print(f"{PROG}: error: {e}; {outputs.after_write_error(run, e, PROG)}", file=sys.stderr)
        return 1
    if rank == 0:
        print(outputs.summary(run, log, test_loss, test_acc), flush=True)
    return 0


def raise_terminated(signum, frame):
    raise ckpt.Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = mpi_rank(args)
    quiet = args.quiet or rank != 0
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    comm = None            # --backend mpi: a rank that fails aborts them all (mpi.finish)
    locks = ckpt.RunLocks()
    try:
        comm = mpi.communicator(args.backend, UsageError)
        run = prepare(args, argv, note=lambda m: None if quiet else print(m, file=sys.stderr),
                      locks=locks, comm=comm)
        run.args.quiet = run.args.quiet or quiet
        return mpi.finish(comm, execute(run, rank))
    except UsageError as e:                  # every rank hits it alike: rank 0 says it
        mpi.report_once(comm, f"{PROG}: error: {e}")
        return mpi.finish(comm, 2)
    except (DataError, WeightsError) as e:   # may differ per rank: each says its own
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return mpi.finish(comm, 2)
    except KeyboardInterrupt as e:
        print(f"{PROG}: interrupted before training started; nothing was written", file=sys.stderr)
        return mpi.finish(comm, outputs.exit_status(e))
    finally:
        locks.release()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
