"""The jitted vCPU loop: kvm-mode vCPUs, their faults and the MMU lock in one numba kernel.

The SimPy engine (:meth:`simulator.engine.Machine.context_process`) runs each vCPU as a
SimPy process and each stage-2 fault as a handful of SimPy events and Python calls: about
25 µs of host time per fault. That is fine until vCPUs convoy: in kvm_page_table_test's
UPDATE stage every vCPU faults on every page (the first maps it, the others queue on the
lock behind it and find it mapped), 157 million faults for 60 vCPUs over 20 GiB.

This module runs the same model, event for event, inside one jitted kernel: the vCPU
processes become a state machine per vCPU, SimPy's event queue becomes a binary heap
ordered as SimPy orders events (time, then scheduling order), the MMU lock is the same FIFO
reader/writer lock, and the fault handler is GuestVM.handle_fault() and rebuild_block()
step by step (translation faults, permission faults, dirty logging's forced page mappings,
table-to-block rebuilds with their invalid windows, TLB conflict aborts). The kernel hands
control back to Python only to refill a vCPU's access chunk, to grow page-table memory,
at the next SimPy event (the horizon), or on an error. Same inputs, same counters: the
test suite runs experiments through both and compares every counter.

It serves kvm-mode runs whose only actors are the guest's vCPUs (no reverse map, no timed
dirty-logging agent); ``ExperimentConfig.jit_unsupported`` says which. Everything
else runs on SimPy.
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.arch import descriptors as D
from simulator.arch.descriptors import is_table, make_leaf
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

# ---- parameters (int64 array) ------------------------------------------------------------
(P_PAGE_SHIFT, P_START_LEVEL, P_IA_BITS, P_ROOT, P_TBASE, P_VMID, P_QUANTUM, P_MAX_CYCLES,
 P_ENTRY, P_EXIT, P_LOCK, P_DIRTY_PAGE, P_PERM_HANDLER, P_TLBI_IPA, P_CONFLICT, P_FLAGS,
 P_RULE, P_WANT, P_PA_BASE, P_ATTR, P_ATTR_X, P_STRATEGY, P_BBM_LEVEL, P_FWB, P_DIC,
 P_C_VISIT, P_C_STORE, P_C_ALLOC, P_C_FREE, P_C_TLBI_IPA, P_C_TLBI_RANGE, P_C_TLBI_VMID,
 P_EXCLUSIVE, P_LOGGING) = range(34)
N_PARAMS = 34
FP_CMO, FP_ICACHE = 0, 1  # bytes per cycle (float64 array)

STRATEGY_BBM, STRATEGY_INSTALL_FIRST, STRATEGY_TTREM = 0, 1, 2

# ---- per-vCPU state (int64 [n, N_STATE]) ---------------------------------------------------
(S_STATE, S_POS, S_LEN, S_DEBT, S_STATUS, S_T0, S_TACQ, S_OPC, S_LAST_IDX, S_LAST_IPA,
 S_REPEATS, S_DONE_AT, S_IPA, S_KIND, S_FSTATUS, S_BEFORE, S_RB_ROW, S_RB_IDX, S_RB_LEVEL,
 S_RB_START, S_RB_NEW, S_RB_CHILD, S_RB_T0, S_SLOT) = range(24)
N_STATE = 24

# states: where a vCPU resumes (the code after a yield of the SimPy process it mirrors)
ST_TOP = 0  # the top of the access loop
ST_AFTER_RUN = 1  # after the timeout of a quantum's cycles
ST_LOCK = 2  # after the fault entry: take the MMU lock
ST_WAIT = 3  # queued on the lock (not in the heap)
ST_GRANTED = 4  # granted after a wait
ST_RELEASE = 5  # after the time under the lock: release, return to the guest
ST_RB_BBM_INSTALL = 6  # rebuild, bbm: after break + free + CMO, install the block
ST_RB_INSTALL_FREE = 7  # rebuild, install_first / ttrem 0: after the break, install, free
ST_RB_FLUSH = 8  # rebuild, ttrem 1/2: after the replace, flush the VMID
ST_RB_AFTER_FLUSH = 9  # rebuild, ttrem 1/2: after the flush
ST_NEED_CHUNK = 10  # waiting for Python to hand over the next chunk
ST_STREAM_END = 11  # the stream is exhausted (set by Python)
ST_END = 12  # after the final debt timeout
ST_DONE = 13

# ---- extra counters (int64 [n, N_EXTRA]); names as the SimPy engine's ctx.ctr ---------------
EXTRA_NAMES = ("tlb_conflict_aborts", "faults.in_window", "lock_wait_cycles", "dirty.pages",
               "tlbi.ops", "faults.spurious", "fault_cycles", "pgtable.pages_allocated",
               "pgtable.pages_freed", "cmo.bytes", "rebuild.blocks", "rebuild.window_cycles")
(E_CONFLICT, E_IN_WINDOW, E_LOCK_WAIT, E_DIRTY, E_TLBI_OPS, E_SPURIOUS, E_FAULT_CYCLES,
 E_ALLOC, E_FREED, E_CMO, E_RB_BLOCKS, E_RB_WINDOW) = range(12)
N_EXTRA = 12

# ---- globals (int64 array) -----------------------------------------------------------------
(G_HEAPN, G_SEQ, G_NOW, G_WRITER, G_READERS, G_QHEAD, G_QN, G_ACQ, G_CONT, G_NWIN,
 G_TLBI_ENTRIES, G_DONE_ACC, G_PENDING, G_ERR, G_ERR_CTX, G_ERR_IPA) = range(16)
N_GLOBALS = 16

# return codes
RET_IDLE = 0  # every vCPU is done
RET_HORIZON = 1  # the next event is at or after the horizon
RET_REFILL = 2  # vCPU G_PENDING needs its next chunk
RET_GROW = 3  # page-table memory needs room before the next step
RET_ERROR = 4  # G_ERR says which

ERR_OUTSIDE = 1  # an access outside guest memory
ERR_STUCK = 2  # the same access keeps faulting
ERR_WARN = 3  # page-table refcount inconsistency
ERR_ENOMEM = 4  # no page-table memory

GROW_MARGIN = 64  # free table pages guaranteed before every step (a fault needs at most 4)


@jit
def _push(ht, hs, hc, g, t, c):
    """Schedule vCPU ``c`` at time ``t`` (after everything already scheduled at ``t``)."""
    i = g[G_HEAPN]
    g[G_HEAPN] = i + 1
    seq = g[G_SEQ]
    g[G_SEQ] = seq + 1
    while i > 0:
        p = (i - 1) >> 1
        if ht[p] < t or (ht[p] == t and hs[p] < seq):
            break
        ht[i] = ht[p]
        hs[i] = hs[p]
        hc[i] = hc[p]
        i = p
    ht[i] = t
    hs[i] = seq
    hc[i] = c


@jit
def _pop(ht, hs, hc, g):
    """Remove the earliest event; returns its vCPU."""
    c = hc[0]
    n = g[G_HEAPN] - 1
    g[G_HEAPN] = n
    t = ht[n]
    s = hs[n]
    x = hc[n]
    i = 0
    while True:
        k = 2 * i + 1
        if k >= n:
            break
        if k + 1 < n and (ht[k + 1] < ht[k] or (ht[k + 1] == ht[k] and hs[k + 1] < hs[k])):
            k += 1
        if t < ht[k] or (t == ht[k] and s < hs[k]):
            break
        ht[i] = ht[k]
        hs[i] = hs[k]
        hc[i] = hc[k]
        i = k
    ht[i] = t
    hs[i] = s
    hc[i] = x
    return c


@jit
def _op_cycles(rep, pr, fp):
    """OpCosts.cycles()."""
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
    """Machine.account_op(); False on kernel WARN()s."""
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
def _invalidate_cpu(cpu, vmid, lo, hi, page_shift, key2, off, sets, ways, sizes, wc_tag3):
    """Cpu.invalidate(): walk cache, then TLB; returns the TLB entries removed."""
    wc_invalidate(vmid, U(lo), U(hi), page_shift, wc_tag3[cpu])
    return tlb_invalidate(vmid, U(lo), U(hi), key2[cpu], off, sets, ways, sizes, page_shift)


@jit
def _invalidate_all(lo, hi, pr, g, key2, off, sets, ways, sizes, wc_tag3):
    """Every CPU drops the VMID's entries in [lo, hi) (0, 0: all), counted in tlbi.entries."""
    for cpu in range(key2.shape[0]):
        g[G_TLBI_ENTRIES] += _invalidate_cpu(cpu, pr[P_VMID], lo, hi, pr[P_PAGE_SHIFT], key2,
                                             off, sets, ways, sizes, wc_tag3)


