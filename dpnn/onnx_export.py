"""Export a built dpnn model to ONNX, so the runtimes people deploy with can serve it.

The exported graph takes the same input dpnn does: NHWC float32 ``input_nhwc`` of shape
(N, H, W, C) with a free batch size N, and gives ``output`` of the model's output shape.
ONNX's convolutions and pools work on NCHW, so the graph transposes where a layer needs
it: NHWC -> NCHW before the first Conv/pool, and back to NHWC before a Flatten, so that
Flatten orders the features as dpnn does (H, then W, then C) and the Dense weights apply
unchanged. Each layer becomes a few standard operators (opset 17):

- ``Conv2D`` -> Conv with dpnn's explicit pads ('same' puts the odd pixel after, like
  TensorFlow), weights (KH, KW, C, F) -> (F, C, KH, KW); a fused ReLU -> Relu
- ``Dense`` -> Gemm (MatMul without bias); ``Activation`` -> Relu/Sigmoid/Tanh/Softmax/Identity
- ``MaxPool2D``/``AvgPool2D`` -> MaxPool/AveragePool (padding counted as zeros, as dpnn does)
- ``GlobalAvgPool2D`` -> GlobalAveragePool + Flatten; ``Flatten`` -> (Transpose +) Flatten
- ``BatchNorm2D`` -> BatchNormalization with the running statistics; ``Dropout`` -> Identity
- ``Residual`` -> its main path and its shortcut (or the identity), Add, then its activation

The model's metadata (class names, data set...) goes into ``metadata_props``, each value as
it is if it is a string, else as JSON text.

A layer of any other class (a user's own, or a subclass of dpnn's that may compute something
else) cannot be exported: :func:`export_onnx` names every such layer in one ``TypeError``
before anything is written. Needs the ``onnx`` package (``pip install -e '.[onnx]'``).
"""
from __future__ import annotations

import json

import numpy as np

from .atomic import atomic_write
from .im2col import conv_output_size
from .layers import (
    Activation,
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    Residual,
)

OPSET = 17                # the default: read by every runtime from 2022 on
MIN_OPSET = 15            # every operator below has had its current form since opset 13-15
INPUT_NAME, OUTPUT_NAME = "input_nhwc", "output"
INSTALL_HINT = "ONNX export needs the onnx package: pip install -e '.[onnx]' (or pip install onnx)"
TO_NCHW, TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)
ACTIVATION_OPS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax",
                  "linear": "Identity"}


def import_onnx():
    """The onnx module, or an ImportError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return onnx


class Tensor:
    """A value of the graph being built: its name, dpnn's shape (None, ...) for it, and its layout:
    'dpnn' (the array as dpnn holds it) or 'NCHW' (a 4-D one transposed channels-first)."""

    def __init__(self, name: str, layout: str, shape: tuple) -> None:
        self.name, self.layout, self.shape = name, layout, tuple(shape)   # shape: dpnn's (None, ...)


class GraphBuilder:
    """Nodes and initializers of one ONNX graph, with fresh names and layout conversions."""

    def __init__(self, onnx) -> None:
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], where: str, **attrs) -> str:
        """Append one node; returns the name of its output."""
        out = self.fresh(where)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=f"{where}/{op}", **attrs))
        return out

    def to_layout(self, t: Tensor, layout: str, where: str) -> Tensor:
        """``t`` in ``layout`` ('dpnn' or 'NCHW'); only a 4-D tensor is ever transposed."""
        if t.layout == layout or len(t.shape) != 4:
            return t
        perm = TO_NCHW if layout == "NCHW" else TO_NHWC
        return Tensor(self.node("Transpose", [t.name], where, perm=list(perm)), layout, t.shape)


def _pads(shape: tuple, kernel: tuple, stride: tuple, padding: str) -> list[int]:
    """ONNX pads [top, left, bottom, right] equal to dpnn's for an NHWC input ``shape``."""
    _, top, bottom = conv_output_size(shape[1], kernel[0], stride[0], padding)
    _, left, right = conv_output_size(shape[2], kernel[1], stride[1], padding)
    return [top, left, bottom, right]


def _activation(g: GraphBuilder, t: Tensor, func: str | None, where: str) -> Tensor:
    """Apply dpnn's activation ``func`` (None: none); softmax over dpnn's last axis."""
    if func is None:
        return t
    attrs = {}
    if func == "softmax":
        attrs["axis"] = 1 if t.layout == "NCHW" else -1    # dpnn's last axis is NCHW's channel axis
    return Tensor(g.node(ACTIVATION_OPS[func], [t.name], where, **attrs), t.layout, t.shape)


