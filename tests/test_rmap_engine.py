"""The reverse map in the engine (kvm mode, ``hyp.rmap: pte_list``): the shared_frames workload
aliasing guest pages to host frames, the adds in the fault handler, the drop phase with both
of seed 004's strategies and in guest address order, hand-computed counts, and validation."""

from __future__ import annotations

import math

import pytest
import simpy
from cfgutil import apply_overrides

from simulator.arch import descriptors as D
from simulator.config import ConfigError, validate
from simulator.experiment import run_config
from simulator.hyp import rmap as R
from simulator.hyp.pgtable import translate
from simulator.kvm import KvmExperiment
from workloads import WorkloadError

PAGE = 4096
# the counters in which the two drop strategies may differ: the reverse map's own cost
STRATEGY_DEPENDENT = {"rmap.entry_moves", "rmap.restarts", "rmap.touches", "rmap.cycles",
                      "rmap.drop_cycles"}


def config(frames: int = 3, per_frame: int = 5, *, ext: int = 3, drop: str = "batch",
           drop_by: str = "frame", vcpus: int = 1, **over):
    data = {
        "name": "t",
        "seed": 3,
        "machine": {"granule": "4K", "ipa_bits": 40, "fwb": True},
        "guest": {"memory": "64MiB", "vcpus": vcpus, "mapping": "4K"},
        "hyp": {"rmap": "pte_list", "rmap_ext": ext, "rmap_drop": drop},
        "workload": {"type": "shared_frames", "frames": frames, "mappings_per_frame": per_frame,
                     "drop_by": drop_by},
    }
    apply_overrides(data, over)
    return validate(data, "test")


def counters(cfg) -> dict:
    return run_config(cfg)["counters"]


def descs(m: int, ext: int) -> int:
    """Descriptors of one frame's list of m sptes: none inline, else ceil(m / ext)."""
    return 0 if m < 2 else math.ceil(m / ext)


# ------------------------------------------------------------------------------------------
# hand counts


@pytest.mark.nojit
def test_hand_counts_one_by_one_3_frames_of_5_ext3():
    c = counters(config(drop="one_by_one"))
    # each frame: 5 sptes in a chain of 2 descriptors, [s4, s5] -> [s1, s2, s3]
    assert c["rmap.entries_added"] == c["rmap.entries_dropped"] == 15
    assert c["rmap.max_entries"] == 5
    assert c["rmap.desc_allocated"] == c["rmap.desc_freed"] == 6
    # adds per frame: 1 touch (head) for the first two, 2 (head, header) after: 8
    assert c["rmap.add_cycles"] == 3 * 8 * R.COST_TOUCH
    # one_by_one per spte: rmap_get_first 2 + pte_list_remove 3 + remove_entry 3 = 8 touches,
    # plus the last restart reading an empty head: 41 per frame
    assert c["rmap.touches"] == 3 * 41
    assert c["rmap.restarts"] == 15
    # slot 0 refilled from the head's last entry unless it is the last: 5 - 2 per frame
    assert c["rmap.entry_moves"] == 3 * 3
    assert c["rmap.cycles"] == 123 * R.COST_TOUCH + 6 * R.COST_FREE + 15 * R.COST_CLEAR == 1152


@pytest.mark.nojit
def test_hand_counts_batch_3_frames_of_5_ext3():
    c = counters(config(drop="batch"))
    assert c["rmap.entries_dropped"] == 15 and c["rmap.desc_freed"] == 6
    # head 1 + 2 headers + 5 slots per frame
    assert c["rmap.touches"] == 3 * 8
    assert c["rmap.restarts"] == 0 and c["rmap.entry_moves"] == 0
    assert c["rmap.cycles"] == 24 * R.COST_TOUCH + 6 * R.COST_FREE + 15 * R.COST_CLEAR == 756


@pytest.mark.nojit
def test_hand_counts_in_guest_address_order_3_frames_of_5_ext3():
    c = counters(config(drop_by="address"))
    # per frame, [s4, s5] -> [s1, s2, s3], removed s1 .. s5 (1 vCPU: address order is add
    # order). s1: head, B hdr, 2 slots, A hdr, 1 slot = 6, remove_entry 3 (s5 moved in);
    # s2: 6 + 3 (s4 moved in, B freed); s3: head, hdr, 3 slots = 5 + 3; s4: 4 + 3; s5: 3 + 3
    assert c["rmap.touches"] == 3 * (9 + 9 + 8 + 7 + 6)
    assert c["rmap.entry_moves"] == 3 * 2
    assert c["rmap.restarts"] == 0
    assert c["rmap.desc_freed"] == 6 and c["rmap.entries_dropped"] == 15
    assert c["rmap.cycles"] == 117 * R.COST_TOUCH + 6 * R.COST_FREE + 15 * R.COST_CLEAR


