"""pKVM's EL2 page allocator: the hyp_pool buddy allocator and its struct hyp_page metadata.

A model of Linux 6.12 ``arch/arm64/kvm/hyp/nvhe/page_alloc.c`` with ``include/nvhe/memory.h``
(struct hyp_page, the refcount helpers and their BUG_ON()s) and ``include/nvhe/gfp.h`` (struct
hyp_pool), plus the page budgets of ``arch/arm64/include/asm/kvm_pkvm.h`` that size the pools
(``__hyp_pgtable_max_pages``, ``hyp_s1_pgtable_pages``, ``host_s2_pgtable_pages``,
``hyp_vmemmap_pages``). The layout of struct hyp_page is a choice (:data:`VMEMMAP_LAYOUTS`):
the 32-byte entry before seed 002, its 4-byte entry, and the 2-byte entry it sketches.

State lives in numpy arrays, one element per page of the pool (index ``i`` is the page at
``start_phys + (i << page_shift)``):

* ``refcounts`` and ``orders``: struct hyp_page's two fields, held in ``uint32`` arrays for
  every layout (one array type: one compiled kernel, and the engine takes any pool). The
  layout's widths are limits the kernels enforce from ``meta`` (``M_REF_MAX``: 65535 for
  packed4, 8191 for packed2; ``M_NO_ORDER``: HYP_NO_ORDER, 0xFFFF or 7), so no value a field
  of the layout's width could not hold is ever stored;
* the free lists: ``next``/``prev`` node arrays of ``nr_pages + max_order + 1`` entries. Entries
  ``0 .. nr_pages-1`` are the pages' ``struct list_head`` (in the vmemmap for legacy32, inside the
  free page itself for the packed layouts: the same list either way); entry ``nr_pages + o`` is
  ``pool->free_area[o]``, the list head. They are circular exactly like ``<linux/list.h>``: an
  empty list points at itself, ``list_add_tail`` inserts before the head. A node that is on no
  list holds -1 (the kernel memsets it to zero);
* ``meta``: an int64 array of the pool's scalars (range, max_order, the layout's limits) and its
  counters (indices ``M_*``).

Kernels (free functions under the project's ``jit``) mirror the kernel's functions:
:func:`pool_init` = ``hyp_pool_init``, :func:`pool_alloc` = ``hyp_alloc_pages`` (with
``__hyp_extract_page``), :func:`pool_put` = ``hyp_put_page`` (``__hyp_put_page`` and
``__hyp_attach_page``), :func:`pool_get` = ``hyp_get_page``, :func:`pool_split` =
``hyp_split_page``. They never raise: a BUG_ON() that fires is counted in ``meta[M_BUGS]``, the
first one of a call is recorded in ``meta[M_BUG_WHAT/PAGE/VALUE]`` and the kernel carries on
*skipping the statement the BUG_ON() guards* (the real hypervisor panics instead):

* put at refcount 0 (``hyp_page_ref_dec``): the refcount stays 0, nothing is freed;
* get at the counter's maximum (``hyp_page_ref_inc``): the refcount saturates;
* ``hyp_set_page_refcounted`` on a non-zero refcount: the refcount keeps its value (an alloc
  still hands the page out; a split still sets the tail's order to 0).

Two further checks guard the model against memory corruption the C code would commit without a
BUG_ON() (the 6.12 code has no check there): attaching a page whose order is HYP_NO_ORDER or
above max_order (a put that frees a non-head page; the kernel would index ``free_area[]`` out of
bounds; later kernels WARN_ON(), Android's BUG_ON()s in hyp_put_page()), which is skipped (the
page is leaked); and a NULL buddy in ``__hyp_extract_page`` (only possible in a pool whose range
was truncated to 32 bits, see :class:`HypPool`), where splitting stops and the larger block is
handed out (what Android's fix does; unreachable in the 6.12 semantics modelled here, since
pages past range_end are never coalesced).

:class:`HypPool` is the thin wrapper: it validates, makes one kernel call, and raises
:class:`HypBugError` on a BUG (with ``on_bug="count"`` it only counts it). Either way the pool is
left as described above, a state the real hypervisor, having panicked, never reaches.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from simulator._jit import jit

__all__ = [
    "HOST_S2_PGD_PAGES",
    "HYP_PGTABLE_BUDGET_LEVELS",
    "MAX_PAGE_ORDER",
    "VMEMMAP_LAYOUTS",
    "HypBugError",
    "HypPool",
    "VmemmapLayout",
    "get_order",
    "host_s2_pgtable_pages",
    "hyp_s1_pgtable_pages",
    "layout_supports",
    "pgtable_max_pages",
    "vmemmap_bytes",
    "vmemmap_bytes_per_gib",
]

GiB = 1 << 30

# arm64 CONFIG_ARCH_FORCE_MAX_ORDER defaults (arch/arm64/Kconfig): MAX_PAGE_ORDER per page shift.
# The pool's max_order is inclusive (free_area[0 .. max_order]) as in Linux >= 6.4.
MAX_PAGE_ORDER = {12: 10, 14: 11, 16: 13}

# __hyp_pgtable_max_pages() loops for (i = KVM_PGTABLE_FIRST_LEVEL; i <= KVM_PGTABLE_LAST_LEVEL)
# and since Linux 6.9 (LPA2 support) KVM_PGTABLE_FIRST_LEVEL is -1: five iterations, whatever the
# granule. Before 6.9 it was KVM_PGTABLE_MAX_LEVELS = 4.
HYP_PGTABLE_BUDGET_LEVELS = 5
# host_s2_pgtable_pages(): "an extra 16 pages to safely upper-bound the worst case of
# concatenated pgds".
HOST_S2_PGD_PAGES = 16
# hyp_s1_pgtable_pages() allows 1 GiB of private mappings, host_s2_pgtable_pages() 1 GiB of MMIO.
_ALLOWANCE_BYTES = GiB


# ========================================================================================
# struct hyp_page layouts


@dataclass(frozen=True)
class VmemmapLayout:
    """One layout of struct hyp_page: its size, its fields' widths and where list nodes live."""

    name: str
    entry_bytes: int  # sizeof(struct hyp_page): the vmemmap cost per page
    refcount_bits: int
    order_bits: int
    list_nodes: str  # "vmemmap": struct list_head in struct hyp_page; "page": in the free page
    description: str

    @property
    def max_refcount(self) -> int:
        """The largest refcount the field holds; hyp_page_ref_inc() BUG()s there."""
        return (1 << self.refcount_bits) - 1

    @property
    def no_order(self) -> int:
        """HYP_NO_ORDER: the order of every page of a block but its head (all ones)."""
        return (1 << self.order_bits) - 1

    @property
    def max_order(self) -> int:
        """The largest order the field stores (HYP_NO_ORDER - 1); a pool's max_order is
        clamped to it."""
        return self.no_order - 1