def _conv(g: GraphBuilder, layer: Conv2D, t: Tensor, where: str) -> Tensor:
    t = g.to_layout(t, "NCHW", where)
    _, _, (top, bottom, left, right) = layer.geometry(t.shape[1], t.shape[2])     # dpnn (NHWC) shape
    inputs = [t.name, g.const(f"{where}.W", layer.params["W"].transpose(3, 2, 0, 1))]  # (F, C/groups, KH, KW)
    if layer.use_bias:
        inputs.append(g.const(f"{where}.b", layer.params["b"]))
    out = g.node("Conv", inputs, where, kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
                 pads=[top, left, bottom, right], dilations=list(layer.dilation_rate), group=layer.groups)
    return _activation(g, Tensor(out, "NCHW", layer.output_shape), layer.activation, where)


def _dense(g: GraphBuilder, layer: Dense, t: Tensor, where: str) -> Tensor:
    W = g.const(f"{where}.W", layer.params["W"])                                     # (D, units)
    if layer.use_bias:
        out = g.node("Gemm", [t.name, W, g.const(f"{where}.b", layer.params["b"])], where)
    else:
        out = g.node("MatMul", [t.name, W], where)
    return _activation(g, Tensor(out, "dpnn", layer.output_shape), layer.activation, where)


def _pool(g: GraphBuilder, layer: MaxPool2D | AvgPool2D, t: Tensor, where: str) -> Tensor:
    t = g.to_layout(t, "NCHW", where)
    attrs = {"kernel_shape": list(layer.pool_size), "strides": list(layer.stride),
             "pads": _pads(t.shape, layer.pool_size, layer.stride, layer.padding)}
    if isinstance(layer, AvgPool2D):
        attrs["count_include_pad"] = 1          # dpnn divides by the window size, padding included
    op = "AveragePool" if isinstance(layer, AvgPool2D) else "MaxPool"  # MaxPool pads with -inf, as dpnn
    return Tensor(g.node(op, [t.name], where, **attrs), "NCHW", layer.output_shape)


def _global_avg_pool(g: GraphBuilder, layer: GlobalAvgPool2D, t: Tensor, where: str) -> Tensor:
    t = g.to_layout(t, "NCHW", where)
    pooled = g.node("GlobalAveragePool", [t.name], where)                           # (N, C, 1, 1)
    return Tensor(g.node("Flatten", [pooled], where, axis=1), "dpnn", layer.output_shape)


def _flatten(g: GraphBuilder, layer: Flatten, t: Tensor, where: str) -> Tensor:
    t = g.to_layout(t, "dpnn", where)           # dpnn flattens (H, W, C) in that order
    return Tensor(g.node("Flatten", [t.name], where, axis=1), "dpnn", layer.output_shape)


def _batch_norm(g: GraphBuilder, layer: BatchNorm2D, t: Tensor, where: str) -> Tensor:
    t = g.to_layout(t, "NCHW", where)           # channels on axis 1: (N, C, H, W) or (N, C)
    inputs = [t.name] + [g.const(f"{where}.{name}", value) for name, value in (
        ("gamma", layer.params.get("gamma", np.ones(layer.channels, np.float32))),   # scale=False: 1
        ("beta", layer.params.get("beta", np.zeros(layer.channels, np.float32))),    # center=False: 0
        ("running_mean", layer.state["running_mean"]), ("running_var", layer.state["running_var"]))]
    out = g.node("BatchNormalization", inputs, where, epsilon=layer.eps, momentum=layer.momentum)
    return Tensor(out, t.layout, layer.output_shape)


def _residual(g: GraphBuilder, layer: Residual, t: Tensor, where: str) -> Tensor:
    main = _sequence(g, layer.layers, t, f"{where}.main")
    short = t if layer.shortcut is None else _sequence(g, layer.shortcut, t, f"{where}.shortcut")
    short = g.to_layout(short, main.layout, where)          # both in the main path's layout
    total = Tensor(g.node("Add", [main.name, short.name], where), main.layout, layer.output_shape)
    return _activation(g, total, layer.activation, where)


EXPORTERS = {Conv2D: _conv, Dense: _dense, Flatten: _flatten, MaxPool2D: _pool, AvgPool2D: _pool,
             GlobalAvgPool2D: _global_avg_pool, BatchNorm2D: _batch_norm, Residual: _residual,
             Activation: lambda g, layer, t, where: _activation(g, t, layer.func, where),
             Dropout: lambda g, layer, t, where: Tensor(g.node("Identity", [t.name], where),  # inference
                                                        t.layout, t.shape)}


