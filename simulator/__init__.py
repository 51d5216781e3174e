"""mmusim: a cycle-approximate simulator of the ARM64 MMU as KVM and pKVM drive it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__version__ = "0.1.0"


def kernel_cache_dir(package: Path, base: Path) -> Path:
    """Where numba caches the compiled kernels: a directory named by a hash of every source
    file that holds a kernel. numba keys a cached function by its own file's time stamp
    only, while a compiled kernel carries copies of the kernels it calls (a changed
    ``run_batch`` under an unchanged engine loop would run stale); a new hash is a new,
    empty cache."""
    h = hashlib.sha256()
    marker = b"_jit import " + b"jit"  # (split so that this file does not match itself)
    for path in sorted(package.rglob("*.py")):
        text = path.read_bytes()
        if marker in text or path.name == "_jit.py":
            h.update(str(path.relative_to(package)).encode() + b"\0" + text)
    return base / f"numba-{h.hexdigest()[:16]}"


def _use_kernel_cache() -> None:
    """Point numba's cache at :func:`kernel_cache_dir` (unless NUMBA_CACHE_DIR is set),
    under the user's cache directory; caches of other source versions unused for a week are
    removed."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmusim"
    here = kernel_cache_dir(Path(__file__).parent, base)
    try:
        here.mkdir(parents=True, exist_ok=True)
        import shutil
        import time

        for old in base.glob("numba-*"):
            if old != here and old.is_dir() and time.time() - old.stat().st_mtime > 7 * 86400:
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return  # an unwritable home: numba's own default (next to the sources)
    os.environ["NUMBA_CACHE_DIR"] = str(here)


_use_kernel_cache()
