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
was truncated to 32 bits, see ``HypPool``), where splitting stops and the larger block is
handed out (what Android's fix does; unreachable in the 6.12 semantics modelled here, since
pages past range_end are never coalesced).

:class:`~simulator.hyp.hyp_pool.HypPool` is the thin wrapper: it validates, makes one kernel
call, and raises :class:`HypBugError` on a BUG (with ``on_bug="count"`` it only counts it).
Either way the pool is left as described above, a state the real hypervisor, having
panicked, never reaches.
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.hyp.budgets import (
    HOST_S2_PGD_PAGES,
    HYP_PGTABLE_BUDGET_LEVELS,
    MAX_PAGE_ORDER,
    VMEMMAP_LAYOUTS,
    VmemmapLayout,
    get_order,
    host_s2_pgtable_pages,
    hyp_s1_pgtable_pages,
    layout_supports,
    pgtable_max_pages,
    vmemmap_bytes,
    vmemmap_bytes_per_gib,
)

__all__ = [
    "HOST_S2_PGD_PAGES",
    "HYP_PGTABLE_BUDGET_LEVELS",
    "MAX_PAGE_ORDER",
    "VMEMMAP_LAYOUTS",
    "VmemmapLayout",
    "get_order",
    "host_s2_pgtable_pages",
    "hyp_s1_pgtable_pages",
    "layout_supports",
    "pgtable_max_pages",
    "vmemmap_bytes",
    "vmemmap_bytes_per_gib",
]


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
