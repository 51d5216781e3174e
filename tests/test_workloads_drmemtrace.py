"""The drmemtrace reader on DynamoRIO's real AArch64 sample (tests/data/drmemtrace, BSD
licence in License.txt) against a slow struct-per-record reference decoder."""

from __future__ import annotations

import re
import struct
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from workloads import FETCH, READ, WRITE, DrMemTraceSpec, TraceError
from workloads.drmemtrace import find_thread_files, iter_thread

SAMPLE = Path(__file__).parent / "data" / "drmemtrace" / "threadsig.aarch64"
TRACE_DIR = SAMPLE / "drmemtrace.threadsig.2444839.4049.dir" / "trace"

# trace_type_t values from DynamoRIO clients/drcachesim/common/trace_entry.h
REF_READ, REF_WRITE = 0, 1
REF_FETCH = {10, 11, 12, 13, 14, 15, 16, 30, 31, 48, 49}  # INSTR and its variants


def slow_decode(path: Path) -> tuple[list[int], list[int], list[int]]:
    """Reference: every record with struct, in chunk order. Returns (types, addrs, tids)."""
    types, addrs, tids = [], [], []
    with zipfile.ZipFile(path) as z:
        names = sorted((n for n in z.namelist() if n.startswith("chunk.")),
                       key=lambda n: int(n.split(".")[1]))
        for name in names:
            data = z.read(name)
            assert len(data) % 12 == 0
            for off in range(0, len(data), 12):
                typ, _size, addr = struct.unpack_from("<HHQ", data, off)
                types.append(typ)
                addrs.append(addr)
                if typ == 22:
                    tids.append(addr)
    return types, addrs, tids


def reference_accesses(types, addrs, instructions):
    out_a, out_k = [], []
    for t, a in zip(types, addrs):
        if t == REF_READ:
            out_a.append(a)
            out_k.append(READ)
        elif t == REF_WRITE:
            out_a.append(a)
            out_k.append(WRITE)
        elif instructions and t in REF_FETCH:
            out_a.append(a)
            out_k.append(FETCH)
    return out_a, out_k


@pytest.fixture(scope="module")
def reference():
    """{tid: (types, addrs)} for every thread file, decoded slowly once."""
    ref = {}
    for p in sorted(TRACE_DIR.glob("*.trace.zip")):
        types, addrs, tids = slow_decode(p)
        assert len(tids) == 1
        ref[tids[0]] = (types, addrs)
    return ref


def test_sample_has_21_threads_sorted_by_tid():
    threads = find_thread_files(SAMPLE)
    assert len(threads) == 21
    tids = [t.tid for t in threads]
    assert tids == sorted(tids)
    for t in threads:  # the tid in the record agrees with the file name
        assert re.match(rf"drmemtrace\.threadsig\.{t.tid}\.\d+\.trace\.zip$", t.path.name)


@pytest.mark.parametrize("where", [SAMPLE, TRACE_DIR.parent, TRACE_DIR])
def test_directory_may_be_the_trace_dir_or_its_parents(where):
    assert [t.path for t in find_thread_files(where)] == sorted(
        TRACE_DIR.glob("*.trace.zip"), key=lambda p: int(p.name.split(".")[2]))


@pytest.mark.parametrize("instructions", [False, True])
def test_every_thread_matches_the_slow_decoder(reference, instructions):
    streams = DrMemTraceSpec(path=str(SAMPLE), instructions=instructions).build(21, 0, 1, 1 << 16)
    for stream, tid in zip(streams, sorted(reference)):
        addr, kind = stream.collect()
        ref_a, ref_k = reference_accesses(*reference[tid], instructions)
        assert len(addr) == len(ref_a), tid
        np.testing.assert_array_equal(addr, np.array(ref_a, dtype=np.uint64))
        np.testing.assert_array_equal(kind, np.array(ref_k, dtype=np.uint8))


def test_totals_match_dynamorio_basic_counts(reference):
    """The sample's README quotes basic_counts: 12050661 fetched instructions, 210261 loads,
    2607283 stores, 39 prefetches (skipped here)."""
    counts = Counter()
    for stream in DrMemTraceSpec(path=str(SAMPLE), instructions=True).build(21, 0, 1):
        for _, kind in stream:
            counts.update(dict(zip(*np.unique(kind, return_counts=True))))
    assert counts[FETCH] == 12_050_661
    assert counts[READ] == 210_261
    assert counts[WRITE] == 2_607_283
    types = Counter()
    for t, _ in reference.values():
        types.update(t)
    assert sum(types[t] for t in range(2, 10)) == 39


def test_fewer_vcpus_take_the_first_threads_and_limit_applies(reference):
    streams = DrMemTraceSpec(path=str(SAMPLE), limit=500).build(2, 0, 1, 128)
    assert len(streams) == 2
    for stream, tid in zip(streams, sorted(reference)[:2]):
        chunks = list(stream)
        assert [len(c[0]) for c in chunks] == [128, 128, 128, 116]
        ref_a, _ = reference_accesses(*reference[tid], False)
        np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), ref_a[:500])


def test_more_vcpus_than_threads_is_a_trace_error():
    with pytest.raises(TraceError, match="22 vCPUs but the trace has only 21 threads") as e:
        DrMemTraceSpec(path=str(SAMPLE)).build(22, 0, 1)
    assert e.value.path == str(SAMPLE)


def test_small_read_blocks_and_multiple_chunks_give_the_same_records(tmp_path, reference):
    """Split the main thread's records over three chunk members, read 12-byte-unaligned blocks."""
    src = sorted(TRACE_DIR.glob("*.trace.zip"))[0]
    with zipfile.ZipFile(src) as z:
        data = z.read("chunk.0000")
    n = len(data) // 12
    cuts = [0, (n // 3) * 12, (2 * n // 3) * 12, len(data)]
    dst = tmp_path / "trace" / src.name
    dst.parent.mkdir()
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for i in (2, 0, 1):  # written out of order: the reader sorts chunk.NNNN numerically
            z.writestr(f"chunk.{i:04d}", data[cuts[i]:cuts[i + 1]])
    (thread,) = find_thread_files(tmp_path)
    assert thread.members == ("chunk.0000", "chunk.0001", "chunk.0002")
    parts = list(iter_thread(thread, instructions=True, block=1000))  # 1000 % 12 != 0
    addr = np.concatenate([p[0] for p in parts])
    ref_a, _ = reference_accesses(*reference[thread.tid], True)
    np.testing.assert_array_equal(addr, ref_a)
