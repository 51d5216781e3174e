"""The machine's small parts: its counters, the cost of a page-table operation, a CPU, a
context (a vCPU or a host CPU), and the error a simulation stops with."""

from __future__ import annotations

import numpy as np
import simpy

from simulator.engine import layout as L
from simulator.engine.fault import op_cycles
from simulator.hyp import pgtable as P
from simulator.mmu import TLBHierarchy, WalkCache
from simulator.mmu.batch import VcpuMMU


class SimulationError(RuntimeError):
    """The run cannot go on (an access outside guest memory, a kernel BUG, ...).

    ``field`` names the configuration field the problem belongs to."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(field, message)  # SimPy re-raises as type(e)(*e.args)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class Counters:
    """A flat dotted counter map."""

    def __init__(self) -> None:
        self.c: dict[str, int] = {}

    def add(self, key: str, value: int = 1) -> None:
        self.c[key] = self.c.get(key, 0) + int(value)

    def __getitem__(self, key: str) -> int:
        return self.c.get(key, 0)


class OpCosts:
    """Turns an OpReport into cycles with the configured costs (the engine's own function)."""

    def __init__(self, pr: np.ndarray, fp: np.ndarray):
        self.pr = pr
        self.fp = fp

    def cycles(self, rep: P.OpReport) -> int:
        return int(op_cycles(rep.raw, self.pr, self.fp))


class Cpu:
    """A physical CPU's translation state: TLB hierarchy, walk cache, LRU clock. ``shared``:
    several contexts take turns on it (pkvm)."""

    def __init__(self, index: int, tlb: TLBHierarchy, wc: WalkCache, shared: bool):
        self.index = index
        self.tlb = tlb
        self.wc = wc
        self.clock = np.zeros(1, dtype=np.int64)
        self.shared = shared


class Context:
    """Something that issues accesses (a guest vCPU or a host CPU): its stream, the CPU it
    runs on, its counters (the MMU's, the engine's and ``ctr`` for Python-side ones)."""

    def __init__(self, index: int, vm, stream, cpu: Cpu, label: str, mmu: VcpuMMU,
                 machine):
        self.index = index
        self.vm = vm
        self.stream = stream
        self.cpu = cpu
        self.label = label
        self.mmu = mmu
        self.machine = machine
        self.ctr = Counters()
        self.done: simpy.Event | None = None

    @property
    def done_at(self) -> int:
        return int(self.machine.st[self.index, L.S_DONE_AT])

    def counters(self) -> dict[str, int]:
        m = self.machine
        c = self.mmu.counters()
        c["cycles"] = self.done_at
        for k, name in enumerate(L.EXTRA_NAMES):
            if m.tc[self.index, k]:
                c[name] = c.get(name, 0) + int(m.ec[self.index, k])
        for k, val in self.ctr.c.items():
            c[k] = c.get(k, 0) + val
        return dict(sorted(c.items()))


def _grow_rows(a: np.ndarray, rows: int, fill=0) -> np.ndarray:
    out = np.full((rows,) + a.shape[1:], fill, dtype=a.dtype)
    out[:a.shape[0]] = a
    return out
