"""TLB hierarchy: any number of set-associative levels, true LRU, as numpy arrays.

All levels live in flat arrays; level ``l`` owns entries ``off[l] .. off[l] + sets[l] *
ways[l]``, set ``s`` of it the ``ways[l]`` entries from ``off[l] + s * ways[l]``. An entry
holds one translation of one page size:

* ``key``: ``vmid << 46 | size_shift << 40 | ipa >> size_shift`` (``INVALID`` when empty);
* ``stamp``: the LRU clock value of its last use;
* ``pa``: the output address of the region the entry maps;
* ``perm``: ``PERM_R | PERM_W | PERM_X`` and the leaf level in bits 4..5.

Set index = (ipa >> size_shift) mod sets. A lookup probes every page size the level holds
(``sizes[l]`` is a bitmask over leaf levels: bit 3 = page, bit 2 = level-2 block, ...).
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
def tlb_key(vmid, shift, ipa):
    return (U(vmid) << U(46)) | (U(shift) << U(40)) | (U(ipa) >> U(shift))


@jit
def set_index(vpn, nsets):
    """(ipa >> shift) mod sets; a mask when sets is a power of two (no division)."""
    if (nsets & (nsets - 1)) == 0:
        return np.int64(vpn & U(nsets - 1))
    return np.int64(vpn % U(nsets))


@jit
def tlb_lookup(level, ipa, vmid, key, stamp, off, sets, ways, sizes, page_shift, now):
    """Probe TLB level ``level`` for ``ipa``. Returns the entry index or -1.

    key, stamp: entry arrays; off, sets, ways, sizes: per-level geometry (see module doc);
    page_shift: the granule; now: LRU clock value stamped on a hit.
    """
    ipa = U(ipa)
    nways = ways[level]
    for leaf in range(3, 0, -1):
        if (sizes[level] >> leaf) & 1 == 0:
            continue
        shift = (page_shift - 3) * (4 - leaf) + 3
        vpn = ipa >> U(shift)
        k = (U(vmid) << U(46)) | (U(shift) << U(40)) | vpn
        base = off[level] + set_index(vpn, sets[level]) * nways
        for w in range(nways):
            if key[base + w] == k:
                stamp[base + w] = now
                return base + w
    return -1


@jit
def tlb_fill(level, ipa, vmid, shift, pa, perm, key, stamp, tpa, tperm, off, sets, ways, sizes,
             page_shift, now):
    """Insert the translation of ``ipa`` (a leaf of ``2**shift`` bytes at output ``pa``) into
    TLB level ``level``, splintered to the largest size the level holds that fits.
    Victim: the first empty way, else the least recently used. Returns the entry or -1."""
    fill_shift = -1
    for leaf in range(1, 4):
        if (sizes[level] >> leaf) & 1 == 0:
            continue
        s = (page_shift - 3) * (4 - leaf) + 3
        if s <= shift:
            fill_shift = s
            break
    if fill_shift < 0:
        return -1
    ipa = U(ipa)
    fpa = U(pa)
    if fill_shift < shift:
        fpa = fpa + ((ipa & ((U(1) << U(shift)) - U(1))) & ~((U(1) << U(fill_shift)) - U(1)))
    vpn = ipa >> U(fill_shift)
    nways = ways[level]
    base = off[level] + set_index(vpn, sets[level]) * nways
    victim = base
    for w in range(nways):
        e = base + w
        if key[e] == INVALID:
            victim = e
            break
        if stamp[e] < stamp[victim]:
            victim = e
    key[victim] = (U(vmid) << U(46)) | (U(fill_shift) << U(40)) | vpn
    stamp[victim] = now
    tpa[victim] = fpa
    tperm[victim] = perm
    return victim


@jit
def tlb_invalidate(vmid, lo, hi, key, off, sets, ways, sizes, page_shift):
    """Remove every entry of ``vmid`` (any VMID when vmid < 0) whose region overlaps
    [lo, hi); hi == 0 means the whole address space. Returns the entries removed."""
    removed = 0
    nlev = off.shape[0]
    whole = hi == 0
    for level in range(nlev):
        nways = ways[level]
        nsets = sets[level]
        for leaf in range(1, 4):
            if (sizes[level] >> leaf) & 1 == 0:
                continue
            shift = (page_shift - 3) * (4 - leaf) + 3
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


@dataclass
class TLBLevelSpec:
    """One TLB level: geometry, hit latency (cycles) and the leaf levels it holds."""

    name: str
    sets: int
    ways: int
    latency: int
    leaf_levels: tuple[int, ...]  # e.g. (3,) for 4K only, (1, 2, 3) for 1G/2M/4K
    serves: str = "all"  # "all", "data" (reads and writes) or "instruction" (fetches)


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
        self.sizes = np.array(
            [sum(1 << lf for lf in lv.leaf_levels) for lv in levels], dtype=np.int64
        )
        self.serves = np.array([SERVES[lv.serves] for lv in levels], dtype=np.int64)
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
                                  self.sizes, self.page_shift))

    def flush(self) -> None:
        self.key[:] = INVALID

    def occupancy(self) -> list[int]:
        return [
            int(np.count_nonzero(self.key[o:o + s * w] != INVALID))
            for o, s, w in zip(self.off, self.sets, self.ways)
        ]