VMEMMAP_LAYOUTS: dict[str, VmemmapLayout] = {
    "legacy32": VmemmapLayout(
        "legacy32", 32, 32, 32, "vmemmap",
        "Linux 5.11/5.12: struct list_head node (16 B), struct hyp_pool *pool (8 B), "
        "unsigned int refcount, unsigned int order; HYP_NO_ORDER = UINT_MAX",
    ),
    "packed4": VmemmapLayout(
        "packed4", 4, 16, 16, "page",
        "seed 002 (Linux 5.13 .. 6.13): unsigned short refcount, unsigned short order; "
        "HYP_NO_ORDER = USHRT_MAX; the list nodes live in the free pages",
    ),
    "packed2": VmemmapLayout(
        "packed2", 2, 13, 3, "page",
        "seed 002's sketch: 13-bit refcount (max 8191), 3-bit order (0..6, 7 = HYP_NO_ORDER)",
    ),
}


def _layout(layout: str | VmemmapLayout) -> VmemmapLayout:
    if isinstance(layout, VmemmapLayout):
        return layout
    try:
        return VMEMMAP_LAYOUTS[layout]
    except (KeyError, TypeError):
        names = ", ".join(VMEMMAP_LAYOUTS)
        raise ValueError(f"unknown hyp_page layout {layout!r} (choose from {names})") from None


def _check_page_shift(page_shift: int) -> int:
    if page_shift not in MAX_PAGE_ORDER:
        raise ValueError(f"page_shift must be 12, 14 or 16 (4K, 16K, 64K), not {page_shift!r}")
    return page_shift


