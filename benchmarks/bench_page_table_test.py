"""Host time of kvm_page_table_test at seed 003's size.

Runs ``configs/page_table_test.yaml`` (20 GiB of 1 GiB hugetlb blocks, the 5.11 spinlock)
for one variant at one vCPU count, ``--repeats`` times in fresh processes' worth of state
(each run builds its own machine; the compiled kernels come from numba's cache), and prints
the median host seconds, the simulated stage times and the fault rate. With ``--reference``
it runs the slow reference of tests/reference instead (a SimPy process per vCPU; only
sensible at reduced sizes: about 25 µs per fault; run from the repository root).

Usage: python benchmarks/bench_page_table_test.py [--vcpus 60] [--memory 20GiB]
       [--variant bbm|install_first] [--repeats 3] [--reference]
Not part of the test suite (no timing assertions anywhere).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import yaml

from simulator.config import apply_override, load_with_includes, validate
from simulator.experiment import run_config

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "page_table_test.yaml"


def config(vcpus: int, memory: str, variant: str):
    data = load_with_includes(CONFIG)
    over = data.pop("variants")[variant]
    data.pop("sweep", None)
    for key, value in {**over, "guest.vcpus": vcpus, "guest.memory": memory}.items():
        apply_override(data, key, value)
    return validate(data, str(CONFIG))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=60)
    ap.add_argument("--memory", default="20GiB")
    ap.add_argument("--variant", default="bbm", choices=("bbm", "install_first"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference", action="store_true",
                    help="run the slow reference of tests/reference")
    a = ap.parse_args()
    cfg = config(a.vcpus, a.memory, a.variant)
    run = run_config
    if a.reference:
        import sys

        sys.path.insert(0, str(CONFIG.parent.parent))
        from tests.reference.engine import run_config as run
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        res = run(cfg)
        times.append(time.perf_counter() - t)
    c = res["counters"]
    faults = c["translation_faults"] + c["permission_faults"]
    med = statistics.median(times)
    print(yaml.safe_dump({
        "case": f"{a.memory}, {a.vcpus} vCPUs, {a.variant}"
                f"{', reference' if a.reference else ''}",
        "host_seconds": [round(x, 1) for x in times],
        "host_seconds_median": round(med, 1),
        "faults": faults,
        "accesses": c["accesses"],
        "host_us_per_fault": round(med / faults * 1e6, 3),
        "stage_seconds": {k[6:-8]: round(v, 4) for k, v in res.items()
                          if k.startswith("stage.") and k.endswith("_seconds")},
    }, sort_keys=False), end="")


if __name__ == "__main__":
    main()
