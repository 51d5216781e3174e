"""Stage-2 page tables and the kernel's table walker (arch/arm64/kvm/hyp/pgtable.c).

State lives in numpy arrays (:class:`PageTableMemory`): every table page is a row of one
``uint64`` array grown by doubling, with a refcount per row and a free stack of rows. A table
page's physical address is ``base_pa + (row << page_shift)``, so table descriptors hold real
addresses and a dump reads like the kernel's.

:func:`pgtable_walk` is the kernel's ``kvm_pgtable_walk()`` with its visitors folded in as
operations: it visits [addr, end) calling TABLE_PRE, LEAF and TABLE_POST exactly where
``__kvm_pgtable_visit()`` calls them, re-reading an entry after a callback so that a table
installed by a callback is descended into. The operations are the stage-2 walkers of
Linux 6.12: map / set_owner (``stage2_map_walker``), unmap (``stage2_unmap_walker``), eager
split (``stage2_split_walker``), destroy (``stage2_free_walker``), leaf-attribute updates
(``stage2_attr_walker``) and get_leaf; plus seed 000's coalescing TABLE_POST visitor.

Every operation reports what it did in an int64 array (indices ``R_*``) and appends the TLB
invalidations it issued to a log (rows of ``kind, addr, size, level, count``) that the engine
applies to every vCPU's TLBs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator._jit import jit
from simulator.arch import descriptors as D
from simulator.arch.descriptors import (
    AF,
    LEAF_ATTR,
    LOCKED,
    NT,
    MEMATTR_MASK,
    SW_MASK,
    S2_PERMS,
    TYPE,
    VALID,
    XN,
    is_counted,
    make_leaf,
    make_owner,
    make_table,
    pte_to_phys,
)
from simulator.arch.geometry import Geometry

U = np.uint64

# ---- operations ------------------------------------------------------------------------
OP_MAP = 0  # kvm_pgtable_stage2_map / set_owner (flag F_OWNER)
OP_UNMAP = 1  # kvm_pgtable_stage2_unmap
OP_SPLIT = 2  # kvm_pgtable_stage2_split
OP_DESTROY = 3  # kvm_pgtable_stage2_destroy (the walk; the pgd is freed by the wrapper)
OP_GET_LEAF = 4  # kvm_pgtable_get_leaf
OP_ATTR = 5  # stage2_update_leaf_attrs (wrprotect, relax_perms, mkyoung)

# ---- flags -----------------------------------------------------------------------------
F_FWB = 1 << 0  # stage-2 FWB: no cache maintenance
F_TLBIRANGE = 1 << 1  # FEAT_TLBIRANGE
F_FORCE_PTE = 1 << 2  # map at page granularity only
F_HANDLE_FAULT = 1 << 3  # KVM_PGTABLE_WALK_HANDLE_FAULT: -EAGAIN ends the walk
F_SKIP_BBM_TLBI = 1 << 4
F_SKIP_CMO = 1 << 5
F_COALESCE = 1 << 6  # seed 000: TABLE_POST zaps a table whose refcount fell to 1
F_OWNER = 1 << 7  # map an owner annotation (phys = KVM_PHYS_INVALID)
F_SHARED = 1 << 8  # KVM_PGTABLE_WALK_SHARED: under the read lock, a locked entry is -EAGAIN

# ---- errno -----------------------------------------------------------------------------
EPERM = 1
EAGAIN = 11
ENOMEM = 12
EINVAL = 22
ERANGE = 34
E2BIG = 7

# ---- report indices --------------------------------------------------------------------
R_RET = 0
R_TABLES_ALLOCATED = 1
R_TABLES_FREED = 2
R_TLBI_IPA = 3  # TLBI IPAS2E1IS (+ VMALLE1IS) sequences
R_TLBI_RANGE = 4  # range TLBI sequences
R_TLBI_VMID = 5  # TLBI VMALLS12E1IS
R_CMO_BYTES = 6  # dcache clean+invalidate to PoC
R_ICACHE_BYTES = 7  # icache invalidate to PoU
R_VISITS = 8  # descriptors visited by the software walker
R_STORES = 9  # descriptor stores
R_MAPPED_BYTES = 10  # bytes of valid leaves installed
R_UNMAPPED_BYTES = 11  # bytes of valid leaves removed
R_ZAPPED = 12  # tables zapped by seed 000's coalescing
R_TLBI_LOG_N = 13  # records in the TLBI log
R_WARN = 14  # kernel WARN()s: refcount underflow, locked entry seen by an exclusive walker
R_LEAF_PTE = 15  # get_leaf: the descriptor (bits as int64)
R_LEAF_LEVEL = 16  # get_leaf: its level
R_BLOCKS_INSTALLED = 17  # valid leaves installed above the last level
R_SPLITS = 18  # blocks split into tables
REPORT_SIZE = 20

# ---- TLBI log --------------------------------------------------------------------------
TLBI_IPA = 0
TLBI_RANGE = 1
TLBI_VMID = 2
TLOG_KIND, TLOG_ADDR, TLOG_SIZE, TLOG_LEVEL, TLOG_COUNT = 0, 1, 2, 3, 4
TLOG_CAPACITY = 1024
TTL_UNKNOWN = -1
# MAX_TLBI_RANGE_PAGES = __TLBI_RANGE_PAGES(31, 3)
MAX_TLBI_RANGE_PAGES = 32 << 16

# ---- page-table memory meta indices ----------------------------------------------------
M_NFREE = 0  # rows on the free stack
M_HWM = 1  # rows ever handed out (high-water mark)
M_LIMIT = 2  # most rows in use at once (-1: unlimited)
M_INUSE = 3
M_PEAK = 4
M_ALLOCS = 5
M_FREES = 6
M_TOP = 7  # pool-backed memory: one past the highest row handed out (rows above never touched)
META_SIZE = 8

# ---- per-stage-2 statistics ------------------------------------------------------------
S_LEAVES = 0  # S_LEAVES + level: live valid leaves at that level (0..3)
STAT_SIZE = 8


# ========================================================================================
# Page-table memory primitives (mm_ops)


@jit
def pt_alloc(tables, refcnt, free, meta):
    """zalloc_page(): a zeroed table page with refcount 1, or -1 when none is left."""
    if meta[M_LIMIT] >= 0 and meta[M_INUSE] >= meta[M_LIMIT]:
        return -1
    if meta[M_NFREE] > 0:
        meta[M_NFREE] -= 1
        row = free[meta[M_NFREE]]
    elif meta[M_HWM] < tables.shape[0]:
        row = meta[M_HWM]
        meta[M_HWM] += 1
    else:
        return -1
    tables[row, :] = 0
    refcnt[row] = 1
    meta[M_INUSE] += 1
    meta[M_ALLOCS] += 1
    if meta[M_INUSE] > meta[M_PEAK]:
        meta[M_PEAK] = meta[M_INUSE]
    return row


@jit
def pt_put(row, refcnt, free, meta, rep):
    """put_page(): drop a reference; the page goes back to the free stack at zero."""
    refcnt[row] -= 1
    if refcnt[row] == 0:
        free[meta[M_NFREE]] = row
        meta[M_NFREE] += 1
        meta[M_INUSE] -= 1
        meta[M_FREES] += 1
        rep[R_TABLES_FREED] += 1
    elif refcnt[row] < 0:
        rep[R_WARN] += 1


@jit
def _is_leaf(pte, level):
    if (pte & VALID) == U(0):
        return False
    if level == 3:
        return (pte & TYPE) != U(0)
    return (pte & TYPE) == U(0)


@jit
def _store(tables, row, idx, new, level, stat, rep):
    """WRITE_ONCE(*ptep, new), keeping the live-leaf count per level."""
    old = tables[row, idx]
    if _is_leaf(old, level):
        stat[S_LEAVES + level] -= 1
    if _is_leaf(new, level):
        stat[S_LEAVES + level] += 1
    tables[row, idx] = new
    rep[R_STORES] += 1


@jit
def _tlbi(tlog, rep, kind, addr, size, level):
    """Record one TLB-invalidation sequence; adjacent by-IPA ones merge into one record."""
    rep[R_TLBI_IPA + kind] += 1
    n = rep[R_TLBI_LOG_N]
    if n > 0:
        last = n - 1
        if tlog[last, TLOG_KIND] == TLBI_VMID:
            tlog[last, TLOG_COUNT] += 1  # already invalidating everything
            return
        if (
            kind == TLBI_IPA
            and tlog[last, TLOG_KIND] == TLBI_IPA
            and tlog[last, TLOG_LEVEL] == level
            and tlog[last, TLOG_ADDR] + tlog[last, TLOG_SIZE] == addr
        ):
            tlog[last, TLOG_SIZE] += size
            tlog[last, TLOG_COUNT] += 1
            return
    if kind == TLBI_VMID or n == tlog.shape[0]:
        # A whole-VMID flush subsumes everything; a full log degrades to one (a safe
        # over-approximation of the entries removed; instruction counts stay exact).
        total = 1
        for i in range(n):
            total += tlog[i, TLOG_COUNT]
        tlog[0, TLOG_KIND] = TLBI_VMID
        tlog[0, TLOG_ADDR] = 0
        tlog[0, TLOG_SIZE] = 0
        tlog[0, TLOG_LEVEL] = TTL_UNKNOWN
        tlog[0, TLOG_COUNT] = total
        rep[R_TLBI_LOG_N] = 1
        return
    tlog[n, TLOG_KIND] = kind
    tlog[n, TLOG_ADDR] = addr
    tlog[n, TLOG_SIZE] = size
    tlog[n, TLOG_LEVEL] = level
    tlog[n, TLOG_COUNT] = 1
    rep[R_TLBI_LOG_N] = n + 1


@jit
def _flush_vmid_range(tlog, rep, flags, addr, size, page_shift):
    """kvm_tlb_flush_vmid_range(): range TLBIs with FEAT_TLBIRANGE, else the whole VMID."""
    if (flags & F_TLBIRANGE) == 0:
        _tlbi(tlog, rep, TLBI_VMID, 0, 0, TTL_UNKNOWN)
        return
    pages = size >> page_shift
    while pages > 0:
        chunk = min(pages, MAX_TLBI_RANGE_PAGES)
        _tlbi(tlog, rep, TLBI_RANGE, addr, chunk << page_shift, TTL_UNKNOWN)
        addr += chunk << page_shift
        pages -= chunk


@jit
def _row_of(pte, base_pa, page_shift):
    return np.int64((pte_to_phys(pte, page_shift) - U(base_pa)) >> U(page_shift))


@jit
def _row_pa(row, base_pa, page_shift):
    return U(base_pa) + (U(row) << U(page_shift))


@jit
def _gshift(level, page_shift):
    return (page_shift - 3) * (4 - level) + 3


@jit
def tables_needed(addr, size, start_level, page_shift):
    """An upper bound on the table pages a map of [addr, addr + size) can allocate: one per
    table-level entry the range spans."""
    if size <= 0:
        return 0
    last = addr + size - 1
    need = 0
    for level in range(start_level, 3):
        s = _gshift(level, page_shift)
        need += (last >> s) - (addr >> s) + 1
    return need


@jit
def free_subtree(
    top, top_level, tables, refcnt, free, meta, base_pa, page_shift, rule, stat, rep
):
    """kvm_pgtable_stage2_free_unlinked(): free the detached table page ``top`` (whose
    entries are at ``top_level``) and everything below it, with stage2_free_walker's puts."""
    entries = 1 << (page_shift - 3)
    # the stack of (row, index) descended through, at most 3 deep (top_level >= 0), in
    # scalars: the engine's kernels allocate nothing (they run without reference counting)
    r0 = r1 = r2 = i0 = i1 = i2 = np.int64(0)
    d = 0
    row = top
    lvl = top_level
    idx = 0
    while True:
        if idx >= entries:
            if d == 0:
                break
            child = row
            d -= 1
            lvl -= 1
            if d == 0:
                row, idx = r0, i0
            elif d == 1:
                row, idx = r1, i1
            else:
                row, idx = r2, i2
            # TABLE_POST on the entry pointing at the finished child
            if is_counted(tables[row, idx], lvl, rule):
                pt_put(row, refcnt, free, meta, rep)
            pt_put(child, refcnt, free, meta, rep)
            idx += 1
            continue
        pte = tables[row, idx]
        rep[R_VISITS] += 1
        if lvl < 3 and (pte & (VALID | TYPE)) == (VALID | TYPE):
            if d == 0:
                r0, i0 = row, np.int64(idx)
            elif d == 1:
                r1, i1 = row, np.int64(idx)
            else:
                r2, i2 = row, np.int64(idx)
            d += 1
            row = _row_of(pte, base_pa, page_shift)
            lvl += 1
            idx = 0
            continue
        if _is_leaf(pte, lvl):
            stat[S_LEAVES + lvl] -= 1
        if is_counted(pte, lvl, rule):
            pt_put(row, refcnt, free, meta, rep)
        idx += 1
    if refcnt[top] != 1:
        rep[R_WARN] += 1
    pt_put(top, refcnt, free, meta, rep)


