"""pkvm mode: the host under its own stage-2, guests donated and reclaimed, on shared CPUs.

The machine has ``host.cpus`` physical CPUs. Host CPU *i* runs the host workload on CPU *i*
through the host stage-2 (VMID 0, an identity map filled lazily by host aborts); guests come
and go (:mod:`simulator.agents.guests`), their vCPUs taking turns with the host task on the
CPUs. Every completed access is checked against the ownership record
(``isolation.violations`` must stay 0).
"""

from __future__ import annotations

from simulator.agents.guests import GuestsAgent
from simulator.arch.geometry import Geometry
from simulator.config import ExperimentConfig, seconds
from simulator.engine.machine import Machine, SimulationError
from simulator.hyp.host import OWNER_HYP, HostPhys, HostStage2, Region
from simulator.hyp.hyp_pool import HypPool
from simulator.hyp.budgets import hyp_reserve
from simulator.hyp.page_alloc import host_s2_pgtable_pages, vmemmap_bytes_per_gib
from simulator.hyp.pools import PoolMemory
from simulator.vms import HostVM


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
        host_mem = m.add_memory(self.hs2.ptmem)
        guest_mem = m.add_memory(self.guest_ptmem)
        # boot: the hypervisor's carve-outs become hyp-owned in the host stage-2
        for pool in [self.hs2.mem_pool, self.hs2.dev_pool, self.hyp_pool]:
            self.hs2.set_owner(pool.start_phys, pool.nr_pages << ps, OWNER_HYP)
        self.host = HostVM(m, self.hs2, self.phys, host_mem)
        if cfg.host.stage1 is not None:
            from simulator.guest.stage1 import HostStage1

            regions = [(r.base, r.size) for r in self.phys.memory]
            pages = HostStage1.table_pages(ps, regions)
            try:
                base = self.phys.keep_top(pages)
            except ValueError as e:
                raise SimulationError("host.stage1", str(e)) from None
            m.set_stage1(self.host, HostStage1(cfg.host.stage1, ps, regions, base, pages))
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
