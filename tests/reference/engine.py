"""The discrete-event engine: SimPy processes over shared stage-2 page tables.

Time is integer CPU cycles. Every context that issues accesses (a guest vCPU, a pKVM host
CPU) is a SimPy process running its access stream in quanta of ``engine.quantum_cycles``
through the batch kernel (:func:`simulator.mmu.batch.run_batch`), advancing simulated time
by the cycles used. TLBs, walk caches and the LRU clock belong to *physical CPUs*: in kvm
mode every vCPU has a CPU of its own; in pkvm mode host CPU *i* is CPU *i* and guest vCPUs
are spread over the CPUs, sharing their TLBs (entries are VMID-tagged).

A stage-2 fault ends the quantum at the faulting access; the context then runs its fault
handler as simulated time: exception entry, the handler's work outside the lock, the lock
(a SimPy lock: waiting contexts queue, the wait is counted), the page-table operation
(charged by what it did: descriptors visited and stored, table pages allocated and freed,
TLBIs, cache maintenance), release, exit; then the faulting access is replayed from its
TLB lookup.

A page-table operation changes the shared tables at the instant it runs; other contexts
see the change at their next quantum. The TLBIs it issued remove entries of its VMID from
every CPU at that instant. The error this brings is bounded by the quantum.

pkvm mode adds the hypervisor's agents: guests created (their memory donated by the host)
and torn down (their stage-2 destroyed, their pages reclaimed by the host, with seed 000's
coalescing), balloon relinquish, and the host abort handler.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.config import ExperimentConfig, seconds, to_cycles
from simulator.engine.machine import Counters, SimulationError
from simulator.hyp import pgtable as P
from simulator.hyp.host import STATE_SHARED_BORROWED
from simulator.hyp.pgtable import PageTableMemory, Stage2
from simulator.mmu import TLBHierarchy, TLBLevelSpec, WalkCache
from simulator.mmu.batch import (
    B_FAULT,
    C_WALK_REFS,
    FETCH,
    FR_IPA,
    FR_KIND,
    FR_STATUS,
    K_CONFLICT,
    WRITE,
    VcpuMMU,
)
from simulator.mmu.walk import W_CONFLICT, W_PERMISSION
from simulator.vms import Placement
from tests.reference.dirtylog import dirty_log_agent, page_table_test_driver
from tests.reference.rebuild import rebuild_block
from workloads.spec import PageTableTestSpec

# Table pages of kvm mode live in their own physical region, far above guest memory.
PT_BASE_SHIFT = 46
OWNER_HOST = 0
OWNER_HYP = 1
FIRST_GUEST_OWNER = 2


# Event order. At one simulated time every agent event (NORMAL priority) runs before every
# CPU event: the CPUs' timeouts and the grants of locks and CPUs to contexts carry a lower
# priority. The compiled engine follows the same rule: it advances the CPUs up to, and not
# including, the time of the next SimPy event.
CPU_PRIORITY = 2


def cpu_event(env: simpy.Environment, delay: int = 0) -> simpy.Event:
    """A timeout of a CPU context (ordered after agent events of the same time)."""
    ev = env.event()
    ev._ok = True
    ev._value = None
    env.schedule(ev, CPU_PRIORITY, delay)
    return ev


def _grant_event(env: simpy.Environment, ev: simpy.Event, cpu: bool) -> None:
    if cpu:
        ev._ok = True
        ev._value = None
        env.schedule(ev, CPU_PRIORITY)
    else:
        ev.succeed()


class Lock:
    """A FIFO reader/writer lock on SimPy time. ``exclusive`` makes every holder a writer
    (a spinlock); otherwise readers share it and writers exclude everyone."""

    def __init__(self, env: simpy.Environment, exclusive: bool):
        self.env = env
        self.exclusive = exclusive
        self.readers = 0
        self.writer = False
        self.queue: list[tuple[simpy.Event, bool, bool]] = []
        self.acquisitions = 0
        self.contended = 0

    def acquire(self, write: bool = False, cpu: bool = False) -> simpy.Event | None:
        """None when granted at once; else an event that fires at the grant."""
        write = write or self.exclusive
        self.acquisitions += 1
        if not self.queue and self._can_grant(write):
            self._grant(write)
            return None
        ev = self.env.event()
        self.contended += 1
        self.queue.append((ev, write, cpu))
        return ev

    def release(self, write: bool = False) -> None:
        write = write or self.exclusive
        if write:
            self.writer = False
        else:
            self.readers -= 1
        while self.queue and self._can_grant(self.queue[0][1]):
            ev, w, cpu = self.queue.pop(0)
            self._grant(w)
            _grant_event(self.env, ev, cpu)

    def _can_grant(self, write: bool) -> bool:
        if self.writer:
            return False
        return self.readers == 0 if write else True

    def _grant(self, write: bool) -> None:
        if write:
            self.writer = True
        else:
            self.readers += 1


def acquire(lock: Lock, ctr: "Counters", env: simpy.Environment, write: bool = False,
            cpu: bool = False, handoff: int = 0):
    """Take ``lock``, counting the wait in ``lock_wait_cycles`` (a generator to yield from);
    ``cpu``: the taker is a CPU context (its grant is a CPU event), whose work starts
    ``handoff`` cycles after a grant that followed a wait (costs.lock_handoff)."""
    t = env.now
    grant = lock.acquire(write, cpu)
    if grant is not None:
        yield grant
        ctr.add("lock_wait_cycles", env.now - t)
        if cpu and handoff:
            yield cpu_event(env, handoff)


class CpuSlot:
    """A physical CPU that several contexts share (pkvm): one holds it, the others queue in
    FIFO order; a release hands it to the head of the queue at once."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.holder = None
        self.queue: list = []

    def request(self, ctx) -> simpy.Event | None:
        if self.holder is None and not self.queue:
            self.holder = ctx
            return None
        ev = self.env.event()
        self.queue.append((ctx, ev))
        return ev

    def release(self) -> None:
        self.holder = None
        if self.queue:
            ctx, ev = self.queue.pop(0)
            self.holder = ctx
            _grant_event(self.env, ev, True)


