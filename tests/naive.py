"""Slow, obviously correct pure-Python reference models for simulator.arch and simulator.mmu.

In the spirit of stumpy's ``tests/naive.py``: every numba kernel has a reference here that is
written for clarity, not speed (Python ints, one list per table page, dicts, recursion where the
kernel recurses, ``OrderedDict`` LRUs), and the property tests compare the two.

The stage-2 model is written from the kernel's semantics, Linux 6.12
``arch/arm64/kvm/hyp/pgtable.c`` and ``arch/arm64/include/asm/kvm_pgtable.h``, independently of
``simulator.hyp.pgtable``: ``kvm_pgtable_walk`` / ``__kvm_pgtable_walk`` / ``__kvm_pgtable_visit``
are transcribed as three recursive methods, and every visitor (``stage2_map_walker``,
``stage2_unmap_walker``, ``stage2_split_walker``, ``stage2_free_walker``, ``stage2_attr_walker``,
``leaf_walker``) as a callback with the kernel's ``ctx``. Nothing here imports the simulator.

Modelling conventions shared with the simulator (the things the kernel leaves to its
environment), and nothing else:

* page-table memory: rows of ``2**page_shift`` bytes at ``base_pa + (row << page_shift)``;
  ``zalloc_page`` takes the most recently freed row (a LIFO stack), else the next never-used row;
  ``zalloc_pages_exact`` (the pgd) takes fresh contiguous rows; ``limit_pages`` caps the pages in
  use and stands for the memcache (an allocation beyond it fails, ``mc->nobjs`` is what is left);
* a TLBI is logged as ``(kind, addr, size, level)``: ``("ipa", a, s, level)`` invalidates the
  entries over [a, a + s) (a leaf: its granule; TTL unknown, level -1: the page holding the
  address), ``("range", a, s, -1)`` one range TLBI, ``("vmid", 0, 0, -1)`` the whole VMID;
* cache maintenance is counted in bytes (``dcache_clean_inval_poc`` / ``icache_inval_pou``),
  with FWB the dcache operation is a no-op;
* FEAT_BBM's nT bit (16), which KVM never sets, is kept in block descriptors when the caller's
  attributes carry it (the simulator uses it to model "not cached in the TLB");
* the host stage-2 "is counted" rule of seed 000 (see shared/reference/kernel-facts.md), and its
  coalescing TABLE_POST visitor for set_owner (stage2_coalesce_walk_table_post()).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

# ==========================================================================================
# Descriptor bits (kvm_pgtable.h, Linux 6.12; nT from the ARM ARM)

MASK64 = (1 << 64) - 1
VALID = 1 << 0
TYPE = 1 << 1  # 1: table (level < 3) or page (level 3); 0: block
MEMATTR_MASK = 0xF << 2
MT_NORMAL = 0xF  # without FWB
MT_NORMAL_NC = 0x5
MT_DEVICE_nGnRE = 0x1
S2AP_R = 1 << 6
S2AP_W = 1 << 7
SH_IS = 3 << 8
AF = 1 << 10
NT = 1 << 16
XN = 1 << 54
SW_SHIFT = 55
SW_MASK = 0xF << 55
LEAF_ATTR_LO = ((1 << 12) - 1) & ~0x3  # GENMASK(11, 2)
LEAF_ATTR_HI = MASK64 & ~((1 << 50) - 1)  # GENMASK(63, 50)
S2_PERMS = S2AP_R | S2AP_W | XN
OWNER_MASK = 0xFF << 2  # KVM_INVALID_PTE_OWNER_MASK
LOCKED = 1 << 10  # KVM_INVALID_PTE_LOCKED

# enum kvm_pgtable_prot
PROT_X = 1 << 0
PROT_W = 1 << 1
PROT_R = 1 << 2
PROT_DEVICE = 1 << 3
PROT_NORMAL_NC = 1 << 4
PROT_RW = PROT_R | PROT_W
PROT_RWX = PROT_RW | PROT_X

# errno
EAGAIN, ENOMEM, EINVAL, ERANGE, E2BIG = 11, 12, 22, 34, 7

# "is this entry counted" rules
GUEST = "guest"  # stage2_pte_is_counted(): !!pte
HOST = "host"  # seed 000's host stage-2 rule
HOST_DEFAULT_MEM = (MT_NORMAL << 2) | S2AP_R | S2AP_W | SH_IS | AF  # PKVM_HOST_MEM_PROT (RWX)
HOST_DEFAULT_MMIO = (MT_DEVICE_nGnRE << 2) | S2AP_R | S2AP_W | SH_IS | AF | XN  # MMIO: RW

# walker flags (enum kvm_pgtable_walk_flags)
LEAF = 1 << 0
TABLE_PRE = 1 << 1
TABLE_POST = 1 << 2
HANDLE_FAULT = 1 << 4
SKIP_BBM_TLBI = 1 << 5
SKIP_CMO = 1 << 6

MAX_TLBI_RANGE_PAGES = 32 << 16  # __TLBI_RANGE_PAGES(31, 3)
TTL_UNKNOWN = -1


def bits(hi: int, lo: int) -> int:
    """GENMASK(hi, lo)."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def align_down(x: int, a: int) -> int:
    return x - x % a


def align_up(x: int, a: int) -> int:
    return align_down(x + a - 1, a)


# ==========================================================================================
# Geometry (kvm_pgtable.h, stage2_pgtable.h, pgtable.c: kvm_get_vtcr, kvm_pgd_pages)


def granule_shift(level: int, page_shift: int) -> int:
    """ARM64_HW_PGTABLE_LEVEL_SHIFT(level)."""
    return (page_shift - 3) * (4 - level) + 3


def granule_size(level: int, page_shift: int) -> int:
    return 1 << granule_shift(level, page_shift)


