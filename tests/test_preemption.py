"""Preemption: SIGINT/SIGTERM at any step of ``launch.train`` leaves a checkpoint at that step,
and ``--resume`` ends with bitwise the weights of an uninterrupted run (``--deterministic``).

The signal is sent at an exact step from inside the run: a helper script adds a callback
whose ``on_batch_end`` (or ``on_epoch_end``, or the checkpoint writer itself) signals its
own process, so no test depends on timing.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dpnn.cli.train as train_cli
from dpnn import Model
from dpnn.cli.checkpoint import checkpoint_name, list_checkpoints
from dpnn.io import read_arrays

from conftest import TINY_CNN, subprocess_env

pytestmark = pytest.mark.slow
HAVE_ENGINE = train_cli.engine_available()
EPOCHS, STEPS = 3, 6                          # 96 samples / batch 16
SETTINGS = {
    "adam": [],
    "sgd-plateau-earlystop": ["--optimizer", "sgd", "--lr-schedule", "plateau", "--early-stopping",
                              "--patience", "5", "--val-split", "0.25", "--clip-norm", "1.0",
                              "--weight-decay", "1e-4"],                 # 72 samples: 5 steps
}

# Runs launch.train with a callback that signals this process at (epoch, step); see kill_at().
HELPER = textwrap.dedent('''
    import json, os, signal, sys
    import dpnn.cli.checkpoint
    import dpnn.cli.train as cli
    from dpnn import Callback

    def main():
        plan = json.loads(sys.argv[1])
        sig = getattr(signal, plan["signal"])

        def kill():
            for _ in range(plan.get("times", 1)):
                os.kill(os.getpid(), sig)

        class Kill(Callback):
            def on_batch_end(self, step, logs):
                p = self.session.progress
                if plan["when"] == "step" and [p.epoch, p.step] == plan["at"]:
                    kill()

        if plan["when"] == "saving":                  # while the checkpoint after epoch `at` is written
            save_model = dpnn.cli.checkpoint.save_model

            def saving(model, path, **kwargs):
                if os.path.basename(path) == "epoch-%04d.hdf5" % plan["at"]:
                    kill()
                return save_model(model, path, **kwargs)
            dpnn.cli.checkpoint.save_model = saving

        make_callbacks = cli.make_callbacks

        def with_kill(run, rank):
            log, saver, callbacks = make_callbacks(run, rank)
            return log, saver, [Kill()] + callbacks
        cli.make_callbacks = with_kill
        return cli.main(sys.argv[2:])


    if __name__ == "__main__":       # the engine's workers import this file
        sys.exit(main())
''')


def common(tmp_path, settings):
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY_CNN))
    return ["--dataset", "synthetic", "--limit", "96", "--model", str(arch), "--batch-size", "16",
            "--deterministic", "--quiet", "--seed", "3", "--checkpoint-dir", "checkpoints", *SETTINGS[settings]]


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "launch.train", *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def kill_at(plan: dict, *args, cwd):
    helper = cwd / "kill_at.py"
    helper.write_text(HELPER)
    return subprocess.run([sys.executable, str(helper), json.dumps(plan), *map(str, args)], cwd=cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def same_weights(a, b) -> bool:
    wa, _ = read_arrays(str(a))
    wb, _ = read_arrays(str(b))
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Final weights of the uninterrupted run, per settings (computed once)."""
    done = {}

    def get(settings):
        if settings not in done:
            d = tmp_path_factory.mktemp("straight")
            r = cli(*common(d, settings), "--epochs", EPOCHS, "--workers", 1, "--checkpoint-dir", "none",
                    "--out", "straight.hdf5", cwd=d)
            assert r.returncode == 0, r.stderr
            done[settings] = d / "straight.hdf5"
        return done[settings]
    return get


def case(plan, expected, status, settings="adam", extra=(), workers=1, id=None):
    marks = pytest.mark.skipif(workers > 1 and not HAVE_ENGINE, reason="dpnn.workers is not available")
    return pytest.param(plan, settings, list(extra), workers, expected, status, id=id, marks=marks)


SIGTERM, SIGINT = {"signal": "SIGTERM", "when": "step"}, {"signal": "SIGINT", "when": "step"}
CASES = [  # (plan, checkpoint expected after the stop, exit status, ...)
    case({**SIGTERM, "at": [0, 2]}, checkpoint_name(0, 2), 143, id="epoch0-step2"),
    case({**SIGINT, "at": [1, 3]}, checkpoint_name(1, 3), 130, id="epoch1-step3-sigint"),
    case({**SIGTERM, "at": [1, STEPS]}, checkpoint_name(2), 143, id="epoch-boundary"),
    case({**SIGTERM, "at": [2, STEPS]}, checkpoint_name(3), 143, id="last-step"),
    case({"signal": "SIGTERM", "when": "saving", "at": 1}, checkpoint_name(1), 143, id="while-saving"),
    case({**SIGINT, "at": [1, 4], "times": 2}, checkpoint_name(1, 2), 130,      # stops at once: the
         extra=["--checkpoint-every", 2], id="second-signal"),                    # checkpoint before
    case({**SIGTERM, "at": [1, 2]}, checkpoint_name(1, 2), 143, settings="sgd-plateau-earlystop",
         id="sgd-plateau-earlystop"),
    case({**SIGINT, "at": [1, 3]}, checkpoint_name(1, 3), 130, workers=2, id="two-workers"),
]


