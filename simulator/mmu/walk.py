"""The hardware stage-2 translation walk and its walk cache (partial-translation caches).

The walk reads one descriptor per level from the page-table rows, starting at the pgd page
that the IPA selects among the concatenated top-level tables. Each read is a memory
reference. A valid table descriptor leads to the next level; a valid block or page is the
leaf; anything else is a translation fault at that level (an entry locked for
break-before-make is invalid, so it faults too). A leaf without AF is an access-flag fault.

Walk cache: for each level that holds table descriptors, a small fully associative LRU
cache of (VMID, IPA >> granule_shift(level)) -> next table row. The walk starts below the
deepest level that hits, skipping the memory references of the levels above it.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from simulator._jit import jit

U = np.uint64

# walk status
W_OK = 0
W_TRANSLATION = 1
W_ACCESS_FLAG = 2
W_PERMISSION = 3  # reported by the batch kernel after a permission check
W_CONFLICT = 4  # TLB conflict abort: a lookup matched entries of two sizes (batch kernel)

# walk output slots
WO_STATUS = 0
WO_LEVEL = 1
WO_PTE = 2
WO_REFS = 3
WO_WC_HIT = 4  # deepest walk-cache level hit, -1 none
WO_SIZE = 5


@jit(inline="always")
def wc_lookup(level, vmid, ipa, page_shift, wc_tag, wc_row, wc_stamp, now):
    """Walk-cache probe at ``level``: the next-level table row for ``ipa``, or -1."""
    n = wc_tag.shape[1]
    if n == 0:
        return -1
    shift = (page_shift - 3) * (4 - level) + 3
    tag = ((U(vmid) << U(48)) | (U(ipa) >> U(shift))) + U(1)
    for i in range(n):
        if wc_tag[level, i] == tag:
            wc_stamp[level, i] = now
            return wc_row[level, i]
    return -1


@jit(inline="always")
def wc_fill(level, vmid, ipa, page_shift, row, wc_tag, wc_row, wc_stamp, now):
    """Insert (level, ipa) -> row; the victim is the first empty slot, else the LRU one."""
    n = wc_tag.shape[1]
    if n == 0:
        return
    shift = (page_shift - 3) * (4 - level) + 3
    tag = ((U(vmid) << U(48)) | (U(ipa) >> U(shift))) + U(1)
    victim = 0
    for i in range(n):
        if wc_tag[level, i] == U(0):
            victim = i
            break
        if wc_stamp[level, i] < wc_stamp[level, victim]:
            victim = i
    wc_tag[level, victim] = tag
    wc_row[level, victim] = row
    wc_stamp[level, victim] = now


@jit
def wc_invalidate(vmid, lo, hi, page_shift, wc_tag):
    """Remove walk-cache entries of ``vmid`` (all VMIDs if < 0) covering any address of
    [lo, hi) (hi == 0: everything). Returns the number removed."""
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


@jit
def hw_walk(ipa, vmid, tables, base_pa, page_shift, root_row, start_level, ia_bits, wc_tag,
            wc_row, wc_stamp, now, out):
    """Translate ``ipa`` through the stage-2 rooted at ``root_row``: :func:`walk`.

    tables, base_pa, page_shift: page-table memory (row r is at base_pa + r << page_shift).
    root_row, start_level, ia_bits: the stage-2's pgd, start level and IPA size.
    wc_tag, wc_row, wc_stamp: walk cache ([4, n] arrays, n may be 0); now: LRU clock.
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
    """Per-level partial-translation caches of one vCPU (``entries`` slots per level)."""

    def __init__(self, entries_per_level: int):
        n = int(entries_per_level)
        self.tag = np.zeros((4, n), dtype=np.uint64)
        self.row = np.zeros((4, n), dtype=np.int64)
        self.stamp = np.zeros((4, n), dtype=np.int64)

    @property
    def entries_per_level(self) -> int:
        return self.tag.shape[1]

    def invalidate(self, vmid: int, lo: int, hi: int, page_shift: int) -> int:
        return int(wc_invalidate(vmid, U(lo), U(hi), page_shift, self.tag))

    def flush(self) -> None:
        self.tag[:] = 0
