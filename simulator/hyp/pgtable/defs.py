"""The stage-2 operations' vocabulary: operations, walk flags, errno, report slots, the
TLBI log, the page-table memory's meta slots, per-stage-2 statistics."""

from __future__ import annotations

import numpy as np

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
R_PUTS = 19  # references dropped on table pages (put_page())
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
