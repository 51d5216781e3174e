"""The hardware stage-2 translation walk and its walk cache (partial-translation caches).

The walk reads one descriptor per level from the page-table rows, starting at the pgd page
that the IPA selects among the concatenated top-level tables. Each read is a memory
reference. A valid table descriptor leads to the next level; a valid block or page is the
leaf; anything else is a translation fault at that level (an entry locked for
break-before-make is invalid, so it faults too). A leaf without AF is an access-flag fault.

Walk cache: for each level that holds table descriptors, a small fully associative LRU
cache of (VMID, IPA >> granule_shift(level)) -> next table row. The walk starts below the
deepest level that hits, skipping the memory references of the levels above it. Rows 0..3
cache stage-2 levels, rows 4..7 the stage-1 levels of a nested walk
(:func:`nested_walk`).

The nested walk (a guest with a stage-1): a VA is translated by the guest's stage-1 tables,
whose descriptors hold IPAs: before each stage-1 table is read its IPA goes through a
stage-2 walk (a fault there is a stage-2 fault on a stage-1 walk, S1PTW), and the leaf's
output IPA goes through one more. With n1 stage-1 and n2 stage-2 levels and no walk cache
that is (n1 + 1) * n2 + n1 memory references (24 for 4 + 4). A stage-1 walk-cache hit gives
the next stage-1 table's row with its stage-2 translation (the cached address is physical),
so neither the levels above nor their stage-2 walks are repeated.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from simulator._jit import jit
from simulator.mmu.tlb import (
    PERM_LEVEL_SHIFT,
    PERM_R,
    PERM_W,
    PERM_X,
    s2c_fill,
    s2c_probe,
)

U = np.uint64

# walk status
W_OK = 0
W_TRANSLATION = 1
W_ACCESS_FLAG = 2
W_PERMISSION = 3  # reported by the batch kernel after a permission check
W_CONFLICT = 4  # TLB conflict abort: a lookup matched entries of two sizes (batch kernel)

# a permission bit of no access class: the translation came from an nT block, which no TLB
# may cache
PERM_NOCACHE = 1 << 7

# rows of the walk cache: 0..3 stage-2 levels, S1_WC_ROW + level for stage-1 levels
S1_WC_ROW = 4
N_WC_ROWS = 8

# a stage-1 regime's parameters (int64 slots of ``s1p``; the guest OS keeps its own state
# after them, simulator.guest.stage1)
S1_PS = 0  # the stage-1 granule's page shift
S1_START = 1  # start level
S1_VA_BITS = 2  # VA size
S1_ROOT = 3  # the IPA of the top-level table (TTBR0_EL1)
S1_TOP = 4  # table row r is the guest page at IPA S1_TOP - (r << S1_PS)
S1_CONT3 = 5  # log2 of the pages in a contiguous run (CONT_PTES)
S1_CONT2 = 6  # log2 of the level-2 blocks in a contiguous run (CONT_PMDS)
N_S1_WALK = 7

# walk output slots
WO_STATUS = 0
WO_LEVEL = 1
WO_PTE = 2
WO_REFS = 3
WO_WC_HIT = 4  # deepest walk-cache level hit, -1 none
WO_SIZE = 5


@jit(inline="always")
def wc_lookup_at(row, shift, vmid, addr, wc_tag, wc_row, wc_stamp, now):
    """Probe walk-cache row ``row`` for the region of ``addr`` of 2**shift bytes: the next
    table row, or -1."""
    n = wc_tag.shape[1]
    if n == 0:
        return -1
    tag = ((U(vmid) << U(48)) | (U(addr) >> U(shift))) + U(1)
    for i in range(n):
        if wc_tag[row, i] == tag:
            wc_stamp[row, i] = now
            return wc_row[row, i]
    return -1


@jit(inline="always")
def wc_fill_at(row, shift, vmid, addr, nxt, wc_tag, wc_row, wc_stamp, now):
    """Insert (row, region of addr) -> nxt; the victim is the first empty slot, else the
    LRU one."""
    n = wc_tag.shape[1]
    if n == 0:
        return
    tag = ((U(vmid) << U(48)) | (U(addr) >> U(shift))) + U(1)
    victim = 0
    for i in range(n):
        if wc_tag[row, i] == U(0):
            victim = i
            break
        if wc_stamp[row, i] < wc_stamp[row, victim]:
            victim = i
    wc_tag[row, victim] = tag
    wc_row[row, victim] = nxt
    wc_stamp[row, victim] = now


@jit(inline="always")
def wc_lookup(level, vmid, ipa, page_shift, wc_tag, wc_row, wc_stamp, now):
    """Stage-2 walk-cache probe at ``level`` (row ``level``): the next-level table row for
    ``ipa``, or -1."""
    return wc_lookup_at(level, (page_shift - 3) * (4 - level) + 3, vmid, ipa, wc_tag, wc_row,
                        wc_stamp, now)


@jit(inline="always")
def wc_fill(level, vmid, ipa, page_shift, row, wc_tag, wc_row, wc_stamp, now):
    """Insert (level, ipa) -> row into the stage-2 walk cache."""
    wc_fill_at(level, (page_shift - 3) * (4 - level) + 3, vmid, ipa, row, wc_tag, wc_row,
               wc_stamp, now)


@jit
def wc_flush_s1(vmid, wc_tag):
    """Remove the stage-1 walk-cache entries (rows 4..7) of ``vmid``: TLBI VMALLE1 drops
    them with the VMID's combined TLB entries. Returns the number removed."""
    removed = 0
    for row in range(S1_WC_ROW, S1_WC_ROW + 4):
        for i in range(wc_tag.shape[1]):
            t = wc_tag[row, i]
            if t != U(0) and ((t - U(1)) >> U(48)) == U(vmid):
                wc_tag[row, i] = U(0)
                removed += 1
    return removed


