"""The attack suite: named attacks, the default suite, and the per-sample worst case over several attacks."""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..inputs import as_images, as_labels, check_eps, split_defended
from ..models import model_device
from .base import AttackResult, _check_logits, _jsonable, derive_seed, result_from_inputs
from .gradient import adam_sign_attack, pgd
from .sx import SearchBudget, sx_attack


ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "pgd": pgd,
    "adam_sign": adam_sign_attack,
    "sx": sx_attack,
}


# ----------------------------------------------------------------------------
# Evaluation over several attacks

# A mapping {"attack": "pgd" | "adam_sign", **keyword arguments}, or a callable
# (model, x, y) -> AttackResult | adversarial images (e.g. a torchattacks attack
# wrapped in a lambda).
AttackSpec = Union[Mapping[str, Any], Callable[..., Any]]


@dataclass(frozen=True)
class Stage:
    """An attack of an adaptive suite, with where it spends its effort (an entry of ``evaluate_robustness``'s list).

    ``focus``: the share of the samples still standing that it attacks, those
    closest to breaking first (highest CW margin any earlier attack left).
    ``chained``: it runs only while the chained attack before it broke
    something in the same batch, so a family of attacks stops where it stops
    paying. The first entry of a list always attacks every sample.
    """

    spec: AttackSpec
    focus: float = 1.0
    chained: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.focus, (int, float)) and 0 < self.focus <= 1):
            raise ValueError(f"Stage.focus must be in (0, 1], got {self.focus!r}")
        if isinstance(self.spec, Stage):
            raise ValueError("a Stage wraps an attack spec, not another Stage")


def _spec_name(spec: AttackSpec | Stage, position: int) -> str:
    if isinstance(spec, Stage):
        return _spec_name(spec.spec, position)
    if isinstance(spec, Mapping):
        return str(spec.get("name", spec.get("attack", f"attack{position}")))
    return getattr(spec, "__name__", type(spec).__name__)


def contains_discretize(model: nn.Module) -> bool:
    """Whether ``model`` has a :class:`pixdisc.Discretize` anywhere inside it."""
    from ..discretize import Discretize

    return any(isinstance(module, Discretize) for module in model.modules())


# Every attack of the suite by name, strongest and cheapest first for a discretized model.
SUITE: tuple[str, ...] = ("sx", "pgd_ce", "pgd_cw", "adam_sign", "apgd_ce", "apgd_dlr", "square")
# Names that only make sense against a discretizer: the S(x) search needs one; the
# gradient-free Square is what catches gradient masking, which only a defense causes.
_DEFENSE_ONLY = ("sx", "square")
_TORCHATTACKS = ("apgd_ce", "apgd_dlr", "square")


def attack_spec(
    name: str,
    eps: float,
    *,
    steps: int = 100,
    step_size: float | None = None,
    square_queries: int = 1000,
    sx_budget: Any = None,
    seed: int = 0,
) -> AttackSpec:
    """The ``evaluate_robustness`` spec of one named attack of :data:`SUITE` (``step_size`` default ``eps / 30``)."""
    check_eps(eps)
    step_size = eps / 30 if step_size is None else step_size
    budget = {"eps": float(eps), "steps": int(steps), "step_size": float(step_size)}
    if name == "sx":
        return {"name": name, "attack": "sx", "eps": float(eps), **({} if sx_budget is None else {"budget": sx_budget})}
    if name in ("pgd_ce", "pgd_cw"):
        return {"name": name, "attack": "pgd", "loss": name[-2:], **budget}
    if name == "adam_sign":
        return {"name": name, "attack": "adam_sign", "loss": "cw", **budget}
    if name in _TORCHATTACKS:
        from ..integrations import TorchattacksAttack

        if name == "square":
            return TorchattacksAttack(name, "Square", norm="Linf", eps=float(eps), n_queries=int(square_queries),
                                      seed=seed)
        return TorchattacksAttack(name, "APGD", norm="Linf", eps=float(eps), steps=int(steps), loss=name[5:],
                                  seed=seed)
    raise ValueError(f"unknown attack {name!r}; choose from {list(SUITE)}")


