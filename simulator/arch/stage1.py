"""VMSAv8-64 stage-1 (a guest's own tables): descriptors and geometry, bit-exact.

Stage-1 descriptors are what the guest kernel writes (arch/arm64/include/asm/
pgtable-hwdef.h, Linux 6.12); their output addresses are IPAs, which stage-2 translates.

====================  =======  ==============================================================
field                 bits     notes
====================  =======  ==============================================================
valid                 0
type                  1        1 = table (levels < 3) or page (level 3); 0 = block
AttrIndx              4:2      index into MAIR_EL1; Linux's MT_NORMAL is 0
AP[1] (PTE_USER)      6        EL0 access
AP[2] (PTE_RDONLY)    7        read-only
SH                    9:8      inner shareable = 3 (PTE_SHARED)
AF                    10
nG                    11       not global: tagged with the ASID (user mappings)
output address        47:PS    an IPA; 64K granule: IPA[51:48] in bits 15:12
DBM                   51       dirty bit modifier (PTE_DBM, PTE_WRITE)
contiguous            52       one of CONT_PTES / CONT_PMDS adjacent entries (PTE_CONT)
PXN / UXN             53 / 54  privileged / unprivileged execute never
====================  =======  ==============================================================

Geometry: ARM64_HW_PGTABLE_LEVELS(va_bits) = (va_bits - 4) / (PAGE_SHIFT - 3) levels, starting
at level 4 - levels (no concatenated tables at stage 1). Blocks: level 2 for every granule,
level 1 for 4K only (16K and 64K level-1 blocks need 52-bit addresses). The contiguous range
is CONT_PTES pages or CONT_PMDS level-2 blocks (Kconfig ARM64_CONT_PTE_SHIFT and
ARM64_CONT_PMD_SHIFT: 4 and 4 for 4K, 7 and 5 for 16K, 5 and 5 for 64K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator._jit import jit
from simulator.arch.geometry import GRANULES, GeometryError, granule_shift

U = np.uint64

VALID = U(1 << 0)
TYPE = U(1 << 1)
ATTRINDX_SHIFT = 2
PTE_USER = U(1 << 6)  # AP[1]
PTE_RDONLY = U(1 << 7)  # AP[2]
PTE_SHARED = U(3 << 8)
PTE_AF = U(1 << 10)
PTE_NG = U(1 << 11)
PTE_DBM = U(1 << 51)
PTE_CONT = U(1 << 52)
PTE_PXN = U(1 << 53)
PTE_UXN = U(1 << 54)
MT_NORMAL = 0

# A user data page as the guest maps an anonymous, writable, executable VMA: Normal memory,
# EL0 read/write, inner shareable, young, not global, privileged execute never, dirty
# (writable without a fault: the model does not simulate the guest's own dirty tracking).
USER_RWX = U((MT_NORMAL << ATTRINDX_SHIFT) | (1 << 6) | (3 << 8) | (1 << 10) | (1 << 11)
             | (1 << 51) | (1 << 53))

# The host kernel's linear map (PAGE_KERNEL): Normal memory, EL1 read/write only, inner
# shareable, young, global, dirty, never executable at EL0 nor (data) at EL1.
KERNEL_RW = U((MT_NORMAL << ATTRINDX_SHIFT) | (3 << 8) | (1 << 10) | (1 << 51) | (1 << 53)
              | (1 << 54))

# log2 of the contiguous run, per granule: (pages, level-2 blocks)
CONT_SHIFTS = {12: (4, 4), 14: (7, 5), 16: (5, 5)}


@jit
def s1_oa(d, page_shift):
    """The output address (an IPA) in a stage-1 descriptor's bits 47:page_shift (64K:
    IPA[51:48] in bits 15:12)."""
    d = U(d)
    a = d & U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(page_shift)) - U(1))
    if page_shift == 16:
        a |= (d & U(0xF000)) << U(36)
    return a


@jit
def s1_oa_field(ipa, page_shift):
    """``ipa`` (granule aligned) in the output-address field."""
    ipa = U(ipa)
    d = ipa & U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(page_shift)) - U(1))
    if page_shift == 16:
        d |= (ipa >> U(36)) & U(0xF000)
    return d


@jit
def s1_make_table(ipa, page_shift):
    """A table descriptor pointing at the table page at IPA ``ipa``."""
    return s1_oa_field(ipa, page_shift) | TYPE | VALID


@jit
def s1_make_leaf(ipa, attr, level, page_shift, contiguous):
    """A page (level 3) or block descriptor mapping IPA ``ipa`` with ``attr``."""
    d = s1_oa_field(ipa, page_shift) | (U(attr) & ~(TYPE | VALID)) | VALID
    if level == 3:
        d |= TYPE
    if contiguous:
        d |= PTE_CONT
    return d


@dataclass(frozen=True)
class S1Geometry:
    """The shape of a stage-1 translation regime (one TTBR0 range of ``va_bits``)."""

    page_shift: int
    va_bits: int

    def __post_init__(self) -> None:
        if self.page_shift not in GRANULES.values():
            raise GeometryError(f"granule must be one of 4K, 16K, 64K (page shift "
                                f"{self.page_shift})")
        if not 36 <= self.va_bits <= 48:
            raise GeometryError(f"va_bits must be 36..48, not {self.va_bits}")

    @classmethod
    def from_granule(cls, granule: str, va_bits: int) -> "S1Geometry":
        if granule not in GRANULES:
            raise GeometryError(f"granule must be one of {', '.join(GRANULES)}, not {granule!r}")
        return cls(GRANULES[granule], va_bits)

    @property
    def levels(self) -> int:
        """ARM64_HW_PGTABLE_LEVELS(va_bits)."""
        return (self.va_bits - 4) // (self.page_shift - 3)

    @property
    def start_level(self) -> int:
        return 4 - self.levels

    @property
    def entries(self) -> int:
        return 1 << (self.page_shift - 3)

    @property
    def top_entries(self) -> int:
        """Descriptors in the top-level table (PTRS_PER_PGD): fewer than a page's when
        va_bits does not fill the top level."""
        return 1 << (self.va_bits - self.shift(self.start_level))

    def shift(self, level: int) -> int:
        return granule_shift(level, self.page_shift)

    def size(self, level: int) -> int:
        return 1 << self.shift(level)

    def block_levels(self) -> list[int]:
        """Levels that may hold a leaf, largest first: level 1 (4K only), 2 and 3, not above
        the start level."""
        first = max(1 if self.page_shift == 12 else 2, self.start_level)
        return list(range(first, 4))

    def leaf_sizes(self) -> dict[int, int]:
        return {lvl: self.size(lvl) for lvl in self.block_levels()}

    def cont_shift(self, level: int) -> int:
        """log2 of the entries in a contiguous run at ``level`` (3: pages, 2: blocks)."""
        if level not in (2, 3):
            raise GeometryError("the contiguous bit applies to level-2 blocks and pages")
        return CONT_SHIFTS[self.page_shift][1 if level == 2 else 0]

    def cont_size(self, level: int) -> int:
        """Bytes of a contiguous run at ``level`` (CONT_PTE_SIZE / CONT_PMD_SIZE)."""
        return self.size(level) << self.cont_shift(level)
