"""The .npy reader: plain address arrays, structured (addr, write/kind) arrays, slicing,
vcpu_offset and limit."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import FETCH, READ, WRITE, NpySpec
from workloads.npyfile import iter_npy, open_npy


@pytest.fixture
def addrs():
    return np.random.default_rng(5).integers(0, 1 << 40, 10_000, dtype=np.uint64)


def test_plain_uint64_array_replays_as_reads(tmp_path, addrs):
    p = tmp_path / "a.npy"
    np.save(p, addrs)
    streams = NpySpec(path=str(p)).build(2, 0, 1, chunk=3000)
    for s in streams:
        assert s.total == 10_000
        chunks = list(s)
        assert [len(c[0]) for c in chunks] == [3000, 3000, 3000, 1000]
        a = np.concatenate([c[0] for c in chunks])
        np.testing.assert_array_equal(a, addrs)
        assert all((c[1] == READ).all() for c in chunks)


@pytest.mark.parametrize("dtype", ["<u4", ">u8", "u1"])
def test_other_unsigned_widths_and_byte_orders(tmp_path, dtype):
    p = tmp_path / "a.npy"
    vals = np.arange(100).astype(dtype)
    np.save(p, vals)
    ((a, k),) = [s.collect() for s in NpySpec(path=str(p)).build(1, 0, 1)]
    assert a.dtype == np.uint64 and a.tolist() == list(range(100))


@pytest.mark.parametrize("wtype", ["?", "u1", "i4"])
def test_structured_array_with_write_field(tmp_path, addrs, wtype):
    arr = np.zeros(len(addrs), dtype=[("addr", "<u8"), ("write", wtype)])
    arr["addr"] = addrs
    arr["write"] = (np.arange(len(addrs)) % 3 == 0)
    p = tmp_path / "s.npy"
    np.save(p, arr)
    ((a, k),) = [s.collect() for s in NpySpec(path=str(p)).build(1, 0, 1)]
    np.testing.assert_array_equal(a, addrs)
    np.testing.assert_array_equal(k, np.where(np.arange(len(addrs)) % 3 == 0, WRITE, READ))


def test_structured_array_with_kind_field_keeps_fetches(tmp_path):
    arr = np.zeros(6, dtype=[("addr", "<u8"), ("kind", "u1")])
    arr["addr"] = np.arange(6) * 64
    arr["kind"] = [READ, WRITE, FETCH, FETCH, READ, WRITE]
    p = tmp_path / "k.npy"
    np.save(p, arr)
    ((a, k),) = [s.collect() for s in NpySpec(path=str(p)).build(1, 0, 1)]
    assert k.tolist() == [READ, WRITE, FETCH, FETCH, READ, WRITE]


def test_vcpu_offset_and_limit(tmp_path, addrs):
    p = tmp_path / "a.npy"
    np.save(p, addrs)
    streams = NpySpec(path=str(p), vcpu_offset="1T", limit=2500).build(3, 0, 1, chunk=1000)
    got = [s.collect()[0] for s in streams]
    assert all(s.total == 2500 for s in streams)
    for v, a in enumerate(got):
        np.testing.assert_array_equal(a, addrs[:2500] + np.uint64(v << 40))


def test_the_file_is_memory_mapped_not_loaded(tmp_path, addrs):
    p = tmp_path / "a.npy"
    np.save(p, addrs)
    arr = open_npy(p)
    assert isinstance(arr, np.memmap)
    pieces = list(iter_npy(arr, p, block=4096))
    assert [len(x[0]) for x in pieces] == [4096, 4096, 1808]
