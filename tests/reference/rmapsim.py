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

from typing import TYPE_CHECKING

import simpy

from simulator.hyp.rmap import Rmap
from tests.reference.engine import Counters, acquire

if TYPE_CHECKING:
    from tests.reference.engine import Machine

__all__ = ["RmapAgent"]

DROP_COUNTERS = ("entries_dropped", "desc_freed", "entry_moves", "restarts", "touches", "cycles")


class RmapAgent:
    """The reverse map of the kvm-mode guest, its hook in the fault handler and the drop
    phase (a SimPy process)."""

    def __init__(self, machine: "Machine"):
        cfg = machine.cfg
        self.machine = machine
        self.vm = vm = machine.vm
        self.shift = vm.geom.page_shift
        self.page = vm.geom.page_size
        c = cfg.costs
        pages = sum(size for _, size in vm.slots) >> self.shift
        w = cfg.workload
        self.shared = w if w is not None and w.type == "shared_frames" else None
        # KVM keys a list by guest frame: ksm aliasing gives each guest page its own
        self.ksm = self.shared is not None and self.shared.aliasing == "ksm"
        frames = self.shared.frames if self.shared is not None and not self.ksm else pages
        self.rmap = Rmap(frames, cfg.hyp.rmap_ext, sptes=1024, descs=64, cost_touch=c.rmap_touch,
                         cost_free=c.rmap_desc_free, cost_clear=c.rmap_clear,
                         rules=cfg.hyp.rmap_rules)
        self.strategy = cfg.hyp.rmap_drop
        self.drop_by = self.shared.drop_by if self.shared is not None else "frame"
        self.frame_index: dict[int, int] = {}  # host frame number -> rmap frame
        self.spte_of: dict[int, int] = {}  # guest page (ipa >> shift) -> spte id
        self.ipa_of: list[int] = [0]  # spte id -> ipa (id 0 is NULL)
        self.ctr = Counters()
        self.max_entries = 0
        if self.shared is not None:
            vm.alias = self.alias

    # -- the guest's layout ----------------------------------------------------------------
    def alias(self, ipa: int) -> int:
        """shared_frames: the IPA whose identity-mapped host frame backs ``ipa`` (guest page p
        is backed by the frame of page ``p mod frames``)."""
        w = self.shared
        off = ipa - w.start
        if not 0 <= off < w.pages * self.page:
            return ipa
        p = off >> self.shift
        return w.start + (w.frame_of(p) << self.shift) + (off & (self.page - 1))

    # -- the fault path ----------------------------------------------------------------------
    def on_map(self, ipa: int, size: int) -> int:
        """rmap_add() for the page leaf just installed at ``ipa``; returns its cycles."""
        assert size == self.page, "the reverse map is modelled for page mappings only"
        pfn = self.vm.pa_of(ipa) >> self.shift
        key = (ipa >> self.shift) if self.ksm else pfn
        frame = self.frame_index.get(key)
        if frame is None:
            frame = self.frame_index[key] = len(self.frame_index)
        gpage = ipa >> self.shift
        spte = len(self.ipa_of)
        self.spte_of[gpage] = spte
        self.ipa_of.append(ipa & ~(self.page - 1))
        count = self.rmap.add(frame, spte)
        self.max_entries = max(self.max_entries, count + 1)
        last = self.rmap.last
        self.ctr.add("rmap.entries_added")
        self.ctr.add("rmap.desc_allocated", last["desc_allocated"])
        self.ctr.add("rmap.add_cycles", last["cycles"])
        return last["cycles"]

    # -- the drop phase ----------------------------------------------------------------------
    def _unmap(self, ipa: int) -> int:
        """The stage-2 side of dropping one spte: unmap the page, deliver its TLBIs; returns
        the cycles."""
        m = self.machine
        rep = self.vm.s2.unmap(ipa, self.page)
        m.apply_tlbis(self.vm.vmid, self.shift, rep)
        m.account_op(m.machine_ctr, rep)
        return m.op_costs.cycles(rep)

    def _frames_in_order(self) -> list[tuple[int, int]]:
        """(host frame number, rmap frame) of every frame mapped, in host address order (with
        ksm aliasing, each guest frame on it in guest address order)."""
        if self.ksm:
            return sorted(((self.vm.pa_of(g << self.shift) >> self.shift, g), f)
                          for g, f in self.frame_index.items())
        return sorted(self.frame_index.items())

    def drop_phase(self, vcpus: list):
        """A SimPy process: wait for the vCPUs, then drop every mapping under the MMU lock
        held for write."""
        env = self.machine.env
        yield simpy.AllOf(env, vcpus)
        t0 = env.now
        lock = self.vm.lock
        yield from acquire(lock, self.machine.machine_ctr, env, write=True)
        rmap = self.rmap
        before = rmap.counters()
        unmap_cycles = 0
        if self.drop_by == "frame":
            for _, frame in self._frames_in_order():
                ipas = [self.ipa_of[s] for s in rmap.entries(frame)]
                cycles = rmap.drop_all(frame, self.strategy)["cycles"]
                s2 = sum(self._unmap(ipa) for ipa in ipas)
                unmap_cycles += s2
                yield env.timeout(cycles + s2)
        else:
            for gpage in sorted(self.spte_of, reverse=self.drop_by == "reverse_address"):
                ipa = gpage << self.shift
                frame = self.frame_index[gpage if self.ksm else self.vm.pa_of(ipa) >> self.shift]
                cycles = rmap.remove(frame, self.spte_of[gpage])["cycles"]
                s2 = self._unmap(ipa)
                unmap_cycles += s2
                yield env.timeout(cycles + s2)
        yield env.timeout(self.machine.cfg.costs.lock)
        lock.release(write=True)
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
        out["rmap.max_entries"] = self.max_entries
        return out
