"""pKVM's hyp page allocator (simulator.hyp.page_alloc) against tests/naive_buddy.py, hand-computed
cases, the BUG_ON()s of each hyp_page field, and the kernel's page budgets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from naive_buddy import NaiveBuddy

from simulator.hyp import page_alloc as PA
from simulator.hyp.hyp_pool import HypBugError, HypPool
from simulator.hyp.page_alloc import (
    MAX_PAGE_ORDER,
    VMEMMAP_LAYOUTS,
    get_order,
    host_s2_pgtable_pages,
    hyp_s1_pgtable_pages,
    layout_supports,
    pgtable_max_pages,
    vmemmap_bytes,
    vmemmap_bytes_per_gib,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BASE = 0x8000_0000
LAYOUTS = list(VMEMMAP_LAYOUTS)
SHIFTS = [12, 14, 16]

FUZZ = settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pg(i: int, shift: int = 12, base: int = BASE) -> int:
    """Physical address of the pool's page ``i``."""
    return base + (i << shift)


# ------------------------------------------------------------------------------------------
# Comparing the simulator with the reference, and invariants


def assert_same(pool: HypPool, ref: NaiveBuddy) -> None:
    assert pool.free_lists() == ref.free_lists()
    assert pool.refcounts.tolist() == ref.refcounts()
    assert pool.orders.tolist() == ref.orders()
    assert pool.free_pages == ref.free
    assert pool.used_pages == ref.used
    assert pool.reserved_held == len(ref.reserved_held)
    assert pool.bugs == len(ref.bugs)
    assert pool.alloc_failures == ref.alloc_failures


def check_invariants(pool: HypPool) -> None:
    """Free blocks are disjoint, aligned to their order, inside the pool, refcount 0 with the
    head holding the order and the rest HYP_NO_ORDER; the page accounting adds up."""
    nr, shift = pool.nr_pages, pool.page_shift
    covered = np.zeros(nr, dtype=bool)
    free = 0
    for o, blocks in enumerate(pool.free_lists()):
        for phys in blocks:
            assert phys % (pool.page_size << o) == 0, f"{phys:#x} not aligned to order {o}"
            i = (phys - pool.start_phys) >> shift
            n = 1 << o
            assert 0 <= i and i + n <= nr
            assert not covered[i : i + n].any(), f"free block {phys:#x} overlaps another"
            covered[i : i + n] = True
            assert pool.orders[i] == o
            assert (pool.orders[i + 1 : i + n] == pool.NO_ORDER).all()
            assert (pool.refcounts[i : i + n] == 0).all(), "a page is both free and in use"
            free += n
    assert free == pool.free_pages
    assert pool.free_pages + pool.used_pages + pool.reserved_held == nr
    assert pool.largest_free_order == max(
        (o for o, b in enumerate(pool.free_lists()) if b), default=-1
    )


# ------------------------------------------------------------------------------------------
# Property test: random alloc / put / get / split sequences, lockstep with the reference


@st.composite
def pool_params(draw):
    page_shift = draw(st.sampled_from(SHIFTS))
    layout = draw(st.sampled_from(LAYOUTS))
    nr_pages = draw(
        st.sampled_from([1, 2, 3, 5, 16, 17, 24, 31, 64, 100, 128, 200]) | st.integers(1, 160)
    )
    reserved = min(nr_pages, draw(st.sampled_from([0, 0, 1, 3]) | st.integers(0, 20)))
    base = BASE
    if draw(st.booleans()):  # a start that is not aligned to the pool's blocks
        base += draw(st.integers(1, 63)) << page_shift
    max_order = draw(st.none() | st.integers(0, 7))
    return dict(
        start_phys=base, nr_pages=nr_pages, page_shift=page_shift, layout=layout,
        reserved_pages=reserved, max_order=max_order,
    )


OPS = ["alloc", "alloc", "alloc", "put", "put", "put", "get", "split", "put_reserved", "stale_put"]
op_lists = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 1 << 16)), min_size=1, max_size=60
)


