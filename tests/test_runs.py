"""Re-running a command works (issue 21, point 2): without --checkpoint-dir every run gets its own
folder, checkpoints/<date-time>/; --resume finds the newest run's newest checkpoint (as ``make
train`` lays them out) and says which folder it took, or names the folders it looked in."""
from __future__ import annotations

import os

import dpnn.cli.train as train_cli
from dpnn.cli.checkpoint import RunLocks, find_run, list_checkpoints

TINY = ["--dataset", "synthetic", "--limit", "64", "--model", "mlp", "--batch-size", "32", "--workers", "1",
        "--quiet", "--deterministic"]


def run(argv) -> int:
    try:
        return train_cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def folders(root="checkpoints") -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def test_the_same_command_twice_exits_0_both_times(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(TINY + ["--epochs", 1]) == 0
    assert run(TINY + ["--epochs", 1]) == 0, capsys.readouterr().err
    runs = folders()
    assert len(runs) == 2 and all(list_checkpoints(os.path.join("checkpoints", d)) for d in runs)
    assert not [f for d in runs for f in os.listdir(os.path.join("checkpoints", d)) if "lock" in f]


def test_resume_finds_the_newest_run_of_a_make_train_layout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(TINY + ["--epochs", 1, "--checkpoint-dir", "checkpoints/20260101-090000"]) == 0   # make train
    assert run(TINY + ["--epochs", 2, "--seed", 5, "--checkpoint-dir", "checkpoints/20260102-090000"]) == 0
    old = "checkpoints/20260101-090000/epoch-0001.hdf5"
    os.utime(old, (os.path.getmtime(old) + 60,) * 2)           # written last: the newest run
    capsys.readouterr()
    assert run(["--resume", "--checkpoint-dir", "checkpoints", "--epochs", 2, "--out", "next.hdf5"]) == 0
    err = capsys.readouterr().err
    assert ("resuming from checkpoints/20260101-090000/epoch-0001.hdf5 (1 epochs done; the newest of 2 run "
            "folders in checkpoints)") in err, err
    assert [e for e, _ in list_checkpoints("checkpoints/20260101-090000")] == [1, 2]
    assert os.path.exists("next.hdf5")
    assert run(["--resume", "--epochs", 3, "--out", "again.hdf5"]) == 0      # the default root too
    assert [e for e, _ in list_checkpoints("checkpoints/20260101-090000")] == [1, 2, 3]


def test_resume_with_nothing_to_find_names_the_folders_it_looked_in(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.makedirs("checkpoints/20260101-090000")
    os.makedirs("checkpoints/20260102-090000")
    assert run(["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint in checkpoints or in its run folders" in err[0], err
    assert "checkpoints/20260101-090000, checkpoints/20260102-090000" in err[0]


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    first, second = RunLocks(), RunLocks()
    a, b = first.new_run_folder(str(tmp_path / "ck")), second.new_run_folder(str(tmp_path / "ck"))
    assert a != b and os.path.isdir(a) and os.path.isdir(b)
    first.acquire(os.path.join(a, ".lock"), "a")
    second.acquire(os.path.join(b, ".lock"), "b")              # no conflict: different files
    assert find_run(str(tmp_path / "ck"))[0] is None
    second.release()
    assert not os.path.exists(b) and os.path.isdir(a)          # an empty run folder is tidied away
    first.release()
    assert not os.path.exists(tmp_path / "ck")
