"""End to end: the whole ``mmusim run`` process against the whole plain-C process, side by side.

For each workload (zipf-like and sequential, 30 M uint64 addresses by default; see
workloads_bench.py) this

1. builds the C reference ``<repo>/../shared/bench/limit_tlb.c`` into ``benchmarks/data/limit``
   (``cc -O2``; the file is never copied into the repository);
2. writes ``benchmarks/data/e2e_<workload>_<N>.yaml``: a 4K-granule, 48-bit-IPA guest, one vCPU,
   guest memory covering every page up to the trace's highest address (the pages the C program
   maps), premapped with 4K pages; TLBs l1 8 sets x 8 ways, latency 1, and l2 64 x 8, latency
   8, both holding 4K entries only; no walk cache; workload ``npy`` on the trace;
3. runs ``.venv/bin/mmusim run CONFIG --quiet --out DIR`` once untimed (the warm-up: it fills
   numba's cache), then alternates the C process and the mmusim process ``--repeats`` times,
   timing each whole process (wall clock, from spawn to exit: start-up, imports, reading the
   trace, premapping, simulating, writing results);
4. checks that mmusim's ``tlb.l1.misses``, ``tlb.l2.misses``, ``walk.mem_refs`` and ``accesses``
   equal the C program's counts on every repeat (exit status 1 otherwise), and prints the
   median seconds of each side, the ratio C / mmusim of the medians, the range of the pair
   ratios, and the seconds each side spends in its simulation loop (the C program's own
   figure; mmusim's ``host_seconds``, the engine's run).

numba's cache: by default the mmusim runs use a cache directory of their own,
``benchmarks/data/numba_cache/<hash of simulator/**/*.py>``, so the figures are those of the
sources as they are (numba does not notice that a function called by a cached one changed:
the engine's cached loop would keep an old batch kernel) and the warm-up run shows the cold
compile time. ``--default-cache`` uses numba's default cache (``__pycache__``) instead.

``--breakdown`` also runs the zipf configuration once inside this process and reports where
mmusim's time goes: imports, numba's first-call set-up, building the machine, premapping, the
engine's compiled loop (``Machine._advance`` calls) and the chunk refills
(``Machine._refill``), with the engine's per-quantum figures.

Usage: .venv/bin/python benchmarks/bench_e2e.py [--repeats N] [--accesses N]
       [--workloads zipf,seq] [--default-cache] [--breakdown] [--json FILE]
Not part of the test suite (no timing assertions anywhere).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import workloads_bench as wb
from bench_batch_kernel import BenchError, build_c, run_c

REPO = Path(__file__).resolve().parent.parent
MMUSIM = REPO / ".venv" / "bin" / "mmusim"
PAGE = 4096
COUNTS = (("accesses", "accesses"), ("l1_misses", "tlb.l1.misses"),
          ("l2_misses", "tlb.l2.misses"), ("walk_refs", "walk.mem_refs"))

CONFIG = """\
# written by benchmarks/bench_e2e.py: the model of shared/bench/limit_tlb.c
name: e2e_{name}
seed: 1
machine: {{granule: 4K, ipa_bits: 48}}
guest: {{memory: {memory}, vcpus: 1, mapping: 4K, premap: true}}
tlb:
  levels:
    - {{name: l1, sets: 8, ways: 8, latency: 1, page_sizes: [4K]}}
    - {{name: l2, sets: 64, ways: 8, latency: 8, page_sizes: [4K]}}
  walk_cache: {{entries_per_level: 0}}
