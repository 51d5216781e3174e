"""The plots of `mmusim compare --plot`."""

from __future__ import annotations

import math
from pathlib import Path

from simulator.results.compare import (
    Column,
    _sweep_names,
)
from simulator.results.metrics import (
    ResultsError,
    metrics,
    scope,
    values,
)


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
