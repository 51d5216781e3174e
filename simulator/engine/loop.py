"""The compiled engine: every CPU context, its faults and the locks, in one numba kernel.

Each context (a guest vCPU, or in pkvm a host CPU) is a state machine whose states
(:mod:`simulator.engine.layout`, ``ST_*``) are the points where it waits: after a quantum of
accesses, after the fault entry, queued on a lock or for its CPU, under the lock, between the
steps of a rebuild. :func:`advance` pops the earliest event and runs that context until it
waits again, and so on, until the next event lies at or after ``horizon`` (the time of the
next SimPy event: agents run there), no context has an event, or Python must act:

* a call-out (``RET_CALL``): work Python owns, done at one instant while the context waits
  (its next chunk of accesses, growing page-table memory, the hyp pool's memcache, rmap_add(),
  pKVM's host abort and donation); Python serves it and resumes the context;
* signals (``RET_SIGNAL``): a lock granted to an agent, a context that has finished.

The fault handler is user_mem_abort() as a cost model: exception entry, the handler's work
outside the lock, the lock, the page-table operation (the kernel's walker, charged by what
it did), release, return. Permission faults relax the leaf; with dirty logging a write marks
the page dirty and maps a page (breaking a block into a table); a fault that finds a table
where its block goes runs the rebuild strategy's program (:mod:`simulator.hyp.rebuild`).
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.arch import descriptors as D
from simulator.arch.descriptors import is_table, make_leaf
from simulator.engine.layout import (
    CALL_DONATE,
    CALL_DONATE_ALLOC,
    CALL_GROW,
    CALL_HOST_ABORT,
    CALL_REFILL,
    CALL_RMAP_ADD,
    CALL_SETTLE,
    CALL_TOPUP,
    E_ALLOC,
    E_CMO,
    E_CONFLICT,
    E_DIRTY,
    E_ENOMEM,
    E_FAULT_CYCLES,
    E_FREED,
    E_IN_WINDOW,
    E_LOCK_WAIT,
    E_RB_BLOCKS,
    E_RB_WINDOW,
    E_SCHED_SLICES,
    E_SCHED_WAIT,
    E_SPURIOUS,
    E_TLBI_OPS,
    ERR_ENOMEM,
    ERR_OUTSIDE,
    ERR_STUCK,
    ERR_WARN,
    FP_CMO,
    FP_ICACHE,
    G_CALL,
    G_CALL_CTX,
    G_DONE_ACC,
    G_ERR,
    G_ERR_CTX,
    G_ERR_IPA,
    G_NWIN,
    G_PENDING,
    G_TLBI_ENTRIES,
    GROW_MARGIN,
    P_C_ALLOC,
    P_C_FREE,
    P_C_STORE,
    P_C_TLBI_IPA,
    P_C_TLBI_RANGE,
    P_C_TLBI_VMID,
    P_ATTR,
    P_ATTR_X,
    P_C_VISIT,
    P_CONFLICT,
    P_DIC,
    P_DIRTY_PAGE,
    P_EXIT,
    P_FWB,
    P_GROW,
    P_LOCK,
    P_MAX_CYCLES,
    P_OWNER_BASE,
    P_PAGE_SHIFT,
    P_PERM_HANDLER,
    P_QUANTUM,
    P_TIMESLICE,
    P_TLBI_IPA,
    RET_CALL,
    RET_ERROR,
    RET_HORIZON,
    RET_IDLE,
    RET_SIGNAL,
    S_BEFORE,
    S_CPU,
    S_DEBT,
    S_DONE_AT,
    S_ENOMEM,
    S_FSTATUS,
    S_HELD,
    S_IPA,
    S_KIND,
    S_LAST_IDX,
    S_LAST_IPA,
    S_LEN,
    S_LEVEL,
    S_LOCK,
    S_NEXT,
    S_OPC,
    S_POS,
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
    S_SINCE,
    S_SIZE,
    S_SKIP,
    S_SLOT,
    S_START,
    S_STATE,
    S_STATUS,
    S_STOP,
    S_T0,
    S_TACQ,
    S_VM,
    S_WRITE,
    ST_AFTER_RUN,
    ST_CPU_GRANTED,
    ST_CPU_WAIT,
    ST_DONATE,
    ST_DONATE_DONE,
    ST_DONATE_HCALLS,
    ST_DONATE_RELEASE,
    ST_DONE,
    ST_END,
    ST_ENTERED,
    ST_FAULT_END,
    ST_HANDLE,
    ST_HOST_ABORT,
    ST_LOCK,
    ST_LOCK_GRANTED,
    ST_LOCK_WAIT,
    ST_MAP,
    ST_MAPPED,
    ST_NEED_CHUNK,
    ST_REBUILD,
    ST_RELEASE,
    ST_RUN,
    ST_STREAM_END,
    ST_TOP,
    V_ALIAS_FRAMES,
    V_ALIAS_PAGES,
    V_ALIAS_START,
    V_CHUNK,
    V_CHUNK_OFF,
    V_DIRTY,
    V_ENTRY,
    V_FLAGS,
    V_HOST_LOCK,
    V_IA_BITS,
    V_KIND,
    V_LOCK,
    V_LOGGING,
    V_MEM,
    V_NSLOT,
    V_OWNER,
    V_PA_BASE,
    V_POOL,
    V_RMAP,
    V_ROOT,
    V_RULE,
    V_SHARED_FROM,
    V_SHARED_WALK,
    V_SLOT_OFF,
    V_START_LEVEL,
    V_TBASE,
    V_VMID,
    V_WANT,
    VM_HOST,
)
from simulator.engine.sched import (
    C_QN,
    C_SHARED,
    G_HEAPN,
    G_NOW,
    G_NSIG,
    SIG_DONE,
    cpu_release,
    cpu_try,
    lock_release,
    lock_try,
    pop,
    push,
    signal,
)
from simulator.hyp.rebuild import (
    RB_BREAK,
    RB_BREAK_VMID,
    RB_CMO,
    RB_END,
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
from simulator.hyp.host import STATE_SHARED_BORROWED
from simulator.mmu import pgtable as P
from simulator.mmu.batch import B_FAULT, F_IPA, F_KIND, F_STATUS, FETCH, WRITE, run_batch
from simulator.mmu.pgtable import (
    F_FORCE_PTE,
    F_HANDLE_FAULT,
    F_SHARED,
    F_TLBIRANGE,
    M_HWM,
    M_NFREE,
    OP_ATTR,
    OP_GET_LEAF,
    OP_MAP,
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
from simulator.mmu.tlb import tlb_invalidate
from simulator.mmu.walk import W_CONFLICT, W_PERMISSION, wc_invalidate

U = np.uint64


# ---- costs and accounting --------------------------------------------------------------------
@jit
def op_cycles(rep, pr, fp):
    """The cycles of a page-table operation's report: descriptors visited and stored, table
    pages allocated and freed, TLBIs, cache maintenance (none with FWB / DIC)."""
    c = (rep[P.R_VISITS] * pr[P_C_VISIT] + rep[P.R_STORES] * pr[P_C_STORE]
         + rep[R_TABLES_ALLOCATED] * pr[P_C_ALLOC] + rep[R_TABLES_FREED] * pr[P_C_FREE]
         + rep[R_TLBI_IPA] * pr[P_C_TLBI_IPA] + rep[R_TLBI_RANGE] * pr[P_C_TLBI_RANGE]
         + rep[R_TLBI_VMID] * pr[P_C_TLBI_VMID])
    if pr[P_FWB] == 0:
        c += np.int64(rep[R_CMO_BYTES] / fp[FP_CMO])
    if pr[P_DIC] == 0:
        c += np.int64(rep[P.R_ICACHE_BYTES] / fp[FP_ICACHE])
    return c


@jit
def _account(rep, ec, tc, c, g):
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


@jit
def invalidate_cpu(cpu, vmid, lo, hi, page_shift, key2, off, sets, ways, sizes, wc_tag3):
    """One CPU drops the VMID's walk-cache and TLB entries in [lo, hi) (0, 0: all of them);
    returns the TLB entries removed."""
    wc_invalidate(vmid, U(lo), U(hi), page_shift, wc_tag3[cpu])
    return tlb_invalidate(vmid, U(lo), U(hi), key2[cpu], off, sets, ways, sizes, page_shift)


@jit
def _invalidate_all(vmid, lo, hi, ps, g, key2, off, sets, ways, sizes, wc_tag3):
    """Every CPU drops the VMID's entries in [lo, hi) (0, 0: all), counted in tlbi.entries."""
    for cpu in range(key2.shape[0]):
        g[G_TLBI_ENTRIES] += invalidate_cpu(cpu, vmid, lo, hi, ps, key2, off, sets, ways,
                                            sizes, wc_tag3)


