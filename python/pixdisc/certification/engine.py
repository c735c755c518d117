"""Certifies one chunk of samples: candidate sets, bounds, branch and bound, enumeration, counterexamples."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import _native
from ..candidates import candidate_sets
from ..codebook import Codebook
from ..realize import ball_ends
from .result import Budget, _Record

# A margin bound must exceed this to count as a proof (absolute, in logits).
_MARGIN_TOLERANCE = 1e-4


@dataclass
class _Sample:
    index: int
    x: np.ndarray  # float32 (C, P)
    y: int
    base_codes: np.ndarray  # int32 (P,): T(x) as code indices
    positions: np.ndarray  # int64 (A,): ambiguous pixels
    candidates: List[np.ndarray]  # code indices allowed at each ambiguous pixel (nearest first)

    @property
    def log2_size(self) -> float:
        return float(sum(math.log2(len(c)) for c in self.candidates))



class _Engine:
    """Certifies samples one chunk at a time; picklable, so it runs in worker processes."""

    def __init__(self, net: nn.Module, codebook: Codebook, eps: float, mode: str, b: float, bound: str,
                 rule: str, budget: Budget, batch_size: int, image_shape: Tuple[int, ...], device: str) -> None:
        self.net = net
        self.codebook = codebook
        self.eps = eps
        self.mode = mode
        self.b = b
        self.bound = bound
        self.rule = rule
        self.budget = budget
        self.batch_size = batch_size
        self.image_shape = image_shape  # (C, H, W)
        self.device = device

    # -- helpers ----------------------------------------------------------------------------
    @property
    def _codes(self) -> np.ndarray:
        return self.codebook.codes_

    def _logits(self, images: Any) -> torch.Tensor:
        with torch.no_grad():
            t = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
            return self.net(t.to(self.device).reshape(-1, *self.image_shape))

    def _image(self, sample: _Sample, codes_at_pixels: np.ndarray) -> np.ndarray:
        return self._codes[codes_at_pixels].T.reshape(-1).astype(np.float32)  # (C*P,)

    def prepare(self, x: np.ndarray, y: np.ndarray, indices: Sequence[int]) -> List[_Sample]:
        n, channels = x.shape[0], x.shape[1]
        pixels = int(np.prod(x.shape[2:]))
        sets = candidate_sets(x, self.codebook, self.eps, rule=self.rule, channel_axis=1)
        counts = np.diff(sets.offsets)
        samples = []
        for i in range(n):
            lo = i * pixels
            ambiguous = np.flatnonzero(counts[lo : lo + pixels] > 1)
            cands = [sets.of(lo + p).copy() for p in ambiguous]
            samples.append(_Sample(int(indices[i]), x[i].reshape(channels, pixels), int(y[i]),
                                   sets.nearest[lo : lo + pixels].copy(), ambiguous.astype(np.int64), cands))
        return samples

    # -- enumeration ----------------------------------------------------------------------------
    def _enumerate(self, sample: _Sample, allowed: List[np.ndarray], deadline: float) -> Tuple[Optional[np.ndarray], bool]:
        """Search the product of `allowed`; returns (failing z codes or None, finished)."""
        sizes = np.array([len(a) for a in allowed], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        members = (np.concatenate(allowed) if allowed else np.zeros(0)).astype(np.int32)
        base = self._image(sample, sample.base_codes)
        pixels = sample.base_codes.shape[0]
        enumerator = self._enumerator(base, sample.positions, pixels, offsets, members)
        for start in range(0, enumerator.total, self.batch_size):
            count = min(self.batch_size, enumerator.total - start)
            wrong = (self._logits(enumerator(start, count)).argmax(1) != sample.y).nonzero()
            if len(wrong):
                # The native decoding the enumerator used: rank -> one candidate per ambiguous pixel.
                digits = enumerator.digits(start + int(wrong[0, 0]))
                z = sample.base_codes.copy()
                z[sample.positions] = members[offsets[:-1] + digits]
                return z, True
            if time.monotonic() > deadline:
                return None, False
        return None, True

    def _enumerator(self, base: np.ndarray, positions: np.ndarray, pixels: int, offsets: np.ndarray,
                    members: np.ndarray) -> _native.CandidateEnumerator:
        """Candidate images in batches; on a GPU they are written there directly."""
        on_gpu = str(self.device).startswith("cuda") and _native.cuda_available()
        return _native.CandidateEnumerator(base, positions, pixels, offsets, members, self._codes,
                                           device=self.device if on_gpu else None)

    # -- counterexamples ------------------------------------------------------------------------
    def _realize(self, sample: _Sample, z: np.ndarray) -> Tuple[Optional[np.ndarray], bool]:
        """An input x' within eps of x with T(x') = z and F(T(x')) != y, checked with T and F; else (None, False).

        Every moved pixel channel takes the float32 of its eps-ball closest to
        the target code value (the value itself when it lies in the ball).
        One channel, that is exact: a code's preimage under T is an interval
        of floats holding its own value, so a code is reachable iff that
        float reaches it (candidates.py). Several channels, it is the closest
        point of the box coordinate-wise, which can miss a code that the sound
        rule admits; the caller then has no counterexample.
        """
        lo, hi = ball_ends(sample.x, self.eps)  # float32 (C, P), exact: see pixdisc.realize
        target = self._codes[z].T.astype(np.float32)  # (C, P)
        moved = z != sample.base_codes
        proposal = np.where(moved[None, :], np.minimum(np.maximum(target, lo), hi), sample.x).astype(np.float32)
        x_adv = proposal.reshape(self.image_shape)
        assigned = np.asarray(self.codebook.assign(x_adv[None], channel_axis=1)).reshape(-1)
        if not np.array_equal(assigned, z):
            return None, False
        discretized = np.asarray(self.codebook.transform(x_adv[None], channel_axis=1))
        if int(self._logits(discretized).argmax(1)[0]) == sample.y:
            return None, False
        return x_adv, True

    def _failed(self, sample: _Sample, z: np.ndarray, nodes: int, started: float) -> _Record:
        """A misclassified z of S(x): "failed" only with a checked real input x', otherwise "unable".

        The sound rule (several channels) can hold codes no input reaches, so a
        misclassified z is not by itself a failure (SPEC §3); its codes stay in
        the record for inspection, with verified False.
        """
        x_adv, ok = self._realize(sample, z)
        return _Record(sample.index, "failed" if ok else "unable", sample.log2_size, len(sample.positions), nodes,
                       time.monotonic() - started, ok, z.astype(np.int32), x_adv, "counterexample" if ok else "")

    # -- modes ----------------------------------------------------------------------------------
    def certify_samples(self, samples: List[_Sample]) -> List[_Record]:
        records: List[Optional[_Record]] = [None] * len(samples)
        if not samples:
            return []
        # Batched stages report their wall time shared evenly among the samples they decide.
        started = time.monotonic()
        # Everyone: is T(x) itself classified correctly?
        predictions = self._logits(np.stack([self._image(s, s.base_codes) for s in samples])).argmax(1).cpu().numpy()
        share = (time.monotonic() - started) / len(samples)
        pending = []
        for i, s in enumerate(samples):
            if predictions[i] != s.y:
                records[i] = self._failed(s, s.base_codes.copy(), 0, time.monotonic() - share)
            elif not len(s.positions):
                records[i] = _Record(s.index, "certified", 0.0, 0, 0, share, method="no ambiguous pixel")
            else:
                pending.append(i)
        if self.mode == "bab" and pending:
            started = time.monotonic()
            proven = self._root_bounds([samples[i] for i in pending])
            share = (time.monotonic() - started) / len(pending)
            for i, ok in zip(list(pending), proven):
                if ok:
                    s = samples[i]
                    records[i] = _Record(s.index, "certified", s.log2_size, len(s.positions), 1, share,
                                         method="bounds")
            pending = [i for i in pending if records[i] is None]
        for i in pending:
            t0 = time.monotonic()
            records[i] = self._paper(samples[i], t0) if self.mode == "paper" else self._branch_and_bound(samples[i], t0)
        return [r for r in records if r is not None]

    def _paper(self, sample: _Sample, started: float) -> _Record:
        if sample.log2_size > self.b:
            return _Record(sample.index, "unable", sample.log2_size, len(sample.positions), 0,
                           time.monotonic() - started)
        z, _ = self._enumerate(sample, sample.candidates, deadline=math.inf)
        if z is not None:
            return self._failed(sample, z, 1, started)
        return _Record(sample.index, "certified", sample.log2_size, len(sample.positions), 1,
                       time.monotonic() - started, method="enumeration")

    def _box(self, sample: _Sample, allowed: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        base = self._image(sample, sample.base_codes).reshape(self.image_shape[0], -1)
        lower, upper = base.copy(), base.copy()
        for j, a in enumerate(allowed):
            values = self._codes[a]  # (m, C)
            lower[:, sample.positions[j]] = values.min(axis=0)
            upper[:, sample.positions[j]] = values.max(axis=0)
        return lower, upper

    def _margins(self, boxes: List[Tuple[np.ndarray, np.ndarray]], labels: List[int]) -> np.ndarray:
        """Worst (over j != y) lower bound of logit_y - logit_j for each box."""
        from ..bounds import margin_lower_bound

        lower = torch.from_numpy(np.stack([b[0] for b in boxes])).to(self.device).reshape(-1, *self.image_shape)
        upper = torch.from_numpy(np.stack([b[1] for b in boxes])).to(self.device).reshape(-1, *self.image_shape)
        y = torch.tensor(labels, device=self.device)
        with torch.no_grad():
            # float64 keeps the bound's own rounding negligible; the tolerance covers the
            # float32 rounding of F itself, so a proof holds for the network as it runs.
            margins = margin_lower_bound(self.net, lower, upper, y, method=self.bound, dtype=torch.float64)
        margins = margins.scatter(1, y[:, None], float("inf"))
        return margins.min(dim=1).values.cpu().numpy() - _MARGIN_TOLERANCE

    def _root_bounds(self, samples: List[_Sample]) -> List[bool]:
        proven: List[bool] = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start : start + self.batch_size]
            worst = self._margins([self._box(s, s.candidates) for s in chunk], [s.y for s in chunk])
            proven.extend(bool(w > 0) for w in worst)
        return proven

    def _gradient(self, sample: _Sample, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Gradient of the smallest margin at the box centre: guides splits and counterexamples."""
        centre = torch.from_numpy((0.5 * (lower + upper)).astype(np.float32)).to(self.device)
        centre = centre.reshape(1, *self.image_shape).requires_grad_(True)
        with torch.enable_grad():
            logits = self.net(centre)[0]
            others = logits.clone()
            others[sample.y] = -float("inf")
            margin = logits[sample.y] - others.max()
            (grad,) = torch.autograd.grad(margin, centre)
        return grad.reshape(self.image_shape[0], -1).cpu().numpy()

    def _guess(self, sample: _Sample, allowed: List[np.ndarray], grad: np.ndarray) -> np.ndarray:
        """The z in the node that a linear model of the margin says is worst."""
        z = sample.base_codes.copy()
        for j, a in enumerate(allowed):
            scores = self._codes[a] @ grad[:, sample.positions[j]]
            z[sample.positions[j]] = a[int(np.argmin(scores))]
        return z

    def _branch_and_bound(self, sample: _Sample, started: float) -> _Record:
        deadline = started + self.budget.seconds
        stack: List[List[np.ndarray]] = [list(sample.candidates)]
        nodes = 0
        while stack:
            if nodes >= self.budget.nodes or time.monotonic() > deadline:
                return self._exact_stage(sample, nodes, started)
            batch = [stack.pop() for _ in range(min(len(stack), max(1, self.batch_size // 4)))]
            nodes += len(batch)
            boxes = [self._box(sample, allowed) for allowed in batch]
            worst = self._margins(boxes, [sample.y] * len(batch))
            for allowed, (lower, upper), margin in zip(batch, boxes, worst):
                if margin > 0:
                    continue
                grad = self._gradient(sample, lower, upper)
                z = self._guess(sample, allowed, grad)
                if int(self._logits(self._image(sample, z)[None]).argmax(1)[0]) != sample.y:
                    return self._failed(sample, z, nodes, started)
                size = sum(math.log2(len(a)) for a in allowed)
                if size <= self.budget.leaf_log2:
                    z, finished = self._enumerate(sample, allowed, deadline)
                    if z is not None:
                        return self._failed(sample, z, nodes, started)
                    if not finished:
                        return self._exact_stage(sample, nodes, started)
                    continue
                stack.extend(self._split(sample, allowed, lower, upper, grad))
        return _Record(sample.index, "certified", sample.log2_size, len(sample.positions), nodes,
                       time.monotonic() - started, method="branch-and-bound")

    def _exact_stage(self, sample: _Sample, nodes: int, started: float) -> _Record:
        """Bounds and branching ran out: decide by a mixed-integer program when the budget allows, else unable."""
        unable = _Record(sample.index, "unable", sample.log2_size, len(sample.positions), nodes,
                         time.monotonic() - started)
        if self.budget.exact_seconds <= 0:
            return unable
        from ..exact import decide_milp

        try:
            outcome = decide_milp(self.net, self._image(sample, sample.base_codes), sample.positions,
                                  sample.candidates, self._codes, sample.y, time_limit=self.budget.exact_seconds,
                                  margin_tolerance=_MARGIN_TOLERANCE, base_codes=sample.base_codes,
                                  image_shape=self.image_shape)
        except NotImplementedError:  # a layer the program cannot encode
            return unable
        if outcome.status == "certified":
            return _Record(sample.index, "certified", sample.log2_size, len(sample.positions), nodes,
                           time.monotonic() - started, method=outcome.method)
        if outcome.status == "counterexample":
            return self._failed(sample, outcome.z_codes.astype(np.int32), nodes, started)
        unable.seconds = time.monotonic() - started
        return unable

    def _split(self, sample: _Sample, allowed: List[np.ndarray], lower: np.ndarray, upper: np.ndarray,
               grad: np.ndarray) -> List[List[np.ndarray]]:
        """Halve the candidate set of the pixel whose width times sensitivity is largest."""
        width = (upper - lower)[:, sample.positions]  # (C, A)
        score = (width * (np.abs(grad[:, sample.positions]) + 1e-12)).sum(axis=0)
        score[[len(a) < 2 for a in allowed]] = -1
        j = int(np.argmax(score))
        values = self._codes[allowed[j]]
        axis = int(np.argmax(values.max(axis=0) - values.min(axis=0)))
        order = allowed[j][np.argsort(values[:, axis], kind="stable")]
        half = len(order) // 2
        children = []
        for part in (order[:half], order[half:]):
            child = list(allowed)
            child[j] = part
            children.append(child)
        return children


def _run_chunk(engine: _Engine, x: np.ndarray, y: np.ndarray, indices: np.ndarray, threads: int) -> List[Dict]:
    """Task body for executors: certify one chunk of samples, return JSON records."""
    if threads > 0:
        torch.set_num_threads(threads)
    samples = engine.prepare(x, y, indices)
    return [r.to_json() for r in engine.certify_samples(samples)]

