"""Per-vCPU access streams: iterators of ``(addr, kind)`` chunks.

A chunk is a pair of numpy arrays of equal length n >= 1:
    addr: uint64[n], C-contiguous: the address of each access;
    kind: uint8[n], C-contiguous: READ (0), WRITE (1) or FETCH (2).

A ``Stream`` yields chunks of exactly ``chunk`` accesses except the last, which may be shorter.
It never yields an empty chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

__all__ = ["READ", "WRITE", "FETCH", "KIND_NAMES", "Chunk", "Stream", "rebatch"]

READ = 0
"""kind of a data load (lackey ``L``, drmemtrace TRACE_TYPE_READ)."""
WRITE = 1
"""kind of a data store or read-modify-write (lackey ``S`` and ``M``, TRACE_TYPE_WRITE)."""
FETCH = 2
"""kind of an instruction fetch (lackey ``I``, drmemtrace TRACE_TYPE_INSTR and variants)."""
KIND_NAMES = ("read", "write", "fetch")

Chunk = tuple[np.ndarray, np.ndarray]

_EMPTY_ADDR = np.empty(0, dtype=np.uint64)
_EMPTY_KIND = np.empty(0, dtype=np.uint8)


class Stream(Iterator[Chunk]):
    """The accesses of one vCPU, produced lazily in chunks.

    Attributes:
        total: number of accesses the stream will yield, or None when it is not known without
            reading the whole input (lackey, drmemtrace).
        chunk: the largest number of accesses in one chunk.

    Iterating yields ``(addr, kind)`` pairs (see the module docstring). A stream is consumed
    once; call the spec's ``build`` again to replay it.
    """

    def __init__(self, pieces: Iterable[Chunk], chunk: int, total: int | None = None,
                 limit: int | None = None) -> None:
        """pieces: (addr, kind) arrays of any sizes (empty ones allowed), re-cut to ``chunk``.
        chunk: maximum accesses per yielded chunk (>= 1).
        total: the exact number of accesses, if known.
        limit: stop after this many accesses (None: no limit); ``total`` is capped by it."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if limit is not None and total is not None:
            total = min(total, limit)
        self.total = total
        self.chunk = chunk
        self._it = rebatch(pieces, chunk, limit)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Chunk:
        return next(self._it)

    def collect(self) -> Chunk:
        """Concatenate all remaining chunks into one (addr, kind) pair (for tests, small runs)."""
        parts = list(self)
        if not parts:
            return _EMPTY_ADDR.copy(), _EMPTY_KIND.copy()
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def rebatch(pieces: Iterable[Chunk], chunk: int, limit: int | None = None) -> Iterator[Chunk]:
    """Re-cut a sequence of (addr, kind) arrays into chunks of exactly ``chunk`` accesses.

    pieces: arrays of any lengths; addr is converted to C-contiguous uint64, kind to uint8.
    chunk: size of every yielded chunk except the last (which is shorter, never empty).
    limit: stop after yielding this many accesses in all (None: exhaust ``pieces``).

    Pieces already exactly ``chunk`` long pass through without a copy.
    """
    taken = 0  # accesses accepted so far (yielded or pending)
    pend_a: list[np.ndarray] = []
    pend_k: list[np.ndarray] = []
    pending = 0
    for addr, kind in pieces:
        n = len(addr)
        if limit is not None and n > limit - taken:
            n = limit - taken
            addr, kind = addr[:n], kind[:n]
        taken += n
        if n == 0:
            pass
        elif pending == 0 and n == chunk:
            yield _norm(addr, kind)
        else:
            pend_a.append(addr)
            pend_k.append(kind)
            pending += n
            if pending >= chunk:
                a = np.concatenate(pend_a) if len(pend_a) > 1 else pend_a[0]
                k = np.concatenate(pend_k) if len(pend_k) > 1 else pend_k[0]
                full = (pending // chunk) * chunk
                for i in range(0, full, chunk):
                    yield _norm(a[i:i + chunk], k[i:i + chunk])
                pend_a, pend_k = ([a[full:]], [k[full:]]) if full < pending else ([], [])
                pending -= full
        if limit is not None and taken >= limit:
            break
    if pending:
        a = np.concatenate(pend_a) if len(pend_a) > 1 else pend_a[0]
        k = np.concatenate(pend_k) if len(pend_k) > 1 else pend_k[0]
        yield _norm(a, k)


def _norm(addr: np.ndarray, kind: np.ndarray) -> Chunk:
    """Return addr as C-contiguous uint64 and kind as C-contiguous uint8 (copies only if needed)."""
    return (np.ascontiguousarray(addr, dtype=np.uint64), np.ascontiguousarray(kind, dtype=np.uint8))
