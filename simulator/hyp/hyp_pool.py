"""The Python face of a hyp_pool (:class:`HypPool`): validation, one kernel call of
:mod:`simulator.hyp.page_alloc` per operation, and :class:`HypBugError` when a BUG_ON() fires."""

from __future__ import annotations

import operator

import numpy as np

from simulator.hyp.budgets import MAX_PAGE_ORDER, _check_page_shift, _layout, get_order
from simulator.hyp.page_alloc import (
    BUG_FIELDS,
    BUG_NONE,
    BUG_ORDER,
    BUG_REF_NOT_ZERO,
    BUG_REF_OVERFLOW,
    BUG_REF_UNDERFLOW,
    M_ALLOC_FAILURES,
    M_ALLOCS,
    M_BUG_PAGE,
    M_BUG_VALUE,
    M_BUG_WHAT,
    M_BUGS,
    M_END_PFN,
    M_FREE,
    M_FREED_BLOCKS,
    M_GETS,
    M_MAX_ORDER,
    M_MERGES,
    M_NO_ORDER,
    M_NR_PAGES,
    M_PAGE_SHIFT,
    M_PUTS,
    M_REF_MAX,
    M_RESERVED,
    M_RESV_HELD,
    M_SPLIT_STEPS,
    M_SPLITS,
    M_START_PFN,
    M_USED,
    M_ZEROED_BYTES,
    META_SIZE,
    pool_alloc,
    pool_get,
    pool_init,
    pool_put,
    pool_split,
)

__all__ = ["HypBugError", "HypPool"]


# ========================================================================================
# The Python wrapper


class HypBugError(RuntimeError):
    """A BUG_ON() of the hyp allocator fired: the real hypervisor would have panicked."""

    def __init__(self, page_phys: int, what: str, message: str | None = None):
        self.page_phys = page_phys
        self.what = what
        super().__init__(message or f"BUG: hyp_page {what} at page {page_phys:#x}")


