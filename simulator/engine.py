"""The discrete-event engine: SimPy vCPU processes over shared stage-2 page tables.

Time is integer CPU cycles. Each vCPU is a SimPy process with private TLBs and walk cache;
it runs its access stream in quanta of ``engine.quantum_cycles`` through the batch kernel
(:func:`simulator.mmu.batch.run_batch`) and advances simulated time by the cycles used. A
stage-2 fault ends the quantum at the faulting access; the vCPU then runs the KVM fault
handler as simulated time: exception entry, the handler's work outside the lock, the MMU
lock (a SimPy lock: waiting vCPUs queue, the wait is counted), the page-table operation
(charged by what it did: descriptors visited and stored, table pages allocated and freed,
TLBIs, cache maintenance), release, exit; then the faulting access is replayed from its
TLB lookup.

A page-table operation changes the shared tables at the instant it runs; other vCPUs see
the change at their next quantum. The TLBIs it issued remove entries from every vCPU of
that VMID at that instant. The error this brings is bounded by the quantum.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from simulator.arch import descriptors as D
from simulator.config import ExperimentConfig, seconds
from simulator.mmu import PageTableMemory, Stage2, TLBHierarchy, TLBLevelSpec, WalkCache
from simulator.mmu import pgtable as P
from simulator.mmu.batch import B_FAULT, F_IPA, F_KIND, F_STATUS, FETCH, WRITE, VcpuMMU
from simulator.mmu.walk import W_PERMISSION

# Table pages live in their own physical region, far above guest memory.
PT_BASE_SHIFT = 46


class SimulationError(RuntimeError):
    """The run cannot go on (an access outside guest memory, a kernel BUG, ...).

    ``field`` names the configuration field the problem belongs to."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(field, message)  # SimPy re-raises as type(e)(*e.args)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class Lock:
    """A FIFO reader/writer lock on SimPy time. ``exclusive`` makes every holder a writer
    (the 5.11 spinlock); otherwise fault handlers share it and writers exclude everyone."""

    def __init__(self, env: simpy.Environment, exclusive: bool):
        self.env = env
        self.exclusive = exclusive
        self.readers = 0
        self.writer = False
        self.queue: list[tuple[simpy.Event, bool]] = []
        self.acquisitions = 0
        self.contended = 0

    def acquire(self, write: bool = False) -> simpy.Event:
        write = write or self.exclusive
        ev = self.env.event()
        self.acquisitions += 1
        if not self.queue and self._can_grant(write):
            self._grant(write)
            ev.succeed()
        else:
            self.contended += 1
            self.queue.append((ev, write))
        return ev

    def release(self, write: bool = False) -> None:
        write = write or self.exclusive
        if write:
            self.writer = False
        else:
            self.readers -= 1
        while self.queue and self._can_grant(self.queue[0][1]):
            ev, w = self.queue.pop(0)
            self._grant(w)
            ev.succeed()

    def _can_grant(self, write: bool) -> bool:
        if self.writer:
            return False
        return self.readers == 0 if write else True

    def _grant(self, write: bool) -> None:
        if write:
            self.writer = True
        else:
            self.readers += 1


@dataclass
class OpCosts:
    """Turns an OpReport into cycles with the configured costs."""

    pte_visit: int
    pte_store: int
    table_alloc: int
    table_free: int
    tlbi_ipa: int
    tlbi_range: int
    tlbi_vmid: int
    cmo_bytes_per_cycle: float
    icache_bytes_per_cycle: float
    fwb: bool
    dic: bool

    def cycles(self, r: P.OpReport) -> int:
        c = (r.visits * self.pte_visit + r.stores * self.pte_store
             + r.tables_allocated * self.table_alloc + r.tables_freed * self.table_free
             + r.tlbi_ipa * self.tlbi_ipa + r.tlbi_range * self.tlbi_range
             + r.tlbi_vmid * self.tlbi_vmid)
        if not self.fwb:
            c += int(r.cmo_bytes / self.cmo_bytes_per_cycle)
        if not self.dic:
            c += int(r.icache_bytes / self.icache_bytes_per_cycle)
        return c


