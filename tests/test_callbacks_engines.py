"""Callbacks run in the coordinator and see the same numbers on every engine (issue 26): one
callback set, batch hooks included, on 1 process, 3 workers and 2 MPI ranks, deterministic mode,
compared bitwise: every hook's logs, the history, the events, the CSV rows, the checkpoint
names and the final parameters. Files are written by rank 0 alone."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import MPIEXEC, finish, mpi_env, needs_mpi

CALLBACK_SET = textwrap.dedent('''
    import json, os
    import numpy as np
    from dpnn import Activation, Callback, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Model
    from dpnn.callbacks import (CSVLogger, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                                ReduceLROnPlateau)

    VARYING = {"time", "samples_per_s"}          # wall-clock figures: the only logs that may differ

    class Recorder(Callback):
        def on_train_begin(self, logs=None):
            self.log = []

        def on_epoch_begin(self, epoch, logs=None):
            self.log.append(["epoch_begin", epoch, logs["lr"]])

        def on_train_batch_begin(self, batch, logs=None):
            self.log.append(["batch_begin", batch, logs["size"]])

        def on_train_batch_end(self, batch, logs=None):
            self.log.append(["batch_end", batch, sorted(logs.items())])

        def on_test_end(self, logs=None):
            self.log.append(["test_end", sorted(logs.items())])

        def on_epoch_end(self, epoch, logs=None):
            self.log.append(["epoch_end", epoch, sorted((k, v) for k, v in logs.items() if k not in VARYING)])

        def on_train_end(self, logs=None):
            self.log.append(["train_end", sorted((k, v) for k, v in logs.items() if k not in VARYING)])

    class StopInBatch(Callback):                  # stops inside the 5th epoch, after its 2nd batch
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.t == 4 * 4 + 2:
                self.model.stop_training = True

    def run(out, **engine):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(90, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 3, 90)
        model = Model([Conv2D(4, (3, 3)), Activation("relu"), MaxPool2D((2, 2)), Flatten(), Dense(16),
                       Activation("relu"), Dropout(0.25), Dense(3)], seed=1).compile(optimizer="adam", lr=1e-2)
        os.makedirs(out, exist_ok=True)
        rec = Recorder()
        callbacks = [rec, EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
                     ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=0.05),
                     LearningRateScheduler(lambda epoch, lr: lr * 0.9), CSVLogger(os.path.join(out, "log.csv")),
                     ModelCheckpoint(os.path.join(out, "{epoch:02d}-{val_loss:.4f}.h5"), save_best_only=True),
                     StopInBatch()]
        history = model.fit(X, y, epochs=8, batch_size=24, seed=5, verbose=0, deterministic=True,
                            validation_data=(X[:20], y[:20]), callbacks=callbacks, **engine)
        return {"log": rec.log, "history": dict(history), "events": history.events,
                "params": model.params.tobytes().hex()}
''')

RUN_MPI = textwrap.dedent('''
    import json, os, sys
    from mpi4py import MPI
    import cbset

    if __name__ == "__main__":
        rank = MPI.COMM_WORLD.rank
        result = cbset.run(os.path.join(sys.argv[1], f"rank{rank}"), backend="mpi")
        with open(os.path.join(sys.argv[1], f"result-{rank}.json"), "w") as f:
            json.dump(result, f)
''')


def callback_set(tmp_path):
    (tmp_path / "cbset.py").write_text(CALLBACK_SET)
    sys.path.insert(0, str(tmp_path))
    try:
        import cbset
    finally:
        sys.path.pop(0)
    return cbset


def files(folder) -> dict:
    """The CSV rows (without wall-clock columns) and the checkpoint names a run wrote."""
    with open(os.path.join(folder, "log.csv")) as f:
        rows = [{k: v for k, v in row.items() if k not in ("time", "samples_per_s")} for row in csv.DictReader(f)]
    return {"csv": rows, "checkpoints": sorted(p for p in os.listdir(folder) if p.endswith(".h5"))}


def same(a: dict, b: dict) -> None:
    for key in ("log", "history", "events", "params"):
        assert json.dumps(a[key]) == json.dumps(b[key]), key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    cbset = callback_set(tmp)
    result = cbset.run(str(tmp / "out"), workers=1)
    return cbset, result, files(tmp / "out")


@pytest.mark.slow
def test_the_callback_set_does_what_it_should_in_one_process(one_process):
    _, result, written = one_process
    kinds = [entry[0] for entry in result["log"]]
    assert kinds.count("batch_end") == 4 * 4 + 2 and kinds.count("epoch_end") == 5      # stopped in epoch 5
    assert [e["event"] for e in result["events"]].count("reduce_lr") >= 1
    assert result["events"][-1]["event"] == "restored_best_weights"
    assert len(written["csv"]) == 5 and written["checkpoints"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*oversubscribed")      # 3 workers on a 2-core machine: on purpose
def test_three_workers_see_bitwise_the_same(tmp_path, one_process):
    cbset, expected, written = one_process
    result = cbset.run(str(tmp_path / "out"), workers=3)
    same(result, expected)
    assert files(tmp_path / "out") == written


@needs_mpi
def test_two_mpi_ranks_see_bitwise_the_same_and_rank_0_alone_writes(tmp_path, one_process):
    _, expected, written = one_process
    (tmp_path / "cbset.py").write_text(CALLBACK_SET)
    (tmp_path / "run.py").write_text(RUN_MPI)
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "run.py", str(tmp_path)], cwd=tmp_path,
                            env=mpi_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    code, out, err = finish(proc, timeout=120)
    assert code == 0, err
    for rank in (0, 1):
        same(json.loads((tmp_path / f"result-{rank}.json").read_text()), expected)
    assert files(tmp_path / "rank0") == written
    assert os.listdir(tmp_path / "rank1") == []