def pgtable_levels(ipa_bits: int, page_shift: int) -> int:
    """stage2_pgtable_levels() = ARM64_HW_PGTABLE_LEVELS(ipa - 4), at least 2 (kvm_get_vtcr)."""
    return max(((ipa_bits - 4) - 4) // (page_shift - 3), 2)


def start_level(ipa_bits: int, page_shift: int) -> int:
    return 4 - pgtable_levels(ipa_bits, page_shift)


def pgd_pages(ipa_bits: int, page_shift: int) -> int:
    """kvm_pgd_pages(): kvm_pgd_page_idx(-1) + 1."""
    sl = start_level(ipa_bits, page_shift)
    return ((((1 << ipa_bits) - 1) & MASK64) >> granule_shift(sl - 1, page_shift)) + 1


def min_block_level(page_shift: int) -> int:
    """KVM_PGTABLE_MIN_BLOCK_LEVEL."""
    return 1 if page_shift == 12 else 2


# ==========================================================================================
# Descriptors


def oa_mask(level: int, page_shift: int) -> int:
    """The bits holding the output address of a descriptor at ``level``: 47:granule_shift,
    plus 15:12 (PA[51:48]) with the 64K granule."""
    m = bits(47, granule_shift(level, page_shift))
    if page_shift == 16:
        m |= bits(15, 12)
    return m


def phys_to_pte(pa: int, page_shift: int) -> int:
    """kvm_phys_to_pte()."""
    pte = pa & bits(47, page_shift)
    if page_shift == 16:
        pte |= ((pa >> 48) & 0xF) << 12
    return pte


def pte_to_phys(pte: int, page_shift: int) -> int:
    """kvm_pte_to_phys()."""
    pa = pte & bits(47, page_shift)
    if page_shift == 16:
        pa |= ((pte >> 12) & 0xF) << 48
    return pa


def leaf_pte(pa: int, attr: int, level: int, page_shift: int) -> int:
    """kvm_init_valid_leaf_pte(), plus nT (bit 16) kept in block descriptors."""
    pte = phys_to_pte(pa, page_shift)
    pte |= attr & (LEAF_ATTR_LO | LEAF_ATTR_HI)
    if level == 3:
        pte |= TYPE
    else:
        pte |= attr & NT
    return pte | VALID


def table_pte(pa: int, page_shift: int) -> int:
    """kvm_init_table_pte()."""
    return phys_to_pte(pa, page_shift) | TYPE | VALID


def owner_pte(owner_id: int) -> int:
    """kvm_init_invalid_leaf_owner()."""
    return (owner_id << 2) & OWNER_MASK


def is_valid(pte: int) -> bool:
    return bool(pte & VALID)


def is_table(pte: int, level: int) -> bool:
    """kvm_pte_table()."""
    return level < 3 and is_valid(pte) and bool(pte & TYPE)


def is_locked(pte: int) -> bool:
    """stage2_pte_is_locked()."""
    return not is_valid(pte) and bool(pte & LOCKED)


def is_leaf(pte: int, level: int) -> bool:
    """A valid block or page (a level-3 descriptor with type 0 is reserved, not a leaf)."""
    if not is_valid(pte):
        return False
    return bool(pte & TYPE) if level == 3 else not pte & TYPE


def set_prot_attr(prot: int) -> int | None:
    """stage2_set_prot_attr() without FWB and LPA2; None where the kernel says -EINVAL."""
    kind = prot & (PROT_DEVICE | PROT_NORMAL_NC)
    if kind == PROT_DEVICE | PROT_NORMAL_NC:
        return None
    if kind == PROT_DEVICE:
        if prot & PROT_X:
            return None
        attr = MT_DEVICE_nGnRE << 2
    elif kind == PROT_NORMAL_NC:
        if prot & PROT_X:
            return None
        attr = MT_NORMAL_NC << 2
    else:
        attr = MT_NORMAL << 2
    if not prot & PROT_X:
        attr |= XN
    if prot & PROT_R:
        attr |= S2AP_R
    if prot & PROT_W:
        attr |= S2AP_W
    attr |= SH_IS
    attr |= AF
    attr |= prot & SW_MASK
    return attr


def pte_prot(pte: int) -> int:
    """kvm_pgtable_stage2_pte_prot(): R/W/X and the software bits; nothing else survives."""
    prot = pte & SW_MASK
    if not is_valid(pte):
        return prot
    if pte & S2AP_R:
        prot |= PROT_R
    if pte & S2AP_W:
        prot |= PROT_W
    if not pte & XN:
        prot |= PROT_X
    return prot


def leaf_attributes(pte: int, level: int, page_shift: int) -> int:
    """Everything of a leaf but its output address, valid and type bits."""
    return pte & ~oa_mask(level, page_shift) & ~(VALID | TYPE) & MASK64


def is_counted(pte: int, level: int, rule: str, page_shift: int) -> bool:
    """Does ``pte`` hold a reference on the table page that contains it?

    GUEST: stage2_pte_is_counted() = !!pte. HOST (seed 000): non-zero invalid entries, table
    entries, and leaves whose attributes differ from the default host memory / MMIO mapping.
    """
    if pte == 0:
        return False
    if rule == GUEST:
        return True
    if not is_valid(pte) or is_table(pte, level):
        return True
    return leaf_attributes(pte, level, page_shift) not in (HOST_DEFAULT_MEM, HOST_DEFAULT_MMIO)


def cacheable(pte: int) -> bool:
    """stage2_pte_cacheable(): valid and Normal write-back."""
    return is_valid(pte) and (pte & MEMATTR_MASK) == MT_NORMAL << 2


def executable(pte: int) -> bool:
    """stage2_pte_executable()."""
    return is_valid(pte) and not pte & XN


# ==========================================================================================
# Page-table memory


class RefMemory:
    """Table pages as Python lists, a refcount per page, a LIFO free stack (mm_ops)."""

    def __init__(self, page_shift: int, base_pa: int, limit_pages: int | None = None):
        self.page_shift = page_shift
        self.entries = 1 << (page_shift - 3)
        self.base_pa = base_pa
        self.limit = limit_pages
        self.pages: dict[int, list[int]] = {}  # in-use rows only
        self.refcount: dict[int, int] = {}
        self.free: list[int] = []
        self.hwm = 0  # rows ever handed out
        self.report: RefReport | None = None

    @property
    def in_use(self) -> int:
        return len(self.pages)

    def available(self) -> float:
        """What is left in the memcache (mc->nobjs)."""
        return float("inf") if self.limit is None else self.limit - self.in_use

    def pa(self, row: int) -> int:
        return self.base_pa + (row << self.page_shift)

    def row_of(self, pa: int) -> int:
        return (pa - self.base_pa) >> self.page_shift

    def zalloc_page(self) -> int | None:
        if self.limit is not None and self.in_use >= self.limit:
            return None
        if self.free:
            row = self.free.pop()
        else:
            row = self.hwm
            self.hwm += 1
        self.pages[row] = [0] * self.entries
        self.refcount[row] = 1
        if self.report is not None:
            self.report.tables_allocated += 1
        return row

    def zalloc_pages_exact(self, n: int) -> int:
        if self.limit is not None and self.in_use + n > self.limit:
            raise MemoryError("page-table memory limit reached")
        first = self.hwm
        for row in range(first, first + n):
            self.pages[row] = [0] * self.entries
            self.refcount[row] = 1
        self.hwm += n
        return first

    def free_pages_exact(self, first: int, n: int) -> None:
        for row in range(first, first + n):
            self._release(row)

    def get_page(self, row: int) -> None:
        self.refcount[row] += 1

    def put_page(self, row: int) -> None:
        if self.report is not None:
            self.report.puts += 1
        if self.refcount[row] <= 0:
            self._warn()
            return
        self.refcount[row] -= 1
        if self.refcount[row] == 0:
            self._release(row)

    def page_count(self, row: int) -> int:
        return self.refcount[row]

    def _release(self, row: int) -> None:
        del self.pages[row]
        del self.refcount[row]
        self.free.append(row)
        if self.report is not None:
            self.report.tables_freed += 1

    def _warn(self) -> None:
        if self.report is not None:
            self.report.warnings += 1


# ==========================================================================================
# The stage-2 page table and the kernel's walker


@dataclass
class RefReport:
    """What one operation did.

    ``visits``: calls of __kvm_pgtable_visit(), i.e. entries the loop of __kvm_pgtable_walk()
    reached, in every walk the operation made: kvm_pgtable_walk() itself and the walks it
    starts from a callback with __kvm_pgtable_walk() (create_unlinked()'s map walk of the new
    table, free_unlinked()'s free walk of a detached one). One per entry whatever callbacks
    run on it: a table entry's TABLE_PRE, the re-read after it and its TABLE_POST are one
    visit; an entry is visited whether or not the walker has a callback for it (a LEAF-only
    walker still visits the tables it descends through). put_page() of a table page is not a
    walk and visits nothing.

    ``stores``: writes of a descriptor: WRITE_ONCE() or cmpxchg() in stage2_try_set_pte()
    (the locked pattern of a break, a software-bits-only update, an attribute update),
    smp_store_release() in stage2_make_pte(), kvm_clear_pte(). Break-before-make is two
    stores (the locked pattern, then the new entry). Zeroing a new table page is the
    allocator's work, not a store.

    ``puts``: put_page() calls on table pages (each an atomic decrement of the page's count).
    """

    ret: int = 0
    tables_allocated: int = 0
    tables_freed: int = 0
    tlbis: list = field(default_factory=list)  # (kind, addr, size, level)
    cmo_bytes: int = 0
    icache_bytes: int = 0
    warnings: int = 0
    visits: int = 0
    stores: int = 0
    puts: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for t in self.tlbis if t[0] == kind)


@dataclass
class WalkData:
    """struct kvm_pgtable_walk_data plus the walker (cb, flags)."""

    cb: Callable
    flags: int
    start: int
    addr: int
    end: int


@dataclass
class Ctx:
    """struct kvm_pgtable_visit_ctx (ptep as row and index)."""

    row: int
    idx: int
    old: int
    start: int
    addr: int
    end: int
    level: int
    flags: int


