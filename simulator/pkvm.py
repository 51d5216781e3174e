"""pkvm mode: the host under its own stage-2, guests donated and reclaimed, on shared CPUs.

The machine has ``host.cpus`` physical CPUs. Host CPU *i* runs the host workload on CPU *i*
through the host stage-2 (VMID 0, an identity map filled lazily by host aborts); guests come
and go (:mod:`simulator.agents.guests`), their vCPUs taking turns with the host task on the
CPUs. Every completed access is checked against the ownership record
(``isolation.violations`` must stay 0).
"""

from __future__ import annotations

import numpy as np

from simulator.agents.guests import GuestsAgent
from simulator.arch.geometry import Geometry
from simulator.config import ExperimentConfig, seconds
from simulator.engine import layout as L
from simulator.engine.machine import Counters, Machine, SimulationError
from simulator.hyp.host import OWNER_HOST, OWNER_HYP, HostPhys, HostStage2, Region
from simulator.hyp.page_alloc import (
    HypBugError,
    HypPool,
    host_s2_pgtable_pages,
    hyp_s1_pgtable_pages,
    vmemmap_bytes,
    vmemmap_bytes_per_gib,
)
from simulator.hyp.pools import PoolMemory
from simulator.mmu import pgtable as P
from simulator.mmu.walk import W_PERMISSION


class HostVM:
    """The host as a VM of its own: the host stage-2 and handle_host_mem_abort()'s
    page-table work (a call-out of the engine, under the host lock)."""

    def __init__(self, m: Machine, hs2: HostStage2, phys: HostPhys, mem_index: int):
        self.machine = m
        self.vmid = 0
        self.owner_id = OWNER_HOST
        self.prefix = "host."
        self.hs2 = hs2
        self.s2 = hs2.s2
        self.phys = phys
        self.geom = g = hs2.geom
        self.lock = m.new_lock(exclusive=True)  # host_mmu.lock: a spinlock
        self.ctr = Counters()
        self.enomem_field = "host"
        c = m.cfg.costs
        self.index = m.add_vm(self, {
            L.V_KIND: L.VM_HOST, L.V_VMID: 0, L.V_MEM: mem_index, L.V_ROOT: self.s2.root,
            L.V_START_LEVEL: g.start_level, L.V_IA_BITS: g.ipa_bits,
            L.V_TBASE: hs2.ptmem.base_pa, L.V_FLAGS: self.s2.base_flags, L.V_RULE: self.s2.rule,
            L.V_LOCK: self.lock, L.V_ENTRY: c.fault_entry_exit // 2 + c.host_abort_handler,
            L.V_OWNER: OWNER_HOST, L.V_SHARED_FROM: -1, L.V_POOL: 1, L.V_HOST_LOCK: self.lock,
        })

    def placement(self, addrs: np.ndarray, kinds: np.ndarray, ctx):
        """Host workload addresses are offsets into host memory (then MMIO); the host kernel
        touches only what it owns unless host.respect_ownership is false."""
        pa = self.phys.to_pa(addrs, self.machine.cfg.host.address_space)
        if not self.machine.cfg.host.respect_ownership:
            return pa, kinds
        pages = ((pa - np.uint64(self.phys.lo)) >> np.uint64(self.geom.page_shift)).astype(np.int64)
        inside = (pa >= np.uint64(self.phys.lo)) & (pa < np.uint64(self.phys.hi))
        keep = ~inside | self.phys.host_may_access(np.where(inside, pages, 0))
        dropped = int(len(keep) - np.count_nonzero(keep))
        if dropped:
            ctx.ctr.add("skipped_accesses", dropped)
            return np.ascontiguousarray(pa[keep]), np.ascontiguousarray(kinds[keep])
        return pa, kinds

    def callout(self, call: int, ctx) -> None:
        """handle_host_mem_abort() under the host lock: host_stage2_idmap() of the faulting
        address; the cycles go to S_OPC, an access that can never complete is dropped."""
        m = self.machine
        st = m.st
        i = ctx.index
        ctx.ctr.add("aborts")
        addr = int(st[i, L.S_IPA])
        op = 0
        if int(st[i, L.S_FSTATUS]) == W_PERMISSION:
            ctx.ctr.add("illegal_accesses")  # e.g. a fetch from MMIO (XN)
            st[i, L.S_SKIP] = 1
        else:
            try:
                res = self.hs2.idmap(addr)
            except HypBugError as e:
                raise SimulationError("hyp.vmemmap_layout", str(e)) from None
            if res.ret == -P.EPERM:
                ctx.ctr.add("illegal_accesses")
                st[i, L.S_SKIP] = 1
            elif res.ret == -P.EAGAIN:
                ctx.ctr.add("faults.spurious")
            elif res.ret == -P.ENOMEM:
                raise SimulationError("host", f"host stage-2 out of memory at {addr:#x} even "
                                      "after recycling MMIO mappings (the kernel BUGs)")
            for rep in res.reports:
                op += m.op_costs.cycles(rep)
                m.apply_tlbis(0, rep)
                m.account_op(ctx.ctr, rep)
        st[i, L.S_OPC] = op


