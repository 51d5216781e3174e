"""Calibration: fit named cost keys to measured figures, and show how well every point agrees.

A measurements file names an experiment and its points (a variant, overrides, the measured
figures with their spread, whether the point is fitted):

.. code-block:: yaml

    config: ../page_table_test.yaml      # relative to this file
    set: {guest.vcpus: 20}                # overrides of every point (optional)
    points:
      - name: after-60
        variant: install_first
        set: {guest.vcpus: 60}
        measured: {stage.adjust_seconds: {value: 0.532, spread: 0.010}}
        fit: true                         # false: predicted only; or the figures to fit
        source: seed 003's table, mean of five runs

A figure is a top-level number of the variant's record (``sim_seconds``,
``stage.adjust_seconds``) or a counter. The fit minimises the squared log ratios of
simulated to measured figures over the fitted points (each weighted by its relative spread
when given), over the logarithms of the named keys, by Levenberg-Marquardt with
forward-difference Jacobians, within each key's bounds: deterministic, so the same file and
start give the same result. Each evaluation runs the fitted points in parallel (a process
per point, as ``sweep``); the other points run once, at the fitted values.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError

from simulator.config import ConfigError, Experiment, ExperimentConfig, load_yaml
from simulator.config.load import _format_loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Figure(_Strict):
    value: float = Field(gt=0, description="The measured value (positive).")
    spread: float | None = Field(default=None, gt=0, description="Its spread (standard "
                                 "deviation or half-range), same unit.")


class Point(_Strict):
    name: str = Field(min_length=1)
    variant: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    measured: dict[str, Figure | PositiveFloat] = Field(min_length=1)
    fit: bool | list[str] = True
    source: str = ""

    def fits(self, key: str) -> bool:
        """Whether figure ``key`` is fitted (``fit``: all, none, or the ones listed)."""
        return key in self.fit if isinstance(self.fit, list) else self.fit


class Measurements(_Strict):
    config: str = Field(min_length=1, description="The experiment, relative to this file.")
    set: dict[str, Any] = Field(default_factory=dict)
    points: list[Point] = Field(min_length=1)


def load_measurements(path: Path) -> tuple[Measurements, Experiment]:
    """The measurements file and its experiment; errors name the file and the field."""
    data = load_yaml(path)
    try:
        m = Measurements.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        msg = "unknown key" if e.get("type") == "extra_forbidden" else e.get("msg", "invalid")
        raise ConfigError(str(path), _format_loc(tuple(e.get("loc", ()))), msg) from None
    names = [p.name for p in m.points]
    if len(set(names)) != len(names):
        raise ConfigError(str(path), "points", "point names must be unique")
    cfg_path = Path(path).parent / m.config
    if not cfg_path.is_file():
        raise ConfigError(str(path), "config", f"no such file: {m.config}")
    exp = Experiment(cfg_path)
    for i, p in enumerate(m.points):
        if isinstance(p.fit, list):
            for key in p.fit:
                if key not in p.measured:
                    raise ConfigError(str(path), f"points[{i}].fit",
                                      f"{key} is not one of the point's measured figures")
        variant = p.variant or "default"
        if variant not in exp.variants:
            raise ConfigError(str(path), f"points[{i}].variant",
                              f"{m.config} has no variant {variant!r} "
                              f"({', '.join(exp.variants)})")
    return m, exp


def figure(p: Point, key: str) -> tuple[float, float | None]:
    f = p.measured[key]
    return (f.value, f.spread) if isinstance(f, Figure) else (float(f), None)


def point_config(exp: Experiment, m: Measurements, p: Point, params: dict[str, float],
                 where: str) -> ExperimentConfig:
    over = {**m.set, **p.set, **params}
    try:
        return exp.variant_config(p.variant or "default", over)
    except ConfigError as e:
        raise ConfigError(where, e.field, e.message) from None


def run_point(payload: dict) -> dict:
    """A pure task: a resolved configuration in, the variant's figures out."""
    from simulator.experiment import run_config

    res = run_config(ExperimentConfig.model_validate(payload["config"]))
    figs = {k: v for k, v in res.items() if isinstance(v, (int, float))
            and not isinstance(v, bool)}
    figs.update(res["counters"])
    return {"name": payload["name"], "figures": figs}


