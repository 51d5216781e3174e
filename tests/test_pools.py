"""The hyp-pool memcache kernels (simulator.hyp.pools) against a plain Python top-up and
settle written with HypPool's own calls, on twin pools; and the store they work on."""

import numpy as np
import pytest

from simulator.hyp.hyp_pool import HypPool
from simulator.hyp.pgtable import M_NFREE, M_TOP
from simulator.hyp.pools import PoolMemory

BASE = 1 << 30
PS = 12


class PlainMemcache:
    """PoolMemory.before_op/after_op as plain Python over independent HypPools."""

    def __init__(self, pools):
        self.pools = pools
        self.base = pools[0].start_phys
        self.stack: list[int] = []

    def row(self, pa):
        return (pa - self.base) >> PS

    def pool_of(self, row):
        pa = self.base + (row << PS)
        return next(p for p in self.pools if p.start_phys <= pa < p.end_phys)

    def topup(self, pool, pages):
        added = []
        while len(self.stack) + len(added) < pages:
            pa = pool.alloc_pages(0)
            if pa is None:
                break
            added.append(self.row(pa))
        self.stack += added[::-1]  # popped from the top: pool order

    def settle(self):
        for row in reversed(self.stack):
            self.pool_of(row).put_page(self.base + (row << PS))
        self.stack = []


def _twins(sizes, layout):
    def make():
        out, at = [], BASE
        for n in sizes:
            out.append(HypPool(at, n, PS, layout=layout))
            at += n << PS
        return out
    return make(), make()


@pytest.mark.parametrize("layout", ["legacy32", "packed4", "packed2"])
def test_topup_and_settle_match_plain_python(layout):
    rng = np.random.default_rng(7)
    mine, theirs = _twins([40, 200], layout)
    mem = PoolMemory(mine)
    ref = PlainMemcache(theirs)
    held: list[int] = []  # rows the "walker" took off the stack
    top = -1
    for _ in range(300):
        k = int(rng.integers(2))
        pages = int(rng.integers(0, 9))
        mem.use(mine[k])
        mem.before_op(pages)
        ref.topup(theirs[k], pages)
        nfree = int(mem.meta[M_NFREE])
        assert mem.free[:nfree].tolist() == ref.stack
        top = max([top, *ref.stack])
        # the walker pops some rows, frees some it held back onto the stack
        for _ in range(int(rng.integers(0, nfree + 1))):
            mem.meta[M_NFREE] -= 1
            held.append(int(mem.free[mem.meta[M_NFREE]]))
            ref.stack.pop()
        rng.shuffle(held)
        for _ in range(int(rng.integers(0, len(held) + 1))):
            row = held.pop()
            mem.free[mem.meta[M_NFREE]] = row
            mem.meta[M_NFREE] += 1
            ref.stack.append(row)
        mem.after_op()
        ref.settle()
        assert mem.meta[M_NFREE] == 0
        for a, b in zip(mine, theirs):
            assert a.free_lists() == b.free_lists()
            assert a.refcounts.tolist() == b.refcounts.tolist()
            assert a.counters() == b.counters()
    # every row the top-ups handed out lies below M_TOP (what nbytes() counts), the highest
    # just below it
    assert mem.meta[M_TOP] == 1 + top

def test_pools_work_on_views_of_the_memory_store():
    pools, _ = _twins([16, 32], "packed4")
    mem = PoolMemory(pools)
    pref = mem.hy[0]
    assert np.shares_memory(pools[1].refcounts, pref)
    pools[1].alloc_pages(2)
    assert pref[16:20].tolist() == [1, 0, 0, 0]  # the head refcounted, in the store


def test_a_bug_in_the_memcache_raises_from_its_pool():
    pools, _ = _twins([8], "packed4")
    mem = PoolMemory(pools)
    mem.before_op(1)
    row = int(mem.free[0])
    pools[0].set_refcount(BASE + (row << PS), 0)  # a stray write
    with pytest.raises(Exception, match="refcount underflow"):
        mem.after_op()