@jit
def wc_invalidate(vmid, lo, hi, page_shift, wc_tag):
    """Remove stage-2 walk-cache entries of ``vmid`` (all VMIDs if < 0) covering any
    address of [lo, hi) (hi == 0: everything). Returns the number removed."""
    removed = 0
    for level in range(4):
        shift = (page_shift - 3) * (4 - level) + 3
        for i in range(wc_tag.shape[1]):
            t = wc_tag[level, i]
            if t == U(0):
                continue
            t = t - U(1)
            if vmid >= 0 and (t >> U(48)) != U(vmid):
                continue
            if hi != 0:
                region = t & U(0xFFFFFFFFFFFF)
                if region < (U(lo) >> U(shift)) or region > ((U(hi) - U(1)) >> U(shift)):
                    continue
            wc_tag[level, i] = U(0)
            removed += 1
    return removed


@jit(inline="always")
def walk(ipa, vmid, tables, base_pa, page_shift, root_row, start_level, ia_bits, wc_tag,
         wc_row, wc_stamp, now):
    """Translate ``ipa`` through the stage-2 rooted at ``root_row`` (arguments as
    :func:`hw_walk`). Returns (status W_*, level, descriptor, memory references, the
    walk-cache level that hit or -1, the leaf's size shift or 0).

    This is the walk run_batch() runs (inlined there: numba IR, no call) and hw_walk()
    exposes."""
    ipa = U(ipa)
    mask = U((1 << (page_shift - 3)) - 1)
    oa_mask = U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(page_shift)) - U(1))
    use_wc = wc_tag.shape[1] > 0
    refs = 0
    hit = -1
    status = W_TRANSLATION
    level = start_level
    pte = U(0)
    leaf_shift = 0
    if (ipa >> U(ia_bits)) == U(0):
        row = root_row + np.int64(ipa >> U((page_shift - 3) * (5 - start_level) + 3))
        if use_wc:
            # the deepest walk-cache hit lets the walk start further down
            for lv in range(2, start_level - 1, -1):
                r = wc_lookup(lv, vmid, ipa, page_shift, wc_tag, wc_row, wc_stamp, now)
                if r >= 0:
                    row = r
                    level = lv + 1
                    hit = lv
                    break
        while True:
            shift = (page_shift - 3) * (4 - level) + 3
            pte = tables[U(row), (ipa >> U(shift)) & mask]
            refs += 1
            if (pte & U(1)) == U(0):
                break
            if level < 3 and (pte & U(2)) != U(0):
                pa = pte & oa_mask
                if page_shift == 16:
                    pa |= (pte & U(0xF000)) << U(36)
                nxt = np.int64((pa - U(base_pa)) >> U(page_shift))
                if use_wc:
                    wc_fill(level, vmid, ipa, page_shift, nxt, wc_tag, wc_row, wc_stamp, now)
                row = nxt
                level += 1
                continue
            if level == 3 and (pte & U(2)) == U(0):
                break  # reserved encoding
            if level < (1 if page_shift == 12 else 2):
                break  # no block at this level
            leaf_shift = shift
            status = W_OK if (pte & U(1 << 10)) != U(0) else W_ACCESS_FLAG
            break
    return status, level, pte, refs, hit, leaf_shift


