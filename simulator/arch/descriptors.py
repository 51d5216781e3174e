"""VMSAv8-64 stage-2 descriptors, bit for bit as arch/arm64/kvm/hyp/pgtable.c builds them.

Bit constants are ``numpy.uint64`` so that numba kernels, which read module globals as
compile-time constants, never mix signed and unsigned 64-bit arithmetic (numba would
promote such a mix to float64 and lose the high bits of a descriptor).

Layout (kvm_pgtable.h, Linux 6.12):

====================  =======  ==============================================================
field                 bits     notes
====================  =======  ==============================================================
valid                 0
type                  1        1 = table (levels < 3) or page (level 3); 0 = block
MEMATTR               5:2      without FWB: Normal 0xf, Normal-NC 0x5, Device-nGnRE 0x1
S2AP_R / S2AP_W       6 / 7
SH                    9:8      inner shareable = 3
AF                    10
output address        47:PS    64K granule: PA[51:48] in bits 15:12
nT                    16       FEAT_BBM level 1 "not cached in TLB" (block descriptors)
contiguous            52       KVM never sets it
XN                    54
software bits         58:55    pKVM page state: SW0 (55) shared-owned, SW1 (56) shared-borrowed
owner id (invalid)    9:2      KVM_INVALID_PTE_OWNER_MASK
locked (invalid)      10       KVM_INVALID_PTE_LOCKED: break-before-make in progress
====================  =======  ==============================================================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from simulator._jit import jit

U = np.uint64

VALID = U(1 << 0)
TYPE = U(1 << 1)  # 1: table (level < 3) / page (level 3); 0: block

MEMATTR_SHIFT = 2
MEMATTR_MASK = U(0xF << 2)
MEMATTR_NORMAL = 0xF  # MT_S2_NORMAL without FWB
MEMATTR_NORMAL_NC = 0x5  # MT_S2_NORMAL_NC
MEMATTR_DEVICE = 0x1  # MT_S2_DEVICE_nGnRE
S2AP_R = U(1 << 6)
S2AP_W = U(1 << 7)
SH_SHIFT = 8
SH_MASK = U(0x3 << 8)
SH_IS = 3
AF = U(1 << 10)
NT = U(1 << 16)
CONTIG = U(1 << 52)
XN = U(1 << 54)
SW_SHIFT = 55
SW_MASK = U(0xF << 55)
SW0_SHARED_OWNED = U(1 << 55)
SW1_SHARED_BORROWED = U(1 << 56)

OWNER_SHIFT = 2
OWNER_MASK = U(0xFF << 2)  # KVM_INVALID_PTE_OWNER_MASK = GENMASK(9, 2)
LOCKED = U(1 << 10)  # KVM_INVALID_PTE_LOCKED

OWNER_HOST = 0
OWNER_HYP = 1
OWNER_GUEST = 2  # Linux 7.2's PKVM_ID_GUEST

# KVM_PTE_LEAF_ATTR_LO = GENMASK(11, 2), KVM_PTE_LEAF_ATTR_HI = GENMASK(63, 50). nT (bit 16)
# is separate: it exists only in block descriptors, where bits below the block size are free;
# in a page descriptor bit 16 is part of the output address.
LEAF_ATTR_LO = U(0xFFC)
LEAF_ATTR_HI = U(0xFFFC000000000000)
LEAF_ATTR = U(0xFFFC000000000FFC)
S2_PERMS = U((1 << 6) | (1 << 7) | (1 << 54))  # KVM_PTE_LEAF_ATTR_S2_PERMS

_MEM = (MEMATTR_NORMAL << 2) | (1 << 6) | (1 << 7) | (SH_IS << 8) | (1 << 10)
_MMIO = (MEMATTR_DEVICE << 2) | (1 << 6) | (1 << 7) | (SH_IS << 8) | (1 << 10) | (1 << 54)
# Default host stage-2 leaves (host_stage2_idmap maps memory RWX and MMIO RW + XN); seed 000's
# "is this entry counted" rule leaves exactly these uncounted.
HOST_DEFAULT_MEM_ATTR = U(_MEM)
HOST_DEFAULT_MMIO_ATTR = U(_MMIO)

# enum kvm_pgtable_prot
PROT_X = 1 << 0
PROT_W = 1 << 1
PROT_R = 1 << 2
PROT_DEVICE = 1 << 3
PROT_NORMAL_NC = 1 << 4
PROT_RW = PROT_R | PROT_W
PROT_RWX = PROT_R | PROT_W | PROT_X

# "is this entry counted" rules
COUNT_NONZERO = 0  # guest stage-2: stage2_pte_is_counted() = !!pte
COUNT_HOST_COALESCE = 1  # host stage-2 with seed 000

MASK64 = (1 << 64) - 1


class DescriptorError(ValueError):
    """A descriptor cannot be encoded (bad address, alignment or attribute combination)."""


@jit
def oa_field_mask(page_shift):
    """Descriptor bits 47:page_shift, which hold the output address."""
    return U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(page_shift)) - U(1))


@jit
def phys_to_pte(pa, page_shift):
    """kvm_phys_to_pte(): ``pa`` (granule aligned) in the output-address field.

    With the 64K granule PA[51:48] goes to descriptor bits 15:12.
    """
    pa = U(pa)
    pte = pa & oa_field_mask(page_shift)
    if page_shift == 16:
        pte |= (pa >> U(36)) & U(0xF000)
    return pte


@jit
def pte_to_phys(pte, page_shift):
    """kvm_pte_to_phys(): the output address held by ``pte``."""
    pte = U(pte)
    pa = pte & oa_field_mask(page_shift)
    if page_shift == 16:
        pa |= (pte & U(0xF000)) << U(36)
    return pa


@jit
def prot_to_attr(prot):
    """stage2_set_prot_attr() without FWB and without LPA2.

    Returns (ok, attr); ok is False for a combination the kernel refuses with -EINVAL.
    """
    dev = (prot & PROT_DEVICE) != 0
    nc = (prot & PROT_NORMAL_NC) != 0
    if (dev and nc) or ((dev or nc) and (prot & PROT_X) != 0):
        return False, U(0)
    if dev:
        attr = U(MEMATTR_DEVICE << 2)
    elif nc:
        attr = U(MEMATTR_NORMAL_NC << 2)
    else:
        attr = U(MEMATTR_NORMAL << 2)
    if (prot & PROT_X) == 0:
        attr |= XN
    if (prot & PROT_R) != 0:
        attr |= S2AP_R
    if (prot & PROT_W) != 0:
        attr |= S2AP_W
    attr |= U(SH_IS << 8)
    attr |= AF
    return True, attr


@jit
def make_leaf(pa, attr, level, page_shift):
    """kvm_init_valid_leaf_pte(): a page (level 3) or block descriptor."""
    pte = phys_to_pte(pa, page_shift)
    pte |= U(attr) & LEAF_ATTR
    if level == 3:
        pte |= TYPE
    else:
        pte |= U(attr) & NT
    return pte | VALID


@jit
def make_table(pa, page_shift):
    """kvm_init_table_pte(): a table descriptor pointing at the page at ``pa``."""
    return phys_to_pte(pa, page_shift) | TYPE | VALID


@jit
def make_owner(owner_id):
    """kvm_init_invalid_leaf_owner(): an invalid descriptor annotated with an owner id."""
    return (U(owner_id) << U(2)) & OWNER_MASK


@jit
def is_valid(pte):
    return (U(pte) & VALID) != U(0)


@jit
def is_table(pte, level):
    """kvm_pte_table(): a valid descriptor with type 1 at a level below 3."""
    if level >= 3:
        return False
    return (U(pte) & (VALID | TYPE)) == (VALID | TYPE)


@jit
def is_locked(pte):
    """stage2_pte_is_locked(): invalid and carrying the locked marker."""
    pte = U(pte)
    return (pte & VALID) == U(0) and (pte & LOCKED) != U(0)


@jit
def owner_of(pte):
    """Owner id of an invalid descriptor (0 = the page-table owner)."""
    return np.int64((U(pte) & OWNER_MASK) >> U(2))


@jit
def is_counted(pte, level, rule):
    """Does ``pte`` (found at ``level``) hold a reference on the table page containing it?

    rule COUNT_NONZERO (guest stage-2, stage2_pte_is_counted): any non-zero descriptor.
    rule COUNT_HOST_COALESCE (host stage-2 with seed 000): table descriptors, non-zero invalid
    descriptors, and leaves whose attributes differ from the default host mapping (a set
    software bit makes a leaf non-default).
    """
    pte = U(pte)
    if pte == U(0):
        return False
    if rule == COUNT_NONZERO:
        return True
    if (pte & VALID) == U(0):
        return True
    if level < 3 and (pte & TYPE) != U(0):
        return True
    if level < 3 and (pte & NT) != U(0):
        return True
    attr = pte & LEAF_ATTR
    return attr != HOST_DEFAULT_MEM_ATTR and attr != HOST_DEFAULT_MMIO_ATTR


# ----------------------------------------------------------------------------------------
# Python-side encoding and decoding, for dumps, tests and reports.


@dataclass(frozen=True)
class Descriptor:
    """A decoded stage-2 descriptor."""

    raw: int
    level: int
    kind: str  # "invalid", "table", "block", "page"
    oa: int = 0
    memattr: int = 0
    r: bool = False
    w: bool = False
    xn: bool = False
    sh: int = 0
    af: bool = False
    nt: bool = False
    contiguous: bool = False
    sw: int = 0
    owner: int = 0
    locked: bool = False

    def __str__(self) -> str:  # reads like a kernel dump
        if self.kind == "invalid":
            if self.raw == 0:
                return "0"
            extra = " locked" if self.locked else ""
            return f"{self.raw:#018x} invalid owner={self.owner}{extra}"
        if self.kind == "table":
            return f"{self.raw:#018x} table -> {self.oa:#x}"
        perms = ("R" if self.r else "-") + ("W" if self.w else "-") + ("-" if self.xn else "X")
        flags = "".join(
            f for f, on in ((" AF", self.af), (" nT", self.nt), (" CONT", self.contiguous)) if on
        )
        return (
            f"{self.raw:#018x} L{self.level} {self.kind} oa={self.oa:#x} {perms} "
            f"memattr={self.memattr:#x} sh={self.sh}{flags} sw={self.sw:#x}"
        )


def decode(pte: int, level: int, page_shift: int) -> Descriptor:
    """Decode a raw descriptor found at ``level`` of a table with granule ``page_shift``."""
    pte = int(pte) & MASK64
    if not pte & int(VALID):
        return Descriptor(
            raw=pte,
            level=level,
            kind="invalid",
            owner=(pte & int(OWNER_MASK)) >> OWNER_SHIFT,
            locked=bool(pte & int(LOCKED)),
        )
    oa = int(pte_to_phys(U(pte), page_shift))
    if level < 3 and pte & int(TYPE):
        return Descriptor(raw=pte, level=level, kind="table", oa=oa)
    # a block's output address is bits 47:block size; lower bits (nT) are not part of it
    size_shift = (page_shift - 3) * (4 - level) + 3
    oa &= ~((1 << size_shift) - 1) | (0xF << 48)
    if level == 3 and not pte & int(TYPE):
        # A level-3 descriptor with type 0 is reserved: the MMU treats it as invalid.
        return Descriptor(raw=pte, level=level, kind="invalid")
    return Descriptor(
        raw=pte,
        level=level,
        kind="page" if level == 3 else "block",
        oa=oa,
        memattr=(pte & int(MEMATTR_MASK)) >> MEMATTR_SHIFT,
        r=bool(pte & int(S2AP_R)),
        w=bool(pte & int(S2AP_W)),
        xn=bool(pte & int(XN)),
        sh=(pte & int(SH_MASK)) >> SH_SHIFT,
        af=bool(pte & int(AF)),
        nt=level < 3 and bool(pte & int(NT)),
        contiguous=bool(pte & int(CONTIG)),
        sw=(pte & int(SW_MASK)) >> SW_SHIFT,
    )


@functools.lru_cache(maxsize=64)
def prot_attr(prot: int) -> int:
    """Python wrapper of prot_to_attr(): raises DescriptorError where the kernel says -EINVAL."""
    ok, attr = prot_to_attr(prot)
    if not ok:
        raise DescriptorError(f"invalid protection {prot:#x}")
    return int(attr)


def encode_leaf(
    pa: int,
    level: int,
    page_shift: int,
    *,
    prot: int = PROT_RWX,
    sw: int = 0,
    nt: bool = False,
    pa_bits: int = 52,
) -> int:
    """A valid page/block descriptor, refusing what the kernel could not express."""
    size_shift = (page_shift - 3) * (4 - level) + 3
    if pa % (1 << size_shift):
        raise DescriptorError(f"output address {pa:#x} is not aligned to the level-{level} size")
    limit = min(pa_bits, 52 if page_shift == 16 else 48)
    if pa < 0 or pa >> limit:
        raise DescriptorError(f"output address {pa:#x} exceeds {limit} bits")
    if not 0 <= sw < 16:
        raise DescriptorError("software bits are 4 bits wide (58:55)")
    attr = prot_attr(prot) | (sw << SW_SHIFT) | (int(NT) if nt else 0)
    return int(make_leaf(U(pa), U(attr), level, page_shift))


def encode_table(pa: int, page_shift: int) -> int:
    """A table descriptor pointing at the (page-aligned) table page at ``pa``."""
    if pa % (1 << page_shift):
        raise DescriptorError(f"table address {pa:#x} is not page aligned")
    return int(make_table(U(pa), page_shift))


def encode_owner(owner_id: int, *, locked: bool = False) -> int:
    """An invalid descriptor annotated with ``owner_id`` (bits 9:2), optionally locked."""
    if not 0 <= owner_id <= 0xFF:
        raise DescriptorError(f"owner id {owner_id} does not fit bits 9:2")
    return int(make_owner(owner_id)) | (int(LOCKED) if locked else 0)