@jit
def _break_pte(row, idx, level, ctx_addr, old, tables, refcnt, free, meta, page_shift,
               flags, rule, stat, rep, tlog):
    """stage2_try_break_pte(): lock the entry, invalidate what it mapped, drop its count."""
    if (old & VALID) == U(0) and (old & LOCKED) != U(0):
        # another walker is replacing it; an exclusive walker never meets one
        if (flags & F_SHARED) == 0:
            rep[R_WARN] += 1
        return False
    _store(tables, row, idx, LOCKED, level, stat, rep)
    if (flags & F_SKIP_BBM_TLBI) == 0:
        gsz = U(1) << U(_gshift(level, page_shift))
        if level < 3 and (old & (VALID | TYPE)) == (VALID | TYPE):
            base = ctx_addr & ~(gsz - U(1))
            _flush_vmid_range(tlog, rep, flags, np.int64(base), np.int64(gsz), page_shift)
        elif (old & VALID) != U(0):
            base = ctx_addr & ~(gsz - U(1))
            _tlbi(tlog, rep, TLBI_IPA, np.int64(base), np.int64(gsz), level)
    if _is_leaf(old, level):
        rep[R_UNMAPPED_BYTES] += np.int64(1) << _gshift(level, page_shift)
    if is_counted(old, level, rule):
        pt_put(row, refcnt, free, meta, rep)
    return True


