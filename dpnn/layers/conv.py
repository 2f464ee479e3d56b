"""Conv2D via im2col -> GEMM, and Dense; both may end in an activation (a ReLU is fused into the bias add)."""
from __future__ import annotations

import numpy as np

from ..im2col import (
    block_rows,
    col2im_add,
    conv_input_grad_cols,
    conv_input_grad_taps,
    conv_output_size,
    flip_kernel,
    im2col_block,
    row_blocks,
    scratch,
)
from . import conv_general, initializers
from .base import Layer, check_rank, register_layer, runs_own_forward
from .simple import activate_in_place, activation_grad, check_activation

FOLD_BIAS_BELOW = 32     # im2col width under which the bias rides in the GEMM (saves a pass over out)
SHIFTED_DX_FROM = 32     # filters from which a stride-1 input gradient uses one GEMM per window
                         # offset, added at its shift (python -m benchmarks.ablation measures both)
BACKWARD_CHUNK = 8       # samples per piece of such a backward (the piece's rows stay in cache;
                         # fewer when their gradient rows would pass IM2COL_BUDGET)
IM2COL_BUDGET = 2 << 20  # bytes of im2col rows built at once: a layer never holds more, whatever the
                         # image size (its input is kept instead, and backward rebuilds the rows);
                         # python -m benchmarks.image_size --im2col-budget compares budgets


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, (int, np.integer)) and i > 0 for i in t):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


def stride_pair(stride, strides, name: str = "stride") -> tuple[int, int]:
    """dpnn's ``stride=`` or Keras's ``strides=`` (one of them) as a pair of positive ints."""
    if strides is not None and stride not in (None, 1) and _pair(stride, name) != _pair(strides, "strides"):
        raise TypeError(f"give {name}= or strides=, not both (they are the same setting)")
    if strides is not None:
        return _pair(strides, "strides")
    return _pair(1 if stride is None else stride, name)


