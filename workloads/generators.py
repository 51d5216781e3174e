"""Synthetic access generators: numpy code that yields (addr, kind) pieces chunk by chunk.

All randomness comes from numpy ``Generator(PCG64)`` objects handed in by the caller (see
``workloads.spec`` for how they are seeded). Each generator serves one purpose (addresses, page
offsets, write flags) and is only ever asked for ``random(n)`` doubles or ``integers(..., dtype=
uint64)``, which consume the bit stream the same way whatever ``n`` is: the accesses produced do
not depend on the chunk size.

Nothing here loops in Python per access; loops are per chunk or per bit of a chunk index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from .stream import READ, WRITE, Chunk

__all__ = [
    "FeistelPermutation",
    "zipf_ranks",
    "lattice_positions",
    "stride_chunks",
    "uniform_chunks",
    "zipf_chunks",
    "write_kinds",
]

_U64 = np.uint64
_MAX_SPAN = 1 << 62  # footprints above this would risk uint64 overflow in the modular arithmetic


def write_kinds(rng: np.random.Generator | None, n: int, write_ratio: float) -> np.ndarray:
    """Return uint8[n] kinds: WRITE with probability ``write_ratio``, else READ.

    rng: the generator reserved for write flags (unused when write_ratio is 0 or 1).
    n: number of accesses.
    write_ratio: probability in [0, 1] that an access is a write.
    """
    if write_ratio <= 0.0:
        return np.full(n, READ, dtype=np.uint8)
    if write_ratio >= 1.0:
        return np.full(n, WRITE, dtype=np.uint8)
    assert rng is not None
    return (rng.random(n) < write_ratio).astype(np.uint8)  # True -> 1 == WRITE


def lattice_positions(i0: int, n: int, offset: int, stride: int, span: int) -> np.ndarray:
    """Return uint64[n]: ``(offset + (i0 + j) * stride) mod span`` for j = 0 .. n-1, exactly.

    i0: index of the first access of the chunk.
    n: number of accesses in the chunk.
    offset: starting offset inside the span (any int >= 0).
    stride: distance between consecutive accesses in bytes (any int >= 0).
    span: the wrap-around length (the footprint), 1 <= span <= 2**62.

    The chunk's first position is computed with Python ints; inside the chunk the products
    j * stride are done in uint64 when they cannot overflow, otherwise bit by bit of j (one
    vector pass per bit) so the result is exact for every stride and footprint.
    """
    s = stride % span
    b = (offset + i0 * s) % span
    last = b + (n - 1) * s
    j = np.arange(n, dtype=_U64)
    if last < span:  # no wrap inside this chunk: the common sequential case
        return j * _U64(s) + _U64(b)
    if last < (1 << 64):
        return (j * _U64(s) + _U64(b)) % _U64(span)
    res = np.full(n, b, dtype=_U64)
    term = s  # s * 2**k mod span
    f = _U64(span)
    for k in range(max(n - 1, 1).bit_length()):
        sel = ((j >> _U64(k)) & _U64(1)).astype(bool)
        r = res[sel] + _U64(term)  # both < span <= 2**62: no overflow
        r[r >= f] -= f
        res[sel] = r
        term = (term * 2) % span
    return res


def stride_chunks(accesses: int, start: int, stride: int, span: int, offset: int, chunk: int,
                  write_ratio: float, rng_w: np.random.Generator | None) -> Iterator[Chunk]:
    """Yield the accesses ``start + (offset + i * stride) mod span`` for i < accesses.

    accesses: total number of accesses.
    start: base address of the region.
    stride: bytes between consecutive accesses.
    span: size of the wrapped region [start, start + span).
    offset: where in the region this vCPU begins (bytes, < span).
    chunk: accesses per yielded piece.
    write_ratio, rng_w: see ``write_kinds``.
    """
    for i0 in range(0, accesses, chunk):
        n = min(chunk, accesses - i0)
        addr = lattice_positions(i0, n, offset, stride, span)
        if start:
            addr += _U64(start)
        yield addr, write_kinds(rng_w, n, write_ratio)


def uniform_chunks(accesses: int, span: int, align: int, chunk: int, write_ratio: float,
                   rng_a: np.random.Generator, rng_w: np.random.Generator | None
                   ) -> Iterator[Chunk]:
    """Yield addresses uniform over the multiples of ``align`` in [0, span).

    accesses: total number of accesses.
    span: the footprint in bytes (>= align).
    align: address alignment in bytes (>= 1).
    chunk: accesses per yielded piece.
    rng_a: generator for addresses; write_ratio, rng_w: see ``write_kinds``.
    """
    slots = span // align
    for i0 in range(0, accesses, chunk):
        n = min(chunk, accesses - i0)
        addr = rng_a.integers(0, slots, size=n, dtype=_U64)
        if align != 1:
            addr *= _U64(align)
        yield addr, write_kinds(rng_w, n, write_ratio)


def zipf_ranks(u: np.ndarray, n_items: int, alpha: float) -> np.ndarray:
    """Map uniform draws to zipf-like ranks in [0, n_items) (0 = most popular), in O(1) memory.

    u: float64 array of draws in [0, 1).
    n_items: number of ranked items P (>= 1).
    alpha: skew (> 0).

    Inverse CDF of the continuous Pareto law x^-alpha bounded to [1, P), then floor - 1:
      alpha == 1:  rank = floor(exp(u ln P)) - 1
      otherwise:   rank = floor(((P^(1-a) - 1) u + 1)^(1/(1-a))) - 1
    The second form is evaluated as exp(log1p(u expm1((1-a) ln P)) / (1-a)) so it stays
    accurate for alpha close to 1. Ranks are clipped to [0, P-1] against rounding.
    """
    if n_items <= 1:
        return np.zeros(len(u), dtype=np.int64)
    lnp = math.log(n_items)
    if alpha == 1.0:
        x = np.exp(u * lnp)
    else:
        s = 1.0 - alpha
        x = np.exp(np.log1p(u * math.expm1(s * lnp)) / s)
    rank = np.floor(x).astype(np.int64) - 1
    np.clip(rank, 0, n_items - 1, out=rank)
    return rank


class FeistelPermutation:
    """A seeded bijection of [0, n) evaluated on arrays, without materialising n values.

    A balanced Feistel network of 4 rounds permutes [0, 2**b), b the smallest even bit count
    with 2**b >= n; each round is ``L, R = R, L ^ (mix64(R ^ key_i) & mask)`` with mix64 the
    SplitMix64 finaliser and 4 keys drawn from ``seed``. Values landing in [n, 2**b) are sent
    through the network again ("cycle walking") until they fall in [0, n); since 2**b < 4n,
    fewer than 4 passes are expected. The result is a bijection of [0, n) that looks random,
    unlike affine maps (a*x + b mod n) which would spread consecutive ranks on a regular stride.
    """

    ROUNDS = 4

    def __init__(self, n: int, seed: np.random.SeedSequence | int) -> None:
        """n: size of the domain (>= 1). seed: a SeedSequence or int deciding the permutation."""
        if n < 1:
            raise ValueError(f"permutation size must be >= 1, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits & 1
        self._half = _U64(bits // 2)
        self._mask = _U64((1 << (bits // 2)) - 1)
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        self._keys = [_U64(k) for k in ss.generate_state(self.ROUNDS, dtype=np.uint64)]

    def _network(self, x: np.ndarray) -> np.ndarray:
        left = x >> self._half
        right = x & self._mask
        for k in self._keys:
            z = right ^ k
            z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
            z ^= z >> _U64(31)
            left, right = right, left ^ (z & self._mask)
        return (left << self._half) | right

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Return the images of ``x`` (integers in [0, n)) as a new uint64 array."""
        x = np.asarray(x, dtype=_U64)
        if self.n == 1:
            return np.zeros(x.shape, dtype=_U64)
        y = self._network(x)
        n = _U64(self.n)
        idx = np.flatnonzero(y >= n)
        while idx.size:
            z = self._network(y[idx])
            y[idx] = z
            idx = idx[z >= n]
        return y