@jit
def _make_pte(row, idx, level, new, tables, refcnt, rule, stat, rep, page_shift):
    """stage2_make_pte(): take a reference for a counted entry, then store it."""
    if is_counted(new, level, rule):
        refcnt[row] += 1
    _store(tables, row, idx, new, level, stat, rep)
    if _is_leaf(new, level):
        rep[R_MAPPED_BYTES] += np.int64(1) << _gshift(level, page_shift)
        if level < 3:
            rep[R_BLOCKS_INSTALLED] += 1


@jit
def _leaf_allowed(level, ctx_addr, end, phys_at, flags, page_shift):
    """stage2_leaf_mapping_allowed() / kvm_block_mapping_supported()."""
    if (flags & F_FORCE_PTE) != 0 and level < 3:
        return False
    min_block = 1 if page_shift == 12 else 2
    if level < min_block:
        return False
    gsz = U(1) << U(_gshift(level, page_shift))
    if gsz > end - ctx_addr:
        return False
    if (flags & F_OWNER) == 0 and (phys_at & (gsz - U(1))) != U(0):
        return False
    return (ctx_addr & (gsz - U(1))) == U(0)


@jit
def _try_leaf(row, idx, level, ctx_addr, end, old, phys_at, attr, owner, tables, refcnt,
              free, meta, page_shift, flags, rule, stat, rep, tlog):
    """stage2_map_walker_try_leaf()."""
    if not _leaf_allowed(level, ctx_addr, end, phys_at, flags, page_shift):
        return -E2BIG
    if (flags & F_OWNER) != 0:
        new = make_owner(owner)
    else:
        new = make_leaf(phys_at, attr, level, page_shift)
    # stage2_pte_needs_update(): same mapping, or a permission change only
    if (old & VALID) != U(0) and (new & VALID) != U(0) and ((old ^ new) & ~S2_PERMS) == U(0):
        return -EAGAIN
    if (flags & F_SHARED) == 0 and ((old ^ new) & ~SW_MASK) == U(0):
        # only software bits change: store them and go (6.12: not under the read lock, where
        # another walker may hold the entry: the change breaks and makes it like any other)
        oc = is_counted(old, level, rule)
        nc = is_counted(new, level, rule)
        if oc and not nc:
            pt_put(row, refcnt, free, meta, rep)
        elif nc and not oc:
            refcnt[row] += 1
        _store(tables, row, idx, new, level, stat, rep)
        return 0
    if not _break_pte(row, idx, level, ctx_addr, old, tables, refcnt, free, meta, page_shift,
                      flags, rule, stat, rep, tlog):
        return -EAGAIN
    gsz = np.int64(1) << _gshift(level, page_shift)
    if (flags & F_SKIP_CMO) == 0 and (new & VALID) != U(0):
        cacheable = (new & MEMATTR_MASK) == U(D.MEMATTR_NORMAL << 2)
        if cacheable and (flags & F_FWB) == 0:
            rep[R_CMO_BYTES] += gsz
        if (new & XN) == U(0):
            rep[R_ICACHE_BYTES] += gsz
    _make_pte(row, idx, level, new, tables, refcnt, rule, stat, rep, page_shift)
    return 0


