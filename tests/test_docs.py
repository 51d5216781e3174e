"""The README documents every config key and every counter the engine emits."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel

from simulator.config import Experiment, ExperimentConfig
from simulator.experiment import run_config

README = (Path(__file__).parents[1] / "README.md").read_text()


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted leaf keys of ``model`` (list items as ``key[].field``)."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + name
        subs = []
        if name != "workload":
            for t in (field.annotation, *typing.get_args(field.annotation)):
                for tt in (t, *typing.get_args(t)):
                    if isinstance(tt, type) and issubclass(tt, BaseModel):
                        is_list = list in (typing.get_origin(t), typing.get_origin(
                            field.annotation))
                        subs += config_keys(tt, key + ("[]." if is_list else "."))
        keys += subs or [key]
        if subs and typing.get_origin(field.annotation) is not None:
            keys.append(key)  # an optional list of models is itself a documented key
    return keys


def documented(key: str) -> bool:
    if f"`{key}`" in README:
        return True
    # `tlb.levels[].sets`, `.ways` style rows
    head, _, last = key.rpartition(".")
    return f"`.{last}`" in README and f"`{head}." in README


def test_every_config_key_is_in_the_readme():
    missing = [k for k in config_keys(ExperimentConfig) if not documented(k)]
    assert not missing, missing


def test_every_counter_is_in_the_readme(tmp_path):
    cfg = {
        "name": "doc", "guest": {"memory": "64MiB", "vcpus": 2, "populated": False},
        "machine": {"mem_gbps": 1.0}, "costs": {"access_bytes": 64, "walk_ref_bytes": 64},
        "tlb": {"levels": [{"name": "l1", "sets": 4, "ways": 2}], "walk_cache":
                {"entries_per_level": 2}},
        "workload": {"type": "uniform", "accesses": 2000, "write_ratio": 0.3},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = run_config(Experiment(tmp_path / "c.yaml").variants["default"])
    keys = set(res["counters"]) | {k for v in res["per_vcpu"] for k in v}
    missing = []
    for k in sorted(keys):
        generic = re.sub(r"^tlb\.[a-z0-9_]+\.", "tlb.<level>.", k)
        if f"`{generic}`" not in README:
            missing.append(k)
    assert not missing, missing


def test_every_cost_has_a_source_in_the_readme():
    from simulator.config.parts import CostsConfig

    table = README[README.index("## Where each default cost comes from"):]
    table = table[:table.index("\n## ")]
    missing = [k for k in CostsConfig.model_fields if f"`costs.{k}`" not in table]
    assert not missing, missing
