"""Throughput of mmusim's batch kernel against the plain-C reference loop, side by side.

For each workload of shared/bench/README.md (zipf-like and sequential, 30 M uint64 addresses by
default; see workloads_bench.py for the generators and seeds) this

1. builds the C reference ``<repo>/../shared/bench/limit_tlb.c`` into ``benchmarks/data/limit``
   (``cc -O2``) -- the file is never copied into the repository;
2. builds the same model in mmusim: a 4 KiB-granule, 48-bit-IPA stage-2 (4 levels), identity
   mapped at page granularity over every page up to the highest address (untimed), TLB levels
   L1 8 sets x 8 ways and L2 64 x 8 holding 4K pages only, true LRU, no walk cache, all reads;
3. warms the JIT with a separate ``VcpuMMU`` on a short prefix, then alternates C and mmusim
   runs (``--repeats`` each). Every mmusim run is one ``VcpuMMU.run`` call over the whole array
   with an unlimited budget and cold (fresh) TLBs; only that call is timed. The C figure is the
   time the C program reports for its simulation loop (file read and premap excluded);
4. checks that the L1 misses, L2 misses and walk memory references are identical (exit status 1
   and a message otherwise), then prints the median accesses/s of each, the ratio mmusim / C
   and the host memory of the page-table memory.

Usage: .venv/bin/python benchmarks/bench_batch_kernel.py [--repeats N] [--accesses N]
       [--workloads zipf,seq] [--json FILE]
Not part of the test suite (no timing assertions anywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import workloads_bench as wb

REPO = Path(__file__).resolve().parent.parent
C_SOURCE = REPO.parent / "shared" / "bench" / "limit_tlb.c"
C_BINARY = wb.DATA_DIR / "limit"

PAGE_SHIFT = 12
IPA_BITS = 48
TABLE_BASE_PA = 1 << 40  # where the page-table pages live (any address outside the guest's)
WARMUP_ACCESSES = 10_000
BUDGET = 1 << 62
TARGET_RATIO = 0.5


class BenchError(Exception):
    """A failure worth a one-line message and a non-zero exit status."""


# ---- the C reference ------------------------------------------------------------------------

def build_c() -> Path:
    if not C_SOURCE.is_file():
        raise BenchError(
            f"C reference not found: {C_SOURCE}\n"
            "  (expected shared/bench/limit_tlb.c beside the repository: <repo>/../shared/bench/)")
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise BenchError(f"no C compiler: {cc!r} is not on PATH (set CC)")
    C_BINARY.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cc, "-O2", "-o", str(C_BINARY), str(C_SOURCE)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"building the C reference failed: {' '.join(cmd)}\n{r.stderr}")
    return C_BINARY


def run_c(binary: Path, trace: Path) -> dict:
    """One run of the C loop: its counts and the seconds it reports for the loop alone."""
    r = subprocess.run([str(binary), str(trace)], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"C reference failed on {trace} (exit {r.returncode}): {r.stderr.strip()}")
    f = r.stdout.split()
    if len(f) != 6:
        raise BenchError(f"unexpected C output: {r.stdout!r}")
    return {"accesses": int(f[0]), "l1_misses": int(f[1]), "l2_misses": int(f[2]),
            "walk_refs": int(f[3]), "seconds": float(f[4]), "checksum": int(f[5])}


# ---- mmusim ----------------------------------------------------------------------------------

def build_stage2(max_addr: int):
    """A 4K/48-bit stage-2 identity mapped with pages over [0, last page of max_addr]."""
    from simulator.arch import Geometry
    from simulator.hyp.pgtable import PageTableMemory, Stage2

    geom = Geometry(PAGE_SHIFT, IPA_BITS)
    if geom.levels != 4:
        raise BenchError(f"expected a 4-level stage-2, got {geom.levels} levels")
    mem = PageTableMemory(PAGE_SHIFT, TABLE_BASE_PA)
    s2 = Stage2(mem, geom)
    size = ((max_addr >> PAGE_SHIFT) + 1) << PAGE_SHIFT
    rep = s2.map(0, size, 0, force_pte=True)
    if rep.ret != 0:
        raise BenchError(f"premapping [0, {size:#x}) failed: ret {rep.ret}")
    if rep.mapped_bytes != size:
        raise BenchError(f"premapping mapped {rep.mapped_bytes:#x} bytes, wanted {size:#x}")
    return s2


def new_vcpu():
    from simulator.mmu import TLBHierarchy, TLBLevelSpec, WalkCache
    from simulator.mmu.batch import VcpuMMU

    tlb = TLBHierarchy([TLBLevelSpec("l1", 8, 8, 1, (3,)),
                        TLBLevelSpec("l2", 64, 8, 8, (3,))], PAGE_SHIFT)
    return VcpuMMU(tlb, WalkCache(0))


def run_mmusim(s2, addrs: np.ndarray, kinds: np.ndarray, n: int) -> dict:
    """One cold run of the whole array in a single VcpuMMU.run call; only that call is timed."""
    from simulator.mmu.batch import B_DONE

    vm = new_vcpu()
    t0 = time.perf_counter()
    nxt, _cycles, status = vm.run(s2, addrs, kinds, 0, n, BUDGET)
    dt = time.perf_counter() - t0
    c = vm.counters()
    if status != B_DONE or nxt != n:
        raise BenchError(f"mmusim stopped early: next {nxt} of {n}, status {status}, "
                         f"faults {c['translation_faults']}/{c['permission_faults']}/"
                         f"{c['access_flag_faults']} (translation/permission/AF)")
    return {"accesses": c["accesses"], "l1_misses": c["tlb.l1.misses"],
            "l2_misses": c["tlb.l2.misses"], "walk_refs": c["walk.mem_refs"],
            "walks": c["walks"], "seconds": dt}


def warm_up(s2, addrs: np.ndarray, kinds: np.ndarray) -> float:
    """Compile / load the kernel from numba's cache on a short prefix, with its own VcpuMMU."""
    m = min(WARMUP_ACCESSES, len(addrs))
    t0 = time.perf_counter()
    new_vcpu().run(s2, addrs, kinds, 0, m, BUDGET)
    return time.perf_counter() - t0


