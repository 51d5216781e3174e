"""KVM's reverse map (rmap): per guest frame, the list of leaf entries (sptes) that map it.

A model of the x86 KVM rmap of ``arch/x86/kvm/mmu/mmu.c`` as it is today (read in
torvalds/linux at commit 56ea38e4, a v6.9-era tree): the rmap head encoding, ``struct
pte_list_desc``, ``pte_list_add()``, ``pte_list_remove()`` with
``pte_list_desc_remove_entry()``, the ``rmap_iterator`` (``rmap_get_first()`` /
``rmap_get_next()``), ``drop_spte()`` and ``kvm_zap_all_rmap_sptes()`` (``pte_list_destroy()``
in earlier kernels). Its point is the cost of dropping every spte of one frame, the two ways
the kernel has done it:

* ``one_by_one``: the old ``kvm_unmap_rmapp()`` / ``kvm_zap_rmapp()`` loop,
  ``restart: for_each_rmap_spte(rmap_head, &iter, sptep) { drop_spte(kvm, sptep); goto
  restart; }``: each spte is cleared and unlinked by ``pte_list_remove()``, and the iterator
  starts again from the head;
* ``batch``: ``kvm_zap_all_rmap_sptes()``: one walk of the chain clearing every spte
  (``mmu_spte_clear_track_bits()``) and freeing each descriptor as it goes.

Both leave the same state: every spte cleared, the rmap head 0, every descriptor of the chain
freed (pushed on the free stack in the same, chain, order).

The kernel's rules (all verified in the source named above):

* rmap head (``rmap_head->val``): 0 = empty; bit 0 clear = the only spte, inline; bit 0 set =
  a pointer to the head ``pte_list_desc`` of a chain.
* ``struct pte_list_desc``: ``more`` (next descriptor), ``spte_count`` (sptes in this one),
  ``tail_count`` (sptes in all descriptors after it), ``sptes[PTE_LIST_EXT]`` (14 today; 3
  in 2013). Tail descriptors are always full; only the head can be partly full.
* ``pte_list_add()``: empty -> store inline; inline -> allocate a descriptor holding
  (old, new); chain with a full head -> allocate a new head (``more`` = old head,
  ``tail_count`` = old head's ``tail_count + spte_count``) and put the spte in it; otherwise
  append to the head. Returns the number of sptes already there.
* ``pte_list_remove()``: inline -> must match, head = 0; chain -> search from the head
  descriptor (slots ``0 .. spte_count-1``, then ``more``), then
  ``pte_list_desc_remove_entry()`` moves the head descriptor's last entry into the hole and
  decrements its ``spte_count``; a head left empty is freed and the rmap head becomes ``more``
  (0 if none). A chain is never collapsed back to an inline spte: one spte left in a
  descriptor stays there.
* ``rmap_get_first()`` returns the inline spte or the head descriptor's slot 0;
  ``rmap_get_next()`` walks slots up to ``PTE_LIST_EXT - 1`` or the first NULL, then ``more``.

Data layout (flat numpy int64 arrays, so that one jitted kernel, :func:`rmap_op`, does every
operation):

* ``head[frame]``: 0 empty, ``spte << 1`` inline, ``(desc << 1) | 1`` chain. Spte ids start at
  1: id 0 is the NULL pointer (an empty descriptor slot);
* the descriptor pool: ``dsptes[ndesc, ext]`` (0 = NULL slot), ``dcount`` (spte_count),
  ``dmore`` (-1 = NULL), ``dtail`` (tail_count), and ``free_stack`` with ``meta[M_FREE_TOP]``
  free entries. A descriptor is zeroed when allocated (the kernel's descriptor cache is
  ``__GFP_ZERO``). The kernel never runs out: before an add, :class:`Rmap` doubles the pool
  when no descriptor is free (as ``mmu_topup_memory_caches()`` fills the vCPU's cache before
  the MMU lock is taken; an add takes at most one descriptor);
* ``leaf[spte]``: the spte itself, 0 = not present, else ``frame << LEAF_FRAME_SHIFT |
  LEAF_VALID``. An add makes it present; remove and drop_all clear it.

Cost model. Counters, per call (``rmap_op``'s ``out``) and accumulated by :class:`Rmap`:

* ``entries_dropped``: sptes cleared (``mmu_spte_clear_track_bits()``, by remove/drop_all);
* ``desc_freed`` / ``desc_allocated``: descriptors returned to / taken from the pool;
* ``entry_moves``: ``pte_list_desc_remove_entry()`` moving the head's last entry into a hole at
  another position (not counted when the removed entry *is* the head's last);
* ``restarts``: ``goto restart`` of the one_by_one loop (one per spte dropped);
* ``touches``: reads of rmap metadata, one per

  - read of ``rmap_head->val`` (each C function that loads it: pte_list_add,
    pte_list_remove, pte_list_desc_remove_entry, rmap_get_first, kvm_zap_all_rmap_sptes);
  - visit of a descriptor's header (``more`` / ``spte_count`` / ``tail_count``, one cache
    line) by a function: counted once per descriptor per function;
  - read of one ``desc->sptes[i]`` slot (searching, iterating, the head's last entry moved).

  Writes are not counted: each goes to a line the same function has just read. The leaf
  sptes themselves are priced by ``cost_clear``, not as touches;
* ``cycles`` = ``touches * cost_touch + desc_freed * cost_free + entries_dropped *
  cost_clear``.

The default costs are assumptions, not measurements: :data:`COST_TOUCH` 4 cycles (an L1 hit),
:data:`COST_FREE` 60 cycles (``kmem_cache_free()``), :data:`COST_CLEAR` 20 cycles (an atomic
spte clear plus the accessed/dirty tracking of ``mmu_spte_clear_track_bits()``).

What the model shows: with today's rules the one_by_one loop is *linear* in the list length,
not quadratic. Its first spte is always slot 0 of the head descriptor, which
``pte_list_remove()`` finds at once, and the hole is refilled from the same descriptor, so each
removal costs a constant 8 touches (for a chain: rmap_get_first 2, pte_list_remove 3,
pte_list_desc_remove_entry 3), against about 1 + 1/ext for batch. A quadratic cost needs a
search that walks the chain, i.e. removals in another order than the iterator's (e.g. always
removing the last spte of the chain: each search reads every slot).
"""

