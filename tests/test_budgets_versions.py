"""Seed 002's page budgets by kernel version (simulator.hyp.budgets.hyp_reserve): 5.13 and
5.14 (the hyp vmemmap covers only the hypervisor's pages, a fixed point; budgets over 4
levels) against 6.12 (every memblock; 5 levels), on 4, 64 and 1024 GiB hosts, checked
against hand arithmetic and a brute-force fixed point."""

from __future__ import annotations

import pytest

from simulator.hyp.budgets import hyp_reserve

GIB = 1 << 30
PAGE = 4096


def max_pages(n: int, levels: int) -> int:
    """__hyp_pgtable_max_pages() by hand: ceil(n / 512), ceil of that / 512, ... summed."""
    total = 0
    for _ in range(levels):
        n = (n + 511) // 512
        total += n
    return total


def least_fixed_point(hyp_pages: int, entry: int, levels: int) -> int:
    """The smallest x with x = ceil((hyp_pages + x) * entry / PAGE) + max_pages(that): the
    pages the vmemmap of the hypervisor's pages (itself included) and their tables need."""
    x = 0
    while True:
        v = -(-(hyp_pages + x) * entry // PAGE)
        if v + max_pages(v, levels) == x:
            return x
        x += 1


VERSIONS = {  # layout, entry bytes, levels, coverage
    "5.13": ("legacy32", 32, 4, "hyp"),
    "5.14": ("packed4", 4, 4, "hyp"),
    "6.12": ("packed4", 4, 5, "memory"),
}


@pytest.mark.parametrize("gib", [4, 64, 1024])
@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_budgets_by_version(gib, version):
    layout, entry, levels, covers = VERSIONS[version]
    r = hyp_reserve([(GIB, gib * GIB)], 12, layout, levels=levels, vmemmap_covers=covers)
    pages = gib * GIB // PAGE
    allowance = max_pages(GIB // PAGE, levels)
    assert r["hyp_s1_pages"] == max_pages(pages, levels) + allowance
    assert r["host_s2_pages"] == max_pages(pages, levels) + 16 + allowance
    if covers == "hyp":
        want = least_fixed_point(r["hyp_s1_pages"] + r["host_s2_pages"], entry, levels)
    else:  # one region whose vmemmap starts page-aligned: pages * entry bytes
        want = pages * entry // PAGE
    assert r["vmemmap_pages"] == want


def test_seed_002_on_its_kernels_pinned():
    """4 GiB host: 45 vmemmap pages (5.13) -> 10 (5.14); 1 TiB: 8302 -> 1035; the same
    memory costs 1024 and 262144 pages once the vmemmap covers all of it (5.16 on)."""
    def vm(gib, version):
        layout, _, levels, covers = VERSIONS[version]
        return hyp_reserve([(GIB, gib * GIB)], 12, layout, levels=levels,
                           vmemmap_covers=covers)["vmemmap_pages"]
    assert [vm(g, "5.13") for g in (4, 64, 1024)] == [45, 531, 8302]
    assert [vm(g, "5.14") for g in (4, 64, 1024)] == [10, 70, 1035]
    assert [vm(g, "6.12") for g in (4, 64, 1024)] == [1024, 16384, 262144]
    # 4 GiB by hand: 2569 + 2585 hyp pages; ceil(5154 * 32 / 4096) = 41 vmemmap pages
    # + 4 table pages for them = 45, and ceil(5199 * 32 / 4096) = 41 again: the fixed point
    assert hyp_reserve([(GIB, 4 * GIB)], 12, "legacy32", levels=4,
                       vmemmap_covers="hyp")["hyp_s1_pages"] == 2569
