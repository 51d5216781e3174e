"""End-to-end tests of `mmusim run` and `mmusim validate`: exact counters on hand-checkable
traces, the replay rule, the DynamoRIO sample, determinism, and the shape of results."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cfgutil import apply_overrides

from simulator.config import Experiment
from simulator.experiment import run_config

DATA = Path(__file__).parent / "data"

# A tiny lackey trace. Pages 0x1000, 0x2000, 0x3000 and 0x5000 are touched; the last line
# fetches from a page first mapped by a data access (so without X: a permission fault).
HAND_TRACE = """==1== Lackey, an example Valgrind tool
I  00400000,4
 L 00001000,8
 S 00001008,8
 M 00002000,4
 L 00001010,8
 L 00003000,8
 L 00005000,8
I  00005008,4
==1== done
"""


def write_config(tmp: Path, workload: dict, **over) -> Path:
    cfg = {
        "name": "t",
        "seed": 7,
        "machine": {"granule": "4K", "ipa_bits": 40, "clock_ghz": 2.0},
        "guest": {"memory": "1GiB", "vcpus": 1, "mapping": "4K"},
        "tlb": {"levels": [{"name": "l1", "sets": 4, "ways": 1, "latency": 1,
                            "page_sizes": ["4K"]}],
                "walk_cache": {"entries_per_level": 0}},
        "workload": workload,
    }
    apply_overrides(cfg, over)
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.nojit
def test_hand_trace_data_only_gives_exact_counters(tmp_path):
    (tmp_path / "hand.lackey").write_text(HAND_TRACE)
    cfg = write_config(tmp_path, {"type": "lackey", "path": "hand.lackey"})
    res = run_config(Experiment(cfg).variants["default"])
    c = res["counters"]
    # 6 data accesses: L 1000, S 1008, M 2000, L 1010, L 3000, L 5000
    assert (c["accesses"], c["reads"], c["writes"], c["fetches"]) == (6, 4, 2, 0)
    # 4 distinct pages, each faults once
    assert c["translation_faults"] == 4
    assert c["permission_faults"] == 0
    # l1 (4 sets x 1 way): every first touch misses twice (fault, replay); 1008 and 1010 hit
    assert c["tlb.l1.hits"] == 2
    assert c["tlb.l1.misses"] == 8
    assert c["walks"] == 8
    # IPA 40: levels 1..3. The first walk stops at the empty level-1 entry (1 reference);
    # every later walk reads 3 descriptors (faulting at level 3 or translating).
    assert c["walk.mem_refs"] == 1 + 7 * 3
    assert c["mappings.l3"] == 4 and c["mappings.l2"] == 0 and c["mappings.l1"] == 0
    # 2 concatenated pgd pages + one level-2 table + one level-3 table
    assert c["pgtable.pages_allocated"] == 4
    assert c["pgtable.pages_freed"] == 0
    assert c["tlbi.ops"] == 0
    assert c["xlate.l3"] == 6


@pytest.mark.nojit
def test_hand_trace_with_instructions_counts_the_permission_fault(tmp_path):
    (tmp_path / "hand.lackey").write_text(HAND_TRACE)
    cfg = write_config(tmp_path, {"type": "lackey", "path": "hand.lackey", "instructions": True})
    c = run_config(Experiment(cfg).variants["default"])["counters"]
    assert (c["accesses"], c["reads"], c["writes"], c["fetches"]) == (8, 4, 2, 2)
    # pages 0x400000, 0x1000, 0x2000, 0x3000, 0x5000
    assert c["translation_faults"] == 5
    # the fetch from 0x5008: page mapped XN by the read of 0x5000 -> relax permissions
    assert c["permission_faults"] == 1
    assert c["mappings.l3"] == 5


def test_replay_rule_faults_equal_distinct_pages(tmp_path):
    trace = gzip.open(DATA / "touch_pages.lackey.gz", "rt").read()
    pages = set()
    for line in trace.splitlines():
        if line[:1] == " " and line[1:2] in "LSM":
            pages.add(int(line[3:].split(",")[0], 16) >> 12)
    cfg = write_config(tmp_path, {"type": "lackey", "path": str(DATA / "touch_pages.lackey.gz")},
                       guest__memory="256GiB", tlb__levels=[
                           {"name": "l1", "sets": 8, "ways": 8, "latency": 1},
                           {"name": "l2", "sets": 64, "ways": 8, "latency": 8}])
    c = run_config(Experiment(cfg).variants["default"])["counters"]
    assert c["translation_faults"] == len(pages)
    assert c["mappings.l3"] == len(pages)
    # every access counted once, every lookup (the replays' included) counted
    assert c["tlb.l1.hits"] + c["tlb.l1.misses"] == c["accesses"] + c["translation_faults"]


def test_drmemtrace_sample_gives_per_vcpu_access_counts(tmp_path):
    from workloads.drmemtrace import find_thread_files

    sample = DATA / "drmemtrace" / "threadsig.aarch64"
    threads = find_thread_files(sample)
    vcpus = 4
    expected = []
    for t in threads[:vcpus]:
        spec_counts = 0
        import workloads.drmemtrace as dr
        for addr, kind in dr.iter_thread(t, instructions=False):
            spec_counts += len(addr)
        expected.append(spec_counts)
    cfg = write_config(tmp_path, {"type": "drmemtrace", "path": str(sample)},
                       guest__memory="4GiB", guest__vcpus=vcpus, guest__placement="first_touch")
    res = run_config(Experiment(cfg).variants["default"])
    got = [v["accesses"] for v in res["per_vcpu"]]
    assert got == expected
    assert all(n > 0 for n in got)


def test_same_seed_same_counters_byte_for_byte(tmp_path):
    cfg = write_config(tmp_path, {"type": "zipf", "accesses": 20000, "footprint": "64MiB"},
                       guest__vcpus=3)
    out1, out2 = tmp_path / "a", tmp_path / "b"
    for out in (out1, out2):
        r = run_cli("run", str(cfg), "--out", str(out), "--quiet")
        assert r.returncode == 0, r.stderr
    a = json.loads((out1 / "results.json").read_text())["variants"]["default"]
    b = json.loads((out2 / "results.json").read_text())["variants"]["default"]
    assert json.dumps(a["counters"]) == json.dumps(b["counters"])
    assert a["per_vcpu"] == b["per_vcpu"] and a["sim_cycles"] == b["sim_cycles"]


def test_results_files_have_the_documented_shape(tmp_path):
    cfg = write_config(tmp_path, {"type": "uniform", "accesses": 5000, "footprint": "16MiB"})
    out = tmp_path / "out"
    r = run_cli("run", str(cfg), "--out", str(out), "--set", "guest.vcpus=2", "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"name", "seed", "config", "variants"}
    assert res["config"]["guest"]["vcpus"] == 2
    v = res["variants"]["default"]
    assert {"counters", "per_vcpu", "sim_cycles", "sim_seconds", "host_seconds"} <= set(v)
    assert len(v["per_vcpu"]) == 2
    for key in ("accesses", "reads", "writes", "fetches", "tlb.l1.hits", "tlb.l1.misses",
                "walks", "walk.mem_refs", "walk_cache.hits", "translation_faults",
                "permission_faults", "fault_cycles", "lock_wait_cycles", "tlbi.ops",
                "tlbi.entries", "pgtable.pages_allocated", "pgtable.pages_freed",
                "mappings.l1", "mappings.l2", "mappings.l3"):
        assert key in v["counters"], key
    assert v["counters"]["accesses"] == sum(p["accesses"] for p in v["per_vcpu"]) == 10000
    assert v["sim_seconds"] == pytest.approx(v["sim_cycles"] / 2.0e9)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["variant", "sim_cycles", "sim_seconds", "host_seconds"]


def test_variants_run_from_the_same_seed(tmp_path):
    cfg = write_config(tmp_path, {"type": "zipf", "accesses": 20000, "footprint": "256MiB"},
                       variants={"small": {"guest.mapping": "4K"},
                                 "big": {"guest.mapping": "2M"},
                                 "small_again": {"guest.mapping": "4K"}})
    exp = Experiment(cfg)
    res = {n: run_config(c)["counters"] for n, c in exp.variants.items()}
    assert res["small"] == res["small_again"]
    assert res["big"]["translation_faults"] < res["small"]["translation_faults"]
    assert res["big"]["mappings.l2"] > 0 and res["big"]["mappings.l3"] == 0


def test_premap_maps_everything_before_time_zero(tmp_path):
    cfg = write_config(tmp_path, {"type": "uniform", "accesses": 3000, "footprint": "8MiB"},
                       guest__memory="8MiB", guest__premap=True, guest__mapping="2M")
    c = run_config(Experiment(cfg).variants["default"])["counters"]
    assert c["translation_faults"] == 0
    assert c["mappings.l2"] == 4


def test_a_1tib_guest_touching_few_pages_costs_what_a_1gib_one_does(tmp_path):
    work = {"type": "uniform", "accesses": 4000, "footprint": "8MiB"}
    small = run_config(Experiment(write_config(tmp_path, work)).variants["default"])
    big = run_config(Experiment(write_config(tmp_path, work, guest__memory="1TiB",
                                             machine__ipa_bits=44)).variants["default"])
    assert big["counters"]["translation_faults"] == small["counters"]["translation_faults"]
    assert big["counters"]["pgtable.pages_in_use"] <= small["counters"]["pgtable.pages_in_use"] + 1
    assert big["host_bytes"] <= small["host_bytes"] * 1.5


def test_exclusive_lock_makes_concurrent_faults_wait(tmp_path):
    work = {"type": "uniform", "accesses": 3000, "footprint": "64MiB"}
    shared = run_config(Experiment(write_config(tmp_path, work, guest__vcpus=4)).variants["default"])
    excl = run_config(Experiment(write_config(
        tmp_path, work, guest__vcpus=4, engine__mmu_lock="exclusive")).variants["default"])
    assert shared["counters"]["lock_wait_cycles"] == 0
    assert excl["counters"]["lock_wait_cycles"] > 0
    assert excl["sim_cycles"] > shared["sim_cycles"]


def test_npy_workload_addresses_are_used_as_ipas(tmp_path):
    addrs = np.array([0x1000, 0x1008, 0x200000, 0x1000], dtype=np.uint64)
    np.save(tmp_path / "a.npy", addrs)
    cfg = write_config(tmp_path, {"type": "npy", "path": "a.npy"})
    c = run_config(Experiment(cfg).variants["default"])["counters"]
    assert c["accesses"] == 4 and c["translation_faults"] == 2


def test_validate_reports_ok_and_variants(tmp_path):
    cfg = write_config(tmp_path, {"type": "zipf", "accesses": 10},
                       variants={"a": {"guest.vcpus": 2}, "b": {"guest.mapping": "2M"}})
    r = run_cli("validate", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "2 variant(s): a, b" in r.stdout


@pytest.mark.parametrize("config", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_bundled_config_validates(config):
    r = run_cli("validate", str(config))
    assert r.returncode == 0, r.stderr


@pytest.mark.nojit
def test_split_instruction_and_data_tlbs_see_only_their_accesses(tmp_path):
    (tmp_path / "hand.lackey").write_text(HAND_TRACE)
    levels = [{"name": "l1i", "sets": 2, "ways": 2, "serves": "instruction"},
              {"name": "l1d", "sets": 4, "ways": 2, "serves": "data"},
              {"name": "l2", "sets": 16, "ways": 4}]
    cfg = write_config(tmp_path, {"type": "lackey", "path": "hand.lackey", "instructions": True},
                       tlb__levels=levels)
    c = run_config(Experiment(cfg).variants["default"])["counters"]
    # fetches: 0x400000 (fault, replay), 0x5008 (permission fault, replay) -> 4 lookups, and
    # l1i never holds anything they look for
    assert (c["tlb.l1i.hits"], c["tlb.l1i.misses"]) == (0, 4)
    # data: 6 accesses, 4 of which fault once -> 10 lookups
    assert c["tlb.l1d.hits"] + c["tlb.l1d.misses"] == 10
    assert c["tlb.l1d.hits"] == 2  # 0x1008 and 0x1010
    # the fetch from 0x5008 hits the l2 entry the read of 0x5000 filled and faults on its X
    # bit; relaxing the permission invalidates that entry, so the replay walks again
    assert c["tlb.l2.hits"] == 1
    assert c["permission_faults"] == 1 and c["translation_faults"] == 5
