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

import numpy as np

from simulator._jit import jit
from simulator.arch import descriptors as D
from simulator.arch.descriptors import (
    LEAF_ATTR,
    MEMATTR_MASK,
    NT,
    SW_MASK,
    TYPE,
    VALID,
    XN,
    is_counted,
    make_table,
    pte_to_phys,
)
from simulator.hyp.pgtable.defs import (
    E2BIG,
    EAGAIN,
    EINVAL,
    ENOMEM,
    ERANGE,
    F_COALESCE,
    F_FWB,
    F_HANDLE_FAULT,
    F_SKIP_CMO,
    F_TLBIRANGE,
    M_INUSE,
    M_LIMIT,
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
    R_RET,
    R_SPLITS,
    R_TABLES_ALLOCATED,
    R_UNMAPPED_BYTES,
    R_VISITS,
    R_ZAPPED,
    S_LEAVES,
    TLBI_IPA,
    TLBI_VMID,
    TTL_UNKNOWN,
    U,
)
from simulator.hyp.pgtable.entries import (
    _break_pte,
    _create_unlinked,
    _flush_vmid_range,
    _gshift,
    _is_leaf,
    _leaf_allowed,
    _make_pte,
    _row_of,
    _row_pa,
    _store,
    _tlbi,
    _try_leaf,
    free_subtree,
)
from simulator.hyp.pgtable.memory import (
    pt_alloc,
    pt_put,
)

# int64 (not literal) arguments: a literal int would compile the callee once more per value
I0 = np.int64(0)


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
            _tlbi(tlog, rep, np.int64(TLBI_IPA), base, gsz, level)
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
    _tlbi(tlog, rep, np.int64(TLBI_IPA), np.int64(ctx_addr & ~U((1 << page_shift) - 1)),
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
        _zap_table(row, idx, level, ctx_addr, old, child, np.int64(TTL_UNKNOWN), tables, refcnt,
                   free, meta, base_pa, page_shift, rule, stat, rep, tlog)
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
        _tlbi(tlog, rep, np.int64(TLBI_VMID), I0, I0, np.int64(TTL_UNKNOWN))
    rep[R_RET] = 0
    return 0
