"""The parts of an experiment's configuration: machine, guest, TLBs, costs, the hypervisor,
the host and its guests, the engine (pydantic models: a type, a default and a description
for every parameter)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from simulator.arch.geometry import GRANULES
from simulator.config.units import (
    Duration,
)
from workloads.spec import WorkloadSpec
from workloads.units import Size


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
                           "hyp.rebuild: ttrem (seed 001): 0 break-before-make, 1 and 2 write the "
                           "block with nT first, as the patch does; hyp.rebuild: replace needs 2.")
    dic: bool = Field(default=False, description="CTR_EL0.DIC: no icache maintenance; guest "
                      "mappings are executable from the start.")
    mem_gbps: float | None = Field(default=None, gt=0, le=1e5, description="Sustained memory "
                                   "throughput all CPUs share, GB/s (10^9 bytes/s): the DRAM "
                                   "traffic of their accesses and walks (costs.access_bytes, "
                                   "costs.walk_ref_bytes) queues for it. None: unlimited.")

    @property
    def page_shift(self) -> int:
        return GRANULES[self.granule]

    @property
    def mem_bytes_per_cycle(self) -> float:
        """machine.mem_gbps in bytes per CPU cycle; 0.0: unlimited."""
        return 0.0 if self.mem_gbps is None else self.mem_gbps / self.clock_ghz


# ---------------------------------------------------------------------------------------
# guest


class MemslotConfig(_Model):
    base: Size = Field(description="Guest physical (IPA) base of the memslot.")
    size: Size = Field(description="Memslot size.")


Mapping = Literal["4K", "16K", "64K", "2M", "32M", "512M", "1G", "largest"]
Backing = Literal["anonymous", "thp", "hugetlb_2m", "hugetlb_1g"]


class Stage1Config(_Model):
    """The guest's own page tables (VMSAv8-64 stage-1), built on demand by its fault handler
    (simulator.guest.stage1). With it, workload addresses are virtual addresses."""

    granule: Literal["4K", "16K", "64K"] = Field(default="4K", description="Stage-1 granule "
                                                 "(may differ from machine.granule).")
    va_bits: int = Field(default=48, ge=36, le=48, description="Virtual address size, bits "
                         "(TCR_EL1.T0SZ = 64 - va_bits).")
    mapping: Literal["4K", "16K", "64K", "2M", "32M", "512M", "1G", "thp", "largest"] = Field(
        default="4K", description="What a stage-1 fault maps: a page, a block size, thp (the "
        "level-2 block) or largest (the largest block of the granule).")
    contiguous: bool = Field(default=False, description="Map the whole contiguous run around "
                             "the fault with the contiguous bit (CONT_PTES pages or CONT_PMDS "
                             "blocks: 16 x 4K or 16 x 2M with the 4K granule).")

    def geometry(self):
        """The stage-1's S1Geometry (granule and VA size)."""
        from simulator.arch.stage1 import S1Geometry

        return S1Geometry.from_granule(self.granule, self.va_bits)

    def map_level(self) -> int:
        """The level a stage-1 fault maps at; ValueError when ``mapping`` is no leaf of
        this geometry."""
        from simulator.arch.geometry import format_size
        from workloads.units import parse_size

        g1 = self.geometry()
        if self.mapping == "largest":
            return g1.block_levels()[0]
        if self.mapping == "thp":
            if 2 not in g1.block_levels():
                raise ValueError("guest.stage1.mapping: thp needs level-2 blocks")
            return 2
        size = parse_size(self.mapping)
        for lvl, sz in g1.leaf_sizes().items():
            if sz == size:
                return lvl
        sizes = ", ".join(format_size(x) for x in g1.leaf_sizes().values())
        raise ValueError(f"guest.stage1.mapping: {self.mapping} is not a stage-1 leaf size of "
                         f"the {self.granule} granule with {self.va_bits}-bit VAs ({sizes})")


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
    populated: bool = Field(default=True, description="The VMM touched all guest memory "
                            "before the run (MAP_POPULATE, a memset). false: the first "
                            "stage-2 fault on each backing page allocates and zeroes it "
                            "(gfn_to_pfn(), before the MMU lock; costs.page_alloc, "
                            "costs.zero_bytes_per_cycle), and vCPUs faulting on it meanwhile "
                            "wait for it.")
    pa_base: Size = Field(default=1 << 30, description="Host physical address of guest memory.")
    placement: Literal["identity", "first_touch"] = Field(
        default="identity", description="Where the guest keeps what the workload touches: "
        "identity (an address is its IPA) or first_touch (regions of placement_unit get the "
        "next free guest-physical region on first touch, as a guest OS allocating would).")
    placement_unit: Size = Field(default=2 << 20, description="Region size of first_touch "
                                 "placement (a power of two, at least the page size).")
    memslots: list[MemslotConfig] | None = Field(
        default=None, description="Memslots (IPA base and size); default one slot [0, memory).")
    stage1: Stage1Config | None = Field(
        default=None, description="The guest's stage-1 (two-stage translation): workload "
        "addresses are VAs, translated by the guest's tables and then by stage-2. None: "
        "addresses are IPAs (stage-2 only).")

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
    stage2_sizes: list[Size] = Field(
        default_factory=list, description="With a guest stage-1: the stage-2 (IPA -> PA) "
        "entry sizes this level also caches for nested walks, beside the combined ones "
        "(Neoverse N1's L2 TLB: the blocks, 2M and 1G). Empty: none.")
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
    access_bytes: int = Field(default=0, ge=0, le=4096, description="Memory traffic of one "
                              "access, bytes (64: a line fill from DRAM each; 0: accesses hit "
                              "in the caches). Drawn from machine.mem_gbps.")
    walk_ref_bytes: int = Field(default=0, ge=0, le=4096, description="Memory traffic of one "
                                "descriptor read by the hardware walk, bytes (0: descriptors "
                                "hit in the caches). Drawn from machine.mem_gbps.")
    fault_entry_exit: int = Field(default=1500, ge=0, description="Stage-2 abort: exception "
                                  "entry to EL2, exit and re-entry to the guest, cycles.")
    fault_handler: int = Field(default=2500, ge=0, description="user_mem_abort() work outside "
                               "the page-table walk (pfn lookup, memcache top-up), cycles.")
    lock: int = Field(default=50, ge=0, description="Uncontended MMU lock acquire+release, cycles.")
    lock_handoff: int = Field(default=0, ge=0, description="A lock passed to a CPU that waited "
                              "for it: the lock's cache line and the page-table and fault-path "
                              "lines the next holder reads migrate from the last holder's CPU; "
                              "the new holder's work starts this much later, cycles.")
    pte_visit: int = Field(default=4, ge=0, description="Software walker: one descriptor visited.")
    pte_store: int = Field(default=4, ge=0, description="Software walker: one descriptor stored.")
    pte_put: int = Field(default=0, ge=0, description="Software walker: one reference dropped "
                         "on a table page (put_page(): an atomic decrement), per valid entry "
                         "removed and per table freed. 0: not charged.")
    table_alloc: int = Field(default=250, ge=0, description="Allocate and zero a table page.")
    table_free: int = Field(default=50, ge=0, description="Free a table page.")
    tlbi_ipa: int = Field(default=250, ge=0, description="TLBI IPAS2E1IS + DSB + TLBI "
                          "VMALLE1IS + DSB + ISB, broadcast, cycles.")
    tlbi_range: int = Field(default=300, ge=0, description="Range TLBI sequence, cycles.")
    tlbi_vmid: int = Field(default=400, ge=0, description="TLBI VMALLS12E1IS + DSB, cycles.")
    cmo_bytes_per_cycle: float = Field(default=3.2, gt=0, description="dcache clean+invalidate "
                                       "to PoC throughput without FWB, bytes per cycle.")
    guest_fault: int = Field(default=4900, ge=0, description="The guest kernel's page fault "
                             "on a stage-1 translation fault (exception, handle_mm_fault(), page "
                             "allocation, return), cycles; zeroing the new pages is charged at "
                             "zero_bytes_per_cycle on top.")
    page_alloc: int = Field(default=1500, ge=0, description="Host: allocating one backing page "
                            "on a guest's first touch (buddy or hugetlb pool, the VMM's page "
                            "table, accounting), zeroing not included, cycles.")
    zero_bytes_per_cycle: float = Field(default=8.0, gt=0, description="Zeroing a new "
                                        "page (clear_page(), DC ZVA): the host's backing pages, the "
                                        "guest's own new pages and tables, bytes per cycle.")
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
    budget_levels: Literal[4, 5] = Field(
        default=5, description="Levels __hyp_pgtable_max_pages() sums over: 5 since 6.9 "
        "(KVM_PGTABLE_FIRST_LEVEL -1 with LPA2), 4 before. Sizes the host stage-2 pools.")
    host_s2_try: Literal["all", "idmap", "mmio"] = Field(
        default="all", description="What recycles the host's MMIO mappings on -ENOMEM "
        "(host_stage2_unmap_dev_all(), then one retry): all (5.15 on, the host_stage2_try() "
        "macro: host aborts and ownership changes), idmap (5.14: any host abort), mmio (5.13: "
        "only an MMIO abort; a memory abort's -ENOMEM is a BUG).")
    vmemmap_covers: Literal["memory", "hyp"] = Field(
        default="memory", description="What the hyp vmemmap covers: every memblock (5.16 on, "
        "hyp_vmemmap_pages()) or only the hypervisor's own pages (5.13 to 5.15: "
        "kvm_hyp_reserve()'s fixed point). The hyp.vmemmap_bytes counter.")
    pool_pages: int | None = Field(default=None, ge=1, description="Pages of the hyp pool that "
                                   "guest stage-2 tables come from (default: the kernel's "
                                   "page-granular budget for all host memory).")
    coalesce: bool = Field(default=False, description="Seed 000: count host stage-2 entries by "
                           "the coalescing rule and zap tables left with default entries when "
                           "ownership returns to the host.")
    teardown_tlbi: bool = Field(default=True, description="Debug knob: false skips the TLB "
                                "invalidation of a torn-down guest's VMID (breaks isolation).")
    rebuild: Literal["bbm", "install_first", "ttrem", "replace"] = Field(
        default="bbm", description="How a fault replaces a table by a block: bbm (5.11: "
        "invalidate, TLBI, unmap the subtree, CMO the block, install), install_first (seed "
        "003: install, then unmap), ttrem (seed 001, with machine.bbm_level: level 0 breaks, "
        "levels 1 and 2 write the block with nT first), replace (FEAT_BBM level 2 without "
        "nT: store the block over the table, then flush; TLB conflict aborts possible).")
    cmo_at: Literal["install", "fault"] = Field(
        default="install", description="Where the dcache clean of a new mapping runs without "
        "FWB: install (5.14 on, commit 25aa28691bb9: the map walker cleans a leaf it installs) "
        "or fault (5.11: user_mem_abort() cleans the whole mapping size on every "
        "non-permission fault, under the MMU lock, before the map, even when the leaf is "
        "there already; needs engine.mmu_lock: exclusive).")
    dirty_log: DirtyLogConfig = Field(default_factory=DirtyLogConfig, description="Dirty "
                                      "logging (kvm mode).")
    rmap: Literal["none", "pte_list"] = Field(
        default="none", description="kvm mode, seed 004: keep x86 KVM's reverse map (per host "
        "frame, the list of stage-2 leaves that map it, as pte_list_desc chains) and drop "
        "every mapping through it once the vCPUs have finished.")
    rmap_ext: int = Field(default=14, ge=2, le=64, description="PTE_LIST_EXT: sptes per "
                          "pte_list_desc (14 today, 3 in 2013).")
    rmap_rules: Literal["v6.9", "v3.8"] = Field(
        default="v6.9", description="The pte_list rules of the kernel the reverse map follows: "
        "v6.9 (today's: a new spte goes into the head descriptor, which keeps counts; a hole "
        "is refilled from the head) or v3.8 (2013, seed 004's tree: appended at the tail after "
        "walking every full descriptor; a hole refilled from its own descriptor; no counts). "
        "presets/linux-3.8-x86.yaml sets it with rmap_ext 3.")
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


class HostStage1Config(_Model):
    """The pKVM host kernel's own stage-1 over its memory: the linear map, built at boot."""

    linear_map: Literal["blocks", "pages"] = Field(
        default="blocks", description="blocks: arm64's default map_mem(), the largest blocks "
        "that fit with the contiguous bit over aligned runs; pages: 4K pages, no contiguous "
        "bit (rodata=full, can_set_direct_map(): NO_BLOCK_MAPPINGS | NO_CONT_MAPPINGS).")


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
    stage1: HostStage1Config | None = Field(
        default=None, description="The host's own stage-1 (its linear map, VA = PA): host "
        "accesses translate through it and then the host stage-2, with combined TLB entries. "
        "None: the host's addresses are IPAs (stage-2 only).")
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
