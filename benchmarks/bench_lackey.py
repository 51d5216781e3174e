"""Throughput of the vectorised lackey parser, in lines per second.

Generates a 5 M-line lackey trace shaped like a real one (valgrind header lines, about 60 %
``I`` fetches, the rest loads, stores and modifies with 8-10 hex-digit addresses), then reads it
three times through ``workloads.lackey.iter_lackey`` and prints the median lines/s, for the plain
file and for its gzip version, with and without instruction lines kept.

Usage: python benchmarks/bench_lackey.py [--lines N] [--keep DIR]
Not part of the test suite (no timing assertions anywhere).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from workloads.lackey import iter_lackey


def make_trace(path: Path, lines: int, seed: int = 0) -> None:
    """Write a synthetic lackey file of ``lines`` access lines (plus a valgrind header)."""
    rng = np.random.default_rng(seed)
    head = b"".join(b"==4242== %s\n" % t for t in (
        b"Lackey, an example Valgrind tool", b"Copyright (C) 2002-2024, and GNU GPL'd",
        b"Using Valgrind-3.22.0 and LibVEX; rerun with -h for copyright info",
        b"Command: ./program", b""))
    with open(path, "wb") as f:
        f.write(head)
        step = 1 << 20
        for i0 in range(0, lines, step):
            n = min(step, lines - i0)
            u = rng.random(n)
            prefix = np.select([u < 0.6, u < 0.85, u < 0.95], ["I  ", " L ", " S "], " M ")
            stack = 0x1FFEFF0000 + rng.integers(0, 1 << 16, n)
            heap = 0x4A00000 + rng.integers(0, 1 << 24, n)
            code = 0x0400000 + rng.integers(0, 1 << 20, n)
            addr = np.where(u < 0.6, code, np.where(rng.random(n) < 0.5, stack, heap))
            size = rng.choice(np.array([1, 2, 4, 8, 16]), n)
            width = np.where(addr >= 1 << 32, 10, 8)
            text = "".join(f"{p}{a:0{w}x},{s}\n" for p, a, w, s in
                           zip(prefix.tolist(), addr.tolist(), width.tolist(), size.tolist()))
            f.write(text.encode())
        f.write(b"==4242== \n==4242== Counted 1 call to main()\n")


def measure(path: Path, instructions: bool, lines: int, runs: int = 3) -> tuple[float, int]:
    """Return (median lines/s over ``runs`` full reads, accesses returned)."""
    rates = []
    count = 0
    for _ in range(runs):
        t = time.perf_counter()
        count = sum(len(a) for a, _ in iter_lackey(path, instructions=instructions))
        rates.append(lines / (time.perf_counter() - t))
    return statistics.median(rates), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=5_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="directory to keep the files in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or Path(tmp)
        plain = d / "bench.lackey"
        make_trace(plain, args.lines)
        gz = d / "bench.lackey.gz"
        with open(plain, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            dst.write(src.read())
        size = plain.stat().st_size
        gz_size = gz.stat().st_size
        print(f"{args.lines} lines, {size / 2**20:.1f} MiB plain, {gz_size / 2**20:.1f} MiB gz")
        for label, p in (("plain", plain), ("gzip", gz)):
            for instr in (True, False):
                rate, count = measure(p, instr, args.lines)
                print(f"{label:5s} instructions={str(instr):5s}: {rate / 1e6:6.2f} M lines/s "
                      f"(median of 3; {count} accesses)")


if __name__ == "__main__":
    main()
