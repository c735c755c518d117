"""Certifies one chunk of samples: candidate sets, bounds, branch and bound, enumeration, counterexamples."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import _native
from ..bounds import TIERS, BudgetExhausted, Meter, escalate
from ..candidates import candidate_sets
from ..codebook import Codebook
from ..inputs import check_channels
from ..realize import ball_ends, pixel_options, within_eps
from .result import Budget, _Record

# A margin bound must exceed this to count as a proof (absolute, in logits).
_MARGIN_TOLERANCE = 1e-4
# Tiers run on all of a chunk's images at once at the root; the rest run image by image, each on its own
# budget (their cost differs from image to image by orders of magnitude).
_BATCHED_TIERS = ("ibp", "crown-ibp")
# The S(x) search on the images the batched tiers leave open may spend at most this share of each one's
# budget (work and seconds); it runs on groups of this many images (one group's forward pass is the most it
# can overrun a deadline by). Its seed is fixed, so outcomes repeat.
_SEARCH_SHARE = 0.25
_SEARCH_GROUP = 16
_SEARCH_SEED = 0
# An image whose tighter bounds and branching run out gets a last, stronger search (SCALE times the search
# budget, another seed) on the FINAL_SHARE of its budget that was held back for it: most images branch and
# bound cannot finish have a counterexample the first, light search missed.
_FINAL_SHARE = 0.25
_FINAL_SCALE = 4.0
_FINAL_SEED = 1


@dataclass
class _Sample:
    index: int
    x: np.ndarray  # float32 (C, P); with a one-channel codebook and C-channel images, (1, C*P): element-wise
    y: int
    base_codes: np.ndarray  # int32 (P,): T(x) as code indices
    positions: np.ndarray  # int64 (A,): ambiguous pixels
    candidates: List[np.ndarray]  # code indices allowed at each ambiguous pixel (nearest first)
    # Verified reachable codes per pixel, {pixel: {code: realizing value (C,)}}: pixdisc.realize, on demand.
    reachable: Optional[Dict[int, Dict[int, np.ndarray]]] = None

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
        # A one-channel codebook on C-channel images discretizes every value alone (as
        # Codebook.transform does): the engine's "pixels" are then the C*H*W values.
        self.code_channels = codebook.n_channels
        check_channels(codebook, image_shape)

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
        if tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"x has shape {tuple(x.shape)} but the engine certifies images of shape "
                             f"{tuple(self.image_shape)}")
        n, channels = x.shape[0], self.code_channels
        x = np.ascontiguousarray(x, np.float32).reshape(n, channels, -1)  # element-wise for one-channel codes
        pixels = x.shape[2]
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
    def _enumerate(self, sample: _Sample, allowed: List[np.ndarray],
                   meter: Optional[Meter] = None) -> Tuple[Optional[np.ndarray], bool]:
        """Search the product of `allowed`; returns (failing z codes or None, finished); each image is a unit of
        work."""
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
            if meter is not None:
                try:
                    meter.charge(count, "enumerating a leaf")
                except BudgetExhausted:
                    return None, False
        return None, True

    def _enumerator(self, base: np.ndarray, positions: np.ndarray, pixels: int, offsets: np.ndarray,
                    members: np.ndarray) -> _native.CandidateEnumerator:
        """Candidate images in batches; on a GPU they are written there directly."""
        on_gpu = str(self.device).startswith("cuda") and _native.cuda_available()
        return _native.CandidateEnumerator(base, positions, pixels, offsets, members, self._codes,
                                           device=self.device if on_gpu else None)

    # -- counterexamples ------------------------------------------------------------------------
    def _reachable(self, sample: _Sample) -> Dict[int, Dict[int, np.ndarray]]:
        """The codes pixdisc.realize verified reachable at each ambiguous pixel, with a value realizing each."""
        if sample.reachable is None:
            options = pixel_options(sample.x[None], self.codebook, self.eps)
            sample.reachable = {}
            for p in sample.positions.tolist():
                lo, hi = options.offsets[p], options.offsets[p + 1]
                sample.reachable[p] = dict(zip(options.codes[lo:hi].tolist(), options.values[lo:hi]))
        return sample.reachable

    def _realize(self, sample: _Sample, z: np.ndarray) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """(x', []) with x' within eps of x, T(x') = z and F(T(x')) != y, checked with T and F; else
        (None, pixels) with the pixels whose code in z no verified input value reaches (possibly none).

        First every moved pixel channel takes the float32 of its eps-ball
        closest to the target code value. One channel, that is exact: a code's
        preimage under T is an interval of floats holding its own value, so a
        code is reachable iff that float reaches it (candidates.py). Several
        channels, the closest point of the box can miss a code the candidate
        rule admits: the pixel then takes a value pixdisc.realize verified,
        and pixels with none are reported.
        """
        lo, hi = ball_ends(sample.x, self.eps)  # float32 (C, P), exact: see pixdisc.realize
        target = self._codes[z].T.astype(np.float32)  # (C, P)
        moved = z != sample.base_codes
        proposal = np.where(moved[None, :], np.minimum(np.maximum(target, lo), hi), sample.x).astype(np.float32)
        assigned = np.asarray(self.codebook.assign(proposal[None], channel_axis=1)).reshape(-1)
        missing = np.zeros(0, np.int64)
        if not np.array_equal(assigned, z):
            reachable = self._reachable(sample)
            unrealized = []
            for p in np.flatnonzero(assigned != z).tolist():
                value = reachable.get(p, {}).get(int(z[p]))
                if value is None:
                    unrealized.append(p)
                else:
                    proposal[:, p] = value
            missing = np.array(unrealized, np.int64)
            if len(missing):
                return None, missing
            assigned = np.asarray(self.codebook.assign(proposal[None], channel_axis=1)).reshape(-1)
            if not np.array_equal(assigned, z):  # pixdisc.realize checked every value: cannot happen
                return None, np.flatnonzero(assigned != z)
        discretized = np.asarray(self.codebook.transform(proposal[None], channel_axis=1))
        if int(self._logits(discretized).argmax(1)[0]) == sample.y:
            return None, missing
        return proposal.reshape(self.image_shape), missing

    def _failed(self, sample: _Sample, z: np.ndarray, nodes: int, started: float, reason: str = "") -> _Record:
        """A misclassified z of S(x): "failed" only with a checked real input x', otherwise "unable".

        A rule that over-approximates (several channels) can hold codes no
        input reaches, so a misclassified z is not by itself a failure (SPEC
        §3); its codes stay in the record for inspection, with verified False
        and the reason.
        """
        x_adv, missing = self._realize(sample, z)
        ok = x_adv is not None
        if not ok and not reason:
            reason = self._unrealized_reason(z, missing)
        return _Record(sample.index, "failed" if ok else "unable", sample.log2_size, len(sample.positions), nodes,
                       time.monotonic() - started, ok, z.astype(np.int32), x_adv, "counterexample" if ok else "",
                       reason="" if ok else reason)

    @staticmethod
    def _unrealized_reason(z: np.ndarray, missing: np.ndarray) -> str:
        if not len(missing):
            return "a misclassified member of S(x) was realized but F(T(x')) = y on the check"
        shown = ", ".join(f"pixel {p} code {int(z[p])}" for p in missing[:4].tolist())
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        return f"a misclassified member of S(x) that no verified input realizes ({shown}{more})"

    def _refute(self, sample: _Sample, allowed: List[np.ndarray], z: np.ndarray, nodes: int,
                started: float) -> Tuple[Optional[_Record], List[List[np.ndarray]], str]:
        """A misclassified z in the node `allowed`: (failed record, [], "") when a real input realizes it,
        else (None, children, reason): the node split so that z's unrealized code at one pixel is apart from
        the codes verified reachable there (no children when every such pixel is already down to z's code)."""
        x_adv, missing = self._realize(sample, z)
        if x_adv is not None:
            return self._failed(sample, z, nodes, started), [], ""
        reason = self._unrealized_reason(z, missing)
        if not len(missing):
            return None, [], reason
        reachable = self._reachable(sample)
        slots = np.searchsorted(sample.positions, missing)
        for split_verified in (True, False):
            for p, j in zip(missing.tolist(), slots.tolist()):
                a = allowed[j]
                verified = np.isin(a, np.fromiter(reachable.get(p, {}).keys(), np.int64))
                if split_verified and verified.any():
                    parts = (a[verified], a[~verified])  # z's code is unverified: it goes with the second
                elif not split_verified and len(a) > 1:
                    parts = (a[a != z[p]], a[a == z[p]])
                else:
                    continue
                children = []
                for part in parts:
                    child = list(allowed)
                    child[j] = part
                    children.append(child)
                return None, children, reason
        return None, [], reason

    # -- modes ----------------------------------------------------------------------------------
    def certify_samples(self, samples: List[_Sample],
                        on_record: Optional[Callable[[_Record], None]] = None) -> List[_Record]:
        """Records in sample order; ``on_record`` gets each one as soon as it is decided (checkpoints)."""
        records: List[Optional[_Record]] = [None] * len(samples)
        if not samples:
            return []

        def decide(i: int, record: _Record) -> None:
            records[i] = record
            if on_record is not None:
                on_record(record)

        # Batched stages charge each image an even share of their wall time and work.
        started = time.monotonic()
        # Everyone: is T(x) itself classified correctly?
        predictions = self._logits(np.stack([self._image(s, s.base_codes) for s in samples])).argmax(1).cpu().numpy()
        share = (time.monotonic() - started) / len(samples)
        pending = []
        for i, s in enumerate(samples):
            if predictions[i] != s.y:
                decide(i, self._failed(s, s.base_codes.copy(), 0, time.monotonic() - share))
            elif not len(s.positions):
                decide(i, _Record(s.index, "certified", 0.0, 0, 0, share, method="no ambiguous pixel"))
            else:
                pending.append(i)
        if self.mode == "paper":
            for i in pending:
                decide(i, self._paper(samples[i], time.monotonic()))
            return [r for r in records if r is not None]
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            for i, record in zip(chunk, self._certify_chunk([samples[i] for i in chunk], share)):
                decide(i, record)
        return [r for r in records if r is not None]

    def _meter(self, images: int, spent_work: float, spent_seconds: float, now: float,
               share: float = 1.0) -> Meter:
        """``share`` of the budget left to ``images`` images that spent this much each (batched stages count
        all of them)."""
        work = None if self.budget.work is None else images * share * (self.budget.work - spent_work)
        deadline = (None if self.budget.seconds is None
                    else now + images * share * (self.budget.seconds - spent_seconds))
        return Meter(work, deadline)

    def _certify_chunk(self, chunk: List[_Sample], share: float) -> List[_Record]:
        """Root bounds on the whole chunk with the cheap tiers, the S(x) search on the images they leave open,
        then every image still open on its own budget."""
        first_top = self._batched_top()
        started = time.monotonic()
        meter = self._meter(len(chunk), 0.0, share, started)
        worst, escalation = self._margins([self._box(s, s.candidates) for s in chunk], [s.y for s in chunk],
                                          meter, "ibp", first_top)
        share += (time.monotonic() - started) / len(chunk)
        work = meter.spent / len(chunk)
        open_ = [k for k in range(len(chunk)) if worst[k] <= 0 and escalation.exhausted is None]
        searched = self._search([chunk[k] for k in open_], work, share)
        records = []
        for k, s in enumerate(chunk):
            spent = 0.0
            if worst[k] > 0:
                record = _Record(s.index, "certified", s.log2_size, len(s.positions), 1, share, method="bounds",
                                 tier=escalation.tier[k])
            elif escalation.exhausted is not None:
                record = self._unable(s, 0, time.monotonic() - share, f"root bounds {escalation.exhausted}",
                                      tier=escalation.tier[k])
            else:
                failure, search_work, search_seconds = searched[open_.index(k)]
                spent = search_work
                if failure is not None:
                    record = failure
                    record.seconds = share + search_seconds
                    record.tier = escalation.tier[k]
                else:
                    t0 = time.monotonic()
                    own = self._meter(1, work + search_work, share + search_seconds, t0)
                    record = self._open_image(s, t0 - share - search_seconds, own)
                    spent += own.spent
            record.work = work + spent
            records.append(record)
        return records

    def _search(self, samples: List[_Sample], work: float, seconds: float
                ) -> List[Tuple[Optional[_Record], float, float]]:
        """The S(x) search (pixdisc.attacks.sx) on ``samples``, which spent ``work`` and ``seconds`` each:
        per sample (a failed record with a checked counterexample or None, its work, its seconds)."""
        search = self.budget.search
        if search is None or not samples:
            return [(None, 0.0, 0.0)] * len(samples)
        out: List[Tuple[Optional[_Record], float, float]] = []
        for g in range(0, len(samples), _SEARCH_GROUP):
            group = samples[g : g + _SEARCH_GROUP]
            started = time.monotonic()
            meter = self._meter(len(group), work, seconds, started, share=_SEARCH_SHARE)
            x_adv, found, forwards = self._run_search(group, search, _SEARCH_SEED, meter)
            each = (time.monotonic() - started) / len(group)
            for s, candidate, hit in zip(group, x_adv, found):
                failure = self._checked_failure(s, candidate) if hit else None
                out.append((failure, forwards / len(group), each))
        return out

    def _run_search(self, samples: List[_Sample], search: Any, seed: int,
                    meter: Meter) -> Tuple[np.ndarray, np.ndarray, int]:
        """pixdisc.attacks.sx.search_members on ``samples``: (x_adv, found, forward passes), charged to ``meter``."""
        from ..attacks.sx import search_members

        # No bigger forward batches than the engine's own: one batch is what the search can overrun a deadline by.
        search = replace(search, chunk=min(search.chunk, self.batch_size))
        x = torch.from_numpy(np.stack([s.x.reshape(self.image_shape) for s in samples])).to(self.device)
        y = torch.tensor([s.y for s in samples], device=self.device)
        x_adv, found, forwards = search_members(self.net, self.codebook, x, y, self.eps, search, seed, meter)
        return x_adv.cpu().numpy(), found.cpu().numpy(), forwards

    def _checked_failure(self, sample: _Sample, x_adv: np.ndarray) -> Optional[_Record]:
        """A "failed" record for ``x_adv`` if it is a real input within eps of x that the defended model
        misclassifies (T and F run on it here, whatever found it), else None."""
        x = sample.x.reshape(self.image_shape)
        if not (within_eps(x_adv, x, self.eps).all() and x_adv.min(initial=0) >= 0 and x_adv.max(initial=0) <= 1):
            return None
        discretized = np.asarray(self.codebook.transform(x_adv[None], channel_axis=1))
        if int(self._logits(discretized).argmax(1)[0]) == sample.y:
            return None
        z = np.asarray(self.codebook.assign(x_adv.reshape(sample.x.shape)[None], channel_axis=1)).reshape(-1)
        return _Record(sample.index, "failed", sample.log2_size, len(sample.positions), 0, 0.0, True,
                       z.astype(np.int32), x_adv.astype(np.float32), "s(x) search")

    def _batched_top(self) -> str:
        """The tightest tier run on a whole chunk at once: the chosen tier, or crown-ibp when it is tighter."""
        return self.bound if self.bound in _BATCHED_TIERS else _BATCHED_TIERS[-1]

    def _node_top(self) -> str:
        """The tightest tier on branch-and-bound nodes: alpha-CROWN's Adam steps optimise the root box only.
        From scratch on every node they cost more work than the branching they save (the demo's model at
        eps 0.3 under one work budget: a lower floor with alpha-CROWN on every node than with CROWN)."""
        return "crown" if self.bound == "alpha-crown" else self.bound

    def _unable(self, sample: _Sample, nodes: int, started: float, reason: str, tier: str = "") -> _Record:
        return _Record(sample.index, "unable", sample.log2_size, len(sample.positions), nodes,
                       time.monotonic() - started, reason=reason, tier=tier)

    def _open_image(self, sample: _Sample, started: float, meter: Meter) -> _Record:
        """An image the batched tiers left open: the tighter tiers at the root, then branch and bound, with a
        share of the budget held back for the last stages (``_last_stages``)."""
        if self.budget.search is not None:
            meter.hold_back(_FINAL_SHARE)
        tier = self._batched_top()
        if TIERS.index(self.bound) > TIERS.index(tier):
            worst, escalation = self._margins([self._box(sample, sample.candidates)], [sample.y], meter,
                                              TIERS[TIERS.index(tier) + 1], self.bound)
            tier = escalation.tier[0]
            if worst[0] > 0:
                return _Record(sample.index, "certified", sample.log2_size, len(sample.positions), 1,
                               time.monotonic() - started, method="bounds", tier=tier)
            if escalation.exhausted is not None:
                return self._last_stages(sample, 0, started, meter, f"root bounds {escalation.exhausted}", tier)
        return self._branch_and_bound(sample, started, meter, tier)

    def _paper(self, sample: _Sample, started: float) -> _Record:
        if sample.log2_size > self.b:
            return _Record(sample.index, "unable", sample.log2_size, len(sample.positions), 0,
                           time.monotonic() - started, reason=f"log2|S(x)| = {sample.log2_size:.1f} > b = {self.b:g}")
        z, _ = self._enumerate(sample, sample.candidates)
        if z is not None:
            return self._failed(sample, z, 1, started)
        return _Record(sample.index, "certified", sample.log2_size, len(sample.positions), 1,
                       time.monotonic() - started, method="enumeration")

    def _box(self, sample: _Sample, allowed: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        base = self._image(sample, sample.base_codes).reshape(self.code_channels, -1)
        lower, upper = base.copy(), base.copy()
        for j, a in enumerate(allowed):
            values = self._codes[a]  # (m, C)
            lower[:, sample.positions[j]] = values.min(axis=0)
            upper[:, sample.positions[j]] = values.max(axis=0)
        return lower, upper

    def _margins(self, boxes: List[Tuple[np.ndarray, np.ndarray]], labels: List[int], meter: Meter, first: str,
                 top: str) -> Tuple[np.ndarray, Any]:
        """Worst (over j != y) lower bound of logit_y - logit_j for each box, less the tolerance, by the tiers
        from ``first`` to ``top`` (each only on the boxes the ones before left open), and the escalation."""
        lower = torch.from_numpy(np.stack([b[0] for b in boxes])).to(self.device).reshape(-1, *self.image_shape)
        upper = torch.from_numpy(np.stack([b[1] for b in boxes])).to(self.device).reshape(-1, *self.image_shape)
        y = torch.tensor(labels, device=self.device)
        # float64 keeps the bound's own rounding negligible; the tolerance covers the float32 rounding
        # of F itself, so a proof holds for the network as it runs.
        escalation = escalate(self.net, lower, upper, y, top, first=first, tolerance=_MARGIN_TOLERANCE,
                              dtype=torch.float64, meter=meter)
        return (escalation.worst(y) - _MARGIN_TOLERANCE).cpu().numpy(), escalation

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
        return grad.reshape(self.code_channels, -1).cpu().numpy()

    def _guess(self, sample: _Sample, allowed: List[np.ndarray], grad: np.ndarray) -> np.ndarray:
        """The z in the node that a linear model of the margin says is worst."""
        z = sample.base_codes.copy()
        for j, a in enumerate(allowed):
            scores = self._codes[a] @ grad[:, sample.positions[j]]
            z[sample.positions[j]] = a[int(np.argmin(scores))]
        return z

    def _branch_and_bound(self, sample: _Sample, started: float, meter: Meter, tier: str) -> _Record:
        """Split, bound, enumerate small leaves. A misclassified z that no verified input realizes does not
        end the search: its node splits the offending pixel's codes into those pixdisc.realize verified and
        the rest, and branching goes on; a node down to unrealized codes alone is set aside with its reason,
        and the sample is then "unable" (never "certified", never "failed"). Every node's bounds,
        gradient, guess and enumeration are charged to ``meter``, the image's budget."""
        stack: List[List[np.ndarray]] = [list(sample.candidates)]
        nodes = 0
        stuck = ""  # why a node could be neither proven nor refuted
        stuck_z: Optional[np.ndarray] = None  # its misclassified member, kept for inspection

        def misclassified_member(allowed: List[np.ndarray], z: np.ndarray) -> Optional[_Record]:
            nonlocal stuck, stuck_z
            record, children, reason = self._refute(sample, allowed, z, nodes, started)
            if record is None:
                if children:
                    stack.extend(children)
                elif not stuck:
                    stuck, stuck_z = reason, z.astype(np.int32)
            return record

        def out_of(what: str) -> _Record:
            return self._last_stages(sample, nodes, started, meter, f"branch and bound {what}"
                                     + (f"; {stuck}" if stuck else ""), tier)

        while stack:
            if nodes >= self.budget.nodes:
                return out_of("ran out of nodes")
            try:
                meter.check("between nodes")
            except BudgetExhausted as exhausted:
                return out_of(str(exhausted))
            batch = [stack.pop() for _ in range(min(len(stack), max(1, self.batch_size // 4)))]
            nodes += len(batch)
            boxes = [self._box(sample, allowed) for allowed in batch]
            worst, escalation = self._margins(boxes, [sample.y] * len(batch), meter, "ibp", self._node_top())
            if escalation.exhausted is not None:
                return out_of(f"{escalation.exhausted} of a node")
            for allowed, (lower, upper), margin in zip(batch, boxes, worst):
                if margin > 0:
                    continue
                grad = self._gradient(sample, lower, upper)
                z = self._guess(sample, allowed, grad)
                misclassified = int(self._logits(self._image(sample, z)[None]).argmax(1)[0]) != sample.y
                try:
                    meter.charge(4, "a node's gradient and guess")  # a backward pass, two forward
                except BudgetExhausted as exhausted:
                    return out_of(str(exhausted))
                if misclassified:
                    record = misclassified_member(allowed, z)
                    if record is not None:
                        return record
                    continue
                size = sum(math.log2(len(a)) for a in allowed)
                if size <= self.budget.leaf_log2:
                    z, finished = self._enumerate(sample, allowed, meter)
                    if z is not None:
                        record = misclassified_member(allowed, z)
                        if record is not None:
                            return record
                        continue
                    if not finished:
                        try:
                            meter.check("enumerating a leaf")
                        except BudgetExhausted as exhausted:
                            return out_of(str(exhausted))
                    continue
                stack.extend(self._split(sample, allowed, lower, upper, grad))
        if stuck:
            return _Record(sample.index, "unable", sample.log2_size, len(sample.positions), nodes,
                           time.monotonic() - started, z_codes=stuck_z, reason=stuck, tier=tier)
        return _Record(sample.index, "certified", sample.log2_size, len(sample.positions), nodes,
                       time.monotonic() - started, method="branch-and-bound", tier=tier)

    def _last_stages(self, sample: _Sample, nodes: int, started: float, meter: Meter, reason: str,
                     tier: str = "") -> _Record:
        """Bounds and branching ran out (``reason``): the reserve held back for it goes to a stronger S(x)
        search, then the exact stage."""
        meter.release()
        search = self.budget.search
        if search is not None and (meter.left is None or meter.left > 0):
            x_adv, found, _ = self._run_search([sample], search.scaled(_FINAL_SCALE), _FINAL_SEED, meter)
            if found[0]:
                failure = self._checked_failure(sample, x_adv[0])
                if failure is not None:
                    failure.nodes, failure.seconds, failure.tier = nodes, time.monotonic() - started, tier
                    failure.method = "s(x) search, last"
                    return failure
        return self._exact_stage(sample, nodes, started, meter, reason, tier)

    def _exact_stage(self, sample: _Sample, nodes: int, started: float, meter: Meter, reason: str,
                     tier: str = "") -> _Record:
        """Bounds and branching ran out: decide by a mixed-integer program when the budget allows, else unable
        (``exact.stage``: ``exact_seconds`` of HiGHS's time, capped by the seconds the image has left)."""
        unable = self._unable(sample, nodes, started, reason, tier)
        if self.budget.exact_seconds <= 0:
            return unable
        from .exact.stage import exact_outcome  # SciPy, only when the stage runs

        outcome, skipped = exact_outcome(self.net, self._image(sample, sample.base_codes), sample.positions,
                                         sample.candidates, self._codes, sample.y, sample.base_codes,
                                         self.image_shape, self.code_channels, self.budget.exact_seconds,
                                         meter.deadline, _MARGIN_TOLERANCE)
        if outcome is None:
            unable.reason += f"; {skipped}"
            return unable
        if outcome.status == "certified":
            return _Record(sample.index, "certified", sample.log2_size, len(sample.positions), nodes,
                           time.monotonic() - started, method=outcome.method, tier=tier)
        if outcome.status == "counterexample":
            return self._failed(sample, outcome.z_codes.astype(np.int32), nodes, started)
        unable.seconds = time.monotonic() - started
        unable.reason += f"; exact stage: {outcome.reason or outcome.status}"
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

