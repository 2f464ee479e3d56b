"""A user's script for tests/test_determinism.py: deterministic training of a model with a
user-defined layer inside a Residual block, BatchNorm and Dropout, on any workers x ranks.

    python determinism_script.py train 1 2 3          # from scratch on 1, 2, 3 workers
    python determinism_script.py first DIR            # 2 epochs on 2 workers, state saved in DIR
    python determinism_script.py resume DIR 16        # epoch 3 from DIR on 16 workers
    mpiexec -n 4 python determinism_script.py mpi 1 3 # over MPI ranks (rank 0 prints)

Each run prints one JSON line: config, SHA-256 of the parameters and of the BatchNorm state,
the loss and validation loss per epoch.
"""
import hashlib
import json
import sys
import warnings

import numpy as np

from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, Model, Residual

MICRO_SHARDS = 16
BATCH = 32


class Gate(Layer):
    """A user's layer with a parameter: y = x * sigmoid(a) per channel (defined in the script)."""

    def build(self, input_shape):
        self.add_param("a", (input_shape[-1],), "zeros")
        super().build(input_shape)

    def forward(self, x, training=False):
        self._x, self._s = x, 1 / (1 + np.exp(-self.params["a"]))
        return x * self._s

    def backward(self, grad):
        axes = tuple(range(grad.ndim - 1))
        self.grads["a"][...] = (grad * self._x).sum(axes) * self._s * (1 - self._s)
        return grad * self._s


def make():
    block = [Conv2D(4, (3, 3)), BatchNorm2D(), Gate(), Activation("relu"), Dropout(0.25), Conv2D(4, (3, 3))]
    layers = [Conv2D(4, (3, 3)), BatchNorm2D(), Activation("relu"), Residual(block, activation="relu"),
              MaxPool2D((2, 2)), Flatten(), Dense(16), Activation("relu"), Dropout(0.25), Dense(3)]
    return Model(layers, seed=1).compile(optimizer="adam", lr=1e-2, weight_decay=1e-4, clip_norm=1.0)


def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    return X[:96], y[:96], (X[96:], y[96:])


def train(model, epochs=2, **options):
    X, y, val = data()
    options = {"oversubscribe": True, **options} if options.get("workers", 1) != 1 else options
    return model.fit(X, y, epochs=epochs, batch_size=BATCH, seed=5, verbose=0, val_data=val, deterministic=True,
                     micro_shards=MICRO_SHARDS, **options)


def report(config, model, history):
    sha = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()   # noqa: E731
    print(json.dumps({"config": config, "params": sha(model.params), "state": sha(model.state),
                      "loss": history["loss"], "val_loss": history["val_loss"]}), flush=True)


def save(model, folder):
    np.savez(f"{folder}/model.npz", params=model.params, state=model.state,
             **{f"opt:{k}": v for k, v in model.optimizer.state_dict().items()})


def load(folder):
    model = make()
    model.build((1, 8, 8, 1))
    saved = np.load(f"{folder}/model.npz")
    model.params[...], model.state[...] = saved["params"], saved["state"]
    model.optimizer.load_state_dict({k[4:]: saved[k] for k in saved.files if k.startswith("opt:")})
    return model


def main(mode, *args):
    if mode == "train":
        for workers in args:
            model = make()
            report(f"w{workers}", model, train(model, workers=int(workers)))
    elif mode == "straight":
        model = make()
        report("straight", model, train(model, epochs=3, workers=2))
    elif mode == "first":
        model = make()
        train(model, workers=2)
        save(model, args[0])
    elif mode in ("resume", "resume-mpi"):
        model, extra = load(args[0]), {"backend": "mpi"} if mode == "resume-mpi" else {}
        history = train(model, epochs=3, initial_epoch=2, workers=int(args[1]), **extra)
        if model.params is not None and (mode == "resume" or _rank() == 0):
            report(f"{mode}-w{args[1]}", model, history)
    elif mode == "mpi":
        for workers in args:
            model = make()
            history = train(model, workers=int(workers), backend="mpi")
            if _rank() == 0:
                report(f"mpi-w{workers}", model, history)


def _rank():
    from dpnn.comm import get_communicator
    return get_communicator("mpi").rank


if __name__ == "__main__":
    warnings.simplefilter("ignore", RuntimeWarning)     # oversubscribed on purpose
    main(*sys.argv[1:])