COUNT_KEYS = ("accesses", "l1_misses", "l2_misses", "walk_refs")


def check_counts(name: str, c_run: dict, m_run: dict, rep: int) -> None:
    bad = [k for k in COUNT_KEYS if c_run[k] != m_run[k]]
    if bad:
        lines = "\n".join(f"  {k:10s} C {c_run[k]:>12,}  mmusim {m_run[k]:>12,}" for k in COUNT_KEYS)
        raise BenchError(f"{name}: counts differ from the C reference (repeat {rep + 1}: "
                         f"{', '.join(bad)}):\n{lines}")


# ---- driver ----------------------------------------------------------------------------------

def bench_workload(name: str, n: int, repeats: int, binary: Path, log) -> dict:
    path = wb.ensure(name, n, log=log)
    addrs = np.load(path)  # fully in memory: no page faults inside the timed call
    kinds = np.zeros(n, dtype=np.uint8)  # all reads
    max_addr = int(addrs.max())
    t0 = time.perf_counter()
    s2 = build_stage2(max_addr)
    premap_s = time.perf_counter() - t0
    mem = s2.mem
    warm_s = warm_up(s2, addrs, kinds)
    log(f"{name}: {n:,} accesses, highest address {max_addr:#x}, premap {premap_s:.2f} s, "
        f"warm-up {warm_s:.2f} s")
    c_runs, m_runs = [], []
    for rep in range(repeats):
        c = run_c(binary, path)
        m = run_mmusim(s2, addrs, kinds, n)
        check_counts(name, c, m, rep)
        c_runs.append(c)
        m_runs.append(m)
        log(f"  repeat {rep + 1}/{repeats}: C {n / c['seconds'] / 1e6:7.2f} M/s   "
            f"mmusim {n / m['seconds'] / 1e6:7.2f} M/s")
    c_rates = [n / r["seconds"] for r in c_runs]
    m_rates = [n / r["seconds"] for r in m_runs]
    c_med, m_med = statistics.median(c_rates), statistics.median(m_rates)
    pair_ratios = [m / c for m, c in zip(m_rates, c_rates)]  # each mmusim run / the C run before it
    first = c_runs[0]
    return {
        "workload": name,
        "accesses": n,
        "file": str(path.relative_to(REPO)),
        "highest_address": max_addr,
        "counts": {
            "c": {k: first[k] for k in COUNT_KEYS},
            "mmusim": {k: m_runs[0][k] for k in COUNT_KEYS},
            "l1_miss_rate": first["l1_misses"] / n,
            "l2_miss_rate": first["l2_misses"] / n,
        },
        "c_rates": c_rates,
        "mmusim_rates": m_rates,
        "c_median": c_med,
        "mmusim_median": m_med,
        "ratio": m_med / c_med,
        "pair_ratios": pair_ratios,
        "pt_memory": {
            "pages_in_use": mem.pages_in_use,
            "bytes_in_use": mem.pages_in_use << PAGE_SHIFT,
            "capacity_pages": mem.capacity,
            "host_bytes": mem.nbytes(),
        },
        "premap_seconds": premap_s,
        "warmup_seconds": warm_s,
    }


