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
from simulator.mmu.tlb import INVALID, PERM_LEVEL_SHIFT, PERM_R, PERM_W, PERM_X
from simulator.mmu.walk import (
    W_ACCESS_FLAG,
    W_CONFLICT,
    W_OK,
    W_PERMISSION,
    W_TRANSLATION,
    wc_fill,
    wc_lookup,
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
C_ISOLATION = 15  # completed accesses whose output page the context does not own
C_TLB = 16  # + 2 * tlb level: hits; + 2 * tlb level + 1: misses
MAX_TLB_LEVELS = 8
N_COUNTERS = C_TLB + 2 * MAX_TLB_LEVELS

# cost slots (cycles)
K_ACCESS = 0  # every access, before translation
K_MEM_REF = 1  # each descriptor read by a walk
K_WC_HIT = 2  # a walk-cache hit
K_CONFLICT = 3  # 1: a lookup that matches entries of two sizes takes a TLB conflict abort
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


# the per-hierarchy tables run_batch() probes and fills with (batch_layout()), int64 offsets
L_PROBE = 0  # [lv * 3 + j]: the shifts level lv probes, smallest first
L_NPROBE = L_PROBE + 3 * MAX_TLB_LEVELS  # [lv]: how many
L_SETMASK = L_NPROBE + MAX_TLB_LEVELS  # [lv]: sets - 1, or -1 when sets is not a power of 2
L_FILL_AT = L_SETMASK + MAX_TLB_LEVELS  # [lv * 4 + leaf]: the shift an entry of that leaf
#                                         level is stored at in level lv (-1: not stored)
L_FIRST_LV = L_FILL_AT + 4 * MAX_TLB_LEVELS  # [cls]: the first level serving the class
L_FIRST_SHIFT = L_FIRST_LV + 2  # [cls]: that level's first-probed shift
N_LAYOUT = L_FIRST_SHIFT + 2


@jit
def batch_layout(sets, sizes, serves, page_shift):
    """The tables run_batch() derives from a TLB hierarchy's geometry (computed once per
    hierarchy: they never change)."""
    nlev = sets.shape[0]
    lay = np.full(N_LAYOUT, -1, np.int64)
    for lv in range(nlev):
        n = 0
        if (sets[lv] & (sets[lv] - 1)) == 0:
            lay[L_SETMASK + lv] = sets[lv] - 1
        for leaf in range(3, 0, -1):
            if (sizes[lv] >> leaf) & 1:
                lay[L_PROBE + lv * 3 + n] = (page_shift - 3) * (4 - leaf) + 3
                n += 1
        lay[L_NPROBE + lv] = n
        for leaf in range(1, 4):
            ls = (page_shift - 3) * (4 - leaf) + 3
            for held in range(1, 4):
                hs = (page_shift - 3) * (4 - held) + 3
                if (sizes[lv] >> held) & 1 and hs <= ls:
                    lay[L_FILL_AT + lv * 4 + leaf] = hs
                    break
    # Per access class (0 data, 1 instruction): the first level serving it, and the smallest
    # size that level holds (probed first).
    for c in range(2):
        for lv in range(nlev):
            if (serves[lv] >> c) & 1:
                lay[L_FIRST_LV + c] = lv
                break
        if lay[L_FIRST_LV + c] >= 0:
            lay[L_FIRST_SHIFT + c] = lay[L_PROBE + lay[L_FIRST_LV + c] * 3]
    return lay


@jit
def run_batch(addrs, kinds, start, stop, budget, vmid, tables, base_pa, page_shift, root_row,
              start_level, ia_bits, key, stamp, tpa, tperm, off, sets, ways, lat, sizes, serves,
              lay, wc_tag, wc_row, wc_stamp, clock, costs, ctr, fault, owner, owner_base, me):
    """Run accesses ``start .. stop`` until ``budget`` cycles are used or one faults.

    addrs (uint64), kinds (uint8: READ/WRITE/FETCH): the access stream.
    vmid: the VMID tagging TLB and walk-cache entries.
    tables, base_pa, page_shift, root_row, start_level, ia_bits: the stage-2 (see hw_walk).
    key, stamp, tpa, tperm, off, sets, ways, lat, sizes, serves: the TLB hierarchy (see
    tlb.py); a level is probed and filled only for the access classes it serves.
    wc_tag, wc_row, wc_stamp: the walk cache. clock: int64[1] LRU clock, advanced per access.
    costs: int64[N_COSTS] (K_*). ctr: int64[N_COUNTERS] counters, accumulated.
    fault: int64[N_FAULT] filled when an access faults.
    owner, owner_base, me: the ownership record (an owner id per physical page from
    owner_base; empty: no check) and the id of the context running; a completed access whose
    output page belongs to someone else counts in C_ISOLATION (it must stay 0); a page
    marked shared (0x80 | borrower) is open to the host (me == 0) and to its borrower.
    Returns (index of the next access to run, cycles used, B_DONE or B_FAULT).

    The TLB probe, fill and table walk are written out here rather than called: numba
    reference-counts every array argument of a call between jitted functions, which in this
    loop cost about 3x the work itself. They do exactly what tlb_lookup(), tlb_fill() and
    hw_walk() do; the tests hold all of them to the same pure-Python reference.
    """
    nlev = off.shape[0]
    cycles = 0
    now = clock[0]
    n_access = 0
    n_walks = 0
    n_refs = 0
    n_wc = 0
    use_wc = wc_tag.shape[1] > 0
    n_owned = owner.shape[0]
    n_violations = 0
    ptmask = U((1 << (page_shift - 3)) - 1)
    oa_mask = U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(page_shift)) - U(1))
    pgd_shift = U((page_shift - 3) * (5 - start_level) + 3)
    min_block = 1 if page_shift == 12 else 2
    vtag = U(vmid) << U(46)
    # An access in the region of the entry of the class's first level used last by its
    # class, when the entry has that level's first-probed size and still holds the same
    # key, is exactly the hit a full probe would find (a key appears at most once in a set).
    # last[cls]: that entry + 1 (0: none); last[2 + cls]: its key; last[4 + cls]: its VPN.
    last = np.zeros(6, np.uint64)
    base_cost = costs[K_ACCESS]
    ref_cost = costs[K_MEM_REF]
    conflict_check = costs[K_CONFLICT]
    i = start
    status = B_DONE
    while i < stop:
        a = addrs[i]
        kind = kinds[i]
        cls = 1 if kind == FETCH else 0
        now += 1
        cyc = base_cost
        le = np.int64(last[cls]) - 1 if conflict_check == 0 else -1
        flv = lay[L_FIRST_LV + cls]
        fsh = lay[L_FIRST_SHIFT + cls]
        if le >= 0 and (a >> U(fsh)) == last[4 + cls] and key[le] == last[2 + cls]:
            e = le
            stamp[e] = now
            ctr[C_TLB + 2 * flv] += 1
            cyc += lat[flv]
            perm = np.int64(tperm[e])
        else:
            # ---- probe the levels serving this class, in order (tlb_lookup) ----
            e = -1
            hit = -1
            conflict = False
            for lv in range(nlev):
                if (serves[lv] >> cls) & 1 == 0:
                    continue
                cyc += lat[lv]
                nways = ways[lv]
                smask = lay[L_SETMASK + lv]
                for j in range(lay[L_NPROBE + lv]):
                    shift = lay[L_PROBE + lv * 3 + j]
                    vpn = a >> U(shift)
                    k = vtag | (U(shift) << U(40)) | vpn
                    if smask >= 0:
                        base = off[lv] + np.int64(vpn & U(smask)) * nways
                    else:
                        base = off[lv] + np.int64(vpn % U(sets[lv])) * nways
                    for w in range(nways):
                        if key[base + w] == k:
                            e = base + w
                            break
                    if e >= 0:
                        if conflict_check != 0:
                            # FEAT_BBM level 2 without nT: an entry of another size that
                            # also matches is a TLB conflict (ARM ARM D8.16.2)
                            for j2 in range(j + 1, lay[L_NPROBE + lv]):
                                shift2 = lay[L_PROBE + lv * 3 + j2]
                                vpn2 = a >> U(shift2)
                                k2 = vtag | (U(shift2) << U(40)) | vpn2
                                if smask >= 0:
                                    b2 = off[lv] + np.int64(vpn2 & U(smask)) * nways
                                else:
                                    b2 = off[lv] + np.int64(vpn2 % U(sets[lv])) * nways
                                for w2 in range(nways):
                                    if key[b2 + w2] == k2:
                                        conflict = True
                        break
                if e >= 0:
                    stamp[e] = now
                    ctr[C_TLB + 2 * lv] += 1
                    hit = lv
                    break
                ctr[C_TLB + 2 * lv + 1] += 1
            if conflict:
                fault[F_STATUS] = W_CONFLICT
                fault[F_LEVEL] = 0
                fault[F_IPA] = np.int64(a)
                fault[F_KIND] = kind
                fault[F_PTE] = 0
                fault[F_INDEX] = i
                cycles += cyc
                status = B_FAULT
                break
            if hit >= 0:
                perm = np.int64(tperm[e])
                shift = np.int64((key[e] >> U(40)) & U(63))
                pa = tpa[e]
                nfill = hit
            else:
                # ---- the stage-2 walk (hw_walk) ----
                n_walks += 1
                refs = 0
                wst = W_TRANSLATION
                level = start_level
                pte = U(0)
                shift = 0
                if (a >> U(ia_bits)) == U(0):
                    row = root_row + np.int64(a >> pgd_shift)
                    if use_wc:
                        for lvw in range(2, start_level - 1, -1):
                            r = wc_lookup(lvw, vmid, a, page_shift, wc_tag, wc_row, wc_stamp, now)
                            if r >= 0:
                                row = r
                                level = lvw + 1
                                n_wc += 1
                                cyc += costs[K_WC_HIT]
                                break
                    while True:
                        shift = (page_shift - 3) * (4 - level) + 3
                        pte = tables[row, np.int64((a >> U(shift)) & ptmask)]
                        refs += 1
                        if (pte & U(1)) == U(0):
                            break
                        if level < 3 and (pte & U(2)) != U(0):
                            tpa_ = pte & oa_mask
                            if page_shift == 16:
                                tpa_ |= (pte & U(0xF000)) << U(36)
                            nxt = np.int64((tpa_ - U(base_pa)) >> U(page_shift))
                            if use_wc:
                                wc_fill(level, vmid, a, page_shift, nxt, wc_tag, wc_row, wc_stamp,
                                        now)
                            row = nxt
                            level += 1
                            continue
                        if (level == 3 and (pte & U(2)) == U(0)) or level < min_block:
                            break
                        wst = W_OK if (pte & U(1 << 10)) != U(0) else W_ACCESS_FLAG
                        break
                n_refs += refs
                cyc += refs * ref_cost
                if wst != W_OK:
                    if wst == W_ACCESS_FLAG:
                        ctr[C_ACCESS_FLAG_FAULTS] += 1
                    else:
                        ctr[C_TRANSLATION_FAULTS] += 1
                    fault[F_STATUS] = wst
                    fault[F_LEVEL] = level
                    fault[F_IPA] = np.int64(a)
                    fault[F_KIND] = kind
                    fault[F_PTE] = np.int64(pte)
                    fault[F_INDEX] = i
                    cycles += cyc
                    status = B_FAULT
                    break
                # a block's output address: bits below the block size (nT) are not OA
                pa = pte & oa_mask & ~((U(1) << U(shift)) - U(1))
                if page_shift == 16:
                    pa |= (pte & U(0xF000)) << U(36)
                perm = level << PERM_LEVEL_SHIFT
                if (pte & U(1 << 6)) != U(0):
                    perm |= PERM_R
                if (pte & U(1 << 7)) != U(0):
                    perm |= PERM_W
                if (pte & U(1 << 54)) == U(0):
                    perm |= PERM_X
                # an nT block is never cached
                nfill = nlev if (level == 3 or (pte & U(1 << 16)) == U(0)) else 0
                e = -1
            # ---- fill the levels above the hit, or all after a walk (tlb_fill) ----
            leaf_of_entry = 4 - (shift - 3) // (page_shift - 3)
            for lv in range(nfill):
                if (serves[lv] >> cls) & 1 == 0:
                    continue
                fill_shift = lay[L_FILL_AT + lv * 4 + leaf_of_entry]
                if fill_shift < 0:
                    continue
                fpa = U(pa)
                if fill_shift < shift:
                    fpa += (a & ((U(1) << U(shift)) - U(1))) & ~((U(1) << U(fill_shift)) - U(1))
                vpn = a >> U(fill_shift)
                nways = ways[lv]
                smask = lay[L_SETMASK + lv]
                if smask >= 0:
                    base = off[lv] + np.int64(vpn & U(smask)) * nways
                else:
                    base = off[lv] + np.int64(vpn % U(sets[lv])) * nways
                victim = base
                for w in range(nways):
                    ev = base + w
                    if key[ev] == INVALID:
                        victim = ev
                        break
                    if stamp[ev] < stamp[victim]:
                        victim = ev
                key[victim] = vtag | (U(fill_shift) << U(40)) | vpn
                stamp[victim] = now
                tpa[victim] = fpa
                tperm[victim] = perm
                if lv == flv:
                    e = victim
            # remember the class's first-level entry now holding this translation, when it
            # has that level's first-probed size
            if e >= off[flv] and e < off[flv] + sets[flv] * ways[flv] and \
                    np.int64((key[e] >> U(40)) & U(63)) == fsh:
                last[cls] = U(e + 1)
                last[2 + cls] = key[e]
                last[4 + cls] = a >> U(fsh)
            else:
                last[cls] = U(0)
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
            status = B_FAULT
            break
        if n_owned > 0:
            eshift = np.int64((key[e] >> U(40)) & U(63)) if e >= 0 else shift
            epa = tpa[e] if e >= 0 else pa
            out_pa = epa | (a & ((U(1) << U(eshift)) - U(1)))
            pg = np.int64((out_pa - U(owner_base)) >> U(page_shift))
            if pg >= 0 and pg < n_owned:
                o = np.int64(owner[pg])
                # a shared page (0x80 | borrower) is open to the host and to its borrower
                if o != me and not (o & 0x80 and o != 0xFF and (me == 0 or (o & 0x7F) == me)):
                    n_violations += 1
        n_access += 1
        ctr[C_READS + kind] += 1
        ctr[C_XLATE + (perm >> PERM_LEVEL_SHIFT)] += 1
        cycles += cyc
        i += 1
        if cycles >= budget:
            break
    clock[0] = now
    ctr[C_ACCESSES] += n_access
    ctr[C_WALKS] += n_walks
    ctr[C_WALK_REFS] += n_refs
    ctr[C_WC_HITS] += n_wc
    ctr[C_ISOLATION] += n_violations
    ctr[C_CYCLES] += cycles
    return i, cycles, status


