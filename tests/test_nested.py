"""Two-stage translation: stage-1 descriptors and geometry, the guest's stage-1 builder, the
nested walk and run_batch's nested mode against tests/naive.py, the stage-1 flush, and exact
counts.

The nested walk is walk.nested_walk, which run_batch calls (not inlined: one compiled copy);
the tests drive it through run_batch (VcpuMMU.run), the kernel simulations run. The guest's
fault handler is guest.stage1.s1_fault, the one the engine runs."""

from __future__ import annotations

import naive as N
import numpy as np
import pytest
from conftest import tlb_contents, wc_contents
from hypothesis import event, given, settings
from hypothesis import strategies as st

from simulator.arch import descriptors as D
from simulator.arch import stage1 as S1
from simulator.arch.geometry import Geometry
from simulator.arch.stage1 import S1Geometry
from simulator.config.parts import Stage1Config
from simulator.guest.stage1 import G1_ROWS, S1F_OOM, S1F_SPURIOUS, GuestStage1, s1_fault
from simulator.hyp.pgtable import PageTableMemory, Stage2
from simulator.mmu import batch as B
from simulator.mmu.batch import FETCH, READ, WRITE, VcpuMMU
from simulator.mmu.tlb import INVALID, TLBHierarchy, TLBLevelSpec
from simulator.mmu.walk import (
    S1_CONT2,
    S1_CONT3,
    S1_PS,
    S1_ROOT,
    S1_START,
    S1_TOP,
    S1_VA_BITS,
    W_ACCESS_FLAG,
    W_OK,
    W_PERMISSION,
    W_TRANSLATION,
    WalkCache,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
STATUS = {W_OK: "ok", W_TRANSLATION: "translation", W_ACCESS_FLAG: "access_flag",
          W_PERMISSION: "permission"}
PS = {"4K": 12, "16K": 14, "64K": 16}


# ==========================================================================================
# Stage-1 geometry and descriptors


@pytest.mark.parametrize("granule", ["4K", "16K", "64K"])
@pytest.mark.parametrize("va_bits", [36, 39, 42, 47, 48])
def test_stage1_geometry(granule, va_bits):
    ps = PS[granule]
    g = S1Geometry.from_granule(granule, va_bits)
    levels = (va_bits - 4) // (ps - 3)  # ARM64_HW_PGTABLE_LEVELS
    assert g.levels == levels and g.start_level == 4 - levels
    assert g.top_entries == 1 << (va_bits - N.granule_shift(4 - levels, ps))
    assert 1 <= g.top_entries <= g.entries
    assert g.block_levels()[-1] == 3
    assert g.block_levels()[0] == max(1 if ps == 12 else 2, 4 - levels)


def test_stage1_contiguous_sizes():
    # CONT_PTE_SIZE and CONT_PMD_SIZE of arm64 Linux per granule
    assert [S1Geometry(ps, 48).cont_size(3) for ps in (12, 14, 16)] == [64 * KiB, 2 * MiB,
                                                                         2 * MiB]
    assert [S1Geometry(ps, 48).cont_size(2) for ps in (12, 14, 16)] == [32 * MiB, 1 * GiB,
                                                                         16 * GiB]


def test_stage1_geometry_refuses():
    with pytest.raises(ValueError):
        S1Geometry.from_granule("8K", 48)
    with pytest.raises(ValueError):
        S1Geometry(12, 52)


@settings(deadline=None)
@given(st.sampled_from([12, 14, 16]), st.integers(1, 3), st.integers(0, (1 << 36) - 1),
       st.booleans())
def test_stage1_descriptor_round_trip(ps, level, n, cont):
    size = 1 << N.granule_shift(level, ps)
    ipa = (n * size) & ((1 << 48) - 1) & ~(size - 1)
    d = int(S1.s1_make_leaf(np.uint64(ipa), S1.USER_RWX, level, ps, cont))
    assert N.pte_to_phys(d, ps) == ipa == int(S1.s1_oa(np.uint64(d), ps))
    assert d & 1 and bool(d & 2) == (level == 3)
    assert bool(d & (1 << 52)) == cont
    # Normal memory (AttrIndx 0), EL0 read/write, inner shareable, AF, nG, PXN, not UXN
    assert (d >> 2) & 7 == 0 and d & (1 << 6) and not d & (1 << 7)
    assert (d >> 8) & 3 == 3 and d & (1 << 10) and d & (1 << 11)
    assert d & (1 << 53) and not d & (1 << 54)
    t = int(S1.s1_make_table(np.uint64(ipa & ~((1 << ps) - 1)), ps))
    assert t & 3 == 3 and N.pte_to_phys(t, ps) == ipa & ~((1 << ps) - 1)


# ==========================================================================================
# The guest's stage-1 builder


def guest(granule="4K", va_bits=48, mapping="4K", contiguous=False, memory=4 * GiB, slots=None):
    cfg = Stage1Config(granule=granule, va_bits=va_bits, mapping=mapping, contiguous=contiguous)
    slots = slots or [(0, memory)]
    return GuestStage1(cfg, slots), np.array([[b, s, 0] for b, s in slots], dtype=np.int64)


def fault(gs, slots, va):
    if gs.s1p[G1_ROWS] + 4 > gs.s1t.shape[0]:
        gs.reserve()
    out = np.zeros(3, dtype=np.int64)
    r = int(s1_fault(np.int64(va), gs.s1t, gs.s1p, slots, np.int64(0),
                     np.int64(slots.shape[0]), out))
    return r, [int(x) for x in out]


def regime(gs):
    p = gs.s1p
    return N.Stage1Regime(int(p[S1_PS]), int(p[S1_START]), int(p[S1_VA_BITS]), int(p[S1_ROOT]),
                          int(p[S1_TOP]), int(p[S1_CONT3]), int(p[S1_CONT2]),
                          lambda r, i: int(gs.s1t[r, i]))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["4K", "16K", "64K"]), st.sampled_from([39, 42, 48]),
       st.sampled_from(["page", "thp"]), st.booleans(),
       st.lists(st.integers(0, (1 << 39) - 1), min_size=1, max_size=30))