class Harness:
    """Drives the pool and the reference with well-formed calls (plus puts of pages nobody
    holds, which BUG in both) and checks them after each step."""

    def __init__(self, params):
        self.pool = HypPool(**params, on_bug="count")
        self.ref = NaiveBuddy(**params)
        self.blocks: dict[int, int] = {}  # head phys -> order, for blocks held (refcount > 0)
        self.reserved = {pg(i, params["page_shift"], params["start_phys"])
                         for i in range(params["reserved_pages"])}
        self.initial = self.pool.free_lists()
        self.check()

    def check(self):
        pool = self.pool
        assert_same(pool, self.ref)
        check_invariants(pool)
        assert pool.used_pages == sum(1 << o for o in self.blocks.values())
        assert pool.reserved_held == len(self.reserved)
        # a page is held iff its refcount is > 0, except the tails of unsplit blocks
        held = {(p - pool.start_phys) >> pool.page_shift for p in self.blocks}
        held |= {(p - pool.start_phys) >> pool.page_shift for p in self.reserved}
        assert set(np.flatnonzero(pool.refcounts).tolist()) == held

    def step(self, op, x):
        pool, ref = self.pool, self.ref
        if op == "alloc":
            order = (x >> 1) % (pool.max_order + 2) if x & 1 else (x >> 1) % 3
            got = pool.alloc_pages(order)
            assert got == ref.alloc_pages(order)
            if got is not None:
                self.blocks[got] = order
        elif op == "put" and self.blocks:
            p = sorted(self.blocks)[x % len(self.blocks)]
            pool.put_page(p)
            ref.put_page(p)
            if pool.refcount(p) == 0:
                del self.blocks[p]
        elif op == "get":
            cands = sorted(p for p in (*self.blocks, *self.reserved) if pool.refcount(p) < 4)
            if cands:
                p = cands[x % len(cands)]
                pool.get_page(p)
                ref.get_page(p)
        elif op == "split":
            cands = sorted(p for p, o in self.blocks.items() if o > 0)
            if cands:
                p = cands[x % len(cands)]
                pool.split_page(p)
                ref.split_page(p)
                for i in range(1 << self.blocks[p]):
                    self.blocks[p + (i << pool.page_shift)] = 0
        elif op == "put_reserved" and self.reserved:
            p = sorted(self.reserved)[x % len(self.reserved)]
            pool.put_page(p)
            ref.put_page(p)
            if pool.refcount(p) == 0:
                self.reserved.discard(p)
        elif op == "stale_put":
            p = pg(x % pool.nr_pages, pool.page_shift, pool.start_phys)
            if p not in self.blocks and p not in self.reserved:
                bugs = pool.bugs
                pool.put_page(p)
                ref.put_page(p)
                assert pool.bugs == bugs + 1  # refcount underflow, counted, nothing changed
        self.check()

    def free_everything(self):
        for p in sorted(self.blocks):
            while self.pool.refcount(p):
                self.pool.put_page(p)
                self.ref.put_page(p)
        self.blocks.clear()
        self.check()


@FUZZ
@given(params=pool_params(), ops=op_lists)
def test_pool_matches_reference(params, ops):
    h = Harness(params)
    for op, x in ops:
        h.step(op, x)
    released_reserved = h.pool.reserved_held < params["reserved_pages"]
    h.free_everything()
    assert h.pool.used_pages == 0
    if not released_reserved:
        # full coalescing: the same free blocks as after hyp_pool_init (a list may hold its
        # blocks in another order when the pool has several blocks of one order)
        assert [sorted(b) for b in h.pool.free_lists()] == [sorted(b) for b in h.initial]


@FUZZ
@given(params=pool_params(), orders=st.lists(st.integers(0, 4), min_size=1, max_size=40),
       seed=st.integers(0, 2**32 - 1))
