"""A guest kernel building its stage-1 on demand: the page-fault handler and its allocator.

A stage-1 translation fault goes to the guest's own fault handler (no exit to the
hypervisor), which maps the faulting address as ``guest.stage1.mapping`` says: one page, a
level-2 block (THP) or a level-1 block (4K granule only), and with ``guest.stage1.contiguous``
the whole contiguous run around it (CONT_PTES pages or CONT_PMDS blocks, each entry with the
contiguous bit: arm64's contpte folding of a large folio, Linux 6.9+, or a CONT_PMD hugetlb
page). Missing tables on the way down are allocated first.

Guest memory, the documented policy: the guest's page allocator hands out data memory in
first-fault order from the bottom of guest memory up, each allocation aligned to its size
(a fresh guest's buddy allocator splitting its lowest free block); page-table pages come
from the top of the highest memslot down, one page each, the top-level table first. The two
never cross: when they would, the guest is out of memory (the run stops with an error).

The handler is compiled and called by the engine (:func:`s1_fault`); the guest's zeroing of
the pages it allocates is charged as time (``costs.zero_bytes_per_cycle``), not issued as
accesses. The stage-2 faults those stores would take are taken later, by the walk (S1PTW,
for table pages) or the access (for data) that first touches each stage-2 mapping: a THP
guest over 4K stage-2 pages takes one per page it uses, not 512 when it zeroes the block,
and under dirty logging a page first read after it was zeroed is mapped read-only (the
zeroing would have been a write).
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.arch.stage1 import KERNEL_RW, USER_RWX, S1Geometry, s1_make_leaf, s1_make_table
from simulator.mmu.walk import (
    N_S1_WALK,
    S1_CONT2,
    S1_CONT3,
    S1_PS,
    S1_ROOT,
    S1_START,
    S1_TOP,
    S1_VA_BITS,
    s1_read,
)

U = np.uint64

# the guest OS's state after the walker's slots (simulator.mmu.walk.S1_*)
G1_DATA = N_S1_WALK  # the next free data IPA (bump allocator, upward)
G1_ROWS = N_S1_WALK + 1  # table pages allocated (rows of s1t in use)
G1_LEVEL = N_S1_WALK + 2  # the level a fault maps at
G1_CONT = N_S1_WALK + 3  # 1: map the contiguous run, with the contiguous bit
G1_FLOOR = N_S1_WALK + 4  # the lowest IPA a table page may take (its memslot's base)
N_S1P = N_S1_WALK + 5

# s1_fault() results
S1F_SPURIOUS = 0  # already mapped (another vCPU got there first): nothing written
S1F_OOM = -1  # guest memory exhausted


@jit
def s1_fault(va, s1t, s1p, slots, slot_off, nslot, out):
    """The guest's page fault at ``va``: allocate and map as the module says.

    s1t: the stage-1 table pages (rows; at least 4 free); s1p: S1_* and G1_*; slots: the
    memslots (base, size, ...) of the guest, ``nslot`` of them from ``slot_off``.
    out (int64[3]) receives the table pages allocated, the descriptors written and the data
    bytes allocated. Returns 1 when a mapping was made, S1F_SPURIOUS or S1F_OOM."""
    out[0] = 0
    out[1] = 0
    out[2] = 0
    ps = s1p[S1_PS]
    mask = (np.int64(1) << (ps - 3)) - 1
    map_level = s1p[G1_LEVEL]
    row = _table_for(va, map_level, s1t, s1p, out)
    if row < 0:
        return S1F_OOM if row == S1F_OOM else S1F_SPURIOUS
    shift = (ps - 3) * (4 - map_level) + 3
    n = np.int64(1)
    if s1p[G1_CONT] != 0:
        n = np.int64(1) << (s1p[S1_CONT3] if map_level == 3 else s1p[S1_CONT2])
    size = n << shift
    first = (np.int64(va) & ~(size - 1))
    idx0 = (first >> shift) & mask
    for k in range(n):
        if (s1t[row, idx0 + k] & U(1)) != U(0):
            return S1F_SPURIOUS
    ipa = _alloc_data(size, s1p, slots, slot_off, nslot)
    if ipa < 0:
        return S1F_OOM
    for k in range(n):
        s1t[row, idx0 + k] = s1_make_leaf(U(ipa + (k << shift)), USER_RWX, map_level, ps,
                                          s1p[G1_CONT] != 0)
    out[1] += n
    out[2] = size
    return 1


@jit
def _table_for(va, map_level, s1t, s1p, out):
    """The row of the table that holds ``va``'s entry at ``map_level``, allocating the
    missing tables on the way down (counted in out[0], their descriptors in out[1]).
    S1F_OOM when no table page is left, -2 when a block above maps ``va``."""
    ps = s1p[S1_PS]
    mask = (np.int64(1) << (ps - 3)) - 1
    top = s1p[S1_TOP]
    level = s1p[S1_START]
    row = (top - s1p[S1_ROOT]) >> ps
    while level < map_level:
        shift = (ps - 3) * (4 - level) + 3
        idx = (np.int64(va) >> shift) & mask
        d = s1t[row, idx]
        if (d & U(1)) == U(0):
            # a new table page from the top down, above the data
            t = top - (s1p[G1_ROWS] << ps)
            if t < s1p[G1_FLOOR] or t < s1p[G1_DATA] or s1p[G1_ROWS] >= s1t.shape[0]:
                return S1F_OOM
            nrow = s1p[G1_ROWS]
            s1p[G1_ROWS] += 1
            s1t[nrow, :] = U(0)
            s1t[row, idx] = s1_make_table(U(t), ps)
            out[0] += 1
            out[1] += 1
            row = nrow
        elif (d & U(2)) == U(0):
            return np.int64(-2)  # a block above: mapped already
        else:
            row = np.int64((U(top) - s1_read(d, ps)) >> U(ps))
        level += 1
    return row


@jit
def s1_map_linear(lo, hi, blocks, s1t, s1p, out):
    """The host kernel's linear map of [lo, hi) at VA = PA, as arm64's map_mem() builds it
    with __create_pgd_mapping(): with ``blocks`` the largest block whose address is aligned
    and that fits (level 1 with the 4K granule, level 2), and the contiguous bit over each
    aligned run of CONT_PTES pages or CONT_PMDS blocks that fits (alloc_init_cont_pte(),
    alloc_init_cont_pmd()); without, pages only and no contiguous bit (rodata=full:
    NO_BLOCK_MAPPINGS | NO_CONT_MAPPINGS). Returns 0, or S1F_OOM when the table rows ran
    out (out: tables allocated, descriptors written)."""
    ps = s1p[S1_PS]
    mask = (np.int64(1) << (ps - 3)) - 1
    addr = lo
    while addr < hi:
        level = 3
        if blocks:
            for lv in range(1 if ps == 12 else 2, 3):
                if lv < s1p[S1_START]:
                    continue
                size = np.int64(1) << ((ps - 3) * (4 - lv) + 3)
                if (addr & (size - 1)) == 0 and addr + size <= hi:
                    level = lv
                    break
        shift = (ps - 3) * (4 - level) + 3
        n = np.int64(1)
        if blocks and level >= 2:
            run = np.int64(1) << (s1p[S1_CONT3] if level == 3 else s1p[S1_CONT2])
            if (addr & ((run << shift) - 1)) == 0 and addr + (run << shift) <= hi:
                n = run
        row = _table_for(addr, level, s1t, s1p, out)
        if row < 0:
            return S1F_OOM
        idx0 = (addr >> shift) & mask
        for k in range(n):
            s1t[row, idx0 + k] = s1_make_leaf(U(addr + (k << shift)), KERNEL_RW, level, ps,
                                              n > 1)
        out[1] += n
        addr += n << shift
    return 0


@jit
def _alloc_data(size, s1p, slots, slot_off, nslot):
    """``size`` bytes of guest memory, ``size``-aligned, at the lowest free IPA above the
    data cursor, inside a memslot and below the table pages; -1 when there is none."""
    a = (s1p[G1_DATA] + size - 1) & ~(size - 1)
    tables_low = s1p[S1_TOP] - ((s1p[G1_ROWS] - 1) << s1p[S1_PS])
    for k in range(slot_off, slot_off + nslot):
        base = slots[k, 0]
        end = base + slots[k, 1]
        if a < base:
            a = (base + size - 1) & ~(size - 1)
        if a + size <= end and a + size <= tables_low:
            s1p[G1_DATA] = a + size
            return a
    return -1


class Stage1Tables:
    """A stage-1's table pages (rows of ``s1t``: row r is the page at IPA
    ``S1_TOP - (r << S1_PS)``, row 0 the top-level table) and its parameters ``s1p``
    (S1_* and G1_*): what a guest's and the pKVM host's have in common."""

    def __init__(self, geom: S1Geometry, top: int, floor: int, rows: int):
        self.geom = g = geom
        self.s1p = p = np.zeros(N_S1P, dtype=np.int64)
        p[S1_PS] = g.page_shift
        p[S1_START] = g.start_level
        p[S1_VA_BITS] = g.va_bits
        p[S1_TOP] = top
        p[S1_ROOT] = top
        p[S1_CONT3] = g.cont_shift(3)
        p[S1_CONT2] = g.cont_shift(2)
        p[G1_ROWS] = 1
        p[G1_FLOOR] = floor
        self.s1t = np.zeros((rows, g.entries), dtype=np.uint64)

    @property
    def tables(self) -> int:
        """Table pages allocated."""
        return int(self.s1p[G1_ROWS])

    def reserve(self) -> None:
        """Room for a fault's tables (the engine's call-out before s1_fault when fewer than
        4 rows are free): twice the rows."""
        rows = self.s1t.shape[0]
        grown = np.zeros((2 * rows, self.s1t.shape[1]), dtype=np.uint64)
        grown[:rows] = self.s1t
        self.s1t = grown


class GuestStage1(Stage1Tables):
    """A guest's stage-1: its table pages (rows, grown on demand) and parameters, built
    from ``guest.stage1``; the root table is allocated at once."""

    def __init__(self, s1cfg, slots: list[tuple[int, int]]):
        g = s1cfg.geometry()
        top_base, top_size = max(slots)
        page = 1 << g.page_shift
        # the top-level table's page: the highest stage-1 page of the highest memslot
        super().__init__(g, ((top_base + top_size) & ~(page - 1)) - page, top_base, 64)
        p = self.s1p
        p[G1_DATA] = min(slots)[0]
        p[G1_LEVEL] = s1cfg.map_level()
        p[G1_CONT] = int(s1cfg.contiguous)


class HostStage1(Stage1Tables):
    """pKVM's host kernel's stage-1 over its own memory: the linear map (VA = PA; the real
    PAGE_OFFSET is aligned far beyond any block, so the same entries result), built at boot
    over every memory region (``host.stage1.linear_map``: ``blocks`` or ``pages``). Its
    table pages are host memory at ``base`` (kept from donation by the caller); they are
    IPAs the host stage-2 maps on its first walks (S1PTW aborts). It takes no faults: an
    access outside it is an error (fault.guest_fault())."""

    def __init__(self, s1cfg, page_shift: int, regions: list[tuple[int, int]], base: int,
                 pages: int):
        super().__init__(S1Geometry(page_shift, 48), base + ((pages - 1) << page_shift), base,
                         pages)
        self.s1p[G1_LEVEL] = 3
        out = np.zeros(3, dtype=np.int64)
        blocks = s1cfg.linear_map == "blocks"
        for lo, size in sorted(regions):
            if s1_map_linear(np.int64(lo), np.int64(lo + size), blocks, self.s1t, self.s1p,
                             out) != 0:
                raise ValueError("the host's linear map needs more table pages than reserved")

    @staticmethod
    def table_pages(page_shift: int, regions: list[tuple[int, int]]) -> int:
        """An upper bound of the linear map's table pages: per region and level, the tables
        its range can touch (pages mapping: every level down to the last)."""
        g = S1Geometry(page_shift, 48)
        total = 1
        for lo, size in regions:
            for lv in range(g.start_level + 1, 4):
                span = g.size(lv - 1)  # one table at level lv covers one entry above it
                total += (lo + size - 1) // span - lo // span + 1
        return total
