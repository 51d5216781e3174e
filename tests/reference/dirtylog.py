"""Dirty logging and the kvm_page_table_test driver (kvm mode).

Starting dirty logging on a memslot (KVM_MEM_LOG_DIRTY_PAGES) write-protects every mapping
in it (kvm_mmu_wp_memory_region(): stage2_wp_range() under the MMU lock, then one remote TLB
flush); with ``hyp.dirty_log.split: eager`` the blocks are also split to pages right away
(kvm_mmu_split_huge_pages() / kvm_pgtable_stage2_split()). While logging, the fault handler
maps pages only (user_mem_abort(): ``force_pte = logging_active``), so a write to a block
breaks it into a table holding the one page (lazy split), and every written page is marked
dirty. Stopping logging changes nothing in the stage-2: the next faults map blocks again,
replacing tables by blocks (see :mod:`simulator.rebuild`).

The page_table_test workload runs the selftest's stages: all vCPUs start a stage together,
the stage ends when the last one finishes, and the host turns logging on before UPDATE and
off before ADJUST, as kvm_page_table_test.c does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import simpy

from simulator.config import seconds, to_cycles
from workloads.spec import PAGE_TABLE_TEST_STAGES

if TYPE_CHECKING:  # pragma: no cover
    from tests.reference.engine import Counters, GuestVM, Machine

# per-stage figures: the difference of these totals over the stage
STAGE_KEYS = ("accesses", "translation_faults", "permission_faults", "faults.spurious",
              "faults.in_window", "tlb_conflict_aborts", "tlbi.ops", "cmo.bytes", "walks",
              "rebuild.blocks", "rebuild.window_cycles", "dirty.pages", "lock_wait_cycles",
              "fault_cycles")


def start_logging(m: "Machine", vm: "GuestVM", ctr: "Counters"):
    """A SimPy process body: turn dirty logging on for all of the guest's memslots."""
    from tests.reference.engine import acquire

    env = m.env
    cfg = m.cfg
    yield from acquire(vm.lock, ctr, env, write=True)
    vm.logging = True
    pages = max(b + s for b, s in vm.slots) >> vm.geom.page_shift
    vm.dirty = np.zeros(pages, dtype=np.bool_)
    cycles = cfg.costs.lock
    for base, size in vm.slots:
        rep = vm.s2.wrprotect(base, size)
        cycles += m.op_costs.cycles(rep)
        m.account_op(ctr, rep)
        if cfg.hyp.dirty_log.split == "eager":
            rep = vm.s2.split(base, size)
            if rep.ret:
                from tests.reference.engine import SimulationError

                raise SimulationError("hyp.dirty_log.split", f"eager split failed ({rep.ret})")
            cycles += m.op_costs.cycles(rep)
            m.apply_tlbis(vm.vmid, vm.geom.page_shift, rep)
            m.account_op(ctr, rep)
    # kvm_flush_remote_tlbs_memslot(): one flush of the VMID
    m.flush_vmid(vm.vmid, vm.geom.page_shift)
    ctr.add("tlbi.ops")
    cycles += cfg.costs.tlbi_vmid
    ctr.add("dirty_log.start_cycles", cycles)
    yield env.timeout(cycles)
    vm.lock.release(write=True)


def stop_logging(vm: "GuestVM") -> None:
    """Dirty logging off: the memslot flag only; the stage-2 is left as it is."""
    vm.logging = False


def dirty_log_agent(m: "Machine", vm: "GuestVM"):
    """``hyp.dirty_log.enable_at`` / ``disable_at`` for generic workloads."""
    env = m.env
    d = m.cfg.hyp.dirty_log
    clock = m.cfg.machine.clock_ghz
    if d.enable_at is not None:
        yield env.timeout(to_cycles(d.enable_at, clock))
        yield from start_logging(m, vm, m.machine_ctr)
    if d.disable_at is not None:
        yield env.timeout(max(0, to_cycles(d.disable_at, clock) - env.now))
        stop_logging(vm)


def page_table_test_driver(m: "Machine"):
    """Run CREATE, UPDATE (logging on) and ADJUST (logging off) for every vCPU, each stage
    timed from its start until the last vCPU finishes it."""
    env = m.env
    cfg = m.cfg
    vm = m.vm
    spec = cfg.workload
    g = cfg.geometry
    large = cfg.backing_size()
    n = cfg.guest.vcpus
    for stage in PAGE_TABLE_TEST_STAGES:
        if stage == "update":
            yield from start_logging(m, vm, m.machine_ctr)
        elif stage == "adjust":
            stop_logging(vm)
        streams = spec.stage_streams(stage, n, cfg.guest.memory, large, g.page_size,
                                     cfg.engine.chunk)
        before = m.counter_totals()
        t0 = env.now
        for ctx, stream in zip(m.contexts, streams):
            ctx.stream = stream
        yield simpy.AllOf(env, m.vcpu_processes(m.contexts))
        after = m.counter_totals()
        cycles = int(env.now - t0)
        m.stages[stage] = {"cycles": cycles, "seconds": seconds(cycles, cfg.machine.clock_ghz),
                           **{k: after.get(k, 0) - before.get(k, 0) for k in STAGE_KEYS}}
