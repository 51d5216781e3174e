"""Variants and sweeps side by side: the tables of `mmusim compare`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from simulator.results.metrics import (
    ResultsError,
    values,
)


def _fmt(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "-"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    return f"{x:.4g}"


def _change(base: float, x: float) -> str:
    if any(isinstance(y, float) and math.isnan(y) for y in (base, x)):
        return "-"
    d = x - base
    if base == 0:
        return f"{_fmt(d)}" if d else "0"
    return f"{'+' if d >= 0 else ''}{_fmt(d)} ({100 * d / base:+.1f}%)"


@dataclass
class Column:
    label: str
    variant: dict


def compare_table(columns: list[Column], names: list[str] | None, title: str) -> Table:
    """Rows: metrics; columns: each variant's value and its change against the first."""
    table = Table(title=title)
    table.add_column("metric")
    vals = [values(col.variant, names) for col in columns]
    keys = list(vals[0])
    for extra in vals[1:]:
        keys += [k for k in extra if k not in keys]
    for i, col in enumerate(columns):
        table.add_column(col.label, justify="right")
        if i:
            table.add_column(f"Δ vs {columns[0].label}", justify="right")
    for k in keys:
        row = [k]
        base = vals[0].get(k, math.nan)
        for i, val in enumerate(vals):
            x = val.get(k, math.nan)
            row.append(_fmt(x))
            if i:
                row.append(_change(base, x))
        table.add_row(*row)
    return table


def columns_for(results: list[tuple[str, dict]]) -> list[list[Column]]:
    """One results file: one table of its variants. Two: one table per variant name, A vs B."""
    if len(results) == 1:
        _, r = results[0]
        return [[Column(name, v) for name, v in r["variants"].items()]]
    (pa, a), (pb, b) = results[0], results[1]
    tables = []
    for name in a["variants"]:
        if name in b["variants"]:
            tables.append([Column(f"A:{name}", a["variants"][name]),
                           Column(f"B:{name}", b["variants"][name])])
    return tables


def is_sweep(path: str | Path) -> bool:
    """A sweep's output: its directory or its results.jsonl."""
    p = Path(path)
    return p.is_dir() or p.suffix == ".jsonl"


def load_sweep(path: str | Path) -> tuple[list[str], list[dict]]:
    """The swept keys and the finished records of a sweep (DIR or DIR/results.jsonl; points
    skipped as invalid are left out)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.jsonl"
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise ResultsError(str(p), "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(str(p), f"cannot read: {e.__class__.__name__}") from None
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ResultsError(str(p), f"line {i}: not JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("point"), dict) or \
                "variant" not in rec:
            raise ResultsError(str(p), f"line {i}: not an mmusim sweep record")
        if "skipped" not in rec:
            if not isinstance(rec.get("counters"), dict):
                raise ResultsError(str(p), f"line {i}: not an mmusim sweep record")
            records.append(rec)
    if not records:
        raise ResultsError(str(p), "no finished sweep point")
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec["point"] if k not in keys]

    def order(rec):  # records arrive in completion order: sort by point, then variant name
        return ([_sort_key(rec["point"].get(k)) for k in keys], rec["variant"])
    return keys, sorted(records, key=order)


def _sort_key(x) -> tuple:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return (0, x, "")
    return (1, 0, json.dumps(x, sort_keys=True))


def _sweep_names(records: list[dict], names: list[str] | None) -> list[str]:
    return names or [k for k in values(records[0], None) if "mix.l" not in k
                     and "mappings.l" not in k]


def sweep_table(keys: list[str], records: list[dict], names: list[str] | None,
                title: str) -> Table:
    """One row per sweep point and variant: the swept values, the variant, the figures."""
    names = _sweep_names(records, names)
    table = Table(title=title)
    for k in [*keys, "variant"]:
        table.add_column(k)
    for n in names:
        table.add_column(n, justify="right")
    for rec in records:
        val = values(rec, names)
        table.add_row(*(str(rec["point"].get(k)) for k in keys), rec["variant"],
                      *(_fmt(val[n]) for n in names))
    return table
