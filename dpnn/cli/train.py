"""Train a CNN from the shell on real data, on every core, with checkpoints and a saved model.

    dpnn train --workers auto                       # seed-cnn on Fashion-MNIST, 5 epochs
    dpnn train --dataset mnist-5k --model lenet5 --epochs 10 --plot curves.png
    dpnn train --dataset ./mnist_dataset --limit 2000 --epochs 1 --quiet
    dpnn train --dataset ./my_photos --image-size 32x32x3 --val-split 0.1 --plot curves.png
    dpnn train --resume --checkpoint-dir checkpoints  # continue an interrupted run
    mpiexec -n 2 dpnn train --backend mpi --workers auto

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

from dpnn import EarlyStopping, placement
from dpnn.augment import parse_spec
from dpnn.callbacks import LRScheduler
from dpnn.datasets import load_dataset
from dpnn.engine import Engine, make_engine
from dpnn.errors import DataError, NotPortableError, OutputError, WeightsError, WorkerError
from dpnn.optimizers import get_optimizer
from dpnn.signals import raise_terminated, say
from dpnn.tensorboard import TensorBoard
from dpnn.training import Progress, TrainingDiverged, TrainingInterrupted

from . import arguments, mpi, outputs, plugins
from . import checkpoint as ckpt
from .arguments import OUTPUT_KEYS, PROG, RUN_KEYS, UsageError, check_args, resolve_defaults
from .presets import build_model

try:
    from dpnn.workers import SharedMemoryError
except ImportError:                     # no data-parallel engine: nothing to run out of
    class SharedMemoryError(OSError):
        """Never raised without dpnn.workers."""


def build_parser() -> argparse.ArgumentParser:
    return arguments.build_parser(__doc__)


def explicit_args(argv) -> dict:
    """Only the options actually given on the command line (to compare with a checkpoint)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


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
    if args.deterministic:                  # the run's count, resolved: the checkpoint keeps it
        args.micro_shards = placement.resolve_micro_shards(args.micro_shards, args.batch_size)
        args.engine_options["micro_shards"] = args.micro_shards
    try:                                    # the thread policy's limits, before any data is read
        placement.resolve_workers(args.workers, comm.local_size if comm else 1, args.oversubscribe)
        if args.deterministic and args.workers != "auto":
            ranks = comm.size if comm else 1
            placement.check_deterministic_workers(args.workers * ranks, args.micro_shards,
                                        f"--workers {args.workers}" + (f" on {ranks} ranks" if ranks > 1 else ""))
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
    arguments.check_config(saved, path)
    for key in RUN_KEYS:
        if key in explicit and explicit[key] != saved.get(key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {explicit[key]} differs from the checkpoint's {saved.get(key)}; "
                             f"--resume continues {path} with its own settings (drop {flag})")
    merged = {**vars(args), **{k: v for k, v in saved.items() if k in vars(args) and k not in OUTPUT_KEYS}}
    merged.update({k: v for k, v in explicit.items() if k not in RUN_KEYS})
    merged.update(resume=True, checkpoint_dir=args.checkpoint_dir, quiet=args.quiet)
    if info["epoch"] + (info["step"] > 0) > merged["epochs"]:
        raise UsageError(f"{path} has already trained {done(info)}, more than --epochs "
                         f"{merged['epochs']}; pass a larger --epochs")
    return argparse.Namespace(**merged), SimpleNamespace(path=path, model=model, info=info, state=state)


def resume_folder(root: str) -> tuple[str, str]:
    """(--resume's folder, how it was chosen): ``root`` if it holds checkpoints, else its newest run
    folder; a UsageError naming the folders looked in when none holds one."""
    found, looked = ckpt.find_run(root)
    if found is None and len(looked) > 1:
        shown = ", ".join(looked[1:6]) + (f" and {len(looked) - 6} more" if len(looked) > 6 else "")
        raise UsageError(f"--resume: no checkpoint in {root} or in its run folders ({shown}); start a "
                         "new run without --resume (or point --checkpoint-dir at the old one)")
    runs = len(looked) - 1
    if found is not None and found != root:
        return found, f"; the newest of {runs} run folder{'s' * (runs != 1)} in {root}"
    return root, ""


def load_plugins(args) -> None:
    """Import --plugin files and --import modules (their @register_layer layers); UsageError if one fails."""
    try:
        plugins.load(args)
    except ValueError as e:
        raise UsageError(str(e)) from None


def done(info: dict) -> str:
    """'3 epochs' or '3 epochs and 17 steps' of a checkpoint."""
    return f"{info['epoch']} epochs" + (f" and {info['step']} steps" if info["step"] else "")


def load_data(args, note):
    """(train, test, info) with --limit applied; DataError for anything wrong with the files.

    What the loader says a user should know (a test split held out) goes to ``note``."""
    train, test, info = load_dataset(args.dataset, args.image_size, args.label_column, args.test_split)
    for line in info.get("notes", []):
        note(f"note: {line}")
    if info.get("sorted_by_class") and (args.limit or args.val_split):
        note(f"note: {info['files']['train']} is sorted by class: validation and "
             "--limit take a stratified, seeded sample")
    if args.limit:
        train = train.subset(args.limit, seed=args.seed)      # stratified, as --val-split
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
    decoupled = args.optimizer == "adamw"          # AdamW's own weight_decay; the others: L2 on the gradient
    optimizer = get_optimizer("adamw", lr=args.lr, weight_decay=args.weight_decay) if decoupled else args.optimizer
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, lr=None if decoupled else args.lr,
                  weight_decay=0.0 if decoupled else args.weight_decay, clip_norm=args.clip_norm, **extra)
    if resumed:
        try:
            model.optimizer.load_state_dict(resumed.info["optimizer"])
        except (KeyError, ValueError, TypeError) as e:
            raise UsageError(f"{resumed.path}: its optimizer state does not fit this model ({e}); "
                             "the checkpoint is damaged") from None
    model.metadata.update({"class_names": list(info["class_names"]), "dataset": info["name"],
                           "preset": args.model})
    return model


