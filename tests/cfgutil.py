"""Building test configs: keyword overrides with ``__`` for nesting."""

from __future__ import annotations


def apply_overrides(cfg: dict, over: dict) -> dict:
    """Set each ``a__b__c=value`` of ``over`` as ``cfg["a"]["b"]["c"]`` (creating the
    intermediate mappings; a number indexes a list: ``guests__0__run``); returns ``cfg``."""
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return cfg
