"""Stage-2 geometry for the 4K, 16K and 64K granules, computed the way the kernel does.

References (Linux 6.12): arch/arm64/include/asm/kvm_pgtable.h (kvm_granule_shift,
kvm_level_supports_block_mapping), arch/arm64/include/asm/stage2_pgtable.h
(stage2_pgtable_levels), arch/arm64/kvm/hyp/pgtable.c (kvm_get_vtcr, kvm_pgd_pages).
"""

from __future__ import annotations

from dataclasses import dataclass

GRANULES = {"4K": 12, "16K": 14, "64K": 16}
LAST_LEVEL = 3
MAX_PGD_PAGES = 16  # the architecture concatenates at most 16 top-level tables


class GeometryError(ValueError):
    """An impossible granule / IPA-size combination."""


def granule_shift(level: int, page_shift: int) -> int:
    """ARM64_HW_PGTABLE_LEVEL_SHIFT: log2 of the size one entry at ``level`` maps."""
    return (page_shift - 3) * (4 - level) + 3


def hw_pgtable_levels(va_bits: int, page_shift: int) -> int:
    """ARM64_HW_PGTABLE_LEVELS(va_bits) = (va_bits - 4) / (PAGE_SHIFT - 3)."""
    return (va_bits - 4) // (page_shift - 3)


@dataclass(frozen=True)
class Geometry:
    """The shape of one stage-2 page table.

    ``levels``, ``start_level`` and ``pgd_pages`` follow kvm_get_vtcr() (at least two levels,
    a start level of 4 - levels) and kvm_pgd_pages() (concatenated top-level tables).
    """

    page_shift: int
    ipa_bits: int

    def __post_init__(self) -> None:
        # The derived figures are fixed per geometry; compute them once (they sit on the
        # fault path).
        if self.page_shift in GRANULES.values() and 32 <= self.ipa_bits <= 52:
            levels = max(hw_pgtable_levels(self.ipa_bits - 4, self.page_shift), 2)
            start = LAST_LEVEL + 1 - levels
            pgd = (((1 << self.ipa_bits) - 1) >> granule_shift(start - 1, self.page_shift)) + 1
            object.__setattr__(self, "_levels", levels)
            object.__setattr__(self, "_start", start)
            object.__setattr__(self, "_pgd", pgd)
        if self.page_shift not in GRANULES.values():
            raise GeometryError(f"granule must be one of 4K, 16K, 64K (page shift {self.page_shift})")
        if not 32 <= self.ipa_bits <= 52:
            raise GeometryError(f"IPA size must be 32..52 bits, not {self.ipa_bits}")
        if self.pgd_pages > MAX_PGD_PAGES:
            raise GeometryError(
                f"IPA size {self.ipa_bits} needs {self.pgd_pages} concatenated top-level tables"
            )

    @classmethod
    def from_granule(cls, granule: str, ipa_bits: int) -> "Geometry":
        if granule not in GRANULES:
            raise GeometryError(f"granule must be one of {', '.join(GRANULES)}, not {granule!r}")
        return cls(GRANULES[granule], ipa_bits)

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def granule(self) -> str:
        return {v: k for k, v in GRANULES.items()}[self.page_shift]

    @property
    def entries(self) -> int:
        """PTRS_PER_PTE: descriptors in one table page."""
        return 1 << (self.page_shift - 3)

    @property
    def levels(self) -> int:
        """stage2_pgtable_levels(ipa) = ARM64_HW_PGTABLE_LEVELS(ipa - 4), at least 2."""
        return self._levels  # type: ignore[attr-defined]

    @property
    def start_level(self) -> int:
        """4 - levels (kvm_get_vtcr's SL0 encodes it)."""
        return self._start  # type: ignore[attr-defined]

    @property
    def pgd_pages(self) -> int:
        """kvm_pgd_pages(): ((2^ipa - 1) >> granule_shift(start_level - 1)) + 1."""
        return self._pgd  # type: ignore[attr-defined]

    @property
    def min_block_level(self) -> int:
        """KVM_PGTABLE_MIN_BLOCK_LEVEL: 1 for 4K (1 GiB blocks), 2 for 16K and 64K."""
        return 1 if self.page_shift == 12 else 2

    def shift(self, level: int) -> int:
        """kvm_granule_shift(level)."""
        return granule_shift(level, self.page_shift)

    def size(self, level: int) -> int:
        """kvm_granule_size(level): bytes mapped by one entry at ``level``."""
        return 1 << self.shift(level)

    def block_levels(self) -> list[int]:
        """Levels at which a leaf may be installed, largest first (last level included)."""
        first = max(self.min_block_level, self.start_level)
        return list(range(first, LAST_LEVEL + 1))

    def leaf_sizes(self) -> dict[int, int]:
        """{level: bytes} for every level that can hold a leaf."""
        return {lvl: self.size(lvl) for lvl in self.block_levels()}

    def level_for_size(self, size: int) -> int:
        for lvl, sz in self.leaf_sizes().items():
            if sz == size:
                return lvl
        sizes = ", ".join(format_size(s) for s in self.leaf_sizes().values())
        raise GeometryError(f"{format_size(size)} is not a mapping size of {self.granule} ({sizes})")

    def block_supported(self, level: int, addr: int, end: int, phys: int) -> bool:
        """kvm_block_mapping_supported(): level allowed, range covers it, both aligned."""
        if level < self.min_block_level and level != LAST_LEVEL:
            return False
        size = self.size(level)
        if size > end - addr:
            return False
        return addr % size == 0 and phys % size == 0

    def table_budget(self, pages: int) -> int:
        """Table pages to map ``pages`` pages at page granularity: the kernel's
        __hyp_pgtable_max_pages() / host_s2_pgtable_pages() loop (for each level,
        n = ceil(n / entries), summed)."""
        total, n = 0, pages
        for _ in range(self.levels):
            n = -(-n // self.entries)
            total += n
        return total


def format_size(nbytes: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return f"{nbytes}B"
