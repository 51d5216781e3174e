"""Replacing a table by a block in simulated time (seeds 001 and 003).

When a fault maps a block where the stage-2 holds a table (the block mappings rebuilt after
dirty logging stops), the kernel replaces the table entry and frees the old subtree. How it
orders the steps decides how long the entry is invalid, and every vCPU that touches the
range in that window takes a translation fault. Each strategy here is a sequence of
single-entry steps (:func:`simulator.hyp.pgtable.pgtable_entry_step`) separated by the
simulated time of the work between them, so that the other vCPUs run meanwhile:

``bbm`` (Linux 5.11 with patch 1 of seed 003's series, i.e. the "before" of its table)
    stage2_map_walk_table_pre(): invalidate the table entry and flush the VMID; the walk
    then puts every old leaf and frees every old table page; at the anchor's TABLE_POST the
    block is installed by stage2_map_walker_try_leaf(), whose dcache clean of the whole
    block (no FWB) runs before the store. Window: TLBI + subtree + CMO of the block.
``install_first`` (seed 003) and ``ttrem`` with ``machine.bbm_level: 0`` (seed 001)
    stage2_coalesce_tables_into_block(): invalidate, flush the VMID, store the block; the
    subtree is freed afterwards (TABLE_POST). Window: the TLBI. As posted, neither calls a
    cache-maintenance function for the block (the pages were cleaned when they were mapped).
``ttrem`` levels 1 and 2 (seed 001 writes nT at both)
    store the block with nT set, flush the VMID, clear nT. No invalid window; an nT block is
    never cached, so accesses to the range walk until nT is cleared.
``replace`` (FEAT_BBM level 2 without nT)
    store the block over the table with no prior invalidation, then flush the VMID. A TLB
    that still holds page entries and now also caches the block (or a splinter of it) for
    an address takes a TLB conflict abort (the batch kernel detects it; the handler flushes
    the local TLB).

The rebuilding vCPU holds the MMU lock throughout (write mode in 5.11's spinlock model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.arch import descriptors as D
from simulator.hyp import pgtable as P

if TYPE_CHECKING:  # pragma: no cover
    from tests.reference.engine import Context, GuestVM

STRATEGIES = ("bbm", "install_first", "ttrem", "replace")


def rebuild_block(vm: "GuestVM", ctx: "Context", start: int, level: int, loc, prot: int):
    """A SimPy process body run under ``vm.lock``: replace the table entry ``loc`` (row,
    index, descriptor) at ``level`` by a block mapping ``start``. Returns the cycles spent
    after the last state change (charged by the caller with its own lock hold)."""
    from tests.reference.engine import cpu_event

    m = vm.machine
    env = m.env
    cfg = m.cfg
    s2 = vm.s2
    g = vm.geom
    row, idx, old = loc
    child = s2.mem.row_of(int(D.pte_to_phys(D.U(old), g.page_shift)))
    size = g.size(level)
    new = s2.block_pte(start, level, vm.pa_of(start), prot, sw=vm.sw_of(start))
    strategy = cfg.hyp.rebuild
    # seed 001 writes nT at level 2 as at level 1; replace stores the block without it
    bbm_level = {"ttrem": min(cfg.machine.bbm_level, 1), "replace": 2}.get(strategy, 0)
    cost = m.op_costs.cycles
    ctr = ctx.ctr
    window = (start, start + size)

    def step(kind, **kw):
        rep = s2.entry_step(kind, row, idx, level, start, **kw)
        m.account_op(ctr, rep)
        return rep

    ctr.add("rebuild.blocks")
    if bbm_level == 0:
        vmid_only = strategy == "ttrem"  # seed 001 level 0 flushes the whole VMID
        rep = step(P.STEP_BREAK, flags=s2.base_flags & ~P.F_TLBIRANGE if vmid_only else None)
        m.apply_tlbis(vm.vmid, g.page_shift, rep)
        vm.windows.append(window)
        t0 = env.now
        if strategy == "bbm":
            freed = step(P.STEP_FREE, child=child)
            # the walker cleans the block it installs (5.13 on); 5.11 cleaned before the map
            clean = not cfg.machine.fwb and cfg.hyp.cmo_at == "install"
            cmo = int(size / cfg.costs.cmo_bytes_per_cycle) if clean else 0
            ctr.add("cmo.bytes", size if clean else 0)
            yield cpu_event(env, cost(rep) + cost(freed) + cmo)
            vm.windows.remove(window)
            ctr.add("rebuild.window_cycles", env.now - t0)
            return cost(step(P.STEP_INSTALL, new=new))
        yield cpu_event(env, cost(rep))
        vm.windows.remove(window)
        ctr.add("rebuild.window_cycles", env.now - t0)
        installed = step(P.STEP_INSTALL, new=new)
        freed = step(P.STEP_FREE, child=child)
        return cost(installed) + cost(freed)
    # TTRem: no invalid window
    first = step(P.STEP_REPLACE, new=new | (int(D.NT) if bbm_level == 1 else 0))
    yield cpu_event(env, cost(first))
    flush = step(P.STEP_FLUSH_VMID)
    yield cpu_event(env, cost(flush))
    m.apply_tlbis(vm.vmid, g.page_shift, flush)
    spent = 0
    if bbm_level == 1:
        spent += cost(step(P.STEP_REPLACE, new=new))  # clear nT
    return spent + cost(step(P.STEP_FREE, child=child))
