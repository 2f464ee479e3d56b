"""Residual: a layer holding layers, output = activation(main(x) + shortcut(x)).

A container owns no arrays of its own: its ``params``/``grads``/``state`` are a live view
(:class:`ChildArrays`) of its children's under prefixed names (``'1_Conv2D_W'``,
``'shortcut0_BatchNorm2D_running_mean'``). Everything that walks a model's arrays by name
(the flat buffer's layout and binding, save/load, get_weights, gradcheck) therefore sees
inside it without knowing it is a container, and ``Model.bind`` makes the children's
arrays views into the model's flat vectors, in the worker processes too.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, MutableMapping

import numpy as np

from .base import Layer, layer_from_config, register_layer, runs_own_forward
from .simple import Activation, check_activation

NESTED_SALT = 1 << 32      # Dropout salts inside a container: far from the top-level indices


class ChildArrays(MutableMapping):
    """One of a container's array dicts ('params', 'grads' or 'state'): its children's, each
    under ``'<tag>_<Class>_<name>'``; reading and assigning go to the child's own dict."""

    def __init__(self, owner: Layer, attr: str) -> None:
        self.owner, self.attr = owner, attr

    def _prefixes(self) -> list[tuple[str, Layer]]:
        return [(f"{tag}_{type(child).__name__}_", child) for tag, child in self.owner.named_sublayers()]

    def _find(self, key: str) -> tuple[dict, str]:
        for prefix, child in self._prefixes():
            if key.startswith(prefix):
                return getattr(child, self.attr), key[len(prefix):]
        raise KeyError(key)

    def __getitem__(self, key: str) -> np.ndarray:
        arrays, name = self._find(key)
        return arrays[name]

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        arrays, name = self._find(key)
        arrays[name] = value

    def __delitem__(self, key: str) -> None:
        arrays, name = self._find(key)
        del arrays[name]

    def __iter__(self) -> Iterator[str]:
        for prefix, child in self._prefixes():
            for name in getattr(child, self.attr):
                yield prefix + name

    def __len__(self) -> int:
        return sum(len(getattr(child, self.attr)) for child in self.owner.sublayers())


