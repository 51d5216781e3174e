"""pkvm mode: the host stage-2 (idmap, ownership, seed 000's coalescing), guests donated and
reclaimed, isolation, and the hyp pools (seed 002)."""

from __future__ import annotations

import pytest
import yaml
from cfgutil import apply_overrides

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.config import ConfigError, Experiment
from simulator.experiment import run_config
from simulator.hyp.host import (
    HW_TRY,
    TRY_ALL,
    TRY_SCOPES,
    OWNER_HOST,
    SHARED,
    STATE_SHARED_BORROWED,
    STATE_SHARED_OWNED,
    HostPhys,
    HostStage2,
    Region,
)
from simulator.pkvm import PkvmExperiment

GIB = 1 << 30
MIB = 1 << 20
PAGE = 4096


def host(coalesce: bool, pools: str = "unified") -> HostStage2:
    phys = HostPhys([Region(0, GIB, "mmio"), Region(GIB, 2 * GIB, "memory")], 12)
    return HostStage2(phys, Geometry(12, 40), coalesce=coalesce, pools=pools, layout="packed4",
                      on_bug="raise", fwb=False, tlbi_range=False)


def leaf(hs2: HostStage2, pa: int) -> tuple[int, int]:
    pte, level = hs2.s2.get_leaf(pa)
    return pte, level


def test_idmap_maps_the_largest_block_that_fits_the_region():
    hs2 = host(coalesce=False)
    res = hs2.idmap(GIB + 5 * PAGE)
    assert (res.ret, res.start, res.size) == (0, GIB, GIB)
    pte, level = leaf(hs2, GIB + 5 * PAGE)
    assert level == 1 and D.decode(pte, 1, 12).kind == "block"
    # MMIO (PKVM_HOST_MMIO_PROT = KVM_PGTABLE_PROT_RW): RW, Normal attributes, XN; the
    # range is the whole gap below the memory (find_mem_range()), not the configured region
    res = hs2.idmap(0x1000)
    assert (res.ret, res.start, res.size) == (0, 0, GIB)
    d = D.decode(leaf(hs2, 0x1000)[0], leaf(hs2, 0x1000)[1], 12)
    assert (d.memattr, d.xn, d.w) == (D.MEMATTR_NORMAL, True, True)
    # above the memory: the gap up to the end of the IPA space, the largest block there
    res = hs2.idmap(3 * GIB + 0x1000)
    assert (res.ret, res.start, res.size) == (0, 3 * GIB, GIB)
    res = hs2.idmap(600 * GIB + 0x1000)  # 40 bits: the walk starts at level 1
    assert (res.ret, res.start, res.size) == (0, 600 * GIB, GIB)
    # an address already mapped: -EAGAIN
    assert hs2.idmap(GIB + 7 * PAGE).ret == -11


def test_donated_page_splits_the_block_and_the_host_cannot_map_it():
    hs2 = host(coalesce=False)
    hs2.idmap(GIB)
    hs2.set_owner(GIB + 2 * MIB, PAGE, 2)
    assert D.decode(*leaf(hs2, GIB + 2 * MIB), 12).owner == 2
    assert hs2.idmap(GIB + 2 * MIB).ret == -1  # -EPERM
    # the rest of the old block refaults lazily, at the largest size that still fits
    res = hs2.idmap(GIB + 4 * MIB)
    assert res.ret == 0 and res.size == 2 * MIB


@pytest.mark.parametrize("coalesce,expected", [(True, (2, 2 * MIB)), (False, (3, PAGE))])
def test_reclaimed_2m_region_becomes_one_level2_block_after_one_abort_only_with_coalescing(
        coalesce, expected):
    hs2 = host(coalesce=coalesce)
    base = GIB + 64 * MIB
    hs2.set_owner(GIB + 512 * MIB, PAGE, 2)  # elsewhere in the same 1 GiB: stays donated
    hs2.set_owner(base, 2 * MIB, 2)  # donate a 2 MiB chunk
    rep = hs2.set_owner(base, 2 * MIB, OWNER_HOST)  # reclaim it
    assert rep.zapped == (1 if coalesce else 0)
    res = hs2.idmap(base + 12345 * 8)
    assert res.ret == 0
    level, size = expected
    assert res.size == size
    assert leaf(hs2, base)[1] == level
    assert hs2.s2.check_invariants() == []