from __future__ import annotations

import operator

import numpy as np

from simulator._jit import jit

__all__ = [
    "COST_CLEAR",
    "COST_FREE",
    "COST_TOUCH",
    "COUNTER_NAMES",
    "LEAF_FRAME_SHIFT",
    "LEAF_VALID",
    "PTE_LIST_EXT",
    "PTE_LIST_EXT_2013",
    "STRATEGIES",
    "Rmap",
    "rmap_op",
]

# make pte_list_desc fit well in cache lines: 14 slots today, 3 in 2013
PTE_LIST_EXT = 14
PTE_LIST_EXT_2013 = 3

# Cost assumptions (cycles), see the module docstring.
COST_TOUCH = 4  # one read of rmap metadata: an L1 hit
COST_FREE = 60  # mmu_free_pte_list_desc(): kmem_cache_free()
COST_CLEAR = 20  # mmu_spte_clear_track_bits(): atomic spte clear + A/D tracking

# leaf spte encoding: the frame it maps, present bit
LEAF_FRAME_SHIFT = 12
LEAF_VALID = 1

# ops and drop strategies of rmap_op
OP_ADD = 0
OP_REMOVE = 1
OP_DROP_ALL = 2

DROP_ONE_BY_ONE = 0
DROP_BATCH = 1
STRATEGIES = {"one_by_one": DROP_ONE_BY_ONE, "batch": DROP_BATCH}

# rmap_op return codes (>= 0: the op's result)
ERR_PRESENT = -1  # add: the spte is already present
ERR_NOT_FOUND = -2  # remove: the spte is not on this frame's rmap (KVM_BUG_ON_DATA_CORRUPTION)
ERR_NO_DESC = -3  # add: the descriptor pool is empty (the wrapper tops it up first)
ERR_BAD_OP = -4

# meta
M_FREE_TOP = 0  # free descriptors: free_stack[0 .. top-1], the next one allocated on top
META_SIZE = 1