@jit
def _create_unlinked(phys, level, attr, force_pte, tables, refcnt, free, meta, base_pa,
                     page_shift, rule, stat, rep):
    """kvm_pgtable_stage2_create_unlinked() for a block at ``level``: a detached table of
    the next level mapping the same output range (pages only with ``force_pte``).
    Returns the table page's row, or -1 without memory.

    The kernel builds it with the map walker (LEAF, SKIP_BBM_TLBI, SKIP_CMO) over the new
    page: every entry is a visit and a break-before-make (the locked pattern, then the leaf
    or table: two stores); a table entry's page is then walked the same way."""
    entries = 1 << (page_shift - 3)
    top = pt_alloc(tables, refcnt, free, meta)
    if top < 0:
        return -1
    rep[R_TABLES_ALLOCATED] += 1
    sub = level + 1
    sub_shift = _gshift(sub, page_shift)
    min_block = 1 if page_shift == 12 else 2
    for i in range(entries):
        rep[R_VISITS] += 1
        sub_phys = U(phys) + (U(i) << U(sub_shift))
        if sub == 3 or (not force_pte and sub >= min_block):
            pte = make_leaf(sub_phys, attr, sub, page_shift)
        else:
            child = pt_alloc(tables, refcnt, free, meta)
            if child < 0:
                free_subtree(top, sub, tables, refcnt, free, meta, base_pa, page_shift, rule,
                             stat, rep)
                return -1
            rep[R_TABLES_ALLOCATED] += 1
            rep[R_VISITS] += entries
            rep[R_STORES] += 2 * entries
            for j in range(entries):
                leaf = make_leaf(sub_phys + (U(j) << U(page_shift)), attr, 3, page_shift)
                tables[child, j] = leaf
                stat[S_LEAVES + 3] += 1
                if is_counted(leaf, 3, rule):
                    refcnt[child] += 1
            pte = make_table(_row_pa(child, base_pa, page_shift), page_shift)
        tables[top, i] = pte
        rep[R_STORES] += 2
        if _is_leaf(pte, sub):
            stat[S_LEAVES + sub] += 1
        if is_counted(pte, sub, rule):
            refcnt[top] += 1
    return top