def test_a_whole_default_1g_region_coalesces_into_a_1g_block():
    hs2 = host(coalesce=True)
    base = GIB + 64 * MIB
    hs2.set_owner(base, 2 * MIB, 2)
    rep = hs2.set_owner(base, 2 * MIB, OWNER_HOST)
    assert rep.zapped == 2  # the level-3 table, then the level-2 table it emptied
    res = hs2.idmap(base)
    assert (res.size, leaf(hs2, base)[1]) == (GIB, 1)


def test_a_region_with_one_page_still_donated_never_coalesces():
    hs2 = host(coalesce=True)
    base = GIB + 64 * MIB
    hs2.set_owner(base, 2 * MIB, 2)
    rep = hs2.set_owner(base, 2 * MIB - PAGE, OWNER_HOST)  # the last page stays donated
    assert rep.zapped == 0
    res = hs2.idmap(base)
    assert res.size == PAGE and leaf(hs2, base)[1] == 3
    assert hs2.s2.check_invariants() == []


def refcount_of_table(hs2: HostStage2, pa: int) -> int:
    """The refcount of the level-3 table page that holds ``pa``'s entry."""
    s2 = hs2.s2
    for row, level, base in s2.iter_tables():
        if level == 3 and base <= pa < base + hs2.geom.size(2):
            return int(s2.mem.refcnt[row])
    raise AssertionError("no level-3 table")


def test_shared_pages_are_counted_page_leaves_with_the_shared_owned_state():
    hs2 = host(coalesce=True)
    base = GIB + 64 * MIB
    hs2.idmap(base)  # a 1 GiB block
    rep = hs2.share_guest(base, 16 * PAGE)
    assert rep.ret == 0
    for i in (0, 15):
        pte, level = leaf(hs2, base + i * PAGE)
        d = D.decode(pte, level, 12)
        assert (level, d.kind, d.sw, d.oa) == (3, "page", STATE_SHARED_OWNED, base + i * PAGE)
        assert d.w and d.memattr == D.MEMATTR_NORMAL  # the host keeps full access
    # the host's accesses hit a valid mapping; an abort there is spurious
    assert hs2.idmap(base).ret == -11
    # 16 non-default leaves: each holds a reference (seed 000's rule); the rest of the
    # old block was not rebuilt (it refaults lazily)
    assert refcount_of_table(hs2, base) == 1 + 16
    assert hs2.s2.check_invariants() == []
    # unshare: default leaves again, no longer counted, but a map is not the set_owner path:
    # the table stays (and keeps the host at page granularity there)
    rep = hs2.unshare_guest(base, 16 * PAGE)
    assert rep.ret == 0 and rep.zapped == 0
    d = D.decode(*leaf(hs2, base), 12)
    assert (leaf(hs2, base)[1], d.sw) == (3, 0)
    assert refcount_of_table(hs2, base) == 1
    assert hs2.s2.check_invariants() == []


def test_a_region_with_one_page_still_shared_never_coalesces():
    hs2 = host(coalesce=True)
    base = GIB + 64 * MIB
    hs2.share_guest(base, PAGE)
    hs2.set_owner(base + PAGE, 2 * MIB - PAGE, 2)
    rep = hs2.set_owner(base + PAGE, 2 * MIB - PAGE, OWNER_HOST)
    assert rep.zapped == 0  # the shared leaf keeps the table
    res = hs2.idmap(base + PAGE)
    assert res.size == PAGE and leaf(hs2, base + PAGE)[1] == 3
    # once it is unshared and the region reclaimed again through set_owner, it coalesces
    hs2.unshare_guest(base, PAGE)
    rep = hs2.set_owner(base, 2 * MIB, OWNER_HOST)
    assert rep.zapped >= 1
    assert hs2.idmap(base).size >= 2 * MIB
    assert hs2.s2.check_invariants() == []


