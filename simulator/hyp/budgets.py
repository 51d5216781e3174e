"""The struct hyp_page layouts and pKVM's page budgets: ``arch/arm64/include/asm/kvm_pkvm.h``
(``__hyp_pgtable_max_pages``, ``hyp_s1_pgtable_pages``, ``host_s2_pgtable_pages``,
``hyp_vmemmap_pages``) and ``include/nvhe/memory.h``'s struct hyp_page as it was before seed
002, as seed 002 made it, and as it sketches it (:data:`VMEMMAP_LAYOUTS`)."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

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


def host_s2_dev_pgtable_pages(page_shift: int,
                              levels: int = HYP_PGTABLE_BUDGET_LEVELS) -> int:
    """host_s2_dev_pgtable_pages() (5.13, before seed 002 unified the pools): the MMIO pool,
    1 GiB of IPA space at page granularity."""
    return pgtable_max_pages(_ALLOWANCE_BYTES >> page_shift, page_shift, levels)


def vmemmap_fixed_point_pages(hyp_mem_pages: int, page_shift: int, layout: str,
                              levels: int = 4) -> int:
    """kvm_hyp_reserve()'s vmemmap pages in 5.13 .. 5.15, when the hyp vmemmap covered only
    the hypervisor's own pages: "The hyp_vmemmap needs to be backed by pages, but these pages
    themselves need to be present in the vmemmap, so compute the number of pages needed by
    looking for a fixed point":

        nr_pages = 0;
        do {
                prev = nr_pages;
                nr_pages = hyp_mem_pages + prev;
                nr_pages = DIV_ROUND_UP(nr_pages * sizeof(struct hyp_page), PAGE_SIZE);
                nr_pages += __hyp_pgtable_max_pages(nr_pages);
        } while (nr_pages != prev);

    (removed by "KVM: arm64: Back hyp_vmemmap for all of memory", 5.16). ``hyp_mem_pages``:
    the table budgets reserved before it."""
    _check_page_shift(page_shift)
    entry = _layout(layout).entry_bytes
    page = 1 << page_shift
    nr, prev = 0, -1
    while nr != prev:
        prev = nr
        nr = hyp_mem_pages + prev
        nr = -(-(nr * entry) // page)
        nr += pgtable_max_pages(nr, page_shift, levels)
    return nr


def hyp_reserve(memory_regions: Iterable, page_shift: int, layout: str, *, levels: int,
                vmemmap_covers: str) -> dict[str, int]:
    """kvm_hyp_reserve()'s page budget, by the rules of a kernel: ``levels`` of
    __hyp_pgtable_max_pages() (4 before 6.9, 5 since), ``vmemmap_covers`` "hyp" (5.13 .. 5.15:
    a fixed point over the hypervisor's own pages) or "memory" (5.16 on: every memblock,
    hyp_vmemmap_pages()). Pages: hyp_s1, host_s2 (5.13's host_s2_mem + host_s2_dev is the
    same total as seed 002's unified pool), vmemmap, total (per-CPU stacks and other fixed
    reservations are not counted)."""
    regions = _regions(memory_regions)
    s1 = hyp_s1_pgtable_pages(regions, page_shift, levels)
    s2 = host_s2_pgtable_pages(regions, page_shift, levels)  # mem + 16 + the 1 GiB allowance
    if vmemmap_covers == "hyp":
        vm = vmemmap_fixed_point_pages(s1 + s2, page_shift, layout, levels)
    elif vmemmap_covers == "memory":
        vm = vmemmap_bytes(regions, page_shift, layout) >> page_shift
    else:
        raise ValueError(f"vmemmap_covers must be 'hyp' or 'memory', not {vmemmap_covers!r}")
    return {"hyp_s1_pages": s1, "host_s2_pages": s2, "vmemmap_pages": vm,
            "total_pages": s1 + s2 + vm}