def sum_rows(g: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[...] = g.sum(axis=0) for g (M, F), as one BLAS GEMV with a ones vector."""
    np.matmul(np.ones(g.shape[0], g.dtype), g, out=out)
    return out


@register_layer
class Conv2D(Layer):
    """2-D convolution on NHWC input; weights W (KH, KW, C, F), bias b (F,).

    ``activation='relu'`` applies the ReLU in place on the GEMM output (one pass fewer
    than a separate Activation layer, and no extra (N, OH, OW, F) array); any other name of
    :data:`dpnn.layers.simple.ACTIVATIONS` is applied as an Activation layer would (Keras's
    ``activation=``). ``padding`` defaults to 'same' (nn's), where Keras's is 'valid'.

    Keras's options: ``strides`` (or dpnn's ``stride``; an int or a pair), ``dilation_rate``,
    ``groups`` (W is then (KH, KW, C/groups, F)), ``padding`` as an int, a pair or
    ((top, bottom), (left, right)) besides 'same'/'valid', ``kernel_initializer`` and
    ``bias_initializer`` (a Keras name or object; dpnn's default kernel is nn's He-normal,
    'he', where Keras's is 'glorot_uniform'). Any of the first four off its default runs the
    general path (:mod:`dpnn.layers.conv_general`).

    Memory: the im2col rows are built and multiplied in blocks of at most ``im2col_budget`` bytes
    (:func:`dpnn.im2col.row_blocks`); the layer keeps its input, not the unfolded rows, and
    backward rebuilds each block's rows for the weight gradient.
    """
    shifted_dx_from: int | None = SHIFTED_DX_FROM   # None: always im2col for the input gradient
    backward_chunk: int | None = BACKWARD_CHUNK     # None: the shifted backward on the whole batch
    im2col_budget: int | None = IM2COL_BUDGET       # None: the whole batch's im2col at once

    def __init__(self, filters: int, kernel_size=(3, 3), stride=1, padding="same", use_bias: bool = True,
                 activation: str | None = None, *, strides=None, dilation_rate=1, groups: int = 1,
                 kernel_initializer="he", bias_initializer="zeros") -> None:
        super().__init__()
        if not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(f"filters must be a positive int, got {filters!r}")
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1 \
                or filters % groups:
            raise ValueError(f"groups must be a positive int that divides filters ({filters}), got {groups!r}")
        self.filters, self.kernel_size = int(filters), _pair(kernel_size, "kernel_size")
        self.strides = stride_pair(stride, strides)
        self.stride = self.strides[0] if self.strides[0] == self.strides[1] else self.strides
        self.padding = conv_general.padding_pairs(padding)
        self.dilation_rate, self.groups = _pair(dilation_rate, "dilation_rate"), int(groups)
        self.use_bias = bool(use_bias)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        initializers.get(kernel_initializer), initializers.get(bias_initializer)      # refuse a bad name now
        self.activation = None if activation == "linear" else check_activation(activation, none_ok=True)
        # buffers reused across steps (same batch size -> no allocation, no page faults)
        self._cols = self._cols_aug = self._slab = self._gcols = self._gpad = None
        self._dxq = self._gchunk = self._dWb = self._dWtmp = None   # the shifted backward's
        self._ones_set = None     # the memory whose ones column (bias in the GEMM) is written

    @property
    def general(self) -> bool:
        """True when an option runs the general path (conv_general) instead of the tuned one."""
        return (self.groups != 1 or self.dilation_rate != (1, 1) or isinstance(self.stride, tuple)
                or not isinstance(self.padding, str))

    def geometry(self, H: int, W: int) -> tuple[int, int, tuple[int, int, int, int]]:
        """(OH, OW, (top, bottom, left, right) padding) for an (H, W) input."""
        return conv_general.geometry((H, W), self.kernel_size, self.strides, self.dilation_rate, self.padding)

    def build(self, input_shape: tuple) -> None:
        check_rank(self, input_shape, (4,), "Conv2D takes NHWC images (N, H, W, C)")
        N, H, W, C = input_shape
        if C % self.groups:
            raise ValueError(f"Conv2D groups={self.groups} must divide the input channels ({C})")
        kh, kw = self.kernel_size
        oh, ow, _ = self.geometry(H, W)
        Cg = C // self.groups
        self.add_param("W", (kh, kw, Cg, self.filters), self.kernel_initializer, fan_in=kh * kw * Cg,
                       fan_out=kh * kw * self.filters)
        if self.use_bias:
            self.add_param("b", (self.filters,), self.bias_initializer)
        self.input_shape, self.output_shape = tuple(input_shape), (N, oh, ow, self.filters)
        self.built = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if self.general:
            return self._forward_general(x)
        N, H, W, C = x.shape
        (kh, kw), s, F = self.kernel_size, self.stride, self.filters
        oh, pt, pb = conv_output_size(H, kh, s, self.padding)
        ow, pl, pr = conv_output_size(W, kw, s, self.padding)
        K = kh * kw * C
        self._x, self._pads, self._out_hw = x, (pt, pb, pl, pr), (oh, ow)   # backward rebuilds cols from x
        fold = self._fold_bias(K)        # few columns: a ones column puts the bias inside the GEMM
        Wm = self.params["W"].reshape(K, F)
        if fold:
            Wm = np.concatenate([Wm, self.params["b"][None]])               # (K+1, F)
        out = np.empty((N * oh * ow, F), x.dtype)                           # (N*OH*OW, F)
        for block in self._blocks(N, K):
            o = out[block_rows(block, oh, ow)]
            np.matmul(self._block_cols(block), Wm, out=o)                   # the block's rows, in cache
            if self.use_bias and not fold:
                o += self.params["b"]
            if self.activation == "relu":
                np.maximum(o, 0, out=o)
        if self.activation is not None:                                     # a softmax is over F
            out = self._y = out if self.activation == "relu" else activate_in_place(self.activation, out)
        return out.reshape(N, oh, ow, F)                                    # (N, OH, OW, F)

    def _blocks(self, N: int, K: int) -> list[tuple[int, int, int, int]]:
        """How N samples' im2col rows are cut so that one block's cols fit ``im2col_budget``."""
        oh, ow = self._out_hw
        row_bytes = (K + self._fold_bias(K)) * self._x.dtype.itemsize
        return row_blocks(N, oh, ow, row_bytes, self.im2col_budget or 1 << 62)

    def _block_cols(self, block: tuple[int, int, int, int]) -> np.ndarray:
        """im2col of ``block`` of the kept input (n*OH'*OW, KH*KW*C), plus a ones column when the
        bias rides in the GEMM; built in the layer's reused buffers."""
        (kh, kw), C = self.kernel_size, self._x.shape[3]
        a, b, r0, r1 = block
        K, m = kh * kw * C, (b - a) * (r1 - r0) * self._out_hw[1]
        fold = self._fold_bias(K)
        if fold:
            aug = self._cols_aug = scratch(self._cols_aug, (m, K + 1), self._x.dtype)
            if aug.base is not self._ones_set:          # fresh memory: (re)write the ones column
                aug.base.reshape(-1, K + 1)[:, K] = 1
                self._ones_set = aug.base
        cols, slab = im2col_block(self._x, block, kh, kw, self.stride, self._pads, self._out_hw[1],
                                  out=aug[:, :K] if fold else self._cols, slab_buf=self._slab)
        self._slab = self._slab if slab is None else slab
        if fold:
            return aug                                                      # (m, K+1)
        self._cols = cols
        return cols                                                         # (m, K)

    def _forward_general(self, x: np.ndarray) -> np.ndarray:
        N, H, W, C = x.shape
        oh, ow, pads = self.geometry(H, W)
        self._pads, self._x_shape, self._out_hw = pads, x.shape, (oh, ow)
        out, self._cols = conv_general.forward(x, self.params["W"], self.params.get("b"), self.strides,
                                               self.dilation_rate, pads, self.groups, (oh, ow))  # (N*OH*OW, F)
        if self.activation is not None:
            out = self._y = activate_in_place(self.activation, out)
        return out.reshape(N, oh, ow, self.filters)                        # (N, OH, OW, F)

    def _backward_general(self, g2: np.ndarray) -> np.ndarray | None:
        dW, db, dx = conv_general.backward(g2, self._cols, self.params["W"], self.groups, self._x_shape,
                                           self.strides, self.dilation_rate, self._pads, self._out_hw,
                                           self.needs_input_grad)
        self.grads["W"][...] = dW
        if self.use_bias:
            self.grads["b"][...] = db
        return dx

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        F = self.filters
        g2 = grad.reshape(-1, F)                                           # (N*OH*OW, F)
        if self.general:
            if self.activation is not None:
                g2 = activation_grad(self.activation, g2, self._y, self.fused_with_loss)
            return self._backward_general(g2)
        N, H, W, C = self._x.shape
        (kh, kw), (oh, ow) = self.kernel_size, self._out_hw
        shifted = self.needs_input_grad and self.stride == 1 and self.shifted_dx_from is not None \
            and (F >= self.shifted_dx_from or self._im2col_dx_bytes() > (self.im2col_budget or 1 << 62))
        if self.activation is not None and not (shifted and self.activation == "relu"):
            g2 = activation_grad(self.activation, g2, self._y, self.fused_with_loss)   # ReLU: per piece
        P, step = oh * ow, N
        if shifted:        # pieces of backward_chunk samples, fewer if one's gradient rows pass the budget
            fit = (self.im2col_budget or 1 << 62) // (P * max(F, C) * g2.dtype.itemsize)
            step = min(self.backward_chunk or N, max(1, fit))
        dx = scratch(self._dxq, (N, H, W, C), g2.dtype) if shifted else None
        if shifted:      # reused next step when small; a photo's is fresh memory, not held between steps
            self._dxq = dx if dx.nbytes <= (self.im2col_budget or 1 << 62) else None
        for a in range(0, N, step):        # pieces of samples: each one's rows stay in cache
            e = min(N, a + step)
            g = g2[a * P:e * P]                                            # (n*OH*OW, F)
            if shifted and self.activation == "relu":
                g = self._gchunk = np.multiply(g, self._y[a * P:e * P] > 0,
                                               out=scratch(self._gchunk, g.shape, g.dtype))
            self._add_weight_grad(a, e, g, first=a == 0)
            if shifted:
                _, self._gcols = conv_input_grad_taps(g.reshape(e - a, oh, ow, F), self.params["W"],
                                                      self._pads, (H, W), out=dx[a:e], tmp_buf=self._gcols)
        self._write_weight_grad()
        if shifted or not self.needs_input_grad:
            return dx                                                      # (N, H, W, C) or None
        if self.stride == 1:     # dx is a correlation of the padded grad with the flipped kernel
            self._gcols, self._gpad = conv_input_grad_cols(
                g2.reshape(N, oh, ow, F), kh, kw, self._pads, (H, W), out=self._gcols, pad_buf=self._gpad)
            return (self._gcols @ flip_kernel(self.params["W"])).reshape(N, H, W, C)
        return self._strided_input_grad(g2)

    def _im2col_dx_bytes(self) -> int:
        """Bytes of the im2col input gradient's cols (N*H*W, KH*KW*F) for the kept input."""
        N, H, W, _ = self._x.shape
        return N * H * W * self.kernel_size[0] * self.kernel_size[1] * self.filters * self._x.dtype.itemsize

    def _strided_input_grad(self, g2: np.ndarray) -> np.ndarray:
        """Input gradient of a strided convolution, block by block: each block's column gradient
        (its rows of g2 @ W.T) added back into a zero-padded (N, Hp, Wp, C) gradient (col2im)."""
        N, H, W, C = self._x.shape
        (kh, kw), s, (oh, ow) = self.kernel_size, self.stride, self._out_hw
        pt, pb, pl, pr = self._pads
        Wt = self.params["W"].reshape(-1, self.filters).T                  # (F, KH*KW*C)
        dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), g2.dtype)         # (N, Hp, Wp, C)
        for a, b, r0, r1 in self._blocks(N, Wt.shape[1]):
            rows = g2[block_rows((a, b, r0, r1), oh, ow)]                  # (m, F)
            dcols = self._cols = np.matmul(rows, Wt, out=scratch(self._cols, (len(rows), Wt.shape[1]), g2.dtype))
            col2im_add(dcols, dxp[a:b, r0 * s:(r1 - 1) * s + kh], kh, kw, s, r1 - r0, ow)
        return dxp[:, pt:pt + H, pl:pl + W, :]                             # (N, H, W, C)

    def _add_weight_grad(self, a: int, e: int, g: np.ndarray, first: bool) -> None:
        """The weight (and bias) gradient of samples a..e, output gradient ``g`` (their rows), added
        into the accumulator (written when ``first``): block by block, each block's im2col rebuilt
        from the kept input, so no (N*OH*OW, KH*KW*C) array is ever held."""
        (kh, kw), C, F = self.kernel_size, self._x.shape[3], self.filters
        K = kh * kw * C
        fold = self._fold_bias(K)
        acc = self._dWb = scratch(self._dWb, (K + fold, F), g.dtype)       # (K(+1), F)
        oh, ow = self._out_hw
        for j, (b0, b1, r0, r1) in enumerate(self._blocks(e - a, K)):
            cols = self._block_cols((a + b0, a + b1, r0, r1))              # (m, K(+1))
            rows = g[block_rows((b0, b1, r0, r1), oh, ow)]                 # (m, F)
            if first and j == 0:
                np.matmul(cols.T, rows, out=acc)
            else:
                tmp = self._dWtmp = scratch(self._dWtmp, acc.shape, g.dtype)
                acc += np.matmul(cols.T, rows, out=tmp)
        if self.use_bias and not fold:
            db = self.grads["b"]
            if first:
                sum_rows(g, db)
            else:
                db += sum_rows(g, np.empty_like(db))

    def _write_weight_grad(self) -> None:
        """grads['W'] (and a folded bias's grads['b']) from the accumulator."""
        dW = self.grads["W"].reshape(-1, self.filters)                     # (KH*KW*C, F), a view
        dW[...] = self._dWb[:dW.shape[0]]
        if self._dWb.shape[0] > dW.shape[0]:
            self.grads["b"][...] = self._dWb[-1]

    @property
    def owns_output(self) -> bool:       # with an activation it keeps its output for the backward
        return self.activation is None and runs_own_forward(self, Conv2D)

    def _fold_bias(self, K: int) -> bool:
        return self.use_bias and K < FOLD_BIAS_BELOW

    @property
    def output_activation(self) -> str | None:
        return self.activation

    def get_config(self) -> dict:
        stride = list(self.stride) if isinstance(self.stride, tuple) else self.stride
        padding = self.padding if isinstance(self.padding, str) else [list(p) for p in self.padding]
        cfg = {"filters": self.filters, "kernel_size": list(self.kernel_size), "stride": stride,
               "padding": padding, "use_bias": self.use_bias}
        if self.activation is not None:
            cfg["activation"] = self.activation
        if self.dilation_rate != (1, 1):
            cfg["dilation_rate"] = list(self.dilation_rate)
        if self.groups != 1:
            cfg["groups"] = self.groups
        return initializer_config(cfg, self.kernel_initializer, self.bias_initializer)


def initializer_config(cfg: dict, kernel, bias) -> dict:
    """Add the initializers a config can name when they are not dpnn's defaults ('he', 'zeros')."""
    for key, init, default in (("kernel_initializer", kernel, "he"), ("bias_initializer", bias, "zeros")):
        name = initializers.config_name(init)
        if name is not None and name != default:
            cfg[key] = name
    return cfg


@register_layer
class Dense(Layer):
    """Fully connected layer on (N, D) input; W (D, units), b (units,); ``activation`` and the
    initializers as Conv2D's."""

    def __init__(self, units: int, use_bias: bool = True, activation: str | None = None, *,
                 kernel_initializer="he", bias_initializer="zeros") -> None:
        super().__init__()
        if not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"units must be a positive int, got {units!r}")
        self.units, self.use_bias = int(units), bool(use_bias)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        initializers.get(kernel_initializer), initializers.get(bias_initializer)      # refuse a bad name now
        self.activation = None if activation == "linear" else check_activation(activation, none_ok=True)

    def build(self, input_shape: tuple) -> None:
        check_rank(self, input_shape, (2,), "insert Flatten() before Dense")
        N, D = input_shape
        self.add_param("W", (D, self.units), self.kernel_initializer, fan_in=D, fan_out=self.units)
        if self.use_bias:
            self.add_param("b", (self.units,), self.bias_initializer)
        self.input_shape, self.output_shape = tuple(input_shape), (N, self.units)
        self.built = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        N, D = x.shape
        self._x = x
        out = x @ self.params["W"]                                         # (N, units)
        if self.use_bias:
            out += self.params["b"]
        if self.activation is not None:
            out = self._y = activate_in_place(self.activation, out)
        return out

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        if self.activation is not None:
            grad = activation_grad(self.activation, grad, self._y, self.fused_with_loss)
        np.matmul(self._x.T, grad, out=self.grads["W"])                    # (D, units)
        if self.use_bias:
            sum_rows(grad, self.grads["b"])
        if not self.needs_input_grad:
            return None
        return grad @ self.params["W"].T                                   # (N, D)

    @property
    def owns_output(self) -> bool:
        return self.activation is None and runs_own_forward(self, Dense)

    @property
    def output_activation(self) -> str | None:
        return self.activation

    def get_config(self) -> dict:
        cfg = {"units": self.units, "use_bias": self.use_bias}
        if self.activation is not None:
            cfg["activation"] = self.activation
        return initializer_config(cfg, self.kernel_initializer, self.bias_initializer)