def test_mmio_recycling_when_a_separate_pool_runs_dry():
    # MMIO is every gap between memory regions (find_mem_range()): 700 gaps of 64 KiB between
    # memory regions 2 MiB apart can only be mapped page by page, each in a level-3 table
    # of its own
    hole = 64 * 1024
    phys = HostPhys([Region(GIB, GIB, "memory")] +
                    [Region(64 * GIB + i * 2 * MIB + hole, 2 * MIB - hole, "memory")
                     for i in range(700)], 12)
    hs2 = HostStage2(phys, Geometry(12, 40), coalesce=False, pools="separate",
                     layout="packed4", on_bug="raise", fwb=False, tlbi_range=False)
    for i in range(700):
        res = hs2.idmap(64 * GIB + i * 2 * MIB)
        assert (res.ret, res.size) == (0, PAGE)
    # each window needs its own level-3 table: the MMIO pool (about 1 GiB worth) ran dry
    assert hs2.enomem >= 1 and hs2.recycles == hs2.enomem
    assert 0 < hs2.mmio_at_first_enomem < 700 * 16


# ----------------------------------------------------------------------------- end to end


def pkvm_cfg(tmp_path, **over) -> Experiment:
    cfg = {
        "name": "pk",
        "seed": 3,
        "machine": {"granule": "4K", "ipa_bits": 40, "pa_bits": 40},
        "hyp": {"mode": "pkvm", "coalesce": True},
        "host": {"cpus": 2, "memory": [{"base": 0, "size": "1GiB", "type": "mmio"},
                                        {"base": "1GiB", "size": "2GiB"}],
                 "workload": {"type": "uniform", "accesses": 4000, "footprint": "2GiB"}},
        "guests": [
            {"name": "a", "memory": "64MiB", "vcpus": 2, "mapping": "4K",
             "workload": {"type": "sequential", "accesses": 3000, "step": 4096}, "run": "2ms"},
            {"name": "b", "memory": "64MiB", "vcpus": 2, "mapping": "4K",
             "workload": {"type": "sequential", "accesses": 3000, "step": 4096},
             "start": "40ms"},
        ],
    }
    apply_overrides(cfg, over)
    path = tmp_path / "pk.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Experiment(path)


