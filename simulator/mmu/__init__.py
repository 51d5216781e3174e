"""Page tables, the kernel's walker, the hardware walk, walk caches and TLBs (knows arch)."""

from simulator.mmu.pgtable import OpReport, PageTableMemory, Stage2, TLBIRecord
from simulator.mmu.tlb import TLBHierarchy, TLBLevelSpec
from simulator.mmu.walk import WalkCache

__all__ = [
    "OpReport",
    "PageTableMemory",
    "Stage2",
    "TLBHierarchy",
    "TLBIRecord",
    "TLBLevelSpec",
    "WalkCache",
]