def layout_supports(layout: str, page_shift: int) -> str | None:
    """Why ``layout`` cannot serve a pKVM built with ``2**page_shift``-byte pages, or None.

    A stage-2 table page is refcounted 1 + one per valid entry, so its hyp_page must hold
    1 + PTRS_PER_PTE: 513 with 4K pages, 2049 with 16K, 8193 with 64K. packed2's 13 bits stop at
    8191, so packed2 cannot serve 64K pages (seed 002 says as much).
    """
    if layout not in VMEMMAP_LAYOUTS:
        return f"unknown hyp_page layout {layout!r} (choose from {', '.join(VMEMMAP_LAYOUTS)})"
    if page_shift not in MAX_PAGE_ORDER:
        return f"page shift must be 12, 14 or 16 (4K, 16K, 64K), not {page_shift!r}"
    lay = VMEMMAP_LAYOUTS[layout]
    entries = 1 << (page_shift - 3)
    need = 1 + entries
    if need > lay.max_refcount:
        size = {12: "4K", 14: "16K", 16: "64K"}[page_shift]
        return (
            f"{layout} holds a refcount of at most {lay.max_refcount} ({lay.refcount_bits} bits) "
            f"but a stage-2 table page with {size} pages needs 1 + {entries} = {need}"
        )
    return None


# ========================================================================================
# Page budgets (arch/arm64/include/asm/kvm_pkvm.h)


def get_order(size: int, page_shift: int) -> int:
    """The kernel's get_order(): the smallest order whose block covers ``size`` bytes
    (``fls64((size - 1) >> PAGE_SHIFT)``; get_order(0) is 64 - PAGE_SHIFT)."""
    return (((size - 1) & ((1 << 64) - 1)) >> page_shift).bit_length()


