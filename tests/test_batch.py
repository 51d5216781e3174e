"""simulator.mmu.batch: run_batch (through VcpuMMU) against naive.RefVcpu.

Semantics (batch.py's docstring): per access, probe the TLB levels in order charging each
level's latency; a hit fills the levels above it; a miss everywhere walks (a memory reference
per descriptor read, the walk-cache hit cost) and fills every level (never an nT block); then
the permission check. The kernel returns after the access that reaches the budget, or at a
fault: the faulting access is not counted in ``accesses`` (its lookups and walk are) and is
replayed by the next call.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive as N
from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.mmu.batch import FETCH, READ, WRITE, VcpuMMU
from simulator.mmu.pgtable import PageTableMemory, Stage2
from simulator.mmu.tlb import TLBHierarchy, TLBLevelSpec
from simulator.mmu.walk import WalkCache

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
GEOMETRIES = [(12, 32), (12, 40), (12, 44), (14, 38), (16, 44)]


def stage2(page_shift=12, ipa_bits=40):
    return Stage2(PageTableMemory(page_shift, 0x4000_0000), Geometry(page_shift, ipa_bits))


def stream(*pairs):
    addrs = np.array([a for a, _ in pairs], dtype=np.uint64)
    kinds = np.array([k for _, k in pairs], dtype=np.uint8)
    return addrs, kinds


# ==========================================================================================
# Random streams against the reference runner


@st.composite
def setups(draw):
    ps, ipa_bits = draw(st.sampled_from(GEOMETRIES))
    page = 1 << ps
    l2 = N.granule_size(2, ps)
    s2 = stage2(ps, ipa_bits)
    hot = []
    for _ in range(draw(st.integers(0, 8))):
        a = draw(st.integers(0, 3)) * l2 + draw(st.integers(0, 6)) * page
        hot.append(a)
        attr = D.prot_attr(draw(st.sampled_from([D.PROT_RWX, D.PROT_R, D.PROT_RW,
                                                 D.PROT_R | D.PROT_X, 0])))
        if draw(st.integers(0, 5)) == 0:
            attr &= ~int(D.AF)
        kind = draw(st.sampled_from(["block", "pages", "pages", "owner"]))
        if kind == "block":
            b = a - a % l2
            s2.map(b, l2, b + l2 * draw(st.integers(0, 4)),
                   attr=attr | (int(D.NT) if draw(st.integers(0, 3)) == 0 else 0))
        elif kind == "pages":
            s2.map(a, draw(st.integers(1, 8)) * page, 0x10_0000_0000 + a, attr=attr)
        else:
            s2.set_owner(a, page, 1)
    levels = [1, 2, 3] if ps == 12 else [2, 3]
    specs = []
    for i in range(draw(st.integers(1, 3))):
        specs.append((f"L{i + 1}", draw(st.sampled_from([1, 2, 4, 3])),
                      draw(st.sampled_from([1, 2, 4])), draw(st.integers(0, 9)),
                      tuple(sorted(draw(st.lists(st.sampled_from(levels), min_size=1,
                                                 unique=True))))))
    costs = {"access": draw(st.integers(0, 3)), "mem_ref": draw(st.integers(0, 200)),
             "wc_hit": draw(st.integers(0, 5))}
    n = draw(st.integers(1, 60))
    addrs = [draw(st.one_of(st.sampled_from(hot or [0]),
                            st.integers(0, 4 * l2 // page - 1).map(lambda p: p * page),
                            st.integers(0, 4 * l2 - 1))) for _ in range(n)]
    if draw(st.integers(0, 9)) == 0:
        addrs[0] = 1 << ipa_bits  # beyond the IPA size
    kinds = [draw(st.sampled_from([READ, READ, WRITE, FETCH])) for _ in range(n)]
    return s2, specs, draw(st.sampled_from([0, 2, 8])), costs, stream(*zip(addrs, kinds))


def apply_tlbis(pair, report, vmid=1):
    """What the engine does with an operation's TLBI log: every vCPU's TLBs and walk cache."""
    for rec in report.tlbis:
        if rec.kind == "vmid":
            pair.invalidate(vmid)
        else:
            pair.invalidate(vmid, rec.addr, rec.addr + rec.size)


@settings(settings.get_profile("mmu"), max_examples=100)
@given(setups(), st.data())
def test_random_streams_match_the_reference_runner(vcpu_pair, setup, data):
    s2, specs, wc_entries, costs, (addrs, kinds) = setup
    pair = vcpu_pair(s2, specs, wc_entries=wc_entries, costs=costs)
    page = 1 << s2.geom.page_shift
    i, n = 0, len(addrs)
    for _ in range(4 * n):
        if i >= n:
            break
        budget = data.draw(st.sampled_from([0, 1, 50, 500, 1 << 40]))
        nxt, cycles, status = pair.run(addrs, kinds, i, n, budget)
        if status == "fault":
            f = pair.ref.fault
            assert f["index"] == nxt
            ipa = f["ipa"]
            if (f["status"] == "translation" and ipa < 1 << s2.geom.ipa_bits
                    and data.draw(st.booleans())):
                # the hypervisor maps the page; the access is replayed from its TLB lookup
                s2.map(ipa - ipa % page, page, 0x20_0000_0000 + ipa - ipa % page)
            else:
                nxt += 1  # emulated or skipped
        i = nxt
        if data.draw(st.integers(0, 5)) == 0:
            lo = data.draw(st.integers(0, 7)) * N.granule_size(2, s2.geom.page_shift) // 2
            apply_tlbis(pair, s2.unmap(lo, data.draw(st.sampled_from([page, 64 * page]))))


# ==========================================================================================
# Hand-checkable traces (4K granule, IPA 40: three levels)


def vcpu(specs=(("L1", 1, 2, 1, (3,)),), wc=0, **costs):
    tlb = TLBHierarchy([TLBLevelSpec(*s) for s in specs], 12)
    return VcpuMMU(tlb, WalkCache(wc), costs=costs)


@pytest.mark.nojit
def test_budget_returns_after_the_access_that_reaches_it():
    s2 = stage2()
    s2.map(0, PAGE, 0x8000_0000)
    mmu = vcpu(access=10, mem_ref=100)
    addrs, kinds = stream(*[(0x10, READ)] * 6)
    # the first access walks three levels: 10 + 1 + 3 * 100 cycles, past the budget
    assert mmu.run(s2, addrs, kinds, 0, 6, 25) == (1, 311, 0)
    # then TLB hits of 11 cycles: the third reaches 25 and completes
    assert mmu.run(s2, addrs, kinds, 1, 6, 25) == (4, 33, 0)
    assert mmu.run(s2, addrs, kinds, 4, 6, 1 << 40) == (6, 22, 0)
    c = mmu.counters()
    assert (c["accesses"], c["walks"], c["walk.mem_refs"]) == (6, 1, 3)
    assert (c["tlb.L1.hits"], c["tlb.L1.misses"], c["cycles.translation"]) == (5, 1, 366)


def test_faulting_access_is_replayed_and_counted_once_it_completes():
    s2 = stage2()
    mmu = vcpu(access=1, mem_ref=10)
    addrs, kinds = stream((0x5000, WRITE), (0x5008, READ))
    assert mmu.run(s2, addrs, kinds, 0, 2, 1 << 40) == (0, 1 + 1 + 10, 1)
    assert mmu.fault.tolist()[:6] == [1, 1, 0x5000, WRITE, 0, 0]  # translation, level 1
    c = mmu.counters()
    assert (c["accesses"], c["writes"], c["walks"], c["translation_faults"]) == (0, 0, 1, 1)
    assert (c["tlb.L1.misses"], c["walk.mem_refs"]) == (1, 1)

    s2.map(0x5000, PAGE, 0x8000_5000)  # the hypervisor's fix-up
    assert mmu.run(s2, addrs, kinds, 0, 2, 1 << 40) == (2, 1 + 1 + 30 + 1 + 1, 0)
    c = mmu.counters()
    assert (c["accesses"], c["writes"], c["reads"], c["walks"]) == (2, 1, 1, 2)
    assert (c["tlb.L1.hits"], c["tlb.L1.misses"], c["translation_faults"]) == (1, 2, 1)
    assert c["xlate.l3"] == 2


def test_permission_fault_reports_the_leaf_level_from_a_walk_or_a_tlb_hit():
    s2 = stage2()
    s2.map(0, 2 * MiB, 0x8000_0000, D.PROT_R)
    mmu = vcpu()
    addrs, kinds = stream((0x1000, WRITE), (0x1000, READ), (0x1000, FETCH))
    assert mmu.run(s2, addrs, kinds, 0, 3, 1 << 40)[::2] == (0, 1)
    assert mmu.fault.tolist()[:6] == [3, 2, 0x1000, WRITE, 0, 0]  # permission, level 2
    assert mmu.run(s2, addrs, kinds, 1, 3, 1 << 40)[::2] == (2, 1)  # read ok, then fetch
    assert mmu.fault.tolist()[:6] == [3, 2, 0x1000, FETCH, 0, 2]
    c = mmu.counters()
    assert (c["permission_faults"], c["accesses"], c["walks"], c["tlb.L1.hits"]) == (2, 1, 1, 2)


def test_access_flag_fault_is_counted_apart_from_translation_faults():
    s2 = stage2()
    s2.map(0, PAGE, 0x8000_0000, attr=D.prot_attr(D.PROT_RW) & ~int(D.AF))
    mmu = vcpu()
    addrs, kinds = stream((0, READ))
    assert mmu.run(s2, addrs, kinds, 0, 1, 1 << 40)[::2] == (0, 1)
    assert mmu.fault.tolist()[:2] == [2, 3]
    c = mmu.counters()
    assert (c["access_flag_faults"], c["translation_faults"]) == (1, 0)


def test_nt_block_is_never_cached_in_the_tlb():
    s2 = stage2()
    s2.map(0, 2 * MiB, 0x8000_0000, attr=D.prot_attr(D.PROT_RW) | int(D.NT))
    mmu = vcpu((("L1", 1, 2, 1, (3,)), ("L2", 4, 4, 5, (2, 3))))
    addrs, kinds = stream(*[(0x3000, READ)] * 3)
    assert mmu.run(s2, addrs, kinds, 0, 3, 1 << 40)[::2] == (3, 0)
    c = mmu.counters()
    assert (c["walks"], c["tlb.L1.misses"], c["tlb.L2.misses"], c["xlate.l2"]) == (3, 3, 3, 3)
    assert mmu.tlb.occupancy() == [0, 0]


def test_a_hit_in_the_second_level_fills_the_first_and_a_walk_fills_both():
    s2 = stage2()
    s2.map(0, 2 * MiB, 0x8000_0000)
    mmu = vcpu((("L1", 1, 1, 1, (3,)), ("L2", 4, 2, 5, (2, 3))))
    addrs, kinds = stream((0x1000, READ), (0x2000, READ), (0x1000, READ), (0x1000, READ))
    mmu.run(s2, addrs, kinds, 0, 4, 1 << 40)
    c = mmu.counters()
    assert (c["walks"], c["tlb.L1.hits"], c["tlb.L1.misses"]) == (1, 1, 3)
    assert (c["tlb.L2.hits"], c["tlb.L2.misses"], c["xlate.l2"]) == (2, 1, 4)
    # latencies only (no access or memory-reference cost): 1 + 5, 1 + 5, 1 + 5, 1
    assert c["cycles.translation"] == 6 + 6 + 6 + 1


def test_walk_cache_hits_are_counted_and_charged():
    s2 = stage2()
    s2.map(0, 2 * PAGE, 0x8000_0000)
    mmu = vcpu((("L1", 1, 1, 0, (3,)),), wc=4, mem_ref=100, wc_hit=7)
    addrs, kinds = stream((0, READ), (PAGE, READ))
    mmu.run(s2, addrs, kinds, 0, 2, 1 << 40)
    c = mmu.counters()
    assert (c["walks"], c["walk_cache.hits"], c["walk.mem_refs"]) == (2, 1, 3 + 1)
    assert c["cycles.translation"] == 300 + 100 + 7


def test_an_ipa_beyond_the_ipa_size_is_a_translation_fault_without_memory_references():
    s2 = stage2()
    mmu = vcpu(mem_ref=100)
    addrs, kinds = stream((1 << 40, READ))
    assert mmu.run(s2, addrs, kinds, 0, 1, 1 << 40) == (0, 1, 1)
    assert mmu.counters()["walk.mem_refs"] == 0


def test_counters_name_every_tlb_level():
    mmu = vcpu((("itlb", 1, 1, 1, (3,)), ("stlb", 2, 2, 5, (2, 3))))
    assert [k for k in mmu.counters() if k.startswith("tlb.")] == [
        "tlb.itlb.hits", "tlb.itlb.misses", "tlb.stlb.hits", "tlb.stlb.misses"]


def test_more_than_8_tlb_levels_are_refused():
    tlb = TLBHierarchy([TLBLevelSpec(f"L{i}", 1, 1, 1, (3,)) for i in range(9)], 12)
    with pytest.raises(ValueError, match="^at most 8 TLB levels$"):
        VcpuMMU(tlb, WalkCache(0))
