"""simulator.hyp.pgtable: the kernel's stage-2 walker against the reference of tests/naive.py.

Property tests drive random sequences of map / set_owner / unmap / split / get_leaf through the
numba Stage2 and naive.RefStage2 (written from Linux 6.12 pgtable.c) and compare, after every
step, every table row bit for bit, refcounts, the free stack, the operation reports and the
TLBIs issued (``stage2_pair`` in conftest.py), and the walker's visits and stores (this
module's ``stage2_pair``); hand-checkable tests pin the kernel's behaviour with exact numbers.
"""

from __future__ import annotations

import naive as N
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.hyp import pgtable as P
from simulator.hyp.pgtable import PageTableMemory, Stage2

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB

# (page_shift, ipa_bits): start levels 2/1/0 for 4K, concatenated pgds (4K 32: 4 pages,
# 16K 38: 4 pages, 64K 44: 4 pages), 3-level 16K and 64K.
GEOMETRIES = [(12, 32), (12, 40), (12, 44), (14, 36), (14, 38), (14, 42), (16, 40), (16, 44),
              (16, 48)]
PROTS = [D.PROT_RWX, D.PROT_RW, D.PROT_R, D.PROT_R | D.PROT_X, D.PROT_DEVICE | D.PROT_RW,
         D.PROT_NORMAL_NC | D.PROT_RW, 0]

# (set, clear) of stage2_update_leaf_attrs() callers: wrprotect, relax_perms (RW, X),
# mkyoung, mkold; and a software bit, nT
ATTR_CHANGES = [(0, int(D.S2AP_W)), (int(D.S2AP_R | D.S2AP_W), 0), (0, int(D.XN)),
                (int(D.AF), 0), (0, int(D.AF)), (int(D.SW0_SHARED_OWNED), 0), (int(D.NT), 0)]


# ==========================================================================================
# The pair compares the walker's visits and stores too: they price every fault and teardown


@pytest.fixture(scope="session")
def stage2_pair(stage2_pair):
    """conftest's pair, also holding ``visits`` and ``stores`` of every operation's report
    to the reference's (naive.RefReport says what counts as each)."""

    class CostedPair(stage2_pair):
        def _compare_reports(self, got: P.OpReport, want: N.RefReport) -> None:
            super()._compare_reports(got, want)
            g = {"visits": got.visits, "stores": got.stores, "puts": got.puts}
            w = {"visits": want.visits, "stores": want.stores, "puts": want.puts}
            assert g == w, self._where(f"walker work differs (simulator != kernel): {g} != {w}")

        def wrprotect(self, ipa, size):
            self.history.append(f"{self.sim.vmid}: wrprotect({ipa:#x}, {size:#x})")
            return self._compare(self.sim.wrprotect(ipa, size),
                                 self.ref.update_attrs(ipa, size, clear_bits=N.S2AP_W))

    return CostedPair


# ==========================================================================================
# Random scenarios


