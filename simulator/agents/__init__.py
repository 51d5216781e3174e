"""The hypervisor's agents: SimPy processes that act on the machine while its CPUs run.

Each is one file, built by the composition root (:mod:`simulator.experiment`) from the
config; the engine never names them. An agent starts its processes, takes the machine's
locks, runs or stops contexts, and may hear of every leaf a fault installs (``on_map``).
"""