# counters (out)
CTR_ENTRIES_DROPPED = 0
CTR_DESC_FREED = 1
CTR_ENTRY_MOVES = 2
CTR_RESTARTS = 3
CTR_TOUCHES = 4
CTR_CYCLES = 5
CTR_DESC_ALLOCATED = 6
N_COUNTERS = 7
COUNTER_NAMES = (
    "entries_dropped",
    "desc_freed",
    "entry_moves",
    "restarts",
    "touches",
    "cycles",
    "desc_allocated",
)


# ========================================================================================
# Kernels


@jit
def _find(head_val, dsptes, dcount, dmore, spte, out):
    """pte_list_remove()'s search of a chain headed by ``head_val`` (bit 0 set): the
    (descriptor, slot) holding ``spte``, or (-1, -1)."""
    d = head_val >> 1
    while d >= 0:
        out[CTR_TOUCHES] += 1  # desc->spte_count (and desc->more): the header
        for i in range(dcount[d]):
            out[CTR_TOUCHES] += 1  # desc->sptes[i]
            if dsptes[d, i] == spte:
                return d, i
        d = dmore[d]
    return -1, -1


@jit
def _alloc_desc(dsptes, free_stack, meta, out):
    """mmu_alloc_pte_list_desc(): a zeroed descriptor from the free stack, or -1 if none."""
    top = meta[M_FREE_TOP]
    if top == 0:
        return -1
    d = free_stack[top - 1]
    meta[M_FREE_TOP] = top - 1
    out[CTR_DESC_ALLOCATED] += 1
    dsptes[d, :] = 0
    return d


@jit
def _remove_entry(head, dsptes, dcount, dmore, free_stack, meta, frame, d, i, out):
    """pte_list_desc_remove_entry(): move the head descriptor's last entry into slot ``i`` of
    descriptor ``d``; free the head if that leaves it empty (the rmap head becomes its
    ``more``, or 0)."""
    out[CTR_TOUCHES] += 3  # rmap_head->val, head_desc->spte_count, head_desc->sptes[j]
    h = head[frame] >> 1
    j = dcount[h] - 1
    if d != h or i != j:
        out[CTR_ENTRY_MOVES] += 1
    dsptes[d, i] = dsptes[h, j]
    dsptes[h, j] = 0
    dcount[h] = j
    if j > 0:
        return
    nxt = dmore[h]
    if nxt < 0:
        head[frame] = 0
    else:
        head[frame] = (nxt << 1) | 1
    # mmu_free_pte_list_desc()
    free_stack[meta[M_FREE_TOP]] = h
    meta[M_FREE_TOP] += 1
    out[CTR_DESC_FREED] += 1


