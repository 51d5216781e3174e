"""Experiment configuration: YAML validated by pydantic, with units.

Every parameter has a type, a default and a description, or it is an error
(``extra="forbid"``). Sizes are written with units (``4K``, ``2MiB``, ``20GiB``), the clock in
GHz, every cost in cycles (cache maintenance in bytes per cycle). ``--set dotted.key=value``
overrides are applied to the raw YAML before validation, so they are checked exactly like
the file; ``variants:`` maps a name to such overrides.

Errors are raised as :class:`ConfigError` with the file and the dotted field they concern.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from simulator.arch.geometry import GRANULES, Geometry, GeometryError
from workloads.spec import WorkloadSpec
from workloads.units import Size, format_size, parse_size


class ConfigError(ValueError):
    """Bad configuration: ``source`` (a file or ``--set``), the dotted ``field``, a message."""

    def __init__(self, source: str, field: str, message: str):
        self.source = source
        self.field = field
        self.message = message
        super().__init__(source, field, message)

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        return f"{where}: {self.message}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ---------------------------------------------------------------------------------------
# machine


class MachineConfig(_Model):
    granule: Literal["4K", "16K", "64K"] = Field(default="4K", description="Translation granule.")
    ipa_bits: int = Field(default=40, ge=32, le=52, description="Stage-2 input (IPA) size, bits.")
    pa_bits: int = Field(default=48, ge=32, le=52, description="Physical address size, bits.")
    clock_ghz: float = Field(default=2.6, gt=0, description="CPU clock, GHz (turns cycles into seconds).")
    fwb: bool = Field(default=False, description="FEAT_S2FWB: no cache maintenance for new mappings.")
    tlbi_range: bool = Field(default=False, description="FEAT_TLBIRANGE: range TLB invalidation.")
    bbm_level: int = Field(default=0, ge=0, le=2, description="FEAT_BBM level used by "
                           "hyp.rebuild: ttrem (seed 001): 0 break-before-make, 1 nT block "
                           "first, 2 replace in place (TLB conflict aborts possible).")
    dic: bool = Field(default=False, description="CTR_EL0.DIC: no icache maintenance; guest "
                      "mappings are executable from the start.")

    @property
    def page_shift(self) -> int:
        return GRANULES[self.granule]


# ---------------------------------------------------------------------------------------
# guest


class MemslotConfig(_Model):
    base: Size = Field(description="Guest physical (IPA) base of the memslot.")
    size: Size = Field(description="Memslot size.")


Mapping = Literal["4K", "16K", "64K", "2M", "32M", "512M", "1G", "largest"]
Backing = Literal["anonymous", "thp", "hugetlb_2m", "hugetlb_1g"]


class GuestConfig(_Model):
    memory: Size = Field(default=1 << 30, description="Guest memory (one memslot at IPA 0 "
                         "unless memslots are given).")
    vcpus: int = Field(default=1, ge=1, le=512, description="Number of vCPUs.")
    mapping: Mapping = Field(default="4K", description="Stage-2 mapping size the fault handler "
                             "installs: a page, a block size, or 'largest' (the largest block the "
                             "backing and alignment allow).")
    backing: Backing = Field(default="anonymous", description="Host memory behind the guest: "
                             "anonymous (base pages), thp (2 MiB), hugetlb_2m, hugetlb_1g. "
                             "Bounds the 'largest' mapping.")
    premap: bool = Field(default=False, description="Map all guest memory before time 0.")
    pa_base: Size = Field(default=1 << 30, description="Host physical address of guest memory.")
    placement: Literal["identity", "first_touch"] = Field(
        default="identity", description="Where the guest keeps what the workload touches: "
        "identity (an address is its IPA) or first_touch (regions of placement_unit get the "
        "next free guest-physical region on first touch, as a guest OS allocating would).")
    placement_unit: Size = Field(default=2 << 20, description="Region size of first_touch "
                                 "placement (a power of two, at least the page size).")
    memslots: list[MemslotConfig] | None = Field(
        default=None, description="Memslots (IPA base and size); default one slot [0, memory).")

    def slots(self) -> list[MemslotConfig]:
        return self.memslots or [MemslotConfig(base=0, size=self.memory)]


# ---------------------------------------------------------------------------------------
# TLB


class TLBLevelConfig(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Level name used in counters.")
    sets: int = Field(ge=1, description="Number of sets.")
    ways: int = Field(ge=1, le=1024, description="Ways per set.")
    latency: int = Field(default=1, ge=0, description="Lookup latency, cycles.")
    page_sizes: list[Size] | None = Field(
        default=None, description="Leaf sizes the level holds (default: all of the granule).")
    serves: Literal["all", "data", "instruction"] = Field(
        default="all", description="Accesses the level serves: all, data (reads and writes) "
        "or instruction (fetches); split L1 I/D TLBs over a unified L2.")


class WalkCacheConfig(_Model):
    entries_per_level: int = Field(default=0, ge=0, le=4096, description="Partial-translation "
                                   "entries per table level (0: no walk cache).")


class TLBConfig(_Model):
    levels: list[TLBLevelConfig] = Field(
        default_factory=lambda: [
            TLBLevelConfig(name="l1", sets=8, ways=8, latency=1),
            TLBLevelConfig(name="l2", sets=128, ways=8, latency=8),
        ],
        min_length=1, max_length=8, description="TLB levels, probed in order.")
    walk_cache: WalkCacheConfig = Field(default_factory=WalkCacheConfig, description="Walk cache.")

    @field_validator("levels")
    @classmethod
    def _unique_names(cls, v: list[TLBLevelConfig]) -> list[TLBLevelConfig]:
        names = [lv.name for lv in v]
        if len(set(names)) != len(names):
            raise ValueError(f"TLB level names must be unique, got {names}")
        for what, ok in (("data accesses", ("all", "data")),
                         ("instruction fetches", ("all", "instruction"))):
            if not any(lv.serves in ok for lv in v):
                raise ValueError(f"no level serves {what}")
        return v


# ---------------------------------------------------------------------------------------
# costs


class CostsConfig(_Model):
    """Every cost the model charges, in cycles (cache maintenance in bytes per cycle).

    Defaults describe a server-class core without FWB (Kunpeng 920-like, as in seed 003);
    README "Where each default cost comes from" gives the source of each."""

    access: int = Field(default=1, ge=0, description="Issue cost of every access, cycles.")
    walk_mem_ref: int = Field(default=40, ge=0, description="One descriptor read by the "
                              "hardware walk, cycles (walks mostly hit L2/L3).")
    walk_cache_hit: int = Field(default=2, ge=0, description="A walk-cache hit, cycles.")
    fault_entry_exit: int = Field(default=1500, ge=0, description="Stage-2 abort: exception "
                                  "entry to EL2, exit and re-entry to the guest, cycles.")
    fault_handler: int = Field(default=2500, ge=0, description="user_mem_abort() work outside "
                               "the page-table walk (pfn lookup, memcache top-up), cycles.")
    lock: int = Field(default=50, ge=0, description="Uncontended MMU lock acquire+release, cycles.")
    pte_visit: int = Field(default=4, ge=0, description="Software walker: one descriptor visited.")
    pte_store: int = Field(default=4, ge=0, description="Software walker: one descriptor stored.")
    table_alloc: int = Field(default=250, ge=0, description="Allocate and zero a table page.")
    table_free: int = Field(default=50, ge=0, description="Free a table page.")
    tlbi_ipa: int = Field(default=250, ge=0, description="TLBI IPAS2E1IS + DSB + TLBI "
                          "VMALLE1IS + DSB + ISB, broadcast, cycles.")
    tlbi_range: int = Field(default=300, ge=0, description="Range TLBI sequence, cycles.")
    tlbi_vmid: int = Field(default=400, ge=0, description="TLBI VMALLS12E1IS + DSB, cycles.")
    cmo_bytes_per_cycle: float = Field(default=3.2, gt=0, description="dcache clean+invalidate "
                                       "to PoC throughput without FWB, bytes per cycle.")
    icache_bytes_per_cycle: float = Field(default=64.0, gt=0, description="icache invalidate "
                                          "to PoU throughput, bytes per cycle.")
    perm_fault_handler: int = Field(default=1000, ge=0, description="Permission-fault handling "
                                    "(relax permissions) beyond entry/exit, cycles.")
    host_abort_handler: int = Field(default=800, ge=0, description="pKVM host abort: "
                                    "handle_host_mem_abort() work outside the walk, cycles.")
    tlb_conflict_abort: int = Field(default=3000, ge=0, description="A TLB conflict abort: "
                                    "exception entry, local TLBI VMALLS12E1 + DSB, return.")
    dirty_page: int = Field(default=150, ge=0, description="Marking a page dirty in the "
                            "memslot's bitmap (mark_page_dirty), cycles.")
    hypercall: int = Field(default=1200, ge=0, description="pKVM: one host hypercall (donate "
                           "or reclaim one page) round trip, cycles.")
    rmap_touch: int = Field(default=4, ge=0, description="hyp.rmap: one read of reverse-map "
                            "metadata (rmap head, descriptor header, one slot), cycles.")
    rmap_desc_free: int = Field(default=60, ge=0, description="hyp.rmap: freeing one "
                                "pte_list_desc (kmem_cache_free), cycles.")
    rmap_clear: int = Field(default=20, ge=0, description="hyp.rmap: clearing one spte with its "
                            "accessed/dirty tracking, cycles.")


# ---------------------------------------------------------------------------------------
# pKVM: the hypervisor, the host and its guests

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


class DirtyLogConfig(_Model):
    split: Literal["lazy", "eager"] = Field(default="lazy", description="lazy: blocks are "
                                            "split on the first write fault (5.11); eager: "
                                            "split to pages when logging starts "
                                            "(kvm_pgtable_stage2_split, 6.4+).")
    enable_at: Duration | None = Field(default=None, description="When dirty logging starts "
                                       "(generic workloads; page_table_test drives it by "
                                       "stage).")
    disable_at: Duration | None = Field(default=None, description="When it stops (migration "
                                        "done or cancelled): later faults rebuild blocks.")


class HypConfig(_Model):
    mode: Literal["kvm", "pkvm"] = Field(default="kvm", description="kvm: one guest under "
                                         "the host kernel; pkvm: protected mode with a host "
                                         "stage-2, ownership, and guests donated and reclaimed.")
    vmemmap_layout: Literal["legacy32", "packed4", "packed2"] = Field(
        default="packed4", description="struct hyp_page layout (seed 002): legacy32 (32 B), "
        "packed4 (4 B, u16 refcount + u16 order), packed2 (2 B: 13-bit refcount, 3-bit order).")
    on_bug: Literal["stop", "count"] = Field(default="stop", description="A hyp_page field "
                                             "overflow (the kernel's BUG): stop the run with an "
                                             "error naming the page, or count it.")
    host_s2_pools: Literal["unified", "separate"] = Field(
        default="unified", description="Host stage-2 table pages: one pool (seed 002) or "
        "separate memory and MMIO pools (MMIO: about 1 GiB of IPA space worth of tables).")
    pool_pages: int | None = Field(default=None, ge=1, description="Pages of the hyp pool that "
                                   "guest stage-2 tables come from (default: the kernel's "
                                   "page-granular budget for all host memory).")
    coalesce: bool = Field(default=False, description="Seed 000: count host stage-2 entries by "
                           "the coalescing rule and zap tables left with default entries when "
                           "ownership returns to the host.")
    teardown_tlbi: bool = Field(default=True, description="Debug knob: false skips the TLB "
                                "invalidation of a torn-down guest's VMID (breaks isolation).")
    rebuild: Literal["bbm", "install_first", "ttrem"] = Field(
        default="bbm", description="How a fault replaces a table by a block: bbm (5.11: "
        "invalidate, TLBI, unmap the subtree, CMO the block, install), install_first (seed "
        "003: install, then unmap), ttrem (seed 001, with machine.bbm_level).")
    dirty_log: DirtyLogConfig = Field(default_factory=DirtyLogConfig, description="Dirty "
                                      "logging (kvm mode).")
    rmap: Literal["none", "pte_list"] = Field(
        default="none", description="kvm mode, seed 004: keep x86 KVM's reverse map (per host "
        "frame, the list of stage-2 leaves that map it, as pte_list_desc chains) and drop "
        "every mapping through it once the vCPUs have finished.")
    rmap_ext: int = Field(default=14, ge=2, le=64, description="PTE_LIST_EXT: sptes per "
                          "pte_list_desc (14 today, 3 in 2013).")
    rmap_drop: Literal["one_by_one", "batch"] = Field(
        default="batch", description="Dropping all mappings of a frame: one_by_one (remove one, "
        "restart the iteration: before seed 004) or batch (clear every entry in one pass, "
        "free the descriptors together: seed 004).")


class HostRegionConfig(_Model):
    base: Size = Field(description="Physical base address.")
    size: Size = Field(description="Size.")
    type: Literal["memory", "mmio"] = Field(default="memory", description="memory (mapped RWX) "
                                            "or mmio (mapped RW, device, XN).")


def _default_regions() -> list[HostRegionConfig]:
    return [HostRegionConfig(base=0, size=1 << 30, type="mmio"),
            HostRegionConfig(base=1 << 30, size=4 << 30, type="memory")]


class HostConfig(_Model):
    memory: list[HostRegionConfig] = Field(default_factory=_default_regions, description=
                                           "Physical memory and MMIO regions of the host.")
    cpus: int = Field(default=2, ge=1, le=256, description="Physical CPUs; host CPU i runs on "
                      "CPU i, guest vCPUs are spread over the CPUs and share their TLBs.")
    workload: WorkloadSpec | None = Field(default=None, description="What each host CPU runs "
                                          "(addresses are offsets into host.address_space).")
    address_space: Literal["memory", "mmio"] = Field(
        default="memory", description="What host workload addresses index: the memory regions "
        "or the MMIO regions (windows included), in address order.")
    respect_ownership: bool = Field(default=True, description="The host kernel touches only "
                                    "pages it owns (accesses to donated pages are skipped and "
                                    "counted); false lets them abort (host.illegal_accesses).")
    mmio_windows: "MmioWindowsConfig | None" = Field(
        default=None, description="Many small MMIO regions: count windows of size bytes every "
        "stride bytes from base (device BARs), in addition to host.memory.")
    sample_cycles: int = Field(default=1_000_000, ge=1000, description="Period of the "
                               "host.mappings time series, cycles.")


class MmioWindowsConfig(_Model):
    base: Size = Field(description="Physical address of the first window.")
    count: int = Field(ge=1, le=1 << 20, description="Number of windows.")
    size: Size = Field(description="Bytes per window.")
    stride: Size = Field(description="Bytes from one window to the next.")


HostConfig.model_rebuild()


class BalloonConfig(_Model):
    at: Duration = Field(description="When the guest relinquishes the pages (from when its "
                         "vCPUs start, after its memory is donated).")
    size: Size = Field(description="How much memory it gives back (from the top of its memory).")


class GuestSpecConfig(GuestConfig):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", description="Guest name (counters "
                      "guest.<name>.*).")
    workload: WorkloadSpec = Field(description="What each of its vCPUs runs.")
    start: Duration = Field(default=0, description="When the guest is created.")
    run: Duration | None = Field(default=None, description="How long it runs before it is torn "
                                 "down (null: until its workload ends).")
    chunk: Size = Field(default=2 << 20, description="Host memory is donated in physically "
                        "contiguous runs of this size.")
    balloon: list[BalloonConfig] = Field(default_factory=list, description="Memory the guest "
                                         "relinquishes at run time.")
    shared: Size = Field(default=0, description="The top part of the guest's memory that the "
                         "host shares with it (host_share_guest: the host keeps the pages and "
                         "may touch them; page states SHARED_OWNED / SHARED_BORROWED in the "
                         "software bits) instead of donating it. Equal to memory: a "
                         "non-protected guest. A multiple of chunk.")


# ---------------------------------------------------------------------------------------
# engine


class EngineConfig(_Model):
    quantum_cycles: int = Field(default=20_000, ge=100, description="Cycles a vCPU runs "
                                "between scheduling points; bounds the error of concurrency.")
    mmu_lock: Literal["exclusive", "shared"] = Field(
        default="shared", description="Fault-path MMU lock: 'exclusive' (Linux 5.11 spinlock: "
        "faults serialized) or 'shared' (6.2+: read lock on the fault path, writers exclusive).")
    timeslice: Duration = Field(default="750us", description="On a CPU shared by several "
                                "contexts (pkvm: the host task and guest vCPUs), how long one "
                                "holds it while others wait (EEVDF's base slice, "
                                "sysctl_sched_base_slice, before its scaling by CPU count).")
    max_cycles: int | None = Field(default=None, gt=0, description="Stop the run at this "
                                   "simulated time (cycles).")
    chunk: int = Field(default=1 << 16, ge=1024, description="Accesses generated per chunk.")


# ---------------------------------------------------------------------------------------
# the experiment


class ExperimentConfig(_Model):
    name: str = Field(default="experiment", description="Experiment name.")
    seed: int = Field(default=1, ge=0, description="Seed of every random generator.")
    machine: MachineConfig = Field(default_factory=MachineConfig)
    guest: GuestConfig = Field(default_factory=GuestConfig)
    tlb: TLBConfig = Field(default_factory=TLBConfig)
    costs: CostsConfig = Field(default_factory=CostsConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    hyp: HypConfig = Field(default_factory=HypConfig)
    host: HostConfig = Field(default_factory=HostConfig)
    guests: list[GuestSpecConfig] = Field(default_factory=list, description="pKVM guests.")
    workload: WorkloadSpec | None = Field(default=None, description="The access stream of "
                                          "every vCPU of the (kvm mode) guest.")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Variant name -> {dotted.key: value} overrides.")
    sweep: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted key -> list of values; `mmusim sweep` runs "
        "the cross product (x every variant); `mmusim run` uses the file's own values.")

    sweep_skip_invalid: bool = Field(
        default=False, description="Record sweep points whose configuration is invalid (e.g. "
        "packed2 with 64K pages) as skipped instead of stopping the sweep.")

    @field_validator("sweep")
    @classmethod
    def _sweep_lists(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep.{key}: needs at least one value")
        return v

    @model_validator(mode="after")
    def _check_geometry(self) -> "ExperimentConfig":
        try:
            geom = self.geometry
        except GeometryError as e:
            raise ValueError(f"machine: {e}") from None
        if self.hyp.mode == "kvm" and self.workload is None:
            raise ValueError("workload: required (the guest's access stream)")
        if self.hyp.mode == "pkvm":
            self._check_pkvm(geom)
        self._check_page_table_test()
        ipa_limit = 1 << self.machine.ipa_bits
        for i, slot in enumerate(self.guest.slots()):
            if slot.size <= 0 or slot.size % geom.page_size:
                raise ValueError(f"guest.memslots[{i}].size: {format_size(slot.size)} is not a "
                                 f"positive multiple of the {self.machine.granule} page")
            if slot.base % geom.page_size:
                raise ValueError(f"guest.memslots[{i}].base: not aligned to the "
                                 f"{self.machine.granule} page")
            if slot.base + slot.size > ipa_limit:
                raise ValueError(
                    f"guest.memory: {format_size(slot.base + slot.size)} of IPA space does not fit "
                    f"in machine.ipa_bits = {self.machine.ipa_bits} "
                    f"({format_size(ipa_limit)})")
        slots = sorted(self.guest.slots(), key=lambda s: s.base)
        for a, b in zip(slots, slots[1:]):
            if a.base + a.size > b.base:
                raise ValueError("guest.memslots: memslots overlap")
        total = sum(s.size for s in slots)
        if self.guest.pa_base % geom.page_size:
            raise ValueError("guest.pa_base: not aligned to the page size")
        if self.guest.pa_base + total > 1 << self.machine.pa_bits:
            raise ValueError(f"guest.memory: does not fit below machine.pa_bits = "
                             f"{self.machine.pa_bits} from guest.pa_base")
        unit = self.guest.placement_unit
        if unit < geom.page_size or unit & (unit - 1):
            raise ValueError("guest.placement_unit: must be a power of two of at least the "
                             "page size")
        # the guests that run: the kvm guest, or each pkvm guest
        runs = ([("guest", self.guest)] if self.hyp.mode == "kvm" else
                [(f"guests[{i}]", g) for i, g in enumerate(self.guests)])
        for where, g in runs:
            if g.mapping != "largest":
                size = parse_size(g.mapping)
                if size not in geom.leaf_sizes().values():
                    sizes = ", ".join(format_size(s) for s in geom.leaf_sizes().values())
                    raise ValueError(f"{where}.mapping: {g.mapping} is not a mapping size of "
                                     f"the {self.machine.granule} granule ({sizes})")
        for lv in self.tlb.levels:
            for ps in lv.page_sizes or []:
                if ps not in geom.leaf_sizes().values():
                    raise ValueError(f"tlb.levels.{lv.name}.page_sizes: {format_size(ps)} is not "
                                     f"a leaf size of the {self.machine.granule} granule")
        self._check_rmap(geom)
        return self

    def _check_page_table_test(self) -> None:
        from workloads.spec import PageTableTestSpec

        others = [g.workload for g in self.guests] + [self.host.workload]
        if any(isinstance(w, PageTableTestSpec) for w in others):
            raise ValueError("workload.type: page_table_test is the kvm-mode workload only "
                             "(not for guests[] or host)")
        if not isinstance(self.workload, PageTableTestSpec):
            return
        if self.hyp.mode != "kvm":
            raise ValueError("workload.type: page_table_test runs in hyp.mode: kvm")
        large = self.backing_size()
        if self.guest.memory % large:
            raise ValueError(f"guest.memory: page_table_test needs a multiple of the backing "
                             f"page ({format_size(large)})")
        if self.guest.memslots:
            raise ValueError("guest.memslots: page_table_test uses one memslot")

    def _check_pkvm(self, geom: Geometry) -> None:
        from simulator.hyp.page_alloc import layout_supports

        reason = layout_supports(self.hyp.vmemmap_layout, geom.page_shift)
        if reason:
            raise ValueError(f"hyp.vmemmap_layout: {reason}")
        regions = sorted(self.host.memory, key=lambda r: r.base)
        for i, r in enumerate(self.host.memory):
            if r.size <= 0 or r.size % geom.page_size or r.base % geom.page_size:
                raise ValueError(f"host.memory[{i}]: base and size must be positive multiples "
                                 f"of the {self.machine.granule} page")
            if r.base + r.size > 1 << self.machine.pa_bits:
                raise ValueError(f"host.memory[{i}]: beyond machine.pa_bits")
        for a, b in zip(regions, regions[1:]):
            if a.base + a.size > b.base:
                raise ValueError("host.memory: regions overlap")
        if not any(r.type == "memory" for r in regions):
            raise ValueError("host.memory: no memory region")
        w = self.host.mmio_windows
        if w is not None:
            page = geom.page_size
            if w.size <= 0 or w.size % page or w.base % page or w.stride % page:
                raise ValueError("host.mmio_windows: base, size and stride must be multiples "
                                 f"of the {self.machine.granule} page (size positive)")
            if w.count > 1 and w.stride < w.size:
                raise ValueError("host.mmio_windows: stride smaller than size (windows "
                                 "overlap)")
            if w.base + (w.count - 1) * w.stride + w.size > 1 << self.machine.pa_bits:
                raise ValueError("host.mmio_windows: beyond machine.pa_bits")
            for r in regions:
                # the first window ending after the region's base, if it starts before its end
                i = max(0, -(-(r.base + 1 - w.base - w.size) // max(w.stride, 1)))
                if i < w.count and w.base + i * w.stride < r.base + r.size:
                    raise ValueError(f"host.mmio_windows: window {i} overlaps the host.memory "
                                     f"region at {r.base:#x}")
        if self.host.address_space == "mmio" and self.host.workload is not None and not (
                any(r.type == "mmio" for r in regions) or self.host.mmio_windows):
            raise ValueError("host.address_space: mmio, but there is no MMIO region")
        names = [g.name for g in self.guests]
        if len(set(names)) != len(names):
            raise ValueError(f"guests: names must be unique, got {names}")
        for i, g in enumerate(self.guests):
            if g.memory % g.chunk or g.chunk % geom.page_size or g.chunk & (g.chunk - 1):
                raise ValueError(f"guests[{i}].chunk: a power of two of at least a page that "
                                 "divides the guest memory")
            if g.memory > 1 << self.machine.ipa_bits:
                raise ValueError(f"guests[{i}].memory: does not fit machine.ipa_bits")
            if g.shared > g.memory or g.shared % g.chunk:
                raise ValueError(f"guests[{i}].shared: a multiple of chunk "
                                 f"({format_size(g.chunk)}) no larger than memory")
        if len(self.guests) > 125:
            raise ValueError("guests: at most 125 (owner ids are 7 bits: 0 host, 1 hyp)")

    def _check_rmap(self, geom: Geometry) -> None:
        """hyp.rmap and the shared_frames workload: kvm mode, page mappings only."""
        def shared(w) -> bool:
            return w is not None and (w.type == "shared_frames" or (
                w.type == "phases" and any(shared(p) for p in w.phases)))
        others = [("host.workload", self.host.workload)] + [
            (f"guests[{i}].workload", g.workload) for i, g in enumerate(self.guests)]
        if self.hyp.mode == "pkvm":
            others.append(("workload", self.workload))
        elif self.workload is not None and self.workload.type == "phases":
            others.append(("workload", self.workload))
        for where, w in others:
            if shared(w):
                raise ValueError(f"{where}: shared_frames is the top-level workload of kvm mode "
                                 "only (its guest pages alias host frames)")
        w = self.workload
        if self.hyp.mode == "kvm" and w is not None and w.type == "shared_frames":
            if self.hyp.rmap != "pte_list":
                raise ValueError("hyp.rmap: the shared_frames workload drops its mappings "
                                 "through the reverse map: set hyp.rmap: pte_list")
            if w.page != geom.page_size:
                raise ValueError(f"workload.page: {format_size(w.page)} is not the "
                                 f"{self.machine.granule} page size")
        if self.hyp.rmap == "none":
            return
        if self.hyp.mode != "kvm":
            raise ValueError("hyp.rmap: the reverse map is modelled in kvm mode only")
        if w is not None and w.type == "page_table_test":
            raise ValueError("hyp.rmap: not with the page_table_test workload (its stage "
                             "driver runs the vCPUs; the drop phase follows plain streams)")
        want = self.mapping_size() or self.backing_size()
        if want != geom.page_size:
            raise ValueError(f"hyp.rmap: the reverse map is modelled for page mappings only: "
                             f"set guest.mapping to {self.machine.granule}")
        if self.guest.premap:
            raise ValueError("hyp.rmap: guest.premap maps without faults, so nothing would "
                             "enter the reverse map: set guest.premap: false")

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_granule(self.machine.granule, self.machine.ipa_bits)

    def mapping_size(self) -> int | None:
        """The mapping size of guest.mapping, or None for 'largest'."""
        return None if self.guest.mapping == "largest" else parse_size(self.guest.mapping)

    def backing_size(self) -> int:
        g = self.geometry
        return {
            "anonymous": g.page_size,
            "thp": g.size(2),
            "hugetlb_2m": 2 << 20,
            "hugetlb_1g": 1 << 30,
        }[self.guest.backing]


# ---------------------------------------------------------------------------------------
# loading, overrides, variants


def _format_loc(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("sequential", "uniform", "zipf", "stride", "phases", "lackey", "drmemtrace",
                   "npy", "shared_frames") and parts and parts[-1].startswith("workload"):
            continue  # the discriminated union's tag adds nothing for the user
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts).replace(".[", "[")


def _validation_error(source: str, err: ValidationError) -> ConfigError:
    e = err.errors()[0]
    field = _format_loc(tuple(e.get("loc", ())))
    msg = e.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if e.get("type") == "extra_forbidden":
        msg = "unknown key"
    if ": " in msg and not field and msg.split(": ", 1)[0].replace(".", "").replace("[", "").replace("]", "").replace("_", "").isalnum():
        field, msg = msg.split(": ", 1)
    return ConfigError(source, field, msg)


def parse_value(text: str) -> Any:
    """A --set value: YAML scalar/list syntax (``4K`` stays a string, ``true`` a bool)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict, dotted: str, value: Any, source: str = "--set") -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"``; list items by index or by the
    ``name`` of an item (``tlb.levels.l2.sets``)."""
    if not dotted or any(not p for p in dotted.split(".")):
        raise ConfigError(source, dotted, "expected a dotted key like guest.vcpus")
    parts = dotted.split(".")
    node: Any = data
    for i, key in enumerate(parts[:-1]):
        node = _child(node, key, source, ".".join(parts[: i + 1]), create=True)
    last = parts[-1]
    if isinstance(node, list):
        idx = _list_index(node, last, source, dotted)
        node[idx] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(source, dotted, "cannot set a key inside a scalar")


def _list_index(node: list, key: str, source: str, where: str) -> int:
    if key.lstrip("-").isdigit():
        idx = int(key)
        if not -len(node) <= idx < len(node):
            raise ConfigError(source, where, f"index {idx} out of range ({len(node)} items)")
        return idx
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == key:
            return i
    raise ConfigError(source, where, f"no list item named {key!r}")


def _child(node: Any, key: str, source: str, where: str, create: bool) -> Any:
    if isinstance(node, dict):
        if key not in node or node[key] is None:
            if not create:
                raise ConfigError(source, where, "no such key")
            node[key] = {}
        return node[key]
    if isinstance(node, list):
        return node[_list_index(node, key, source, where)]
    raise ConfigError(source, where, "cannot descend into a scalar")


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file (and line for syntax errors)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), "", f"cannot read: {e.__class__.__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(str(path), where, problem) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", "the file must hold a YAML mapping")
    return data


def validate(data: dict, source: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise _validation_error(source, err) from None


def parse_sets(sets: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in sets or []:
        if "=" not in item:
            raise ConfigError("--set", item, "expected dotted.key=value")
        key, _, text = item.partition("=")
        out.append((key.strip(), parse_value(text)))
    return out


def resolve_workload_paths(data: dict, base: Path) -> None:
    """Make trace paths in ``workload`` relative to the config file's directory."""
    def fix(w: Any) -> None:
        if isinstance(w, dict):
            if "path" in w and isinstance(w["path"], str) and not Path(w["path"]).is_absolute():
                candidate = base / w["path"]
                if candidate.exists() or not Path(w["path"]).exists():
                    w["path"] = str(candidate)
            for sub in w.get("phases", []) or []:
                fix(sub)
    fix(data.get("workload"))