def test_guest_faults_map_what_they_say(granule, va_bits, mapping, contiguous, vas):
    ps = PS[granule]
    g1 = S1Geometry(ps, va_bits)
    level = 3 if mapping == "page" else 2
    if level not in g1.block_levels():
        return
    size = g1.size(level)
    run = size << g1.cont_shift(level) if contiguous else size
    memory = 64 * run if run >= 32 * MiB else 1 * GiB
    gs, slots = guest(granule, va_bits, "thp" if level == 2 else granule, contiguous,
                      memory=memory)
    s1 = regime(gs)
    mapped = {}
    data = set()
    for va in vas:
        va &= (1 << va_bits) - 1
        before = s1.read(0, 0), gs.tables
        r, (tables, stores, nbytes) = fault(gs, slots, va)
        if r == S1F_OOM:
            return
        base = va - va % run
        if base in mapped:
            assert r == S1F_SPURIOUS and (tables, stores, nbytes) == (0, 0, 0)
            assert before[1] == gs.tables
        else:
            assert r == 1 and nbytes == run and stores == tables + run // size
            mapped[base] = None
        ipa = N.s1_lookup(s1, va)
        # an aligned run of guest memory, below the table pages, mapped contiguously
        assert 0 <= ipa < memory - gs.tables * (1 << ps)
        assert ipa % run == va % run
        for k in range(0, run, size):
            assert N.s1_lookup(s1, base + k) == ipa - va % run + k
        data.add(ipa - va % run)
    assert len(data) == len(mapped)  # no two runs share guest memory


def test_guest_memory_runs_out():
    gs, slots = guest(mapping="thp", memory=8 * MiB)
    results = [fault(gs, slots, k * 2 * MiB)[0] for k in range(5)]
    # the top 2 MiB hold the table pages: three blocks fit below them
    assert results == [1, 1, 1, S1F_OOM, S1F_OOM]


def test_guest_data_skips_memslot_holes():
    gs, slots = guest(mapping="thp", slots=[(0, 3 * MiB), (16 * MiB, 8 * MiB)])
    s1 = regime(gs)
    ipas = []
    for k in range(3):
        assert fault(gs, slots, k << 30)[0] == 1
        ipas.append(N.s1_lookup(s1, k << 30))
    # 2M-aligned blocks: [0, 2M) in the first slot, then the second slot (tables at its top)
    assert ipas == [0, 16 * MiB, 18 * MiB]


# ==========================================================================================
# The nested walk and run_batch's nested mode against the reference


def stage2(ps2, ipa_bits=40):
    return Stage2(PageTableMemory(ps2, 0x4000_0000), Geometry(ps2, ipa_bits))


def s2_map(s2, ipa, big, read_only=False):
    """KVM maps the fault's page, or the level-2 block around it (read-only: as dirty
    logging leaves it)."""
    ps2 = s2.geom.page_shift
    size = N.granule_size(2, ps2) if big else 1 << ps2
    b = ipa - ipa % size
    if read_only:
        s2.map(b, size, 0x80_0000_0000 + b, attr=D.prot_attr(D.PROT_R | D.PROT_X))
    else:
        s2.map(b, size, 0x80_0000_0000 + b)


