"""The composition root: builds the machine of one variant, with its agents, and runs it."""

from __future__ import annotations

from simulator.config import ExperimentConfig
from simulator.engine.machine import SimulationError


def run_config(cfg: ExperimentConfig, progress=None) -> dict:
    """Run one validated configuration; returns its results record."""
    if cfg.hyp.mode == "pkvm":
        from simulator.pkvm import PkvmExperiment

        return PkvmExperiment(cfg, progress).run()
    from simulator.kvm import KvmExperiment

    return KvmExperiment(cfg, progress).run()


__all__ = ["SimulationError", "run_config"]
