"""The project's one jit decorator.

Every kernel is a free function under ``jit``: nopython mode, compiled once and cached on
disk (``cache=True``) so that later processes load machine code instead of compiling, and
with numpy's error model (no ZeroDivisionError checks in hot loops). ``NUMBA_DISABLE_JIT=1``
turns every kernel back into plain Python for readable tracebacks and coverage.
"""

from __future__ import annotations

import numba

__all__ = ["jit"]


def jit(fn=None, **overrides):
    """``numba.njit(cache=True, error_model="numpy")`` applied the same way everywhere."""
    options = {"cache": True, "error_model": "numpy", "nogil": True}
    options.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)