class NestedPair:
    """A VcpuMMU in nested mode and a naive.RefVcpu with the same stage-1 regime, over the
    same stage-2 and guest tables; every run is compared: results, counters, fault records,
    TLB and both stages' walk-cache contents."""

    def __init__(self, gs, s2, specs, wc_entries, costs, vmid=1):
        ps2 = s2.geom.page_shift
        self.gs, self.s2 = gs, s2
        self.sim = VcpuMMU(TLBHierarchy([TLBLevelSpec(*sp) for sp in specs], ps2),
                           WalkCache(wc_entries), vmid=vmid, costs=costs)
        self.sim.s1p = gs.s1p
        self.ref = N.RefVcpu(N.RefTLB(specs, ps2), N.RefWalkCache(wc_entries, ps2), vmid=vmid,
                             costs=costs, s1=regime(gs))

    def run(self, addrs, kinds, start, stop, budget):
        s2, g = self.s2, self.s2.geom
        self.sim.s1t = self.gs.s1t
        got = self.sim.run(s2, addrs, kinds, start, stop, budget)
        want = self.ref.run(lambda r, i: int(s2.mem.tables[r, i]), s2.mem.base_pa,
                            g.page_shift, s2.root, g.start_level, g.ipa_bits, addrs, kinds,
                            start, stop, budget)
        got = (int(got[0]), int(got[1]), "fault" if int(got[2]) == B.B_FAULT else "done")
        assert got == want
        c = self.sim.counters()
        assert c == self.ref.counters()
        assert c["walk.mem_refs"] == c["walk.s1_refs"] + c["walk.s2_refs"]
        if got[2] == "fault":
            f = self.sim.fault
            assert {"status": STATUS[int(f[B.FR_STATUS])], "level": int(f[B.FR_LEVEL]),
                    "ipa": int(f[B.FR_IPA]) & N.MASK64, "kind": int(f[B.FR_KIND]),
                    "pte": int(f[B.FR_PTE]) & N.MASK64, "index": int(f[B.FR_INDEX]),
                    "stage": int(f[B.FR_STAGE]), "s1ptw": bool(f[B.FR_S1PTW])} == self.ref.fault
        assert tlb_contents(self.sim.tlb) == self.ref.tlb.contents()
        assert wc_contents(self.sim.wc, g.page_shift) == self.ref.wc.contents()
        assert wc_contents(self.sim.wc, 0, 4) == self.ref.wc1.contents()
        return got


@st.composite
def nested_setups(draw):
    ps1 = draw(st.sampled_from([12, 14, 16]))
    ps2 = draw(st.sampled_from([12, 14, 16]))
    va_bits = draw(st.sampled_from([39, 42, 48]))
    g1 = S1Geometry(ps1, va_bits)
    level = draw(st.sampled_from([3, 2] if 2 in g1.block_levels() else [3]))
    contiguous = draw(st.booleans())
    run = g1.size(level) << (g1.cont_shift(level) if contiguous else 0)
    if run > 512 * MiB:
        contiguous, run = False, g1.size(level)
    gs, slots = guest({12: "4K", 14: "16K", 16: "64K"}[ps1], va_bits,
                      "thp" if level == 2 else {12: "4K", 14: "16K", 16: "64K"}[ps1],
                      contiguous, memory=max(64 * run, 1 * GiB) if run < 1 * GiB else 16 * GiB)
    s2 = stage2(ps2, 40)
    sizes = sorted({1 << ps1, 1 << ps2, N.granule_size(2, ps1), N.granule_size(2, ps2),
                    run})
    specs = []
    for i in range(draw(st.integers(1, 3))):
        held = draw(st.lists(st.sampled_from(sizes), min_size=1, max_size=4, unique=True))
        # stage-2 entries cached beside the combined ones (N1's L2: blocks only)
        s2held = draw(st.lists(st.sampled_from([1 << ps2, N.granule_size(2, ps2)]),
                               max_size=2, unique=True))
        specs.append((f"L{i + 1}", draw(st.sampled_from([1, 2, 4])),
                      draw(st.sampled_from([1, 2, 4])), draw(st.integers(0, 5)), (), "all",
                      tuple(s.bit_length() - 1 for s in held),
                      tuple(s.bit_length() - 1 for s in s2held)))
    costs = {"access": draw(st.integers(0, 3)), "mem_ref": draw(st.integers(0, 50)),
             "wc_hit": draw(st.integers(0, 5))}
    bases = [0x40_0000, 0x7F_0000_0000 & ((1 << va_bits) - 1), 1 << (va_bits - 1)]
    n = draw(st.integers(1, 50))
    addrs = [draw(st.sampled_from(bases)) + draw(st.integers(0, 4 * run + 8 * MiB))
             for _ in range(n)]
    addrs = [a & ((1 << va_bits) - 1) for a in addrs]
    if draw(st.integers(0, 9)) == 0:
        addrs[0] = 1 << va_bits  # beyond the VA size
    kinds = [draw(st.sampled_from([READ, READ, WRITE, FETCH])) for _ in range(n)]
    return (gs, slots, s2, specs, draw(st.sampled_from([0, 2, 8])), costs,
            np.array(addrs, dtype=np.uint64), np.array(kinds, dtype=np.uint8))


