"""Page-table memory backed by hyp pools (the host stage-2's and guest stage-2's mm_ops).

Table pages are pages of :class:`~simulator.hyp.hyp_pool.HypPool`\\ s laid out next to each
other in physical memory, so a row of the page-table memory is still ``(pa - base) >>
page_shift``. Before each page-table operation the free stack, the memcache, is topped up
from the pool that operation allocates from (:func:`memcache_topup`): as many pages as the
operation can need, fewer when the pool runs dry, so the walker meets -ENOMEM exactly where
the pool empties. After the operation every page left on the stack, and every table page the
operation freed, goes back to the pool it came from (:func:`memcache_settle`, hyp_put_page()),
the memcache left empty.

Both are compiled: the engine calls them inside a fault or a host abort, the Python side
(:class:`PoolMemory`) before and after the operations it runs for the agents. They work on
the memory's *store*, one set of arrays holding all its pools (each pool's arrays are views
of it), so a kernel takes any pool of any layout with one signature.
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.hyp.hyp_pool import HypPool
from simulator.hyp.page_alloc import (
    BUG_NONE,
    M_BUG_WHAT,
    get_order,
    pool_alloc,
    pool_put,
)
from simulator.hyp.page_alloc import META_SIZE as POOL_META_SIZE
from simulator.hyp.pgtable import M_ALLOCS, M_HWM, M_INUSE, M_NFREE, M_PEAK, M_TOP, PageTableMemory

# the store's pool table: one int64 row per pool
(PT_PAGE_OFF, PT_NR, PT_NODE_OFF, PT_NODES, PT_RESV_OFF, PT_NRESV, PT_ROW0,
 PT_RAISE) = range(8)
N_PT = 8


def make_store(pools: list[HypPool], row0: list[int]) -> tuple:
    """One store for ``pools`` (the first page of pool k is row ``row0[k]`` of its memory):
    ``(refcounts, orders, next, prev, resv, meta, table)``. The pools move their state into
    it and work on views of it from then on."""
    n = sum(p.nr_pages for p in pools)
    nodes = sum(len(p.next) for p in pools)
    nresv = sum(len(p._resv) for p in pools)
    pref = np.zeros(n, dtype=np.uint32)
    pord = np.zeros(n, dtype=np.uint32)
    pnxt = np.zeros(nodes, dtype=np.int32)
    pprv = np.zeros(nodes, dtype=np.int32)
    presv = np.zeros(max(nresv, 1), dtype=np.uint8)
    pmeta = np.zeros((len(pools), POOL_META_SIZE), dtype=np.int64)
    ptab = np.zeros((len(pools), N_PT), dtype=np.int64)
    a = b = r = 0
    for k, p in enumerate(pools):
        nr, nn, nv = p.nr_pages, len(p.next), len(p._resv)
        ptab[k] = (a, nr, b, nn, r, nv, row0[k], int(p.on_bug == "raise"))
        p.place(pref[a:a + nr], pord[a:a + nr], pnxt[b:b + nn], pprv[b:b + nn],
                presv[r:r + nv], pmeta[k])
        a, b, r = a + nr, b + nn, r + nv
    return (pref, pord, pnxt, pprv, presv, pmeta, ptab)


def empty_store() -> tuple:
    """The store of a memory with no pools (it keeps the engine's signature)."""
    return make_store([], [])


@jit
def pool_views(hy, p):
    """Pool ``p`` of store ``hy``: (refcounts, orders, next, prev, resv, meta) views."""
    pref, pord, pnxt, pprv, presv, pmeta, ptab = hy
    a = ptab[p, PT_PAGE_OFF]
    b = ptab[p, PT_NODE_OFF]
    r = ptab[p, PT_RESV_OFF]
    return (pref[a:a + ptab[p, PT_NR]], pord[a:a + ptab[p, PT_NR]],
            pnxt[b:b + ptab[p, PT_NODES]], pprv[b:b + ptab[p, PT_NODES]],
            presv[r:r + ptab[p, PT_NRESV]], pmeta[p])


@jit
def memcache_topup(free, meta, hy, p, pages):
    """Top the memory's free stack up to ``pages`` rows from pool ``p`` (hyp_alloc_pages()
    of order 0 each; fewer when the pool runs dry). The rows go out in pool order.
    Returns 0, or ``p << 8 | BUG_*`` for a BUG of a pool that raises (the top-up stops)."""
    rc, od, nx, pv, _, pm = pool_views(hy, p)
    ptab = hy[6]
    row0 = ptab[p, PT_ROW0]
    start = meta[M_NFREE]
    nfree = start
    bug = 0
    while nfree < pages:
        idx = pool_alloc(rc, od, nx, pv, pm, np.int64(0))
        if idx < 0:
            break
        if pm[M_BUG_WHAT] != BUG_NONE and ptab[p, PT_RAISE] != 0:
            bug = (p << 8) | pm[M_BUG_WHAT]
            break
        row = row0 + idx
        free[nfree] = row
        nfree += 1
        if row >= meta[M_TOP]:
            meta[M_TOP] = row + 1
    # the walker pops from the top: reverse what was added so pages go out in pool order
    i = start
    j = nfree - 1
    while i < j:
        t = free[i]
        free[i] = free[j]
        free[j] = t
        i += 1
        j -= 1
    meta[M_NFREE] = nfree
    return bug


@jit
def memcache_settle(free, meta, hy, keep):
    """Give every row on the free stack past the first ``keep`` (0: all) back to its pool
    (hyp_put_page()). Returns 0, or ``p << 8 | BUG_*`` for a BUG of a pool that raises."""
    ptab = hy[6]
    nfree = meta[M_NFREE]
    for i in range(nfree - 1, keep - 1, -1):
        row = free[i]
        p = 0
        while not ptab[p, PT_ROW0] <= row < ptab[p, PT_ROW0] + ptab[p, PT_NR]:
            p += 1
        rc, od, nx, pv, rv, pm = pool_views(hy, p)
        what = pool_put(rc, od, nx, pv, rv, pm, row - ptab[p, PT_ROW0])
        if what != BUG_NONE and ptab[p, PT_RAISE] != 0:
            return (p << 8) | what
    meta[M_NFREE] = min(nfree, keep)
    return 0


class PoolMemory(PageTableMemory):
    """A PageTableMemory whose pages come from ``pools`` (adjacent, in address order)."""

    def __init__(self, pools: list[HypPool]):
        pools = sorted(pools, key=lambda p: p.start_phys)
        for a, b in zip(pools, pools[1:]):
            if a.start_phys + (a.nr_pages << a.page_shift) != b.start_phys:
                raise ValueError("pools of one page-table memory must be adjacent")
        page_shift = pools[0].page_shift
        self.total_pages = sum(p.nr_pages for p in pools)
        # a row per pool page: the arrays are allocated (zeroed lazily by the OS) but only the
        # rows handed out are touched; nbytes() counts those
        super().__init__(page_shift, pools[0].start_phys, limit_pages=None,
                         initial_pages=self.total_pages)
        self.pools = pools
        self.hy = make_store(pools, [(p.start_phys - pools[0].start_phys) >> page_shift
                                     for p in pools])
        self.current = 0
        # rows are handed out from the stack only: the kernel's fresh-row path stays closed
        self.meta[M_HWM] = self.capacity

    def index(self, pool: HypPool) -> int:
        for k, p in enumerate(self.pools):
            if p is pool:
                return k
        raise ValueError("not a pool of this memory")

    def use(self, pool: HypPool) -> None:
        """Allocate from ``pool`` in the following operations."""
        self.current = self.index(pool)

    def bug(self, code: int) -> None:
        """Raise the pool BUG a kernel returned (``p << 8 | BUG_*``; 0: none)."""
        if code:
            self.pools[code >> 8]._raise(code & 0xFF)

    def before_op(self, pages: int) -> None:
        self.bug(memcache_topup(self.free, self.meta, self.hy, self.current, pages))

    def after_op(self) -> None:
        self.bug(memcache_settle(self.free, self.meta, self.hy, 0))

    def alloc_contiguous(self, n: int) -> int:
        """host_s2_zalloc_pages_exact(): an order-aligned block, split into pages."""
        pool = self.pools[self.current]
        order = get_order(n << self.page_shift, self.page_shift)
        pa = pool.alloc_pages(order)
        if pa is None:
            raise MemoryError("hyp pool exhausted allocating a pgd")
        pool.split_page(pa)
        row = self.row_of(pa)
        # pages past n go straight back (host_s2_zalloc_pages_exact frees the tail)
        for i in range(n, 1 << order):
            pool.put_page(pa + (i << self.page_shift))
        self.tables[row:row + n] = 0
        self.refcnt[row:row + n] = 1
        self.meta[M_TOP] = max(self.meta[M_TOP], row + n)
        self.meta[M_INUSE] += n
        self.meta[M_ALLOCS] += n
        self.meta[M_PEAK] = max(self.meta[M_PEAK], self.meta[M_INUSE])
        return row

    def reserve(self, pages: int) -> None:  # rows are pool positions: nothing grows
        self.before_op(pages)

    def nbytes(self) -> int:
        """Bytes of the rows ever handed out (the rest of the table array is never touched)."""
        return (int(self.meta[M_TOP]) * self.entries * 8 + self.refcnt.nbytes
                + self.free.nbytes)


__all__ = ["PoolMemory", "empty_store", "make_store", "memcache_settle", "memcache_topup",
           "pool_views"]
