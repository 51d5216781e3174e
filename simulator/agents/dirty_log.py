"""Dirty logging (kvm mode): KVM_MEM_LOG_DIRTY_PAGES switched on and off.

Starting dirty logging on a memslot write-protects every mapping in it
(kvm_mmu_wp_memory_region(): stage2_wp_range() under the MMU lock, then one remote TLB
flush); with ``hyp.dirty_log.split: eager`` the blocks are also split to pages right away
(kvm_mmu_split_huge_pages() / kvm_pgtable_stage2_split()). While logging, the fault handler
maps pages only (user_mem_abort(): ``force_pte = logging_active``), so a write to a block
breaks it into a table holding the one page (lazy split), and every written page is marked
dirty. Stopping logging changes nothing in the stage-2: the next faults map blocks again,
replacing tables by blocks (:mod:`simulator.hyp.rebuild`).
"""

from __future__ import annotations

import numpy as np

from simulator.config import to_cycles
from simulator.engine.machine import Counters, Machine, SimulationError


def start_logging(m: Machine, vm, ctr: Counters):
    """A SimPy process body: turn dirty logging on for all of the guest's memslots."""
    env = m.env
    cfg = m.cfg
    yield from m.acquire(vm.lock, ctr, write=True)
    vm.logging = True
    pages = max(b + s for b, s in vm.slots) >> vm.geom.page_shift
    m.dirty = np.zeros(pages, dtype=np.bool_)
    cycles = cfg.costs.lock
    for base, size in vm.slots:
        rep = vm.s2.wrprotect(base, size)
        cycles += m.op_costs.cycles(rep)
        m.account_op(ctr, rep)
        if cfg.hyp.dirty_log.split == "eager":
            rep = vm.s2.split(base, size)
            if rep.ret:
                raise SimulationError("hyp.dirty_log.split", f"eager split failed ({rep.ret})")
            cycles += m.op_costs.cycles(rep)
            m.apply_tlbis(vm.vmid, rep)
            m.account_op(ctr, rep)
    # kvm_flush_remote_tlbs_memslot(): one flush of the VMID
    m.flush_vmid(vm.vmid)
    ctr.add("tlbi.ops")
    cycles += cfg.costs.tlbi_vmid
    ctr.add("dirty_log.start_cycles", cycles)
    yield env.timeout(cycles)
    m.release(vm.lock, write=True)


def stop_logging(vm) -> None:
    """Dirty logging off: the memslot flag only; the stage-2 is left as it is."""
    vm.logging = False


class DirtyLogAgent:
    """``hyp.dirty_log.enable_at`` / ``disable_at`` for generic workloads."""

    def __init__(self, m: Machine, vm):
        self.m = m
        self.vm = vm

    def start(self) -> None:
        self.m.env.process(self._run())

    def _run(self):
        m = self.m
        env = m.env
        d = m.cfg.hyp.dirty_log
        clock = m.cfg.machine.clock_ghz
        if d.enable_at is not None:
            yield env.timeout(to_cycles(d.enable_at, clock))
            yield from start_logging(m, self.vm, m.machine_ctr)
        if d.disable_at is not None:
            yield env.timeout(max(0, to_cycles(d.disable_at, clock) - env.now))
            stop_logging(self.vm)


__all__ = ["DirtyLogAgent", "start_logging", "stop_logging"]
