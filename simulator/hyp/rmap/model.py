"""The reverse map as a Python object (:class:`Rmap`): validation, growth, one kernel call of
:mod:`simulator.hyp.rmap.kernel` per operation, inspection and invariants."""

from __future__ import annotations

import operator

import numpy as np

from simulator.hyp.rmap.kernel import (
    COST_CLEAR,
    COST_FREE,
    COST_TOUCH,
    COUNTER_NAMES,
    ERR_NOT_FOUND,
    LEAF_FRAME_SHIFT,
    LEAF_VALID,
    M_FREE_TOP,
    M_RULES,
    META_SIZE,
    N_COUNTERS,
    OP_ADD,
    OP_DROP_ALL,
    OP_REMOVE,
    PTE_LIST_EXT,
    RULES,
    STRATEGIES,
    rmap_op,
)


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
    rules: the kernel's list rules, "v6.9" (today's) or "v3.8" (2013: tail insertion, the
    hole refilled in its own descriptor; kernel.py's docstring).
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
        rules: str = "v6.9",
    ):
        frames = _int(frames, "frames")
        if rules not in RULES:
            raise ValueError(f"rules must be one of {', '.join(RULES)}, not {rules!r}")
        self.rules = rules
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
        self.meta[M_RULES] = RULES[rules]
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
        """pte_list_count(): the head descriptor's tail_count + spte_count (v3.8 keeps no
        counts: the sptes of the chain)."""
        hv = int(self.head[self._frame(frame)])
        if hv == 0:
            return 0
        if hv & 1 == 0:
            return 1
        if self.rules == "v3.8":
            return len(self.entries(frame))
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
        descriptor non-empty (v3.8: every descriptor non-empty; any can have free slots),
        NULL slots exactly past spte_count, tail_count consistent (today's rules), no
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
            v38 = self.rules == "v3.8"
            for k, d in enumerate(chain):
                n = int(self.dcount[d])
                if (k == 0 or v38) and not 1 <= n <= ext:
                    problems.append(f"frame {frame}: descriptor {d} holds {n} sptes")
                if k > 0 and not v38 and n != ext:
                    problems.append(f"frame {frame}: tail descriptor {d} holds {n} != {ext}")
                row = [int(s) for s in self.dsptes[d]]
                if any(s == 0 for s in row[:n]) or any(s != 0 for s in row[n:]):
                    problems.append(f"frame {frame}: descriptor {d} slots {row} with count {n}")
                tail = 0 if v38 else sum(int(self.dcount[t]) for t in chain[k + 1:])
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
        return (f"Rmap({self.frames} frames, ext {self.ext}, rules {self.rules}, "
                f"{self.descs_in_use}/"
                f"{self.pool_size} descriptors in use)")
