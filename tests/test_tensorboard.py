"""The TensorBoard callback and launch.train --tensorboard: event files read back."""
from __future__ import annotations

import glob
import os
import struct

import pytest

from dpnn import TensorBoard

from conftest import blobs, tiny

pytest.importorskip("tensorboardX")


def read_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every event file under ``directory`` (TFRecord framing:
    length, its CRC, the Event proto, its CRC), parsed with tensorboardX's own protobufs."""
    from tensorboardX.proto.event_pb2 import Event
    out: dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_fit_writes_epoch_and_step_curves(tmp_path):
    X, y = blobs(40)
    model = tiny()
    history = model.fit(X, y, epochs=2, batch_size=10, validation_split=0.25, seed=0, verbose=0,
                        callbacks=[TensorBoard(str(tmp_path / "tb"), update_freq=1)])
    train, val = read_scalars(str(tmp_path / "tb" / "train")), read_scalars(str(tmp_path / "tb" / "validation"))
    assert [s for s, _ in train["epoch_loss"]] == [1, 2]
    assert [v for _, v in train["epoch_loss"]] == pytest.approx(history["loss"], rel=1e-6)
    assert [v for _, v in train["epoch_accuracy"]] == pytest.approx(history["acc"], rel=1e-6)
    assert [v for _, v in train["epoch_learning_rate"]] == pytest.approx(history["lr"])
    assert all(v > 0 for _, v in train["epoch_samples_per_s"])
    assert [v for _, v in val["epoch_loss"]] == pytest.approx(history["val_loss"], rel=1e-6)
    assert [v for _, v in val["epoch_accuracy"]] == pytest.approx(history["val_acc"], rel=1e-6)
    assert [s for s, _ in train["batch_loss"]] == [1, 2, 3, 4, 5, 6]      # 30 samples, batch 10, 2 epochs
    assert {"batch_accuracy", "batch_learning_rate", "batch_samples_per_s"} <= set(train)


def test_update_freq_is_checked():
    with pytest.raises(ValueError, match="update_freq"):
        TensorBoard("x", update_freq=0)


def test_launch_train_tensorboard_flag(tmp_path, monkeypatch, capsys):
    from dpnn.cli import train as train_cli
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", "synthetic", "--limit", "200", "--epochs", "1", "--model", "lenet5",
            "--batch-size", "16", "--tensorboard", "tb", "--verbose", "0", "--out", "m.hdf5", "--checkpoint-dir", "ck"]
    assert train_cli.main(argv) == 0, capsys.readouterr().err
    scalars = read_scalars(str(tmp_path / "tb" / "train"))
    assert len(scalars["epoch_loss"]) == 1 and len(scalars["batch_loss"]) >= 1


def test_a_write_error_is_one_output_error_not_a_hang(tmp_path, monkeypatch):
    """A full disk under the log folder: tensorboardX's writer thread died on it, its queue filled
    and training blocked forever (SIGTERM did not end it). Events are now written in the training
    thread: the error is one OutputError naming the folder, and fit returns."""
    import errno
    import threading

    from tensorboardX import record_writer

    from dpnn.errors import OutputError
    real = record_writer.RecordWriter.write
    writes = []

    def fails_from_the_third(self, data):
        writes.append(1)
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(record_writer.RecordWriter, "write", fails_from_the_third)
    X, y = blobs(40)
    outcome = []

    def train():
        try:
            tiny().fit(X, y, epochs=3, batch_size=2, seed=0, verbose=0,
                       callbacks=[TensorBoard(str(tmp_path / "tb"), update_freq=1)])
        except Exception as e:
            outcome.append(e)
    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "fit blocked on the TensorBoard writer"
    (error,) = outcome
    assert isinstance(error, OutputError) and error.what == "--tensorboard"
    assert str(error) == f"cannot write TensorBoard events in {tmp_path / 'tb' / 'train'}: No space left on device"


def test_two_runs_in_one_folder_in_one_second_keep_their_own_event_files(tmp_path):
    X, y = blobs(40)
    for seed in (0, 1):
        tiny(seed).fit(X, y, epochs=1, batch_size=10, seed=seed, verbose=0,
                       callbacks=[TensorBoard(str(tmp_path / "tb"))])
    assert len(glob.glob(str(tmp_path / "tb" / "train" / "events.out.tfevents.*"))) == 2
    assert len(read_scalars(str(tmp_path / "tb" / "train"))["epoch_loss"]) == 2
