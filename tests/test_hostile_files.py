"""Hostile and mistaken files: each is refused with one clear line before anything big is
allocated, and a write that cannot finish leaves the old file as it was.

Three tables: files to read (IDX, weights, architectures) with the error and message each
must give; the same files through the GUI's command line (exit 2, one stderr line, no
traceback); and outputs that must not be clobbered. Cases whose old failure was a huge
allocation run in a subprocess whose address space is capped at 2 GiB, so that an
accidental allocation fails loudly instead of swapping the machine.
"""
from __future__ import annotations

import errno
import gzip
import io as bytes_io
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import dpnn.io
from dpnn import Dense, Flatten, Model
from dpnn.errors import DataError, OutputError, WeightsError
from dpnn.idx import read_idx, write_idx

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 2 << 30        # the capped subprocess's whole virtual memory

# -- file makers -------------------------------------------------------------------------------
def idx_header(code: int, dims: tuple) -> bytes:
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, ">u4").tobytes()


def idx_overflowing_dims(tmp: Path) -> Path:
    """Four dims of 2**32-1 doubles: the product overflows int64."""
    path = tmp / "overflow-idx"
    path.write_bytes(idx_header(0x0E, (2**32 - 1,) * 4) + bytes(64))
    return path


def idx_gzip_declaring_terabytes(tmp: Path) -> Path:
    """A 5 KB gzip whose header declares 1 TiB: refused from the header and the file size."""
    path = tmp / "huge-idx.gz"
    path.write_bytes(gzip.compress(idx_header(0x08, (2**20, 2**20)) + bytes(1 << 20), 1))
    return path


def idx_gzip_bomb_after_payload(tmp: Path) -> Path:
    """10 declared bytes, then 4 GiB of zeros in 256 gzip members (a 4 MB file)."""
    zeros = gzip.compress(bytes(16 << 20), 1)
    path = tmp / "bomb-idx.gz"
    path.write_bytes(gzip.compress(idx_header(0x08, (10,)) + bytes(10)) + zeros * 256)
    return path


def idx_gzip_short_stream(tmp: Path) -> Path:
    """Declares 512 MiB (plausible for its size), holds 1 MiB: refused once the stream ends."""
    path = tmp / "short-idx.gz"
    noise = np.random.default_rng(0).integers(0, 256, 1 << 20, np.uint8).tobytes()
    path.write_bytes(gzip.compress(idx_header(0x08, (512, 1 << 20)) + noise, 1))
    return path


def idx_sparse_terabyte(tmp: Path) -> Path:
    """A raw IDX whose size matches its 1 TiB header: a sparse file, never read."""
    path = tmp / "sparse-idx"
    with open(path, "wb") as f:
        f.write(idx_header(0x08, (2**20, 2**20)))
        f.truncate(12 + 2**40)
    return path


def saved_model(tmp: Path, name: str = "model.hdf5") -> Path:
    model = Model([Flatten(), Dense(3)], seed=0).build((1, 28, 28, 1))
    path = tmp / name
    model.save(str(path))
    return path


def hdf5_with_40gb_dataset(tmp: Path, name: str = "9_Dense_W") -> Path:
    path = saved_model(tmp)
    with h5py.File(path, "a") as f:                   # chunked: declared, never stored
        f.create_dataset(name, shape=(100_000, 100_000), dtype="f4", chunks=(1000, 1000))
    return path


def hdf5_with_40gb_optimizer_array(tmp: Path) -> Path:
    return hdf5_with_40gb_dataset(tmp, "optimizer/0.m")


def hdf5_with_integer_weights(tmp: Path) -> Path:
    path = saved_model(tmp)
    with h5py.File(path, "a") as f:
        del f["1_Dense_W"]
        f["1_Dense_W"] = np.zeros((784, 3), np.int32)
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buf = bytes_io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header_only(shape: tuple, descr: str = "<f4") -> bytes:
    """A .npy member whose header declares ``shape`` followed by a few bytes of data."""
    buf = bytes_io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(64)


def npz_with(tmp: Path, replace: dict[str, bytes]) -> Path:
    """A model saved as NPZ, with members replaced or added (name without .npy -> bytes)."""
    path = saved_model(tmp, "model.npz")
    with np.load(path, allow_pickle=False) as z:
        members = {k: npy_bytes(z[k]) for k in z.files}
    members.update(replace)
    with zipfile.ZipFile(path, "w") as z:
        for k, data in members.items():
            z.writestr(k + ".npy", data)
    return path


def npz_declaring_40gb_weights(tmp: Path) -> Path:
    return npz_with(tmp, {"1_Dense_W": npy_header_only((100_000, 100_000))})


def npz_with_40gb_extra_member(tmp: Path) -> Path:
    return npz_with(tmp, {"7_Dense_W": npy_header_only((100_000, 100_000))})


def npz_with_pickle(tmp: Path) -> Path:
    return npz_with(tmp, {"1_Dense_W": npy_header_only((784, 3), "|O")})