@settings(settings.get_profile("mmu"), max_examples=80, deadline=None)
@given(nested_setups(), st.data())
def test_nested_streams_match_the_reference(setup, data):
    gs, slots, s2, specs, wc_entries, costs, addrs, kinds = setup
    pair = NestedPair(gs, s2, specs, wc_entries, costs)
    i, n = 0, len(addrs)
    for _ in range(8 * n):
        if i >= n:
            event("stream completed")
            break
        budget = data.draw(st.sampled_from([0, 1, 50, 500, 1 << 40]))
        nxt, _, status = pair.run(addrs, kinds, i, n, budget)
        event("stage-2 cache hits" if pair.ref.ctr.get("s2_cache.hits") else "no s2 cache hit")
        if status == "fault":
            f = pair.ref.fault
            event(f"fault stage {f['stage']} {f['status']}{' s1ptw' if f['s1ptw'] else ''}")
            s1_fault_here = f["stage"] == 1 and f["status"] == "translation"
            if s1_fault_here and f["ipa"] >> gs.geom.va_bits == 0:
                r, _ = fault(gs, slots, f["ipa"])
                if r == S1F_OOM:
                    nxt += 1
            elif f["stage"] == 2 and f["status"] == "translation":
                s2_map(s2, f["ipa"], data.draw(st.booleans()), data.draw(st.integers(0, 3)) == 0)
            else:
                nxt += 1
        i = nxt
        if data.draw(st.integers(0, 6)) == 0:
            # a stage-2 unmap: the engine's invalidation of a two-stage VMID empties its
            # combined entries and stage-1 walk cache (checked in test_stage1_flush)
            pair.sim.tlb.flush()
            pair.sim.wc.flush()
            for lv in pair.ref.tlb.levels:
                for s in lv.sets:
                    s.clear()
            for d in pair.ref.wc.levels + pair.ref.wc1.levels:
                d.clear()


# ==========================================================================================
# Exact counts


def tlb(sizes, sets=1, ways=64):
    return TLBHierarchy([TLBLevelSpec("l1", sets, ways, 1, (), "all",
                                      tuple(s.bit_length() - 1 for s in sizes))], 12)


def nested_mmu(gs, s2, tlbh, wc=0, vmid=1):
    m = VcpuMMU(tlbh, WalkCache(wc), vmid=vmid, costs={"mem_ref": 1})
    m.s1t, m.s1p = gs.s1t, gs.s1p
    return m


def one(mmu, s2, va, kind=READ):
    return mmu.run(s2, np.array([va], dtype=np.uint64), np.array([kind], dtype=np.uint8), 0, 1,
                   1 << 40)


def test_a_cold_nested_walk_reads_24_descriptors():
    # 4 + 4 levels (48-bit VAs, 48-bit IPAs, 4K both), no walk cache: (4 + 1) * 4 + 4
    gs, slots = guest(memory=4 * GiB)
    s2 = stage2(12, 48)
    assert s2.geom.levels == 4 and gs.geom.levels == 4
    va = 0x7F12_3456_7000
    assert fault(gs, slots, va)[0] == 1
    s1 = regime(gs)
    ipa = N.s1_lookup(s1, va)
    for table in range(gs.tables):
        s2_map(s2, s1.top - (table << 12), False)
    s2_map(s2, ipa, False)
    mmu = nested_mmu(gs, s2, tlb([4 * KiB]))
    i, cycles, status = one(mmu, s2, va)
    c = mmu.counters()
    assert (int(i), int(status)) == (1, B.B_DONE)
    assert (c["walk.s1_refs"], c["walk.s2_refs"], c["walk.mem_refs"]) == (4, 20, 24)
    assert int(cycles) == 24 + 1  # one memory reference each, the TLB lookup's latency


def test_cached_stage2_blocks_shorten_the_nested_walk():
    """With stage-2 2M entries cached (Neoverse N1's L2 keeps stage-2 blocks), the four
    stage-1 tables of one 2M block need one stage-2 walk, not four: 4 stage-1 references
    and two stage-2 walks of 3 (the tables' block, the data's), three stage-2 translations
    served from the cache."""
    gs, slots = guest(memory=4 * GiB)
    s2 = stage2(12, 48)
    va = 0x7F12_3456_7000
    fault(gs, slots, va)
    s1 = regime(gs)
    s2_map(s2, s1.top, True)
    s2_map(s2, N.s1_lookup(s1, va), True)
    t = TLBHierarchy([TLBLevelSpec("l1", 1, 8, 1, (), "all", (12,)),
                      TLBLevelSpec("l2", 4, 4, 3, (), "all", (12, 21), (21,))], 12)
    mmu = nested_mmu(gs, s2, t)
    i, cycles, status = one(mmu, s2, va)
    c = mmu.counters()
    assert (int(i), int(status)) == (1, B.B_DONE)
    assert (c["walk.s1_refs"], c["walk.s2_refs"], c["s2_cache.hits"]) == (4, 6, 3)
    # the TLB lookups (1 + 3), five stage-2 cache probes of the l2 (3 each), 10 references
    assert int(cycles) == 4 + 5 * 3 + 10
    s2_keys = [int(k) for k in t.key if k != INVALID and int(k) & (1 << 62)]
    assert len(s2_keys) == 2  # the tables' block and the data's block


