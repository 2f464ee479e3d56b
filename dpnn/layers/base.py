"""The Layer base class and the registry that lets saved architectures name layer classes."""
from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Callable, Iterator

import numpy as np

from . import initializers

LAYER_REGISTRY: dict[str, type] = {}


def register_layer(cls: type | None = None, *, name: str | None = None) -> Any:
    """Class decorator: make a layer loadable from an architecture JSON by its class name.

    >>> @register_layer
    ... class Scale(Layer): ...
    """
    def wrap(c: type) -> type:
        LAYER_REGISTRY[name or c.__name__] = c
        return c
    return wrap(cls) if cls is not None else wrap


def layer_from_config(entry: dict) -> "Layer":
    """Rebuild a layer from ``{"class": name, "config": {...}}``; ValueError on any bad value."""
    if not isinstance(entry, dict) or "class" not in entry:
        raise ValueError(f"architecture entry {entry!r} is not an object with a 'class' key")
    name = entry["class"]
    cls = LAYER_REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown layer class {name!r} in the architecture; known classes: "
                         f"{', '.join(sorted(LAYER_REGISTRY))}. Define it and decorate it with "
                         "@dpnn.register_layer before loading")
    config = entry.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"the config of layer {name} must be an object of keyword arguments, "
                         f"got {type(config).__name__}")
    _check_int_arguments(cls, name, config)
    trainable = entry.get("trainable", True)
    if not isinstance(trainable, bool):
        raise ValueError(f"layer {name}: 'trainable' must be true or false, got {trainable!r}")
    try:
        layer = cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad config for layer {name}: {e}; correct that entry of the "
                         "architecture") from None
    if not trainable:
        layer.trainable = False
    return layer


def _check_int_arguments(cls: type, name: str, config: dict) -> None:
    """JSON writes 1e9 for a float: refuse it (and true/false) where the class wants an int."""
    params = inspect.signature(cls.__init__).parameters
    for key, value in config.items():
        p = params.get(key)
        if p is None or p.annotation not in (int, "int"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"bad config for layer {name}: {key} must be a whole number "
                             f"such as 32, got {value!r} ({type(value).__name__}); write it "
                             "without a decimal point or exponent")


def runs_own_forward(layer: "Layer", cls: type) -> bool:
    """True when ``layer`` runs ``cls.forward`` itself, not a subclass's override (which may keep
    the output that ``cls`` does not)."""
    return type(layer).forward is cls.forward


