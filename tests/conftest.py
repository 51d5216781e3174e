"""Shared fixtures for the simulator.arch / simulator.mmu tests.

The ``stage2_pair`` fixture drives a numba :class:`~simulator.hyp.pgtable.Stage2` and the
pure-Python reference (tests/naive.py) in lockstep and compares them after every operation;
``tlb_pair`` and ``vcpu_pair`` do the same for the TLB hierarchy and the batch kernel.

Hypothesis settings for these tests are the ``mmu`` profile (registered here, not loaded, so
that other test modules keep their own defaults): ``@settings(settings.get_profile("mmu"))``.
"""

from __future__ import annotations

import naive as N
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.hyp import pgtable as P
from simulator.hyp.pgtable import PageTableMemory, Stage2
from simulator.mmu.batch import VcpuMMU
from simulator.mmu.tlb import INVALID, TLBHierarchy, TLBLevelSpec, tlb_fill, tlb_lookup
from simulator.mmu.walk import WalkCache

settings.register_profile(
    "mmu",
    deadline=None,
    max_examples=25,
    report_multiple_bugs=False,  # shrink one failure per test: the reference is slow
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RULES = {N.GUEST: D.COUNT_NONZERO, N.HOST: D.COUNT_HOST_COALESCE}


def describe(pte: int, level: int, page_shift: int) -> str:
    return str(D.decode(pte, level, page_shift))


# ------------------------------------------------------------------------------------------
# Stage-2: the numba kernel beside the reference


def log_records(tlbis) -> int:
    """Records the simulator's TLBI log needs for these TLBIs (adjacent by-IPA TLBIs at one
    level share a record)."""
    n, last = 0, None
    for kind, addr, size, level in tlbis:
        if not (kind == "ipa" and last and last[0] == "ipa" and last[3] == level
                and last[1] + last[2] == addr):
            n += 1
        last = (kind, addr, size, level)
    return n


class Stage2Pair:
    """A numba Stage2 and a naive.RefStage2 with the same geometry, memory and features."""

    def __init__(self, page_shift: int, ipa_bits: int, *, rule: str = N.GUEST,
                 base_pa: int = 0x4000_0000, limit_pages: int | None = None, fwb: bool = False,
                 tlbi_range: bool = False, initial_pages: int = 4,
                 share: "Stage2Pair | None" = None, vmid: int = 1):
        """``share``: allocate from another pair's page-table memories (another VMID)."""
        self.ps = page_shift
        self.page = 1 << page_shift
        self.geom = Geometry(page_shift, ipa_bits)
        if share is None:
            self.mem = PageTableMemory(page_shift, base_pa, limit_pages=limit_pages,
                                       initial_pages=initial_pages)
            self.rmem = N.RefMemory(page_shift, base_pa, limit_pages=limit_pages)
            self.history: list[str] = []
        else:
            self.mem, self.rmem, self.history = share.mem, share.rmem, share.history
        self.sim = Stage2(self.mem, self.geom, vmid, rule=RULES[rule], fwb=fwb,
                          tlbi_range=tlbi_range)
        self.ref = N.RefStage2(self.rmem, ipa_bits, rule=rule, fwb=fwb, tlbi_range=tlbi_range)
        self.check()

    # -- operations: run both, compare the reports and then the whole state ---------------
    def map(self, ipa, size, phys, prot=D.PROT_RWX, *, sw=0, force_pte=False,
            handle_fault=False, nt=False, no_af=False):
        attr = N.set_prot_attr(prot)
        assert attr is not None, f"test asked for an impossible prot {prot:#x}"
        attr |= N.NT if nt else 0
        attr &= ~N.AF if no_af else N.MASK64
        self.history.append(f"{self.sim.vmid}: map({ipa:#x}, {size:#x}, {phys:#x}, "
                            f"prot={prot:#x}, sw={sw}, force_pte={force_pte}, "
                            f"handle_fault={handle_fault}, nt={nt}, no_af={no_af})")
        got = self.sim.map(ipa, size, phys, attr=attr, sw=sw, force_pte=force_pte,
                           handle_fault=handle_fault)
        want = self.ref.map(ipa, size, phys, attr | (sw << N.SW_SHIFT), force_pte=force_pte,
                            handle_fault=handle_fault)
        return self._compare(got, want)

    def set_owner(self, ipa, size, owner, *, coalesce=False):
        self.history.append(f"{self.sim.vmid}: set_owner({ipa:#x}, {size:#x}, {owner}, "
                            f"coalesce={coalesce})")
        got = self.sim.set_owner(ipa, size, owner, coalesce=coalesce)
        want = self.ref.set_owner(ipa, size, owner, coalesce=coalesce)
        return self._compare(got, want)

    def unmap(self, ipa, size):
        self.history.append(f"{self.sim.vmid}: unmap({ipa:#x}, {size:#x})")
        return self._compare(self.sim.unmap(ipa, size), self.ref.unmap(ipa, size))

    def split(self, ipa, size):
        self.history.append(f"{self.sim.vmid}: split({ipa:#x}, {size:#x})")
        return self._compare(self.sim.split(ipa, size), self.ref.split(ipa, size))

    def update_attrs(self, ipa, size, *, set_bits=0, clear_bits=0, handle_fault=False):
        self.history.append(f"{self.sim.vmid}: update_attrs({ipa:#x}, {size:#x}, "
                            f"set_bits={set_bits:#x}, clear_bits={clear_bits:#x}, "
                            f"handle_fault={handle_fault})")
        got = self.sim.update_attrs(ipa, size, set_bits=set_bits, clear_bits=clear_bits,
                                    handle_fault=handle_fault)
        want = self.ref.update_attrs(ipa, size, set_bits, clear_bits, handle_fault=handle_fault)
        return self._compare(got, want)

    def get_leaf(self, ipa):
        self.history.append(f"{self.sim.vmid}: get_leaf({ipa:#x})")
        got = self.sim.get_leaf(ipa)
        ret, pte, level = self.ref.get_leaf(ipa)
        assert ret == 0
        assert got == (pte, level), self._where(
            f"get_leaf({ipa:#x}): simulator {got[0]:#x} at level {got[1]}, kernel {pte:#x} at "
            f"level {level}")
        self.check()
        return got

    def destroy(self):
        self.history.append(f"{self.sim.vmid}: destroy()")
        got = self.sim.destroy()
        want = self.ref.destroy()
        self._compare_reports(got, want)
        self.check_memory()
        return got

    # -- comparisons ----------------------------------------------------------------------
    def _where(self, msg: str) -> str:
        return msg + "\nafter:\n  " + "\n  ".join(self.history)

    def _compare(self, got: P.OpReport, want: N.RefReport) -> P.OpReport:
        self._compare_reports(got, want)
        self.check()
        return got

    def _compare_reports(self, got: P.OpReport, want: N.RefReport) -> None:
        fields = ("ret", "tables_allocated", "tables_freed", "cmo_bytes", "icache_bytes",
                  "warnings")
        g = {f: getattr(got, f) for f in fields}
        w = {f: getattr(want, f) for f in fields}
        g.update(tlbi_ipa=got.tlbi_ipa, tlbi_range=got.tlbi_range, tlbi_vmid=got.tlbi_vmid)
        w.update(tlbi_ipa=want.count("ipa"), tlbi_range=want.count("range"),
                 tlbi_vmid=want.count("vmid"))
        assert g == w, self._where(f"report differs (simulator != kernel): {g} != {w}")
        gt = N.expand_merged_tlbis(got.tlbis)
        wt = N.canonical_tlbis(want.tlbis)
        if gt != wt and gt == [("vmid", len(want.tlbis))]:
            # the simulator's log keeps TLOG_CAPACITY records (adjacent by-IPA TLBIs at one
            # level merge) and degrades to one whole-VMID record when full
            assert log_records(want.tlbis) > P.TLOG_CAPACITY, self._where(
                "TLBI log folded into a VMID flush before it was full")
            return
        assert gt == wt, self._where(
            f"TLBIs differ (simulator != kernel):\n{gt[:20]}\n{wt[:20]}")

    def check_memory(self) -> None:
        """Every row in use bit for bit, refcounts, the free stack and the high-water mark."""
        mem, ref = self.mem, self.rmem
        assert int(mem.meta[P.M_HWM]) == ref.hwm, self._where("high-water mark differs")
        assert mem.free_rows().tolist() == ref.free, self._where(
            f"free stack differs: {mem.free_rows().tolist()} != {ref.free}")
        assert mem.pages_in_use == ref.in_use, self._where("pages in use differ")
        for row, page in ref.pages.items():
            got = mem.tables[row].tolist()
            if got != page:
                idx = next(i for i, (a, b) in enumerate(zip(got, page)) if a != b)
                level = next((lv for r, lv in self.ref.reachable() if r == row), 3)
                raise AssertionError(self._where(
                    f"row {row} entry {idx} (level {level}): simulator "
                    f"{describe(got[idx], level, self.ps)} != kernel "
                    f"{describe(page[idx], level, self.ps)}"))
            assert int(mem.refcnt[row]) == ref.refcount[row], self._where(
                f"row {row}: refcount {int(mem.refcnt[row])} != kernel {ref.refcount[row]}")

    def check(self) -> None:
        self.check_memory()
        problems = self.sim.check_invariants()
        assert not problems, self._where("invariants: " + "; ".join(problems))
        assert self.sim.leaf_counts() == self.ref.leaf_counts(), self._where("leaf counts")


@pytest.fixture(scope="session")
def stage2_pair():
    """Factory: ``stage2_pair(page_shift, ipa_bits, rule=..., limit_pages=..., ...)``."""
    return Stage2Pair


# ------------------------------------------------------------------------------------------
# TLB hierarchy and batch kernel


def tlb_contents(t: TLBHierarchy) -> list[list[list[tuple]]]:
    """Per level, per set: (vmid, shift, vpn, pa, perm) from least to most recently used."""
    out = []
    for lv in range(len(t.specs)):
        sets = []
        for s in range(int(t.sets[lv])):
            base = int(t.off[lv]) + s * int(t.ways[lv])
            live = [e for e in range(base, base + int(t.ways[lv])) if t.key[e] != INVALID]
            live.sort(key=lambda e: int(t.stamp[e]))
            sets.append([
                (int(t.key[e]) >> 46, (int(t.key[e]) >> 40) & 63, int(t.key[e]) & ((1 << 40) - 1),
                 int(t.pa[e]), int(t.perm[e]))
                for e in live
            ])
        out.append(sets)
    return out


def wc_contents(wc: WalkCache, page_shift: int, first_row: int = 0) -> list[list[tuple]]:
    """Per level, (vmid, region, row) from least to most recently used (rows 0..3: the
    stage-2 levels; ``first_row`` 4: the stage-1 levels)."""
    out = []
    for lv in range(first_row, first_row + 4):
        live = [i for i in range(wc.entries_per_level) if wc.tag[lv, i] != 0]
        live.sort(key=lambda i: int(wc.stamp[lv, i]))
        out.append([((int(wc.tag[lv, i]) - 1) >> 48, (int(wc.tag[lv, i]) - 1) & ((1 << 48) - 1),
                     int(wc.row[lv, i])) for i in live])
    return out


def make_tlbs(specs, page_shift):
    """(TLBHierarchy, RefTLB) from (name, sets, ways, latency, leaf_levels) tuples."""
    sim = TLBHierarchy([TLBLevelSpec(*s) for s in specs], page_shift)
    ref = N.RefTLB(specs, page_shift)
    return sim, ref


class TLBPair:
    """A TLBHierarchy driven through tlb_lookup / tlb_fill / tlb_invalidate, beside the
    naive.RefTLB; every call is made on both and compared, contents and LRU order included."""

    def __init__(self, specs, page_shift):
        self.sim, self.ref = make_tlbs(specs, page_shift)
        self.ps = page_shift
        self.now = 0

    def lookup(self, lv, ipa, vmid):
        """(size shift, pa, perm) of the entry that hits, or None."""
        t = self.sim
        self.now += 1
        e = int(tlb_lookup(lv, np.uint64(ipa), vmid, t.key, t.stamp, t.off, t.sets, t.ways,
                           t.sizes, self.now))
        want = self.ref.lookup(lv, ipa, vmid)
        got = None if e < 0 else ((int(t.key[e]) >> 40) & 63, int(t.pa[e]), int(t.perm[e]))
        assert got == (None if want is None else (want[0], want[1].pa, want[1].perm)), (
            f"lookup(level {lv}, {ipa:#x}, vmid {vmid})")
        return got

    def fill(self, lv, ipa, vmid, shift, pa, perm):
        t = self.sim
        self.now += 1
        e = int(tlb_fill(lv, np.uint64(ipa), vmid, shift, np.uint64(pa), perm, t.key, t.stamp,
                         t.pa, t.perm, t.off, t.sets, t.ways, t.sizes, self.now))
        assert (e >= 0) == self.ref.fill(lv, ipa, vmid, shift, pa, perm)
        self.check()
        return e

    def access(self, ipa, vmid, translate):
        """Probe the levels in order; a hit fills the levels above it, a miss (``translate``
        gives (shift, pa, perm)) fills them all. Returns the level that hit (-1: none)."""
        for lv in range(len(self.ref.levels)):
            hit = self.lookup(lv, ipa, vmid)
            if hit is not None:
                for up in range(lv):
                    self.fill(up, ipa, vmid, *hit)
                self.check()
                return lv
        shift, pa, perm = translate(ipa, vmid)
        for lv in range(len(self.ref.levels)):
            self.fill(lv, ipa, vmid, shift, pa, perm)
        return -1

    def invalidate(self, vmid, lo=0, hi=0):
        got = self.sim.invalidate(vmid, lo, hi)
        assert got == self.ref.invalidate(vmid, lo, hi), f"invalidate({vmid}, {lo:#x}, {hi:#x})"
        self.check()
        return got

    def check(self):
        assert tlb_contents(self.sim) == self.ref.contents()


@pytest.fixture(scope="session")
def tlb_pair():
    """Factory: ``tlb_pair([(name, sets, ways, latency, leaf_levels), ...], page_shift)``."""
    return TLBPair


class VcpuPair:
    """A VcpuMMU and a naive.RefVcpu over the same stage-2 tables."""

    def __init__(self, stage2: Stage2, specs, *, wc_entries=0, vmid=1, costs=None):
        ps = stage2.geom.page_shift
        self.stage2 = stage2
        tlb, rtlb = make_tlbs(specs, ps)
        self.sim = VcpuMMU(tlb, WalkCache(wc_entries), vmid=vmid, costs=costs)
        self.ref = N.RefVcpu(rtlb, N.RefWalkCache(wc_entries, ps), vmid=vmid, costs=costs)
        self.ps = ps

    def read(self, row, idx):
        return int(self.stage2.mem.tables[row, idx])

    def run(self, addrs, kinds, start, stop, budget):
        s2, g = self.stage2, self.stage2.geom
        got = self.sim.run(s2, addrs, kinds, start, stop, budget)
        want = self.ref.run(self.read, s2.mem.base_pa, g.page_shift, s2.root, g.start_level,
                            g.ipa_bits, addrs, kinds, start, stop, budget)
        got = (int(got[0]), int(got[1]), "fault" if int(got[2]) == 1 else "done")
        assert got == want, f"run({start}, {stop}, {budget}): simulator {got} != reference {want}"
        c = self.sim.counters()
        assert c == self.ref.counters()
        # every attempt looks up the first level; each level's misses go to the next; a miss
        # in the last level walks
        names = self.sim.tlb.names
        attempts = c["accesses"] + sum(c[f"{k}_faults"] for k in
                                       ("translation", "permission", "access_flag"))
        lookups = attempts
        for n in names:
            assert c[f"tlb.{n}.hits"] + c[f"tlb.{n}.misses"] == lookups
            lookups = c[f"tlb.{n}.misses"]
        assert c["walks"] == lookups
        assert c["accesses"] == c["reads"] + c["writes"] + c["fetches"]
        assert c["accesses"] == c["xlate.l1"] + c["xlate.l2"] + c["xlate.l3"]
        if got[2] == "fault":
            assert self.sim_fault() == self.ref.fault
        assert tlb_contents(self.sim.tlb) == self.ref.tlb.contents()
        assert wc_contents(self.sim.wc, self.ps) == self.ref.wc.contents()
        return got

    def sim_fault(self) -> dict:
        from simulator.mmu import batch as B
        from simulator.mmu.walk import W_ACCESS_FLAG, W_PERMISSION, W_TRANSLATION

        f = self.sim.fault
        status = {W_TRANSLATION: "translation", W_ACCESS_FLAG: "access_flag",
                  W_PERMISSION: "permission"}[int(f[B.FR_STATUS])]
        return {"status": status, "level": int(f[B.FR_LEVEL]), "ipa": int(f[B.FR_IPA]) & N.MASK64,
                "kind": int(f[B.FR_KIND]), "pte": int(f[B.FR_PTE]) & N.MASK64,
                "index": int(f[B.FR_INDEX])}

    def invalidate(self, vmid, lo=0, hi=0):
        a = self.sim.tlb.invalidate(vmid, lo, hi)
        b = self.ref.tlb.invalidate(vmid, lo, hi)
        assert a == b
        c = self.sim.wc.invalidate(vmid, lo, hi, self.ps)
        d = self.ref.wc.invalidate(vmid, lo, hi)
        assert c == d


@pytest.fixture(scope="session")
def vcpu_pair():
    """Factory: ``vcpu_pair(stage2, tlb_specs, wc_entries=..., costs=...)``."""
    return VcpuPair

