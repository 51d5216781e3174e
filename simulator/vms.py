"""The stage-2s a machine runs: a guest (memslots, backing, where its memory lives, the
guest OS's placement of what a workload touches, the premap) and pKVM's host (its abort
handler's page-table work). Each is a row of the engine's VM table plus the Python side the
agents and the engine's call-outs use; the fault handler itself is compiled
(:mod:`simulator.engine.fault`).
"""

from __future__ import annotations

import math

import numpy as np

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.engine import layout as L
from simulator.engine.machine import Counters, Machine, SimulationError
from simulator.hyp.host import OWNER_HOST, STATE_SHARED_BORROWED, HostPhys, HostStage2
from simulator.hyp.pgtable import Stage2
from workloads.units import parse_size


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


def backing_size(backing: str, g: Geometry) -> int:
    return {"anonymous": g.page_size, "thp": g.size(2), "hugetlb_2m": 2 << 20,
            "hugetlb_1g": 1 << 30}[backing]


class _Chunks:
    """The host addresses of a pkvm guest's donated chunks (None: not backed), kept in the
    engine's chunk table."""

    def __init__(self, machine: Machine, vm: "GuestVM", n: int):
        self.m = machine
        self.vm = vm
        self.n = n

    def _i(self, k: int) -> int:
        if not 0 <= k < self.n:
            raise IndexError(k)
        return int(self.m.vmt[self.vm.index, L.V_CHUNK_OFF]) + k

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> int | None:
        pa = int(self.m.chunks[self._i(k)])
        return None if pa < 0 else pa

    def __setitem__(self, k: int, pa: int | None) -> None:
        self.m.chunks[self._i(k)] = -1 if pa is None else pa


class GuestVM:
    """A guest: its stage-2 (VMID), memslots, backing and lock; its vCPUs are contexts."""

    def __init__(self, machine: Machine, gcfg, vmid: int, name: str, mem_index: int, *,
                 owner_id: int = 2, chunk: int | None = None, prefix: str = "",
                 lock: int | None = None, shared: int = 0):
        cfg = machine.cfg
        self.machine = machine
        self.gcfg = gcfg
        self.vmid = vmid
        self.name = name
        self.owner_id = owner_id
        self.prefix = prefix
        self.geom = g = cfg.geometry
        mem = machine.mems[mem_index]
        self.s2 = Stage2(mem, g, vmid, fwb=cfg.machine.fwb, tlbi_range=cfg.machine.tlbi_range)
        self.slots = sorted(((s.base, s.size) for s in gcfg.slots()))
        self.pa_base = gcfg.pa_base
        self.mapping = None if gcfg.mapping == "largest" else parse_size(gcfg.mapping)
        self.backing = backing_size(gcfg.backing, g)
        exclusive = cfg.engine.mmu_lock == "exclusive"
        self.lock = machine.new_lock(exclusive) if lock is None else lock
        self.contexts: list = []
        self._placement = Placement(gcfg.placement, gcfg.placement_unit, self.slots)
        # pkvm: guest memory is host memory donated in chunks; chunk k backs IPA k * chunk.
        # Guest IPAs from ``shared_from`` up are host memory shared with the guest (not
        # donated); its stage-2 maps them with the SHARED_BORROWED state in their SW bits.
        self.chunk = chunk
        self.shared_from = gcfg.memory - shared if shared else None
        self.alive = True
        self.donor = None  # pkvm: the agent that donates a chunk a fault finds missing
        self.enomem_field = "hyp.pool_pages" if chunk is not None else "guest"
        want = self.mapping if self.mapping is not None else self.backing
        if chunk is not None:
            want = min(want, chunk)
        nchunks = gcfg.memory // chunk if chunk else 0
        self.index = machine.add_vm(self, {
            L.V_KIND: L.VM_GUEST, L.V_VMID: vmid, L.V_MEM: mem_index, L.V_ROOT: self.s2.root,
            L.V_START_LEVEL: g.start_level, L.V_IA_BITS: g.ipa_bits, L.V_TBASE: mem.base_pa,
            L.V_FLAGS: self.s2.base_flags, L.V_RULE: self.s2.rule, L.V_LOCK: self.lock,
            L.V_ENTRY: cfg.costs.fault_entry_exit // 2 + cfg.costs.fault_handler,
            L.V_WANT: want, L.V_PA_BASE: self.pa_base, L.V_CHUNK: chunk or 0,
            L.V_NCHUNK: nchunks, L.V_SHARED_FROM: -1 if self.shared_from is None
            else self.shared_from, L.V_OWNER: owner_id,
            L.V_POOL: int(bool(getattr(mem, "pools", None))), L.V_HOST_LOCK: -1,
            L.V_DIRTY: int(chunk is None), L.V_SHARED_WALK: int(not exclusive),
            **self._first_touch(cfg, gcfg),
        }, slots=self.slots, chunks=nchunks)
        self.chunks = _Chunks(machine, self, nchunks)
        if gcfg.stage1 is not None:
            from simulator.guest.stage1 import GuestStage1

            machine.set_stage1(self, GuestStage1(gcfg.stage1, self.slots))

    def _first_touch(self, cfg, gcfg) -> dict[int, int]:
        """A guest whose memory is not populated (kvm mode): each backing page is allocated
        and zeroed by the first fault on it."""
        if gcfg.populated:  # pKVM guests are always populated (the config refuses false)
            return {}
        c = cfg.costs
        return {L.V_TOUCH_SHIFT: self.backing.bit_length() - 1,
                L.V_TOUCH_COST: c.page_alloc + math.ceil(self.backing / c.zero_bytes_per_cycle)}

    # -- engine-visible state ------------------------------------------------------------------
    def _set(self, field: int, value: int) -> None:
        self.machine.vmt[self.index, field] = value

    @property
    def logging(self) -> bool:
        return bool(self.machine.vmt[self.index, L.V_LOGGING])

    @logging.setter
    def logging(self, on: bool) -> None:
        self._set(L.V_LOGGING, int(on))

    def alias_frames(self, start: int, pages: int, frames: int) -> None:
        """shared_frames: guest page p of the ``pages`` from ``start`` is backed by the host
        frame of page p mod ``frames``."""
        self._set(L.V_ALIAS_START, start)
        self._set(L.V_ALIAS_PAGES, pages)
        self._set(L.V_ALIAS_FRAMES, frames)

    def attach_rmap(self, rmap) -> None:
        """x86's reverse map on this guest: every page leaf a fault installs is rmap_add()ed
        to the rmap of the host frame it maps (compiled, in the fault path)."""
        self.machine.rmap = rmap
        self._set(L.V_RMAP, 1)

    def set_host_lock(self, lock: int) -> None:
        self._set(L.V_HOST_LOCK, lock)

    # -- layout -------------------------------------------------------------------------------
    def placement(self, addrs: np.ndarray, kinds: np.ndarray, ctx):
        return self._placement(addrs), kinds

    def pa_of(self, ipa: int) -> int:
        if self.chunk is None:
            m = self.machine
            row = m.vmt[self.index]
            frames = int(row[L.V_ALIAS_FRAMES])
            a = ipa
            ps = self.geom.page_shift
            if frames:
                start, pages = int(row[L.V_ALIAS_START]), int(row[L.V_ALIAS_PAGES])
                off = ipa - start
                if 0 <= off < pages << ps:
                    p = off >> ps
                    a = start + ((p % frames) << ps) + (off & ((1 << ps) - 1))
            return self.pa_base + a
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

    def premap(self) -> None:
        """Map all guest memory before time 0, with the blocks the fault handler would use."""
        g = self.geom
        cfg = self.machine.cfg
        for base, size in self._premap_ranges():
            want = self.mapping if self.mapping is not None else self.backing
            prot = D.PROT_R | D.PROT_W | (D.PROT_X if cfg.machine.dic else 0)
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

    def callout(self, call: int, ctx) -> None:
        """The fault path's call-outs that belong to pKVM: a donated chunk found missing."""
        self.donor.callout(call, self, ctx)