def test_guests_come_and_go_and_every_page_and_table_returns(tmp_path):
    r = run_config(pkvm_cfg(tmp_path).variants["default"])
    c = r["counters"]
    assert c["guests.torn_down"] == 2
    assert c["reclaim.pages"] == c["donate.pages"] == 2 * (64 * MIB // PAGE)
    assert c["guests.pgtable.pages_in_use"] == 0
    assert c["hyp.pool.free_pages"] == c["hyp.pool.pages"]
    assert c["isolation.violations"] == 0
    assert c["guest.a.accesses"] + c["guest.b.accesses"] > 0
    assert c["coalesce.tables_zapped"] > 0


def test_shared_guest_memory_is_open_to_the_host_and_its_guest_only(tmp_path):
    """Guest a's top 32 MiB is shared, b's memory is all donated. The host's workload covers
    all memory with respect_ownership: it skips b's and a's donated pages but touches a's
    shared ones, and no access of anybody is an isolation violation."""
    work = {"type": "uniform", "accesses": 4000, "footprint": "64MiB"}
    exp = pkvm_cfg(tmp_path, guests=[
        {"name": "a", "memory": "64MiB", "shared": "32MiB", "workload": work, "run": "2ms"},
        {"name": "b", "memory": "64MiB", "workload": work, "start": "40ms"}])
    m = PkvmExperiment(exp.variants["default"])
    seen = {}

    def spy(gvm, c, ctr, orig=m.guests.reclaim_chunk):  # look at a's stage-2 before teardown
        if gvm.name == "a" and not seen:
            for ipa, level, pte in gvm.s2.leaves():
                seen[ipa] = D.decode(pte, level, 12).sw
        return orig(gvm, c, ctr)

    m.guests.reclaim_chunk = spy
    c = m.run()["counters"]
    half = 32 * MIB // PAGE
    assert c["share.pages"] == c["unshare.pages"] == half
    assert c["donate.pages"] == c["reclaim.pages"] == half + 2 * half
    assert c["isolation.violations"] == 0
    assert seen and all((sw == STATE_SHARED_BORROWED) == (ipa >= 32 * MIB)
                        for ipa, sw in seen.items())
    assert not (m.phys.owner & SHARED)[m.phys.owner != 255].any()  # nothing left shared
    assert c["hyp.pool.free_pages"] == c["hyp.pool.pages"]


def test_isolation_check_allows_a_shared_page_to_host_and_borrower_only():
    import numpy as np

    from simulator.mmu.batch import VcpuMMU
    from simulator.mmu.tlb import TLBHierarchy, TLBLevelSpec
    from simulator.mmu.walk import WalkCache

    hs2 = host(coalesce=False)
    base = GIB + 64 * MIB
    hs2.idmap(base)
    hs2.share_guest(base, PAGE)
    owner = np.zeros(GIB // PAGE, dtype=np.uint8)
    results = {}
    for me, rec in [(0, SHARED | 2), (2, SHARED | 2), (3, SHARED | 2), (3, 2), (0, 2)]:
        owner[(base - GIB) // PAGE] = rec
        tlb = TLBHierarchy([TLBLevelSpec("L1", 1, 2, 1, (3,))], 12)
        mmu = VcpuMMU(tlb, WalkCache(0), vmid=0)
        mmu.owner, mmu.owner_base, mmu.owner_id = owner, GIB, me
        mmu.run(hs2.s2, np.array([base + 8], dtype=np.uint64), np.zeros(1, dtype=np.uint8),
                0, 1, 1 << 40)
        results[(me, rec)] = mmu.counters()["isolation.violations"]
    assert results == {(0, SHARED | 2): 0, (2, SHARED | 2): 0, (3, SHARED | 2): 1,
                       (3, 2): 1, (0, 2): 1}


@pytest.mark.parametrize("tlbi,broken", [(True, False), (False, True)])
def test_skipping_the_teardown_tlbi_breaks_isolation(tmp_path, tlbi, broken):
    # Guest b reuses guest a's VMID on the same CPU. Memory starts 2 MiB past a 64 MiB
    # boundary: a (2 MiB chunks) gets the first pages, b (one 64 MiB chunk) the next 64 MiB
    # aligned run, so the same IPA maps to different pages. Without the teardown TLBI, a's
    # stale entries translate b's accesses to pages the host owns again.
    work = {"type": "uniform", "accesses": 3000, "footprint": "1MiB"}
    exp = pkvm_cfg(
        tmp_path, hyp__teardown_tlbi=tlbi,
        host={"cpus": 1, "memory": [{"base": 0, "size": "1GiB", "type": "mmio"},
                                     {"base": GIB + 2 * MIB, "size": "2GiB"}]},
        guests=[{"name": "a", "memory": "64MiB", "chunk": "2MiB", "workload": work,
                 "run": "1ms"},
                {"name": "b", "memory": "64MiB", "chunk": "64MiB", "workload": work,
                 "start": "40ms"}])
    c = run_config(exp.variants["default"])["counters"]
    assert c["guests.torn_down"] == 2
    assert (c["isolation.violations"] > 0) == broken


def test_host_access_to_a_page_it_does_not_own_aborts_and_never_succeeds(tmp_path):
    exp = pkvm_cfg(tmp_path, host__respect_ownership=False,
                   host__workload={"type": "uniform", "accesses": 20000, "footprint": "2GiB"})
    c = run_config(exp.variants["default"])["counters"]
    assert c["host.illegal_accesses"] > 0
    assert c["host.accesses"] + c["host.illegal_accesses"] == 2 * 20000
    assert c["isolation.violations"] == 0


def test_packed2_with_64k_pages_is_refused_at_validation(tmp_path):
    with pytest.raises(ConfigError, match="hyp.vmemmap_layout.*8193"):
        pkvm_cfg(tmp_path, machine__granule="64K", hyp__vmemmap_layout="packed2",
                 guests=[])


@pytest.mark.parametrize("layout,per_gib", [("legacy32", 8 * MIB), ("packed4", MIB),
                                            ("packed2", MIB // 2)])
def test_vmemmap_cost_per_gib_follows_the_layout(tmp_path, layout, per_gib):
    c = run_config(pkvm_cfg(tmp_path, hyp__vmemmap_layout=layout, guests=[]).variants[
        "default"])["counters"]
    assert c["hyp.vmemmap_bytes_per_gib"] == per_gib
    assert c["hyp.vmemmap_bytes"] == 2 * per_gib


# ------------------------------------------------------------------ property: ownership


from hypothesis import given, settings
from hypothesis import strategies as st

CHUNK = 2 * MIB
NCHUNKS = 16  # a 32 MiB window of host memory, inside one 1 GiB region
WINDOW = GIB + 256 * MIB


@st.composite
def ownership_steps(draw):
    steps = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["donate", "reclaim", "abort", "reclaim_part", "share",
                                     "unshare"]))
        steps.append((kind, draw(st.integers(0, NCHUNKS - 1)), draw(st.integers(0, 511))))
    return steps


@settings(max_examples=40, deadline=None)
@given(coalesce=st.booleans(), steps=ownership_steps())
def test_donate_reclaim_abort_sequences_keep_ownership_and_refcounts(coalesce, steps):
    """Reference: the owner of every page. After every step the host stage-2 must never map
    a page the host does not own, must annotate every donated page, and its refcounts must
    equal 1 + counted entries (check_invariants)."""
    hs2 = host(coalesce=coalesce)
    owner = {}  # page -> owner id, or "S" shared with a guest; absent = host
    for kind, c, p in steps:
        base = WINDOW + c * CHUNK
        if kind == "share" and all(owner.get(base + i * PAGE, 0) == 0 for i in range(512)):
            assert hs2.share_guest(base, CHUNK).ret == 0
            for i in range(512):
                owner[base + i * PAGE] = "S"
        elif kind == "unshare" and owner.get(base, 0) == "S":
            assert hs2.unshare_guest(base, CHUNK).ret == 0
            for i in range(512):
                owner.pop(base + i * PAGE)
        elif kind == "donate" and all(owner.get(base + i * PAGE, 0) == 0 for i in range(512)):
            hs2.set_owner(base, CHUNK, 2)
            for i in range(512):
                owner[base + i * PAGE] = 2
        elif kind == "reclaim" and any(owner.get(base + i * PAGE, 0) == 2 for i in range(512)):
            hs2.set_owner(base, CHUNK, OWNER_HOST)
            for i in range(512):
                owner.pop(base + i * PAGE, None)
        elif kind == "reclaim_part" and owner.get(base + p * PAGE, 0) == 2:
            hs2.set_owner(base + p * PAGE, PAGE, OWNER_HOST)
            owner.pop(base + p * PAGE)
        elif kind == "abort":
            pa = base + p * PAGE
            res = hs2.idmap(pa)
            if owner.get(pa, 0) == "S":
                assert res.ret == -11  # the host keeps a valid mapping of what it shares
            elif owner.get(pa, 0):
                assert res.ret == -1  # -EPERM: never mapped for the host
            else:
                assert res.ret in (0, -11)
                # the window mapped never covers a page someone else owns
                for q in range(res.start, res.start + res.size, PAGE):
                    if WINDOW <= q < WINDOW + NCHUNKS * CHUNK:
                        assert owner.get(q, 0) in (0, "S")
        assert hs2.s2.check_invariants() == []
        for c2 in range(NCHUNKS):
            for i in (0, p, 511):
                pa = WINDOW + c2 * CHUNK + i * PAGE
                pte, level = hs2.s2.get_leaf(pa)
                if owner.get(pa, 0) == "S":
                    d = D.decode(pte, level, 12)
                    assert (d.kind, level, d.sw, d.oa) == ("page", 3, STATE_SHARED_OWNED, pa)
                elif owner.get(pa, 0):
                    assert D.decode(pte, level, 12).kind == "invalid" and (pte >> 2) & 0xFF == 2
                elif pte & 1:
                    d = D.decode(pte, level, 12)
                    assert d.kind in ("page", "block") and d.sw == 0
                    assert d.oa + (pa & (hs2.geom.size(level) - 1)) == pa  # identity


def test_guest_fault_enomem_returns_to_the_guest_and_an_empty_pool_stops_with_an_error(tmp_path):
    from simulator.experiment import SimulationError

    # a hyp pool of 3 pages: the guest's pgd takes them, no table can ever be allocated
    exp = pkvm_cfg(tmp_path, hyp__pool_pages=3, guests=[
        {"name": "a", "memory": "8MiB", "workload": {"type": "uniform", "accesses": 10}}])
    with pytest.raises(SimulationError, match="hyp.pool_pages.*pool stays exhausted"):
        run_config(exp.variants["default"])


def test_balloon_relinquish_returns_pages_to_the_host_and_coalesces(tmp_path):
    exp = pkvm_cfg(tmp_path, guests=[
        {"name": "a", "memory": "64MiB", "vcpus": 1, "mapping": "2M", "run": "30ms",
         "workload": {"type": "uniform", "accesses": 2000000, "footprint": "32MiB"},
         "balloon": [{"at": "1ms", "size": "32MiB"}]}])
    c = run_config(exp.variants["default"])["counters"]
    assert c["balloon.pages"] == 32 * MIB // PAGE
    # the balloon's pages plus the rest at teardown: everything donated comes back once
    assert c["reclaim.pages"] == c["donate.pages"] == 64 * MIB // PAGE
    assert c["coalesce.tables_zapped"] > 0 and c["isolation.violations"] == 0


def test_guest_vcpus_take_turns_with_the_host_task_on_a_shared_cpu(tmp_path):
    """One CPU: the host task and the guest's vCPU never run at the same time, so the run
    lasts at least their translation time added up, and each waited for the other."""
    exp = pkvm_cfg(tmp_path, engine={"timeslice": "100us"},
                   host={"cpus": 1, "memory": [{"base": GIB, "size": "2GiB"}],
                         "workload": {"type": "uniform", "accesses": 3000000,
                                      "footprint": "2GiB"}},
                   guests=[{"name": "a", "memory": "64MiB", "vcpus": 1, "workload": {
                       "type": "uniform", "accesses": 200000, "footprint": "64MiB"}}])
    r = run_config(exp.variants["default"])
    c = r["counters"]
    assert r["sim_cycles"] >= c["host.cycles.translation"] + c["guest.a.cycles.translation"]
    assert c["host.sched.wait_cycles"] > 0 and c["guest.a.sched.wait_cycles"] > 0
    assert c["host.sched.slices"] > 1 and c["guest.a.sched.slices"] > 1


@pytest.mark.parametrize("pools", ["separate", "unified"])
def test_compiled_idmap_matches_the_plain_python_one(pools):
    """host_idmap_step (what the engine runs) against tests/reference's RefIdmap, report by
    report, on twin host stage-2s: MMIO gaps that exhaust the separate MMIO pool, memory
    owned by others, addresses anywhere (the gaps: find_mem_range())."""
    import random

    from reference.pkvm import RefIdmap

    def make():  # 64 KiB gaps between memory regions 2 MiB apart: MMIO page by page
        phys = HostPhys([Region(GIB, GIB, "memory")] +
                        [Region(64 * GIB + i * 2 * MIB + 64 * 1024, 2 * MIB - 64 * 1024,
                                "memory") for i in range(700)], 12)
        return HostStage2(phys, Geometry(12, 40), coalesce=True, pools=pools,
                          layout="packed4", on_bug="raise", fwb=False, tlbi_range=False)

    a, b = make(), make()
    ref = RefIdmap(b)
    for hs2 in (a, b):  # a guest's chunk: owner-annotated, then given back (coalesced)
        hs2.set_owner(GIB + 8 * MIB, 4 * MIB, 2)
    rng = random.Random(3)
    for k in range(3000):
        r = rng.random()
        if r < 0.5:  # the gaps in turn, so the separate MMIO pool runs dry
            addr = 64 * GIB + (k // 2 % 700) * 2 * MIB + rng.randrange(16) * PAGE
        elif r < 0.95:
            addr = GIB + rng.randrange(GIB // PAGE) * PAGE
        else:
            addr = rng.randrange(1 << 40)
        x, y = a.idmap(addr), ref(addr)
        assert (x.ret, x.start, x.size, x.recycled) == (y.ret, y.start, y.size, y.recycled)
        assert [(r.raw.tolist(), r.tlbis) for r in x.reports] == [
            (r.raw.tolist(), r.tlbis) for r in y.reports]
    assert (a.enomem, a.recycles, a.mmio_at_first_enomem, a.mmio_pages) == (
        ref.enomem, ref.recycles, ref.mmio_at_first_enomem, ref.mmio_pages)
    assert a.s2.leaf_counts() == b.s2.leaf_counts()
    assert a.s2.check_invariants() == []
    if pools == "separate":
        assert a.recycles > 0  # the recycling path ran


# ------------------------------------------------------------------ host_stage2_try()'s scope


def _starved(scope: str):
    """A unified host stage-2 pool with 300 MMIO gaps mapped (a level-3 table each), then
    every free page taken; a one-page memory region far from the rest needs new tables."""
    hole = 64 * 1024
    phys = HostPhys([Region(GIB, GIB, "memory"), Region(128 * GIB, 2 * PAGE, "memory")] +
                    [Region(64 * GIB + i * 2 * MIB + hole, 2 * MIB - hole, "memory")
                     for i in range(300)], 12)
    hs2 = HostStage2(phys, Geometry(12, 40), coalesce=False, pools="unified",
                     layout="packed4", on_bug="raise", fwb=False, tlbi_range=False,
                     try_scope=scope)
    for i in range(300):
        assert hs2.idmap(64 * GIB + i * 2 * MIB).ret == 0
    while hs2.mem_pool.alloc_pages(0) is not None:
        pass
    return hs2


@pytest.mark.parametrize("scope,ret,recycled", [("mmio", -12, False), ("idmap", 0, True),
                                                ("all", 0, True)])
def test_memory_abort_enomem_by_kernel(scope, ret, recycled):
    """5.13 recycles the MMIO mappings only for an MMIO abort: a memory abort's -ENOMEM
    stays (handle_host_mem_abort() BUGs); 5.14 on recycles for any abort and retries."""
    hs2 = _starved(scope)
    res = hs2.idmap(128 * GIB)
    assert (res.ret, res.recycled) == (ret, recycled)
    assert hs2.recycles == (1 if recycled else 0)


@pytest.mark.parametrize("scope,ret", [("idmap", -12), ("all", 0)])
def test_set_owner_enomem_goes_through_host_stage2_try_from_5_15(scope, ret):
    hs2 = _starved(scope)
    hs2.hw[HW_TRY] = TRY_ALL  # room again: recycle the 300 gaps
    assert hs2.idmap(128 * GIB).recycled
    hs2.hw[HW_TRY] = TRY_SCOPES[scope]
    for i in range(10):  # ten MMIO gaps again (a table each), then no free page
        assert hs2.idmap(64 * GIB + i * 2 * MIB).ret == 0
    while hs2.mem_pool.alloc_pages(0) is not None:
        pass
    rep = hs2.set_owner(GIB + 4 * MIB, PAGE, 2)  # annotations in unmapped space: new tables
    assert rep.ret == ret
    assert bool(hs2.recycle_reports) == (scope == "all")
