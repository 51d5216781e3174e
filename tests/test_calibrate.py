"""mmusim calibrate: it recovers constants from figures the simulator itself produced (a
round trip), keeps predicted points out of the fit, writes a preset that include: loads,
and refuses bad measurement files with one error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simulator.calibrate import calibrate, preset
from simulator.config import Experiment
from simulator.experiment import run_config

EXP = {
    "name": "cal", "seed": 3,
    "machine": {"granule": "4K", "ipa_bits": 40},
    "guest": {"memory": "256MiB", "vcpus": 1, "mapping": "4K", "premap": True},
    "tlb": {"levels": [{"name": "l1", "sets": 8, "ways": 4, "latency": 1}]},
    "workload": {"type": "uniform", "accesses": 20000, "footprint": "64KiB"},
    "variants": {"near": {}, "far": {"workload.footprint": "256MiB"}},
}
TRUE = ["costs.access=7", "costs.walk_mem_ref=55"]


def measured(tmp_path: Path, variant: str, extra: list[str] = ()) -> int:
    exp = Experiment(tmp_path / "exp.yaml", [*TRUE, *extra])
    return run_config(exp.variants[variant])["sim_cycles"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(EXP))
    points = [
        {"name": "near", "variant": "near", "measured": {"sim_cycles": measured(tmp_path, "near")}},
        {"name": "far", "variant": "far",
         "measured": {"sim_cycles": {"value": measured(tmp_path, "far"), "spread": 1000}}},
        {"name": "far-short", "variant": "far", "set": {"workload.accesses": 5000},
         "measured": {"sim_cycles": measured(tmp_path, "far", ["workload.accesses=5000"])},
         "fit": False, "source": "the simulator itself"},
    ]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"config": "exp.yaml", "points": points}))
    return tmp_path


def test_calibrate_recovers_the_constants_it_measured_with(files):
    ticks = []
    rep = calibrate(files / "m.yaml", ["costs.access", "costs.walk_mem_ref"],
                    tick=lambda done, total: ticks.append((done, total)))
    assert rep["start"] == {"costs.access": 1, "costs.walk_mem_ref": 40}  # the defaults
    # every run was ticked, each evaluation counting up to its own total
    assert len(ticks) == rep["runs"] and all(1 <= d <= t for d, t in ticks)
    assert rep["values"] == {"costs.access": 7, "costs.walk_mem_ref": 55}
    assert [p["ratio"] for p in rep["points"]] == [1.0, 1.0, 1.0]
    assert [p["fitted"] for p in rep["points"]] == [True, True, False]
    # the history only falls, and the predicted point was never run before the end
    costs = [h["cost"] for h in rep["history"]]
    assert costs == sorted(costs, reverse=True) and costs[-1] == 0.0


def test_the_preset_loads_through_include_and_reproduces_the_figures(files):
    rep = calibrate(files / "m.yaml", ["costs.access", "costs.walk_mem_ref"])
    (files / "preset.yaml").write_text(preset(rep))
    cfg = dict(EXP, include="preset.yaml")
    (files / "with.yaml").write_text(yaml.safe_dump(cfg))
    exp = Experiment(files / "with.yaml")
    assert exp.config.costs.access == 7 and exp.config.costs.walk_mem_ref == 55
    assert run_config(exp.variants["far"])["sim_cycles"] == measured(files, "far")
    # the including file's own keys win over the preset's
    (files / "own.yaml").write_text(yaml.safe_dump(dict(cfg, costs={"access": 3})))
    own = Experiment(files / "own.yaml").config.costs
    assert (own.access, own.walk_mem_ref) == (3, 55)


def test_without_fit_keys_it_only_compares(files):
    rep = calibrate(files / "m.yaml", [])
    assert rep["values"] == {} and rep["runs"] == 3
    assert all(p["ratio"] < 1 for p in rep["points"])  # default costs are cheaper


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "simulator.cli", "calibrate", *args],
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("edit,args,fragments", [
    (lambda m: m["points"][0].update(mesured={"x": 1}), [], ["m.yaml", "points[0].mesured",
                                                             "unknown key"]),
    (lambda m: m["points"][0].update(variant="nope"), [], ["points[0].variant", "nope"]),
    (lambda m: m["points"][0]["measured"].update(sim_cycles=-1), [], ["points[0].measured"]),
    (lambda m: m.update(config="missing.yaml"), [], ["m.yaml", "config", "missing.yaml"]),
    (lambda m: m["points"][0]["measured"].update(no_such=1.0), [],
     ["measured.no_such", "no such figure"]),
    (lambda m: None, ["--fit", "costs.nope"], ["--fit", "costs.nope"]),
    (lambda m: None, ["--fit", "costs.access", "--plot", "x.txt"], ["--plot", "x.txt"]),
    (lambda m: None, ["--fit", "costs.access", "--plot", "no/such/dir/p.png"],
     ["--plot", "no such directory"]),
    (lambda m: m["points"][0].update(set={"name": __import__("datetime").date(2021, 1, 1)}),
     [], ["m.yaml", "name", "valid string"]),
])
def test_bad_measurement_files_and_options_are_one_error_line(files, edit, args, fragments):
    m = yaml.safe_load((files / "m.yaml").read_text())
    edit(m)
    (files / "m.yaml").write_text(yaml.safe_dump(m))
    if "--fit" not in args:
        args = ["--fit", "costs.access", *args]
    r = cli(str(files / "m.yaml"), *args, "--out", str(files / "out"), "--workers", "1",
            "--quiet", cwd=files)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not (files / "out").exists()


def test_cli_writes_the_report_the_preset_and_the_plot(files):
    r = cli(str(files / "m.yaml"), "--fit", "costs.access,costs.walk_mem_ref", "--out",
            str(files / "out"), "--plot", str(files / "p.png"), "--workers", "2", "--quiet",
            cwd=files)
    assert r.returncode == 0, r.stderr
    assert "costs.access = 7" in r.stdout and "predicted" in r.stdout
    assert (files / "out" / "calibration.json").is_file()
    assert "access: 7" in (files / "out" / "preset.yaml").read_text()
    assert (files / "p.png").stat().st_size > 0


def test_include_errors_name_the_file(tmp_path):
    from simulator.config import ConfigError

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(dict(EXP, include="b.yaml")))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"include": "a.yaml"}))
    with pytest.raises(ConfigError, match="circle"):
        Experiment(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(dict(EXP, include="nope.yaml")))
    with pytest.raises(ConfigError, match="nope.yaml"):
        Experiment(tmp_path / "c.yaml")


def test_the_shipped_measurements_load_and_name_what_they_fit():
    from simulator.calibrate import load_measurements

    root = Path(__file__).parents[1]
    m, exp = load_measurements(root / "configs" / "measurements" / "kunpeng920-v5.11.yaml")
    fitted = {(p.name, k) for p in m.points for k in p.measured if p.fits(k)}
    assert fitted == {("after-20", "stage.adjust_seconds"), ("after-60", "stage.adjust_seconds"),
                      ("before-20", "stage.adjust_seconds"),
                      ("before-20", "stage.create_seconds"),
                      ("v5.11-anonymous-20", "stage.update_seconds")}
    assert len([1 for p in m.points for k in p.measured if not p.fits(k)]) == 6
    assert set(exp.variants) == {"bbm", "install_first"}
    # the experiment runs on the preset the calibration wrote
    assert exp.config.machine.mem_gbps == 38.04 and exp.config.costs.lock_handoff == 6860