@jit
def rmap_op(head, dsptes, dcount, dmore, dtail, free_stack, meta, leaf, op, frame, spte,
            strategy, cost_touch, cost_free, cost_clear, out):
    """One rmap operation on ``frame``; ``out`` (N_COUNTERS int64) gets this call's counters.

    head, dsptes, dcount, dmore, dtail, free_stack, meta, leaf: the state (module docstring).
    op: OP_ADD (pte_list_add of ``spte``, making it present), OP_REMOVE (drop_spte: clear
        ``spte`` and pte_list_remove it) or OP_DROP_ALL (every spte of the frame, with
        ``strategy`` DROP_ONE_BY_ONE or DROP_BATCH; ``spte`` is unused).
    cost_touch, cost_free, cost_clear: cycles per touch, descriptor freed, spte cleared.
    Returns, for OP_ADD, the number of sptes already on the rmap (pte_list_add()'s count);
    for OP_REMOVE 0; for OP_DROP_ALL the number of sptes dropped; or a negative ERR_*, in which
    case the state is unchanged.
    """
    for k in range(N_COUNTERS):
        out[k] = 0
    ext = dsptes.shape[1]
    ret = 0

    if op == OP_ADD:
        if leaf[spte] != 0:
            return ERR_PRESENT
        out[CTR_TOUCHES] += 1  # rmap_head->val
        hv = head[frame]
        if hv == 0:
            head[frame] = spte << 1
        elif hv & 1 == 0:
            # 1 -> many: a descriptor holding the inline spte and the new one
            d = _alloc_desc(dsptes, free_stack, meta, out)
            if d < 0:
                return ERR_NO_DESC
            dsptes[d, 0] = hv >> 1
            dsptes[d, 1] = spte
            dcount[d] = 2
            dtail[d] = 0
            dmore[d] = -1
            head[frame] = (d << 1) | 1
            ret = 1
        else:
            h = hv >> 1
            out[CTR_TOUCHES] += 1  # the head descriptor's header
            ret = dtail[h] + dcount[h]
            if dcount[h] == ext:
                # tail descriptors are kept full: a new head
                d = _alloc_desc(dsptes, free_stack, meta, out)
                if d < 0:
                    return ERR_NO_DESC
                dmore[d] = h
                dcount[d] = 0
                dtail[d] = ret
                head[frame] = (d << 1) | 1
                h = d
            dsptes[h, dcount[h]] = spte
            dcount[h] += 1
        leaf[spte] = (np.int64(frame) << LEAF_FRAME_SHIFT) | LEAF_VALID

    elif op == OP_REMOVE:
        out[CTR_TOUCHES] += 1  # rmap_head->val
        hv = head[frame]
        if hv == 0:
            return ERR_NOT_FOUND
        if hv & 1 == 0:
            if hv >> 1 != spte:
                return ERR_NOT_FOUND
            leaf[spte] = 0
            out[CTR_ENTRIES_DROPPED] += 1
            head[frame] = 0
        else:
            d, i = _find(hv, dsptes, dcount, dmore, spte, out)
            if d < 0:
                return ERR_NOT_FOUND
            leaf[spte] = 0
            out[CTR_ENTRIES_DROPPED] += 1
            _remove_entry(head, dsptes, dcount, dmore, free_stack, meta, frame, d, i, out)

    elif op == OP_DROP_ALL and strategy == DROP_ONE_BY_ONE:
        while True:
            # restart: rmap_get_first()
            out[CTR_TOUCHES] += 1  # rmap_head->val
            hv = head[frame]
            if hv == 0:
                break
            if hv & 1 == 0:
                s = hv >> 1
            else:
                out[CTR_TOUCHES] += 1  # head_desc->sptes[0]
                s = dsptes[hv >> 1, 0]
            # drop_spte(): mmu_spte_clear_track_bits(), then rmap_remove() -> pte_list_remove()
            leaf[s] = 0
            out[CTR_ENTRIES_DROPPED] += 1
            out[CTR_TOUCHES] += 1  # pte_list_remove(): rmap_head->val
            if hv & 1 == 0:
                head[frame] = 0
            else:
                d, i = _find(hv, dsptes, dcount, dmore, s, out)
                _remove_entry(head, dsptes, dcount, dmore, free_stack, meta, frame, d, i, out)
            ret += 1
            out[CTR_RESTARTS] += 1  # goto restart

    elif op == OP_DROP_ALL and strategy == DROP_BATCH:
        # kvm_zap_all_rmap_sptes()
        out[CTR_TOUCHES] += 1  # rmap_head->val
        hv = head[frame]
        if hv != 0:
            if hv & 1 == 0:
                leaf[hv >> 1] = 0
                out[CTR_ENTRIES_DROPPED] += 1
                ret = 1
            else:
                d = hv >> 1
                while d >= 0:
                    out[CTR_TOUCHES] += 1  # desc->spte_count, desc->more
                    for i in range(dcount[d]):
                        out[CTR_TOUCHES] += 1  # desc->sptes[i]
                        leaf[dsptes[d, i]] = 0
                        out[CTR_ENTRIES_DROPPED] += 1
                        ret += 1
                    nxt = dmore[d]
                    free_stack[meta[M_FREE_TOP]] = d
                    meta[M_FREE_TOP] += 1
                    out[CTR_DESC_FREED] += 1
                    d = nxt
            head[frame] = 0

    else:
        return ERR_BAD_OP

    out[CTR_CYCLES] = (out[CTR_TOUCHES] * cost_touch + out[CTR_DESC_FREED] * cost_free
                       + out[CTR_ENTRIES_DROPPED] * cost_clear)
    return ret