def test_stage1_walk_cache_waits_for_the_tables_stage2():
    """A stage-1 walk-cache entry holds the next table's physical address, so it is filled
    only once that table's stage-2 translation succeeded. Counted by hand: 4K both stages,
    48-bit VAs (4 stage-1 levels), 40-bit IPAs (3 stage-2 levels), a walk cache of 4."""
    gs, slots = guest(memory=1 * GiB)
    s2 = stage2(12, 40)
    va = 0x7F12_3456_7000
    fault(gs, slots, va)  # root at TOP; level-1, 2, 3 tables at TOP - 4K, - 8K, - 12K
    top = int(gs.s1p[S1_TOP])
    s2_map(s2, top, False)  # only the root's page is mapped at stage-2
    mmu = nested_mmu(gs, s2, tlb([4 * KiB]), wc=4)
    # walk 1: the root's IPA (3 stage-2 refs), the root (1), the level-1 table's IPA (a
    # stage-2 walk-cache hit, 1 ref: invalid): S1PTW
    one(mmu, s2, va)
    assert int(mmu.fault[B.FR_S1PTW]) == 1 and int(mmu.fault[B.FR_IPA]) == top - 4096
    c = mmu.counters()
    assert (c["walk.s1_refs"], c["walk.s2_refs"]) == (1, 4)
    s2_map(s2, top - 4096, False)
    # walk 2: nothing cached at stage 1, so the root again (1 + 1 stage-2 ref), then the
    # level-1 table (its stage-2: 1 ref), then the level-2 table's IPA: S1PTW
    one(mmu, s2, va)
    assert int(mmu.fault[B.FR_IPA]) == top - 2 * 4096
    c = mmu.counters()
    assert (c["walk.s1_refs"], c["walk.s2_refs"], c["walk_cache.s1_hits"]) == (3, 7, 0)
    # walk 3: the level-0 entry is cached now (the level-1 table, translated): it starts
    # there, reads the level-1 table (1), translates the level-2 table (1): S1PTW again
    one(mmu, s2, va)
    c = mmu.counters()
    assert (c["walk.s1_refs"], c["walk.s2_refs"], c["walk_cache.s1_hits"]) == (4, 8, 1)


def test_a_va_beyond_the_va_space_is_an_error(tmp_path):
    from simulator.engine.machine import SimulationError

    trace = tmp_path / "t.npy"
    np.save(trace, np.array([0x40_0000, 0x7F00_0000_1000], dtype=np.uint64))
    with pytest.raises(SimulationError, match="VA space"):
        run_two_stage(tmp_path, **{"guest.stage1.va_bits": 39,
                                   "workload": {"type": "npy", "path": str(trace)}})


def test_s1ptw_fault_then_data_fault():
    gs, slots = guest(memory=1 * GiB)
    s2 = stage2(12, 40)
    mmu = nested_mmu(gs, s2, tlb([4 * KiB]))
    va = 0x5555_0000
    one(mmu, s2, va)  # the top-level table's page is not mapped at stage-2: S1PTW
    f = mmu.fault
    assert (int(f[B.FR_STAGE]), int(f[B.FR_S1PTW]), int(f[B.FR_KIND])) == (2, 1, READ)
    assert int(f[B.FR_IPA]) == int(gs.s1p[S1_TOP])
    s2_map(s2, int(f[B.FR_IPA]), True)  # a 2M block covers every table page
    one(mmu, s2, va)  # the guest has no mapping yet: a stage-1 fault for its handler
    assert int(mmu.fault[B.FR_STAGE]) == 1 and int(mmu.fault[B.FR_IPA]) == va
    fault(gs, slots, va)
    one(mmu, s2, va, WRITE)  # now the data page: a stage-2 fault on the output IPA
    f = mmu.fault
    assert (int(f[B.FR_STAGE]), int(f[B.FR_S1PTW]), int(f[B.FR_KIND])) == (2, 0, WRITE)
    assert int(f[B.FR_IPA]) == N.s1_lookup(regime(gs), va)
    c = mmu.counters()
    assert (c["s1.translation_faults"], c["faults.s1ptw"], c["translation_faults"]) == (1, 1, 2)


