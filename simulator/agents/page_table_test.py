"""The kvm_page_table_test driver: its stages, with dirty logging on for UPDATE.

All vCPUs start a stage together, the stage ends when the last one finishes, and the host
turns logging on before UPDATE and off before ADJUST, as kvm_page_table_test.c does. Each
stage reports its own figures (``stage.<s>.*``).
"""

from __future__ import annotations

import simpy

from simulator.agents.dirty_log import start_logging, stop_logging
from simulator.config import seconds
from simulator.engine.machine import Machine
from workloads.spec import PAGE_TABLE_TEST_STAGES

# per-stage figures: the difference of these totals over the stage
STAGE_KEYS = ("accesses", "translation_faults", "permission_faults", "faults.spurious",
              "faults.in_window", "tlb_conflict_aborts", "tlbi.ops", "cmo.bytes", "walks",
              "rebuild.blocks", "rebuild.window_cycles", "dirty.pages", "lock_wait_cycles",
              "fault_cycles")


class PageTableTestDriver:
    """Runs CREATE, UPDATE (logging on) and ADJUST (logging off) for every vCPU, each stage
    timed from its start until the last vCPU finishes it."""

    def __init__(self, m: Machine, vm):
        self.m = m
        self.vm = vm
        self.stages: dict[str, dict] = {}

    def start(self) -> simpy.Process:
        return self.m.env.process(self._run())

    def _run(self):
        m = self.m
        env = m.env
        cfg = m.cfg
        vm = self.vm
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
            for ctx, stream in zip(vm.contexts, streams):
                ctx.stream = stream
            yield simpy.AllOf(env, m.start(vm.contexts))
            after = m.counter_totals()
            cycles = int(env.now - t0)
            self.stages[stage] = {"cycles": cycles,
                                  "seconds": seconds(cycles, cfg.machine.clock_ghz),
                                  **{k: after.get(k, 0) - before.get(k, 0) for k in STAGE_KEYS}}


__all__ = ["PageTableTestDriver", "STAGE_KEYS"]
