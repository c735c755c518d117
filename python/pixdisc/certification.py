"""Certify robustness of a discretized classifier F(T(.)) on whole data sets (SPEC §3).

For each sample, S(x) is the product of the per-pixel candidate sets: every
input within eps discretizes into S(x), so ``F(z) == y`` for all z in S(x)
proves robustness. Two modes:

- ``paper``: enumerate S(x) when ``log2|S(x)| <= b`` (early exit at the
  first misclassified z), otherwise ``unable`` — the 2019 paper exactly.
- ``bab`` (default): bound F's margin over the box hull of S(x) (IBP or
  CROWN); where that does not prove it, branch on the ambiguous pixels (split
  a pixel's candidate set, bound each half), try the most promising z of every
  node as a counterexample, and enumerate nodes that are small. ``unable``
  only when the per-sample budget of nodes or seconds runs out.

``failed`` means a real input x' within eps with ``F(T(x')) != y`` was built
and checked; a misclassified z of S(x) that no input is found to realize
(the sound rule of several channels can admit unreachable codes) makes the
sample ``unable`` instead. One channel uses the exact candidate sets, whose
every member is realized.

Work is sharded by sample index over any ``concurrent.futures.Executor`` or a
Dask ``distributed.Client``; records stream into an append-only JSON-lines
checkpoint so a killed run resumes with nothing lost or repeated.
"""

from __future__ import annotations

import base64
import concurrent.futures
import concurrent.futures.process
import hashlib
import json
import math
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import _backend
from .candidates import candidate_sets, resolve_rule
from .codebook import Codebook
from .realize import ball_ends
from .statistics import certified_fraction_bounds

__all__ = ["certify", "CertifyResult", "Budget", "OUTCOMES", "MODES", "BOUNDS"]

OUTCOMES = ("certified", "failed", "unable")
MODES = ("bab", "paper")
BOUNDS = ("crown", "ibp")
CHECKPOINT_FORMAT = "pixdisc-certify"
# A margin bound must exceed this to count as a proof (absolute, in logits).
_MARGIN_TOLERANCE = 1e-4
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Budget:
    """Per-sample effort for ``mode="bab"``: branch-and-bound nodes and wall seconds."""

    nodes: int = 2000
    seconds: float = 20.0
    leaf_log2: float = 10.0  # enumerate nodes with log2|S| at most this (<= 1024 images)
    # Exact final stage for samples the nodes/seconds leave open: a mixed-integer
    # program over S(x) (pixdisc.exact, SciPy's HiGHS) with this many seconds; 0 = off.
    exact_seconds: float = 0.0


@dataclass
class CertifyResult:
    """Per-sample outcomes plus everything needed to report them.

    ``outcome[i]`` is ``"certified"``, ``"failed"`` or ``"unable"``.
    ``"failed"`` always comes with a real input ``counterexample[i]``, x' with
    ``||x' - x||_inf <= eps`` and ``F(T(x')) != y``, built and checked
    (``verified[i]`` is True). ``z_codes[i]`` holds the code index of every
    pixel of the misclassified z in S(x) it realizes; a misclassified z that
    no input could be found to realize (possible with the sound rule of
    several channels) makes the sample ``"unable"``, with its ``z_codes`` kept
    for inspection and ``verified[i]`` False.
    """

    outcome: np.ndarray
    log2_size: np.ndarray
    n_ambiguous: np.ndarray
    nodes: np.ndarray
    seconds: np.ndarray
    verified: np.ndarray
    z_codes: Dict[int, np.ndarray]
    counterexample: Dict[int, np.ndarray]
    config: Dict[str, Any]
    delta: float
    wall_seconds: float = 0.0
    method: Optional[np.ndarray] = None  # per sample: what decided it ("" when unable)

    def __len__(self) -> int:
        return len(self.outcome)

    def counts(self) -> Dict[str, int]:
        return {o: int((self.outcome == o).sum()) for o in OUTCOMES}

    def summary(self) -> Dict[str, Any]:
        m = len(self)
        counts = self.counts()
        out: Dict[str, Any] = {"n": m, **counts, "verified_attacks": int(self.verified.sum()),
                               "delta": self.delta, "wall_seconds": self.wall_seconds, **self.config}
        if m:
            out.update({f"{k}_rate": v / m for k, v in counts.items()})
            bounds = certified_fraction_bounds(counts["certified"], m, self.delta)
            out.update({"s_hat": bounds["s_hat"], "lower_hoeffding": bounds["hoeffding"],
                        "lower_clopper_pearson": bounds["clopper_pearson"],
                        "lower_paper_formula": bounds["paper_formula"]})
        if self.method is not None:
            decided = [str(method) for method in self.method if method]
            out["decided_by"] = {name: decided.count(name) for name in sorted(set(decided))}
        return out


