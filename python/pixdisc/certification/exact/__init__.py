"""Exact final stage of certification: decide ``F(z) = y`` for every z in S(x) by mixed-integer programs (HiGHS).

The program is one more form of the graph the bound tiers trace
(``bounds.build_graph``): what that graph takes is encoded, what it refuses
is refused with its words. Modules: ``validate`` (the inputs checked once,
the network traced, the one refusal), ``program`` (variables, rows, big-M
ReLU and max-pool), ``encode`` (the graph's ops as expressions over the
program), ``solve`` (the program's bounds, LP relaxations and branch and
bound, class by class), ``decide`` (``decide_milp``: validate, bound,
encode, solve), ``outcome`` (what a decision returns), ``stage`` (the
certification engine's exact stage).
"""

from .decide import decide_milp
from .outcome import ExactOutcome

__all__ = ["ExactOutcome", "decide_milp"]
