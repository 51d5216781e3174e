"""KVM's reverse map (simulator.hyp.rmap) against a pure-Python reference, hand-computed counts
of both drop strategies, and how their costs grow with the list length."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.hyp.rmap import (
    COST_CLEAR,
    COST_FREE,
    COST_TOUCH,
    COUNTER_NAMES,
    LEAF_FRAME_SHIFT,
    LEAF_VALID,
    PTE_LIST_EXT,
    PTE_LIST_EXT_2013,
    Rmap,
)

FUZZ = settings(
    deadline=None,
    max_examples=120,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EXTS = [PTE_LIST_EXT_2013, PTE_LIST_EXT]  # 3 (2013), 14 (today)


# ------------------------------------------------------------------------------------------
# The reference: the same rules, written with Python lists


class RefRmap:
    """The kernel's rmap with Python lists: a frame's rmap is None (empty), an int (the inline
    spte) or a list of descriptors, head first, each the list of its sptes (spte_count is its
    length, tail_count the lengths of the ones after it). Counts touches by the rules of the
    module docstring: one per read of the rmap head word in each C function, per descriptor
    header visited by a function, per ``sptes[i]`` slot read."""

    def __init__(self, frames: int, ext: int, costs=(COST_TOUCH, COST_FREE, COST_CLEAR)):
        self.ext = ext
        self.heads: list[None | int | list[list[int]]] = [None] * frames
        self.present: dict[int, int] = {}  # spte -> frame
        self.costs = costs
        self.totals = dict.fromkeys(COUNTER_NAMES, 0)
        self.last = dict.fromkeys(COUNTER_NAMES, 0)
        self.descs = 0  # in use

    def _finish(self, c: dict[str, int]) -> dict[str, int]:
        t, f, k = self.costs
        c["cycles"] = c["touches"] * t + c["desc_freed"] * f + c["entries_dropped"] * k
        for name in COUNTER_NAMES:
            self.totals[name] += c[name]
        self.last = c
        return c

    def _clear(self, spte: int, c) -> None:
        del self.present[spte]
        c["entries_dropped"] += 1

    def add(self, frame: int, spte: int) -> int:
        assert spte not in self.present
        c = dict.fromkeys(COUNTER_NAMES, 0)
        c["touches"] += 1  # rmap_head->val
        rm = self.heads[frame]
        if rm is None:
            self.heads[frame] = spte
            count = 0
        elif isinstance(rm, int):
            self.heads[frame] = [[rm, spte]]
            c["desc_allocated"] += 1
            self.descs += 1
            count = 1
        else:
            c["touches"] += 1  # head descriptor header
            count = sum(len(d) for d in rm)
            if len(rm[0]) == self.ext:
                rm.insert(0, [])
                c["desc_allocated"] += 1
                self.descs += 1
            rm[0].append(spte)
        self.present[spte] = frame
        self._finish(c)
        return count

    def _pte_list_remove(self, frame: int, spte: int, c) -> None:
        c["touches"] += 1  # rmap_head->val
        rm = self.heads[frame]
        if isinstance(rm, int):
            assert rm == spte
            self.heads[frame] = None
            return
        for desc in rm:
            c["touches"] += 1  # header
            found = None
            for i, s in enumerate(desc):
                c["touches"] += 1  # slot
                if s == spte:
                    found = i
                    break
            if found is not None:
                break
        else:
            raise AssertionError(f"spte {spte} not on frame {frame}")
        # pte_list_desc_remove_entry(): rmap_head->val, head header, head's last slot
        c["touches"] += 3
        head = rm[0]
        last = head.pop()
        if not (desc is head and found == len(head)):
            desc[found] = last
            c["entry_moves"] += 1
        if not head:
            rm.pop(0)
            c["desc_freed"] += 1
            self.descs -= 1
            if not rm:
                self.heads[frame] = None

    def remove(self, frame: int, spte: int) -> dict[str, int]:
        assert self.present.get(spte) == frame
        c = dict.fromkeys(COUNTER_NAMES, 0)
        self._clear(spte, c)
        self._pte_list_remove(frame, spte, c)
        return self._finish(c)

    def drop_all(self, frame: int, strategy: str) -> dict[str, int]:
        c = dict.fromkeys(COUNTER_NAMES, 0)
        if strategy == "one_by_one":
            while True:
                c["touches"] += 1  # rmap_get_first(): rmap_head->val
                rm = self.heads[frame]
                if rm is None:
                    break
                if isinstance(rm, int):
                    spte = rm
                else:
                    c["touches"] += 1  # head_desc->sptes[0]
                    spte = rm[0][0]
                self._clear(spte, c)
                self._pte_list_remove(frame, spte, c)
                c["restarts"] += 1
        else:
            c["touches"] += 1  # rmap_head->val
            rm = self.heads[frame]
            if isinstance(rm, int):
                self._clear(rm, c)
            elif rm is not None:
                for desc in rm:
                    c["touches"] += 1 + len(desc)  # header, every slot
                    for s in desc:
                        self._clear(s, c)
                    c["desc_freed"] += 1
                    self.descs -= 1
            self.heads[frame] = None
        return self._finish(c)

    def entries(self, frame: int) -> list[int]:
        rm = self.heads[frame]
        if rm is None:
            return []
        if isinstance(rm, int):
            return [rm]
        return [s for d in rm for s in d]

    def layout(self, frame: int) -> tuple[str, list[list[int]]]:
        rm = self.heads[frame]
        if rm is None:
            return "empty", []
        if isinstance(rm, int):
            return "inline", [[rm]]
        return "chain", [list(d) for d in rm]


def assert_same(rm: Rmap, ref: RefRmap) -> None:
    assert rm.last == ref.last
    assert rm.counters() == ref.totals
    for f in range(rm.frames):
        assert rm.entries(f) == ref.entries(f), f"frame {f}"
        assert rm.layout(f) == ref.layout(f), f"frame {f}"
        assert rm.count(f) == len(ref.entries(f))
        kind, descs = rm.layout(f)
        if kind == "chain":  # tail_count of each descriptor along the chain
            hv = int(rm.head[f])
            d, k = hv >> 1, 0
            while d >= 0:
                assert int(rm.dtail[d]) == sum(len(x) for x in descs[k + 1:])
                d, k = int(rm.dmore[d]), k + 1
    assert {s: rm.frame_of(s) for s in ref.present} == ref.present
    assert sum(1 for v in rm.leaf if v) == len(ref.present)
    assert rm.descs_in_use == ref.descs
    assert rm.check_invariants() == []


# ------------------------------------------------------------------------------------------
# Property tests

FRAMES = 3
SPTE_IDS = 400
OPS = ["add", "add", "add", "burst", "remove", "remove", "drop"]
op_lists = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, FRAMES - 1), st.integers(0, 1 << 16)),
    min_size=1, max_size=80,
)


def free_spte(present, x: int) -> int | None:
    """The first id at or after x % SPTE_IDS + 1 (wrapping) that is not present."""
    for k in range(SPTE_IDS):
        s = (x + k) % SPTE_IDS + 1
        if s not in present:
            return s
    return None


def step(rm: Rmap, ref: RefRmap, op: str, f: int, x: int) -> None:
    if op in ("add", "burst"):
        for k in range(1 + (x % 40 if op == "burst" else 0)):
            s = free_spte(ref.present, x + 7 * k)
            if s is None:
                return
            assert rm.add(f, s) == ref.add(f, s)
            assert_same(rm, ref)
    elif op == "remove":
        es = ref.entries(f)
        if es:
            s = es[x % len(es)]
            assert rm.remove(f, s) == ref.remove(f, s)
            assert_same(rm, ref)
    else:
        strategy = ("one_by_one", "batch")[x & 1]
        assert rm.drop_all(f, strategy) == ref.drop_all(f, strategy)
        assert_same(rm, ref)


@FUZZ
@given(ext=st.sampled_from(EXTS), ops=op_lists)
def test_matches_reference(ext, ops):
    rm = Rmap(FRAMES, ext, sptes=8, descs=1)  # small: the pools grow along the way
    ref = RefRmap(FRAMES, ext)
    for op, f, x in ops:
        step(rm, ref, op, f, x)
    for f in range(FRAMES):
        rm.drop_all(f, "batch")
        ref.drop_all(f, "batch")
        assert_same(rm, ref)
    assert rm.descs_in_use == 0 and not rm.leaf.any()
    c = rm.counters()
    assert c["desc_allocated"] == c["desc_freed"]


@FUZZ
@given(ext=st.sampled_from(EXTS), ops=op_lists.filter(lambda o: any(p != "drop" for p, _, _ in o)))
def test_both_strategies_leave_identical_state(ext, ops):
    pair = []
    for _ in range(2):
        rm, ref = Rmap(FRAMES, ext), RefRmap(FRAMES, ext)
        for op, f, x in ops:
            if op != "drop":
                step(rm, ref, op, f, x)
        pair.append(rm)
    one, batch = pair
    before = [one.entries(f) for f in range(FRAMES)]
    assert before == [batch.entries(f) for f in range(FRAMES)]
    for f in range(FRAMES):
        a, b = one.drop_all(f, "one_by_one"), batch.drop_all(f, "batch")
        assert a["entries_dropped"] == b["entries_dropped"] == len(before[f])
        assert a["desc_freed"] == b["desc_freed"]
        assert b["restarts"] == b["entry_moves"] == 0
        assert a["restarts"] == len(before[f])
        assert a["touches"] >= b["touches"]
        assert one.entries(f) == batch.entries(f) == []
        assert one.head.tolist() == batch.head.tolist()
        assert one.leaf.tolist() == batch.leaf.tolist()
        # both free the chain's descriptors in chain order: the same free stack
        assert one.free_list() == batch.free_list()
        assert one.check_invariants() == batch.check_invariants() == []
    assert one.descs_in_use == batch.descs_in_use == 0
    assert not one.leaf.any()


# ------------------------------------------------------------------------------------------
# Hand-computed cases, ext = 3
#
# Adding sptes 1..n to an empty frame (pte_list_add): 1 goes inline; 2 makes descriptor A =
# [1, 2]; 3 fills A; 4 finds A full and allocates a new head B = [4] (more = A, tail_count 3);
# 5, 6 fill B; 7 makes C = [7]. Iteration order is head first: n = 7 -> [7, 4, 5, 6, 1, 2, 3].
#
# one_by_one (restart loop), per spte of a chain:
#   rmap_get_first: head word + head_desc->sptes[0]             2 touches
#   pte_list_remove: head word + head header + sptes[0] (found)  3
#   pte_list_desc_remove_entry: head word + header + sptes[j]    3
#   = 8 touches; the head's last entry moves into slot 0 unless it is slot 0 (the head holds
#   one spte), in which case the head is freed instead. The final rmap_get_first reads the
#   empty head: +1. Inline (n = 1): rmap_get_first 1 + pte_list_remove 1 + final 1 = 3.
#   A descriptor of c sptes costs c - 1 moves and 1 free: moves = n - descriptors.
#   n=1: inline                restarts 1, moves 0,         freed 0, touches 3
#   n=2: A[1,2]                restarts 2, moves 1,         freed 1, touches 8*2+1 = 17
#   n=3: A[1,2,3]              restarts 3, moves 2,         freed 1, touches 25
#   n=4: B[4] A[1,2,3]         restarts 4, moves 0+2,       freed 2, touches 33
#   n=7: C[7] B[4,5,6] A[..]   restarts 7, moves 0+2+2 = 4, freed 3, touches 57
#
# batch (kvm_zap_all_rmap_sptes): head word 1, then per descriptor its header and its slots:
#   n=1: 1; n=2: 1+1+2 = 4; n=3: 1+1+3 = 5; n=4: 1+2+4 = 7; n=7: 1+3+7 = 11. No restarts, no
#   moves; the same descriptors freed.
#
# cycles = 4 * touches + 60 * freed + 20 * dropped (the default costs).

LAYOUTS = {
    1: ("inline", [[1]]),
    2: ("chain", [[1, 2]]),
    3: ("chain", [[1, 2, 3]]),
    4: ("chain", [[4], [1, 2, 3]]),
    7: ("chain", [[7], [4, 5, 6], [1, 2, 3]]),
}
#                 restarts, moves, freed, touches
ONE_BY_ONE = {1: (1, 0, 0, 3), 2: (2, 1, 1, 17), 3: (3, 2, 1, 25), 4: (4, 2, 2, 33),
              7: (7, 4, 3, 57)}
BATCH = {1: (0, 0, 0, 1), 2: (0, 0, 1, 4), 3: (0, 0, 1, 5), 4: (0, 0, 2, 7), 7: (0, 0, 3, 11)}


def filled(n: int, ext: int = 3) -> Rmap:
    rm = Rmap(2, ext)
    for s in range(1, n + 1):
        assert rm.add(0, s) == s - 1  # pte_list_add() returns the sptes already there
    return rm


@pytest.mark.nojit
@pytest.mark.parametrize("n", sorted(LAYOUTS))
@pytest.mark.parametrize("strategy", ["one_by_one", "batch"])
def test_hand_counts_ext3(n, strategy):
    rm = filled(n)
    assert rm.layout(0) == LAYOUTS[n]
    assert rm.entries(0) == [s for d in LAYOUTS[n][1] for s in d]
    assert rm.count(0) == n
    restarts, moves, freed, touches = (ONE_BY_ONE if strategy == "one_by_one" else BATCH)[n]
    got = rm.drop_all(0, strategy)
    assert got == {
        "entries_dropped": n, "desc_freed": freed, "entry_moves": moves, "restarts": restarts,
        "touches": touches, "cycles": 4 * touches + 60 * freed + 20 * n, "desc_allocated": 0,
    }
    assert rm.layout(0) == ("empty", []) and rm.descs_in_use == 0 and not rm.leaf.any()
    assert rm.check_invariants() == []


@pytest.mark.nojit
def test_cycles_n7_both_strategies():
    # 57 * 4 + 3 * 60 + 7 * 20 = 228 + 180 + 140; 11 * 4 + 180 + 140
    assert filled(7).drop_all(0, "one_by_one")["cycles"] == 548
    assert filled(7).drop_all(0, "batch")["cycles"] == 364


@pytest.mark.nojit
def test_add_counts_and_tail_count_ext3():
    rm = filled(7)
    c = rm.counters()
    # 1: head word only; 2: head word (inline -> A); 3..7: head word + head header
    assert c["touches"] == 1 + 1 + 5 * 2
    assert c["desc_allocated"] == 3 and c["entries_dropped"] == 0
    hv = int(rm.head[0])
    head = hv >> 1
    assert hv & 1 and int(rm.dcount[head]) == 1 and int(rm.dtail[head]) == 6
    b = int(rm.dmore[head])
    assert int(rm.dcount[b]) == 3 and int(rm.dtail[b]) == 3
    assert int(rm.dtail[int(rm.dmore[b])]) == 0
    assert rm.leaf[5] == (0 << LEAF_FRAME_SHIFT) | LEAF_VALID
    rm.add(1, 9)
    assert rm.frame_of(9) == 1 and rm.layout(1) == ("inline", [[9]])


@pytest.mark.nojit
def test_remove_from_a_tail_ext3():
    rm = filled(7)  # C[7] B[4,5,6] A[1,2,3]
    got = rm.remove(0, 2)
    # head word 1; C: header + slot (7) = 2; B: header + 3 slots = 4; A: header + 1, 2 = 3;
    # remove_entry 3 -> 13. C's only spte, 7, moves into A[1]; C is freed, B is the head.
    assert got == {"entries_dropped": 1, "desc_freed": 1, "entry_moves": 1, "restarts": 0,
                   "touches": 13, "cycles": 13 * 4 + 60 + 20, "desc_allocated": 0}
    assert rm.layout(0) == ("chain", [[4, 5, 6], [1, 7, 3]])
    assert not rm.present(2) and rm.count(0) == 6
    # removing the head's last entry moves nothing
    got = rm.remove(0, 6)
    assert got["entry_moves"] == 0 and got["touches"] == 1 + 1 + 3 + 3
    assert rm.layout(0) == ("chain", [[4, 5], [1, 7, 3]])
    assert rm.check_invariants() == []


@pytest.mark.nojit
def test_one_spte_left_stays_in_its_descriptor():
    """pte_list_desc_remove_entry() never collapses a chain back to an inline spte."""
    rm = filled(2)
    rm.remove(0, 1)  # 2 moves into slot 0
    assert rm.layout(0) == ("chain", [[2]]) and rm.descs_in_use == 1
    got = rm.remove(0, 2)
    assert got["desc_freed"] == 1 and rm.layout(0) == ("empty", [])
    rm.add(0, 3)
    assert rm.layout(0) == ("inline", [[3]])
    assert rm.remove(0, 3)["touches"] == 1  # inline: the head word only
    assert rm.head.tolist() == [0, 0]


@pytest.mark.nojit
def test_empty_frame_and_errors():
    rm = filled(3)
    assert rm.drop_all(1, "one_by_one")["touches"] == 1
    assert rm.drop_all(1, "batch") == dict.fromkeys(COUNTER_NAMES, 0) | {"touches": 1,
                                                                         "cycles": 4}
    before = (rm.head.tolist(), rm.layout(0), rm.counters())
    with pytest.raises(ValueError, match="already present"):
        rm.add(1, 2)
    with pytest.raises(ValueError, match="not on frame 1's rmap"):
        rm.remove(1, 2)
    with pytest.raises(ValueError, match="not on frame 0's rmap"):
        rm.remove(0, 1000)
    with pytest.raises(ValueError, match="spte ids start at 1"):
        rm.add(0, 0)
    with pytest.raises(ValueError, match="outside"):
        rm.add(2, 5)
    with pytest.raises(ValueError, match="strategy"):
        rm.drop_all(0, "fast")
    with pytest.raises(ValueError, match="ext must be >= 2"):
        Rmap(1, 1)
    assert (rm.head.tolist(), rm.layout(0), rm.counters()) == before
    assert rm.check_invariants() == []


@pytest.mark.nojit
def test_check_invariants_catches_corruption():
    def broken(mutate) -> list[str]:
        rm = filled(7)  # C[7] B[4,5,6] A[1,2,3]
        assert rm.check_invariants() == []
        head = int(rm.head[0]) >> 1
        mutate(rm, head, int(rm.dmore[head]))
        return rm.check_invariants()

    def tail_not_full(rm, c, b):
        rm.dsptes[b, 2] = 0
        rm.dcount[b] = 2

    def shared(rm, c, b):
        rm.head[1] = (b << 1) | 1

    assert any("tail_count" in p for p in broken(lambda rm, c, b: rm.dtail.__setitem__(b, 2)))
    assert any("tail descriptor" in p for p in broken(tail_not_full))
    assert any("reachable twice" in p for p in broken(shared))
    assert any("both free and in use" in p
               for p in broken(lambda rm, c, b: rm.free_stack.__setitem__(0, c)))
    assert any("not on an rmap" in p for p in broken(lambda rm, c, b: rm.leaf.__setitem__(9, 1)))
    assert any("slots" in p for p in broken(lambda rm, c, b: rm.dsptes.__setitem__((c, 2), 9)))


@pytest.mark.nojit
def test_custom_costs():
    rm = Rmap(1, 3, cost_touch=1, cost_free=0, cost_clear=0)
    for s in range(1, 8):
        rm.add(0, s)
    assert rm.drop_all(0, "one_by_one")["cycles"] == 57  # cycles = touches


def test_pools_grow():
    rm = Rmap(4, 3, sptes=2, descs=1)
    ref = RefRmap(4, 3)
    for s in range(1, 301):
        assert rm.add(s % 4, s) == ref.add(s % 4, s)
    assert_same(rm, ref)
    assert rm.pool_size >= rm.descs_in_use == 4 * math.ceil(75 / 3)
    assert len(rm.leaf) > 300


# ------------------------------------------------------------------------------------------
# How the costs grow with the list length (ext = 14)
#
# Both drops are linear. one_by_one's first spte is always slot 0 of the head descriptor,
# found at once by pte_list_remove(), and the hole is refilled from the head: 8 touches per
# spte (see above), 8n + 1 in all. batch: 1 + descriptors + n. So touches(1000)/touches(100)
# is ~10 for both (8001/801 and 1073/109) and one_by_one does ~8 ext/(ext+1) = 7.5 times the
# touches of batch. The quadratic term in this model is the search: removing, one at a time,
# the spte the iterator reaches last makes pte_list_remove() read every header and every slot:
# sum over r = n .. 1 of (1 + ceil(r/ext) + r + 3) touches, ~n^2/2: the ratio is ~92.


def touches_drop(n: int, strategy: str, ext: int = PTE_LIST_EXT) -> int:
    rm = filled(n, ext)
    return rm.drop_all(0, strategy)["touches"]


def touches_remove_last_first(n: int, ext: int = PTE_LIST_EXT) -> int:
    rm = filled(n, ext)
    rm.reset_counters()
    for _ in range(n):
        rm.remove(0, rm.entries(0)[-1])
    assert rm.layout(0) == ("empty", [])
    return rm.counters()["touches"]


def test_drop_costs_grow_linearly():
    ext = PTE_LIST_EXT
    got = {(n, s): touches_drop(n, s) for n in (100, 1000) for s in ("one_by_one", "batch")}
    for n in (100, 1000):
        assert got[n, "one_by_one"] == 8 * n + 1
        assert got[n, "batch"] == 1 + math.ceil(n / ext) + n
    for s in ("one_by_one", "batch"):
        assert 9 < got[1000, s] / got[100, s] < 11, s
    assert 7 < got[1000, "one_by_one"] / got[1000, "batch"] < 8


def test_search_cost_grows_quadratically():
    ext = PTE_LIST_EXT
    want = {n: sum(4 + r + math.ceil(r / ext) for r in range(1, n + 1)) for n in (100, 1000)}
    assert want == {100: 5858, 1000: 540716}
    got = {n: touches_remove_last_first(n) for n in (100, 1000)}
    assert got == want
    assert got[1000] / got[100] > 50
