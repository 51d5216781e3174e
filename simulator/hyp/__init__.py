"""The hypervisor's software: pKVM's EL2 page allocator (hyp_pool) and its budgets (knows arch)."""

from simulator.hyp.page_alloc import (
    HOST_S2_PGD_PAGES,
    HYP_PGTABLE_BUDGET_LEVELS,
    MAX_PAGE_ORDER,
    VMEMMAP_LAYOUTS,
    HypBugError,
    HypPool,
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
