"""The jitted vCPU loop against the SimPy engine it mirrors: the same experiment run by both
gives the same counters, per vCPU and in total, the same simulated time and the same
per-stage figures, across every fault path (translation, permission, dirty logging's
forced pages, every rebuild strategy with its windows, TLB conflict aborts, both lock
models) and the same errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.config import ConfigError, validate
from simulator.engine import SimulationError, run_config
from tests.cfgutil import apply_overrides

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


def both(cfg: dict) -> tuple[dict, dict]:
    out = []
    for backend in ("simpy", "jit"):
        data = apply_overrides({**cfg, "engine": dict(cfg.get("engine", {}))},
                               {"engine__backend": backend})
        out.append(run_config(validate(data, "test")))
    return out[0], out[1]


def assert_same(a: dict, b: dict) -> None:
    assert a["counters"] == b["counters"]
    assert a["per_vcpu"] == b["per_vcpu"]
    assert a["sim_cycles"] == b["sim_cycles"]
    assert {k: v for k, v in a.items() if k.startswith("stage.")} == \
        {k: v for k, v in b.items() if k.startswith("stage.")}


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
    "ptt_ttrem0": (ptt(hyp__rebuild="ttrem", machine__bbm_level=0), "rebuild.blocks"),
    "ptt_ttrem1": (ptt(hyp__rebuild="ttrem", machine__bbm_level=1), "rebuild.blocks"),
    "ptt_ttrem2": (ptt(hyp__rebuild="ttrem", machine__bbm_level=2), "rebuild.blocks"),
    "ptt_eager_fwb_1g": (ptt(hyp__dirty_log={"split": "eager"}, machine__fwb=True,
                             guest__memory="2GiB", guest__backing="hugetlb_1g",
                             guest__vcpus=2),
                         "permission_faults"),
    "max_cycles": (base({"type": "uniform", "accesses": 50000, "footprint": "32MiB"},
                        engine__max_cycles=300000), "translation_faults"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_loop_matches_simpy_engine(name):
    cfg, witness = CASES[name]
    a, b = both(cfg)
    assert_same(a, b)
    # the comparison covers the path the case is for
    assert a["counters"].get(witness, 0) > 0, witness


def test_jit_loop_raises_the_same_error():
    # a real program's trace at its own addresses, far above 1 GiB of guest memory
    cfg = base({"type": "lackey", "path": str(DATA / "touch_pages.lackey.gz")},
               guest__vcpus=1)
    msgs = []
    for backend in ("simpy", "jit"):
        data = apply_overrides(dict(cfg), {"engine__backend": backend})
        with pytest.raises(SimulationError) as e:
            run_config(validate(data, "test"))
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    assert "outside guest memory" in msgs[0]


@pytest.mark.parametrize("over", [{"hyp__rmap": "pte_list"},
                                  {"hyp__dirty_log": {"enable_at": "1ms"}}])
def test_jit_backend_refuses_what_it_does_not_model(over):
    cfg = base({"type": "zipf", "accesses": 1000, "footprint": "8MiB"}, engine__backend="jit",
               **over)
    with pytest.raises((ConfigError, ValueError), match="engine.backend"):
        validate(cfg, "test")
