"""Experiment configuration: YAML validated by pydantic, with units.

Every parameter has a type, a default and a description, or it is an error
(``extra="forbid"``). Sizes are written with units (``4K``, ``2MiB``, ``20GiB``), the clock in
GHz, every cost in cycles (cache maintenance in bytes per cycle). ``--set dotted.key=value``
overrides are applied to the raw YAML before validation, so they are checked exactly like
the file; ``variants:`` maps a name to such overrides.

Errors are raised as :class:`ConfigError` with the file and the dotted field they concern.
"""

from __future__ import annotations

from simulator.config.experiment import (
    ExperimentConfig,
)
from simulator.config.load import (
    Experiment,
    apply_override,
    load_with_includes,
    load_yaml,
    parse_sets,
    parse_value,
    resolve_workload_paths,
    validate,
)
from simulator.config.parts import (
    Backing,
    BalloonConfig,
    ConfigError,
    CostsConfig,
    DirtyLogConfig,
    EngineConfig,
    GuestConfig,
    GuestSpecConfig,
    HostConfig,
    HostRegionConfig,
    HypConfig,
    MachineConfig,
    Mapping,
    MemslotConfig,
    MmioWindowsConfig,
    TLBConfig,
    TLBLevelConfig,
    WalkCacheConfig,
)
from simulator.config.units import (
    Duration,
    is_pow2,
    parse_duration,
    seconds,
    to_cycles,
)

__all__ = [
    "Backing",
    "BalloonConfig",
    "ConfigError",
    "CostsConfig",
    "DirtyLogConfig",
    "Duration",
    "EngineConfig",
    "Experiment",
    "ExperimentConfig",
    "GuestConfig",
    "GuestSpecConfig",
    "HostConfig",
    "HostRegionConfig",
    "HypConfig",
    "MachineConfig",
    "Mapping",
    "MemslotConfig",
    "MmioWindowsConfig",
    "TLBConfig",
    "TLBLevelConfig",
    "WalkCacheConfig",
    "apply_override",
    "is_pow2",
    "load_with_includes",
    "load_yaml",
    "parse_duration",
    "parse_sets",
    "parse_value",
    "resolve_workload_paths",
    "seconds",
    "to_cycles",
    "validate",
]
