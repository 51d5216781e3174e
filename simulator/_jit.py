"""The project's one jit decorator.

Every kernel is a free function under ``jit``: nopython mode, compiled once and cached on
disk (``cache=True``) so that later processes load machine code instead of compiling, and
with numpy's error model (no ZeroDivisionError checks in hot loops). ``NUMBA_DISABLE_JIT=1``
turns every kernel back into plain Python for readable tracebacks and coverage.

Kernels run without numba's reference counting (``_nrt=False``): they allocate nothing (the
caller passes every array, scratch included), and counting the references of every array
view and argument was a third of the engine's time. The flag is the same for every kernel
on purpose: a kernel compiled with counting, linked into one compiled without (or the
reverse), corrupts memory. The one exception is a setup helper that returns a new array to
Python and is never called from a kernel (``_nrt=True``).

A kernel called from another with a literal int argument (``f(OP_MAP, 0)``) is compiled once
more for each literal value: numba types the argument as ``Literal[int]`` first. Calls
inside the engine pass ``np.int64(...)`` or a module-level ``np.int64`` constant instead,
which types as a plain int64 (a fifth of the engine's cold compile).
"""

from __future__ import annotations

import numba

__all__ = ["jit"]


def jit(fn=None, **overrides):
    """``numba.njit(cache=True, error_model="numpy", nogil=True, _nrt=False)``, the same
    way everywhere."""
    options = {"cache": True, "error_model": "numpy", "nogil": True, "_nrt": False}
    options.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)