@jit(inline="always")
def leaf_output(pte, level, shift, page_shift):
    """A stage-2 leaf's translation: its output address (bits below the block size, nT
    included, are not OA; 64K: PA[51:48] in bits 15:12) and its permissions (PERM_* |
    level << PERM_LEVEL_SHIFT, and PERM_NOCACHE for an nT block, which no TLB may cache)."""
    pa = pte & U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(shift)) - U(1))
    if page_shift == 16:
        pa |= (pte & U(0xF000)) << U(36)
    perm = level << PERM_LEVEL_SHIFT
    if (pte & U(1 << 6)) != U(0):
        perm |= PERM_R
    if (pte & U(1 << 7)) != U(0):
        perm |= PERM_W
    if (pte & U(1 << 54)) == U(0):
        perm |= PERM_X
    if level < 3 and (pte & U(1 << 16)) != U(0):
        perm |= PERM_NOCACHE
    return pa, perm


@jit(inline="always")
def s1_read(d, page_shift):
    """The output address (an IPA) of stage-1 descriptor ``d`` (64K: IPA[51:48] in bits
    15:12)."""
    a = d & U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(page_shift)) - U(1))
    if page_shift == 16:
        a |= (d & U(0xF000)) << U(36)
    return a


@jit
def nested_walk(va, vmid, tables, base_pa, page_shift, root_row, start_level, ia_bits,
                wc_tag, wc_row, wc_stamp, now, s1t, s1p, key, stamp, tpa, tperm, off, sets,
                ways, lat, s2sizes):
    """Translate ``va`` through the guest's stage-1 (``s1t``: its table pages as rows,
    ``s1p``: S1_*) and the stage-2 (arguments as :func:`walk`), each stage-1 table's IPA
    and the output IPA through stage-2: from a cached stage-2 entry when a TLB level holds
    one of its size (``key`` .. ``s2sizes``: the TLB, tlb.s2c_probe), else by a walk, whose
    leaf is then cached where a level holds that size.

    Returns (status W_*, stage (1: the guest's stage-1, 2: KVM's stage-2), level, descriptor,
    stage-1 references, stage-2 references, walk-cache hits, the stage-1 walk-cache level
    that hit or -1, the combined entry's size shift, its output address, the IPA (the
    faulting one for a stage-2 fault), whether a stage-2 fault was on a stage-1 walk, the
    combined permissions (PERM_* | stage-2 leaf level << 4, never-cache flag in bit 7 for
    an nT block), stage-2 cache hits, the cycles of the stage-2 cache probes).
    The combined entry is as large as the smaller of the two leaves, the stage-1 leaf
    counting as its whole contiguous run when it has the contiguous bit.

    ``now`` stamps walk-cache and stage-2 cache entries; each stage-2 translation of the
    access advances it by one (the caller spaces accesses' stamps by 16: at most 5 stage-2
    translations per access).

    Called, not inlined, by run_batch (only after a TLB miss): one copy of the nested walk,
    with one copy of the stage-2 walk inlined, keeps the engine's compile time down."""
    va = U(va)
    ps1 = s1p[S1_PS]
    mask1 = U((1 << (ps1 - 3)) - 1)
    sl1 = s1p[S1_START]
    vtag = U(vmid) << U(46)
    use_s2c = False
    for lv in range(s2sizes.shape[0]):
        if s2sizes[lv] != 0:
            use_s2c = True
    refs1 = 0
    refs2 = 0
    hits = 0
    s1hit = -1
    s2hits = 0
    s2cyc = 0
    d = U(0)
    if (va >> U(s1p[S1_VA_BITS])) != U(0):
        return (W_TRANSLATION, 1, sl1, d, refs1, refs2, hits, s1hit, 0, U(0), U(0), False, 0,
                s2hits, s2cyc)
    level = sl1
    target = U(s1p[S1_ROOT])  # the IPA stage-2 translates next
    row = np.int64((U(s1p[S1_TOP]) - target) >> U(ps1))
    translate = True
    if wc_tag.shape[1] > 0:
        for lv in range(2, sl1 - 1, -1):
            r = wc_lookup_at(S1_WC_ROW + lv, (ps1 - 3) * (4 - lv) + 3, vmid, va, wc_tag,
                             wc_row, wc_stamp, now)
            if r >= 0:
                row = r
                level = lv + 1
                s1hit = lv
                hits += 1
                translate = False
                break
    shift = 0
    eff1 = 0
    leaf = False
    pend = -1  # a stage-1 walk-cache fill waiting for its table's stage-2 translation
    pend_shift = 0
    while True:
        if translate:
            # a stage-1 table's IPA (S1PTW) or, after the leaf, the output IPA
            e2 = -1
            if use_s2c:
                c2, e2 = s2c_probe(target, vtag, key, stamp, tpa, tperm, off, sets, ways, lat,
                                   s2sizes, now)
                s2cyc += c2
            if e2 >= 0:
                s2hits += 1
                sh2 = np.int64((key[U(e2)] >> U(40)) & U(63))
                leaf_pa = tpa[U(e2)]
                perm2 = np.int64(tperm[U(e2)])
                l2 = perm2 >> PERM_LEVEL_SHIFT
                p2 = U(0)
            else:
                st2, l2, p2, r2, h2, sh2 = walk(target, vmid, tables, base_pa, page_shift,
                                                root_row, start_level, ia_bits, wc_tag, wc_row,
                                                wc_stamp, now)
                refs2 += r2
                if h2 >= 0:
                    hits += 1
                if st2 != W_OK:
                    return (st2, 2, l2, p2, refs1, refs2, hits, s1hit, 0, U(0), target,
                            not leaf, 0, s2hits, s2cyc)
                leaf_pa, perm2 = leaf_output(p2, l2, sh2, page_shift)
                if use_s2c and (perm2 & PERM_NOCACHE) == 0:
                    s2c_fill(target, vtag, sh2, leaf_pa, perm2, key, stamp, tpa, tperm, off,
                             sets, ways, s2sizes, now)
            if pend >= 0:
                # the next table's physical address is known now: cache it
                wc_fill_at(S1_WC_ROW + pend, pend_shift, vmid, va, row, wc_tag, wc_row,
                           wc_stamp, now)
                pend = -1
            now += 1  # LRU order follows the stage-2 translations of one access
            if leaf:
                comb = eff1 if eff1 < sh2 else sh2
                pa = (leaf_pa | (target & ((U(1) << U(sh2)) - U(1)))) \
                    & ~((U(1) << U(comb)) - U(1))
                return (W_OK, 2, l2, p2, refs1, refs2, hits, s1hit, comb, pa, target, False,
                        perm2, s2hits, s2cyc)
        translate = True
        shift = (ps1 - 3) * (4 - level) + 3
        d = s1t[U(row), (va >> U(shift)) & mask1]
        refs1 += 1
        if (d & U(1)) == U(0):
            return (W_TRANSLATION, 1, level, d, refs1, refs2, hits, s1hit, 0, U(0), U(0), False,
                    0, s2hits, s2cyc)
        if level < 3 and (d & U(2)) != U(0):
            target = s1_read(d, ps1)
            row = np.int64((U(s1p[S1_TOP]) - target) >> U(ps1))
            pend = level
            pend_shift = shift
            level += 1
            continue
        if (level == 3 and (d & U(2)) == U(0)) or level < (1 if ps1 == 12 else 2):
            # a reserved encoding, or a block where none may be
            return (W_TRANSLATION, 1, level, d, refs1, refs2, hits, s1hit, 0, U(0), U(0), False,
                    0, s2hits, s2cyc)
        if (d & U(1 << 10)) == U(0):
            return (W_ACCESS_FLAG, 1, level, d, refs1, refs2, hits, s1hit, 0, U(0), U(0), False,
                    0, s2hits, s2cyc)
        size1 = U(1) << U(shift)
        target = (s1_read(d, ps1) & ~(size1 - U(1))) | (va & (size1 - U(1)))
        eff1 = shift
        if (d & U(1 << 52)) != U(0):
            eff1 += s1p[S1_CONT3] if level == 3 else s1p[S1_CONT2]
        leaf = True