workload: {{type: npy, path: {path}}}
"""


def sources_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((REPO / "simulator").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def write_config(name: str, trace: Path, n: int) -> Path:
    a = np.load(trace, mmap_mode="r")
    top = int(a.max())
    memory = ((top // PAGE) + 1) * PAGE  # every page up to the highest address, as the C maps
    path = wb.DATA_DIR / f"e2e_{name}_{n}.yaml"
    path.write_text(CONFIG.format(name=name, memory=memory, path=trace))
    return path


def run_mmusim(config: Path, out: Path, env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run([str(MMUSIM), "run", str(config), "--quiet", "--out", str(out)],
                       capture_output=True, text=True, env=env, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError(f"mmusim run {config} failed (exit {r.returncode}): "
                         f"{r.stderr.strip()[-2000:]}")
    res = json.loads((out / "results.json").read_text())["variants"]["default"]
    return dt, res


def time_c(binary: Path, trace: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    c = run_c(binary, trace)
    return time.perf_counter() - t0, c


def check(name: str, c: dict, res: dict, rep: int) -> None:
    m = res["counters"]
    bad = [ck for ck, mk in COUNTS if c[ck] != m.get(mk)]
    if bad:
        lines = "\n".join(f"  {mk:14s} C {c[ck]:>12,}  mmusim {m.get(mk, 0):>12,}"
                          for ck, mk in COUNTS)
        raise BenchError(f"{name}: counts differ from the C reference (repeat {rep + 1}):\n{lines}")


def bench(name: str, n: int, repeats: int, binary: Path, env: dict, log) -> dict:
    trace = wb.ensure(name, n, log=log)
    config = write_config(name, trace, n)
    out = wb.DATA_DIR / f"e2e_out_{name}"
    warm_s, _ = run_mmusim(config, out, env)
    log(f"{name}: {n:,} accesses, config {config.relative_to(REPO)}; warm-up run {warm_s:.1f} s")
    c_s, m_s, c_loop, m_loop = [], [], [], []
    for rep in range(repeats):
        cs, c = time_c(binary, trace)
        ms, res = run_mmusim(config, out, env)
        check(name, c, res, rep)
        c_s.append(cs)
        m_s.append(ms)
        c_loop.append(c["seconds"])
        m_loop.append(res["host_seconds"])
        log(f"  repeat {rep + 1}/{repeats}: C {cs:6.2f} s (loop {c['seconds']:.2f})   "
            f"mmusim {ms:6.2f} s (engine run {res['host_seconds']:.2f})   "
            f"C/mmusim {cs / ms:.3f}")
    c_med, m_med = statistics.median(c_s), statistics.median(m_s)
    return {
        "workload": name, "accesses": n, "config": str(config.relative_to(REPO)),
        "warmup_seconds": warm_s,
        "c_seconds": c_s, "mmusim_seconds": m_s,
        "c_loop_seconds": c_loop, "mmusim_engine_seconds": m_loop,
        "c_median": c_med, "mmusim_median": m_med, "ratio": c_med / m_med,
        "pair_ratios": [c / m for c, m in zip(c_s, m_s)],
        "c_loop_median": statistics.median(c_loop),
        "mmusim_engine_median": statistics.median(m_loop),
        "counts": {ck: c[ck] for ck, _ in COUNTS},
    }


BREAKDOWN = r"""
import json, sys, time
t0 = time.perf_counter()
import simulator.cli  # noqa: F401  (what `mmusim` imports)
t_import = time.perf_counter()
from pathlib import Path
from simulator.config import Experiment
from simulator.kvm import KvmExperiment
import simulator.arch.descriptors as D
exp = Experiment(Path(sys.argv[1]), None)
cfg = next(iter(exp.variants.values()))
t_cfg = time.perf_counter()
D.prot_attr(D.PROT_R)  # the first jitted call of the process: numba's set-up
t_numba = time.perf_counter()
k = KvmExperiment(cfg)
t_build = time.perf_counter()
k.vm.premap()
t_premap = time.perf_counter()
m = k.m
procs = m.start(k.vm.contexts)
adv, ref = [], []
orig_adv, orig_ref = m._advance, m._refill
def timed_adv(h):
    t = time.perf_counter(); r = orig_adv(h); adv.append(time.perf_counter() - t); return r
def timed_ref(ctx):
    t = time.perf_counter(); orig_ref(ctx); ref.append(time.perf_counter() - t)
