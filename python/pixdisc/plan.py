"""The planner under its older path ``pixdisc.plan``: the same module object as :mod:`pixdisc.experiments.plan`.

Aliased in ``sys.modules`` rather than re-exported, so that code replacing a name on ``pixdisc.plan`` (tests
patch ``train_setting``) replaces what the planner calls.
"""

import sys

from .experiments import plan as _plan

sys.modules[__name__] = _plan