@dataclass
class OpCosts:
    """Turns an OpReport into cycles with the configured costs."""

    pte_visit: int
    pte_store: int
    pte_put: int
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
        c = (r.visits * self.pte_visit + r.stores * self.pte_store + r.puts * self.pte_put
             + r.tables_allocated * self.table_alloc + r.tables_freed * self.table_free
             + r.tlbi_ipa * self.tlbi_ipa + r.tlbi_range * self.tlbi_range
             + r.tlbi_vmid * self.tlbi_vmid)
        if not self.fwb:
            c += int(r.cmo_bytes / self.cmo_bytes_per_cycle)
        if not self.dic:
            c += int(r.icache_bytes / self.icache_bytes_per_cycle)
        return c


class Cpu:
    """A physical CPU's translation state: TLB hierarchy, walk cache, LRU clock."""

    def __init__(self, index: int, tlb: TLBHierarchy, wc: WalkCache):
        self.index = index
        self.tlb = tlb
        self.wc = wc
        self.clock = np.zeros(1, dtype=np.int64)
        # a CPU that several contexts share (pkvm: the host task and guest vCPUs) is a
        # simpy.Resource they hold for a time slice each; None: one context, never contended
        self.slot = None

    def invalidate(self, vmid: int, page_shift: int, lo: int = 0, hi: int = 0) -> int:
        """Drop the TLB and walk-cache entries of ``vmid`` in [lo, hi) (lo == hi == 0: all of
        them); returns the TLB entries removed."""
        self.wc.invalidate(vmid, lo, hi, page_shift)
        return self.tlb.invalidate(vmid, lo, hi)


class Context:
    """Something that issues accesses (a guest vCPU or a host CPU): its stream, the CPU it
    runs on, its own counters."""

    def __init__(self, index: int, vm: "VM", stream, cpu: Cpu, label: str):
        self.index = index
        self.vm = vm
        self.stream = stream
        self.cpu = cpu
        self.label = label
        c = vm.machine.cfg.costs
        self.mmu = VcpuMMU(cpu.tlb, cpu.wc, vmid=vm.vmid, clock=cpu.clock,
                           costs={"access": c.access, "mem_ref": c.walk_mem_ref,
                                  "wc_hit": c.walk_cache_hit})
        self.ctr = Counters()
        self.done_at = 0
        self.debt = 0  # cycles owed to simulated time, charged with the next timeout
        self.last_fault = (-1, -1)
        self.repeats = 0
        self.stopped = False
        self.skip = False  # the faulting access never succeeds: drop it
        self.enomem_streak = 0

    def counters(self) -> dict[str, int]:
        c = self.mmu.counters()
        c["cycles"] = int(self.done_at)
        for k, val in self.ctr.c.items():
            c[k] = c.get(k, 0) + val
        return dict(sorted(c.items()))


