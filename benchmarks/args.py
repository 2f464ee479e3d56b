"""Argument types and flags that the scaling benchmarks share (``benchmarks.scaling``,
``benchmarks.mpi_scaling``).

Every converter is an ``argparse`` type: a bad value is refused while parsing, with the
flag's name in the message (``argument --workers: must be ...``).
"""
from __future__ import annotations

import argparse

from dpnn.formats.common import parse_image_size

from .models import MODELS


def positive_int(text: str) -> int:
    """'4' -> 4; zero, negatives and non-numbers are refused."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return n


def non_negative_int(text: str) -> int:
    """'0' -> 0; negatives and non-numbers are refused."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return n


def positive_ints(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; an empty list, zero or a non-number is refused."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of positive ints, got {text!r}")
    return vals


def input_shape_arg(text: str) -> tuple[int, int, int]:
    """'32x32x3' -> (32, 32, 3) (dpnn.formats' parser; 'HxW' means one channel)."""
    try:
        h, w, c = parse_image_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return h, w, c or 1


def add_run_flags(p: argparse.ArgumentParser, steps: int, warmup: int) -> None:
    """--steps, --warmup, --model, --json: how long each configuration runs, on which model,
    and where the measurements go."""
    p.add_argument("--steps", type=positive_int, default=steps,
                   help=f"timed steps per configuration (default {steps})")
    p.add_argument("--warmup", type=non_negative_int, default=warmup, help=f"untimed steps first (default {warmup})")
    p.add_argument("--model", default="seed-cnn", choices=sorted(MODELS), help="model (default seed-cnn)")
    p.add_argument("--json", help="write every measurement to this JSON file")