class HostVM:
    """The host as a VM of its own: the host stage-2, whose aborts the engine handles
    (host_stage2_idmap(), compiled in :mod:`simulator.hyp.host`)."""

    def __init__(self, m: Machine, hs2: HostStage2, phys: HostPhys, mem_index: int):
        self.machine = m
        self.vmid = 0
        self.owner_id = OWNER_HOST
        self.prefix = "host."
        self.hs2 = hs2
        self.s2 = hs2.s2
        self.phys = phys
        self.geom = g = hs2.geom
        self.lock = m.new_lock(exclusive=True)  # host_mmu.lock: a spinlock
        self.ctr = Counters()
        self.enomem_field = "host"
        c = m.cfg.costs
        self.index = m.add_vm(self, {
            L.V_KIND: L.VM_HOST, L.V_VMID: 0, L.V_MEM: mem_index, L.V_ROOT: self.s2.root,
            L.V_START_LEVEL: g.start_level, L.V_IA_BITS: g.ipa_bits,
            L.V_TBASE: hs2.ptmem.base_pa, L.V_FLAGS: self.s2.base_flags, L.V_RULE: self.s2.rule,
            L.V_LOCK: self.lock, L.V_ENTRY: c.fault_entry_exit // 2 + c.host_abort_handler,
            L.V_OWNER: OWNER_HOST, L.V_SHARED_FROM: -1, L.V_POOL: 1, L.V_HOST_LOCK: self.lock,
        })
        m.set_host(hs2.hw, hs2.hreg)

    def placement(self, addrs: np.ndarray, kinds: np.ndarray, ctx):
        """Host workload addresses are offsets into host memory (then MMIO); the host kernel
        touches only what it owns unless host.respect_ownership is false."""
        host = self.machine.cfg.host
        pa, kinds, dropped = self.phys.place(addrs, kinds, host.address_space,
                                             host.respect_ownership)
        if dropped:
            ctx.ctr.add("skipped_accesses", dropped)
        return pa, kinds


__all__ = ["GuestVM", "HostVM", "Placement", "backing_size"]
