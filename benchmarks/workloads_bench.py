"""The two throughput workloads of shared/bench/README.md, as cached ``.npy`` files of uint64
addresses (one access each, all reads).

* ``zipf``: page rank ``r = floor(exp(u * ln 2**20)) - 1`` with ``u`` uniform in [0, 1) (so
  ``P(r) ~ 1 / (r + 1)`` over 2**20 pages), rank ``r`` mapped to page ``perm[r]`` by a seeded
  permutation of 2**20, address ``page << 12 | 8 * k`` with ``k`` uniform in [0, 512).
  Three independent numpy ``PCG64`` streams: ``ZIPF_SEED_RANK`` (the ``u``),
  ``ZIPF_SEED_OFFSET`` (the offsets) and ``ZIPF_SEED_PERM`` (the permutation). Drawn in chunks
  of ``CHUNK`` accesses, so a shorter workload is exactly a prefix of a longer one.
* ``seq``: address ``i * 64`` (one 4 KiB page per 64 accesses; no randomness).

Files are written to ``benchmarks/data/`` (git-ignored) as ``<name>_<n>_v<FORMAT>.npy`` and
regenerated when missing or malformed. ``.npy`` version 1.0 (the C reference parses that header).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"

FORMAT = 1  # bump when the generator changes, so stale caches are not reused
PAGE_SHIFT = 12
ZIPF_PAGES = 1 << 20
ZIPF_SEED_RANK = 20240601
ZIPF_SEED_OFFSET = 20240602
ZIPF_SEED_PERM = 20240603
CHUNK = 1 << 22

WORKLOADS = ("zipf", "seq")


def gen_zipf(n: int) -> np.ndarray:
    """The zipf-like workload of ``n`` accesses (see the module docstring)."""
    perm = np.random.Generator(np.random.PCG64(ZIPF_SEED_PERM)).permutation(ZIPF_PAGES)
    perm = perm.astype(np.uint64)
    rng_u = np.random.Generator(np.random.PCG64(ZIPF_SEED_RANK))
    rng_off = np.random.Generator(np.random.PCG64(ZIPF_SEED_OFFSET))
    log_pages = math.log(ZIPF_PAGES)
    out = np.empty(n, dtype=np.uint64)
    for lo in range(0, n, CHUNK):
        m = min(CHUNK, n - lo)
        u = rng_u.random(m)
        u *= log_pages
        np.exp(u, out=u)
        rank = u.astype(np.int64)  # floor: u >= 1 here
        rank -= 1
        # exp(u ln 2^20) < 2^20 for u < 1 in exact arithmetic; guard the last ulp anyway
        np.clip(rank, 0, ZIPF_PAGES - 1, out=rank)
        page = perm[rank]
        off = rng_off.integers(0, 1 << (PAGE_SHIFT - 3), size=m, dtype=np.uint64)
        off <<= np.uint64(3)
        page <<= np.uint64(PAGE_SHIFT)
        page |= off
        out[lo:lo + m] = page
    return out


def gen_seq(n: int) -> np.ndarray:
    """The sequential workload: address i * 64."""
    out = np.arange(n, dtype=np.uint64)
    out <<= np.uint64(6)
    return out


GENERATORS = {"zipf": gen_zipf, "seq": gen_seq}


def path_for(name: str, n: int, data_dir: Path = DATA_DIR) -> Path:
    return data_dir / f"{name}_{n}_v{FORMAT}.npy"


def _valid(path: Path, n: int) -> bool:
    try:
        a = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return a.dtype == np.uint64 and a.shape == (n,) and not np.isfortran(a)


def ensure(name: str, n: int, data_dir: Path = DATA_DIR, log=print) -> Path:
    """The path of workload ``name`` with ``n`` accesses, generated if missing or malformed."""
    path = path_for(name, n, data_dir)
    if path.exists() and _valid(path, n):
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    log(f"generating {path.name} ({n:,} accesses, {8 * n / 2**20:.0f} MiB) ...")
    a = GENERATORS[name](n)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, a, allow_pickle=False)
    tmp.replace(path)
    return path
