"""pKVM guests over time: creation (memory donated by the host), vCPUs, balloon, teardown.

Each guest is created at its start time: its memory is donated chunk by chunk (each chunk one
``set_owner`` of the host stage-2 under the host lock, plus a hypercall per page outside it;
the host stage-2 entries become owner annotations, splitting any block), or shared by the
host for its ``shared`` part. Its vCPUs run on the host CPUs (sharing their TLBs with the
host). After its run it is torn down: its stage-2 destroyed (table pages back to the hyp
pool, its VMID invalidated on every CPU) and every page reclaimed by the host (a zero
descriptor; with seed 000's coalescing, tables left with only default entries are zapped so
the next host abort maps a block). A fault on a ballooned chunk has the host donate a new one
(:meth:`GuestsAgent.callout`).
"""

from __future__ import annotations

import simpy

from simulator.config import to_cycles
from simulator.engine import layout as L
from simulator.engine.machine import Counters, Machine, SimulationError
from simulator.hyp.host import OWNER_HOST
from simulator.hyp.hyp_pool import HypBugError
from simulator.vms import GuestVM

FIRST_GUEST_OWNER = 2


class GuestsAgent:
    """Every ``guests[]`` entry's life, and the host's side of donation."""

    def __init__(self, m: Machine, host, guest_mem: int, on_teardown=None):
        self.m = m
        self.host = host  # the host VM: its stage-2 (hs2), physical memory (phys) and lock
        self.guest_mem = guest_mem
        self.on_teardown = on_teardown
        self.guests: list[GuestVM] = []
        self.vmids_in_use: set[int] = set()
        self._pending: dict[int, int] = {}  # context -> host address of the chunk it donates

    def start(self) -> list[simpy.Process]:
        return [self.m.env.process(self.guest_agent(k, g))
                for k, g in enumerate(self.m.cfg.guests)]

    def alloc_vmid(self) -> int:
        vmid = 1
        while vmid in self.vmids_in_use:
            vmid += 1
        self.vmids_in_use.add(vmid)
        return vmid

    # -- ownership changes -------------------------------------------------------------------
    def ownership_op(self, ctr: Counters, pa: int, size: int, kind: str, who: int):
        """The ownership change itself, under the host lock: ``donate`` (to ``who``),
        ``reclaim`` (back to the host), ``share`` (with guest ``who``, the host keeping it)
        or ``unshare``. Returns (OpReport, cycles under the lock)."""
        m = self.m
        hs2, phys = self.host.hs2, self.host.phys
        try:
            if kind == "donate":
                rep = hs2.set_owner(pa, size, who)
                phys.set_owner(pa, size, who)
            elif kind == "reclaim":
                rep = hs2.set_owner(pa, size, OWNER_HOST)
                phys.set_owner(pa, size, OWNER_HOST)
            elif kind == "share":
                rep = hs2.share_guest(pa, size)
                phys.share(pa, size, who)
            else:
                rep = hs2.unshare_guest(pa, size)
                phys.set_owner(pa, size, OWNER_HOST)
        except HypBugError as e:
            raise SimulationError("hyp.vmemmap_layout", str(e)) from None
        if rep.ret:
            raise SimulationError("hyp", f"{kind} of {pa:#x} failed ({rep.ret})")
        cycles = m.op_costs.cycles(rep) + m.cfg.costs.lock
        if kind in ("donate", "reclaim"):
            # host_stage2_try() (hyp.host_s2_try: all): the MMIO unmapped to make room
            for r in hs2.recycle_reports:
                m.apply_tlbis(0, r)
                m.account_op(ctr, r)
                cycles += m.op_costs.cycles(r)
        m.apply_tlbis(0, rep)
        m.account_op(ctr, rep)
        return rep, cycles

    def hypercall_op(self, ctr: Counters, pa: int, size: int, kind: str, who: int):
        """An agent's ownership change: a hypercall per page outside the host lock, the change
        under it. A generator; returns the OpReport."""
        m = self.m
        env = m.env
        pages = size >> self.host.geom.page_shift
        yield env.timeout(pages * m.cfg.costs.hypercall)
        yield from m.acquire(self.host.lock, ctr)
        rep, cycles = self.ownership_op(ctr, pa, size, kind, who)
        yield env.timeout(cycles)
        m.release(self.host.lock)
        return rep

    def _chunk_for(self, gvm: GuestVM) -> int:
        got = self.host.phys.alloc_chunks(1, gvm.chunk)
        if got is None:
            raise SimulationError(f"guests.{gvm.name}.memory", "host memory exhausted")
        return got[0]

    def _donated(self, gvm: GuestVM, k: int, pa: int) -> None:
        gvm.chunks[k] = pa
        pages = gvm.chunk >> self.host.geom.page_shift
        shared = gvm.is_shared(k * gvm.chunk)
        self.m.machine_ctr.add("share.pages" if shared else "donate.pages", pages)

    def donate_chunk(self, gvm: GuestVM, k: int, ctr: Counters):
        """Back chunk ``k`` of the guest: donated, or shared by the host for the guest's
        shared part (``guests[].shared``)."""
        pa = self._chunk_for(gvm)
        kind = "share" if gvm.is_shared(k * gvm.chunk) else "donate"
        yield from self.hypercall_op(ctr, pa, gvm.chunk, kind, gvm.owner_id)
        self._donated(gvm, k, pa)

    def callout(self, call: int, gvm: GuestVM, ctx) -> None:
        """A vCPU's fault found its chunk missing (ballooned): the same donation, with the
        vCPU waiting (its hypercalls and the host lock are the engine's). Another vCPU may
        have backed the chunk meanwhile: then nothing changes hands."""
        m = self.m
        st = m.st
        i = ctx.index
        k = int(st[i, L.S_IPA]) // gvm.chunk
        if call == L.CALL_DONATE_ALLOC:
            self._pending[i] = self._chunk_for(gvm)
            st[i, L.S_OPC] = (gvm.chunk >> self.host.geom.page_shift) * m.cfg.costs.hypercall
        else:
            pa = self._pending.pop(i)
            if gvm.chunks[k] is not None:  # another vCPU had it donated meanwhile
                self.host.phys.unreserve(pa)
                st[i, L.S_OPC] = m.cfg.costs.lock
                return
            kind = "share" if gvm.is_shared(k * gvm.chunk) else "donate"
            _, cycles = self.ownership_op(ctx.ctr, pa, gvm.chunk, kind, gvm.owner_id)
            self._donated(gvm, k, pa)
            st[i, L.S_OPC] = cycles

    def reclaim_chunk(self, gvm: GuestVM, k: int, ctr: Counters):
        """Give chunk ``k`` back to the host: reclaim a donated chunk, unshare a shared one."""
        m = self.m
        pa = gvm.chunks[k]
        gvm.chunks[k] = None  # taken out first: nobody else reclaims it meanwhile
        pages = gvm.chunk >> self.host.geom.page_shift
        if gvm.is_shared(k * gvm.chunk):
            yield from self.hypercall_op(ctr, pa, gvm.chunk, "unshare", gvm.owner_id)
            m.machine_ctr.add("unshare.pages", pages)
            return
        rep = yield from self.hypercall_op(ctr, pa, gvm.chunk, "reclaim", OWNER_HOST)
        self.host.phys.give_back(pa, gvm.chunk)
        m.machine_ctr.add("reclaim.pages", pages)
        m.machine_ctr.add("coalesce.tables_zapped", rep.zapped)
        m.machine_ctr.add("pgtable.pages_returned", rep.tables_freed)

    # -- a guest's life ------------------------------------------------------------------------
    def guest_agent(self, k: int, spec):
        """Create guest ``k`` at its start, run it, tear it down after its run."""
        m = self.m
        env = m.env
        cfg = m.cfg
        clock = cfg.machine.clock_ghz
        yield env.timeout(to_cycles(spec.start, clock))
        ctr = Counters()
        vmid = self.alloc_vmid()
        gvm = GuestVM(m, spec, vmid, spec.name, self.guest_mem,
                      owner_id=FIRST_GUEST_OWNER + k, chunk=spec.chunk,
                      prefix=f"guest.{spec.name}.", shared=spec.shared)
        gvm.set_host_lock(self.host.lock)
        gvm.donor = self
        gvm.agent_ctr = ctr
        self.guests.append(gvm)
        t0 = env.now
        for c in range(len(gvm.chunks)):
            yield from self.donate_chunk(gvm, c, ctr)
        ctr.add("create.cycles", env.now - t0)
        if spec.premap:
            gvm.premap()
        streams = spec.workload.build(spec.vcpus, cfg.seed + 7919 * (k + 1), spec.memory,
                                      cfg.engine.chunk)
        first = k % len(m.cpus)
        for j, stream in enumerate(streams):
            cpu = m.cpus[(first + j) % len(m.cpus)]
            gvm.contexts.append(m.add_context(gvm, stream, cpu, f"guest.{spec.name}.vcpu{j}"))
        done = m.start(gvm.contexts)
        for b in spec.balloon:
            env.process(self.balloon_agent(gvm, b))
        if spec.run is not None:
            yield simpy.AllOf(env, done) | env.timeout(to_cycles(spec.run, clock))
            for ctx in gvm.contexts:
                m.stop(ctx)
        # a fresh condition: the vCPUs still running stop at their next quantum
        yield simpy.AllOf(env, [ev for ev in done if not ev.triggered])
        yield from self.teardown(gvm, ctr)

    def teardown(self, gvm: GuestVM, ctr: Counters):
        """Destroy the guest stage-2 and reclaim every page to the host."""
        m = self.m
        env = m.env
        cfg = m.cfg
        t0 = env.now
        gvm.alive = False
        yield from m.acquire(gvm.lock, ctr, write=True)
        rep = gvm.s2.destroy()
        cycles = m.op_costs.cycles(rep)
        m.account_op(ctr, rep)
        m.machine_ctr.add("pgtable.pages_returned", rep.tables_freed)
        if cfg.hyp.teardown_tlbi:
            # the VMID is flushed on every CPU before the VMID can be reused
            m.flush_vmid(gvm.vmid)
            ctr.add("tlbi.ops")
            cycles += cfg.costs.tlbi_vmid
        yield env.timeout(cycles)
        m.release(gvm.lock, write=True)
        for c in range(len(gvm.chunks)):
            if gvm.chunks[c] is not None:
                yield from self.reclaim_chunk(gvm, c, ctr)
        self.vmids_in_use.discard(gvm.vmid)
        m.machine_ctr.add("teardown.cycles", env.now - t0)
        m.machine_ctr.add("guests.torn_down")
        if self.on_teardown is not None:
            self.on_teardown()

    def balloon_agent(self, gvm: GuestVM, b):
        """A guest relinquishes the top ``size`` bytes of its memory at ``at``."""
        m = self.m
        env = m.env
        yield env.timeout(to_cycles(b.at, m.cfg.machine.clock_ghz))
        if not gvm.alive:
            return
        ctr = gvm.agent_ctr
        first = (gvm.gcfg.memory - b.size) // gvm.chunk
        for c in range(max(first, 0), len(gvm.chunks)):
            yield from m.acquire(gvm.lock, ctr, write=True)
            if not gvm.alive or gvm.chunks[c] is None:  # torn down meanwhile / not backed
                m.release(gvm.lock, write=True)
                continue
            rep = gvm.s2.unmap(c * gvm.chunk, gvm.chunk)
            m.apply_tlbis(gvm.vmid, rep)
            m.account_op(ctr, rep)
            yield env.timeout(m.op_costs.cycles(rep) + m.cfg.costs.lock)
            m.release(gvm.lock, write=True)
            yield from self.reclaim_chunk(gvm, c, ctr)
            m.machine_ctr.add("balloon.pages", gvm.chunk >> gvm.geom.page_shift)


__all__ = ["GuestsAgent", "FIRST_GUEST_OWNER"]