def run_many(payloads: list[dict], workers: int,
             tick: Callable[[int, int], None] | None = None) -> list[dict]:
    """Run the tasks (unique names) as ``sweep`` runs its points; results in task order.
    ``tick(done, total)`` after each one."""
    from simulator.sweep import run_local

    done: dict[str, dict] = {}
    for rec in run_local(payloads, workers, run_point):
        done[rec["name"]] = rec
        if tick:
            tick(len(done), len(payloads))
    return [done[p["name"]] for p in payloads]


class _Key:
    """A fitted key: its start, bounds and whether the config holds an int."""

    def __init__(self, name: str, start: float, lo: float, hi: float, integer: bool):
        self.name, self.start, self.lo, self.hi, self.integer = name, start, lo, hi, integer

    def value(self, x: float) -> float | int:
        v = min(max(math.exp(x), self.lo), self.hi)  # exp(log(hi)) may round above hi
        return max(int(round(v)), 1) if self.integer else v


def _field_info(cfg: ExperimentConfig, dotted: str) -> tuple[Any, Any]:
    """(value, pydantic FieldInfo) of a dotted key of the config."""
    node: Any = cfg
    info = None
    for part in dotted.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            return None, None
        info = type(node).model_fields[part]
        node = getattr(node, part)
    return node, info


def fit_keys(cfg: ExperimentConfig, names: list[str]) -> list[_Key]:
    keys = []
    for name in names:
        value, info = _field_info(cfg, name)
        if info is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or value <= 0:
            raise ConfigError("--fit", name, "not a positive number of the configuration "
                              "(costs.access, machine.mem_gbps, ...)")
        lo, hi = value / 100.0, value * 100.0
        for meta in info.metadata:
            if getattr(meta, "gt", None) is not None:
                lo = max(lo, float(meta.gt) * (1 + 1e-9) or 1e-12)
            if getattr(meta, "ge", None) is not None:
                lo = max(lo, float(meta.ge) or 1e-12)
            if getattr(meta, "le", None) is not None:
                hi = min(hi, float(meta.le))
            if getattr(meta, "lt", None) is not None:
                hi = min(hi, float(meta.lt) * (1 - 1e-9))
        if isinstance(value, int):
            lo = max(lo, 1.0)
        keys.append(_Key(name, float(value), lo, hi, isinstance(value, int)))
    return keys


