"""Dirty logging and block rebuild strategies (seeds 001 and 003), TLB conflict aborts, and
the kvm_page_table_test workload."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from cfgutil import apply_overrides

from simulator.arch import descriptors as D
from simulator.arch.geometry import Geometry
from simulator.config import Experiment
from simulator.experiment import run_config
from simulator.hyp import pgtable as P
from simulator.hyp.pgtable import PageTableMemory, Stage2
from simulator.kvm import KvmExperiment
from simulator.mmu.batch import B_FAULT, FR_STATUS, READ, VcpuMMU
from simulator.mmu.tlb import TLBHierarchy, TLBLevelSpec
from simulator.mmu.walk import W_CONFLICT, WalkCache
from workloads.stream import Stream

PAGE = 4096
MIB = 1 << 20
PA = 0x8000_0000


def stage2() -> Stage2:
    return Stage2(PageTableMemory(12, 1 << 40), Geometry(12, 40), vmid=1)


@pytest.mark.parametrize("steps", [
    ("break", "free", "install"),      # bbm
    ("break", "install", "free"),      # install_first / ttrem level 0
    ("replace_nt", "flush", "replace", "free"),  # ttrem levels 1 and 2
    ("replace", "flush", "free"),      # replace (level 2 without nT)
])
def test_split_then_rebuild_gives_back_the_original_mapping_and_every_table_page(steps):
    s2 = stage2()
    s2.map(2 * MIB, 2 * MIB, PA, D.PROT_RW)
    before = s2.leaves()
    in_use = s2.mem.pages_in_use
    assert s2.split(2 * MIB, 2 * MIB).ret == 0
    assert s2.leaf_counts()[3] == 512 and s2.mem.pages_in_use == in_use + 1
    row, idx, old = s2.locate(2 * MIB, 2)
    child = s2.mem.row_of(int(D.pte_to_phys(D.U(old), 12)))
    new = s2.block_pte(2 * MIB, 2, PA, D.PROT_RW)
    for st in steps:
        if st == "break":
            rep = s2.entry_step(P.STEP_BREAK, row, idx, 2, 2 * MIB)
            assert rep.tlbi_vmid == 1
        elif st == "install":
            s2.entry_step(P.STEP_INSTALL, row, idx, 2, 2 * MIB, new=new)
        elif st == "replace_nt":
            s2.entry_step(P.STEP_REPLACE, row, idx, 2, 2 * MIB, new=new | int(D.NT))
            assert s2.get_leaf(2 * MIB + 5 * PAGE)[0] & int(D.NT)
        elif st == "replace":
            s2.entry_step(P.STEP_REPLACE, row, idx, 2, 2 * MIB, new=new)
        elif st == "flush":
            assert s2.entry_step(P.STEP_FLUSH_VMID, row, idx, 2, 2 * MIB).tlbi_vmid == 1
        else:
            rep = s2.entry_step(P.STEP_FREE, row, idx, 2, 2 * MIB, child=child)
            assert rep.tables_freed == 1 and rep.warnings == 0
    assert s2.leaves() == before
    assert s2.mem.pages_in_use == in_use
    assert s2.check_invariants() == []


def mmu_with(sizes=(2, 3), conflict=1) -> VcpuMMU:
    tlb = TLBHierarchy([TLBLevelSpec("L1", 4, 4, 1, sizes)], 12)
    return VcpuMMU(tlb, WalkCache(0), costs={"conflict_check": conflict})


def run(mmu, s2, *addrs):
    a = np.array(addrs, dtype=np.uint64)
    return mmu.run(s2, a, np.full(len(a), READ, dtype=np.uint8), 0, len(a), 1 << 40)


def replace_pages_by_block(s2):
    row, idx, old = s2.locate(0, 2)
    s2.entry_step(P.STEP_REPLACE, row, idx, 2, 0, new=s2.block_pte(0, 2, PA, D.PROT_RW))


@pytest.mark.parametrize("held_page,conflict", [(True, True), (False, False)])
def test_bbm_level2_conflict_exactly_when_the_tlb_holds_overlapping_sizes(held_page, conflict):
    s2 = stage2()
    s2.map(0, 2 * MIB, PA, D.PROT_RW, force_pte=True)
    mmu = mmu_with()
    if held_page:
        assert run(mmu, s2, 0x3000)[2] == 0  # a 4K entry for page 3
    replace_pages_by_block(s2)  # TTRem level 2: no invalidation before the TLBI
    assert run(mmu, s2, 0x10000)[2] == 0  # a miss: the walk finds the block, a 2M entry
    i, _, status = run(mmu, s2, 0x3008)
    assert (status == B_FAULT and mmu.fault[FR_STATUS] == W_CONFLICT) == conflict
    if not conflict:
        assert i == 1


def test_without_the_check_overlapping_entries_are_not_reported():
    s2 = stage2()
    s2.map(0, 2 * MIB, PA, D.PROT_RW, force_pte=True)
    mmu = mmu_with(conflict=0)
    run(mmu, s2, 0x3000)
    replace_pages_by_block(s2)
    run(mmu, s2, 0x10000)
    assert run(mmu, s2, 0x3008)[2] == 0


# ------------------------------------------------------------------------------- engine


def experiment(tmp_path, **over) -> Experiment:
    cfg = {"name": "rb", "seed": 1,
           "machine": {"granule": "4K", "ipa_bits": 40, "pa_bits": 48},
           "guest": {"memory": "8MiB", "vcpus": 2, "mapping": "largest", "backing": "thp"},
           "engine": {"mmu_lock": "exclusive"},
           "workload": {"type": "page_table_test"}}
    apply_overrides(cfg, over)
    path = tmp_path / "rb.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Experiment(path)


@pytest.mark.parametrize("rebuild,level", [("bbm", 0), ("install_first", 0), ("ttrem", 0),
                                           ("ttrem", 1), ("ttrem", 2), ("replace", 2)])
def test_page_table_test_stages_split_and_rebuild_every_block(tmp_path, rebuild, level):
    exp = experiment(tmp_path, hyp__rebuild=rebuild, machine__bbm_level=level)
    r = run_config(exp.variants["default"])
    c = r["counters"]
    blocks = 4  # 8 MiB of 2 MiB blocks
    assert c["stage.create.translation_faults"] >= blocks
    # UPDATE: the write to the first page breaks each block; then the second half's pages
    # are mapped one by one (each vCPU faults on each, the later ones find it mapped)
    assert c["dirty.pages"] == blocks
    assert c["stage.update.permission_faults"] + c["stage.update.translation_faults"] >= \
        blocks * (1 + 256)
    # ADJUST: one rebuild per block, back to four 2 MiB blocks and the original tables
    assert c["rebuild.blocks"] == c["stage.adjust.rebuild.blocks"] == blocks
    assert (c["mappings.l2"], c["mappings.l3"]) == (blocks, 0)
    assert c["pgtable.pages_in_use"] == 1 + 1 + 1  # pgd, level-1 and level-2 tables
    assert c["stage.adjust.cmo.bytes"] == (blocks * 2 * MIB if rebuild == "bbm" else 0)
    assert all(f"stage.{s}_seconds" in r for s in ("create", "update", "adjust"))
    assert r["stage.adjust_seconds"] > 0


@pytest.mark.parametrize("rebuild", ["bbm", "install_first"])
def test_cmo_at_fault_cleans_per_faulting_vcpu_and_install_per_installed_leaf(tmp_path,
                                                                               rebuild):
    """hyp.cmo_at: fault (5.11's user_mem_abort()) cleans the mapping size on every
    translation fault, before the map, whether or not another vCPU installed the leaf
    already; install (5.14 on) cleans in the walker, once per leaf it installs."""
    blocks, block, page = 4, 2 * MIB, 4096
    c = {}
    for at in ("install", "fault"):
        exp = experiment(tmp_path, hyp__rebuild=rebuild, hyp__cmo_at=at, guest__vcpus=3,
                         engine__mmu_lock="exclusive")
        c[at] = run_config(exp.variants["default"])["counters"]
    f, i = c["fault"], c["install"]
    assert f["translation_faults"] == i["translation_faults"]  # the same faults, other costs
    # fault: each vCPU cleans each block it faults on (CREATE, ADJUST) and each page it
    # faults on in UPDATE; the UPDATE permission faults that split the blocks clean nothing
    assert f["stage.create.translation_faults"] == 3 * blocks
    assert f["stage.create.cmo.bytes"] == 3 * blocks * block
    assert f["stage.update.cmo.bytes"] == f["stage.update.translation_faults"] * page
    assert f["stage.update.translation_faults"] == 3 * blocks * 256
    assert f["stage.adjust.cmo.bytes"] == f["stage.adjust.translation_faults"] * block
    # install: each block once when created and (bbm) once when rebuilt; in UPDATE each
    # page installed once (256 per block) and the page that split each block
    assert i["stage.create.cmo.bytes"] == blocks * block
    assert i["stage.update.cmo.bytes"] == blocks * (256 + 1) * page
    assert i["stage.adjust.cmo.bytes"] == (blocks * block if rebuild == "bbm" else 0)


def test_ttrem_level_2_runs_seed_001s_nt_steps_and_replace_runs_without_nt():
    from simulator.hyp.rebuild import RB_REPLACE_NT, program

    assert list(program("ttrem", 2)) == list(program("ttrem", 1))
    assert RB_REPLACE_NT in program("ttrem", 2)
    assert RB_REPLACE_NT not in program("replace", 2)


def test_replace_needs_bbm_level_2(tmp_path):
    from simulator.config import ConfigError

    with pytest.raises(ConfigError, match="machine.bbm_level: 2"):
        experiment(tmp_path, hyp__rebuild="replace", machine__bbm_level=1)


def test_the_bbm_window_is_far_longer_than_installing_first(tmp_path):
    t = {}
    for rebuild in ("bbm", "install_first"):
        r = run_config(experiment(tmp_path, hyp__rebuild=rebuild).variants["default"])
        t[rebuild] = r["counters"]["rebuild.window_cycles"]
    # bbm: TLBI + subtree + CMO of 2 MiB at costs.cmo_bytes_per_cycle; install_first: the
    # break only
    from simulator.config import CostsConfig

    assert t["install_first"] == 4 * (400 + 4)  # the TLBI and the store that broke the entry
    assert t["bbm"] > 4 * (400 + 4 + int(2 * MIB / CostsConfig().cmo_bytes_per_cycle))


def window_run(tmp_path, rebuild: str) -> dict:
    """vCPU 0 reads page 1 of a 2 MiB region mapped by pages (all but page 1), which
    rebuilds the block; vCPU 1 keeps reading the region's second half meanwhile."""
    exp = experiment(tmp_path, hyp__rebuild=rebuild, guest__memory="4MiB",
                     workload={"type": "uniform", "accesses": 1})
    e = KvmExperiment(exp.variants["default"])
    vm = e.vm
    vm.s2.map(0, 2 * MIB, vm.pa_of(0), D.PROT_RW, force_pte=True)
    vm.s2.unmap(PAGE, PAGE)
    reads = np.arange(256, 512, dtype=np.uint64) * np.uint64(PAGE)
    addrs = [np.array([PAGE], dtype=np.uint64), np.tile(reads, 400)]
    for ctx, a in zip(vm.contexts, addrs):
        ctx.stream = Stream([(a, np.zeros(len(a), dtype=np.uint8))], 1 << 16)
    return e.run()["counters"]


def test_with_bbm_a_vcpu_touching_the_range_in_the_window_faults_and_not_with_install_first(
        tmp_path):
    bbm = window_run(tmp_path, "bbm")
    first = window_run(tmp_path, "install_first")
    assert bbm["rebuild.blocks"] == first["rebuild.blocks"] == 1
    assert bbm.get("faults.in_window", 0) >= 1, bbm
    assert first.get("faults.in_window", 0) == 0
    assert first["translation_faults"] == 1  # only vCPU 0's own fault
