"""Stream re-chunking: exact chunk sizes, limits, no empty chunks, dtypes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import Stream
from workloads.stream import rebatch


def _pieces(lengths):
    start = 0
    for n in lengths:
        yield np.arange(start, start + n, dtype=np.uint64), (np.arange(start, start + n) % 3
                                                             ).astype(np.uint8)
        start += n


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 50), max_size=20), chunk=st.integers(1, 40),
       limit=st.one_of(st.none(), st.integers(1, 600)))
def test_rebatch_cuts_exact_chunks_and_honours_limit(lengths, chunk, limit):
    total = sum(lengths)
    expected = total if limit is None else min(total, limit)
    out = list(rebatch(_pieces(lengths), chunk, limit))
    sizes = [len(a) for a, _ in out]
    assert sum(sizes) == expected
    assert all(s == chunk for s in sizes[:-1])
    assert all(0 < s <= chunk for s in sizes)
    if out:
        a = np.concatenate([x[0] for x in out])
        k = np.concatenate([x[1] for x in out])
        assert a.tolist() == list(range(expected))
        assert k.tolist() == [i % 3 for i in range(expected)]
        for x, y in out:
            assert x.dtype == np.uint64 and y.dtype == np.uint8
            assert x.flags.c_contiguous and y.flags.c_contiguous


def test_limit_stops_reading_the_source():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield np.zeros(10, np.uint64), np.zeros(10, np.uint8)

    s = Stream(source(), chunk=7, limit=25)
    assert [len(a) for a, _ in s] == [7, 7, 7, 4]
    assert len(pulled) == 3


def test_stream_total_is_capped_by_limit_and_collect_of_nothing():
    s = Stream(iter(()), chunk=4, total=10, limit=3)
    assert s.total == 3
    a, k = s.collect()
    assert a.dtype == np.uint64 and k.dtype == np.uint8 and len(a) == 0
