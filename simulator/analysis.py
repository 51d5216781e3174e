"""Reading results: derived metrics, side-by-side comparison, plots, and the regression check."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table


class ResultsError(ValueError):
    """A results file that cannot be read: ``path`` and a message."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(path, message)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def load_results(path: str | Path) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ResultsError(str(path), "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(str(path), f"cannot read: {e.__class__.__name__}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(str(path), f"not JSON (line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict) or not all(
            isinstance(v, dict) and isinstance(v.get("counters"), dict)
            for v in data["variants"].values()):
        raise ResultsError(str(path), "variants: not an mmusim results file")
    return data


# ---------------------------------------------------------------------------------------
# derived metrics


def scope(counters: dict) -> str:
    """The prefix of the main translation counters: "" (kvm mode: the guest's vCPUs) or
    "host." (pkvm mode: the host CPUs; guests are under "guest.<name>.")."""
    if "accesses" not in counters and "host.accesses" in counters:
        return "host."
    return ""


def scopes(counters: dict) -> list[str]:
    """Every prefix that has translation counters: the main one first, then each guest's."""
    main = scope(counters)
    out = [main]
    for k in counters:
        if k.startswith("guest.") and k.endswith(".accesses") and k.count(".") == 2:
            out.append(k[: -len("accesses")])
    return out


def tlb_levels(counters: dict, prefix: str = "") -> list[str]:
    """TLB level names present in ``counters`` under ``prefix``, in the order they appear."""
    names = []
    head = prefix + "tlb."
    for k in counters:
        if k.startswith(head) and k.endswith(".misses") and k.count(".") == head.count(".") + 1:
            names.append(k[len(head):-7])
    return names


def _scope_metrics(v: dict, p: str) -> dict[str, float]:
    c = v["counters"]
    acc = c.get(p + "accesses", 0) or 0
    out: dict[str, float] = {}
    for lvl in tlb_levels(c, p):
        out[f"{p}tlb.{lvl}.mpka"] = 1000 * c[f"{p}tlb.{lvl}.misses"] / acc if acc else math.nan
    out[p + "walks/access"] = c.get(p + "walks", 0) / acc if acc else math.nan
    if p:
        out[p + "aborts"] = c.get(p + "aborts", c.get(p + "translation_faults", 0))
    else:
        out["translation_faults"] = c.get("translation_faults", 0)
        out["permission_faults"] = c.get("permission_faults", 0)
    cycles = c.get(p + "cycles", v.get("sim_cycles", 0))
    out[p + "cycles/access"] = cycles / acc if acc else math.nan
    total = sum(c.get(f"{p}xlate.l{i}", 0) for i in (1, 2, 3))
    for i in (1, 2, 3):
        out[f"{p}mix.l{i}"] = c.get(f"{p}xlate.l{i}", 0) / total if total else 0.0
    for i in (1, 2, 3):
        out[f"{p}mappings.l{i}"] = c.get(f"{p}mappings.l{i}", 0)
    return out


def metrics(v: dict, every_scope: bool = False) -> dict[str, float]:
    """The default figures of a variant: misses per 1000 accesses per TLB level, walks per
    access, faults (host aborts in pkvm mode), cycles per access, the leaf-level mix of
    translations and the live mappings by level, for the main scope (see :func:`scope`);
    with ``every_scope`` also for each guest of a pkvm run (``guest.<name>.tlb.l2.mpka``)."""
    c = v["counters"]
    names = scopes(c) if every_scope else [scope(c)]
    out: dict[str, float] = {}
    for p in names:
        out.update(_scope_metrics(v, p))
    if c.get("rmap.entries_dropped"):
        out["rmap.cycles/entry"] = c["rmap.cycles"] / c["rmap.entries_dropped"]
    out["sim_seconds"] = v.get("sim_seconds", math.nan)
    return out


def values(v: dict, names: list[str] | None) -> dict[str, float]:
    """Default metrics, or the named counters/metrics."""
    if not names:
        return metrics(v)
    m = metrics(v, every_scope=True)
    out = {}
    for n in names:
        if n in m:
            out[n] = m[n]
        elif n in v["counters"]:
            out[n] = v["counters"][n]
        elif n in v and isinstance(v[n], (int, float)):
            out[n] = v[n]
        else:
            out[n] = math.nan
    return out


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


def plot(columns: list[Column], names: list[str] | None, path: str | Path, title: str) -> None:
    """Grouped bars of the chosen figures per variant, and the leaf-level mix as stacked bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    vals = [values(c.variant, names) for c in columns]
    keys = [k for k in vals[0] if "mix.l" not in k and "mappings.l" not in k]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(keys) + 4), 4.5),
                                   gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(columns))
    x = np.arange(len(keys))
    for i, (col, v) in enumerate(zip(columns, vals)):
        base = [vals[0].get(k) or 1.0 for k in keys]
        rel = [(v.get(k, 0) or 0) / b if b else 0 for k, b in zip(keys, base)]
        ax1.bar(x + i * width, rel, width, label=col.label)
    ax1.set_xticks(x + width * (len(columns) - 1) / 2, keys, rotation=30, ha="right")
    ax1.set_ylabel(f"relative to {columns[0].label}")
    ax1.axhline(1.0, color="grey", lw=0.5)
    ax1.legend(fontsize="small")
    ax1.set_title(title)
    bottoms = np.zeros(len(columns))
    for lvl, color in ((3, "#4c72b0"), (2, "#dd8452"), (1, "#55a868")):
        fr = np.array([metrics(c.variant)[f"{scope(c.variant['counters'])}mix.l{lvl}"]
                       for c in columns])
        ax2.bar([c.label for c in columns], fr, bottom=bottoms, color=color, label=f"L{lvl} leaf")
        bottoms += fr
    ax2.set_ylim(0, 1)
    ax2.set_title("translations by leaf level")
    ax2.tick_params(axis="x", rotation=30)
    ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# sweeps


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


def plot_sweep(keys: list[str], records: list[dict], names: list[str] | None, path: str | Path,
               title: str) -> None:
    """One panel per figure against the first numeric swept key, one line per variant (and
    per value of the other swept keys); an axis is logarithmic where its values are positive
    and span a factor of 30 or more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def numeric(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    xkey = next((k for k in keys if all(numeric(r["point"].get(k)) for r in records)), None)
    if xkey is None:
        raise ResultsError("sweep", "no numeric swept key to plot against")
    names = _sweep_names(records, names)
    lines: dict[str, list[tuple[float, dict]]] = {}
    for rec in records:
        rest = ", ".join(f"{k}={rec['point'].get(k)}" for k in keys if k != xkey)
        label = rec["variant"] + (f" ({rest})" if rest else "")
        lines.setdefault(label, []).append((rec["point"][xkey], values(rec, names)))

    def spans(vals) -> bool:
        vals = [v for v in vals if not math.isnan(v)]
        return bool(vals) and min(vals) > 0 and max(vals) >= 30 * min(vals)

    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    xs = [r["point"][xkey] for r in records]
    for ax, name in zip(axes.flat, names):
        for label, pts in lines.items():
            ax.plot([x for x, _ in pts], [v[name] for _, v in pts], marker="o", label=label)
        if spans(xs):
            ax.set_xscale("log")
        if spans([v[name] for pts in lines.values() for _, v in pts]):
            ax.set_yscale("log")
        ax.set_xlabel(xkey)
        ax.set_title(name)
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# the regression check

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
