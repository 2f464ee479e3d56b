"""A user's training script: their own layers, loss and optimizer, defined right here.

Run as ``python user_model_script.py CONFIG...`` (CONFIG: local, 1, 2, 3, 8, sharded,
nondet-1, nondet-2, mpi); prints one JSON line per configuration with a SHA-256 of the
trained parameters and state, and the loss history. Classes defined in ``__main__`` travel
to the workers by value (cloudpickle), exactly as in a user's script. tests/test_any_model.py
runs it.
"""
import hashlib
import json
import os
import sys

import numpy as np

import dpnn
from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, Model


class Scale(Layer):   # nn's README, section 10 example, verbatim (only the import differs)
    def __init__(self, factor):
        super().__init__(); self.factor=factor  # noqa: E702 -- nn's text, kept verbatim
    def build(self, input_shape):
        self.output_shape = input_shape; self.built=True  # noqa: E702
    def forward(self, x, training=False):
        self.last_x = x; return x * self.factor  # noqa: E702
    def backward(self, grad):
        return grad * self.factor
    def to_config(self):
        return {'class':'Scale','config':{'factor':self.factor}}


class Shift(Layer):
    """A default the config does not mention, and state set after construction."""
    def __init__(self, offset=2.0):
        super().__init__()
        self.offset = offset
        self.calls = 0

    def forward(self, x, training=False):
        self.calls += 1
        return x + np.float32(self.offset)

    def backward(self, grad):
        return grad


class ChannelAffine(Layer):
    """A layer with parameters: y = x * gamma + beta per channel."""
    def build(self, input_shape):
        C = input_shape[-1]
        self.add_param("gamma", (C,), "ones")
        self.add_param("beta", (C,), "zeros")
        self.input_shape, self.output_shape, self.built = input_shape, input_shape, True

    def forward(self, x, training=False):
        self.x = x
        return x * self.params["gamma"] + self.params["beta"]

    def backward(self, grad):
        axes = tuple(range(grad.ndim - 1))
        self.grads["gamma"][...] = (grad * self.x).sum(axes)
        self.grads["beta"][...] = grad.sum(axes)
        return grad * self.params["gamma"]


class SoftmaxLoss:
    """A loss as nn's README and ours describe it: forward(y_pred, y_true) returns the mean,
    backward() its gradient; no per_sample, no denominator."""
    def forward(self, y_pred, y_true):
        z = y_pred - y_pred.max(axis=1, keepdims=True)
        self.p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        self.y = np.eye(y_pred.shape[1], dtype=y_pred.dtype)[y_true]
        return float(-(self.y * np.log(self.p + 1e-12)).sum(axis=1).mean())

    def backward(self):
        return (self.p - self.y) / len(self.p)


class SignSGD(dpnn.Optimizer):
    """An optimizer that overrides step()."""
    def step(self, params_and_grads):
        self.t += 1
        for p, g in params_and_grads:
            p -= np.float32(self.lr) * np.clip(g * 100, -1, 1)


def make_model() -> Model:
    model = Model([Conv2D(4, (3, 3), padding="same"), BatchNorm2D(), Scale(0.5),
                   Activation("relu"), MaxPool2D((2, 2)), Shift(0.0), ChannelAffine(),
                   Flatten(), Dropout(0.25), Dense(3)], seed=7)
    return model.compile(loss=SoftmaxLoss(), optimizer=SignSGD(lr=0.01), clip_norm=None)


def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 8, 8, 1)).astype(np.float32)
    y = (X[:, :4].mean(axis=(1, 2, 3)) > 0).astype(np.int64) + (X[:, 4:].mean(axis=(1, 2, 3)) > 0.2)
    return X, y


def train(config: str) -> dict:
    X, y = data()
    model = make_model()
    options = dict(epochs=2, batch_size=25, seed=3, verbose=0, deterministic=True, micro_shards=8)
    if config == "local":
        pass
    elif config == "sharded":
        options.update(workers=2, shard_optimizer=True)
    elif config.startswith("nondet-"):
        options.update(workers=int(config.split("-")[1]), deterministic=False, micro_shards=None)
    elif config == "mpi":
        options.update(backend="mpi")
    else:
        options.update(workers=int(config))
    history = model.fit(X, y, **options)
    digest = hashlib.sha256(model.params.tobytes() + model.state.tobytes()).hexdigest()
    return {"config": config, "sha": digest, "loss": history["loss"],
            "params": model.params[:8].tolist(), "shift_offset": model.layers[5].offset}


if __name__ == "__main__":
    for config in sys.argv[1:]:
        result = train(config)
        if os.environ.get("PMI_RANK", "0") == "0":          # under mpiexec, rank 0 reports
            print(json.dumps(result), flush=True)
