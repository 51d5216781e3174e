"""The compiled fault handler: user_mem_abort() as a cost model, and the rebuild interpreter.

What a fault does under the MMU lock, and what it costs: the kernel's walker for the map,
the permission relax or the leaf lookup; an operation's TLBIs delivered to every CPU; its
cycles (:func:`op_cycles`); the guest's layout (:func:`pa_of`, the mapping level a fault
installs); a table where a block goes replaced by the strategy's program
(:mod:`simulator.hyp.rebuild`). :func:`simulator.engine.loop.advance` calls these at the
states where a context handles its fault.
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.arch import descriptors as D
from simulator.arch.descriptors import is_table, make_leaf
from simulator.engine.layout import (
    E_ALLOC,
    E_S1_BYTES,
    E_S1_CYCLES,
    E_S1_FAULTS,
    E_S1_TABLES,
    ERR_GUEST_OOM,
    ERR_VA_RANGE,
    FP_ZERO,
    P_GUEST_FAULT,
    V_KIND,
    V_NSLOT,
    V_SLOT_OFF,
    VM_HOST,
    E_CMO,
    E_DIRTY,
    E_ENOMEM,
    E_FREED,
    E_RB_BLOCKS,
    E_RB_WINDOW,
    E_SPURIOUS,
    E_TLBI_OPS,
    ERR_ENOMEM,
    ERR_WARN,
    FP_CMO,
    FP_ICACHE,
    G_ERR,
    G_ERR_CTX,
    G_ERR_IPA,
    G_NWIN,
    G_S1_ENTRIES,
    G_S1_FLUSHES,
    G_TLBI_ENTRIES,
    P_ATTR,
    P_ATTR_X,
    P_C_ALLOC,
    P_C_PUT,
    P_C_FREE,
    P_C_STORE,
    P_C_TLBI_IPA,
    P_C_TLBI_RANGE,
    P_C_TLBI_VMID,
    P_C_VISIT,
    P_CMO_AT_FAULT,
    P_DIC,
    P_DIRTY_PAGE,
    P_FWB,
    P_LOCK,
    P_PAGE_SHIFT,
    P_PERM_HANDLER,
    P_TLBI_IPA,
    S_ENOMEM,
    S_FSTATUS,
    S_IPA,
    S_KIND,
    S_LEVEL,
    S_OPC,
    S_RB_ACC,
    S_RB_CHILD,
    S_RB_IDX,
    S_RB_NEW,
    S_RB_PC,
    S_RB_ROW,
    S_RB_START,
    S_RB_T0,
    S_REPEATS,
    S_RET,
    S_SIZE,
    S_SLOT,
    S_START,
    S_STATE,
    ST_RELEASE,
    V_ALIAS_FRAMES,
    V_ALIAS_PAGES,
    V_ALIAS_START,
    V_CHUNK,
    V_CHUNK_OFF,
    V_DIRTY,
    V_FLAGS,
    V_IA_BITS,
    V_LOGGING,
    V_PA_BASE,
    V_ROOT,
    V_RULE,
    V_SHARED_FROM,
    V_SHARED_WALK,
    V_START_LEVEL,
    V_TBASE,
    V_VMID,
    V_WANT,
)
from simulator.engine.sched import (
    push,
)
from simulator.hyp import pgtable as P
from simulator.hyp.host import STATE_SHARED_BORROWED
from simulator.hyp.pgtable import (
    F_FORCE_PTE,
    F_HANDLE_FAULT,
    F_SHARED,
    F_SKIP_CMO,
    F_TLBIRANGE,
    OP_ATTR,
    OP_GET_LEAF,
    OP_MAP,
    OP_UNMAP,
    R_CMO_BYTES,
    R_LEAF_LEVEL,
    R_RET,
    R_TABLES_ALLOCATED,
    R_TABLES_FREED,
    R_TLBI_IPA,
    R_TLBI_LOG_N,
    R_TLBI_RANGE,
    R_TLBI_VMID,
    R_WARN,
    STEP_BREAK,
    STEP_FLUSH_VMID,
    STEP_FREE,
    STEP_INSTALL,
    STEP_REPLACE,
    TLBI_VMID,
    TLOG_ADDR,
    TLOG_KIND,
    TLOG_SIZE,
    _row_of,
    pgtable_entry_step,
    pgtable_walk,
)
from simulator.hyp.rebuild import (
    RB_BREAK,
    RB_BREAK_VMID,
    RB_CMO,
    RB_FLUSH,
    RB_FLUSH_LANDS,
    RB_FREE,
    RB_INSTALL,
    RB_REPLACE,
    RB_REPLACE_NT,
    RB_WAIT,
    RB_WINDOW_CLOSE,
    RB_WINDOW_OPEN,
)
from simulator.mmu.batch import FETCH, WRITE
from simulator.mmu.tlb import tlb_invalidate, tlb_invalidate_s12
from simulator.guest.stage1 import S1F_OOM, s1_fault
from simulator.mmu.walk import S1_PS, S1_VA_BITS, W_PERMISSION, wc_flush_s1, wc_invalidate

U = np.uint64
# int64 (not literal) arguments: a literal int would compile the callee once more per value
I0 = np.int64(0)
IM1 = np.int64(-1)
I1 = np.int64(1)


# ---- costs and accounting --------------------------------------------------------------------
@jit
def op_cycles(rep, pr, fp):
    """The cycles of a page-table operation's report: descriptors visited and stored, table
    page references dropped, table pages allocated and freed, TLBIs, cache maintenance (none
    with FWB / DIC)."""
    c = (rep[P.R_VISITS] * pr[P_C_VISIT] + rep[P.R_STORES] * pr[P_C_STORE]
         + rep[P.R_PUTS] * pr[P_C_PUT]
         + rep[R_TABLES_ALLOCATED] * pr[P_C_ALLOC] + rep[R_TABLES_FREED] * pr[P_C_FREE]
         + rep[R_TLBI_IPA] * pr[P_C_TLBI_IPA] + rep[R_TLBI_RANGE] * pr[P_C_TLBI_RANGE]
         + rep[R_TLBI_VMID] * pr[P_C_TLBI_VMID])
    if pr[P_FWB] == 0:
        c += np.int64(rep[R_CMO_BYTES] / fp[FP_CMO])
    if pr[P_DIC] == 0:
        c += np.int64(rep[P.R_ICACHE_BYTES] / fp[FP_ICACHE])
    return c


@jit
def account(rep, ec, tc, c, g):
    """An operation's TLBIs, table pages and cache maintenance, counted for context ``c``;
    False on kernel WARN()s."""
    ec[c, E_TLBI_OPS] += rep[R_TLBI_IPA] + rep[R_TLBI_RANGE] + rep[R_TLBI_VMID]
    ec[c, E_ALLOC] += rep[R_TABLES_ALLOCATED]
    ec[c, E_FREED] += rep[R_TABLES_FREED]
    ec[c, E_CMO] += rep[R_CMO_BYTES]
    tc[c, E_TLBI_OPS] = 1
    tc[c, E_ALLOC] = 1
    tc[c, E_FREED] = 1
    tc[c, E_CMO] = 1
    if rep[R_WARN]:
        g[G_ERR] = ERR_WARN
        g[G_ERR_CTX] = c
        return False
    return True


@jit(inline="always")
def two_stage(vmid, tl):
    """Does the VMID's guest (or pKVM host) have a stage-1 (its TLB entries are combined)?"""
    return vmid >= 0 and vmid < tl.s1.shape[0] and tl.s1[vmid] != 0


