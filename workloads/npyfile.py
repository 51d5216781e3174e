"""Reader for ``.npy`` address files (memory-mapped, streamed in slices).

Accepted arrays (1-D):
  - unsigned integers (uint64 normally; any width): addresses, all reads;
  - a structured array with an unsigned-integer field ``addr`` and either a field ``write``
    (bool or integer; non-zero = WRITE, zero = READ) or a field ``kind`` (integers 0 read,
    1 write, 2 fetch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import TraceError
from .stream import FETCH, READ, WRITE, Chunk

__all__ = ["open_npy", "iter_npy"]

_BLOCK = 1 << 20  # accesses per slice


def open_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map a .npy trace and check its dtype and shape; raise TraceError if unusable.

    Returns the read-only memory-mapped array (no data is read yet).
    """
    p = Path(path)
    if not p.exists():
        raise TraceError(p, "no such file")
    if p.is_dir():
        raise TraceError(p, "is a directory, expected a .npy file")
    try:
        if p.stat().st_size == 0:
            raise TraceError(p, "empty file, expected a .npy array")
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except TraceError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise TraceError(p, f"not a readable .npy file ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise TraceError(p, "not a .npy array (an .npz archive?)")
    dt = arr.dtype
    if arr.ndim != 1:
        raise TraceError(p, f"expected a 1-D array of addresses, got shape {arr.shape}")
    if dt.names is None:
        if dt.kind != "u":
            raise TraceError(p, f"expected uint64 addresses, got dtype {dt} (or a structured "
                                "array with fields addr and write)")
    else:
        if "addr" not in dt.names or dt["addr"].kind != "u":
            raise TraceError(p, f"structured dtype {dt} needs an unsigned-integer field 'addr'")
        flag = "kind" if "kind" in dt.names else "write" if "write" in dt.names else None
        if flag is None:
            raise TraceError(p, f"structured dtype {dt} needs a field 'write' or 'kind'")
        if dt[flag].kind not in "biu":
            raise TraceError(p, f"field {flag!r} must be bool or integer, got {dt[flag]}")
    if arr.shape[0] == 0:
        raise TraceError(p, "the array holds no accesses")
    return arr


def iter_npy(arr: np.ndarray, path: str | os.PathLike[str], offset: int = 0,
             block: int = _BLOCK, limit: int | None = None) -> Iterator[Chunk]:
    """Yield (addr, kind) slices of an array checked by ``open_npy``.

    arr: the memory-mapped array; path: its file (for error messages).
    offset: added to every address (uint64 wrap-around).
    block: accesses per slice; limit: stop after this many accesses (None: all).
    """
    n = arr.shape[0] if limit is None else min(limit, arr.shape[0])
    names = arr.dtype.names
    try:
        for i in range(0, n, block):
            part = arr[i:min(i + block, n)]
            if names is None:
                addr = np.array(part, dtype=np.uint64)
                kind = np.full(len(addr), READ, dtype=np.uint8)
            else:
                addr = np.array(part["addr"], dtype=np.uint64)
                if "kind" in names:
                    k = np.asarray(part["kind"])
                    if k.size and (k.min() < READ or k.max() > FETCH):
                        raise TraceError(path, f"field 'kind' holds values outside 0..2 in "
                                               f"accesses {i}..{i + len(k) - 1}")
                    kind = k.astype(np.uint8)
                else:
                    kind = np.where(np.asarray(part["write"]) != 0, WRITE, READ).astype(np.uint8)
            if offset:
                addr += np.uint64(offset % (1 << 64))
            yield addr, kind
    except TraceError:
        raise
    except (OSError, ValueError) as e:  # e.g. the file shrank under the memory map
        raise TraceError(path, f"read error: {e}") from None