@jit
def _apply_tlbis(rep, tlog, pr, g, key2, off, sets, ways, sizes, wc_tag3):
    """Machine.apply_tlbis(): the operation's invalidations on every CPU."""
    for i in range(rep[R_TLBI_LOG_N]):
        if tlog[i, TLOG_KIND] == TLBI_VMID:
            _invalidate_all(0, 0, pr, g, key2, off, sets, ways, sizes, wc_tag3)
        else:
            lo = tlog[i, TLOG_ADDR]
            _invalidate_all(lo, lo + tlog[i, TLOG_SIZE], pr, g, key2, off, sets, ways, sizes,
                            wc_tag3)


@jit
def _grant_waiters(q, qw, g, ht, hs, hc, st, now):
    """Lock.release()'s hand-over: grant the queue's head while it can be granted."""
    n = q.shape[0]
    while g[G_QN] > 0:
        c = q[g[G_QHEAD]]
        w = qw[g[G_QHEAD]]
        if g[G_WRITER] != 0 or (w != 0 and g[G_READERS] != 0):
            break
        g[G_QHEAD] = (g[G_QHEAD] + 1) % n
        g[G_QN] -= 1
        if w != 0:
            g[G_WRITER] = 1
        else:
            g[G_READERS] += 1
        st[c, S_STATE] = ST_GRANTED
        _push(ht, hs, hc, g, now, c)


