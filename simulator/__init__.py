"""mmusim: a cycle-approximate simulator of the ARM64 MMU as KVM and pKVM drive it."""

__version__ = "0.1.0"