@dataclass
class MapData:
    """struct stage2_map_data (phys None = KVM_PHYS_INVALID)."""

    phys: int | None
    attr: int = 0
    owner_id: int = 0
    force_pte: bool = False


class RefStage2:
    """A stage-2 page table driven exactly as pgtable.c drives it."""

    def __init__(self, mem: RefMemory, ipa_bits: int, *, rule: str = GUEST, fwb: bool = False,
                 tlbi_range: bool = False):
        self.mem = mem
        self.ps = mem.page_shift
        self.page_size = 1 << self.ps
        self.entries = mem.entries
        self.ipa_bits = ipa_bits
        self.start_level = start_level(ipa_bits, self.ps)
        self.pgd_pages = pgd_pages(ipa_bits, self.ps)
        self.rule = rule
        self.fwb = fwb
        self.tlbi_range = tlbi_range
        self.pgd = mem.zalloc_pages_exact(self.pgd_pages)
        self.report = RefReport()

    # -- helpers ---------------------------------------------------------------------------
    def gshift(self, level: int) -> int:
        return granule_shift(level, self.ps)

    def gsize(self, level: int) -> int:
        return granule_size(level, self.ps)

    def counted(self, pte: int, level: int) -> bool:
        return is_counted(pte, level, self.rule, self.ps)

    def read(self, ctx: Ctx) -> int:
        return self.mem.pages[ctx.row][ctx.idx]

    def write(self, ctx: Ctx, pte: int) -> None:
        """Every store of a descriptor (WRITE_ONCE, cmpxchg, smp_store_release)."""
        self.mem.pages[ctx.row][ctx.idx] = pte
        self.report.stores += 1

    def follow(self, pte: int) -> int:
        """kvm_pte_follow(): the row of the table a table descriptor points at."""
        return self.mem.row_of(pte_to_phys(pte, self.ps))

    def _begin(self) -> RefReport:
        self.report = RefReport()
        self.mem.report = self.report
        return self.report

    def _end(self, ret: int) -> RefReport:
        self.report.ret = ret
        self.mem.report = None
        return self.report

    # -- TLB maintenance (arch/arm64/kvm/hyp/nvhe/tlb.c, kvm_tlb_flush_vmid_range) ---------
    def tlb_flush_vmid_ipa(self, addr: int, level: int, *, leaf: bool = True) -> None:
        """__kvm_tlb_flush_vmid_ipa(): the translations of ``addr`` (level: the TTL hint).
        Logged as the region the invalidated leaf maps; for a table entry (or an unknown
        level), the page holding ``addr``."""
        if leaf and level != TTL_UNKNOWN:
            size = self.gsize(level)
        else:
            size = self.page_size
        self.report.tlbis.append(("ipa", align_down(addr, size), size, level))

    def tlb_flush_vmid_range(self, addr: int, size: int) -> None:
        if not self.tlbi_range:
            self.report.tlbis.append(("vmid", 0, 0, TTL_UNKNOWN))
            return
        pages = size >> self.ps
        while pages > 0:
            n = min(pages, MAX_TLBI_RANGE_PAGES)
            self.report.tlbis.append(("range", addr, n << self.ps, TTL_UNKNOWN))
            addr += n << self.ps
            pages -= n

    # -- kvm_pgtable_walk -------------------------------------------------------------------
    def walk(self, addr: int, size: int, cb: Callable, flags: int) -> int:
        start = align_down(addr, self.page_size)
        data = WalkData(cb, flags, start, start, align_up(start + size, self.page_size))
        limit = 1 << self.ipa_bits
        if data.addr > limit or data.end > limit:
            return -ERANGE
        idx = (data.addr & (limit - 1)) >> self.gshift(self.start_level - 1)
        ret = 0
        while data.addr < data.end:
            ret = self._walk_table(data, self.pgd + idx, self.start_level)
            if ret:
                break
            idx += 1
        return ret

    def _walk_table(self, data: WalkData, row: int, level: int) -> int:
        """__kvm_pgtable_walk()."""
        ret = 0
        first = (data.addr >> self.gshift(level)) & (self.entries - 1)
        for idx in range(first, self.entries):
            if data.addr >= data.end:
                break
            ret = self._visit(data, row, idx, level)
            if ret:
                break
        return ret

    @staticmethod
    def _continue(data: WalkData, r: int) -> bool:
        """kvm_pgtable_walk_continue()."""
        if r == -EAGAIN:
            return not data.flags & HANDLE_FAULT
        return r == 0

    def _visit(self, data: WalkData, row: int, idx: int, level: int) -> int:
        """__kvm_pgtable_visit()."""
        self.report.visits += 1
        ctx = Ctx(row, idx, self.mem.pages[row][idx], data.start, data.addr, data.end, level,
                  data.flags)
        ret = 0
        reload = False
        table = is_table(ctx.old, level)
        if table and data.flags & TABLE_PRE:
            ret = data.cb(ctx, TABLE_PRE)
            reload = True
        if not table and data.flags & LEAF:
            ret = data.cb(ctx, LEAF)
            reload = True
        if reload:
            ctx.old = self.read(ctx)
            table = is_table(ctx.old, level)
        if self._continue(data, ret):
            if not table:
                size = self.gsize(level)
                data.addr = align_down(data.addr, size) + size
            else:
                ret = self._walk_table(data, self.follow(ctx.old), level + 1)
                if self._continue(data, ret) and data.flags & TABLE_POST:
                    ret = data.cb(ctx, TABLE_POST)
        return 0 if self._continue(data, ret) else ret

    # -- break-before-make ------------------------------------------------------------------
    def try_break_pte(self, ctx: Ctx) -> bool:
        """stage2_try_break_pte() for an exclusive walker."""
        if is_locked(ctx.old):
            self.report.warnings += 1  # WARN_ON(!shared)
            return False
        self.write(ctx, LOCKED)
        if not ctx.flags & SKIP_BBM_TLBI:
            if is_table(ctx.old, ctx.level):
                size = self.gsize(ctx.level)
                self.tlb_flush_vmid_range(align_down(ctx.addr, size), size)
            elif is_valid(ctx.old):
                self.tlb_flush_vmid_ipa(ctx.addr, ctx.level)
        if self.counted(ctx.old, ctx.level):
            self.mem.put_page(ctx.row)
        return True

    def make_pte(self, ctx: Ctx, new: int) -> None:
        """stage2_make_pte()."""
        if not is_locked(self.read(ctx)):
            self.report.warnings += 1
        if self.counted(new, ctx.level):
            self.mem.get_page(ctx.row)
        self.write(ctx, new)

    # -- stage2_map_walker ------------------------------------------------------------------
    def _map_phys(self, ctx: Ctx, data: MapData) -> int | None:
        """stage2_map_walker_phys_addr()."""
        if data.phys is None:
            return None
        return data.phys + (ctx.addr - ctx.start)

    def _block_mapping_supported(self, ctx: Ctx, phys: int | None) -> bool:
        """kvm_block_mapping_supported()."""
        granule = self.gsize(ctx.level)
        if ctx.level < min_block_level(self.ps):
            return False
        if granule > ctx.end - ctx.addr:
            return False
        if phys is not None and phys % granule:
            return False
        return ctx.addr % granule == 0

    def _leaf_mapping_allowed(self, ctx: Ctx, data: MapData) -> bool:
        """stage2_leaf_mapping_allowed()."""
        if data.force_pte and ctx.level < 3:
            return False
        return self._block_mapping_supported(ctx, self._map_phys(ctx, data))

    def _map_try_leaf(self, ctx: Ctx, data: MapData) -> int:
        """stage2_map_walker_try_leaf()."""
        phys = self._map_phys(ctx, data)
        granule = self.gsize(ctx.level)
        if not self._leaf_mapping_allowed(ctx, data):
            return -E2BIG
        if phys is not None:
            new = leaf_pte(phys, data.attr, ctx.level, self.ps)
        else:
            new = owner_pte(data.owner_id)
        # stage2_pte_needs_update()
        if is_valid(ctx.old) and is_valid(new) and not (ctx.old ^ new) & ~S2_PERMS:
            return -EAGAIN
        if not (ctx.old ^ new) & ~SW_MASK:
            old_counted = self.counted(ctx.old, ctx.level)
            if old_counted != self.counted(new, ctx.level):
                if old_counted:
                    self.mem.put_page(ctx.row)
                else:
                    self.mem.get_page(ctx.row)
            self.write(ctx, new)
            return 0
        if not self.try_break_pte(ctx):
            return -EAGAIN
        if not ctx.flags & SKIP_CMO and cacheable(new) and not self.fwb:
            self.report.cmo_bytes += granule
        if not ctx.flags & SKIP_CMO and executable(new):
            self.report.icache_bytes += granule
        self.make_pte(ctx, new)
        return 0

    def _map_table_pre(self, ctx: Ctx, data: MapData) -> int:
        """stage2_map_walk_table_pre()."""
        childp = self.follow(ctx.old)
        if not self._leaf_mapping_allowed(ctx, data):
            return 0
        ret = self._map_try_leaf(ctx, data)
        if ret:
            return ret
        self.free_unlinked(childp, ctx.level)
        return 0

    def _map_leaf(self, ctx: Ctx, data: MapData) -> int:
        """stage2_map_walk_leaf()."""
        ret = self._map_try_leaf(ctx, data)
        if ret != -E2BIG:
            return ret
        if ctx.level == 3:
            self.report.warnings += 1
            return -EINVAL
        childp = self.mem.zalloc_page()
        if childp is None:
            return -ENOMEM
        if not self.try_break_pte(ctx):
            self.mem.put_page(childp)
            return -EAGAIN
        self.make_pte(ctx, table_pte(self.mem.pa(childp), self.ps))
        return 0

    def _coalesce_post(self, ctx: Ctx, data: MapData) -> int:
        """Seed 000's stage2_coalesce_walk_table_post(): on the set-owner path only and at a
        level that supports blocks, a table whose refcount fell to 1 (only uncounted,
        default entries left) is zapped with stage2_put_pte() (clear, TLBI by IPA with the
        entry's level as hint, put) and its page freed."""
        childp = self.follow(ctx.old)
        if data.phys is not None or ctx.level < min_block_level(self.ps):
            return 0
        if self.mem.page_count(childp) == 1:
            # stage2_put_pte()
            if is_valid(self.read(ctx)):
                self.write(ctx, 0)
                self.tlb_flush_vmid_ipa(ctx.addr, ctx.level, leaf=False)
            self.mem.put_page(ctx.row)
            self.mem.put_page(childp)
        return 0

    def _map_walker(self, data: MapData) -> Callable:
        def cb(ctx: Ctx, visit: int) -> int:
            if visit == TABLE_PRE:
                return self._map_table_pre(ctx, data)
            if visit == LEAF:
                return self._map_leaf(ctx, data)
            return self._coalesce_post(ctx, data)

        return cb

    def map(self, addr: int, size: int, phys: int, attr: int, *, force_pte: bool = False,
            handle_fault: bool = False) -> RefReport:
        """kvm_pgtable_stage2_map() with ``attr`` already built (see set_prot_attr)."""
        self._begin()
        data = MapData(phys=align_down(phys, self.page_size), attr=attr, force_pte=force_pte)
        flags = TABLE_PRE | LEAF | (HANDLE_FAULT if handle_fault else 0)
        return self._end(self.walk(addr, size, self._map_walker(data), flags))

    def map_prot(self, addr: int, size: int, phys: int, prot: int, **kw) -> RefReport:
        """kvm_pgtable_stage2_map() taking a kvm_pgtable_prot."""
        attr = set_prot_attr(prot)
        if attr is None:
            self._begin()
            return self._end(-EINVAL)
        return self.map(addr, size, phys, attr, **kw)

    def set_owner(self, addr: int, size: int, owner_id: int, *, coalesce: bool = False
                  ) -> RefReport:
        """kvm_pgtable_stage2_set_owner() (KVM_PHYS_INVALID, force_pte); with ``coalesce``
        seed 000's TABLE_POST visitor."""
        self._begin()
        data = MapData(phys=None, owner_id=owner_id, force_pte=True)
        flags = TABLE_PRE | LEAF | (TABLE_POST if coalesce else 0)
        return self._end(self.walk(addr, size, self._map_walker(data), flags))

    # -- stage2_unmap_walker ----------------------------------------------------------------
    def _unmap_defer_tlb_flush(self) -> bool:
        """stage2_unmap_defer_tlb_flush()."""
        return self.tlbi_range and self.fwb

    def _unmap_walker(self, ctx: Ctx, visit: int) -> int:
        if not is_valid(ctx.old):
            if self.counted(ctx.old, ctx.level):
                self.write(ctx, 0)
                self.mem.put_page(ctx.row)
            return 0
        childp = None
        need_flush = False
        if is_table(ctx.old, ctx.level):
            childp = self.follow(ctx.old)
            if self.mem.page_count(childp) != 1:
                return 0
        elif cacheable(ctx.old):
            need_flush = not self.fwb
        # stage2_unmap_put_pte()
        self.write(ctx, 0)
        if is_table(ctx.old, ctx.level):
            self.tlb_flush_vmid_ipa(ctx.addr, TTL_UNKNOWN, leaf=False)
        elif not self._unmap_defer_tlb_flush():
            self.tlb_flush_vmid_ipa(ctx.addr, ctx.level)
        # 6.12 puts unconditionally: every valid entry is counted by the guest rule. The host
        # rule leaves default leaves uncounted, so its put follows the rule.
        if self.counted(ctx.old, ctx.level):
            self.mem.put_page(ctx.row)
        if need_flush:
            self.report.cmo_bytes += self.gsize(ctx.level)
        if childp is not None:
            self.mem.put_page(childp)
        return 0

    def unmap(self, addr: int, size: int) -> RefReport:
        """kvm_pgtable_stage2_unmap()."""
        self._begin()
        ret = self.walk(addr, size, self._unmap_walker, LEAF | TABLE_POST)
        if self._unmap_defer_tlb_flush():
            self.tlb_flush_vmid_range(addr, size)
        return self._end(ret)

    # -- stage2_attr_walker -----------------------------------------------------------------
    def update_attrs(self, addr: int, size: int, set_bits: int = 0, clear_bits: int = 0, *,
                     handle_fault: bool = False) -> RefReport:
        """stage2_update_leaf_attrs() (wrprotect, relax_perms, mkyoung, mkold): set and clear
        attribute bits of the valid leaves in the range. No TLBI: the callers flush.

        Two conventions beyond the kernel: nT may be set or cleared on blocks, and under the
        host rule a leaf that becomes (non-)default takes (drops) its reference."""
        mask = LEAF_ATTR_LO | LEAF_ATTR_HI

        def attr_walker(ctx: Ctx, visit: int) -> int:
            if not is_valid(ctx.old):
                return -EAGAIN
            m = mask | (NT if ctx.level < 3 else 0)
            pte = (ctx.old & ~(clear_bits & m)) | (set_bits & m)
            if pte != ctx.old:
                if executable(pte) and not executable(ctx.old):
                    self.report.icache_bytes += self.gsize(ctx.level)
                was, now = self.counted(ctx.old, ctx.level), self.counted(pte, ctx.level)
                if was and not now:
                    self.mem.put_page(ctx.row)
                elif now and not was:
                    self.mem.get_page(ctx.row)
                self.write(ctx, pte)
            return 0

        self._begin()
        flags = LEAF | (HANDLE_FAULT if handle_fault else 0)
        return self._end(self.walk(addr, size, attr_walker, flags))

    # -- stage2_split_walker ----------------------------------------------------------------
    def create_unlinked(self, phys: int, level: int, prot: int, force_pte: bool
                        ) -> tuple[int, int | None]:
        """kvm_pgtable_stage2_create_unlinked(): (0, row) or (-errno, None)."""
        if phys % self.gsize(level):
            return -EINVAL, None
        attr = set_prot_attr(prot)
        if attr is None:
            return -EINVAL, None
        pgtable = self.mem.zalloc_page()
        if pgtable is None:
            return -ENOMEM, None
        data = WalkData(self._map_walker(MapData(phys=phys, attr=attr, force_pte=force_pte)),
                        LEAF | SKIP_BBM_TLBI | SKIP_CMO, 0, 0, self.gsize(level))
        ret = self._walk_table(data, pgtable, level + 1)
        if ret:
            self.free_unlinked(pgtable, level)
            return ret, None
        return 0, pgtable

    @staticmethod
    def block_get_nr_page_tables(level: int, entries: int) -> int:
        """stage2_block_get_nr_page_tables()."""
        return {1: entries + 1, 2: 1, 3: 0}.get(level, -EINVAL)

    def _split_walker(self, ctx: Ctx, visit: int) -> int:
        level = ctx.level
        pte = ctx.old
        if level == 3:
            return 0
        if not is_valid(pte):
            return 0
        nr_pages = self.block_get_nr_page_tables(level, self.entries)
        if nr_pages < 0:
            return nr_pages
        nobjs = self.mem.available()
        if nobjs >= nr_pages:
            force_pte = True
        else:
            force_pte = False
            nr_pages = 1
        if nobjs < nr_pages:
            return -ENOMEM
        # kvm_pte_to_phys(); nT (bit 16) is not an address bit of a block descriptor
        phys = pte_to_phys(pte & oa_mask(level, self.ps), self.ps)
        ret, childp = self.create_unlinked(phys, level, pte_prot(pte), force_pte)
        if ret:
            return ret
        if not self.try_break_pte(ctx):
            self.free_unlinked(childp, level)
            return -EAGAIN
        self.make_pte(ctx, table_pte(self.mem.pa(childp), self.ps))
        return 0

    def split(self, addr: int, size: int) -> RefReport:
        """kvm_pgtable_stage2_split()."""
        self._begin()
        return self._end(self.walk(addr, size, self._split_walker, LEAF))

    # -- stage2_free_walker -----------------------------------------------------------------
    def _free_walker(self, ctx: Ctx, visit: int) -> int:
        if not self.counted(ctx.old, ctx.level):
            return 0
        self.mem.put_page(ctx.row)
        if is_table(ctx.old, ctx.level):
            self.mem.put_page(self.follow(ctx.old))
        return 0

    def free_unlinked(self, pgtable: int, level: int) -> None:
        """kvm_pgtable_stage2_free_unlinked()."""
        data = WalkData(self._free_walker, LEAF | TABLE_POST, 0, 0, self.gsize(level))
        if self._walk_table(data, pgtable, level + 1):
            self.report.warnings += 1
        if self.mem.page_count(pgtable) != 1:
            self.report.warnings += 1
        self.mem.put_page(pgtable)

    def destroy(self) -> RefReport:
        """kvm_pgtable_stage2_destroy(): the walk, then free_pages_exact() of the pgd."""
        self._begin()
        if self.walk(0, 1 << self.ipa_bits, self._free_walker, LEAF | TABLE_POST):
            self.report.warnings += 1
        for row in range(self.pgd, self.pgd + self.pgd_pages):
            if self.mem.page_count(row) != 1:
                self.report.warnings += 1
        self.mem.free_pages_exact(self.pgd, self.pgd_pages)
        return self._end(0)

    # -- leaf_walker ------------------------------------------------------------------------
    def get_leaf(self, addr: int) -> tuple[int, int, int]:
        """kvm_pgtable_get_leaf(): (ret, descriptor, level)."""
        found: dict[str, int] = {}

        def leaf_walker(ctx: Ctx, visit: int) -> int:
            found["pte"] = ctx.old
            found["level"] = ctx.level
            return 0

        self._begin()
        ret = self.walk(align_down(addr, self.page_size), self.page_size, leaf_walker, LEAF)
        self._end(ret)
        return ret, found.get("pte", 0), found.get("level", 0)

    # -- inspection -------------------------------------------------------------------------
    def reachable(self) -> list[tuple[int, int]]:
        """(row, level) of every table page reachable from the pgd, depth first."""
        out = []

        def visit(row: int, level: int) -> None:
            out.append((row, level))
            for pte in self.mem.pages[row]:
                if is_table(pte, level):
                    visit(self.follow(pte), level + 1)

        for i in range(self.pgd_pages):
            visit(self.pgd + i, self.start_level)
        return out

    def leaf_counts(self) -> dict[int, int]:
        counts = {lvl: 0 for lvl in range(4)}
        for row, level in self.reachable():
            for pte in self.mem.pages[row]:
                if is_leaf(pte, level):
                    counts[level] += 1
        return counts