def test_exhaust_then_free_all_coalesces(params, orders, seed):
    """Allocate until the pool runs dry, free everything in a random order: the pool's free
    blocks are those hyp_pool_init() made, and the reference agrees all the way."""
    pool = HypPool(**params)
    ref = NaiveBuddy(**params)
    initial = pool.free_lists()
    held = []
    for o in orders * 8:
        p = pool.alloc_pages(o)
        assert p == ref.alloc_pages(o)
        if p is not None:
            held.append(p)
    while (p := pool.alloc_pages(0)) is not None:
        assert p == ref.alloc_pages(0)
        held.append(p)
    assert ref.alloc_pages(0) is None
    assert pool.free_pages == 0 and pool.largest_free_order == -1
    for i in np.random.default_rng(seed).permutation(len(held)):
        pool.put_page(held[i])
        ref.put_page(held[i])
        assert pool.free_lists() == ref.free_lists()
    assert [sorted(b) for b in pool.free_lists()] == [sorted(b) for b in initial]
    assert pool.free_pages == params["nr_pages"] - params["reserved_pages"]
    check_invariants(pool)


# ------------------------------------------------------------------------------------------
# Hand-computed cases


@pytest.mark.nojit
def test_16_page_pool_init_alloc0_and_merge_back():
    pool = HypPool(BASE, 16)
    assert pool.max_order == 4
    assert pool.free_lists() == [[], [], [], [], [BASE]]
    assert pool.free_pages == 16 and pool.used_pages == 0

    # alloc(0) splits the 16-block: the upper halves 8, 4, 2, 1 go to the lists of their order
    assert pool.alloc_pages(0) == BASE
    assert pool.free_lists() == [[pg(1)], [pg(2)], [pg(4)], [pg(8)], []]
    assert pool.refcount(BASE) == 1 and pool.order(BASE) == 0
    assert pool.order(pg(8)) == 3 and pool.order(pg(9)) == 0xFFFF  # HYP_NO_ORDER
    assert (pool.free_pages, pool.used_pages) == (15, 1)

    pool.put_page(BASE)
    assert pool.free_lists() == [[], [], [], [], [BASE]]
    assert pool.counters()["merges"] == 4 and pool.counters()["zeroed_bytes"] == 4096


def test_buddy_merge_order_and_list_tails():
    pool = HypPool(BASE, 16)
    got = [pool.alloc_pages(0) for _ in range(4)]
    assert got == [pg(0), pg(1), pg(2), pg(3)]  # 2 is split from the order-1 block at 2
    assert pool.free_lists() == [[], [], [pg(4)], [pg(8)], []]

    pool.put_page(pg(1))  # buddy 0 is in use: stays order 0
    pool.put_page(pg(3))  # buddy 2 in use: added at the *tail* of free_area[0]
    assert pool.free_lists() == [[pg(1), pg(3)], [], [pg(4)], [pg(8)], []]
    assert pool.alloc_pages(0) == pg(1)  # the list head goes first
    pool.put_page(pg(1))
    assert pool.free_lists()[0] == [pg(3), pg(1)]

    pool.put_page(pg(0))  # 0 + 1 -> order 1 at 0 (min of the pair); buddy 2 in use
    assert pool.free_lists() == [[pg(3)], [pg(0)], [pg(4)], [pg(8)], []]
    assert pool.order(pg(1)) == 0xFFFF

    # completing the pair 2 + 3 merges all the way up: 2|3 -> 0..3 -> 0..7 -> 0..15
    pool.put_page(pg(2))
    assert pool.free_lists() == [[], [], [], [], [BASE]]
    assert pool.orders.tolist() == [4] + [0xFFFF] * 15


