"""Reading results: results.json, the scopes of its counters, derived metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path


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
    if p + "walk.s1_refs" in c:  # a guest stage-1: references per walk, per stage
        walks = c.get(p + "walks", 0)
        for st in ("s1", "s2"):
            out[f"{p}walk.{st}_refs/walk"] = (c[f"{p}walk.{st}_refs"] / walks if walks
                                              else math.nan)
        out[p + "s1.faults"] = c.get(p + "s1.translation_faults", 0)
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
    access (with a guest stage-1, references per walk of each stage and the stage-1
    faults), faults (host aborts in pkvm mode), cycles per access, the leaf-level mix of
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
