"""`mmusim compare`, `mmusim sweep` and `mmusim check`."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from simulator.config import Experiment
from simulator.results import check, load_results, metrics
from simulator.sweep import derive_seed, expand, read_done, run_sweep

KNOWN = {
    "name": "known",
    "seed": 1,
    "config": {},
    "variants": {
        "before": {"counters": {"accesses": 1000, "tlb.l1.misses": 200, "tlb.l2.misses": 50,
                                "walks": 50, "translation_faults": 10, "cycles": 20000,
                                "xlate.l1": 0, "xlate.l2": 0, "xlate.l3": 1000,
                                "mappings.l1": 0, "mappings.l2": 0, "mappings.l3": 10},
                   "sim_cycles": 10000, "sim_seconds": 5e-06, "host_seconds": 0.1},
        "after": {"counters": {"accesses": 1000, "tlb.l1.misses": 100, "tlb.l2.misses": 25,
                               "walks": 25, "translation_faults": 2, "cycles": 15000,
                               "xlate.l1": 0, "xlate.l2": 750, "xlate.l3": 250,
                               "mappings.l1": 0, "mappings.l2": 1, "mappings.l3": 2},
                  "sim_cycles": 7500, "sim_seconds": 3.75e-06, "host_seconds": 0.1},
    },
}


def cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


@pytest.fixture
def known(tmp_path) -> Path:
    p = tmp_path / "known.json"
    p.write_text(json.dumps(KNOWN))
    return p


# --------------------------------------------------------------------------- compare


def test_metrics_of_a_known_variant():
    m = metrics(KNOWN["variants"]["after"])
    assert m["tlb.l1.mpka"] == 100.0 and m["tlb.l2.mpka"] == 25.0
    assert m["walks/access"] == 0.025
    assert m["cycles/access"] == 15.0
    assert (m["mix.l1"], m["mix.l2"], m["mix.l3"]) == (0.0, 0.75, 0.25)


def test_compare_prints_values_and_change_against_the_first(known):
    r = cli("compare", str(known))
    assert r.returncode == 0, r.stderr
    lines = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]]
             for ln in r.stdout.splitlines() if ln.count("│") >= 4}
    assert lines["tlb.l1.mpka"] == ["200", "100", "-100 (-50.0%)"]
    assert lines["translation_faults"] == ["10", "2", "-8 (-80.0%)"]
    assert lines["walks/access"] == ["0.05", "0.025", "-0.025 (-50.0%)"]
    assert lines["cycles/access"] == ["20", "15", "-5 (-25.0%)"]
    assert lines["mix.l2"] == ["0", "0.75", "0.75"]


def test_compare_chosen_counters(known):
    r = cli("compare", str(known), "--counters", "walks,tlb.l2.misses")
    assert r.returncode == 0, r.stderr
    rows = [ln.split("│")[1].strip() for ln in r.stdout.splitlines() if ln.count("│") >= 4]
    assert rows == ["walks", "tlb.l2.misses"]


def test_compare_two_files_variant_by_variant(known, tmp_path):
    other = copy.deepcopy(KNOWN)
    other["variants"]["before"]["counters"]["walks"] = 100
    b = tmp_path / "b.json"
    b.write_text(json.dumps(other))
    r = cli("compare", str(known), str(b), "--counters", "walks")
    assert r.returncode == 0, r.stderr
    assert "A:before" in r.stdout and "B:before" in r.stdout
    assert "+50 (+100.0%)" in r.stdout


def test_compare_writes_a_plot(known, tmp_path):
    png = tmp_path / "fig.png"
    r = cli("compare", str(known), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_compare_bad_file_is_an_error_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = cli("compare", str(bad))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "bad.json" in r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- check


def test_check_passes_on_identical_results(known):
    r = cli("check", str(known), "--baseline", str(known))
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_catches_a_one_fault_difference(known, tmp_path):
    res = copy.deepcopy(KNOWN)
    res["variants"]["after"]["counters"]["translation_faults"] += 1
    p = tmp_path / "r.json"
    p.write_text(json.dumps(res))
    r = cli("check", str(p), "--baseline", str(known))
    assert r.returncode == 1
    assert "translation_faults" in r.stdout and "after" in r.stdout
    assert [d.key for d in check(res, KNOWN, 0.02)] == ["translation_faults"]


def test_check_cycle_drift_past_rtol_fails_and_within_passes(known, tmp_path):
    res = copy.deepcopy(KNOWN)
    res["variants"]["before"]["sim_cycles"] = 10300  # +3 %
    res["variants"]["before"]["counters"]["cycles"] = 20100  # +0.5 %
    p = tmp_path / "r.json"
    p.write_text(json.dumps(res))
    r = cli("check", str(p), "--baseline", str(known))
    assert r.returncode == 1 and "sim_cycles" in r.stdout
    assert [d.key for d in check(res, KNOWN, 0.02)] == ["sim_cycles"]
    assert cli("check", str(p), "--baseline", str(known), "--rtol", "0.05").returncode == 0


def test_check_update_rewrites_the_baseline(known, tmp_path):
    res = copy.deepcopy(KNOWN)
    res["variants"]["after"]["counters"]["walks"] = 7
    p = tmp_path / "r.json"
    p.write_text(json.dumps(res))
    base = tmp_path / "base.json"
    assert cli("check", str(p), "--baseline", str(base), "--update").returncode == 0
    assert load_results(base)["variants"]["after"]["counters"]["walks"] == 7
    assert cli("check", str(p), "--baseline", str(base)).returncode == 0


# --------------------------------------------------------------------------- sweep

SWEEP = {
    "name": "sw",
    "seed": 5,
    "guest": {"memory": "256MiB", "vcpus": 1},
    "workload": {"type": "zipf", "accesses": 4000, "footprint": "64MiB"},
    "variants": {"small": {"guest.mapping": "4K"}, "big": {"guest.mapping": "2M"}},
    "sweep": {"tlb.levels.l2.sets": [32, 128], "guest.vcpus": [1, 2]},
}


@pytest.fixture
def sweep_cfg(tmp_path) -> Path:
    p = tmp_path / "sw.yaml"
    p.write_text(yaml.safe_dump(SWEEP))
    return p


def _by_key(path: Path) -> dict:
    """Records by (point, variant), as JSON text without the host's wall time."""
    out = {}
    for r in map(json.loads, path.read_text().splitlines()):
        r.pop("host_seconds")
        out[json.dumps([r["point"], r["variant"]], sort_keys=True)] = json.dumps(r, sort_keys=True)
    return out


