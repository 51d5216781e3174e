"""Workload specifications (pydantic v2) and how they build per-vCPU access streams.

``WorkloadSpec`` is a discriminated union on the field ``type``; use it as a field type in a
config model, or parse a mapping with ``parse_workload``. Every spec has
``build(n_vcpus, seed, memory, chunk) -> list[Stream]``: one lazily generated ``Stream`` per
vCPU (see ``workloads.stream``).

Seeding (generator types): vCPU ``v`` draws from ``numpy.random.Generator(PCG64(s))`` with
``s = SeedSequence(seed).spawn(v + 1)[v].spawn(3)[j]`` (equivalently
``SeedSequence(seed, spawn_key=(v, j))``), j = 0 for addresses, 1 for in-page offsets, 2 for
write flags. A vCPU's accesses therefore depend only on (spec, seed, v, memory): not on the
number of vCPUs (except for the sequential/stride start offsets below) nor on the chunk size.
Things shared by all vCPUs (the zipf page permutation) come from
``SeedSequence(seed, spawn_key=(0xFFFFFFFF,))``; phase k of a ``phases`` spec is built with the
seed ``SeedSequence(seed, spawn_key=(0xFFFFFFFE, k)).generate_state(1, uint64)[0]``.

Address ranges: when ``footprint`` is null, generators use the whole guest memory given to
``build`` (minus ``start``), so every address is in [0, memory). An explicit footprint that does
not fit in memory is a ``WorkloadError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from . import drmemtrace as _drm
from . import generators as _gen
from . import lackey as _lackey
from . import npyfile as _npy
from .errors import TraceError, WorkloadError
from .stream import Chunk, Stream
from .units import Size, format_size, parse_size

__all__ = [
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
    "vcpu_rngs",
    "phase_seed",
]

DEFAULT_CHUNK = 1 << 16
"""Default number of accesses per chunk."""

_SHARED_KEY = 0xFFFFFFFF
_PHASE_KEY = 0xFFFFFFFE


def _positive_size(value: Any) -> int:
    n = parse_size(value)
    if n <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return n


def _optional_positive_size(value: Any) -> int | None:
    return None if value is None else _positive_size(value)


PositiveSize = Annotated[int, BeforeValidator(_positive_size,
                                               json_schema_input_type=Union[int, str])]
"""A Size that must be > 0."""
Footprint = Annotated[Union[int, None], BeforeValidator(
    _optional_positive_size, json_schema_input_type=Union[int, str, None])]
"""A Size > 0, or null for 'the guest memory size'."""


def vcpu_rngs(seed: int, vcpu: int, n: int = 3) -> list[np.random.Generator]:
    """Return the ``n`` independent PCG64 generators of vCPU ``vcpu`` for ``seed``.

    seed: the experiment seed (int >= 0); vcpu: the vCPU index; n: how many purposes.
    Generator j is seeded by SeedSequence(seed, spawn_key=(vcpu, j)).
    """
    children = np.random.SeedSequence(seed, spawn_key=(vcpu,)).spawn(n)
    return [np.random.Generator(np.random.PCG64(c)) for c in children]


def _check_build_args(n_vcpus: int, seed: int, memory: int, chunk: int) -> None:
    for name, value, low in (("n_vcpus", n_vcpus, 1), ("seed", seed, 0), ("memory", memory, 1),
                             ("chunk", chunk, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise WorkloadError(f"{name} must be an int >= {low}, got {value!r}")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def build(self, n_vcpus: int, seed: int, memory: int,
              chunk: int = DEFAULT_CHUNK) -> list[Stream]:
        """Return one lazily generated Stream per vCPU.

        n_vcpus: number of vCPUs (>= 1).
        seed: experiment seed (int >= 0); ignored by trace readers.
        memory: guest memory size in bytes; generators with a null footprint stay in
            [0, memory); trace readers ignore it.
        chunk: maximum accesses per chunk (every chunk but the last is exactly this long).

        Raises WorkloadError if the spec does not fit (e.g. footprint > memory) and TraceError
        (a WorkloadError) if a trace is missing or malformed; both subclass ValueError.
        """
        _check_build_args(n_vcpus, seed, memory, chunk)
        return self._build(int(n_vcpus), int(seed), int(memory), int(chunk))

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# generators

def _accesses() -> Any:
    return Field(gt=0, description="Number of accesses each vCPU makes.")


def _write_ratio() -> Any:
    return Field(default=0.0, ge=0.0, le=1.0,
                 description="Probability that an access is a write (else a read).")


def _region(kind: str, start: int, footprint: int | None, memory: int) -> int:
    """Return the span of [start, start + span) within memory, or raise WorkloadError."""
    if start >= memory:
        raise WorkloadError(f"{kind}: start {format_size(start)} is not below the guest memory "
                            f"size {format_size(memory)}")
    span = memory - start if footprint is None else footprint
    if start + span > memory:
        raise WorkloadError(f"{kind}: start + footprint ({format_size(start + span)}) exceeds "
                            f"the guest memory size {format_size(memory)}")
    try:
        _gen.check_span(span)
    except ValueError as e:
        raise WorkloadError(f"{kind}: {e}") from None
    return span


def _stride_streams(kind: str, accesses: int, start: int, stride: int, footprint: int | None,
                    write_ratio: float, n_vcpus: int, seed: int, memory: int,
                    chunk: int) -> list[Stream]:
    span = _region(kind, start, footprint, memory)
    g = math.gcd(stride % span, span)
    streams = []
    for v in range(n_vcpus):
        offset = (v * span // n_vcpus) // g * g
        rng_w = vcpu_rngs(seed, v)[2] if 0 < write_ratio < 1 else None
        pieces = _gen.stride_chunks(accesses, start, stride, span, offset, chunk, write_ratio,
                                    rng_w)
        streams.append(Stream(pieces, chunk, total=accesses))
    return streams


class SequentialSpec(_Spec):
    """Each vCPU walks memory in steps of ``step`` bytes, wrapping around in its footprint.

    Access i of vCPU v is at ``start + (o_v + i * step) mod footprint`` where the start offset
    ``o_v = floor(v * footprint / n_vcpus)`` rounded down to a multiple of
    ``gcd(step, footprint)``: vCPU 0 starts at ``start``, the others are spread evenly over the
    same region so their streams differ.
    """

    type: Literal["sequential"] = Field(default="sequential", description="Workload type.")
    accesses: int = _accesses()
    start: Size = Field(default=0, description="Base address of the region (e.g. 1GiB).")
    step: PositiveSize = Field(default=64, description="Bytes between consecutive accesses.")
    footprint: Footprint = Field(
        default=None,
        description="Size of the region, wrapped around; null = guest memory - start.")
    write_ratio: float = _write_ratio()

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        return _stride_streams("sequential", self.accesses, self.start, self.step,
                               self.footprint, self.write_ratio, n_vcpus, seed, memory, chunk)


class StrideSpec(_Spec):
    """Strided accesses: access i of vCPU v is at ``start + (o_v + i * stride) mod footprint``.

    The per-vCPU offset ``o_v`` is as for ``sequential`` (0 for vCPU 0).
    """

    type: Literal["stride"] = Field(default="stride", description="Workload type.")
    accesses: int = _accesses()
    start: Size = Field(default=0, description="Base address of the region.")
    stride: PositiveSize = Field(description="Bytes between consecutive accesses (e.g. 4K).")
    footprint: Footprint = Field(
        default=None,
        description="Size of the region, wrapped around; null = guest memory - start.")
    write_ratio: float = _write_ratio()

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        return _stride_streams("stride", self.accesses, self.start, self.stride, self.footprint,
                               self.write_ratio, n_vcpus, seed, memory, chunk)


class UniformSpec(_Spec):
    """Addresses drawn uniformly from the multiples of ``align`` in [0, footprint)."""

    type: Literal["uniform"] = Field(default="uniform", description="Workload type.")
    accesses: int = _accesses()
    footprint: Footprint = Field(default=None,
                                 description="Size of the region [0, footprint); null = memory.")
    align: PositiveSize = Field(default=8, description="Alignment of every address in bytes.")
    write_ratio: float = _write_ratio()

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        span = _region("uniform", 0, self.footprint, memory)
        if span < self.align:
            raise WorkloadError(f"uniform: footprint {format_size(span)} is smaller than align "
                                f"{format_size(self.align)}")
        streams = []
        for v in range(n_vcpus):
            rng_a, _, rng_w = vcpu_rngs(seed, v)
            pieces = _gen.uniform_chunks(self.accesses, span, self.align, chunk,
                                         self.write_ratio, rng_a, rng_w)
            streams.append(Stream(pieces, chunk, total=self.accesses))
        return streams


class ZipfSpec(_Spec):
    """Page popularity follows a zipf-like law; addresses are 8-byte aligned inside pages.

    With P = footprint // page pages and u uniform in [0, 1), the popularity rank is the
    bounded continuous Pareto inverse CDF (O(1) memory for any P):
    ``floor(exp(u ln P)) - 1`` for alpha = 1, ``floor(((P^(1-a) - 1) u + 1)^(1/(1-a))) - 1``
    otherwise. Rank r goes to page ``perm(r)`` for a seeded Feistel bijection of [0, P) shared
    by all vCPUs (the hot pages are the same for every vCPU, scattered over the footprint), and
    the address is ``page * page_size + 8 * uniform(page_size // 8)``.
    """

    type: Literal["zipf"] = Field(default="zipf", description="Workload type.")
    accesses: int = _accesses()
    alpha: float = Field(default=1.0, gt=0.0, description="Zipf skew (larger = more skewed).")
    footprint: Footprint = Field(default=None,
                                 description="Size of the region [0, footprint); null = memory.")
    page: PositiveSize = Field(default=4096, description="Unit whose popularity follows zipf "
                                                         "(e.g. 4K); a multiple of 8 bytes.")
    write_ratio: float = _write_ratio()

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        if self.page % 8:
            raise WorkloadError(f"zipf: page must be a multiple of 8 bytes, got {self.page}")
        span = _region("zipf", 0, self.footprint, memory)
        n_pages = span // self.page
        if n_pages < 1:
            raise WorkloadError(f"zipf: footprint {format_size(span)} is smaller than one page "
                                f"({format_size(self.page)})")
        perm = _gen.FeistelPermutation(
            n_pages, np.random.SeedSequence(seed, spawn_key=(_SHARED_KEY,)))
        streams = []
        for v in range(n_vcpus):
            rng_a, rng_o, rng_w = vcpu_rngs(seed, v)
            pieces = _gen.zipf_chunks(self.accesses, self.alpha, n_pages, self.page, perm, chunk,
                                      self.write_ratio, rng_a, rng_o, rng_w)
            streams.append(Stream(pieces, chunk, total=self.accesses))
        return streams


class PhasesSpec(_Spec):
    """Several workloads run one after another by every vCPU (phase k starts when phase k-1
    ends for that vCPU). Phases may nest."""

    type: Literal["phases"] = Field(default="phases", description="Workload type.")
    phases: list[WorkloadSpec] = Field(min_length=1, description="The workloads, in order.")

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        per_phase = [p._build(n_vcpus, phase_seed(seed, k), memory, chunk)
                     for k, p in enumerate(self.phases)]
        streams = []
        for v in range(n_vcpus):
            parts = [ph[v] for ph in per_phase]
            totals = [s.total for s in parts]
            known = [t for t in totals if t is not None]
            total = sum(known) if len(known) == len(totals) else None
            streams.append(Stream(chain.from_iterable(parts), chunk, total=total))
        return streams


def phase_seed(seed: int, k: int) -> int:
    """Seed used to build phase ``k`` of a phases workload built with ``seed``."""
    ss = np.random.SeedSequence(seed, spawn_key=(_PHASE_KEY, k))
    return int(ss.generate_state(1, dtype=np.uint64)[0])


# ---------------------------------------------------------------------------------------------
# trace readers

def _limit() -> Any:
    return Field(default=None, gt=0,
                 description="At most this many accesses per vCPU; null = the whole trace.")


def _vcpu_offset() -> Any:
    return Field(default=0, description="vCPU i replays the trace with its addresses shifted "
                                        "by i * vcpu_offset (e.g. 1TiB).")


def _shifted(pieces: Iterable[Chunk], offset: int) -> Iterator[Chunk]:
    """Add ``offset`` (mod 2**64) to the addresses of every piece."""
    off = np.uint64(offset % (1 << 64))
    for addr, kind in pieces:
        if offset:
            addr = addr + off
        yield addr, kind


class LackeySpec(_Spec):
    """Replay a valgrind lackey trace (plain or gzip) on every vCPU.

    Data accesses (L = read, S = write, M = one write) are kept; I lines become fetches only
    with ``instructions: true``.
    """

    type: Literal["lackey"] = Field(default="lackey", description="Workload type.")
    path: str = Field(description="Lackey trace file (plain text or gzip).")
    instructions: bool = Field(default=False,
                               description="Replay I lines as instruction fetches.")
    vcpu_offset: Size = _vcpu_offset()
    limit: Union[int, None] = _limit()

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        _lackey.check_lackey(self.path, self.instructions)
        return [Stream(_shifted(_lackey.iter_lackey(self.path, self.instructions),
                                v * self.vcpu_offset), chunk, limit=self.limit)
                for v in range(n_vcpus)]


class DrMemTraceSpec(_Spec):
    """Replay a DynamoRIO drmemtrace offline trace: thread i (by thread id) runs on vCPU i."""

    type: Literal["drmemtrace"] = Field(default="drmemtrace", description="Workload type.")
    path: str = Field(description="Trace directory: the one holding *.trace.zip, or a parent "
                                  "with a trace/ subdirectory.")
    instructions: bool = Field(default=False,
                               description="Replay instruction records as fetches.")
    limit: Union[int, None] = _limit()

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        threads = _drm.find_thread_files(self.path)
        if n_vcpus > len(threads):
            raise TraceError(self.path, f"{n_vcpus} vCPUs but the trace has only "
                                        f"{len(threads)} threads (one thread per vCPU)")
        return [Stream(_drm.iter_thread(t, self.instructions), chunk, limit=self.limit)
                for t in threads[:n_vcpus]]


class NpySpec(_Spec):
    """Replay a .npy array of addresses (all reads) or a structured array with fields ``addr``
    and ``write`` (or ``kind``) on every vCPU."""

    type: Literal["npy"] = Field(default="npy", description="Workload type.")
    path: str = Field(description=".npy file of uint64 addresses or (addr, write) records.")
    vcpu_offset: Size = _vcpu_offset()
    limit: Union[int, None] = _limit()

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        arr = _npy.open_npy(self.path)
        return [Stream(_npy.iter_npy(arr, self.path, v * self.vcpu_offset, limit=self.limit),
                       chunk, total=int(arr.shape[0]), limit=self.limit)
                for v in range(n_vcpus)]


# ---------------------------------------------------------------------------------------------
# kvm_page_table_test


PAGE_TABLE_TEST_STAGES = ("create", "update", "adjust")


def _ptt_pieces(stage: str, vcpu: int, memory: int, large: int, page: int):
    """The accesses of one vCPU in one stage of tools/testing/selftests/kvm/
    kvm_page_table_test.c (guest_code()), one large page at a time."""
    from workloads.stream import READ, WRITE

    nlarge = memory // large
    if stage == "create":
        # the first 8 bytes of each large page; even vCPUs write, odd ones read
        addrs = np.arange(nlarge, dtype=np.uint64) * np.uint64(large)
        yield addrs, np.full(nlarge, WRITE if vcpu % 2 == 0 else READ, dtype=np.uint8)
        return
    per = large // page
    if stage == "update" and large == page:
        # anonymous backing: write every host page (attributes RO -> RW while logging)
        for lo in range(0, memory // page, 1 << 16):
            n = min(1 << 16, memory // page - lo)
            addrs = (np.arange(lo, lo + n, dtype=np.uint64)) * np.uint64(page)
            yield addrs, np.full(n, WRITE, dtype=np.uint8)
        return
    if stage == "update":
        # write the first host page of each large page (breaking the block), then read the
        # second half of it page by page
        half = np.arange(per // 2, dtype=np.uint64) * np.uint64(page) + np.uint64(large // 2)
        kinds = np.full(per // 2 + 1, READ, dtype=np.uint8)
        kinds[0] = WRITE
        for i in range(nlarge):
            base = np.uint64(i * large)
            addrs = np.empty(per // 2 + 1, dtype=np.uint64)
            addrs[0] = base
            addrs[1:] = half + base
            yield addrs, kinds
        return
    # adjust: read every host page
    for i in range(nlarge):
        yield np.arange(per, dtype=np.uint64) * np.uint64(page) + np.uint64(i * large), \
            np.full(per, READ, dtype=np.uint8)


class PageTableTestSpec(_Spec):
    """kvm_page_table_test: every vCPU runs the selftest's stages over all of guest memory
    (CREATE_MAPPINGS, UPDATE_MAPPINGS with dirty logging on, ADJUST_MAPPINGS with it off);
    the engine synchronises the vCPUs at each stage and times it. The large page is the
    guest's backing (``guest.backing``), the host page the granule."""

    type: Literal["page_table_test"] = Field(default="page_table_test",
                                             description="Workload type.")

    def stage_streams(self, stage: str, n_vcpus: int, memory: int, large: int, page: int,
                      chunk: int) -> list[Stream]:
        if large < page or memory % large:
            raise WorkloadError(f"page_table_test: guest memory {format_size(memory)} is not a "
                                f"multiple of the backing page {format_size(large)}")
        per = large // page
        totals = {"create": memory // large,
                  "update": memory // page if large == page else (memory // large) * (per // 2 + 1),
                  "adjust": memory // page}
        return [Stream(_ptt_pieces(stage, v, memory, large, page), chunk, total=totals[stage])
                for v in range(n_vcpus)]

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        """The stages back to back with 2 MiB large pages (what a vCPU runs, without the
        engine's stage barriers and dirty-log switches; used to validate the spec)."""
        large = min(2 << 20, memory)
        streams = [self.stage_streams(st, n_vcpus, memory, large, 4096, chunk)
                   for st in PAGE_TABLE_TEST_STAGES]
        return [Stream((p for st in streams for p in st[v]), chunk,
                       total=sum(st[v].total for st in streams)) for v in range(n_vcpus)]


class SharedFramesSpec(_Spec):
    """``frames`` host frames, each mapped at ``mappings_per_frame`` guest pages (a shared-page
    or page-merging scenario: pages KSM or THP merged, a file mapped many times), then dropped.

    Guest page p, for p in [0, frames * mappings_per_frame), is at ``start + p * page``; it
    aliases host frame ``p mod frames`` (consecutive pages hit different frames, so each frame's
    mappings are spread over the whole range, every ``frames`` pages). vCPU v touches the pages
    p = v, v + n_vcpus, v + 2 n_vcpus, ... in increasing order, one read at the start of each
    page, ``passes`` times over. The stream is only these touches: the simulator (kvm mode, with
    ``hyp.rmap: pte_list``) is what maps each page to its frame and, after every vCPU has
    finished, drops the mappings as ``drop_by`` says.
    """

    type: Literal["shared_frames"] = Field(default="shared_frames", description="Workload type.")
    frames: int = Field(ge=1, le=1 << 24, description="Host frames shared (N).")
    mappings_per_frame: int = Field(ge=1, le=1 << 24, description="Guest pages mapping each "
                                    "frame (M): each frame's reverse-map list length.")
    start: Size = Field(default=0, description="Guest address of page 0.")
    page: PositiveSize = Field(default=4096, description="Bytes per guest page (the stage-2 "
                               "page size of the granule).")
    passes: int = Field(default=1, ge=1, description="Times each vCPU goes over its pages "
                        "(the first pass faults them in).")
    aliasing: Literal["shadow", "ksm"] = Field(
        default="shadow", description="What maps one frame M times, and so how long its "
        "reverse-map list is (KVM keys rmaps by guest frame): 'shadow' (softmmu, seed 004's "
        "case: the M pages are guest-virtual pages whose guest PTEs map one guest frame, "
        "each a shadow spte on that gfn's rmap: lists of M) or 'ksm' (M guest frames merged "
        "onto one host page: each gfn has its own rmap of one spte; dropping the host page "
        "drops M lists).")
    drop_by: Literal["frame", "address", "reverse_address"] = Field(
        default="frame", description="How the mappings are dropped at the end: 'frame' (each "
        "frame's mappings all at once through its reverse map, as merging pages or unmapping a "
        "host range does: hyp.rmap_drop chooses how), 'address' (page by page in guest "
        "address order, each removed from its frame's list on its own, as zapping the page "
        "tables that hold them does: the order the sptes were added) or 'reverse_address' "
        "(the same, highest address first: newest spte first).")

    @property
    def pages(self) -> int:
        return self.frames * self.mappings_per_frame

    def frame_of(self, page_index: int) -> int:
        """The host frame (0 .. frames-1) that guest page ``page_index`` aliases."""
        return page_index % self.frames

    def _build(self, n_vcpus: int, seed: int, memory: int, chunk: int) -> list[Stream]:
        span = self.pages * self.page
        if self.start + span > memory:
            raise WorkloadError(f"shared_frames: {self.frames} x {self.mappings_per_frame} pages "
                                f"of {format_size(self.page)} from {format_size(self.start)} "
                                f"end at {format_size(self.start + span)}, beyond the guest "
                                f"memory size {format_size(memory)}")
        streams = []
        for v in range(n_vcpus):
            mine = len(range(v, self.pages, n_vcpus))
            total = mine * self.passes
            streams.append(Stream(self._chunks(v, n_vcpus, mine, chunk), chunk, total=total))
        return streams

    def _chunks(self, v: int, n_vcpus: int, mine: int, chunk: int) -> Iterator[Chunk]:
        for _ in range(self.passes):
            for i0 in range(0, mine, chunk):
                n = min(chunk, mine - i0)
                p = np.arange(i0, i0 + n, dtype=np.uint64) * np.uint64(n_vcpus) + np.uint64(v)
                yield p * np.uint64(self.page) + np.uint64(self.start), np.zeros(n, np.uint8)


WorkloadSpec = Annotated[
    Union[SequentialSpec, UniformSpec, ZipfSpec, StrideSpec, PhasesSpec, LackeySpec,
          DrMemTraceSpec, NpySpec, PageTableTestSpec, SharedFramesSpec],
    Field(discriminator="type"),
]
"""Any workload spec, chosen by its ``type`` field."""

PhasesSpec.model_rebuild()

_ADAPTER: TypeAdapter[Any] = TypeAdapter(WorkloadSpec)


def parse_workload(data: Any) -> _Spec:
    """Validate a mapping (e.g. loaded from YAML) into the matching spec model.

    Raises pydantic.ValidationError (a ValueError) naming the offending field.
    """
    return _ADAPTER.validate_python(data)


def resolve_paths(spec: _Spec, base: str | Path) -> _Spec:
    """Return a copy of ``spec`` whose relative trace paths are made relative to ``base``
    (typically the directory of the config file), recursing into phases."""
    if isinstance(spec, PhasesSpec):
        return spec.model_copy(update={"phases": [resolve_paths(p, base) for p in spec.phases]})
    path = getattr(spec, "path", None)
    if isinstance(path, str) and not Path(path).expanduser().is_absolute():
        return spec.model_copy(update={"path": str(Path(base) / path)})
    if isinstance(path, str) and path.startswith("~"):
        return spec.model_copy(update={"path": str(Path(path).expanduser())})
    return spec
