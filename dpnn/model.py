"""Model: a stack of layers whose parameters live in one flat float32 buffer."""
from __future__ import annotations

import copy
import time

import numpy as np

from . import saving
from .data import as_arrays
from .flat import FlatLayout
from .freezing import Freezing
from .layers import execution_order
from .layers.base import Layer, summary_rows
from .limits import check_model_memory
from .losses import BinaryCrossentropy, check_metrics, fit_loss_to_output, get_loss, softmax
from .losses.binary import sigmoid
from .optimizers import check_number, get_optimizer, regularize, step_keeping_frozen
from .random import sample_keys as make_sample_keys
from .recipe import evaluation_sums, run_shard
from .sample_weights import attach, check_sample_weight, sample_weights

AUTO_MICRO_BATCH = 64     # samples per forward/backward piece (python -m benchmarks.ablation measures it)


class Model(Freezing):
    """A sequential network with a Keras-like API.

    ``params``, ``grads`` and ``state`` are flat float32 vectors; each layer's arrays are
    views into them (see :mod:`dpnn.flat`). ``build`` is implicit on the first
    ``fit``/``predict``/``train_on_batch``.
    """

    def __init__(self, layers: list[Layer] | None = None, seed: int | None = None) -> None:
        self.seed, self.built = seed, False
        self.layers: list[Layer] = []
        for layer in layers or []:
            self.add(layer)
        self.input_shape: tuple | None = None
        self.loss = self.optimizer = None
        self.weight_decay, self.clip_norm = 0.0, None
        self.metadata: dict = {}            # saved with the model (class names, data set...)
        self.stop_training = False
        self._pending_weights: str | None = None     # a weights file to load on build (nn's format)
        self._forward_calls = 0
        self.micro_batch: int | None = None    # see micro_batches(); set by compile()
        self._grad_scratch: np.ndarray | None = None
        self.owner = None          # the worker pool (PoolNode) sharing this model's memory, if any

    def add(self, layer: Layer) -> "Model":
        if not isinstance(layer, Layer):
            raise TypeError(f"Model.add expects a dpnn Layer, got {type(layer).__name__}")
        if self.built:
            raise ValueError("cannot add layers to a built model; create a new Model")
        self.layers.append(layer)
        return self

    def build(self, input_shape: tuple) -> "Model":
        """Create every parameter for inputs of ``input_shape`` (batch first, e.g. (1, 28, 28, 1))."""
        if not self.layers:
            raise ValueError("the model has no layers; pass a list to Model([...]) or call add()")
        if self.built:                   # e.g. build() after Model.load(): keep the weights
            if tuple(input_shape[1:]) != tuple(self.input_shape[1:]):
                raise ValueError(f"the model is built for inputs {self.input_shape[1:]}, "
                                 f"not {tuple(input_shape[1:])}; create a new Model for another shape")
            return self
        check_model_memory(self.layers, input_shape)    # refuse what cannot fit, before allocating
        shape = (None,) + tuple(int(d) for d in input_shape[1:])
        rng = np.random.default_rng(self.seed)
        for i, layer in enumerate(self.layers):
            layer.rng, layer.salt, layer.needs_input_grad = rng, i, i > 0   # the first: no dx to compute
            layer.build(shape)
            if layer.output_shape is None:
                raise ValueError(f"layer {i} ({type(layer).__name__}).build did not set output_shape")
            shape = (None,) + tuple(layer.output_shape[1:])
        self._order = execution_order(self.layers)
        self._batch_coupled = any(layer.batch_coupled for layer in self.layers)
        self.input_shape, self.output_shape = (None,) + tuple(input_shape[1:]), shape
        self.param_layout = FlatLayout(self.layers, "params")
        self.state_layout = FlatLayout(self.layers, "state")
        self.params = np.zeros(self.param_layout.size, np.float32)
        self.grads = np.zeros(self.param_layout.size, np.float32)
        self.state = np.zeros(self.state_layout.size, np.float32)
        self.bind(self.params, self.grads, self.state)
        self.built = True
        if self._pending_weights is not None:
            path, self._pending_weights = self._pending_weights, None
            self.load_weights(path)
        return self

    def bind(self, params: np.ndarray, grads: np.ndarray, state: np.ndarray, copy: bool = True) -> None:
        """Make every layer's arrays views into these flat buffers (e.g. shared memory)."""
        self.param_layout.bind(self.layers, params, "params", copy)
        self.param_layout.bind(self.layers, grads, "grads", copy)
        self.state_layout.bind(self.layers, state, "state", copy)
        self.params, self.grads, self.state = params, grads, state

    def bind_grads(self, grads: np.ndarray) -> None:
        """Make the layers write their gradients into ``grads`` from now on."""
        self.param_layout.bind(self.layers, grads, "grads", copy=False)
        self.grads = grads

    def portable(self) -> "Model":
        """This model for a worker process: copies of the user's own layer and loss objects (every
        attribute kept), no arrays, no optimizer; the worker binds it to shared memory (:meth:`bind`)."""
        assert self.built, "build the model first"
        clone = copy.copy(self)
        clone.layers = [layer.portable() for layer in self.layers]
        clone.params = clone.grads = clone.state = None
        clone.optimizer = clone.owner = clone._grad_scratch = None
        return clone

    def check_not_owned(self, action: str) -> None:
        """Refuse ``action`` while an open DataParallel's workers share this model's memory."""
        if self.owner is not None and not self.owner.closed:
            raise RuntimeError(f"cannot {action}: this model belongs to an open DataParallel (its "
                               "workers share its parameters); train through it (dp.train_step) "
                               "or close it first (dp.close(), or leave its `with` block)")

    def grad_scratch(self) -> np.ndarray:
        """A private flat gradient vector, for summing micro-batch gradients (allocated once)."""
        if self._grad_scratch is None or self._grad_scratch.shape != (self.param_layout.size,):
            self._grad_scratch = np.zeros(self.param_layout.size, np.float32)
        return self._grad_scratch

    def micro_batches(self, n: int) -> list[tuple[int, int]]:
        """How a shard of ``n`` samples is cut for forward + backward: [(start, stop), ...].

        Pieces of ``micro_batch`` samples (the last may be smaller), so that each piece's
        activations stay in the core's cache; one piece when ``micro_batch`` is None or a
        layer couples the samples of a batch (BatchNorm's statistics).
        """
        mb = self.micro_batch
        if not mb or n <= mb or self._batch_coupled:
            return [(0, n)]
        return [(a, min(n, a + mb)) for a in range(0, n, mb)]

    def next_sample_keys(self, n: int) -> np.ndarray:
        """Fresh per-sample Dropout keys (N,) for a training forward given none."""
        self._forward_calls += 1
        return make_sample_keys(self.seed or 0, self._forward_calls, np.arange(n))

    def ensure_built(self, x: np.ndarray) -> None:
        """Build the model for batches like ``x`` unless it is built (a hint if x lacks an axis)."""
        if self.built:
            return
        try:
            self.build(x.shape)
        except ValueError as e:
            hint = (f" (building it for samples of shape {tuple(x.shape[1:])}, from a batch of shape "
                    f"{tuple(x.shape)}: if that is one sample, add the batch axis with x[None])")
            raise ValueError(f"{e}{hint}") from None

    def check_input(self, x) -> np.ndarray:
        """Validate and convert an input batch to float32 (N, ...) matching the built model."""
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"inputs must be numeric arrays, got dtype {x.dtype}")
        x = x.astype(np.float32, copy=False)
        if self.built and tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            want = tuple(self.input_shape[1:])
            hint = ""
            if x.shape[1:] == want[:-1] and want[-1] == 1:
                hint = "; add the channel axis with x[..., None]"
            elif tuple(x.shape) == want:
                hint = "; that is one sample: add the batch axis with x[None]"
            elif tuple(x.shape) == want[:-1] and want[-1] == 1:
                hint = "; that is one single-channel sample: use x[None, ..., None]"
            raise ValueError(f"input of shape {x.shape} does not match the model, which expects "
                             f"(N, {', '.join(map(str, want))}){hint}")
        return x

    @property
    def execution_order(self) -> list[int]:
        """Layer indices in the order forward runs them (backward: reversed); see
        :func:`execution_order`. Assign a permutation to run another order (benchmarks do)."""
        return list(self._order)

    @execution_order.setter
    def execution_order(self, order: list[int]) -> None:
        if sorted(order) != list(range(len(self.layers))):
            raise ValueError(f"execution_order must be a permutation of range({len(self.layers)})")
        self._order = list(order)

    def forward(self, x: np.ndarray, training: bool = False,
                sample_keys: np.ndarray | None = None, hook=None) -> np.ndarray:
        """Run every layer; ``sample_keys`` (N,) uint64 key Dropout masks to samples.

        ``hook(index, layer, 'forward', seconds)`` is called after each layer (profiling).
        """
        if training and sample_keys is None:
            sample_keys = self.next_sample_keys(len(x))
        owned = False                   # the caller's x is never overwritten
        for i in self._order:
            layer = self.layers[i]
            if hasattr(layer, "sample_keys"):
                layer.sample_keys = sample_keys
            t0 = time.perf_counter() if hook else 0.0
            layer.overwrite_input = owned
            x = layer.forward(x, training)
            owned = layer.owns_output
            if hook:
                hook(i, layer, "forward", time.perf_counter() - t0)
        return x

    def backward(self, grad: np.ndarray, hook=None) -> None:
        """Back-propagate d(loss)/d(output); fills ``grads`` (layers write into their views).

        ``hook(index, layer, 'backward', seconds)`` is called after each layer (profiling).
        """
        for i in reversed(self._order):
            t0 = time.perf_counter() if hook else 0.0
            grad = self.layers[i].backward(grad)
            if hook:
                hook(i, self.layers[i], "backward", time.perf_counter() - t0)
        self.param_layout.sync_back(self.layers, self.grads, "grads")

    def compile(self, loss="categorical_crossentropy", optimizer="adam", lr: float | None = None,
                weight_decay: float = 0.0, clip_norm: float | None = None,
                micro_batch: int | None | str = "auto", metrics=None, **optimizer_kwargs) -> "Model":
        """Choose the loss, the optimizer (name or instance) and gradient regularisation.

        ``micro_batch``: forward + backward run on pieces of at most this many samples and
        their gradients are summed (same result up to float rounding, faster because each
        piece's activations stay in cache); None runs each shard whole; 'auto' picks
        ``AUTO_MICRO_BATCH``. ``metrics``: Keras's ``['accuracy']`` is accepted (accuracy is
        always reported for classifiers); no other metric exists.

        ``weight_decay`` is coupled L2 (grad += wd * param, PyTorch's); an optimizer's own is
        decoupled (Keras's). No ``optimizer``: Adam (Keras: RMSprop; pass ``optimizer="rmsprop"``).
        """
        check_metrics(metrics)
        self.loss = get_loss(loss)
        fit_loss_to_output(self.loss, self.layers[-1] if self.layers else None)   # or refuse the pair
        if lr is not None:
            optimizer_kwargs["lr"] = lr
        try:
            self.optimizer = get_optimizer(optimizer, **optimizer_kwargs)
        except TypeError as e:
            known = "loss, optimizer, lr, weight_decay, clip_norm, micro_batch, metrics"
            raise TypeError(f"compile(): bad optimizer arguments for {optimizer!r}: {e} (compile's own "
                            f"arguments are {known}; the rest go to the optimizer)") from None
        self.weight_decay = check_number("compile's weight_decay (L2 added to the gradient)", weight_decay)
        self.clip_norm = None if clip_norm is None else check_number("clip_norm", clip_norm, low_open=True)
        if micro_batch == "auto":
            micro_batch = AUTO_MICRO_BATCH
        if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(
                micro_batch, (int, np.integer)) or micro_batch < 1):
            raise ValueError(f"micro_batch must be a positive int, None or 'auto', got {micro_batch!r}")
        self.micro_batch = None if micro_batch is None else int(micro_batch)
        return self

    def require_compiled(self) -> None:
        if self.loss is None or self.optimizer is None:
            raise ValueError("call model.compile(loss=..., optimizer=...) before training")

    def apply_gradients(self) -> float:
        """Weight decay, global-norm clipping, then one optimizer step on ``params``; returns the norm.
        Frozen layers (``trainable = False``) keep their parameters and slots bitwise."""
        frozen = self.frozen_ranges()
        norm = regularize(self.params, self.grads, self.weight_decay, self.clip_norm, frozen)
        step_keeping_frozen(self.optimizer, self.params, self.grads, frozen)
        return norm

    def train_on_batch(self, x, y, sample_keys: np.ndarray | None = None, *, sample_weight=None,
                       class_weight: dict | None = None) -> tuple[float, float]:
        """One optimizer step on (x, y) in this process; returns (mean loss, accuracy or nan).
        ``sample_weight``/``class_weight`` weigh the samples as in :func:`dpnn.training.fit`."""
        self.check_not_owned("call train_on_batch")
        self.require_compiled()
        x, y = self.check_input(x), np.asarray(y)
        y = attach(y, sample_weights(y, sample_weight, class_weight))
        self.ensure_built(x)
        if sample_keys is not None and np.asarray(sample_keys).dtype.kind not in "iu":   # Keras's 3rd: weights
            raise TypeError("train_on_batch's third argument is sample_keys (integers); pass sample weights "
                            "by name: train_on_batch(x, y, sample_weight=w)")
        keys = self.next_sample_keys(len(x)) if sample_keys is None else sample_keys
        sums = run_shard(self, 0, x, y, len(x), keys, None).sums
        self.apply_gradients()
        return sums.mean_loss(), sums.accuracy()

    def fit(self, x, y=None, **kwargs):
        """Train; see :func:`dpnn.training.fit` for every option. Returns a
        :class:`dpnn.callbacks.History` (``history.history['loss']``, or ``history['loss']``)."""
        from .training import fit
        return fit(self, x, y, **kwargs)

    def predict(self, x, batch_size: int = 256, verbose: int = 0, probabilities: bool = False) -> np.ndarray:
        """Outputs (N, ...) in batches, inference mode (no dropout, running BatchNorm stats).

        ``probabilities``: class probabilities (N, K), the softmax of the logits (a model that
        ends in a softmax already outputs them). ``verbose`` (Keras's) prints nothing here.
        """
        if probabilities:
            return self.predict_proba(x, batch_size)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        x = self.check_input(x)
        self.ensure_built(x)
        outs = [self.forward(x[i:i + batch_size], training=False) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,) + tuple(self.output_shape[1:]), np.float32)

    def export_onnx(self, path: str, opset: int = 17) -> str:
        """Write this model as ONNX; its input ``input_nhwc`` is the array predict takes (dpnn.onnx_export)."""
        from .onnx_export import export_onnx
        return export_onnx(self, path, opset)

    def predict_proba(self, x, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, K): the softmax of the outputs, unless the model ends in one;
        with binary cross-entropy, each output's own probability (the sigmoid of its logit)."""
        out, act = self.predict(x, batch_size), self.layers[-1].output_activation
        if isinstance(self.loss, BinaryCrossentropy):
            return out if act == "sigmoid" else sigmoid(out)
        return out if act == "softmax" else softmax(out)

    @property
    def class_names(self) -> list[str] | None:
        """The names of the output classes (``metadata['class_names']``, saved with the model;
        dpnn train sets them from the data set), or None; ``names[predict(x).argmax(1)]``."""
        return self.metadata.get("class_names")

    @class_names.setter
    def class_names(self, names) -> None:
        self.metadata["class_names"] = [str(n) for n in names]

    def evaluate(self, x, y=None, batch_size: int = 256, verbose: int = 0,
                 sample_weight=None) -> tuple[float, float]:
        """(mean loss, accuracy) on a data set, (X, y) tuple or arrays; ``verbose`` prints them.
        ``sample_weight`` (N,): the loss is sum(w * loss) / N, as Keras's; accuracy unweighted."""
        x, y = as_arrays(x, y)
        if sample_weight is not None:
            y = attach(y, check_sample_weight(sample_weight, len(y)))
        if self.loss is None:
            self.loss = get_loss("categorical_crossentropy")
            fit_loss_to_output(self.loss, self.layers[-1])
        sums = evaluation_sums(self, x, y, batch_size)       # the engines' recipe too
        if verbose:
            print(f"loss {sums.mean_loss():.4f}, acc {sums.accuracy():.4f} ({sums.count:,} samples)")
        return sums.mean_loss(), sums.accuracy()

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every parameter and state array, in layer order (params first per layer)."""
        return [a.copy() for layer in self.layers for a in (*layer.params.values(), *layer.state.values())]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Assign arrays in :meth:`get_weights` order (shapes must match)."""
        self.check_not_owned("set_weights")
        targets = [a for layer in self.layers for a in (*layer.params.values(), *layer.state.values())]
        if len(weights) != len(targets):
            raise ValueError(f"expected {len(targets)} arrays, got {len(weights)}")
        for i, (t, w) in enumerate(zip(targets, weights)):
            if t.shape != np.shape(w):
                raise ValueError(f"array {i}: shape {np.shape(w)} does not match {t.shape}")
        for t, w in zip(targets, weights):
            t[...] = w

    def param_count(self) -> int:
        return sum(layer.param_count() for layer in self.layers)

    def summary(self, print_fn=print) -> str:
        """A table of layers, output shapes and parameter counts (also returned as a string)."""
        if not self.built:
            raise ValueError("build the model first: model.build((1, 28, 28, 1))")
        rows = [f"{'#':>3}  {'Layer':<28}{'Output shape':<22}{'Params':>10}", "-" * 63]
        for i, layer in enumerate(self.layers):         # a container's layers indented below it
            rows += summary_rows(str(i), layer)
        rows += ["-" * 63, f"Total params: {self.param_count():,}"]
        text = "\n".join(rows)
        if print_fn:
            print_fn(text)
        return text

    def get_config(self) -> list[dict]:
        return [layer.to_config() for layer in self.layers]

    def save(self, path: str, extra_arrays: dict[str, np.ndarray] | None = None) -> str:
        """Write ``path`` (HDF5, or NPZ without h5py): weights, and inside it the architecture and
        metadata, so the file alone is the model; the architecture JSON is written beside it too.
        ``extra_arrays`` go under names with a '/' (a checkpoint's optimizer state); returns the
        weights path actually written (see :mod:`dpnn.saving`)."""
        return saving.save(self, path, extra_arrays)

    @classmethod
    def load(cls, path: str) -> "Model":
        """Read a model written by :meth:`save` (one file, or the older file + JSON pair).

        Weights are checked by name, shape and dtype before any is read; a file in nn's format,
        which stores no input shape, gets them on ``build``. Every problem raises one
        :class:`dpnn.WeightsError`; nothing in the file is run as code."""
        return saving.load(cls, path)

    def save_weights(self, path: str) -> str:
        """Write only the weights (HDF5, NPZ for a .npz path or without h5py); returns the path."""
        return saving.save_weights(self, path)

    def load_weights(self, path: str) -> "Model":
        """Copy the weights in ``path`` into this built model (checked before any is read)."""
        return saving.load_weights(self, path)