# ==========================================================================================
# TLB-invalidation logs: the reference logs one record per TLBI; the simulator merges
# adjacent by-IPA records and folds everything into one record once it flushes the VMID.


def canonical_tlbis(records: list[tuple[int | str, ...]]) -> list[tuple]:
    """One (kind, addr, size, level) per TLBI, or [("vmid", count)] if the VMID is flushed."""
    if any(r[0] == "vmid" for r in records):
        return [("vmid", len(records))]
    return [tuple(r) for r in records]


def expand_merged_tlbis(records) -> list[tuple]:
    """The simulator's log (objects with kind, addr, size, level, count) one TLBI a row."""
    if any(r.kind == "vmid" for r in records):
        return [("vmid", sum(r.count for r in records))]
    out = []
    for r in records:
        each = r.size // r.count
        out.extend((r.kind, r.addr + i * each, each, r.level) for i in range(r.count))
    return out


# ==========================================================================================
# The hardware walk and the walk cache


W_OK = "ok"
W_TRANSLATION = "translation"
W_ACCESS_FLAG = "access_flag"


@dataclass
class WalkResult:
    status: str
    level: int
    pte: int
    refs: int
    wc_level: int = -1  # deepest walk-cache level that hit
    shift: int = 0  # leaf size (log2) when status is ok / access_flag


