"""The files and commands of tests/test_hostile_files_3.py's table: each maker builds hostile
files in a fresh directory and returns the command (after ``python -m``) that must refuse them."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import h5py
import numpy as np

from dpnn import Dense, Flatten, Model

TINY = ["--model", "mlp", "--epochs", "1", "--batch-size", "16", "--workers", "1", "--quiet"]


# -- makers: each returns the command's arguments (after `python -m`) ------------------------
def outside(tmp: Path) -> str:
    """A file outside the one named, as a FIFO nobody writes: opening it would hang."""
    path = tmp / "outside"
    os.mkfifo(path)
    return str(path)


def saved(tmp: Path, name: str = "w.hdf5") -> Path:
    path = tmp / name
    Model([Flatten(), Dense(10)], seed=0).build((1, 28, 28, 1)).save(str(path))
    return path


def edit_hdf5(edit):
    """A GUI run on a saved model whose HDF5 file ``edit(f, tmp)`` changed."""
    def make(tmp: Path) -> list[str]:
        path = saved(tmp)
        with h5py.File(path, "a") as f:
            edit(f, tmp)
        return ["launch.gui", "--weights", str(path)]
    make.__name__ = edit.__name__
    return make


def external_storage(f, tmp):
    del f["1_Dense_b"]
    f.create_dataset("1_Dense_b", shape=(10,), dtype="f4", external=[(outside(tmp), 0, 40)])


def external_link(f, tmp):
    del f["1_Dense_b"]
    f["1_Dense_b"] = h5py.ExternalLink(outside(tmp), "/b")


def soft_link(f, tmp):
    f.create_group("g").create_dataset("b", data=np.zeros(10, "f4"))
    del f["1_Dense_b"]
    f["1_Dense_b"] = h5py.SoftLink("/g/b")


def virtual_dataset(f, tmp):
    layout = h5py.VirtualLayout(shape=(10,), dtype="f4")
    layout[:] = h5py.VirtualSource(outside(tmp), "b", shape=(10,))
    del f["1_Dense_b"]
    f.create_virtual_dataset("1_Dense_b", layout)


def plugin_filter(f, tmp):
    del f["1_Dense_b"]
    f.create_dataset("1_Dense_b", data=np.zeros(10, "f4"), compression="lzf")


def string_dataset(f, tmp):
    del f["1_Dense_b"]
    f["1_Dense_b"] = np.array(["a"] * 10, dtype=h5py.string_dtype())


def nan_weights(f, tmp):
    f["1_Dense_b"][3] = np.nan


def inf_weights(f, tmp):
    f["1_Dense_W"][0, 0] = np.inf


def weights_as(kind):
    def make(tmp: Path) -> list[str]:
        path = tmp / "w.hdf5"
        {"fifo": lambda: os.mkfifo(path), "dir": lambda: path.mkdir(),
         "loop": lambda: os.symlink(path, path), "zero": lambda: os.symlink("/dev/zero", path)}[kind]()
        (tmp / "w.json").write_text(json.dumps([{"class": "Flatten", "config": {}}]))
        return ["launch.gui", "--weights", str(path)]
    make.__name__ = f"weights_{kind}"
    return make


def architecture_fifo(tmp: Path) -> list[str]:
    path = saved(tmp)
    (tmp / "w.json").unlink()
    os.mkfifo(tmp / "w.json")
    return ["launch.gui", "--weights", str(path)]


def architecture_text(text: str):
    def make(tmp: Path) -> list[str]:
        path = saved(tmp)
        (tmp / "w.json").write_text(text)
        return ["launch.gui", "--weights", str(path)]
    return make


def model_json_fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "arch.json")
    return ["launch.train", "--dataset", "synthetic", "--limit", "32", "--model", str(tmp / "arch.json"),
            "--epochs", "1", "--workers", "1", "--quiet"]


# -- data directories ----------------------------------------------------------------------------
def npz_dir(tmp: Path, x=None, y=None) -> Path:
    d = tmp / "data"
    d.mkdir(exist_ok=True)
    x = np.zeros((20, 8, 8), np.uint8) if x is None else x
    y = np.arange(20) % 2 if y is None else y
    np.savez(d / "train.npz", x=x, y=y)
    return d


def inspect(d: Path) -> list[str]:
    return ["launch.data", "--inspect", str(d)]


def train_on(d: Path, *flags) -> list[str]:
    return ["launch.train", "--dataset", str(d), *TINY, "--checkpoint-dir", "none", *flags]


def image_folder_with_fifo(command):
    def make(tmp: Path) -> list[str]:
        from PIL import Image
        d = tmp / "data"
        for c in ("a", "b"):
            (d / "train" / c).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), 40 * i).save(d / "train" / c / f"{i}.png")
        os.mkfifo(d / "train" / "b" / "3.png")
        return command(d)
    make.__name__ = f"image_fifo_{command.__name__}"
    return make


def special_in_place_of(name: str, kind: str, command=inspect):
    def make(tmp: Path) -> list[str]:
        d = tmp / "data"
        d.mkdir()
        if "idx" in name:                    # the other three IDX files are fine
            from dpnn.idx import write_idx
            for stem in ("train", "t10k"):
                write_idx(d / f"{stem}-images-idx3-ubyte", np.zeros((4, 8, 8), np.uint8), gzip=False)
                write_idx(d / f"{stem}-labels-idx1-ubyte", np.zeros(4, np.uint8), gzip=False)
        path = d / name
        if path.exists():
            path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "zero":
            os.symlink("/dev/zero", path)
        else:
            os.symlink(path, path)
        return command(d)
    make.__name__ = f"{kind}_{name}"
    return make


def npz_labels_2_40(tmp: Path) -> list[str]:
    return inspect(npz_dir(tmp, y=np.array([2**40] + [0] * 19)))


def npz_float_pixels_2_5e32(tmp: Path) -> list[str]:
    x = np.random.default_rng(0).uniform(0, 1, (20, 8, 8)).astype("f4")
    x[3, 2, 2] = 2.5e32
    return train_on(npz_dir(tmp, x=x))


def csv_file(tmp: Path, text: str | bytes, name: str = "train.csv") -> Path:
    d = tmp / "data"
    d.mkdir(exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    (d / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return d


def csv_rows(labels) -> str:
    return "".join(",".join(["0"] * 16 + [str(v)]) + "\n" for v in labels)


def csv_labels_99_million(tmp: Path) -> list[str]:
    return train_on(csv_file(tmp, csv_rows([1, 2, 99_000_000, 3] * 5)), "--label-column", "-1")


def csv_random_bytes(tmp: Path) -> list[str]:
    return train_on(csv_file(tmp, np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()))


def csv_blank_lines(tmp: Path) -> list[str]:
    rows = csv_rows([0, 1] * 10).replace("\n", "\n\n")
    return inspect(csv_file(tmp, rows))


def csv_gzip_bomb(tmp: Path) -> list[str]:
    row = ",".join(["0"] * 784) + ",1\n"
    d = tmp / "data"
    d.mkdir()
    with gzip.open(d / "train.csv.gz", "wb", compresslevel=9) as f:
        for _ in range(200):
            f.write(row.encode() * 500)          # 157 MB of text, ~150 KB compressed
    return inspect(d)


# -- outputs --------------------------------------------------------------------------------------
def outputs(*flags):
    def make(tmp: Path) -> list[str]:
        return ["launch.train", "--dataset", "synthetic", "--limit", "32", *TINY, *flags]
    make.__name__ = "outputs_" + "_".join(f.strip("-") for f in flags if f.startswith("--"))
    return make


def existing_dir_for(flag: str):
    def make(tmp: Path) -> list[str]:
        (tmp / "somedir").mkdir()
        if flag == "digits":
            return ["launch.digits", "--dataset", "mnist-5k", "--epochs", "1", "--out", "somedir"]
        return outputs(flag, "somedir")(tmp)
    make.__name__ = f"dir_as_{flag}"
    return make


# -- checkpoints ------------------------------------------------------------------------------------
def checkpoint(edit):
    """--resume from a real checkpoint whose metadata or arrays ``edit(info, f)`` changed."""
    def make(tmp: Path) -> list[str]:
        import dpnn.cli.train as train_cli
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            argv = ["--dataset", "synthetic", "--limit", "32", *TINY, "--checkpoint-dir", "ck",
                    "--out", "first.hdf5"]
            assert train_cli.main(argv) == 0
        finally:
            os.chdir(cwd)
        (path,) = sorted((tmp / "ck").glob("epoch-*.hdf5"))
        with h5py.File(path, "a") as f:
            metadata = json.loads(f.attrs["dpnn_metadata"])
            edit(metadata["checkpoint"], f, tmp)
            f.attrs["dpnn_metadata"] = json.dumps(metadata)
        return ["launch.train", "--resume", "--checkpoint-dir", str(tmp / "ck"), "--epochs", "3",
                "--out", str(tmp / "second.hdf5"), "--quiet"]
    make.__name__ = f"checkpoint_{edit.__name__}"
    return make


def lr_text(info, f, tmp):
    info["config"]["lr"] = "fast"


def epoch_negative(info, f, tmp):
    info["epoch"] = -5


def epoch_text(info, f, tmp):
    info["epoch"] = "2"


def history_text(info, f, tmp):
    info["history"] = "loss"


def optimizer_wrong_size(info, f, tmp):
    name = next(k for k in f["optimizer"] if f["optimizer"][k].size > 1)
    del f["optimizer"][name]
    f["optimizer"][name] = np.zeros(3, "f4")


def ck_external_storage(info, f, tmp):
    external_storage(f, tmp)