def pgtable_max_pages(nr_pages: int, page_shift: int, levels: int = 4) -> int:
    """__hyp_pgtable_max_pages(): table pages to map ``nr_pages`` pages at page granularity in
    the worst case: for each of ``levels`` levels, n = ceil(n / PTRS_PER_PTE), summed.

    Linux 6.9+ loops over KVM_PGTABLE_FIRST_LEVEL (-1) .. KVM_PGTABLE_LAST_LEVEL (3), i.e.
    ``levels=5`` (:data:`HYP_PGTABLE_BUDGET_LEVELS`, what the budget functions below use);
    ``levels=4`` is the four-level walk of earlier kernels.
    """
    _check_page_shift(page_shift)
    if nr_pages < 0 or levels < 0:
        raise ValueError("nr_pages and levels must be >= 0")
    entries = 1 << (page_shift - 3)
    total, n = 0, int(nr_pages)
    for _ in range(levels):
        n = -(-n // entries)
        total += n
    return total


def _regions(memory_regions: Iterable) -> list[tuple[int, int]]:
    out = []
    for reg in memory_regions:
        try:
            base, size = (operator.index(v) for v in reg)
        except (TypeError, ValueError):
            msg = f"a memory region is a (base, size) pair of ints, not {reg!r}"
            raise ValueError(msg) from None
        if base < 0 or size < 0:
            raise ValueError(f"memory region ({base:#x}, {size:#x}) has a negative base or size")
        out.append((base, size))
    return out


def _pgtable_total_pages(regions, page_shift: int, levels: int) -> int:
    """__hyp_pgtable_total_pages(): every region covered at page granularity."""
    return sum(pgtable_max_pages(size >> page_shift, page_shift, levels) for _, size in regions)


def hyp_s1_pgtable_pages(
    memory_regions: Iterable, page_shift: int, levels: int = HYP_PGTABLE_BUDGET_LEVELS
) -> int:
    """hyp_s1_pgtable_pages(): the hyp stage-1 pool (``hpool``): all of memory at page
    granularity plus 1 GiB of private mappings. ``memory_regions``: (base, size) byte pairs,
    the kernel's hyp_memory[] memblocks."""
    regions = _regions(memory_regions)
    res = _pgtable_total_pages(regions, page_shift, levels)
    return res + pgtable_max_pages(_ALLOWANCE_BYTES >> page_shift, page_shift, levels)


def host_s2_pgtable_pages(
    memory_regions: Iterable, page_shift: int, levels: int = HYP_PGTABLE_BUDGET_LEVELS
) -> int:
    """host_s2_pgtable_pages(): the host stage-2 pool (``host_s2_pool``, prepare_s2_pool()):
    all of memory at page granularity, + 16 pages for concatenated pgds, + 1 GiB of MMIO."""
    regions = _regions(memory_regions)
    res = _pgtable_total_pages(regions, page_shift, levels) + HOST_S2_PGD_PAGES
    return res + pgtable_max_pages(_ALLOWANCE_BYTES >> page_shift, page_shift, levels)


def vmemmap_bytes(memory_regions: Iterable, page_shift: int, layout: str) -> int:
    """Bytes of hyp vmemmap that hyp_vmemmap_pages() reserves: per region, the struct hyp_page
    entries of its pages *at their place in the vmemmap* (``(base >> PAGE_SHIFT) * entry``),
    the start aligned down and the end aligned up to a page, summed over regions (two regions
    sharing a vmemmap page both count it)."""
    _check_page_shift(page_shift)
    entry = _layout(layout).entry_bytes
    page = 1 << page_shift
    total = 0
    for base, size in _regions(memory_regions):
        start = (base >> page_shift) * entry
        end = start + (size >> page_shift) * entry
        start -= start % page
        end = -(-end // page) * page
        total += end - start
    return total


def vmemmap_bytes_per_gib(layout: str, page_shift: int) -> int:
    """Vmemmap bytes per GiB of memory: (1 GiB >> page_shift) * sizeof(struct hyp_page).
    32 B/page -> 8 MiB per GiB with 4K pages; 4 B -> 1 MiB (seed 002)."""
    _check_page_shift(page_shift)
    return (GiB >> page_shift) * _layout(layout).entry_bytes


# ========================================================================================
# Kernel state: meta indices, BUG codes

M_START_PFN = 0  # pool->range_start >> PAGE_SHIFT
M_END_PFN = 1  # pool->range_end >> PAGE_SHIFT (as the kernel computes it: maybe truncated)
M_NR_PAGES = 2  # pages in the arrays (nr_pages)
M_MAX_ORDER = 3  # pool->max_order (inclusive)
M_REF_MAX = 4  # the layout's largest refcount
M_NO_ORDER = 5  # the layout's HYP_NO_ORDER
M_PAGE_SHIFT = 6
M_RESERVED = 7  # reserved_pages given to hyp_pool_init
M_FREE = 8  # pages on the free lists
M_USED = 9  # pages in blocks handed out by hyp_alloc_pages and not freed
M_RESV_HELD = 10  # reserved pages not (yet) freed into the pool
M_ALLOCS = 11  # successful hyp_alloc_pages
M_ALLOC_FAILURES = 12  # hyp_alloc_pages returning NULL
M_PUTS = 13
M_GETS = 14
M_SPLITS = 15
M_FREED_BLOCKS = 16  # __hyp_attach_page calls (a put that dropped the refcount to 0)
M_MERGES = 17  # buddies coalesced by __hyp_attach_page
M_SPLIT_STEPS = 18  # halvings by __hyp_extract_page
M_ZEROED_BYTES = 19  # memset(PAGE_SIZE << order) in __hyp_attach_page
M_BUGS = 20  # BUG()s hit (all calls)
M_BUG_WHAT = 21  # first BUG of the last call (BUG_*), 0 if none
M_BUG_PAGE = 22  # its page index
M_BUG_VALUE = 23  # the field's value (refcount, order)
META_SIZE = 24

BUG_NONE = 0
BUG_REF_UNDERFLOW = 1  # hyp_page_ref_dec(): BUG_ON(!p->refcount)
BUG_REF_OVERFLOW = 2  # hyp_page_ref_inc(): BUG_ON(p->refcount == max)
BUG_REF_NOT_ZERO = 3  # hyp_set_page_refcounted(): BUG_ON(p->refcount)
BUG_ORDER = 4  # model guard: __hyp_attach_page on a page with no valid order
BUG_NULL_BUDDY = 5  # model guard: __hyp_extract_page finds no buddy

BUG_FIELDS = {
    BUG_REF_UNDERFLOW: "refcount underflow",
    BUG_REF_OVERFLOW: "refcount overflow",
    BUG_REF_NOT_ZERO: "refcount not zero",
    BUG_ORDER: "order out of range",
    BUG_NULL_BUDDY: "null buddy",
}


# ========================================================================================
# Kernels


@jit
def _bug(meta, what, idx, value):
    """Record a BUG() on page ``idx``: count it; keep the first of this call."""
    meta[M_BUGS] += 1
    if meta[M_BUG_WHAT] == BUG_NONE:
        meta[M_BUG_WHAT] = what
        meta[M_BUG_PAGE] = idx
        meta[M_BUG_VALUE] = value


@jit
def _begin(meta):
    meta[M_BUG_WHAT] = BUG_NONE
    meta[M_BUG_PAGE] = -1
    meta[M_BUG_VALUE] = 0


@jit
def _list_add_tail(nxt, prv, node, head):
    """list_add_tail(node, head): insert ``node`` just before the list head ``head``."""
    last = prv[head]
    nxt[node] = head
    prv[node] = last
    nxt[last] = node
    prv[head] = node


@jit
def _list_del(nxt, prv, node):
    """page_remove_from_list(): __list_del_entry(node), then clear the node."""
    n = nxt[node]
    p = prv[node]
    nxt[p] = n
    prv[n] = p
    nxt[node] = -1
    prv[node] = -1


@jit
def _find_buddy_nocheck(meta, idx, order):
    """__find_buddy_nocheck(): the page at phys ^ (PAGE_SIZE << order), or -1 when that is
    outside [range_start, range_end)."""
    start = meta[M_START_PFN]
    bpfn = (start + idx) ^ (np.int64(1) << order)
    if bpfn < start or bpfn >= meta[M_END_PFN]:
        return -1
    return bpfn - start


@jit
def _set_refcounted(refcnt, meta, idx):
    """hyp_set_page_refcounted(): BUG_ON(p->refcount); p->refcount = 1."""
    if refcnt[idx] != 0:
        _bug(meta, BUG_REF_NOT_ZERO, idx, np.int64(refcnt[idx]))
        return
    refcnt[idx] = 1


@jit
def _attach(refcnt, order, nxt, prv, resv, meta, idx):
    """__hyp_attach_page(): free the block headed by ``idx`` (refcount just dropped to 0),
    coalescing with free buddies of the same order while order + 1 <= max_order; the head of
    the merged block (the lowest page) is added at the tail of free_area[order]. A page outside
    [range_start, range_end) is added as it is, without coalescing."""
    o = np.int64(order[idx])
    max_order = meta[M_MAX_ORDER]
    if o > max_order:
        _bug(meta, BUG_ORDER, idx, o)
        return
    no_order = meta[M_NO_ORDER]
    nr = meta[M_NR_PAGES]
    size = np.int64(1) << o
    meta[M_ZEROED_BYTES] += size << meta[M_PAGE_SHIFT]
    meta[M_FREE] += size
    if idx < meta[M_RESERVED] and resv[idx] != 0:
        resv[idx] = 0
        meta[M_RESV_HELD] -= size
    else:
        meta[M_USED] -= size
    meta[M_FREED_BLOCKS] += 1

    p = idx
    pfn = meta[M_START_PFN] + idx
    if pfn >= meta[M_END_PFN]:
        # "Skip coalescing for 'external' pages being freed into the pool": only a page past
        # a range_end truncated to 32 bits is outside the range here
        order[p] = o
        _list_add_tail(nxt, prv, p, nr + o)
        return
    order[p] = no_order
    while o + 1 <= max_order:
        b = _find_buddy_nocheck(meta, p, o)
        if b < 0 or np.int64(order[b]) != o or refcnt[b] != 0:
            break
        _list_del(nxt, prv, b)
        order[b] = no_order
        p = min(p, b)
        o += 1
        meta[M_MERGES] += 1
    order[p] = o
    _list_add_tail(nxt, prv, p, nr + o)


@jit
def _put(refcnt, order, nxt, prv, resv, meta, idx):
    """__hyp_put_page(): hyp_page_ref_dec_and_test(), and attach the page at zero."""
    if refcnt[idx] == 0:
        _bug(meta, BUG_REF_UNDERFLOW, idx, 0)
        return
    refcnt[idx] -= 1
    if refcnt[idx] == 0:
        _attach(refcnt, order, nxt, prv, resv, meta, idx)


@jit
def pool_init(refcnt, order, nxt, prv, resv, meta):
    """hyp_pool_init(): empty the free lists, refcount every page (order 0, refcount 1), then
    put every page past the reserved ones, which builds the buddy tree page by page.

    refcnt: per-page refcount (zeroed, as the hyp vmemmap is), uint32.
    order: per-page order, uint32.
    nxt, prv: int32 list nodes, nr_pages pages then max_order + 1 list heads.
    resv: uint8, 1 for each reserved page still held (at least one element).
    meta: int64 pool scalars and counters (M_*); M_START_PFN, M_END_PFN, M_NR_PAGES,
        M_MAX_ORDER, M_REF_MAX, M_NO_ORDER, M_PAGE_SHIFT and M_RESERVED must be set.
    Activity counters (puts, freed blocks, merges, zeroed bytes) are reset at the end.
    """
    _begin(meta)
    nr = meta[M_NR_PAGES]
    reserved = meta[M_RESERVED]
    for o in range(meta[M_MAX_ORDER] + 1):
        nxt[nr + o] = nr + o
        prv[nr + o] = nr + o
    for i in range(nr):
        nxt[i] = -1
        prv[i] = -1
        order[i] = 0
        _set_refcounted(refcnt, meta, i)
    for i in range(reserved):
        resv[i] = 1
    meta[M_RESV_HELD] = reserved
    meta[M_USED] = nr - reserved
    meta[M_FREE] = 0
    for i in range(reserved, nr):
        _put(refcnt, order, nxt, prv, resv, meta, i)
    meta[M_PUTS] = 0
    meta[M_FREED_BLOCKS] = 0
    meta[M_MERGES] = 0
    meta[M_ZEROED_BYTES] = 0
    return meta[M_BUG_WHAT]


@jit
def pool_alloc(refcnt, order, nxt, prv, meta, want):
    """hyp_alloc_pages(): take the head of the smallest non-empty free list of order >= want
    (none above max_order: NULL), split it down to ``want`` pushing each upper half at the tail
    of the list of its order (__hyp_extract_page), and refcount it.

    refcnt, order, nxt, prv, meta: the pool (see pool_init).
    want: the order asked for (>= 0).
    Returns the page index of the block's head, or -1 (NULL).
    """
    _begin(meta)
    nr = meta[M_NR_PAGES]
    max_order = meta[M_MAX_ORDER]
    i = want
    while i <= max_order and nxt[nr + i] == nr + i:
        i += 1
    if i > max_order:
        meta[M_ALLOC_FAILURES] += 1
        return -1
    p = np.int64(nxt[nr + i])
    _list_del(nxt, prv, p)
    while np.int64(order[p]) > want:
        o = np.int64(order[p]) - 1
        b = _find_buddy_nocheck(meta, p, o)
        if b < 0:
            _bug(meta, BUG_NULL_BUDDY, p, o)
            break
        order[p] = o
        order[b] = o
        _list_add_tail(nxt, prv, b, nr + o)
        meta[M_SPLIT_STEPS] += 1
    _set_refcounted(refcnt, meta, p)
    got = np.int64(1) << np.int64(order[p])
    meta[M_FREE] -= got
    meta[M_USED] += got
    meta[M_ALLOCS] += 1
    return p


@jit
def pool_put(refcnt, order, nxt, prv, resv, meta, idx):
    """hyp_put_page(): drop a reference to page ``idx``; at zero the block it heads is freed
    and coalesced (__hyp_attach_page).

    refcnt, order, nxt, prv, resv, meta: the pool (see pool_init).
    idx: page index in the pool.
    Returns the first BUG of the call (BUG_*), 0 if none.
    """
    _begin(meta)
    meta[M_PUTS] += 1
    _put(refcnt, order, nxt, prv, resv, meta, idx)
    return meta[M_BUG_WHAT]


@jit
def pool_get(refcnt, meta, idx):
    """hyp_get_page(): hyp_page_ref_inc(), which BUG()s at the field's maximum.

    refcnt: per-page refcount. meta: the pool. idx: page index in the pool.
    Returns the first BUG of the call (BUG_*), 0 if none.
    """
    _begin(meta)
    meta[M_GETS] += 1
    if np.int64(refcnt[idx]) >= meta[M_REF_MAX]:
        _bug(meta, BUG_REF_OVERFLOW, idx, np.int64(refcnt[idx]))
    else:
        refcnt[idx] += 1
    return meta[M_BUG_WHAT]


@jit
def pool_split(refcnt, order, meta, idx):
    """hyp_split_page(): turn the block headed by ``idx`` into order-0 pages: the head gets
    order 0 (its refcount is kept), every tail page order 0 and hyp_set_page_refcounted().

    refcnt, order, meta: the pool. idx: page index of the block's head.
    Returns the first BUG of the call (BUG_*), 0 if none.
    """
    _begin(meta)
    meta[M_SPLITS] += 1
    o = np.int64(order[idx])
    order[idx] = 0
    nr = meta[M_NR_PAGES]
    for i in range(1, np.int64(1) << o):
        t = idx + i
        if t >= nr:
            break
        order[t] = 0
        _set_refcounted(refcnt, meta, t)
    return meta[M_BUG_WHAT]


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