@jit
def s1_ipa_of(va, s1t, s1p):
    """The IPA stage-1 maps ``va`` to (0 when it maps none), read straight from the guest's
    tables: the address a stage-2 fault reports (HPFAR_EL2) when the access hit a combined
    TLB entry. Not a walk: nothing counted, no walk cache."""
    va = U(va)
    ps1 = s1p[S1_PS]
    mask1 = U((1 << (ps1 - 3)) - 1)
    level = s1p[S1_START]
    row = np.int64((U(s1p[S1_TOP]) - U(s1p[S1_ROOT])) >> U(ps1))
    while True:
        shift = (ps1 - 3) * (4 - level) + 3
        d = s1t[U(row), (va >> U(shift)) & mask1]
        if (d & U(1)) == U(0):
            return U(0)
        if level < 3 and (d & U(2)) != U(0):
            row = np.int64((U(s1p[S1_TOP]) - s1_read(d, ps1)) >> U(ps1))
            level += 1
            continue
        size = U(1) << U(shift)
        return (s1_read(d, ps1) & ~(size - U(1))) | (va & (size - U(1)))


@jit
def hw_walk(ipa, vmid, tables, base_pa, page_shift, root_row, start_level, ia_bits, wc_tag,
            wc_row, wc_stamp, now, out):
    """Translate ``ipa`` through the stage-2 rooted at ``root_row``: :func:`walk`.

    tables, base_pa, page_shift: page-table memory (row r is at base_pa + r << page_shift).
    root_row, start_level, ia_bits: the stage-2's pgd, start level and IPA size.
    wc_tag, wc_row, wc_stamp: walk cache ([8, n] arrays, n may be 0); now: LRU clock.
    out: int64[6] receives status (W_*), level, descriptor, memory references, the
    walk-cache level that hit (-1 none) and, for a leaf, its size shift.
    """
    status, level, pte, refs, hit, leaf_shift = walk(
        ipa, vmid, tables, base_pa, page_shift, root_row, start_level, ia_bits, wc_tag, wc_row,
        wc_stamp, now)
    if status != W_TRANSLATION:
        out[WO_SIZE] = leaf_shift
    out[WO_STATUS] = status
    out[WO_LEVEL] = level
    out[WO_PTE] = np.int64(pte)
    out[WO_REFS] = refs
    out[WO_WC_HIT] = hit
    return status