class RefWalkCache:
    """Per level (0..3) a fully associative LRU of (vmid, ipa >> granule_shift) -> table row."""

    def __init__(self, entries_per_level: int, page_shift: int):
        self.n = entries_per_level
        self.ps = page_shift
        self.levels: list[OrderedDict] = [OrderedDict() for _ in range(4)]

    def lookup(self, level: int, vmid: int, ipa: int) -> int | None:
        d = self.levels[level]
        key = (vmid, ipa >> granule_shift(level, self.ps))
        if key not in d:
            return None
        d.move_to_end(key)
        return d[key]

    def fill(self, level: int, vmid: int, ipa: int, row: int) -> None:
        if self.n == 0:
            return
        d = self.levels[level]
        key = (vmid, ipa >> granule_shift(level, self.ps))
        if key not in d and len(d) >= self.n:
            d.popitem(last=False)
        d[key] = row
        d.move_to_end(key)

    def invalidate(self, vmid: int, lo: int, hi: int) -> int:
        removed = 0
        for level, d in enumerate(self.levels):
            size = granule_size(level, self.ps)
            for key in list(d):
                v, region = key
                if vmid >= 0 and v != vmid:
                    continue
                if hi != 0 and not (region * size < hi and lo < (region + 1) * size):
                    continue
                del d[key]
                removed += 1
        return removed

    def contents(self) -> list[list[tuple]]:
        """Per level, (vmid, region, row) from least to most recently used."""
        return [[(k[0], k[1], r) for k, r in d.items()] for d in self.levels]