@st.composite
def scenarios(draw, rule, geometry=None):
    """A stage-2 configuration and a sequence of operations on a small window of IPA space
    (crossing a pgd-page boundary when the pgd is concatenated)."""
    ps, ipa_bits = geometry or draw(st.sampled_from(GEOMETRIES))
    page = 1 << ps
    l2 = N.granule_size(2, ps)  # 2M / 32M / 512M
    big = N.granule_size(N.min_block_level(ps), ps)  # 1G / 32M / 512M
    sl = N.start_level(ipa_bits, ps)
    pgd_span = 1 << N.granule_shift(sl - 1, ps)  # what one pgd page maps
    window = 4 * big
    crossings = [0]
    if N.pgd_pages(ipa_bits, ps) > 1 and pgd_span >= 2 * big:
        crossings.append(pgd_span - 2 * big)
    assert window <= 1 << ipa_bits
    base = draw(st.sampled_from(crossings))
    high_pa = 1 << 49 if ps == 16 else 0  # 64K: output addresses above 2^48 (bits 15:12)
    # A 1 GiB split at page granularity costs the reference 262k visits: 4K scenarios map
    # 1 GiB blocks only under a memory limit, where splits fall back to 2 MiB blocks.
    limit = draw(st.one_of(st.none(), st.integers(8, 48)))
    big_ok = not (ps == 12 and limit is None)
    config = dict(
        page_shift=ps,
        ipa_bits=ipa_bits,
        rule=rule,
        base_pa=draw(st.sampled_from([0x4000_0000, 1 << 40, high_pa or 0x8000_0000])),
        limit_pages=None if limit is None else N.pgd_pages(ipa_bits, ps) + limit,
        fwb=draw(st.booleans()),
        tlbi_range=draw(st.booleans()),
    )

    def addr():
        """Few distinct addresses, so that operations overlap: the start of one of four
        largest blocks, maybe of its second level-2 block, maybe a few pages in."""
        a = base + draw(st.integers(0, 3)) * big
        if l2 < big and draw(st.booleans()):
            a += l2
        if draw(st.booleans()):
            a += draw(st.integers(1, 3)) * page
        return a

    def size_(small_only=False):
        choices = [page, 2 * page, 5 * page, 64 * page]
        if not small_only:
            choices += [l2, l2, l2 + 3 * page]
            if big_ok and big != l2:
                choices += [big, big]
        return draw(st.sampled_from(choices))

    ops = []
    mapped = []  # addresses of earlier maps: later operations mostly land on them
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["map", "map", "map", "map_pages", "owner", "unmap",
                                     "unmap", "split", "attrs", "get_leaf"]))
        if kind != "map" and mapped and draw(st.integers(0, 3)):
            a = draw(st.sampled_from(mapped)) + draw(st.sampled_from([0, 0, page, 5 * page]))
        else:
            a = addr()
        if kind == "map":
            mapped.append(a)

        def size(small_only=False, a=a):  # clipped to the window
            return min(size_(small_only), base + window - a)

        if kind == "map":
            s = size()
            delta = draw(st.sampled_from([0, 0, big, 2 * big, 3 * page, high_pa]))
            ops.append(("map", a, s, a + delta,
                        dict(prot=draw(st.sampled_from(PROTS)),
                             sw=draw(st.sampled_from([0, 0, 1, 2, 8])),
                             handle_fault=draw(st.booleans()),
                             nt=draw(st.integers(0, 3)) == 0)))
        elif kind == "map_pages":
            ops.append(("map", a, size(small_only=True), a + draw(st.sampled_from([0, page])),
                        dict(prot=draw(st.sampled_from(PROTS)), force_pte=True)))
        elif kind == "owner":
            ops.append(("set_owner", a, size(small_only=True), draw(st.integers(0, 3)),
                        dict(coalesce=rule == N.HOST and draw(st.booleans()))))
        elif kind == "unmap":
            ops.append(("unmap", a, size()))
        elif kind == "attrs":
            set_bits, clear_bits = draw(st.sampled_from(ATTR_CHANGES))
            ops.append(("update_attrs", a, size(),
                        dict(set_bits=set_bits, clear_bits=clear_bits,
                             handle_fault=draw(st.booleans()))))
        elif kind == "split":
            ops.append(("split", a, min(draw(st.sampled_from([page, l2, 2 * l2])),
                                        base + window - a)))
        else:
            ops.append(("get_leaf", a))
    return config, base, window, ops


def run(stage2_pair, config, ops):
    pair = stage2_pair(**config)
    for op in ops:
        name, *args = op
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        getattr(pair, name)(*args, **kwargs)
    return pair


@pytest.mark.parametrize("rule", [N.GUEST, N.HOST])
@settings(settings.get_profile("mmu"), max_examples=80)
@given(data=st.data())
def test_random_operations_match_the_kernel_bit_for_bit(stage2_pair, rule, data):
    config, base, window, ops = data.draw(scenarios(rule))
    run(stage2_pair, config, ops)


@pytest.mark.parametrize("rule", [N.GUEST, N.HOST])
@settings(settings.get_profile("mmu"), max_examples=30)
@given(data=st.data())
def test_unmapping_everything_frees_every_table_but_the_pgd(stage2_pair, rule, data):
    config, base, window, ops = data.draw(scenarios(rule))
    pair = run(stage2_pair, config, ops)
    pair.unmap(base, window)
    assert pair.mem.pages_in_use == pair.geom.pgd_pages
    assert pair.sim.table_pages() == pair.geom.pgd_pages
    assert pair.sim.leaves() == []


@pytest.mark.parametrize("rule", [N.GUEST, N.HOST])
@settings(settings.get_profile("mmu"), max_examples=30)
@given(data=st.data())
def test_destroy_returns_every_page(stage2_pair, rule, data):
    config, base, window, ops = data.draw(scenarios(rule))
    pair = run(stage2_pair, config, ops)
    in_use = pair.mem.pages_in_use
    report = pair.destroy()
    assert report.tables_freed == in_use
    assert pair.mem.pages_in_use == 0
    assert sorted(pair.mem.free_rows().tolist()) == list(range(int(pair.mem.meta[P.M_HWM])))