if numba.config.DISABLE_JIT:
    def prefetch_entry(tables, row, idx):
        """Pure Python: nothing to prefetch."""
else:
    @intrinsic
    def prefetch_entry(typingctx, tables, row, idx):
        """Prefetch the cache line of ``tables[row, idx]`` (LLVM's prefetch: no load, no
        fault, no result)."""
        sig = types.void(tables, row, idx)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            index = [context.cast(builder, args[1], signature.args[1], types.intp),
                     context.cast(builder, args[2], signature.args[2], types.intp)]
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, index,
                                           wraparound=False)
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            # read, high temporal locality, data cache
            builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen


@jit(inline="always")
def walk_prefetch(ipa, tables, base_pa, page_shift, root_row, start_level, ia_bits):
    """Prefetch the last-level descriptor a walk of ``ipa`` would read: read the table
    descriptors above it as walk() does (no memory references counted, no walk cache) and
    prefetch the line of the entry the last table descriptor leads to. Stops at anything
    that is not a valid table descriptor. Changes nothing that is simulated: it only lets
    the host's memory system fetch that line while other accesses are simulated."""
    ipa = U(ipa)
    if (ipa >> U(ia_bits)) != U(0):
        return
    mask = U((1 << (page_shift - 3)) - 1)
    oa_mask = U(0x0000FFFFFFFFFFFF) & ~((U(1) << U(page_shift)) - U(1))
    row = root_row + np.int64(ipa >> U((page_shift - 3) * (5 - start_level) + 3))
    level = start_level
    while level < 3:
        pte = tables[U(row), (ipa >> U((page_shift - 3) * (4 - level) + 3)) & mask]
        if (pte & U(3)) != U(3):
            return
        pa = pte & oa_mask
        if page_shift == 16:
            pa |= (pte & U(0xF000)) << U(36)
        row = np.int64((pa - U(base_pa)) >> U(page_shift))
        level += 1
    prefetch_entry(tables, U(row), (ipa >> U(page_shift)) & mask)


class WalkCache:
    """Per-level partial-translation caches of one vCPU (``entries`` slots per level; rows
    0..3 stage-2 levels, 4..7 stage-1 levels)."""

    def __init__(self, entries_per_level: int):
        n = int(entries_per_level)
        self.tag = np.zeros((N_WC_ROWS, n), dtype=np.uint64)
        self.row = np.zeros((N_WC_ROWS, n), dtype=np.int64)
        self.stamp = np.zeros((N_WC_ROWS, n), dtype=np.int64)

    @property
    def entries_per_level(self) -> int:
        return self.tag.shape[1]

    def invalidate(self, vmid: int, lo: int, hi: int, page_shift: int) -> int:
        return int(wc_invalidate(vmid, U(lo), U(hi), page_shift, self.tag))

    def flush(self) -> None:
        self.tag[:] = 0
