"""The reverse map under Linux 3.8's rules (``Rmap(rules="v3.8")``, seed 004's tree) against a
line-by-line transcription of v3.8 ``arch/x86/kvm/mmu.c``: ``pte_list_add()``,
``pte_list_desc_remove_entry()``, ``pte_list_remove()``, ``kvm_unmap_rmapp()`` (the
``rmap_get_first()`` loop) and seed 004's ``for_each_spte_in_rmap()`` + ``pte_list_destroy()``.

The transcription counts every load of rmap metadata the C source makes: ``*pte_list``,
``desc->sptes[i]``, ``desc->more``. A value the C code reads again with no store in between
(``desc->sptes[PTE_LIST_EXT-1]`` after pte_list_add()'s loop, ``desc->sptes[j]`` moved by
pte_list_desc_remove_entry(), ``desc->more`` after the test that loaded it) is one load, as
the compiled code keeps it in a register; the transcription keeps it in a local variable at
exactly those places.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.hyp.rmap import PTE_LIST_EXT_2013, Rmap

EXT = PTE_LIST_EXT_2013  # 3


class Desc:
    """struct pte_list_desc { u64 *sptes[PTE_LIST_EXT]; struct pte_list_desc *more; }"""

    def __init__(self, ext: int):
        self.sptes: list[int | None] = [None] * ext
        self.more: Desc | None = None


class V38:
    """v3.8's pte_list code. ``rmap[frame]``: None (0), an int (bit 0 clear: the spte) or a
    Desc (bit 0 set)."""

    def __init__(self, frames: int, ext: int = EXT):
        self.ext = ext
        self.rmap: list[None | int | Desc] = [None] * frames
        self.loads = 0
        self.moves = 0
        self.frees = 0
        self.allocs = 0
        self.cleared = 0
        self.restarts = 0

    # loads
    def head(self, frame):
        self.loads += 1
        return self.rmap[frame]

    def slot(self, desc, i):
        self.loads += 1
        return desc.sptes[i]

    def more(self, desc):
        self.loads += 1
        return desc.more

    def alloc(self):  # mmu_alloc_pte_list_desc(): zeroed
        self.allocs += 1
        return Desc(self.ext)

    def free(self, desc):  # mmu_free_pte_list_desc()
        self.frees += 1

    # static int pte_list_add(struct kvm_vcpu *vcpu, u64 *spte, unsigned long *pte_list)
    def pte_list_add(self, spte, frame):
        count = 0
        val = self.head(frame)
        if not val:
            self.rmap[frame] = spte
        elif isinstance(val, int):
            desc = self.alloc()
            desc.sptes[0] = val
            desc.sptes[1] = spte
            self.rmap[frame] = desc
            count += 1
        else:
            desc = val
            while True:  # while (desc->sptes[PTE_LIST_EXT-1] && desc->more)
                last = self.slot(desc, self.ext - 1)
                nxt = self.more(desc) if last else None
                if not (last and nxt):
                    break
                desc = nxt
                count += self.ext
            if last:  # if (desc->sptes[PTE_LIST_EXT-1]): the value just loaded
                desc.more = self.alloc()
                desc = desc.more
            i = 0
            while self.slot(desc, i):  # for (i = 0; desc->sptes[i]; ++i)
                i += 1
                count += 1
            desc.sptes[i] = spte
        return count

    # static void pte_list_desc_remove_entry(unsigned long *pte_list,
    #                                        struct pte_list_desc *desc, int i,
    #                                        struct pte_list_desc *prev_desc)
    def pte_list_desc_remove_entry(self, frame, desc, i, prev_desc):
        j = self.ext - 1
        while True:  # for (j = PTE_LIST_EXT - 1; !desc->sptes[j] && j > i; --j)
            sj = self.slot(desc, j)
            if not (not sj and j > i):
                break
            j -= 1
        desc.sptes[i] = sj
        if i != j:
            self.moves += 1
        desc.sptes[j] = None
        if j != 0:
            return
        if prev_desc is None:
            nxt = self.more(desc)
            if not nxt:
                self.rmap[frame] = desc.sptes[0]  # NULL
            else:
                self.rmap[frame] = nxt
        else:
            prev_desc.more = self.more(desc)
        self.free(desc)

    # static void pte_list_remove(u64 *spte, unsigned long *pte_list)
    def pte_list_remove(self, spte, frame):
        val = self.head(frame)
        if not val:
            raise AssertionError("pte_list_remove: 0->BUG")
        if isinstance(val, int):
            if val != spte:
                raise AssertionError("pte_list_remove: 1->BUG")
            self.rmap[frame] = None
            return
        desc = val
        prev_desc = None
        while desc:
            i = 0
            while i < self.ext:  # for (i = 0; i < PTE_LIST_EXT && desc->sptes[i]; ++i)
                s = self.slot(desc, i)
                if not s:
                    break
                if s == spte:
                    self.pte_list_desc_remove_entry(frame, desc, i, prev_desc)
                    return
                i += 1
            prev_desc = desc
            desc = self.more(desc)
        raise AssertionError("pte_list_remove: many->many BUG")

    # drop_spte(): mmu_spte_clear_track_bits(), rmap_remove()
    def drop_spte(self, spte, frame):
        self.cleared += 1
        self.pte_list_remove(spte, frame)

    def rmap_get_first(self, frame):
        val = self.head(frame)
        if not val:
            return None, None, 0
        if isinstance(val, int):
            return val, None, 0
        return self.slot(val, 0), val, 0

    def rmap_get_next(self, desc, pos):
        if desc is not None:
            if pos < self.ext - 1:
                pos += 1
                s = self.slot(desc, pos)
                if s:
                    return s, desc, pos
            desc = self.more(desc)
            if desc is not None:
                return self.slot(desc, 0), desc, 0
        return None, None, 0

    # v3.8 kvm_unmap_rmapp(): while ((sptep = rmap_get_first(*rmapp, &iter))) drop_spte()
    def unmap_one_by_one(self, frame):
        n = 0
        while True:
            s, _, _ = self.rmap_get_first(frame)
            if not s:
                return n
            self.drop_spte(s, frame)
            self.restarts += 1
            n += 1

    # seed 004: for_each_spte_in_rmap() mmu_spte_clear_track_bits(); pte_list_destroy()
    def unmap_batch(self, frame):
        n = 0
        s, desc, pos = self.rmap_get_first(frame)
        while s:
            self.cleared += 1
            n += 1
            s, desc, pos = self.rmap_get_next(desc, pos)
        # static void pte_list_destroy(unsigned long *pte_list)
        list_value = self.head(frame)
        self.rmap[frame] = None
        if isinstance(list_value, Desc):
            desc = list_value
            while desc:
                next_desc = self.more(desc)
                self.free(desc)
                desc = next_desc
        return n

    def layout(self, frame):
        val = self.rmap[frame]
        if not val:
            return "empty", []
        if isinstance(val, int):
            return "inline", [[val]]
        out = []
        d = val
        while d:
            out.append([s for s in d.sptes if s])
            d = d.more
        return "chain", out

    def counts(self):
        return {"touches": self.loads, "entry_moves": self.moves, "desc_freed": self.frees,
                "desc_allocated": self.allocs, "entries_dropped": self.cleared,
                "restarts": self.restarts}


def _mine(rm: Rmap) -> dict[str, int]:
    c = rm.counters()
    return {k: c[k] for k in ("touches", "entry_moves", "desc_freed", "desc_allocated",
                              "entries_dropped", "restarts")}


def _build(n: int, frames: int = 1):
    rm = Rmap(frames, EXT, rules="v3.8", sptes=8, descs=1)
    ref = V38(frames)
    for s in range(1, n + 1):
        assert rm.add(0, s) == ref.pte_list_add(s, 0)
    return rm, ref


@pytest.mark.parametrize("n", [1, 10, 100, 1000])
@pytest.mark.parametrize("phase", ["build", "one_by_one", "batch", "insertion_order",
                                   "reverse_order"])
def test_v38_lists_match_the_transcription(n, phase):
    rm, ref = _build(n)
    if phase in ("one_by_one", "batch"):
        assert rm.drop_all(0, phase)["entries_dropped"] == n
        assert (ref.unmap_one_by_one(0) if phase == "one_by_one" else ref.unmap_batch(0)) == n
    elif phase != "build":
        order = range(1, n + 1) if phase == "insertion_order" else range(n, 0, -1)
        for s in order:
            rm.remove(0, s)
            ref.drop_spte(s, 0)
            assert rm.layout(0) == ref.layout(0)
    assert _mine(rm) == ref.counts()
    assert rm.layout(0) == ref.layout(0)
    assert rm.check_invariants() == []


def _add_loads(m: int) -> int:
    """v3.8 pte_list_add() on a list of m sptes appended in order (no holes): its loads."""
    if m < 2:
        return 1  # *pte_list: empty -> inline, inline -> a descriptor
    nd = -(-m // EXT)  # descriptors, all full but the last, which holds r
    r = m - EXT * (nd - 1)
    passed = 2 * (nd - 1)  # sptes[EXT-1] and more of each full descriptor before the last
    if r < EXT:
        return 1 + passed + 1 + (r + 1)  # the last's NULL last slot, its slots to the NULL
    return 1 + passed + 2 + 1  # full: more is NULL, a new descriptor, its slot 0


def test_v38_exact_counts():
    """Hand-derived figures for n = 1000 (333 full descriptors of 3 and one holding 1)."""
    rm, _ = _build(1000)
    c = rm.counters()
    assert c["desc_allocated"] == 334
    assert c["touches"] == sum(_add_loads(m) for m in range(1000)) == 335_995
    rm.reset_counters()
    rm.drop_all(0, "one_by_one")
    c = rm.counters()
    assert (c["entries_dropped"], c["desc_freed"], c["restarts"]) == (1000, 334, 1000)
    assert c["entry_moves"] == 1000 - 334
    # a full first descriptor's three sptes: rmap_get_first (head, slot 0) and
    # pte_list_remove (head, slot 0) each time, 2 + 2; remove_entry's scan from slot 2 finds
    # slot 2, then 1, then 0 (1, 2, 3 loads) and the emptied descriptor's more (1): 19; the
    # last descriptor alone 8; the final rmap_get_first 1
    assert c["touches"] == 333 * 19 + 8 + 1 == 6_336
    rm2, _ = _build(1000)
    rm2.reset_counters()
    rm2.drop_all(0, "batch")
    # one pass: head, 1000 slots, the last descriptor's NULL slot 1, 334 `more`s; then
    # pte_list_destroy(): head, 334 `more`s
    assert rm2.counters()["touches"] == 1 + 1000 + 1 + 334 + 1 + 334 == 1_671


def test_v38_quadratic_where_the_kernel_was():
    """Building a list (tail insertion) and removing newest first grow with n^2; dropping it
    either way, and removing oldest first, stay linear."""
    per = {}
    for n in (100, 1000):
        rm, _ = _build(n)
        build = rm.counters()["touches"]
        rm.reset_counters()
        for s in range(n, 0, -1):
            rm.remove(0, s)
        rev = rm.counters()["touches"]
        rm, _ = _build(n)
        rm.reset_counters()
        rm.drop_all(0, "one_by_one")
        per[n] = (build / n, rev / n, rm.counters()["touches"] / n)
    assert per[1000][0] > 9 * per[100][0]  # O(n) per add
    assert per[1000][1] > 9 * per[100][1]  # O(n) per removal
    assert per[1000][2] < 1.1 * per[100][2]  # O(1) per spte


FUZZ = settings(deadline=None, max_examples=80,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "one_by_one", "batch"]),
                          st.integers(0, 2), st.integers(0, 40)), max_size=120),
       st.sampled_from([2, 3, 5]))
def test_v38_random_sequences(ops, ext):
    frames = 3
    rm = Rmap(frames, ext, rules="v3.8", sptes=4, descs=1)
    ref = V38(frames, ext)
    on: dict[int, int] = {}  # spte -> frame
    nxt = 1
    for op, frame, k in ops:
        if op == "add":
            assert rm.add(frame, nxt) == ref.pte_list_add(nxt, frame)
            on[nxt] = frame
            nxt += 1
        elif op == "remove":
            mine = [s for s, f in on.items() if f == frame]
            if not mine:
                continue
            s = mine[k % len(mine)]
            rm.remove(frame, s)
            ref.drop_spte(s, frame)
            del on[s]
        else:
            rm.drop_all(frame, op)
            (ref.unmap_one_by_one if op == "one_by_one" else ref.unmap_batch)(frame)
            on = {s: f for s, f in on.items() if f != frame}
        assert rm.layout(frame) == ref.layout(frame)
        assert rm.check_invariants() == []
    assert _mine(rm) == ref.counts()
    for f in range(frames):
        assert rm.layout(f) == ref.layout(f)


# ------------------------------------------------------------------------------------------
# in the engine: the fault path's adds and the drop phase under v3.8, against the transcription


@pytest.mark.parametrize("drop_by,drop", [("frame", "one_by_one"), ("frame", "batch"),
                                          ("address", "batch"), ("reverse_address", "batch")])
def test_v38_engine_counts_match_the_transcription(drop_by, drop):
    from simulator.config import validate
    from simulator.experiment import run_config

    frames, per = 4, 23
    cfg = validate({
        "name": "t", "seed": 3,
        "machine": {"granule": "4K", "ipa_bits": 40, "fwb": True},
        "guest": {"memory": "64MiB", "vcpus": 1, "mapping": "4K"},
        "hyp": {"rmap": "pte_list", "rmap_rules": "v3.8", "rmap_ext": 3, "rmap_drop": drop},
        "workload": {"type": "shared_frames", "frames": frames, "mappings_per_frame": per,
                     "drop_by": drop_by},
    }, "test")
    c = run_config(cfg)["counters"]
    # one vCPU faults pages 0 .. N-1 in order; page p maps frame p mod 4, spte id p + 1
    ref = V38(frames)
    pages = range(frames * per)
    for p in pages:
        ref.pte_list_add(p + 1, p % frames)
    add_loads = ref.loads
    assert c["rmap.add_cycles"] == add_loads * cfg.costs.rmap_touch
    assert c["rmap.desc_allocated"] == ref.allocs
    ref.loads = 0
    if drop_by == "frame":
        for f in range(frames):
            (ref.unmap_one_by_one if drop == "one_by_one" else ref.unmap_batch)(f)
    else:
        order = list(pages) if drop_by == "address" else list(pages)[::-1]
        for p in order:
            ref.drop_spte(p + 1, p % frames)
    assert c["rmap.touches"] == ref.loads
    assert c["rmap.entry_moves"] == ref.moves
    assert c["rmap.desc_freed"] == ref.frees
    assert c["rmap.entries_dropped"] == ref.cleared == frames * per


def test_recycle_threshold_is_refused():
    from simulator.config import ConfigError, validate

    with pytest.raises(ConfigError, match="RMAP_RECYCLE_THRESHOLD"):
        validate({"name": "t", "guest": {"memory": "64MiB", "mapping": "4K"},
                  "hyp": {"rmap": "pte_list"},
                  "workload": {"type": "shared_frames", "frames": 1,
                               "mappings_per_frame": 1002}}, "test")


@pytest.mark.parametrize("drop,touches", [("one_by_one", 3), ("batch", 2)])
def test_ksm_aliasing_gives_lists_of_one(drop, touches):
    """KVM keys rmaps by guest frame: M guest frames merged onto one host page are M lists
    of one spte each (no descriptor), dropped host frame by host frame."""
    from simulator.config import validate
    from simulator.experiment import run_config

    frames, per = 4, 25
    cfg = validate({
        "name": "t", "seed": 3,
        "machine": {"granule": "4K", "ipa_bits": 40, "fwb": True},
        "guest": {"memory": "64MiB", "vcpus": 2, "mapping": "4K"},
        "hyp": {"rmap": "pte_list", "rmap_rules": "v3.8", "rmap_ext": 3, "rmap_drop": drop},
        "workload": {"type": "shared_frames", "frames": frames, "mappings_per_frame": per,
                     "aliasing": "ksm"},
    }, "test")
    c = run_config(cfg)["counters"]
    n = frames * per
    assert c["rmap.max_entries"] == 1
    assert c["rmap.desc_allocated"] == c["rmap.desc_freed"] == 0
    assert c["rmap.entries_dropped"] == n
    # per list, one_by_one: rmap_get_first's head, pte_list_remove's head, the final
    # rmap_get_first's head; batch: the iteration's head and pte_list_destroy()'s
    assert c["rmap.touches"] == touches * n
    assert c["rmap.cycles"] == n * (touches * cfg.costs.rmap_touch + cfg.costs.rmap_clear)
