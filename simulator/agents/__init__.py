"""The hypervisor's agents: SimPy processes that act on the machine while its CPUs run.

Each is one file, built by the composition root (:mod:`simulator.experiment`) from the
config; the engine never names them. An agent starts its processes, takes the machine's
locks, runs or stops contexts, and runs page-table operations (the machine delivers their
invalidations and charges them).
"""
