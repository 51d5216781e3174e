"""simulator.arch.geometry: levels, concatenated pgds, block sizes, as the kernel computes them."""

from __future__ import annotations

import naive as N
import pytest

from simulator.arch.geometry import GRANULES, Geometry, GeometryError, format_size

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize("ipa_bits, start_level, pgd_pages, levels", [
    (32, 2, 4, 2),
    (36, 1, 1, 3),
    (40, 1, 2, 3),
    (42, 1, 8, 3),
    (43, 1, 16, 3),
    (44, 0, 1, 4),
    (48, 0, 1, 4),
])
def test_4k_start_level_and_concatenated_pgd_pages(ipa_bits, start_level, pgd_pages, levels):
    g = Geometry.from_granule("4K", ipa_bits)
    assert (g.start_level, g.pgd_pages, g.levels) == (start_level, pgd_pages, levels)


@pytest.mark.parametrize("granule, ipa_bits, start_level, pgd_pages", [
    ("16K", 32, 2, 1),
    ("16K", 36, 2, 1),
    ("16K", 38, 2, 4),
    ("16K", 40, 2, 16),
    ("16K", 42, 1, 1),
    ("16K", 48, 1, 2),
    ("64K", 32, 2, 1),
    ("64K", 40, 2, 1),
    ("64K", 44, 2, 4),
    ("64K", 48, 1, 1),
    ("64K", 52, 1, 1),
])
def test_16k_and_64k_start_level_and_pgd_pages(granule, ipa_bits, start_level, pgd_pages):
    g = Geometry.from_granule(granule, ipa_bits)
    assert (g.start_level, g.pgd_pages) == (start_level, pgd_pages)


@pytest.mark.parametrize("granule, entries, shifts, min_block", [
    ("4K", 512, {0: 39, 1: 30, 2: 21, 3: 12}, 1),
    ("16K", 2048, {1: 36, 2: 25, 3: 14}, 2),
    ("64K", 8192, {1: 42, 2: 29, 3: 16}, 2),
])
def test_entries_granule_shifts_and_smallest_block_level(granule, entries, shifts, min_block):
    g = Geometry.from_granule(granule, 48)
    assert g.entries == entries
    assert {lvl: g.shift(lvl) for lvl in shifts} == shifts
    assert g.min_block_level == min_block


@pytest.mark.parametrize("granule, ipa_bits, sizes", [
    ("4K", 40, {1: GiB, 2: 2 * MiB, 3: 4 * KiB}),
    ("4K", 32, {2: 2 * MiB, 3: 4 * KiB}),  # starts at level 2: no 1 GiB blocks
    ("16K", 42, {2: 32 * MiB, 3: 16 * KiB}),
    ("64K", 48, {2: 512 * MiB, 3: 64 * KiB}),
])
def test_leaf_sizes_per_granule(granule, ipa_bits, sizes):
    g = Geometry.from_granule(granule, ipa_bits)
    assert g.leaf_sizes() == sizes
    assert g.block_levels() == sorted(sizes)
    for level, size in sizes.items():
        assert g.level_for_size(size) == level


def test_geometry_agrees_with_the_reference_for_every_granule_and_ipa_size():
    for ps in GRANULES.values():
        for ipa_bits in range(32, 53):
            try:
                g = Geometry(ps, ipa_bits)
            except GeometryError:
                assert N.pgd_pages(ipa_bits, ps) > 16
                continue
            assert g.start_level == N.start_level(ipa_bits, ps)
            assert g.pgd_pages == N.pgd_pages(ipa_bits, ps)
            assert g.min_block_level == N.min_block_level(ps)
            for level in range(g.start_level, 4):
                assert g.size(level) == N.granule_size(level, ps)
            # the pgd pages cover exactly the IPA space
            assert g.pgd_pages << N.granule_shift(g.start_level - 1, ps) >= 1 << ipa_bits


@pytest.mark.parametrize("level, addr, end, phys, ok", [
    (2, 0, 2 * MiB, 0, True),
    (2, 0, 2 * MiB - 4 * KiB, 0, False),  # range shorter than the block
    (2, 4 * KiB, 2 * MiB + 4 * KiB, 4 * KiB, False),  # IPA not aligned
    (2, 0, 2 * MiB, 4 * KiB, False),  # output not aligned
    (1, GiB, 2 * GiB, 3 * GiB, True),
    (0, 0, 512 * GiB, 0, False),  # no level-0 blocks with 4K
    (3, 4 * KiB, 8 * KiB, 12 * KiB, True),
])
def test_block_mapping_supported_follows_kvm_block_mapping_supported(level, addr, end, phys,
                                                                     ok):
    assert Geometry(12, 48).block_supported(level, addr, end, phys) is ok


def test_16k_has_no_level_1_blocks():
    assert not Geometry(14, 48).block_supported(1, 0, 64 * GiB, 0)


@pytest.mark.parametrize("granule, ipa_bits, pages, budget", [
    ("4K", 40, 262144, 512 + 1 + 1),  # 1 GiB of pages
    ("4K", 48, 262144, 512 + 1 + 1 + 1),
    ("4K", 32, 1000, 2 + 1),
    ("64K", 48, 16384, 2 + 1 + 1),
])
def test_table_budget_sums_ceil_divisions_per_level(granule, ipa_bits, pages, budget):
    assert Geometry.from_granule(granule, ipa_bits).table_budget(pages) == budget


def test_unknown_granule_is_refused_with_the_choices():
    with pytest.raises(GeometryError, match=r"^granule must be one of 4K, 16K, 64K, not '8K'$"):
        Geometry.from_granule("8K", 40)


def test_ipa_size_out_of_range_is_refused():
    with pytest.raises(GeometryError, match=r"^IPA size must be 32\.\.52 bits, not 31$"):
        Geometry(12, 31)


def test_unsupported_page_shift_is_refused():
    with pytest.raises(GeometryError, match=r"^granule must be one of 4K, 16K, 64K \(page "
                                            r"shift 13\)$"):
        Geometry(13, 40)


def test_size_that_is_not_a_mapping_size_is_refused_with_the_sizes():
    with pytest.raises(GeometryError, match=r"^3M is not a mapping size of 4K \(1G, 2M, 4K\)$"):
        Geometry(12, 40).level_for_size(3 * MiB)


@pytest.mark.parametrize("nbytes, text", [
    (4 * KiB, "4K"), (2 * MiB, "2M"), (GiB, "1G"), (TiB, "1T"), (1536, "1536B"),
    (3 * 512 * MiB, "1536M")])
def test_format_size(nbytes, text):
    assert format_size(nbytes) == text
