"""One stage-2 page table in Python: validate, reserve memory, make exactly one kernel call,
report what it did; and translate() for tests and tools."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.arch import descriptors as D
from simulator.arch.descriptors import (
    TYPE,
    VALID,
    is_counted,
    pte_to_phys,
)
from simulator.arch.geometry import Geometry
from simulator.hyp.pgtable.defs import (
    F_COALESCE,
    F_FORCE_PTE,
    F_FWB,
    F_HANDLE_FAULT,
    F_OWNER,
    F_SHARED,
    F_SKIP_CMO,
    F_TLBIRANGE,
    OP_ATTR,
    OP_DESTROY,
    OP_GET_LEAF,
    OP_MAP,
    OP_SPLIT,
    OP_UNMAP,
    R_CMO_BYTES,
    R_ICACHE_BYTES,
    R_LEAF_LEVEL,
    R_LEAF_PTE,
    R_MAPPED_BYTES,
    R_RET,
    R_PUTS,
    R_SPLITS,
    R_STORES,
    R_TABLES_ALLOCATED,
    R_TABLES_FREED,
    R_TLBI_IPA,
    R_TLBI_LOG_N,
    R_TLBI_RANGE,
    R_TLBI_VMID,
    R_UNMAPPED_BYTES,
    R_VISITS,
    R_WARN,
    R_ZAPPED,
    REPORT_SIZE,
    S_LEAVES,
    STAT_SIZE,
    TLBI_IPA,
    TLBI_RANGE,
    TLBI_VMID,
    TLOG_CAPACITY,
    U,
)
from simulator.hyp.pgtable.entries import (
    _is_leaf,
    tables_needed,
)
from simulator.hyp.pgtable.memory import (
    PageTableMemory,
    pt_put,
)
from simulator.hyp.pgtable.walker import (
    pgtable_entry_step,
    pgtable_walk,
)


@dataclass
class TLBIRecord:
    """One logged invalidation: ``count`` instructions covering [addr, addr + size)."""

    kind: str  # "ipa", "range", "vmid"
    addr: int
    size: int
    level: int  # level hint (TTL), -1 unknown
    count: int


_TLBI_NAMES = {TLBI_IPA: "ipa", TLBI_RANGE: "range", TLBI_VMID: "vmid"}


@dataclass
class OpReport:
    """What one page-table operation did."""

    ret: int
    tables_allocated: int
    tables_freed: int
    tlbi_ipa: int
    tlbi_range: int
    tlbi_vmid: int
    cmo_bytes: int
    icache_bytes: int
    visits: int
    stores: int
    mapped_bytes: int
    unmapped_bytes: int
    zapped: int
    splits: int
    warnings: int
    puts: int = 0
    tlbis: list[TLBIRecord] = field(default_factory=list)
    raw: np.ndarray | None = None
    tlog: np.ndarray | None = None

    @property
    def tlbi_ops(self) -> int:
        return self.tlbi_ipa + self.tlbi_range + self.tlbi_vmid

    @classmethod
    def from_arrays(cls, rep: np.ndarray, tlog: np.ndarray) -> "OpReport":
        r = rep.tolist()
        n = r[R_TLBI_LOG_N]
        log = tlog[:n].tolist() if n else []
        return cls(
            ret=r[R_RET],
            tables_allocated=r[R_TABLES_ALLOCATED],
            tables_freed=r[R_TABLES_FREED],
            tlbi_ipa=r[R_TLBI_IPA],
            tlbi_range=r[R_TLBI_RANGE],
            tlbi_vmid=r[R_TLBI_VMID],
            cmo_bytes=r[R_CMO_BYTES],
            icache_bytes=r[R_ICACHE_BYTES],
            visits=r[R_VISITS],
            stores=r[R_STORES],
            mapped_bytes=r[R_MAPPED_BYTES],
            unmapped_bytes=r[R_UNMAPPED_BYTES],
            zapped=r[R_ZAPPED],
            splits=r[R_SPLITS],
            puts=r[R_PUTS],
            warnings=r[R_WARN],
            tlbis=[TLBIRecord(_TLBI_NAMES[k], a, s, lv, c) for k, a, s, lv, c in log],
            raw=np.array(r, dtype=np.int64),
            tlog=np.array(log, dtype=np.int64).reshape(-1, 5),
        )


class Stage2:
    """One stage-2 page table (a VMID) in a :class:`PageTableMemory`.

    ``rule`` is the "is this entry counted" rule: ``COUNT_NONZERO`` for a guest stage-2,
    ``COUNT_HOST_COALESCE`` for pKVM's host stage-2 with seed 000. ``fwb`` and ``tlbi_range``
    are the CPU features that change what the kernel does (FEAT_S2FWB, FEAT_TLBIRANGE).
    """

    def __init__(self, mem: PageTableMemory, geometry: Geometry, vmid: int = 1, *,
                 rule: int = D.COUNT_NONZERO, fwb: bool = False, tlbi_range: bool = False,
                 cmo: bool = True):
        if geometry.page_shift != mem.page_shift:
            raise ValueError("stage-2 granule differs from its page-table memory's")
        self.mem = mem
        self.geom = geometry
        self.vmid = vmid
        self.rule = rule
        # cmo=False: mm_ops without dcache_clean_inval_poc/icache_inval_pou (pKVM's host
        # stage-2), so no cache maintenance is ever done or reported
        self.base_flags = ((F_FWB if fwb else 0) | (F_TLBIRANGE if tlbi_range else 0)
                           | (0 if cmo else F_SKIP_CMO))
        self.root = mem.alloc_contiguous(geometry.pgd_pages)
        self.pgd_pages = geometry.pgd_pages
        self.stat = np.zeros(STAT_SIZE, dtype=np.int64)
        self.destroyed = False
        # scratch arrays reused by every operation (reports are copied out)
        self._rep = np.zeros(REPORT_SIZE, dtype=np.int64)
        self._tlog = np.zeros((TLOG_CAPACITY, 5), dtype=np.int64)
        self._stk = np.zeros((4, 5), dtype=np.uint64)
        self._mask = (1 << geometry.page_shift) - 1

    # -- the one place that calls the kernel --------------------------------------------
    def _walk(self, op: int, addr: int, size: int, *, phys: int = 0, attr: int = 0,
              owner: int = 0, flags: int = 0, reserve: int = 0) -> OpReport:
        if self.destroyed:
            raise RuntimeError("stage-2 already destroyed")
        g = self.geom
        m = self._mask
        start = addr & ~m  # kvm_pgtable_walk(): [ALIGN_DOWN(addr), PAGE_ALIGN(that + size))
        end = (start + size + m) & ~m
        mem = self.mem
        mem.before_op(reserve)
        rep = self._rep
        rep[:] = 0
        pgtable_walk(op, mem.tables, mem.refcnt, mem.free, mem.meta, mem.base_pa, g.page_shift,
                     self.root, g.start_level, g.ipa_bits, U(start), U(end), U(phys & D.MASK64),
                     U(attr & D.MASK64), owner, flags | self.base_flags, self.rule, self.stat,
                     rep, self._tlog, self._stk)
        mem.after_op()
        return OpReport.from_arrays(rep, self._tlog)

    def _tables_needed(self, addr: int, size: int) -> int:
        """An upper bound on the table pages a map of [addr, addr + size) can allocate."""
        return int(tables_needed(addr, size, self.geom.start_level, self.geom.page_shift))

    # -- operations ----------------------------------------------------------------------
    def map(self, ipa: int, size: int, phys: int, prot: int = D.PROT_RWX, *,
            force_pte: bool = False, handle_fault: bool = False, attr: int | None = None,
            sw: int = 0, shared: bool = False, cmo: bool = True) -> OpReport:
        """kvm_pgtable_stage2_map(): map [ipa, ipa + size) to ``phys`` with blocks wherever
        kvm_block_mapping_supported() allows, tables below otherwise. ``shared``: a walk
        under the MMU read lock, which backs off (-EAGAIN) from an entry another walker has
        locked. ``cmo=False``: the walker does not clean what it installs (5.11, whose
        user_mem_abort() cleaned before the map)."""
        if attr is None:
            attr = D.prot_attr(prot)
        attr |= sw << D.SW_SHIFT
        flags = ((F_FORCE_PTE if force_pte else 0) | (F_HANDLE_FAULT if handle_fault else 0)
                 | (F_SHARED if shared else 0) | (0 if cmo else F_SKIP_CMO))
        phys &= ~self._mask  # kvm_pgtable_stage2_map(): .phys = ALIGN_DOWN(phys, PAGE_SIZE)
        return self._walk(OP_MAP, ipa, size, phys=phys, attr=attr, flags=flags,
                          reserve=self._tables_needed(ipa, size))

    def set_owner(self, ipa: int, size: int, owner: int, *, coalesce: bool = False) -> OpReport:
        """kvm_pgtable_stage2_set_owner(): owner-annotated invalid entries, page granular.
        With ``coalesce`` (seed 000) a table left with only default entries is zapped."""
        if not 0 <= owner <= 0xFF:
            raise ValueError(f"owner id {owner} does not fit bits 9:2")
        flags = F_OWNER | F_FORCE_PTE | (F_COALESCE if coalesce else 0)
        return self._walk(OP_MAP, ipa, size, owner=owner, flags=flags,
                          reserve=self._tables_needed(ipa, size))

    def unmap(self, ipa: int, size: int) -> OpReport:
        """kvm_pgtable_stage2_unmap()."""
        return self._walk(OP_UNMAP, ipa, size)

    def split(self, ipa: int, size: int) -> OpReport:
        """kvm_pgtable_stage2_split(): eagerly split the blocks in the range to pages."""
        g = self.geom
        blocks_l1 = 0
        if g.min_block_level == 1:
            s = g.shift(1)
            blocks_l1 = ((ipa + size - 1) >> s) - (ipa >> s) + 1
        need = self._tables_needed(ipa, size) + blocks_l1 * (g.entries + 1)
        return self._walk(OP_SPLIT, ipa, size, reserve=need)

    def update_attrs(self, ipa: int, size: int, *, set_bits: int = 0, clear_bits: int = 0,
                     handle_fault: bool = False) -> OpReport:
        """stage2_update_leaf_attrs(): set/clear attribute bits of the valid leaves."""
        flags = F_HANDLE_FAULT if handle_fault else 0
        return self._walk(OP_ATTR, ipa, size, phys=clear_bits, attr=set_bits, flags=flags)

    def wrprotect(self, ipa: int, size: int) -> OpReport:
        """kvm_pgtable_stage2_wrprotect()."""
        return self.update_attrs(ipa, size, clear_bits=int(D.S2AP_W))

    def get_leaf(self, ipa: int) -> tuple[int, int]:
        """kvm_pgtable_get_leaf(): (descriptor, level) of the entry that maps ``ipa``."""
        rep = self._walk(OP_GET_LEAF, ipa, 1).raw
        return int(rep[R_LEAF_PTE]) & D.MASK64, int(rep[R_LEAF_LEVEL])

    def locate(self, ipa: int, level: int) -> tuple[int, int, int] | None:
        """(row, index, descriptor) of the entry at ``level`` on the walk to ``ipa``, or None
        when a non-table entry ends the walk above that level."""
        g = self.geom
        tables = self.mem.tables
        pgd_shift = g.shift(g.start_level - 1)
        row = self.root + ((ipa & ((1 << g.ipa_bits) - 1)) >> pgd_shift)
        lvl = g.start_level
        while True:
            idx = (ipa >> g.shift(lvl)) & (g.entries - 1)
            pte = int(tables[row, idx])
            if lvl == level:
                return row, idx, pte
            if not D.is_table(U(pte), lvl):
                return None
            row = self.mem.row_of(int(pte_to_phys(U(pte), g.page_shift)))
            lvl += 1

    def entry_step(self, step: int, row: int, idx: int, level: int, ipa: int, *, new: int = 0,
                   child: int = -1, flags: int | None = None) -> OpReport:
        """One STEP_* on a single entry (see :func:`pgtable_entry_step`); ``flags`` overrides
        the stage-2's feature flags (e.g. a whole-VMID flush despite FEAT_TLBIRANGE)."""
        g = self.geom
        mem = self.mem
        rep = self._rep
        rep[:] = 0
        pgtable_entry_step(step, mem.tables, mem.refcnt, mem.free, mem.meta, mem.base_pa,
                           g.page_shift, row, idx, level, U(ipa & D.MASK64), U(new & D.MASK64),
                           child, self.base_flags if flags is None else flags, self.rule,
                           self.stat, rep, self._tlog)
        return OpReport.from_arrays(rep, self._tlog)

    def block_pte(self, ipa: int, level: int, phys: int, prot: int, *, nt: bool = False,
                  sw: int = 0) -> int:
        """The block descriptor the map walker would install at ``level`` for ``ipa``."""
        attr = D.prot_attr(prot) | (sw << D.SW_SHIFT) | (int(D.NT) if nt else 0)
        g = self.geom
        return int(D.make_leaf(U(phys & ~(g.size(level) - 1)), U(attr), level, g.page_shift))

    def destroy(self) -> OpReport:
        """kvm_pgtable_stage2_destroy(): free every table page, the pgd last."""
        report = self._walk(OP_DESTROY, 0, 1 << self.geom.ipa_bits)
        rep = report.raw
        for i in range(self.pgd_pages):
            row = self.root + i
            if self.mem.refcnt[row] != 1:
                rep[R_WARN] += 1
            pt_put(row, self.mem.refcnt, self.mem.free, self.mem.meta, rep)
            rep[R_PUTS] -= 1  # free_pages_exact() of the pgd: a free, not a put_page()
        self.mem.after_op()
        self.destroyed = True
        return OpReport.from_arrays(rep, report.tlog if report.tlog is not None else
                                    np.zeros((0, 5), np.int64))

    # -- inspection ----------------------------------------------------------------------
    def leaf_counts(self) -> dict[int, int]:
        """Live valid leaves per level."""
        return {lvl: int(self.stat[S_LEAVES + lvl]) for lvl in range(4)}

    def iter_tables(self):
        """Yield (row, level, ipa_base) for every table page reachable from the pgd."""
        g = self.geom
        stack = [(self.root + i, g.start_level, i << g.shift(g.start_level - 1))
                 for i in range(self.pgd_pages)]
        while stack:
            row, level, base = stack.pop()
            yield row, level, base
            if level == 3:
                continue
            ptes = self.mem.tables[row]
            tbl = np.nonzero((ptes & (VALID | TYPE)) == (VALID | TYPE))[0]
            for idx in tbl:
                child = self.mem.row_of(int(pte_to_phys(ptes[idx], g.page_shift)))
                stack.append((child, level + 1, base + (int(idx) << g.shift(level))))

    def leaves(self):
        """Yield (ipa, level, descriptor) for every non-zero non-table entry, in IPA order."""
        g = self.geom
        out = []
        for row, level, base in self.iter_tables():
            ptes = self.mem.tables[row]
            nz = np.nonzero(ptes)[0]
            for idx in nz:
                pte = int(ptes[idx])
                if level < 3 and pte & int(VALID) and pte & int(TYPE):
                    continue
                out.append((base + (int(idx) << g.shift(level)), level, pte))
        out.sort()
        return out

    def check_invariants(self) -> list[str]:
        """Refcount of each table page == 1 + its counted entries; live-leaf statistics
        agree with the tables; no reachable page is on the free stack. Returns problems."""
        problems = []
        seen = set()
        leaves = [0, 0, 0, 0]
        free_set = set(self.mem.free_rows().tolist())
        for row, level, _base in self.iter_tables():
            if row in seen:
                problems.append(f"table page row {row} reachable twice")
            seen.add(row)
            if row in free_set:
                problems.append(f"table page row {row} is linked but on the free list")
            ptes = self.mem.tables[row]
            counted = sum(bool(is_counted(p, level, self.rule)) for p in ptes[np.nonzero(ptes)[0]])
            if self.mem.refcnt[row] != 1 + counted:
                problems.append(
                    f"row {row} (level {level}) refcount {self.mem.refcnt[row]} != 1 + {counted}"
                )
            for p in ptes[np.nonzero(ptes & VALID)[0]]:
                if bool(_is_leaf(p, level)):
                    leaves[level] += 1
        for lvl in range(4):
            if leaves[lvl] != self.stat[S_LEAVES + lvl]:
                problems.append(
                    f"level {lvl}: {leaves[lvl]} live leaves but statistics say "
                    f"{self.stat[S_LEAVES + lvl]}"
                )
        return problems

    def table_pages(self) -> int:
        return sum(1 for _ in self.iter_tables())

    def dump(self) -> str:
        """The stage-2 as text, one line per non-zero entry, like a kernel debugfs dump."""
        g = self.geom
        lines = []
        for ipa, level, pte in self.leaves():
            lines.append(f"{ipa:#014x} {D.decode(pte, level, g.page_shift)}")
        return "\n".join(lines)


def translate(stage2: Stage2, ipa: int, vmid: int | None = None):
    """The hardware walk of ``ipa`` without caches: (status, level, descriptor, refs)."""
    from simulator.mmu.walk import WO_LEVEL, WO_PTE, WO_REFS, WO_STATUS, hw_walk

    out = np.zeros(8, dtype=np.int64)
    empty = np.zeros((4, 0), dtype=np.uint64)
    g = stage2.geom
    hw_walk(U(ipa), stage2.vmid if vmid is None else vmid, stage2.mem.tables,
            stage2.mem.base_pa, g.page_shift, stage2.root, g.start_level, g.ipa_bits, empty,
            np.zeros((4, 0), np.int64), np.zeros((4, 0), np.int64), 0, out)
    return int(out[WO_STATUS]), int(out[WO_LEVEL]), int(out[WO_PTE]) & D.MASK64, int(out[WO_REFS])
