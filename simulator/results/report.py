"""Results: results.json / results.csv written atomically, and the summary table."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from simulator.results.metrics import scope, tlb_levels

# Counters shown in the summary table (when present), in this order.
SUMMARY = [
    "accesses",
    "translation_faults",
    "permission_faults",
    "walks",
    "walk.mem_refs",
    "walk_cache.hits",
    "tlbi.ops",
    "mappings.l1",
    "mappings.l2",
    "mappings.l3",
    "fault_cycles",
    "lock_wait_cycles",
]
# pkvm mode: the host's are the main counters ("host." + the above), and these
PKVM_SUMMARY = ["host.aborts", "host.illegal_accesses", "coalesce.tables_zapped",
                "donate.pages", "reclaim.pages", "share.pages", "guests.torn_down",
                "isolation.violations"]


def atomic_write_files(out: Path, files: dict[str, str]) -> None:
    """Write every file of ``files`` (name -> text) into ``out`` so that a reader sees all of
    them complete or none of the new ones: each is written to a temporary file in ``out``,
    then all are renamed into place."""
    out.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    tmps = []
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o666 & ~umask)
            tmps.append((tmp, out / name))
        for tmp, dest in tmps:
            os.replace(tmp, dest)
        tmps = []
    finally:
        for tmp, _ in tmps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def results_csv(results: dict) -> str:
    """One row per variant: name, timing figures, then every counter (union, sorted)."""
    keys = sorted({k for v in results["variants"].values() for k in v["counters"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "sim_cycles", "sim_seconds", "host_seconds", *keys])
    for name, v in results["variants"].items():
        w.writerow([name, v["sim_cycles"], repr(v["sim_seconds"]), v["host_seconds"],
                    *(v["counters"].get(k, "") for k in keys)])
    return buf.getvalue()


def write_results(out: Path, results: dict) -> None:
    atomic_write_files(out, {
        "results.json": json.dumps(results, indent=1, sort_keys=False) + "\n",
        "results.csv": results_csv(results),
    })


def summary_table(results: dict) -> Table:
    variants = results["variants"]
    table = Table(title=f"{results['name']} (seed {results['seed']})")
    table.add_column("counter")
    for name in variants:
        table.add_column(name, justify="right")
    first = next(iter(variants.values()))["counters"]
    p = scope(first)
    rows = [p + k for k in SUMMARY if p + k in first]
    for lvl in reversed(tlb_levels(first, p)):
        rows.insert(1, f"{p}tlb.{lvl}.misses")
    if p:
        rows += [k for k in PKVM_SUMMARY if k in first]
    for key in rows:
        table.add_row(key, *(f"{v['counters'].get(key, 0):,}" for v in variants.values()))
    table.add_row("misses/1k accesses (last level)", *(
        _mpki(v["counters"]) for v in variants.values()))
    table.add_row("sim seconds", *(f"{v['sim_seconds']:.6f}" for v in variants.values()))
    table.add_row("host seconds", *(f"{v['host_seconds']:.2f}" for v in variants.values()))
    return table


def _mpki(c: dict) -> str:
    p = scope(c)
    levels = tlb_levels(c, p)
    if not levels or not c.get(p + "accesses"):
        return "-"
    return f"{1000 * c[f'{p}tlb.{levels[-1]}.misses'] / c[p + 'accesses']:.2f}"


def print_summary(results: dict, console: Console | None = None) -> None:
    (console or Console()).print(summary_table(results))