def entries(t):
    return [((int(k) >> 40) & 63) for k in t.key if k != INVALID]


def test_4k_stage1_page_over_2m_block_is_a_4k_entry():
    gs, slots = guest(memory=1 * GiB)
    s2 = stage2(12, 40)
    va = 0x1234_5000
    fault(gs, slots, va)
    s2_map(s2, int(gs.s1p[S1_TOP]), True)
    s2_map(s2, N.s1_lookup(regime(gs), va), True)
    t = tlb([4 * KiB, 64 * KiB, 2 * MiB])
    mmu = nested_mmu(gs, s2, t)
    one(mmu, s2, va)
    assert entries(t) == [12]
    assert int(t.pa[t.key != INVALID][0]) == 0x80_0000_0000 + N.s1_lookup(regime(gs), va)


def test_16_contiguous_pages_over_a_2m_block_are_one_64k_entry():
    gs, slots = guest(contiguous=True, memory=1 * GiB)
    s2 = stage2(12, 40)
    va = 0x1234_0000
    fault(gs, slots, va)
    ipa = N.s1_lookup(regime(gs), va)
    s2_map(s2, int(gs.s1p[S1_TOP]), True)
    s2_map(s2, ipa, True)
    t = tlb([4 * KiB, 64 * KiB, 2 * MiB])
    mmu = nested_mmu(gs, s2, t)
    addrs = np.array([va + k * 4 * KiB for k in range(16)], dtype=np.uint64)
    mmu.run(s2, addrs, np.zeros(16, dtype=np.uint8), 0, 16, 1 << 40)
    c = mmu.counters()
    assert entries(t) == [16] and c["walks"] == 1 and c["tlb.l1.hits"] == 15
    # over 4K stage-2 pages the same run is 16 entries of 4K
    s2b = stage2(12, 40)
    s2_map(s2b, int(gs.s1p[S1_TOP]), True)
    for k in range(16):
        s2_map(s2b, ipa + k * 4 * KiB, False)
    t2 = tlb([4 * KiB, 64 * KiB, 2 * MiB])
    mmu2 = nested_mmu(gs, s2b, t2)
    mmu2.run(s2b, addrs, np.zeros(16, dtype=np.uint8), 0, 16, 1 << 40)
    assert entries(t2) == [12] * 16 and mmu2.counters()["walks"] == 16


def test_stage1_flush():
    """A stage-2 invalidation of a two-stage VMID removes every combined entry of that VMID
    (TLBI VMALLE1IS after the IPA's) and its stage-1 walk-cache entries, and nothing of
    another VMID; the flush is counted once per operation."""
    from simulator.engine import layout as L
    from simulator.engine.fault import invalidate_all

    t = tlb([4 * KiB, 2 * MiB], sets=1, ways=16)  # one set: entries placed by hand
    wc = WalkCache(4)
    for vmid in (1, 2):
        for k in range(6):
            t_key = t.key
            e = np.flatnonzero(t_key == INVALID)[0]
            t_key[e] = np.uint64((vmid << 46) | (12 << 40) | (0x100 * vmid + k))
        for row in (1, 5):
            wc.tag[row, vmid] = np.uint64(((vmid << 48) | 7) + 1)
    # two cached stage-2 entries of VMID 1: one in the range invalidated, one not
    for vpn in (0x100, 0x300):
        e = np.flatnonzero(t.key == INVALID)[0]
        t.key[e] = np.uint64((1 << 62) | (1 << 46) | (12 << 40) | vpn)
    key, wtag = t.key[None, :].copy(), wc.tag[None, :].copy()
    g = np.zeros(L.N_GLOBALS, dtype=np.int64)
    lay = B.batch_layout(t.sets, t.sizes, t.serves)
    s1vmid = np.array([0, 1, 0], dtype=np.int64)  # VMID 1 has a stage-1
    tl = L.Tlbs(key, t.stamp[None, :], t.pa[None, :], t.perm[None, :], t.off, t.sets, t.ways,
                t.latency, t.sizes, t.serves, lay, wtag, wc.row[None, :],
                wc.stamp[None, :], np.zeros((1, 1), np.int64), s1vmid, np.zeros(1, np.int64))
    invalidate_all(np.int64(1), np.int64(0x100 << 12), np.int64(0x101 << 12), np.int64(12), g,
                   tl)
    left = [int(k) >> 46 for k in key[0] if k != INVALID]
    # VMID 1's combined entries gone, its stage-2 entry outside the range kept (VMALLE1
    # leaves stage-2 entries alone)
    assert sorted(left) == [2] * 6 + [1 | 1 << 16]
    assert (int(g[L.G_S1_FLUSHES]), int(g[L.G_S1_ENTRIES]), int(g[L.G_TLBI_ENTRIES])) == (1, 6, 1)
    # stage-1 walk-cache row 5 of VMID 1 gone, VMID 2's kept; stage-2 row 1 by range only
    assert [int(x) for x in wtag[0, 5, 1:3]] == [0, ((2 << 48) | 7) + 1]
    # an IPA-only VMID: the range alone, no stage-1 flush
    invalidate_all(np.int64(2), np.int64(0x200 << 12), np.int64(0x201 << 12), np.int64(12), g,
                   tl)
    assert sorted(int(k) & 0xFFF for k in key[0] if k != INVALID) == [0x201, 0x202, 0x203,
                                                                      0x204, 0x205, 0x300]
    assert int(g[L.G_S1_FLUSHES]) == 1