@jit
def invalidate_cpu(cpu, vmid, lo, hi, page_shift, tl, g, walks):
    """One CPU drops the VMID's TLB entries in [lo, hi) (0, 0: all of them) and, with
    ``walks`` non-zero, its stage-2 walk-cache entries there too (0: a leaf-level TLBI, as
    after a permission relax); returns the TLB entries removed.

    For a VMID whose guest has a stage-1 the TLB holds combined VA -> PA entries, which no
    IPA names: KVM follows every stage-2 invalidation with TLBI VMALLE1(IS)
    (__kvm_tlb_flush_vmid_ipa(), "invalidate Stage-2 for this IPA, and the whole of
    Stage-1"; the local _nsh variant after a relax), so all of the VMID's combined entries
    and stage-1 walk-cache entries go, counted in G_S1_ENTRIES (the caller counts the
    flush: count_s1_flush()); its cached stage-2 entries go by range, like IPA-keyed ones
    (returned)."""
    if walks != 0:
        wc_invalidate(vmid, U(lo), U(hi), page_shift, tl.wc_tag[cpu])
    if two_stage(vmid, tl):
        wc_flush_s1(vmid, tl.wc_tag[cpu])
        n1, n2 = tlb_invalidate_s12(vmid, U(lo), U(hi), tl.key[cpu], tl.off, tl.sets, tl.ways)
        g[G_S1_ENTRIES] += n1
        return n2
    return tlb_invalidate(vmid, U(lo), U(hi), tl.key[cpu], tl.off, tl.sets, tl.ways, tl.sizes)