@jit
def _block_level(ipa, slot_base, slot_size, pr, block_levels):
    """GuestVM.block_for() (kvm: no donated chunks), as the level of the mapping."""
    ps = pr[P_PAGE_SHIFT]
    for j in range(block_levels.shape[0]):
        lvl = block_levels[j]
        bs = np.int64(1) << ((ps - 3) * (4 - lvl) + 3)
        if bs > pr[P_WANT]:
            continue
        start = ipa & ~(bs - 1)
        if start >= slot_base and start + bs <= slot_base + slot_size:
            return lvl
    return 3


@jit
def _locate(tables, pr, ipa, level, out):
    """Stage2.locate(): out = (row, idx, pte) of the entry at ``level`` on the walk to
    ``ipa``; False when a non-table entry ends the walk above it."""
    ps = pr[P_PAGE_SHIFT]
    entries = np.int64(1) << (ps - 3)
    sl = pr[P_START_LEVEL]
    pgd_shift = (ps - 3) * (4 - (sl - 1)) + 3
    row = pr[P_ROOT] + ((ipa & ((np.int64(1) << pr[P_IA_BITS]) - 1)) >> pgd_shift)
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
        row = _row_of(pte, pr[P_TBASE], ps)
        lvl += 1


@jit
def advance(horizon, pr, fp, block_levels, slots, g, st, ec, tc, ht, hs, hc, q, qw, win,
            addrs2, kinds2, tables, refcnt, free, meta, stat, rep, tlog, stk, dirty,
            key2, stamp2, tpa2, tperm2, off, sets, ways, lat, sizes, serves, lay,
            wc_tag3, wc_row3, wc_stamp3, clock2, costs, ctr2, fault2, owner):
    """Run the vCPUs' events in SimPy's order until one of the RET_* conditions."""
    ps = pr[P_PAGE_SHIFT]
    page = np.int64(1) << ps
    vmid = pr[P_VMID]
    loc = np.zeros(3, np.int64)
    while True:
        # room for the next step's allocations (Python grows the arrays)
        if meta[M_NFREE] + tables.shape[0] - meta[M_HWM] < GROW_MARGIN:
            return RET_GROW
        if g[G_PENDING] >= 0:
            c = g[G_PENDING]
            g[G_PENDING] = -1
        else:
            if g[G_HEAPN] == 0:
                return RET_IDLE
            if ht[0] >= horizon:
                return RET_HORIZON
            g[G_NOW] = ht[0]
            c = _pop(ht, hs, hc, g)
        now = g[G_NOW]
        # run vCPU c from its state until it waits (a scheduled event, the lock queue)
        while True:
            s = st[c, S_STATE]
            if s == ST_TOP:
                if st[c, S_POS] >= st[c, S_LEN]:
                    st[c, S_STATE] = ST_NEED_CHUNK
                    g[G_PENDING] = c
                    return RET_REFILL
                if pr[P_MAX_CYCLES] >= 0 and now >= pr[P_MAX_CYCLES]:
                    st[c, S_DONE_AT] = now
                    st[c, S_STATE] = ST_DONE
                    break
                before = st[c, S_POS]
                i, used, status = run_batch(
                    addrs2[c], kinds2[c], before, st[c, S_LEN], pr[P_QUANTUM], vmid, tables,
                    pr[P_TBASE], ps, pr[P_ROOT], pr[P_START_LEVEL], pr[P_IA_BITS], key2[c],
                    stamp2[c], tpa2[c], tperm2[c], off, sets, ways, lat, sizes, serves, lay,
                    wc_tag3[c], wc_row3[c], wc_stamp3[c], clock2[c], costs, ctr2[c],
                    fault2[c], owner, 0, 0)
                st[c, S_POS] = i
                st[c, S_BEFORE] = before
                st[c, S_STATUS] = status
                g[G_DONE_ACC] += i - before
                used += st[c, S_DEBT]
                st[c, S_DEBT] = 0
                st[c, S_STATE] = ST_AFTER_RUN
                if used:
                    _push(ht, hs, hc, g, now + used, c)
                    break
                continue
            if s == ST_AFTER_RUN:
                st[c, S_STATE] = ST_TOP
                if st[c, S_STATUS] != B_FAULT:
                    continue
                f = fault2[c]
                ipa = f[F_IPA]
                # Machine._check_progress()
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
                # GuestVM.handle_fault()
                slot = -1
                for k in range(slots.shape[0]):
                    if slots[k, 0] <= ipa < slots[k, 0] + slots[k, 1]:
                        slot = k
                if slot < 0:
                    g[G_ERR] = ERR_OUTSIDE
                    g[G_ERR_CTX] = c
                    g[G_ERR_IPA] = ipa
                    return RET_ERROR
                fstatus = f[F_STATUS]
                if fstatus == W_CONFLICT:
                    ec[c, E_CONFLICT] += 1
                    tc[c, E_CONFLICT] = 1
                    _invalidate_cpu(c, vmid, 0, 0, ps, key2, off, sets, ways, sizes, wc_tag3)
                    st[c, S_DEBT] += pr[P_CONFLICT]
                    continue
                for k in range(g[G_NWIN]):
                    if win[k, 0] <= ipa < win[k, 1]:
                        ec[c, E_IN_WINDOW] += 1
                        tc[c, E_IN_WINDOW] = 1
                        break
                st[c, S_IPA] = ipa
                st[c, S_SLOT] = slot
                st[c, S_KIND] = f[F_KIND]
                st[c, S_FSTATUS] = fstatus
                st[c, S_T0] = now
                st[c, S_STATE] = ST_LOCK
                _push(ht, hs, hc, g, now + pr[P_ENTRY], c)
                break
            if s == ST_LOCK:
                st[c, S_TACQ] = now
                g[G_ACQ] += 1
                w = pr[P_EXCLUSIVE]
                if g[G_QN] == 0 and g[G_WRITER] == 0 and (w == 0 or g[G_READERS] == 0):
                    if w != 0:
                        g[G_WRITER] = 1
                    else:
                        g[G_READERS] += 1
                    st[c, S_STATE] = ST_GRANTED
                    st[c, S_TACQ] = -1  # no wait to count
                    continue
                g[G_CONT] += 1
                n = q.shape[0]
                tail = (g[G_QHEAD] + g[G_QN]) % n
                q[tail] = c
                qw[tail] = w
                g[G_QN] += 1
                st[c, S_STATE] = ST_WAIT
                break
            if s == ST_GRANTED:
                if st[c, S_TACQ] >= 0:
                    ec[c, E_LOCK_WAIT] += now - st[c, S_TACQ]
                    tc[c, E_LOCK_WAIT] = 1
                ipa = st[c, S_IPA]
                kind = st[c, S_KIND]
                fstatus = st[c, S_FSTATUS]
                logging = pr[P_LOGGING] != 0
                opc = 0
                if logging and kind == WRITE:
                    pg = ipa >> ps
                    if pg < dirty.shape[0] and not dirty[pg]:
                        dirty[pg] = True
                        ec[c, E_DIRTY] += 1
                        tc[c, E_DIRTY] = 1
                    opc += pr[P_DIRTY_PAGE]
                lo = ipa & ~(page - 1)
                leaf_level = 3
                if fstatus == W_PERMISSION:
                    rep[:] = 0
                    pgtable_walk(OP_GET_LEAF, tables, refcnt, free, meta, pr[P_TBASE], ps,
                                 pr[P_ROOT], pr[P_START_LEVEL], pr[P_IA_BITS], U(lo),
                                 U(lo + page), U(0), U(0), 0, pr[P_FLAGS], pr[P_RULE], stat,
                                 rep, tlog, stk)
                    leaf_level = rep[R_LEAF_LEVEL]
                if fstatus == W_PERMISSION and not (logging and leaf_level < 3):
                    clear_bits = D.XN if kind == FETCH else U(0)
                    set_bits = D.S2AP_W if kind == WRITE else D.S2AP_R
                    rep[:] = 0
                    pgtable_walk(OP_ATTR, tables, refcnt, free, meta, pr[P_TBASE], ps,
                                 pr[P_ROOT], pr[P_START_LEVEL], pr[P_IA_BITS], U(lo),
                                 U(lo + page), clear_bits, set_bits, 0,
                                 F_HANDLE_FAULT | pr[P_FLAGS], pr[P_RULE], stat, rep, tlog, stk)
                    tlb_invalidate(vmid, U(lo), U(lo + page), key2[c], off, sets, ways, sizes,
                                   ps)
                    opc += _op_cycles(rep, pr, fp) + pr[P_PERM_HANDLER] + pr[P_TLBI_IPA]
                    ec[c, E_TLBI_OPS] += 1
                    tc[c, E_TLBI_OPS] = 1
                else:
                    k = st[c, S_SLOT]
                    level = 3 if logging else _block_level(ipa, slots[k, 0], slots[k, 1], pr,
                                                           block_levels)
                    bs = np.int64(1) << ((ps - 3) * (4 - level) + 3)
                    start = ipa & ~(bs - 1)
                    attr = pr[P_ATTR_X] if (kind == FETCH or pr[P_DIC] != 0) else pr[P_ATTR]
                    if level < 3 and _locate(tables, pr, start, level, loc) \
                            and is_table(U(loc[2]), level):
                        # rebuild_block(): a table where the block goes
                        st[c, S_OPC] = opc
                        if not _rebuild_start(c, now, start, level, loc, attr, pr, fp, g, st,
                                              ec, tc, ht, hs, hc, win, tables, refcnt, free,
                                              meta, stat, rep, tlog, key2, off, sets, ways,
                                              sizes, wc_tag3):
                            return RET_ERROR
                        break
                    flags = F_HANDLE_FAULT | pr[P_FLAGS] | (F_FORCE_PTE if logging else 0)
                    if pr[P_EXCLUSIVE] == 0:
                        flags |= F_SHARED
                    rep[:] = 0
                    pgtable_walk(OP_MAP, tables, refcnt, free, meta, pr[P_TBASE], ps,
                                 pr[P_ROOT], pr[P_START_LEVEL], pr[P_IA_BITS], U(start),
                                 U(start + bs), U((pr[P_PA_BASE] + start) & ~(page - 1)),
                                 U(attr), 0, flags, pr[P_RULE], stat, rep, tlog, stk)
                    if rep[R_RET] == -P.ENOMEM:
                        g[G_ERR] = ERR_ENOMEM
                        g[G_ERR_CTX] = c
                        g[G_ERR_IPA] = ipa
                        return RET_ERROR
                    if rep[R_RET] == -P.EAGAIN:
                        ec[c, E_SPURIOUS] += 1
                        tc[c, E_SPURIOUS] = 1
                        st[c, S_REPEATS] = 0
                    opc += _op_cycles(rep, pr, fp)
                    _apply_tlbis(rep, tlog, pr, g, key2, off, sets, ways, sizes, wc_tag3)
                if not _account(rep, ec, tc, c, g):
                    return RET_ERROR
                st[c, S_STATE] = ST_RELEASE
                _push(ht, hs, hc, g, now + pr[P_LOCK] + opc, c)
                break
            if s == ST_RELEASE:
                # Machine.end_fault() after its timeout: release, return to the guest
                if pr[P_EXCLUSIVE] != 0:
                    g[G_WRITER] = 0
                else:
                    g[G_READERS] -= 1
                _grant_waiters(q, qw, g, ht, hs, hc, st, now)
                st[c, S_DEBT] += pr[P_EXIT]
                ec[c, E_FAULT_CYCLES] += now - st[c, S_T0] + pr[P_EXIT]
                tc[c, E_FAULT_CYCLES] = 1
                st[c, S_STATE] = ST_TOP
                continue
            if s >= ST_RB_BBM_INSTALL and s <= ST_RB_AFTER_FLUSH:
                if not _rebuild_resume(c, s, now, pr, fp, g, st, ec, tc, ht, hs, hc, win,
                                       tables, refcnt, free, meta, stat, rep, tlog, key2, off,
                                       sets, ways, sizes, wc_tag3):
                    return RET_ERROR
                break
            if s == ST_STREAM_END:
                if st[c, S_DEBT]:
                    _push(ht, hs, hc, g, now + st[c, S_DEBT], c)
                    st[c, S_DEBT] = 0
                    st[c, S_STATE] = ST_END
                    break
                st[c, S_DONE_AT] = now
                st[c, S_STATE] = ST_DONE
                break
            if s == ST_END:
                st[c, S_DONE_AT] = now
                st[c, S_STATE] = ST_DONE
                break
            break  # ST_DONE, ST_WAIT, ST_NEED_CHUNK: nothing to run