# ==========================================================================================
# The engine with a guest stage-1


def run_two_stage(tmp_path, **over):
    import yaml

    from simulator.config import Experiment
    from simulator.experiment import run_config

    cfg = {"name": "s1", "machine": {"granule": "4K", "ipa_bits": 40},
           "guest": {"memory": "64MiB", "vcpus": 1, "mapping": "4K",
                     "stage1": {"granule": "4K", "va_bits": 48, "mapping": "4K"}},
           "tlb": {"levels": [{"name": "l1", "sets": 4, "ways": 4}]},
           "workload": {"type": "sequential", "accesses": 2048, "step": 4096,
                        "start": 0x7F00_0000_0000, "footprint": "1MiB", "write_ratio": 0.5}}
    for k, v in over.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return run_config(Experiment(tmp_path / "c.yaml").variants["default"])["counters"]


def test_engine_two_stage_exact_counts(tmp_path):
    """256 pages touched twice each (VAs near 2^47): the guest maps each page once (256
    stage-1 faults, three new tables below its root); stage-2 maps each data page and each
    of the four table pages (the latter on stage-1 walks)."""
    c = run_two_stage(tmp_path)
    assert c["accesses"] == 2048
    assert (c["s1.translation_faults"], c["s1.faults"], c["s1.tables"]) == (256, 256, 3)
    assert c["s1.data_bytes"] == 256 * 4096
    assert (c["translation_faults"], c["faults.s1ptw"]) == (256 + 4, 4)
    assert c["mappings.l3"] == 260
    assert c["walk.mem_refs"] == c["walk.s1_refs"] + c["walk.s2_refs"]
    assert "tlbi.s1_flushes" in c and c["tlbi.s1_flushes"] == 0


def test_engine_two_stage_thp_over_blocks(tmp_path):
    c = run_two_stage(tmp_path, **{"guest.mapping": "2M", "guest.stage1.mapping": "thp"})
    # one 2M guest block for the whole 1 MiB, one stage-2 block for it and one for the
    # tables at the top of guest memory; one combined 2M entry serves every access
    assert (c["s1.translation_faults"], c["s1.tables"]) == (1, 2)
    assert (c["translation_faults"], c["faults.s1ptw"], c["mappings.l2"]) == (2, 1, 2)
    # walks: the S1PTW fault, the stage-1 fault, the data's stage-2 fault, the one that fills
    assert c["walks"] == 4 and c["tlb.l1.hits"] == 2048 - 1


def test_engine_two_stage_guest_out_of_memory(tmp_path):
    from simulator.engine.machine import SimulationError

    with pytest.raises(SimulationError, match="guest.memory"):
        run_two_stage(tmp_path, **{"guest.memory": "4MiB", "guest.stage1.mapping": "thp",
                                   "workload.footprint": "8MiB",
                                   "workload.step": 2 << 20})


@pytest.mark.parametrize("over, field", [
    ({"hyp": {"mode": "pkvm"}}, "guest.stage1"),
    ({"guest": {"placement": "first_touch"}}, "guest.placement"),
    ({"guest": {"stage1": {"mapping": "2M", "granule": "64K"}}}, "guest.stage1.mapping"),
    ({"guest": {"stage1": {"va_bits": 52}}}, "guest.stage1.va_bits"),
    ({"guest": {"stage1": {"mapping": "1G", "contiguous": True}}}, "guest.stage1.contiguous"),
    ({"guest": {"stage1": {"granule": "64K", "mapping": "64K"}, "memory": "64KiB"}},
     "guest.memslots"),
    ({"tlb": {"levels": [{"name": "l1", "sets": 1, "ways": 4, "stage2_sizes": ["64K"]}]}},
     "stage2_sizes"),
    ({"tlb": {"levels": [{"name": "l1", "sets": 1, "ways": 4, "page_sizes": ["8K"]}]}},
     "page_sizes"),
])
def test_stage1_config_errors(tmp_path, over, field):
    import subprocess
    import sys

    import yaml

    cfg = {"name": "bad", "guest": {"memory": "64MiB", "stage1": {"granule": "4K"}},
           "workload": {"type": "uniform", "accesses": 10, "footprint": "1MiB"}}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            for k2, v2 in v.items():
                if isinstance(v2, dict) and isinstance(cfg[k].get(k2), dict):
                    cfg[k][k2] = {**cfg[k][k2], **v2}
                else:
                    cfg[k][k2] = v2
        else:
            cfg[k] = v
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "simulator.cli", "validate", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert line.startswith("error:") and "\n" not in line and field in line, line


