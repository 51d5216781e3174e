"""The compiled engine against the slow, obvious reference (tests/reference: a SimPy process
per context, the fault handler, rebuilds and pKVM written out in Python): the same
experiment run by both gives the same counters, per context and in total, the same
simulated time and the same per-stage figures, across every fault path (translation,
permission, dirty logging's forced pages and its timed agent, every rebuild strategy with its
windows, TLB conflict aborts, both lock models), pkvm (host aborts, guests created and torn
down on shared CPUs, balloon and re-donation, shared memory, MMIO recycling), the reverse
map, and the same errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.config import validate
from simulator.experiment import SimulationError, run_config
from tests.cfgutil import apply_overrides
from tests.reference.engine import SimulationError as RefSimulationError
from tests.reference.engine import run_config as reference_run

DATA = Path(__file__).parent / "data"


def base(workload: dict, **over) -> dict:
    cfg = {
        "name": "t",
        "seed": 5,
        "machine": {"granule": "4K", "ipa_bits": 40, "clock_ghz": 2.0},
        "guest": {"memory": "1GiB", "vcpus": 3, "mapping": "4K"},
        "tlb": {"levels": [{"name": "l1", "sets": 8, "ways": 4, "latency": 1},
                           {"name": "l2", "sets": 64, "ways": 8, "latency": 8}],
                "walk_cache": {"entries_per_level": 8}},
        "engine": {"quantum_cycles": 2000},
        "workload": workload,
    }
    return apply_overrides(cfg, over)


def ptt(**over) -> dict:
    """A small kvm_page_table_test: 64 MiB of 2 MiB (THP) blocks, 4 vCPUs."""
    cfg = base({"type": "page_table_test"}, guest__memory="64MiB", guest__vcpus=4,
               guest__mapping="largest", guest__backing="thp", machine__fwb=False)
    return apply_overrides(cfg, over)


def pkvm(**over) -> dict:
    """Two guests on two host CPUs over 2 GiB, the host touching memory and MMIO."""
    cfg = {
        "name": "pk",
        "seed": 3,
        "machine": {"granule": "4K", "ipa_bits": 40, "pa_bits": 40},
        "tlb": {"levels": [{"name": "l1", "sets": 8, "ways": 4, "latency": 1},
                           {"name": "l2", "sets": 64, "ways": 8, "latency": 8}]},
        "engine": {"quantum_cycles": 5000, "timeslice": "20us"},
        "hyp": {"mode": "pkvm", "coalesce": True},
        "host": {"cpus": 2, "memory": [{"base": 0, "size": "1GiB", "type": "mmio"},
                                        {"base": "1GiB", "size": "2GiB"}],
                 "workload": {"type": "uniform", "accesses": 6000, "footprint": "2GiB"}},
        "guests": [
            {"name": "a", "memory": "64MiB", "vcpus": 2, "mapping": "2M",
             "workload": {"type": "uniform", "accesses": 4000}, "run": "11ms"},
            {"name": "b", "memory": "64MiB", "vcpus": 2, "mapping": "4K",
             "workload": {"type": "sequential", "accesses": 3000, "step": 4096},
             "start": "100us"},
        ],
    }
    return apply_overrides(cfg, over)


def both(cfg: dict) -> tuple[dict, dict]:
    return reference_run(validate(cfg, "test")), run_config(validate(cfg, "test"))


def assert_same(a: dict, b: dict) -> None:
    assert a["counters"] == b["counters"]
    assert a["per_vcpu"] == b["per_vcpu"]
    assert a["sim_cycles"] == b["sim_cycles"]
    assert {k: v for k, v in a.items() if k.startswith("stage.")} == \
        {k: v for k, v in b.items() if k.startswith("stage.")}


FRAGMENTED = ([{"base": 0, "size": "1GiB", "type": "mmio"}, {"base": "1GiB", "size": "2GiB"}]
              + [{"base": (4 << 30) + i * (2 << 20) + 4096, "size": (2 << 20) - 4096}
                 for i in range(600)])

CASES = {
    "zipf_pages_shared_lock": (base({"type": "zipf", "accesses": 30000, "footprint": "64MiB"}),
                               "translation_faults"),
    "zipf_blocks_exclusive_lock": (base({"type": "zipf", "accesses": 30000,
                                         "footprint": "256MiB"},
                                        guest__mapping="2M", engine__mmu_lock="exclusive"),
                                   "lock.contended"),
    "lackey_fetches_perm_faults": (base({"type": "lackey",
                                         "path": str(DATA / "touch_pages.lackey.gz"),
                                         "instructions": True},
                                        guest__memory="256GiB", guest__vcpus=1),
                                   "fetches"),
    "drmemtrace_first_touch": (base({"type": "drmemtrace",
                                     "path": str(DATA / "drmemtrace" / "threadsig.aarch64")},
                                    guest__memory="4GiB", guest__vcpus=4,
                                    guest__placement="first_touch"),
                               "translation_faults"),
    "ptt_bbm": (ptt(hyp__rebuild="bbm"), "faults.in_window"),
    "ptt_bbm_exclusive": (ptt(hyp__rebuild="bbm", engine__mmu_lock="exclusive"),
                          "faults.spurious"),
    "ptt_install_first": (ptt(hyp__rebuild="install_first"), "rebuild.blocks"),
    "zipf_bandwidth_shared": (base({"type": "zipf", "accesses": 30000, "footprint": "64MiB"},
                                   machine__mem_gbps=20.0, costs__access=4,
                                   costs__access_bytes=64, costs__walk_ref_bytes=64),
                              "mem.stall_cycles"),
    "ptt_bandwidth": (ptt(hyp__rebuild="install_first", machine__mem_gbps=2.0,
                          costs__access=150, costs__access_bytes=64), "mem.stall_cycles"),
    "ptt_first_touch_hugetlb": (ptt(hyp__rebuild="bbm", guest__populated=False,
                                    guest__memory="2GiB", guest__backing="hugetlb_1g",
                                    guest__vcpus=3), "first_touch.wait_cycles"),
    "zipf_first_touch_anonymous": (base({"type": "zipf", "accesses": 30000,
                                         "footprint": "64MiB"}, guest__populated=False,
                                        guest__memslots=[{"base": 0, "size": "40MiB"},
                                                         {"base": "40MiB", "size": "24MiB"}]),
                                   "first_touch.pages"),
    "ptt_lock_handoff_anonymous": (ptt(hyp__rebuild="install_first", hyp__cmo_at="fault",
                                       engine__mmu_lock="exclusive", guest__backing="anonymous",
                                       guest__memory="8MiB", guest__populated=False,
                                       costs__lock_handoff=2000), "lock.contended"),
    "ptt_bbm_cmo_at_fault": (ptt(hyp__rebuild="bbm", hyp__cmo_at="fault",
                                 engine__mmu_lock="exclusive"), "cmo.bytes"),
    "ptt_install_first_cmo_at_fault": (ptt(hyp__rebuild="install_first", hyp__cmo_at="fault",
                                           engine__mmu_lock="exclusive"), "cmo.bytes"),
    "ptt_ttrem0": (ptt(hyp__rebuild="ttrem", machine__bbm_level=0), "rebuild.blocks"),
    "ptt_ttrem1": (ptt(hyp__rebuild="ttrem", machine__bbm_level=1), "rebuild.blocks"),
    "ptt_ttrem2": (ptt(hyp__rebuild="ttrem", machine__bbm_level=2), "rebuild.blocks"),
    "ptt_replace": (ptt(hyp__rebuild="replace", machine__bbm_level=2), "rebuild.blocks"),
    "ptt_eager_fwb_1g": (ptt(hyp__dirty_log={"split": "eager"}, machine__fwb=True,
                             guest__memory="2GiB", guest__backing="hugetlb_1g",
                             guest__vcpus=2),
                         "permission_faults"),
    "max_cycles": (base({"type": "uniform", "accesses": 50000, "footprint": "32MiB"},
                        engine__max_cycles=300000), "translation_faults"),
    "dirty_log_agent_lazy": (base({"type": "uniform", "accesses": 60000, "footprint": "64MiB",
                                   "write_ratio": 0.5},
                                  guest__mapping="2M", machine__fwb=True,
                                  hyp__dirty_log={"enable_at": "10us", "disable_at": "40us"}),
                             "dirty.pages"),
    "dirty_log_agent_eager_exclusive": (base({"type": "uniform", "accesses": 60000,
                                              "footprint": "64MiB", "write_ratio": 0.5},
                                             guest__mapping="2M", engine__mmu_lock="exclusive",
                                             machine__fwb=True,
                                             hyp__dirty_log={"enable_at": "10us",
                                                             "split": "eager"}),
                                        "dirty_log.start_cycles"),
    "rmap_one_by_one": (base({"type": "shared_frames", "frames": 6, "mappings_per_frame": 30},
                             guest__memory="64MiB", hyp__rmap="pte_list",
                             hyp__rmap_drop="one_by_one"), "rmap.restarts"),
    "rmap_by_address": (base({"type": "shared_frames", "frames": 4, "mappings_per_frame": 20,
                              "drop_by": "address"},
                             guest__memory="64MiB", hyp__rmap="pte_list"), "rmap.touches"),
    "rmap_v38_reverse": (base({"type": "shared_frames", "frames": 4, "mappings_per_frame": 20,
                               "drop_by": "reverse_address"},
                              guest__memory="64MiB", hyp__rmap="pte_list",
                              hyp__rmap_rules="v3.8", hyp__rmap_ext=3), "rmap.touches"),
    "rmap_ksm": (base({"type": "shared_frames", "frames": 4, "mappings_per_frame": 20,
                       "aliasing": "ksm"},
                      guest__memory="64MiB", hyp__rmap="pte_list",
                      hyp__rmap_drop="one_by_one"), "rmap.touches"),
    "pkvm_coalesce": (pkvm(), "coalesce.tables_zapped"),
    "pkvm_lock_handoff": (pkvm(costs__lock_handoff=700, engine__mmu_lock="exclusive"),
                          "host.lock_wait_cycles"),
    "pkvm_tiny": (pkvm(host__workload={"type": "uniform", "accesses": 300,
                                       "footprint": "2GiB"},
                       guests=[{"name": "a", "memory": "8MiB", "vcpus": 2, "mapping": "4K",
                                "workload": {"type": "uniform", "accesses": 300},
                                "balloon": [{"at": "100us", "size": "4MiB"}]}]),
                  "host.aborts"),
    "pkvm_exclusive_no_coalesce": (pkvm(hyp__coalesce=False, engine__mmu_lock="exclusive"),
                                   "host.aborts"),
    "pkvm_shared_memory": (pkvm(guests__0__shared="32MiB"), "share.pages"),
    "pkvm_balloon_redonation": (pkvm(guests__0__balloon=[{"at": "1ms", "size": "16MiB"}],
                                     guests__0__workload={"type": "uniform",
                                                          "accesses": 40000}),
                                "balloon.pages"),
    # MMIO is every gap between memory regions (find_mem_range()): 600 one-page windows, each
    # between two memory regions, are mapped page by page, each in its own level-3 table
    "pkvm_mmio_recycling": (pkvm(hyp__host_s2_pools="separate", host__address_space="mmio",
                                 host__memory=FRAGMENTED,
                                 host__mmio_windows={"base": "4GiB", "count": 600,
                                                     "size": "4KiB", "stride": "2MiB"},
                                 host__workload={"type": "stride", "accesses": 600,
                                                 "start": "1GiB", "stride": "4KiB"}),
                            "host.mmio_recycles"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_matches_the_reference(name):
    cfg, witness = CASES[name]
    a, b = both(cfg)
    assert_same(a, b)
    # the comparison covers the path the case is for
    assert a["counters"].get(witness, 0) > 0, witness


def test_engine_raises_the_same_error():
    # a real program's trace at its own addresses, far above 1 GiB of guest memory
    cfg = base({"type": "lackey", "path": str(DATA / "touch_pages.lackey.gz")},
               guest__vcpus=1)
    with pytest.raises(RefSimulationError) as ref:
        reference_run(validate(cfg, "test"))
    with pytest.raises(SimulationError) as got:
        run_config(validate(cfg, "test"))
    assert str(got.value) == str(ref.value)
    assert "outside guest memory" in str(got.value)


@pytest.mark.nojit
@pytest.mark.parametrize("name", ["max_cycles", "pkvm_tiny"])
def test_engine_matches_the_reference_small(name):
    """Run with NUMBA_DISABLE_JIT=1 too (make test-nojit): the engine as plain Python."""
    cfg, witness = CASES[name]
    a, b = both(cfg)
    assert_same(a, b)
    assert a["counters"].get(witness, 0) > 0, witness