class Layer:
    """A layer: ``build(input_shape)``, ``forward(x, training)``, ``backward(grad)``, ``to_config()``.

    Trainable arrays live in ``params`` with gradients of the same shape in ``grads``;
    non-trainable arrays that must be saved (BatchNorm running statistics) live in ``state``.
    Inside a :class:`dpnn.Model` these are views into one flat buffer, so ``backward`` should
    write gradients in place (``self.grads['W'][...] = g``); rebinding works too, the model
    copies it back.
    """

    # True when one sample's output depends on the other samples of the batch (BatchNorm's
    # batch statistics): such a model's shards are never cut into micro-batches.
    batch_coupled = False
    # Set by Model.compile on the last layer when it ends in a softmax and the loss is the
    # cross-entropy: backward then gets d(loss)/d(softmax input) and passes it through.
    fused_with_loss = False
    # Keras's switch: a layer with trainable = False is frozen. Its parameters and their
    # optimizer slots stay bitwise as they are on every engine (no step, no weight decay),
    # its gradient counts as zero in the norm; a frozen BatchNorm also keeps its running
    # statistics and normalises with them, as in Keras. Saved with the architecture. Set it
    # before fit (Keras: before compile): an open DataParallel's workers hold copies of the
    # layers, so a BatchNorm frozen after they start keeps its mode there (parameters follow).
    trainable = True
    # True when forward returns a new array that the layer keeps no reference to: the layer that
    # runs next may then overwrite it (Activation('relu') in place after a BatchNorm2D or a pool).
    # dpnn's layers that say True say it for their own forward only (see runs_own_forward): a
    # user's subclass that overrides forward is False until it says otherwise.
    owns_output = False

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}
        self.built = False
        self.input_shape: tuple | None = None
        self.output_shape: tuple | None = None
        self.needs_input_grad = True      # False for a model's first layer: skip computing dx
        self.overwrite_input = False      # set before forward by the container (Model, Residual): True
                                          # when the input came from a layer that owns_output
        self.rng: np.random.Generator | None = None   # set by Model.build for initialisation

    def __init_subclass__(cls, **kwargs) -> None:
        """Every layer class takes Keras's ``input_shape=`` (no batch axis) besides its own
        arguments: on the first layer of a ``keras.Sequential`` it builds the model at once."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "takes_input_shape", False):
            return

        @functools.wraps(init)
        def __init__(self, *args, input_shape=None, **kw):
            init(self, *args, **kw)
            if input_shape is not None:
                self.declared_input_shape = tuple(input_shape) if not isinstance(input_shape, int) \
                    else (input_shape,)
        __init__.takes_input_shape = True
        cls.__init__ = __init__

    def add_param(self, name: str, shape: tuple, init: str | Callable = "zeros",
                  fan_in: int | None = None, fan_out: int | None = None) -> np.ndarray:
        """Create a float32 parameter and its zero gradient; ``init`` is 'zeros', 'ones', 'he'
        (nn's He-normal), a Keras name ('glorot_uniform'...), an initializer object or a
        function ``f(shape, rng)`` (see :mod:`dpnn.layers.initializers`)."""
        rng = self.rng if self.rng is not None else np.random.default_rng()
        if callable(init) or (isinstance(init, str) and init not in ("he", "zeros", "ones")):
            value = np.asarray(initializers.get(init)(tuple(shape), rng, fan_in, fan_out), dtype=np.float32)
            if value.shape != tuple(shape):
                raise ValueError(f"initializer {init!r} returned shape {value.shape} for {name}, not {tuple(shape)}")
        elif init == "he":
            std = np.sqrt(2.0 / (fan_in or int(np.prod(shape[:-1]))))
            value = (rng.standard_normal(shape) * std).astype(np.float32)
        elif init == "zeros":
            value = np.zeros(shape, np.float32)
        elif init == "ones":
            value = np.ones(shape, np.float32)
        else:
            raise ValueError(f"unknown initialiser {init!r}")
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def add_state(self, name: str, value: np.ndarray) -> np.ndarray:
        self.state[name] = np.asarray(value, dtype=np.float32)
        return self.state[name]

    def build(self, input_shape: tuple) -> None:
        """Create parameters for ``input_shape`` (batch dim first) and set ``output_shape``."""
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(input_shape)
        self.built = True

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    def to_config(self) -> dict:
        entry = {"class": type(self).__name__, "config": self.get_config()}
        if not self.trainable:
            entry["trainable"] = False
        return entry

    def portable(self) -> "Layer":
        """A copy for another process: every attribute the user set, but no parameter, gradient
        or state arrays (the receiver binds them to shared memory) and, for dpnn's own layers,
        no per-batch buffers (their ``_``-prefixed arrays)."""
        clone = copy.copy(self)
        clone.params, clone.grads, clone.state = {}, {}, {}
        if type(self).__module__.startswith("dpnn."):
            for name, value in vars(self).items():
                if name.startswith("_") and isinstance(value, np.ndarray):
                    setattr(clone, name, None)
        return clone

    def frozen_params(self) -> set[str]:
        """Names of the params no optimizer step may change: all of them when ``trainable`` is
        False (a container adds its frozen children's)."""
        return set() if self.trainable else set(self.params)

    def param_count(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    @property
    def output_activation(self) -> str | None:
        """The activation this layer ends in ('softmax', 'relu'...), None for none or unknown."""
        return None

    # -- containers (dpnn.layers.residual.Residual) ----------------------------------------
    def named_sublayers(self) -> list[tuple[str, "Layer"]]:
        """The layers this one holds, each with its tag ('0', 'shortcut0', ...); [] for most."""
        return []

    def sublayers(self) -> list["Layer"]:
        return [layer for _, layer in self.named_sublayers()]

    def with_sublayers(self, layers: list["Layer"]) -> "Layer":
        """A shallow copy holding ``layers`` (in :meth:`sublayers` order) instead of its own."""
        assert not layers, f"{type(self).__name__} holds no layers"
        return copy.copy(self)

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({cfg})"


def walk_layers(layers) -> Iterator[Layer]:
    """Every layer of ``layers`` and, right after a container, the layers inside it (depth first:
    the order forward runs them, when the model's execution order is its own)."""
    for layer in layers:
        yield layer
        yield from walk_layers(layer.sublayers())


def summary_rows(label: str, layer: Layer, depth: int = 0) -> list[str]:
    """``Model.summary``'s row of ``layer`` and, indented below it, those of the layers it holds."""
    shape = "(None, " + ", ".join(map(str, layer.output_shape[1:])) + ")"
    name = "  " * depth + ("shortcut: " if label.startswith("shortcut") else "") + type(layer).__name__
    rows = [f"{label if depth == 0 else '':>3}  {name:<28}{shape:<22}{layer.param_count():>10,}"]
    for tag, child in layer.named_sublayers():
        rows += summary_rows(tag, child, depth + 1)
    return rows


def check_rank(layer: Layer, input_shape: tuple, ranks: tuple[int, ...], hint: str) -> None:
    """Raise a ValueError naming the layer when the input rank is not one of ``ranks``."""
    if len(input_shape) not in ranks:
        raise ValueError(f"{type(layer).__name__} expects a {' or '.join(f'{r}-D' for r in ranks)} "
                         f"input (batch first) but got shape {tuple(input_shape)}; {hint}")
