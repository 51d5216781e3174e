"""Golden results: the small version of every experiment in configs/ must match its committed
baseline exactly, checked by `mmusim check --rtol 0`: the simulator is deterministic, so a
changed count or cycle figure is a changed model (the tolerance of `mmusim check --rtol` is for
users comparing across versions). Adding an experiment adds its baseline:
tests/baselines/<name>.set and <name>.json (tests/baselines/update.sh writes the latter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
BASE = ROOT / "tests" / "baselines"


def sets_of(name: str) -> list[str]:
    args = []
    for line in (BASE / f"{name}.set").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            args += ["--set", line]
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_experiment_matches_its_baseline(config, tmp_path):
    name = config.stem
    assert (BASE / f"{name}.set").exists(), f"configs/{name}.yaml has no tests/baselines/{name}.set"
    assert (BASE / f"{name}.json").exists(), f"configs/{name}.yaml has no baseline"
    run = subprocess.run([sys.executable, "-m", "simulator.cli", "run", str(config), "--out",
                          str(tmp_path), "--quiet", *sets_of(name)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    chk = subprocess.run([sys.executable, "-m", "simulator.cli", "check",
                          str(tmp_path / "results.json"), "--baseline",
                          str(BASE / f"{name}.json"), "--rtol", "0"], capture_output=True,
                         text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr
