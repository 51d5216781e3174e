"""The regression check of `mmusim check`: counters against a baseline, cycles within a
tolerance."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.table import Table

from simulator.results.compare import (
    _change,
    _fmt,
)

TIMED = ("cycles", "seconds")
IGNORED = ("host_seconds", "host_bytes")


def is_timed(key: str) -> bool:
    return any(t in key for t in TIMED)


@dataclass
class Difference:
    variant: str
    key: str
    baseline: float | None
    result: float | None
    kind: str  # "count", "timed", "missing"

    def rel(self) -> float:
        if self.baseline in (None, 0) or self.result is None:
            return math.inf
        return abs(self.result - self.baseline) / abs(self.baseline)


def check(results: dict, baseline: dict, rtol: float) -> list[Difference]:
    """Every count that differs at all, every cycle/time figure beyond ``rtol``, and every
    variant or counter present on one side only."""
    diffs: list[Difference] = []
    for name in sorted(set(baseline["variants"]) | set(results["variants"])):
        b = baseline["variants"].get(name)
        r = results["variants"].get(name)
        if b is None or r is None:
            diffs.append(Difference(name, "(variant)", None if b is None else 1,
                                    None if r is None else 1, "missing"))
            continue
        flat_b = {**b["counters"], **{k: b[k] for k in ("sim_cycles", "sim_seconds") if k in b}}
        flat_r = {**r["counters"], **{k: r[k] for k in ("sim_cycles", "sim_seconds") if k in r}}
        for key in sorted(set(flat_b) | set(flat_r)):
            if key in IGNORED:
                continue
            bv, rv = flat_b.get(key), flat_r.get(key)
            if bv is None or rv is None:
                diffs.append(Difference(name, key, bv, rv, "missing"))
            elif is_timed(key):
                if bv == rv:
                    continue
                d = Difference(name, key, bv, rv, "timed")
                if d.rel() > rtol:
                    diffs.append(d)
            elif bv != rv:
                diffs.append(Difference(name, key, bv, rv, "count"))
    return diffs


def baseline_of(results: dict) -> dict:
    """What a baseline keeps of a results file: what `check` compares (no resolved config,
    which may hold machine paths, and no host timings)."""
    return {
        "name": results.get("name"),
        "seed": results.get("seed"),
        "variants": {
            name: {"counters": v["counters"],
                   **{k: v[k] for k in ("sim_cycles", "sim_seconds") if k in v}}
            for name, v in results["variants"].items()
        },
    }


def diff_table(diffs: list[Difference], rtol: float) -> Table:
    table = Table(title=f"differences from the baseline (cycle/time figures beyond {rtol:.1%})")
    for col in ("variant", "counter", "baseline", "result", "change"):
        table.add_column(col, justify="right" if col in ("baseline", "result", "change")
                         else "left")
    for d in diffs:
        change = "-" if d.kind == "missing" else _change(d.baseline, d.result)
        table.add_row(d.variant, d.key, "-" if d.baseline is None else _fmt(d.baseline),
                      "-" if d.result is None else _fmt(d.result), change)
    return table