def hw_walk(read: Callable[[int, int], int], base_pa: int, page_shift: int, root_row: int,
            start_level_: int, ipa_bits: int, ipa: int, wc: RefWalkCache | None = None,
            vmid: int = 0) -> WalkResult:
    """Translate ``ipa`` through the stage-2 whose descriptors ``read(row, index)`` returns.

    An IPA beyond ipa_bits, an invalid descriptor (a locked one included), a reserved level-3
    encoding and a block above the smallest block level are translation faults; a leaf
    without AF is an access-flag fault. Every descriptor read is one memory reference.
    """
    if ipa >> ipa_bits:
        return WalkResult(W_TRANSLATION, start_level_, 0, 0)
    entries = 1 << (page_shift - 3)
    row = root_row + (ipa >> granule_shift(start_level_ - 1, page_shift))
    level = start_level_
    wc_level = -1
    if wc is not None:
        for lv in range(2, start_level_ - 1, -1):
            hit = wc.lookup(lv, vmid, ipa)
            if hit is not None:
                row, level, wc_level = hit, lv + 1, lv
                break

    def walk(row: int, level: int, refs: int) -> WalkResult:
        shift = granule_shift(level, page_shift)
        pte = int(read(row, (ipa >> shift) & (entries - 1))) & MASK64
        refs += 1
        if not is_valid(pte):
            return WalkResult(W_TRANSLATION, level, pte, refs, wc_level)
        if is_table(pte, level):
            child = (pte_to_phys(pte, page_shift) - base_pa) >> page_shift
            if wc is not None:
                wc.fill(level, vmid, ipa, child)
            return walk(child, level + 1, refs)
        if not is_leaf(pte, level) or level < min_block_level(page_shift):
            return WalkResult(W_TRANSLATION, level, pte, refs, wc_level)
        status = W_OK if pte & AF else W_ACCESS_FLAG
        return WalkResult(status, level, pte, refs, wc_level, shift)

    return walk(row, level, 0)


# ==========================================================================================
# The nested walk: a guest's stage-1 over stage-2


@dataclass
class Stage1Regime:
    """A guest stage-1 as the walker sees it: granule, start level, VA size, the IPA of the
    top-level table, the guest's table-page layout (the table at IPA ``top - (r << ps)`` is
    row r of ``read(r, index)``) and the contiguous run sizes (log2 entries)."""

    ps: int
    start: int
    va_bits: int
    root: int
    top: int
    cont3: int
    cont2: int
    read: Callable[[int, int], int]

    def row_of(self, ipa: int) -> int:
        return (self.top - ipa) >> self.ps


@dataclass
class NestedResult:
    status: str
    stage: int  # 1: the guest's stage-1 faulted; 2: stage-2 (or ok)
    level: int
    pte: int
    refs1: int
    refs2: int
    hits: int  # walk-cache hits of either stage
    s1_wc_level: int  # deepest stage-1 walk-cache level that hit, -1 none
    shift: int = 0  # combined entry size (log2)
    pa: int = 0  # its output address
    ipa: int = 0  # the output IPA, or the IPA whose stage-2 walk faulted
    s1ptw: bool = False  # the stage-2 fault was on a stage-1 table's IPA
    perm: int = 0  # PERM_* | stage-2 leaf level << 4 (| NOCACHE: an nT block)
    s2hits: int = 0  # stage-2 translations served by cached stage-2 entries
    s2cyc: int = 0  # the cycles of those lookups


def nested_walk(read2, base_pa: int, ps2: int, root_row: int, sl2: int, ipa_bits: int,
                s1: Stage1Regime, va: int, wc2: RefWalkCache | None, wc1: RefWalkCache | None,
                vmid: int, tlb=None) -> NestedResult:
    """Translate ``va``: every stage-1 table's IPA goes through stage-2 before the table is
    read, and so does the leaf's output IPA: from a stage-2 entry cached in ``tlb`` (a
    RefTLB whose levels hold stage-2 sizes) or by a walk, whose leaf is then cached there
    (never an nT block). A stage-1 walk-cache hit yields a table whose stage-2 translation
    is known. The combined entry has the smaller of the two leaf sizes, a contiguous
    stage-1 leaf counting as its whole run; its permissions are stage-2's."""
    refs1 = refs2 = hits = 0
    s2hits = s2cyc = 0
    s1hit = -1
    if va >> s1.va_bits:
        return NestedResult(W_TRANSLATION, 1, s1.start, 0, 0, 0, 0, -1)
    level, row, known = s1.start, s1.row_of(s1.root), False
    table_ipa = s1.root
    if wc1 is not None:
        for lv in range(2, s1.start - 1, -1):
            hit = wc1.lookup(lv, vmid, va)
            if hit is not None:
                row, level, s1hit, known = hit, lv + 1, lv, True
                hits += 1
                break

    def stage2(ipa: int):
        """(WalkResult or None, leaf size shift, leaf output address, perm)."""
        nonlocal refs2, hits, s2hits, s2cyc
        if tlb is not None:
            cyc, entry, shift = tlb.s2_probe(ipa, vmid)
            s2cyc += cyc
            if entry is not None:
                s2hits += 1
                return None, shift, entry.pa, entry.perm
        w = hw_walk(read2, base_pa, ps2, root_row, sl2, ipa_bits, ipa, wc2, vmid)
        refs2 += w.refs
        hits += w.wc_level >= 0
        if w.status != W_OK:
            return w, 0, 0, 0
        perm = w.level << 4
        perm |= PERM_R if w.pte & S2AP_R else 0
        perm |= PERM_W if w.pte & S2AP_W else 0
        perm |= 0 if w.pte & XN else PERM_X
        leaf_pa = pte_to_phys(w.pte & oa_mask(w.level, ps2), ps2)
        if w.level < 3 and w.pte & NT:
            perm |= NOCACHE
        elif tlb is not None:
            tlb.s2_fill(ipa, vmid, w.shift, leaf_pa, perm)
        return w, w.shift, leaf_pa, perm

    pending = None  # (level, row): a stage-1 walk-cache entry, cached once its table's
    #                 stage-2 translation succeeded (the cache holds physical addresses)
    while True:
        if not known:
            w, *_ = stage2(table_ipa)
            if w is not None and w.status != W_OK:
                return NestedResult(w.status, 2, w.level, w.pte, refs1, refs2, hits, s1hit,
                                    ipa=table_ipa, s1ptw=True, s2hits=s2hits, s2cyc=s2cyc)
            if pending is not None and wc1 is not None:
                wc1.fill(pending[0], vmid, va, pending[1])
            pending = None
        known = False
        shift = granule_shift(level, s1.ps)
        d = int(s1.read(row, (va >> shift) & ((1 << (s1.ps - 3)) - 1))) & MASK64
        refs1 += 1
        if not d & 1:
            return NestedResult(W_TRANSLATION, 1, level, d, refs1, refs2, hits, s1hit,
                                s2hits=s2hits, s2cyc=s2cyc)
        if level < 3 and d & 2:
            table_ipa = pte_to_phys(d, s1.ps)
            row = s1.row_of(table_ipa)
            pending = (level, row)
            level += 1
            continue
        if (level == 3 and not d & 2) or level < min_block_level(s1.ps):
            return NestedResult(W_TRANSLATION, 1, level, d, refs1, refs2, hits, s1hit,
                                s2hits=s2hits, s2cyc=s2cyc)
        if not d & AF:
            return NestedResult(W_ACCESS_FLAG, 1, level, d, refs1, refs2, hits, s1hit,
                                s2hits=s2hits, s2cyc=s2cyc)
        break
    ipa = align_down(pte_to_phys(d, s1.ps), 1 << shift) + va % (1 << shift)
    eff1 = shift + ((s1.cont3 if level == 3 else s1.cont2) if d & (1 << 52) else 0)
    w, shift2, leaf_pa, perm = stage2(ipa)
    if w is not None and w.status != W_OK:
        return NestedResult(w.status, 2, w.level, w.pte, refs1, refs2, hits, s1hit, ipa=ipa,
                            s2hits=s2hits, s2cyc=s2cyc)
    comb = min(eff1, shift2)
    pa = align_down(leaf_pa + ipa % (1 << shift2), 1 << comb)
    return NestedResult(W_OK, 2, (perm >> 4) & 3, w.pte if w else 0, refs1, refs2, hits, s1hit,
                        comb, pa, ipa, perm=perm, s2hits=s2hits, s2cyc=s2cyc)


