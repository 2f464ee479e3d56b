"""Limits checked before anything big is allocated: memory, JSON size and nesting.

A hostile or mistaken file (an IDX header declaring 100 GB, an architecture with
``filters: 1000000000``, an input shape of ``[100000, 100000, 1]``) must end in one
clear ``ValueError`` before NumPy is asked for the memory, never in a MemoryError,
a swapping machine or a RecursionError. Every size check in dpnn goes through
:func:`check_allocation`, so the wording and the source of "available memory" live here.
"""
from __future__ import annotations

import copy
import re

import numpy as np

MAX_JSON_BYTES = 1 << 20    # an architecture JSON is a few KB; 1 MiB leaves ample room
MAX_JSON_DEPTH = 32         # dpnn writes depth 4 (list > layer > config > kernel_size list)
MAX_CLASSES = 1_000_000     # class indices (labels) a data set may use: ImageNet-21k has 21,841;
#                             a class name and a Dense output per class are made from this count
MAX_FLOAT_PIXEL = 1e4       # |float pixel| beyond this overflows float32 in a few layers' products
FLOAT_BYTES = 4             # parameters and activations are float32
PARAM_COPIES = 4            # weights, gradients and Adam's two moments
ACTIVATION_COPIES = 2       # each layer output and its gradient in backward

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def available_memory() -> int:
    """Bytes the machine can still give this process without swapping."""
    try:
        import psutil
    except ImportError:         # psutil is a dependency; this keeps a broken install usable
        import os
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.virtual_memory().available)


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KB', 12 * 2**30 -> '12 GB' (binary units, short)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1024


def check_allocation(nbytes: int, what: str, todo: str, free: int | None = None,
                     of: str = "", error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` when ``what`` needs more than ``free`` (default: available) memory.

    The message reads "<what> needs <size><of>; the machine has <free> available; <todo>".
    """
    free = available_memory() if free is None else free
    if nbytes > free:
        raise error(f"{what} needs {format_bytes(nbytes)}{of}; the machine has "
                         f"{format_bytes(free)} available; {todo}")


def check_json_text(text: str, name: str, max_bytes: int = MAX_JSON_BYTES) -> None:
    """Refuse JSON text longer than ``max_bytes`` or nested deeper than MAX_JSON_DEPTH.

    Checked before ``json.loads``, whose recursion would otherwise end in RecursionError.
    """
    if len(text) > max_bytes:
        raise ValueError(f"{name} is {format_bytes(len(text))}, more than the "
                         f"{format_bytes(max_bytes)} it can need; pass what model.save() wrote")
    skeleton = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "replace"), np.uint8)
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) \
        - np.isin(skeleton, (ord("]"), ord("}")))                 # (len,) +1 open, -1 close
    depth = int(np.cumsum(steps).max(initial=0))
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{name} nests {depth} levels deep (at most {MAX_JSON_DEPTH}); "
                         "pass what model.save() wrote")


def dry_build(layer, input_shape: tuple) -> tuple[dict[str, tuple], tuple]:
    """Run ``layer.build`` on a shallow copy that records array shapes instead of allocating.

    Returns ({array name: shape}, output shape); ``layer`` itself is left untouched.
    """
    shapes: dict[str, tuple] = {}
    probe = _recording_copy(layer, shapes, "")
    probe.build(input_shape)
    return shapes, tuple(probe.output_shape)


def _recording_copy(layer, shapes: dict[str, tuple], prefix: str):
    """A shallow copy of ``layer`` (and of the layers a container holds) whose add_param and
    add_state record shapes into ``shapes`` under ``prefix`` instead of allocating."""
    probe = copy.copy(layer)
    probe.params, probe.grads, probe.state = {}, {}, {}

    def record(name, shape):
        shapes[prefix + name] = tuple(int(d) for d in shape)
        return np.broadcast_to(np.float32(0), shapes[prefix + name])      # a view: no memory behind it

    probe.add_param = lambda name, shape, *args, **kwargs: record(name, shape)
    probe.add_state = lambda name, value: record(name, np.shape(value))
    inside = layer.named_sublayers()
    if inside:
        probe = probe.with_sublayers([_recording_copy(child, shapes, f"{prefix}{tag}/") for tag, child in inside])
    return probe


def _elements(shape) -> int:
    return int(np.prod([int(d) for d in shape if d is not None], dtype=object))


def check_model_memory(layers: list, input_shape: tuple, batch: int = 1) -> None:
    """Refuse a model whose parameters, or activations for ``batch`` samples, do not fit.

    Walks ``layers`` with :func:`dry_build` (nothing is allocated) and raises ValueError
    naming the layer at which memory runs out, e.g. "Conv2D(filters=1000000000, ...) needs
    34 GB of parameters; the machine has 3 GB available; ...".
    """
    free, todo = available_memory(), "use fewer filters/units or smaller inputs"
    shape = (None,) + tuple(int(d) for d in input_shape[1:])
    total = _elements(shape) * batch * FLOAT_BYTES * ACTIVATION_COPIES
    check_allocation(total, f"an input of shape {shape[1:]}", todo, free,
                     of=f" for the activations of {batch} sample(s)")
    for layer in layers:
        arrays, shape = dry_build(layer, shape)
        params = sum(_elements(s) for s in arrays.values()) * FLOAT_BYTES * PARAM_COPIES
        check_allocation(params, repr(layer), todo, free, of=" of parameters (float32 weights, "
                         "gradients and optimizer moments)")
        acts = _elements(shape) * batch * FLOAT_BYTES * ACTIVATION_COPIES
        total += params + acts
        check_allocation(total, f"the model up to {layer!r} (output {shape[1:]})", todo, free,
                         of=f" for its parameters and the activations of {batch} sample(s)")
