"""What fit says and records (issue 21, points 3, 4 and 6): verbose 0|1|2, lines without a
terminal, one speed figure, step times on request, early stopping and restored weights
announced and recorded, History, Keras-style logs, the reporter as a replaceable callback."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from dpnn import Callback, EarlyStopping
from dpnn.callbacks import History
from dpnn.reporting import EpochLogger, ProgressBar

from conftest import blobs, tiny


def fit_quietly(model, **kw):
    X, y = blobs(40)
    return model.fit(X, y, epochs=kw.pop("epochs", 2), batch_size=10, seed=0, **kw)


@pytest.mark.parametrize("verbose", [1, 2])
def test_without_a_terminal_each_epoch_is_one_line(capsys, verbose):
    fit_quietly(tiny(), verbose=verbose)
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "\r" not in out + err and "sample/s" not in out + err
    assert "lr 0.01" in lines[0] and lines[0].count("samples/s") == 1 and "step:" not in lines[0]


def test_verbose_0_prints_nothing_and_bad_verbose_is_refused(capsys):
    fit_quietly(tiny(), verbose=0)
    assert capsys.readouterr() == ("", "")
    with pytest.raises(ValueError, match="verbose must be 0, 1 or 2"):
        fit_quietly(tiny(), verbose=3)


def test_step_times_only_when_asked(capsys):
    fit_quietly(tiny(), verbose=2, show_step_times=True)
    assert "step: compute" in capsys.readouterr().out


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_on_a_terminal_shows_one_speed(capsys):
    term = FakeTerminal()
    fit_quietly(tiny(), verbose=0, callbacks=[ProgressBar(stream=term, mininterval=0)])
    bar = term.getvalue()
    assert "epoch 1/2" in bar and "samples/s" in bar and "sample/s" not in bar.replace("samples/s", "")
    assert "step=" not in bar and "comp" not in bar
    assert capsys.readouterr().out.count("epoch 2/2: loss") == 1     # the lines still go to stdout


def test_a_users_reporter_replaces_fits():
    lines = []

    class Mine(EpochLogger):
        def on_train_begin(self, logs):
            self.epochs = logs["epochs"]

        def on_epoch_end(self, epoch, logs):
            lines.append((epoch, round(logs["lr"], 6)))
    fit_quietly(tiny(), verbose=1, callbacks=[Mine()])
    assert lines == [(0, 0.01), (1, 0.01)]


def test_early_stopping_and_restoring_are_said_and_recorded(capsys):
    model = tiny()
    history = fit_quietly(model, epochs=6, verbose=2,
                          callbacks=[EarlyStopping(patience=1, monitor="loss", min_delta=10.0,
                                                   restore_best_weights=True)])
    out = capsys.readouterr().out
    assert "Epoch 2: early stopping" in out
    assert "Restoring model weights from the end of the best epoch: 1." in out
    assert [e["event"] for e in history.events] == ["early_stopping", "restored_best_weights"]
    assert history.events[0]["epoch"] == 2 and history.events[1]["epoch"] == 1
    assert len(history["loss"]) == 2


def test_plateau_cuts_are_announced_and_shown_in_the_lines(capsys):
    model = tiny()
    X, y = blobs(40)
    history = model.fit(X, y, epochs=4, batch_size=10, seed=0, verbose=2, lr_schedule="plateau",
                        lr_patience=1, lr_factor=0.5, callbacks=[EarlyStopping(monitor=None, patience=99)])
    out = capsys.readouterr().out
    cuts = [e for e in history.events if e["event"] == "reduce_lr"]
    assert cuts, "the schedule never fired; the test proves nothing"
    for cut in cuts:
        assert cut["message"] in out and "ReduceLROnPlateau reducing learning rate" in cut["message"]
        if cut["epoch"] < len(history["lr"]):              # the next epoch runs at the new rate
            assert history["lr"][cut["epoch"]] == pytest.approx(history["lr"][cut["epoch"] - 1] / 2)


def test_history_is_keras_shaped_and_still_a_dict():
    history = fit_quietly(tiny(), verbose=0)
    assert isinstance(history, History) and isinstance(history, dict)
    assert history.history["loss"] is history["loss"] and history["accuracy"] is history["acc"]
    assert history.epoch == [0, 1]
    json.dumps(history)                                  # still plain data
    earlier = {"loss": [9.0], "acc": [0.1], "lr": [0.01]}
    X, y = blobs(40)
    more = tiny().fit(X, y, epochs=2, initial_epoch=1, history=earlier, verbose=0, seed=0)
    assert len(more["loss"]) == 2 and earlier["loss"] is more["loss"]   # the caller's dict follows


def test_callbacks_get_keras_style_logs():
    seen = {}

    class Spy(Callback):
        def on_train_begin(self, logs):
            seen["train"] = dict(logs)

        def on_epoch_begin(self, epoch, logs):
            seen["epoch_begin"] = dict(logs)

        def on_batch_end(self, step, logs):
            seen["batch"] = dict(logs)

        def on_epoch_end(self, epoch, logs):
            seen["epoch_end"] = dict(logs)
    X, y = blobs(40)
    tiny().fit(X, y, epochs=1, batch_size=10, validation_split=0.25, seed=0, verbose=0, callbacks=[Spy()])
    assert {"samples", "epochs", "steps", "workers", "rank"} <= set(seen["train"])
    assert seen["epoch_begin"]["lr"] == pytest.approx(0.01) and seen["epoch_begin"]["steps"] == 3
    assert {"loss", "acc", "size", "batch", "lr"} <= set(seen["batch"])
    assert {"loss", "acc", "val_loss", "val_acc", "lr", "samples_per_s"} <= set(seen["epoch_end"])


def test_model_seed_alone_makes_fit_reproducible():
    X, y = blobs(40)
    runs = []
    for _ in range(2):
        model = tiny(seed=5)
        model.fit(X, y, epochs=2, batch_size=8, verbose=0)
        runs.append(model.params.copy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_launch_train_history_json_and_summary_say_early_stopping(tmp_path, monkeypatch, capsys):
    from dpnn.cli import train as train_cli
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", "synthetic", "--limit", "300", "--epochs", "4", "--model", "mlp", "--verbose", "2",
            "--early-stopping", "--patience", "1", "--min-delta", "1.0", "--val-split", "0.2",
            "--history", "h.json", "--checkpoint-dir", "ck", "--out", "m.hdf5"]
    assert train_cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "Epoch 2: early stopping" in out and "best epoch: 1." in out
    assert "early stopping  after epoch 2; weights of epoch 1 restored" in out
    assert out.count("epoch 1/4: loss") == 1 and "lr " in out
    report = json.loads((tmp_path / "h.json").read_text())
    assert report["early_stopping"] == {"stopped_epoch": 2, "restored_epoch": 1}
    assert [e["event"] for e in report["events"]] == ["early_stopping", "restored_best_weights"]


def test_the_plot_marks_the_stopping_epoch(tmp_path):
    pytest.importorskip("matplotlib")
    from dpnn.cli.plot import event_marks, plot_history
    events = [{"epoch": 3, "event": "early_stopping", "message": ""},
              {"epoch": 2, "event": "restored_best_weights", "message": ""}]
    assert [(e, label) for e, label, _ in event_marks(events)] == [(3, "early stopping"), (2, "weights restored")]
    plot_history({"loss": [1.0, 0.8, 0.9], "acc": [0.5, 0.6, 0.55]}, str(tmp_path / "c.png"), "t", events)
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