@settings(settings.get_profile("mmu"), max_examples=30)
@given(data=st.data())
def test_two_stage2s_sharing_one_page_table_memory_match_the_kernel(stage2_pair, data):
    config, base, window, ops = data.draw(scenarios(N.GUEST))
    first = stage2_pair(**config)
    second = stage2_pair(**{**config, "rule": data.draw(st.sampled_from([N.GUEST, N.HOST]))},
                         share=first, vmid=2)
    more = data.draw(scenarios(N.GUEST, (config["page_shift"], config["ipa_bits"])))[3]
    for op in ops + more:
        pair = data.draw(st.sampled_from([first, second]))
        name, *args = op
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        if name == "set_owner" and pair is first:
            kwargs = {}
        getattr(pair, name)(*args, **kwargs)
    first.destroy()
    second.check()
    second.destroy()
    assert first.mem.pages_in_use == 0


# ==========================================================================================
# Hand-checkable behaviour (4K granule, IPA 40: start level 1, pgd = rows 0 and 1 at
# 0x4000_0000; the first table page allocated is row 2 at 0x4000_2000)

RWX = N.set_prot_attr(D.PROT_RWX)  # 0x7fc: Normal, R, W, SH=IS, AF
RW = N.set_prot_attr(D.PROT_RW)  # 0x7fc | XN


def test_prot_attributes_are_the_kernels():
    assert RWX == 0x7FC
    assert RW == 0x0040_0000_0000_07FC