# ==========================================================================================
# The pKVM host's linear map


@pytest.mark.parametrize("linear_map", ["blocks", "pages"])
def test_host_linear_map(linear_map):
    from simulator.config.parts import HostStage1Config
    from simulator.guest.stage1 import HostStage1

    # a region that starts 2M + 64K into a gigabyte and ends 4K short of a 32M boundary
    lo, size = (1 << 30) + (2 << 20) + (64 << 10), (94 << 20) - (68 << 10)
    regions = [(lo, size), (4 << 30, 1 << 30)]
    pages = HostStage1.table_pages(12, regions)
    hs = HostStage1(HostStage1Config(linear_map=linear_map), 12, regions, 8 << 30, pages)
    assert hs.tables <= pages
    s1 = N.Stage1Regime(12, 0, 48, int(hs.s1p[S1_ROOT]), int(hs.s1p[S1_TOP]), 4, 4,
                        lambda r, i: int(hs.s1t[r, i]))

    def leaf(va):
        """(level, contiguous) of the leaf mapping ``va``, read from the tables."""
        level, row = 0, 0
        while True:
            d = int(hs.s1t[row, (va >> N.granule_shift(level, 12)) & 511])
            if level < 3 and d & 2:
                row, level = s1.row_of(N.pte_to_phys(d, 12)), level + 1
                continue
            return level, bool(d & (1 << 52)), bool(d & (1 << 7)), bool(d & (1 << 54))

    rng = np.random.default_rng(1)
    for base, sz in regions:
        for va in [base, base + sz - 1, *rng.integers(base, base + sz, 200)]:
            va = int(va)
            assert N.s1_lookup(s1, va) == va  # VA = PA
            level, cont, ro, uxn = leaf(va)
            assert not ro and uxn  # kernel read/write, never EL0-executable
            if linear_map == "pages":
                assert (level, cont) == (3, False)
    if linear_map == "blocks":
        assert leaf(4 << 30)[:2] == (1, False)  # an aligned gigabyte: a level-1 block
        assert leaf(lo)[:2] == (3, True)  # 64K in: 16 contiguous pages up to the 2M boundary
        assert leaf((1 << 30) + (4 << 20))[:2] == (2, False)  # 2M blocks up to 32M
        assert leaf((1 << 30) + (32 << 20))[:2] == (2, True)  # a 32M run: CONT_PMD
        assert leaf(lo + size - 1)[:2] == (3, False)  # the last pages: no full run
    # outside the regions: nothing mapped
    assert N.s1_lookup(s1, (3 << 30)) == 0


def test_pkvm_host_stage1_counts(tmp_path):
    """The host's accesses go through its linear map: its table pages are S1PTW aborts
    of the host stage-2; donations flush its stage-1 (TLBI VMALLE1IS after each
    stage-2 TLBI of VMID 0)."""
    import yaml

    from simulator.config import Experiment
    from simulator.experiment import run_config

    cfg = {"name": "h", "machine": {"ipa_bits": 40, "pa_bits": 40}, "hyp": {"mode": "pkvm"},
           "host": {"cpus": 1, "memory": [{"base": "1GiB", "size": "1GiB", "type": "memory"}],
                    "workload": {"type": "uniform", "accesses": 20000, "footprint": "1GiB"},
                    "stage1": {"linear_map": "blocks"}},
           "tlb": {"levels": [{"name": "l1", "sets": 8, "ways": 4}]},
           "guests": [{"name": "g", "memory": "64MiB", "vcpus": 1, "start": 0, "run": "1ms",
                       "workload": {"type": "uniform", "accesses": 1000}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    c = run_config(Experiment(tmp_path / "c.yaml").variants["default"])["counters"]
    assert c["host.walk.mem_refs"] == c["host.walk.s1_refs"] + c["host.walk.s2_refs"]
    # one 1G block maps the whole region at stage 1 and there is no walk cache: a walk
    # reads the root and the level-1 entry, but the two S1PTW aborts (the root's page: no
    # stage-1 read; the level-1 table's page: the root only) stop three reads short
    assert c["host.faults.s1ptw"] == 2
    assert c["host.walk.s1_refs"] == 2 * c["host.walks"] - 3
    assert c["host.s1.translation_faults"] == 0
    assert c["tlbi.s1_flushes"] > 0 and c["isolation.violations"] == 0