# ----------------------------------------------------------------------------------- one sample


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


@dataclass
class _Record:
    index: int
    outcome: str
    log2_size: float
    n_ambiguous: int
    nodes: int = 0
    seconds: float = 0.0
    verified: bool = False
    z_codes: Optional[np.ndarray] = None
    counterexample: Optional[np.ndarray] = None
    method: str = ""  # what decided it: bounds, branch-and-bound, enumeration, milp-highs, counterexample

    def to_json(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("z_codes", "counterexample")}
        d["z_codes"] = None if self.z_codes is None else _encode(self.z_codes.astype(np.int32))
        d["counterexample"] = None if self.counterexample is None else _encode(self.counterexample.astype(np.float32))
        return d

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "_Record":
        d = dict(d)
        z, ce = d.pop("z_codes", None), d.pop("counterexample", None)
        rec = _Record(**d)
        rec.z_codes = None if z is None else _decode(z, np.int32)
        rec.counterexample = None if ce is None else _decode(ce, np.float32)
        return rec


def _encode(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _decode(s: str, dtype: Any) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()


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
        total = int(np.prod(sizes, dtype=np.float64)) if len(sizes) else 1
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        members = (np.concatenate(allowed) if allowed else np.zeros(0)).astype(np.int32)
        base = self._image(sample, sample.base_codes)
        pixels = sample.base_codes.shape[0]
        make_batch = self._batch_maker(base, sample.positions, pixels, offsets, members, sizes)
        for start in range(0, total, self.batch_size):
            count = min(self.batch_size, total - start)
            wrong = (self._logits(make_batch(start, count)).argmax(1) != sample.y).nonzero()
            if len(wrong):
                rank = start + int(wrong[0, 0])
                digits = []
                for size in sizes:
                    digits.append(rank % size)
                    rank //= size
                z = sample.base_codes.copy()
                for j, d in enumerate(digits):
                    z[sample.positions[j]] = allowed[j][d]
                return z, True
            if time.monotonic() > deadline:
                return None, False
        return None, True

    def _batch_maker(self, base: np.ndarray, positions: np.ndarray, pixels: int, offsets: np.ndarray,
                     members: np.ndarray, sizes: np.ndarray):
        """Returns make(start, count) -> candidate images; on a GPU they are written there directly."""
        if not (str(self.device).startswith("cuda") and _backend.cuda_available()):
            return lambda start, count: _backend._core.enumerate_candidates(
                base, positions, pixels, offsets, members, self._codes, start, count)
        cuda = _backend.require_cuda()
        device = torch.device(self.device)
        if float(np.prod(sizes.astype(np.float64))) >= 2.0 ** 64:
            raise ValueError("|S(x)| exceeds 2^64: enumerate a smaller product")
        strides = np.ones(len(sizes), np.uint64)  # mixed-radix place values, as in candidates.hpp
        strides[1:] = np.cumprod(sizes[:-1].astype(np.uint64))
        on_device = {name: torch.from_numpy(np.ascontiguousarray(a)).to(device) for name, a in {
            "base": base, "positions": positions, "offsets": offsets, "members": members,
            "codes": self._codes, "strides": strides.view(np.int64)}.items()}
        image_size = base.shape[0]

        def make(start: int, count: int) -> torch.Tensor:
            out = torch.empty((count, image_size), dtype=torch.float32, device=device)
            cuda.enumerate_candidates(
                on_device["base"].data_ptr(), image_size, on_device["positions"].data_ptr(), pixels,
                on_device["offsets"].data_ptr(), on_device["strides"].data_ptr(), on_device["members"].data_ptr(),
                len(sizes), on_device["codes"].data_ptr(), self._codes.shape[1], start, count, out.data_ptr(),
                torch.cuda.current_stream(device).cuda_stream, device.index or 0)
            return out

        return make

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
        from .bounds import margin_lower_bound

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
        from .exact import decide_milp

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


# ------------------------------------------------------------------------------- checkpointing


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _model_fingerprint(net: nn.Module) -> str:
    return _fingerprint(*[t.detach().cpu().numpy() for t in net.state_dict().values()])


class _Checkpoint:
    """Append-only JSON lines: a header, then one record per finished sample."""

    def __init__(self, path: Path, header: Dict[str, Any]) -> None:
        self.path = path
        self.done: Dict[int, _Record] = {}
        if path.exists() and path.stat().st_size > 0:
            self._resume(header)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                f.write(json.dumps({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **header}) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _resume(self, header: Dict[str, Any]) -> None:
        with open(self.path, "rb") as f:
            raw = f.read()
        complete = raw[: raw.rfind(b"\n") + 1]  # a killed writer may leave half a line
        lines = complete.decode("utf-8").splitlines()
        try:
            first = json.loads(lines[0])
        except (IndexError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.path} is not a pixdisc certification checkpoint") from exc
        if first.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path} is not a pixdisc certification checkpoint")
        for key, value in header.items():
            if first.get(key) != value:
                raise ValueError(f"{self.path} was written for a different run: {key} is {first.get(key)!r} there, "
                                 f"{value!r} now; use another checkpoint file")
        for line in lines[1:]:
            rec = _Record.from_json(json.loads(line))
            self.done[rec.index] = rec
        if len(complete) != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))

    def append(self, records: Iterable[Dict[str, Any]]) -> None:
        with open(self.path, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------- driver


def _split_defended(model: nn.Module, codebook: Optional[Codebook]) -> Tuple[nn.Module, Codebook]:
    from .discretize import Discretize

    if isinstance(model, nn.Sequential) and len(model) > 0 and isinstance(model[0], Discretize):
        codebook = codebook or model[0].codebook
        model = model[1:] if len(model) > 2 else model[1]
    if codebook is None:
        raise ValueError("pass the codebook (or a model whose first layer is pixdisc.Discretize)")
    return model, codebook


def _as_nchw(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255)
    if x.dtype.kind != "f" or x.ndim < 3:
        raise ValueError(f"x must be float images (N, C, H, W) in [0, 1] or uint8, got dtype {x.dtype} shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all() or x.min(initial=0) < 0 or x.max(initial=0) > 1:
        raise ValueError("x must lie in [0, 1] (no NaN or inf)")
    return x


def _iterate_results(executor: Any, tasks: List[Tuple]) -> Iterator[List[Dict]]:
    """Run `_run_chunk(*task)` for every task on the executor, yielding results as they finish."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover
        Client = None  # type: ignore[assignment,misc]
    if Client is not None and isinstance(executor, Client):
        from distributed import as_completed

        futures = [executor.submit(_run_chunk, *task, pure=False) for task in tasks]
        for future in as_completed(futures):
            yield future.result()
        return
    futures = [executor.submit(_run_chunk, *task) for task in tasks]
    for future in concurrent.futures.as_completed(futures):
        yield future.result()


def certify(
    model: nn.Module,
    codebook: Optional[Codebook],
    x: Any,
    y: Any,
    eps: float,
    mode: str = "bab",
    b: float = 30,
    bound: str = "crown",
    budget: Optional[Budget] = None,
    batch_size: int = 256,
    executor: Any = None,
    checkpoint: Union[str, os.PathLike, None] = None,
    delta: float = 0.01,
    rule: str = "auto",
    chunk_size: int = 64,
    workers: Optional[int] = None,
    device: str = "cpu",
    progress: bool = True,
) -> CertifyResult:
    """Certify ``F(T(x)) == y`` against every l_inf perturbation of size ``eps``.

    ``model`` is the classifier F on discretized images (or a
    ``Sequential(Discretize(cb), F)``, whose codebook is then used). ``x`` is
    NCHW (float in [0, 1], or uint8), ``y`` integer labels. ``executor``:
    ``None`` runs on local processes (``workers``, default all cores; inline
    for a single chunk), ``"processes"`` always on local processes,
    ``"serial"`` in this process, or any
    ``concurrent.futures.Executor`` / Dask ``distributed.Client``.
    ``checkpoint`` names a JSON-lines file that records every finished sample;
    an existing one is resumed (it must come from the same model, codes, data
    and settings).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be positive")
    budget = budget or Budget()
    net, codebook = _split_defended(model, codebook)
    rule = resolve_rule(rule, codebook)
    x = _as_nchw(x)
    y = np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y).astype(np.int64).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if x.shape[1] != codebook.n_channels and codebook.n_channels != 1:
        raise ValueError(f"x has {x.shape[1]} channels but the codebook has {codebook.n_channels}")
    net = net.eval().to(device)
    config = {"eps": float(eps), "mode": mode, "b": float(b), "bound": bound, "rule": rule,
              "budget": asdict(budget), "n": int(x.shape[0])}
    started = time.monotonic()
    records: Dict[int, _Record] = {}
    store = None
    if checkpoint is not None:
        header = {**config, "model": _model_fingerprint(net), "codes": _fingerprint(codebook.codes_),
                  "data": _fingerprint(x, y)}
        store = _Checkpoint(Path(checkpoint), header)
        records.update(store.done)
    todo = np.array([i for i in range(x.shape[0]) if i not in records], dtype=np.int64)
    engine = _Engine(net, codebook, float(eps), mode, float(b), bound, rule, budget, batch_size,
                     tuple(x.shape[1:]), device)
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    bar = _progress(progress, x.shape[0])
    _tally(bar, records.values())

    def consume(results: Iterable[List[Dict]]) -> None:
        for chunk_records in results:
            if store is not None:
                store.append(chunk_records)
            new = [_Record.from_json(r) for r in chunk_records]
            records.update((r.index, r) for r in new)
            _tally(bar, new)

    own_pool = None
    try:
        if isinstance(executor, str) and executor not in ("serial", "processes"):
            raise ValueError(f"executor must be None, 'serial', 'processes', an Executor or a Dask Client, "
                             f"got {executor!r}")
        if executor == "serial" or (executor is None and len(chunks) <= 1):
            consume(_run_chunk(engine, x[c], y[c], c, 0) for c in chunks)
        else:
            if executor is None or executor == "processes":
                workers = workers or os.cpu_count() or 1
                own_pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
                executor = own_pool
            cpu_engine = engine if device == "cpu" else _Engine(net.cpu(), codebook, float(eps), mode, float(b),
                                                                 bound, rule, budget, batch_size,
                                                                 tuple(x.shape[1:]), "cpu")
            try:
                consume(_iterate_results(executor, [(cpu_engine, x[c], y[c], c, 1) for c in chunks]))
            except concurrent.futures.process.BrokenProcessPool as exc:
                # Records finished so far are in the checkpoint (if any); say how to get going again.
                raise RuntimeError(
                    "a certification worker process died. Spawned workers re-import the main script: guard "
                    "the script's code with `if __name__ == \"__main__\":`, or pass executor=\"serial\"; "
                    "with checkpoint= a rerun resumes where this one stopped") from exc
    finally:
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    ordered = [records[i] for i in range(x.shape[0])]
    return CertifyResult(
        outcome=np.array([r.outcome for r in ordered], dtype="<U9"),
        log2_size=np.array([r.log2_size for r in ordered]),
        n_ambiguous=np.array([r.n_ambiguous for r in ordered], dtype=np.int64),
        nodes=np.array([r.nodes for r in ordered], dtype=np.int64),
        seconds=np.array([r.seconds for r in ordered]),
        verified=np.array([r.verified for r in ordered], dtype=bool),
        z_codes={r.index: r.z_codes for r in ordered if r.z_codes is not None},
        counterexample={r.index: r.counterexample.reshape(x.shape[1:]) for r in ordered if r.counterexample is not None},
        config=config,
        delta=delta,
        wall_seconds=time.monotonic() - started,
        method=np.array([r.method for r in ordered], dtype=object),
    )


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="certify", unit="img")


def _tally(bar: Any, new: Iterable[_Record]) -> None:
    if bar is None:
        return
    new = list(new)
    counts = getattr(bar, "_pixdisc_counts", {o: 0 for o in OUTCOMES})
    for r in new:
        counts[r.outcome] += 1
    bar._pixdisc_counts = counts
    bar.set_postfix(counts, refresh=False)
    bar.update(len(new))