def test_sweep_expands_points_times_variants_with_derived_seeds(sweep_cfg):
    tasks = expand(Experiment(sweep_cfg))
    assert len(tasks) == 2 * 2 * 2
    assert {t.variant for t in tasks} == {"small", "big"}
    seeds = {json.dumps(t.point, sort_keys=True): t.seed for t in tasks}
    assert len(set(seeds.values())) == 4
    for t in tasks:
        assert t.seed == derive_seed(5, t.point)
        assert t.config["tlb"]["levels"][1]["sets"] == t.point["tlb.levels.l2.sets"]
    assert derive_seed(5, {}) == 5


def test_sweep_serial_equals_parallel_byte_for_byte(sweep_cfg, tmp_path):
    exp = Experiment(sweep_cfg)
    run_sweep(exp, tmp_path / "serial", workers=1)
    run_sweep(exp, tmp_path / "parallel", workers=2)
    a = _by_key(tmp_path / "serial" / "results.jsonl")
    b = _by_key(tmp_path / "parallel" / "results.jsonl")
    assert len(a) == 8 and a == b
    assert (tmp_path / "serial" / "sweep.csv").read_text() == \
        (tmp_path / "parallel" / "sweep.csv").read_text()


def test_sweep_point_equals_a_plain_run_of_that_point(sweep_cfg, tmp_path):
    from simulator.experiment import run_config

    exp = Experiment(sweep_cfg)
    recs = run_sweep(exp, tmp_path / "s", workers=1)
    rec = recs[0]
    cfg = exp.variant_config(rec["variant"], rec["point"], rec["seed"])
    assert run_config(cfg)["counters"] == rec["counters"]


def test_sweep_on_a_local_dask_cluster_equals_serial(sweep_cfg, tmp_path):
    pytest.importorskip("dask.distributed")
    cfg = yaml.safe_load(sweep_cfg.read_text())
    cfg["sweep"]["guest.vcpus"] = [1]
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(cfg))
    exp = Experiment(one)
    run_sweep(exp, tmp_path / "serial", workers=1)
    run_sweep(exp, tmp_path / "dask", workers=2, backend="dask")
    assert _by_key(tmp_path / "serial" / "results.jsonl") == \
        _by_key(tmp_path / "dask" / "results.jsonl")


