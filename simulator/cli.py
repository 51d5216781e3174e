"""The ``mmusim`` command: run, validate (compare, sweep and check build on them)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from simulator.config import ConfigError, Experiment
from simulator.engine import SimulationError, run_config
from simulator.report import print_summary, write_results
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
            results["variants"][name] = run_config(cfg, progress=cb)
        except TraceError as e:
            fail(f"{e.path}: {e.message} (workload.path in {config_path})")
        except WorkloadError as e:
            fail(f"{config_path}: workload: {e}")
        except SimulationError as e:
            fail(f"{config_path}: {e.field}: {e.message} (variant {name})")
        finally:
            stop()
    return results


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default out/<name>).")] = None,
    set_: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
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


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    set_: SetOpt = None,
) -> None:
    """Check a config (and its overrides and variants) without running it."""
    exp = load(config, set_)
    for name, cfg in exp.variants.items():
        try:
            cfg.workload.build(cfg.guest.vcpus, cfg.seed, cfg.guest.memory, cfg.engine.chunk)
        except TraceError as e:
            fail(f"{e.path}: {e.message} (workload.path in {config})")
        except WorkloadError as e:
            fail(f"{config}: workload: {e}")
    typer.echo(f"{config}: ok ({len(exp.variants)} variant(s): {', '.join(exp.variants)})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