def s1_lookup(s1: Stage1Regime, va: int) -> int:
    """The IPA stage-1 maps ``va`` to, by reading the tables (no walk cache, nothing
    counted); 0 when it maps none."""
    level, row = s1.start, s1.row_of(s1.root)
    while True:
        shift = granule_shift(level, s1.ps)
        d = int(s1.read(row, (va >> shift) & ((1 << (s1.ps - 3)) - 1))) & MASK64
        if not d & 1:
            return 0
        if level < 3 and d & 2:
            row, level = s1.row_of(pte_to_phys(d, s1.ps)), level + 1
            continue
        return align_down(pte_to_phys(d, s1.ps), 1 << shift) + va % (1 << shift)


# ==========================================================================================
# TLB hierarchy


PERM_R, PERM_W, PERM_X = 1, 2, 4
S2_TAG = 1 << 16  # a stage-2 entry's key: the VMID with this bit (tlb.py's KEY_S2 >> 46)
NOCACHE = 1 << 7  # a permission bit of no access class: an nT block's translation


@dataclass
class TLBEntry:
    pa: int  # output address of the region the entry maps
    perm: int  # PERM_* | leaf level << 4


class RefTLBLevel:
    """One set-associative level: per set an OrderedDict from LRU to MRU."""

    def __init__(self, name: str, sets: int, ways: int, latency: int, leaf_levels, page_shift,
                 serves: str = "all", shifts=(), stage2_shifts=()):
        self.name = name
        self.nsets = sets
        self.ways = ways
        self.latency = latency
        self.ps = page_shift
        self.serves = serves  # "all", "data" (reads, writes) or "instruction" (fetches)
        # the page sizes held, as shifts, largest first
        self.shifts = sorted({granule_shift(lv, page_shift) for lv in leaf_levels} | set(shifts),
                             reverse=True)
        # stage-2 (IPA -> PA) entries held for nested walks, keyed (vmid | S2_TAG, ...)
        self.s2_shifts = sorted(set(stage2_shifts))
        self.sets: list[OrderedDict] = [OrderedDict() for _ in range(sets)]

    def set_of(self, vpn: int) -> OrderedDict:
        return self.sets[vpn % self.nsets]


class RefTLB:
    """A hierarchy of LRU TLB levels (tlb.py's module docstring, in lists and dicts)."""

    def __init__(self, specs, page_shift: int):
        """specs: (name, sets, ways, latency, leaf_levels[, serves]) per level, nearest
        first."""
        self.ps = page_shift
        self.levels = [RefTLBLevel(*s[:5], page_shift, *s[5:]) for s in specs]

    def lookup(self, lv: int, ipa: int, vmid: int) -> tuple[int, TLBEntry] | None:
        """Probe every size the level holds (smallest first); a hit becomes MRU.
        Returns (size shift, entry) or None."""
        level = self.levels[lv]
        for shift in sorted(level.shifts):
            key = (vmid, shift, ipa >> shift)
            s = level.set_of(ipa >> shift)
            if key in s:
                s.move_to_end(key)
                return shift, s[key]
        return None

    def s2_probe(self, ipa: int, vmid: int) -> tuple[int, TLBEntry | None, int]:
        """A nested walk's lookup of a stage-2 entry: the levels holding some, in order,
        each size smallest first; a hit becomes MRU. Returns (cycles, entry, shift)."""
        cycles = 0
        for level in self.levels:
            if not level.s2_shifts:
                continue
            cycles += level.latency
            for shift in level.s2_shifts:
                key = (vmid | S2_TAG, shift, ipa >> shift)
                s = level.set_of(ipa >> shift)
                if key in s:
                    s.move_to_end(key)
                    return cycles, s[key], shift
        return cycles, None, 0

    def s2_fill(self, ipa: int, vmid: int, shift: int, pa: int, perm: int) -> None:
        """Cache a stage-2 leaf in every level holding stage-2 entries of its size."""
        for level in self.levels:
            if shift not in level.s2_shifts:
                continue
            key = (vmid | S2_TAG, shift, ipa >> shift)
            s = level.set_of(ipa >> shift)
            if key not in s and len(s) >= level.ways:
                s.popitem(last=False)
            s[key] = TLBEntry(pa, perm)
            s.move_to_end(key)

    def conflicts(self, lv: int, ipa: int, vmid: int, shift: int) -> bool:
        """Another entry of a larger size than ``shift`` also holds ``ipa`` (FEAT_BBM level
        2 without nT: a TLB conflict abort, ARM ARM D8.16.2). Does not touch the LRU order."""
        level = self.levels[lv]
        return any((vmid, s, ipa >> s) in level.set_of(ipa >> s)
                   for s in level.shifts if s > shift)

    def fill(self, lv: int, ipa: int, vmid: int, shift: int, pa: int, perm: int) -> bool:
        """Insert a translation of 2**shift bytes at output ``pa``, splintered to the largest
        size the level holds that is not larger; False if the level holds none."""
        level = self.levels[lv]
        fits = [s for s in level.shifts if s <= shift]
        if not fits:
            return False
        fshift = max(fits)
        fpa = pa + align_down(ipa % (1 << shift), 1 << fshift)
        key = (vmid, fshift, ipa >> fshift)
        s = level.set_of(ipa >> fshift)
        if key not in s and len(s) >= level.ways:
            s.popitem(last=False)
        s[key] = TLBEntry(fpa, perm)
        s.move_to_end(key)
        return True

    def invalidate(self, vmid: int, lo: int = 0, hi: int = 0) -> int:
        """Remove the entries of ``vmid`` (every VMID if < 0) whose region overlaps [lo, hi)
        (hi == 0: everything)."""
        removed = 0
        for level in self.levels:
            for s in level.sets:
                for key in list(s):
                    v, shift, vpn = key
                    if vmid >= 0 and v != vmid:
                        continue
                    base, size = vpn << shift, 1 << shift
                    if hi != 0 and not (base < hi and lo < base + size):
                        continue
                    del s[key]
                    removed += 1
        return removed

    def contents(self) -> list[list[list[tuple]]]:
        """Per level, per set: (vmid, shift, vpn, pa, perm) from LRU to MRU."""
        return [
            [[(*k, e.pa, e.perm) for k, e in s.items()] for s in level.sets]
            for level in self.levels
        ]


# ==========================================================================================
# The batch kernel


READ, WRITE, FETCH = 0, 1, 2