class Experiment:
    """A loaded experiment: the raw data (overrides applied), its validated base config, and
    one validated config per variant (``default`` when it has none)."""

    def __init__(self, path: str | Path, sets: list[str] | None = None):
        self.path = str(path)
        raw = load_yaml(path)
        resolve_workload_paths(raw, Path(path).resolve().parent)
        overrides = parse_sets(sets)
        # Overrides address the resolved configuration, so a key that exists only as a
        # default (tlb.levels.l2.sets with no tlb: in the file) can be set; a file that does
        # not validate on its own takes them raw (an override may be what repairs it).
        try:
            data = validate(copy.deepcopy(raw), self.path).model_dump(mode="json")
        except ConfigError:
            if not overrides:
                raise
            data = raw
        for key, value in overrides:
            apply_override(data, key, value)
        try:
            self.config = validate(data, self.path)
        except ConfigError as e:
            # a field an override touched: the override is what to fix
            for key, _ in overrides:
                if e.field and (key.startswith(e.field) or e.field.startswith(key)):
                    raise ConfigError(f"{self.path}: --set {key}", e.field, e.message) from None
            raise
        self.raw = self.config.model_dump(mode="json")
        self.variants: dict[str, ExperimentConfig] = {}
        for name in list(self.config.variants) or ["default"]:
            self.variants[name] = self.variant_config(name, {})

    def variant_config(self, name: str, point: dict[str, Any],
                       seed: int | None = None) -> "ExperimentConfig":
        """The configuration of variant ``name`` at sweep ``point`` (overrides of the
        point first, then the variant's)."""
        data = copy.deepcopy(self.raw)
        variants = data.pop("variants", None) or {}
        data.pop("sweep", None)
        where = self.path + (f": sweep point {json.dumps(point)}" if point else "")
        for key, value in point.items():
            apply_override(data, key, copy.deepcopy(value), where)
        for key, value in (variants.get(name) or {}).items():
            apply_override(data, key, copy.deepcopy(value), f"{where}: variants.{name}")
        if seed is not None:
            data["seed"] = seed
        label = f"{where} (variant {name})" if name != "default" else where
        return validate(data, label)

    def resolved(self) -> dict:
        """The base configuration with every default filled in (for results.json)."""
        return self.config.model_dump(mode="json")


def seconds(cycles: int, clock_ghz: float) -> float:
    return cycles / (clock_ghz * 1e9)


def is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0 and math.log2(n).is_integer()
