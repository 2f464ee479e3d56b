"""dpnn train's command line: the parser, the checks right after parsing, the defaults that
depend on other flags, and the checks of a configuration read back from a checkpoint."""
from __future__ import annotations

import argparse
import math

from dpnn import placement
from dpnn.augment import SPEC_HELP, parse_spec
from dpnn.datasets import LOADERS

from . import checkpoint as ckpt
from . import plugins, prog
from .data import checked_text, image_size_arg
from .plot import INSTALL_HINT, matplotlib_available
from .presets import PRESETS

PROG = prog("train")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.01, "adamw": 1e-3, "rmsprop": 1e-3}
DEFAULT_MOMENTUM = 0.9
# Settings that define the computation: --resume takes them from the checkpoint and refuses
# a different value on the command line. Every other flag may change when resuming.
RUN_KEYS = ("dataset", "image_size", "label_column", "test_split", "model", "batch_size", "optimizer", "lr", "momentum",
            "weight_decay",
            "clip_norm", "val_split", "early_stopping", "patience", "min_delta", "lr_schedule",
            "seed", "deterministic", "micro_shards", "limit", "augment")
# What a run writes: --resume takes them from its own command line alone, never from the
# checkpoint (a checkpoint folder from elsewhere must not decide which files are replaced).
OUTPUT_KEYS = ("out", "history", "plot", "tensorboard")


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
        return placement.parse_count(text, "--workers")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """dpnn train's parser; ``description`` heads --help (dpnn train's docstring)."""
    p = OneLineParser(prog=PROG, description=description, formatter_class=HelpFormatter,
                      epilog="--augment " + SPEC_HELP)
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="fashion-mnist", metavar="NAME|DIR",
                   help=f"named data set ({', '.join(LOADERS)}) or a directory of your own data: "
                        "four IDX files, train.npz, train.csv or train/<class>/*.png folders; "
                        "'dpnn data' lists what is installed, 'dpnn data "
                        "--inspect DIR' what a directory holds")
    g.add_argument("--image-size", type=image_size_arg, default=None, metavar="HxW[xC]",
                   help="--dataset DIR of image folders: resize every image to it; of CSV or flat npz "
                        "rows: the image each row holds (default: images as they are, square "
                        "grayscale rows)")
    g.add_argument("--label-column", default=None, metavar="N|NAME",
                   help="--dataset DIR of CSV files: the label column, an index (0 first, -1 last) or "
                        "a header name (default: detected)")
    g.add_argument("--test-split", type=finite_float, default=None, metavar="F",
                   help="--dataset DIR without a test split (a Kaggle train.csv): the fraction of its samples "
                        "held out as the test set, stratified, fixed seed (default: 0.1); 0 trains on all "
                        "of them and reports no test score")
    g.add_argument("--model", default="seed-cnn", metavar="PRESET|FILE.json",
                   help=f"preset ({', '.join(PRESETS)}) or an architecture JSON as model.save() writes it")
    plugins.add_arguments(g)
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="train on N training samples only (quick runs): a sample stratified by class, "
                        "drawn by --seed; the test set is kept whole (default: all samples)")
    g.add_argument("--val-split", type=finite_float, default=0.0, metavar="F",
                   help="hold out a fraction F of the training samples for validation, stratified by "
                        "class and drawn by --seed (0: none)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=5, metavar="N", help="total number of epochs (also when resuming)")
    g.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="global batch size, split across the workers")
    g.add_argument("--optimizer", choices=tuple(DEFAULT_LR), default="adam",
                   help="optimizer (adamw: Adam with decoupled weight decay; rmsprop: Keras's RMSprop)")
    g.add_argument("--lr", type=finite_float, default=None,
                   help="learning rate (default: 0.001 for adam, 0.01 for sgd)")
    g.add_argument("--momentum", type=finite_float, default=None, metavar="M",
                   help=f"SGD momentum, only with --optimizer sgd (default: {DEFAULT_MOMENTUM})")
    g.add_argument("--weight-decay", type=finite_float, default=0.0, metavar="WD",
                   help="L2 weight decay added to the gradients (with --optimizer adamw: decoupled, "
                        "taken from the weights as AdamW does)")
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
                   help="bitwise reproducible results whatever the worker count and MPI ranks, up to "
                        "--micro-shards processes (a little slower)")
    g.add_argument("--micro-shards", type=int, default=None, metavar="M",
                   help="with --deterministic: cut every batch into M fixed micro-shards, at most one "
                        "process (worker x rank) each; a checkpoint keeps it (default: one per 32 samples of "
                        "--batch-size, at least 4, at most 64)")
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
    g.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help=f"write a checkpoint after every epoch here (the newest {ckpt.KEEP} are kept); "
                        f"'none' disables checkpoints (default: a new folder per run, {ckpt.RUNS_ROOT}/"
                        f"<date-time>/; with --resume: DIR itself if it holds checkpoints, else its "
                        f"newest run folder, {ckpt.RUNS_ROOT}/ when not given)")
    g.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also write a checkpoint every N steps within an epoch (default: only after "
                        "each epoch, and at the step where Ctrl-C or SIGTERM stopped training)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --checkpoint-dir or in its newest "
                        "run folder (an epoch's end or a step within one) with its saved settings; "
                        "damaged ones are skipped; the outputs (--out, --history, --plot, --tensorboard) "
                        "are this command line's, never the checkpoint's")
    g.add_argument("--history", default=None, metavar="PATH",
                   help="write the per-epoch history, test accuracy and configuration as JSON (default: none)")
    g.add_argument("--plot", default=None, metavar="PATH",
                   help="write loss/accuracy curves as a PNG; needs matplotlib (default: none)")
    g.add_argument("--quiet", action="store_true", help="print only the final summary (as --verbose 0)")
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                   help="0: only the final summary; 1: a progress bar while an epoch runs (on a terminal) "
                        "and one line per epoch; 2: the lines alone, no bar (default: 1)")
    g.add_argument("--show-step-times", action="store_true",
                   help="add the engine's split of a step (compute, update, wait, reduce, optimizer) to "
                        "the progress bar and the epoch lines")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard curves (loss, accuracy, validation, lr, samples/s) per epoch and "
                        "every 10 steps under DIR/train and DIR/validation; needs tensorboardX "
                        "(default: none)")
    return p


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
        (args.test_split is None or 0 <= args.test_split < 1, f"--test-split must be in [0, 1), got {args.test_split}"),
        (args.patience is None or args.patience >= 1, f"--patience must be >= 1, got {args.patience}"),
        (args.min_delta is None or args.min_delta >= 0, f"--min-delta must be >= 0, got {args.min_delta}"),
        (args.early_stopping or (args.patience is None and args.min_delta is None),
         "--patience and --min-delta need --early-stopping"),
        (args.limit is None or args.limit >= 1, f"--limit must be >= 1, got {args.limit}"),
        (args.threads_per_worker is None or args.threads_per_worker >= 1,
         f"--threads-per-worker must be >= 1, got {args.threads_per_worker}"),
        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}"),
        (args.micro_shards is None or args.micro_shards >= 1, f"--micro-shards must be >= 1, got {args.micro_shards}"),
        (args.micro_shards is None or args.deterministic, "--micro-shards applies with --deterministic only"),
        (args.worker_timeout is None or args.worker_timeout > 0,
         f"--worker-timeout must be > 0 seconds, got {args.worker_timeout}"),
        (args.checkpoint_every is None or args.checkpoint_every >= 1,
         f"--checkpoint-every must be >= 1, got {args.checkpoint_every}"),
        (args.plot is None or matplotlib_available(),
         f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}"),
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