class VcpuMMU:
    """One vCPU's private translation state (TLB hierarchy, walk cache, LRU clock, counters)
    and the public wrapper of :func:`run_batch`."""

    NO_OWNER = np.zeros(0, dtype=np.uint8)

    def __init__(self, tlb, walk_cache, *, vmid: int = 1, costs=None, clock=None):
        if len(tlb.specs) > MAX_TLB_LEVELS:
            raise ValueError(f"at most {MAX_TLB_LEVELS} TLB levels")
        # tlb, walk_cache and clock belong to the physical CPU: contexts sharing a CPU share
        # them (entries are VMID-tagged); counters and fault records are the context's own
        self.tlb = tlb
        self.wc = walk_cache
        self.vmid = vmid
        self.clock = np.zeros(1, dtype=np.int64) if clock is None else clock
        self.owner = self.NO_OWNER
        self.owner_base = 0
        self.owner_id = 0
        self.ctr = np.zeros(N_COUNTERS, dtype=np.int64)
        self.fault = np.zeros(N_FAULT, dtype=np.int64)
        self.costs = np.zeros(N_COSTS, dtype=np.int64)
        self.layout = batch_layout(tlb.sets, tlb.sizes, tlb.serves, tlb.page_shift)
        if costs is not None:
            for k, v in costs.items():
                self.costs[{"access": K_ACCESS, "mem_ref": K_MEM_REF, "wc_hit": K_WC_HIT,
                             "conflict_check": K_CONFLICT}[k]] = v

    def run(self, stage2, addrs, kinds, start: int, stop: int, budget: int):
        """Run accesses [start, stop) against ``stage2``; see :func:`run_batch`."""
        t = self.tlb
        m = stage2.mem
        g = stage2.geom
        return run_batch(addrs, kinds, start, stop, budget, self.vmid, m.tables, m.base_pa,
                         g.page_shift, stage2.root, g.start_level, g.ipa_bits, t.key, t.stamp,
                         t.pa, t.perm, t.off, t.sets, t.ways, t.latency, t.sizes, t.serves,
                         self.layout, self.wc.tag, self.wc.row, self.wc.stamp, self.clock, self.costs,
                         self.ctr, self.fault, self.owner, self.owner_base, self.owner_id)

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
        if self.owner.shape[0]:
            out["isolation.violations"] = int(c[C_ISOLATION])
        for lvl in (1, 2, 3):
            out[f"xlate.l{lvl}"] = int(c[C_XLATE + lvl])
        for i, name in enumerate(self.tlb.names):
            out[f"tlb.{name}.hits"] = int(c[C_TLB + 2 * i])
            out[f"tlb.{name}.misses"] = int(c[C_TLB + 2 * i + 1])
        return out