def test_resume_after_a_killed_sweep_runs_only_what_is_missing(sweep_cfg, tmp_path):
    out = tmp_path / "out"
    cfg = yaml.safe_load(sweep_cfg.read_text())
    cfg["workload"]["accesses"] = 60000
    cfg["sweep"]["guest.vcpus"] = [1, 2, 3]
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "sweep", str(slow),
                             "--out", str(out), "--workers", "1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(jsonl, "a") as f:
        f.write('{"point": {"torn')  # a line cut short by the kill
    done_before = read_done(jsonl)
    assert 2 <= len(done_before) < 12
    r = cli("sweep", str(slow), "--out", str(out), "--workers", "1", "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 12  # nothing run twice, nothing missing
    full = tmp_path / "full"
    assert cli("sweep", str(slow), "--out", str(full), "--workers", "2", "--quiet").returncode == 0
    assert _by_key(jsonl) == _by_key(full / "results.jsonl")


def test_sweep_bad_backend_and_bad_point(sweep_cfg, tmp_path):
    r = cli("sweep", str(sweep_cfg), "--backend", "mpi", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--backend" in r.stderr
    cfg = yaml.safe_load(sweep_cfg.read_text())
    cfg["sweep"] = {"guest.vcpus": [1, 0]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = cli("sweep", str(bad), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    assert "guest.vcpus" in r.stderr and "sweep point" in r.stderr
    assert "Traceback" not in r.stderr


def test_sweep_skips_invalid_points_only_when_asked(tmp_path):
    cfg = copy.deepcopy(SWEEP)
    cfg["sweep"] = {"guest.vcpus": [1, 0]}  # vcpus 0 is invalid
    cfg["variants"] = {}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(Exception, match="guest.vcpus"):
        expand(Experiment(p))
    cfg["sweep_skip_invalid"] = True
    p.write_text(yaml.safe_dump(cfg))
    recs = run_sweep(Experiment(p), tmp_path / "o", workers=1)
    assert [("skipped" in r) for r in recs] == [False, True]
    assert "guest.vcpus" in recs[1]["skipped"]
    assert len((tmp_path / "o" / "sweep.csv").read_text().splitlines()) == 2


def test_pkvm_results_compare_on_the_host_scope_and_name_guest_metrics():
    from simulator.results import metrics, values

    v = {"sim_seconds": 1.0, "sim_cycles": 100, "counters": {
        "host.accesses": 1000, "host.tlb.l1.misses": 100, "host.tlb.l2.misses": 10,
        "host.walks": 10, "host.aborts": 4, "host.xlate.l1": 500, "host.xlate.l3": 500,
        "host.cycles": 5000, "guest.vm1.accesses": 200, "guest.vm1.tlb.l2.misses": 50,
        "guest.vm1.tlb.l1.misses": 60, "guest.vm1.translation_faults": 7}}
    m = metrics(v)
    assert m["host.tlb.l2.mpka"] == 10.0 and m["host.walks/access"] == 0.01
    assert m["host.aborts"] == 4 and m["host.mix.l3"] == 0.5 and m["host.cycles/access"] == 5
    assert not any(k.startswith("guest.") for k in m)
    g = values(v, ["guest.vm1.tlb.l2.mpka", "guest.vm1.aborts"])
    assert g == {"guest.vm1.tlb.l2.mpka": 250.0, "guest.vm1.aborts": 7}


# --------------------------------------------------------------------------- compare a sweep


def test_compare_a_sweep_prints_a_row_per_point_and_variant_and_plots(sweep_cfg, tmp_path):
    run_sweep(Experiment(sweep_cfg), tmp_path / "s", workers=1)
    png = tmp_path / "sweep.png"
    r = cli("compare", str(tmp_path / "s"), "--counters", "walks,sim_cycles", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in r.stdout.splitlines()
            if ln.count("│") >= 4]
    # the swept keys in the order of the points (yaml.safe_dump sorted them), then the variant
    recs = {(str(x["point"]["guest.vcpus"]), str(x["point"]["tlb.levels.l2.sets"]),
             x["variant"]): x
            for x in map(json.loads, (tmp_path / "s" / "results.jsonl").read_text().splitlines())}
    assert len(rows) == len(recs) == 8
    for row in rows:
        assert row[3] == f"{recs[tuple(row[:3])]['counters']['walks']:,}"
    # sorted by point (numbers as numbers), then variant name
    assert [tuple(r[:3]) for r in rows] == [
        (str(v), str(s), name) for v in (1, 2) for s in (32, 128) for name in ("big", "small")]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    r2 = cli("compare", str(tmp_path / "s" / "results.jsonl"), "--counters", "walks,sim_cycles")
    assert r2.returncode == 0 and r2.stdout == r.stdout.split("plot in")[0]


def test_compare_sweep_errors(tmp_path, known):
    (tmp_path / "empty").mkdir()
    r = cli("compare", str(tmp_path / "empty"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "results.jsonl" in r.stderr
    (tmp_path / "empty" / "results.jsonl").write_text("")
    r = cli("compare", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no finished sweep point" in r.stderr
    r = cli("compare", str(tmp_path / "empty"), str(known))
    assert r.returncode == 2 and "one sweep" in r.stderr