def test_page_inside_a_1g_block_becomes_a_table_holding_only_that_page(stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(GiB, GiB, 2 * GiB, D.PROT_RWX)
    assert pair.sim.get_leaf(GiB) == (2 * GiB | RWX | 1, 1)

    rep = pair.map(GiB + 0x5000, PAGE, 0x1234_5000, D.PROT_RW)

    assert (rep.ret, rep.tables_allocated, rep.tables_freed) == (0, 2, 0)
    assert N.expand_merged_tlbis(rep.tlbis) == [("ipa", GiB, GiB, 1)]
    assert (rep.cmo_bytes, rep.icache_bytes) == (PAGE, 0)
    t = pair.mem.tables
    assert int(t[0, 1]) == 0x4000_2003  # level 1 -> table at row 2
    assert int(t[2, 0]) == 0x4000_3003  # level 2 -> table at row 3, nothing else
    assert int(t[3, 5]) == 0x0040_0000_1234_57FF  # the page, nothing else
    assert [int(pair.mem.refcnt[r]) for r in (2, 3)] == [2, 2]
    # the rest of the old block refaults lazily
    assert pair.sim.get_leaf(GiB + 0x6000) == (0, 3)
    assert pair.sim.get_leaf(GiB + 2 * MiB) == (0, 2)
    assert pair.sim.get_leaf(2 * GiB) == (0, 1)


def test_table_pre_visit_collapses_a_table_into_a_block_and_frees_the_old_subtree(
        stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(2 * MiB, 2 * PAGE, 0x9000_0000, D.PROT_RW)  # rows 2 (level 2), 3 (level 3)

    rep = pair.map(2 * MiB, 2 * MiB, 0x8000_0000, D.PROT_RWX)

    assert (rep.ret, rep.tables_allocated, rep.tables_freed) == (0, 0, 1)
    assert N.expand_merged_tlbis(rep.tlbis) == [("vmid", 1)]  # no FEAT_TLBIRANGE
    assert (rep.cmo_bytes, rep.icache_bytes) == (2 * MiB, 2 * MiB)
    assert pair.sim.get_leaf(2 * MiB + PAGE) == (0x8000_0000 | RWX | 1, 2)
    assert pair.mem.free_rows().tolist() == [3]

    # a 1 GiB block over a level-2 table that holds a block and a level-3 table: the free
    # walk puts the children in post-order, the level-3 table first
    pair.map(0, PAGE, 0x9000_0000, D.PROT_RW)  # reuses row 3
    rep = pair.map(0, GiB, 0x4000_0000, D.PROT_RWX)
    assert (rep.tables_allocated, rep.tables_freed) == (0, 2)
    assert pair.mem.free_rows().tolist() == [3, 2]
    assert pair.sim.get_leaf(0) == (0x4000_0000 | RWX | 1, 1)


def test_collapse_with_feat_tlbirange_invalidates_the_range_the_table_covered(stage2_pair):
    pair = stage2_pair(12, 40, tlbi_range=True)
    pair.map(2 * MiB, PAGE, 0x9000_0000)
    rep = pair.map(2 * MiB, 2 * MiB, 0x8000_0000)
    assert N.expand_merged_tlbis(rep.tlbis) == [("range", 2 * MiB, 2 * MiB, -1)]
    assert (rep.tlbi_ipa, rep.tlbi_range, rep.tlbi_vmid) == (0, 1, 0)


@pytest.mark.nojit
def test_unmap_skips_table_whose_child_refcount_is_not_1(stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(2 * MiB, 2 * PAGE, 0x9000_0000, D.PROT_RW)  # rows 2 and 3

    rep = pair.unmap(2 * MiB, PAGE)
    assert (rep.tables_freed, rep.cmo_bytes) == (0, PAGE)
    assert N.expand_merged_tlbis(rep.tlbis) == [("ipa", 2 * MiB, PAGE, 3)]
    assert [int(pair.mem.refcnt[r]) for r in (2, 3)] == [2, 2]

    rep = pair.unmap(2 * MiB + PAGE, PAGE)
    assert rep.tables_freed == 2
    # the last page, then each emptied table (TLBI by IPA, TTL unknown, at the walk address)
    assert N.expand_merged_tlbis(rep.tlbis) == [
        ("ipa", 2 * MiB + PAGE, PAGE, 3),
        ("ipa", 2 * MiB + PAGE, PAGE, -1),
        ("ipa", 2 * MiB + PAGE, PAGE, -1),
    ]
    assert pair.mem.free_rows().tolist() == [3, 2]
    assert pair.mem.pages_in_use == 2


def test_unmapping_part_of_a_block_removes_and_cleans_the_whole_block(stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(0, 2 * MiB, 0x8000_0000)
    rep = pair.unmap(PAGE, PAGE)
    # the block, then the level-2 table it leaves empty
    assert N.expand_merged_tlbis(rep.tlbis) == [("ipa", 0, 2 * MiB, 2), ("ipa", PAGE, PAGE, -1)]
    assert (rep.cmo_bytes, rep.tables_freed) == (2 * MiB, 1)
    assert pair.sim.get_leaf(0) == (0, 1)


def test_unmap_with_fwb_and_tlbirange_defers_leaf_tlbis_to_one_range_flush(stage2_pair):
    pair = stage2_pair(12, 40, fwb=True, tlbi_range=True)
    pair.map(0, 2 * PAGE, 0x8000_0000)
    pair.map(4 * PAGE, PAGE, 0x9000_0000)
    rep = pair.unmap(0, 3 * PAGE)
    assert N.expand_merged_tlbis(rep.tlbis) == [("range", 0, 3 * PAGE, -1)]
    assert rep.cmo_bytes == 0  # FWB: no cache maintenance


def test_unmap_out_of_range_still_issues_the_deferred_range_flush(stage2_pair):
    # kvm_pgtable_stage2_unmap() flushes the range after the walk whatever it returned
    pair = stage2_pair(12, 40, fwb=True, tlbi_range=True)
    rep = pair.unmap(1 << 40, PAGE)
    assert rep.ret == -N.ERANGE
    assert N.expand_merged_tlbis(rep.tlbis) == [("range", 1 << 40, PAGE, -1)]


def test_map_beyond_the_ipa_size_fails_with_erange_and_changes_nothing(stage2_pair):
    pair = stage2_pair(12, 40)
    rep = pair.map((1 << 40) - PAGE, 2 * PAGE, 0)
    assert (rep.ret, rep.tables_allocated) == (-N.ERANGE, 0)
    assert pair.mem.pages_in_use == 2


def test_map_fails_with_enomem_at_the_memory_limit_leaving_the_tables_it_made(stage2_pair):
    pair = stage2_pair(12, 40, limit_pages=3)  # the pgd and one more page
    rep = pair.map(0, PAGE, 0x8000_0000)
    assert (rep.ret, rep.tables_allocated) == (-N.ENOMEM, 1)
    assert int(pair.mem.tables[0, 0]) == 0x4000_2003
    assert not pair.mem.tables[2].any()
    with pytest.raises(MemoryError, match="page-table memory limit reached"):
        Stage2(pair.mem, pair.geom)


def test_remapping_the_same_page_is_eagain_only_when_handling_a_fault(stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(0, PAGE, 0x8000_0000, D.PROT_RW)
    before = pair.mem.tables[3].copy()
    assert pair.map(0, PAGE, 0x8000_0000, D.PROT_RW, handle_fault=True).ret == -N.EAGAIN
    assert pair.map(0, PAGE, 0x8000_0000, D.PROT_RW).ret == 0
    # a permission change alone is left to the relax-permissions path
    rep = pair.map(0, PAGE, 0x8000_0000, D.PROT_RWX, handle_fault=True)
    assert (rep.ret, rep.tlbi_ipa) == (-N.EAGAIN, 0)
    assert (pair.mem.tables[3] == before).all()


def test_changing_only_software_bits_skips_break_before_make(stage2_pair):
    pair = stage2_pair(12, 40, rule=N.HOST)
    pair.map(0, PAGE, 0x8000_0000, D.PROT_RWX)
    assert int(pair.mem.refcnt[3]) == 1  # a default host leaf is not counted
    rep = pair.map(0, PAGE, 0x8000_0000, D.PROT_RWX, sw=1)
    assert (rep.ret, rep.tlbi_ipa, rep.cmo_bytes) == (0, 0, 0)
    assert pair.sim.get_leaf(0) == (0x8000_0000 | RWX | 3 | 1 << 55, 3)
    assert int(pair.mem.refcnt[3]) == 2  # a software bit makes it non-default


def test_under_the_read_lock_a_software_bits_change_breaks_and_makes():
    """6.12 stage2_map_walker_try_leaf(): the store-and-go shortcut is for exclusive walks
    only (``!kvm_pgtable_walk_shared(ctx)``); a shared walk breaks the entry, invalidates
    the IPA and makes the new leaf."""
    from simulator.arch.geometry import Geometry
    from simulator.hyp.pgtable import PageTableMemory, Stage2

    reports = {}
    for shared in (False, True):
        s2 = Stage2(PageTableMemory(12, 1 << 40), Geometry(12, 40), fwb=True)
        s2.map(0, PAGE, 0x8000_0000, D.PROT_RW)
        rep = s2.map(0, PAGE, 0x8000_0000, D.PROT_RW, sw=1, shared=shared)
        assert rep.ret == 0
        assert s2.get_leaf(0)[0] >> 55 == 1
        reports[shared] = rep
    assert (reports[False].tlbi_ipa, reports[False].stores) == (0, 1)
    assert (reports[True].tlbi_ipa, reports[True].stores) == (1, 2)


def test_host_rule_counts_only_non_default_entries(stage2_pair):
    pair = stage2_pair(12, 40, rule=N.HOST)
    pair.map(0, PAGE, 0, D.PROT_RWX)  # default memory
    pair.map(PAGE, PAGE, PAGE, D.PROT_DEVICE | D.PROT_RW)  # default MMIO
    assert int(pair.mem.refcnt[3]) == 1
    pair.map(2 * PAGE, PAGE, 2 * PAGE, D.PROT_RW)  # memory without X: not default
    pair.set_owner(3 * PAGE, PAGE, N.OWNER_MASK >> 2)  # an owner annotation
    assert int(pair.mem.refcnt[3]) == 3
    assert int(pair.mem.refcnt[2]) == 2  # the table entry is counted


def test_set_owner_annotates_one_page_of_a_block_and_the_rest_refaults(stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(0, 2 * MiB, 0x8000_0000)  # a block in row 2
    rep = pair.set_owner(3 * PAGE, PAGE, 1)
    assert (rep.ret, rep.tables_allocated, rep.cmo_bytes) == (0, 1, 0)
    assert N.expand_merged_tlbis(rep.tlbis) == [("ipa", 0, 2 * MiB, 2)]
    assert pair.mem.tables[3].tolist() == [0, 0, 0, 1 << 2] + [0] * 508
    assert int(pair.mem.refcnt[3]) == 2
    assert pair.sim.get_leaf(3 * PAGE) == (1 << 2, 3)
    assert pair.sim.get_leaf(4 * PAGE) == (0, 3)


def test_coalescing_set_owner_zaps_tables_left_with_default_leaves(stage2_pair):
    pair = stage2_pair(12, 40, rule=N.HOST)
    pair.map(0, 4 * PAGE, 0, D.PROT_RWX, force_pte=True)  # default leaves: uncounted
    pair.set_owner(4 * PAGE, PAGE, 1)  # donated to hyp: counted
    assert int(pair.mem.refcnt[3]) == 2

    rep = pair.set_owner(4 * PAGE, PAGE, 0, coalesce=True)  # reclaimed by the host

    assert rep.tables_freed == 2  # the level-3 table, then the emptied level-2 table
    assert N.expand_merged_tlbis(rep.tlbis) == [("ipa", 4 * PAGE, PAGE, 2),
                                                ("ipa", 4 * PAGE, PAGE, 1)]
    assert pair.sim.get_leaf(0) == (0, 1)  # the host's next abort maps the largest block


def test_host_unmap_that_zaps_a_table_of_default_leaves_keeps_leaf_statistics(stage2_pair):
    # The host rule leaves default leaves uncounted, so unmapping a neighbour empties the
    # table's refcount and TABLE_POST frees it with its two live leaves: the leaf statistics
    # must drop them (check_invariants, run by the pair after every step).
    pair = stage2_pair(12, 40, rule=N.HOST)
    pair.map(0, 2 * PAGE, 0, D.PROT_RWX)
    rep = pair.unmap(2 * PAGE, PAGE)
    assert rep.tables_freed == 2
    assert pair.sim.leaf_counts() == {0: 0, 1: 0, 2: 0, 3: 0}


def test_split_of_a_1g_block_builds_513_pages_of_pages():
    mem = PageTableMemory(12, 0x4000_0000)
    s2 = Stage2(mem, Geometry(12, 40))
    s2.map(GiB, GiB, 2 * GiB, D.PROT_RW)
    rep = s2.split(GiB + 5 * PAGE, PAGE)
    assert (rep.ret, rep.tables_allocated, rep.tables_freed) == (0, 513, 0)
    # the block's entry; create_unlinked()'s map walk: 512 level-2 entries and 512 * 512
    # level-3 entries, each a break-before-make (2 stores); the block's own break-before-make;
    # then the walk descends into the new table to the page asked for (2 entries)
    assert (rep.visits, rep.stores) == (1 + 512 + 512 * 512 + 2, 2 * (512 + 512 * 512) + 2)
    assert N.expand_merged_tlbis(rep.tlbis) == [("ipa", GiB, GiB, 1)]
    assert rep.cmo_bytes == 0  # create_unlinked skips cache maintenance
    assert mem.pages_in_use == 2 + 513
    for off in (0, 5 * PAGE, 3 * MiB + 7 * PAGE, GiB - PAGE):
        assert s2.get_leaf(GiB + off) == ((2 * GiB + off) | RW | 3, 3)
    assert s2.leaf_counts() == {0: 0, 1: 0, 2: 0, 3: 512 * 512}
    assert not s2.check_invariants()


def test_walker_visits_and_stores_are_the_kernels(stage2_pair):
    # visits: entries the walk loop reaches (callbacks or not, TABLE_POST no extra visit);
    # stores: descriptor writes, two per break-before-make
    pair = stage2_pair(12, 40)
    rep = pair.map(0, PAGE, 0x8000_0000)
    # levels 1 and 2 get a table each, level 3 the page: 3 entries, 3 break-before-makes
    assert (rep.visits, rep.stores) == (3, 6)
    rep = pair.unmap(0, PAGE)
    # the page cleared, then each emptied table entry at TABLE_POST; put_page() of the
    # freed tables walks nothing
    assert (rep.visits, rep.stores, rep.tables_freed) == (3, 3, 2)

    pair.map(2 * MiB, 2 * PAGE, 0x9000_0000)
    rep = pair.map(2 * MiB, 2 * MiB, 0x8000_0000)
    # TABLE_PRE at level 2 replaces the table by the block (2 stores) and free_unlinked()
    # walks the whole detached level-3 table (512 visits, no store)
    assert (rep.visits, rep.stores, rep.tables_freed) == (1 + 1 + 512, 2, 1)

    rep = pair.split(2 * MiB + PAGE, PAGE)
    # the level-1 table entry, the block, create_unlinked()'s 512 pages (2 stores each), the
    # block's break-before-make, then the page asked for in the new table
    assert (rep.visits, rep.stores) == (1 + 1 + 512 + 1, 2 * 512 + 2)

    rep = pair.wrprotect(2 * MiB, 4 * PAGE)
    assert (rep.visits, rep.stores) == (2 + 4, 4)
    rep = pair.wrprotect(2 * MiB, 4 * PAGE)  # nothing left to change: no store
    assert (rep.visits, rep.stores) == (2 + 4, 0)

    rep = pair.destroy()
    # every entry of every table: the two pgd pages, the level-2 and the level-3 table
    assert (rep.visits, rep.stores) == (4 * 512, 0)


def test_split_of_a_1g_block_falls_back_to_2m_blocks_when_memory_is_short(stage2_pair):
    pair = stage2_pair(12, 40, limit_pages=2 + 5)  # the memcache holds 5 < 513 pages
    pair.map(GiB, GiB, 2 * GiB, D.PROT_RW)
    rep = pair.split(GiB, GiB)
    # one page of 2 MiB blocks, then the walk descends and splits 2 MiB blocks one page
    # each until the memcache runs dry
    assert (rep.ret, rep.tables_allocated) == (-N.ENOMEM, 5)
    assert N.expand_merged_tlbis(rep.tlbis) == [("ipa", GiB, GiB, 1)] + [
        ("ipa", GiB + k * 2 * MiB, 2 * MiB, 2) for k in range(4)]
    assert pair.sim.get_leaf(GiB + 3 * 2 * MiB + PAGE) == ((2 * GiB + 6 * MiB + PAGE) | RW | 3, 3)
    assert pair.sim.get_leaf(GiB + 4 * 2 * MiB) == ((2 * GiB + 8 * MiB) | RW | 1, 2)


def test_split_rebuilds_the_leaves_from_the_block_prot_like_the_kernel(stage2_pair):
    # stage2_split_walker() passes kvm_pgtable_stage2_pte_prot(pte) (R, W, X, software bits)
    # to create_unlinked(), which builds attributes with stage2_set_prot_attr(): the pages of
    # a split device block are Normal memory, as the kernel makes them.
    pair = stage2_pair(14, 38)
    pair.map(32 * MiB, 32 * MiB, 64 * MiB, D.PROT_DEVICE | D.PROT_RW)
    pair.split(32 * MiB, 16 * KiB)
    assert pair.sim.get_leaf(32 * MiB) == (64 * MiB | RW | 3, 3)


def test_split_of_an_nt_block_keeps_its_output_address(stage2_pair):
    # nT (bit 16) is not an address bit of a 2 MiB block: the pages map the block's range
    pair = stage2_pair(12, 40)
    pair.map(0, 2 * MiB, 0x8000_0000, D.PROT_RWX, nt=True)
    pair.split(0, PAGE)
    assert pair.sim.get_leaf(PAGE) == ((0x8000_0000 + PAGE) | RWX | 3, 3)


def test_map_ignores_the_offset_in_the_page_and_rounds_the_size_up(stage2_pair):
    # kvm_pgtable_walk(): [ALIGN_DOWN(addr), PAGE_ALIGN(ALIGN_DOWN(addr) + size))
    pair = stage2_pair(12, 40)
    pair.map(PAGE + 0x800, PAGE, 0x8000_0000)
    assert pair.sim.get_leaf(PAGE) == (0x8000_0000 | RWX | 3, 3)
    assert pair.sim.get_leaf(2 * PAGE) == (0, 3)


def test_map_rounds_the_output_address_down_to_the_page(stage2_pair):
    # kvm_pgtable_stage2_map(): .phys = ALIGN_DOWN(phys, PAGE_SIZE)
    pair = stage2_pair(12, 40)
    rep = pair.map(0, PAGE, 0x8000_0800)
    assert rep.ret == 0
    assert pair.sim.get_leaf(0) == (0x8000_0000 | RWX | 3, 3)


def test_destroy_frees_the_subtree_in_post_order_then_the_pgd(stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(0, PAGE, 0x8000_0000)
    rep = pair.destroy()
    assert (rep.tables_freed, rep.tlbi_ipa + rep.tlbi_vmid) == (4, 0)
    assert pair.mem.free_rows().tolist() == [3, 2, 0, 1]


@pytest.mark.parametrize("page_shift, ipa_bits, block, level", [
    (14, 36, 32 * MiB, 2), (16, 40, 512 * MiB, 2), (12, 32, 2 * MiB, 2), (12, 40, GiB, 1)])
def test_largest_aligned_block_is_used_for_each_granule(stage2_pair, page_shift, ipa_bits,
                                                        block, level):
    pair = stage2_pair(page_shift, ipa_bits)
    rep = pair.map(block, block, 2 * block)
    assert (rep.ret, rep.cmo_bytes) == (0, block)
    assert pair.sim.get_leaf(block + (1 << page_shift)) == (2 * block | RWX | 1, level)
    # an output address aligned only to the next level's size: the next level down
    step = N.granule_size(level + 1, page_shift)
    pair.map(2 * block, block, 2 * block + step)
    assert pair.sim.get_leaf(2 * block) == ((2 * block + step) | RWX | (3 if level == 2 else 1),
                                            level + 1)


def test_64k_table_descriptors_hold_pa_51_48_in_bits_15_12(stage2_pair):
    pair = stage2_pair(16, 48, base_pa=0xA << 48)  # tables above 2^48
    pair.map(0, 64 * KiB, (0x5 << 48) | 0x1_0000)
    top = int(pair.mem.tables[0, 0])
    assert top == (0xA << 12) | (1 << 16) | 3  # table at row 1: PA 0xA_0000_0001_0000
    assert pair.sim.get_leaf(0) == ((0x5 << 12) | 0x1_0000 | RWX | 3, 3)


def test_deferred_range_flush_is_cut_into_max_tlbi_range_chunks(stage2_pair):
    # MAX_TLBI_RANGE_PAGES = 2^21 pages: 8 GiB of 4K pages per range TLBI
    pair = stage2_pair(12, 40, fwb=True, tlbi_range=True)
    rep = pair.unmap(0, 16 * GiB + PAGE)
    assert N.expand_merged_tlbis(rep.tlbis) == [
        ("range", 0, 8 * GiB, -1), ("range", 8 * GiB, 8 * GiB, -1),
        ("range", 16 * GiB, PAGE, -1)]


def test_a_full_tlbi_log_degrades_to_one_whole_vmid_record():
    s2 = Stage2(PageTableMemory(12, 0x4000_0000), Geometry(12, 40))
    for page in range(0, 4 * 512, 2):  # every other page of four level-3 tables
        s2.map(page * PAGE, PAGE, 0x8000_0000 + page * PAGE)
    rep = s2.unmap(0, 8 * MiB)
    # 1024 pages, 4 level-3 tables and the level-2 table: 1029 TLBIs, none adjacent
    assert (rep.tlbi_ipa, rep.tables_freed) == (1024 + 4 + 1, 5)
    assert [(r.kind, r.count) for r in rep.tlbis] == [("vmid", 1029)]


def test_operations_on_a_destroyed_stage2_are_refused():
    s2 = Stage2(PageTableMemory(12, 0), Geometry(12, 40))
    s2.destroy()
    with pytest.raises(RuntimeError, match="^stage-2 already destroyed$"):
        s2.map(0, PAGE, 0)


def test_owner_id_beyond_8_bits_is_refused():
    s2 = Stage2(PageTableMemory(12, 0), Geometry(12, 40))
    with pytest.raises(ValueError, match="^owner id 256 does not fit bits 9:2$"):
        s2.set_owner(0, PAGE, 256)


def test_stage2_granule_must_match_its_memory():
    with pytest.raises(ValueError, match="^stage-2 granule differs from its page-table "
                                         "memory's$"):
        Stage2(PageTableMemory(12, 0), Geometry(16, 40))


def test_wrprotect_clears_write_permission_without_a_tlbi(stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(0, 2 * MiB, 0x8000_0000, D.PROT_RW)
    rep = pair.sim.wrprotect(0, 2 * MiB)
    assert (rep.ret, rep.tlbi_ops) == (0, 0)  # the caller flushes
    assert pair.sim.get_leaf(0) == ((0x8000_0000 | RW | 1) & ~int(D.S2AP_W), 2)


def test_relaxing_execute_permission_invalidates_the_icache(stage2_pair):
    pair = stage2_pair(12, 40)
    pair.map(0, PAGE, 0x8000_0000, D.PROT_RW)
    rep = pair.update_attrs(0, PAGE, clear_bits=int(D.XN))
    assert (rep.icache_bytes, rep.cmo_bytes, rep.tlbi_ops) == (PAGE, 0, 0)
    assert pair.sim.get_leaf(0) == (0x8000_0000 | RWX | 3, 3)


def test_attribute_update_of_an_unmapped_entry_is_eagain_only_when_handling_a_fault(
        stage2_pair):
    pair = stage2_pair(12, 40)
    assert pair.update_attrs(0, PAGE, set_bits=int(D.AF), handle_fault=True).ret == -N.EAGAIN
    assert pair.update_attrs(0, PAGE, set_bits=int(D.AF)).ret == 0


def test_dump_lists_every_non_zero_leaf_entry_in_ipa_order():
    s2 = Stage2(PageTableMemory(12, 0x4000_0000), Geometry(12, 40))
    s2.set_owner(GiB, PAGE, 1)
    s2.map(0, PAGE, 0x8000_0000)
    assert s2.dump().splitlines() == [
        "0x000000000000 0x00000000800007ff L3 page oa=0x80000000 RWX memattr=0xf sh=3 AF sw=0x0",
        "0x000040000000 0x0000000000000004 invalid owner=1",
    ]