class Counters:
    """A flat dotted counter map."""

    def __init__(self) -> None:
        self.c: dict[str, int] = {}

    def add(self, key: str, value: int = 1) -> None:
        self.c[key] = self.c.get(key, 0) + int(value)

    def __getitem__(self, key: str) -> int:
        return self.c.get(key, 0)


class Placement:
    """Where the guest keeps the pages a workload touches (the guest OS's physical layout).

    ``identity``: an address is its IPA. ``first_touch``: the address space is cut into
    regions of ``unit`` bytes and each region gets the next free guest-physical region the
    first time any vCPU touches it, as a guest kernel allocating on first touch would; the
    offset inside a region is kept, so contiguity up to ``unit`` survives. Vectorized per
    chunk; deterministic because the engine consumes chunks in a deterministic order."""

    def __init__(self, mode: str, unit: int, slots: list[tuple[int, int]]):
        self.mode = mode
        self.unit = unit
        self.shift = unit.bit_length() - 1
        self.slots = slots
        self.regions: dict[int, int] = {}
        # guest-physical regions available, in IPA order
        self.free = [base + off for base, size in slots for off in range(0, size - unit + 1, unit)]
        self.capacity = len(self.free)

    def __call__(self, addrs: np.ndarray) -> np.ndarray:
        if self.mode == "identity":
            return addrs
        sh = np.uint64(self.shift)
        reg = addrs >> sh
        uniq, first, inv = np.unique(reg, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # first-touch order inside the chunk
        bases = np.empty(len(uniq), dtype=np.uint64)
        for j in order:
            r = int(uniq[j])
            b = self.regions.get(r)
            if b is None:
                n = len(self.regions)
                if n >= self.capacity:
                    raise SimulationError(
                        "guest.memory", f"the workload touches more than {self.capacity} "
                        f"regions of {self.unit} bytes: more than the guest memory")
                b = self.free[n]
                self.regions[r] = b
            bases[j] = b
        return bases[inv] | (addrs & np.uint64(self.unit - 1))


class Vcpu:
    """One simulated vCPU: its MMU state, its access stream and its own counters."""

    def __init__(self, index: int, vm: "GuestVM", stream):
        self.index = index
        self.vm = vm
        self.stream = stream
        cfg = vm.cfg
        self.mmu = VcpuMMU(vm.make_tlb(), WalkCache(cfg.tlb.walk_cache.entries_per_level),
                           vmid=vm.vmid,
                           costs={"access": cfg.costs.access, "mem_ref": cfg.costs.walk_mem_ref,
                                  "wc_hit": cfg.costs.walk_cache_hit})
        self.ctr = Counters()
        self.done_at = 0
        self.debt = 0  # cycles owed to simulated time, charged with the next timeout
        self.last_fault = (-1, -1)
        self.repeats = 0


class GuestVM:
    """A guest: its stage-2 (VMID), memslots, vCPUs and the KVM fault handler."""

    def __init__(self, machine: "Machine", cfg: ExperimentConfig, vmid: int, name: str):
        self.machine = machine
        self.cfg = cfg
        self.vmid = vmid
        self.name = name
        self.geom = cfg.geometry
        self.s2 = Stage2(machine.ptmem, self.geom, vmid, fwb=cfg.machine.fwb,
                         tlbi_range=cfg.machine.tlbi_range)
        self.slots = sorted(((s.base, s.size) for s in cfg.guest.slots()))
        self.pa_base = cfg.guest.pa_base
        self.mapping = cfg.mapping_size()
        self.backing = cfg.backing_size()
        self.vcpus: list[Vcpu] = []
        self.ctr = Counters()
        self.placement = Placement(cfg.guest.placement, cfg.guest.placement_unit, self.slots)

    def make_tlb(self) -> TLBHierarchy:
        g = self.geom
        specs = []
        for lv in self.cfg.tlb.levels:
            sizes = lv.page_sizes or list(g.leaf_sizes().values())
            leaf_levels = tuple(sorted(g.level_for_size(s) for s in sizes))
            specs.append(TLBLevelSpec(lv.name, lv.sets, lv.ways, lv.latency, leaf_levels,
                                      lv.serves))
        return TLBHierarchy(specs, g.page_shift)

    def slot_of(self, ipa: int) -> tuple[int, int] | None:
        for base, size in self.slots:
            if base <= ipa < base + size:
                return base, size
        return None

    def block_for(self, ipa: int, slot: tuple[int, int]) -> int:
        """The mapping size the fault handler installs at ``ipa``: the configured size (or the
        largest the backing allows), stepped down until the block lies inside the memslot
        (fault_supports_stage2_huge_mapping)."""
        g = self.geom
        want = self.mapping if self.mapping is not None else self.backing
        base, size = slot
        for lvl in g.block_levels():
            bs = g.size(lvl)
            if bs > want:
                continue
            start = ipa & ~(bs - 1)
            if start >= base and start + bs <= base + size:
                return bs
        return g.page_size

    def prot_for(self, kind: int) -> int:
        prot = D.PROT_R | D.PROT_W
        if kind == FETCH or self.cfg.machine.dic:
            prot |= D.PROT_X
        return prot

    def premap(self) -> P.OpReport | None:
        """Map all guest memory before time 0, with the blocks the fault handler would use."""
        g = self.geom
        last = None
        for base, size in self.slots:
            want = self.mapping if self.mapping is not None else self.backing
            step = max(want, g.page_size)
            prot = self.prot_for(FETCH if self.cfg.machine.dic else 0)
            if step == g.page_size:
                last = self.s2.map(base, size, self.pa_base + base, prot, force_pte=True)
            elif step >= g.size(g.block_levels()[0]):
                last = self.s2.map(base, size, self.pa_base + base, prot)
            else:
                # blocks no larger than the mapping size: map in steps of it
                for off in range(0, size, step):
                    last = self.s2.map(base + off, min(step, size - off),
                                       self.pa_base + base + off, prot)
            if last.ret != 0:
                raise SimulationError("guest.premap", f"mapping failed ({last.ret})")
        return last

    # -- the fault path -------------------------------------------------------------------
    def handle_fault(self, vcpu: Vcpu, status: int, ipa: int, kind: int):
        """A SimPy process body: user_mem_abort() for one stage-2 fault of ``vcpu``."""
        env = self.machine.env
        costs = self.cfg.costs
        t0 = env.now
        slot = self.slot_of(ipa)
        if slot is None:
            raise SimulationError(
                "workload", f"vCPU {vcpu.index} accessed IPA {ipa:#x}, outside guest memory "
                f"({', '.join(f'[{b:#x}, {b + s:#x})' for b, s in self.slots)}); "
                "set guest.placement: first_touch to place trace addresses in guest memory")
        yield env.timeout(costs.fault_entry_exit // 2 + costs.fault_handler)
        t_lock = env.now
        grant = self.machine.lock.acquire()
        if not grant.triggered:
            yield grant
            vcpu.ctr.add("lock_wait_cycles", env.now - t_lock)
        if status == W_PERMISSION:
            bits = int(D.XN) if kind == FETCH else 0
            set_bits = int(D.S2AP_W) if kind == WRITE else int(D.S2AP_R)
            rep = self.s2.update_attrs(ipa, 1, set_bits=set_bits, clear_bits=bits,
                                       handle_fault=True)
            # kvm_pgtable_stage2_relax_perms(): a local TLBI of that IPA
            vcpu.mmu.tlb.invalidate(self.vmid, ipa & ~(self.geom.page_size - 1),
                                    (ipa & ~(self.geom.page_size - 1)) + self.geom.page_size)
            op_cycles = self.machine.op_costs.cycles(rep) + costs.perm_fault_handler \
                + costs.tlbi_ipa
            vcpu.ctr.add("tlbi.ops")
        else:
            bs = self.block_for(ipa, slot)
            start = ipa & ~(bs - 1)
            rep = self.s2.map(start, bs, self.pa_base + start, self.prot_for(kind),
                              handle_fault=True)
            if rep.ret == -P.ENOMEM:
                raise SimulationError("guest", f"out of page-table memory at IPA {ipa:#x}")
            if rep.ret == -P.EAGAIN:
                vcpu.ctr.add("faults.spurious")
            op_cycles = self.machine.op_costs.cycles(rep)
            self.machine.apply_tlbis(self, rep)
        self.machine.account_op(vcpu.ctr, rep)
        yield env.timeout(costs.lock + op_cycles)
        self.machine.lock.release()
        # The return to the guest takes the rest of the entry/exit cost; it is charged with
        # the vCPU's next quantum (the vCPU does nothing observable meanwhile).
        exit_cycles = costs.fault_entry_exit - costs.fault_entry_exit // 2
        vcpu.debt += exit_cycles
        vcpu.ctr.add("fault_cycles", env.now - t0 + exit_cycles)


class Machine:
    """The simulated machine for one variant: page-table memory, the guest, its vCPUs."""

    def __init__(self, cfg: ExperimentConfig, progress: Callable[[int, int], None] | None = None):
        self.cfg = cfg
        self.env = simpy.Environment()
        g = cfg.geometry
        self.ptmem = PageTableMemory(g.page_shift, 1 << PT_BASE_SHIFT if cfg.machine.pa_bits > 46
                                     else 1 << (cfg.machine.pa_bits - 1))
        self.lock = Lock(self.env, cfg.engine.mmu_lock == "exclusive")
        c = cfg.costs
        self.op_costs = OpCosts(c.pte_visit, c.pte_store, c.table_alloc, c.table_free,
                                c.tlbi_ipa, c.tlbi_range, c.tlbi_vmid, c.cmo_bytes_per_cycle,
                                c.icache_bytes_per_cycle, cfg.machine.fwb, cfg.machine.dic)
        self.vm = GuestVM(self, cfg, vmid=1, name="guest")
        streams = cfg.workload.build(cfg.guest.vcpus, cfg.seed, cfg.guest.memory, cfg.engine.chunk)
        for i, stream in enumerate(streams):
            self.vm.vcpus.append(Vcpu(i, self.vm, stream))
        self.totals = [getattr(s, "total", None) for s in streams]
        self.progress = progress
        self.machine_ctr = Counters()
        self.done_accesses = 0

    # -- hypervisor-side helpers ---------------------------------------------------------
    def apply_tlbis(self, vm: GuestVM, rep: P.OpReport) -> int:
        """Apply an operation's TLB invalidations to every vCPU of ``vm``; returns the TLB
        entries removed (counted in tlbi.entries)."""
        removed = 0
        ps = vm.geom.page_shift
        for rec in rep.tlbis:
            for v in vm.vcpus:
                if rec.kind == "vmid":
                    removed += v.mmu.tlb.invalidate(vm.vmid)
                    v.mmu.wc.invalidate(vm.vmid, 0, 0, ps)
                else:
                    lo, hi = rec.addr, rec.addr + rec.size
                    removed += v.mmu.tlb.invalidate(vm.vmid, lo, hi)
                    v.mmu.wc.invalidate(vm.vmid, lo, hi, ps)
        self.machine_ctr.add("tlbi.entries", removed)
        return removed

    def account_op(self, ctr: Counters, rep: P.OpReport) -> None:
        ctr.add("tlbi.ops", rep.tlbi_ops)
        ctr.add("pgtable.pages_allocated", rep.tables_allocated)
        ctr.add("pgtable.pages_freed", rep.tables_freed)
        ctr.add("cmo.bytes", rep.cmo_bytes)
        if rep.warnings:
            raise SimulationError("engine", f"page-table refcount inconsistency ({rep.warnings} "
                                  "kernel WARN()s)")

    # -- vCPU processes ------------------------------------------------------------------
    def vcpu_process(self, vcpu: Vcpu):
        env = self.env
        quantum = self.cfg.engine.quantum_cycles
        max_cycles = self.cfg.engine.max_cycles
        s2 = vcpu.vm.s2
        place = vcpu.vm.placement
        for addrs, kinds in vcpu.stream:
            addrs = place(addrs)
            n = len(addrs)
            i = 0
            while i < n:
                if max_cycles is not None and env.now >= max_cycles:
                    vcpu.done_at = env.now
                    return
                before = i
                i, used, status = vcpu.mmu.run(s2, addrs, kinds, i, n, quantum)
                self.done_accesses += i - before
                used += vcpu.debt
                vcpu.debt = 0
                if used:
                    yield env.timeout(used)
                if status == B_FAULT:
                    f = vcpu.mmu.fault
                    ipa = int(f[F_IPA]) & D.MASK64
                    self._check_progress(vcpu, i, ipa, before)
                    yield from vcpu.vm.handle_fault(vcpu, int(f[F_STATUS]), ipa, int(f[F_KIND]))
        if vcpu.debt:
            yield env.timeout(vcpu.debt)
            vcpu.debt = 0
        vcpu.done_at = env.now

    @staticmethod
    def _check_progress(vcpu: Vcpu, index: int, ipa: int, before: int) -> None:
        """A fault the handler cannot resolve would replay forever: stop with an error."""
        key = (index, ipa)
        if key == vcpu.last_fault and index == before:
            vcpu.repeats += 1
            if vcpu.repeats >= 16:
                raise SimulationError("engine", f"vCPU {vcpu.index}: the access to IPA {ipa:#x} "
                                      "keeps faulting after its fault was handled")
        else:
            vcpu.last_fault = key
            vcpu.repeats = 0

    def _progress_process(self, period: int):
        total = sum(t for t in self.totals if t is not None) if all(
            t is not None for t in self.totals) else 0
        while True:
            yield self.env.timeout(period)
            self.progress(self.done_accesses, total)

    def run(self) -> dict:
        t0 = time.perf_counter()
        base_allocs = 0
        if self.cfg.guest.premap:
            self.vm.premap()
        procs = [self.env.process(self.vcpu_process(v)) for v in self.vm.vcpus]
        if self.progress is not None:
            self.env.process(self._progress_process(self.cfg.engine.quantum_cycles * 50))
        done = simpy.AllOf(self.env, procs)
        self.env.run(until=done)
        host = time.perf_counter() - t0
        if self.progress is not None:
            self.progress(self.done_accesses, self.done_accesses)
        return self.results(host, base_allocs)

    # -- results -------------------------------------------------------------------------
    def results(self, host_seconds: float, base_allocs: int) -> dict:
        per_vcpu = []
        total: dict[str, int] = {}
        for v in self.vm.vcpus:
            c = v.mmu.counters()
            c["cycles"] = int(v.done_at)
            for k, val in v.ctr.c.items():
                c[k] = c.get(k, 0) + val
            per_vcpu.append(dict(sorted(c.items())))
            for k, val in c.items():
                total[k] = total.get(k, 0) + val
        total.pop("cycles", None)
        total["cycles"] = sum(v.done_at for v in self.vm.vcpus)
        for k, val in self.machine_ctr.c.items():
            total[k] = total.get(k, 0) + val
        for key in ("tlbi.ops", "tlbi.entries", "pgtable.pages_allocated", "pgtable.pages_freed",
                    "fault_cycles", "lock_wait_cycles", "cmo.bytes"):
            total.setdefault(key, 0)
        meta = self.ptmem.meta
        total["pgtable.pages_allocated"] = int(meta[P.M_ALLOCS])
        total["pgtable.pages_freed"] = int(meta[P.M_FREES])
        total["pgtable.pages_in_use"] = int(meta[P.M_INUSE])
        total["pgtable.pages_peak"] = int(meta[P.M_PEAK])
        leaves = self.vm.s2.leaf_counts()
        for lvl in (1, 2, 3):
            total[f"mappings.l{lvl}"] = leaves[lvl]
        total["lock.acquisitions"] = self.lock.acquisitions
        total["lock.contended"] = self.lock.contended
        sim_cycles = int(self.env.now)
        return {
            "counters": dict(sorted(total.items())),
            "per_vcpu": per_vcpu,
            "sim_cycles": sim_cycles,
            "sim_seconds": seconds(sim_cycles, self.cfg.machine.clock_ghz),
            "host_seconds": round(host_seconds, 3),
            "host_bytes": int(self.ptmem.nbytes() + sum(
                v.mmu.tlb.key.nbytes * 3 + v.mmu.wc.tag.nbytes * 3 for v in self.vm.vcpus)),
        }


def run_config(cfg: ExperimentConfig, progress=None) -> dict:
    """Run one validated configuration; returns its results record."""
    return Machine(cfg, progress).run()


__all__ = ["Machine", "SimulationError", "run_config", "np"]