@jit
def pgtable_walk(op, tables, refcnt, free, meta, base_pa, page_shift, root_row, start_level,
                 ia_bits, addr, end, phys, attr, owner, flags, rule, stat, rep, tlog, stk):
    """kvm_pgtable_walk() over [addr, end) with the visitor of operation ``op``.

    tables, refcnt, free, meta: the page-table memory (rows, refcounts, free stack, meta).
    base_pa, page_shift: physical address of row 0 and the granule (12, 14 or 16).
    root_row, start_level, ia_bits: the stage-2 (its pgd pages are rows root_row..).
    addr, end: the input-address range, page aligned (uint64).
    phys: OP_MAP: output address of ``addr``; OP_ATTR: attribute bits to clear.
    attr: OP_MAP: leaf attributes (prot_to_attr); OP_ATTR: attribute bits to set.
    owner: owner id written by set_owner (OP_MAP with F_OWNER).
    flags: F_* bits. rule: the "is this entry counted" rule (descriptors.COUNT_*).
    stat: per-stage-2 statistics (live leaves per level), updated in place.
    rep: report array (R_*), accumulated; tlog: TLBI log (TLOG_* columns).
    stk: uint64[4, 5] scratch for the walk's stack (passed in: an allocation per walk
    would cost more than a short walk).
    Returns 0 or a negative errno, also left in rep[R_RET].
    """
    entries = 1 << (page_shift - 3)
    mask = U(entries - 1)
    addr = U(addr)
    end = U(end)
    start = addr
    phys = U(phys)
    attr = U(attr)
    limit = U(1) << U(ia_bits)
    deferred = op == OP_UNMAP and (flags & F_TLBIRANGE) != 0 and (flags & F_FWB) != 0
    if addr > limit or end > limit:
        if deferred:  # kvm_pgtable_stage2_unmap() flushes whatever the walk returned
            _flush_vmid_range(tlog, rep, flags, np.int64(start), np.int64(end - start),
                              page_shift)
        rep[R_RET] = -ERANGE
        return -ERANGE
    pgd_shift = _gshift(start_level - 1, page_shift)
    want_pre = op == OP_MAP
    want_leaf = True
    want_post = op == OP_UNMAP or op == OP_DESTROY or (op == OP_MAP and (flags & F_COALESCE) != 0)

    # the stack of entries descended through: row, index, address, descriptor
    srow = stk[0]
    sidx = stk[1]
    saddr = stk[2]
    sold = stk[3]
    d = 0
    level = start_level
    row = root_row + np.int64((addr & (limit - U(1))) >> U(pgd_shift))
    idx = np.int64((addr >> U(_gshift(level, page_shift))) & mask)
    ret = 0
    while True:
        if idx >= entries or addr >= end:
            if d == 0:
                if addr >= end:
                    break
                row = root_row + np.int64((addr & (limit - U(1))) >> U(pgd_shift))
                idx = np.int64((addr >> U(_gshift(level, page_shift))) & mask)
                continue
            d -= 1
            level -= 1
            row = np.int64(srow[d])
            idx = np.int64(sidx[d])
            if want_post:
                r = _visit_post(op, row, idx, level, saddr[d], sold[d], tables, refcnt, free,
                                meta, base_pa, page_shift, flags, rule, stat, rep, tlog)
                if r != 0 and not (r == -EAGAIN and (flags & F_HANDLE_FAULT) == 0):
                    ret = r
                    break
            idx += 1
            continue

        ctx_addr = addr
        old = tables[row, idx]
        rep[R_VISITS] += 1
        table = level < 3 and (old & (VALID | TYPE)) == (VALID | TYPE)
        r = 0
        reload = False
        if table and want_pre:
            # stage2_map_walk_table_pre()
            phys_at = phys + (ctx_addr - start)
            if _leaf_allowed(level, ctx_addr, end, phys_at, flags, page_shift):
                r = _try_leaf(row, idx, level, ctx_addr, end, old, phys_at, attr, owner, tables,
                              refcnt, free, meta, page_shift, flags, rule, stat, rep, tlog)
                if r == 0:
                    free_subtree(_row_of(old, base_pa, page_shift), level + 1, tables, refcnt,
                                 free, meta, base_pa, page_shift, rule, stat, rep)
            reload = True
        elif not table and want_leaf:
            r = _visit_leaf(op, row, idx, level, ctx_addr, start, end, old, phys, attr, owner,
                            tables, refcnt, free, meta, base_pa, page_shift, flags, rule, stat,
                            rep, tlog)
            reload = True
        if reload:
            old = tables[row, idx]
            table = level < 3 and (old & (VALID | TYPE)) == (VALID | TYPE)
        if r != 0 and not (r == -EAGAIN and (flags & F_HANDLE_FAULT) == 0):
            ret = r
            break
        if not table:
            gsz = U(1) << U(_gshift(level, page_shift))
            addr = (addr & ~(gsz - U(1))) + gsz
            idx += 1
            continue
        srow[d] = U(row)
        sidx[d] = U(idx)
        saddr[d] = ctx_addr
        sold[d] = old
        d += 1
        row = _row_of(old, base_pa, page_shift)
        level += 1
        idx = np.int64((addr >> U(_gshift(level, page_shift))) & mask)

    if deferred:
        # stage2_unmap_defer_tlb_flush(): one range flush for the whole walk
        _flush_vmid_range(tlog, rep, flags, np.int64(start), np.int64(end - start), page_shift)
    rep[R_RET] = ret
    return ret


