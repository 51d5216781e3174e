"""simulator.mmu.tlb: set-associative LRU TLB levels against the list-and-dict reference.

Semantics (tlb.py's module docstring): a lookup probes every page size the level holds; a
level stores a translation splintered to the largest size it holds that is not larger (none if
it holds nothing that small); the victim is the first empty way, else the least recently used;
an invalidation removes the entries of a VMID (or all) that overlap a range (or everything).
"""

from __future__ import annotations

import naive as N
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.mmu.tlb import TLBHierarchy, TLBLevelSpec

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
RW_PAGE = N.PERM_R | N.PERM_W | 3 << 4


def page_tables(page_shift):
    """A fixed translation per (vmid, ipa): the leaf level depends on the largest block that
    holds the address, the output address on the VMID, the permissions on the region."""
    levels = [1, 2, 3] if page_shift == 12 else [2, 3]
    top = N.granule_shift(levels[0], page_shift)

    def translate(ipa, vmid):
        region = ipa >> top
        level = levels[(region + vmid) % len(levels)]
        shift = N.granule_shift(level, page_shift)
        pa = N.align_down(ipa, 1 << shift) ^ (vmid << 40)
        perm = (region * 3 + vmid) % 8 | level << 4
        return shift, pa, perm

    return translate


@st.composite
def hierarchies(draw):
    ps = draw(st.sampled_from([12, 14, 16]))
    block_levels = [1, 2, 3] if ps == 12 else [2, 3]
    specs = []
    for i in range(draw(st.integers(1, 3))):
        specs.append((f"l{i}", draw(st.sampled_from([1, 2, 3, 4, 8])),
                      draw(st.sampled_from([1, 2, 4])), i,
                      tuple(sorted(draw(st.lists(st.sampled_from(block_levels), min_size=1,
                                                 unique=True))))))
    return ps, specs


@settings(settings.get_profile("mmu"), max_examples=100)
@given(hierarchies(), st.data())
def test_random_access_streams_match_the_lru_reference(tlb_pair, hierarchy, data):
    ps, specs = hierarchy
    pair = tlb_pair(specs, ps)
    translate = page_tables(ps)
    big = N.granule_size(1 if ps == 12 else 2, ps)
    l2 = N.granule_size(2, ps)
    page = 1 << ps
    ipas = st.builds(lambda r, s, p, o: r * big + s * l2 + p * page + o,
                     st.integers(0, 3), st.integers(0, 1), st.integers(0, 5),
                     st.integers(0, page - 1))
    for _ in range(data.draw(st.integers(1, 80))):
        if data.draw(st.integers(0, 7)):
            pair.access(data.draw(ipas), data.draw(st.sampled_from([1, 1, 2, 3])), translate)
        else:
            lo = data.draw(ipas) & ~(page - 1)
            hi = data.draw(st.sampled_from([0, lo + page, lo + l2, lo + big, lo + 3 * big]))
            pair.invalidate(data.draw(st.sampled_from([-1, 1, 2])), lo, hi)


# ------------------------------------------------------------------------------------------
# Hand-checkable traces


@pytest.mark.nojit
def test_lru_evicts_the_least_recently_used_way(tlb_pair):
    pair = tlb_pair([("L1", 1, 2, 1, (3,))], 12)
    a, b, c = 0x1000, 0x2000, 0x3000
    page = lambda ipa, vmid: (12, 0x8000_0000 + ipa, RW_PAGE)  # noqa: E731
    hits = [pair.access(x, 1, page) for x in (a, b, a, c, b, a)]
    # A B A: A hit; C evicts B (LRU); B evicts A; A misses
    assert hits == [-1, -1, 0, -1, -1, -1]
    assert [e[2] for e in pair.ref.contents()[0][0]] == [0x2, 0x1]


def test_an_empty_way_is_filled_before_anything_is_evicted(tlb_pair):
    pair = tlb_pair([("L1", 1, 2, 1, (3,))], 12)
    page = lambda ipa, vmid: (12, ipa, RW_PAGE)  # noqa: E731
    pair.access(0x1000, 1, page)
    pair.access(0x2000, 1, page)
    assert pair.invalidate(1, 0x1000, 0x2000) == 1
    pair.access(0x3000, 1, page)
    assert pair.access(0x2000, 1, page) == 0  # still there