class _Children:
    """Descriptor: a container's ``params``/``grads``/``state`` are :class:`ChildArrays`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, obj, objtype=None):
        return self if obj is None else ChildArrays(obj, self.attr)

    def __set__(self, obj, value) -> None:
        if len(value):         # Layer.__init__, portable copies and probes reset them to {}
            raise ValueError(f"a {type(obj).__name__} holds no arrays of its own; set its "
                             f"children's {self.attr} instead")


def _as_layers(entries, what: str) -> list[Layer]:
    """Layers from Layer objects or their saved configs ({"class", "config"})."""
    if not isinstance(entries, (list, tuple)):
        raise TypeError(f"Residual {what} must be a list of layers, got {type(entries).__name__}")
    layers = [layer_from_config(e) if isinstance(e, dict) else e for e in entries]
    for layer in layers:
        if not isinstance(layer, Layer):
            raise TypeError(f"Residual {what} must hold dpnn Layers, got {type(layer).__name__}")
    return layers


@register_layer
class Residual(Layer):
    """``activation(main(x) + shortcut(x))``; the shortcut is the identity when None.

    ``layers`` is the main path; ``shortcut`` a projection for a change of stride or
    channels, e.g. ``[Conv2D(64, 1, stride=2, use_bias=False), BatchNorm2D()]``;
    ``activation`` one of Activation's functions (or None) applied after the sum.
    Forward runs the main path, then the shortcut; backward the reverse.
    """

    params = _Children()
    grads = _Children()
    state = _Children()

    def __init__(self, layers: list[Layer], shortcut: list[Layer] | None = None,
                 activation: str | None = None) -> None:
        super().__init__()
        self.layers = _as_layers(layers, "layers")
        if not self.layers:
            raise ValueError("Residual needs at least one layer on its main path")
        self.shortcut = _as_layers(shortcut, "shortcut") or None if shortcut is not None else None
        self.activation = check_activation(activation, none_ok=True)
        self._act = Activation(activation) if activation else None
        self.salt = 0                      # Model.build sets it (the layer's index)
        self._sample_keys: np.ndarray | None = None

    def frozen_params(self) -> set[str]:
        if not self.trainable:
            return set(self.params)
        return {prefix + name for prefix, child in self.params._prefixes() for name in child.frozen_params()}

    def named_sublayers(self) -> list[tuple[str, Layer]]:
        return [(str(j), layer) for j, layer in enumerate(self.layers)] + \
               [(f"shortcut{j}", layer) for j, layer in enumerate(self.shortcut or [])]

    def with_sublayers(self, layers: list[Layer]) -> "Residual":
        n = len(self.layers)
        clone = copy.copy(self)
        clone.layers, clone.shortcut = list(layers[:n]), list(layers[n:]) or None
        clone._act = Activation(self.activation) if self.activation else None
        clone.fused_with_loss = self.fused_with_loss
        return clone

    @property
    def output_activation(self) -> str | None:
        return self.activation

    @property
    def owns_output(self) -> bool:
        return self._act is None and runs_own_forward(self, Residual)

    @property
    def fused_with_loss(self) -> bool:
        """A softmax after the sum, read by cross-entropy as probabilities (``losses.fit_loss_to_output``)."""
        return self._act is not None and self._act.fused_with_loss

    @fused_with_loss.setter
    def fused_with_loss(self, value: bool) -> None:
        if self._act is not None:
            self._act.fused_with_loss = bool(value)

    def portable(self) -> "Residual":
        clone = self.with_sublayers([layer.portable() for layer in self.sublayers()])
        clone._sample_keys = None
        return clone

    @property
    def batch_coupled(self) -> bool:
        return any(layer.batch_coupled for layer in self.sublayers())

    @property
    def sample_keys(self) -> np.ndarray | None:
        return self._sample_keys

    @sample_keys.setter
    def sample_keys(self, keys: np.ndarray | None) -> None:
        """Per-sample Dropout keys: the model sets them on the block, the block on its children."""
        self._sample_keys = keys
        for layer in self.sublayers():
            if hasattr(layer, "sample_keys"):
                layer.sample_keys = keys

    def build(self, input_shape: tuple) -> None:
        main = self._build_path(self.layers, input_shape, 0)
        skip = self._build_path(self.shortcut or [], input_shape, len(self.layers))
        if tuple(main[1:]) != tuple(skip[1:]):
            kind = "shortcut" if self.shortcut else "input (identity shortcut)"
            raise ValueError(f"Residual: the main path gives {tuple(main[1:])} but the {kind} gives "
                             f"{tuple(skip[1:])}; add a projection shortcut such as "
                             f"[Conv2D({main[-1]}, 1, stride=S), BatchNorm2D()] to match them")
        if self._act is not None:
            self._act.build(main)
        self.input_shape, self.output_shape = tuple(input_shape), tuple(main)
        self.built = True

    def _build_path(self, layers: list[Layer], shape: tuple, first: int) -> tuple:
        shape = (None,) + tuple(shape[1:])
        for j, layer in enumerate(layers):
            layer.rng = self.rng
            layer.salt = (NESTED_SALT + self.salt * 1024 + first + j) % 2**64
            layer.build(shape)
            if layer.output_shape is None:
                raise ValueError(f"{type(layer).__name__}.build inside Residual did not set output_shape")
            shape = (None,) + tuple(layer.output_shape[1:])
        return shape

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        for path in (self.layers, self.shortcut or []):
            if path:                    # the block's input gradient needs the paths' input gradients
                path[0].needs_input_grad = self.needs_input_grad
        out = self._run_path(self.layers, x, training)
        skip = self._run_path(self.shortcut or [], x, training)
        if self.layers[-1].owns_output:  # the sum may go into the main path's output
            z = np.add(out, skip, out=out)
        else:                            # a new array: the path's last layer keeps its output
            z = out + skip
        if self._act is None:
            return z
        self._act.overwrite_input = True                                 # z is the block's own
        return self._act.forward(z, training)

    @staticmethod
    def _run_path(layers: list[Layer], x: np.ndarray, training: bool) -> np.ndarray:
        owned = False                   # x is the block's input, read by both paths
        for layer in layers:
            layer.overwrite_input = owned
            x = layer.forward(x, training)
            owned = layer.owns_output
        return x

    def backward(self, grad: np.ndarray) -> np.ndarray | None:
        if self._act is not None:
            grad = self._act.backward(grad)
        dskip = grad
        for layer in reversed(self.shortcut or []):
            dskip = layer.backward(dskip)
        dx = grad
        for layer in reversed(self.layers):
            dx = layer.backward(dx)
        if not self.needs_input_grad:
            return None
        return dx + dskip

    def get_config(self) -> dict:
        return {"layers": [layer.to_config() for layer in self.layers],
                "shortcut": None if self.shortcut is None else [layer.to_config() for layer in self.shortcut],
                "activation": self.activation}

    def __repr__(self) -> str:
        inner = ", ".join(type(layer).__name__ for layer in self.layers)
        skip = "identity" if self.shortcut is None else "[" + ", ".join(
            type(layer).__name__ for layer in self.shortcut) + "]"
        return f"Residual([{inner}], shortcut={skip}, activation={self.activation!r})"
