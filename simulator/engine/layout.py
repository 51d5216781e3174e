"""The field layout of the compiled engine's arrays (shared by its kernels and its Python side).

* ``pr``: int64 machine parameters (P_*), ``fp``: float64 ones (FP_*);
* ``vmt[v]``: one row per stage-2 (a guest, or pKVM's host): V_*;
* ``st[c]``: one row per CPU context (a vCPU or a host CPU): S_*, with its state ST_*;
* ``ec[c]``/``tc[c]``: the context's engine counters (E_*) and whether each was touched (a
  counter a run never touched is absent from the results, as a SimPy-side counter would be);
* ``g``: globals (G_*; the first four belong to :mod:`simulator.engine.sched`).
"""

from __future__ import annotations

from collections import namedtuple

from simulator.engine.sched import G_HEAPN, G_NOW, G_NSIG, G_SEQ

# ---- what the compiled engine takes: its arrays in a few named groups ----------------------
# the model: parameters (P_*, FP_*), the stage-2s (V_*), their memslots and donated chunks, the
# levels that hold blocks, the rebuild strategy's program
Model = namedtuple("Model", "pr fp vmt slots chunks block_levels rbprog")
# the schedule: globals (G_*), contexts (S_*), their engine counters and touched flags (E_*),
# the event heap (time, sequence, context), locks and their queues, shared CPUs and their
# queues, the open invalid windows, the signals for Python
Sched = namedtuple("Sched", "g st ec tc ht hs hc lk lq cs cq win sig")
# the CPUs' translation hardware: each CPU's TLB rows (key, LRU stamp, output address,
# permissions) and walk cache, the TLB geometry they share, each CPU's LRU clock
# and, per VMID, 1 when its guest has a stage-1 (its entries are combined VA -> PA ones)
# and the stage-2 entry sizes each level caches for nested walks (tlb.s2c_probe)
Tlbs = namedtuple("Tlbs", "key stamp pa perm off sets ways lat sizes serves lay wc_tag wc_row "
                          "wc_stamp clock s1 s2sizes")
# one table memory: rows, refcounts, free stack, meta (M_*), and its hyp-pool store
Mem = namedtuple("Mem", "tables refcnt free meta hy")
# per context: its current chunk of accesses, run_batch's costs, MMU counters and fault record
Streams = namedtuple("Streams", "addrs kinds costs ctr fault")
# the rest: per-stage-2 leaf counts, the walker's report, TLBI log and stack, the logging
# guest's dirty bitmap, the ownership record (pkvm), scratch, pKVM's host abort work area and
# regions, the reverse map of the guest that keeps one, and when each backing page of a guest
# that is not populated is ready (-1: untouched; a memslot's pages start at its slots[k, 2]),
# the guest stage-1's table pages and parameters (simulator.guest.stage1; empty without one)
# and its fault handler's scratch
Work = namedtuple("Work", "stats rep tlog stk dirty owner loc hw hreg rm touch s1t s1p s1out")

# ---- machine parameters (int64) ------------------------------------------------------------
(P_PAGE_SHIFT, P_QUANTUM, P_MAX_CYCLES, P_EXIT, P_LOCK, P_DIRTY_PAGE, P_PERM_HANDLER,
 P_TLBI_IPA, P_CONFLICT, P_FWB, P_DIC, P_C_VISIT, P_C_STORE, P_C_ALLOC, P_C_FREE,
 P_C_TLBI_IPA, P_C_TLBI_RANGE, P_C_TLBI_VMID, P_TIMESLICE, P_OWNER_BASE,
 P_GROW, P_ATTR, P_ATTR_X, P_CMO_AT_FAULT, P_ACC_BYTES, P_WALK_BYTES, P_HANDOFF,
 P_C_PUT, P_GUEST_FAULT) = range(29)
N_PARAMS = 29
FP_CMO, FP_ICACHE, FP_BW, FP_ZERO = 0, 1, 2, 3  # bytes per cycle (FP_BW 0: unlimited)
N_FPARAMS = 4