def applicable_attacks(model: nn.Module, names: Sequence[str] = SUITE) -> list[str]:
    """``names`` without those that do not apply to ``model`` or need torchattacks when it is missing."""
    defended = contains_discretize(model)
    if defended:
        split_defended(model, required_by="the S(x) attack")  # a clear error now if Discretize is not first
    have_torchattacks = importlib.util.find_spec("torchattacks") is not None
    return [name for name in names
            if (defended or name not in _DEFENSE_ONLY) and (have_torchattacks or name not in _TORCHATTACKS)]


def default_attacks(model: nn.Module, eps: float, **options: Any) -> list[AttackSpec]:
    """The strongest suite pixdisc has for ``model`` (:data:`SUITE`, what applies), strongest and cheapest first.

    For a model ``Sequential(Discretize(cb), net)``: the S(x) search
    (:func:`pixdisc.attacks.sx.sx_attack`), BPDA PGD with cross-entropy and CW
    margin and the paper's Adam-on-sign attack, then, when torchattacks is
    installed, APGD-CE and APGD-DLR through the BPDA gradient and the
    gradient-free Square attack on the hard model. For any other model the
    gradient attacks. ``options`` go to :func:`attack_spec`.
    """
    return [attack_spec(name, eps, **options) for name in applicable_attacks(model)]


# The adaptive suite's split of effort, measured on the demo's models (benchmarks/demo_suite.py): of the
# images the full suite breaks and a default S(x) search does not, nearly all are among the 15% of its
# survivors with the smallest margins. So a quick S(x) search runs on every image, then ever stronger
# attacks on ever smaller shares of the survivors, closest to breaking first: (name, focus).
# Evaluations in chunks of 512 images: 1.5x faster than 2,048 for small CNNs on a 2-core CPU (measured), and
# less memory.
_CHUNK = 512
QUICK_SEARCH = SearchBudget(restarts=1, relax_steps=10, flip_steps=6, local_steps=1, chunk=_CHUNK)
FOCUS_SEARCH = SearchBudget(chunk=_CHUNK)
ADAPTIVE_FOCUS = {"sx_focus": 0.25, "sx_deep": 0.05, "square": 0.2, "gradient": 0.25}
DEEP_SEARCH_FACTOR = 4.0
GRADIENT_ORDER = ("apgd_ce", "pgd_ce", "apgd_dlr", "pgd_cw", "adam_sign")
ADAPTIVE_ORDER = ("sx", "sx_focus", "sx_deep", "square") + GRADIENT_ORDER


def adaptive_attacks(model: nn.Module, eps: float, *, steps: int = 100, step_size: float | None = None,
                     square_queries: int = 1000, seed: int = 0, names: Sequence[str] = SUITE) -> list[Stage]:
    """The attacks of :func:`default_attacks`, spending their effort where they break images.

    For a discretized model: a quick S(x) search (:data:`QUICK_SEARCH`) on
    every sample, the default search on the quarter of the survivors with the
    smallest margins, four times that on the closest 5%, Square on the
    closest 20%, then the BPDA gradient attacks (APGD-CE, PGD-CE, APGD-DLR,
    PGD-CW, Adam-sign, what applies) on the closest quarter, each only while
    the one before it still broke something. For any other model the
    gradient attacks on every survivor, chained the same way.
    Entries of :func:`evaluate_robustness`'s list; ``names`` limits it to
    those attacks of :data:`SUITE`.
    """
    names = applicable_attacks(model, names)
    options = {"steps": steps, "step_size": step_size, "square_queries": square_queries, "seed": seed}
    stages: list[Stage] = []
    if "sx" in names:
        stages.append(Stage(attack_spec("sx", eps, sx_budget=QUICK_SEARCH, **options)))
        stages.append(Stage({**attack_spec("sx", eps, sx_budget=FOCUS_SEARCH, **options), "name": "sx_focus"},
                            focus=ADAPTIVE_FOCUS["sx_focus"]))
        stages.append(Stage({**attack_spec("sx", eps, sx_budget=FOCUS_SEARCH.scaled(DEEP_SEARCH_FACTOR),
                                           **options), "name": "sx_deep"}, focus=ADAPTIVE_FOCUS["sx_deep"]))
    if "square" in names:
        stages.append(Stage(attack_spec("square", eps, **options), focus=ADAPTIVE_FOCUS["square"]))
    # Behind a discretizer the S(x) search has done the heavy lifting; on a plain model the gradient
    # attacks are all there is, and each runs on every survivor while the chain pays.
    focus = ADAPTIVE_FOCUS["gradient"] if "sx" in names else 1.0
    for name in GRADIENT_ORDER:
        if name in names:
            first = not stages
            stages.append(Stage(attack_spec(name, eps, **options), focus=1.0 if first else focus, chained=not first))
    return stages


