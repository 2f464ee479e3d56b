"""The ``dpnn`` command: ``dpnn <command> [options]``, one of the commands below, each with the
arguments and behaviour of ``python -m launch.<command>`` (the same code)."""
from __future__ import annotations

import importlib
import sys

from . import COMMANDS

SUMMARIES = {
    "train": "train a CNN on every core (checkpoints, resume, MPI with --backend mpi)",
    "predict": "classify image files, a CSV or an array with a saved model (--format kaggle for ImageId,Label)",
    "export": "write a saved model as ONNX",
    "data": "list, prepare and inspect data sets (yours too)",
    "gui": "draw a digit, see the model's top-3 prediction",
    "digits": "train the GUI's digit model",
}


def usage() -> str:
    from dpnn import __version__
    width = max(map(len, COMMANDS))
    lines = [f"usage: dpnn <command> [options]        (dpnn {__version__})", "",
             "Data-parallel NumPy neural networks. Commands:", ""]
    lines += [f"  {name:<{width}}  {SUMMARIES[name]}" for name in COMMANDS]
    lines += ["", "dpnn <command> --help lists a command's options; dpnn --version prints the version.",
              "Relative paths (--dataset, --out, --checkpoint-dir) are the current folder's."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help") and len(argv) == 1:
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from dpnn import __version__
        print(f"dpnn {__version__}")
        return 0
    if argv[0] == "help":                        # dpnn help train == dpnn train --help
        argv = [argv[1], "--help"]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dpnn: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (dpnn --help)",
              file=sys.stderr)
        return 2
    try:                                        # Ctrl-C while the command imports: exit 130, no traceback
        command = importlib.import_module(f"dpnn.cli.{name}")
    except KeyboardInterrupt:
        return 130
    return command.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