class HypPool:
    """A hyp_pool over ``nr_pages`` pages at ``start_phys``: hyp_pool_init(), then the
    allocator's calls, one kernel call each.

    start_phys: physical address of the first page (page-aligned).
    nr_pages: pages in the pool (hyp_pool_init's unsigned int).
    page_shift: 12, 14 or 16.
    layout: struct hyp_page layout, a key of VMEMMAP_LAYOUTS.
    reserved_pages: the first pages stay allocated (refcount 1), as hyp_pool_init() leaves the
        early allocations; they can be put like any page.
    max_order: the kernel's MAX_PAGE_ORDER (None: arm64's default for the page size). The pool's
        max_order is min(MAX_PAGE_ORDER, get_order(nr_pages << PAGE_SHIFT)), clamped to the
        largest order the layout stores.
    on_bug: "raise" (HypBugError) or "count" (``bugs`` counts it; see the module docstring
        for the state a BUG leaves).
    truncate_size_u32: hyp_pool_init() computes ``nr_pages << PAGE_SHIFT`` in 32 bits (nr_pages
        is an unsigned int), so for a pool of 4 GiB or more both range_end and the get_order()
        argument wrap; the pages past the truncated range_end are then 'external' pages that
        __hyp_attach_page() never coalesces. True (the default) models that; False models a
        kernel without the truncation.
    """

    def __init__(
        self,
        start_phys: int,
        nr_pages: int,
        page_shift: int = 12,
        layout: str = "packed4",
        reserved_pages: int = 0,
        max_order: int | None = None,
        on_bug: str = "raise",
        *,
        truncate_size_u32: bool = True,
    ):
        page_shift = _check_page_shift(page_shift)
        self.layout = _layout(layout)
        try:
            start_phys = operator.index(start_phys)
            nr_pages = operator.index(nr_pages)
            reserved_pages = operator.index(reserved_pages)
        except TypeError:
            raise ValueError("start_phys, nr_pages and reserved_pages must be ints") from None
        page = 1 << page_shift
        if start_phys < 0 or start_phys % page:
            raise ValueError(f"start_phys {start_phys:#x} is not {page}-byte aligned")
        if not 1 <= nr_pages < (1 << 31) - 64:
            raise ValueError(f"nr_pages must be 1 .. 2**31 - 65, not {nr_pages}")
        if start_phys + (nr_pages << page_shift) > 1 << 52:
            raise ValueError("the pool extends beyond the 52-bit physical address space")
        if not 0 <= reserved_pages <= nr_pages:
            raise ValueError(
                f"reserved_pages must be 0 .. nr_pages ({nr_pages}), not {reserved_pages}"
            )
        if max_order is None:
            max_order = MAX_PAGE_ORDER[page_shift]
        elif not 0 <= operator.index(max_order) <= 30:
            raise ValueError(f"max_order must be 0 .. 30, not {max_order}")
        if on_bug not in ("raise", "count"):
            raise ValueError(f"on_bug must be 'raise' or 'count', not {on_bug!r}")

        size = nr_pages << page_shift
        if truncate_size_u32:
            size &= 0xFFFF_FFFF
        self.start_phys = start_phys
        self.nr_pages = nr_pages
        self.page_shift = page_shift
        self.page_size = page
        self.end_phys = start_phys + (nr_pages << page_shift)
        self.range_end = start_phys + size  # pool->range_end as the kernel computes it
        self.reserved_pages = reserved_pages
        self.max_order = min(int(max_order), get_order(size, page_shift), self.layout.max_order)
        self.on_bug = on_bug

        self.refcounts = np.zeros(nr_pages, dtype=np.uint32)
        self.orders = np.zeros(nr_pages, dtype=np.uint32)
        nodes = nr_pages + self.max_order + 1
        self.next = np.full(nodes, -1, dtype=np.int32)
        self.prev = np.full(nodes, -1, dtype=np.int32)
        self._resv = np.zeros(max(reserved_pages, 1), dtype=np.uint8)
        meta = np.zeros(META_SIZE, dtype=np.int64)
        meta[M_START_PFN] = start_phys >> page_shift
        meta[M_END_PFN] = self.range_end >> page_shift
        meta[M_NR_PAGES] = nr_pages
        meta[M_MAX_ORDER] = self.max_order
        meta[M_REF_MAX] = self.layout.max_refcount
        meta[M_NO_ORDER] = self.layout.no_order
        meta[M_PAGE_SHIFT] = page_shift
        meta[M_RESERVED] = reserved_pages
        self.meta = meta
        self._raise(
            pool_init(self.refcounts, self.orders, self.next, self.prev, self._resv, self.meta)
        )

    def place(self, refcounts, orders, nxt, prv, resv, meta) -> None:
        """Move the pool's state into the given arrays (views of a larger store, see
        :class:`simulator.hyp.pools.PoolMemory`) and work on them from now on."""
        refcounts[:] = self.refcounts
        orders[:] = self.orders
        nxt[:] = self.next
        prv[:] = self.prev
        resv[:] = self._resv
        meta[:] = self.meta
        self.refcounts, self.orders, self.next, self.prev = refcounts, orders, nxt, prv
        self._resv, self.meta = resv, meta

    # ---- helpers ----------------------------------------------------------------------

    def _index(self, phys) -> int:
        try:
            phys = operator.index(phys)
        except TypeError:
            raise ValueError(f"a page address is an int, not {phys!r}") from None
        if phys % self.page_size:
            raise ValueError(f"page address {phys:#x} is not {self.page_size}-byte aligned")
        if not self.start_phys <= phys < self.end_phys:
            raise ValueError(
                f"page {phys:#x} is outside the pool [{self.start_phys:#x}, {self.end_phys:#x})"
            )
        return (phys - self.start_phys) >> self.page_shift

    def _phys(self, idx: int) -> int:
        return self.start_phys + (int(idx) << self.page_shift)

    def _raise(self, what: int) -> None:
        if what == BUG_NONE or self.on_bug == "count":
            return
        phys = self._phys(self.meta[M_BUG_PAGE])
        value = int(self.meta[M_BUG_VALUE])
        lay = self.layout
        if what == BUG_REF_UNDERFLOW:
            msg = f"BUG: hyp_page refcount underflow at page {phys:#x} (put at refcount 0)"
        elif what == BUG_REF_OVERFLOW:
            msg = (
                f"BUG: hyp_page refcount overflow at page {phys:#x} "
                f"({lay.name}: {lay.refcount_bits} bits)"
            )
        elif what == BUG_REF_NOT_ZERO:
            msg = (
                f"BUG: hyp_page refcount not zero at page {phys:#x} "
                f"(hyp_set_page_refcounted found {value})"
            )
        elif what == BUG_ORDER:
            msg = (
                f"BUG: hyp_page order {value:#x} out of range at page {phys:#x} "
                f"({lay.name}: max_order {self.max_order})"
            )
        else:
            msg = (
                f"BUG: NULL buddy of page {phys:#x} at order {value} in __hyp_extract_page "
                f"(pool range_end {self.range_end:#x} truncated to 32 bits)"
            )
        raise HypBugError(phys, BUG_FIELDS[what], msg)

    # ---- the allocator ------------------------------------------------------------------

    def alloc_pages(self, order: int) -> int | None:
        """hyp_alloc_pages(): the physical address of a 2**order-page block, or None (NULL)
        when no free block of that order or larger exists (always for order > max_order)."""
        try:
            order = operator.index(order)
        except TypeError:
            raise ValueError(f"order must be an int, not {order!r}") from None
        if order < 0:
            raise ValueError(f"order must be >= 0, not {order}")
        if order > self.max_order:
            # the kernel's search loop does not run: NULL (counted like any failure)
            order = self.max_order + 1
        idx = pool_alloc(self.refcounts, self.orders, self.next, self.prev, self.meta, order)
        if idx < 0:
            return None
        self._raise(int(self.meta[M_BUG_WHAT]))
        return self._phys(idx)

    def put_page(self, phys: int) -> None:
        """hyp_put_page(): drop a reference; at zero the block the page heads is freed."""
        idx = self._index(phys)
        self._raise(
            pool_put(self.refcounts, self.orders, self.next, self.prev, self._resv, self.meta, idx)
        )

    def get_page(self, phys: int) -> None:
        """hyp_get_page(): take a reference (BUG at the refcount field's maximum)."""
        self._raise(pool_get(self.refcounts, self.meta, self._index(phys)))

    def split_page(self, phys: int) -> None:
        """hyp_split_page(): make the allocated block headed by ``phys`` into order-0 pages,
        each refcounted (the head keeps its refcount)."""
        idx = self._index(phys)
        o = int(self.orders[idx])
        if o == self.layout.no_order or o > self.max_order:
            raise ValueError(f"page {phys:#x} is not the head of a block (order {o:#x})")
        if self.refcounts[idx] == 0:
            raise ValueError(f"page {phys:#x} is free (refcount 0): only allocated blocks split")
        self._raise(pool_split(self.refcounts, self.orders, self.meta, idx))

    def refcount(self, phys: int) -> int:
        return int(self.refcounts[self._index(phys)])

    def order(self, phys: int) -> int:
        """The page's order field: its block order if it heads one, else HYP_NO_ORDER."""
        return int(self.orders[self._index(phys)])

    def set_refcount(self, phys: int, value: int) -> None:
        """Write a page's refcount field directly (a test / fault-injection hook, as a stray
        write would): 0 .. the layout's max_refcount."""
        idx = self._index(phys)
        if not 0 <= value <= self.layout.max_refcount:
            raise ValueError(
                f"refcount must be 0 .. {self.layout.max_refcount} for {self.layout.name}"
            )
        self.refcounts[idx] = value

    def free_lists(self) -> list[list[int]]:
        """free_area[0 .. max_order]: the physical address of each free block, in list order."""
        nr = self.nr_pages
        out = []
        for o in range(self.max_order + 1):
            head = nr + o
            blocks, node = [], int(self.next[head])
            while node != head:
                blocks.append(self._phys(node))
                node = int(self.next[node])
            out.append(blocks)
        return out

    # ---- accounting ---------------------------------------------------------------------

    @property
    def NO_ORDER(self) -> int:
        return self.layout.no_order

    @property
    def free_pages(self) -> int:
        """Pages on the free lists."""
        return int(self.meta[M_FREE])

    @property
    def used_pages(self) -> int:
        """Pages in blocks handed out by alloc_pages() and not yet freed (reserved pages not
        counted): free_pages + used_pages + reserved_held == nr_pages."""
        return int(self.meta[M_USED])

    @property
    def reserved_held(self) -> int:
        """Reserved pages not freed into the pool."""
        return int(self.meta[M_RESV_HELD])

    @property
    def largest_free_order(self) -> int:
        """The largest order with a free block, -1 if the pool is exhausted."""
        nr = self.nr_pages
        for o in range(self.max_order, -1, -1):
            if self.next[nr + o] != nr + o:
                return o
        return -1

    @property
    def alloc_failures(self) -> int:
        return int(self.meta[M_ALLOC_FAILURES])

    @property
    def bugs(self) -> int:
        return int(self.meta[M_BUGS])

    @property
    def vmemmap_bytes(self) -> int:
        """This pool's struct hyp_page entries: nr_pages * sizeof(struct hyp_page)."""
        return self.nr_pages * self.layout.entry_bytes

    def counters(self) -> dict[str, int]:
        """Flat counters: activity since hyp_pool_init() and the page accounting."""
        m = self.meta
        return {
            "allocs": int(m[M_ALLOCS]),
            "alloc_failures": int(m[M_ALLOC_FAILURES]),
            "puts": int(m[M_PUTS]),
            "gets": int(m[M_GETS]),
            "splits": int(m[M_SPLITS]),
            "freed_blocks": int(m[M_FREED_BLOCKS]),
            "merges": int(m[M_MERGES]),
            "split_steps": int(m[M_SPLIT_STEPS]),
            "zeroed_bytes": int(m[M_ZEROED_BYTES]),
            "bugs": int(m[M_BUGS]),
            "free_pages": self.free_pages,
            "used_pages": self.used_pages,
            "reserved_held": self.reserved_held,
        }

    def __repr__(self) -> str:
        return (
            f"HypPool({self.start_phys:#x}, {self.nr_pages} pages of {self.page_size // 1024}K, "
            f"{self.layout.name}, max_order {self.max_order}, free {self.free_pages})"
        )
