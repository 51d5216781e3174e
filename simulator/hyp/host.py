"""pKVM's host side (arch/arm64/kvm/hyp/nvhe/mem_protect.c): physical memory and its
ownership record, the hyp pools, and the host stage-2 that identity-maps the host lazily.

Nothing here knows about time: the engine calls these operations from its SimPy processes
and charges their cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.hyp.page_alloc import HypPool, host_s2_pgtable_pages, pgtable_max_pages
from simulator.hyp.pools import PoolMemory
from simulator.mmu import pgtable as P
from simulator.mmu.pgtable import OpReport, Stage2

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

# PKVM_HOST_MEM_PROT / PKVM_HOST_MMIO_PROT
HOST_MEM_PROT = D.PROT_RWX
HOST_MMIO_PROT = D.PROT_RW | D.PROT_DEVICE


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

    def host_may_access(self, pages: np.ndarray) -> np.ndarray:
        """Pages the host owns, shared or not."""
        o = self.owner[pages]
        return (o == OWNER_HOST) | ((o & SHARED) != 0) & (o != OWNER_NONE)

    def give_back(self, pa: int, size: int) -> None:
        """Pages reclaimed by the host are the host's (and donatable) again."""
        a = self.page(pa)
        self.owner[a:a + (size >> self.page_shift)] = OWNER_HOST

    def to_pa(self, offsets: np.ndarray, space: str = "memory") -> np.ndarray:
        """Host workload addresses (offsets into the memory regions, or the MMIO regions, in
        address order, wrapping) to physical addresses."""
        order = self.memory if space == "memory" else self.mmio
        sizes = np.array([r.size for r in order], dtype=np.uint64)
        ends = np.cumsum(sizes)
        bases = np.array([r.base for r in order], dtype=np.uint64)
        starts = ends - sizes
        offsets = offsets % ends[-1]
        k = np.searchsorted(ends, offsets, side="right")
        return bases[k] + (offsets - starts[k])


@dataclass
class IdmapResult:
    ret: int  # 0, -EAGAIN (already mapped), -EPERM (owned by someone else), -ENOMEM
    start: int = 0
    size: int = 0
    reports: list[OpReport] = field(default_factory=list)
    recycled: bool = False  # host_stage2_unmap_dev_all() ran


class HostStage2:
    """The host stage-2 (VMID 0): an identity map filled lazily by host aborts, its table
    pages from the host_s2 pool(s), owner annotations for donated pages."""

    def __init__(self, phys: HostPhys, geom: Geometry, *, coalesce: bool, pools: str,
                 layout: str, on_bug: str, fwb: bool, tlbi_range: bool):
        self.phys = phys
        self.geom = geom
        self.coalesce = coalesce
        regions = [(r.base, r.size) for r in phys.memory]
        ps = geom.page_shift
        if pools == "unified":
            # seed 002: one pool with the memory budget and the 1 GiB MMIO allowance
            npages = host_s2_pgtable_pages(regions, ps)
            base = phys.carve_top(npages)
            self.mem_pool = HypPool(base, npages, ps, layout=layout,
                                    on_bug="count" if on_bug == "count" else "raise")
            self.dev_pool = self.mem_pool
            pool_list = [self.mem_pool]
        else:
            # before seed 002: host_s2_mem covers memory, host_s2_dev about 1 GiB of MMIO
            n_dev = pgtable_max_pages((1 << 30) >> ps, ps, levels=5)
            n_mem = host_s2_pgtable_pages(regions, ps) - n_dev
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
        self.enomem = 0
        self.recycles = 0
        self.mmio_at_first_enomem = -1
        self.mmio_pages = 0  # bytes of MMIO currently mapped, in pages

    # -- host_stage2_idmap() -------------------------------------------------------------
    def adjust_range(self, addr: int, level: int, region: Region) -> tuple[int, int]:
        """host_stage2_adjust_range(): grow the window level by level from the level of the
        empty entry until a block-capable level's window fits in the region."""
        g = self.geom
        while True:
            size = g.size(level)
            start = addr & ~(size - 1)
            end = start + size
            level += 1
            if level > 3:
                break
            block_ok = level >= g.min_block_level
            if block_ok and start >= region.base and end <= region.end:
                break
        return start, end - start

    def idmap(self, addr: int) -> IdmapResult:
        """The host abort handler's page-table work for a fault at ``addr``."""
        region = self.phys.region_of(addr)
        if region is None:
            return IdmapResult(-P.EPERM)
        pte, level = self.s2.get_leaf(addr)
        if pte & int(D.VALID):
            return IdmapResult(-P.EAGAIN)
        if pte:
            return IdmapResult(-P.EPERM)
        start, size = self.adjust_range(addr, level, region)
        is_mem = region.type == "memory"
        prot = HOST_MEM_PROT if is_mem else HOST_MMIO_PROT
        res = IdmapResult(0, start, size)
        pool = self.mem_pool if is_mem else self.dev_pool
        self.ptmem.use(pool)
        rep = self.s2.map(start, size, start, prot)
        res.reports.append(rep)
        if rep.ret == -P.ENOMEM:
            # host_stage2_try(): recycle the MMIO mappings' pages and retry once
            self.enomem += 1
            if self.mmio_at_first_enomem < 0:
                self.mmio_at_first_enomem = self.mmio_pages
            res.reports += self.unmap_dev_all()
            res.recycled = True
            self.ptmem.use(pool)
            rep = self.s2.map(start, size, start, prot)
            res.reports.append(rep)
        res.ret = rep.ret
        if rep.ret == 0 and not is_mem:
            self.mmio_pages += size >> self.geom.page_shift
        return res

    def unmap_dev_all(self) -> list[OpReport]:
        """host_stage2_unmap_dev_all(): unmap everything that is not memory."""
        self.recycles += 1
        reps = []
        prev = 0
        for r in self.phys.memory + [Region(1 << self.geom.ipa_bits, 0, "memory")]:
            if r.base > prev:
                reps.append(self.s2.unmap(prev, r.base - prev))
            prev = max(prev, r.end)
        self.mmio_pages = 0
        return reps

    # -- ownership -----------------------------------------------------------------------
    def set_owner(self, pa: int, size: int, owner: int) -> OpReport:
        """host_stage2_set_owner_locked(): owner-annotated invalid entries (owner 0: a zero
        descriptor, refaulted lazily); with seed 000's coalescing when giving back to the
        host."""
        self.ptmem.use(self.mem_pool)
        annot = 0 if owner == OWNER_HOST else min(owner, 2)  # host 0, hyp 1, guests 2
        return self.s2.set_owner(pa, size, annot,
                                 coalesce=self.coalesce and owner == OWNER_HOST)

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
