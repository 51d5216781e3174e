"""The ``mmusim`` command: run, validate (compare, sweep and check build on them)."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from simulator import results as rs
from simulator.config import ConfigError, Experiment
from simulator.experiment import SimulationError, run_config
from simulator.results.report import print_summary, write_results
from workloads.errors import TraceError, WorkloadError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A cycle-approximate simulator of the ARM64 MMU as KVM and pKVM drive it.")
err_console = Console(stderr=True)

SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override a config key: dotted.key=value (repeatable).")]


def fail(message: str) -> None:
    """Print one ``error:`` line on stderr and exit with status 2."""
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(2)


def load(config: Path, sets: list[str] | None) -> Experiment:
    try:
        return Experiment(config, sets)
    except ConfigError as e:
        fail(str(e))
    raise AssertionError  # unreachable


def _progress_runner(name: str, quiet: bool):
    """A progress callback that shows a bar once a run has lasted a second."""
    state = {"progress": None, "task": None, "t0": time.perf_counter()}

    def cb(done: int, total: int) -> None:
        if quiet:
            return
        if state["progress"] is None:
            if time.perf_counter() - state["t0"] < 1.0:
                return
            p = Progress(TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.completed:,}"
                         " accesses"), TimeElapsedColumn(), console=err_console, transient=True)
            p.start()
            state["progress"] = p
            state["task"] = p.add_task(name, total=total or None)
        state["progress"].update(state["task"], completed=done, total=total or None)

    def stop() -> None:
        if state["progress"] is not None:
            state["progress"].stop()

    return cb, stop


def run_experiment(exp: Experiment, config_path: Path, quiet: bool = False) -> dict:
    """Run every variant of ``exp``; bad input surfaces as one ``error:`` line, exit 2."""
    results = {"name": exp.config.name, "seed": exp.config.seed, "config": exp.resolved(),
               "variants": {}}
    for name, cfg in exp.variants.items():
        cb, stop = _progress_runner(f"{exp.config.name}/{name}", quiet)
        try:
            with input_errors(config_path, f" (variant {name})"):
                # --quiet: no progress process at all (its timeouts would only split the
                # engine's runs into more calls)
                results["variants"][name] = run_config(cfg, progress=None if quiet else cb)
        finally:
            stop()
    return results


@contextlib.contextmanager
def input_errors(config_path: Path, where: str = ""):
    """Turn every kind of bad input met while running into one ``error:`` line, exit 2."""
    try:
        yield
    except ConfigError as e:
        fail(str(e))
    except TraceError as e:
        fail(f"{e.path}: {e.message} (workload.path in {config_path})")
    except WorkloadError as e:
        fail(f"{config_path}: workload: {e}")
    except SimulationError as e:
        fail(f"{config_path}: {e.field}: {e.message}{where}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default out/<name>).")] = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Print the variants side by "
                                          "side afterwards (as `mmusim compare`).")] = False,
) -> None:
    """Run an experiment: writes OUT/results.json and OUT/results.csv, prints a summary."""
    exp = load(config, set_)
    results = run_experiment(exp, config, quiet)
    out_dir = out or Path("out") / exp.config.name
    try:
        write_results(out_dir, results)
    except OSError as e:
        fail(f"{out_dir}: cannot write results: {e.strerror or e}")
    if not quiet:
        print_summary(results)
        typer.echo(f"results in {out_dir}/results.json")
    if compare:
        _print_compare([(str(out_dir / "results.json"), results)], None, None)


def _counters_opt(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = []
    for v in values:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out or None


def _print_compare(loaded, names, plot_path) -> None:
    console = Console(width=max(100, Console().width))
    for cols in rs.columns_for(loaded):
        title = loaded[0][1].get("name", "results") if len(loaded) == 1 else \
            f"A = {loaded[0][0]}, B = {loaded[1][0]}"
        console.print(rs.compare_table(cols, names, title))
    if plot_path is not None:
        cols = rs.columns_for(loaded)
        flat = [c for group in cols for c in group]
        if not flat:
            fail("compare: no variant to plot")
        try:
            rs.plot(flat, names, plot_path, loaded[0][1].get("name", ""))
        except OSError as e:
            fail(f"{plot_path}: cannot write the plot: {e.strerror or e}")
        typer.echo(f"plot in {plot_path}")


@app.command()
def compare(
    results: Annotated[list[Path], typer.Argument(help="results.json (one: its variants side "
                                                  "by side; two: A vs B variant by variant), "
                                                  "or a sweep's directory or results.jsonl.")],
    counters: Annotated[Optional[list[str]], typer.Option(
        "--counters", "-c", help="Counters or metrics to show (comma-separated, repeatable); "
        "default: TLB misses per 1000 accesses, walks per access, faults, cycles per access, "
        "the leaf-level mix.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a figure (PNG) too.")] = None,
) -> None:
    """Show variants side by side with the change against the first; a sweep: one row per
    point and variant, and a figure of each value against the swept key."""
    if not 1 <= len(results) <= 2:
        fail("compare: give one or two results files")
    if any(rs.is_sweep(p) for p in results):
        if len(results) != 1:
            fail("compare: give one sweep (its directory or results.jsonl) alone")
        _compare_sweep(results[0], _counters_opt(counters), plot)
        return
    loaded = []
    for p in results:
        try:
            loaded.append((str(p), rs.load_results(p)))
        except rs.ResultsError as e:
            fail(str(e))
    if len(loaded) == 2 and not rs.columns_for(loaded):
        fail(f"{results[1]}: variants: no variant name in common with {results[0]}")
    _print_compare(loaded, _counters_opt(counters), plot)


def _compare_sweep(path: Path, names: list[str] | None, plot_path: Path | None) -> None:
    try:
        keys, records = rs.load_sweep(path)
    except rs.ResultsError as e:
        fail(str(e))
    title = records[0].get("config", {}).get("name", str(path))
    table = rs.sweep_table(keys, records, names, title)
    wide = sum(max(len(str(c.header)), 10) + 3 for c in table.columns) + 1
    Console(width=max(100, Console().width, wide)).print(table)
    if plot_path is not None:
        try:
            rs.plot_sweep(keys, records, names, plot_path, title)
        except rs.ResultsError as e:
            fail(f"{path}: {e.message}")
        except OSError as e:
            fail(f"{plot_path}: cannot write the plot: {e.strerror or e}")
        typer.echo(f"plot in {plot_path}")


@app.command()
def check(
    results: Annotated[Path, typer.Argument(help="results.json to check.")],
    baseline: Annotated[Path, typer.Option(help="The baseline results.json.")],
    rtol: Annotated[float, typer.Option(help="Relative tolerance of cycle and time figures.")]
    = 0.02,
    update: Annotated[bool, typer.Option("--update", help="Rewrite the baseline with the "
                                         "results.")] = False,
) -> None:
    """Exit 1 (with a table) if a count differs at all or a cycle/time figure by more than
    RTOL from the baseline; exit 0 otherwise."""
    try:
        res = rs.load_results(results)
    except rs.ResultsError as e:
        fail(str(e))
    if update:
        import json

        from simulator.results.report import atomic_write_files

        atomic_write_files(baseline.parent if str(baseline.parent) else Path("."),
                           {baseline.name: json.dumps(rs.baseline_of(res), indent=1)
                            + "\n"})
        typer.echo(f"baseline {baseline} updated")
        return
    try:
        base = rs.load_results(baseline)
    except rs.ResultsError as e:
        fail(str(e))
    if rtol < 0:
        fail("--rtol: must be >= 0")
    diffs = rs.check(res, base, rtol)
    if diffs:
        Console(width=max(100, Console().width)).print(rs.diff_table(diffs, rtol))
        raise typer.Exit(1)
    typer.echo(f"{results}: matches {baseline} (counts exact, cycles within {rtol:.1%})")


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file with a sweep: mapping.")],
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default "
                                                "out/<name>-sweep).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Parallel workers (default: all "
                                                   "cores).")] = None,
    backend: Annotated[str, typer.Option(help="local, dask or ray.")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Scheduler address of a running "
                                                   "Dask or Ray cluster.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep results.jsonl and run only "
                                         "what is missing.")] = False,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run the cross product of the sweep: lists × variants; append each finished point to
    OUT/results.jsonl; write OUT/sweep.csv."""
    from simulator.sweep import run_sweep

    if backend not in ("local", "dask", "ray"):
        fail(f"--backend: expected local, dask or ray, not {backend!r}")
    if workers is not None and workers < 1:
        fail("--workers: must be at least 1")
    exp = load(config, set_)
    out_dir = out or Path("out") / f"{exp.config.name}-sweep"
    progress = None
    bar = None
    if not quiet:
        bar = Progress(TextColumn(f"[bold]{exp.config.name}"), BarColumn(),
                       TextColumn("{task.completed}/{task.total} points"), TimeElapsedColumn(),
                       console=err_console, transient=True)
        task_id = bar.add_task("sweep", total=None)
        bar.start()

        def progress(done: int, total: int) -> None:
            bar.update(task_id, completed=done, total=total)
    try:
        with input_errors(config):
            records = run_sweep(exp, out_dir, workers=workers, backend=backend,
                                address=address, resume=resume, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    skipped = sum(1 for r in records if "skipped" in r)
    note = f" ({skipped} invalid points skipped)" if skipped else ""
    typer.echo(f"{len(records) - skipped} results{note} in {out_dir}/results.jsonl and "
               f"{out_dir}/sweep.csv")


@app.command()
def calibrate(
    measurements: Annotated[Path, typer.Argument(help="Measurements YAML file (points with "
                                                 "measured figures, see the README).")],
    fit: Annotated[str, typer.Option("--fit", help="Comma-separated config keys to fit "
                                     "(costs.access,machine.mem_gbps); empty: only compare.")],
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default "
                                                "out/calibrate-<file name>).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write simulated against "
                                                 "measured to this image (.png, .svg, "
                                                 ".pdf).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Parallel workers (default: all "
                                                   "cores).")] = None,
    max_iter: Annotated[int, typer.Option("--max-iter", help="Levenberg-Marquardt "
                                          "iterations at most.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Fit cost keys to measured figures (least squares on log ratios); print every point's
    simulated / measured ratio; write OUT/calibration.json and OUT/preset.yaml (for
    include:)."""
    import os

    from simulator import calibrate as cal

    if workers is not None and workers < 1:
        fail("--workers: must be at least 1")
    if max_iter < 1:
        fail("--max-iter: must be at least 1")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"--plot: {plot}: expected a .png, .svg or .pdf file name")
    if plot is not None and not plot.resolve().parent.is_dir():
        fail(f"--plot: {plot}: no such directory")
    keys = [k.strip() for k in fit.split(",") if k.strip()]
    if len(set(keys)) != len(keys):
        fail("--fit: a key is named twice")
    bar = None
    say = tick = None
    if not quiet:
        bar = Progress(TextColumn("[bold]calibrate"), BarColumn(),
                       TextColumn("{task.completed}/{task.total} runs"), TimeElapsedColumn(),
                       console=err_console, transient=True)
        task_id = bar.add_task("runs", total=None)
        bar.start()

        def say(msg: str) -> None:
            bar.console.print(msg)

        def tick(done: int, total: int) -> None:
            bar.update(task_id, completed=done, total=total)
    try:
        with input_errors(measurements):
            report = cal.calibrate(measurements, keys, workers=workers or os.cpu_count() or 1,
                                   max_iter=max_iter, progress=say, tick=tick)
    finally:
        if bar is not None:
            bar.stop()
    out_dir = out or Path("out") / f"calibrate-{measurements.stem}"
    try:
        rs.atomic_write_files(out_dir, {"calibration.json": cal.report_json(report),
                                        "preset.yaml": cal.preset(report)})
    except OSError as e:
        fail(f"{out_dir}: cannot write the results: {e.strerror or e}")
    try:
        if plot is not None:
            cal.plot(report, plot)
    except OSError as e:
        fail(f"--plot: {plot}: cannot write the plot: {e.strerror or e}")
    from rich.table import Table

    t = Table(title=f"{measurements.name}: simulated / measured")
    for col in ("point", "figure", "measured", "simulated", "ratio", "fitted"):
        t.add_column(col, justify="right" if col in ("measured", "simulated", "ratio") else
                     "left")
    for p in report["points"]:
        t.add_row(p["point"], p["figure"], f"{p['measured']:.4g}", f"{p['simulated']:.4g}",
                  f"{p['ratio']:.3f}", "fitted" if p["fitted"] else "predicted")
    Console().print(t)
    for k, v in report["values"].items():
        typer.echo(f"{k} = {v:.6g} (start {report['start'][k]:.6g})")
    typer.echo(f"{report['runs']} runs; {out_dir}/calibration.json, {out_dir}/preset.yaml"
               + (f", {plot}" if plot is not None else ""))


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    set_: SetOpt = None,
) -> None:
    """Check a config (and its overrides and variants) without running it."""
    exp = load(config, set_)
    for name, cfg in exp.variants.items():
        with input_errors(config):
            if cfg.workload is not None:
                cfg.workload.build(cfg.guest.vcpus, cfg.seed, cfg.address_space(),
                                   cfg.engine.chunk)
            for g in cfg.guests:
                g.workload.build(g.vcpus, cfg.seed, g.memory, cfg.engine.chunk)
            if cfg.host.workload is not None:
                cfg.host.workload.build(cfg.host.cpus, cfg.seed, 1 << 62, cfg.engine.chunk)
    typer.echo(f"{config}: ok ({len(exp.variants)} variant(s): {', '.join(exp.variants)})")


def main() -> None:
    """The console entry point: usage errors (an unknown option, a missing argument) also
    become one ``error:`` line with exit status 2."""
    if len(sys.argv) <= 1:
        app()  # no arguments: the help
        return
    try:
        rc = app(standalone_mode=False)
    except Exception as e:  # typer vendors click: match its exceptions by class name
        names = {c.__name__ for c in type(e).__mro__}
        if "UsageError" in names:
            ctx = getattr(e, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            sys.stderr.write(f"error: {where}{e.format_message()}\n")
            raise SystemExit(2) from None
        if "Abort" in names:
            raise SystemExit(1) from None
        raise
    raise SystemExit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
