"""TLB hierarchy: any number of set-associative levels, true LRU, as numpy arrays.

All levels live in flat arrays; level ``l`` owns entries ``off[l] .. off[l] + sets[l] *
ways[l]``, set ``s`` of it the ``ways[l]`` entries from ``off[l] + s * ways[l]``. An entry
holds one translation of one page size:

* ``key``: ``vmid << 46 | size_shift << 40 | ipa >> size_shift`` (``INVALID`` when empty);
* ``stamp``: the LRU clock value of its last use;
* ``pa``: the output address of the region the entry maps;
* ``perm``: ``PERM_R | PERM_W | PERM_X`` and the leaf level in bits 4..5.

Set index = (ipa >> size_shift) mod sets. A lookup probes every entry size the level holds
(``sizes[l]`` is a bitmask over size shifts: bit 12 = 4K, bit 16 = 64K, bit 21 = 2M, ...).
A level that does not hold an entry's size stores it *splintered* into the largest size it
holds that is not larger (the pa adjusted), as real TLBs do; a level holding no size that
small does not store it. Inclusion is not enforced (no back-invalidation). A level serves
data accesses, instruction fetches or both (``serves``: split L1 I/D TLBs over a unified L2);
an access probes and fills only the levels that serve it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator._jit import jit

U = np.uint64
INVALID = U(0xFFFFFFFFFFFFFFFF)
PERM_R = 1
PERM_W = 2
PERM_X = 4
PERM_LEVEL_SHIFT = 4


@jit
def set_index(vpn, nsets):
    """(ipa >> shift) mod sets; a mask when sets is a power of two (no division)."""
    if (nsets & (nsets - 1)) == 0:
        return np.int64(vpn & U(nsets - 1))
    return np.int64(vpn % U(nsets))


# The layout: what the probe and the fill derive from a hierarchy's geometry, computed once
# per hierarchy by tlb_layout() (an int64 array; it never changes).
MAX_TLB_LEVELS = 8
MAX_SHIFT = 64
MAX_PROBE = 8  # entry sizes one level may hold
L_PROBE = 0  # [lv * MAX_PROBE + j]: the shifts level lv probes, smallest first
L_NPROBE = L_PROBE + MAX_PROBE * MAX_TLB_LEVELS  # [lv]: how many
L_SETMASK = L_NPROBE + MAX_TLB_LEVELS  # [lv]: sets - 1, or -1 when sets is not a power of 2
L_FILL_AT = L_SETMASK + MAX_TLB_LEVELS  # [lv * MAX_SHIFT + shift]: the shift an entry of
#                                         2**shift bytes is stored at in level lv (-1: not)
L_FIRST_LV = L_FILL_AT + MAX_SHIFT * MAX_TLB_LEVELS  # [cls]: the first level serving the
#                                                      class (0 data, 1 instruction)
L_FIRST_SHIFT = L_FIRST_LV + 2  # [cls]: that level's first-probed shift
N_LAYOUT = L_FIRST_SHIFT + 2


@jit(_nrt=True)  # returns a new array: setup only, never called from a kernel
def tlb_layout(sets, sizes, serves):
    """The layout of a hierarchy (``L_*`` slots): per level the shifts a lookup probes and
    its set mask, per level and entry size the size an entry is stored at (splintering), per
    access class the first level serving it. ``sizes[lv]``: bit ``s`` set when the level
    holds entries of 2**s bytes."""
    nlev = sets.shape[0]
    lay = np.full(N_LAYOUT, -1, np.int64)
    for lv in range(nlev):
        n = 0
        if (sets[lv] & (sets[lv] - 1)) == 0:
            lay[L_SETMASK + lv] = sets[lv] - 1
        for s in range(MAX_SHIFT - 1):
            if (sizes[lv] >> s) & 1:
                lay[L_PROBE + lv * MAX_PROBE + n] = s
                n += 1
        lay[L_NPROBE + lv] = n
        held = -1
        for s in range(MAX_SHIFT):
            if s < MAX_SHIFT - 1 and (sizes[lv] >> s) & 1:
                held = s
            lay[L_FILL_AT + lv * MAX_SHIFT + s] = held
    for c in range(2):
        for lv in range(nlev):
            if (serves[lv] >> c) & 1:
                lay[L_FIRST_LV + c] = lv
                break
        if lay[L_FIRST_LV + c] >= 0:
            lay[L_FIRST_SHIFT + c] = lay[L_PROBE + lay[L_FIRST_LV + c] * MAX_PROBE]
    return lay


@jit(inline="always")
def tlb_set(vpn, lv, off, sets, ways, lay):
    """The first entry of the set of level ``lv`` that holds page number ``vpn``."""
    smask = lay[L_SETMASK + lv]
    if smask >= 0:
        return off[lv] + np.int64(vpn & U(smask)) * ways[lv]
    return off[lv] + np.int64(vpn % U(sets[lv])) * ways[lv]


@jit(inline="always")
def tlb_probe(lv, ipa, vtag, key, stamp, off, sets, ways, lay, now, conflict_check):
    """Probe TLB level ``lv`` for ``ipa`` (``vtag``: the VMID's key bits, ``vmid << 46``):
    every size the level holds, smallest first. A hit is stamped ``now``.

    Returns (entry index or -1, conflict): with ``conflict_check`` non-zero, conflict is
    True when an entry of another (larger) size also matches: FEAT_BBM level 2 without nT
    makes that a TLB conflict abort (ARM ARM D8.16.2).

    This is the lookup run_batch() runs (inlined there: numba IR, no call) and tlb_lookup()
    exposes. Entries are indexed with unsigned integers (``U(...)``): numba adds
    negative-index wrap-around code to every signed index, which costs instructions in the
    hottest loops."""
    nways = ways[lv]
    nprobe = lay[L_NPROBE + lv]
    for j in range(nprobe):
        shift = lay[L_PROBE + lv * MAX_PROBE + j]
        vpn = ipa >> U(shift)
        k = vtag | (U(shift) << U(40)) | vpn
        base = tlb_set(vpn, lv, off, sets, ways, lay)
        for w in range(nways):
            if key[U(base + w)] == k:
                e = base + w
                stamp[U(e)] = now
                conflict = False
                if conflict_check != 0:
                    for j2 in range(j + 1, nprobe):
                        shift2 = lay[L_PROBE + lv * MAX_PROBE + j2]
                        vpn2 = ipa >> U(shift2)
                        k2 = vtag | (U(shift2) << U(40)) | vpn2
                        b2 = tlb_set(vpn2, lv, off, sets, ways, lay)
                        for w2 in range(nways):
                            if key[U(b2 + w2)] == k2:
                                conflict = True
                return e, conflict
    return -1, False


@jit(inline="always")
def tlb_victim(base, nways, key, stamp):
    """The entry of the set from ``base`` a fill takes: the first empty way, else the least
    recently used."""
    victim = base
    oldest = stamp[U(base)]
    for w in range(nways):
        e = base + w
        if key[U(e)] == INVALID:
            return e
        if stamp[U(e)] < oldest:
            victim = e
            oldest = stamp[U(e)]
    return victim


@jit(inline="always")
def tlb_insert(lv, ipa, vtag, shift, pa, perm, key, stamp, tpa, tperm, off, sets, ways, lay,
               now):
    """Insert the translation of ``ipa`` (a leaf of ``2**shift`` bytes at output ``pa``)
    into level ``lv``, splintered to the largest size the level holds that fits. Victim:
    tlb_victim(). Returns the entry or -1 (the level holds no size that small).

    This is the fill run_batch() runs (inlined there) and tlb_fill() exposes."""
    fill_shift = lay[L_FILL_AT + lv * MAX_SHIFT + shift]
    if fill_shift < 0:
        return -1
    fpa = pa
    if fill_shift < shift:
        fpa += (ipa & ((U(1) << U(shift)) - U(1))) & ~((U(1) << U(fill_shift)) - U(1))
    vpn = ipa >> U(fill_shift)
    victim = tlb_victim(tlb_set(vpn, lv, off, sets, ways, lay), ways[lv], key, stamp)
    key[U(victim)] = vtag | (U(fill_shift) << U(40)) | vpn
    stamp[U(victim)] = now
    tpa[U(victim)] = fpa
    tperm[U(victim)] = perm
    return victim


@jit(_nrt=True)  # the tests' wrapper: builds the layout
def tlb_lookup(level, ipa, vmid, key, stamp, off, sets, ways, sizes, now):
    """Probe TLB level ``level`` for ``ipa``: :func:`tlb_probe` on the hierarchy's layout.
    Returns the entry index or -1.

    key, stamp: entry arrays; off, sets, ways, sizes: per-level geometry (see module doc);
    now: LRU clock value stamped on a hit.
    """
    lay = tlb_layout(sets, sizes, np.full(sets.shape[0], 3, np.int64))
    e, _ = tlb_probe(level, U(ipa), U(vmid) << U(46), key, stamp, off, sets, ways, lay, now, 0)
    return e


@jit(_nrt=True)  # the tests' wrapper: builds the layout
def tlb_fill(level, ipa, vmid, shift, pa, perm, key, stamp, tpa, tperm, off, sets, ways, sizes,
             now):
    """Insert the translation of ``ipa`` (a leaf of ``2**shift`` bytes at output ``pa``) into
    TLB level ``level``: :func:`tlb_insert` on the hierarchy's layout. Returns the entry or
    -1."""
    lay = tlb_layout(sets, sizes, np.full(sets.shape[0], 3, np.int64))
    return tlb_insert(level, U(ipa), U(vmid) << U(46), shift, U(pa), perm, key, stamp, tpa,
                      tperm, off, sets, ways, lay, now)


@jit
def tlb_invalidate(vmid, lo, hi, key, off, sets, ways, sizes):
    """Remove every entry of ``vmid`` (any VMID when vmid < 0) whose region overlaps
    [lo, hi); hi == 0 means the whole address space. Returns the entries removed."""
    removed = 0
    nlev = off.shape[0]
    whole = hi == 0
    for level in range(nlev):
        nways = ways[level]
        nsets = sets[level]
        for shift in range(MAX_SHIFT - 1):
            if (sizes[level] >> shift) & 1 == 0:
                continue
            if not whole:
                first = U(lo) >> U(shift)
                last = (U(hi) - U(1)) >> U(shift)
                npages = np.int64(last - first) + 1
            else:
                first = U(0)
                last = U(0)
                npages = nsets + 1
            if npages <= nsets:
                # few pages: visit only their sets
                vpn = first
                while vpn <= last:
                    base = off[level] + set_index(vpn, nsets) * nways
                    for w in range(nways):
                        k = key[base + w]
                        if k == INVALID:
                            continue
                        if (k & U(0xFFFFFFFFFF)) != vpn or ((k >> U(40)) & U(63)) != U(shift):
                            continue
                        if vmid >= 0 and (k >> U(46)) != U(vmid):
                            continue
                        key[base + w] = INVALID
                        removed += 1
                    vpn += U(1)
            else:
                start = off[level]
                for e in range(start, start + nsets * nways):
                    k = key[e]
                    if k == INVALID or ((k >> U(40)) & U(63)) != U(shift):
                        continue
                    if vmid >= 0 and (k >> U(46)) != U(vmid):
                        continue
                    if not whole:
                        v = k & U(0xFFFFFFFFFF)
                        if v < (U(lo) >> U(shift)) or v > ((U(hi) - U(1)) >> U(shift)):
                            continue
                    key[e] = INVALID
                    removed += 1
    return removed


# A stage-2 (IPA -> PA) entry, cached beside the combined ones for a guest with a stage-1
# (``s2sizes[l]``: the sizes level l holds such entries of; Neoverse N1's L2 TLB holds blocks
# only): its key has KEY_S2 set (VMIDs are 16 bits, bits 46..61).
KEY_S2 = U(1 << 62)


@jit(inline="always")
def s2c_probe(ipa, vtag, key, stamp, tpa, tperm, off, sets, ways, lat, s2sizes, now):
    """Probe the levels holding stage-2 entries, in order, each size smallest first.
    Returns (cycles of the levels probed, the entry or -1)."""
    cyc = 0
    for lv in range(off.shape[0]):
        m = s2sizes[lv]
        if m == 0:
            continue
        cyc += lat[lv]
        for shift in range(12, 63):
            if (m >> shift) & 1 == 0:
                continue
            vpn = U(ipa) >> U(shift)
            k = vtag | KEY_S2 | (U(shift) << U(40)) | vpn
            base = off[lv] + set_index(vpn, sets[lv]) * ways[lv]
            for w in range(ways[lv]):
                if key[U(base + w)] == k:
                    stamp[U(base + w)] = now
                    return cyc, base + w
    return cyc, -1


@jit(inline="always")
def s2c_fill(ipa, vtag, shift, pa, perm, key, stamp, tpa, tperm, off, sets, ways, s2sizes, now):
    """Cache the stage-2 leaf of ``ipa`` (2**shift bytes at ``pa``) in every level holding
    stage-2 entries of that size (no splintering; the victim: tlb_victim())."""
    for lv in range(off.shape[0]):
        if (s2sizes[lv] >> shift) & 1 == 0:
            continue
        vpn = U(ipa) >> U(shift)
        victim = tlb_victim(off[lv] + set_index(vpn, sets[lv]) * ways[lv], ways[lv], key,
                            stamp)
        key[U(victim)] = vtag | KEY_S2 | (U(shift) << U(40)) | vpn
        stamp[U(victim)] = now
        tpa[U(victim)] = pa
        tperm[U(victim)] = perm


@jit
def tlb_invalidate_s12(vmid, lo, hi, key, off, sets, ways):
    """A stage-2 invalidation of a VMID whose guest has a stage-1, as KVM issues it: its
    stage-2 entries overlapping [lo, hi) (everything when hi == 0) and, by the TLBI
    VMALLE1IS that follows, every combined entry of the VMID. Returns (combined entries
    removed, stage-2 entries removed)."""
    n1 = 0
    n2 = 0
    for e in range(off[off.shape[0] - 1] + sets[off.shape[0] - 1] * ways[off.shape[0] - 1]):
        k = key[e]
        if k == INVALID or ((k >> U(46)) & U(0xFFFF)) != U(vmid):
            continue
        if (k & KEY_S2) == U(0):
            key[e] = INVALID
            n1 += 1
            continue
        if hi != 0:
            shift = (k >> U(40)) & U(63)
            v = k & U(0xFFFFFFFFFF)
            if v < (U(lo) >> shift) or v > ((U(hi) - U(1)) >> shift):
                continue
        key[e] = INVALID
        n2 += 1
    return n1, n2


@dataclass
class TLBLevelSpec:
    """One TLB level: geometry, hit latency (cycles) and the entry sizes it holds: the
    leaf levels of the hierarchy's granule (``leaf_levels``, e.g. (3,) for 4K only,
    (1, 2, 3) for 1G/2M/4K) and any other sizes as shifts (``shifts``: the contiguous
    ranges and the other granule's leaves of combined stage-1 + stage-2 entries)."""

    name: str
    sets: int
    ways: int
    latency: int
    leaf_levels: tuple[int, ...]
    serves: str = "all"  # "all", "data" (reads and writes) or "instruction" (fetches)
    shifts: tuple[int, ...] = ()
    stage2_shifts: tuple[int, ...] = ()  # stage-2 (IPA -> PA) entries held, with a stage-1

    def held_shifts(self, page_shift: int) -> list[int]:
        """The entry sizes held, as shifts, smallest first."""
        return sorted({(page_shift - 3) * (4 - lf) + 3 for lf in self.leaf_levels}
                      | set(self.shifts))


SERVES = {"data": 1, "instruction": 2, "all": 3}


class TLBHierarchy:
    """The TLB state of one vCPU: flat entry arrays plus per-level geometry arrays."""

    def __init__(self, levels: list[TLBLevelSpec], page_shift: int):
        if not levels:
            raise ValueError("a TLB hierarchy needs at least one level")
        self.specs = levels
        self.page_shift = page_shift
        n = len(levels)
        self.off = np.zeros(n, dtype=np.int64)
        self.sets = np.array([lv.sets for lv in levels], dtype=np.int64)
        self.ways = np.array([lv.ways for lv in levels], dtype=np.int64)
        self.latency = np.array([lv.latency for lv in levels], dtype=np.int64)
        for lv in levels:
            held = lv.held_shifts(page_shift)
            if len(held) > MAX_PROBE or any(not 12 <= s < MAX_SHIFT - 1 for s in held):
                raise ValueError(f"TLB level {lv.name}: at most {MAX_PROBE} entry sizes of "
                                 "4K and up")
        self.sizes = np.array([sum(1 << s for s in lv.held_shifts(page_shift)) for lv in levels],
                              dtype=np.int64)
        self.serves = np.array([SERVES[lv.serves] for lv in levels], dtype=np.int64)
        self.s2sizes = np.array([sum(1 << s for s in set(lv.stage2_shifts)) for lv in levels],
                                dtype=np.int64)
        for cls, what in ((1, "data accesses"), (2, "instruction fetches")):
            if not any(int(x) & cls for x in self.serves):
                raise ValueError(f"no TLB level serves {what}")
        total = 0
        for i, lv in enumerate(levels):
            self.off[i] = total
            total += lv.sets * lv.ways
        self.key = np.full(total, INVALID, dtype=np.uint64)
        self.stamp = np.zeros(total, dtype=np.int64)
        self.pa = np.zeros(total, dtype=np.uint64)
        self.perm = np.zeros(total, dtype=np.uint8)

    @property
    def names(self) -> list[str]:
        return [lv.name for lv in self.specs]

    def invalidate(self, vmid: int, lo: int = 0, hi: int = 0) -> int:
        return int(tlb_invalidate(vmid, U(lo), U(hi), self.key, self.off, self.sets, self.ways,
                                  self.sizes))

    def flush(self) -> None:
        self.key[:] = INVALID

    def occupancy(self) -> list[int]:
        return [
            int(np.count_nonzero(self.key[o:o + s * w] != INVALID))
            for o, s, w in zip(self.off, self.sets, self.ways)
        ]
