"""Reader for DynamoRIO drmemtrace offline traces (zip per thread), one thread per vCPU.

Layout: a directory of ``drmemtrace.<app>.<tid>.<n>.trace.zip`` files, one per thread, each
holding members ``chunk.0000``, ``chunk.0001``, ... of packed little-endian records
``{u16 type; u16 size; u64 addr}`` (12 bytes). ``find_thread_files`` accepts the directory
holding the zips, its parent (with a ``trace/`` subdirectory), or the grandparent that holds a
single ``drmemtrace.*.dir`` (as in DynamoRIO's sample archives).

Record types (``trace_type_t`` in DynamoRIO's clients/drcachesim/common/trace_entry.h, trace
format version 5):

=====  =============================================  ===========================
type   name                                           here
=====  =============================================  ===========================
0      TRACE_TYPE_READ                                READ
1      TRACE_TYPE_WRITE                               WRITE
2-9    TRACE_TYPE_PREFETCH, _PREFETCHT0..NTA,          skipped
       _PREFETCH_READ/_WRITE/_INSTR
10     TRACE_TYPE_INSTR                               FETCH if instructions
11-16  _INSTR_DIRECT_JUMP, _INDIRECT_JUMP,             FETCH if instructions
       _CONDITIONAL_JUMP, _DIRECT_CALL,
       _INDIRECT_CALL, _RETURN
17     TRACE_TYPE_INSTR_BUNDLE (online traces only)   skipped
18-21  instruction / data cache flushes (+ _END)      skipped
22-26  THREAD, THREAD_EXIT, PID, HEADER, FOOTER       skipped (22 gives the tid)
27     TRACE_TYPE_HARDWARE_PREFETCH                   skipped
28     TRACE_TYPE_MARKER (size = marker kind)         skipped
29     TRACE_TYPE_INSTR_NO_FETCH                      skipped (no fetch happens)
30     TRACE_TYPE_INSTR_MAYBE_FETCH (online only)     FETCH if instructions
31     TRACE_TYPE_INSTR_SYSENTER                      FETCH if instructions
32-46  TRACE_TYPE_PREFETCH_{READ,INSTR,WRITE}_L*[_NT]  skipped
47     TRACE_TYPE_ENCODING (instruction bytes)        skipped
48-49  _INSTR_TAKEN_JUMP, _INSTR_UNTAKEN_JUMP          FETCH if instructions
=====  =============================================  ===========================

Prefetches are skipped rather than counted as reads: a prefetch instruction never raises a
translation fault (ARM ``PRFM`` to an unmapped page is a no-op), so replaying it as a load would
invent faults. DynamoRIO's basic_counts tool counts them apart from loads as well. An access that
crosses a page is one access at its first byte (the ``size`` field is not used).

Threads are ordered by the thread id found in each file's TRACE_TYPE_THREAD record.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TraceError
from .stream import FETCH, READ, WRITE, Chunk

__all__ = ["RECORD", "TYPE_KIND", "ThreadFile", "find_thread_files", "iter_thread",
           "decode_records", "TRACE_TYPE_THREAD", "TRACE_TYPE_HEADER", "FETCH_TYPES",
           "PREFETCH_TYPES"]

RECORD = np.dtype([("type", "<u2"), ("size", "<u2"), ("addr", "<u8")])
"""One trace_entry_t as stored in the files (12 bytes, packed)."""
assert RECORD.itemsize == 12

TRACE_TYPE_READ = 0
TRACE_TYPE_WRITE = 1
TRACE_TYPE_THREAD = 22
TRACE_TYPE_HEADER = 25
FETCH_TYPES = (10, 11, 12, 13, 14, 15, 16, 30, 31, 48, 49)
"""Instruction records that are fetches (TRACE_TYPE_INSTR and its branch/call/return variants,
MAYBE_FETCH, SYSENTER, TAKEN_JUMP, UNTAKEN_JUMP)."""
PREFETCH_TYPES = (2, 3, 4, 5, 6, 7, 8, 9, 27, *range(32, 47))
"""Software and hardware prefetch records (skipped)."""

_SKIP = 255
TYPE_KIND = {False: np.full(1 << 16, _SKIP, dtype=np.uint8),
             True: np.full(1 << 16, _SKIP, dtype=np.uint8)}
"""record type -> kind (255 = skip), for instructions False / True."""
for _lut in TYPE_KIND.values():
    _lut[TRACE_TYPE_READ] = READ
    _lut[TRACE_TYPE_WRITE] = WRITE
TYPE_KIND[True][list(FETCH_TYPES)] = FETCH

_CHUNK_RE = re.compile(r"^chunk\.(\d+)$")
_FILE_RE = re.compile(r"^drmemtrace\..+\.(\d+)\.\d+\.trace\.zip$")
_READ_BLOCK = 12 << 18  # bytes per read from a zip member: 262144 records, 3 MiB
_HEAD_RECORDS = 64      # records read at check time to find the header and thread id


@dataclass(frozen=True)
class ThreadFile:
    """One thread's trace: its id, its zip file and its chunk members in order."""

    tid: int
    path: Path
    members: tuple[str, ...]
    records: int  # total records in all chunks (from the zip directory)


def _zip_errors(path: Path, e: BaseException) -> TraceError:
    if isinstance(e, FileNotFoundError):
        return TraceError(path, "no such file")
    if isinstance(e, zipfile.BadZipFile):
        if "CRC" in str(e):
            return TraceError(path, f"corrupt data in the zip ({e})")
        return TraceError(path, f"not a valid zip file ({e})")
    if isinstance(e, (zlib.error, EOFError)):
        return TraceError(path, f"corrupt compressed data ({e})")
    if isinstance(e, NotImplementedError):
        return TraceError(path, f"unsupported zip feature ({e})")
    return TraceError(path, f"read error: {e}")