@pytest.mark.parametrize("frames, per_frame, ext", [(1, 1, 14), (4, 2, 14), (5, 14, 14),
                                                    (3, 15, 14), (2, 100, 14), (7, 33, 3),
                                                    (2, 29, 2)])
def test_counts_by_formula(frames, per_frame, ext):
    n = frames * per_frame
    d = descs(per_frame, ext)
    for drop in ("one_by_one", "batch"):
        c = counters(config(frames, per_frame, ext=ext, drop=drop, vcpus=2))
        assert c["rmap.entries_added"] == c["rmap.entries_dropped"] == n
        assert c["translation_faults"] == n
        assert c["rmap.desc_allocated"] == c["rmap.desc_freed"] == frames * d
        assert c["rmap.max_entries"] == per_frame
        if drop == "one_by_one":
            assert c["rmap.restarts"] == n
            assert c["rmap.entry_moves"] == frames * (per_frame - d if d else 0)
            per = 3 if per_frame == 1 else 8 * per_frame + 1
        else:
            assert c["rmap.restarts"] == c["rmap.entry_moves"] == 0
            per = 1 if per_frame == 1 else 1 + d + per_frame
        assert c["rmap.touches"] == frames * per
        assert c["rmap.cycles"] == (c["rmap.touches"] * R.COST_TOUCH + frames * d * R.COST_FREE
                                    + n * R.COST_CLEAR)
        # the drop phase: the reverse map, the stage-2 unmaps, one lock round trip
        assert c["rmap.drop_cycles"] == c["rmap.cycles"] + c["rmap.unmap_cycles"] + 50
        assert c["mappings.l3"] == 0


# ------------------------------------------------------------------------------------------
# both strategies, same end


def test_both_strategies_leave_the_same_state_and_counters():
    runs = {}
    for drop in ("one_by_one", "batch"):
        m = KvmExperiment(config(6, 40, ext=14, drop=drop, vcpus=3))
        res = m.run()
        rm = m.rmap.rmap
        assert not rm.head.any() and not rm.leaf.any()
        assert rm.check_invariants() == []
        assert rm.descs_in_use == 0
        assert m.vm.s2.check_invariants() == []
        assert m.vm.s2.leaf_counts() == {0: 0, 1: 0, 2: 0, 3: 0}
        runs[drop] = (res, sorted(rm.free_list()), m.ptmem.pages_in_use)
    (a, fa, pa), (b, fb, pb) = runs["one_by_one"], runs["batch"]
    assert fa == fb and pa == pb
    ca, cb = a["counters"], b["counters"]
    assert ca.keys() == cb.keys()
    differ = {k for k in ca if ca[k] != cb[k]}
    assert differ == STRATEGY_DEPENDENT
    assert ca["rmap.cycles"] > cb["rmap.cycles"]
    assert a["per_vcpu"] == b["per_vcpu"]  # the vCPUs' run is the same: only the drop differs
    assert a["sim_cycles"] - b["sim_cycles"] == ca["rmap.cycles"] - cb["rmap.cycles"]


def test_by_address_ends_the_same_and_costs_more():
    base = counters(config(4, 30, ext=14))
    addr = counters(config(4, 30, ext=14, drop_by="address"))
    for k in ("rmap.entries_dropped", "rmap.desc_freed", "rmap.unmap_cycles", "tlbi.ops",
              "pgtable.pages_in_use", "mappings.l3"):
        assert base[k] == addr[k], k
    assert addr["rmap.touches"] > base["rmap.touches"]


def test_deterministic():
    cfg = config(5, 20, ext=14, drop="one_by_one", vcpus=2)
    a, b = run_config(cfg), run_config(cfg)
    assert a["counters"] == b["counters"] and a["sim_cycles"] == b["sim_cycles"]


# ------------------------------------------------------------------------------------------
# the guest's layout and the adds


def test_guest_pages_alias_their_frames_before_the_drop():
    frames, per_frame = 5, 7
    m = KvmExperiment(config(frames, per_frame, ext=3, vcpus=2, workload__start="1MiB"))
    procs = m.start()
    vcpus, drop = procs[:-1], procs[-1]
    env = m.m.env
    env.run(until=simpy.AllOf(env, vcpus))
    rm = m.rmap.rmap
    assert rm.check_invariants() == []
    assert sorted(rm.count(f) for f in range(frames)) == [per_frame] * frames
    base = m.cfg.guest.pa_base + (1 << 20)
    for p in range(frames * per_frame):
        status, level, pte, _ = translate(m.vm.s2, (1 << 20) + p * PAGE)
        assert level == 3 and D.is_valid(pte)
        assert D.pte_to_phys(pte, 12) == base + (p % frames) * PAGE
        # the spte of guest page p is on the rmap of the frame that page maps
        spte = m.rmap.prmap.spte((1 << 20) + p * PAGE)
        assert spte in rm.entries(m.rmap.prmap.frame_of_page(0, base + (p % frames) * PAGE))
    env.run(until=drop)
    assert not rm.head.any()
    for p in range(frames * per_frame):
        assert translate(m.vm.s2, (1 << 20) + p * PAGE)[2] == 0


