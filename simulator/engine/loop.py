"""The compiled engine: every CPU context, its faults and the locks, in one numba kernel.

Each context (a guest vCPU, or in pkvm a host CPU) is a state machine whose states
(:mod:`simulator.engine.layout`, ``ST_*``) are the points where it waits: after a quantum of
accesses, after the fault entry, queued on a lock or for its CPU, under the lock, between the
steps of a rebuild. :func:`advance` pops the earliest event and runs that context until it
waits again, and so on, until the next event lies at or after ``horizon`` (the time of the
next SimPy event: agents run there), no context has an event, or Python must act:

* a call-out (``RET_CALL``): work Python owns, done at one instant while the context waits
  (its next chunk of accesses, growing page-table memory or the reverse map, pKVM's
  donation of a chunk); Python serves it and resumes the context;
* signals (``RET_SIGNAL``): a lock granted to an agent, a context that has finished.

A stage-1 fault (a guest with its own page tables) goes to the guest's handler
(:func:`simulator.guest.stage1.s1_fault`): no exit, no KVM lock, its time charged.

The fault handler is user_mem_abort() as a cost model: exception entry, the handler's work
outside the lock, the lock, the page-table operation (the kernel's walker, charged by what
it did), release, return. Permission faults relax the leaf; with dirty logging a write marks
the page dirty and maps a page (breaking a block into a table); a fault that finds a table
where its block goes runs the rebuild strategy's program (:mod:`simulator.hyp.rebuild`).
With pKVM, a guest's map tops its memcache up from the hyp pool and settles it afterwards
(:mod:`simulator.hyp.pools`), and a host CPU's abort runs host_stage2_idmap()
(:func:`simulator.hyp.host.host_idmap_step`), both compiled here.
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.engine.fault import (
    account,
    apply_tlbis,
    count_s1_flush,
    guest_fault,
    handle,
    invalidate_cpu,
    map_fault,
    op_cycles,
    pa_of,
    rebuild,
)
from simulator.engine.layout import (
    CALL_DONATE,
    CALL_DONATE_ALLOC,
    CALL_GROW,
    CALL_REFILL,
    CALL_RMAP_GROW,
    CALL_S1_GROW,
    E_ABORTS,
    E_CONFLICT,
    E_FAULT_CYCLES,
    E_ILLEGAL,
    E_IN_WINDOW,
    E_LOCK_WAIT,
    E_SCHED_SLICES,
    E_SCHED_WAIT,
    E_SPURIOUS,
    ERR_HOST_ENOMEM,
    ERR_HYP_BUG,
    ERR_OUTSIDE,
    ERR_STUCK,
    FP_BW,
    G_CALL,
    G_CALL_CTX,
    G_DONE_ACC,
    G_ERR,
    G_ERR_CTX,
    G_ERR_IPA,
    G_NWIN,
    G_PENDING,
    GROW_MARGIN,
    P_ACC_BYTES,
    P_CONFLICT,
    P_EXIT,
    P_GROW,
    P_HANDOFF,
    P_LOCK,
    P_MAX_CYCLES,
    P_OWNER_BASE,
    P_PAGE_SHIFT,
    P_QUANTUM,
    P_TIMESLICE,
    P_WALK_BYTES,
    RET_CALL,
    RET_ERROR,
    RET_HORIZON,
    RET_IDLE,
    RET_SIGNAL,
    S_BEFORE,
    S_CPU,
    S_DEBT,
    S_DONE_AT,
    S_FSTATUS,
    S_HELD,
    S_IPA,
    S_KIND,
    S_LAST_IDX,
    S_LAST_IPA,
    S_LEN,
    S_LOCK,
    S_NEXT,
    S_OPC,
    S_POS,
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
    ST_GUEST_FAULT,
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
    ST_TOUCHED,
    V_CHUNK,
    V_CHUNK_OFF,
    V_ENTRY,
    V_HOST_LOCK,
    V_IA_BITS,
    V_KIND,
    V_LOCK,
    V_MEM,
    V_NSLOT,
    V_OWNER,
    V_POOL,
    V_RMAP,
    V_ROOT,
    V_S1,
    V_SLOT_OFF,
    V_START_LEVEL,
    V_TBASE,
    V_TOUCH_SHIFT,
    V_VMID,
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
from simulator.hyp.host import (
    HW_ADDR,
    HW_BUG,
    HW_PHASE,
    HW_RET,
    PH_DONE,
    PH_START,
    host_idmap_step,
)
from simulator.hyp.page_rmap import rmap_add_leaf
from simulator.hyp.pgtable import EAGAIN, ENOMEM, EPERM, M_HWM, M_NFREE, tables_needed
from simulator.hyp.pools import memcache_settle, memcache_topup
from simulator.engine.shared import first_touch, memory
from simulator.guest.stage1 import G1_ROWS
from simulator.mmu.batch import (
    B_FAULT,
    C_WALK_REFS,
    FR_IPA,
    FR_KIND,
    FR_STAGE,
    FR_STATUS,
    run_batch,
)
from simulator.mmu.walk import W_CONFLICT, W_PERMISSION

U = np.uint64
# int64 (not literal) arguments: a literal int would compile the callee once more per value
I0 = np.int64(0)
I1 = np.int64(1)


# ---- the main loop -------------------------------------------------------------------------
@jit
def advance(horizon, md, sc, tl, mems, sm, wk):
    """Run the contexts' events in order until one of the RET_* conditions.

    md, sc, tl, sm, wk: the engine's arrays in named groups (Model, Sched, Tlbs, Streams,
    Work of :mod:`simulator.engine.layout`); mems: the two table memories (Mem; kvm passes
    its one memory twice). In the groups:

    pr/fp: machine parameters; vmt: the stage-2s; slots (base, size) and chunks (donated
    host addresses, -1: none) per stage-2; block_levels: the levels that hold blocks;
    rbprog: the rebuild strategy's program; g, st, ec, tc: globals, contexts, their engine
    counters; ht/hs/hc: the event heap; lk/lq: locks; cs/cq: shared CPUs; win: invalid
    windows (stage-2, lo, hi); sig: signals; addrs2/kinds2: each context's current chunk;
    mtables/mrefcnt/mfree/mmeta: the table memories (tuples); stats: per stage-2 leaf counts;
    rep/tlog/stk: walker scratch; dirty: the logging guest's dirty bitmap; key2 .. lay: the
    CPUs' TLBs (per CPU rows, shared geometry); wc_*3: walk caches; clock2: LRU clocks;
    s1 (in tl): per VMID, 1 when its guest has a stage-1; costs: run_batch's cost slots;
    ctr2/fault2: each context's MMU counters and fault record; owner: the ownership record
    (pkvm; empty in kvm); loc: scratch (3 int64);
    hys: the table memories' hyp-pool stores (tuple; empty stores without pools); hw/hreg:
    pKVM's host abort work area and regions (simulator.hyp.host); rm: the reverse map of the
    guest that keeps one (simulator.hyp.page_rmap; a dummy otherwise); s1t/s1p/s1out: the
    guest stage-1 and its fault handler's scratch (simulator.guest.stage1)."""
    pr, fp, vmt, slots, chunks, block_levels, rbprog = md
    g, st, ec, tc, ht, hs, hc, lk, lq, cs, cq, win, sig = sc
    (key2, stamp2, tpa2, tperm2, off, sets, ways, lat, sizes, serves, lay, wc_tag3, wc_row3,
     wc_stamp3, clock2, _, s2sizes) = tl
    addrs2, kinds2, costs, ctr2, fault2 = sm
    stats, rep, tlog, stk, dirty, owner, loc, hw, hreg, rm, touch, s1t, s1p, s1out = wk
    ps = pr[P_PAGE_SHIFT]
    while True:
        if pr[P_GROW] != 0:
            meta0 = mems[0].meta
            if meta0[M_NFREE] + mems[0].tables.shape[0] - meta0[M_HWM] < GROW_MARGIN:
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
        mem = mems[0] if vmt[v, V_MEM] == 0 else mems[1]
        tables, refcnt, free, meta, hy = mem
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
                refs = ctr2[c, C_WALK_REFS]
                i, used, status = run_batch(
                    addrs2[c], kinds2[c], before, st[c, S_LEN], pr[P_QUANTUM], vmt[v, V_VMID],
                    tables, vmt[v, V_TBASE], ps, vmt[v, V_ROOT], vmt[v, V_START_LEVEL],
                    vmt[v, V_IA_BITS], key2[cpu], stamp2[cpu], tpa2[cpu], tperm2[cpu], off, sets,
                    ways, lat, sizes, serves, lay, wc_tag3[cpu], wc_row3[cpu], wc_stamp3[cpu],
                    clock2[cpu], costs, ctr2[c], fault2[c], owner, pr[P_OWNER_BASE],
                    vmt[v, V_OWNER], vmt[v, V_S1], s1t, s1p, s2sizes)
                st[c, S_POS] = i
                st[c, S_BEFORE] = before
                st[c, S_STATUS] = status
                g[G_DONE_ACC] += i - before
                if fp[FP_BW] > 0.0:
                    used = memory(c, now, used, (i - before) * pr[P_ACC_BYTES]
                                   + (ctr2[c, C_WALK_REFS] - refs) * pr[P_WALK_BYTES], fp, g, ec,
                                   tc)
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
                ipa = f[FR_IPA]
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
                st[c, S_KIND] = f[FR_KIND]
                st[c, S_FSTATUS] = f[FR_STATUS]
                st[c, S_T0] = now
                if f[FR_STAGE] == 1:
                    # a stage-1 fault: the guest's own page-fault handler, no exit
                    st[c, S_STATE] = ST_GUEST_FAULT
                    continue
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
                if f[FR_STATUS] == W_CONFLICT:
                    # a TLB conflict abort: this CPU's TLB is flushed for the VMID; the access
                    # is replayed (no lock, no page-table work)
                    ec[c, E_CONFLICT] += 1
                    tc[c, E_CONFLICT] = 1
                    invalidate_cpu(cpu, vmt[v, V_VMID], I0, I0, ps, tl, g, I1)
                    count_s1_flush(vmt[v, V_VMID], tl, g)
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
            if s == ST_GUEST_FAULT:
                if wk.s1p[G1_ROWS] + 4 > wk.s1t.shape[0]:  # room for the tables it may add
                    g[G_CALL] = CALL_S1_GROW
                    g[G_CALL_CTX] = c
                    return RET_CALL
                cyc = guest_fault(c, v, md, sc, wk)
                if cyc < 0:
                    return RET_ERROR
                st[c, S_STATE] = ST_TOP
                push(ht, hs, hc, g, now + cyc, c)
                break
            if s == ST_ENTERED:
                st[c, S_STATE] = ST_TOUCHED
                if vmt[v, V_TOUCH_SHIFT] != 0 and st[c, S_FSTATUS] != W_PERMISSION:
                    wait = first_touch(c, v, now, vmt, slots, st, ec, tc, touch)
                    if wait > 0:
                        push(ht, hs, hc, g, now + wait, c)
                        break
                continue
            if s == ST_TOUCHED:
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
                             S_STATE, ST_LOCK_GRANTED, pr[P_HANDOFF])
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
                # granted after a wait, then handed over: the lock and the lines its holders
                # touch came over from the last CPU (P_HANDOFF cycles, one event with the
                # grant: lock_release schedules it); the wait is counted up to the grant
                ec[c, E_LOCK_WAIT] += now - pr[P_HANDOFF] - st[c, S_TACQ]
                tc[c, E_LOCK_WAIT] = 1
                st[c, S_STATE] = st[c, S_NEXT]
                continue
            if s == ST_HOST_ABORT:
                # handle_host_mem_abort() under the host lock: host_stage2_idmap() step by step,
                # each page-table operation charged; an access that can never complete drops
                ec[c, E_ABORTS] += 1
                tc[c, E_ABORTS] = 1
                op = 0
                ret = 0
                if st[c, S_FSTATUS] == W_PERMISSION:
                    ret = -EPERM  # e.g. a fetch from MMIO (XN)
                else:
                    hw[HW_ADDR] = st[c, S_IPA]
                    hw[HW_PHASE] = PH_START
                    while hw[HW_PHASE] != PH_DONE:
                        if host_idmap_step(hw, hreg, tables, refcnt, free, meta, stat, rep, tlog,
                                           stk, hy):
                            op += op_cycles(rep, pr, fp)
                            apply_tlbis(rep, tlog, vmt[v, V_VMID], ps, g, tl)
                            if not account(rep, ec, tc, c, g):
                                return RET_ERROR
                    if hw[HW_BUG] != 0 or hw[HW_RET] == -ENOMEM:
                        g[G_ERR] = ERR_HYP_BUG if hw[HW_BUG] != 0 else ERR_HOST_ENOMEM
                        g[G_ERR_CTX] = c
                        g[G_ERR_IPA] = hw[HW_BUG] if hw[HW_BUG] != 0 else st[c, S_IPA]
                        return RET_ERROR
                    ret = hw[HW_RET]
                if ret == -EPERM:
                    ec[c, E_ILLEGAL] += 1
                    tc[c, E_ILLEGAL] = 1
                    st[c, S_SKIP] = 1
                elif ret == -EAGAIN:
                    ec[c, E_SPURIOUS] += 1
                    tc[c, E_SPURIOUS] = 1
                st[c, S_OPC] = op
                st[c, S_STATE] = ST_FAULT_END
                continue
            if s == ST_HANDLE:
                r = handle(c, v, cpu, now, md, sc, tl, mem, wk)
                if r == 1:  # a map: top the memcache up first when the tables are pooled
                    st[c, S_STATE] = ST_MAP
                    if vmt[v, V_POOL] != 0:
                        bug = memcache_topup(free, meta, hy, vmt[v, V_POOL] - 1,
                                             tables_needed(st[c, S_START], st[c, S_SIZE],
                                                           vmt[v, V_START_LEVEL], ps))
                        if bug != 0:
                            return _hyp_bug(c, bug, g)
                elif r == 2:  # a rebuild
                    st[c, S_STATE] = ST_REBUILD
                else:
                    st[c, S_STATE] = ST_FAULT_END
                continue
            if s == ST_MAP:
                if not map_fault(c, v, md, sc, tl, mem, wk):
                    return RET_ERROR
                st[c, S_STATE] = ST_MAPPED
                if vmt[v, V_POOL] != 0 and meta[M_NFREE] > 0:
                    bug = memcache_settle(free, meta, hy, I0)
                    if bug != 0:
                        return _hyp_bug(c, bug, g)
                continue
            if s == ST_MAPPED:
                if vmt[v, V_RMAP] != 0 and st[c, S_RET] == 0:
                    # rmap_add() of the page leaf just installed, under the lock
                    cyc = rmap_add_leaf(rm, pa_of(vmt, v, chunks, st[c, S_START], ps),
                                        st[c, S_START])
                    if cyc < 0:  # the reverse map's arrays are full: grow, then again
                        g[G_CALL] = CALL_RMAP_GROW
                        g[G_CALL_CTX] = c
                        return RET_CALL
                    st[c, S_OPC] += cyc
                st[c, S_STATE] = ST_FAULT_END
                continue
            if s == ST_FAULT_END:
                st[c, S_STATE] = ST_RELEASE
                push(ht, hs, hc, g, now + pr[P_LOCK] + st[c, S_OPC], c)
                break
            if s == ST_REBUILD:
                if not rebuild(c, v, now, md, sc, tl, mem, wk):
                    return RET_ERROR
                break
            if s == ST_RELEASE:
                # the end of a fault: release, return to the guest (the exit is charged with
                # the next quantum: the context does nothing observable meanwhile)
                lock_release(lk, lq, vmt[v, V_LOCK], 0, now, ht, hs, hc, g, sig, st, S_STATE,
                             ST_LOCK_GRANTED, pr[P_HANDOFF])
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
def _hyp_bug(c, bug, g):
    g[G_ERR] = ERR_HYP_BUG
    g[G_ERR_CTX] = c
    g[G_ERR_IPA] = bug
    return RET_ERROR


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
