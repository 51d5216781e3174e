"""Time mechanisms: the memory throughput all CPUs share (machine.mem_gbps).

The cases are built so that the expected times follow by hand: every access hits the TLB
at no latency, costs 8 cycles and moves one 64-byte line, so each CPU asks for 8 bytes per
cycle; the memory system serves 16 bytes per cycle (32 GB/s at 2 GHz)."""

from __future__ import annotations

import pytest

from simulator.config import validate
from simulator.experiment import run_config

N = 10_000  # accesses per vCPU
ACCESS, LINE, RATE = 8, 64, 16  # cycles, bytes, bytes per cycle


def streaming(vcpus: int, gbps: float | None) -> dict:
    cfg = {"name": "bw", "seed": 1,
           "machine": {"granule": "4K", "ipa_bits": 40, "clock_ghz": 2.0, "mem_gbps": gbps},
           "guest": {"memory": "16MiB", "vcpus": vcpus, "mapping": "4K", "premap": True},
           "tlb": {"levels": [{"name": "l1", "sets": 8, "ways": 4, "latency": 0}]},
           "costs": {"access": ACCESS, "access_bytes": LINE, "walk_mem_ref": 0,
                     "walk_cache_hit": 0},
           "engine": {"quantum_cycles": 2000},
           "workload": {"type": "sequential", "accesses": N, "footprint": "4KiB",
                        "step": 64}}
    return run_config(validate(cfg, "test"))


@pytest.mark.parametrize("vcpus", [1, 2])
def test_cpus_within_the_bandwidth_run_as_without_it(vcpus):
    free, bound = streaming(vcpus, None), streaming(vcpus, 32.0)
    assert bound["sim_cycles"] == free["sim_cycles"] == N * ACCESS
    assert bound["counters"]["mem.stall_cycles"] == 0
    assert bound["counters"]["mem.bytes"] == vcpus * N * LINE
    assert "mem.bytes" not in free["counters"]  # no limit, no accounting


@pytest.mark.parametrize("vcpus", [4, 8])
def test_cpus_beyond_the_bandwidth_share_it(vcpus):
    """n CPUs asking 8n bytes per cycle of 16 take 8n/16 times as long: the run ends when
    the memory system has served every byte, having never idled."""
    r = streaming(vcpus, 32.0)
    assert r["sim_cycles"] == vcpus * N * LINE // RATE
    assert r["sim_cycles"] == N * ACCESS * (vcpus * (LINE // ACCESS)) // RATE
    # doubling the CPUs doubles the time: each one's streaming is slowed by the factor
    assert streaming(2 * vcpus, 32.0)["sim_cycles"] == 2 * r["sim_cycles"]
    # the quanta are served in turn: the CPUs finish one quantum's service apart
    quantum_service = 2000 // ACCESS * LINE // RATE
    ends = sorted(v["cycles"] for v in r["per_vcpu"])
    assert ends == [r["sim_cycles"] - quantum_service * k for k in range(vcpus - 1, -1, -1)]
    assert r["counters"]["mem.stall_cycles"] == sum(e - N * ACCESS for e in ends)


# ---- the host's first touch of guest memory (guest.populated: false) ------------------------
def first_touch(vcpus: int, populated: bool) -> dict:
    cfg = {"name": "ft", "seed": 1,
           "machine": {"granule": "4K", "ipa_bits": 40, "clock_ghz": 2.0, "fwb": True},
           "guest": {"memory": "4GiB", "vcpus": vcpus, "mapping": "largest",
                     "backing": "hugetlb_1g", "populated": populated},
           "costs": {"page_alloc": 1000, "zero_bytes_per_cycle": 16.0},
           "engine": {"mmu_lock": "exclusive"},
           "workload": {"type": "page_table_test"}}
    return run_config(validate(cfg, "test"))


def test_each_backing_page_is_zeroed_once_by_its_first_fault_and_the_others_wait():
    r = first_touch(3, False)
    c = r["counters"]
    per_page = 1000 + (1 << 30) // 16
    assert c["first_touch.pages"] == 4  # four 1 GiB pages, each by one vCPU
    assert c["first_touch.cycles"] == 4 * per_page
    assert c["stage.create.translation_faults"] == 3 * 4  # every vCPU faults on every block
    # the vCPUs run in step: the two that fault on a block behind its first toucher wait
    # for its zeroing; CREATE lasts at least the four zeroings one after another
    assert c["first_touch.wait_cycles"] > 0
    assert c["stage.create.cycles"] >= 4 * per_page
    populated = first_touch(3, True)
    assert "first_touch.pages" not in populated["counters"]
    assert populated["counters"]["stage.create.cycles"] < per_page
    assert {k: v for k, v in populated["counters"].items() if not k.endswith("cycles")
            and k != "cycles.translation"} == \
        {k: v for k, v in c.items() if not k.startswith("first_touch") and
         not k.endswith("cycles") and k != "cycles.translation"}


# ---- the lock's hand-off (costs.lock_handoff) -------------------------------------------------
def convoy(handoff: int) -> dict:
    """Four vCPUs fault on one page at once under the 5.11 spinlock: one maps it, three
    queue and find it mapped."""
    cfg = {"name": "ho", "seed": 1, "machine": {"granule": "4K", "ipa_bits": 40},
           "guest": {"memory": "16MiB", "vcpus": 4, "mapping": "4K"},
           "costs": {"lock_handoff": handoff}, "engine": {"mmu_lock": "exclusive"},
           "workload": {"type": "sequential", "accesses": 1, "footprint": "4KiB", "step": 8}}
    return run_config(validate(cfg, "test"))


def test_each_lock_hand_off_after_a_wait_lengthens_the_convoy_by_its_cost():
    free, slow = convoy(0), convoy(5000)
    assert slow["counters"]["lock.contended"] == free["counters"]["lock.contended"] == 3
    # the holders follow one another: every hand-off delays all that queue behind it
    assert slow["sim_cycles"] - free["sim_cycles"] == 3 * 5000
    assert slow["counters"]["lock_wait_cycles"] - free["counters"]["lock_wait_cycles"] == \
        (1 + 2) * 5000  # the second waiter waits one hand-off longer, the third two