@jit
def _visit_leaf(op, row, idx, level, ctx_addr, start, end, old, phys, attr, owner, tables,
                refcnt, free, meta, base_pa, page_shift, flags, rule, stat, rep, tlog):
    """The LEAF callback of each operation (any non-table entry, invalid ones included)."""
    if op == OP_MAP:
        # stage2_map_walk_leaf()
        phys_at = phys + (ctx_addr - start)
        r = _try_leaf(row, idx, level, ctx_addr, end, old, phys_at, attr, owner, tables, refcnt,
                      free, meta, page_shift, flags, rule, stat, rep, tlog)
        if r != -E2BIG:
            return r
        if level == 3:
            return -EINVAL
        child = pt_alloc(tables, refcnt, free, meta)
        if child < 0:
            return -ENOMEM
        rep[R_TABLES_ALLOCATED] += 1
        if not _break_pte(row, idx, level, ctx_addr, old, tables, refcnt, free, meta, page_shift,
                          flags, rule, stat, rep, tlog):
            pt_put(child, refcnt, free, meta, rep)
            return -EAGAIN
        new = make_table(_row_pa(child, base_pa, page_shift), page_shift)
        _make_pte(row, idx, level, new, tables, refcnt, rule, stat, rep, page_shift)
        return 0

    if op == OP_UNMAP:
        # stage2_unmap_walker(), leaf half
        if (old & VALID) == U(0):
            if is_counted(old, level, rule):
                _store(tables, row, idx, U(0), level, stat, rep)
                pt_put(row, refcnt, free, meta, rep)
            return 0
        gsz = np.int64(1) << _gshift(level, page_shift)
        need_flush = ((old & MEMATTR_MASK) == U(D.MEMATTR_NORMAL << 2) and (flags & F_FWB) == 0
                      and (flags & F_SKIP_CMO) == 0)
        _store(tables, row, idx, U(0), level, stat, rep)
        if not ((flags & F_TLBIRANGE) != 0 and (flags & F_FWB) != 0):
            base = np.int64(ctx_addr & ~U(gsz - 1))
            _tlbi(tlog, rep, TLBI_IPA, base, gsz, level)
        if _is_leaf(old, level):
            rep[R_UNMAPPED_BYTES] += gsz
        if is_counted(old, level, rule):
            pt_put(row, refcnt, free, meta, rep)
        if need_flush:
            rep[R_CMO_BYTES] += gsz
        return 0

    if op == OP_SPLIT:
        # stage2_split_walker()
        if level == 3 or (old & VALID) == U(0):
            return 0
        entries = 1 << (page_shift - 3)
        if level == 1:
            nr = entries + 1
        elif level == 2:
            nr = 1
        else:
            return -EINVAL
        if meta[M_LIMIT] < 0:
            avail = np.int64(1) << 62
        else:
            avail = meta[M_LIMIT] - meta[M_INUSE]
        force_pte = True
        if avail < nr:
            force_pte = False
            nr = 1
        if avail < nr:
            return -ENOMEM
        # the block's output address: bits below the block size (nT among them) are not OA
        bpa = pte_to_phys(old, page_shift) & ~((U(1) << U(_gshift(level, page_shift))) - U(1))
        # kvm_pgtable_stage2_pte_prot() then stage2_set_prot_attr(): the children keep R, W,
        # X and the software bits; the memory type is re-derived (a device block's is lost)
        prot = 0
        if (old & D.S2AP_R) != U(0):
            prot |= D.PROT_R
        if (old & D.S2AP_W) != U(0):
            prot |= D.PROT_W
        if (old & XN) == U(0):
            prot |= D.PROT_X
        ok, cattr = D.prot_to_attr(prot)
        cattr |= old & SW_MASK
        child = _create_unlinked(bpa, level, cattr, force_pte,
                                 tables, refcnt, free, meta, base_pa, page_shift, rule, stat, rep)
        if child < 0:
            return -ENOMEM
        if not _break_pte(row, idx, level, ctx_addr, old, tables, refcnt, free, meta, page_shift,
                          flags, rule, stat, rep, tlog):
            free_subtree(child, level + 1, tables, refcnt, free, meta, base_pa, page_shift, rule,
                         stat, rep)
            return -EAGAIN
        # the unlinked tree's leaves were counted as live when built; the break removed the
        # block: account the bytes as a re-mapping, not a new mapping
        new = make_table(_row_pa(child, base_pa, page_shift), page_shift)
        _make_pte(row, idx, level, new, tables, refcnt, rule, stat, rep, page_shift)
        rep[R_SPLITS] += 1
        return 0

    if op == OP_DESTROY:
        # stage2_free_walker(), leaf half
        if is_counted(old, level, rule):
            pt_put(row, refcnt, free, meta, rep)
        if _is_leaf(old, level):
            stat[S_LEAVES + level] -= 1
        return 0

    if op == OP_GET_LEAF:
        rep[R_LEAF_PTE] = np.int64(old)
        rep[R_LEAF_LEVEL] = level
        return 0

    if op == OP_ATTR:
        # stage2_attr_walker(): phys holds the bits to clear, attr the bits to set
        if (old & VALID) == U(0):
            return -EAGAIN
        rep[R_LEAF_PTE] = np.int64(old)
        rep[R_LEAF_LEVEL] = level
        amask = LEAF_ATTR | NT if level < 3 else LEAF_ATTR
        new = (old & ~(phys & amask)) | (attr & amask)
        if new != old:
            oc = is_counted(old, level, rule)
            nc = is_counted(new, level, rule)
            if oc and not nc:
                pt_put(row, refcnt, free, meta, rep)
            elif nc and not oc:
                refcnt[row] += 1
            _store(tables, row, idx, new, level, stat, rep)
            if (flags & F_SKIP_CMO) == 0 and (new & XN) == U(0) and (old & XN) != U(0):
                rep[R_ICACHE_BYTES] += np.int64(1) << _gshift(level, page_shift)
        return 0
    return -EINVAL


