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

**Linux 3.8's rules** (``meta[M_RULES] = RULES_V38``, seed 004's tree; read in v3.8's
``arch/x86/kvm/mmu.c`` and seed 004's patch): ``struct pte_list_desc`` is ``{ sptes[3],
more }`` with no counts, and the rmap head points at the *first* descriptor of the chain:

* ``pte_list_add()`` walks ``while (desc->sptes[PTE_LIST_EXT-1] && desc->more)``, adds a
  descriptor after the last one when that is full, and stores in the first NULL slot: a list
  of n costs O(n) per add, O(n^2) to build. Its count is what the kernel computes
  (``PTE_LIST_EXT`` per descriptor passed, plus the slots before the one used);
* ``pte_list_remove()`` searches from the first descriptor; ``pte_list_desc_remove_entry()``
  refills the hole from the last used slot of the *same* descriptor (scanning down from
  slot ``PTE_LIST_EXT-1``) and frees that descriptor when it empties, unlinking it from the
  previous one or the head. A descriptor before the tail can so keep free slots, which the
  next add fills;
* ``one_by_one`` is v3.8's ``kvm_unmap_rmapp()``: ``while ((sptep =
  rmap_get_first(*rmapp, &iter))) drop_spte(kvm, sptep);``; ``batch`` is seed 004's
  ``for_each_spte_in_rmap()`` clearing each spte, then ``pte_list_destroy()`` (a second walk
  freeing the chain).

Under these rules ``touches`` counts every load of rmap metadata the C code makes (the head
word, each ``desc->sptes[i]``, each ``desc->more``; a value reused with no store in between is
one load, as compiled code keeps it in a register), checked against a line-by-line
transcription in ``tests/test_rmap_v38.py``. ``dcount`` is kept as bookkeeping only (not a
kernel field, never counted). Both loops are linear; the quadratic costs are building a list
and removing it newest first (README, "Seed 004").
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit

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

# the list rules (meta[M_RULES])
RULES_V69 = 0  # today's (v6.9): new sptes go into the head descriptor, counts kept
RULES_V38 = 1  # Linux 3.8 (2013, seed 004's tree): appended at the tail, no counts
RULES = {"v6.9": RULES_V69, "v3.8": RULES_V38}

# meta
M_FREE_TOP = 0  # free descriptors: free_stack[0 .. top-1], the next one allocated on top
M_RULES = 1  # RULES_*
META_SIZE = 2

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


# ---- Linux 3.8 (arch/x86/kvm/mmu.c of v3.8, and seed 004's patch on it) --------------------


@jit
def _add_v38(head, dsptes, dcount, dmore, free_stack, meta, frame, spte, out):
    """v3.8 pte_list_add(): walk to the first descriptor whose last slot is NULL (or the last
    one), add a descriptor after it if full, store in its first NULL slot. Returns the count
    as the kernel computes it (EXT per descriptor passed, plus the slots before the one
    used: it undercounts when a descriptor before the tail has a hole refilled)."""
    ext = dsptes.shape[1]
    out[CTR_TOUCHES] += 1  # *pte_list
    hv = head[frame]
    if hv == 0:
        head[frame] = spte << 1
        return 0
    if hv & 1 == 0:
        d = _alloc_desc(dsptes, free_stack, meta, out)
        if d < 0:
            return ERR_NO_DESC
        dsptes[d, 0] = hv >> 1
        dsptes[d, 1] = spte
        dcount[d] = 2
        dmore[d] = -1
        head[frame] = (d << 1) | 1
        return 1
    count = 0
    d = hv >> 1
    while True:  # while (desc->sptes[PTE_LIST_EXT-1] && desc->more)
        out[CTR_TOUCHES] += 1  # desc->sptes[PTE_LIST_EXT-1]
        if dsptes[d, ext - 1] == 0:
            break
        out[CTR_TOUCHES] += 1  # desc->more
        if dmore[d] < 0:
            break
        d = dmore[d]
        count += ext
    if dsptes[d, ext - 1] != 0:  # the value just loaded
        n = _alloc_desc(dsptes, free_stack, meta, out)
        if n < 0:
            return ERR_NO_DESC
        dmore[n] = -1
        dcount[n] = 0
        dmore[d] = n
        d = n
    i = 0
    while True:  # for (i = 0; desc->sptes[i]; ++i) ++count;
        out[CTR_TOUCHES] += 1  # desc->sptes[i]
        if dsptes[d, i] == 0:
            break
        i += 1
        count += 1
    dsptes[d, i] = spte
    dcount[d] += 1
    return count


@jit
def _remove_entry_v38(head, dsptes, dcount, dmore, free_stack, meta, frame, d, i, prev, out):
    """v3.8 pte_list_desc_remove_entry(): fill the hole from the last used slot of the *same*
    descriptor; free the descriptor when that empties it, unlinking it from ``prev`` (-1:
    the rmap head)."""
    j = dsptes.shape[1] - 1
    while True:  # for (j = PTE_LIST_EXT - 1; !desc->sptes[j] && j > i; --j)
        out[CTR_TOUCHES] += 1  # desc->sptes[j]
        if dsptes[d, j] != 0 or j <= i:
            break
        j -= 1
    if j != i:
        out[CTR_ENTRY_MOVES] += 1
    dsptes[d, i] = dsptes[d, j]
    dsptes[d, j] = 0
    dcount[d] -= 1
    if j != 0:
        return
    out[CTR_TOUCHES] += 1  # desc->more
    nxt = dmore[d]
    if prev < 0 and nxt < 0:
        head[frame] = 0  # desc->sptes[0], NULL now
    elif prev >= 0:
        dmore[prev] = nxt
    else:
        head[frame] = (nxt << 1) | 1
    free_stack[meta[M_FREE_TOP]] = d  # mmu_free_pte_list_desc()
    meta[M_FREE_TOP] += 1
    out[CTR_DESC_FREED] += 1


