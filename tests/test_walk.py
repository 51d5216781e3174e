"""simulator.mmu.walk: the hardware stage-2 walk and its walk cache, against naive.hw_walk."""

from __future__ import annotations

import naive as N
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.hyp.pgtable import PageTableMemory, Stage2, translate
from simulator.mmu.walk import (
    W_ACCESS_FLAG,
    W_OK,
    W_TRANSLATION,
    WO_LEVEL,
    WO_PTE,
    WO_REFS,
    WO_SIZE,
    WO_STATUS,
    WO_WC_HIT,
    WalkCache,
    hw_walk,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
STATUS = {W_OK: N.W_OK, W_TRANSLATION: N.W_TRANSLATION, W_ACCESS_FLAG: N.W_ACCESS_FLAG}
GEOMETRIES = [(12, 32), (12, 40), (12, 44), (14, 38), (14, 42), (16, 44), (16, 48)]


def stage2(page_shift=12, ipa_bits=40, base_pa=0x4000_0000):
    return Stage2(PageTableMemory(page_shift, base_pa), Geometry(page_shift, ipa_bits))


def reference_walk(s2: Stage2, ipa: int, wc=None, vmid=None) -> N.WalkResult:
    g = s2.geom
    return N.hw_walk(lambda r, i: int(s2.mem.tables[r, i]), s2.mem.base_pa, g.page_shift,
                     s2.root, g.start_level, g.ipa_bits, ipa, wc, s2.vmid if vmid is None else vmid)


def sim_walk(s2: Stage2, ipa: int, wc: WalkCache, vmid: int, now: int) -> N.WalkResult:
    """The kernel's hw_walk with a walk cache, as a naive.WalkResult."""
    g = s2.geom
    out = np.zeros(8, np.int64)
    hw_walk(np.uint64(ipa), vmid, s2.mem.tables, s2.mem.base_pa, g.page_shift, s2.root,
            g.start_level, g.ipa_bits, wc.tag, wc.row, wc.stamp, now, out)
    st_ = STATUS[int(out[WO_STATUS])]
    return N.WalkResult(st_, int(out[WO_LEVEL]), int(out[WO_PTE]) & N.MASK64, int(out[WO_REFS]),
                        int(out[WO_WC_HIT]), int(out[WO_SIZE]) if st_ != N.W_TRANSLATION else 0)


def wc_contents(wc: WalkCache):
    out = []
    for lv in range(4):
        live = sorted((i for i in range(wc.entries_per_level) if wc.tag[lv, i]),
                      key=lambda i: int(wc.stamp[lv, i]))
        out.append([((int(wc.tag[lv, i]) - 1) >> 48, (int(wc.tag[lv, i]) - 1) & ((1 << 48) - 1),
                     int(wc.row[lv, i])) for i in live])
    return out


# ==========================================================================================
# Random stage-2s


@st.composite
def built_stage2s(draw):
    """A stage-2 with blocks, pages, owner annotations, leaves without AF, nT blocks and, now
    and then, an entry locked for break-before-make; plus IPAs to translate."""
    ps, ipa_bits = draw(st.sampled_from(GEOMETRIES))
    page = 1 << ps
    l2 = N.granule_size(2, ps)
    s2 = stage2(ps, ipa_bits, base_pa=draw(st.sampled_from([0x4000_0000, 1 << 49 if ps == 16
                                                            else 1 << 44])))
    window = 4 * l2
    hot = []
    for _ in range(draw(st.integers(0, 8))):
        a = draw(st.integers(0, 3)) * l2 + draw(st.sampled_from([0, 0, 1, 7])) * page
        hot.append(a)
        kind = draw(st.sampled_from(["block", "pages", "owner", "unmap"]))
        attr = D.prot_attr(draw(st.sampled_from([D.PROT_RWX, D.PROT_R, D.PROT_RW,
                                                 D.PROT_DEVICE | D.PROT_RW])))
        if draw(st.integers(0, 4)) == 0:
            attr &= ~int(D.AF)
        if kind == "block":
            s2.map(a - a % l2, l2, (a - a % l2) + l2 * draw(st.integers(0, 8)),
                   attr=attr | (int(D.NT) if draw(st.booleans()) else 0))
        elif kind == "pages":
            s2.map(a, draw(st.integers(1, 4)) * page, 0x10_0000_0000 + a, attr=attr)
        elif kind == "owner":
            s2.set_owner(a, page, draw(st.integers(1, 3)))
        else:
            s2.unmap(a, draw(st.sampled_from([page, l2])))
    if draw(st.integers(0, 3)) == 0:
        tables = list(s2.iter_tables())
        row, level, _ = draw(st.sampled_from(tables))
        live = np.nonzero(s2.mem.tables[row])[0].tolist()
        if live:
            s2.mem.tables[row, draw(st.sampled_from(live))] = D.LOCKED
    ipas = draw(st.lists(st.one_of(
        st.sampled_from(hot or [0]),
        st.integers(0, window // page - 1).map(lambda i: i * page),
        st.integers(0, window - 1),
        st.just((1 << ipa_bits) + page),
    ), min_size=1, max_size=30))
    return s2, ipas


@settings(settings.get_profile("mmu"), max_examples=80)
@given(built_stage2s())
def test_walk_matches_the_recursive_reference(case):
    s2, ipas = case
    for ipa in ipas:
        want = reference_walk(s2, ipa)
        assert translate(s2, ipa) == (
            {N.W_OK: W_OK, N.W_TRANSLATION: W_TRANSLATION, N.W_ACCESS_FLAG: W_ACCESS_FLAG}[
                want.status], want.level, want.pte, want.refs), hex(ipa)


@settings(settings.get_profile("mmu"), max_examples=80)
@given(built_stage2s(), st.integers(1, 3), st.data())
def test_walk_cache_matches_the_lru_reference(case, entries, data):
    s2, ipas = case
    wc = WalkCache(entries)
    ref = N.RefWalkCache(entries, s2.geom.page_shift)
    for now, ipa in enumerate(ipas * 2, start=1):
        vmid = data.draw(st.sampled_from([1, 1, 1, 2]))
        got = sim_walk(s2, ipa, wc, vmid, now)
        want = reference_walk(s2, ipa, ref, vmid)
        if want.status == N.W_TRANSLATION:
            want.shift = 0
        assert got == want, hex(ipa)
        assert wc_contents(wc) == ref.contents()
        if data.draw(st.integers(0, 9)) == 0:
            v = data.draw(st.sampled_from([-1, 1, 2]))
            lo = data.draw(st.integers(0, 3)) * N.granule_size(2, s2.geom.page_shift)
            hi = data.draw(st.sampled_from([0, lo + PAGE, lo + N.granule_size(1, 12)]))
            assert wc.invalidate(v, lo, hi, s2.geom.page_shift) == ref.invalidate(v, lo, hi)
            assert wc_contents(wc) == ref.contents()


# ==========================================================================================
# Hand-checkable walks


@pytest.mark.parametrize("ipa_bits, size, refs, level", [
    (40, PAGE, 3, 3),
    (44, PAGE, 4, 3),
    (32, PAGE, 2, 3),
    (40, 2 * MiB, 2, 2),
    (40, GiB, 1, 1),
    (44, GiB, 2, 1),
])
def test_walk_reads_one_descriptor_per_level(ipa_bits, size, refs, level):
    s2 = stage2(12, ipa_bits)
    s2.map(GiB, size, 2 * GiB)
    status, lvl, pte, n = translate(s2, GiB)
    assert (status, lvl, n) == (W_OK, level, refs)
    assert pte == D.encode_leaf(2 * GiB, level, 12)


def test_locked_entry_reads_as_a_translation_fault():
    s2 = stage2()
    s2.map(0, PAGE, 0x8000_0000)
    s2.mem.tables[3, 0] = D.LOCKED  # break-before-make in progress on the page
    assert translate(s2, 0) == (W_TRANSLATION, 3, int(D.LOCKED), 3)
    s2.mem.tables[2, 0] = D.LOCKED  # ... on the table entry above it
    assert translate(s2, 0) == (W_TRANSLATION, 2, int(D.LOCKED), 2)


def test_unmapped_address_faults_at_the_level_of_the_empty_entry():
    s2 = stage2()
    s2.map(0, PAGE, 0x8000_0000)
    assert translate(s2, PAGE) == (W_TRANSLATION, 3, 0, 3)
    assert translate(s2, 2 * MiB) == (W_TRANSLATION, 2, 0, 2)
    assert translate(s2, GiB) == (W_TRANSLATION, 1, 0, 1)


def test_owner_annotation_faults_and_reports_the_descriptor():
    s2 = stage2()
    s2.set_owner(0, PAGE, 1)
    assert translate(s2, 0) == (W_TRANSLATION, 3, 1 << 2, 3)


def test_leaf_without_access_flag_is_an_access_flag_fault():
    s2 = stage2()
    attr = D.prot_attr(D.PROT_RW) & ~int(D.AF)
    s2.map(0, 2 * MiB, 0x8000_0000, attr=attr)
    status, level, pte, refs = translate(s2, PAGE)
    assert (status, level, refs) == (W_ACCESS_FLAG, 2, 2)
    assert not pte & int(D.AF)


def test_ipa_beyond_the_ipa_size_faults_without_reading_memory():
    s2 = stage2(12, 40)
    assert translate(s2, 1 << 40) == (W_TRANSLATION, 1, 0, 0)


def test_reserved_level_3_encoding_is_a_translation_fault():
    s2 = stage2()
    s2.map(0, PAGE, 0x8000_0000)
    s2.mem.tables[3, 0] = int(s2.mem.tables[3, 0]) & ~int(D.TYPE)  # type 0 at level 3
    assert translate(s2, 0)[:2] == (W_TRANSLATION, 3)


@pytest.mark.parametrize("page_shift, ipa_bits, level", [(12, 44, 0), (14, 42, 1), (16, 48, 1)])
def test_block_above_the_smallest_block_level_is_a_translation_fault(page_shift, ipa_bits,
                                                                     level):
    s2 = stage2(page_shift, ipa_bits)
    assert s2.geom.start_level == level
    s2.mem.tables[s2.root, 0] = D.encode_leaf(0, level, page_shift)  # a block where none can be
    assert translate(s2, 0) == (W_TRANSLATION, level, D.encode_leaf(0, level, page_shift), 1)


def test_walk_cache_lets_the_walk_start_below_the_deepest_hit():
    s2 = stage2(12, 44)  # four levels
    s2.map(0, 4 * MiB, 0x8000_0000, force_pte=True)
    s2.map(1 << 40, PAGE, 0x9000_0000)
    wc = WalkCache(4)
    walks = [sim_walk(s2, ipa, wc, 1, now) for now, ipa in enumerate(
        [0, PAGE, 2 * MiB, 1 << 40], start=1)]
    assert [(w.refs, w.wc_level) for w in walks] == [(4, -1), (1, 2), (2, 1), (4, -1)]
    # another VMID shares nothing
    assert sim_walk(s2, 0, wc, 2, 5).wc_level == -1


def test_walk_cache_evicts_the_least_recently_used_table():
    s2 = stage2(12, 40)
    a, b, c = 0, 2 * MiB, 4 * MiB
    for x in (a, b, c):
        s2.map(x, PAGE, 0x8000_0000 + x)
    wc = WalkCache(2)
    walks = [sim_walk(s2, ipa, wc, 1, now) for now, ipa in enumerate([a, b, a, c, b], start=1)]
    # C evicts B, the least recently used level-2 entry, so B misses at level 2 again
    assert [(w.refs, w.wc_level) for w in walks] == [(3, -1), (2, 1), (1, 2), (2, 1), (2, 1)]


def test_walk_cache_invalidation_by_vmid_and_range():
    s2 = stage2(12, 40)
    s2.map(0, PAGE, 0x8000_0000)
    s2.map(GiB, PAGE, 0x9000_0000)
    wc = WalkCache(4)
    for now, (ipa, vmid) in enumerate([(0, 1), (GiB, 1), (0, 2)], start=1):
        sim_walk(s2, ipa, wc, vmid, now)
    assert wc.invalidate(1, GiB, GiB + PAGE, 12) == 2  # VMID 1's level-1 and level-2 entries
    assert wc.invalidate(-1, 0, PAGE, 12) == 4  # both VMIDs' entries for IPA 0
    assert wc.invalidate(-1, 0, 0, 12) == 0