def prepare(args, argv, note, locks: ckpt.RunLocks, comm=None):
    """Everything between parsing and training: validate, lock the outputs, resume, load data,
    build the model."""
    check_args(args)
    mpi.check_same_command(comm, args, UsageError)     # before any collective: no rank waits alone
    load_plugins(args)                  # before any architecture is read: its layers register
    resumed, per_run = None, args.checkpoint_dir is None     # not given: a folder per run
    args.checkpoint_dir = ckpt.RUNS_ROOT if per_run else args.checkpoint_dir
    if args.resume:
        resolve_defaults(args)
        if args.checkpoint_dir is None:
            raise UsageError("--resume needs --checkpoint-dir DIR")
        args.checkpoint_dir, how = mpi.rank0_only(comm, resume_folder, args.checkpoint_dir)
        mpi.rank0_only(comm, outputs.lock_checkpoints, args, locks, UsageError)   # before reading it
        args, resumed = merge_checkpoint_config(args, explicit_args(argv), comm)
        note(f"resuming from {resumed.path} ({done(resumed.info)} done{how})")
        check_args(args)
    resolve_defaults(args)
    if per_run and not args.resume:
        args.checkpoint_dir = mpi.rank0_only(comm, locks.new_run_folder, ckpt.RUNS_ROOT, UsageError)
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
                           resumed_from=resumed.path if resumed else None, stopped_together=False)


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
        cbs.append(EarlyStopping(monitor=None, patience=a.patience, min_delta=a.min_delta,
                                   restore_best_weights=True))   # dpnn's figure: (val) accuracy
    if a.tensorboard:
        try:
            cbs.append(TensorBoard(a.tensorboard, update_freq=10))      # rank 0 alone writes
        except ImportError as e:
            raise UsageError(f"--tensorboard: {e}") from None
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
                  callbacks=callbacks, seed=a.seed, verbose=0 if a.quiet else 1 if a.verbose is None else a.verbose,
                  show_step_times=a.show_step_times, engine=engine,
                  initial_epoch=run.initial_epoch, progress=run.progress, history=run.history)
    run.model.fit(run.train.X, run.train.y, **kwargs)


def execute(run, rank: int) -> int:
    """Train, evaluate on the test set, write the outputs; returns the exit status."""
    log, saver, callbacks = make_callbacks(run, rank)
    try:
        with closing(open_engine(run)) as engine:     # closed on every way out, before the except
            fit(run, callbacks, engine)
            log.stage = "evaluating"              # on the same workers (MPI: each rank a slice)
            test_loss, test_acc = engine.evaluate(run.test.X, run.test.y) if len(run.test) else (None, None)
        log.stage = "writing"
        if rank == 0:
            outputs.write_outputs(run, config_of(run.args), test_loss, test_acc, log.events)
    except TrainingInterrupted as e:       # stopped between two steps: keep that step
        run.stopped_together = True        # MPI: every rank stopped at this step (signals.agree)
        try:
            saved = saver.save_interrupted(e.progress)
        except OutputError as error:
            say(f"{PROG}: error: {error}")
            saved = None
        return outputs.interrupted(run, log, e, PROG, saved) if rank == 0 else outputs.exit_status(e)
    except KeyboardInterrupt as e:         # a second signal, or one outside fit's steps
        return outputs.interrupted(run, log, e, PROG) if rank == 0 else outputs.exit_status(e)
    except (TrainingDiverged, WorkerError) as e:
        print(f"{PROG}: training failed: {e}", file=sys.stderr)
        return 1
    except NotPortableError as e:          # a --plugin layer holding a lock: one line, as documented
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except SharedMemoryError as e:         # the machine cannot hold this model on these workers
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"{PROG}: error: {e}; {outputs.after_write_error(run, e, PROG)}", file=sys.stderr)
        return 1
    if rank == 0:
        say(outputs.summary(run, log, test_loss, test_acc), sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:            # a bad flag on this rank alone: the others must not wait for it
        if e.code and mpi.launched_ranks() > 1 and importlib.util.find_spec("mpi4py") is not None:
            mpi.finish(mpi.communicator("mpi", UsageError), e.code)
        raise
    rank = mpi_rank(args)
    quiet = args.quiet or args.verbose == 0 or rank != 0
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    comm = None            # --backend mpi: a rank that fails aborts them all (mpi.finish)
    locks = ckpt.RunLocks()
    try:
        comm = mpi.communicator(args.backend, UsageError)
        run = prepare(args, argv, note=lambda m: None if quiet else print(m, file=sys.stderr),
                      locks=locks, comm=comm)
        run.args.quiet = run.args.quiet or quiet
        status = execute(run, rank)
        return mpi.finish(comm, status, together=run.stopped_together)
    except UsageError as e:                  # every rank hits it alike: rank 0 says it
        mpi.report_once(comm, f"{PROG}: error: {e}")
        return mpi.finish(comm, 2)
    except (DataError, WeightsError) as e:   # may differ per rank: each says its own
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return mpi.finish(comm, 2)
    except KeyboardInterrupt as e:         # mpiexec signals every rank: one notice for the job
        if rank == 0:
            say(f"{PROG}: interrupted before training started; nothing was written")
        return mpi.finish(comm, outputs.exit_status(e))
    finally:
        locks.release()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
