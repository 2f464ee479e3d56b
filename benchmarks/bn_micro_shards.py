"""What deterministic mode does to a BatchNorm model: statistics per micro-shard, measured.

    python -m benchmarks.bn_micro_shards                      # Fashion-MNIST, 3 epochs
    python -m benchmarks.bn_micro_shards --train 12000 --epochs 3 --json docs/benchmarks/bn_micro_shards.json

In deterministic mode each micro-shard is a forward pass of its own, so BatchNorm normalises
over batch / micro_shards samples (like PyTorch DDP's per-GPU statistics), whatever the worker
count. This trains the same small BatchNorm CNN (Conv-BN-ReLU-Pool x 2, Dense) from the same
seed on the same Fashion-MNIST subset in one process: the default mode (statistics over the
whole batch) and deterministic mode with several micro-shard counts, and reports the test
accuracy and loss after each epoch. Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist``; without it the synthetic data set stands in (and says so).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks.args import positive_int, positive_ints
from dpnn import Activation, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, Model
from dpnn.datasets import load_dataset


def bn_cnn(seed: int) -> Model:
    layers = [Conv2D(16, 3, padding="same"), BatchNorm2D(), Activation("relu"), MaxPool2D(2),
              Conv2D(32, 3, padding="same"), BatchNorm2D(), Activation("relu"), MaxPool2D(2),
              Flatten(), Dense(10)]
    return Model(layers, seed=seed).compile("categorical_crossentropy", "adam", lr=1e-3)


def data(train: int, test: int):
    try:
        tr, te, _ = load_dataset("fashion-mnist")
        name = "fashion-mnist"
    except Exception:                  # not installed: still runs, and says which data it used
        tr, te, _ = load_dataset("synthetic")
        name = "synthetic"
    return name, (tr.X[:train], tr.y[:train]), (te.X[:test], te.y[:test])


def run(config: dict, train, test, epochs: int, batch: int, seed: int) -> dict:
    model = bn_cnn(seed)
    t0 = time.perf_counter()
    accs, losses = [], []
    for epoch in range(epochs):
        model.fit(*train, epochs=epoch + 1, initial_epoch=epoch, batch_size=batch, seed=seed, verbose=0,
                  threads_per_worker=1, **config)
        loss, acc = model.evaluate(*test)
        accs.append(acc)
        losses.append(loss)
    return {"test_acc": accs, "test_loss": losses, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bn_micro_shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=positive_int, default=12000, help="training samples (default 12000)")
    p.add_argument("--test", type=positive_int, default=5000, help="test samples (default 5000)")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size (default 64)")
    p.add_argument("--micro-shards", type=positive_ints, default=[2, 8], help="deterministic counts (default 2,8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    name, train, test = data(a.train, a.test)
    configs = {"default (whole batch)": {}}
    configs.update({f"deterministic, {m} micro-shards ({a.batch_size // m} samples)":
                    {"deterministic": True, "micro_shards": m} for m in a.micro_shards})
    load = os.getloadavg()
    rows = {}
    print(f"{name}: {len(train[0])} training, {len(test[0])} test samples, batch {a.batch_size}, seed {a.seed}")
    for label, config in configs.items():
        rows[label] = run(config, train, test, a.epochs, a.batch_size, a.seed)
        r = rows[label]
        print(f"  {label:<44} test accuracy by epoch " + " ".join(f"{x:.4f}" for x in r["test_acc"])
              + f"; test loss {r['test_loss'][-1]:.4f}", flush=True)
    print(f"load average (1, 5, 15 min) {' '.join(f'{x:.2f}' for x in load)}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"data": name, "args": vars(a), "rows": rows, "load": load}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