# ---- a stage-2 (int64 row) -----------------------------------------------------------------
(V_KIND, V_VMID, V_MEM, V_ROOT, V_START_LEVEL, V_IA_BITS, V_TBASE, V_FLAGS, V_RULE, V_LOCK,
 V_ENTRY, V_WANT, V_PA_BASE, V_CHUNK, V_CHUNK_OFF, V_NCHUNK, V_SHARED_FROM, V_OWNER,
 V_LOGGING, V_SLOT_OFF, V_NSLOT, V_RMAP, V_ALIAS_START, V_ALIAS_PAGES, V_ALIAS_FRAMES,
 V_POOL, V_HOST_LOCK, V_DIRTY, V_SHARED_WALK, V_TOUCH_SHIFT, V_TOUCH_COST, V_S1) = range(32)
N_VM_FIELDS = 32
VM_GUEST = 0  # user_mem_abort(), compiled
VM_HOST = 1  # pKVM's handle_host_mem_abort(): host_stage2_idmap(), compiled

# ---- a context (int64 row) -----------------------------------------------------------------
(S_STATE, S_VM, S_CPU, S_POS, S_LEN, S_DEBT, S_STATUS, S_T0, S_TACQ, S_OPC, S_LAST_IDX,
 S_LAST_IPA, S_REPEATS, S_DONE_AT, S_IPA, S_KIND, S_FSTATUS, S_BEFORE, S_SLOT, S_STOP,
 S_SKIP, S_HELD, S_SINCE, S_LOCK, S_WRITE, S_NEXT, S_ENOMEM, S_START, S_SIZE, S_LEVEL,
 S_RET, S_TOPPED, S_RB_PC, S_RB_ROW, S_RB_IDX, S_RB_START, S_RB_NEW, S_RB_CHILD, S_RB_T0,
 S_RB_ACC) = range(40)
N_STATE = 40

# states: where a context resumes
ST_TOP = 0  # the top of the access loop
ST_RUN = 1  # holding its CPU: run a quantum
ST_AFTER_RUN = 2  # after the timeout of a quantum's cycles
ST_CPU_WAIT = 3  # queued for its CPU (not in the heap)
ST_CPU_GRANTED = 4  # given its CPU after a wait
ST_LOCK = 5  # take lock S_LOCK (S_WRITE), then go on in state S_NEXT
ST_LOCK_WAIT = 6  # queued on the lock (not in the heap)
ST_LOCK_GRANTED = 7  # granted after a wait and handed over: count it, go on in state S_NEXT
ST_ENTERED = 8  # after the fault entry: the host's first touch of the page (not populated)
ST_HANDLE = 9  # under the lock: user_mem_abort()'s work
ST_MAP = 10  # the map (the memcache topped up and settled when the memory is pool-backed)
ST_MAPPED = 11  # after the map: rmap_add()
ST_FAULT_END = 12  # the work under the lock is done: charge it
ST_RELEASE = 13  # after the time under the lock: release, return to the guest
ST_REBUILD = 14  # run the rebuild program from S_RB_PC
ST_HOST_ABORT = 15  # pKVM host abort under the host lock
ST_DONATE_HCALLS = 16  # a ballooned chunk touched again: the hypercalls, then the host lock
ST_DONATE = 17  # under the host lock: the donation (a call-out)
ST_DONATE_DONE = 18  # charge it
ST_DONATE_RELEASE = 19  # release the host lock, then take the guest's lock
ST_NEED_CHUNK = 20  # waiting for Python to hand over the next chunk
ST_STREAM_END = 21  # the stream is exhausted (set by Python)
ST_END = 22  # after the final debt timeout
ST_DONE = 23
ST_IDLE = 24  # not started
ST_TOUCHED = 25  # the host page behind the fault is there: a missing donated chunk, or the lock
ST_GUEST_FAULT = 27  # a stage-1 fault: the guest's own handler (needs 4 free table rows)