@jit
def _step(kind, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog, new, child, flags,
          ec, tc, g):
    """Stage2.entry_step() on the entry being rebuilt, accounted; False on WARN()s."""
    rep[:] = 0
    pgtable_entry_step(kind, tables, refcnt, free, meta, pr[P_TBASE], pr[P_PAGE_SHIFT],
                       st[c, S_RB_ROW], st[c, S_RB_IDX], st[c, S_RB_LEVEL],
                       U(st[c, S_RB_START]), U(new), child, flags, pr[P_RULE], stat, rep, tlog)
    return _account(rep, ec, tc, c, g)


@jit
def _rebuild_start(c, now, start, level, loc, attr, pr, fp, g, st, ec, tc, ht, hs, hc, win,
                   tables, refcnt, free, meta, stat, rep, tlog, key2, off, sets, ways, sizes,
                   wc_tag3):
    """rebuild_block() up to its first timeout."""
    ps = pr[P_PAGE_SHIFT]
    size = np.int64(1) << ((ps - 3) * (4 - level) + 3)
    st[c, S_RB_ROW] = loc[0]
    st[c, S_RB_IDX] = loc[1]
    st[c, S_RB_LEVEL] = level
    st[c, S_RB_START] = start
    st[c, S_RB_CHILD] = _row_of(U(loc[2]), pr[P_TBASE], ps)
    phys = (pr[P_PA_BASE] + start) & ~(size - 1)
    st[c, S_RB_NEW] = np.int64(make_leaf(U(phys), U(attr), level, ps))
    strategy = pr[P_STRATEGY]
    bbm_level = pr[P_BBM_LEVEL] if strategy == STRATEGY_TTREM else 0
    ec[c, E_RB_BLOCKS] += 1
    tc[c, E_RB_BLOCKS] = 1
    if bbm_level == 0:
        flags = pr[P_FLAGS]
        if strategy == STRATEGY_TTREM:  # seed 001 level 0 flushes the whole VMID
            flags &= ~F_TLBIRANGE
        if not _step(STEP_BREAK, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog, 0, -1,
                     flags, ec, tc, g):
            return False
        _apply_tlbis(rep, tlog, pr, g, key2, off, sets, ways, sizes, wc_tag3)
        k = g[G_NWIN]
        win[k, 0] = start
        win[k, 1] = start + size
        g[G_NWIN] = k + 1
        st[c, S_RB_T0] = now
        cost = _op_cycles(rep, pr, fp)
        if strategy == STRATEGY_BBM:
            if not _step(STEP_FREE, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog, 0,
                         st[c, S_RB_CHILD], pr[P_FLAGS], ec, tc, g):
                return False
            cost += _op_cycles(rep, pr, fp)
            if pr[P_FWB] == 0:
                cost += np.int64(size / fp[FP_CMO])
                ec[c, E_CMO] += size
            tc[c, E_CMO] = 1
            st[c, S_STATE] = ST_RB_BBM_INSTALL
        else:
            st[c, S_STATE] = ST_RB_INSTALL_FREE
        _push(ht, hs, hc, g, now + cost, c)
        return True
    new = st[c, S_RB_NEW] | (np.int64(D.NT) if bbm_level == 1 else 0)
    if not _step(STEP_REPLACE, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog, new, -1,
                 pr[P_FLAGS], ec, tc, g):
        return False
    st[c, S_STATE] = ST_RB_FLUSH
    _push(ht, hs, hc, g, now + _op_cycles(rep, pr, fp), c)
    return True


