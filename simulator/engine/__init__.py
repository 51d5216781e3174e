"""The engine: SimPy for the agents, one compiled loop for every CPU context.

:mod:`.sched` (event heap, locks, shared CPUs) and :mod:`.loop` (the contexts' state machine
and the fault handler) are the compiled model; :mod:`.machine` is its Python side, the API
agents use; :mod:`.layout` names the fields of the arrays they share.
"""

from simulator.engine.machine import Context, Counters, Machine, SimulationError

__all__ = ["Context", "Counters", "Machine", "SimulationError"]
