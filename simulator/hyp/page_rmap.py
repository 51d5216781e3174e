"""The reverse map of one guest's stage-2: rmap_add() in the fault path, compiled.

x86 KVM puts every leaf spte that ``mmu_set_spte()`` installs on the rmap of the frame it maps
(``rmap_add()``), under the MMU lock. :class:`PageRmap` attaches that to the arm64 stage-2 of
a kvm-mode guest: the frame is the *host* frame the stage-2 leaf maps, numbered in the order
frames are first mapped; each leaf gets the next spte id. Its state is the
:class:`~simulator.hyp.rmap.Rmap`'s arrays plus three index arrays (host frame -> rmap frame,
guest page -> spte, spte -> IPA) and a few scalars; :func:`rmap_add_leaf` is what the engine
runs after a fault's map (:mod:`simulator.engine.loop`), and the arrays grow by a call-out
when full (nothing is allocated in compiled code).
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.hyp.rmap import (
    CTR_CYCLES,
    CTR_DESC_ALLOCATED,
    M_FREE_TOP,
    N_COUNTERS,
    OP_ADD,
    Rmap,
    rmap_op,
)

# int64 (not literal) arguments: a literal int would compile the callee once more per value
I0 = np.int64(0)


__all__ = ["PageRmap", "empty_page_rmap", "rmap_add_leaf"]

# scalars (int64)
(RS_PAGE_SHIFT, RS_PFN_LO, RS_GPAGE_LO, RS_FRAMES_USED, RS_NEXT_SPTE, RS_MAX_ENTRIES,
 RS_ADDED, RS_DESC_ALLOCATED, RS_ADD_CYCLES, RS_COST_TOUCH, RS_COST_FREE,
 RS_COST_CLEAR, RS_BY_GFN) = range(13)
N_RS = 13


@jit
def rmap_add_leaf(rm, pa, ipa):
    """rmap_add() of the page leaf just installed at ``ipa``, mapping host address ``pa``.
    Returns its cycles, or -1 when the arrays must grow first (nothing changed)."""
    (head, dsptes, dcount, dmore, dtail, free_stack, meta, leaf, totals, out, frame_of,
     spte_of, ipa_of, rs) = rm
    ps = rs[RS_PAGE_SHIFT]
    spte = rs[RS_NEXT_SPTE]
    if meta[M_FREE_TOP] == 0 or spte >= leaf.shape[0] or spte >= ipa_of.shape[0]:
        return -1
    # the list's key: the guest frame (gfn, as KVM keys it), or the host frame it maps
    k = (ipa >> ps) - rs[RS_GPAGE_LO] if rs[RS_BY_GFN] != 0 else (pa >> ps) - rs[RS_PFN_LO]
    frame = frame_of[k]
    if frame < 0:
        frame = rs[RS_FRAMES_USED]
        frame_of[k] = frame
        rs[RS_FRAMES_USED] += 1
    spte_of[(ipa >> ps) - rs[RS_GPAGE_LO]] = spte
    ipa_of[spte] = (ipa >> ps) << ps
    rs[RS_NEXT_SPTE] = spte + 1
    count = rmap_op(head, dsptes, dcount, dmore, dtail, free_stack, meta, leaf, np.int64(OP_ADD),
                    frame, spte, I0, rs[RS_COST_TOUCH], rs[RS_COST_FREE], rs[RS_COST_CLEAR], out)
    for k in range(N_COUNTERS):
        totals[k] += out[k]
    if count + 1 > rs[RS_MAX_ENTRIES]:
        rs[RS_MAX_ENTRIES] = count + 1
    rs[RS_ADDED] += 1
    rs[RS_DESC_ALLOCATED] += out[CTR_DESC_ALLOCATED]
    rs[RS_ADD_CYCLES] += out[CTR_CYCLES]
    return out[CTR_CYCLES]


class PageRmap:
    """The rmap of a guest whose memory spans guest pages ``[gpage_lo, gpage_lo + npages)``
    and, from ``pfn_lo``, as many host frames (the guest's memory is one host range).
    ``by_gfn``: a list per guest frame (KVM's key: memslot, gfn, level; one memslot, page
    leaves here); else a list per host frame (the stage-2's pages standing for a shadow MMU's
    guest-virtual pages, whose gfn is the host frame's: module docstring of
    simulator.agents.rmap)."""

    def __init__(self, rmap: Rmap, page_shift: int, pfn_lo: int, gpage_lo: int, npages: int,
                 by_gfn: bool = False):
        self.rmap = rmap
        self.frame_of = np.full(npages, -1, dtype=np.int64)
        self.spte_of = np.zeros(npages, dtype=np.int64)
        self.ipa_of = np.zeros(len(rmap.leaf), dtype=np.int64)
        rs = np.zeros(N_RS, dtype=np.int64)
        rs[RS_PAGE_SHIFT] = page_shift
        rs[RS_PFN_LO] = pfn_lo
        rs[RS_GPAGE_LO] = gpage_lo
        rs[RS_NEXT_SPTE] = 1  # spte id 0 is NULL
        rs[RS_COST_TOUCH] = rmap.cost_touch
        rs[RS_COST_FREE] = rmap.cost_free
        rs[RS_COST_CLEAR] = rmap.cost_clear
        rs[RS_BY_GFN] = int(by_gfn)
        self.rs = rs

    def arrays(self) -> tuple:
        """What the engine takes (the rmap's arrays may have moved since the last call)."""
        r = self.rmap
        return (r.head, r.dsptes, r.dcount, r.dmore, r.dtail, r.free_stack, r.meta, r.leaf,
                r.totals, r._out, self.frame_of, self.spte_of, self.ipa_of, self.rs)

    def grow(self) -> None:
        """Room for the next add: a free descriptor, and a slot for the next spte id."""
        r = self.rmap
        spte = int(self.rs[RS_NEXT_SPTE])
        r._topup()
        r._grow_sptes(spte)
        if spte >= len(self.ipa_of):
            ipa_of = np.zeros(len(r.leaf), dtype=np.int64)
            ipa_of[: len(self.ipa_of)] = self.ipa_of
            self.ipa_of = ipa_of

    def frames_in_order(self) -> list[int]:
        """The rmap frames that were mapped, in key order (host or guest address)."""
        f = self.frame_of
        return f[f >= 0].tolist()

    def ipa(self, spte: int) -> int:
        return int(self.ipa_of[spte])

    def spte(self, ipa: int) -> int:
        """The spte of the guest page at ``ipa`` (0: never mapped)."""
        return int(self.spte_of[(ipa >> int(self.rs[RS_PAGE_SHIFT])) - int(self.rs[RS_GPAGE_LO])])

    def frame_of_page(self, ipa: int, pa: int) -> int:
        """The rmap frame (list) of the guest page at ``ipa``, backed by host address ``pa``."""
        ps = int(self.rs[RS_PAGE_SHIFT])
        if self.rs[RS_BY_GFN]:
            return int(self.frame_of[(ipa >> ps) - int(self.rs[RS_GPAGE_LO])])
        return int(self.frame_of[(pa >> ps) - int(self.rs[RS_PFN_LO])])

    def mapped_pages(self) -> np.ndarray:
        """Guest page numbers that got an spte, in address order."""
        return np.flatnonzero(self.spte_of) + int(self.rs[RS_GPAGE_LO])

    def counters(self) -> dict[str, int]:
        rs = self.rs
        return {"rmap.entries_added": int(rs[RS_ADDED]),
                "rmap.desc_allocated": int(rs[RS_DESC_ALLOCATED]),
                "rmap.add_cycles": int(rs[RS_ADD_CYCLES]),
                "rmap.max_entries": int(rs[RS_MAX_ENTRIES])}


_EMPTY = None


def empty_page_rmap() -> tuple:
    """The engine's argument when no guest keeps a reverse map (same types)."""
    global _EMPTY
    if _EMPTY is None:
        _EMPTY = PageRmap(Rmap(1, sptes=2, descs=1), 12, 0, 0, 1).arrays()
    return _EMPTY
