"""kvm mode with ``hyp.rmap: pte_list``: the reverse map of seed 004 in simulated time.

x86 KVM keeps, per guest frame, the list of leaf entries (sptes) that map it
(:mod:`simulator.hyp.rmap`); the model attaches that list to the arm64 stage-2 of the kvm-mode
guest, the frame being the *host* frame a stage-2 leaf maps:

* every leaf the fault handler installs (``rep.ret == 0``: not a spurious fault) is added to
  its frame's list under the MMU lock (``rmap_add()`` in ``mmu_set_spte()``); the add's cost
  is charged with the fault. Only page mappings (the config refuses blocks and premap);
* with the ``shared_frames`` workload, guest page p maps host frame ``p mod frames`` (the
  stage-2 leaf's output address), so each frame's list grows to ``mappings_per_frame``;
  with another workload each guest page has a frame of its own (lists of one);
* once every vCPU has finished, the drop phase takes the MMU lock for write and drops every
  mapping. ``drop_by: frame`` (the default, and the only way for other workloads): frame by
  frame in host address order, the frame's list dropped whole with ``hyp.rmap_drop``
  (``one_by_one``: the restart loop before seed 004; ``batch``: seed 004's one pass), then
  each of its guest pages unmapped from the stage-2 (the arm64 walker, its TLBI, its cache
  maintenance without FWB); ``drop_by: address`` (``reverse_address``): page by page in
  guest address order (highest first), each spte taken off its frame's list by
  ``pte_list_remove()`` (``drop_spte()``, as zapping the page tables that hold them does),
  then unmapped. Not what seed 004 changes: its cost is
  the search of the list.

Counters (all in ``results.json``): ``rmap.entries_added``, ``rmap.desc_allocated``,
``rmap.add_cycles`` (the adds), ``rmap.max_entries`` (the longest list), and of the drop phase
``rmap.entries_dropped``, ``rmap.desc_freed``, ``rmap.entry_moves``, ``rmap.restarts``,
``rmap.touches``, ``rmap.cycles`` (the reverse map's own work: touches, descriptors freed,
sptes cleared), ``rmap.unmap_cycles`` (the stage-2 unmaps) and ``rmap.drop_cycles`` (the
drop phase's simulated time, lock included).
"""

from __future__ import annotations

import simpy

from simulator.engine.machine import Counters, Machine
from simulator.hyp.page_rmap import PageRmap
from simulator.hyp.rmap import Rmap

__all__ = ["RmapAgent"]

DROP_COUNTERS = ("entries_dropped", "desc_freed", "entry_moves", "restarts", "touches", "cycles")


class RmapAgent:
    """The reverse map of the kvm-mode guest, its hook in the fault handler and the drop
    phase (a SimPy process)."""

    def __init__(self, machine: Machine, vm):
        cfg = machine.cfg
        self.machine = machine
        self.vm = vm
        self.shift = vm.geom.page_shift
        c = cfg.costs
        lo = min(base for base, _ in vm.slots)
        hi = max(base + size for base, size in vm.slots)
        pages = sum(size for _, size in vm.slots) >> self.shift
        w = cfg.workload
        self.shared = w if w is not None and w.type == "shared_frames" else None
        # KVM keys a list by guest frame: ksm aliasing gives each guest page its own
        self.ksm = self.shared is not None and self.shared.aliasing == "ksm"
        frames = self.shared.frames if self.shared is not None and not self.ksm else pages
        self.rmap = Rmap(frames, cfg.hyp.rmap_ext, sptes=1024, descs=64, cost_touch=c.rmap_touch,
                         cost_free=c.rmap_desc_free, cost_clear=c.rmap_clear,
                         rules=cfg.hyp.rmap_rules)
        # the fault path's rmap_add() (compiled: simulator.hyp.page_rmap)
        self.prmap = PageRmap(self.rmap, self.shift, vm.pa_of(lo) >> self.shift,
                              lo >> self.shift, (hi - lo) >> self.shift, by_gfn=self.ksm)
        self.strategy = cfg.hyp.rmap_drop
        self.drop_by = self.shared.drop_by if self.shared is not None else "frame"
        self.ctr = Counters()
        if self.shared is not None:
            # guest page p of the workload is backed by the frame of page p mod frames
            vm.alias_frames(self.shared.start, self.shared.pages, self.shared.frames)
        vm.attach_rmap(self.prmap)
        self.done_events: list = []

    # -- the drop phase ----------------------------------------------------------------------
    def _unmap(self, ipas: list[int]) -> int:
        """The stage-2 side of dropping sptes: unmap each page, deliver its TLBIs; returns
        the cycles."""
        return self.machine.unmap_pages(self.vm, ipas)

    def start(self, vcpus_done: list) -> simpy.Process:
        """The drop phase: once every vCPU has finished, drop every mapping under the MMU
        lock held for write."""
        return self.machine.env.process(self.drop_phase(vcpus_done))

    def drop_phase(self, vcpus: list):
        m = self.machine
        env = m.env
        yield simpy.AllOf(env, vcpus)
        t0 = env.now
        lock = self.vm.lock
        yield from m.acquire(lock, m.machine_ctr, write=True)
        rmap = self.rmap
        before = rmap.counters()
        unmap_cycles = 0
        prmap = self.prmap
        if self.drop_by == "frame":
            if self.ksm:
                # host frame by host frame, each guest frame merged onto it (address order)
                pages = prmap.mapped_pages().tolist()
                pages.sort(key=lambda g: (self.vm.pa_of(g << self.shift), g))
                order = [prmap.frame_of_page(g << self.shift, 0) for g in pages]
            else:
                order = prmap.frames_in_order()
            for frame in order:
                ipas = [prmap.ipa(s) for s in rmap.entries(frame)]
                cycles = rmap.drop_all(frame, self.strategy)["cycles"]
                s2 = self._unmap(ipas)
                unmap_cycles += s2
                yield env.timeout(cycles + s2)
        else:
            pages = prmap.mapped_pages().tolist()
            if self.drop_by == "reverse_address":
                pages.reverse()
            for gpage in pages:
                ipa = gpage << self.shift
                frame = prmap.frame_of_page(ipa, self.vm.pa_of(ipa))
                cycles = rmap.remove(frame, prmap.spte(ipa))["cycles"]
                s2 = self._unmap([ipa])
                unmap_cycles += s2
                yield env.timeout(cycles + s2)
        yield env.timeout(self.machine.cfg.costs.lock)
        m.release(lock, write=True)
        after = rmap.counters()
        for name in DROP_COUNTERS:
            self.ctr.add(f"rmap.{name}", after[name] - before[name])
        self.ctr.add("rmap.unmap_cycles", unmap_cycles)
        self.ctr.add("rmap.drop_cycles", env.now - t0)

    def counters(self) -> dict[str, int]:
        """Every rmap.* counter (0 when nothing happened). The drop phase's stage-2 work
        (tlbi.ops, cmo.bytes, ...) is in the machine's own counters."""
        out = {f"rmap.{name}": 0 for name in (*DROP_COUNTERS, "entries_added", "desc_allocated",
                                               "add_cycles", "unmap_cycles", "drop_cycles")}
        out.update(self.ctr.c)
        out.update(self.prmap.counters())
        return out