def with_attribute(name: str, value: str):
    def make(tmp: Path) -> Path:
        path = saved_model(tmp)
        with h5py.File(path, "a") as f:
            f.attrs[name] = value
        return path
    make.__name__ = f"attribute_{name}"
    return make


def with_architecture(text: str):
    """A saved model whose architecture JSON is replaced by ``text``."""
    def make(tmp: Path) -> Path:
        path = saved_model(tmp)
        path.with_suffix(".json").write_text(text)
        return path
    return make


def dense_json(units) -> str:
    return json.dumps([{"class": "Flatten", "config": {}}, {"class": "Dense", "config": {"units": units}}])


CONV_1E9 = {"class": "Conv2D", "config": {"filters": 1_000_000_000}}

# id: (make file, reader, expected exception, message regex, run under the 2 GiB cap)
READ_CASES = {
    "idx dims overflow int64": (idx_overflowing_dims, "idx", DataError,
                                r"declares dims .* more than any array can hold", False),
    "idx gzip header declares 1 TiB": (idx_gzip_declaring_terabytes, "idx", DataError,
                                       r"gzip file of [\d,]+ bytes holds at most", True),
    "idx gzip bomb after the payload": (idx_gzip_bomb_after_payload, "idx", DataError,
                                        r"65536 or more trailing bytes after the \(10,\) payload", True),
    "idx gzip stream shorter than declared": (idx_gzip_short_stream, "idx", DataError,
                                              r"payload truncated: .* file has 1048576", True),
    "idx 1 TiB sparse raw file": (idx_sparse_terabyte, "idx", DataError,
                                  r"payload needs 1\.0 TB; the machine has 8\.0 GB available", True),
    "hdf5 extra 40 GB dataset": (hdf5_with_40gb_dataset, "model", WeightsError,
                                 r"unexpected 9_Dense_W", True),
    "hdf5 40 GB optimizer array": (hdf5_with_40gb_optimizer_array, "model", WeightsError,
                                   r"optimizer/0\.m declares shape \(100000, 100000\) \(37 GB\)", True),
    "hdf5 integer weights": (hdf5_with_integer_weights, "model", WeightsError,
                             r"1_Dense_W have dtype int32, not floating point", False),
    "npz member declares 40 GB": (npz_declaring_40gb_weights, "model", WeightsError,
                                  r"1_Dense_W have shape \(100000, 100000\) but the model needs "
                                  r"\(784, 3\)", True),
    "npz extra 40 GB member": (npz_with_40gb_extra_member, "model", WeightsError,
                               r"unexpected 7_Dense_W", True),
    "npz pickled member": (npz_with_pickle, "model", WeightsError, r"pickled Python objects", False),
    "metadata not an object": (with_attribute("dpnn_metadata", "[1, 2]"), "model", WeightsError,
                               r"dpnn_metadata attribute is a JSON list, not an object", False),
    "input shape not positive ints": (with_attribute("dpnn_input_shape", "[4, -4, 1.5]"), "model",
                                      WeightsError, r"is not a list of 1 to 4 positive integers", False),
    "input shape 100000x100000": (with_attribute("dpnn_input_shape", "[100000, 100000, 1]"), "model",
                                  WeightsError, r"an input of shape \(100000, 100000, 1\) needs 75 GB", True),
    "architecture nested 100000 deep": (with_architecture("[" * 100_000 + "]" * 100_000), "model",
                                        WeightsError, r"nests 100000 levels deep \(at most 32\)", False),
    "architecture of 2 MB": (with_architecture(" " * (2 << 20) + "[]"), "model", WeightsError,
                             r"is 2\.0 MB, more than the 1\.0 MB an architecture can need", False),
    "filters 1e9 written as a float": (with_architecture('[{"class": "Conv2D", "config": {"filters": 1e9}}]'),
                                       "model", WeightsError,
                                       r"filters must be a whole number .*1000000000\.0", False),
    "filters 1000000000": (with_architecture(json.dumps([CONV_1E9])), "model", WeightsError,
                           r"Conv2D\(filters=1000000000, .*\) needs 149 GB of parameters", True),
    "units 1e8 written as a float": (with_architecture(dense_json(1e8)),
                                     "model", WeightsError, r"units must be a whole number", False),
    "units 100000000": (with_architecture(dense_json(100_000_000)),
                        "model", WeightsError,
                        r"Dense\(units=100000000, .*\) needs [\d.]+ [GT]B of parameters", True),
    "negative filters": (with_architecture('[{"class": "Conv2D", "config": {"filters": -4}}]'), "model",
                         WeightsError, r"bad config for layer Conv2D: filters must be a positive int", False),
}

PROBE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
import dpnn.limits
dpnn.limits.available_memory = lambda: 8 << 30     # the same on every machine
from dpnn import Model
from dpnn.idx import read_idx, write_idx
reader, path = sys.argv[1:]
try:
    read_idx(path) if reader == "idx" else Model.load(path)
except BaseException as e:
    print(type(e).__name__ + ": " + str(e))