@jit
def _apply_tlbis(rep, tlog, vmid, ps, g, key2, off, sets, ways, sizes, wc_tag3):
    """An operation's logged invalidations, on every CPU."""
    for i in range(rep[R_TLBI_LOG_N]):
        if tlog[i, TLOG_KIND] == TLBI_VMID:
            _invalidate_all(vmid, 0, 0, ps, g, key2, off, sets, ways, sizes, wc_tag3)
        else:
            lo = tlog[i, TLOG_ADDR]
            _invalidate_all(vmid, lo, lo + tlog[i, TLOG_SIZE], ps, g, key2, off, sets, ways,
                            sizes, wc_tag3)


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


# ---- the main loop -------------------------------------------------------------------------
@jit
def advance(horizon, pr, fp, vmt, slots, chunks, block_levels, rbprog, g, st, ec, tc, ht, hs,
            hc, lk, lq, cs, cq, win, sig, addrs2, kinds2, mtables, mrefcnt, mfree, mmeta, stats,
            rep, tlog, stk, dirty, key2, stamp2, tpa2, tperm2, off, sets, ways, lat, sizes,
            serves, lay, wc_tag3, wc_row3, wc_stamp3, clock2, costs, ctr2, fault2, owner):
    """Run the contexts' events in order until one of the RET_* conditions.

    pr/fp: machine parameters; vmt: the stage-2s; slots (base, size) and chunks (donated
    host addresses, -1: none) per stage-2; block_levels: the levels that hold blocks;
    rbprog: the rebuild strategy's program; g, st, ec, tc: globals, contexts, their engine
    counters; ht/hs/hc: the event heap; lk/lq: locks; cs/cq: shared CPUs; win: invalid
    windows (stage-2, lo, hi); sig: signals; addrs2/kinds2: each context's current chunk;
    mtables/mrefcnt/mfree/mmeta: the table memories (tuples); stats: per stage-2 leaf counts;
    rep/tlog/stk: walker scratch; dirty: the logging guest's dirty bitmap; key2 .. lay: the
    CPUs' TLBs (per CPU rows, shared geometry); wc_*3: walk caches; clock2: LRU clocks;
    costs: run_batch's cost slots; ctr2/fault2: each context's MMU counters and fault
    record; owner: the ownership record (pkvm; empty in kvm)."""
    ps = pr[P_PAGE_SHIFT]
    loc = np.zeros(3, np.int64)
    while True:
        if pr[P_GROW] != 0:
            meta0 = mmeta[0]
            if meta0[M_NFREE] + mtables[0].shape[0] - meta0[M_HWM] < GROW_MARGIN:
                g[G_CALL] = CALL_GROW
                return RET_CALL
        if g[G_PENDING] >= 0:
            c = g[G_PENDING]
            g[G_PENDING] = -1
        else:
            if g[G_NSIG] > 0:  # signals not yet handed over
                return RET_SIGNAL
            if g[G_HEAPN] == 0:
                return RET_IDLE
            if ht[0] >= horizon:
                return RET_HORIZON
            g[G_NOW] = ht[0]
            c = pop(ht, hs, hc, g)
        now = g[G_NOW]
        v = st[c, S_VM]
        cpu = st[c, S_CPU]
        # the context's stage-2 lives in table memory 0 or 1 (constant indices: cheap)
        if vmt[v, V_MEM] == 0:
            tables, refcnt, free, meta = mtables[0], mrefcnt[0], mfree[0], mmeta[0]
        else:
            tables, refcnt, free, meta = mtables[1], mrefcnt[1], mfree[1], mmeta[1]
        stat = stats[v]
        # run context c from its state until it waits (an event, a queue) or Python must act
        while True:
            s = st[c, S_STATE]
            if s == ST_TOP:
                if st[c, S_POS] >= st[c, S_LEN]:
                    st[c, S_STATE] = ST_NEED_CHUNK
                    g[G_CALL] = CALL_REFILL
                    g[G_CALL_CTX] = c
                    return RET_CALL
                if st[c, S_STOP] != 0 or (pr[P_MAX_CYCLES] >= 0 and now >= pr[P_MAX_CYCLES]):
                    _finish(c, now, st, cs, cq, ht, hs, hc, g, sig)
                    break
                if cs[cpu, C_SHARED] != 0 and st[c, S_HELD] == 0:
                    if cpu_try(cs, cq, cpu, c):
                        st[c, S_TACQ] = now
                        st[c, S_STATE] = ST_CPU_GRANTED
                        continue
                    st[c, S_TACQ] = now
                    st[c, S_STATE] = ST_CPU_WAIT
                    break
                st[c, S_STATE] = ST_RUN
                continue
            if s == ST_CPU_GRANTED:
                ec[c, E_SCHED_WAIT] += now - st[c, S_TACQ]
                ec[c, E_SCHED_SLICES] += 1
                tc[c, E_SCHED_WAIT] = 1
                tc[c, E_SCHED_SLICES] = 1
                st[c, S_HELD] = 1
                st[c, S_SINCE] = now
                st[c, S_STATE] = ST_RUN
                continue
            if s == ST_RUN:
                before = st[c, S_POS]
                i, used, status = run_batch(
                    addrs2[c], kinds2[c], before, st[c, S_LEN], pr[P_QUANTUM], vmt[v, V_VMID],
                    tables, vmt[v, V_TBASE], ps, vmt[v, V_ROOT], vmt[v, V_START_LEVEL],
                    vmt[v, V_IA_BITS], key2[cpu], stamp2[cpu], tpa2[cpu], tperm2[cpu], off, sets,
                    ways, lat, sizes, serves, lay, wc_tag3[cpu], wc_row3[cpu], wc_stamp3[cpu],
                    clock2[cpu], costs, ctr2[c], fault2[c], owner, pr[P_OWNER_BASE],
                    vmt[v, V_OWNER])
                st[c, S_POS] = i
                st[c, S_BEFORE] = before
                st[c, S_STATUS] = status
                g[G_DONE_ACC] += i - before
                used += st[c, S_DEBT]
                st[c, S_DEBT] = 0
                st[c, S_STATE] = ST_AFTER_RUN
                if used:
                    push(ht, hs, hc, g, now + used, c)
                    break
                continue
            if s == ST_AFTER_RUN:
                st[c, S_STATE] = ST_TOP
                if st[c, S_STATUS] != B_FAULT:
                    if st[c, S_HELD] != 0:
                        _yield_cpu(c, now, pr, st, cs, cq, ht, hs, hc, g)
                    continue
                f = fault2[c]
                ipa = f[F_IPA]
                # a fault the handler cannot resolve would replay forever
                i = st[c, S_POS]
                if i == st[c, S_LAST_IDX] and ipa == st[c, S_LAST_IPA] and i == st[c, S_BEFORE]:
                    st[c, S_REPEATS] += 1
                    if st[c, S_REPEATS] >= 16:
                        g[G_ERR] = ERR_STUCK
                        g[G_ERR_CTX] = c
                        g[G_ERR_IPA] = ipa
                        return RET_ERROR
                else:
                    st[c, S_LAST_IDX] = i
                    st[c, S_LAST_IPA] = ipa
                    st[c, S_REPEATS] = 0
                st[c, S_IPA] = ipa
                st[c, S_KIND] = f[F_KIND]
                st[c, S_FSTATUS] = f[F_STATUS]
                st[c, S_T0] = now
                if vmt[v, V_KIND] == VM_HOST:
                    # handle_host_mem_abort(): entry, then the host lock
                    st[c, S_LOCK] = vmt[v, V_LOCK]
                    st[c, S_WRITE] = 0
                    st[c, S_NEXT] = ST_HOST_ABORT
                    st[c, S_STATE] = ST_LOCK
                    push(ht, hs, hc, g, now + vmt[v, V_ENTRY], c)
                    break
                slot = -1
                for k in range(vmt[v, V_SLOT_OFF], vmt[v, V_SLOT_OFF] + vmt[v, V_NSLOT]):
                    if slots[k, 0] <= ipa < slots[k, 0] + slots[k, 1]:
                        slot = k
                if slot < 0:
                    g[G_ERR] = ERR_OUTSIDE
                    g[G_ERR_CTX] = c
                    g[G_ERR_IPA] = ipa
                    return RET_ERROR
                if f[F_STATUS] == W_CONFLICT:
                    # a TLB conflict abort: this CPU's TLB is flushed for the VMID; the access
                    # is replayed (no lock, no page-table work)
                    ec[c, E_CONFLICT] += 1
                    tc[c, E_CONFLICT] = 1
                    invalidate_cpu(cpu, vmt[v, V_VMID], 0, 0, ps, key2, off, sets, ways, sizes,
                                   wc_tag3)
                    st[c, S_DEBT] += pr[P_CONFLICT]
                    if st[c, S_HELD] != 0:
                        _yield_cpu(c, now, pr, st, cs, cq, ht, hs, hc, g)
                    continue
                for k in range(g[G_NWIN]):
                    if win[k, 0] == v and win[k, 1] <= ipa < win[k, 2]:
                        ec[c, E_IN_WINDOW] += 1
                        tc[c, E_IN_WINDOW] = 1
                        break
                st[c, S_SLOT] = slot
                st[c, S_STATE] = ST_ENTERED
                push(ht, hs, hc, g, now + vmt[v, V_ENTRY], c)
                break
            if s == ST_ENTERED:
                ch = vmt[v, V_CHUNK]
                if ch > 0 and chunks[vmt[v, V_CHUNK_OFF] + st[c, S_IPA] // ch] < 0:
                    # a ballooned chunk touched again: the host donates a new one
                    st[c, S_STATE] = ST_DONATE_HCALLS
                    g[G_CALL] = CALL_DONATE_ALLOC
                    g[G_CALL_CTX] = c
                    return RET_CALL
                st[c, S_LOCK] = vmt[v, V_LOCK]
                st[c, S_WRITE] = 0
                st[c, S_NEXT] = ST_HANDLE
                st[c, S_STATE] = ST_LOCK
                continue
            if s == ST_DONATE_HCALLS:
                st[c, S_LOCK] = vmt[v, V_HOST_LOCK]
                st[c, S_WRITE] = 0
                st[c, S_NEXT] = ST_DONATE
                st[c, S_STATE] = ST_LOCK
                push(ht, hs, hc, g, now + st[c, S_OPC], c)  # one hypercall per page
                break
            if s == ST_DONATE:
                st[c, S_STATE] = ST_DONATE_DONE
                g[G_CALL] = CALL_DONATE
                g[G_CALL_CTX] = c
                return RET_CALL
            if s == ST_DONATE_DONE:
                st[c, S_STATE] = ST_DONATE_RELEASE
                push(ht, hs, hc, g, now + st[c, S_OPC], c)
                break
            if s == ST_DONATE_RELEASE:
                lock_release(lk, lq, vmt[v, V_HOST_LOCK], 0, now, ht, hs, hc, g, sig, st,
                             S_STATE, ST_LOCK_GRANTED)
                st[c, S_LOCK] = vmt[v, V_LOCK]
                st[c, S_WRITE] = 0
                st[c, S_NEXT] = ST_HANDLE
                st[c, S_STATE] = ST_LOCK
                continue
            if s == ST_LOCK:
                if lock_try(lk, lq, st[c, S_LOCK], c, st[c, S_WRITE]):
                    st[c, S_STATE] = st[c, S_NEXT]
                    continue
                st[c, S_TACQ] = now
                st[c, S_STATE] = ST_LOCK_WAIT
                break
            if s == ST_LOCK_GRANTED:
                ec[c, E_LOCK_WAIT] += now - st[c, S_TACQ]
                tc[c, E_LOCK_WAIT] = 1
                st[c, S_STATE] = st[c, S_NEXT]
                continue
            if s == ST_HOST_ABORT:
                st[c, S_STATE] = ST_FAULT_END
                g[G_CALL] = CALL_HOST_ABORT
                g[G_CALL_CTX] = c
                return RET_CALL
            if s == ST_HANDLE:
                r = _handle(c, v, cpu, now, pr, fp, vmt, slots, block_levels, g, st, ec, tc,
                            tables, refcnt, free, meta, stat, rep, tlog, stk, dirty, key2, off,
                            sets, ways, sizes, chunks, loc)
                if r == 1:  # a map: top the memcache up first when the tables are pooled
                    st[c, S_STATE] = ST_MAP
                    if vmt[v, V_POOL] != 0:
                        g[G_CALL] = CALL_TOPUP
                        g[G_CALL_CTX] = c
                        return RET_CALL
                elif r == 2:  # a rebuild
                    st[c, S_STATE] = ST_REBUILD
                else:
                    st[c, S_STATE] = ST_FAULT_END
                continue
            if s == ST_MAP:
                if not _map(c, v, pr, fp, vmt, g, st, ec, tc, tables, refcnt, free, meta, stat,
                            rep, tlog, stk, key2, off, sets,
                            ways, sizes, wc_tag3, chunks):
                    return RET_ERROR
                st[c, S_STATE] = ST_MAPPED
                if vmt[v, V_POOL] != 0 and meta[M_NFREE] > 0:
                    g[G_CALL] = CALL_SETTLE
                    g[G_CALL_CTX] = c
                    return RET_CALL
                continue
            if s == ST_MAPPED:
                st[c, S_STATE] = ST_FAULT_END
                if vmt[v, V_RMAP] != 0 and st[c, S_RET] == 0:
                    g[G_CALL] = CALL_RMAP_ADD
                    g[G_CALL_CTX] = c
                    return RET_CALL
                continue
            if s == ST_FAULT_END:
                st[c, S_STATE] = ST_RELEASE
                push(ht, hs, hc, g, now + pr[P_LOCK] + st[c, S_OPC], c)
                break
            if s == ST_REBUILD:
                if not _rebuild(c, v, now, pr, fp, vmt, rbprog, g, st, ec, tc, ht, hs, hc, win,
                                tables, refcnt, free, meta, stat, rep,
                                tlog, key2, off, sets, ways, sizes, wc_tag3):
                    return RET_ERROR
                break
            if s == ST_RELEASE:
                # the end of a fault: release, return to the guest (the exit is charged with
                # the next quantum: the context does nothing observable meanwhile)
                lock_release(lk, lq, vmt[v, V_LOCK], 0, now, ht, hs, hc, g, sig, st, S_STATE,
                             ST_LOCK_GRANTED)
                st[c, S_DEBT] += pr[P_EXIT]
                ec[c, E_FAULT_CYCLES] += now - st[c, S_T0] + pr[P_EXIT]
                tc[c, E_FAULT_CYCLES] = 1
                if st[c, S_SKIP] != 0:  # the access never completes: drop it
                    st[c, S_SKIP] = 0
                    st[c, S_POS] += 1
                st[c, S_STATE] = ST_TOP
                if st[c, S_HELD] != 0:
                    _yield_cpu(c, now, pr, st, cs, cq, ht, hs, hc, g)
                continue
            if s == ST_STREAM_END:
                if st[c, S_DEBT]:
                    push(ht, hs, hc, g, now + st[c, S_DEBT], c)
                    st[c, S_DEBT] = 0
                    st[c, S_STATE] = ST_END
                    break
                _finish(c, now, st, cs, cq, ht, hs, hc, g, sig)
                break
            if s == ST_END:
                _finish(c, now, st, cs, cq, ht, hs, hc, g, sig)
                break
            break  # ST_DONE, ST_CPU_WAIT, ST_LOCK_WAIT, ST_NEED_CHUNK: nothing to run
        if g[G_NSIG] > 0:
            return RET_SIGNAL


@jit
def _yield_cpu(c, now, pr, st, cs, cq, ht, hs, hc, g):
    """On a shared CPU, after a quantum or a fault: give the CPU up when others wait and the
    time slice is used."""
    cpu = st[c, S_CPU]
    if st[c, S_HELD] != 0 and cs[cpu, C_QN] > 0 and now - st[c, S_SINCE] >= pr[P_TIMESLICE]:
        st[c, S_HELD] = 0
        cpu_release(cs, cq, cpu, now, ht, hs, hc, g, st, S_STATE, ST_CPU_GRANTED)


@jit
def _finish(c, now, st, cs, cq, ht, hs, hc, g, sig):
    """The context is done: its CPU is free, Python hears of it."""
    st[c, S_DONE_AT] = now
    st[c, S_STATE] = ST_DONE
    if st[c, S_HELD] != 0:
        st[c, S_HELD] = 0
        cpu_release(cs, cq, st[c, S_CPU], now, ht, hs, hc, g, st, S_STATE, ST_CPU_GRANTED)
    signal(sig, g, SIG_DONE, c)


@jit
def _handle(c, v, cpu, now, pr, fp, vmt, slots, block_levels, g, st, ec, tc, tables, refcnt,
            free, meta, stat, rep, tlog, stk, dirty, key2, off, sets, ways, sizes, chunks, loc):
    """user_mem_abort() under the MMU lock, up to its page-table operation. Returns 0 when
    the work is done (S_OPC holds its cycles), 1 when a map of (S_START, S_SIZE) follows, 2
    when a rebuild follows."""
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
        pgtable_walk(OP_GET_LEAF, tables, refcnt, free, meta, tb, ps, vmt[v, V_ROOT],
                     vmt[v, V_START_LEVEL], vmt[v, V_IA_BITS], U(lo), U(lo + page), U(0), U(0),
                     0, vmt[v, V_FLAGS], vmt[v, V_RULE], stat, rep, tlog, stk)
        leaf_level = rep[R_LEAF_LEVEL]
    if fstatus == W_PERMISSION and not (logging and leaf_level < 3):
        # kvm_pgtable_stage2_relax_perms(), then a local TLBI of that IPA
        clear_bits = D.XN if kind == FETCH else U(0)
        set_bits = D.S2AP_W if kind == WRITE else D.S2AP_R
        rep[:] = 0
        pgtable_walk(OP_ATTR, tables, refcnt, free, meta, tb, ps, vmt[v, V_ROOT],
                     vmt[v, V_START_LEVEL], vmt[v, V_IA_BITS], U(lo), U(lo + page), clear_bits,
                     set_bits, 0, F_HANDLE_FAULT | vmt[v, V_FLAGS], vmt[v, V_RULE], stat, rep,
                     tlog, stk)
        tlb_invalidate(vmt[v, V_VMID], U(lo), U(lo + page), key2[cpu], off, sets, ways, sizes, ps)
        opc += op_cycles(rep, pr, fp) + pr[P_PERM_HANDLER] + pr[P_TLBI_IPA]
        ec[c, E_TLBI_OPS] += 1
        tc[c, E_TLBI_OPS] = 1
        st[c, S_OPC] = opc
        if not _account(rep, ec, tc, c, g):
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
    if level < 3 and _locate(tables, vmt, v, ps, start, level, loc) and is_table(U(loc[2]), level):
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
    always with DIC), and pKVM's SHARED_BORROWED state for memory the host shares."""
    attr = pr[P_ATTR_X] if (st[c, S_KIND] == FETCH or pr[P_DIC] != 0) else pr[P_ATTR]
    sf = vmt[v, V_SHARED_FROM]
    if sf >= 0 and start >= sf:
        attr |= np.int64(STATE_SHARED_BORROWED) << D.SW_SHIFT
    return attr


