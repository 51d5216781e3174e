"""The single-entry work of the stage-2 walkers: stores, TLBIs, break-before-make, making
and freeing tables (arch/arm64/kvm/hyp/pgtable.c, Linux 6.12)."""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.arch import descriptors as D
from simulator.arch.descriptors import (
    LOCKED,
    MEMATTR_MASK,
    S2_PERMS,
    SW_MASK,
    TYPE,
    VALID,
    XN,
    is_counted,
    make_leaf,
    make_owner,
    make_table,
    pte_to_phys,
)
from simulator.hyp.pgtable.defs import (
    E2BIG,
    EAGAIN,
    F_FORCE_PTE,
    F_FWB,
    F_OWNER,
    F_SHARED,
    F_SKIP_BBM_TLBI,
    F_SKIP_CMO,
    F_TLBIRANGE,
    MAX_TLBI_RANGE_PAGES,
    R_BLOCKS_INSTALLED,
    R_CMO_BYTES,
    R_ICACHE_BYTES,
    R_MAPPED_BYTES,
    R_STORES,
    R_TABLES_ALLOCATED,
    R_TLBI_IPA,
    R_TLBI_LOG_N,
    R_UNMAPPED_BYTES,
    R_VISITS,
    R_WARN,
    S_LEAVES,
    TLBI_IPA,
    TLBI_RANGE,
    TLBI_VMID,
    TLOG_ADDR,
    TLOG_COUNT,
    TLOG_KIND,
    TLOG_LEVEL,
    TLOG_SIZE,
    TTL_UNKNOWN,
    U,
)
from simulator.hyp.pgtable.memory import (
    pt_alloc,
    pt_put,
)


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
        _tlbi(tlog, rep, np.int64(TLBI_VMID), np.int64(0), np.int64(0), np.int64(TTL_UNKNOWN))
        return
    pages = size >> page_shift
    while pages > 0:
        chunk = min(pages, MAX_TLBI_RANGE_PAGES)
        _tlbi(tlog, rep, np.int64(TLBI_RANGE), addr, chunk << page_shift,
              np.int64(TTL_UNKNOWN))
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
            _tlbi(tlog, rep, np.int64(TLBI_IPA), np.int64(base), np.int64(gsz), level)
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