class PkvmExperiment:
    """Builds the pkvm-mode machine of one variant and runs it."""

    def __init__(self, cfg: ExperimentConfig, progress=None):
        self.cfg = cfg
        self.m = m = Machine(cfg, progress)
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
                                  tlbi_range=cfg.machine.tlbi_range)
            mem_regions = [(r.base, r.size) for r in self.phys.memory]
            npages = cfg.hyp.pool_pages or host_s2_pgtable_pages(mem_regions, ps)
            base = self.phys.carve_top(npages)
        except ValueError as e:
            raise SimulationError("host.memory", str(e)) from None
        self.hyp_pool = HypPool(base, npages, ps, layout=layout,
                                on_bug="count" if cfg.hyp.on_bug == "count" else "raise")
        self.guest_ptmem = PoolMemory([self.hyp_pool])
        host_mem = m.add_memory(self.hs2.ptmem)
        guest_mem = m.add_memory(self.guest_ptmem)
        # boot: the hypervisor's carve-outs become hyp-owned in the host stage-2
        for pool in [self.hs2.mem_pool, self.hs2.dev_pool, self.hyp_pool]:
            self.hs2.set_owner(pool.start_phys, pool.nr_pages << ps, OWNER_HYP)
        self.host = HostVM(m, self.hs2, self.phys, host_mem)
        for _ in range(cfg.host.cpus):
            # the host task and the guest vCPUs placed there take turns on the CPU
            m.add_cpu(shared=True)
        self.host_contexts = []
        if cfg.host.workload is not None:
            if cfg.host.address_space == "memory":
                mem = self.phys.memory_bytes()
            else:
                mem = sum(r.size for r in self.phys.mmio)
            streams = cfg.host.workload.build(cfg.host.cpus, cfg.seed, mem, cfg.engine.chunk)
            for i, stream in enumerate(streams):
                self.host_contexts.append(m.add_context(self.host, stream, m.cpus[i],
                                                        f"host.cpu{i}"))
            m.totals = [getattr(s, "total", None) for s in streams]
        m.set_owner_record(self.phys.owner, self.phys.lo)
        self.guests = GuestsAgent(m, self.host, guest_mem, on_teardown=self.sample)
        self.series: dict[str, list] = {"t": []}
        for lvl in (1, 2, 3):
            self.series[f"host.mappings.l{lvl}"] = []

    # -- time series -----------------------------------------------------------------------
    def sample(self) -> None:
        leaves = self.hs2.mappings()
        self.series["t"].append(int(self.m.env.now))
        for lvl in (1, 2, 3):
            self.series[f"host.mappings.l{lvl}"].append(leaves[lvl])

    def sampler(self, period: int):
        while True:
            self.sample()
            yield self.m.env.timeout(period)

    # -- run -------------------------------------------------------------------------------
    def start(self) -> list:
        """Start the host CPUs and agents; returns the events the run waits for."""
        m = self.m
        procs = m.start(self.host_contexts)
        procs += self.guests.start()
        m.env.process(self.sampler(self.cfg.host.sample_cycles))
        return procs

    def run(self) -> dict:
        host = self.m.run(self.start())
        self.sample()  # the host's mappings at the end
        return self.results(host)

    def results(self, host_seconds: float) -> dict:
        cfg = self.cfg
        m = self.m
        ps = self.host_geom.page_shift
        total: dict[str, int] = {}
        per_vcpu = []
        violations = 0
        for ctx in m.contexts:
            c = ctx.counters()
            violations += c.pop("isolation.violations", 0)
            per_vcpu.append({"context": ctx.label, **c})
            for key, val in c.items():
                k = ctx.vm.prefix + key
                total[k] = total.get(k, 0) + val
        for gvm in self.guests.guests:
            for key, val in gvm.agent_ctr.c.items():
                total[gvm.prefix + key] = total.get(gvm.prefix + key, 0) + val
            leaves = gvm.s2.leaf_counts() if not gvm.s2.destroyed else {1: 0, 2: 0, 3: 0}
            for lvl in (1, 2, 3):
                total[f"{gvm.prefix}mappings.l{lvl}"] = leaves[lvl]
        for key, val in self.host.ctr.c.items():
            total["host." + key] = total.get("host." + key, 0) + val
        for key, val in m.machine_counters().items():
            total[key] = total.get(key, 0) + val
        total["isolation.violations"] = violations
        leaves = self.hs2.mappings()
        for lvl in (1, 2, 3):
            total[f"host.mappings.l{lvl}"] = leaves[lvl]
        for key in ("coalesce.tables_zapped", "pgtable.pages_returned", "teardown.cycles",
                    "reclaim.pages", "donate.pages", "share.pages", "unshare.pages",
                    "host.aborts", "host.illegal_accesses", "tlbi.entries"):
            total.setdefault(key, 0)
        # the hyp allocator and its metadata (seed 002)
        regions = [(r.base, r.size) for r in self.phys.memory]
        layout = cfg.hyp.vmemmap_layout
        total["hyp.vmemmap_bytes"] = vmemmap_bytes(regions, ps, layout)
        total["hyp.vmemmap_bytes_per_gib"] = vmemmap_bytes_per_gib(layout, ps)
        total["hyp.budget.host_s2_pages"] = host_s2_pgtable_pages(regions, ps)
        total["hyp.budget.hyp_s1_pages"] = hyp_s1_pgtable_pages(regions, ps)
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
        total["host.s2_enomem"] = self.hs2.enomem
        total["host.mmio_recycles"] = self.hs2.recycles
        total["host.mmio_pages_at_first_enomem"] = self.hs2.mmio_at_first_enomem
        total["host.pgtable.pages_in_use"] = self.hs2.ptmem.pages_in_use
        total["guests.pgtable.pages_in_use"] = self.guest_ptmem.pages_in_use
        sim_cycles = int(m.env.now)
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


__all__ = ["PkvmExperiment"]