@jit
def _map(c, v, pr, fp, vmt, g, st, ec, tc, tables, refcnt, free, meta, stat, rep, tlog, stk,
         key2, off, sets, ways, sizes, wc_tag3, chunks):
    """kvm_pgtable_stage2_map() of (S_START, S_SIZE) for a fault; False on an error."""
    ps = pr[P_PAGE_SHIFT]
    page = np.int64(1) << ps
    start = st[c, S_START]
    bs = st[c, S_SIZE]
    logging = vmt[v, V_LOGGING] != 0
    flags = F_HANDLE_FAULT | vmt[v, V_FLAGS] | (F_FORCE_PTE if logging else 0)
    if vmt[v, V_SHARED_WALK] != 0:
        flags |= F_SHARED
    phys = pa_of(vmt, v, chunks, start, ps) & ~(page - 1)
    rep[:] = 0
    pgtable_walk(OP_MAP, tables, refcnt, free, meta, vmt[v, V_TBASE], ps, vmt[v, V_ROOT],
                 vmt[v, V_START_LEVEL], vmt[v, V_IA_BITS], U(start), U(start + bs), U(phys),
                 U(_attr(c, v, start, pr, vmt, st)), 0, flags, vmt[v, V_RULE], stat, rep, tlog,
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
    _apply_tlbis(rep, tlog, vmt[v, V_VMID], ps, g, key2, off, sets, ways, sizes, wc_tag3)
    return _account(rep, ec, tc, c, g)


@jit
def _step(kind, c, v, pr, vmt, st, tables, refcnt, free, meta, stat, rep, tlog, new, child,
          flags, ec, tc, g):
    """One single-entry step on the entry being rebuilt, accounted; False on WARN()s."""
    rep[:] = 0
    pgtable_entry_step(kind, tables, refcnt, free, meta, vmt[v, V_TBASE], pr[P_PAGE_SHIFT],
                       st[c, S_RB_ROW], st[c, S_RB_IDX], st[c, S_LEVEL], U(st[c, S_RB_START]),
                       U(new), child, flags, vmt[v, V_RULE], stat, rep, tlog)
    return _account(rep, ec, tc, c, g)


@jit
def _rebuild(c, v, now, pr, fp, vmt, prog, g, st, ec, tc, ht, hs, hc, win, tables, refcnt, free,
             meta, stat, rep, tlog, key2, off, sets, ways, sizes, wc_tag3):
    """Run the rebuild program from S_RB_PC to its next WAIT (the context is scheduled after
    the time charged so far) or its END (the release is scheduled); False on an error."""
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
            if not _step(STEP_BREAK, c, v, pr, vmt, st, tables, refcnt, free, meta, stat, rep,
                         tlog, 0, -1, fl, ec, tc, g):
                return False
            _apply_tlbis(rep, tlog, vmid, ps, g, key2, off, sets, ways, sizes, wc_tag3)
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
            if not _step(STEP_FREE, c, v, pr, vmt, st, tables, refcnt, free, meta, stat, rep,
                         tlog, 0, st[c, S_RB_CHILD], flags, ec, tc, g):
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
                         new, -1, flags, ec, tc, g):
                return False
            acc += op_cycles(rep, pr, fp)
        elif op == RB_FLUSH:
            if not _step(STEP_FLUSH_VMID, c, v, pr, vmt, st, tables, refcnt, free, meta, stat,
                         rep, tlog, 0, -1, flags, ec, tc, g):
                return False
            acc += op_cycles(rep, pr, fp)
        elif op == RB_FLUSH_LANDS:
            # TLBI VMALLS12E1IS takes effect when it completes
            _invalidate_all(vmid, 0, 0, ps, g, key2, off, sets, ways, sizes, wc_tag3)
        elif op == RB_WAIT:
            st[c, S_RB_PC] = pc
            st[c, S_RB_ACC] = 0
            push(ht, hs, hc, g, now + acc, c)
            return True
        else:  # RB_END: the release follows the work under the lock
            st[c, S_STATE] = ST_RELEASE
            push(ht, hs, hc, g, now + pr[P_LOCK] + st[c, S_OPC] + acc, c)
            return True
