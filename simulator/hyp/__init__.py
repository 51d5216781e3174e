"""The hypervisor's software: stage-2 operations (pgtable), pKVM's host side (host) and EL2 page
allocator (page_alloc, pools), the rebuild strategies, the reverse map (knows arch and mmu)."""

from simulator.hyp.hyp_pool import HypBugError, HypPool
from simulator.hyp.page_alloc import (
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