@jit
def _remove_v38(head, dsptes, dcount, dmore, free_stack, meta, frame, spte, out):
    """v3.8 pte_list_remove(): search from the first descriptor, slot by slot."""
    ext = dsptes.shape[1]
    out[CTR_TOUCHES] += 1  # *pte_list
    hv = head[frame]
    if hv == 0:
        return ERR_NOT_FOUND
    if hv & 1 == 0:
        if hv >> 1 != spte:
            return ERR_NOT_FOUND
        head[frame] = 0
        return 0
    prev = -1
    d = hv >> 1
    while d >= 0:
        for i in range(ext):  # for (i = 0; i < PTE_LIST_EXT && desc->sptes[i]; ++i)
            out[CTR_TOUCHES] += 1  # desc->sptes[i]
            s = dsptes[d, i]
            if s == 0:
                break
            if s == spte:
                _remove_entry_v38(head, dsptes, dcount, dmore, free_stack, meta, frame, d, i,
                                  prev, out)
                return 0
        out[CTR_TOUCHES] += 1  # desc->more
        prev = d
        d = dmore[d]
    return ERR_NOT_FOUND


@jit
def _op_v38(head, dsptes, dcount, dmore, free_stack, meta, leaf, op, frame, spte, strategy,
            out):
    """rmap_op() under the v3.8 rules (its counters as documented there)."""
    ext = dsptes.shape[1]
    if op == OP_ADD:
        return _add_v38(head, dsptes, dcount, dmore, free_stack, meta, frame, spte, out)
    if op == OP_REMOVE:
        if leaf[spte] == 0:
            return ERR_NOT_FOUND
        r = _remove_v38(head, dsptes, dcount, dmore, free_stack, meta, frame, spte, out)
        if r < 0:
            return r
        leaf[spte] = 0
        out[CTR_ENTRIES_DROPPED] += 1
        return 0
    ret = 0
    if strategy == DROP_ONE_BY_ONE:
        # v3.8 kvm_unmap_rmapp(): while ((sptep = rmap_get_first(*rmapp, &iter)))
        # drop_spte(kvm, sptep);
        while True:
            out[CTR_TOUCHES] += 1  # *rmapp
            hv = head[frame]
            if hv == 0:
                break
            if hv & 1 == 0:
                s = hv >> 1
            else:
                out[CTR_TOUCHES] += 1  # desc->sptes[0]
                s = dsptes[hv >> 1, 0]
            leaf[s] = 0  # mmu_spte_clear_track_bits(), then rmap_remove()
            out[CTR_ENTRIES_DROPPED] += 1
            _remove_v38(head, dsptes, dcount, dmore, free_stack, meta, frame, s, out)
            ret += 1
            out[CTR_RESTARTS] += 1
        return ret
    # seed 004: for_each_spte_in_rmap() clearing each spte, then pte_list_destroy()
    out[CTR_TOUCHES] += 1  # *rmapp
    hv = head[frame]
    if hv == 0:
        out[CTR_TOUCHES] += 1  # pte_list_destroy(): *pte_list
        return 0
    if hv & 1 == 0:
        leaf[hv >> 1] = 0
        out[CTR_ENTRIES_DROPPED] += 1
        out[CTR_TOUCHES] += 1  # pte_list_destroy(): *pte_list
        head[frame] = 0
        return 1
    d = hv >> 1
    while d >= 0:  # the iteration
        for i in range(ext):
            out[CTR_TOUCHES] += 1  # desc->sptes[i]
            s = dsptes[d, i]
            if s == 0:
                break
            leaf[s] = 0
            out[CTR_ENTRIES_DROPPED] += 1
            ret += 1
        out[CTR_TOUCHES] += 1  # desc->more
        d = dmore[d]
    out[CTR_TOUCHES] += 1  # pte_list_destroy(): *pte_list
    head[frame] = 0
    d = hv >> 1
    while d >= 0:
        out[CTR_TOUCHES] += 1  # desc->more (next_desc)
        nxt = dmore[d]
        free_stack[meta[M_FREE_TOP]] = d  # mmu_free_pte_list_desc()
        meta[M_FREE_TOP] += 1
        out[CTR_DESC_FREED] += 1
        d = nxt
    return ret


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

    if meta[M_RULES] == RULES_V38:
        if op == OP_ADD and leaf[spte] != 0:
            return ERR_PRESENT
        if op != OP_ADD and op != OP_REMOVE and op != OP_DROP_ALL:
            return ERR_BAD_OP
        ret = _op_v38(head, dsptes, dcount, dmore, free_stack, meta, leaf, op, frame, spte,
                      strategy, out)
        if ret < 0:
            return ret
        if op == OP_ADD:
            leaf[spte] = (np.int64(frame) << LEAF_FRAME_SHIFT) | LEAF_VALID
    elif op == OP_ADD:
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
