"""VMSAv8-64 stage-2: descriptors and geometry, bit-exact. Knows nothing above it."""

from simulator.arch import descriptors
from simulator.arch.descriptors import Descriptor, DescriptorError, decode
from simulator.arch.geometry import GRANULES, Geometry, GeometryError, format_size

__all__ = [
    "GRANULES",
    "Descriptor",
    "DescriptorError",
    "Geometry",
    "GeometryError",
    "decode",
    "descriptors",
    "format_size",
]