# ---- engine counters per context; names as results.json has them ----------------------
EXTRA_NAMES = ("tlb_conflict_aborts", "faults.in_window", "lock_wait_cycles", "dirty.pages",
               "tlbi.ops", "faults.spurious", "fault_cycles", "pgtable.pages_allocated",
               "pgtable.pages_freed", "cmo.bytes", "rebuild.blocks", "rebuild.window_cycles",
               "faults.enomem", "sched.wait_cycles", "sched.slices", "aborts",
               "illegal_accesses", "mem.bytes", "mem.stall_cycles", "first_touch.pages",
               "first_touch.cycles", "first_touch.wait_cycles", "s1.faults",
               "s1.fault_cycles", "s1.tables", "s1.data_bytes")
(E_CONFLICT, E_IN_WINDOW, E_LOCK_WAIT, E_DIRTY, E_TLBI_OPS, E_SPURIOUS, E_FAULT_CYCLES,
 E_ALLOC, E_FREED, E_CMO, E_RB_BLOCKS, E_RB_WINDOW, E_ENOMEM, E_SCHED_WAIT,
 E_SCHED_SLICES, E_ABORTS, E_ILLEGAL, E_MEM_BYTES, E_MEM_STALL, E_TOUCH, E_TOUCH_CYCLES,
 E_TOUCH_WAIT, E_S1_FAULTS, E_S1_CYCLES, E_S1_TABLES, E_S1_BYTES) = range(26)
N_EXTRA = 26

# ---- globals ---------------------------------------------------------------------------
(G_NWIN, G_TLBI_ENTRIES, G_DONE_ACC, G_PENDING, G_ERR, G_ERR_CTX, G_ERR_IPA, G_CALL,
 G_CALL_CTX, G_MEM_FREE, G_S1_FLUSHES, G_S1_ENTRIES) = range(4, 16)
# G_MEM_FREE: the memory system is busy until then; G_S1_FLUSHES, G_S1_ENTRIES: stage-2
# invalidations that emptied a two-stage VMID's combined entries, and the entries removed
N_GLOBALS = 16

# return codes of advance()
RET_IDLE = 0  # no context has an event
RET_HORIZON = 1  # the next event is at or after the horizon
RET_CALL = 2  # a call-out: G_CALL says what, G_CALL_CTX for whom
RET_SIGNAL = 3  # signals for Python's agents (sched.SIG_*)
RET_ERROR = 4  # G_ERR says which

# call-outs: work Python owns, done while the context waits at one instant
CALL_REFILL = 1  # the context needs its next chunk of accesses
CALL_GROW = 2  # page-table memory needs room before the next step
CALL_RMAP_GROW = 3  # the reverse map needs room before rmap_add() (simulator.hyp.page_rmap)
CALL_DONATE_ALLOC = 4  # find host memory for the guest's missing chunk at S_IPA: sets S_OPC
CALL_DONATE = 5  # donate (or share) it under the host lock: sets S_OPC
CALL_S1_GROW = 6  # the guest's stage-1 table rows need room before its fault handler runs

# errors
ERR_OUTSIDE = 1  # an access outside guest memory
ERR_STUCK = 2  # the same access keeps faulting
ERR_WARN = 3  # page-table refcount inconsistency
ERR_ENOMEM = 4  # no page-table memory, repeatedly
ERR_HYP_BUG = 5  # a hyp pool BUG()ged (G_ERR_IPA: the pool, p << 8 | BUG_*)
ERR_HOST_ENOMEM = 6  # the host stage-2 is out of memory even after recycling MMIO
ERR_GUEST_OOM = 7  # the guest's stage-1 fault handler found no guest memory left
ERR_VA_RANGE = 8  # an access beyond the guest stage-1's VA size

GROW_MARGIN = 64  # free table pages guaranteed before every step (a fault needs at most 4)

__all__ = [name for name in dir() if name.isupper()] + ["G_HEAPN", "G_NOW", "G_NSIG",
                                                         "G_SEQ", "Mem", "Model", "Sched",
                                                         "Streams", "Tlbs", "Work"]
