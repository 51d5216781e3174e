"""The engine's Python side: the machine's parts, the loop's SimPy process, and what agents use.

SimPy is the clock and the world of the hypervisor's agents (guest creation and teardown,
ownership changes, balloon, dirty-log switches, stage drivers, the reverse map's drop phase):
each is a SimPy process. Every CPU context runs in the compiled engine
(:func:`simulator.engine.loop.advance`), driven by one SimPy process that advances the
contexts up to the next SimPy event (the horizon), serves the engine's call-outs and hands
its signals to the agents (a lock they were granted, a context that finished).

An agent never names the engine's arrays. It uses:

* :meth:`Machine.start` / :meth:`Machine.stop` to run contexts (each start returns the
  SimPy events that fire when they finish);
* :meth:`Machine.acquire` / :meth:`Machine.release`, the same FIFO locks the CPUs take;
* :meth:`Machine.apply_tlbis` / :meth:`Machine.flush_vmid` to deliver invalidations to
  every CPU, :meth:`Machine.account_op` and :attr:`Machine.op_costs` to count and charge
  a page-table operation, :meth:`Machine.unmap_pages` to unmap pages one by one (compiled);
* a hook it may define: ``counters() -> dict`` (its results).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import simpy

from simulator.arch import descriptors as D
from simulator.config import ExperimentConfig
from simulator.engine import layout as L
from simulator.engine import sched as S
from simulator.engine.fault import invalidate_all, unmap_pages
from simulator.engine.loop import advance
from simulator.engine.parts import (
    Context,
    Counters,
    Cpu,
    OpCosts,
    SimulationError,
    _grow_rows,
)
from simulator.hyp import pgtable as P
from simulator.hyp.host import N_HW
from simulator.hyp.hyp_pool import HypBugError
from simulator.hyp.page_rmap import empty_page_rmap
from simulator.hyp.pools import empty_store
from simulator.hyp.rebuild import program
from simulator.mmu import TLBHierarchy, TLBLevelSpec, WalkCache
from simulator.mmu.batch import K_CONFLICT, N_COSTS, N_COUNTERS, N_FAULT, VcpuMMU


class Machine:
    """The simulated machine of one variant: CPUs, stage-2s (VMs), locks, contexts, agents,
    and the compiled engine's arrays."""

    def __init__(self, cfg: ExperimentConfig, progress: Callable[[int, int], None] | None = None):
        self.cfg = cfg
        self.env = simpy.Environment()
        self.progress = progress
        self.machine_ctr = Counters()
        self.totals: list[int | None] = []
        self.cpus: list[Cpu] = []
        self.vms: list = []
        self.contexts: list[Context] = []
        self.agents: list = []
        self.mems: list[P.PageTableMemory] = []
        g = cfg.geometry
        c = cfg.costs
        pr = np.zeros(L.N_PARAMS, dtype=np.int64)
        pr[L.P_PAGE_SHIFT] = g.page_shift
        self.page_shift = g.page_shift
        pr[L.P_QUANTUM] = cfg.engine.quantum_cycles
        pr[L.P_MAX_CYCLES] = -1 if cfg.engine.max_cycles is None else cfg.engine.max_cycles
        pr[L.P_EXIT] = c.fault_entry_exit - c.fault_entry_exit // 2
        pr[L.P_LOCK] = c.lock
        pr[L.P_HANDOFF] = c.lock_handoff
        pr[L.P_DIRTY_PAGE] = c.dirty_page
        pr[L.P_PERM_HANDLER] = c.perm_fault_handler
        pr[L.P_TLBI_IPA] = c.tlbi_ipa
        pr[L.P_CONFLICT] = c.tlb_conflict_abort
        pr[L.P_FWB] = int(cfg.machine.fwb)
        pr[L.P_DIC] = int(cfg.machine.dic)
        # 5.11's clean at every fault (none with FWB): the fault handler and the rebuild
        # program both follow this one flag
        clean_at_fault = cfg.hyp.cmo_at == "fault" and not cfg.machine.fwb
        pr[L.P_CMO_AT_FAULT] = int(clean_at_fault)
        pr[L.P_ACC_BYTES] = c.access_bytes
        pr[L.P_WALK_BYTES] = c.walk_ref_bytes
        pr[L.P_C_VISIT] = c.pte_visit
        pr[L.P_C_STORE] = c.pte_store
        pr[L.P_C_PUT] = c.pte_put
        pr[L.P_GUEST_FAULT] = c.guest_fault
        pr[L.P_C_ALLOC] = c.table_alloc
        pr[L.P_C_FREE] = c.table_free
        pr[L.P_C_TLBI_IPA] = c.tlbi_ipa
        pr[L.P_C_TLBI_RANGE] = c.tlbi_range
        pr[L.P_C_TLBI_VMID] = c.tlbi_vmid
        from simulator.config import to_cycles

        pr[L.P_TIMESLICE] = to_cycles(cfg.engine.timeslice, cfg.machine.clock_ghz)
        pr[L.P_ATTR] = D.prot_attr(D.PROT_R | D.PROT_W)
        pr[L.P_ATTR_X] = D.prot_attr(D.PROT_R | D.PROT_W | D.PROT_X)
        self.pr = pr
        self.fp = np.zeros(L.N_FPARAMS, dtype=np.float64)
        self.fp[L.FP_CMO] = c.cmo_bytes_per_cycle
        self.fp[L.FP_ICACHE] = c.icache_bytes_per_cycle
        self.fp[L.FP_BW] = cfg.machine.mem_bytes_per_cycle
        self.fp[L.FP_ZERO] = c.zero_bytes_per_cycle
        self.op_costs = OpCosts(pr, self.fp)
        self.costs = np.zeros(N_COSTS, dtype=np.int64)
        self.costs[0] = c.access
        self.costs[1] = c.walk_mem_ref
        self.costs[2] = c.walk_cache_hit
        if cfg.hyp.rebuild == "replace":
            self.costs[K_CONFLICT] = 1  # TLB conflicts become possible: look for them
        self.rbprog = program(cfg.hyp.rebuild, cfg.machine.bbm_level, clean_at_fault)
        self.block_levels = np.array(g.block_levels(), dtype=np.int64)
        self.owner = np.zeros(0, dtype=np.uint8)
        self.dirty = np.zeros(0, dtype=np.bool_)
        # the engine's arrays (grown as parts are added)
        self.g = np.zeros(L.N_GLOBALS, dtype=np.int64)
        self.g[L.G_PENDING] = -1
        self.vmt = np.zeros((0, L.N_VM_FIELDS), dtype=np.int64)
        self.slots = np.zeros((0, 3), dtype=np.int64)  # base, size, first page in touch
        self.touch = np.zeros(0, dtype=np.int64)
        self.chunks = np.zeros(0, dtype=np.int64)
        self.stats = np.zeros((0, P.STAT_SIZE), dtype=np.int64)
        self.lk = np.zeros((0, S.N_LOCK_FIELDS), dtype=np.int64)
        self.cs = np.zeros((0, S.N_CPU_FIELDS), dtype=np.int64)
        self._ctx_cap = 0
        self._resize_contexts(8)
        self.rep = np.zeros(P.REPORT_SIZE, dtype=np.int64)
        self.tlog = np.zeros((P.TLOG_CAPACITY, 5), dtype=np.int64)
        self.stk = np.zeros((4, 5), dtype=np.uint64)
        self.loc = np.zeros(3, dtype=np.int64)
        # pKVM's host abort: its work area and regions (set_host)
        self.hw = np.zeros(N_HW, dtype=np.int64)
        self.hreg = np.zeros((0, 3), dtype=np.int64)
        self._empty_store = empty_store()
        self.rmap = None  # the reverse map of the guest that keeps one (PageRmap)
        # the guest stage-1 (simulator.guest.stage1.GuestStage1) of the guest that has one,
        # and per VMID whether its guest has one
        self.stage1 = None
        self.s1vmid = np.zeros(1, dtype=np.int64)
        self._no_s1t = np.zeros((0, 1), dtype=np.uint64)
        self._no_s1p = np.zeros(0, dtype=np.int64)
        self.s1out = np.zeros(3, dtype=np.int64)
        self._frozen = False
        self._agent_events: dict[int, simpy.Event] = {}
        self._next_agent = 0
        self._wake: simpy.Event | None = None
        self._loop_proc = None

    # -- parts -------------------------------------------------------------------------------
    def make_tlb(self) -> TLBHierarchy:
        cfg = self.cfg
        specs = []
        for lv in cfg.tlb.levels:
            sizes = lv.page_sizes or cfg.tlb_entry_sizes()
            specs.append(TLBLevelSpec(lv.name, lv.sets, lv.ways, lv.latency, (), lv.serves,
                                      tuple(s.bit_length() - 1 for s in sizes),
                                      tuple(s.bit_length() - 1 for s in lv.stage2_sizes)))
        return TLBHierarchy(specs, cfg.geometry.page_shift)

    def add_cpu(self, shared: bool = False) -> Cpu:
        """A physical CPU (all are added before the first context starts)."""
        assert not self._frozen, "CPUs are added before the run starts"
        cpu = Cpu(len(self.cpus), self.make_tlb(),
                  WalkCache(self.cfg.tlb.walk_cache.entries_per_level), shared)
        self.cpus.append(cpu)
        self.cs = _grow_rows(self.cs, len(self.cpus))
        self.cs[cpu.index, S.C_SHARED] = int(shared)
        self.cs[cpu.index, S.C_HOLDER] = -1
        return cpu

    def add_memory(self, mem: P.PageTableMemory) -> int:
        """A table memory (at most two: kvm has one, pkvm the host's and the guests')."""
        self.mems.append(mem)
        assert len(self.mems) <= 2
        return len(self.mems) - 1

    def new_lock(self, exclusive: bool) -> int:
        self.lk = _grow_rows(self.lk, self.lk.shape[0] + 1)
        self.lk[-1, S.L_EXCL] = int(exclusive)
        self._resize_locks()
        return self.lk.shape[0] - 1

    def add_vm(self, vm, row: dict[int, int], slots=(), chunks: int = 0) -> int:
        """Register a stage-2: its row of the VM table (``row``: V_* -> value), its memslots
        and ``chunks`` donated-chunk addresses (all -1). The Stage2's leaf counts become the
        engine's."""
        v = self.vmt.shape[0]
        self.vmt = _grow_rows(self.vmt, v + 1)
        for k, val in row.items():
            self.vmt[v, k] = val
        self.vmt[v, L.V_SLOT_OFF] = self.slots.shape[0]
        self.vmt[v, L.V_NSLOT] = len(slots)
        shift = self.vmt[v, L.V_TOUCH_SHIFT]
        for base, size in slots:
            self.slots = np.concatenate([self.slots, np.array([[base, size, self.touch.size]],
                                                              np.int64)])
            if shift:  # not populated: each backing page is touched first by a fault
                self.touch = np.concatenate([self.touch, np.full(-(-size >> shift), -1,
                                                                  np.int64)])
        self.vmt[v, L.V_CHUNK_OFF] = self.chunks.shape[0]
        if chunks:
            self.chunks = np.concatenate([self.chunks, np.full(chunks, -1, np.int64)])
        self.stats = _grow_rows(self.stats, v + 1)
        self.vms.append(vm)
        self._point_stats()
        return v

    def _point_stats(self) -> None:
        for v, vm in enumerate(self.vms):
            s2 = vm.s2
            self.stats[v] = s2.stat
            s2.stat = self.stats[v]

    def add_context(self, vm, stream, cpu: Cpu, label: str) -> Context:
        """A context (not running until :meth:`start`)."""
        self._freeze_cpus()
        i = len(self.contexts)
        if i >= self._ctx_cap:
            self._resize_contexts(2 * self._ctx_cap)
        mmu = VcpuMMU(cpu.tlb, cpu.wc, vmid=vm.vmid, clock=cpu.clock)
        mmu.costs = self.costs
        mmu.layout = self.layout
        mmu.owner = self.owner
        if int(self.vmt[vm.index, L.V_S1]):
            mmu.s1p = self.stage1.s1p  # its counters() report the nested walk's
        mmu.ctr = self.ctr2[i]
        mmu.fault = self.fault2[i]
        ctx = Context(i, vm, stream, cpu, label, mmu, self)
        self.st[i, :] = 0
        self.st[i, L.S_STATE] = L.ST_IDLE
        self.st[i, L.S_VM] = vm.index
        self.st[i, L.S_CPU] = cpu.index
        self.contexts.append(ctx)
        return ctx

    def _resize_contexts(self, cap: int) -> None:
        old = self._ctx_cap
        self._ctx_cap = cap
        width = max(1024, self.cfg.engine.chunk)
        if old == 0:
            self.st = np.zeros((cap, L.N_STATE), dtype=np.int64)
            self.ec = np.zeros((cap, L.N_EXTRA), dtype=np.int64)
            self.tc = np.zeros((cap, L.N_EXTRA), dtype=np.int8)
            self.ctr2 = np.zeros((cap, N_COUNTERS), dtype=np.int64)
            self.fault2 = np.zeros((cap, N_FAULT), dtype=np.int64)
            self.addrs2 = np.zeros((cap, width), dtype=np.uint64)
            self.kinds2 = np.zeros((cap, width), dtype=np.uint8)
            self.ht = np.zeros(cap, dtype=np.int64)
            self.hs = np.zeros(cap, dtype=np.int64)
            self.hc = np.zeros(cap, dtype=np.int64)
            self.win = np.zeros((cap, 3), dtype=np.int64)
        else:
            for name in ("st", "ec", "tc", "ctr2", "fault2", "addrs2", "kinds2", "ht", "hs",
                         "hc", "win"):
                setattr(self, name, _grow_rows(getattr(self, name), cap))
            for ctx in self.contexts:
                ctx.mmu.ctr = self.ctr2[ctx.index]
                ctx.mmu.fault = self.fault2[ctx.index]
        self.sig = np.zeros((2 * cap + 64, 2), dtype=np.int64)
        self._resize_locks()

    def _resize_locks(self) -> None:
        """Lock and CPU queues hold every context and agent at once."""
        width = self._ctx_cap + 64
        lq = np.zeros((self.lk.shape[0], width, 2), dtype=np.int64)
        cq = np.zeros((self.cs.shape[0], width), dtype=np.int64)
        # queues are rings: copy each in order from its head
        old_lq = getattr(self, "lq", None)
        if old_lq is not None:
            for lock in range(min(old_lq.shape[0], lq.shape[0])):
                h, n = self.lk[lock, S.L_QHEAD], self.lk[lock, S.L_QN]
                for j in range(n):
                    lq[lock, j] = old_lq[lock, (h + j) % old_lq.shape[1]]
                self.lk[lock, S.L_QHEAD] = 0
        old_cq = getattr(self, "cq", None)
        if old_cq is not None:
            for cpu in range(min(old_cq.shape[0], cq.shape[0])):
                h, n = self.cs[cpu, S.C_QHEAD], self.cs[cpu, S.C_QN]
                for j in range(n):
                    cq[cpu, j] = old_cq[cpu, (h + j) % old_cq.shape[1]]
                self.cs[cpu, S.C_QHEAD] = 0
        self.lq = lq
        self.cq = cq

    def _freeze_cpus(self) -> None:
        """Stack the CPUs' TLB, walk-cache and clock arrays so the engine indexes them by
        CPU; the Python objects keep views."""
        if self._frozen:
            return
        self._frozen = True
        cpus = self.cpus
        for name in ("key", "stamp", "pa", "perm"):
            stacked = np.stack([getattr(cpu.tlb, name) for cpu in cpus])
            for i, cpu in enumerate(cpus):
                setattr(cpu.tlb, name, stacked[i])
            setattr(self, "tlb_" + name, stacked)
        for name in ("tag", "row", "stamp"):
            stacked = np.stack([getattr(cpu.wc, name) for cpu in cpus])
            for i, cpu in enumerate(cpus):
                setattr(cpu.wc, name, stacked[i])
            setattr(self, "wc_" + name, stacked)
        self.clock = np.stack([cpu.clock for cpu in cpus])
        for i, cpu in enumerate(cpus):
            cpu.clock = self.clock[i]
        t0 = cpus[0].tlb
        self.tlb_geom = (t0.off, t0.sets, t0.ways, t0.latency, t0.sizes, t0.serves)
        self.tlb_s2sizes = t0.s2sizes
        from simulator.mmu.batch import batch_layout

        self.layout = batch_layout(t0.sets, t0.sizes, t0.serves)
        self._resize_locks()
        self.pr[L.P_GROW] = int(not getattr(self.mems[0], "pools", None))

    def set_stage1(self, vm, stage1) -> None:
        """The guest ``vm`` translates VAs through ``stage1`` (a GuestStage1) over its
        stage-2 (one guest per machine has one)."""
        assert self.stage1 is None, "one guest with a stage-1 per machine"
        self.stage1 = stage1
        self.vmt[vm.index, L.V_S1] = 1
        self.s1vmid = np.zeros(vm.vmid + 1, dtype=np.int64)
        self.s1vmid[vm.vmid] = 1

    def set_host(self, hw: np.ndarray, hreg: np.ndarray) -> None:
        """pkvm: the host stage-2's abort work area and regions (simulator.hyp.host)."""
        self.hw = hw
        self.hreg = hreg

    def set_owner_record(self, owner: np.ndarray, base: int) -> None:
        """pkvm: every completed access is checked against this ownership record."""
        self.owner = owner
        self.pr[L.P_OWNER_BASE] = base
        for ctx in self.contexts:
            ctx.mmu.owner = owner

    # -- running contexts --------------------------------------------------------------------
    def start(self, contexts: list[Context]) -> list[simpy.Event]:
        """Run ``contexts`` from the beginning of their streams, starting now; returns the
        events that fire when each has finished."""
        env = self.env
        st = self.st
        if self._loop_proc is None:
            self._loop_proc = env.process(self._loop())
        events = []
        for ctx in contexts:
            i = ctx.index
            keep_vm, keep_cpu = st[i, L.S_VM], st[i, L.S_CPU]
            st[i, :] = 0
            st[i, L.S_VM] = keep_vm
            st[i, L.S_CPU] = keep_cpu
            st[i, L.S_LAST_IDX] = -1
            st[i, L.S_LAST_IPA] = -1
            st[i, L.S_STATE] = L.ST_TOP
            ctx.it = iter(ctx.stream)
            ctx.done = env.event()
            events.append(ctx.done)
            S.push(self.ht, self.hs, self.hc, self.g, env.now, i)
        self._kick()
        return events

    def stop(self, ctx: Context) -> None:
        """The context stops at its next quantum."""
        self.st[ctx.index, L.S_STOP] = 1

    def _kick(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    # -- locks for agents --------------------------------------------------------------------
    def acquire(self, lock: int, ctr: Counters, write: bool = False):
        """Take ``lock`` for an agent, counting its wait in ``lock_wait_cycles`` (a
        generator to yield from)."""
        env = self.env
        t = env.now
        a = self._next_agent
        self._next_agent += 1
        if S.lock_try(self.lk, self.lq, lock, -1 - a, int(write)):
            return
        ev = env.event()
        self._agent_events[a] = ev
        yield ev
        ctr.add("lock_wait_cycles", env.now - t)

    def release(self, lock: int, write: bool = False) -> None:
        """An agent releases ``lock``: waiting contexts resume now, waiting agents hear."""
        S.lock_release(self.lk, self.lq, lock, int(write), self.env.now, self.ht, self.hs,
                       self.hc, self.g, self.sig, self.st, L.S_STATE, L.ST_LOCK_GRANTED,
                       int(self.pr[L.P_HANDOFF]))
        self._signals()
        self._kick()

    def _signals(self) -> None:
        """Hand the engine's signals to the agents (at the current SimPy time)."""
        g = self.g
        for i in range(int(g[S.G_NSIG])):
            kind, who = int(self.sig[i, 0]), int(self.sig[i, 1])
            if kind == S.SIG_AGENT_GRANT:
                self._agent_events.pop(who).succeed()
            else:
                self.contexts[who].done.succeed()
        g[S.G_NSIG] = 0

    # -- invalidation and accounting for agents ----------------------------------------------
    def apply_tlbis(self, vmid: int, rep: P.OpReport) -> int:
        """Apply an operation's TLB invalidations (entries of ``vmid``) to every CPU; returns
        the TLB entries removed (counted in tlbi.entries)."""
        removed = 0
        for rec in rep.tlbis:
            lo, hi = (0, 0) if rec.kind == "vmid" else (rec.addr, rec.addr + rec.size)
            removed += self._invalidate(vmid, lo, hi)
        return removed

    def flush_vmid(self, vmid: int) -> int:
        """TLBI VMALLS12E1IS outside a page-table operation: every CPU drops the VMID's
        entries (counted in tlbi.entries)."""
        return self._invalidate(vmid, 0, 0)

    def _invalidate(self, vmid: int, lo: int, hi: int) -> int:
        self._freeze_cpus()
        g = self.g
        before = int(g[L.G_TLBI_ENTRIES])  # counted in tlbi.entries (machine_counters)
        invalidate_all(vmid, lo, hi, self.page_shift, g, self._tlbs())
        return int(g[L.G_TLBI_ENTRIES]) - before

    def unmap_pages(self, vm, ipas: list[int]) -> int:
        """Unmap the pages at ``ipas`` from ``vm``'s stage-2 one by one (compiled), each
        operation's invalidations delivered and counted in the machine's counters; returns
        the cycles. For a stage-2 whose table memory needs no top-up (kvm)."""
        assert not int(self.vmt[vm.index, L.V_POOL]), "unmap_pages: not for pooled tables"
        self._freeze_cpus()
        mem = self.mems[int(self.vmt[vm.index, L.V_MEM])]
        s2 = vm.s2
        acc = np.zeros(5, dtype=np.int64)
        cycles = unmap_pages(np.asarray(ipas, dtype=np.int64), vm.index, self.pr, self.fp,
                             self.vmt, self.g, mem.tables, mem.refcnt, mem.free, mem.meta,
                             self.stats[vm.index], s2._rep, s2._tlog, s2._stk, self._tlbs(),
                             acc)
        self._count(self.machine_ctr, *(int(x) for x in acc))
        return int(cycles)

    def account_op(self, ctr: Counters, rep: P.OpReport) -> None:
        self._count(ctr, rep.tlbi_ops, rep.tables_allocated, rep.tables_freed, rep.cmo_bytes,
                    rep.warnings)

    @staticmethod
    def _count(ctr: Counters, tlbi_ops: int, allocated: int, freed: int, cmo: int,
               warnings: int) -> None:
        """An operation's TLBIs, table pages and cache maintenance in ``ctr``; its kernel
        WARN()s stop the run."""
        ctr.add("tlbi.ops", tlbi_ops)
        ctr.add("pgtable.pages_allocated", allocated)
        ctr.add("pgtable.pages_freed", freed)
        ctr.add("cmo.bytes", cmo)
        if warnings:
            raise SimulationError("engine", f"page-table refcount inconsistency ({warnings} "
                                  "kernel WARN()s)")

    # -- the loop's process ------------------------------------------------------------------
    def _loop(self):
        env = self.env
        g = self.g
        big = np.iinfo(np.int64).max
        while True:
            peek = env.peek()
            horizon = big if peek == float("inf") else int(peek)
            r = self._advance(horizon)
            if r == L.RET_CALL:
                self._serve(int(g[L.G_CALL]), int(g[L.G_CALL_CTX]))
            elif r == L.RET_SIGNAL:
                now = int(g[S.G_NOW])
                if now > env.now:
                    yield env.timeout(now - env.now)
                self._signals()
            elif r == L.RET_HORIZON:
                yield env.timeout(horizon - env.now)
            elif r == L.RET_IDLE:
                self._wake = env.event()
                yield self._wake
                self._wake = None
            else:
                self._raise()

    def _advance(self, horizon: int) -> int:
        self._freeze_cpus()
        mems = self.mems if len(self.mems) == 2 else [self.mems[0], self.mems[0]]
        s1 = self.stage1
        return advance(
            horizon,
            L.Model(self.pr, self.fp, self.vmt, self.slots, self.chunks, self.block_levels,
                    self.rbprog),
            L.Sched(self.g, self.st, self.ec, self.tc, self.ht, self.hs, self.hc, self.lk,
                    self.lq, self.cs, self.cq, self.win, self.sig),
            self._tlbs(),
            tuple(L.Mem(m.tables, m.refcnt, m.free, m.meta,
                        getattr(m, "hy", None) or self._empty_store) for m in mems),
            L.Streams(self.addrs2, self.kinds2, self.costs, self.ctr2, self.fault2),
            L.Work(self.stats, self.rep, self.tlog, self.stk, self.dirty, self.owner, self.loc,
                   self.hw, self.hreg,
                   self.rmap.arrays() if self.rmap is not None else empty_page_rmap(),
                   self.touch, s1.s1t if s1 is not None else self._no_s1t,
                   s1.s1p if s1 is not None else self._no_s1p, self.s1out))

    def _tlbs(self) -> L.Tlbs:
        off, sets, ways, lat, sizes, serves = self.tlb_geom
        return L.Tlbs(self.tlb_key, self.tlb_stamp, self.tlb_pa, self.tlb_perm, off, sets, ways,
                      lat, sizes, serves, self.layout, self.wc_tag, self.wc_row, self.wc_stamp,
                      self.clock, self.s1vmid, self.tlb_s2sizes)

    def _serve(self, call: int, c: int) -> None:
        """Serve a call-out for context ``c``; the context then resumes at once."""
        g = self.g
        if call == L.CALL_GROW:
            mem = self.mems[0]
            mem.reserve(int(mem.meta[P.M_NFREE]) + L.GROW_MARGIN * 4)
            return
        ctx = self.contexts[c]
        vm = ctx.vm
        if call == L.CALL_REFILL:
            self._refill(ctx)
        elif call == L.CALL_S1_GROW:
            self.stage1.reserve()
        elif call == L.CALL_RMAP_GROW:
            self.rmap.grow()
        else:  # donation: the VM's Python side
            vm.callout(call, ctx)
        g[L.G_PENDING] = c

    def _refill(self, ctx: Context) -> None:
        """Hand the context its next chunk (placed by its VM), or end its stream."""
        st = self.st
        i = ctx.index
        try:
            addrs, kinds = next(ctx.it)
        except StopIteration:
            st[i, L.S_STATE] = L.ST_STREAM_END
            return
        addrs, kinds = ctx.vm.placement(addrs, kinds, ctx)
        n = len(addrs)
        if n > self.addrs2.shape[1]:
            width = max(n, 2 * self.addrs2.shape[1])
            self.addrs2 = np.zeros((self.addrs2.shape[0], width), dtype=np.uint64)
            self.kinds2 = np.zeros((self.kinds2.shape[0], width), dtype=np.uint8)
            # rows of other contexts are still being consumed: keep them
            for other in self.contexts:
                if other is not ctx and hasattr(other, "_chunk"):
                    a, k = other._chunk
                    self.addrs2[other.index, :len(a)] = a
                    self.kinds2[other.index, :len(k)] = k
        self.addrs2[i, :n] = addrs
        self.kinds2[i, :n] = kinds
        ctx._chunk = (addrs, kinds)
        st[i, L.S_POS] = 0
        st[i, L.S_LEN] = n
        st[i, L.S_STATE] = L.ST_TOP

    def _raise(self):
        g = self.g
        ctx = self.contexts[int(g[L.G_ERR_CTX])]
        ipa = int(g[L.G_ERR_IPA])
        err = int(g[L.G_ERR])
        if err == L.ERR_OUTSIDE:
            raise SimulationError(
                "workload", f"vCPU {ctx.index} accessed IPA {ipa:#x}, outside guest memory "
                f"({', '.join(f'[{b:#x}, {b + s:#x})' for b, s in ctx.vm.slots)}); "
                "set guest.placement: first_touch to place trace addresses in guest memory")
        if err == L.ERR_VA_RANGE and self.cfg.host.stage1 is not None:
            raise SimulationError("host.workload", f"{ctx.label} accessed {ipa:#x}, outside the "
                                  "host's linear map (host.stage1)")
        if err == L.ERR_VA_RANGE:
            raise SimulationError(
                "workload", f"{ctx.label} accessed VA {ipa:#x}, beyond the guest's "
                f"{self.cfg.guest.stage1.va_bits}-bit VA space (guest.stage1.va_bits)")
        if err == L.ERR_GUEST_OOM:
            raise SimulationError(
                "guest.memory", f"{ctx.label}: the guest is out of memory mapping VA {ipa:#x} "
                f"(guest.stage1.mapping: {self.cfg.guest.stage1.mapping}; "
                f"{self.stage1.tables} stage-1 table pages)")
        if err == L.ERR_STUCK:
            raise SimulationError("engine", f"{ctx.label}: the access to {ipa:#x} keeps "
                                  "faulting after its fault was handled")
        if err == L.ERR_HYP_BUG:
            mem = self.mems[int(self.vmt[ctx.vm.index, L.V_MEM])]
            try:
                mem.bug(ipa)
            except HypBugError as e:
                raise SimulationError("hyp.vmemmap_layout", str(e)) from None
        if err == L.ERR_HOST_ENOMEM:
            raise SimulationError("host", f"host stage-2 out of memory at {ipa:#x} (after "
                                  "recycling MMIO mappings where hyp.host_s2_try allows it): "
                                  "handle_host_mem_abort()'s BUG")
        if err == L.ERR_ENOMEM:
            raise SimulationError(ctx.vm.enomem_field, f"{ctx.label}: no page-table memory "
                                  f"left to map IPA {ipa:#x} (the pool stays exhausted)")
        raise SimulationError("engine", "page-table refcount inconsistency (kernel WARN()s)")

    # -- run -----------------------------------------------------------------------------------
    @property
    def done_accesses(self) -> int:
        return int(self.g[L.G_DONE_ACC])

    def _progress_process(self, period: int):
        total = sum(t for t in self.totals if t is not None) if self.totals and all(
            t is not None for t in self.totals) else 0
        while True:
            yield self.env.timeout(period)
            self.progress(self.done_accesses, total)

    def run(self, procs: list) -> float:
        """Run until every event in ``procs`` has fired; returns the host seconds."""
        t0 = time.perf_counter()
        if self.progress is not None:
            self.env.process(self._progress_process(self.cfg.engine.quantum_cycles * 50))
        self.env.run(until=simpy.AllOf(self.env, procs))
        if self.progress is not None:
            self.progress(self.done_accesses, self.done_accesses)
        return time.perf_counter() - t0

    def lock_counters(self, lock: int) -> tuple[int, int]:
        return int(self.lk[lock, S.L_ACQ]), int(self.lk[lock, S.L_CONT])

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
        for k, val in self.machine_counters().items():
            total[k] = total.get(k, 0) + val
        return total

    def machine_counters(self) -> dict[str, int]:
        out = dict(self.machine_ctr.c)
        out["tlbi.entries"] = out.get("tlbi.entries", 0) + int(self.g[L.G_TLBI_ENTRIES])
        if self.stage1 is not None:
            out["tlbi.s1_flushes"] = int(self.g[L.G_S1_FLUSHES])
            out["tlbi.s1_entries"] = int(self.g[L.G_S1_ENTRIES])
        return out


__all__ = ["Context", "Counters", "Cpu", "Machine", "OpCosts", "SimulationError"]
