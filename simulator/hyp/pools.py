"""Page-table memory backed by hyp pools (the host stage-2's and guest stage-2's mm_ops).

Table pages are pages of :class:`~simulator.hyp.page_alloc.HypPool`\\ s laid out next to each
other in physical memory, so a row of the page-table memory is still ``(pa - base) >>
page_shift``. Before each page-table operation the free stack, the memcache, is topped up
from the pool that operation allocates from (``use``): as many pages as the operation can
need, fewer when the pool runs dry, so the walker meets -ENOMEM exactly where the pool
empties. After the operation every page left on the stack, and every table page the
operation freed, goes back to the pool it came from (``hyp_put_page``), keeping
``keep`` pages as a memcache when asked to.
"""

from __future__ import annotations

import numpy as np

from simulator.hyp.page_alloc import HypPool, get_order
from simulator.mmu.pgtable import M_HWM, M_INUSE, M_NFREE, M_PEAK, M_ALLOCS, PageTableMemory


class PoolMemory(PageTableMemory):
    """A PageTableMemory whose pages come from ``pools`` (adjacent, in address order)."""

    def __init__(self, pools: list[HypPool], keep: int = 0):
        pools = sorted(pools, key=lambda p: p.start_phys)
        for a, b in zip(pools, pools[1:]):
            if a.start_phys + (a.nr_pages << a.page_shift) != b.start_phys:
                raise ValueError("pools of one page-table memory must be adjacent")
        page_shift = pools[0].page_shift
        super().__init__(page_shift, pools[0].start_phys, limit_pages=None, initial_pages=16)
        self.pools = pools
        self.total_pages = sum(p.nr_pages for p in pools)
        self.current = pools[0]
        self.keep = keep
        self.failed_topups = 0
        # rows are positions in the pools: the high-water mark is meaningless, the stack is all
        self.meta[M_HWM] = 0

    def pool_of(self, row: int) -> HypPool:
        pa = self.row_pa(row)
        for p in self.pools:
            if p.start_phys <= pa < p.start_phys + (p.nr_pages << p.page_shift):
                return p
        raise ValueError(f"row {row} is in no pool")

    def use(self, pool: HypPool) -> None:
        """Allocate from ``pool`` in the following operations."""
        self.current = pool

    def _ensure_rows(self, row: int) -> None:
        if row < self.capacity:
            return
        cap = self.capacity
        while cap <= row:
            cap *= 2
        self._grow(min(cap, max(self.total_pages, row + 1)))
        # rows are handed out only from the stack: keep the kernel's fresh-row path closed
        self.meta[M_HWM] = self.capacity

    def before_op(self, pages: int) -> None:
        nfree = int(self.meta[M_NFREE])
        while nfree < pages:
            pa = self.current.alloc_pages(0)
            if pa is None:
                self.failed_topups += 1
                break
            row = self.row_of(pa)
            self._ensure_rows(row)
            self.free[nfree] = row
            nfree += 1
        # the walker pops from the top: reverse what was added so pages go out in pool order
        start = int(self.meta[M_NFREE])
        self.free[start:nfree] = self.free[start:nfree][::-1]
        self.meta[M_NFREE] = nfree
        self.meta[M_HWM] = self.capacity

    def after_op(self) -> None:
        nfree = int(self.meta[M_NFREE])
        for i in range(nfree - 1, self.keep - 1, -1):
            row = int(self.free[i])
            self.pool_of(row).put_page(self.row_pa(row))
        self.meta[M_NFREE] = min(nfree, self.keep)

    def alloc_contiguous(self, n: int) -> int:
        """host_s2_zalloc_pages_exact(): an order-aligned block, split into pages."""
        order = get_order(n << self.page_shift, self.page_shift)
        pa = self.current.alloc_pages(order)
        if pa is None:
            raise MemoryError("hyp pool exhausted allocating a pgd")
        self.current.split_page(pa)
        row = self.row_of(pa)
        self._ensure_rows(row + (1 << order) - 1)
        # pages past n go straight back (host_s2_zalloc_pages_exact frees the tail)
        for i in range(n, 1 << order):
            self.current.put_page(pa + (i << self.page_shift))
        self.tables[row:row + n] = 0
        self.refcnt[row:row + n] = 1
        self.meta[M_INUSE] += n
        self.meta[M_ALLOCS] += n
        self.meta[M_PEAK] = max(self.meta[M_PEAK], self.meta[M_INUSE])
        return row

    def reserve(self, pages: int) -> None:  # growth is by pool position, not by demand
        self.before_op(pages)


__all__ = ["PoolMemory", "np"]
