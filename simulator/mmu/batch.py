"""The per-vCPU batch kernel: a quantum of accesses through TLBs, walk cache and walk.

Python never loops per access: a vCPU hands :func:`run_batch` an array of accesses and a
cycle budget. For each access the kernel probes the TLB levels in order (charging each
level's latency), fills the levels above a hit, walks the stage-2 after a miss in every
level (charging one memory latency per descriptor read and the walk-cache hit latency) and
fills every level, then checks permissions. It returns when the budget is spent, the
accesses run out, or an access faults; the faulting access is not counted in ``accesses``
and is replayed from its TLB lookup by the next call (its lookups and walk *are* counted,
so every lookup made, the replay's included, shows in the TLB counters).

One implementation of the probe, the fill and the walk. They are written once, as
``tlb_probe`` and ``tlb_insert`` (tlb.py) and ``walk`` (walk.py), jitted with
``inline="always"``: numba inlines them into run_batch at the IR level, so run_batch calls
nothing per access. ``tlb_lookup``, ``tlb_fill`` and ``hw_walk`` are thin jitted wrappers
of the same three functions, and they are what tests/test_tlb.py and tests/test_walk.py
hold to the pure-Python references (tests/naive.py); tests/test_batch.py holds run_batch
itself to naive.RefVcpu on random streams covering every path of the loop around them.

Like every kernel (:mod:`simulator._jit`), run_batch is compiled without numba's reference
counting: inlined functions bind their array arguments to new variables, and numba would
count references to each such binding (an atomic increment and decrement per array, per
call, per access) wherever its pruning pass gives up, which in a function of this size is
everywhere. Arrays are indexed with unsigned integers in the hot loops (no
negative-index wrap-around code), and a walk prefetches the last-level descriptor of the
access PREFETCH_AHEAD places ahead (host performance only: nothing simulated changes).
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.mmu.tlb import (
    L_FIRST_LV,
    L_FIRST_SHIFT,
    MAX_TLB_LEVELS,
    PERM_LEVEL_SHIFT,
    PERM_R,
    PERM_W,
    PERM_X,
    tlb_insert,
    tlb_layout,
    tlb_probe,
)
from simulator.mmu.walk import (
    W_ACCESS_FLAG,
    W_CONFLICT,
    W_OK,
    W_PERMISSION,
    PERM_NOCACHE,
    leaf_output,
    nested_walk,
    s1_ipa_of,
    walk,
    walk_prefetch,
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
C_XLATE_CYCLES = 16  # the part of C_CYCLES that is TLB lookups, walks and walk-cache hits
# a guest with a stage-1 (nested walks): the stage-1 part of C_WALK_REFS, stage-1 walk-cache
# hits, stage-1 faults (for the guest's handler), stage-2 faults on a stage-1 walk (S1PTW)
C_S1_REFS = 17
C_S1_WC_HITS = 18
C_S1_FAULTS = 19
C_S1PTW = 20
C_S2C_HITS = 21  # stage-2 translations of nested walks served by a cached stage-2 entry
C_TLB = 22  # + 2 * tlb level: hits; + 2 * tlb level + 1: misses
N_COUNTERS = C_TLB + 2 * MAX_TLB_LEVELS

# cost slots (cycles)
K_ACCESS = 0  # every access, before translation
K_MEM_REF = 1  # each descriptor read by a walk
K_WC_HIT = 2  # a walk-cache hit
K_CONFLICT = 3  # 1: a lookup that matches entries of two sizes takes a TLB conflict abort
N_COSTS = 4

# fault record slots
FR_STATUS = 0  # W_TRANSLATION, W_ACCESS_FLAG or W_PERMISSION
FR_LEVEL = 1
FR_IPA = 2
FR_KIND = 3
FR_PTE = 4
FR_INDEX = 5
FR_STAGE = 6  # 1: a stage-1 fault, for the guest's own handler (FR_IPA holds the VA); 2: KVM's
FR_S1PTW = 7  # 1: the stage-2 fault was on a stage-1 table walk
FR_VA = 8  # the access's address (its VA with a stage-1)
N_FAULT = 9

# A walk also prefetches the last-level descriptor of the access this far ahead (host
# performance only: the walk of a trace that misses the TLBs is bound by the latency of that
# read, which the host's caches mostly miss on large page tables).
PREFETCH_AHEAD = 8

# return status
B_DONE = 0  # budget spent or accesses exhausted
B_FAULT = 1


@jit
def _record(fault, status, level, ipa, va, kind, pte, i, stage, s1ptw, nested, s1t, s1p):
    """Fill the fault record of access ``i`` (a call on the fault paths keeps run_batch
    small). With ``nested`` non-zero ``ipa`` is a VA whose IPA is looked up in the guest's
    stage-1: the address the hardware reports (HPFAR_EL2) after a combined TLB entry hit."""
    fault[FR_STATUS] = status
    fault[FR_LEVEL] = level
    fault[FR_IPA] = np.int64(ipa) if nested == 0 else np.int64(s1_ipa_of(ipa, s1t, s1p))
    fault[FR_KIND] = kind
    fault[FR_PTE] = np.int64(pte)
    fault[FR_INDEX] = i
    fault[FR_STAGE] = stage
    fault[FR_S1PTW] = 1 if s1ptw else 0
    fault[FR_VA] = np.int64(va)


# the per-hierarchy tables run_batch() probes and fills with (tlb.py's layout)
batch_layout = tlb_layout


@jit
def run_batch(addrs, kinds, start, stop, budget, vmid, tables, base_pa, page_shift, root_row,
              start_level, ia_bits, key, stamp, tpa, tperm, off, sets, ways, lat, sizes, serves,
              lay, wc_tag, wc_row, wc_stamp, clock, costs, ctr, fault, owner, owner_base, me,
              nested, s1t, s1p, s2sizes):
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
    nested, s1t, s1p: with ``nested`` non-zero the addresses are VAs of the guest stage-1
    in s1t/s1p (walk.nested_walk): TLB entries are combined VA -> PA ones, a miss walks both
    stages, and a stage-1 fault is reported with FR_STAGE 1 for the guest's handler;
    s2sizes: per TLB level, the stage-2 (IPA -> PA) entry sizes it also caches for the nested
    walk (tlb.s2c_probe).
    Returns (index of the next access to run, cycles used, B_DONE or B_FAULT).

    The TLB probe, the fill and the walk are tlb_probe(), tlb_insert() and walk(), inlined
    here (see the module docstring); tlb_lookup(), tlb_fill() and hw_walk() wrap the same
    functions for the tests.
    """
    nlev = off.shape[0]
    cycles = 0
    now = clock[0]
    now0 = now
    n_access = 0
    n_walks = 0
    n_refs = 0
    n_wc = 0
    n_owned = owner.shape[0]
    n_violations = 0
    vtag = U(vmid) << U(46)
    # An access in the region of the entry of the class's first level used last by its
    # class, when the entry has that level's first-probed size and still holds the same
    # key, is exactly the hit a full probe would find (a key appears at most once in a set).
    # Per class (data, instruction): that entry (-1: none), its key and its VPN.
    last_e0 = -1
    last_k0 = U(0)
    last_v0 = U(0)
    last_e1 = -1
    last_k1 = U(0)
    last_v1 = U(0)
    base_cost = costs[K_ACCESS]
    ref_cost = costs[K_MEM_REF]
    conflict_check = costs[K_CONFLICT]
    i = start
    status = B_DONE
    while i < stop:
        a = addrs[i]
        kind = kinds[i]
        cls = 1 if kind == FETCH else 0
        now += 16  # an access's stamps: now, and now + 1 .. 15 for a nested walk's
        cyc = base_cost
        if cls == 0:
            le = last_e0
            lk = last_k0
            lvpn = last_v0
        else:
            le = last_e1
            lk = last_k1
            lvpn = last_v1
        flv = lay[L_FIRST_LV + cls]
        fsh = lay[L_FIRST_SHIFT + cls]
        if le >= 0 and (a >> U(fsh)) == lvpn and key[le] == lk:
            e = le
            stamp[e] = now
            ctr[C_TLB + 2 * flv] += 1
            cyc += lat[flv]
            perm = np.int64(tperm[e])
        else:
            # ---- probe the levels serving this class, in order ----
            e = -1
            hit = -1
            conflict = False
            for lv in range(nlev):
                if (serves[lv] >> cls) & 1 == 0:
                    continue
                cyc += lat[lv]
                e, conflict = tlb_probe(lv, a, vtag, key, stamp, off, sets, ways, lay, now,
                                        conflict_check)
                if e >= 0:
                    ctr[C_TLB + 2 * lv] += 1
                    hit = lv
                    break
                ctr[C_TLB + 2 * lv + 1] += 1
            if conflict:
                _record(fault, W_CONFLICT, 0, a, a, kind, U(0), i, 2, False, nested, s1t,
                        s1p)
                cycles += cyc
                status = B_FAULT
                break
            if hit >= 0:
                perm = np.int64(tperm[e])
                shift = np.int64((key[e] >> U(40)) & U(63))
                pa = tpa[e]
                nfill = hit
                fill_now = now
            elif nested != 0:
                # ---- the nested walk: stage-1 over stage-2 ----
                n_walks += 1
                (wst, stage, level, pte, r1, r2, nh, s1hit, shift, pa, fipa, s1ptw, perm,
                 s2h, s2cyc) = nested_walk(a, vmid, tables, base_pa, page_shift, root_row,
                                           start_level, ia_bits, wc_tag, wc_row, wc_stamp,
                                           now + 1, s1t, s1p, key, stamp, tpa, tperm, off,
                                           sets, ways, lat, s2sizes)
                n_wc += nh
                cyc += nh * costs[K_WC_HIT] + s2cyc
                if s1hit >= 0:
                    ctr[C_S1_WC_HITS] += 1
                ctr[C_S2C_HITS] += s2h
                n_refs += r1 + r2
                ctr[C_S1_REFS] += r1
                cyc += (r1 + r2) * ref_cost
                if wst != W_OK:
                    if stage == 1:
                        ctr[C_S1_FAULTS] += 1
                        fipa = a  # the guest's handler takes the VA
                    elif wst == W_ACCESS_FLAG:
                        ctr[C_ACCESS_FLAG_FAULTS] += 1
                    else:
                        ctr[C_TRANSLATION_FAULTS] += 1
                    if s1ptw:
                        ctr[C_S1PTW] += 1
                    # a stage-1 fault goes to the guest with its VA; a stage-2 fault on a
                    # stage-1 walk is a read (kvm_is_write_fault(), 6.3+)
                    _record(fault, wst, level, fipa, a, READ if s1ptw else kind, pte, i,
                            stage, s1ptw, np.int64(0), s1t, s1p)
                    cycles += cyc
                    status = B_FAULT
                    break
                nfill = 0 if perm & PERM_NOCACHE else nlev
                perm &= ~PERM_NOCACHE
                e = -1
                fill_now = now + 15  # after the stage-2 translations' stamps
            else:
                # ---- the stage-2 walk ----
                n_walks += 1
                if i + PREFETCH_AHEAD < stop:
                    walk_prefetch(addrs[i + PREFETCH_AHEAD], tables, base_pa, page_shift,
                                  root_row, start_level, ia_bits)
                wst, level, pte, refs, wc_hit, shift = walk(
                    a, vmid, tables, base_pa, page_shift, root_row, start_level, ia_bits,
                    wc_tag, wc_row, wc_stamp, now)
                if wc_hit >= 0:
                    n_wc += 1
                    cyc += costs[K_WC_HIT]
                n_refs += refs
                cyc += refs * ref_cost
                if wst != W_OK:
                    if wst == W_ACCESS_FLAG:
                        ctr[C_ACCESS_FLAG_FAULTS] += 1
                    else:
                        ctr[C_TRANSLATION_FAULTS] += 1
                    _record(fault, wst, level, a, a, kind, pte, i, 2, False, np.int64(0), s1t,
                            s1p)
                    cycles += cyc
                    status = B_FAULT
                    break
                pa, perm = leaf_output(pte, level, shift, page_shift)
                # an nT block is never cached
                nfill = 0 if perm & PERM_NOCACHE else nlev
                perm &= ~PERM_NOCACHE
                e = -1
                fill_now = now
            # ---- fill the levels above the hit, or all after a walk ----
            for lv in range(nfill):
                if (serves[lv] >> cls) & 1 == 0:
                    continue
                v = tlb_insert(lv, a, vtag, shift, pa, perm, key, stamp, tpa, tperm, off, sets,
                               ways, lay, fill_now)
                if lv == flv and v >= 0:
                    e = v
            # remember the class's first-level entry now holding this translation, when it
            # has that level's first-probed size
            if conflict_check == 0 and e >= off[flv] and e < off[flv] + sets[flv] * ways[flv] \
                    and np.int64((key[e] >> U(40)) & U(63)) == fsh:
                le = e
                lk = key[e]
                lvpn = a >> U(fsh)
            else:
                le = -1
            if cls == 0:
                last_e0 = le
                last_k0 = lk
                last_v0 = lvpn
            else:
                last_e1 = le
                last_k1 = lk
                last_v1 = lvpn
        if kind == READ:
            need = PERM_R
        elif kind == WRITE:
            need = PERM_W
        else:
            need = PERM_X
        if (perm & need) != need:
            ctr[C_PERMISSION_FAULTS] += 1
            _record(fault, W_PERMISSION, perm >> PERM_LEVEL_SHIFT, a, a, kind, U(0), i, 2,
                    False, nested, s1t, s1p)
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
    # every access tried (the clock ticks once each, the faulting one included) paid the
    # issue cost; the rest is translation
    ctr[C_XLATE_CYCLES] += cycles - base_cost * ((now - now0) >> 4)
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
        # the guest stage-1 (simulator.guest.stage1) when addresses are VAs; empty: IPAs
        self.s1t = np.zeros((0, 1), dtype=np.uint64)
        self.s1p = np.zeros(0, dtype=np.int64)
        self.fault = np.zeros(N_FAULT, dtype=np.int64)
        self.costs = np.zeros(N_COSTS, dtype=np.int64)
        self.layout = batch_layout(tlb.sets, tlb.sizes, tlb.serves)
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
                         self.ctr, self.fault, self.owner, self.owner_base, self.owner_id,
                         int(self.s1p.shape[0] > 0), self.s1t, self.s1p, t.s2sizes)

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
            "cycles.access": int(c[C_CYCLES]),
            "cycles.translation": int(c[C_XLATE_CYCLES]),
        }
        if self.owner.shape[0]:
            out["isolation.violations"] = int(c[C_ISOLATION])
        if self.s1p.shape[0]:
            out["walk.s1_refs"] = int(c[C_S1_REFS])
            out["walk.s2_refs"] = int(c[C_WALK_REFS] - c[C_S1_REFS])
            out["walk_cache.s1_hits"] = int(c[C_S1_WC_HITS])
            out["s1.translation_faults"] = int(c[C_S1_FAULTS])
            out["faults.s1ptw"] = int(c[C_S1PTW])
            if self.tlb.s2sizes.any():
                out["s2_cache.hits"] = int(c[C_S2C_HITS])
        for lvl in (1, 2, 3):
            out[f"xlate.l{lvl}"] = int(c[C_XLATE + lvl])
        for i, name in enumerate(self.tlb.names):
            out[f"tlb.{name}.hits"] = int(c[C_TLB + 2 * i])
            out[f"tlb.{name}.misses"] = int(c[C_TLB + 2 * i + 1])
        return out
