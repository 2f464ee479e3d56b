"""IDX reader/writer: round trips and every way a file can be broken."""
import gzip

import numpy as np
import pytest

from dpnn.errors import DataError
from dpnn.idx import read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 100, (3, 5, 4)) * 1.25).astype(dtype)
    path = tmp_path / "a.idx"  # no .gz suffix either way: gzip is found by magic bytes
    write_idx(path, a, gzip=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable


def test_reads_the_canonical_header(tmp_path):
    raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    (tmp_path / "x").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), np.arange(6, dtype=np.uint8).reshape(2, 3))


def test_big_endian_payload(tmp_path):
    raw = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2]) + b"\x01\x02\xff\xfe"
    (tmp_path / "x").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), [0x0102, -2])


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="convert"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))


def _good_bytes() -> bytes:
    return bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(6)


BAD_FILES = {
    # name: (file bytes, words the message must contain)
    "empty": (b"", "empty"),
    "wrong magic": (b"\x01\x02" + _good_bytes()[2:], "not an IDX file"),
    "garbage": (b"hello, this is not an idx file", "not an IDX file"),
    "unknown dtype": (bytes([0, 0, 0x0A, 2]) + _good_bytes()[4:], "unknown IDX dtype code 0x0A"),
    "zero ndim": (bytes([0, 0, 0x08, 0]), "0 dimensions"),
    "short header": (bytes([0, 0, 0x08, 3, 0, 0, 0, 2]), "header truncated"),
    "zero dim": (bytes([0, 0, 0x08, 1, 0, 0, 0, 0]), "empty dimension"),
    "truncated payload": (_good_bytes()[:-1], "payload truncated"),
    "trailing bytes": (_good_bytes() + b"\x00\x00", "2 trailing bytes"),
}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_names_file_and_problem(tmp_path, case, compress):
    data, words = BAD_FILES[case]
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg
    assert "\n" not in msg and ";" in msg  # one line, with what to do after the ';'


def test_truncated_gzip(tmp_path):
    path = tmp_path / "t.gz"
    write_idx(path, np.arange(5000, dtype=np.int32))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="gzip stream is truncated") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_corrupt_gzip(tmp_path):
    blob = bytearray(gzip.compress(_good_bytes() * 50))
    blob[20:30] = b"\xff" * 10
    path = tmp_path / "c.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="gzip stream is corrupt"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as err:
        read_idx(tmp_path / "nope.gz")
    assert "nope.gz" in str(err.value)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        read_idx(tmp_path)


def test_multi_member_gzip_is_one_stream(tmp_path):
    """`cat a.gz b.gz` is a valid gzip file: the payload may span members."""
    raw = bytes([0, 0, 0x08, 1, 0, 0, 0, 6]) + bytes(range(6))
    path = tmp_path / "m.gz"
    path.write_bytes(gzip.compress(raw[:10]) + gzip.compress(raw[10:]))
    np.testing.assert_array_equal(read_idx(path), np.arange(6, dtype=np.uint8))


def test_declared_size_beyond_what_the_gzip_can_hold(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 2, 0, 1, 0, 0, 0, 1, 0, 0]) + bytes(100)))
    with pytest.raises(DataError, match=r"declares dims \(65536, 65536\) \(4\.0 GB\) but a gzip file "
                                        r"of \d+ bytes holds at most .*; the header is corrupt"):
        read_idx(path)
