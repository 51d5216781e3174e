"""Times in the configuration: cycles or a number with a unit, and conversions."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|ms|us|ns|cycles)?\s*$")


def parse_duration(value: Any) -> int | str:
    """A time: an int (cycles) or a string with a unit (``5ms``, ``200us``, ``3e6`` is
    refused: write ``3000000``). Kept as written; :func:`to_cycles` converts it."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a time like 5ms, 200us or a number of cycles, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a time cannot be negative")
        return value
    if _DURATION.match(value) is None:
        raise ValueError(f"expected a time like 5ms, 200us or a number of cycles, got {value!r}")
    return value.strip()


def to_cycles(value: int | str, clock_ghz: float) -> int:
    if isinstance(value, int):
        return value
    m = _DURATION.match(value)
    number, unit = float(m.group(1)), m.group(2) or "cycles"
    if unit == "cycles":
        return int(number)
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return int(round(number * scale * clock_ghz * 1e9))


Duration = Annotated[int | str, BeforeValidator(parse_duration)]


def seconds(cycles: int, clock_ghz: float) -> float:
    return cycles / (clock_ghz * 1e9)


def is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0 and math.log2(n).is_integer()