def test_non_power_of_two_unaligned_and_reserved():
    # 10 pages: 8 + 2 (the buddy of page 8 at order 1, page 10, is outside the pool)
    pool = HypPool(BASE, 10)
    assert pool.max_order == 4  # get_order(10 pages)
    assert pool.free_lists() == [[], [pg(8)], [], [pg(0)], []]

    # pfn 3 .. 7: blocks follow physical alignment, not the pool's start
    pool = HypPool(3 << 12, 5)
    assert pool.max_order == 3
    assert pool.free_lists() == [[3 << 12], [], [4 << 12], []]

    # 16 pages, 3 reserved: 3, 4..7, 8..15
    pool = HypPool(BASE, 16, reserved_pages=3)
    assert pool.free_lists() == [[pg(3)], [], [pg(4)], [pg(8)], []]
    assert (pool.free_pages, pool.used_pages, pool.reserved_held) == (13, 0, 3)
    assert pool.refcounts.tolist()[:4] == [1, 1, 1, 0]
    pool.put_page(pg(1))  # reserved pages can be freed into the pool
    assert pool.free_lists() == [[pg(3), pg(1)], [], [pg(4)], [pg(8)], []]
    assert (pool.free_pages, pool.used_pages, pool.reserved_held) == (14, 0, 2)


@pytest.mark.parametrize("shift", SHIFTS)
def test_max_order_per_granule_and_layout(shift):
    big = 1 << 14  # pages: more than any MAX_PAGE_ORDER block (and < 4 GiB at 64K)
    assert HypPool(BASE, big, shift, "packed4").max_order == MAX_PAGE_ORDER[shift]
    assert HypPool(BASE, big, shift, "legacy32").max_order == MAX_PAGE_ORDER[shift]
    assert HypPool(BASE, big, shift, "packed2").max_order == 6  # 3-bit order, 7 = NO_ORDER
    assert HypPool(BASE, 64, shift, "packed4").max_order == 6  # get_order(64 pages)
    assert HypPool(BASE, 65, shift, "packed4").max_order == 7
    assert HypPool(BASE, 1, shift, "packed4").max_order == 0
    assert HypPool(BASE, big, shift, "packed4", max_order=3).max_order == 3
    pool = HypPool(BASE, big, shift, "packed2")
    assert pool.free_lists()[6][:2] == [BASE, BASE + (64 << shift)]
    assert len(pool.free_lists()[6]) == big // 64


def test_get_order_matches_the_kernel():
    assert get_order(4096, 12) == 0
    assert get_order(4097, 12) == 1
    assert get_order(16 << 12, 12) == 4
    assert get_order(17 << 12, 12) == 5
    assert get_order(1, 16) == 0
    assert get_order(0, 12) == 52  # fls64(ULONG_MAX >> 12)


# ------------------------------------------------------------------------------------------
# Each field's overflow: the BUG_ON()s


@pytest.mark.nojit
def test_put_at_refcount_zero_is_a_bug():
    pool = HypPool(BASE, 16)
    p = pool.alloc_pages(0)
    pool.put_page(p)
    with pytest.raises(HypBugError, match=r"^BUG: hyp_page refcount underflow at page "
                                          r"0x80000000 \(put at refcount 0\)$") as exc:
        pool.put_page(p)
    assert exc.value.page_phys == BASE and exc.value.what == "refcount underflow"
    assert pool.bugs == 1

    counting = HypPool(BASE, 16, on_bug="count")
    counting.put_page(pg(5))  # a free page: refcount 0
    assert counting.bugs == 1
    assert counting.free_lists() == [[], [], [], [], [BASE]]  # nothing changed


@pytest.mark.parametrize(
    "layout, top, bits",
    [("packed4", 65535, 16), ("legacy32", 2**32 - 1, 32), ("packed2", 8191, 13)],
)
def test_get_at_max_refcount_is_a_bug(layout, top, bits):
    pool = HypPool(BASE, 256, layout=layout)
    p = pool.alloc_pages(0)
    pool.set_refcount(p, top - 1)
    pool.get_page(p)
    assert pool.refcount(p) == top
    msg = rf"^BUG: hyp_page refcount overflow at page {p:#x} \({layout}: {bits} bits\)$"
    with pytest.raises(HypBugError, match=msg):
        pool.get_page(p)
    assert pool.refcount(p) == top

    counting = HypPool(BASE, 256, layout=layout, on_bug="count")
    q = counting.alloc_pages(0)
    counting.set_refcount(q, top)
    counting.get_page(q)
    counting.get_page(q)
    assert counting.bugs == 2 and counting.refcount(q) == top  # saturates
    with pytest.raises(ValueError, match=rf"refcount must be 0 \.\. {top} for {layout}"):
        counting.set_refcount(q, top + 1)