def _children(layer: Layer) -> list[tuple[str, list[Layer]]]:
    """The named layer lists a container holds (a residual block's main path and shortcut)."""
    if type(layer) is Residual:
        return [("main", layer.layers)] + ([("shortcut", layer.shortcut)] if layer.shortcut else [])
    return []


def unsupported_layers(layers: list[Layer], prefix: str = "layer") -> list[str]:
    """'layer 3 (Scale)' for every layer (nested ones too) that has no ONNX translation."""
    found = []
    for i, layer in enumerate(layers):
        where = f"{prefix} {i} ({type(layer).__name__})"
        if type(layer) not in EXPORTERS:     # exact class: a subclass may compute something else
            found.append(where)
        for name, inner in _children(layer):
            found += unsupported_layers(inner, f"{where} {name}")
    return found


def _sequence(g: GraphBuilder, layers: list[Layer], t: Tensor, prefix: str) -> Tensor:
    for i, layer in enumerate(layers):
        t = EXPORTERS[type(layer)](g, layer, t, f"{prefix}{i}.{type(layer).__name__}")
    return t


def check_exportable(model) -> None:
    """Raise one ValueError/TypeError before export if ``model`` cannot be exported."""
    if not getattr(model, "built", False):
        raise ValueError("the model is not built yet: call build(input_shape), fit() or predict() "
                         "before export_onnx(), or load it with Model.load(path)")
    bad = unsupported_layers(model.layers)
    if bad:
        known = ", ".join(sorted(cls.__name__ for cls in EXPORTERS))
        raise TypeError(f"cannot export to ONNX: {'; '.join(bad)} "
                        f"{'has' if len(bad) == 1 else 'have'} no ONNX translation. dpnn exports its "
                        f"built-in layers ({known}); write the model with those layers, or convert "
                        "this layer yourself (dpnn/onnx_export.py shows how each layer becomes ONNX nodes)")


def to_onnx(model, opset: int = OPSET):
    """The ``onnx.ModelProto`` of a built dpnn model (see the module docstring for the mapping)."""
    onnx = import_onnx()
    check_exportable(model)
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {newest} (this onnx's newest), "
                         f"got {opset!r}")
    helper, float32 = onnx.helper, onnx.TensorProto.FLOAT
    in_dims, out_dims = _dims(model.input_shape), _dims(model.output_shape)
    in_name = input_name(model)
    g = GraphBuilder(onnx)
    t = _sequence(g, model.layers, Tensor(in_name, "dpnn", model.input_shape), "layer")
    t = g.to_layout(t, "dpnn", "output")         # a model that ends on a Conv answers in NHWC, as dpnn
    g.nodes.append(helper.make_node("Identity", [t.name], [OUTPUT_NAME], name="output/Identity"))
    graph = helper.make_graph(
        g.nodes, "dpnn_model",
        [helper.make_tensor_value_info(in_name, float32, in_dims)],
        [helper.make_tensor_value_info(OUTPUT_NAME, float32, out_dims)],
        initializer=g.initializers,
        doc_string=f"{in_name}: float32 {tuple(in_dims)}, the array dpnn's Model.predict takes")
    opsets = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(graph, producer_name="dpnn", opset_imports=opsets)
    proto.ir_version = helper.find_min_ir_version_for(opsets)    # the oldest IR: more runtimes read it
    helper.set_model_props(proto, {str(k): v if isinstance(v, str) else json.dumps(v)    # class names...
                                   for k, v in (model.metadata or {}).items()})
    onnx.checker.check_model(proto)
    return proto


def _dims(shape: tuple) -> list:
    return ["N", *(int(d) for d in shape[1:])]      # a free batch size


def input_name(model) -> str:
    """'input_nhwc' for images (N, H, W, C), else 'input'."""
    return INPUT_NAME if len(model.input_shape) == 4 else "input"


def export_onnx(model, path: str, opset: int = OPSET) -> str:
    """Write ``model`` as ONNX to ``path`` (atomically: temp file + rename); returns ``path``.

    The graph's input is ``input_nhwc`` (N, H, W, C) float32, the same array ``model.predict``
    takes; its output ``output`` equals ``model.predict``'s within float32 rounding.
    """
    proto = to_onnx(model, opset)
    atomic_write(path, lambda tmp: import_onnx().save(proto, tmp))
    return path
