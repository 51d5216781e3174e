"""Page-table memory: table pages as rows of one array, a refcount per row, a free stack
(the mm_ops zalloc_page()/put_page()), and the Python class that owns them."""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.hyp.pgtable.defs import (
    M_ALLOCS,
    M_FREES,
    M_HWM,
    M_INUSE,
    M_LIMIT,
    M_NFREE,
    M_PEAK,
    META_SIZE,
    R_PUTS,
    R_TABLES_FREED,
    R_WARN,
)

# ========================================================================================
# Page-table memory primitives (mm_ops)


@jit
def pt_alloc(tables, refcnt, free, meta):
    """zalloc_page(): a zeroed table page with refcount 1, or -1 when none is left."""
    if meta[M_LIMIT] >= 0 and meta[M_INUSE] >= meta[M_LIMIT]:
        return -1
    if meta[M_NFREE] > 0:
        meta[M_NFREE] -= 1
        row = free[meta[M_NFREE]]
    elif meta[M_HWM] < tables.shape[0]:
        row = meta[M_HWM]
        meta[M_HWM] += 1
    else:
        return -1
    tables[row, :] = 0
    refcnt[row] = 1
    meta[M_INUSE] += 1
    meta[M_ALLOCS] += 1
    if meta[M_INUSE] > meta[M_PEAK]:
        meta[M_PEAK] = meta[M_INUSE]
    return row


@jit
def pt_put(row, refcnt, free, meta, rep):
    """put_page(): drop a reference; the page goes back to the free stack at zero."""
    rep[R_PUTS] += 1
    refcnt[row] -= 1
    if refcnt[row] == 0:
        free[meta[M_NFREE]] = row
        meta[M_NFREE] += 1
        meta[M_INUSE] -= 1
        meta[M_FREES] += 1
        rep[R_TABLES_FREED] += 1
    elif refcnt[row] < 0:
        rep[R_WARN] += 1


class PageTableMemory:
    """Table pages as rows of one growable ``uint64`` array, a refcount per row and a free
    stack. ``limit_pages`` caps the pages in use (an allocation beyond it fails: -ENOMEM).
    Memory grows with the pages in use, never with the address space configured."""

    def __init__(self, page_shift: int, base_pa: int, limit_pages: int | None = None,
                 initial_pages: int = 16):
        self.page_shift = page_shift
        self.entries = 1 << (page_shift - 3)
        self.base_pa = base_pa
        cap = max(1, initial_pages)
        self.tables = np.zeros((cap, self.entries), dtype=np.uint64)
        self.refcnt = np.zeros(cap, dtype=np.int64)
        self.free = np.zeros(cap, dtype=np.int64)
        self.meta = np.zeros(META_SIZE, dtype=np.int64)
        self.meta[M_LIMIT] = -1 if limit_pages is None else limit_pages

    @property
    def capacity(self) -> int:
        return self.tables.shape[0]

    @property
    def pages_in_use(self) -> int:
        return int(self.meta[M_INUSE])

    @property
    def peak_pages(self) -> int:
        return int(self.meta[M_PEAK])

    @property
    def limit_pages(self) -> int | None:
        lim = int(self.meta[M_LIMIT])
        return None if lim < 0 else lim

    def row_pa(self, row: int) -> int:
        return self.base_pa + (row << self.page_shift)

    def row_of(self, pa: int) -> int:
        return (pa - self.base_pa) >> self.page_shift

    def reserve(self, pages: int) -> None:
        """Grow (by doubling) so that ``pages`` more allocations can succeed without the
        arrays moving during a kernel call (bounded by the limit)."""
        lim = self.limit_pages
        if lim is not None:
            pages = min(pages, max(0, lim - self.pages_in_use))
        fresh_needed = pages - int(self.meta[M_NFREE])
        hwm = int(self.meta[M_HWM])
        if hwm + fresh_needed <= self.capacity:
            return
        cap = self.capacity
        while cap < hwm + fresh_needed:
            cap *= 2
        if lim is not None:
            cap = max(min(cap, lim + 16), hwm + fresh_needed)
        self._grow(cap)

    def _grow(self, cap: int) -> None:
        old = self.capacity
        tables = np.zeros((cap, self.entries), dtype=np.uint64)
        tables[:old] = self.tables
        self.tables = tables
        self.refcnt = np.concatenate([self.refcnt, np.zeros(cap - old, dtype=np.int64)])
        self.free = np.concatenate([self.free, np.zeros(cap - old, dtype=np.int64)])

    def alloc_contiguous(self, n: int) -> int:
        """zalloc_pages_exact(): ``n`` physically contiguous pages (fresh rows), refcount 1."""
        lim = self.limit_pages
        if lim is not None and self.pages_in_use + n > lim:
            raise MemoryError("page-table memory limit reached")
        hwm = int(self.meta[M_HWM])
        if hwm + n > self.capacity:
            cap = self.capacity
            while cap < hwm + n:
                cap *= 2
            self._grow(cap)
        self.tables[hwm:hwm + n] = 0
        self.refcnt[hwm:hwm + n] = 1
        self.meta[M_HWM] += n
        self.meta[M_INUSE] += n
        self.meta[M_ALLOCS] += n
        self.meta[M_PEAK] = max(self.meta[M_PEAK], self.meta[M_INUSE])
        return hwm

    def free_rows(self) -> np.ndarray:
        return self.free[: int(self.meta[M_NFREE])].copy()

    def before_op(self, pages: int) -> None:
        """Make ``pages`` allocations possible during the next kernel call (the memcache
        top-up)."""
        if pages > int(self.meta[M_NFREE]) + self.capacity - int(self.meta[M_HWM]):
            self.reserve(pages)

    def after_op(self) -> None:
        """Settle after a kernel call (a pool-backed memory returns unused pages here)."""

    def nbytes(self) -> int:
        return self.tables.nbytes + self.refcnt.nbytes + self.free.nbytes
