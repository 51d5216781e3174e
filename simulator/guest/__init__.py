"""The kernels' own side of translation: a guest's stage-1 page tables, built on demand by
its fault handler, and pKVM's host kernel's linear map, built at boot."""