def _parses(parse, text: str) -> bool:
    try:
        parse(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def check_config(config: dict, path: str) -> None:
    """A checkpoint's saved configuration has the types its flags parse to (UsageError otherwise),
    so that a damaged checkpoint is one line, not a TypeError deep in training."""
    for action in build_parser()._actions:
        key = action.dest
        if key not in config or key == "help":
            continue
        v = config[key]
        if isinstance(action, argparse._StoreTrueAction):
            ok, want = type(v) is bool, "true or false"
        elif action.choices is not None:
            ok = v in action.choices or v is None and action.default is None      # None: not given
            want = f"one of {', '.join(map(str, action.choices))}"
        elif isinstance(action, argparse._AppendAction):
            ok, want = v is None or isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of text"
        elif action.type is int:
            ok, want = v is None or type(v) is int, "a whole number"
        elif action.type is finite_float:
            ok, want = v is None or type(v) in (int, float) and math.isfinite(v), "a number"
        else:
            ok, want = v is None or isinstance(v, (str, int)) and type(v) is not bool, "text"
            if ok and isinstance(v, str) and action.type not in (None, str):
                ok, want = _parses(action.type, v), f"a valid {action.option_strings[0]}"
        if not ok:
            raise UsageError(f"{path}: config.{key} is {str(repr(v))[:60]}, not {want}; the checkpoint "
                             "is damaged: resume from another one or start a new run")
