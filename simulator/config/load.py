"""Loading an experiment: YAML, ``--set`` overrides, variants, errors that name the file and
the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from simulator.config.experiment import (
    ExperimentConfig,
)
from simulator.config.parts import (
    ConfigError,
)

# ---------------------------------------------------------------------------------------
# loading, overrides, variants


def _format_loc(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("sequential", "uniform", "zipf", "stride", "phases", "lackey", "drmemtrace",
                   "npy", "shared_frames") and parts and parts[-1].startswith("workload"):
            continue  # the discriminated union's tag adds nothing for the user
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts).replace(".[", "[")


def _validation_error(source: str, err: ValidationError) -> ConfigError:
    e = err.errors()[0]
    field = _format_loc(tuple(e.get("loc", ())))
    msg = e.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if e.get("type") == "extra_forbidden":
        msg = "unknown key"
    if ": " in msg and not field and msg.split(": ", 1)[0].replace(".", "").replace("[", "").replace("]", "").replace("_", "").isalnum():
        field, msg = msg.split(": ", 1)
    return ConfigError(source, field, msg)


def parse_value(text: str) -> Any:
    """A --set value: YAML scalar/list syntax (``4K`` stays a string, ``true`` a bool)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict, dotted: str, value: Any, source: str = "--set") -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"``; list items by index or by the
    ``name`` of an item (``tlb.levels.l2.sets``)."""
    if not dotted or any(not p for p in dotted.split(".")):
        raise ConfigError(source, dotted, "expected a dotted key like guest.vcpus")
    parts = dotted.split(".")
    node: Any = data
    for i, key in enumerate(parts[:-1]):
        node = _child(node, key, source, ".".join(parts[: i + 1]), create=True)
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last, source, dotted)
        node[idx] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(source, dotted, "cannot set a key inside a scalar")


def _list_index(node: list, key: str, source: str, where: str) -> int:
    if key.lstrip("-").isdigit():
        idx = int(key)
        if not -len(node) <= idx < len(node):
            raise ConfigError(source, where, f"index {idx} out of range ({len(node)} items)")
        return idx
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == key:
            return i
    raise ConfigError(source, where, f"no list item named {key!r}")


def _child(node: Any, key: str, source: str, where: str, create: bool) -> Any:
    if isinstance(node, dict):
        if key not in node or node[key] is None:
            if not create:
                raise ConfigError(source, where, "no such key")
            node[key] = {}
        return node[key]
    if isinstance(node, list):
        return node[_list_index(node, key, source, where)]
    raise ConfigError(source, where, "cannot descend into a scalar")


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file (and line for syntax errors)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "", f"cannot read: {e.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(str(path), where, problem) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "the file must hold a YAML mapping")
    return data


MAX_INCLUDE_DEPTH = 8


def load_with_includes(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML mapping with its ``include:`` files (a path or a list, relative to the file)
    merged underneath: the file's own keys win, mappings merge key by key, in order (a later
    include wins over an earlier one). Trace paths resolve against the file that names them."""
    p = Path(path)
    data = load_yaml(p)
    resolve_workload_paths(data, p.resolve().parent)
    inc = data.pop("include", None)
    if inc is None:
        return data
    if isinstance(inc, str):
        inc = [inc]
    if not isinstance(inc, list) or not all(isinstance(i, str) and i for i in inc):
        raise ConfigError(str(path), "include", "expected a file name or a list of them")
    here = p.resolve()
    if here in _seen or len(_seen) >= MAX_INCLUDE_DEPTH:
        raise ConfigError(str(path), "include", "includes nest too deep or in a circle")
    merged: dict = {}
    for name in inc:
        target = here.parent / name
        if not target.is_file():
            raise ConfigError(str(path), "include", f"no such file: {name}")
        merged = _merge(merged, load_with_includes(target, _seen + (here,)))
    return _merge(merged, data)


def _merge(under: dict, over: dict) -> dict:
    out = dict(under)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate(data: dict, source: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise _validation_error(source, err) from None


def parse_sets(sets: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in sets or []:
        if "=" not in item:
            raise ConfigError("--set", item, "expected dotted.key=value")
        key, _, text = item.partition("=")
        out.append((key.strip(), parse_value(text)))
    return out


def resolve_workload_paths(data: dict, base: Path) -> None:
    """Make trace paths in ``workload`` relative to the config file's directory."""
    def fix(w: Any) -> None:
        if isinstance(w, dict):
            if "path" in w and isinstance(w["path"], str) and not Path(w["path"]).is_absolute():
                candidate = base / w["path"]
                if candidate.exists() or not Path(w["path"]).exists():
                    w["path"] = str(candidate)
            for sub in w.get("phases", []) or []:
                fix(sub)
    fix(data.get("workload"))


class Experiment:
    """A loaded experiment: the raw data (overrides applied), its validated base config, and
    one validated config per variant (``default`` when it has none)."""

    def __init__(self, path: str | Path, sets: list[str] | None = None):
        self.path = str(path)
        raw = load_with_includes(path)
        overrides = parse_sets(sets)
        # Overrides address the resolved configuration, so a key that exists only as a
        # default (tlb.levels.l2.sets with no tlb: in the file) can be set; a file that does
        # not validate on its own takes them raw (an override may be what repairs it).
        try:
            data = validate(copy.deepcopy(raw), self.path).model_dump(mode="json")
        except ConfigError:
            if not overrides:
                raise
            data = raw
        for key, value in overrides:
            apply_override(data, key, value)
        try:
            self.config = validate(data, self.path)
        except ConfigError as e:
            # a field an override touched: the override is what to fix
            for key, _ in overrides:
                if e.field and (key.startswith(e.field) or e.field.startswith(key)):
                    raise ConfigError(f"{self.path}: --set {key}", e.field, e.message) from None
            raise
        self.raw = self.config.model_dump(mode="json")
        self.variants: dict[str, ExperimentConfig] = {}
        for name in list(self.config.variants) or ["default"]:
            self.variants[name] = self.variant_config(name, {})

    def variant_config(self, name: str, point: dict[str, Any],
                       seed: int | None = None) -> "ExperimentConfig":
        """The configuration of variant ``name`` at sweep ``point`` (overrides of the
        point first, then the variant's)."""
        data = copy.deepcopy(self.raw)
        variants = data.pop("variants", None) or {}
        data.pop("sweep", None)
        where = self.path + (f": sweep point {json.dumps(point, default=str)}" if point else "")
        for key, value in point.items():
            apply_override(data, key, copy.deepcopy(value), where)
        for key, value in (variants.get(name) or {}).items():
            apply_override(data, key, copy.deepcopy(value), f"{where}: variants.{name}")
        if seed is not None:
            data["seed"] = seed
        label = f"{where} (variant {name})" if name != "default" else where
        return validate(data, label)

    def resolved(self) -> dict:
        """The base configuration with every default filled in (for results.json)."""
        return self.config.model_dump(mode="json")