@pytest.mark.parametrize("plan, settings, extra, workers, expected, status", CASES)
def test_interrupt_at_a_step_then_resume_is_bitwise_an_uninterrupted_run(
        tmp_path, straight, plan, settings, extra, workers, expected, status):
    argv = [*common(tmp_path, settings), "--epochs", EPOCHS, "--workers", workers,
            "--threads-per-worker", 1, "--out", "resumed.hdf5", *extra]
    stopped = kill_at(plan, *argv, cwd=tmp_path)
    assert stopped.returncode == status, stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr
    hint = (f"resume with: {shlex.quote(sys.executable)} -m launch.train --resume --checkpoint-dir checkpoints "
            "--out resumed.hdf5")
    assert hint in stopped.stderr
    newest = list_checkpoints(str(tmp_path / "checkpoints"))[-1][1]
    assert os.path.basename(newest) == expected
    assert f"last complete checkpoint: {os.path.join('checkpoints', expected)}" in stopped.stderr
    assert not (tmp_path / "resumed.hdf5").exists()
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if f.startswith(".tmp-")]

    resumed = cli("--resume", "--workers", 1, "--out", "resumed.hdf5", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(straight(settings), tmp_path / "resumed.hdf5")


def test_a_step_checkpoint_records_where_it_stopped(tmp_path):
    r = kill_at({"signal": "SIGTERM", "when": "step", "at": [1, 3]}, *common(tmp_path, "adam"),
                "--epochs", EPOCHS, "--workers", 1, cwd=tmp_path)
    assert r.returncode == 143, r.stderr
    assert "interrupted during epoch 2/3, after step 3" in r.stderr
    model = Model.load(str(tmp_path / "checkpoints" / checkpoint_name(1, 3)))
    info = model.metadata["checkpoint"]
    assert info["epoch"] == 1 and info["step"] == 3 and len(info["history"]["loss"]) == 1
    assert info["progress"]["seen"] == 3 * 16
    assert model.extra_arrays["optimizer/t"] == STEPS + 3          # Adam's step count


def test_checkpoint_every_writes_step_checkpoints_and_prunes_them(tmp_path, monkeypatch, straight, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*common(tmp_path, "adam"), "--epochs", EPOCHS, "--workers", 1, "--checkpoint-every", 4,
            "--out", "resumed.hdf5"]
    assert train_cli.main([str(a) for a in argv]) == 0
    names = [os.path.basename(p) for _, p in list_checkpoints("checkpoints")]
    assert names == [checkpoint_name(2), checkpoint_name(2, 4), checkpoint_name(3)]
    for name in (checkpoint_name(3), "resumed.hdf5"):          # back to 2 epochs and 4 steps
        for path in (os.path.join("checkpoints", name), name):
            if os.path.exists(path):
                os.unlink(path)
                os.unlink(path[:-len(".hdf5")] + ".json")
    capsys.readouterr()
    assert train_cli.main(["--resume", "--workers", "1", "--out", "resumed.hdf5"]) == 0
    assert f"resuming from checkpoints/{checkpoint_name(2, 4)} (2 epochs and 4 steps done)" in capsys.readouterr().err
    assert same_weights(straight("adam"), tmp_path / "resumed.hdf5")


def test_resume_from_a_step_needs_an_epoch_to_finish_it(tmp_path):
    r = kill_at({"signal": "SIGTERM", "when": "step", "at": [1, 3]}, *common(tmp_path, "adam"),
                "--epochs", EPOCHS, "--workers", 1, cwd=tmp_path)
    assert r.returncode == 143, r.stderr
    again = cli("--resume", "--epochs", 1, cwd=tmp_path)
    assert again.returncode == 2 and "1 epochs and 3 steps" in again.stderr and "--epochs" in again.stderr


def test_checkpoints_sort_in_training_order(tmp_path):
    names = [checkpoint_name(10), checkpoint_name(2, 3), checkpoint_name(2), checkpoint_name(2, 12),
             checkpoint_name(0, 1), checkpoint_name(3)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name.replace(".hdf5", ".json")).write_text("[]")
    (tmp_path / "epoch-0004.hdf5").write_bytes(b"")                 # no architecture: not listed
    listed = [os.path.basename(p) for _, p in list_checkpoints(str(tmp_path))]
    assert listed == ["epoch-0000-step-000001.hdf5", "epoch-0002.hdf5", "epoch-0002-step-000003.hdf5",
                      "epoch-0002-step-000012.hdf5", "epoch-0003.hdf5", "epoch-0010.hdf5"]
    assert [e for e, _ in list_checkpoints(str(tmp_path))] == [0, 2, 2, 2, 3, 10]
