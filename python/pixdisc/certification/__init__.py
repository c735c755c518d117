"""Certify robustness of a discretized classifier F(T(.)) on whole data sets (SPEC §3).

For each sample, S(x) is the product of the per-pixel candidate sets: every
input within eps discretizes into S(x), so ``F(z) == y`` for all z in S(x)
proves robustness. Two modes:

- ``paper``: enumerate S(x) when ``log2|S(x)| <= b`` (early exit at the
  first misclassified z), otherwise ``unable`` — the 2019 paper exactly.
- ``bab`` (default): bound F's margin over the box hull of S(x) (bound
  tiers, IBP up to alpha-CROWN); on what the cheap tiers leave open, search
  S(x) for a misclassified member (the S(x) attack's search, metered); then
  branch on the ambiguous pixels (split a pixel's candidate set, bound each
  half), try the most promising z of every node as a counterexample, and
  enumerate nodes that are small. ``unable`` only when the per-sample budget
  of nodes, work or seconds runs out.

``failed`` means a real input x' within eps with ``F(T(x')) != y`` was built
and checked; a misclassified z of S(x) that no input is found to realize
(the sound rule of several channels can admit unreachable codes) makes the
sample ``unable`` instead. One channel uses the exact candidate sets, whose
every member is realized.

Work is sharded by sample index over any ``concurrent.futures.Executor`` or a
Dask ``distributed.Client``; records stream into an append-only JSON-lines
checkpoint so a killed run resumes with nothing lost or repeated.

Layout: ``result`` (what a run returns, per-sample records), ``engine`` (one
chunk of samples: candidate sets, bounds, branching, enumeration,
counterexamples), ``checkpoint`` (the JSON-lines file), ``schedule`` (the
``certify`` driver: input checks, sharding over executors, progress),
``exact`` (the exact final stage: ``exact.decide_milp``, a mixed-integer
program over S(x) on the bounds' graph, solved by HiGHS).
"""

from .result import BOUNDS, MODES, OUTCOMES, Budget, CertifyResult
from .schedule import certify

__all__ = ["certify", "CertifyResult", "Budget", "OUTCOMES", "MODES", "BOUNDS"]
