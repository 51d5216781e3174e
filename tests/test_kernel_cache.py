"""The kernel cache is keyed by the kernels' sources: a changed kernel file is a new cache."""

from __future__ import annotations

from pathlib import Path

from simulator import kernel_cache_dir


def tree(tmp_path: Path, kernel: str, other: str) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "mmu").mkdir(parents=True)
    (pkg / "_jit.py").write_text("def jit(f): return f\n")
    (pkg / "mmu" / "batch.py").write_text("from pkg._jit import jit\n" + kernel)
    (pkg / "cli.py").write_text(other)
    return pkg


def test_a_changed_kernel_file_changes_the_cache_and_other_files_do_not(tmp_path):
    base = tmp_path / "cache"
    a = kernel_cache_dir(tree(tmp_path / "a", "x = 1\n", "print(1)\n"), base)
    b = kernel_cache_dir(tree(tmp_path / "b", "x = 2\n", "print(1)\n"), base)
    c = kernel_cache_dir(tree(tmp_path / "c", "x = 1\n", "print(2)\n"), base)
    assert a.parent == base and a.name.startswith("numba-")
    assert a != b
    assert a == c
