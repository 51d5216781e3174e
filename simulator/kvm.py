"""kvm mode: one guest, a CPU per vCPU, and the agents its config asks for."""

from __future__ import annotations

from simulator.agents.dirty_log import DirtyLogAgent
from simulator.agents.page_table_test import PageTableTestDriver
from simulator.agents.rmap import RmapAgent
from simulator.config import ExperimentConfig, seconds
from simulator.engine.machine import Machine
from simulator.hyp import pgtable as P
from simulator.hyp.pgtable import PageTableMemory
from simulator.vms import GuestVM
from workloads.spec import PageTableTestSpec

# Table pages of kvm mode live in their own physical region, far above guest memory.
PT_BASE_SHIFT = 46


class KvmExperiment:
    """Builds the machine of one kvm-mode variant and runs it."""

    def __init__(self, cfg: ExperimentConfig, progress=None):
        self.cfg = cfg
        self.m = m = Machine(cfg, progress)
        ptmem = PageTableMemory(cfg.geometry.page_shift, 1 << PT_BASE_SHIFT
                                if cfg.machine.pa_bits > 46 else 1 << (cfg.machine.pa_bits - 1))
        m.add_memory(ptmem)
        self.ptmem = ptmem
        cpus = [m.add_cpu() for _ in range(cfg.guest.vcpus)]
        self.vm = vm = GuestVM(m, cfg.guest, 1, "guest", 0)
        self.driver = None
        if isinstance(cfg.workload, PageTableTestSpec):
            # the stage driver hands each vCPU its stream at the start of every stage
            streams = [iter(()) for _ in range(cfg.guest.vcpus)]
            self.driver = PageTableTestDriver(m, vm)
        else:
            streams = cfg.workload.build(cfg.guest.vcpus, cfg.seed, cfg.address_space(),
                                         cfg.engine.chunk)
        for i, stream in enumerate(streams):
            vm.contexts.append(m.add_context(vm, stream, cpus[i], f"vcpu{i}"))
        m.totals = [getattr(s, "total", None) for s in streams]
        self.rmap = RmapAgent(m, vm) if cfg.hyp.rmap == "pte_list" else None

    def start(self) -> list:
        """Start the vCPUs and agents; returns the events the run waits for."""
        cfg = self.cfg
        m = self.m
        if cfg.guest.premap:
            self.vm.premap()
        if cfg.hyp.dirty_log.enable_at is not None:
            DirtyLogAgent(m, self.vm).start()
        if self.driver is not None:
            procs = [self.driver.start()]
        else:
            procs = m.start(self.vm.contexts)
            if self.rmap is not None:
                procs.append(self.rmap.start(list(procs)))
        return procs

    def run(self) -> dict:
        return self.results(self.m.run(self.start()))

    def results(self, host_seconds: float) -> dict:
        m = self.m
        per_vcpu: list = []
        total = m.counter_totals(per_vcpu)  # "cycles": the contexts' end times added up
        for key in ("tlbi.ops", "tlbi.entries", "pgtable.pages_allocated", "pgtable.pages_freed",
                    "fault_cycles", "lock_wait_cycles", "cmo.bytes", "faults.in_window",
                    "tlb_conflict_aborts", "rebuild.blocks", "rebuild.window_cycles",
                    "dirty.pages"):
            total.setdefault(key, 0)
        meta = self.ptmem.meta
        total["pgtable.pages_allocated"] = int(meta[P.M_ALLOCS])
        total["pgtable.pages_freed"] = int(meta[P.M_FREES])
        total["pgtable.pages_in_use"] = int(meta[P.M_INUSE])
        total["pgtable.pages_peak"] = int(meta[P.M_PEAK])
        leaves = self.vm.s2.leaf_counts()
        for lvl in (1, 2, 3):
            total[f"mappings.l{lvl}"] = leaves[lvl]
        total["lock.acquisitions"], total["lock.contended"] = m.lock_counters(self.vm.lock)
        extra = {}
        if self.driver is not None:
            for stage, figs in self.driver.stages.items():
                extra[f"stage.{stage}_seconds"] = figs["seconds"]
                for k, val in figs.items():
                    if k != "seconds":
                        total[f"stage.{stage}.{k}"] = val
        if self.rmap is not None:
            total.update(self.rmap.counters())
        sim_cycles = int(m.env.now)
        return {
            **extra,
            "counters": dict(sorted(total.items())),
            "per_vcpu": per_vcpu,
            "sim_cycles": sim_cycles,
            "sim_seconds": seconds(sim_cycles, self.cfg.machine.clock_ghz),
            "host_seconds": round(host_seconds, 3),
            "host_bytes": int(self.ptmem.nbytes() + sum(
                cpu.tlb.key.nbytes * 3 + cpu.wc.tag.nbytes * 3 for cpu in m.cpus)),
        }


__all__ = ["KvmExperiment"]