# ========================================================================================
# The Python wrapper


def _int(value, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an int, not {value!r}") from None


class Rmap:
    """The rmaps of ``frames`` guest frames with ``ext``-slot descriptors, one kernel call per
    operation.

    frames: number of rmap heads (guest frames 0 .. frames-1).
    ext: PTE_LIST_EXT, slots per descriptor (>= 2): 14 today, 3 in 2013.
    sptes: initial capacity of the spte id space (ids 1 .. sptes-1; grows on demand).
    descs: initial descriptor pool (doubles on demand).
    cost_touch, cost_free, cost_clear: cycles (module docstring; defaults are assumptions).

    ``counters()`` holds the totals since construction (or ``reset_counters()``), ``last`` the
    counters of the last successful call.
    """

    def __init__(
        self,
        frames: int,
        ext: int = PTE_LIST_EXT,
        *,
        sptes: int = 64,
        descs: int = 16,
        cost_touch: int = COST_TOUCH,
        cost_free: int = COST_FREE,
        cost_clear: int = COST_CLEAR,
    ):
        frames = _int(frames, "frames")
        ext = _int(ext, "ext")
        sptes = _int(sptes, "sptes")
        descs = _int(descs, "descs")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, not {frames}")
        if ext < 2:
            raise ValueError(f"ext must be >= 2 (a descriptor holds two sptes at once), not {ext}")
        if sptes < 2 or descs < 1:
            raise ValueError("sptes must be >= 2 and descs >= 1")
        self.frames = frames
        self.ext = ext
        self.cost_touch = _int(cost_touch, "cost_touch")
        self.cost_free = _int(cost_free, "cost_free")
        self.cost_clear = _int(cost_clear, "cost_clear")
        self.head = np.zeros(frames, dtype=np.int64)
        self.leaf = np.zeros(sptes, dtype=np.int64)
        self.dsptes = np.zeros((descs, ext), dtype=np.int64)
        self.dcount = np.zeros(descs, dtype=np.int64)
        self.dmore = np.full(descs, -1, dtype=np.int64)
        self.dtail = np.zeros(descs, dtype=np.int64)
        # the first descriptor allocated is 0: the top of the stack is its last element
        self.free_stack = np.arange(descs - 1, -1, -1, dtype=np.int64)
        self.meta = np.zeros(META_SIZE, dtype=np.int64)
        self.meta[M_FREE_TOP] = descs
        self.totals = np.zeros(N_COUNTERS, dtype=np.int64)
        self._out = np.zeros(N_COUNTERS, dtype=np.int64)
        self.last: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    # ---- growth (Python side) -----------------------------------------------------------

    def _topup(self) -> None:
        """Double the descriptor pool when none is free (an add takes at most one)."""
        if self.meta[M_FREE_TOP] > 0:
            return
        n = self.pool_size
        m = 2 * n
        dsptes = np.zeros((m, self.ext), dtype=np.int64)
        dsptes[:n] = self.dsptes
        self.dsptes = dsptes
        self.dcount = np.concatenate([self.dcount, np.zeros(n, dtype=np.int64)])
        self.dmore = np.concatenate([self.dmore, np.full(n, -1, dtype=np.int64)])
        self.dtail = np.concatenate([self.dtail, np.zeros(n, dtype=np.int64)])
        stack = np.zeros(m, dtype=np.int64)
        stack[:n] = np.arange(m - 1, n - 1, -1)  # the stack is empty: the new ones, n on top
        self.free_stack = stack
        self.meta[M_FREE_TOP] = n

    def _grow_sptes(self, spte: int) -> None:
        size = len(self.leaf)
        while size <= spte:
            size *= 2
        if size != len(self.leaf):
            leaf = np.zeros(size, dtype=np.int64)
            leaf[: len(self.leaf)] = self.leaf
            self.leaf = leaf

    # ---- operations ---------------------------------------------------------------------

    def _frame(self, frame) -> int:
        frame = _int(frame, "frame")
        if not 0 <= frame < self.frames:
            raise ValueError(f"frame {frame} is outside 0 .. {self.frames - 1}")
        return frame

    def _spte(self, spte) -> int:
        spte = _int(spte, "spte")
        if spte < 1:
            raise ValueError(f"spte ids start at 1 (0 is NULL), not {spte}")
        return spte

    def _call(self, op: int, frame: int, spte: int, strategy: int) -> int:
        ret = int(rmap_op(self.head, self.dsptes, self.dcount, self.dmore, self.dtail,
                          self.free_stack, self.meta, self.leaf, op, frame, spte, strategy,
                          self.cost_touch, self.cost_free, self.cost_clear, self._out))
        if ret >= 0:
            self.totals += self._out
            self.last = {name: int(v) for name, v in zip(COUNTER_NAMES, self._out)}
        return ret

    def add(self, frame: int, spte: int) -> int:
        """rmap_add() / pte_list_add(): put ``spte`` (made present, mapping ``frame``) on the
        frame's rmap. Returns the number of sptes that were already there."""
        frame, spte = self._frame(frame), self._spte(spte)
        self._grow_sptes(spte)
        if self.leaf[spte] != 0:
            raise ValueError(f"spte {spte} is already present (on frame {self.frame_of(spte)})")
        self._topup()
        ret = self._call(OP_ADD, frame, spte, 0)
        assert ret >= 0, f"rmap_op(ADD) failed with {ret}"
        return ret

    def remove(self, frame: int, spte: int) -> dict[str, int]:
        """drop_spte(): clear ``spte`` and pte_list_remove() it from the frame's rmap.
        Returns this call's counters."""
        frame, spte = self._frame(frame), self._spte(spte)
        if spte >= len(self.leaf) or self._call(OP_REMOVE, frame, spte, 0) == ERR_NOT_FOUND:
            raise ValueError(f"spte {spte} is not on frame {frame}'s rmap")
        return dict(self.last)

    def drop_all(self, frame: int, strategy: str = "batch") -> dict[str, int]:
        """Drop every spte of the frame: ``"one_by_one"`` (the restart loop of drop_spte()) or
        ``"batch"`` (kvm_zap_all_rmap_sptes()). Returns this call's counters."""
        frame = self._frame(frame)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        ret = self._call(OP_DROP_ALL, frame, 0, STRATEGIES[strategy])
        assert ret >= 0, f"rmap_op(DROP_ALL) failed with {ret}"
        return dict(self.last)

    # ---- inspection ---------------------------------------------------------------------

    def entries(self, frame: int) -> list[int]:
        """The frame's sptes in rmap_iterator order (rmap_get_first(), rmap_get_next())."""
        hv = int(self.head[self._frame(frame)])
        if hv == 0:
            return []
        if hv & 1 == 0:
            return [hv >> 1]
        out = []
        d = hv >> 1
        while d >= 0:
            for pos in range(self.ext):
                s = int(self.dsptes[d, pos])
                if s == 0:
                    break
                out.append(s)
            d = int(self.dmore[d])
        return out

    def layout(self, frame: int) -> tuple[str, list[list[int]]]:
        """("empty", []), ("inline", [[spte]]) or ("chain", [sptes of each descriptor, head
        first])."""
        hv = int(self.head[self._frame(frame)])
        if hv == 0:
            return "empty", []
        if hv & 1 == 0:
            return "inline", [[hv >> 1]]
        descs = []
        d = hv >> 1
        while d >= 0:
            descs.append([int(s) for s in self.dsptes[d, : self.dcount[d]]])
            d = int(self.dmore[d])
        return "chain", descs

    def count(self, frame: int) -> int:
        """pte_list_count(): the head descriptor's tail_count + spte_count."""
        hv = int(self.head[self._frame(frame)])
        if hv == 0:
            return 0
        if hv & 1 == 0:
            return 1
        return int(self.dtail[hv >> 1] + self.dcount[hv >> 1])

    def present(self, spte: int) -> bool:
        spte = self._spte(spte)
        return spte < len(self.leaf) and self.leaf[spte] != 0

    def frame_of(self, spte: int) -> int | None:
        """The frame a present spte maps (from its leaf value), None if not present."""
        if not self.present(spte):
            return None
        return int(self.leaf[spte]) >> LEAF_FRAME_SHIFT

    @property
    def pool_size(self) -> int:
        return len(self.dcount)

    @property
    def free_descs(self) -> int:
        return int(self.meta[M_FREE_TOP])

    @property
    def descs_in_use(self) -> int:
        return self.pool_size - self.free_descs

    def free_list(self) -> list[int]:
        """The free descriptors, bottom of the stack first (the next allocated is last)."""
        return [int(d) for d in self.free_stack[: self.free_descs]]

    def counters(self) -> dict[str, int]:
        """Totals of every successful call since construction or reset_counters()."""
        return {name: int(v) for name, v in zip(COUNTER_NAMES, self.totals)}

    def reset_counters(self) -> None:
        self.totals[:] = 0

    def check_invariants(self) -> list[str]:
        """Problems found (empty when the state is consistent): tails full and the head
        descriptor non-empty, NULL slots exactly past spte_count, tail_count consistent, no
        descriptor reachable twice, free stack + reachable descriptors = the pool, each spte on
        at most one rmap, present iff on an rmap, and its leaf mapping that frame."""
        problems: list[str] = []
        ext = self.ext
        seen_desc: dict[int, int] = {}
        seen_spte: dict[int, int] = {}

        def note_spte(s: int, frame: int) -> None:
            if not 1 <= s < len(self.leaf):
                problems.append(f"frame {frame}: spte id {s} out of range")
                return
            if s in seen_spte:
                problems.append(f"spte {s} on frame {frame} and frame {seen_spte[s]}")
            seen_spte[s] = frame
            want = (frame << LEAF_FRAME_SHIFT) | LEAF_VALID
            if int(self.leaf[s]) != want:
                problems.append(f"spte {s} on frame {frame}: leaf {int(self.leaf[s]):#x}")

        for frame in range(self.frames):
            hv = int(self.head[frame])
            if hv == 0:
                continue
            if hv & 1 == 0:
                note_spte(hv >> 1, frame)
                continue
            chain = []
            d = hv >> 1
            while d >= 0:
                if not 0 <= d < self.pool_size:
                    problems.append(f"frame {frame}: descriptor {d} outside the pool")
                    break
                if d in seen_desc:
                    problems.append(f"frame {frame}: descriptor {d} reachable twice "
                                    f"(also from frame {seen_desc[d]})")
                    break
                seen_desc[d] = frame
                chain.append(d)
                d = int(self.dmore[d])
            for k, d in enumerate(chain):
                n = int(self.dcount[d])
                if k == 0 and not 1 <= n <= ext:
                    problems.append(f"frame {frame}: head descriptor {d} holds {n} sptes")
                if k > 0 and n != ext:
                    problems.append(f"frame {frame}: tail descriptor {d} holds {n} != {ext}")
                row = [int(s) for s in self.dsptes[d]]
                if any(s == 0 for s in row[:n]) or any(s != 0 for s in row[n:]):
                    problems.append(f"frame {frame}: descriptor {d} slots {row} with count {n}")
                tail = sum(int(self.dcount[t]) for t in chain[k + 1:])
                if int(self.dtail[d]) != tail:
                    problems.append(f"frame {frame}: descriptor {d} tail_count "
                                    f"{int(self.dtail[d])} != {tail}")
                for s in row[:n]:
                    note_spte(s, frame)

        free = self.free_list()
        if len(set(free)) != len(free):
            problems.append("free stack holds a descriptor twice")
        both = sorted(set(free) & set(seen_desc))
        if both:
            problems.append(f"descriptors both free and in use: {both}")
        if len(free) + len(seen_desc) != self.pool_size:
            problems.append(f"{len(free)} free + {len(seen_desc)} in use != pool of "
                            f"{self.pool_size}")
        present = {int(s) for s in np.flatnonzero(self.leaf)}
        if present != set(seen_spte):
            problems.append(f"present sptes not on an rmap: {sorted(present - set(seen_spte))}")
        return problems

    def __repr__(self) -> str:
        return (f"Rmap({self.frames} frames, ext {self.ext}, {self.descs_in_use}/"
                f"{self.pool_size} descriptors in use)")
