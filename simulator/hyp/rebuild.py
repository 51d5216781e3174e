"""Replacing a table by a block (seeds 001 and 003): each strategy as a table of steps.

When a fault maps a block where the stage-2 holds a table (the block mappings rebuilt after
dirty logging stops), the kernel replaces the table entry and frees the old subtree. How it
orders the steps decides how long the entry is invalid, and every vCPU that touches the
range in that window takes a translation fault. A strategy here is a program of single-entry
steps (:func:`simulator.hyp.pgtable.pgtable_entry_step`) and waits: the engine runs the
steps in order at one instant, charging each step's cost, and at a ``WAIT`` lets simulated
time pass by what has been charged, so that the other vCPUs run meanwhile. The rebuilding
vCPU holds the MMU lock throughout (write mode in 5.11's spinlock model).

``bbm`` (Linux 5.11 with patch 1 of seed 003's series, i.e. the "before" of its table)
    stage2_map_walk_table_pre(): invalidate the table entry and flush the VMID; the walk
    then puts every old leaf and frees every old table page; at the anchor's TABLE_POST the
    block is installed by stage2_map_walker_try_leaf(), whose dcache clean of the whole
    block (no FWB) runs before the store. Window: TLBI + subtree + CMO of the block.
``install_first`` (seed 003) and ``ttrem`` with ``machine.bbm_level: 0`` (seed 001)
    stage2_coalesce_tables_into_block(): invalidate, flush (seed 001: the whole VMID), store
    the block; the subtree is freed afterwards (TABLE_POST). Window: the TLBI. As posted,
    neither calls a cache-maintenance function for the block (the pages were cleaned when
    they were mapped).
``ttrem`` levels 1 and 2 (seed 001 as written: ``case TTREM_LEVEL1: case TTREM_LEVEL2:``)
    store the block with nT set, flush the VMID, clear nT. No invalid window; an nT block is
    never cached, so accesses to the range walk until nT is cleared.
``replace`` (FEAT_BBM level 2 without nT: not what seed 001 does, kept to show the hazard)
    store the block over the table with no prior invalidation, then flush the VMID. A TLB
    that still holds page entries and now also caches the block (or a splinter of it) for
    an address takes a TLB conflict abort (the batch kernel detects it; the handler flushes
    the local TLB).
"""

from __future__ import annotations

import numpy as np

# step codes of a strategy program
RB_BREAK = 0  # STEP_BREAK with the stage-2's flags (range TLBI with FEAT_TLBIRANGE)
RB_BREAK_VMID = 1  # STEP_BREAK flushing the whole VMID (seed 001)
RB_WINDOW_OPEN = 2  # the block-level entry is invalid from now
RB_WINDOW_CLOSE = 3  # ... until now (counted in rebuild.window_cycles)
RB_FREE = 4  # STEP_FREE: put the old subtree
RB_CMO = 5  # dcache clean of the whole block (no FWB)
RB_INSTALL = 6  # STEP_INSTALL of the block into the broken entry
RB_REPLACE_NT = 7  # STEP_REPLACE of the table by the block with nT set
RB_REPLACE = 8  # STEP_REPLACE by the block (nT clear)
RB_FLUSH = 9  # STEP_FLUSH_VMID: TLBI VMALLS12E1IS issued (and charged)
RB_FLUSH_LANDS = 10  # ... it has completed: every CPU drops the VMID's entries
RB_WAIT = 11  # simulated time passes by what the steps so far cost
RB_END = 12  # release the lock and return to the guest

STRATEGIES = ("bbm", "install_first", "ttrem0", "ttrem1", "replace")

PROGRAMS = {
    "bbm": (RB_BREAK, RB_WINDOW_OPEN, RB_FREE, RB_CMO, RB_WAIT, RB_WINDOW_CLOSE, RB_INSTALL,
            RB_END),
    "install_first": (RB_BREAK, RB_WINDOW_OPEN, RB_WAIT, RB_WINDOW_CLOSE, RB_INSTALL, RB_FREE,
                      RB_END),
    "ttrem0": (RB_BREAK_VMID, RB_WINDOW_OPEN, RB_WAIT, RB_WINDOW_CLOSE, RB_INSTALL, RB_FREE,
               RB_END),
    "ttrem1": (RB_REPLACE_NT, RB_WAIT, RB_FLUSH, RB_WAIT, RB_FLUSH_LANDS, RB_REPLACE, RB_FREE,
               RB_END),
    "replace": (RB_REPLACE, RB_WAIT, RB_FLUSH, RB_WAIT, RB_FLUSH_LANDS, RB_FREE, RB_END),
}


def program(rebuild: str, bbm_level: int, clean_first: bool = False) -> np.ndarray:
    """The step program of ``hyp.rebuild`` (with ``machine.bbm_level`` for ttrem).

    ``clean_first`` (``hyp.cmo_at: fault`` without FWB: 5.11 without seed 003's patch 1):
    user_mem_abort() cleans the block before it calls the map, under the lock and before
    any entry changes, so the clean and its time come first and the walker's own clean
    (bbm's RB_CMO) is gone."""
    name = f"ttrem{min(bbm_level, 1)}" if rebuild == "ttrem" else rebuild
    steps = PROGRAMS[name]
    if clean_first:
        steps = (RB_CMO, RB_WAIT) + tuple(op for op in steps if op != RB_CMO)
    return np.array(steps, dtype=np.int64)


__all__ = ["PROGRAMS", "STRATEGIES", "program"]