def test_a_hit_in_the_second_level_fills_the_first(tlb_pair):
    pair = tlb_pair([("L1", 1, 1, 1, (3,)), ("L2", 4, 2, 5, (2, 3))], 12)
    block = lambda ipa, vmid: (21, 0x4000_0000, N.PERM_R | 2 << 4)  # noqa: E731
    assert pair.access(0x1000, 1, block) == -1
    assert pair.access(0x5000, 1, block) == 1  # another page of the 2M block: L2 holds it
    assert pair.access(0x5000, 1, block) == 0  # now splintered into L1
    assert pair.ref.contents()[0][0] == [(1, 12, 0x5, 0x4000_5000, N.PERM_R | 2 << 4)]


def test_a_block_is_splintered_into_the_largest_size_the_level_holds(tlb_pair):
    pair = tlb_pair([("L1", 4, 2, 1, (3,))], 12)
    pair.fill(0, 0x20_3456, 1, 21, 0x8000_0000, RW_PAGE)
    # a 4K entry for the page that was accessed, its output address offset into the block
    assert pair.ref.contents()[0][0x203 % 4] == [(1, 12, 0x203, 0x8000_3000, RW_PAGE)]
    assert pair.lookup(0, 0x20_3000, 1) == (12, 0x8000_3000, RW_PAGE)
    assert pair.lookup(0, 0x20_4000, 1) is None


def test_a_level_holding_no_size_that_small_does_not_store_it(tlb_pair):
    pair = tlb_pair([("L1", 4, 2, 1, (2,))], 12)
    assert pair.fill(0, 0x1000, 1, 12, 0x8000_0000, RW_PAGE) == -1
    assert pair.fill(0, GiB + 5 * MiB, 1, 30, 0x8000_0000, RW_PAGE) >= 0
    # a 1G leaf, splintered to the 2M that holds the address
    assert pair.ref.contents()[0][(GiB + 4 * MiB) >> 21 & 3] == [
        (1, 21, (GiB + 4 * MiB) >> 21, 0x8000_0000 + 4 * MiB, RW_PAGE)]


def test_lookup_probes_every_size_the_level_holds(tlb_pair):
    pair = tlb_pair([("L1", 2, 2, 1, (2, 3))], 12)
    pair.fill(0, 0x20_0000, 7, 21, 0x4000_0000, RW_PAGE)
    pair.fill(0, 0x40_1000, 7, 12, 0x5000_0000, RW_PAGE)
    assert pair.lookup(0, 0x3F_F000, 7) == (21, 0x4000_0000, RW_PAGE)
    assert pair.lookup(0, 0x40_1FFF, 7) == (12, 0x5000_0000, RW_PAGE)
    assert pair.lookup(0, 0x20_0000, 8) is None  # another VMID


def test_set_index_is_the_page_number_modulo_the_sets(tlb_pair):
    pair = tlb_pair([("L1", 3, 1, 1, (3,))], 12)
    page = lambda ipa, vmid: (12, ipa, RW_PAGE)  # noqa: E731
    pair.access(0x0000, 1, page)
    pair.access(0x1000, 1, page)
    pair.access(0x3000, 1, page)  # set 0 again: evicts page 0
    assert pair.access(0x1000, 1, page) == 0
    assert pair.access(0x0000, 1, page) == -1


def test_invalidation_removes_every_entry_overlapping_the_range(tlb_pair):
    pair = tlb_pair([("L1", 8, 4, 1, (2, 3))], 12)
    pair.fill(0, 0x20_0000, 1, 21, 0x4000_0000, RW_PAGE)  # the 2M block [2M, 4M)
    for p in (0x20_1000, 0x20_2000, 0x40_0000):
        pair.fill(0, p, 1, 12, p, RW_PAGE)
    pair.fill(0, 0x20_1000, 2, 12, 0x20_1000, RW_PAGE)  # another VMID
    assert pair.invalidate(1, 0x20_1000, 0x20_2000) == 2  # the block and one page
    assert pair.invalidate(-1, 0x20_1000, 0x20_2000) == 1  # VMID 2's page
    assert pair.invalidate(1, 0, 0) == 2  # everything of VMID 1


def test_flush_empties_every_level():
    t = TLBHierarchy([TLBLevelSpec("L1", 2, 2, 1, (3,)), TLBLevelSpec("L2", 4, 4, 5, (2, 3))],
                     12)
    t.key[:] = 0
    assert t.occupancy() == [4, 16]
    t.flush()
    assert t.occupancy() == [0, 0]


def test_a_hierarchy_needs_a_level():
    with pytest.raises(ValueError, match="^a TLB hierarchy needs at least one level$"):
        TLBHierarchy([], 12)