def test_packed2_refcount_overflows_at_8191_through_real_gets():
    pool = HypPool(BASE, 128, layout="packed2")
    for _ in range(0x42):
        pool.alloc_pages(0)
    p = pool.alloc_pages(0)
    assert p == 0x80042000
    for _ in range(8190):
        pool.get_page(p)
    assert pool.refcount(p) == 8191
    with pytest.raises(
        
        match=r"^BUG: hyp_page refcount overflow at page 0x80042000 \(packed2: 13 bits\)$",
    ):
        pool.get_page(p)


def test_set_page_refcounted_on_a_non_zero_refcount_is_a_bug():
    # a stray get on a free block's head: the next alloc that takes it BUG()s
    pool = HypPool(BASE, 16)
    pool.get_page(BASE)  # hyp_get_page does not check
    with pytest.raises(HypBugError, match=r"^BUG: hyp_page refcount not zero at page 0x80000000 "
                                          r"\(hyp_set_page_refcounted found 1\)$"):
        pool.alloc_pages(2)

    # split: a tail page with a reference BUG()s; counted, the split still completes
    pool = HypPool(BASE, 16, on_bug="count")
    p = pool.alloc_pages(2)
    pool.get_page(pg(2))
    pool.split_page(p)
    assert pool.bugs == 1
    assert pool.refcounts.tolist()[:4] == [1, 1, 1, 1] and pool.orders.tolist()[:4] == [0] * 4

    # count mode at alloc: the refcount is kept, the page is handed out
    pool = HypPool(BASE, 16, on_bug="count")
    pool.get_page(BASE)
    pool.get_page(BASE)
    assert pool.alloc_pages(0) == BASE
    assert pool.bugs == 1 and pool.refcount(BASE) == 2


def test_order_field_overflow():
    # an order the layout cannot store: the pool's max_order is clamped, hyp_alloc_pages()
    # finds no list at that order and returns NULL (no BUG in the kernel)
    pool = HypPool(BASE, 1024, layout="packed2")
    assert pool.max_order == 6
    assert pool.alloc_pages(7) is None
    assert pool.alloc_pages(6) == BASE
    assert pool.alloc_failures == 1 and pool.bugs == 0
    pool = HypPool(BASE, 1 << 12, layout="packed4")
    assert pool.alloc_pages(11) is None and pool.alloc_pages(10) == BASE
    assert HypPool(BASE, 16).alloc_pages(5) is None

    # freeing a page with no order (a tail page someone took a reference on): the 6.12 code
    # would index free_area[HYP_NO_ORDER]; the model reports it and leaks the page
    for layout, no_order in (("packed2", 7), ("packed4", 0xFFFF), ("legacy32", 0xFFFFFFFF)):
        pool = HypPool(BASE, 16, layout=layout)
        p = pool.alloc_pages(1)
        pool.get_page(p + 4096)
        msg = (
            rf"^BUG: hyp_page order {no_order:#x} out of range at page 0x80001000 "
            rf"\({layout}: max_order 4\)$"
        )
        with pytest.raises(HypBugError, match=msg):
            pool.put_page(p + 4096)
        counting = HypPool(BASE, 16, layout=layout, on_bug="count")
        p = counting.alloc_pages(1)
        counting.get_page(p + 4096)
        counting.put_page(p + 4096)
        assert counting.bugs == 1 and counting.free_pages == 14
        counting.put_page(p)  # the head frees the whole block (both pages)
        assert counting.free_lists() == [[], [], [], [], [BASE]]


