"""The vectorised lackey reader against a slow line-by-line reference, on a real valgrind trace
(tests/data/touch_pages.lackey.gz, made by tests/data/make_traces.sh) and hand-made snippets."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import FETCH, READ, WRITE, LackeySpec, TraceError
from workloads.lackey import iter_lackey, parse_lackey

DATA = Path(__file__).parent / "data"
REAL = DATA / "touch_pages.lackey.gz"
TOUCHED_PAGES = 64  # N used by make_traces.sh

_LINE = re.compile(r"^(I  | L | S | M )([0-9a-fA-F]{1,16}),([0-9]+)$")
_KIND_OF = {"I  ": FETCH, " L ": READ, " S ": WRITE, " M ": WRITE}


def slow_parse(text: str, instructions: bool) -> tuple[list[int], list[int], list[int]]:
    """Obviously correct reference: one regex per line. Returns (addrs, kinds, sizes)."""
    addrs, kinds, sizes = [], [], []
    for line in text.split("\n"):
        m = _LINE.match(line)
        if m is None:
            continue
        kind = _KIND_OF[m.group(1)]
        if kind == FETCH and not instructions:
            continue
        addrs.append(int(m.group(2), 16))
        kinds.append(kind)
        sizes.append(int(m.group(3)))
    return addrs, kinds, sizes


def read_all(path: Path, instructions: bool, block_size: int | None = None):
    kw = {} if block_size is None else {"block_size": block_size}
    parts = list(iter_lackey(path, instructions=instructions, **kw))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.fixture(scope="module")
def real_text() -> str:
    return gzip.decompress(REAL.read_bytes()).decode()


@pytest.fixture(scope="module")
def real_plain(tmp_path_factory, real_text) -> Path:
    p = tmp_path_factory.mktemp("lackey") / "touch_pages.lackey"
    p.write_text(real_text)
    return p


# --- the real trace ---------------------------------------------------------------------------

def test_real_trace_line_counts_match_the_reference(real_text):
    counts = {k: 0 for k in "ILSM"}
    for line in real_text.split("\n"):
        m = _LINE.match(line)
        if m:
            counts[m.group(1).strip()] += 1
    addr, kind = read_all(REAL, instructions=True)
    assert (kind == FETCH).sum() == counts["I"]
    assert (kind == READ).sum() == counts["L"]
    assert (kind == WRITE).sum() == counts["S"] + counts["M"]
    assert counts["I"] > 10_000 and counts["L"] > 1000 and counts["S"] > 500 and counts["M"] > 0


@pytest.mark.parametrize("instructions", [True, False])
@pytest.mark.parametrize("which", ["gz", "plain"])
def test_real_trace_matches_slow_parser_element_by_element(real_text, real_plain, which,
                                                           instructions):
    path = REAL if which == "gz" else real_plain
    ref_addr, ref_kind, _ = slow_parse(real_text, instructions)
    addr, kind = read_all(path, instructions)
    assert addr.dtype == np.uint64 and kind.dtype == np.uint8
    np.testing.assert_array_equal(addr, np.array(ref_addr, dtype=np.uint64))
    np.testing.assert_array_equal(kind, np.array(ref_kind, dtype=np.uint8))


@pytest.mark.parametrize("block_size", [1, 7, 4096, 100_003])
def test_real_trace_is_the_same_whatever_the_block_size(real_plain, block_size):
    ref = read_all(real_plain, True)
    if block_size == 1:  # one byte a read: exercise every split, on a prefix to stay quick
        text = real_plain.read_bytes()[:3000]
        small = real_plain.parent / "prefix.lackey"
        small.write_bytes(text)
        a, k = read_all(small, True, block_size=1)
        ra, rk, _ = slow_parse(text.decode(), True)
        assert a.tolist() == ra and k.tolist() == rk
        return
    a, k = read_all(real_plain, True, block_size=block_size)
    np.testing.assert_array_equal(a, ref[0])
    np.testing.assert_array_equal(k, ref[1])


def test_real_trace_holds_the_touch_loop(real_text):
    """touch_pages writes one byte in each of 64 pages, then reads them back: both runs of
    one-byte accesses 4 KiB apart must be in the trace, same addresses, stores first."""
    addrs, kinds, sizes = slow_parse(real_text, instructions=False)
    a = np.array(addrs, dtype=np.int64)
    k = np.array(kinds)
    one = np.array(sizes) == 1

    def runs(kind: int) -> list[int]:
        idx = np.flatnonzero((k == kind) & one)
        d = np.diff(a[idx])
        starts = [i for i in range(len(d) - TOUCHED_PAGES + 2)
                  if np.all(d[i:i + TOUCHED_PAGES - 1] == 4096)]
        return [int(a[idx[i]]) for i in starts]

    stores, loads = runs(WRITE), runs(READ)
    assert stores and loads
    assert stores[0] in loads
    reader_addr, reader_kind = read_all(REAL, instructions=False)
    pages = reader_addr[reader_kind == WRITE]
    base = stores[0]
    assert np.isin(np.arange(TOUCHED_PAGES) * 4096 + base, pages).all()


def test_real_trace_through_the_spec_with_limit_and_vcpu_offset():
    streams = LackeySpec(path=str(REAL), vcpu_offset="1TiB", limit=1000).build(2, 0, 1 << 30, 256)
    (a0, k0), (a1, k1) = streams[0].collect(), streams[1].collect()
    assert len(a0) == len(a1) == 1000
    assert streams[0].total is None
    np.testing.assert_array_equal(a1, a0 + np.uint64(1 << 40))
    np.testing.assert_array_equal(k0, k1)
    full, _ = read_all(REAL, False)
    np.testing.assert_array_equal(a0, full[:1000])


# --- hand-written snippets --------------------------------------------------------------------

SNIPPET = (
    b"==4242== Lackey, an example Valgrind tool\n"
    b"==4242== Command: ./a.out\n"
    b"\n"
    b"I  04017a40,3\n"
    b" L 1ffefffd58,8\n"
    b" S 04a30010,4\n"
    b"\n"
    b" M 1ffefffd60,4\n"
    b"I  0,1\n"
    b" L ABCDEF0123456789,16\n"
    b" L ffffffffffffffff,8\n"
    b"==4242== L 1234,8 (a message, not an access)\n"
    b" L 12345678901234567,8\n"     # 17 digits: not an access
    b" L ,8\n"                      # no digits
    b" L 12x4,8\n"                  # not hex
    b" L 1234,\n"                   # no size
    b" L 1234\n"                    # no comma
    b"I 1234,4\n"                   # one space after I
    b" X 1234,4\n"                  # unknown kind
    b"L 1234,4\n"                   # no leading space
    b"  L 1234,4\n"                 # two leading spaces
    b" S 99,16"                     # final line without newline
)
SNIPPET_DATA = ([0x1FFEFFFD58, 0x04A30010, 0x1FFEFFFD60, 0xABCDEF0123456789, 0xFFFFFFFFFFFFFFFF,
                 0x99],
                [READ, WRITE, WRITE, READ, READ, WRITE])
SNIPPET_ALL = ([0x04017A40, 0x1FFEFFFD58, 0x04A30010, 0x1FFEFFFD60, 0, 0xABCDEF0123456789,
                0xFFFFFFFFFFFFFFFF, 0x99],
               [FETCH, READ, WRITE, WRITE, FETCH, READ, READ, WRITE])


@pytest.mark.parametrize("instructions, expected", [(False, SNIPPET_DATA), (True, SNIPPET_ALL)])
def test_snippet_gives_exact_arrays(instructions, expected):
    addr, kind = parse_lackey(SNIPPET, instructions)
    assert addr.tolist() == expected[0]
    assert kind.tolist() == expected[1]
    assert addr.dtype == np.uint64 and kind.dtype == np.uint8


@pytest.mark.parametrize("block_size", list(range(1, 40)) + [64, 1000])
def test_snippet_split_at_every_block_boundary(tmp_path, block_size):
    p = tmp_path / "snippet.lackey"
    p.write_bytes(SNIPPET)
    addr, kind = read_all(p, True, block_size=block_size)
    assert addr.tolist() == SNIPPET_ALL[0]
    assert kind.tolist() == SNIPPET_ALL[1]


def test_line_split_across_blocks_is_carried(tmp_path):
    text = b" L 0123456789abcdef,8\n S 42,1\n"
    p = tmp_path / "t.lackey"
    p.write_bytes(text)
    addr, kind = read_all(p, False, block_size=10)  # first line split at byte 10
    assert addr.tolist() == [0x0123456789ABCDEF, 0x42]
    assert kind.tolist() == [READ, WRITE]


def test_gzip_is_detected_by_magic_not_by_name(tmp_path):
    p = tmp_path / "trace.txt"  # gzip content, misleading name
    p.write_bytes(gzip.compress(SNIPPET))
    q = tmp_path / "plain.gz"   # plain content, misleading name
    q.write_bytes(SNIPPET)
    for path in (p, q):
        addr, kind = read_all(path, False)
        assert addr.tolist() == SNIPPET_DATA[0]


def test_windows_of_valgrind_noise_only_give_no_chunks():
    addr, kind = parse_lackey(b"==1== hello\n\n==1== bye\n", True)
    assert len(addr) == 0 and len(kind) == 0


# --- property: random mixes of access and noise lines -----------------------------------------

_prefix = st.sampled_from(["I  ", " L ", " S ", " M "])
_access = st.tuples(_prefix, st.integers(0, (1 << 64) - 1), st.integers(0, 16),
                    st.integers(1, 4096), st.booleans())
_noise = st.one_of(
    st.just(""),
    st.text(st.characters(codec="ascii", exclude_characters="\n\r"), max_size=40).map(
        lambda s: "==77== " + s),
    st.sampled_from([" L 12x4,8", " L ,8", "I 1234,4", " X 1,1", " L 1234", " L 1234,",
                     " L 12345678901234567,8", "  L 1,1", "L 1,1", "Ifoo", " L", "I "]),
)
_line = st.one_of(_access, _noise)


def _render(item) -> str:
    if isinstance(item, str):
        return item
    prefix, addr, width, size, upper = item
    digits = f"{addr:0{width}x}"
    return f"{prefix}{digits.upper() if upper else digits},{size}"


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(_line, max_size=60), final_newline=st.booleans(),
       block=st.integers(1, 64), instructions=st.booleans())
def test_random_lines_match_slow_parser(tmp_path_factory, lines, final_newline, block,
                                        instructions):
    text = "\n".join(_render(x) for x in lines) + ("\n" if final_newline else "")
    ref_addr, ref_kind, _ = slow_parse(text, instructions)
    addr, kind = parse_lackey(text.encode(), instructions)
    assert addr.tolist() == ref_addr
    assert kind.tolist() == ref_kind
    if ref_addr:  # through a file, in tiny blocks
        p = tmp_path_factory.mktemp("prop") / "t.lackey"
        p.write_text(text)
        a, k = read_all(p, instructions, block_size=block)
        assert a.tolist() == ref_addr and k.tolist() == ref_kind


def test_no_access_line_in_a_whole_file_is_a_trace_error(tmp_path):
    p = tmp_path / "quiet.lackey"
    p.write_bytes(b"==1== nothing here\n" * 10)
    with pytest.raises(TraceError, match="no data access lines"):
        list(iter_lackey(p))
