"""The compiled engine's event queue, locks and shared CPUs (numba kernels over int64 arrays).

*Event queue.* A binary heap of (time, sequence, context): events at one time run in the order
they were scheduled. Only CPU contexts have events here; SimPy holds the agents' events, and
at one simulated time every agent event runs before every CPU event (the engine advances the
CPUs up to, not including, the time of the next SimPy event).

*Locks.* FIFO reader/writer locks (``lk[lock]``: writer, readers, queue head, queue length,
acquisitions, contended; ``lq[lock]``: the queue as (who, write) pairs). An exclusive lock makes
every holder a writer (5.11's spinlock); otherwise readers share it and writers exclude
everyone (6.2's rwlock). A waiter is a CPU context (who >= 0, woken by a CPU event) or a
Python agent (who = -1 - agent), whose grant is reported to Python as a signal.

*Shared CPUs.* In pkvm a physical CPU runs the host task and guest vCPUs in turn: one context
holds it (``cs[cpu]``: holder, queue head, queue length; ``cq[cpu]``: the queue), the others
wait in FIFO order; a release hands it to the head of the queue at once.
"""

from __future__ import annotations

import numpy as np

from simulator._jit import jit

# lock fields
L_WRITER, L_READERS, L_QHEAD, L_QN, L_ACQ, L_CONT, L_EXCL = range(7)
N_LOCK_FIELDS = 8

# CPU slot fields
C_SHARED, C_HOLDER, C_QHEAD, C_QN = range(4)
N_CPU_FIELDS = 4

# globals the scheduler kernels use (the engine's other globals follow, see engine.loop)
G_HEAPN, G_SEQ, G_NOW, G_NSIG = range(4)

# signals to Python (``sig[i]`` = (kind, id))
SIG_AGENT_GRANT = 0  # a lock was granted to agent ``id``
SIG_DONE = 1  # context ``id`` has finished its stream


@jit
def push(ht, hs, hc, g, t, c):
    """Schedule context ``c`` at time ``t`` (after everything already scheduled at ``t``)."""
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
def pop(ht, hs, hc, g):
    """Remove the earliest event; returns its context."""
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
def signal(sig, g, kind, who):
    n = g[G_NSIG]
    sig[n, 0] = kind
    sig[n, 1] = who
    g[G_NSIG] = n + 1


@jit
def lock_try(lk, lq, lock, who, write):
    """Ask for ``lock``: True when granted at once; else ``who`` joins the queue."""
    w = 1 if (write != 0 or lk[lock, L_EXCL] != 0) else 0
    lk[lock, L_ACQ] += 1
    if lk[lock, L_QN] == 0 and lk[lock, L_WRITER] == 0 and (w == 0 or lk[lock, L_READERS] == 0):
        if w != 0:
            lk[lock, L_WRITER] = 1
        else:
            lk[lock, L_READERS] += 1
        return True
    lk[lock, L_CONT] += 1
    n = lq.shape[1]
    tail = (lk[lock, L_QHEAD] + lk[lock, L_QN]) % n
    lq[lock, tail, 0] = who
    lq[lock, tail, 1] = w
    lk[lock, L_QN] += 1
    return False


@jit
def lock_release(lk, lq, lock, write, now, ht, hs, hc, g, sig, st, s_state, st_granted, delay):
    """Release ``lock`` and grant the queue's head while it can be granted: a context is
    scheduled ``delay`` cycles from now (the lock's hand-off to its CPU) in state
    ``st_granted``, an agent is signalled."""
    if write != 0 or lk[lock, L_EXCL] != 0:
        lk[lock, L_WRITER] = 0
    else:
        lk[lock, L_READERS] -= 1
    n = lq.shape[1]
    while lk[lock, L_QN] > 0:
        h = lk[lock, L_QHEAD]
        who = lq[lock, h, 0]
        w = lq[lock, h, 1]
        if lk[lock, L_WRITER] != 0 or (w != 0 and lk[lock, L_READERS] != 0):
            break
        lk[lock, L_QHEAD] = (h + 1) % n
        lk[lock, L_QN] -= 1
        if w != 0:
            lk[lock, L_WRITER] = 1
        else:
            lk[lock, L_READERS] += 1
        if who >= 0:
            st[who, s_state] = st_granted
            push(ht, hs, hc, g, now + delay, who)
        else:
            signal(sig, g, SIG_AGENT_GRANT, -1 - who)


@jit
def cpu_try(cs, cq, cpu, c):
    """Context ``c`` asks for its CPU: True when it has it at once; else it queues."""
    if cs[cpu, C_HOLDER] < 0 and cs[cpu, C_QN] == 0:
        cs[cpu, C_HOLDER] = c
        return True
    n = cq.shape[1]
    cq[cpu, (cs[cpu, C_QHEAD] + cs[cpu, C_QN]) % n] = c
    cs[cpu, C_QN] += 1
    return False


@jit
def cpu_release(cs, cq, cpu, now, ht, hs, hc, g, st, s_state, st_granted):
    """The holder gives the CPU up: the head of the queue gets it now."""
    cs[cpu, C_HOLDER] = -1
    if cs[cpu, C_QN] > 0:
        h = cs[cpu, C_QHEAD]
        c = cq[cpu, h]
        cs[cpu, C_QHEAD] = (h + 1) % cq.shape[1]
        cs[cpu, C_QN] -= 1
        cs[cpu, C_HOLDER] = c
        st[c, s_state] = st_granted
        push(ht, hs, hc, g, now, c)


__all__ = ["push", "pop", "lock_try", "lock_release", "cpu_try", "cpu_release", "signal",
           "np"]