def test_wrapper_validation_errors():
    pool = HypPool(BASE, 16)
    outside = r"^page 0x80010000 is outside the pool \[0x80000000, 0x80010000\)$"
    with pytest.raises(ValueError, match=outside):
        pool.put_page(BASE + 16 * 4096)
    with pytest.raises(ValueError, match=r"^page address 0x80000800 is not 4096-byte aligned$"):
        pool.get_page(BASE + 2048)
    with pytest.raises(ValueError, match=r"^page 0x80000000 is free \(refcount 0\)"):
        pool.split_page(BASE)
    p = pool.alloc_pages(2)
    not_head = r"^page 0x80001000 is not the head of a block \(order 0xffff\)$"
    with pytest.raises(ValueError, match=not_head):
        pool.split_page(p + 4096)
    with pytest.raises(ValueError, match="order must be >= 0"):
        pool.alloc_pages(-1)
    with pytest.raises(ValueError, match=r"unknown hyp_page layout 'packed8'"):
        HypPool(BASE, 16, layout="packed8")
    with pytest.raises(ValueError, match=r"page_shift must be 12, 14 or 16"):
        HypPool(BASE, 16, page_shift=13)
    with pytest.raises(ValueError, match=r"start_phys 0x80000800 is not 4096-byte aligned"):
        HypPool(BASE + 2048, 16)
    with pytest.raises(ValueError, match=r"reserved_pages must be 0 \.\. nr_pages \(16\)"):
        HypPool(BASE, 16, reserved_pages=17)
    with pytest.raises(ValueError, match="on_bug must be 'raise' or 'count'"):
        HypPool(BASE, 16, on_bug="ignore")


def test_layout_supports():
    assert layout_supports("packed2", 16) == (
        "packed2 holds a refcount of at most 8191 (13 bits) but a stage-2 table page with "
        "64K pages needs 1 + 8192 = 8193"
    )
    for layout in LAYOUTS:
        assert layout_supports(layout, 12) is None
        assert layout_supports(layout, 14) is None
    assert layout_supports("packed4", 16) is None and layout_supports("legacy32", 16) is None
    assert "unknown hyp_page layout" in layout_supports("packed1", 12)
    assert "page shift must be 12, 14 or 16" in layout_supports("packed4", 13)


# ------------------------------------------------------------------------------------------
# hyp_pool_init's 32-bit size (nr_pages << PAGE_SHIFT in unsigned int)


def test_pool_of_4gib_or_more_has_its_range_truncated():
    params = dict(start_phys=BASE, nr_pages=(1 << 16) + 5, page_shift=16, layout="packed4")
    pool = HypPool(**params, on_bug="count")
    ref = NaiveBuddy(**params)
    assert pool.range_end == BASE + (5 << 16) and pool.max_order == 3  # get_order(5 pages)
    assert_same(pool, ref)
    lists = pool.free_lists()
    # pages 0-3 make one block; page 4's buddy (5) is outside the range; pages 5 .. are
    # 'external' and attached without coalescing
    assert lists[2] == [BASE] and lists[1] == [] and lists[3] == []
    assert lists[0][:3] == [pg(4, 16), pg(5, 16), pg(6, 16)] and len(lists[0]) == (1 << 16) + 1

    rng = np.random.default_rng(7)
    held = []
    for _ in range(300):
        if held and rng.random() < 0.4:
            p = held.pop(int(rng.integers(len(held))))
            pool.put_page(p)
            ref.put_page(p)
        else:
            o = int(rng.integers(0, 4))
            p = pool.alloc_pages(o)
            assert p == ref.alloc_pages(o)
            if p is not None:
                held.append(p)
    assert_same(pool, ref)
    assert pool.bugs == 0

    fixed = HypPool(**params, truncate_size_u32=False)
    assert fixed.max_order == 13 and fixed.range_end == fixed.end_phys
    assert fixed.free_lists()[13] == [BASE + i * (8192 << 16) for i in range(8)]
    assert fixed.free_lists()[2] == [pg(65536, 16)] and fixed.free_lists()[0] == [pg(65540, 16)]


# ------------------------------------------------------------------------------------------
# Budgets and vmemmap sizes