@jit
def _rebuild_resume(c, s, now, pr, fp, g, st, ec, tc, ht, hs, hc, win, tables, refcnt, free,
                    meta, stat, rep, tlog, key2, off, sets, ways, sizes, wc_tag3):
    """rebuild_block() after one of its timeouts, then Machine.end_fault()'s timeout."""
    if s == ST_RB_FLUSH:
        if not _step(STEP_FLUSH_VMID, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog,
                     0, -1, pr[P_FLAGS], ec, tc, g):
            return False
        st[c, S_STATE] = ST_RB_AFTER_FLUSH
        _push(ht, hs, hc, g, now + _op_cycles(rep, pr, fp), c)
        return True
    spent = 0
    if s == ST_RB_AFTER_FLUSH:
        # the flush (TLBI VMALLS12E1IS) lands when it completes
        _invalidate_all(0, 0, pr, g, key2, off, sets, ways, sizes, wc_tag3)
        if pr[P_BBM_LEVEL] == 1:  # clear nT
            if not _step(STEP_REPLACE, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog,
                         st[c, S_RB_NEW], -1, pr[P_FLAGS], ec, tc, g):
                return False
            spent += _op_cycles(rep, pr, fp)
        if not _step(STEP_FREE, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog, 0,
                     st[c, S_RB_CHILD], pr[P_FLAGS], ec, tc, g):
            return False
        spent += _op_cycles(rep, pr, fp)
    else:
        # the invalid window ends
        lo = st[c, S_RB_START]
        for k in range(g[G_NWIN]):
            if win[k, 0] == lo:
                g[G_NWIN] -= 1
                for j in range(k, g[G_NWIN]):
                    win[j, 0] = win[j + 1, 0]
                    win[j, 1] = win[j + 1, 1]
                break
        ec[c, E_RB_WINDOW] += now - st[c, S_RB_T0]
        tc[c, E_RB_WINDOW] = 1
        if not _step(STEP_INSTALL, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog,
                     st[c, S_RB_NEW], -1, pr[P_FLAGS], ec, tc, g):
            return False
        spent += _op_cycles(rep, pr, fp)
        if s == ST_RB_INSTALL_FREE:
            if not _step(STEP_FREE, c, st, pr, tables, refcnt, free, meta, stat, rep, tlog, 0,
                         st[c, S_RB_CHILD], pr[P_FLAGS], ec, tc, g):
                return False
            spent += _op_cycles(rep, pr, fp)
    st[c, S_STATE] = ST_RELEASE
    _push(ht, hs, hc, g, now + pr[P_LOCK] + st[c, S_OPC] + spent, c)
    return True