def test_other_workloads_give_each_page_a_list_of_one():
    cfg = validate({
        "guest": {"memory": "64MiB", "vcpus": 2},
        "hyp": {"rmap": "pte_list", "rmap_drop": "one_by_one"},
        "workload": {"type": "uniform", "accesses": 3000, "footprint": "4MiB"},
    }, "test")
    c = counters(cfg)
    # a fault another vCPU resolved first (-EAGAIN) adds nothing
    assert c["faults.spurious"] > 0
    assert c["rmap.entries_added"] == c["rmap.entries_dropped"] == (
        c["translation_faults"] - c["faults.spurious"])
    assert c["rmap.max_entries"] == 1
    assert c["rmap.desc_allocated"] == c["rmap.desc_freed"] == 0
    assert c["rmap.restarts"] == c["rmap.entries_dropped"]
    assert c["mappings.l3"] == 0


def test_without_rmap_no_rmap_counters():
    cfg = validate({"guest": {"memory": "64MiB"},
                    "workload": {"type": "uniform", "accesses": 100}}, "test")
    assert not any(k.startswith("rmap.") for k in counters(cfg))


def test_cost_defaults_are_the_models():
    c = validate({"workload": {"type": "uniform", "accesses": 1}}, "t").costs
    assert (c.rmap_touch, c.rmap_desc_free, c.rmap_clear) == (R.COST_TOUCH, R.COST_FREE,
                                                              R.COST_CLEAR)
    assert validate({"workload": {"type": "uniform", "accesses": 1}}, "t").hyp.rmap_ext == \
        R.PTE_LIST_EXT


def test_costs_are_configurable():
    c = counters(config(3, 5, drop="batch", costs={"rmap_touch": 1, "rmap_desc_free": 0,
                                                   "rmap_clear": 0}))
    assert c["rmap.cycles"] == c["rmap.touches"] == 24


# ------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("over, field, text", [
    ({"guest": {"memory": "64MiB", "mapping": "2M"}}, "hyp.rmap", "page mappings only"),
    ({"guest": {"memory": "64MiB", "mapping": "largest", "backing": "thp"}}, "hyp.rmap",
     "page mappings only"),
    ({"guest": {"memory": "64MiB", "premap": True}}, "hyp.rmap", "premap"),
    ({"hyp": {"rmap": "none"}}, "hyp.rmap", "set hyp.rmap: pte_list"),
    ({"workload": {"type": "shared_frames", "frames": 2, "mappings_per_frame": 2,
                   "page": "16K"}}, "workload.page", "not the 4K page size"),
    ({"workload": {"type": "phases", "phases": [
        {"type": "shared_frames", "frames": 2, "mappings_per_frame": 2}]}}, "workload",
     "top-level workload of kvm mode only"),
    ({"hyp": {"rmap": "pte_list", "rmap_ext": 1}}, "hyp.rmap_ext", "greater than or equal"),
    ({"hyp": {"rmap": "pte_list", "rmap_drop": "fast"}}, "hyp.rmap_drop", "one_by_one"),
])
def test_validation(over, field, text):
    data = {"guest": {"memory": "64MiB"}, "hyp": {"rmap": "pte_list"},
            "workload": {"type": "shared_frames", "frames": 2, "mappings_per_frame": 3}}
    data.update(over)
    with pytest.raises(ConfigError) as e:
        validate(data, "src")
    assert e.value.field == field
    assert text in e.value.message


def test_rmap_is_refused_with_the_page_table_test_workload():
    with pytest.raises(ConfigError, match="page_table_test"):
        validate({"guest": {"memory": "64MiB"}, "hyp": {"rmap": "pte_list"},
                  "workload": {"type": "page_table_test"}}, "src")


def test_rmap_is_refused_in_pkvm_mode():
    with pytest.raises(ConfigError, match="kvm mode only"):
        validate({"hyp": {"mode": "pkvm", "rmap": "pte_list"}}, "src")


def test_shared_frames_beyond_guest_memory():
    cfg = config(1024, 20)  # 80 MiB of pages in a 64 MiB guest
    with pytest.raises(WorkloadError, match="beyond the guest memory"):
        run_config(cfg)
