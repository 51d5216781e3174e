"""Slow, obviously correct pure-Python reference for simulator.hyp.page_alloc.

pKVM's hyp_pool (Linux 6.12 ``arch/arm64/kvm/hyp/nvhe/page_alloc.c``, ``include/nvhe/memory.h``,
``include/nvhe/gfp.h``) transcribed for clarity: a Python list per order is the doubly linked
free list (``append`` is ``list_add_tail``, ``remove`` is ``__list_del_entry``, ``[0]`` is
``free_area[i].next``), dicts keyed by physical address hold each page's refcount and order.
Nothing here imports the simulator.

Conventions shared with the simulator (what the kernel leaves undefined):

* a BUG_ON() that fires is recorded in ``bugs`` as ``(what, phys, value)`` and the statement it
  guards is skipped (put at 0: nothing; get at the maximum: saturate; set_page_refcounted on a
  non-zero refcount: the refcount is kept);
* attaching a page whose order is HYP_NO_ORDER (or above max_order) is recorded as an
  ``"order"`` bug and skipped; a NULL buddy while splitting is a ``"null buddy"`` bug and the
  split stops there;
* ``used`` counts pages of blocks handed out by alloc and not freed; ``reserved_held`` the
  reserved pages not yet freed.
"""

from __future__ import annotations

# name: (refcount bits, order bits)
LAYOUT_BITS = {"legacy32": (32, 32), "packed4": (16, 16), "packed2": (13, 3)}
DEFAULT_MAX_PAGE_ORDER = {12: 10, 14: 11, 16: 13}


def kernel_get_order(size: int, page_shift: int) -> int:
    """get_order(): smallest order with (PAGE_SIZE << order) >= size; get_order(0) = 64 - shift."""
    if size == 0:
        return 64 - page_shift
    order = 0
    while (1 << (order + page_shift)) < size:
        order += 1
    return order


class NaiveBuddy:
    def __init__(self, start_phys, nr_pages, page_shift=12, layout="packed4", reserved_pages=0,
                 max_order=None, truncate_size_u32=True):
        ref_bits, order_bits = LAYOUT_BITS[layout]
        self.ref_max = 2**ref_bits - 1
        self.no_order = 2**order_bits - 1
        self.page_size = 2**page_shift
        self.page_shift = page_shift
        self.start = start_phys
        self.nr_pages = nr_pages
        size = nr_pages * self.page_size
        if truncate_size_u32:
            size = size % 2**32
        self.range_start = start_phys
        self.range_end = start_phys + size
        if max_order is None:
            max_order = DEFAULT_MAX_PAGE_ORDER[page_shift]
        self.max_order = min(max_order, kernel_get_order(size, page_shift), self.no_order - 1)
        self.free_area = [[] for _ in range(self.max_order + 1)]
        self.refcount = {}
        self.order = {}
        self.bugs = []
        self.alloc_failures = 0
        self.used = 0
        self.free = 0
        self.reserved_held = set()

        pages = [start_phys + i * self.page_size for i in range(nr_pages)]
        for p in pages:
            self.refcount[p] = 0
            self.order[p] = 0
            self.set_page_refcounted(p)
        self.reserved_held = set(pages[:reserved_pages])
        self.used = nr_pages - reserved_pages
        for p in pages[reserved_pages:]:
            self._put(p)

    # ---- memory.h --------------------------------------------------------------------

    def set_page_refcounted(self, p):
        if self.refcount[p] != 0:
            self.bugs.append(("refcount not zero", p, self.refcount[p]))
            return
        self.refcount[p] = 1

    # ---- page_alloc.c ----------------------------------------------------------------

    def find_buddy_nocheck(self, p, order):
        addr = p ^ (self.page_size << order)
        if addr < self.range_start or addr >= self.range_end:
            return None
        return addr

    def find_buddy_avail(self, p, order):
        buddy = self.find_buddy_nocheck(p, order)
        if buddy is None or self.order[buddy] != order or self.refcount[buddy] != 0:
            return None
        return buddy

    def attach(self, p):
        order = self.order[p]
        if order > self.max_order:
            self.bugs.append(("order", p, order))
            return
        size = 2**order
        self.free += size
        if p in self.reserved_held:
            self.reserved_held.remove(p)
        else:
            self.used -= size
        if p < self.range_start or p >= self.range_end:
            # an 'external' page: inserted without coalescing
            self.free_area[order].append(p)
            return
        self.order[p] = self.no_order
        while order + 1 <= self.max_order:
            buddy = self.find_buddy_avail(p, order)
            if buddy is None:
                break
            self.free_area[order].remove(buddy)
            self.order[buddy] = self.no_order
            p = min(p, buddy)
            order += 1
        self.order[p] = order
        self.free_area[order].append(p)

    def _put(self, p):
        if self.refcount[p] == 0:
            self.bugs.append(("refcount underflow", p, 0))
            return
        self.refcount[p] -= 1
        if self.refcount[p] == 0:
            self.attach(p)

    def put_page(self, p):
        self._put(p)

    def get_page(self, p):
        if self.refcount[p] == self.ref_max:
            self.bugs.append(("refcount overflow", p, self.refcount[p]))
            return
        self.refcount[p] += 1

    def split_page(self, p):
        order = self.order[p]
        self.order[p] = 0
        for i in range(1, 2**order):
            tail = p + i * self.page_size
            self.order[tail] = 0
            self.set_page_refcounted(tail)

    def alloc_pages(self, order):
        i = order
        while i <= self.max_order and not self.free_area[i]:
            i += 1
        if i > self.max_order:
            self.alloc_failures += 1
            return None
        p = self.free_area[i][0]
        self.free_area[i].remove(p)
        while self.order[p] > order:
            buddy = self.find_buddy_nocheck(p, self.order[p] - 1)
            if buddy is None:
                self.bugs.append(("null buddy", p, self.order[p] - 1))
                break
            self.order[p] -= 1
            self.order[buddy] = self.order[p]
            self.free_area[self.order[buddy]].append(buddy)
        self.set_page_refcounted(p)
        self.free -= 2 ** self.order[p]
        self.used += 2 ** self.order[p]
        return p

    # ---- views -----------------------------------------------------------------------

    def free_lists(self):
        return [list(blocks) for blocks in self.free_area]

    def refcounts(self):
        return [self.refcount[self.start + i * self.page_size] for i in range(self.nr_pages)]

    def orders(self):
        return [self.order[self.start + i * self.page_size] for i in range(self.nr_pages)]