def test_pgtable_max_pages_by_hand():
    assert pgtable_max_pages(262144, 12) == 512 + 1 + 1 + 1  # 1 GiB of 4K pages
    assert pgtable_max_pages(262144, 12, levels=5) == 516  # 6.9+: levels -1 .. 3
    assert pgtable_max_pages(1 << 18, 12, levels=3) == 514
    assert pgtable_max_pages((16 * GiB) >> 12, 12) == 8192 + 16 + 1 + 1
    assert pgtable_max_pages(GiB >> 14, 14) == 32 + 1 + 1 + 1  # 2048 entries a table
    assert pgtable_max_pages(GiB >> 16, 16) == 2 + 1 + 1 + 1  # 8192 entries a table
    assert pgtable_max_pages(1, 12) == 4
    assert pgtable_max_pages(0, 12) == 0
    assert pgtable_max_pages(513, 12) == 2 + 1 + 1 + 1


def test_hyp_s1_and_host_s2_budgets():
    mem = [(BASE, GiB)]
    assert hyp_s1_pgtable_pages(mem, 12) == 516 + 516
    assert host_s2_pgtable_pages(mem, 12) == 516 + 16 + 516
    assert host_s2_pgtable_pages(mem, 12, levels=4) == 515 + 16 + 515
    two = [(BASE, GiB), (0x8_8000_0000, 3 * GiB)]
    per_region = pgtable_max_pages(GiB >> 12, 12, 5) + pgtable_max_pages(3 * GiB >> 12, 12, 5)
    assert per_region == 516 + (1536 + 3 + 1 + 1 + 1)
    assert host_s2_pgtable_pages(two, 12) == per_region + 16 + 516
    assert hyp_s1_pgtable_pages(two, 16) == (2 + 4) + (6 + 4) + (2 + 4)
    with pytest.raises(ValueError, match=r"a memory region is a \(base, size\) pair of ints"):
        hyp_s1_pgtable_pages([BASE], 12)


@pytest.mark.parametrize(
    "layout, per_gib",
    [
        ("legacy32", {12: 8 * MiB, 14: 2 * MiB, 16: 512 * KiB}),
        ("packed4", {12: 1 * MiB, 14: 256 * KiB, 16: 64 * KiB}),
        ("packed2", {12: 512 * KiB, 14: 128 * KiB, 16: 32 * KiB}),
    ],
)
def test_vmemmap_bytes_per_gib(layout, per_gib):
    for shift, expected in per_gib.items():
        assert vmemmap_bytes_per_gib(layout, shift) == expected
        # hyp_vmemmap_pages() reserves whole pages: 32 KiB of packed2 entries take a 64K page
        assert vmemmap_bytes([(BASE, GiB)], shift, layout) == max(expected, 1 << shift)
        entry = VMEMMAP_LAYOUTS[layout].entry_bytes
        assert HypPool(BASE, 64, shift, layout).vmemmap_bytes == 64 * entry


def test_vmemmap_bytes_aligns_each_region_at_its_place():
    # 4 pages at pfn 0x80001: entries at 0x200004 .. 0x200014 -> one vmemmap page
    assert vmemmap_bytes([(0x8000_1000, 4 * 4096)], 12, "packed4") == 4096
    # two regions whose entries share a vmemmap page: each counts it
    two = [(0x8000_1000, 4 * 4096), (0x8001_0000, 4 * 4096)]
    assert vmemmap_bytes(two, 12, "packed4") == 2 * 4096
    # a region whose entries straddle a vmemmap page boundary
    assert vmemmap_bytes([(0x3FF << 12, 2 * 4096)], 12, "packed4") == 2 * 4096
    assert vmemmap_bytes([(0, 0)], 12, "packed2") == 0


def test_layout_table():
    lay = VMEMMAP_LAYOUTS
    assert [(lay[n].entry_bytes, lay[n].max_refcount, lay[n].no_order, lay[n].max_order,
             lay[n].list_nodes) for n in LAYOUTS] == [
        (32, 2**32 - 1, 2**32 - 1, 2**32 - 2, "vmemmap"),
        (4, 65535, 0xFFFF, 0xFFFE, "page"),
        (2, 8191, 7, 6, "page"),
    ]
    assert PA.HOST_S2_PGD_PAGES == 16 and PA.HYP_PGTABLE_BUDGET_LEVELS == 5
