"""Results: reading them, derived metrics, comparing variants and sweeps, plots, the
regression check, and writing results.json / results.csv."""

from __future__ import annotations

from simulator.results.check import (
    IGNORED,
    TIMED,
    Difference,
    baseline_of,
    check,
    diff_table,
    is_timed,
)
from simulator.results.compare import (
    Column,
    columns_for,
    compare_table,
    is_sweep,
    load_sweep,
    sweep_table,
)
from simulator.results.metrics import (
    ResultsError,
    load_results,
    metrics,
    scope,
    scopes,
    tlb_levels,
    values,
)
from simulator.results.plot import (
    plot,
    plot_sweep,
)
from simulator.results.report import (
    PKVM_SUMMARY,
    SUMMARY,
    atomic_write_files,
    print_summary,
    results_csv,
    summary_table,
    write_results,
)

__all__ = [
    "Column",
    "Difference",
    "IGNORED",
    "PKVM_SUMMARY",
    "ResultsError",
    "SUMMARY",
    "TIMED",
    "atomic_write_files",
    "baseline_of",
    "check",
    "columns_for",
    "compare_table",
    "diff_table",
    "is_sweep",
    "is_timed",
    "load_results",
    "load_sweep",
    "metrics",
    "plot",
    "plot_sweep",
    "print_summary",
    "results_csv",
    "scope",
    "scopes",
    "summary_table",
    "sweep_table",
    "tlb_levels",
    "values",
    "write_results",
]
