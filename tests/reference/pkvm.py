"""pkvm mode: the host under its own stage-2, guests donated and reclaimed, on shared CPUs.

The machine has ``host.cpus`` physical CPUs. Host CPU *i* runs the host workload on CPU *i*
through the host stage-2 (VMID 0, an identity map filled lazily by host aborts); each guest
is created at its start time (its memory donated by the host, chunk by chunk: the host
stage-2 entries become owner annotations, splitting any block), runs its vCPUs on the CPUs
(sharing their TLBs with the host), and is torn down after its run: its stage-2 destroyed
(table pages back to the hyp pool, its VMID invalidated on every CPU) and every page
reclaimed by the host (a zero descriptor; with seed 000's coalescing, tables left with only
default entries are zapped so the next host abort maps a block). Every completed access is
checked against the ownership record (``isolation.violations`` must stay 0).
"""

from __future__ import annotations

import numpy as np
import simpy

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.config import ExperimentConfig, seconds, to_cycles
from simulator.hyp import pgtable as P
from simulator.hyp.host import (
    HOST_MEM_PROT,
    HOST_MMIO_PROT,
    OWNER_HOST,
    OWNER_HYP,
    OWNER_NONE,
    SHARED,
    HostPhys,
    HostStage2,
    IdmapResult,
    Region,
)
from simulator.hyp.hyp_pool import HypBugError, HypPool
from simulator.hyp.budgets import hyp_reserve
from simulator.hyp.page_alloc import host_s2_pgtable_pages, vmemmap_bytes_per_gib
from simulator.hyp.pools import PoolMemory
from simulator.mmu.walk import W_PERMISSION
from tests.reference.engine import (
    FIRST_GUEST_OWNER,
    VM,
    Context,
    Counters,
    CpuSlot,
    GuestVM,
    Lock,
    Machine,
    SimulationError,
    acquire,
    cpu_event,
)


class RefIdmap:
    """host_stage2_idmap() written plainly in Python over the host's Stage2 (the engine runs
    the compiled :func:`simulator.hyp.host.host_idmap_step`)."""

    def __init__(self, hs2: HostStage2):
        self.hs2 = hs2
        self.enomem = 0
        self.recycles = 0
        self.mmio_at_first_enomem = -1
        self.mmio_pages = 0

    def adjust_range(self, addr: int, level: int, region: Region) -> tuple[int, int]:
        g = self.hs2.geom
        while True:
            size = g.size(level)
            start = addr & ~(size - 1)
            end = start + size
            level += 1
            if level > 3:
                break
            if level >= g.min_block_level and start >= region.base and end <= region.end:
                break
        return start, end - start

    def find_mem_range(self, addr: int) -> Region:
        """find_mem_range() (mem_protect.c), line by line: a binary search of the memory
        regions; outside them, the gap between the neighbours (0 .. ULONG_MAX at the ends).
        The gap comes back as an "mmio" Region."""
        mem = self.hs2.phys.memory
        left, right = 0, len(mem)
        start, end = 0, (1 << 64) - 1
        while left < right:
            cur = (left + right) >> 1
            reg = mem[cur]
            if addr < reg.base:
                right = cur
                end = reg.base
            elif addr >= reg.end:
                left = cur + 1
                start = reg.end
            else:
                return reg
        return Region(start, end - start, "mmio")

    def __call__(self, addr: int) -> IdmapResult:
        hs2 = self.hs2
        if addr >= 1 << hs2.geom.ipa_bits:
            return IdmapResult(-P.EPERM)
        region = self.find_mem_range(addr)
        pte, level = hs2.s2.get_leaf(addr)
        if pte & int(D.VALID):
            return IdmapResult(-P.EAGAIN)
        if pte:
            return IdmapResult(-P.EPERM)
        start, size = self.adjust_range(addr, level, region)
        is_mem = region.type == "memory"
        prot = HOST_MEM_PROT if is_mem else HOST_MMIO_PROT
        res = IdmapResult(0, start, size)
        pool = hs2.mem_pool if is_mem else hs2.dev_pool
        hs2.ptmem.use(pool)
        rep = hs2.s2.map(start, size, start, prot)
        res.reports.append(rep)
        if rep.ret == -P.ENOMEM:
            self.enomem += 1
            if self.mmio_at_first_enomem < 0:
                self.mmio_at_first_enomem = self.mmio_pages
            res.reports += self.unmap_dev_all()
            res.recycled = True
            hs2.ptmem.use(pool)
            rep = hs2.s2.map(start, size, start, prot)
            res.reports.append(rep)
        res.ret = rep.ret
        if rep.ret == 0 and not is_mem:
            self.mmio_pages += size >> hs2.geom.page_shift
        return res

    def unmap_dev_all(self) -> list:
        hs2 = self.hs2
        self.recycles += 1
        reps = []
        prev = 0
        for r in hs2.phys.memory + [Region(1 << hs2.geom.ipa_bits, 0, "memory")]:
            if r.base > prev:
                reps.append(hs2.s2.unmap(prev, r.base - prev))
            prev = max(prev, r.end)
        self.mmio_pages = 0
        return reps