class RefVcpu:
    """run_batch()'s semantics (batch.py's docstring), one access at a time, in dicts.

    A level serves data accesses (reads, writes), instruction fetches or both
    (RefTLBLevel.serves); an access probes and fills only the levels serving it. With
    ``costs["conflict_check"]`` a hit in a level that also holds a larger entry for the
    address is a TLB conflict abort ("conflict", level 0). With an ownership record (``owner``:
    an id per page from ``owner_base``; ``me``: the id of the context) every completed access
    whose output page belongs to someone else counts in ``isolation.violations`` (a page
    marked shared, 0x80 | borrower, is open to the host, id 0, and to its borrower)."""

    def __init__(self, tlb: RefTLB, wc: RefWalkCache, *, vmid: int = 1,
                 costs: dict[str, int] | None = None, owner=None, owner_base: int = 0,
                 me: int = 0, s1: Stage1Regime | None = None):
        self.tlb = tlb
        self.wc = wc
        # a guest stage-1: addresses are VAs, a miss walks both stages (nested_walk)
        self.s1 = s1
        self.wc1 = RefWalkCache(wc.n, s1.ps) if s1 is not None else None
        self.vmid = vmid
        self.costs = {"access": 0, "mem_ref": 0, "wc_hit": 0, "conflict_check": 0,
                      **(costs or {})}
        self.owner = [] if owner is None else [int(o) for o in owner]
        self.owner_base = owner_base
        self.me = me
        self.clock = 0
        self.fault: dict[str, int] | None = None
        names = [lv.name for lv in tlb.levels]
        self.ctr = {k: 0 for k in (
            "accesses", "reads", "writes", "fetches", "walks", "walk.mem_refs",
            "walk_cache.hits", "translation_faults", "permission_faults", "access_flag_faults",
            "cycles.access", "cycles.translation", "xlate.l1", "xlate.l2", "xlate.l3")}
        if self.owner:
            self.ctr["isolation.violations"] = 0
        if s1 is not None:
            for k in ("walk.s1_refs", "walk.s2_refs", "walk_cache.s1_hits",
                      "s1.translation_faults", "faults.s1ptw"):
                self.ctr[k] = 0
            if any(lv.s2_shifts for lv in tlb.levels):
                self.ctr["s2_cache.hits"] = 0
        for n in names:
            self.ctr[f"tlb.{n}.hits"] = 0
            self.ctr[f"tlb.{n}.misses"] = 0

    def counters(self) -> dict[str, int]:
        return dict(self.ctr)

    def _fault(self, status: str, level: int, ipa: int, kind: int, pte: int, index: int,
               stage: int = 2, s1ptw: bool = False):
        self.fault = {"status": status, "level": level, "ipa": ipa, "kind": kind, "pte": pte,
                      "index": index}
        if self.s1 is not None:
            self.fault.update(stage=stage, s1ptw=s1ptw)

    def _ipa(self, va: int) -> int:
        """The IPA a stage-2 fault reports for an access (HPFAR_EL2)."""
        return va if self.s1 is None else s1_lookup(self.s1, va)

    def serving(self, kind: int) -> list[int]:
        """The levels an access of ``kind`` probes and fills, nearest first."""
        cls = "instruction" if kind == FETCH else "data"
        return [lv for lv, level in enumerate(self.tlb.levels) if level.serves in ("all", cls)]

    def violates(self, out_pa: int) -> bool:
        page = (out_pa - self.owner_base) >> self.tlb.ps
        if not 0 <= page < len(self.owner):
            return False
        o = self.owner[page]
        if o == self.me:
            return False
        shared_with_me = o & 0x80 and o != 0xFF and (self.me == 0 or o & 0x7F == self.me)
        return not shared_with_me

    def run(self, read, base_pa: int, page_shift: int, root_row: int, start_level_: int,
            ipa_bits: int, addrs, kinds, start: int, stop: int, budget: int
            ) -> tuple[int, int, str]:
        """Accesses [start, stop) until ``budget`` cycles are used (the access that reaches it
        completes) or one faults (not counted as an access; its lookups and walk are).
        Returns (next index, cycles used, "done" or "fault")."""
        cycles = 0
        attempts = 0  # accesses tried, the faulting one included: each pays costs.access
        i = start
        while i < stop:
            ipa, kind = int(addrs[i]), int(kinds[i])
            self.clock += 1
            attempts += 1
            cyc = self.costs["access"]
            levels = self.serving(kind)
            hit = None
            for lv in levels:
                level = self.tlb.levels[lv]
                cyc += level.latency
                found = self.tlb.lookup(lv, ipa, self.vmid)
                if found is not None:
                    self.ctr[f"tlb.{level.name}.hits"] += 1
                    hit = (lv, *found)
                    break
                self.ctr[f"tlb.{level.name}.misses"] += 1
            if hit is not None:
                lv, shift, entry = hit
                if self.costs["conflict_check"] and self.tlb.conflicts(lv, ipa, self.vmid,
                                                                       shift):
                    self._fault("conflict", 0, self._ipa(ipa), kind, 0, i)
                    cycles += cyc
                    self._tally(cycles, attempts)
                    return i, cycles, "fault"
                perm, pa = entry.perm, entry.pa
                for up in levels:
                    if up < lv:
                        self.tlb.fill(up, ipa, self.vmid, shift, pa, perm)
            elif self.s1 is not None:
                self.ctr["walks"] += 1
                w = nested_walk(read, base_pa, page_shift, root_row, start_level_, ipa_bits,
                                self.s1, ipa, self.wc if self.wc.n else None,
                                self.wc1 if self.wc.n else None, self.vmid,
                                self.tlb if any(lv.s2_shifts for lv in self.tlb.levels)
                                else None)
                self.ctr["walk.mem_refs"] += w.refs1 + w.refs2
                self.ctr["walk.s1_refs"] += w.refs1
                self.ctr["walk.s2_refs"] += w.refs2
                cyc += (w.refs1 + w.refs2) * self.costs["mem_ref"]
                self.ctr["walk_cache.hits"] += w.hits
                self.ctr["walk_cache.s1_hits"] += w.s1_wc_level >= 0
                if "s2_cache.hits" in self.ctr:
                    self.ctr["s2_cache.hits"] += w.s2hits
                cyc += w.hits * self.costs["wc_hit"] + w.s2cyc
                if w.status != W_OK:
                    if w.stage == 1:
                        self.ctr["s1.translation_faults"] += 1
                    else:
                        self.ctr[f"{w.status}_faults"] += 1
                    self.ctr["faults.s1ptw"] += w.s1ptw
                    self._fault(w.status, w.level, ipa if w.stage == 1 else w.ipa,
                                READ if w.s1ptw else kind, w.pte, i, w.stage, w.s1ptw)
                    cycles += cyc
                    self._tally(cycles, attempts)
                    return i, cycles, "fault"
                perm = w.perm & ~NOCACHE
                shift, pa = w.shift, w.pa
                if not w.perm & NOCACHE:  # an nT block is never cached
                    for lv in levels:
                        self.tlb.fill(lv, ipa, self.vmid, shift, pa, perm)
            else:
                self.ctr["walks"] += 1
                w = hw_walk(read, base_pa, page_shift, root_row, start_level_, ipa_bits, ipa,
                            self.wc, self.vmid)
                self.ctr["walk.mem_refs"] += w.refs
                cyc += w.refs * self.costs["mem_ref"]
                if w.wc_level >= 0:
                    self.ctr["walk_cache.hits"] += 1
                    cyc += self.costs["wc_hit"]
                if w.status != W_OK:
                    self.ctr[f"{w.status}_faults"] += 1
                    self._fault(w.status, w.level, ipa, kind, w.pte, i)
                    cycles += cyc
                    self._tally(cycles, attempts)
                    return i, cycles, "fault"
                pte = w.pte
                perm = w.level << 4
                perm |= PERM_R if pte & S2AP_R else 0
                perm |= PERM_W if pte & S2AP_W else 0
                perm |= 0 if pte & XN else PERM_X
                shift = w.shift
                pa = pte_to_phys(pte & oa_mask(w.level, page_shift), page_shift)
                if w.level == 3 or not pte & NT:  # an nT block is never cached
                    for lv in levels:
                        self.tlb.fill(lv, ipa, self.vmid, shift, pa, perm)
            need = {READ: PERM_R, WRITE: PERM_W, FETCH: PERM_X}[kind]
            if not perm & need:
                self.ctr["permission_faults"] += 1
                self._fault("permission", perm >> 4, self._ipa(ipa), kind, 0, i)
                cycles += cyc
                self._tally(cycles, attempts)
                return i, cycles, "fault"
            if self.owner and self.violates(pa + (ipa & ((1 << shift) - 1))):
                self.ctr["isolation.violations"] += 1
            self.ctr["accesses"] += 1
            self.ctr[("reads", "writes", "fetches")[kind]] += 1
            self.ctr[f"xlate.l{perm >> 4}"] += 1
            cycles += cyc
            i += 1
            if cycles >= budget:
                break
        self._tally(cycles, attempts)
        return i, cycles, "done"

    def _tally(self, cycles: int, attempts: int) -> None:
        """cycles.access: all the accesses' cycles; cycles.translation: their TLB lookups,
        walks and walk-cache hits, i.e. without the issue cost of each access tried."""
        self.ctr["cycles.access"] += cycles
        self.ctr["cycles.translation"] += cycles - attempts * self.costs["access"]