class VM:
    """Something with a stage-2: a guest, or (pkvm) the host."""

    machine: "Machine"
    vmid: int
    s2: Stage2
    owner_id: int
    prefix: str  # counter prefix in pkvm mode ("host.", "guest.<name>.")

    def placement(self, addrs: np.ndarray, kinds: np.ndarray, ctx: Context):
        return addrs, kinds

    def handle_fault(self, ctx: Context, status: int, ipa: int, kind: int):
        raise NotImplementedError


class GuestVM(VM):
    """A guest: its stage-2 (VMID), memslots, vCPUs and the KVM fault handler
    (user_mem_abort())."""

    def __init__(self, machine: "Machine", gcfg, vmid: int, name: str, ptmem, *,
                 owner_id: int = FIRST_GUEST_OWNER, chunk: int | None = None,
                 prefix: str = "", lock: Lock | None = None):
        cfg = machine.cfg
        self.machine = machine
        self.gcfg = gcfg
        self.vmid = vmid
        self.name = name
        self.owner_id = owner_id
        self.prefix = prefix
        self.geom = cfg.geometry
        self.s2 = Stage2(ptmem, self.geom, vmid, fwb=cfg.machine.fwb,
                         tlbi_range=cfg.machine.tlbi_range)
        self.slots = sorted(((s.base, s.size) for s in gcfg.slots()))
        self.pa_base = gcfg.pa_base
        self.mapping = None if gcfg.mapping == "largest" else _size(gcfg.mapping)
        self.backing = _backing(gcfg.backing, self.geom)
        self.ready: dict[tuple[int, int], int] = {}  # backing page -> when it is there
        self.lock = lock or Lock(machine.env, cfg.engine.mmu_lock == "exclusive")
        self.contexts: list[Context] = []
        self.ctr = Counters()
        self._placement = Placement(gcfg.placement, gcfg.placement_unit, self.slots)
        # pkvm: guest memory is host memory donated in chunks; chunk k backs IPA k * chunk
        self.chunk = chunk
        self.chunks: list[int | None] = []
        # pkvm: guest IPAs from here up are host memory shared with the guest (not donated);
        # its stage-2 maps them with the SHARED_BORROWED state in their software bits
        self.shared_from: int | None = None
        self.alive = True
        # dirty logging (kvm mode): logging forces page mappings; written pages are dirty
        self.logging = False
        self.dirty = np.zeros(0, dtype=np.bool_)
        # IPA ranges whose block-level entry is invalid while a table is replaced by a block
        self.windows: list[tuple[int, int]] = []
        # kvm, shared_frames workload: the IPA whose host frame backs an IPA (simulator.rmapsim)
        self.alias: Callable[[int], int] | None = None

    def placement(self, addrs: np.ndarray, kinds: np.ndarray, ctx: Context):
        return self._placement(addrs), kinds

    def pa_of(self, ipa: int) -> int:
        if self.chunk is None:
            return self.pa_base + (ipa if self.alias is None else self.alias(ipa))
        return self.chunks[ipa // self.chunk] + ipa % self.chunk

    def is_shared(self, ipa: int) -> bool:
        """pkvm: is ``ipa`` in the part of guest memory the host shares (not donates)?"""
        return self.shared_from is not None and ipa >= self.shared_from

    def sw_of(self, ipa: int) -> int:
        """The pKVM page state a mapping at ``ipa`` carries in its software bits."""
        return STATE_SHARED_BORROWED if self.is_shared(ipa) else 0

    def _premap_ranges(self):
        """Memslots cut at the shared boundary: (base, size) runs of one page state."""
        for base, size in self.slots:
            cut = self.shared_from
            if cut is not None and base < cut < base + size:
                yield base, cut - base
                yield cut, base + size - cut
            else:
                yield base, size

    def slot_of(self, ipa: int) -> tuple[int, int] | None:
        for base, size in self.slots:
            if base <= ipa < base + size:
                return base, size
        return None

    def block_for(self, ipa: int, slot: tuple[int, int]) -> int:
        """The mapping size the fault handler installs at ``ipa``: the configured size (or the
        largest the backing allows), stepped down until the block lies inside the memslot
        (fault_supports_stage2_huge_mapping) and, in pkvm, inside a physically contiguous
        donated chunk."""
        g = self.geom
        want = self.mapping if self.mapping is not None else self.backing
        if self.chunk is not None:
            want = min(want, self.chunk)
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
        if kind == FETCH or self.machine.cfg.machine.dic:
            prot |= D.PROT_X
        return prot

    def premap(self) -> None:
        """Map all guest memory before time 0, with the blocks the fault handler would use."""
        g = self.geom
        for base, size in self._premap_ranges():
            want = self.mapping if self.mapping is not None else self.backing
            prot = self.prot_for(FETCH if self.machine.cfg.machine.dic else 0)
            sw = self.sw_of(base)
            force_pte = want <= g.page_size
            # one map call over the slot, or (blocks smaller than the largest, or donated
            # chunks that are not physically contiguous) one per mapping size / chunk
            if self.chunk is not None:
                step = self.chunk if force_pte else min(want, self.chunk)
            elif force_pte or want >= g.size(g.block_levels()[0]):
                step = size
            else:
                step = want
            for off in range(0, size, step):
                rep = self.s2.map(base + off, min(step, size - off), self.pa_of(base + off),
                                  prot, force_pte=force_pte, sw=sw)
                if rep.ret != 0:
                    break
            if rep.ret != 0:
                raise SimulationError("guest.premap", f"mapping failed ({rep.ret})")

    def handle_fault(self, ctx: Context, status: int, ipa: int, kind: int):
        """A SimPy process body: user_mem_abort() for one stage-2 fault of ``ctx``."""
        m = self.machine
        env = m.env
        costs = m.cfg.costs
        t0 = env.now
        slot = self.slot_of(ipa)
        if slot is None:
            raise SimulationError(
                "workload", f"vCPU {ctx.index} accessed IPA {ipa:#x}, outside guest memory "
                f"({', '.join(f'[{b:#x}, {b + s:#x})' for b, s in self.slots)}); "
                "set guest.placement: first_touch to place trace addresses in guest memory")
        if status == W_CONFLICT:
            # a TLB conflict abort: the handler invalidates this CPU's TLB for the VMID and
            # returns; the access is replayed (no lock, no page-table work)
            ctx.ctr.add("tlb_conflict_aborts")
            ctx.cpu.invalidate(self.vmid, self.geom.page_shift)
            ctx.debt += costs.tlb_conflict_abort
            return
        if any(lo <= ipa < hi for lo, hi in self.windows):
            ctx.ctr.add("faults.in_window")
        yield cpu_event(env, costs.fault_entry_exit // 2 + costs.fault_handler)
        if not self.gcfg.populated and status != W_PERMISSION:
            # gfn_to_pfn(): the host allocates and zeroes the backing page on its first
            # fault; whoever faults on it meanwhile waits until it is there
            key = (slot[0], (ipa - slot[0]) // self.backing)
            ready = self.ready.get(key)
            wait = 0
            if ready is None:
                wait = costs.page_alloc + math.ceil(self.backing / costs.zero_bytes_per_cycle)
                self.ready[key] = env.now + wait
                ctx.ctr.add("first_touch.pages")
                ctx.ctr.add("first_touch.cycles", wait)
            elif ready > env.now:
                wait = ready - env.now
                ctx.ctr.add("first_touch.wait_cycles", wait)
            if wait:
                yield cpu_event(env, wait)
        if self.chunk is not None and self.chunks[ipa // self.chunk] is None:
            # a ballooned chunk touched again: the host donates a new one
            yield from m.donate_chunk(self, ipa // self.chunk, ctx.ctr, cpu=True)
        yield from acquire(self.lock, ctx.ctr, env, cpu=True, handoff=costs.lock_handoff)
        if self.chunk is not None and self.chunks[ipa // self.chunk] is None:
            # its chunk was ballooned away after the fault's check: nothing to map, the
            # access faults again (and has a chunk donated)
            ctx.ctr.add("faults.spurious")
            ctx.repeats = 0
            yield from m.end_fault(ctx, self.lock, t0, 0)
            return
        op_cycles = 0
        if self.logging and kind == WRITE:
            self.mark_dirty(ctx, ipa)
            op_cycles += costs.dirty_page
        leaf_level = 3
        if status == W_PERMISSION:
            leaf_level = self.s2.get_leaf(ipa)[1]
        if status == W_PERMISSION and not (self.logging and leaf_level < 3):
            clear_bits = int(D.XN) if kind == FETCH else 0
            set_bits = int(D.S2AP_W) if kind == WRITE else int(D.S2AP_R)
            rep = self.s2.update_attrs(ipa, 1, set_bits=set_bits, clear_bits=clear_bits,
                                       handle_fault=True)
            # kvm_pgtable_stage2_relax_perms(): a local TLBI of that IPA
            lo = ipa & ~(self.geom.page_size - 1)
            ctx.cpu.tlb.invalidate(self.vmid, lo, lo + self.geom.page_size)
            op_cycles += m.op_costs.cycles(rep) + costs.perm_fault_handler + costs.tlbi_ipa
            ctx.ctr.add("tlbi.ops")
        else:
            # a translation fault, or a write to a block while logging (force_pte: the map
            # replaces the block by a table holding the one page)
            bs = self.geom.page_size if self.logging else self.block_for(ipa, slot)
            start = ipa & ~(bs - 1)
            prot = self.prot_for(kind)
            if self.logging and kind != WRITE:
                prot &= ~D.PROT_W  # user_mem_abort(): writable only after a write fault
            level = self.geom.level_for_size(bs)
            loc = self.s2.locate(start, level) if level < 3 else None
            rebuilds = loc is not None and D.is_table(D.U(loc[2]), level)
            at_fault = m.cfg.hyp.cmo_at == "fault"
            if at_fault and not m.cfg.machine.fwb and status != W_PERMISSION:
                # 5.11's user_mem_abort(): clean_dcache_guest_page(pfn, vma_pagesize) under
                # the lock, before the map, whether or not the map will find the leaf there
                # (not for a permission fault, even one that splits a block while logging)
                ctx.ctr.add("cmo.bytes", bs)
                cmo = int(bs / costs.cmo_bytes_per_cycle)
                if rebuilds:
                    yield cpu_event(env, cmo)  # before the rebuild changes any entry
                else:
                    op_cycles += cmo
            if rebuilds:
                # a table where the block goes: rebuild it (seeds 001 and 003)
                op_cycles += yield from rebuild_block(self, ctx, start, level, loc, prot)
                yield from m.end_fault(ctx, self.lock, t0, op_cycles)
                return
            rep = self.s2.map(start, bs, self.pa_of(start), prot, handle_fault=True,
                              sw=self.sw_of(start), force_pte=self.logging,
                              shared=not self.lock.exclusive, cmo=not at_fault)
            if rep.ret == -P.ENOMEM:
                # the fault returns -ENOMEM to its caller, which tops up and re-enters the
                # guest: the access faults again. Only a pool that never refills stops the run.
                ctx.ctr.add("faults.enomem")
                ctx.enomem_streak += 1
                if ctx.enomem_streak > 8:
                    field = "hyp.pool_pages" if self.chunk is not None else "guest"
                    raise SimulationError(field, f"{ctx.label}: no page-table memory left to "
                                          f"map IPA {ipa:#x} (the pool stays exhausted)")
            else:
                ctx.enomem_streak = 0
            if rep.ret == -P.EAGAIN:
                # another walker got there first (or holds the entry locked): the replay
                # may fault again while it works, which is no sign of a stuck handler
                ctx.ctr.add("faults.spurious")
                ctx.repeats = 0
            op_cycles += m.op_costs.cycles(rep)
            m.apply_tlbis(self.vmid, self.geom.page_shift, rep)
            if m.rmap is not None and rep.ret == 0:
                op_cycles += m.rmap.on_map(start, bs)  # rmap_add() under the lock
        m.account_op(ctx.ctr, rep)
        yield from m.end_fault(ctx, self.lock, t0, op_cycles)

    def mark_dirty(self, ctx: Context, ipa: int) -> None:
        """mark_page_dirty(): the page's bit in the memslot's dirty bitmap."""
        page = ipa >> self.geom.page_shift
        if page >= self.dirty.shape[0]:
            return
        if not self.dirty[page]:
            self.dirty[page] = True
            ctx.ctr.add("dirty.pages")


def _size(text: str) -> int:
    from workloads.units import parse_size

    return parse_size(text)


def _backing(backing: str, g: Geometry) -> int:
    return {"anonymous": g.page_size, "thp": g.size(2), "hugetlb_2m": 2 << 20,
            "hugetlb_1g": 1 << 30}[backing]


class MemorySystem:
    """The memory throughput all CPUs share: a queue of bytes served at ``rate`` bytes per
    cycle (0: unlimited), in the order the quanta that need them start."""

    def __init__(self, rate: float):
        self.rate = rate
        self.busy_until = 0

    def quantum(self, ctr: Counters, now: int, cycles: int, nbytes: int) -> int:
        """A quantum of ``cycles`` starting at ``now`` that moves ``nbytes``: how long it
        lasts (until its bytes are served, if that is later)."""
        if not self.rate or nbytes <= 0:
            return cycles
        start = max(now, self.busy_until)
        self.busy_until = start + math.ceil(nbytes / self.rate)
        ctr.add("mem.bytes", nbytes)
        ctr.add("mem.stall_cycles", max(0, self.busy_until - now - cycles))
        return max(cycles, self.busy_until - now)


class Machine:
    """The simulated machine for one variant (kvm mode: one guest; pkvm: see PkvmMachine)."""

    rmap = None  # kvm mode with hyp.rmap: pte_list: an RmapAgent

    def __init__(self, cfg: ExperimentConfig, progress: Callable[[int, int], None] | None = None):
        self.cfg = cfg
        self.env = simpy.Environment()
        c = cfg.costs
        self.op_costs = OpCosts(c.pte_visit, c.pte_store, c.pte_put, c.table_alloc, c.table_free,
                                c.tlbi_ipa, c.tlbi_range, c.tlbi_vmid, c.cmo_bytes_per_cycle,
                                c.icache_bytes_per_cycle, cfg.machine.fwb, cfg.machine.dic)
        self.progress = progress
        self.machine_ctr = Counters()
        self.done_accesses = 0
        self.memory = MemorySystem(cfg.machine.mem_bytes_per_cycle)
        self.totals: list[int | None] = []
        self.cpus: list[Cpu] = []
        self.contexts: list[Context] = []
        self.build()

    # -- construction --------------------------------------------------------------------
    def make_tlb(self, g: Geometry) -> TLBHierarchy:
        specs = []
        for lv in self.cfg.tlb.levels:
            sizes = lv.page_sizes or list(g.leaf_sizes().values())
            leaf_levels = tuple(sorted(g.level_for_size(s) for s in sizes))
            specs.append(TLBLevelSpec(lv.name, lv.sets, lv.ways, lv.latency, leaf_levels,
                                      lv.serves))
        return TLBHierarchy(specs, g.page_shift)

    def new_cpu(self, g: Geometry) -> Cpu:
        cpu = Cpu(len(self.cpus), self.make_tlb(g),
                  WalkCache(self.cfg.tlb.walk_cache.entries_per_level))
        self.cpus.append(cpu)
        return cpu

    def build(self) -> None:
        cfg = self.cfg
        g = cfg.geometry
        self.ptmem = PageTableMemory(g.page_shift, 1 << PT_BASE_SHIFT if cfg.machine.pa_bits > 46
                                     else 1 << (cfg.machine.pa_bits - 1))
        self.vm = GuestVM(self, cfg.guest, 1, "guest", self.ptmem)
        self.lock = self.vm.lock
        self.stages: dict[str, dict] = {}
        if isinstance(cfg.workload, PageTableTestSpec):
            # the stage driver hands each vCPU its stream at the start of every stage
            streams = [iter(()) for _ in range(cfg.guest.vcpus)]
        else:
            streams = cfg.workload.build(cfg.guest.vcpus, cfg.seed, cfg.guest.memory,
                                         cfg.engine.chunk)
        for i, stream in enumerate(streams):
            ctx = Context(i, self.vm, stream, self.new_cpu(g), f"vcpu{i}")
            self.vm.contexts.append(ctx)
            self.contexts.append(ctx)
        self.totals = [getattr(s, "total", None) for s in streams]
        if cfg.hyp.rmap == "pte_list":
            from tests.reference.rmapsim import RmapAgent

            self.rmap = RmapAgent(self)

    # -- hypervisor-side helpers ---------------------------------------------------------
    def apply_tlbis(self, vmid: int, page_shift: int, rep: P.OpReport) -> int:
        """Apply an operation's TLB invalidations (entries of ``vmid``) to every CPU; returns
        the TLB entries removed (counted in tlbi.entries)."""
        removed = 0
        for rec in rep.tlbis:
            lo, hi = (0, 0) if rec.kind == "vmid" else (rec.addr, rec.addr + rec.size)
            removed += sum(cpu.invalidate(vmid, page_shift, lo, hi) for cpu in self.cpus)
        self.machine_ctr.add("tlbi.entries", removed)
        return removed

    def flush_vmid(self, vmid: int, page_shift: int) -> int:
        """TLBI VMALLS12E1IS outside a page-table operation: every CPU drops the VMID's
        entries (counted in tlbi.entries)."""
        removed = sum(cpu.invalidate(vmid, page_shift) for cpu in self.cpus)
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

    def end_fault(self, ctx: Context, lock: Lock, t0: int, op_cycles: int):
        """The common end of a fault handler: the work under the lock, the release, and the
        return to the interrupted context. The return takes the second half of the
        entry/exit cost; it is charged with the context's next quantum (the context does
        nothing observable meanwhile)."""
        costs = self.cfg.costs
        yield cpu_event(self.env, costs.lock + op_cycles)
        lock.release()
        exit_cycles = costs.fault_entry_exit - costs.fault_entry_exit // 2
        ctx.debt += exit_cycles
        ctx.ctr.add("fault_cycles", self.env.now - t0 + exit_cycles)

    # -- context processes ---------------------------------------------------------------
    def context_process(self, ctx: Context):
        """Run a context's stream quantum by quantum, handling its faults. On a shared CPU
        the context holds the CPU for up to ``engine.timeslice`` while others wait, then
        yields it (the scheduler's round robin); its own fault handling runs on that CPU."""
        env = self.env
        quantum = self.cfg.engine.quantum_cycles
        max_cycles = self.cfg.engine.max_cycles
        timeslice = to_cycles(self.cfg.engine.timeslice, self.cfg.machine.clock_ghz)
        vm = ctx.vm
        slot = ctx.cpu.slot
        held = False
        since = 0
        yield cpu_event(env)  # a context starts as a CPU event
        try:
            for addrs, kinds in ctx.stream:
                addrs, kinds = vm.placement(addrs, kinds, ctx)
                n = len(addrs)
                i = 0
                while i < n:
                    if ctx.stopped or (max_cycles is not None and env.now >= max_cycles):
                        ctx.done_at = env.now
                        return
                    if slot is not None and not held:
                        t0 = env.now
                        grant = slot.request(ctx)
                        if grant is not None:
                            yield grant
                        held = True
                        since = env.now
                        ctx.ctr.add("sched.wait_cycles", since - t0)
                        ctx.ctr.add("sched.slices")
                    before = i
                    refs = int(ctx.mmu.ctr[C_WALK_REFS])
                    i, used, status = ctx.mmu.run(vm.s2, addrs, kinds, i, n, quantum)
                    self.done_accesses += i - before
                    costs = self.cfg.costs
                    used = self.memory.quantum(
                        ctx.ctr, env.now, used, (i - before) * costs.access_bytes
                        + (int(ctx.mmu.ctr[C_WALK_REFS]) - refs) * costs.walk_ref_bytes)
                    used += ctx.debt
                    ctx.debt = 0
                    if used:
                        yield cpu_event(env, used)
                    if status == B_FAULT:
                        f = ctx.mmu.fault
                        ipa = int(f[FR_IPA]) & D.MASK64
                        self._check_progress(ctx, i, ipa, before)
                        yield from vm.handle_fault(ctx, int(f[FR_STATUS]), ipa, int(f[FR_KIND]))
                        if ctx.skip:
                            ctx.skip = False
                            i += 1
                    if held and slot.queue and env.now - since >= timeslice:
                        slot.release()
                        held = False
            if ctx.debt:
                yield cpu_event(env, ctx.debt)
                ctx.debt = 0
            ctx.done_at = env.now
        finally:
            if held:
                slot.release()

    @staticmethod
    def _check_progress(ctx: Context, index: int, ipa: int, before: int) -> None:
        """A fault the handler cannot resolve would replay forever: stop with an error."""
        key = (index, ipa)
        if key == ctx.last_fault and index == before:
            ctx.repeats += 1
            if ctx.repeats >= 16:
                raise SimulationError("engine", f"{ctx.label}: the access to {ipa:#x} keeps "
                                      "faulting after its fault was handled")
        else:
            ctx.last_fault = key
            ctx.repeats = 0

    def _progress_process(self, period: int):
        total = sum(t for t in self.totals if t is not None) if self.totals and all(
            t is not None for t in self.totals) else 0
        while True:
            yield self.env.timeout(period)
            self.progress(self.done_accesses, total)

    def vcpu_processes(self, contexts: list[Context]) -> list:
        """Start running ``contexts`` from the beginning of their streams: one SimPy process
        each."""
        return [self.env.process(self.context_process(c)) for c in contexts]

    def start(self) -> list:
        cfg = self.cfg
        if cfg.guest.premap:
            self.vm.premap()
        if cfg.hyp.rebuild == "replace":
            for ctx in self.contexts:  # TLB conflicts become possible: look for them
                ctx.mmu.costs[K_CONFLICT] = 1
        if cfg.hyp.dirty_log.enable_at is not None:
            self.env.process(dirty_log_agent(self, self.vm))
        if isinstance(cfg.workload, PageTableTestSpec):
            return [self.env.process(page_table_test_driver(self))]
        procs = self.vcpu_processes(self.contexts)
        if self.rmap is not None:
            procs.append(self.env.process(self.rmap.drop_phase(list(procs))))
        return procs

    def run(self) -> dict:
        t0 = time.perf_counter()
        procs = self.start()
        if self.progress is not None:
            self.env.process(self._progress_process(self.cfg.engine.quantum_cycles * 50))
        self.env.run(until=simpy.AllOf(self.env, procs))
        self.finish()
        host = time.perf_counter() - t0
        if self.progress is not None:
            self.progress(self.done_accesses, self.done_accesses)
        return self.results(host)

    def finish(self) -> None:
        """Called once every process has ended, before the results are gathered."""

    # -- results -------------------------------------------------------------------------
    def counter_totals(self, per_vcpu: list | None = None) -> dict[str, int]:
        """Every context's counters added up, plus the machine's (each context's own dict
        is appended to ``per_vcpu`` when given)."""
        total: dict[str, int] = {}
        for ctx in self.contexts:
            c = ctx.counters()
            if per_vcpu is not None:
                per_vcpu.append(c)
            for k, val in c.items():
                total[k] = total.get(k, 0) + val
        for k, val in self.machine_ctr.c.items():
            total[k] = total.get(k, 0) + val
        return total

    def results(self, host_seconds: float) -> dict:
        per_vcpu: list = []
        total = self.counter_totals(per_vcpu)  # "cycles": the contexts' end times added up
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
        total["lock.acquisitions"] = self.lock.acquisitions
        total["lock.contended"] = self.lock.contended
        extra = {}
        for stage, figs in self.stages.items():
            extra[f"stage.{stage}_seconds"] = figs["seconds"]
            for k, val in figs.items():
                if k != "seconds":
                    total[f"stage.{stage}.{k}"] = val
        if self.rmap is not None:
            total.update(self.rmap.counters())
        sim_cycles = int(self.env.now)
        return {
            **extra,
            "counters": dict(sorted(total.items())),
            "per_vcpu": per_vcpu,
            "sim_cycles": sim_cycles,
            "sim_seconds": seconds(sim_cycles, self.cfg.machine.clock_ghz),
            "host_seconds": round(host_seconds, 3),
            "host_bytes": int(self.ptmem.nbytes() + sum(
                cpu.tlb.key.nbytes * 3 + cpu.wc.tag.nbytes * 3 for cpu in self.cpus)),
        }


def run_config(cfg: ExperimentConfig, progress=None) -> dict:
    """Run one validated configuration; returns its results record."""
    if cfg.hyp.mode == "pkvm":
        from tests.reference.pkvm import PkvmMachine

        return PkvmMachine(cfg, progress).run()
    return Machine(cfg, progress).run()


__all__ = ["Machine", "SimulationError", "run_config", "to_cycles"]
