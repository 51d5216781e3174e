"""Host time per fault in every mode: kvm guest faults, pkvm guest faults, pkvm host aborts,
and kvm faults that add to x86's reverse map.

Each case is a run in which (almost) every access faults once: a vCPU, or the host CPU,
strides page by page over memory it has never touched. The time per fault is the run's host
seconds over its faults, so it includes the access itself, generating it, and everything
the run does once (building the machine, the reverse map's drop phase). Where a baseline
run differs only in its faults, the marginal time per fault is also given: (run - baseline)
/ (faults - baseline faults). The baseline of the kvm and pkvm guests is the same run
premapped (no faults); that of the host aborts the same machine with a sixteenth of the
windows touched.

Each run is repeated ``--repeats`` times (fresh machine, kernels from numba's cache after a
warm-up run) and the median is reported.

Usage: python benchmarks/bench_faults.py [--pages 131072] [--repeats 3] [--json FILE]
Not part of the test suite (no timing assertions anywhere).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import yaml

from simulator.config import validate
from simulator.experiment import run_config


def cases(pages: int) -> dict[str, dict]:
    mem = f"{(pages * 4) // 1024}MiB"
    stride = {"type": "stride", "accesses": pages, "stride": "4K", "footprint": mem}
    kvm = {"name": "kvm", "seed": 1, "machine": {"granule": "4K", "ipa_bits": 40},
           "guest": {"memory": mem, "vcpus": 1, "mapping": "4K"}, "workload": stride}
    pkvm_guest = {
        "name": "pkvm_guest", "seed": 1, "machine": {"granule": "4K", "ipa_bits": 40},
        "hyp": {"mode": "pkvm"},
        "host": {"cpus": 1, "memory": [{"base": "1GiB", "size": "4GiB", "type": "memory"}]},
        "guests": [{"name": "vm", "memory": mem, "vcpus": 1, "mapping": "4K", "start": 0,
                    "run": "10s", "workload": stride}],
    }
    # host aborts: the host strides over one-page MMIO windows, each a one-page gap between
    # two one-page memory regions, so every abort maps one page (MMIO is the gap between
    # memory regions, find_mem_range(); host_stage2_adjust_range() finds no block in it)
    windows = min(pages, 65536)
    gib8 = 8 << 30
    pkvm_host = {
        "name": "pkvm_host", "seed": 1, "machine": {"granule": "4K", "ipa_bits": 40},
        "hyp": {"mode": "pkvm"},
        "host": {"cpus": 1,
                 "memory": [{"base": "1GiB", "size": "4GiB", "type": "memory"}] + [
                     {"base": gib8 + i * 8192 + 4096, "size": 4096} for i in range(windows)],
                 "mmio_windows": {"base": "8GiB", "stride": "8K", "count": windows,
                                  "size": "4K"},
                 "address_space": "mmio",
                 "workload": {"type": "stride", "accesses": windows, "stride": "4K",
                              "footprint": f"{windows * 4}KiB"}},
    }
    rmap = {"name": "rmap", "seed": 1, "machine": {"granule": "4K", "ipa_bits": 40, "fwb": True},
            "guest": {"memory": mem, "vcpus": 1, "mapping": "4K"},
            "engine": {"mmu_lock": "exclusive"},
            "hyp": {"rmap": "pte_list", "rmap_ext": 14, "rmap_drop": "batch"},
            "workload": {"type": "shared_frames", "frames": 32,
                         "mappings_per_frame": pages // 32}}
    # the same machine, a sixteenth of the windows touched: the difference is the aborts
    few = {**pkvm_host["host"], "workload": {**pkvm_host["host"]["workload"],
                                             "accesses": windows // 16,
                                             "footprint": f"{windows * 4 // 16}KiB"}}
    return {
        "kvm": (kvm, {"guest": {**kvm["guest"], "premap": True}}),
        "pkvm_guest": (pkvm_guest, {"guests": [{**pkvm_guest["guests"][0], "premap": True}]}),
        "pkvm_host": (pkvm_host, {"host": few}),
        "rmap": (rmap, None),
    }


def faults_of(c: dict) -> int:
    return sum(v for k, v in c.items()
               if k.endswith(("translation_faults", "permission_faults")))


def timed(data: dict, repeats: int) -> tuple[float, dict]:
    cfg = validate(data, data["name"])
    run_config(cfg)  # warm-up: compile or load the kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = run_config(cfg)
        times.append(time.perf_counter() - t)
    return statistics.median(times), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=131072)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="kvm,pkvm_guest,pkvm_host,rmap")
    ap.add_argument("--json")
    a = ap.parse_args()
    out = {}
    for name, (data, premapped) in cases(a.pages).items():
        if name not in a.cases.split(","):
            continue
        t, res = timed(data, a.repeats)
        c = res["counters"]
        n = faults_of(c)
        row = {"faults": n, "accesses": sum(v for k, v in c.items() if k.endswith("accesses")
                                            and "skipped" not in k and "illegal" not in k),
               "host_seconds": round(t, 3), "us_per_fault": round(t / n * 1e6, 3)}
        if premapped is not None:
            t0, res0 = timed({**data, **premapped}, a.repeats)
            n0 = faults_of(res0["counters"])
            row["baseline_seconds"] = round(t0, 3)
            row["baseline_faults"] = n0
            row["marginal_us_per_fault"] = round((t - t0) / (n - n0) * 1e6, 3)
        out[name] = row
    print(yaml.safe_dump(out, sort_keys=False), end="")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
