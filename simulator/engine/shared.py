"""What the CPUs share beyond the locks: the memory system's throughput
(``machine.mem_gbps``) and, for a guest whose memory is not populated, the host's first
touch of each backing page. Called by :func:`simulator.engine.loop.advance`."""

from __future__ import annotations

import numpy as np

from simulator._jit import jit
from simulator.engine.layout import (
    E_MEM_BYTES,
    E_MEM_STALL,
    E_TOUCH,
    E_TOUCH_CYCLES,
    E_TOUCH_WAIT,
    FP_BW,
    G_MEM_FREE,
    S_IPA,
    S_SLOT,
    V_TOUCH_COST,
    V_TOUCH_SHIFT,
)


@jit
def first_touch(c, v, now, vmt, slots, st, ec, tc, touch):
    """A guest whose memory the VMM did not populate: gfn_to_pfn() before the MMU lock
    allocates and zeroes the backing page (a base page, a THP or a hugetlb page) on its first
    fault; a vCPU that faults on it meanwhile waits until it is ready (the page lock, or
    hugetlb's fault mutex). Returns the cycles the context spends before the lock."""
    k = st[c, S_SLOT]
    i = slots[k, 2] + ((st[c, S_IPA] - slots[k, 0]) >> vmt[v, V_TOUCH_SHIFT])
    ready = touch[i]
    if ready < 0:
        touch[i] = now + vmt[v, V_TOUCH_COST]
        ec[c, E_TOUCH] += 1
        ec[c, E_TOUCH_CYCLES] += vmt[v, V_TOUCH_COST]
        tc[c, E_TOUCH] = 1
        tc[c, E_TOUCH_CYCLES] = 1
        return vmt[v, V_TOUCH_COST]
    if ready > now:
        ec[c, E_TOUCH_WAIT] += ready - now
        tc[c, E_TOUCH_WAIT] = 1
        return ready - now
    return 0


@jit
def memory(c, now, used, nbytes, fp, g, ec, tc):
    """The quantum's memory traffic through the memory system all CPUs share: one server of
    ``machine.mem_gbps``, taking quanta in the order they start (each one's bytes are
    served after those of the quanta that started before it). The quantum lasts until its
    bytes are served, when that is later than its own cycles. Returns its cycles."""
    if nbytes <= 0:
        return used
    start = now if g[G_MEM_FREE] < now else g[G_MEM_FREE]
    done = start + np.int64(np.ceil(nbytes / fp[FP_BW]))
    g[G_MEM_FREE] = done
    ec[c, E_MEM_BYTES] += nbytes
    tc[c, E_MEM_BYTES] = 1
    tc[c, E_MEM_STALL] = 1
    if done - now > used:
        ec[c, E_MEM_STALL] += done - now - used
        return done - now
    return used
