"""The experiment: every part, and the checks that span parts."""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from simulator.arch.geometry import Geometry, GeometryError
from simulator.config.parts import (
    CostsConfig,
    EngineConfig,
    GuestConfig,
    GuestSpecConfig,
    HostConfig,
    HypConfig,
    MachineConfig,
    TLBConfig,
    _Model,
)
from workloads.spec import WorkloadSpec
from workloads.units import format_size, parse_size

# arch/x86/kvm/mmu.c (v3.8 and today): mmu_set_spte() calls rmap_recycle(), which zaps the
# whole list, when rmap_add() finds more sptes than this on it
RMAP_RECYCLE_THRESHOLD = 1000

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
        self._check_stage1()
        held = self.tlb_entry_sizes()
        for lv in self.tlb.levels:
            if lv.stage2_sizes and self.guest.stage1 is None and self.host.stage1 is None:
                raise ValueError(f"tlb.levels.{lv.name}.stage2_sizes: stage-2 entries are "
                                 "cached apart from combined ones only with guest.stage1")
            for ps in lv.stage2_sizes:
                if ps not in geom.leaf_sizes().values():
                    raise ValueError(f"tlb.levels.{lv.name}.stage2_sizes: {format_size(ps)} is "
                                     f"not a stage-2 leaf size of the {self.machine.granule} "
                                     "granule")
            for ps in lv.page_sizes or []:
                if ps not in held:
                    what = ("a combined entry size (a leaf or contiguous run of either stage)"
                            if self.guest.stage1 or self.host.stage1 else
                            f"a leaf size of the {self.machine.granule} granule")
                    raise ValueError(f"tlb.levels.{lv.name}.page_sizes: {format_size(ps)} is not "
                                     f"{what}: {', '.join(format_size(s) for s in held)}")
        m = self.mapping_size()
        if not self.guest.populated and m is not None and m > self.backing_size():
            raise ValueError("guest.populated: false touches one backing page per fault; a "
                             f"mapping ({self.guest.mapping}) larger than the backing page "
                             "would leave the rest untouched: use mapping: largest or a "
                             "larger backing")
        if self.hyp.rebuild == "replace" and self.machine.bbm_level != 2:
            raise ValueError("hyp.rebuild: replace stores a block over a table with no "
                             "break, which only FEAT_BBM level 2 allows: set "
                             "machine.bbm_level: 2")
        if self.hyp.cmo_at == "fault" and self.engine.mmu_lock != "exclusive":
            raise ValueError("hyp.cmo_at: fault is 5.11's user_mem_abort(), whose MMU lock is "
                             "a spinlock: set engine.mmu_lock: exclusive (no kernel cleaned "
                             "at fault time under the 6.2 read lock)")
        self._check_rmap(geom)
        return self

    def _check_stage1(self) -> None:
        s1 = self.guest.stage1
        if self.host.stage1 is not None:
            if self.hyp.mode != "pkvm":
                raise ValueError("host.stage1: the pKVM host's stage-1 (kvm mode runs no "
                                 "host CPUs)")
            if self.host.address_space != "memory":
                raise ValueError("host.stage1: the linear map covers memory; host accesses to "
                                 "MMIO (address_space: mmio) go through ioremap(), not modelled")
        if self.hyp.mode == "pkvm":
            if s1 is not None or any(g.stage1 is not None for g in self.guests):
                raise ValueError("guest.stage1: in pkvm mode only the host has a stage-1 "
                                 "(host.stage1); its guests translate IPAs")
            return
        if s1 is None:
            return
        g1 = s1.geometry()
        level = s1.map_level()
        if s1.contiguous and level < 2:
            raise ValueError("guest.stage1.contiguous: arm64 has contiguous runs of pages "
                             "(CONT_PTE) and level-2 blocks (CONT_PMD) only, not of "
                             f"{format_size(g1.size(level))} blocks")
        top = max(self.guest.slots(), key=lambda sl: sl.base)
        page = 1 << g1.page_shift
        if ((top.base + top.size) & ~(page - 1)) - 2 * page < top.base:
            raise ValueError("guest.memslots: the highest memslot holds the guest's stage-1 "
                             f"tables: it needs at least two {s1.granule} pages")
        if self.guest.placement != "identity":
            raise ValueError("guest.placement: with guest.stage1 the guest's own page tables "
                             "place what the workload touches; leave placement: identity")
        from workloads.spec import PageTableTestSpec

        if isinstance(self.workload, PageTableTestSpec):
            raise ValueError("guest.stage1: page_table_test touches guest memory directly "
                             "(IPAs), as the selftest's guest code does")

    def address_space(self) -> int:
        """The size of the space the kvm workload's addresses live in: the guest memory
        (IPAs), or with a guest stage-1 the VA space (2^va_bits)."""
        if self.guest.stage1 is not None:
            return 1 << self.guest.stage1.va_bits
        return self.guest.memory

    def tlb_entry_sizes(self) -> list[int]:
        """The sizes a TLB entry can have: the stage-2 leaves, and with a guest stage-1 its
        leaves and contiguous runs too (a combined entry is the smaller of the two)."""
        from simulator.arch.stage1 import S1Geometry

        sizes = set(self.geometry.leaf_sizes().values())
        s1 = self.guest.stage1
        g1 = None
        if s1 is not None and self.hyp.mode == "kvm":
            g1 = s1.geometry()
        elif self.host.stage1 is not None and self.hyp.mode == "pkvm":
            g1 = S1Geometry(self.geometry.page_shift, 48)
        if g1 is not None:
            sizes |= set(g1.leaf_sizes().values())
            sizes |= {g1.cont_size(lv) for lv in (2, 3) if lv in g1.block_levels()}
        return sorted(sizes)

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

        for i, g in enumerate(self.guests):
            if not g.populated:
                raise ValueError(f"guests[{i}].populated: a pKVM guest's memory is host memory "
                                 "donated to it; only a kvm-mode guest can be left unpopulated")
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
            if w.mappings_per_frame > RMAP_RECYCLE_THRESHOLD + 1:
                raise ValueError(
                    f"workload.mappings_per_frame: {w.mappings_per_frame} sptes on one list: "
                    f"mmu_set_spte() zaps a list longer than RMAP_RECYCLE_THRESHOLD "
                    f"({RMAP_RECYCLE_THRESHOLD}) when it adds to it (rmap_recycle()), which the "
                    f"model does not do: at most {RMAP_RECYCLE_THRESHOLD + 1}")
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