@jit
def _zap_table(row, idx, level, ctx_addr, old, child, ttl, tables, refcnt, free, meta, base_pa,
               page_shift, rule, stat, rep, tlog):
    """Clear the table entry at (row, idx), invalidate its IPA (level hint ``ttl``), drop
    its count and free the child page with whatever default leaves it still holds
    (stage2_unmap_put_pte() / stage2_put_pte() followed by put_page(childp)).
    put_page() is no walk: free_subtree()'s visits of the child (made here only to keep the
    live-leaf statistics) are not the kernel's and are not reported."""
    _store(tables, row, idx, U(0), level, stat, rep)
    _tlbi(tlog, rep, TLBI_IPA, np.int64(ctx_addr & ~U((1 << page_shift) - 1)),
          np.int64(1) << page_shift, ttl)
    if is_counted(old, level, rule):
        pt_put(row, refcnt, free, meta, rep)
    visits = rep[R_VISITS]
    free_subtree(child, level + 1, tables, refcnt, free, meta, base_pa, page_shift, rule, stat,
                 rep)
    rep[R_VISITS] = visits


@jit
def _visit_post(op, row, idx, level, ctx_addr, old, tables, refcnt, free, meta, base_pa,
                page_shift, flags, rule, stat, rep, tlog):
    """The TABLE_POST callback (after the walk has finished the child table)."""
    child = _row_of(old, base_pa, page_shift)
    if op == OP_UNMAP:
        # stage2_unmap_walker(), table half: a table whose refcount is 1 goes. Under the host
        # coalescing rule it may still hold default (uncounted) leaves: they go with it, as
        # in the kernel (the host refaults them lazily); free_subtree() accounts for them.
        if refcnt[child] != 1:
            return 0
        _zap_table(row, idx, level, ctx_addr, old, child, TTL_UNKNOWN, tables, refcnt, free,
                   meta, base_pa, page_shift, rule, stat, rep, tlog)
        return 0
    if op == OP_DESTROY:
        if is_counted(old, level, rule):
            pt_put(row, refcnt, free, meta, rep)
        pt_put(child, refcnt, free, meta, rep)
        return 0
    if op == OP_MAP:
        # seed 000's stage2_coalesce_walk_table_post(), on the set-owner path only (F_COALESCE
        # is set by set_owner): a table whose refcount fell to 1 holds only default
        # (uncounted) entries; at a level that supports blocks, stage2_put_pte() clears the
        # parent entry, invalidates that IPA at that level and drops the parent's count, and
        # the child page goes back. The next host abort there maps the largest block.
        min_block = 1 if page_shift == 12 else 2
        if level < min_block or refcnt[child] != 1:
            return 0
        _zap_table(row, idx, level, ctx_addr, old, child, level, tables, refcnt, free, meta,
                   base_pa, page_shift, rule, stat, rep, tlog)
        rep[R_ZAPPED] += 1
        return 0
    return 0


# ========================================================================================
# Python wrappers: validate, reserve memory, make exactly one kernel call.


# ------------------------------------------------------------------------------------------
# Single-entry steps: the phases of replacing a table by a block (seeds 001 and 003), which
# the engine spreads over simulated time so that other vCPUs see the window between them.

STEP_BREAK = 0  # break: locked invalid pattern, TLBI of what the table covered, put
STEP_INSTALL = 1  # make: store ``new`` into a broken (invalid) entry, get if counted
STEP_REPLACE = 2  # store ``new`` over the live entry with no invalidation (TTRem)
STEP_FREE = 3  # free a detached subtree (``child``, entries at ``level + 1``)
STEP_FLUSH_VMID = 4  # TLBI VMALLS12E1IS


@jit
def pgtable_entry_step(step, tables, refcnt, free, meta, base_pa, page_shift, row, idx, level,
                       ipa, new, child, flags, rule, stat, rep, tlog):
    """One step on the entry (row, idx) at ``level`` that covers ``ipa``; see STEP_*."""
    if step == STEP_BREAK:
        old = tables[row, idx]
        if not _break_pte(row, idx, level, U(ipa), old, tables, refcnt, free, meta,
                          page_shift, flags, rule, stat, rep, tlog):
            rep[R_RET] = -EAGAIN
            return -EAGAIN
    elif step == STEP_INSTALL:
        _make_pte(row, idx, level, U(new), tables, refcnt, rule, stat, rep, page_shift)
    elif step == STEP_REPLACE:
        old = tables[row, idx]
        if is_counted(old, level, rule):
            pt_put(row, refcnt, free, meta, rep)
        if _is_leaf(old, level):
            rep[R_UNMAPPED_BYTES] += np.int64(1) << _gshift(level, page_shift)
        _make_pte(row, idx, level, U(new), tables, refcnt, rule, stat, rep, page_shift)
    elif step == STEP_FREE:
        free_subtree(child, level + 1, tables, refcnt, free, meta, base_pa, page_shift, rule,
                     stat, rep)
    elif step == STEP_FLUSH_VMID:
        _tlbi(tlog, rep, TLBI_VMID, 0, 0, TTL_UNKNOWN)
    rep[R_RET] = 0
    return 0


