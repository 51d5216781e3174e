"""The hardware: the translation table walk, walk caches and TLBs (knows arch)."""

from simulator.mmu.tlb import TLBHierarchy, TLBLevelSpec
from simulator.mmu.walk import WalkCache

__all__ = [
    "TLBHierarchy",
    "TLBLevelSpec",
    "WalkCache",
]
