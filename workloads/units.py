"""Byte sizes written with units, as in YAML configs: ``"4K"``, ``"2MiB"``, ``"20GiB"``, ``64``.

Every unit is binary: ``K`` and ``KiB`` both mean 1024 bytes, ``M``/``MiB`` 1024**2, and so on
up to ``P``/``PiB``. A bare number (int or digit string, optionally followed by ``B``) is bytes.
A decimal fraction is allowed when the result is a whole number of bytes (``"1.5K"`` = 1536).
Letters are case-insensitive (``"4k"``, ``"2mib"``). Anything else is rejected with
``expected a size like 4K, 2MiB, 20GiB``.

``Size`` is the pydantic annotated type to use for such fields; ``parse_size`` is the plain
function behind it.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated, Any, Union

from pydantic import BeforeValidator

__all__ = ["Size", "parse_size", "format_size", "SIZE_HINT"]

SIZE_HINT = "expected a size like 4K, 2MiB, 20GiB"

_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:ib)?|b)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Return the number of bytes that ``value`` denotes.

    value: a non-negative int (bytes) or a string such as ``"64"``, ``"4K"``, ``"2MiB"``,
        ``"1.5GiB"``. bool and float are rejected (a YAML ``1e9`` is almost always a mistake).

    Raises ValueError whose message starts with ``expected a size like 4K, 2MiB, 20GiB``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{SIZE_HINT}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{SIZE_HINT}, got {value!r} (negative)")
        return value
    m = _RE.match(value)
    if m is None:
        raise ValueError(f"{SIZE_HINT}, got {value!r}")
    number, unit = m.group(1), (m.group(2) or "").lower()
    total = Fraction(number) * _MULT[unit]
    if total.denominator != 1:
        raise ValueError(f"{SIZE_HINT}, got {value!r} (not a whole number of bytes)")
    return int(total)


def format_size(n: int) -> str:
    """Render ``n`` bytes with the largest binary unit dividing it (``4096`` -> ``4KiB``)."""
    for unit, mult in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                       ("KiB", 1 << 10)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


Size = Annotated[int, BeforeValidator(parse_size, json_schema_input_type=Union[int, str])]
"""An int number of bytes that pydantic parses from ``4K``/``2MiB``/``20GiB``/``64``."""
