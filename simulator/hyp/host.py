"""pKVM's host side (arch/arm64/kvm/hyp/nvhe/mem_protect.c): physical memory and its
ownership record, the hyp pools, and the host stage-2 that identity-maps the host lazily.

Nothing here knows about time: the engine calls these operations from its SimPy processes
and charges their cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator._jit import jit
from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.hyp.hyp_pool import HypPool
from simulator.hyp.page_alloc import host_s2_pgtable_pages, pgtable_max_pages
from simulator.hyp.pgtable import (
    EAGAIN,
    ENOMEM,
    EPERM,
    OP_GET_LEAF,
    OP_MAP,
    OP_UNMAP,
    R_LEAF_LEVEL,
    R_LEAF_PTE,
    R_RET,
    OpReport,
    Stage2,
    _gshift,
    pgtable_walk,
    tables_needed,
)
from simulator.hyp.pools import PoolMemory, memcache_settle, memcache_topup

U = np.uint64
# int64 (not literal) arguments: a literal int would compile the callee once more per value
I0 = np.int64(0)

OWNER_HOST = 0
OWNER_HYP = 1
OWNER_NONE = 255  # not memory nor MMIO: a hole in the physical map
# The ownership record marks a page the host shares with a guest (host_share_guest) as
# SHARED | borrower: the host keeps it (and may access it), the borrower may access it too.
SHARED = 0x80
MAX_OWNER = SHARED - 1

# pKVM page states in a leaf's software bits (the ``sw`` field, bits 58:55)
STATE_SHARED_OWNED = 1     # SW0: the owner's view of a page it shares
STATE_SHARED_BORROWED = 2  # SW1: the borrower's view

# PKVM_HOST_MEM_PROT / PKVM_HOST_MMIO_PROT: RWX, and RW (5.13's host_stage2_idmap() maps
# non-memory with KVM_PGTABLE_PROT_RW, 6.1 on with PKVM_HOST_MMIO_PROT = KVM_PGTABLE_PROT_RW):
# Normal attributes and XN, not Device (the host's stage-1 decides the memory type)
HOST_MEM_PROT = D.PROT_RWX
HOST_MMIO_PROT = D.PROT_RW


@dataclass
class Region:
    base: int
    size: int
    type: str  # "memory" or "mmio"

    @property
    def end(self) -> int:
        return self.base + self.size


class HostPhys:
    """Physical memory: regions and an owner id per page (the ownership record the isolation
    check reads; memory the host owns is what it can donate)."""

    def __init__(self, regions: list[Region], page_shift: int):
        self.regions = sorted(regions, key=lambda r: r.base)
        self.page_shift = page_shift
        self.memory = [r for r in self.regions if r.type == "memory"]
        self.mmio = [r for r in self.regions if r.type == "mmio"]
        # the record covers the span of memory (only memory changes hands); MMIO is the host's
        self.lo = min(r.base for r in self.memory)
        self.hi = max(r.end for r in self.memory)
        n = (self.hi - self.lo) >> page_shift
        self.owner = np.full(n, OWNER_NONE, dtype=np.uint8)
        for r in self.regions:
            a = max(self.page(r.base), 0)
            b = min(self.page(r.end), n)
            if a < b:
                self.owner[a:b] = OWNER_HOST
        # chunks picked for a donation whose ownership change has not happened yet
        self.reserved: dict[int, int] = {}
        # place(): per address space, each region's start and end as an offset into the
        # space, and its physical base
        self._spaces = {}
        for space, order in (("memory", self.memory), ("mmio", self.mmio)):
            sizes = np.array([r.size for r in order], dtype=np.uint64)
            ends = np.cumsum(sizes)
            bases = np.array([r.base for r in order], dtype=np.uint64)
            self._spaces[space] = (ends - sizes, ends, bases)

    def page(self, pa: int) -> int:
        return (pa - self.lo) >> self.page_shift

    def region_of(self, pa: int) -> Region | None:
        for r in self.regions:
            if r.base <= pa < r.end:
                return r
        return None

    def memory_bytes(self) -> int:
        return sum(r.size for r in self.memory)

    def carve_top(self, pages: int, align_pages: int = 1) -> int:
        """Take ``pages`` pages from the top of the largest memory region (the hypervisor's
        carve-out at boot); returns their base physical address."""
        r = max(self.memory, key=lambda m: (m.size, m.base))
        top = getattr(self, "_carve_top", {}).get(r.base, r.end)
        size = pages << self.page_shift
        base = (top - size) & ~((align_pages << self.page_shift) - 1)
        a = self.page(base)
        if base < r.base or not (self.owner[a:a + pages] == OWNER_HOST).all():
            raise ValueError("not enough memory for the hypervisor's pools")
        self.owner[a:a + pages] = OWNER_HYP
        self._carve_top = {**getattr(self, "_carve_top", {}), r.base: base}
        return base

    def keep_top(self, pages: int) -> int:
        """Set ``pages`` host pages aside below the carve-outs of the largest memory region:
        the host's own (never donated; its stage-1 tables). Returns their base."""
        r = max(self.memory, key=lambda m: (m.size, m.base))
        top = getattr(self, "_carve_top", {}).get(r.base, r.end)
        base = top - (pages << self.page_shift)
        a = self.page(base)
        if base < r.base or not (self.owner[a:a + pages] == OWNER_HOST).all():
            raise ValueError("not enough memory for the host's stage-1 tables")
        self.reserved[a] = pages
        self._carve_top = {**getattr(self, "_carve_top", {}), r.base: base}
        return base

    def alloc_chunks(self, count: int, chunk: int) -> list[int] | None:
        """First fit: ``count`` chunk-aligned runs of ``chunk`` bytes of donatable memory,
        lowest addresses first (None if memory is short)."""
        per = chunk >> self.page_shift
        out: list[int] = []
        for r in self.memory:
            first = (r.base + chunk - 1) & ~(chunk - 1)
            nchunks = (r.end - first) // chunk
            if nchunks <= 0:
                continue
            a = self.page(first)
            # donatable: memory the host owns (carve-outs are the hypervisor's), not reserved
            free = self.owner[a:a + nchunks * per] == OWNER_HOST
            for ra, rn in self.reserved.items():
                lo, hi = max(ra - a, 0), min(ra + rn - a, len(free))
                if lo < hi:
                    free[lo:hi] = False
            ok = free.reshape(nchunks, per).all(axis=1)
            for k in np.nonzero(ok)[0][: count - len(out)]:
                out.append(first + int(k) * chunk)
            if len(out) == count:
                break
        if len(out) < count:
            return None
        for pa in out:  # reserved until the donation writes the new owner
            self.reserved[self.page(pa)] = per
        return out

    def unreserve(self, pa: int) -> None:
        """A chunk found by :meth:`alloc_chunks` that is not donated after all."""
        self.reserved.pop(self.page(pa), None)

    def set_owner(self, pa: int, size: int, owner: int) -> None:
        a = self.page(pa)
        self.owner[a:a + (size >> self.page_shift)] = owner
        self.reserved.pop(a, None)

    def share(self, pa: int, size: int, borrower: int) -> None:
        """The host shares its pages with ``borrower`` (it keeps ownership)."""
        a = self.page(pa)
        self.owner[a:a + (size >> self.page_shift)] = SHARED | borrower
        self.reserved.pop(a, None)

    def give_back(self, pa: int, size: int) -> None:
        """Pages reclaimed by the host are the host's (and donatable) again."""
        a = self.page(pa)
        self.owner[a:a + (size >> self.page_shift)] = OWNER_HOST

    def place(self, addrs: np.ndarray, kinds: np.ndarray, space: str,
              respect_ownership: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """Host workload addresses (offsets into the memory regions, or the MMIO regions, in
        address order, wrapping) to physical addresses; with ``respect_ownership`` the
        accesses to memory the host neither owns nor shares are dropped. Returns the
        addresses, their kinds and how many were dropped."""
        starts, ends, bases = self._spaces[space]
        out_a = np.empty(len(addrs), dtype=np.uint64)
        out_k = np.empty(len(kinds), dtype=np.uint8)
        n = int(host_place(addrs, kinds, starts, ends, bases, self.owner, U(self.lo),
                           U(self.hi), U(self.page_shift), respect_ownership, out_a, out_k))
        return out_a[:n], out_k[:n], len(addrs) - n


@jit
def _first_above(keys, x):
    """The index of the first of the sorted ``keys`` above ``x`` (a binary search)."""
    a = 0
    b = keys.shape[0]
    while a < b:
        mid = (a + b) >> 1
        if keys[mid] <= x:
            a = mid + 1
        else:
            b = mid
    return a


@jit
def host_place(addrs, kinds, starts, ends, bases, owner, lo, hi, shift, respect, out_a, out_k):
    """HostPhys.place(): each offset to the region it falls in (a binary search of ``ends``),
    kept unless ``respect`` and the page is memory the host neither owns nor shares. Writes
    the kept accesses to ``out_a``/``out_k``; returns how many."""
    total = ends[ends.shape[0] - 1]
    n = 0
    for i in range(addrs.shape[0]):
        o = addrs[i] % total
        a = _first_above(ends, o)  # the region whose end is above o
        pa = bases[a] + (o - starts[a])
        if respect and lo <= pa < hi:
            w = owner[np.int64((pa - lo) >> shift)]
            if not (w == OWNER_HOST or ((w & SHARED) != 0 and w != OWNER_NONE)):
                continue
        out_a[n] = pa
        out_k[n] = kinds[i]
        n += 1
    return n


@dataclass
class IdmapResult:
    ret: int  # 0, -EAGAIN (already mapped), -EPERM (owned by someone else), -ENOMEM
    start: int = 0
    size: int = 0
    reports: list[OpReport] = field(default_factory=list)
    recycled: bool = False  # host_stage2_unmap_dev_all() ran


# ---- the host abort's work area: one int64 array per host stage-2 -----------------------
# the stage-2 (constant)
(HW_TBASE, HW_PAGE_SHIFT, HW_ROOT, HW_START_LEVEL, HW_IA_BITS, HW_FLAGS, HW_RULE,
 HW_MIN_BLOCK, HW_MEM_ATTR, HW_DEV_ATTR, HW_MEM_POOL, HW_DEV_POOL,
 # one abort: its address, where it is, the window it maps, its result
 HW_PHASE, HW_ADDR, HW_START, HW_SIZE, HW_MEMORY, HW_GAP, HW_PREV, HW_RET, HW_RECYCLED,
 HW_BUG,
 # counters over the run
 HW_ENOMEM, HW_RECYCLES, HW_MMIO_FIRST, HW_MMIO_PAGES,
 # which aborts recycle MMIO on -ENOMEM (TRY_*)
 HW_TRY) = range(27)
N_HW = 27
# host_stage2_try()'s scope by kernel: 5.13 recycles MMIO only for an MMIO abort (a memory
# abort's -ENOMEM is handle_host_mem_abort()'s BUG_ON); 5.14 (one pool, seed 002) for any
# abort; 5.15 on (the host_stage2_try() macro) also for ownership changes (set_owner)
TRY_MMIO, TRY_IDMAP, TRY_ALL = 0, 1, 2
TRY_SCOPES = {"mmio": TRY_MMIO, "idmap": TRY_IDMAP, "all": TRY_ALL}
# phases of host_idmap_step()
PH_START = 0  # find the region, look the entry up, map the window
PH_RECYCLE = 1  # -ENOMEM: host_stage2_unmap_dev_all(), one gap per step
PH_RETRY = 2  # map again once
PH_DONE = 3
# a region row: base, end, 1 for memory (0: MMIO)
RG_BASE, RG_END, RG_MEMORY = 0, 1, 2


@jit
def _host_walk(op, start, size, phys, attr, pool, reserve, hw, tables, refcnt, free, meta,
               stat, rep, tlog, stk, hy):
    """One operation on the host stage-2 as Stage2._walk() runs it: the memcache topped up
    from ``pool``, kvm_pgtable_walk() over the page-aligned range, the memcache settled. The
    report is left in ``rep``; returns 0 or the pool's BUG (see memcache_topup)."""
    ps = hw[HW_PAGE_SHIFT]
    m = (np.int64(1) << ps) - 1
    lo = start & ~m
    hi = (lo + size + m) & ~m
    bug = memcache_topup(free, meta, hy, pool, reserve)
    if bug != 0:
        return bug
    rep[:] = 0
    pgtable_walk(op, tables, refcnt, free, meta, hw[HW_TBASE], ps, hw[HW_ROOT],
                 hw[HW_START_LEVEL], hw[HW_IA_BITS], U(lo), U(hi), U(phys & ~m), U(attr), I0,
                 hw[HW_FLAGS], hw[HW_RULE], stat, rep, tlog, stk)
    return memcache_settle(free, meta, hy, I0)


@jit
def _host_map(hw, tables, refcnt, free, meta, stat, rep, tlog, stk, hy):
    """kvm_pgtable_stage2_map() of the abort's window, from the pool its region draws on."""
    start = hw[HW_START]
    size = hw[HW_SIZE]
    memory = hw[HW_MEMORY] != 0
    pool = hw[HW_MEM_POOL] if memory else hw[HW_DEV_POOL]
    attr = hw[HW_MEM_ATTR] if memory else hw[HW_DEV_ATTR]
    need = tables_needed(start, size, hw[HW_START_LEVEL], hw[HW_PAGE_SHIFT])
    bug = _host_walk(np.int64(OP_MAP), start, size, start, attr, pool, need, hw, tables, refcnt,
                     free, meta, stat, rep, tlog, stk, hy)
    if bug != 0:
        hw[HW_BUG] = bug
        hw[HW_PHASE] = PH_DONE
        return 0
    ret = rep[R_RET]
    if ret == -ENOMEM and hw[HW_PHASE] == PH_START and (memory == 0 or hw[HW_TRY] != TRY_MMIO):
        # host_stage2_try(): recycle the MMIO mappings' pages and retry once
        hw[HW_ENOMEM] += 1
        if hw[HW_MMIO_FIRST] < 0:
            hw[HW_MMIO_FIRST] = hw[HW_MMIO_PAGES]
        hw[HW_RECYCLES] += 1
        hw[HW_RECYCLED] = 1
        hw[HW_GAP] = 0
        hw[HW_PREV] = 0
        hw[HW_PHASE] = PH_RECYCLE
        return 1
    hw[HW_RET] = ret
    if ret == 0 and not memory:
        hw[HW_MMIO_PAGES] += size >> hw[HW_PAGE_SHIFT]
    hw[HW_PHASE] = PH_DONE
    return 1


@jit
def host_idmap_step(hw, hreg, tables, refcnt, free, meta, stat, rep, tlog, stk, hy):
    """One step of host_stage2_idmap() (mem_protect.c, Linux 6.12) for the abort at
    hw[HW_ADDR]: at most one page-table operation, whose report is left in ``rep`` (returns
    1; 0: no report). Set HW_ADDR and HW_PHASE = PH_START, then step until PH_DONE; the
    result is HW_RET (0, -EAGAIN: already mapped, -EPERM: not the host's), the window
    HW_START/HW_SIZE, a pool BUG in HW_BUG.

    * find the range of the address: its memory region, or the gap between memory regions
      around it (find_mem_range(): :func:`mem_ranges`); beyond the IPA space -EPERM;
    * kvm_pgtable_get_leaf(): a valid entry is -EAGAIN, a non-zero invalid one (an owner
      annotation) -EPERM;
    * host_stage2_adjust_range(): grow the window level by level from the empty entry's
      level until a block-capable level's window fits in the region;
    * map it (RWX memory, RW + XN device memory) from the region's pool; on -ENOMEM
      host_stage2_try() unmaps everything that is not memory (host_stage2_unmap_dev_all(),
      one gap per step) and maps once more.
    hreg: the regions (RG_* columns), in address order, disjoint.
    """
    phase = hw[HW_PHASE]
    ps = hw[HW_PAGE_SHIFT]
    if phase == PH_START:
        addr = hw[HW_ADDR]
        hw[HW_RET] = 0
        hw[HW_BUG] = 0
        hw[HW_RECYCLED] = 0
        hw[HW_START] = 0
        hw[HW_SIZE] = 0
        # find_mem_range(): the last region starting at or below addr (sorted, disjoint)
        k = _first_above(hreg[:, RG_BASE], addr) - 1
        if k < 0 or addr >= hreg[k, RG_END]:
            hw[HW_RET] = -EPERM
            hw[HW_PHASE] = PH_DONE
            return 0
        bug = _host_walk(np.int64(OP_GET_LEAF), addr, np.int64(1), I0, I0, hw[HW_MEM_POOL], I0,
                         hw, tables, refcnt, free, meta, stat, rep, tlog, stk, hy)
        if bug != 0:
            hw[HW_BUG] = bug
            hw[HW_PHASE] = PH_DONE
            return 0
        pte = rep[R_LEAF_PTE]
        level = rep[R_LEAF_LEVEL]
        if pte & 1:  # valid
            hw[HW_RET] = -EAGAIN
            hw[HW_PHASE] = PH_DONE
            return 0
        if pte != 0:
            hw[HW_RET] = -EPERM
            hw[HW_PHASE] = PH_DONE
            return 0
        # host_stage2_adjust_range()
        while True:
            size = np.int64(1) << _gshift(level, ps)
            start = addr & ~(size - 1)
            end = start + size
            level += 1
            if level > 3:
                break
            if (level >= hw[HW_MIN_BLOCK] and start >= hreg[k, RG_BASE]
                    and end <= hreg[k, RG_END]):
                break
        hw[HW_START] = start
        hw[HW_SIZE] = end - start
        hw[HW_MEMORY] = hreg[k, RG_MEMORY]
        return _host_map(hw, tables, refcnt, free, meta, stat, rep, tlog, stk, hy)
    if phase == PH_RECYCLE:
        # host_stage2_unmap_dev_all(): unmap each gap between memory regions, up to the end
        # of the address space
        n = hreg.shape[0]
        while hw[HW_GAP] <= n:
            i = hw[HW_GAP]
            hw[HW_GAP] = i + 1
            if i == n:
                base = np.int64(1) << hw[HW_IA_BITS]
                end = base
            elif hreg[i, RG_MEMORY] == 0:
                continue
            else:
                base = hreg[i, RG_BASE]
                end = hreg[i, RG_END]
            prev = hw[HW_PREV]
            hw[HW_PREV] = max(prev, end)
            if base > prev:
                bug = _host_walk(np.int64(OP_UNMAP), prev, base - prev, I0, I0,
                                 hw[HW_MEM_POOL], I0, hw, tables, refcnt, free, meta, stat, rep,
                                 tlog, stk, hy)
                if bug != 0:
                    hw[HW_BUG] = bug
                    hw[HW_PHASE] = PH_DONE
                    return 0
                return 1
        hw[HW_MMIO_PAGES] = 0
        hw[HW_PHASE] = PH_RETRY
        return _host_map(hw, tables, refcnt, free, meta, stat, rep, tlog, stk, hy)
    return 0

def mem_ranges(phys: HostPhys, ia_bits: int) -> np.ndarray:
    """The ranges host_stage2_idmap() maps within (RG_* rows, address order): each memory
    region, and every gap between them, from 0 to the end of the IPA space, as MMIO.
    find_mem_range() (mem_protect.c, 5.13 to 6.12) knows only the memblock memory: an address
    in no memory region gets the gap around it (``range->start`` = the end of the region
    below or 0, ``range->end`` = the base of the one above or ULONG_MAX), so configured MMIO
    regions and windows say where the host's accesses go, not what a mapping may cover."""
    rows = []
    prev = 0
    for r in phys.memory:
        if r.base > prev:
            rows.append((prev, r.base, 0))
        rows.append((r.base, r.end, 1))
        prev = r.end
    top = 1 << ia_bits
    if top > prev:
        rows.append((prev, top, 0))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


class HostStage2:
    """The host stage-2 (VMID 0): an identity map filled lazily by host aborts, its table
    pages from the host_s2 pool(s), owner annotations for donated pages."""

    def __init__(self, phys: HostPhys, geom: Geometry, *, coalesce: bool, pools: str,
                 layout: str, on_bug: str, fwb: bool, tlbi_range: bool, budget_levels: int = 5,
                 try_scope: str = "all"):
        self.phys = phys
        self.geom = geom
        self.coalesce = coalesce
        regions = [(r.base, r.size) for r in phys.memory]
        ps = geom.page_shift
        if pools == "unified":
            # seed 002: one pool with the memory budget and the 1 GiB MMIO allowance
            npages = host_s2_pgtable_pages(regions, ps, budget_levels)
            base = phys.carve_top(npages)
            self.mem_pool = HypPool(base, npages, ps, layout=layout,
                                    on_bug="count" if on_bug == "count" else "raise")
            self.dev_pool = self.mem_pool
            pool_list = [self.mem_pool]
        else:
            # before seed 002: host_s2_mem covers memory, host_s2_dev about 1 GiB of MMIO
            n_dev = pgtable_max_pages((1 << 30) >> ps, ps, levels=budget_levels)
            n_mem = host_s2_pgtable_pages(regions, ps, budget_levels) - n_dev
            base = phys.carve_top(n_mem + n_dev)
            kw = dict(layout=layout, on_bug="count" if on_bug == "count" else "raise")
            # the small MMIO pool first: page-table rows are linear in physical address, and
            # both pools hand out their low pages first, so rows stay few
            self.dev_pool = HypPool(base, n_dev, ps, **kw)
            self.mem_pool = HypPool(base + (n_dev << ps), n_mem, ps, **kw)
            pool_list = [self.dev_pool, self.mem_pool]
        self.ptmem = PoolMemory(pool_list)
        rule = D.COUNT_HOST_COALESCE if coalesce else D.COUNT_NONZERO
        # the host's mm_ops have no cache-maintenance callbacks
        self.s2 = Stage2(self.ptmem, geom, vmid=0, rule=rule, fwb=fwb, tlbi_range=tlbi_range,
                         cmo=False)
        # the compiled abort handler's work area and the regions it looks addresses up in
        hw = np.zeros(N_HW, dtype=np.int64)
        hw[[HW_TBASE, HW_PAGE_SHIFT, HW_ROOT, HW_START_LEVEL, HW_IA_BITS, HW_FLAGS, HW_RULE,
            HW_MIN_BLOCK]] = (self.ptmem.base_pa, ps, self.s2.root, geom.start_level,
                              geom.ipa_bits, self.s2.base_flags, rule, geom.min_block_level)
        hw[HW_MEM_ATTR] = D.prot_attr(HOST_MEM_PROT)
        hw[HW_DEV_ATTR] = D.prot_attr(HOST_MMIO_PROT)
        hw[HW_MEM_POOL] = self.ptmem.index(self.mem_pool)
        hw[HW_DEV_POOL] = self.ptmem.index(self.dev_pool)
        hw[HW_MMIO_FIRST] = -1
        hw[HW_TRY] = TRY_SCOPES[try_scope]
        self.hw = hw
        self.recycle_reports: list[OpReport] = []
        self.hreg = mem_ranges(phys, geom.ipa_bits)

    # -- host_stage2_idmap() -------------------------------------------------------------
    def idmap(self, addr: int) -> IdmapResult:
        """The host abort handler's page-table work for a fault at ``addr`` (the compiled
        :func:`host_idmap_step`, stepped from Python: the engine runs the same steps)."""
        hw = self.hw
        hw[HW_ADDR] = addr
        hw[HW_PHASE] = PH_START
        mem = self.ptmem
        s2 = self.s2
        reports = []
        while hw[HW_PHASE] != PH_DONE:
            if host_idmap_step(hw, self.hreg, mem.tables, mem.refcnt, mem.free, mem.meta,
                               s2.stat, s2._rep, s2._tlog, s2._stk, mem.hy):
                reports.append(OpReport.from_arrays(s2._rep, s2._tlog))
        mem.bug(int(hw[HW_BUG]))
        return IdmapResult(int(hw[HW_RET]), int(hw[HW_START]), int(hw[HW_SIZE]), reports,
                           bool(hw[HW_RECYCLED]))

    @property
    def enomem(self) -> int:
        """Host aborts whose map met -ENOMEM (host_stage2_try() recycled MMIO)."""
        return int(self.hw[HW_ENOMEM])

    @property
    def recycles(self) -> int:
        """host_stage2_unmap_dev_all() calls."""
        return int(self.hw[HW_RECYCLES])

    @property
    def mmio_at_first_enomem(self) -> int:
        """Pages of MMIO mapped when the first -ENOMEM came (-1: none came)."""
        return int(self.hw[HW_MMIO_FIRST])

    @property
    def mmio_pages(self) -> int:
        """Pages of MMIO mapped now."""
        return int(self.hw[HW_MMIO_PAGES])

    # -- ownership -----------------------------------------------------------------------
    def set_owner(self, pa: int, size: int, owner: int) -> OpReport:
        """host_stage2_set_owner_locked(): owner-annotated invalid entries (owner 0: a zero
        descriptor, refaulted lazily); with seed 000's coalescing when giving back to the
        host. With ``try_scope`` "all" (5.15 on) an -ENOMEM goes through host_stage2_try():
        every MMIO mapping is unmapped (:meth:`unmap_dev_all`, its reports in
        ``self.recycle_reports``) and the change is tried once more."""
        self.recycle_reports: list[OpReport] = []
        self.ptmem.use(self.mem_pool)
        annot = 0 if owner == OWNER_HOST else min(owner, 2)  # host 0, hyp 1, guests 2
        coalesce = self.coalesce and owner == OWNER_HOST
        rep = self.s2.set_owner(pa, size, annot, coalesce=coalesce)
        if rep.ret == -ENOMEM and self.hw[HW_TRY] == TRY_ALL:
            self.hw[HW_ENOMEM] += 1
            if self.hw[HW_MMIO_FIRST] < 0:
                self.hw[HW_MMIO_FIRST] = self.hw[HW_MMIO_PAGES]
            self.recycle_reports = self.unmap_dev_all()
            self.ptmem.use(self.mem_pool)
            rep = self.s2.set_owner(pa, size, annot, coalesce=coalesce)
        return rep

    def unmap_dev_all(self) -> list[OpReport]:
        """host_stage2_unmap_dev_all(): unmap every gap between memory regions (all MMIO)."""
        self.hw[HW_RECYCLES] += 1
        self.hw[HW_MMIO_PAGES] = 0
        reps = []
        for base, end, is_mem in self.hreg.tolist():
            if not is_mem:
                self.ptmem.use(self.mem_pool)
                reps.append(self.s2.unmap(base, end - base))
        return reps

    def share_guest(self, pa: int, size: int) -> OpReport:
        """__pkvm_host_share_guest(), host side: the pages stay the host's, mapped with the
        SHARED_OWNED state in their software bits. A non-default prot makes
        host_stage2_force_pte() map them page by page, and with seed 000's counting rule each
        such leaf holds a reference on its table, so the region cannot coalesce."""
        self.ptmem.use(self.mem_pool)
        return self.s2.map(pa, size, pa, HOST_MEM_PROT, sw=STATE_SHARED_OWNED, force_pte=True)

    def unshare_guest(self, pa: int, size: int) -> OpReport:
        """__pkvm_host_unshare_guest(), host side: back to the OWNED state, i.e. a default
        leaf. The kernel does it page by page (one hypercall each), so the pages are mapped
        as pages; default leaves are not counted, but a map is not the set_owner path, so
        seed 000 does not zap the table here."""
        self.ptmem.use(self.mem_pool)
        return self.s2.map(pa, size, pa, HOST_MEM_PROT, force_pte=True)

    def mappings(self) -> dict[int, int]:
        return self.s2.leaf_counts()