else:
    print("loaded")
"""


def load_capped(reader: str, path: Path) -> tuple[str, str]:
    """(exception class name, message) of loading ``path`` in a 2 GiB-capped subprocess."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(cap=ADDRESS_SPACE), reader, str(path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.count("\n") == 1, out.stdout + out.stderr
    name, _, message = out.stdout.strip().partition(": ")
    return name, message


@pytest.mark.parametrize("case", list(READ_CASES))
def test_hostile_file_is_refused_in_one_line(case, tmp_path, monkeypatch):
    make, reader, error, message, capped = READ_CASES[case]
    monkeypatch.setattr("dpnn.limits.available_memory", lambda: 8 << 30)    # the same on every machine
    path = make(tmp_path)
    if capped:
        name, text = load_capped(reader, path)
        assert name == error.__name__, text
    else:
        with pytest.raises(error) as info:
            read_idx(path) if reader == "idx" else Model.load(str(path))
        text = str(info.value)
    assert re.search(message, text), text
    assert "\n" not in text and ";" in text                # one line, with what to do


def test_images_that_would_not_fit_as_float32_are_refused(tmp_path, monkeypatch):
    """The uint8 images fit, their float32 copy (4x) would not: one DataError, nothing allocated."""
    from dpnn.data import load_mnist_gz
    for stem, n in (("train", 6), ("t10k", 2)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))
    monkeypatch.setattr("dpnn.limits.available_memory", lambda: 6 * 28 * 28 * 2)
    with pytest.raises(DataError, match=r"train-images.*its images as float32 needs 18 KB; the machine "
                                        r"has 9\.2 KB available; free memory"):
        load_mnist_gz(tmp_path)


# -- the same files through the GUI's command line ------------------------------------------------
@pytest.mark.parametrize("case", ["architecture nested 100000 deep", "input shape 100000x100000",
                                  "hdf5 extra 40 GB dataset", "metadata not an object"])
def test_gui_refuses_a_hostile_file_with_exit_2_and_one_line(case, tmp_path):
    path = READ_CASES[case][0](tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    out = subprocess.run([sys.executable, "-m", "launch.gui", "--weights", str(path)], cwd=ROOT,
                         env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


# -- outputs are never clobbered --------------------------------------------------------------------
def fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


def directory(tmp: Path) -> Path:
    (tmp / "dir").mkdir()
    (tmp / "dir" / "keep").write_text("keep")
    return tmp / "dir"


def never_called(tmp):
    raise AssertionError("atomic_write wrote to a path it should have refused")


@pytest.mark.parametrize("target, kind", [(fifo, "a FIFO"), (directory, "a directory"),
                                          (lambda tmp: Path(os.devnull), "a character device")])
def test_special_files_are_refused_before_writing(target, kind, tmp_path):
    path = target(tmp_path)
    before = os.stat(path)
    with pytest.raises(OutputError, match=rf"cannot write {re.escape(str(path))}: it is {kind}, not a "
                                          "regular file; pass"):
        dpnn.io.atomic_write(str(path), never_called)
    after = os.stat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_model_save_refuses_a_fifo_as_its_output(tmp_path):
    path = fifo(tmp_path)
    with pytest.raises(OutputError, match="it is a FIFO"):
        Model([Flatten(), Dense(2)]).build((1, 2, 2, 1)).save(str(path))
    assert stat.S_ISFIFO(os.stat(path).st_mode)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fmt, writer", [("hdf5", "h5py.Group.create_dataset"), ("npz", "numpy.savez"),
                                         ("json", "json.dumps")])
def test_a_full_disk_leaves_the_old_file_intact(fmt, writer, tmp_path, monkeypatch):
    path = saved_model(tmp_path, "model.npz" if fmt == "npz" else "model.hdf5")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = Model([Flatten(), Dense(3)], seed=1).build((1, 28, 28, 1))
    if fmt == "json":      # the architecture's temp file fills the disk
        monkeypatch.setattr("builtins.open", failing_open_for("model.json"))
    else:
        monkeypatch.setattr(writer, enospc)
    with pytest.raises(OutputError, match=r"cannot write .*model\.\w+: No space left on device; "
                                          r"nothing was overwritten$"):
        model.save(str(path))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before     # no temp file either


def failing_open_for(suffix: str):
    real_open = open

    def fake(file, *args, **kwargs):
        if os.path.basename(str(file)).startswith(".tmp-") and str(file).endswith(suffix):
            enospc()
        return real_open(file, *args, **kwargs)
    return fake


def test_new_files_honour_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        dpnn.io.atomic_write(str(tmp_path / "new"), lambda tmp: Path(tmp).write_text("x"))
        (tmp_path / "kept").write_text("old")
        os.chmod(tmp_path / "kept", 0o604)
        dpnn.io.atomic_write(str(tmp_path / "kept"), lambda tmp: Path(tmp).write_text("new"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "kept").st_mode) == 0o604
    assert (tmp_path / "kept").read_text() == "new"