def _git_state() -> str:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _simulator_digest() -> str:
    """sha256 (first 12 hex digits) of simulator/**/*.py: which kernel source was measured,
    also when the working tree is dirty."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((REPO / "simulator").rglob("*.py")):
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_table(results: list[dict]) -> None:
    print()
    hdr = (f"{'workload':9s} {'accesses':>11s} {'L1 miss':>7s} {'L2 miss':>7s} "
           f"{'C M acc/s':>10s} {'mmusim M acc/s':>14s} {'ratio':>6s}  {'>= 0.5':6s} {'pair ratios':>13s}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        cnt = r["counts"]
        ok = "yes" if r["ratio"] >= TARGET_RATIO else "no"
        print(f"{r['workload']:9s} {r['accesses']:>11,} {100 * cnt['l1_miss_rate']:6.1f}% "
              f"{100 * cnt['l2_miss_rate']:6.1f}% {r['c_median'] / 1e6:10.2f} "
              f"{r['mmusim_median'] / 1e6:14.2f} {r['ratio']:6.3f}  {ok:6s} "
              f"{min(r['pair_ratios']):5.2f}..{max(r['pair_ratios']):5.2f}")
    print()
    print("counts (identical in C and mmusim, checked on every repeat):")
    for r in results:
        c = r["counts"]["c"]
        print(f"  {r['workload']:5s} accesses {c['accesses']:,}  l1_misses {c['l1_misses']:,}  "
              f"l2_misses {c['l2_misses']:,}  walk_refs {c['walk_refs']:,}")
    print("page-table memory (mmusim PageTableMemory):")
    for r in results:
        p = r["pt_memory"]
        print(f"  {r['workload']:5s} {p['pages_in_use']:,} table pages in use "
              f"({p['bytes_in_use'] / 2**20:.1f} MiB), host arrays {p['host_bytes'] / 2**20:.1f} MiB "
              f"(capacity {p['capacity_pages']:,} pages)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs of each side (default 5)")
    ap.add_argument("--accesses", type=int, default=30_000_000,
                    help="accesses per workload (default 30 M)")
    ap.add_argument("--workloads", default="zipf,seq",
                    help="comma-separated subset of: " + ", ".join(wb.WORKLOADS))
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in names:
        if w not in wb.WORKLOADS:
            ap.error(f"unknown workload {w!r} (choose from {', '.join(wb.WORKLOADS)})")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.accesses < 1:
        ap.error("--accesses must be at least 1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    digest = _simulator_digest()  # before the kernel is imported (and compiled)
    try:
        binary = build_c()
        log(f"C reference: {C_SOURCE} -> {binary.relative_to(REPO)}")
        results = [bench_workload(w, args.accesses, args.repeats, binary, log) for w in names]
    except BenchError as e:
        print(f"bench_batch_kernel: {e}", file=sys.stderr)
        return 1
    print_table(results)
    all_ok = all(r["ratio"] >= TARGET_RATIO for r in results)
    print(f"target mmusim/C >= {TARGET_RATIO} on every workload: {'met' if all_ok else 'NOT met'}")
    print(f"(git {_git_state()}, simulator sources sha256 {digest}, "
          f"median of {args.repeats} alternating runs each)")
    if _simulator_digest() != digest:
        print("warning: simulator/ changed while this ran; the figures are of the sources as "
              "first imported", file=sys.stderr)
    if args.json is not None:
        import numba

        doc = {
            "benchmark": "bench_batch_kernel",
            "repeats": args.repeats,
            "target_ratio": TARGET_RATIO,
            "target_met": all_ok,
            "git": _git_state(),
            "simulator_sha256": digest,
            "host": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                     "python": platform.python_version(), "numpy": np.__version__,
                     "numba": numba.__version__},
            "seeds": {"zipf_rank": wb.ZIPF_SEED_RANK, "zipf_offset": wb.ZIPF_SEED_OFFSET,
                      "zipf_perm": wb.ZIPF_SEED_PERM},
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