class HostVM(VM):
    """The host as a VM of its own: the host stage-2 and handle_host_mem_abort()."""

    def __init__(self, machine: "PkvmMachine", hs2: HostStage2, phys: HostPhys):
        self.machine = machine
        self.vmid = 0
        self.owner_id = OWNER_HOST
        self.prefix = "host."
        self.hs2 = hs2
        self.idmap = RefIdmap(hs2)
        self.s2 = hs2.s2
        self.phys = phys
        self.geom = hs2.geom
        self.lock = Lock(machine.env, exclusive=True)  # host_mmu.lock: a spinlock
        self.ctr = Counters()

    def placement(self, addrs: np.ndarray, kinds: np.ndarray, ctx: Context):
        """Host workload addresses are offsets into host memory (then MMIO); the host kernel
        touches only what it owns unless host.respect_ownership is false."""
        phys = self.phys
        order = phys.memory if self.machine.cfg.host.address_space == "memory" else phys.mmio
        sizes = np.array([r.size for r in order], dtype=np.uint64)
        ends = np.cumsum(sizes)
        bases = np.array([r.base for r in order], dtype=np.uint64)
        offsets = addrs % ends[-1]
        k = np.searchsorted(ends, offsets, side="right")
        pa = bases[k] + (offsets - (ends - sizes)[k])
        if not self.machine.cfg.host.respect_ownership:
            return pa, kinds
        pages = ((pa - np.uint64(phys.lo)) >> np.uint64(self.geom.page_shift)).astype(np.int64)
        inside = (pa >= np.uint64(phys.lo)) & (pa < np.uint64(phys.hi))
        o = phys.owner[np.where(inside, pages, 0)]
        may = (o == OWNER_HOST) | ((o & SHARED) != 0) & (o != OWNER_NONE)  # shared or owned
        keep = ~inside | may
        dropped = int(len(keep) - np.count_nonzero(keep))
        if dropped:
            ctx.ctr.add("skipped_accesses", dropped)
            return np.ascontiguousarray(pa[keep]), np.ascontiguousarray(kinds[keep])
        return pa, kinds

    def handle_fault(self, ctx: Context, status: int, addr: int, kind: int):
        m = self.machine
        env = m.env
        costs = m.cfg.costs
        t0 = env.now
        yield cpu_event(env, costs.fault_entry_exit // 2 + costs.host_abort_handler)
        yield from acquire(self.lock, ctx.ctr, env, cpu=True, handoff=costs.lock_handoff)
        ctx.ctr.add("aborts")
        op_cycles = 0
        if status == W_PERMISSION:
            ctx.ctr.add("illegal_accesses")  # e.g. a fetch from MMIO (XN)
            ctx.skip = True
        else:
            try:
                res = self.idmap(addr)
            except HypBugError as e:
                raise SimulationError("hyp.vmemmap_layout", str(e)) from None
            if res.ret == -P.EPERM:
                ctx.ctr.add("illegal_accesses")
                ctx.skip = True
            elif res.ret == -P.EAGAIN:
                ctx.ctr.add("faults.spurious")
            elif res.ret == -P.ENOMEM:
                raise SimulationError("host", f"host stage-2 out of memory at {addr:#x} even "
                                      "after recycling MMIO mappings (the kernel BUGs)")
            for rep in res.reports:
                op_cycles += m.op_costs.cycles(rep)
                m.apply_tlbis(0, self.geom.page_shift, rep)
                m.account_op(ctx.ctr, rep)
        yield from m.end_fault(ctx, self.lock, t0, op_cycles)


class PkvmMachine(Machine):
    """The pkvm-mode machine: host CPUs, the host stage-2, guests coming and going."""

    def build(self) -> None:
        cfg = self.cfg
        g = cfg.geometry
        ps = g.page_shift
        regions = [Region(r.base, r.size, r.type) for r in cfg.host.memory]
        w = cfg.host.mmio_windows
        if w is not None:
            regions += [Region(w.base + i * w.stride, w.size, "mmio") for i in range(w.count)]
        self.phys = HostPhys(regions, ps)
        self.host_geom = Geometry(ps, cfg.machine.pa_bits)
        layout = cfg.hyp.vmemmap_layout
        try:
            self.hs2 = HostStage2(self.phys, self.host_geom, coalesce=cfg.hyp.coalesce,
                                  pools=cfg.hyp.host_s2_pools, layout=layout,
                                  on_bug=cfg.hyp.on_bug, fwb=cfg.machine.fwb,
                                  tlbi_range=cfg.machine.tlbi_range,
                                  budget_levels=cfg.hyp.budget_levels,
                                  try_scope=cfg.hyp.host_s2_try)
            mem_regions = [(r.base, r.size) for r in self.phys.memory]
            npages = cfg.hyp.pool_pages or host_s2_pgtable_pages(mem_regions, ps,
                                                                 cfg.hyp.budget_levels)
            base = self.phys.carve_top(npages)
        except ValueError as e:
            raise SimulationError("host.memory", str(e)) from None
        self.hyp_pool = HypPool(base, npages, ps, layout=layout,
                                on_bug="count" if cfg.hyp.on_bug == "count" else "raise")
        self.guest_ptmem = PoolMemory([self.hyp_pool])
        self.ptmem = self.guest_ptmem
        # boot: the hypervisor's carve-outs become hyp-owned in the host stage-2
        for pool in [self.hs2.mem_pool, self.hs2.dev_pool, self.hyp_pool]:
            self.hs2.set_owner(pool.start_phys, pool.nr_pages << ps, OWNER_HYP)
        self.host = HostVM(self, self.hs2, self.phys)
        self.lock = self.host.lock
        for _ in range(cfg.host.cpus):
            # the host task and the guest vCPUs placed there take turns on the CPU
            self.new_cpu(g).slot = CpuSlot(self.env)
        if cfg.host.workload is not None:
            if cfg.host.address_space == "memory":
                mem = self.phys.memory_bytes()
            else:
                mem = sum(r.size for r in self.phys.mmio)
            streams = cfg.host.workload.build(cfg.host.cpus, cfg.seed, mem, cfg.engine.chunk)
            for i, stream in enumerate(streams):
                self.contexts.append(Context(i, self.host, stream, self.cpus[i], f"host.cpu{i}"))
            self.totals = [getattr(s, "total", None) for s in streams]
        for ctx in self.contexts:
            self._watch(ctx)
        self.guests: list[GuestVM] = []
        self.vmids_in_use: set[int] = set()
        self.series: dict[str, list] = {"t": []}
        for lvl in (1, 2, 3):
            self.series[f"host.mappings.l{lvl}"] = []

    def _watch(self, ctx: Context) -> None:
        """Give the context the ownership record for the isolation check."""
        ctx.mmu.owner = self.phys.owner
        ctx.mmu.owner_base = self.phys.lo
        ctx.mmu.owner_id = ctx.vm.owner_id

    # -- guests ----------------------------------------------------------------------------
    def alloc_vmid(self) -> int:
        vmid = 1
        while vmid in self.vmids_in_use:
            vmid += 1
        self.vmids_in_use.add(vmid)
        return vmid

    def ownership_op(self, ctx_ctr: Counters, pa: int, size: int, kind: str, who: int):
        """The ownership change under the host lock; returns (OpReport, cycles)."""
        hs2, phys = self.hs2, self.phys
        try:
            if kind == "donate":
                rep = hs2.set_owner(pa, size, who)
                phys.set_owner(pa, size, who)
            elif kind == "reclaim":
                rep = hs2.set_owner(pa, size, OWNER_HOST)
                phys.set_owner(pa, size, OWNER_HOST)
            elif kind == "share":
                rep = hs2.share_guest(pa, size)
                phys.share(pa, size, who)
            else:
                rep = hs2.unshare_guest(pa, size)
                phys.set_owner(pa, size, OWNER_HOST)
        except HypBugError as e:
            raise SimulationError("hyp.vmemmap_layout", str(e)) from None
        if rep.ret:
            raise SimulationError("hyp", f"{kind} of {pa:#x} failed ({rep.ret})")
        cycles = self.op_costs.cycles(rep) + self.cfg.costs.lock
        if kind in ("donate", "reclaim"):
            for r in hs2.recycle_reports:  # host_stage2_try()'s MMIO recycling
                self.apply_tlbis(0, self.host_geom.page_shift, r)
                self.account_op(ctx_ctr, r)
                cycles += self.op_costs.cycles(r)
        self.apply_tlbis(0, self.host_geom.page_shift, rep)
        self.account_op(ctx_ctr, rep)
        return rep, cycles

    def hypercall_op(self, ctx_ctr: Counters, pa: int, size: int, kind: str, who: int):
        """One ownership change of ``size`` bytes at ``pa`` under the host lock, a hypercall
        per page: ``donate`` (to ``who``), ``reclaim`` (back to the host), ``share`` (with
        guest ``who``, the host keeping it) or ``unshare``. A generator; returns the
        OpReport."""
        env = self.env
        # the hypercalls' entry and exit (one per page) run outside the host lock; the
        # ownership change itself runs under it
        pages = size >> self.host_geom.page_shift
        yield env.timeout(pages * self.cfg.costs.hypercall)
        yield from acquire(self.host.lock, ctx_ctr, env)
        rep, cycles = self.ownership_op(ctx_ctr, pa, size, kind, who)
        yield env.timeout(cycles)
        self.host.lock.release()
        return rep

    def donate_chunk(self, gvm: GuestVM, k: int, ctr: Counters, cpu: bool = False):
        """Back chunk ``k`` of the guest: donated, or shared by the host for the guest's
        shared part (``guests[].shared``). From a vCPU's fault (``cpu``), another vCPU may
        have backed the chunk meanwhile: then nothing changes hands."""
        got = self.phys.alloc_chunks(1, gvm.chunk)
        if got is None:
            raise SimulationError(f"guests.{gvm.name}.memory", "host memory exhausted")
        shared = gvm.is_shared(k * gvm.chunk)
        if cpu:
            env = self.env
            yield cpu_event(env, (gvm.chunk >> self.host_geom.page_shift)
                            * self.cfg.costs.hypercall)
            yield from acquire(self.host.lock, ctr, env, cpu=True,
                               handoff=self.cfg.costs.lock_handoff)
            if gvm.chunks[k] is not None:
                self.phys.unreserve(got[0])
                yield cpu_event(env, self.cfg.costs.lock)
                self.host.lock.release()
                return
            rep, cycles = self.ownership_op(ctr, got[0], gvm.chunk,
                                            "share" if shared else "donate", gvm.owner_id)
            gvm.chunks[k] = got[0]
            self.machine_ctr.add("share.pages" if shared else "donate.pages",
                                 gvm.chunk >> self.host_geom.page_shift)
            yield cpu_event(env, cycles)
            self.host.lock.release()
            return
        yield from self.hypercall_op(ctr, got[0], gvm.chunk, "share" if shared else "donate",
                                     gvm.owner_id)
        gvm.chunks[k] = got[0]
        pages = gvm.chunk >> self.host_geom.page_shift
        self.machine_ctr.add("share.pages" if shared else "donate.pages", pages)

    def reclaim_chunk(self, gvm: GuestVM, k: int, ctr: Counters):
        """Give chunk ``k`` back to the host: reclaim a donated chunk, unshare a shared one."""
        pa = gvm.chunks[k]
        gvm.chunks[k] = None  # taken out first: nobody else reclaims it meanwhile
        pages = gvm.chunk >> self.host_geom.page_shift
        if gvm.is_shared(k * gvm.chunk):
            yield from self.hypercall_op(ctr, pa, gvm.chunk, "unshare", gvm.owner_id)
            self.machine_ctr.add("unshare.pages", pages)
            return
        rep = yield from self.hypercall_op(ctr, pa, gvm.chunk, "reclaim", OWNER_HOST)
        self.phys.give_back(pa, gvm.chunk)
        self.machine_ctr.add("reclaim.pages", pages)
        self.machine_ctr.add("coalesce.tables_zapped", rep.zapped)
        self.machine_ctr.add("pgtable.pages_returned", rep.tables_freed)

    def guest_agent(self, k: int, spec):
        """Create guest ``k`` at its start, run it, tear it down after its run."""
        env = self.env
        cfg = self.cfg
        clock = cfg.machine.clock_ghz
        yield env.timeout(to_cycles(spec.start, clock))
        ctr = Counters()
        vmid = self.alloc_vmid()
        gvm = GuestVM(self, spec, vmid, spec.name, self.guest_ptmem,
                      owner_id=FIRST_GUEST_OWNER + k, chunk=spec.chunk,
                      prefix=f"guest.{spec.name}.",
                      lock=Lock(env, cfg.engine.mmu_lock == "exclusive"))
        gvm.agent_ctr = ctr
        self.guests.append(gvm)
        nchunks = spec.memory // spec.chunk
        gvm.chunks = [None] * nchunks
        if spec.shared:
            gvm.shared_from = spec.memory - spec.shared
        t0 = env.now
        for c in range(nchunks):
            yield from self.donate_chunk(gvm, c, ctr)
        ctr.add("create.cycles", env.now - t0)
        if spec.premap:
            gvm.premap()
        streams = spec.workload.build(spec.vcpus, cfg.seed + 7919 * (k + 1), spec.memory,
                                      cfg.engine.chunk)
        first = k % len(self.cpus)
        procs = []
        for j, stream in enumerate(streams):
            cpu = self.cpus[(first + j) % len(self.cpus)]
            ctx = Context(j, gvm, stream, cpu, f"guest.{spec.name}.vcpu{j}")
            self._watch(ctx)
            gvm.contexts.append(ctx)
            self.contexts.append(ctx)
            procs.append(env.process(self.context_process(ctx)))
        for b in spec.balloon:
            env.process(self.balloon_agent(gvm, b))
        gvm.procs = procs
        if spec.run is not None:
            yield simpy.AllOf(env, procs) | env.timeout(to_cycles(spec.run, clock))
            for ctx in gvm.contexts:
                ctx.stopped = True
        # a fresh condition: the vCPUs still running stop at their next quantum
        yield simpy.AllOf(env, [p for p in procs if p.is_alive])
        yield from self.teardown(gvm, ctr)

    def teardown(self, gvm: GuestVM, ctr: Counters):
        """Destroy the guest stage-2 and reclaim every page to the host."""
        env = self.env
        cfg = self.cfg
        t0 = env.now
        gvm.alive = False
        yield from acquire(gvm.lock, ctr, env, write=True)
        rep = gvm.s2.destroy()
        cycles = self.op_costs.cycles(rep)
        self.account_op(ctr, rep)
        self.machine_ctr.add("pgtable.pages_returned", rep.tables_freed)
        if cfg.hyp.teardown_tlbi:
            # the VMID is flushed on every CPU before the VMID can be reused
            self.flush_vmid(gvm.vmid, gvm.geom.page_shift)
            ctr.add("tlbi.ops")
            cycles += cfg.costs.tlbi_vmid
        yield env.timeout(cycles)
        gvm.lock.release(write=True)
        for c in range(len(gvm.chunks)):
            if gvm.chunks[c] is not None:
                yield from self.reclaim_chunk(gvm, c, ctr)
        self.vmids_in_use.discard(gvm.vmid)
        self.machine_ctr.add("teardown.cycles", env.now - t0)
        self.machine_ctr.add("guests.torn_down")
        self.sample()

    def balloon_agent(self, gvm: GuestVM, b):
        """A guest relinquishes the top ``size`` bytes of its memory at ``at``."""
        env = self.env
        yield env.timeout(to_cycles(b.at, self.cfg.machine.clock_ghz))
        if not gvm.alive:
            return
        ctr = gvm.agent_ctr
        first = (gvm.gcfg.memory - b.size) // gvm.chunk
        for c in range(max(first, 0), len(gvm.chunks)):
            yield from acquire(gvm.lock, ctr, env, write=True)
            if not gvm.alive or gvm.chunks[c] is None:  # torn down meanwhile / not backed
                gvm.lock.release(write=True)
                continue
            rep = gvm.s2.unmap(c * gvm.chunk, gvm.chunk)
            self.apply_tlbis(gvm.vmid, gvm.geom.page_shift, rep)
            self.account_op(ctr, rep)
            yield env.timeout(self.op_costs.cycles(rep) + self.cfg.costs.lock)
            gvm.lock.release(write=True)
            yield from self.reclaim_chunk(gvm, c, ctr)
            self.machine_ctr.add("balloon.pages", gvm.chunk >> gvm.geom.page_shift)

    # -- time series -----------------------------------------------------------------------
    def sample(self) -> None:
        leaves = self.hs2.mappings()
        self.series["t"].append(int(self.env.now))
        for lvl in (1, 2, 3):
            self.series[f"host.mappings.l{lvl}"].append(leaves[lvl])

    def sampler(self, period: int):
        while True:
            self.sample()
            yield self.env.timeout(period)

    # -- run -------------------------------------------------------------------------------
    def start(self) -> list:
        procs = [self.env.process(self.context_process(c)) for c in self.contexts]
        procs += [self.env.process(self.guest_agent(k, g)) for k, g in enumerate(self.cfg.guests)]
        self.env.process(self.sampler(self.cfg.host.sample_cycles))
        return procs

    def finish(self) -> None:
        self.sample()  # the host's mappings at the end

    def results(self, host_seconds: float) -> dict:
        cfg = self.cfg
        ps = self.host_geom.page_shift
        total: dict[str, int] = {}
        per_vcpu = []
        violations = 0
        for ctx in self.contexts:
            c = ctx.counters()
            violations += c.pop("isolation.violations", 0)
            per_vcpu.append({"context": ctx.label, **c})
            for key, val in c.items():
                k = ctx.vm.prefix + key
                total[k] = total.get(k, 0) + val
        for gvm in self.guests:
            for key, val in gvm.agent_ctr.c.items():
                total[gvm.prefix + key] = total.get(gvm.prefix + key, 0) + val
            leaves = gvm.s2.leaf_counts() if not gvm.s2.destroyed else {1: 0, 2: 0, 3: 0}
            for lvl in (1, 2, 3):
                total[f"{gvm.prefix}mappings.l{lvl}"] = leaves[lvl]
        for key, val in self.host.ctr.c.items():
            total["host." + key] = total.get("host." + key, 0) + val
        for key, val in self.machine_ctr.c.items():
            total[key] = total.get(key, 0) + val
        total["isolation.violations"] = violations
        leaves = self.hs2.mappings()
        for lvl in (1, 2, 3):
            total[f"host.mappings.l{lvl}"] = leaves[lvl]
        for key in ("coalesce.tables_zapped", "pgtable.pages_returned", "teardown.cycles",
                    "reclaim.pages", "donate.pages", "share.pages", "unshare.pages", "host.aborts", "host.illegal_accesses", "tlbi.entries"):
            total.setdefault(key, 0)
        # the hyp allocator and its metadata (seed 002)
        regions = [(r.base, r.size) for r in self.phys.memory]
        layout = cfg.hyp.vmemmap_layout
        res = hyp_reserve(regions, ps, layout, levels=cfg.hyp.budget_levels,
                          vmemmap_covers=cfg.hyp.vmemmap_covers)
        total["hyp.vmemmap_bytes"] = res["vmemmap_pages"] << ps
        total["hyp.vmemmap_bytes_per_gib"] = vmemmap_bytes_per_gib(layout, ps)
        total["hyp.budget.host_s2_pages"] = res["host_s2_pages"]
        total["hyp.budget.hyp_s1_pages"] = res["hyp_s1_pages"]
        total["hyp.budget.vmemmap_pages"] = res["vmemmap_pages"]
        pools = {"hyp.pool": self.hyp_pool, "hyp.host_s2_pool": self.hs2.mem_pool}
        if self.hs2.dev_pool is not self.hs2.mem_pool:
            pools["hyp.host_s2_dev_pool"] = self.hs2.dev_pool
        for name, pool in pools.items():
            total[f"{name}.pages"] = pool.nr_pages
            total[f"{name}.free_pages"] = pool.free_pages
            total[f"{name}.used_pages"] = pool.used_pages
            total[f"{name}.largest_free_order"] = pool.largest_free_order
            total[f"{name}.alloc_failures"] = pool.alloc_failures
            total[f"{name}.bugs"] = pool.bugs
        total["host.s2_enomem"] = self.host.idmap.enomem
        total["host.mmio_recycles"] = self.host.idmap.recycles
        total["host.mmio_pages_at_first_enomem"] = self.host.idmap.mmio_at_first_enomem
        total["host.pgtable.pages_in_use"] = self.hs2.ptmem.pages_in_use
        total["guests.pgtable.pages_in_use"] = self.guest_ptmem.pages_in_use
        sim_cycles = int(self.env.now)
        return {
            "counters": dict(sorted(total.items())),
            "per_vcpu": per_vcpu,
            "series": self.series,
            "sim_cycles": sim_cycles,
            "sim_seconds": seconds(sim_cycles, cfg.machine.clock_ghz),
            "host_seconds": round(host_seconds, 3),
            "host_bytes": int(self.hs2.ptmem.nbytes() + self.guest_ptmem.nbytes()
                              + self.phys.owner.nbytes),
        }


__all__ = ["PkvmMachine", "ExperimentConfig"]