def zipf_chunks(accesses: int, alpha: float, n_pages: int, page_size: int,
                perm: FeistelPermutation, chunk: int, write_ratio: float,
                rng_a: np.random.Generator, rng_o: np.random.Generator,
                rng_w: np.random.Generator | None) -> Iterator[Chunk]:
    """Yield zipf-distributed page accesses: page = perm(rank), addr = page*page_size + offset.

    accesses: total number of accesses.
    alpha: zipf skew (> 0); n_pages: number of pages P; page_size: bytes per page (>= 8).
    perm: bijection of [0, P) mapping popularity rank to page number.
    chunk: accesses per yielded piece.
    rng_a: generator for ranks; rng_o: generator for 8-byte aligned offsets inside the page.
    write_ratio, rng_w: see ``write_kinds``.
    """
    slots = page_size // 8
    for i0 in range(0, accesses, chunk):
        n = min(chunk, accesses - i0)
        rank = zipf_ranks(rng_a.random(n), n_pages, alpha)
        page = perm(rank.astype(_U64))
        off = rng_o.integers(0, slots, size=n, dtype=_U64)
        addr = page * _U64(page_size) + off * _U64(8)
        yield addr, write_kinds(rng_w, n, write_ratio)


def check_span(span: int) -> None:
    """Raise ValueError if a footprint is too large for exact uint64 modular arithmetic."""
    if span > _MAX_SPAN:
        raise ValueError(f"footprint {span} exceeds 2**62 bytes")
