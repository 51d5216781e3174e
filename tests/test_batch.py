"""simulator.mmu.batch: run_batch (through VcpuMMU) against naive.RefVcpu.

Semantics (batch.py's docstring): per access, probe the TLB levels serving its class in order
charging each level's latency; a hit fills the levels above it; a miss everywhere walks (a
memory reference per descriptor read, the walk-cache hit cost) and fills every level (never
an nT block); then the permission check and, with an ownership record, the isolation check.
With the conflict check on, a hit in a level that also holds a larger entry for the address is
a TLB conflict abort. The kernel returns after the access that reaches the budget, or at a
fault: the faulting access is not counted in ``accesses`` (its lookups and walk are) and is
replayed by the next call.

run_batch's TLB probe, fill and walk are tlb.py's tlb_probe / tlb_insert and walk.py's walk,
inlined: the same functions test_tlb.py and test_walk.py drive through tlb_lookup, tlb_fill
and hw_walk. The random streams here cover every path of the loop around them: one to three
levels holding any sizes, split instruction/data levels, walk cache on and off, blocks, nT
blocks, pages and faults of every kind, the conflict check, the ownership check, budgets
that stop anywhere, TLB and walk-cache invalidations (and stale entries left on purpose).
"""

from __future__ import annotations

import naive as N
import numpy as np
import pytest
from conftest import tlb_contents, wc_contents
from hypothesis import event, given, settings
from hypothesis import strategies as st

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.hyp.pgtable import PageTableMemory, Stage2
from simulator.mmu import batch as B
from simulator.mmu.batch import FETCH, READ, WRITE, VcpuMMU
from simulator.mmu.tlb import TLBHierarchy, TLBLevelSpec
from simulator.mmu.walk import W_ACCESS_FLAG, W_CONFLICT, W_PERMISSION, W_TRANSLATION, WalkCache

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


FAULT_STATUS = {W_TRANSLATION: "translation", W_ACCESS_FLAG: "access_flag",
                W_PERMISSION: "permission", W_CONFLICT: "conflict"}


class SplitPair:
    """A VcpuMMU and a naive.RefVcpu over the same stage-2 with any split of the TLB levels
    between data and instruction accesses, the conflict check and an ownership record;
    every run is compared: results, counters, fault records, TLB and walk-cache contents."""

    def __init__(self, s2, specs, wc_entries, costs, owner, owner_base, me, vmid=1):
        ps = s2.geom.page_shift
        self.s2 = s2
        self.vmid = vmid
        self.ps = ps
        self.sim = VcpuMMU(TLBHierarchy([TLBLevelSpec(*sp) for sp in specs], ps),
                           WalkCache(wc_entries), vmid=vmid, costs=costs)
        self.sim.owner = owner
        self.sim.owner_base = owner_base
        self.sim.owner_id = me
        self.ref = N.RefVcpu(N.RefTLB(specs, ps), N.RefWalkCache(wc_entries, ps), vmid=vmid,
                             costs=costs, owner=owner, owner_base=owner_base, me=me)

    def run(self, addrs, kinds, start, stop, budget):
        s2, g = self.s2, self.s2.geom
        got = self.sim.run(s2, addrs, kinds, start, stop, budget)
        want = self.ref.run(lambda r, i: int(s2.mem.tables[r, i]), s2.mem.base_pa,
                            g.page_shift, s2.root, g.start_level, g.ipa_bits, addrs, kinds,
                            start, stop, budget)
        got = (int(got[0]), int(got[1]), "fault" if int(got[2]) == B.B_FAULT else "done")
        assert got == want, f"run({start}, {stop}, {budget}): simulator {got} != reference {want}"
        assert self.sim.counters() == self.ref.counters()
        if got[2] == "fault":
            f = self.sim.fault
            assert {"status": FAULT_STATUS[int(f[B.FR_STATUS])], "level": int(f[B.FR_LEVEL]),
                    "ipa": int(f[B.FR_IPA]) & N.MASK64, "kind": int(f[B.FR_KIND]),
                    "pte": int(f[B.FR_PTE]) & N.MASK64, "index": int(f[B.FR_INDEX])} == self.ref.fault
        assert tlb_contents(self.sim.tlb) == self.ref.tlb.contents()
        assert wc_contents(self.sim.wc, self.ps) == self.ref.wc.contents()
        return got

    def invalidate(self, vmid, lo=0, hi=0):
        assert self.sim.tlb.invalidate(vmid, lo, hi) == self.ref.tlb.invalidate(vmid, lo, hi)
        assert self.sim.wc.invalidate(vmid, lo, hi, self.ps) == self.ref.wc.invalidate(vmid, lo,
                                                                                        hi)


OWNER_BASES = [0, 0x10_0000_0000, 0x20_0000_0000]