_ERRORS = (OSError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError)


def _trace_dir(root: Path) -> Path:
    """Return the directory holding the ``*.trace.zip`` files under ``root``."""
    if not root.exists():
        raise TraceError(root, "no such directory")
    if not root.is_dir():
        raise TraceError(root, "not a directory (expected a drmemtrace trace directory)")
    candidates = [root, root / "trace"]
    subdirs = sorted(p for p in root.glob("drmemtrace.*.dir") if p.is_dir())
    if len(subdirs) == 1:
        candidates.append(subdirs[0] / "trace")
    for d in candidates:
        if d.is_dir() and any(d.glob("*.trace.zip")):
            return d
    others = sorted(q.name for d in candidates if d.is_dir() for q in d.glob("*.trace.*"))
    hint = f" (found {', '.join(others[:3])}: only zip-compressed traces are supported)" \
        if others else ""
    raise TraceError(root, "no *.trace.zip files here nor in trace/ (not a drmemtrace "
                           f"directory?){hint}")


def _inspect(path: Path) -> ThreadFile:
    """Open one thread zip, check its chunks and first records, return its ThreadFile."""
    try:
        with zipfile.ZipFile(path) as z:
            chunks = []
            for info in z.infolist():
                m = _CHUNK_RE.match(info.filename)
                if m:
                    chunks.append((int(m.group(1)), info))
            if not chunks:
                raise TraceError(path, "no chunk.NNNN members in the zip (not a drmemtrace "
                                       "thread file?)")
            chunks.sort(key=lambda c: c[0])
            records = 0
            for _, info in chunks:
                if info.file_size % RECORD.itemsize:
                    raise TraceError(path, f"member {info.filename} holds {info.file_size} bytes, "
                                           f"not a multiple of the {RECORD.itemsize}-byte record")
                records += info.file_size // RECORD.itemsize
            with z.open(chunks[0][1]) as f:
                head = np.frombuffer(f.read(_HEAD_RECORDS * RECORD.itemsize), dtype=np.uint8)
    except TraceError:
        raise
    except _ERRORS as e:
        raise _zip_errors(path, e) from None
    head = head[: len(head) - len(head) % RECORD.itemsize].view(RECORD)
    if len(head) == 0 or head["type"][0] != TRACE_TYPE_HEADER:
        raise TraceError(path, "first record is not a TRACE_TYPE_HEADER (25): not a drmemtrace "
                               "offline trace")
    tids = head["addr"][head["type"] == TRACE_TYPE_THREAD]
    if len(tids):
        tid = int(tids[0])
    else:
        m = _FILE_RE.match(path.name)
        if m is None:
            raise TraceError(path, "no TRACE_TYPE_THREAD record at the start and no tid in "
                                   "the file name")
        tid = int(m.group(1))
    return ThreadFile(tid, path, tuple(info.filename for _, info in chunks), records)


def find_thread_files(path: str | os.PathLike[str]) -> list[ThreadFile]:
    """Return the threads of a drmemtrace directory, sorted by thread id, after checking each
    zip cheaply (opens, has chunk members of whole records, starts with a header record).

    path: the directory with the ``*.trace.zip`` files, its parent, or the grandparent holding
        one ``drmemtrace.*.dir``.
    Raises TraceError on any problem, naming the offending file.
    """
    root = Path(path)
    d = _trace_dir(root)
    threads = [_inspect(p) for p in sorted(d.glob("*.trace.zip"))]
    threads.sort(key=lambda t: t.tid)
    seen: set[int] = set()
    for t in threads:
        if t.tid in seen:
            raise TraceError(t.path, f"thread id {t.tid} appears in two files")
        seen.add(t.tid)
    return threads


def decode_records(raw: np.ndarray, instructions: bool = False) -> Chunk:
    """Turn records into accesses.

    raw: RECORD array (or uint8 bytes of whole records).
    instructions: keep instruction fetch records as FETCH accesses.
    Returns (addr uint64[n], kind uint8[n]) in record order.
    """
    rec = raw if raw.dtype == RECORD else raw.view(RECORD)
    kind = TYPE_KIND[bool(instructions)][rec["type"]]
    keep = kind != _SKIP
    return np.ascontiguousarray(rec["addr"][keep]), kind[keep]


def iter_thread(thread: ThreadFile, instructions: bool = False,
                block: int = _READ_BLOCK) -> Iterator[Chunk]:
    """Yield (addr, kind) arrays for one thread, reading its chunks in order, ``block`` bytes at
    a time (rounded down to whole records). Raises TraceError on corrupt data."""
    step = max(RECORD.itemsize, block - block % RECORD.itemsize)
    path = thread.path
    try:
        with zipfile.ZipFile(path) as z:
            for name in thread.members:
                with z.open(name) as f:
                    carry = b""
                    while True:
                        data = f.read(step)
                        if not data:
                            break
                        if carry:
                            data = carry + data
                        cut = len(data) - len(data) % RECORD.itemsize
                        carry = data[cut:]
                        if cut:
                            yield decode_records(np.frombuffer(data, np.uint8, cut), instructions)
                    if carry:
                        raise TraceError(path, f"member {name} ends with a partial record")
    except TraceError:
        raise
    except _ERRORS as e:
        raise _zip_errors(path, e) from None