@jit
def count_s1_flush(vmid, tl, g):
    """A stage-2 invalidation of a two-stage VMID also flushed its stage-1: count it."""
    if two_stage(vmid, tl):
        g[G_S1_FLUSHES] += 1


@jit
def invalidate_all(vmid, lo, hi, ps, g, tl):
    """Every CPU drops the VMID's entries in [lo, hi) (0, 0: all), counted in tlbi.entries
    (combined entries in tlbi.s1_entries)."""
    for cpu in range(tl.key.shape[0]):
        g[G_TLBI_ENTRIES] += invalidate_cpu(cpu, vmid, lo, hi, ps, tl, g, I1)
    count_s1_flush(vmid, tl, g)


@jit
def apply_tlbis(rep, tlog, vmid, ps, g, tl):
    """An operation's logged invalidations, on every CPU."""
    for i in range(rep[R_TLBI_LOG_N]):
        if tlog[i, TLOG_KIND] == TLBI_VMID:
            invalidate_all(vmid, I0, I0, ps, g, tl)
        else:
            lo = tlog[i, TLOG_ADDR]
            invalidate_all(vmid, lo, lo + tlog[i, TLOG_SIZE], ps, g, tl)


# ---- the guest's layout -------------------------------------------------------------------
@jit
def pa_of(vmt, v, chunks, ipa, ps):
    """The host physical address behind guest IPA ``ipa``: donated chunks (pkvm), or the
    guest's base plus the IPA, with shared_frames' aliasing of pages onto frames."""
    ch = vmt[v, V_CHUNK]
    if ch > 0:
        k = ipa // ch
        return chunks[vmt[v, V_CHUNK_OFF] + k] + ipa % ch
    a = ipa
    frames = vmt[v, V_ALIAS_FRAMES]
    if frames > 0:
        o = ipa - vmt[v, V_ALIAS_START]
        if o >= 0 and o < (vmt[v, V_ALIAS_PAGES] << ps):
            p = o >> ps
            a = vmt[v, V_ALIAS_START] + ((p % frames) << ps) + (o & ((np.int64(1) << ps) - 1))
    return vmt[v, V_PA_BASE] + a


@jit
def _block_level(ipa, slot_base, slot_size, want, ps, block_levels):
    """The level of the mapping the fault handler installs at ``ipa``: the wanted size
    stepped down until the block lies inside the memslot (and, in pkvm, the donated chunk:
    ``want`` is bounded by it)."""
    for j in range(block_levels.shape[0]):
        lvl = block_levels[j]
        bs = np.int64(1) << ((ps - 3) * (4 - lvl) + 3)
        if bs > want:
            continue
        start = ipa & ~(bs - 1)
        if start >= slot_base and start + bs <= slot_base + slot_size:
            return lvl
    return 3