def _run_spec(
    spec: AttackSpec,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    seed: int,
    eps: float | None,
) -> AttackResult:
    if isinstance(spec, Mapping):
        options = dict(spec)
        options.pop("name", None)
        name = options.pop("attack", None)
        if name not in ATTACKS:
            raise ValueError(f"attack spec needs 'attack' set to one of {sorted(ATTACKS)}, got {name!r}")
        options.setdefault("seed", seed)
        return ATTACKS[name](model, x, y, **options)
    outcome = spec(model, x, y)
    if isinstance(outcome, AttackResult):
        return outcome
    if not isinstance(outcome, Tensor) or outcome.shape != x.shape:
        raise ValueError(
            f"attack callable {_spec_name(spec, 0)} must return an AttackResult or images of shape "
            f"{tuple(x.shape)}, got {type(outcome).__name__}"
        )
    x_adv = outcome.detach().to(x.device, x.dtype)
    # Allow float rounding from third-party clipping; reject real violations.
    tolerance = 1e-6
    if float(x_adv.min()) < -tolerance or float(x_adv.max()) > 1 + tolerance:
        raise ValueError(f"attack callable {_spec_name(spec, 0)} returned images outside [0,1]")
    if eps is not None and float((x_adv - x).abs().max()) > eps + tolerance:
        raise ValueError(f"attack callable {_spec_name(spec, 0)} returned a perturbation larger than eps={eps}")
    x_adv = x_adv.clamp(0.0, 1.0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_logits = model(x)
            adv_logits = model(x_adv)
    finally:
        model.train(was_training)
    _check_logits(clean_logits, y)
    return result_from_inputs(x, y, x_adv, clean_logits, adv_logits,
                              {"attack": _spec_name(spec, 0), **getattr(spec, "params", {})})


def evaluate_robustness(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    attacks: Sequence[AttackSpec] | None = None,
    *,
    batch_size: int = 256,
    seed: int = 0,
    eps: float | None = None,
    steps: int = 100,
    step_size: float | None = None,
    device: str | torch.device | None = None,
    keep_adv: bool = True,
    progress: bool = True,
) -> AttackResult:
    """Run several untargeted attacks and keep, per sample, the worst case across them.

    With ``attacks=None`` the default suite runs (:func:`default_attacks`:
    for a discretized model the S(x) search, BPDA gradient attacks and, with
    torchattacks, APGD-CE/DLR and Square), which needs ``eps``; ``steps`` and
    ``step_size`` set its gradient attacks' budget.
    A sample is robust only if no attack succeeds. Its ``x_adv`` comes from the
    first attack (in list order) that succeeds, else from the attack leaving
    the highest CW margin; each attack after the first only runs on samples
    not yet broken. Data are processed in batches of ``batch_size`` on
    ``device`` (default: the model's); results come back on the CPU. Attack
    specs without their own ``seed`` get one derived from ``seed``, the
    attack's position and the batch index. ``eps``, if given, is checked
    against the perturbations returned by callables. ``keep_adv=False`` drops
    the adversarial images to save memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if attacks is None:
        if eps is None:
            raise ValueError("the default attack suite needs eps")
        attacks = default_attacks(model, eps, steps=steps, step_size=step_size, seed=seed)
    if not attacks:
        raise ValueError("attacks must name at least one attack")
    stages = [entry if isinstance(entry, Stage) else Stage(entry) for entry in attacks]
    for position, spec in enumerate(stage.spec for stage in stages):
        if isinstance(spec, Mapping):
            if spec.get("attack") not in ATTACKS:
                raise ValueError(f"attack spec {position} needs 'attack' set to one of {sorted(ATTACKS)}")
            if "target" in spec:
                raise ValueError("evaluate_robustness measures untargeted robustness; drop 'target'")
        elif not callable(spec):
            raise ValueError(f"attack spec {position} is neither a mapping nor a callable")
    images = as_images(x).detach()
    labels = as_labels(y, images.shape[0])
    target_device = torch.device(device) if device is not None else model_device(model, images.device)
    batch_results: list[AttackResult] = []
    seconds = [0.0] * len(stages)  # wall time per attack, over all batches
    count = images.shape[0]
    batch_count = (count + batch_size - 1) // batch_size
    with tqdm(total=batch_count * len(attacks), desc="attacks", unit="attack", disable=not progress) as bar:
        for batch_index in range(batch_count):
            start = batch_index * batch_size
            x_batch = images[start : start + batch_size].to(target_device)
            y_batch = labels[start : start + batch_size].to(target_device)
            combined: AttackResult | None = None
            chain_idle = False  # the last chained attack broke nothing in this batch
            for position, stage in enumerate(stages):
                spec = stage.spec
                batch_seed = derive_seed(seed, position, batch_index)
                if isinstance(spec, Mapping) and spec.get("seed") is not None:
                    batch_seed = derive_seed(int(spec["seed"]), position, batch_index)
                    spec = {**spec, "seed": batch_seed}
                started = time.perf_counter()
                if combined is None:
                    result = _run_spec(spec, model, x_batch, y_batch, batch_seed, eps)
                    result.attack_index = torch.zeros(len(result), dtype=torch.int64, device=result.success.device)
                    combined = result
                else:
                    remaining = _targets(combined, stage, chain_idle)
                    broken_before = int(combined.success.sum())
                    if remaining.numel():
                        result = _run_spec(spec, model, x_batch[remaining], y_batch[remaining], batch_seed, eps)
                        _merge_worst(combined, result, remaining, position)
                    if stage.chained:
                        chain_idle = int(combined.success.sum()) == broken_before
                seconds[position] += time.perf_counter() - started
                bar.update(1)
            assert combined is not None
            if not keep_adv:
                combined.x_adv = None
            batch_results.append(combined.to("cpu"))
            bar.set_postfix(robust=f"{sum(int(r.adv_correct.sum()) for r in batch_results)}/{start + len(x_batch)}")
    if not batch_results:
        empty_bool = torch.zeros(0, dtype=torch.bool)
        empty_long = torch.zeros(0, dtype=torch.int64)
        empty_float = torch.zeros(0)
        result = AttackResult(
            x_adv=images.clone() if keep_adv else None, success=empty_bool, clean_correct=empty_bool,
            adv_correct=empty_bool, clean_pred=empty_long, adv_pred=empty_long, loss=empty_float,
            margin=empty_float, attack_index=empty_long,
        )
    else:
        result = AttackResult.concatenate(batch_results)
    result.params = {
        "attacks": [
            {**({key: _jsonable(value) for key, value in stage.spec.items() if key != "seed"}
                if isinstance(stage.spec, Mapping)
                else {"name": _spec_name(stage.spec, position), **getattr(stage.spec, "params", {})}),
             **({"focus": stage.focus} if stage.focus < 1 else {}), **({"chained": True} if stage.chained else {}),
             "seconds": round(seconds[position], 3)}
            for position, stage in enumerate(stages)
        ],
        "seed": seed,
    }
    return result


def _targets(combined: AttackResult, stage: Stage, chain_idle: bool) -> Tensor:
    """Positions in the batch that ``stage`` attacks: those standing, its ``focus`` share closest to breaking."""
    remaining = torch.nonzero(~combined.success).squeeze(1)
    if stage.chained and chain_idle:
        return remaining[:0]
    if stage.focus < 1 and remaining.numel():
        keep = math.ceil(stage.focus * remaining.numel())
        order = torch.argsort(combined.margin[remaining], descending=True, stable=True)
        remaining = remaining[order[:keep]].sort().values
    return remaining


def _merge_worst(combined: AttackResult, result: AttackResult, index: Tensor, position: int) -> None:
    """Fold ``result`` (on samples ``index`` of ``combined``, none broken yet) into ``combined``."""
    take = result.success | (result.margin > combined.margin[index])
    if not bool(take.any()):
        return
    chosen = index[take]
    if combined.x_adv is not None and result.x_adv is not None:
        combined.x_adv[chosen] = result.x_adv[take].to(combined.x_adv.dtype)
    combined.success[chosen] = result.success[take]
    combined.adv_correct[chosen] = result.adv_correct[take]
    combined.adv_pred[chosen] = result.adv_pred[take]
    combined.loss[chosen] = result.loss[take].to(combined.loss.dtype)
    combined.margin[chosen] = result.margin[take].to(combined.margin.dtype)
    assert combined.attack_index is not None
    combined.attack_index[chosen] = position