class PageTableMemory:
    """Table pages as rows of one growable ``uint64`` array, a refcount per row and a free
    stack. ``limit_pages`` caps the pages in use (an allocation beyond it fails: -ENOMEM).
    Memory grows with the pages in use, never with the address space configured."""

    def __init__(self, page_shift: int, base_pa: int, limit_pages: int | None = None,
                 initial_pages: int = 16):
        self.page_shift = page_shift
        self.entries = 1 << (page_shift - 3)
        self.base_pa = base_pa
        cap = max(1, initial_pages)
        self.tables = np.zeros((cap, self.entries), dtype=np.uint64)
        self.refcnt = np.zeros(cap, dtype=np.int64)
        self.free = np.zeros(cap, dtype=np.int64)
        self.meta = np.zeros(META_SIZE, dtype=np.int64)
        self.meta[M_LIMIT] = -1 if limit_pages is None else limit_pages

    @property
    def capacity(self) -> int:
        return self.tables.shape[0]

    @property
    def pages_in_use(self) -> int:
        return int(self.meta[M_INUSE])

    @property
    def peak_pages(self) -> int:
        return int(self.meta[M_PEAK])

    @property
    def limit_pages(self) -> int | None:
        lim = int(self.meta[M_LIMIT])
        return None if lim < 0 else lim

    def row_pa(self, row: int) -> int:
        return self.base_pa + (row << self.page_shift)

    def row_of(self, pa: int) -> int:
        return (pa - self.base_pa) >> self.page_shift

    def reserve(self, pages: int) -> None:
        """Grow (by doubling) so that ``pages`` more allocations can succeed without the
        arrays moving during a kernel call (bounded by the limit)."""
        lim = self.limit_pages
        if lim is not None:
            pages = min(pages, max(0, lim - self.pages_in_use))
        fresh_needed = pages - int(self.meta[M_NFREE])
        hwm = int(self.meta[M_HWM])
        if hwm + fresh_needed <= self.capacity:
            return
        cap = self.capacity
        while cap < hwm + fresh_needed:
            cap *= 2
        if lim is not None:
            cap = max(min(cap, lim + 16), hwm + fresh_needed)
        self._grow(cap)

    def _grow(self, cap: int) -> None:
        old = self.capacity
        tables = np.zeros((cap, self.entries), dtype=np.uint64)
        tables[:old] = self.tables
        self.tables = tables
        self.refcnt = np.concatenate([self.refcnt, np.zeros(cap - old, dtype=np.int64)])
        self.free = np.concatenate([self.free, np.zeros(cap - old, dtype=np.int64)])

    def alloc_contiguous(self, n: int) -> int:
        """zalloc_pages_exact(): ``n`` physically contiguous pages (fresh rows), refcount 1."""
        lim = self.limit_pages
        if lim is not None and self.pages_in_use + n > lim:
            raise MemoryError("page-table memory limit reached")
        hwm = int(self.meta[M_HWM])
        if hwm + n > self.capacity:
            cap = self.capacity
            while cap < hwm + n:
                cap *= 2
            self._grow(cap)
        self.tables[hwm:hwm + n] = 0
        self.refcnt[hwm:hwm + n] = 1
        self.meta[M_HWM] += n
        self.meta[M_INUSE] += n
        self.meta[M_ALLOCS] += n
        self.meta[M_PEAK] = max(self.meta[M_PEAK], self.meta[M_INUSE])
        return hwm

    def free_rows(self) -> np.ndarray:
        return self.free[: int(self.meta[M_NFREE])].copy()

    def before_op(self, pages: int) -> None:
        """Make ``pages`` allocations possible during the next kernel call (the memcache
        top-up)."""
        if pages > int(self.meta[M_NFREE]) + self.capacity - int(self.meta[M_HWM]):
            self.reserve(pages)

    def after_op(self) -> None:
        """Settle after a kernel call (a pool-backed memory returns unused pages here)."""

    def nbytes(self) -> int:
        return self.tables.nbytes + self.refcnt.nbytes + self.free.nbytes


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
            sw: int = 0, shared: bool = False) -> OpReport:
        """kvm_pgtable_stage2_map(): map [ipa, ipa + size) to ``phys`` with blocks wherever
        kvm_block_mapping_supported() allows, tables below otherwise. ``shared``: a walk
        under the MMU read lock, which backs off (-EAGAIN) from an entry another walker has
        locked."""
        if attr is None:
            attr = D.prot_attr(prot)
        attr |= sw << D.SW_SHIFT
        flags = ((F_FORCE_PTE if force_pte else 0) | (F_HANDLE_FAULT if handle_fault else 0)
                 | (F_SHARED if shared else 0))
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


__all__ = [
    "OpReport",
    "PageTableMemory",
    "Stage2",
    "TLBIRecord",
    "free_subtree",
    "pgtable_walk",
]




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
