"""The S(x) attack: search the discretized set S(x) directly instead of the eps-ball, then check a real input.

Against ``F(T(.))`` the attacker's real choice is which member z of S(x) the
classifier sees; the BPDA gradient is only a guide to it, and it misleads
where T is flat. This attack searches the per-pixel code options (the
candidate sets of the certificate, kept to the codes a real input within eps
reaches, see :mod:`pixdisc.realize`) with

1. exhaustive enumeration when S(x) is small (then it is exact), else
   every single-pixel change of T(x),
2. a relaxed start: a softmax over each pixel's options, the CW margin of
   ``F`` on the soft image maximised by Adam, rounded every few steps,
3. gradient-guided flips with a tabu list: the true gradient of ``F`` at the
   discrete z ranks every (pixel, code) change; blocks of the best 1, 2, 4, ...
   changes are evaluated together and the best block is taken,
4. exact local search: every single-pixel change of the best z evaluated in
   batches, the best one taken while it raises the margin,

with random restarts of 2-4 on the samples not yet broken. Every success is
mapped back to a real x' (the realizing value of every changed pixel) and
checked through the whole defended model before it counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..bounds.meter import BudgetExhausted, Meter
from ..inputs import as_images, as_labels, check_channels, check_eps, split_defended
from ..models import model_device
from ..realize import pixel_options, within_eps
from .base import AttackResult, _check_logits, _generator, cw_margin_loss, result_from_inputs

__all__ = ["SearchBudget", "search_members", "sx_attack"]


@dataclass(frozen=True)
class SearchBudget:
    """Effort of the S(x) attack per restart (the default costs about one 100-step BPDA attack)."""

    restarts: int = 2
    relax_steps: int = 20
    flip_steps: int = 12
    local_steps: int = 2
    enumerate_log2: float = 8.0  # enumerate S(x) exactly when it has at most 2**this members
    tabu_tenure: int = 5
    chunk: int = 2048  # images per forward pass in batched evaluations

    def scaled(self, factor: float) -> SearchBudget:
        """The same search with ``factor`` times the restarts and steps (for strength checks)."""
        return SearchBudget(
            restarts=max(1, round(self.restarts * factor)),
            relax_steps=max(1, round(self.relax_steps * factor)),
            flip_steps=max(1, round(self.flip_steps * factor)),
            local_steps=max(1, round(self.local_steps * factor)),
            enumerate_log2=self.enumerate_log2 + math.log2(max(factor, 1.0)),
            tabu_tenure=self.tabu_tenure,
            chunk=self.chunk,
        )


class _Problem:
    """Padded per-pixel options of a batch and the classifier on discrete images."""

    def __init__(self, net: nn.Module, codebook: Any, x: Tensor, y: Tensor, eps: float, chunk: int,
                 meter: Meter | None = None) -> None:
        self.net, self.y, self.chunk, self.meter = net, y, chunk, meter
        self.device = x.device
        # A one-channel codebook discretizes every value of C-channel images alone (as Codebook.transform
        # does): the search's pixels are then the C*H*W values.
        n, channels = x.shape[0], codebook.n_channels
        self.channels = channels
        self.image_shape = tuple(x.shape[1:])
        options = pixel_options(x.detach().cpu().numpy().reshape(n, channels, -1), codebook, eps)
        self.dropped = options.dropped
        pixels = options.pixels
        counts = options.counts.reshape(n, pixels)
        ambiguous = counts > 1
        widest = max(1, int(ambiguous.sum(axis=1).max(initial=0)))
        most = max(2, int(counts.max(initial=1)))
        codes = torch.from_numpy(codebook.codes_).to(self.device)
        # Discrete base image T(x), plus a dummy pixel that padded positions write to.
        base = codes[torch.from_numpy(options.nearest.astype(np.int64)).to(self.device)]  # (n*P, C)
        self.base = torch.cat([base.reshape(n, pixels, channels).transpose(1, 2),
                               torch.zeros(n, channels, 1, device=self.device)], dim=2)
        positions = np.full((n, widest), pixels, np.int64)
        option_codes = np.zeros((n, widest, most), np.int64)
        option_mask = np.zeros((n, widest, most), bool)
        realize = np.zeros((n, widest, most, channels), np.float32)
        for b in range(n):
            where = np.flatnonzero(ambiguous[b])
            positions[b, : len(where)] = where
            for a, p in enumerate(where):
                q = b * pixels + p
                lo, hi = options.offsets[q], options.offsets[q + 1]
                option_codes[b, a, : hi - lo] = options.codes[lo:hi]
                option_mask[b, a, : hi - lo] = True
                realize[b, a, : hi - lo] = options.values[lo:hi]
        option_mask[:, :, 0] = True  # padded pixels keep one (unused) option, so softmaxes stay finite
        self.positions = torch.from_numpy(positions).to(self.device)
        self.option_mask = torch.from_numpy(option_mask).to(self.device)
        self.option_codes = torch.from_numpy(option_codes).to(self.device)
        self.values = codes[self.option_codes]  # (n, A, M, C)
        self.realize = torch.from_numpy(realize).to(self.device)
        self.pixel_mask = self.option_mask[:, :, 1]
        self.log2_size = torch.log2(self.option_mask.sum(dim=2).clamp(min=1).double()).sum(dim=1)
        self.forwards = 0

    # -- images and margins ------------------------------------------------------------------
    def _scatter(self, rows: Tensor, values: Tensor) -> Tensor:
        """Images of samples ``rows`` with the ambiguous pixels set to ``values`` (R, A, C)."""
        images = self.base[rows].clone()
        channels = images.shape[1]
        index = self.positions[rows][:, None, :].expand(-1, channels, -1)
        images.scatter_(2, index, values.transpose(1, 2).to(images.dtype))
        return images[:, :, :-1].reshape(len(rows), *self.image_shape)

    def chosen_values(self, rows: Tensor, choice: Tensor) -> Tensor:
        values = self.values[rows]
        return values.gather(2, choice[:, :, None, None].expand(-1, -1, 1, values.shape[-1])).squeeze(2)

    def images(self, rows: Tensor, choice: Tensor) -> Tensor:
        return self._scatter(rows, self.chosen_values(rows, choice))

    def margins(self, rows: Tensor, choice: Tensor) -> Tensor:
        """CW margin (> 0: misclassified) of the discrete images; rows may repeat."""
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), self.chunk):
                part = slice(start, start + self.chunk)
                self.spend(len(rows[part]), "evaluating members")
                logits = self.net(self.images(rows[part], choice[part]))
                out.append(_margin(logits, self.y[rows[part]]))
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def margin_and_gradient(self, rows: Tensor, choice: Tensor) -> tuple[Tensor, Tensor]:
        """Margins and their gradient w.r.t. the ambiguous pixels, (R,) and (R, A, C)."""
        self.spend(3 * len(rows), "a gradient")  # a backward pass costs about two forward passes
        with torch.enable_grad():
            values = self.chosen_values(rows, choice).detach().requires_grad_(True)
            margin = _margin(self.net(self._scatter(rows, values)), self.y[rows])
            (gradient,) = torch.autograd.grad(margin.sum(), values)
        return margin.detach(), gradient

    def spend(self, forwards: int, where: str) -> None:
        """Count forward passes before running them; the meter (if any) stops the search before it overruns."""
        if self.meter is not None:
            self.meter.charge(forwards, f"the S(x) search ({where})")
        self.forwards += forwards


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    # The exact success test is argmax != y (ties go to the lowest class, as
    # torch's argmax); the margin is positive only when the label loses.
    margin = cw_margin_loss(logits, y)
    wrong = logits.argmax(dim=1) != y
    return torch.where(wrong, margin.clamp(min=torch.finfo(margin.dtype).tiny), margin.clamp(max=0.0))


class _Best:
    """Per-sample best choice (highest margin) found so far."""

    def __init__(self, problem: _Problem, n: int) -> None:
        widest = problem.positions.shape[1]
        self.choice = torch.zeros(n, widest, dtype=torch.int64, device=problem.device)
        rows = torch.arange(n, device=problem.device)
        self.margin = problem.margins(rows, self.choice)

    def offer(self, rows: Tensor, choice: Tensor, margin: Tensor) -> None:
        """Keep the best offer per row; ``rows`` may repeat (the first of equal margins wins)."""
        if not len(rows):
            return
        top = torch.full_like(self.margin, -math.inf).scatter_reduce(0, rows, margin, reduce="amax")
        is_top = margin == top[rows]
        first = torch.full(self.margin.shape, len(rows), dtype=torch.int64, device=rows.device)
        first = first.scatter_reduce(0, rows[is_top], torch.nonzero(is_top).squeeze(1), reduce="amin")
        better = torch.nonzero(top > self.margin).squeeze(1)
        if len(better):
            self.choice[better] = choice[first[better]]
            self.margin[better] = top[better]

    @property
    def broken(self) -> Tensor:
        return self.margin > 0


# ----------------------------------------------------------------------------- search stages


def _enumerate(problem: _Problem, best: _Best, rows: Tensor) -> None:
    """Every member of S(x) for the samples ``rows`` (small sets): exact."""
    sizes_all = problem.option_mask.sum(dim=2).clamp(min=1)
    for row in rows.tolist():
        sizes = sizes_all[row]
        total = int(torch.prod(sizes.double()).item())
        strides = torch.cumprod(torch.cat([sizes.new_ones(1), sizes[:-1]]), dim=0)
        for start in range(0, total, problem.chunk):
            ranks = torch.arange(start, min(total, start + problem.chunk), device=problem.device)
            choice = (ranks[:, None] // strides[None, :]) % sizes[None, :]
            repeated = torch.full((len(ranks),), row, device=problem.device)
            margin = problem.margins(repeated, choice)
            top = int(margin.argmax())
            best.offer(repeated[top : top + 1], choice[top : top + 1], margin[top : top + 1])
            if bool(margin[top] > 0):
                break


def _relaxed_start(problem: _Problem, best: _Best, rows: Tensor, steps: int, restart: int,
                   generator: torch.Generator) -> Tensor:
    """Adam on softmax weights over each pixel's options; returns the rounded choice (R, A)."""
    mask = problem.option_mask[rows]
    logits = torch.zeros(mask.shape, dtype=torch.float32)
    if restart > 0:
        logits = logits + torch.randn(mask.shape, generator=generator)
    logits = logits.to(problem.device).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=0.5)
    values = problem.values[rows]
    rounded = torch.zeros(mask.shape[:2], dtype=torch.int64, device=problem.device)
    round_every = max(1, steps // 6)
    for step in range(steps):
        problem.spend(3 * len(rows), "a relaxed step")
        with torch.enable_grad():
            weights = torch.softmax(logits.masked_fill(~mask, -math.inf), dim=2)
            soft = (weights[..., None] * values).sum(dim=2)
            margin = _margin(problem.net(problem._scatter(rows, soft)), problem.y[rows])
            optimiser.zero_grad()
            (-margin.sum()).backward()
        optimiser.step()
        if (step + 1) % round_every == 0 or step + 1 == steps:
            rounded = logits.detach().masked_fill(~mask, -math.inf).argmax(dim=2)
            best.offer(rows, rounded, problem.margins(rows, rounded))
    return rounded


def _tabu_flips(problem: _Problem, best: _Best, rows: Tensor, choice: Tensor, steps: int,
                tenure: int) -> tuple[Tensor, Tensor]:
    """Move by the best of several gradient-ranked blocks of changes; recently moved pixels are tabu.

    Returns this run's best choice and margin per row (the global best may come from another run).
    """
    run_choice = choice.clone()
    run_margin = problem.margins(rows, choice)
    alive = torch.arange(len(rows), device=problem.device)  # positions in rows not yet broken
    tabu_until = torch.zeros(choice.shape, dtype=torch.int64, device=problem.device)
    for step in range(steps):
        alive = alive[run_margin[alive] <= 0]
        if not len(alive):
            break
        live_rows, current_choice = rows[alive], choice[alive]
        mask, values = problem.option_mask[live_rows], problem.values[live_rows]
        _, gradient = problem.margin_and_gradient(live_rows, current_choice)
        current = values.gather(2, current_choice[:, :, None, None].expand(-1, -1, 1, values.shape[-1]))
        gain = ((values - current) * gradient[:, :, None, :]).sum(dim=3)  # first-order margin change (R, A, M)
        gain = gain.masked_fill(~mask, -math.inf).scatter(2, current_choice[:, :, None], -math.inf)
        pixel_gain, pixel_option = gain.max(dim=2)
        blocked = ~problem.pixel_mask[live_rows] | (tabu_until[alive] > step)
        pixel_gain = pixel_gain.masked_fill(blocked, -math.inf)
        order = pixel_gain.argsort(dim=1, descending=True)
        available = torch.isfinite(pixel_gain).sum(dim=1)
        proposals = []
        for size in _BLOCK_SIZES:
            if size > pixel_gain.shape[1]:
                break
            picked = order[:, :size]
            usable = torch.arange(size, device=problem.device)[None, :] < available[:, None]
            moved = current_choice.clone()
            moved.scatter_(1, picked, torch.where(usable, pixel_option.gather(1, picked),
                                                  current_choice.gather(1, picked)))
            proposals.append(moved)
        candidates = torch.cat(proposals)
        owner = torch.arange(len(alive), device=problem.device).repeat(len(proposals))
        margin = problem.margins(live_rows[owner], candidates)
        best.offer(live_rows[owner], candidates, margin)
        # The best block per sample becomes the current point, improving or not (tabu search).
        scores = margin.reshape(len(proposals), len(alive))
        pick = scores.argmax(dim=0)
        chosen = candidates.reshape(len(proposals), len(alive), -1)[pick, torch.arange(len(alive))]
        chosen_margin = scores[pick, torch.arange(len(alive))]
        tabu_until[alive] = torch.where(chosen != current_choice, step + 1 + tenure, tabu_until[alive])
        choice[alive] = chosen
        better = chosen_margin > run_margin[alive]
        run_choice[alive[better]] = chosen[better]
        run_margin[alive[better]] = chosen_margin[better]
    return run_choice, run_margin


_BLOCK_SIZES = (1, 2, 4, 8, 16, 32)


def _local_search(problem: _Problem, best: _Best, rows: Tensor, choice: Tensor, margin: Tensor, steps: int) -> None:
    """From each row's ``choice``, take the best single-pixel change while it raises the margin."""
    choice, margin = choice.clone(), margin.clone()
    active = torch.arange(len(rows), device=problem.device)
    for _ in range(steps):
        active = active[margin[active] <= 0]
        if not len(active):
            return
        mask = problem.option_mask[rows[active]]
        current = choice[active]
        # Every valid (sample, pixel, option) that differs from the current choice.
        options = torch.arange(mask.shape[2], device=problem.device)
        neighbour = mask & (options[None, None, :] != current[:, :, None])
        sample, pixel, option = neighbour.nonzero(as_tuple=True)
        if not len(sample):
            return
        # Neighbours are built a chunk at a time: all at once they take (samples x pixels) x pixels
        # integers, half a gigabyte for 100 images whose 784 pixels are all ambiguous.
        scores = torch.cat([problem.margins(rows[active][sample[part]],
                                            _moved(current, sample[part], pixel[part], option[part]))
                            for part in (slice(start, start + problem.chunk)
                                         for start in range(0, len(sample), problem.chunk))])
        top = torch.full((len(active),), -math.inf, device=problem.device, dtype=scores.dtype)
        top = top.scatter_reduce(0, sample, scores, reduce="amax")
        first = torch.full((len(active),), len(sample), device=problem.device, dtype=torch.int64)
        is_top = scores == top[sample]
        first = first.scatter_reduce(0, sample[is_top], torch.nonzero(is_top).squeeze(1), reduce="amin")
        # The best neighbour of each sample (the first of equal margins) is all that offer() would keep.
        has = first < len(sample)  # samples with no neighbour keep their choice (and top stays -inf)
        best_moves = current.clone()
        best_moves[has] = _moved(current, sample[first[has]], pixel[first[has]], option[first[has]])
        best.offer(rows[active][has], best_moves[has], top[has])
        improved = top > margin[active]
        if not bool(improved.any()):
            return
        moving = active[improved]
        choice[moving] = best_moves[improved]
        margin[moving] = top[improved]
        active = moving


def _moved(current: Tensor, sample: Tensor, pixel: Tensor, option: Tensor) -> Tensor:
    """Choices ``current[sample]`` with ``pixel`` switched to ``option``, one row per neighbour."""
    moved = current[sample].clone()
    moved[torch.arange(len(sample), device=current.device), pixel] = option
    return moved


# --------------------------------------------------------------------------------- the attack


def sx_attack(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps: float,
    *,
    budget: SearchBudget | None = None,
    seed: int | None = None,
) -> AttackResult:
    """Search S(x) of a defended model ``nn.Sequential(Discretize(codebook), net)`` for a misclassified member.

    Works for any codebook (the images' channels, or one channel for every
    value alone; any k, every metric). The search
    space is each pixel's reachable codes (:func:`pixdisc.realize.pixel_options`).
    Per sample the result is the best member found (the first misclassified
    one, else the highest CW margin), mapped back to a real input ``x_adv``
    with ``||x_adv - x||_inf <= eps`` (exactly) in [0, 1]; ``success`` holds
    only where the whole defended model misclassifies that ``x_adv``.
    Deterministic for a ``seed``; the model runs in eval mode.
    """
    budget = budget or SearchBudget()
    eps = check_eps(eps)
    defense, net = split_defended(model, required_by="the S(x) attack")
    images = as_images(x, min_ndim=3).detach()
    check_channels(defense.codebook, images.shape[1:])
    labels = as_labels(y, images.shape[0])
    if not len(images):
        nothing = torch.zeros(0, dtype=torch.bool)
        return AttackResult(x_adv=images.clone(), success=nothing, clean_correct=nothing, adv_correct=nothing,
                            clean_pred=labels.clone(), adv_pred=labels.clone(), loss=torch.zeros(0),
                            margin=torch.zeros(0), params={"attack": "sx", "eps": float(eps)})
    device = model_device(model, images.device)
    images, labels = images.to(device, torch.float32), labels.to(device)
    generator = _generator(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_logits = model(images)
        _check_logits(clean_logits, labels)
        x_adv, found, problem = _search(net, defense.codebook, images, labels, eps, budget, generator)
        with torch.no_grad():
            adv_logits = model(x_adv)
    finally:
        model.train(was_training)
    _check_within(x_adv, images, eps)
    confirmed = adv_logits.argmax(dim=1) != labels
    params = {"attack": "sx", "eps": float(eps), "seed": None if seed is None else int(seed), **asdict(budget),
              "forward_passes": int(problem.forwards), "unrealized_codes": int(problem.dropped),
              "search_found_but_not_confirmed": int((found & ~confirmed).sum())}
    return result_from_inputs(images, labels, x_adv, clean_logits, adv_logits, params)


def search_members(net: nn.Module, codebook: Any, x: Tensor, y: Tensor, eps: float, budget: SearchBudget,
                   seed: int, meter: Meter | None = None) -> tuple[Tensor, Tensor, int]:
    """The S(x) search on the bare classifier ``net`` (certify's counterexample stage).

    Returns (x_adv, found, forward passes): per sample a real input within eps
    realizing the best member found, and whether the search saw that member
    misclassified (the caller checks x_adv through T and F before trusting
    it). ``meter`` is charged every forward pass before it runs; when it runs
    out the search stops and returns what it has found so far. ``net`` runs in
    the mode it is in (certify passes it in eval mode).
    """
    x_adv, found, problem = _search(net, codebook, x, y, eps, budget, _generator(seed), meter)
    return x_adv, found, problem.forwards


def _search(net: nn.Module, codebook: Any, images: Tensor, labels: Tensor, eps: float, budget: SearchBudget,
            generator: torch.Generator | None, meter: Meter | None = None) -> tuple[Tensor, Tensor, _Problem]:
    """The search stages of the module docstring; a meter that runs out ends them early. Returns the
    realized best member per sample, whether it was seen misclassified, and the problem (its counts)."""
    problem = _Problem(net, codebook, images, labels, eps, budget.chunk, meter)
    n = images.shape[0]
    device = images.device
    everyone = torch.arange(n, device=device)
    best = None
    try:
        best = _Best(problem, n)
        small = problem.log2_size <= budget.enumerate_log2
        _enumerate(problem, best, everyone[small.to(device) & ~best.broken])
        searched = everyone[~small.to(device)]
        # Every single change of T(x) first: the members next to T(x), where no gradient need point.
        rows = searched[~best.broken[searched]]
        _local_search(problem, best, rows, best.choice[rows], best.margin[rows], 1)
        for restart in range(budget.restarts):
            rows = searched[~best.broken[searched]]
            if not len(rows):
                break
            rounded = _relaxed_start(problem, best, rows, budget.relax_steps, restart, generator)
            keep = ~best.broken[rows]
            rows, rounded = rows[keep], rounded[keep]
            if not len(rows):
                break
            # The first restart goes on from the best rounding; later ones from their own random relaxation.
            start = best.choice[rows] if restart == 0 else rounded
            choice, margin = _tabu_flips(problem, best, rows, start, budget.flip_steps, budget.tabu_tenure)
            _local_search(problem, best, rows, choice, margin, budget.local_steps)
    except BudgetExhausted:
        pass  # the meter ran out: what was found so far stands
    if best is None:  # out of budget before T(x) itself was evaluated
        choice = torch.zeros(n, problem.positions.shape[1], dtype=torch.int64, device=device)
        found = torch.zeros(n, dtype=torch.bool, device=device)
    else:
        choice, found = best.choice, best.broken.clone()
    return _realize(problem, images, choice), found, problem


def _realize(problem: _Problem, x: Tensor, choice: Tensor) -> Tensor:
    """x with every ambiguous pixel set to the input value that realizes its chosen code."""
    n, channels = x.shape[0], problem.channels
    rows = torch.arange(n, device=x.device)
    values = problem.realize.gather(2, choice[:, :, None, None].expand(-1, -1, 1, channels)).squeeze(2)
    flat = torch.cat([x.reshape(n, channels, -1), torch.zeros(n, channels, 1, device=x.device)], dim=2)
    index = problem.positions[rows][:, None, :].expand(-1, channels, -1)
    flat = flat.scatter(2, index, values.transpose(1, 2))
    return flat[:, :, :-1].reshape(x.shape)


def _check_within(x_adv: Tensor, x: Tensor, eps: float) -> None:
    adv, clean = x_adv.detach().cpu().numpy(), x.detach().cpu().numpy()
    if not (within_eps(adv, clean, eps).all() and adv.min(initial=0) >= 0 and adv.max(initial=0) <= 1):
        raise RuntimeError("internal error: the S(x) attack built an input outside the eps-ball or [0, 1]")