@st.composite
def split_setups(draw):
    """setups() with each level serving data, instructions or both (every class served),
    the conflict check on or off, and an ownership record (possibly empty)."""
    s2, specs, wc_entries, costs, stream_ = draw(setups())
    serves = [draw(st.sampled_from(["all", "data", "instruction"])) for _ in specs]
    for cls in ("data", "instruction"):
        if not any(x in ("all", cls) for x in serves):
            serves[draw(st.integers(0, len(serves) - 1))] = "all"
    specs = [(*sp, sv) for sp, sv in zip(specs, serves)]
    costs = {**costs, "conflict_check": draw(st.sampled_from([0, 1]))}
    page = 1 << s2.geom.page_shift
    npages = draw(st.sampled_from([0, 1, 7, 4 * N.granule_size(2, s2.geom.page_shift) // page]))
    pattern = draw(st.lists(st.sampled_from([0, 1, 2, 0x81, 0x82, 0xFF]), min_size=1,
                            max_size=5))
    owner = np.array([pattern[i % len(pattern)] for i in range(npages)], dtype=np.uint8)
    owner_base = draw(st.sampled_from(OWNER_BASES))
    addrs, kinds = stream_
    if s2.geom.page_shift == 12 and s2.geom.ipa_bits > 31 and draw(st.booleans()):
        # a level-1 block (1 GiB) at 1 GiB, and accesses into it
        s2.map(GiB, GiB, 0x40_0000_0000)
        for j in draw(st.lists(st.integers(0, len(addrs) - 1), max_size=len(addrs))):
            addrs[j] = GiB + (int(addrs[j]) % (4 * N.granule_size(2, 12)))
    return s2, specs, wc_entries, costs, owner, owner_base, draw(st.sampled_from([0, 1, 2])), \
        (addrs, kinds)


@settings(settings.get_profile("mmu"), max_examples=100)
@given(split_setups(), st.data())
def test_split_tlbs_conflicts_and_ownership_match_the_reference_runner(setup, data):
    s2, specs, wc_entries, costs, owner, owner_base, me, (addrs, kinds) = setup
    pair = SplitPair(s2, specs, wc_entries, costs, owner, owner_base, me)
    event(f"{len(specs)} levels, split: {any(sp[5] != 'all' for sp in specs)}, "
          f"walk cache: {wc_entries > 0}")
    page = 1 << s2.geom.page_shift
    l2 = N.granule_size(2, s2.geom.page_shift)
    i, n = 0, len(addrs)
    for _ in range(4 * n):
        if i >= n:
            break
        budget = data.draw(st.sampled_from([0, 1, 50, 500, 1 << 40]))
        nxt, _, status = pair.run(addrs, kinds, i, n, budget)
        if status == "fault":
            f = pair.ref.fault
            assert f["index"] == nxt
            ipa = f["ipa"]
            if f["status"] == "conflict":
                pair.invalidate(pair.vmid)  # the abort handler's flush of the VMID; replayed
            elif (f["status"] == "translation" and ipa < 1 << s2.geom.ipa_bits
                    and data.draw(st.booleans())):
                base = ipa - ipa % page
                s2.map(base, page, 0x20_0000_0000 + base)
            else:
                nxt += 1
        i = nxt
        if status == "fault":
            event(f"fault: {pair.ref.fault['status']}")
        op = data.draw(st.integers(0, 5))
        if op == 0:
            lo = data.draw(st.integers(0, 7)) * l2 // 2
            apply_tlbis(pair, s2.unmap(lo, data.draw(st.sampled_from([page, 64 * page]))))
        elif op == 2 and costs["conflict_check"]:
            # a page's entry left in the TLBs while its region becomes a block (no TLBI),
            # then an access elsewhere in the block (its walk fills the block's entry) and
            # one to the page: a TLB conflict wherever a level holds both sizes
            a = int(addrs[data.draw(st.integers(0, n - 1))]) % (1 << s2.geom.ipa_bits)
            lo = a - a % l2
            s2.unmap(lo, l2)
            s2.map(a - a % page, page, 0x30_0000_0000 + lo)
            more = stream((a, READ), (lo + (a + page) % l2, READ), (a, READ))
            event(f"remap under a page entry, a level holds both: "
                  f"{any({2, 3} <= set(sp[4]) for sp in specs)}")
            j = 0
            while j < 3:
                if j == 1:
                    s2.unmap(lo, l2)
                    s2.map(lo, l2, 0x30_0000_0000 + lo)
                j, _, st2 = pair.run(*more, j, j + 1, 1 << 40)
                if st2 == "fault":
                    if pair.ref.fault["status"] == "conflict":
                        event("fault: conflict")
                        pair.invalidate(pair.vmid)
                    j += 1
        elif op == 1:
            # remap a region with another size without any TLBI (what FEAT_BBM level 2 allows
            # without break-before-make): stale entries of the old size stay in the TLBs
            lo = data.draw(st.integers(0, 3)) * l2
            s2.unmap(lo, l2)
            if data.draw(st.booleans()):
                s2.map(lo, l2, 0x30_0000_0000 + lo)
            else:
                s2.map(lo + data.draw(st.integers(0, 6)) * page, page, 0x30_0000_0000 + lo)
    c = pair.ref.counters()
    if owner.shape[0]:
        event(f"isolation violations: {'some' if c['isolation.violations'] else 'none'}")
    event(f"leaf levels used: {[lvl for lvl in (1, 2, 3) if c[f'xlate.l{lvl}']]}")


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
    assert (c["tlb.L1.hits"], c["tlb.L1.misses"], c["cycles.access"]) == (5, 1, 366)
    # translation: the walk's 3 * 100 and six L1 lookups, without the six issues of 10
    assert c["cycles.translation"] == 366 - 6 * 10 == 300 + 6 * 1


@pytest.mark.nojit
def test_translation_cycles_leave_out_the_issue_of_a_faulting_access_too():
    s2 = stage2()
    mmu = vcpu(access=10, mem_ref=100)
    addrs, kinds = stream((0x10, READ))
    i, used, status = mmu.run(s2, addrs, kinds, 0, 1, 1 << 40)
    assert status == 1 and used == 10 + 1 + 100  # a translation fault at the first level
    c = mmu.counters()
    assert (c["cycles.access"], c["cycles.translation"]) == (111, 101)


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