@jit
def _locate(tables, vmt, v, ps, ipa, level, out):
    """out = (row, idx, pte) of the entry at ``level`` on the walk to ``ipa``; False when a
    non-table entry ends the walk above it."""
    entries = np.int64(1) << (ps - 3)
    sl = vmt[v, V_START_LEVEL]
    pgd_shift = (ps - 3) * (4 - (sl - 1)) + 3
    row = vmt[v, V_ROOT] + ((ipa & ((np.int64(1) << vmt[v, V_IA_BITS]) - 1)) >> pgd_shift)
    lvl = sl
    while True:
        idx = (ipa >> ((ps - 3) * (4 - lvl) + 3)) & (entries - 1)
        pte = tables[row, idx]
        if lvl == level:
            out[0] = row
            out[1] = idx
            out[2] = np.int64(pte)
            return True
        if not is_table(pte, lvl):
            return False
        row = _row_of(pte, vmt[v, V_TBASE], ps)
        lvl += 1


@jit(inline="always")
def handle(c, v, cpu, now, md, sc, tl, mem, wk):
    """user_mem_abort() under the MMU lock, up to its page-table operation. Returns 0 when
    the work is done (S_OPC holds its cycles), 1 when a map of (S_START, S_SIZE) follows, 2
    when a rebuild follows. md, sc, tl, mem, wk: the engine's groups (layout.Model, ...)."""
    pr, fp, vmt, slots, chunks, block_levels, _ = md
    g, st, ec, tc = sc.g, sc.st, sc.ec, sc.tc
    tables, refcnt, free, meta, _ = mem
    stat, rep, tlog, stk, dirty, loc = wk.stats[v], wk.rep, wk.tlog, wk.stk, wk.dirty, wk.loc
    ps = pr[P_PAGE_SHIFT]
    page = np.int64(1) << ps
    ipa = st[c, S_IPA]
    kind = st[c, S_KIND]
    fstatus = st[c, S_FSTATUS]
    logging = vmt[v, V_LOGGING] != 0
    tb = vmt[v, V_TBASE]
    opc = 0
    ch = vmt[v, V_CHUNK]
    if ch > 0 and chunks[vmt[v, V_CHUNK_OFF] + ipa // ch] < 0:
        # its chunk was ballooned away after the fault's check: nothing to map, the access
        # faults again (and has a chunk donated)
        ec[c, E_SPURIOUS] += 1
        tc[c, E_SPURIOUS] = 1
        st[c, S_REPEATS] = 0
        st[c, S_OPC] = 0
        return 0
    if logging and kind == WRITE:
        # mark_page_dirty(): the page's bit in the memslot's dirty bitmap
        pg = ipa >> ps
        if vmt[v, V_DIRTY] != 0 and pg < dirty.shape[0] and not dirty[pg]:
            dirty[pg] = True
            ec[c, E_DIRTY] += 1
            tc[c, E_DIRTY] = 1
        opc += pr[P_DIRTY_PAGE]
    lo = ipa & ~(page - 1)
    leaf_level = 3
    if fstatus == W_PERMISSION:
        rep[:] = 0
        pgtable_walk(np.int64(OP_GET_LEAF), tables, refcnt, free, meta, tb, ps, vmt[v, V_ROOT],
                     vmt[v, V_START_LEVEL], vmt[v, V_IA_BITS], U(lo), U(lo + page), U(0), U(0),
                     I0, vmt[v, V_FLAGS], vmt[v, V_RULE], stat, rep, tlog, stk)
        leaf_level = rep[R_LEAF_LEVEL]
    if fstatus == W_PERMISSION and not (logging and leaf_level < 3):
        # kvm_pgtable_stage2_relax_perms(), then a local TLBI of that IPA
        clear_bits = D.XN if kind == FETCH else U(0)
        set_bits = D.S2AP_W if kind == WRITE else D.S2AP_R
        rep[:] = 0
        pgtable_walk(np.int64(OP_ATTR), tables, refcnt, free, meta, tb, ps, vmt[v, V_ROOT],
                     vmt[v, V_START_LEVEL], vmt[v, V_IA_BITS], U(lo), U(lo + page), clear_bits,
                     set_bits, I0, F_HANDLE_FAULT | vmt[v, V_FLAGS], vmt[v, V_RULE], stat, rep,
                     tlog, stk)
        # the local TLBI of that IPA's leaf (6.6+: __kvm_tlb_flush_vmid_ipa_nsh(), which
        # flushes the VMID's stage-1 too)
        invalidate_cpu(cpu, vmt[v, V_VMID], lo, lo + page, ps, tl, g, I0)
        count_s1_flush(vmt[v, V_VMID], tl, g)
        opc += op_cycles(rep, pr, fp) + pr[P_PERM_HANDLER] + pr[P_TLBI_IPA]
        ec[c, E_TLBI_OPS] += 1
        tc[c, E_TLBI_OPS] = 1
        st[c, S_OPC] = opc
        if not account(rep, ec, tc, c, g):
            return -1
        return 0
    # a translation fault, or a write to a block while logging (force_pte: the map replaces
    # the block by a table holding the one page)
    k = st[c, S_SLOT]
    level = 3 if logging else _block_level(ipa, slots[k, 0], slots[k, 1], vmt[v, V_WANT], ps,
                                           block_levels)
    bs = np.int64(1) << ((ps - 3) * (4 - level) + 3)
    start = ipa & ~(bs - 1)
    st[c, S_OPC] = opc
    st[c, S_START] = start
    st[c, S_SIZE] = bs
    st[c, S_LEVEL] = level
    rb = level < 3 and _locate(tables, vmt, v, ps, start, level, loc) and is_table(U(loc[2]),
                                                                                level)
    if pr[P_CMO_AT_FAULT] != 0 and fstatus != W_PERMISSION and not rb:
        # 5.11: clean_dcache_guest_page() of the whole mapping size, before the map, whether
        # or not the map finds the leaf installed already (a rebuild's program does it first)
        st[c, S_OPC] = opc + np.int64(bs / fp[FP_CMO])
        ec[c, E_CMO] += bs
        tc[c, E_CMO] = 1
    if rb:
        # a table where the block goes: rebuild it (seeds 001 and 003)
        ec[c, E_RB_BLOCKS] += 1
        tc[c, E_RB_BLOCKS] = 1
        st[c, S_RB_ROW] = loc[0]
        st[c, S_RB_IDX] = loc[1]
        st[c, S_RB_START] = start
        st[c, S_RB_CHILD] = _row_of(U(loc[2]), tb, ps)
        phys = pa_of(vmt, v, chunks, start, ps) & ~(bs - 1)
        st[c, S_RB_NEW] = np.int64(make_leaf(U(phys), U(_attr(c, v, start, pr, vmt, st)), level,
                                             ps))
        st[c, S_RB_PC] = 0
        st[c, S_RB_ACC] = 0
        return 2
    return 1


@jit
def _attr(c, v, start, pr, vmt, st):
    """The leaf attributes a fault maps with: RW (X after an instruction fetch fault, or
    always with DIC; not W after a read or fetch while dirty logging), and pKVM's
    SHARED_BORROWED state for memory the host shares."""
    attr = pr[P_ATTR_X] if (st[c, S_KIND] == FETCH or pr[P_DIC] != 0) else pr[P_ATTR]
    if vmt[v, V_LOGGING] != 0 and st[c, S_KIND] != WRITE:
        # user_mem_abort(): "Only actually map the page as writable if this was a write
        # fault" while logging; the first write then takes a permission fault, marked dirty
        attr &= ~np.int64(D.S2AP_W)
    sf = vmt[v, V_SHARED_FROM]
    if sf >= 0 and start >= sf:
        attr |= np.int64(STATE_SHARED_BORROWED) << D.SW_SHIFT
    return attr


@jit(inline="always")
def map_fault(c, v, md, sc, tl, mem, wk):
    """kvm_pgtable_stage2_map() of (S_START, S_SIZE) for a fault; False on an error."""
    pr, fp, vmt, chunks = md.pr, md.fp, md.vmt, md.chunks
    g, st, ec, tc = sc.g, sc.st, sc.ec, sc.tc
    tables, refcnt, free, meta, _ = mem
    stat, rep, tlog, stk = wk.stats[v], wk.rep, wk.tlog, wk.stk
    ps = pr[P_PAGE_SHIFT]
    page = np.int64(1) << ps
    start = st[c, S_START]
    bs = st[c, S_SIZE]
    logging = vmt[v, V_LOGGING] != 0
    flags = F_HANDLE_FAULT | vmt[v, V_FLAGS] | (F_FORCE_PTE if logging else 0)
    if pr[P_CMO_AT_FAULT] != 0:
        flags |= F_SKIP_CMO  # the handler cleaned before the map (5.11)
    if vmt[v, V_SHARED_WALK] != 0:
        flags |= F_SHARED
    phys = pa_of(vmt, v, chunks, start, ps) & ~(page - 1)
    rep[:] = 0
    pgtable_walk(np.int64(OP_MAP), tables, refcnt, free, meta, vmt[v, V_TBASE], ps, vmt[v, V_ROOT],
                 vmt[v, V_START_LEVEL], vmt[v, V_IA_BITS], U(start), U(start + bs), U(phys),
                 U(_attr(c, v, start, pr, vmt, st)), I0, flags, vmt[v, V_RULE], stat, rep, tlog,
                 stk)
    ret = rep[R_RET]
    st[c, S_RET] = ret
    if ret == -P.ENOMEM:
        # the fault returns -ENOMEM to its caller, which tops up and re-enters the guest:
        # the access faults again; only a pool that stays empty stops the run
        ec[c, E_ENOMEM] += 1
        tc[c, E_ENOMEM] = 1
        st[c, S_ENOMEM] += 1
        if st[c, S_ENOMEM] > 8:
            g[G_ERR] = ERR_ENOMEM
            g[G_ERR_CTX] = c
            g[G_ERR_IPA] = st[c, S_IPA]
            return False
    else:
        st[c, S_ENOMEM] = 0
    if ret == -P.EAGAIN:
        # another walker got there first (or holds the entry locked): the replay may fault
        # again while it works, which is no sign of a stuck handler
        ec[c, E_SPURIOUS] += 1
        tc[c, E_SPURIOUS] = 1
        st[c, S_REPEATS] = 0
    st[c, S_OPC] += op_cycles(rep, pr, fp)
    apply_tlbis(rep, tlog, vmt[v, V_VMID], ps, g, tl)
    return account(rep, ec, tc, c, g)


@jit
def _step(kind, c, v, pr, vmt, st, tables, refcnt, free, meta, stat, rep, tlog, new, child,
          flags, ec, tc, g):
    """One single-entry step on the entry being rebuilt, accounted; False on WARN()s."""
    rep[:] = 0
    pgtable_entry_step(kind, tables, refcnt, free, meta, vmt[v, V_TBASE], pr[P_PAGE_SHIFT],
                       st[c, S_RB_ROW], st[c, S_RB_IDX], st[c, S_LEVEL], U(st[c, S_RB_START]),
                       U(new), child, flags, vmt[v, V_RULE], stat, rep, tlog)
    return account(rep, ec, tc, c, g)


@jit
def rebuild(c, v, now, md, sc, tl, mem, wk):
    """Run the rebuild program from S_RB_PC to its next WAIT (the context is scheduled after
    the time charged so far) or its END (the release is scheduled); False on an error."""
    pr, fp, vmt, prog = md.pr, md.fp, md.vmt, md.rbprog
    g, st, ec, tc, ht, hs, hc, win = sc.g, sc.st, sc.ec, sc.tc, sc.ht, sc.hs, sc.hc, sc.win
    tables, refcnt, free, meta, _ = mem
    stat, rep, tlog = wk.stats[v], wk.rep, wk.tlog
    ps = pr[P_PAGE_SHIFT]
    size = st[c, S_SIZE]
    lo = st[c, S_RB_START]
    vmid = vmt[v, V_VMID]
    flags = vmt[v, V_FLAGS]
    acc = st[c, S_RB_ACC]
    pc = st[c, S_RB_PC]
    while True:
        op = prog[pc]
        pc += 1
        if op == RB_BREAK or op == RB_BREAK_VMID:
            fl = flags & ~F_TLBIRANGE if op == RB_BREAK_VMID else flags
            if not _step(np.int64(STEP_BREAK), c, v, pr, vmt, st, tables, refcnt, free, meta,
                         stat, rep, tlog, I0, IM1, fl, ec, tc, g):
                return False
            apply_tlbis(rep, tlog, vmid, ps, g, tl)
            acc += op_cycles(rep, pr, fp)
        elif op == RB_WINDOW_OPEN:
            k = g[G_NWIN]
            win[k, 0] = v
            win[k, 1] = lo
            win[k, 2] = lo + size
            g[G_NWIN] = k + 1
            st[c, S_RB_T0] = now
        elif op == RB_WINDOW_CLOSE:
            for k in range(g[G_NWIN]):
                if win[k, 0] == v and win[k, 1] == lo:
                    g[G_NWIN] -= 1
                    for j in range(k, g[G_NWIN]):
                        win[j, 0] = win[j + 1, 0]
                        win[j, 1] = win[j + 1, 1]
                        win[j, 2] = win[j + 1, 2]
                    break
            ec[c, E_RB_WINDOW] += now - st[c, S_RB_T0]
            tc[c, E_RB_WINDOW] = 1
        elif op == RB_FREE:
            if not _step(np.int64(STEP_FREE), c, v, pr, vmt, st, tables, refcnt, free, meta,
                         stat, rep, tlog, I0, st[c, S_RB_CHILD], flags, ec, tc, g):
                return False
            acc += op_cycles(rep, pr, fp)
        elif op == RB_CMO:
            if pr[P_FWB] == 0:
                acc += np.int64(size / fp[FP_CMO])
                ec[c, E_CMO] += size
            tc[c, E_CMO] = 1
        elif op == RB_INSTALL or op == RB_REPLACE or op == RB_REPLACE_NT:
            new = st[c, S_RB_NEW] | (np.int64(D.NT) if op == RB_REPLACE_NT else 0)
            kind = STEP_INSTALL if op == RB_INSTALL else STEP_REPLACE
            if not _step(kind, c, v, pr, vmt, st, tables, refcnt, free, meta, stat, rep, tlog,
                         new, IM1, flags, ec, tc, g):
                return False
            acc += op_cycles(rep, pr, fp)
        elif op == RB_FLUSH:
            if not _step(np.int64(STEP_FLUSH_VMID), c, v, pr, vmt, st, tables, refcnt, free,
                         meta, stat, rep, tlog, I0, IM1, flags, ec, tc, g):
                return False
            acc += op_cycles(rep, pr, fp)
        elif op == RB_FLUSH_LANDS:
            # TLBI VMALLS12E1IS takes effect when it completes
            invalidate_all(vmid, I0, I0, ps, g, tl)
        elif op == RB_WAIT:
            st[c, S_RB_PC] = pc
            st[c, S_RB_ACC] = 0
            push(ht, hs, hc, g, now + acc, c)
            return True
        else:  # RB_END: the release follows the work under the lock
            st[c, S_STATE] = ST_RELEASE
            push(ht, hs, hc, g, now + pr[P_LOCK] + st[c, S_OPC] + acc, c)
            return True


@jit
def unmap_pages(ipas, v, pr, fp, vmt, g, tables, refcnt, free, meta, stat, rep, tlog, stk, tl,
                acc):
    """kvm_pgtable_stage2_unmap() of each page at ``ipas`` of stage-2 ``v`` in turn, its
    invalidations delivered to every CPU. Returns the cycles; ``acc`` (5 int64) gets the
    TLBI instructions, table pages allocated and freed, cache-maintenance bytes and WARN()s."""
    ps = pr[P_PAGE_SHIFT]
    page = np.int64(1) << ps
    total = 0
    for k in range(ipas.shape[0]):
        a = (ipas[k] >> ps) << ps
        rep[:] = 0
        pgtable_walk(np.int64(OP_UNMAP), tables, refcnt, free, meta, vmt[v, V_TBASE], ps,
                     vmt[v, V_ROOT],
                     vmt[v, V_START_LEVEL], vmt[v, V_IA_BITS], U(a), U(a + page), U(0), U(0), I0,
                     vmt[v, V_FLAGS], vmt[v, V_RULE], stat, rep, tlog, stk)
        total += op_cycles(rep, pr, fp)
        apply_tlbis(rep, tlog, vmt[v, V_VMID], ps, g, tl)
        acc[0] += rep[R_TLBI_IPA] + rep[R_TLBI_RANGE] + rep[R_TLBI_VMID]
        acc[1] += rep[R_TABLES_ALLOCATED]
        acc[2] += rep[R_TABLES_FREED]
        acc[3] += rep[R_CMO_BYTES]
        acc[4] += rep[R_WARN]
    return total


# ---- the guest's own stage-1 fault -------------------------------------------------------
@jit
def guest_fault(c, v, md, sc, wk):
    """A stage-1 fault: the guest kernel's handler (:func:`simulator.guest.stage1.s1_fault`;
    no exit, no KVM lock). Returns its cycles (the handler, its descriptor stores, the
    zeroing of its new table and data pages), or -1 with G_ERR set: a VA beyond TTBR0's
    range (the guest would kill the process), an access outside the pKVM host's linear map
    (built at boot, it takes no faults), no guest memory left. Needs four free table rows."""
    pr, fp, vmt, slots = md.pr, md.fp, md.vmt, md.slots
    g, st, ec, tc = sc.g, sc.st, sc.ec, sc.tc
    s1t, s1p, out = wk.s1t, wk.s1p, wk.s1out
    va = st[c, S_IPA]
    err = 0
    if (va >> s1p[S1_VA_BITS]) != 0 or vmt[v, V_KIND] == VM_HOST:
        err = ERR_VA_RANGE
    elif s1_fault(va, s1t, s1p, slots, vmt[v, V_SLOT_OFF], vmt[v, V_NSLOT], out) == S1F_OOM:
        err = ERR_GUEST_OOM
    if err != 0:
        g[G_ERR] = err
        g[G_ERR_CTX] = c
        g[G_ERR_IPA] = va
        return -1
    cyc = (pr[P_GUEST_FAULT] + out[1] * pr[P_C_STORE]
           + np.int64(((out[0] << s1p[S1_PS]) + out[2]) / fp[FP_ZERO]))
    ec[c, E_S1_FAULTS] += 1
    ec[c, E_S1_CYCLES] += cyc
    ec[c, E_S1_TABLES] += out[0]
    ec[c, E_S1_BYTES] += out[2]
    tc[c, E_S1_FAULTS] = 1
    tc[c, E_S1_CYCLES] = 1
    tc[c, E_S1_TABLES] = 1
    tc[c, E_S1_BYTES] = 1
    return cyc
