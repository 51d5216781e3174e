"""The per-vCPU batch kernel: a quantum of accesses through TLBs, walk cache and walk.

Python never loops per access: a vCPU hands :func:`run_batch` an array of accesses and a
cycle budget. For each access the kernel probes the TLB levels in order (charging each
level's latency), fills the levels above a hit, walks the stage-2 after a miss in every
level (charging one memory latency per descriptor read and the walk-cache hit latency) and
fills every level, then checks permissions. It returns when the budget is spent, the
accesses run out, or an access faults; the faulting access is not counted in ``accesses``
and is replayed from its TLB lookup by the next call (its lookups and walk *are* counted,
so every lookup made, the replay's included, shows in the TLB counters).
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.mmu.tlb import PERM_R, PERM_W, PERM_X, PERM_LEVEL_SHIFT, tlb_fill, tlb_lookup
from simulator.mmu.walk import (
    W_ACCESS_FLAG,
    W_OK,
    W_PERMISSION,
    WO_LEVEL,
    WO_PTE,
    WO_REFS,
    WO_SIZE,
    WO_WC_HIT,
    hw_walk,
)

U = np.uint64

# access kinds (as in the workloads package)
READ = 0
WRITE = 1
FETCH = 2

# counter slots
C_ACCESSES = 0
C_READS = 1
C_WRITES = 2
C_FETCHES = 3
C_WALKS = 4
C_WALK_REFS = 5
C_WC_HITS = 6
C_TRANSLATION_FAULTS = 7
C_PERMISSION_FAULTS = 8
C_ACCESS_FLAG_FAULTS = 9
C_CYCLES = 10
C_XLATE = 11  # + leaf level (1..3): completed accesses translated by a leaf of that level
C_TLB = 16  # + 2 * tlb level: hits; + 2 * tlb level + 1: misses
MAX_TLB_LEVELS = 8
N_COUNTERS = C_TLB + 2 * MAX_TLB_LEVELS

# cost slots (cycles)
K_ACCESS = 0  # every access, before translation
K_MEM_REF = 1  # each descriptor read by a walk
K_WC_HIT = 2  # a walk-cache hit
N_COSTS = 4

# fault record slots
F_STATUS = 0  # W_TRANSLATION, W_ACCESS_FLAG or W_PERMISSION
F_LEVEL = 1
F_IPA = 2
F_KIND = 3
F_PTE = 4
F_INDEX = 5
N_FAULT = 8

# return status
B_DONE = 0  # budget spent or accesses exhausted
B_FAULT = 1


@jit
def run_batch(addrs, kinds, start, stop, budget, vmid, tables, base_pa, page_shift, root_row,
              start_level, ia_bits, key, stamp, tpa, tperm, off, sets, ways, lat, sizes,
              wc_tag, wc_row, wc_stamp, clock, costs, ctr, fault):
    """Run accesses ``start .. stop`` until ``budget`` cycles are used or one faults.

    addrs (uint64), kinds (uint8: READ/WRITE/FETCH): the access stream.
    vmid: the VMID tagging TLB and walk-cache entries.
    tables, base_pa, page_shift, root_row, start_level, ia_bits: the stage-2 (see hw_walk).
    key, stamp, tpa, tperm, off, sets, ways, lat, sizes: the TLB hierarchy (see tlb.py).
    wc_tag, wc_row, wc_stamp: the walk cache. clock: int64[1] LRU clock, advanced per access.
    costs: int64[N_COSTS] (K_*). ctr: int64[N_COUNTERS] counters, accumulated.
    fault: int64[N_FAULT] filled when an access faults.
    Returns (index of the next access to run, cycles used, B_DONE or B_FAULT).
    """
    nlev = off.shape[0]
    wout = np.zeros(8, np.int64)
    cycles = 0
    i = start
    while i < stop:
        a = addrs[i]
        kind = kinds[i]
        now = clock[0] + 1
        clock[0] = now
        cyc = costs[K_ACCESS]
        e = -1
        hit = -1
        for lv in range(nlev):
            cyc += lat[lv]
            e = tlb_lookup(lv, a, vmid, key, stamp, off, sets, ways, sizes, page_shift, now)
            if e >= 0:
                ctr[C_TLB + 2 * lv] += 1
                hit = lv
                break
            ctr[C_TLB + 2 * lv + 1] += 1
        if hit >= 0:
            perm = np.int64(tperm[e])
            shift = np.int64((key[e] >> U(40)) & U(63))
            pa = tpa[e]
            for up in range(hit):
                tlb_fill(up, a, vmid, shift, pa, perm, key, stamp, tpa, tperm, off, sets, ways,
                         sizes, page_shift, now)
        else:
            ctr[C_WALKS] += 1
            st = hw_walk(a, vmid, tables, base_pa, page_shift, root_row, start_level, ia_bits,
                         wc_tag, wc_row, wc_stamp, now, wout)
            ctr[C_WALK_REFS] += wout[WO_REFS]
            cyc += wout[WO_REFS] * costs[K_MEM_REF]
            if wout[WO_WC_HIT] >= 0:
                ctr[C_WC_HITS] += 1
                cyc += costs[K_WC_HIT]
            if st != W_OK:
                if st == W_ACCESS_FLAG:
                    ctr[C_ACCESS_FLAG_FAULTS] += 1
                else:
                    ctr[C_TRANSLATION_FAULTS] += 1
                fault[F_STATUS] = st
                fault[F_LEVEL] = wout[WO_LEVEL]
                fault[F_IPA] = np.int64(a)
                fault[F_KIND] = kind
                fault[F_PTE] = wout[WO_PTE]
                fault[F_INDEX] = i
                cycles += cyc
                ctr[C_CYCLES] += cycles
                return i, cycles, B_FAULT
            pte = U(wout[WO_PTE])
            shift = wout[WO_SIZE]
            level = wout[WO_LEVEL]
            pa = pte & (U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(page_shift)) - U(1)))
            if page_shift == 16:
                pa |= (pte & U(0xF000)) << U(36)
            perm = level << PERM_LEVEL_SHIFT
            if (pte & U(1 << 6)) != U(0):
                perm |= PERM_R
            if (pte & U(1 << 7)) != U(0):
                perm |= PERM_W
            if (pte & U(1 << 54)) == U(0):
                perm |= PERM_X
            if level == 3 or (pte & U(1 << 16)) == U(0):  # an nT block is never cached
                for lv in range(nlev):
                    tlb_fill(lv, a, vmid, shift, pa, perm, key, stamp, tpa, tperm, off, sets,
                             ways, sizes, page_shift, now)
        if kind == READ:
            need = PERM_R
        elif kind == WRITE:
            need = PERM_W
        else:
            need = PERM_X
        if (perm & need) != need:
            ctr[C_PERMISSION_FAULTS] += 1
            fault[F_STATUS] = W_PERMISSION
            fault[F_LEVEL] = perm >> PERM_LEVEL_SHIFT
            fault[F_IPA] = np.int64(a)
            fault[F_KIND] = kind
            fault[F_PTE] = 0
            fault[F_INDEX] = i
            cycles += cyc
            ctr[C_CYCLES] += cycles
            return i, cycles, B_FAULT
        ctr[C_ACCESSES] += 1
        ctr[C_READS + kind] += 1
        ctr[C_XLATE + (perm >> PERM_LEVEL_SHIFT)] += 1
        cycles += cyc
        i += 1
        if cycles >= budget:
            break
    ctr[C_CYCLES] += cycles
    return i, cycles, B_DONE


class VcpuMMU:
    """One vCPU's private translation state (TLB hierarchy, walk cache, LRU clock, counters)
    and the public wrapper of :func:`run_batch`."""

    def __init__(self, tlb, walk_cache, *, vmid: int = 1, costs=None):
        from simulator.mmu.tlb import TLBHierarchy  # noqa: F401  (type only)

        if len(tlb.specs) > MAX_TLB_LEVELS:
            raise ValueError(f"at most {MAX_TLB_LEVELS} TLB levels")
        self.tlb = tlb
        self.wc = walk_cache
        self.vmid = vmid
        self.clock = np.zeros(1, dtype=np.int64)
        self.ctr = np.zeros(N_COUNTERS, dtype=np.int64)
        self.fault = np.zeros(N_FAULT, dtype=np.int64)
        self.costs = np.zeros(N_COSTS, dtype=np.int64)
        if costs is not None:
            for k, v in costs.items():
                self.costs[{"access": K_ACCESS, "mem_ref": K_MEM_REF, "wc_hit": K_WC_HIT}[k]] = v

    def run(self, stage2, addrs, kinds, start: int, stop: int, budget: int):
        """Run accesses [start, stop) against ``stage2``; see :func:`run_batch`."""
        t = self.tlb
        m = stage2.mem
        g = stage2.geom
        return run_batch(addrs, kinds, start, stop, budget, self.vmid, m.tables, m.base_pa,
                         g.page_shift, stage2.root, g.start_level, g.ipa_bits, t.key, t.stamp,
                         t.pa, t.perm, t.off, t.sets, t.ways, t.latency, t.sizes, self.wc.tag,
                         self.wc.row, self.wc.stamp, self.clock, self.costs, self.ctr, self.fault)

    def counters(self) -> dict[str, int]:
        """The counters as a flat dotted dict (TLB levels by name)."""
        c = self.ctr
        out = {
            "accesses": int(c[C_ACCESSES]),
            "reads": int(c[C_READS]),
            "writes": int(c[C_WRITES]),
            "fetches": int(c[C_FETCHES]),
            "walks": int(c[C_WALKS]),
            "walk.mem_refs": int(c[C_WALK_REFS]),
            "walk_cache.hits": int(c[C_WC_HITS]),
            "translation_faults": int(c[C_TRANSLATION_FAULTS]),
            "permission_faults": int(c[C_PERMISSION_FAULTS]),
            "access_flag_faults": int(c[C_ACCESS_FLAG_FAULTS]),
            "cycles.translation": int(c[C_CYCLES]),
        }
        for lvl in (1, 2, 3):
            out[f"xlate.l{lvl}"] = int(c[C_XLATE + lvl])
        for i, name in enumerate(self.tlb.names):
            out[f"tlb.{name}.hits"] = int(c[C_TLB + 2 * i])
            out[f"tlb.{name}.misses"] = int(c[C_TLB + 2 * i + 1])
        return out
