"""Export a model trained with dpnn for the runtimes people deploy with (ONNX).

    dpnn train --model seed-cnn --out weights.hdf5        # train (writes weights.json too)
    dpnn export --onnx weights.hdf5 model.onnx            # write model.onnx
    dpnn export --onnx weights.hdf5 model.onnx --verify   # and compare onnxruntime with dpnn

The ONNX model takes the same array dpnn's ``Model.predict`` does: ``input_nhwc``, float32
(N, H, W, C), any batch size N; its ``output`` is the model's (logits for the presets).
Needs ``pip install -e '.[onnx]'``; ``--verify`` needs onnxruntime too.

Exit status: 0 written, 1 --verify found a difference, 2 bad input (one line, nothing written).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from dpnn import Model
from dpnn.errors import OutputError, WeightsError
from dpnn.files import input_problem
from dpnn.io import architecture_path
from dpnn.onnx_export import MIN_OPSET, OPSET, export_onnx, import_onnx, input_name

from . import prog
from .arguments import HelpFormatter, OneLineParser, UsageError
from .outputs import check_writable

PROG = prog("export")
VERIFY_SAMPLES = 16       # inputs --verify runs through both runtimes
VERIFY_TOLERANCE = 1e-4   # largest |onnxruntime - dpnn| --verify accepts (float32 rounding is ~1e-6)


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    parser = OneLineParser(prog=PROG, description=doc[0], epilog="\n\n".join(doc[1:]),
                           formatter_class=HelpFormatter)
    parser.add_argument("weights", metavar="WEIGHTS", help="a model written by model.save() or dpnn train "
                        "--out (HDF5 or NPZ)")
    parser.add_argument("out", metavar="OUT", help="the file to write (replaced atomically if it exists)")
    parser.add_argument("--onnx", action="store_true",
                        help="write ONNX (the one format so far; an OUT ending in .onnx implies it)")
    parser.add_argument("--opset", type=int, default=OPSET, metavar="N",
                        help="ONNX operator set version to target (15 or newer)")
    parser.add_argument("--verify", action="store_true",
                        help=f"run {VERIFY_SAMPLES} random inputs through onnxruntime and dpnn and fail "
                        f"(exit 1) if they differ by more than {VERIFY_TOLERANCE:g}; needs onnxruntime")
    return parser


def check_args(args) -> None:
    """Refuse a bad command line before anything is loaded or written (UsageError, one line)."""
    if args.opset < MIN_OPSET:
        raise UsageError(f"--opset {args.opset} is too old: dpnn's export needs opset {MIN_OPSET} or newer")
    if not (args.onnx or args.out.endswith(".onnx")):
        raise UsageError(f"which format? pass --onnx (the one format so far) or an OUT ending in .onnx, "
                         f"not {args.out!r}")
    problem = input_problem(args.weights)
    if problem is not None:
        raise UsageError(f"WEIGHTS {args.weights} {problem}; pass the .hdf5 file that model.save() or "
                         "dpnn train --out wrote")
    if args.out.endswith((os.sep, "/")):
        raise UsageError(f"OUT {args.out} names a directory; give a file path such as "
                         f"{os.path.join(args.out, 'model.onnx')}")
    check_writable(args.out, "OUT", UsageError)
    ours = {os.path.realpath(p) for p in (args.weights, architecture_path(args.weights))}
    if os.path.realpath(args.out) in ours:
        raise UsageError(f"OUT {args.out} is the model being exported; choose another path such as model.onnx")
    try:
        import_onnx()
    except ImportError as e:
        raise UsageError(str(e)) from None
    if args.verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UsageError("--verify needs onnxruntime: pip install onnxruntime "
                             "(or pip install -e '.[dev]')") from None


def verify(model: Model, path: str) -> float:
    """The largest |onnxruntime - model.predict| over ``VERIFY_SAMPLES`` inputs uniform in [0, 1)."""
    import onnxruntime
    x = np.random.default_rng(0).random((VERIFY_SAMPLES, *model.input_shape[1:]), dtype=np.float32)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {input_name(model): x})[0]
    return float(np.abs(got - model.predict(x)).max())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
        model = Model.load(args.weights)
        if not model.built:
            raise UsageError(f"{args.weights} does not record its input shape (a file in the nn framework's "
                             "format); load it in Python, model.build((1, H, W, C)), then model.export_onnx(OUT)")
        export_onnx(model, args.out, args.opset)
    except (UsageError, WeightsError, OutputError, TypeError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: input {input_name(model)} (N, {', '.join(map(str, model.input_shape[1:]))}) "
          f"float32, output (N, {', '.join(map(str, model.output_shape[1:]))})")
    if args.verify:
        diff = verify(model, args.out)
        print(f"onnxruntime vs dpnn on {VERIFY_SAMPLES} inputs: max |difference| {diff:.3g}")
        if not diff <= VERIFY_TOLERANCE:
            print(f"{PROG}: error: the exported model differs from dpnn by {diff:.3g} (more than "
                  f"{VERIFY_TOLERANCE:g}); please report it with the model's JSON", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