def calibrate(path: Path, fit: list[str], *, workers: int = 1, max_iter: int = 8,
              progress: Callable[[str], None] | None = None,
              tick: Callable[[int, int], None] | None = None) -> dict:
    """Fit ``fit`` on the file's fitted points; returns the report (values, every point's
    figures, the fit's history). ``progress`` hears each step, ``tick(done, total)`` each
    run of the evaluation under way."""
    m, exp = load_measurements(path)
    src = str(path)
    fitted = [p for p in m.points if any(p.fits(k) for k in p.measured)]
    if fit and not fitted:
        raise ConfigError(src, "points", "no point has fit: true")
    base = point_config(exp, m, m.points[0], {}, src)
    keys = fit_keys(base, fit)
    lo = np.array([math.log(k.lo) for k in keys])
    hi = np.array([math.log(k.hi) for k in keys])
    say = progress or (lambda _msg: None)
    runs = 0

    def params(x: np.ndarray) -> dict[str, float]:
        return {k.name: k.value(v) for k, v in zip(keys, x)}

    def figures(points: list[Point], xs: list[np.ndarray]) -> list[list[dict]]:
        nonlocal runs
        payloads = []
        for xi, x in enumerate(xs):
            for i, p in enumerate(points):
                cfg = point_config(exp, m, p, params(x), f"{src}: points[{p.name}]")
                payloads.append({"name": f"{xi}:{i}", "config": cfg.model_dump(mode="json")})
        out = run_many(payloads, workers, tick)
        runs += len(payloads)
        res = [[out[xi * len(points) + i]["figures"] for i in range(len(points))]
               for xi in range(len(xs))]
        for rows in res:
            for p, figs in zip(points, rows):
                for key in p.measured:
                    if key not in figs:
                        raise ConfigError(src, f"points[{p.name}].measured.{key}",
                                          "the simulation has no such figure")
        return res

    def residuals(rows: list[dict]) -> np.ndarray:
        r = []
        for p, figs in zip(fitted, rows):
            for key in p.measured:
                if not p.fits(key):
                    continue
                value, spread = figure(p, key)
                sim = max(float(figs[key]), 1e-300)
                w = 1.0 if spread is None else min(value / spread, 100.0)
                r.append(w * math.log(sim / value))
        return np.array(r)

    x = np.clip(np.array([math.log(k.start) for k in keys]), lo, hi)
    history = []
    if keys:
        lam = 1e-2
        say(f"fitting {', '.join(fit)} on {len(fitted)} points")
        r = residuals(figures(fitted, [x])[0])
        cost = float(r @ r)
        history.append({"params": params(x), "cost": cost})
        say(f"start: cost {cost:.3g}; each iteration runs {len(keys) + 1} x {len(fitted)} "
            "points")
        for it in range(max_iter):
            # forward differences, each key at least one unit for an int
            steps = []
            for k, xk in zip(keys, x):
                h = 0.03
                if k.integer:  # reach the next integer up from where x stands
                    h = max(h, math.log((k.value(xk) + 1) / math.exp(xk)) * 1.01)
                steps.append(h if xk + h <= math.log(k.hi) else -h)
            xs = []
            for j, h in enumerate(steps):
                xj = x.copy()
                xj[j] += h
                xs.append(xj)
            cols = figures(fitted, xs)
            J = np.column_stack([(residuals(rows) - r) / h for rows, h in zip(cols, steps)])
            g = J.T @ r
            A = J.T @ J
            improved = False
            for _ in range(6):
                dx = -np.linalg.solve(A + lam * np.diag(np.diag(A) + 1e-12), g)
                xn = np.clip(x + dx, lo, hi)
                if np.max(np.abs(xn - x)) < 1e-4:
                    break
                rn = residuals(figures(fitted, [xn])[0])
                cn = float(rn @ rn)
                if cn < cost:
                    x, r, cost, lam = xn, rn, cn, lam / 3
                    improved = True
                    break
                lam *= 4
            history.append({"params": params(x), "cost": cost})
            say(f"iteration {it + 1}: cost {cost:.3g} at "
                + ", ".join(f"{k}={v:.4g}" for k, v in params(x).items()))
            if not improved or cost < 1e-12:
                break
    final = params(x)
    say("running every point at the fitted values")
    rows = figures(m.points, [x])[0]
    points = []
    for p, figs in zip(m.points, rows):
        for key in p.measured:
            value, spread = figure(p, key)
            points.append({"point": p.name, "figure": key, "measured": value,
                           "spread": spread, "simulated": float(figs[key]),
                           "ratio": float(figs[key]) / value, "fitted": p.fits(key),
                           "source": p.source})
    return {"measurements": src, "config": m.config, "fit": fit,
            "start": {k.name: k.start for k in keys}, "values": final, "points": points,
            "history": history, "runs": runs}


def preset(report: dict) -> str:
    """The fitted values as YAML that ``include:`` loads (or ``--set`` lines, in comments)."""
    tree: dict = {}
    for key, value in report["values"].items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = round(value, 6) if isinstance(value, float) else value
    head = (f"# Fitted by mmusim calibrate on {report['measurements']}\n"
            "# (points: " + ", ".join(sorted({p["point"] for p in report["points"]
                                               if p["fitted"]})) + ")\n"
            "# as --set: " + " ".join(f"--set {k}={v}" for k, v in report["values"].items())
            + "\n")
    return head + yaml.safe_dump(tree, sort_keys=True)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    pts = report["points"]
    for fitted, marker, label in ((True, "o", "fitted"), (False, "^", "predicted")):
        sel = [p for p in pts if p["fitted"] == fitted]
        if sel:
            ax.errorbar([p["measured"] for p in sel], [p["simulated"] for p in sel],
                        xerr=[p["spread"] or 0 for p in sel], fmt=marker, label=label,
                        capsize=3)
    vals = [p["measured"] for p in pts] + [p["simulated"] for p in pts]
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="simulated = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured")
    ax.set_ylabel("simulated")
    ax.set_title("mmusim calibrate: " + Path(report["measurements"]).name)
    for p in pts:
        ax.annotate(f"{p['point']} {p['figure'].split('.')[-1]}", (p["measured"],
                    p["simulated"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report_json(report: dict) -> str:
    return json.dumps(copy.deepcopy(report), indent=1, sort_keys=True) + "\n"


__all__ = ["calibrate", "load_measurements", "plot", "preset", "report_json"]
