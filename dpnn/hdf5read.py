"""Reading an HDF5 weights file so that only the bytes of that file are read.

HDF5 can make a dataset read other files: external storage (``external=[("/etc/passwd", 0,
64)]``), external links (``h5py.ExternalLink``), virtual datasets mapping other files, and
filters loaded from plugin libraries (code). A soft link is harmless by itself but no file
dpnn writes has one. Each is refused by name here from the file's metadata, before any data
is read (and before a link is followed); :func:`read_hdf5` is the one place dpnn opens HDF5.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import WeightsError
from .limits import format_bytes

try:
    import h5py
except ImportError:          # the NPZ fallback keeps the library usable without h5py
    h5py = None

MAX_ATTRIBUTE_BYTES = 16 << 20     # metadata (a checkpoint's history included) is far smaller
# Filters compiled into the HDF5 library itself: deflate, shuffle, fletcher32, szip, n-bit,
# scale-offset. Any other is a plugin, a shared library HDF5 would load and run.
BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset"}

Listing = dict[str, tuple[tuple[int, ...], np.dtype]]    # array name -> (shape, dtype)


def _refuse(path: str, name: str, problem: str) -> WeightsError:
    return WeightsError(f"{path}: {name} {problem}; dpnn reads only the file named, so it refuses "
                        "it; save the weights again with model.save()")


def _member(path: str, group, name: str, full: str):
    """The object ``name`` of ``group``, after refusing every link that is not a hard link."""
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise _refuse(path, full, f"is an external link to {link.filename}:{link.path}")
    if isinstance(link, h5py.SoftLink):
        raise _refuse(path, full, f"is a soft link to {link.path}")
    if not isinstance(link, h5py.HardLink):
        raise _refuse(path, full, f"is a {type(link).__name__}, not a dataset")
    return group[name]


def _check_storage(path: str, name: str, d) -> None:
    """Refuse a dataset whose bytes live elsewhere or need a filter HDF5 would load as a plugin."""
    if d.external:
        raise _refuse(path, name, f"stores its data in another file ({d.external[0][0]})")
    if d.is_virtual:
        raise _refuse(path, name, "is a virtual dataset (its data comes from other datasets or files)")
    plist = d.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, _, label = plist.get_filter(i)
        if code not in BUILTIN_FILTERS:
            text = label.decode(errors="replace") if isinstance(label, bytes) else str(label)
            raise _refuse(path, name, f"needs the HDF5 filter {text or '?'} ({code}), which is not "
                                      "built into HDF5 (a plugin library would have to run)")


def datasets(path: str, f) -> dict:
    """Top-level datasets and those one group deep ('optimizer/t'), by name; nothing is read."""
    out = {}
    for k in f:
        item = _member(path, f, k, k)
        if isinstance(item, h5py.Group):
            members = [(f"{k}/{sub}", _member(path, item, sub, f"{k}/{sub}")) for sub in item]
        else:
            members = [(k, item)]
        for name, d in members:
            if not isinstance(d, h5py.Dataset):
                what = "a nested group" if isinstance(d, h5py.Group) else f"a {type(d).__name__}"
                raise WeightsError(f"{path}: {name} is {what}; dpnn files hold datasets at most "
                                   "one group deep")
            _check_storage(path, name, d)
            out[name] = d
    return out


def attributes(path: str, f) -> dict[str, str]:
    """The file's attributes as text, each at most MAX_ATTRIBUTE_BYTES: a fixed-size one checked
    before it is read; a variable-length string (what h5py writes for a Python ``str``) reports
    16 bytes of storage whatever its length, its text lying in the file's heap, so it is
    measured once read (it can be no larger than the file being read)."""
    out = {}
    for k in f.attrs:
        if f.attrs.get_id(k).get_storage_size() > MAX_ATTRIBUTE_BYTES:
            raise _too_large(path, k)
        value = f.attrs[k]
        if _text_bytes(value) > MAX_ATTRIBUTE_BYTES:
            raise _too_large(path, k)
        out[k] = str(value)
    return out


def _text_bytes(value) -> int:
    if isinstance(value, (str, bytes)):
        return len(value)
    a = np.asarray(value)
    return a.nbytes if a.dtype != object else sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in a.flat)


def _too_large(path: str, key: str) -> WeightsError:
    return WeightsError(f"{path}: attribute {key} is larger than {format_bytes(MAX_ATTRIBUTE_BYTES)}; "
                        "re-save the model")


def read_hdf5(path: str, check: Callable[[Listing], None], with_arrays: bool):
    """(listing, arrays, attrs) of an HDF5 file; ``check(listing)`` runs before any array is read."""
    if h5py is None:
        raise WeightsError(f"{path} is HDF5 but h5py is not installed: pip install h5py")
    with h5py.File(path, "r") as f:
        found = datasets(path, f)
        listing = {k: (tuple(d.shape), d.dtype) for k, d in found.items()}
        attrs = attributes(path, f)
        check(listing)
        arrays = {k: np.array(d) for k, d in found.items()} if with_arrays else {}
    return listing, arrays, attrs