m._advance, m._refill = timed_adv, timed_ref
host = m.run(procs)
t_run = time.perf_counter()
res = k.results(host)
t_res = time.perf_counter()
c = res["counters"]
print(json.dumps({
    "imports": t_import - t0, "config": t_cfg - t_import, "numba_setup": t_numba - t_cfg,
    "build": t_build - t_numba, "premap": t_premap - t_build, "run": t_run - t_premap,
    "advance": sum(adv), "advance_calls": len(adv), "advance_first_call": adv[0] if adv else 0,
    "refill": sum(ref), "refills": len(ref), "results": t_res - t_run,
    "accesses": c["accesses"], "sim_cycles": res["sim_cycles"],
    "quantum_cycles": cfg.engine.quantum_cycles, "chunk": cfg.engine.chunk,
}))
"""


def breakdown(config: Path, env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", BREAKDOWN, str(config)], capture_output=True,
                       text=True, env=env, cwd=REPO, check=False)
    if r.returncode != 0:
        raise BenchError(f"breakdown failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--accesses", type=int, default=30_000_000)
    ap.add_argument("--workloads", default="zipf,seq")
    ap.add_argument("--default-cache", action="store_true",
                    help="use numba's default cache instead of one keyed by the sources")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the phases of one zipf run inside one process")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    names = [w for w in a.workloads.split(",") if w]
    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        if not MMUSIM.exists():
            raise BenchError(f"{MMUSIM} not found (make the virtualenv: `make test`)")
        binary = build_c()
        env = dict(os.environ)
        src = sources_hash()
        if not a.default_cache:
            env["NUMBA_CACHE_DIR"] = str(wb.DATA_DIR / "numba_cache" / src[:12])
        results = [bench(name, a.accesses, a.repeats, binary, env, log) for name in names]
        phases = None
        if a.breakdown:
            phases = breakdown(write_config("zipf", wb.ensure("zipf", a.accesses, log=log),
                                            a.accesses), env)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print(f"{'workload':10s} {'accesses':>12s} {'C s':>7s} {'mmusim s':>9s} {'C/mmusim':>9s} "
          f"{'pair ratios':>13s} {'C loop s':>9s} {'engine s':>9s} {'warm-up s':>9s}")
    for r in results:
        pr = r["pair_ratios"]
        print(f"{r['workload']:10s} {r['accesses']:>12,} {r['c_median']:7.2f} "
              f"{r['mmusim_median']:9.2f} {r['ratio']:9.3f} {min(pr):6.3f}..{max(pr):5.3f} "
              f"{r['c_loop_median']:9.2f} {r['mmusim_engine_median']:9.2f} "
              f"{r['warmup_seconds']:9.1f}")
    print("(medians of alternating runs; counts identical to the C program's on every repeat)")
    if phases:
        p = phases
        print("\nzipf, one run inside one process (seconds):")
        for k in ("imports", "config", "numba_setup", "build", "premap", "run", "results"):
            print(f"  {k:12s} {p[k]:7.3f}")
        print(f"    of the run: engine loop {p['advance']:.3f} s in {p['advance_calls']} calls "
              f"(first, loading it from numba's cache: {p['advance_first_call']:.3f} s), "
              f"refills {p['refill']:.3f} s ({p['refills']} chunks of {p['chunk']:,})")
        q = p["sim_cycles"] / p["quantum_cycles"]
        print(f"    about {q:,.0f} quanta of {p['quantum_cycles']:,} cycles "
              f"({p['accesses'] / q:,.0f} accesses each)")
    if a.json:
        a.json.write_text(json.dumps({
            "results": results, "breakdown": phases, "sources_sha256": src,
            "numba_cache": "default" if a.default_cache else env["NUMBA_CACHE_DIR"],
            "host": {"machine": platform.machine(), "processor": platform.processor(),
                     "python": platform.python_version(), "cpus": os.cpu_count()},
            "git": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                                  capture_output=True, text=True, check=False).stdout.strip(),
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
