"""Per-vCPU memory access streams: generators and trace readers (knows nothing of the simulator).

A workload spec (``WorkloadSpec``: sequential, uniform, zipf, stride, phases, lackey,
drmemtrace, npy, shared_frames) is a pydantic model; ``spec.build(n_vcpus, seed, memory,
chunk)`` returns one ``Stream`` per vCPU, an iterator of ``(addr uint64[n], kind uint8[n])``
chunks with kinds READ / WRITE / FETCH, generated lazily so long runs never hold every access
in memory.
"""

from .errors import TraceError, WorkloadError
from .spec import (
    DEFAULT_CHUNK,
    DrMemTraceSpec,
    LackeySpec,
    NpySpec,
    PhasesSpec,
    SequentialSpec,
    SharedFramesSpec,
    StrideSpec,
    UniformSpec,
    WorkloadSpec,
    ZipfSpec,
    parse_workload,
    resolve_paths,
)
from .stream import FETCH, KIND_NAMES, READ, WRITE, Chunk, Stream
from .units import Size, format_size, parse_size

__all__ = [
    "READ",
    "WRITE",
    "FETCH",
    "KIND_NAMES",
    "Chunk",
    "Stream",
    "DEFAULT_CHUNK",
    "WorkloadSpec",
    "SequentialSpec",
    "UniformSpec",
    "ZipfSpec",
    "StrideSpec",
    "PhasesSpec",
    "LackeySpec",
    "DrMemTraceSpec",
    "NpySpec",
    "SharedFramesSpec",
    "parse_workload",
    "resolve_paths",
    "TraceError",
    "WorkloadError",
    "Size",
    "parse_size",
    "format_size",
]