# ============================================================================================
# Python side


class VcpuLoop:
    """The arrays of :func:`advance` for one kvm Machine, and the SimPy process that drives
    it. The CPUs' TLB, walk-cache, clock and counter arrays become rows of stacked arrays
    (the Python objects keep views), so both sides see the same state."""

    def __init__(self, m):
        from simulator.engine import _backing

        self.m = m
        cfg = m.cfg
        vm = m.vm
        g = cfg.geometry
        self.ctxs = list(m.contexts)
        n = len(self.ctxs)
        cpus = [ctx.cpu for ctx in self.ctxs]
        t0 = cpus[0].tlb
        for name in ("key", "stamp", "pa", "perm"):
            stacked = np.stack([getattr(cpu.tlb, name) for cpu in cpus])
            for i, cpu in enumerate(cpus):
                setattr(cpu.tlb, name, stacked[i])
            setattr(self, "tlb_" + name, stacked)
        for name in ("tag", "row", "stamp"):
            stacked = np.stack([getattr(cpu.wc, name) for cpu in cpus])
            for i, cpu in enumerate(cpus):
                setattr(cpu.wc, name, stacked[i])
            setattr(self, "wc_" + name, stacked)
        self.clock = np.stack([cpu.clock for cpu in cpus])
        self.ctr = np.stack([ctx.mmu.ctr for ctx in self.ctxs])
        self.fault = np.stack([ctx.mmu.fault for ctx in self.ctxs])
        for i, (ctx, cpu) in enumerate(zip(self.ctxs, cpus)):
            cpu.clock = self.clock[i]
            ctx.mmu.clock = self.clock[i]
            ctx.mmu.ctr = self.ctr[i]
            ctx.mmu.fault = self.fault[i]
        self.tlb_geom = (t0.off, t0.sets, t0.ways, t0.latency, t0.sizes, t0.serves)
        self.costs = self.ctxs[0].mmu.costs
        self.layout = self.ctxs[0].mmu.layout
        self.owner = self.ctxs[0].mmu.owner
        c = cfg.costs
        pr = np.zeros(N_PARAMS, dtype=np.int64)
        pr[P_PAGE_SHIFT] = g.page_shift
        pr[P_START_LEVEL] = g.start_level
        pr[P_IA_BITS] = g.ipa_bits
        pr[P_ROOT] = vm.s2.root
        pr[P_TBASE] = vm.s2.mem.base_pa
        pr[P_VMID] = vm.vmid
        pr[P_QUANTUM] = cfg.engine.quantum_cycles
        pr[P_MAX_CYCLES] = -1 if cfg.engine.max_cycles is None else cfg.engine.max_cycles
        pr[P_ENTRY] = c.fault_entry_exit // 2 + c.fault_handler
        pr[P_EXIT] = c.fault_entry_exit - c.fault_entry_exit // 2
        pr[P_LOCK] = c.lock
        pr[P_DIRTY_PAGE] = c.dirty_page
        pr[P_PERM_HANDLER] = c.perm_fault_handler
        pr[P_TLBI_IPA] = c.tlbi_ipa
        pr[P_CONFLICT] = c.tlb_conflict_abort
        pr[P_FLAGS] = vm.s2.base_flags
        pr[P_RULE] = vm.s2.rule
        pr[P_WANT] = vm.mapping if vm.mapping is not None else _backing(vm.gcfg.backing, g)
        pr[P_PA_BASE] = vm.pa_base
        pr[P_ATTR] = D.prot_attr(D.PROT_R | D.PROT_W)
        pr[P_ATTR_X] = D.prot_attr(D.PROT_R | D.PROT_W | D.PROT_X)
        pr[P_STRATEGY] = {"bbm": STRATEGY_BBM, "install_first": STRATEGY_INSTALL_FIRST,
                          "ttrem": STRATEGY_TTREM}[cfg.hyp.rebuild]
        pr[P_BBM_LEVEL] = cfg.machine.bbm_level
        pr[P_FWB] = int(cfg.machine.fwb)
        pr[P_DIC] = int(cfg.machine.dic)
        oc = m.op_costs
        pr[P_C_VISIT] = oc.pte_visit
        pr[P_C_STORE] = oc.pte_store
        pr[P_C_ALLOC] = oc.table_alloc
        pr[P_C_FREE] = oc.table_free
        pr[P_C_TLBI_IPA] = oc.tlbi_ipa
        pr[P_C_TLBI_RANGE] = oc.tlbi_range
        pr[P_C_TLBI_VMID] = oc.tlbi_vmid
        pr[P_EXCLUSIVE] = int(vm.lock.exclusive)
        self.pr = pr
        self.fp = np.array([oc.cmo_bytes_per_cycle, oc.icache_bytes_per_cycle])
        self.block_levels = np.array(g.block_levels(), dtype=np.int64)
        self.slots = np.array(vm.slots, dtype=np.int64).reshape(-1, 2)
        self.g = np.zeros(N_GLOBALS, dtype=np.int64)
        self.st = np.zeros((n, N_STATE), dtype=np.int64)
        self.ec = np.zeros((n, N_EXTRA), dtype=np.int64)
        self.tc = np.zeros((n, N_EXTRA), dtype=np.int8)
        self.ht = np.zeros(n, dtype=np.int64)
        self.hs = np.zeros(n, dtype=np.int64)
        self.hc = np.zeros(n, dtype=np.int64)
        self.q = np.zeros(n, dtype=np.int64)
        self.qw = np.zeros(n, dtype=np.int64)
        self.win = np.zeros((n, 2), dtype=np.int64)
        width = max(1024, cfg.engine.chunk)
        self.addrs = np.zeros((n, width), dtype=np.uint64)
        self.kinds = np.zeros((n, width), dtype=np.uint8)

    def process(self, contexts):
        """A SimPy process body: run ``contexts`` (their streams from the start) until every
        one has finished, in step with the other SimPy processes."""
        m = self.m
        env = m.env
        vm = m.vm
        st, g = self.st, self.g
        idx = [ctx.index for ctx in contexts]
        streams = {ctx.index: iter(ctx.stream) for ctx in contexts}
        g[G_NOW] = env.now
        g[G_PENDING] = -1
        for i in idx:
            st[i, :] = 0
            st[i, S_LAST_IDX] = -1
            st[i, S_LAST_IPA] = -1
            st[i, S_STATE] = ST_TOP
            _push(self.ht, self.hs, self.hc, g, env.now, i)
        self.pr[P_LOGGING] = int(vm.logging)
        lock = vm.lock
        try:
            while True:
                peek = env.peek()
                horizon = np.iinfo(np.int64).max if peek == float("inf") else int(peek)
                acc0, ent0, acq0, cont0 = (int(g[G_DONE_ACC]), int(g[G_TLBI_ENTRIES]),
                                           int(g[G_ACQ]), int(g[G_CONT]))
                r = self._advance(horizon)
                m.done_accesses += int(g[G_DONE_ACC]) - acc0
                m.machine_ctr.add("tlbi.entries", int(g[G_TLBI_ENTRIES]) - ent0)
                lock.acquisitions += int(g[G_ACQ]) - acq0
                lock.contended += int(g[G_CONT]) - cont0
                if r == RET_REFILL:
                    self._refill(int(g[G_PENDING]), streams)
                elif r == RET_GROW:
                    mem = vm.s2.mem
                    mem.reserve(int(mem.meta[M_NFREE]) + GROW_MARGIN * 4)
                elif r == RET_ERROR:
                    self._raise()
                elif r == RET_HORIZON:
                    yield env.timeout(horizon - env.now)
                else:  # RET_IDLE: every vCPU is done
                    end = max(int(st[i, S_DONE_AT]) for i in idx)
                    if end > env.now:
                        yield env.timeout(end - env.now)
                    break
        finally:
            self._settle(idx)

    def _advance(self, horizon: int) -> int:
        m = self.m
        vm = m.vm
        mem = vm.s2.mem
        s2 = vm.s2
        off, sets, ways, lat, sizes, serves = self.tlb_geom
        return advance(horizon, self.pr, self.fp, self.block_levels, self.slots, self.g,
                       self.st, self.ec, self.tc, self.ht, self.hs, self.hc, self.q, self.qw,
                       self.win, self.addrs, self.kinds, mem.tables, mem.refcnt, mem.free,
                       mem.meta, s2.stat, s2._rep, s2._tlog, s2._stk, vm.dirty, self.tlb_key,
                       self.tlb_stamp, self.tlb_pa, self.tlb_perm, off, sets, ways, lat, sizes,
                       serves, self.layout, self.wc_tag, self.wc_row, self.wc_stamp, self.clock,
                       self.costs, self.ctr, self.fault, self.owner)

    def _refill(self, i: int, streams) -> None:
        """Hand vCPU ``i`` its next chunk (placed in guest memory), or end its stream."""
        st = self.st
        ctx = self.ctxs[i]
        try:
            addrs, kinds = next(streams[i])
        except StopIteration:
            st[i, S_STATE] = ST_STREAM_END
            return
        addrs, kinds = ctx.vm.placement(addrs, kinds, ctx)
        n = len(addrs)
        if n > self.addrs.shape[1]:
            width = max(n, 2 * self.addrs.shape[1])
            self.addrs = np.zeros((self.addrs.shape[0], width), dtype=np.uint64)
            self.kinds = np.zeros((self.kinds.shape[0], width), dtype=np.uint8)
        self.addrs[i, :n] = addrs
        self.kinds[i, :n] = kinds
        st[i, S_POS] = 0
        st[i, S_LEN] = n
        st[i, S_STATE] = ST_TOP

    def _settle(self, idx) -> None:
        """Copy each vCPU's end time and extra counters back to its Context."""
        for i in idx:
            ctx = self.ctxs[i]
            ctx.done_at = int(self.st[i, S_DONE_AT])
            ctx.debt = int(self.st[i, S_DEBT])
            for k, name in enumerate(EXTRA_NAMES):
                if self.tc[i, k]:
                    ctx.ctr.add(name, int(self.ec[i, k]))
            self.ec[i, :] = 0
            self.tc[i, :] = 0

    def _raise(self):
        from simulator.engine import SimulationError

        g = self.g
        ctx = self.ctxs[int(g[G_ERR_CTX])]
        ipa = int(g[G_ERR_IPA])
        err = int(g[G_ERR])
        vm = self.m.vm
        if err == ERR_OUTSIDE:
            raise SimulationError(
                "workload", f"vCPU {ctx.index} accessed IPA {ipa:#x}, outside guest memory "
                f"({', '.join(f'[{b:#x}, {b + s:#x})' for b, s in vm.slots)}); "
                "set guest.placement: first_touch to place trace addresses in guest memory")
        if err == ERR_STUCK:
            raise SimulationError("engine", f"{ctx.label}: the access to {ipa:#x} keeps "
                                  "faulting after its fault was handled")
        if err == ERR_ENOMEM:
            raise SimulationError("guest", f"{ctx.label}: no page-table memory left to map IPA "
                                  f"{ipa:#x} (the pool stays exhausted)")
        raise SimulationError("engine", "page-table refcount inconsistency (kernel WARN()s)")
