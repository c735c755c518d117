"""The attack suite: budgets, named attacks, and the per-sample worst case over several attacks."""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..models import _model_device
from .base import AttackResult, _as_images, _as_labels, _check_logits, _derive_seed, _is_real, _jsonable, cw_margin_loss
from .gradient import adam_sign_attack, pgd


# Attack budgets of the 2019 paper (Section II-F), on the [0,1] pixel scale.
# The paper states eps and steps; the MNIST/Fashion-MNIST step 0.01 and the
# CIFAR-10/GTSRB step 2/255 for eps=8/255 come from the authors' configs. For
# the budgets without a published step size (CIFAR-10 natural eps=2/255,
# ImageNet) we use eps/4, the ratio of the CIFAR-10 setting. The BPDA
# temperature alpha belongs to the defense, not to these budgets.
PAPER_BUDGETS: dict[str, dict[str, float | int]] = {
    "mnist": {"eps": 0.3, "steps": 100, "step_size": 0.01},
    "fashion_mnist": {"eps": 0.1, "steps": 100, "step_size": 0.01},
    "cifar10": {"eps": 8 / 255, "steps": 40, "step_size": 2 / 255},
    "cifar10_nat": {"eps": 2 / 255, "steps": 40, "step_size": 0.5 / 255},
    "gtsrb": {"eps": 8 / 255, "steps": 40, "step_size": 2 / 255},
    "imagenet": {"eps": 4 / 255, "steps": 10, "step_size": 1 / 255},
    "imagenet_nat": {"eps": 1 / 255, "steps": 1, "step_size": 1 / 255},
}


def _sx_attack(*args: Any, **kwargs: Any) -> AttackResult:
    from ..sx_attack import sx_attack  # imports this module: resolved at call time

    return sx_attack(*args, **kwargs)


_sx_attack.__name__ = "sx_attack"

ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "pgd": pgd,
    "adam_sign": adam_sign_attack,
    "sx": _sx_attack,
}


# ----------------------------------------------------------------------------
# Evaluation over several attacks

# A mapping {"attack": "pgd" | "adam_sign", **keyword arguments}, or a callable
# (model, x, y) -> AttackResult | adversarial images (e.g. a torchattacks attack
# wrapped in a lambda).
AttackSpec = Union[Mapping[str, Any], Callable[..., Any]]


def _spec_name(spec: AttackSpec, position: int) -> str:
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
    if not _is_real(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
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
        from ..sx_attack import split_defended

        split_defended(model)  # a clear error now if the discretizer is not the first layer
    have_torchattacks = importlib.util.find_spec("torchattacks") is not None
    return [name for name in names
            if (defended or name not in _DEFENSE_ONLY) and (have_torchattacks or name not in _TORCHATTACKS)]


def default_attacks(model: nn.Module, eps: float, **options: Any) -> list[AttackSpec]:
    """The strongest suite pixdisc has for ``model`` (:data:`SUITE`, what applies), strongest and cheapest first.

    For a model ``Sequential(Discretize(cb), net)``: the S(x) search
    (:func:`pixdisc.sx_attack.sx_attack`), BPDA PGD with cross-entropy and CW
    margin and the paper's Adam-on-sign attack, then, when torchattacks is
    installed, APGD-CE and APGD-DLR through the BPDA gradient and the
    gradient-free Square attack on the hard model. For any other model the
    gradient attacks. ``options`` go to :func:`attack_spec`.
    """
    return [attack_spec(name, eps, **options) for name in applicable_attacks(model)]


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


def result_from_inputs(x: Tensor, y: Tensor, x_adv: Tensor, clean_logits: Tensor, adv_logits: Tensor,
                       params: dict[str, Any]) -> AttackResult:
    """The AttackResult of checked adversarial inputs, success judged by the model's own logits on them."""
    clean_pred = clean_logits.argmax(dim=1)
    # A misclassified clean point counts as broken with no perturbation, as in pgd.
    use_clean = clean_pred != y
    x_adv = torch.where(use_clean.view(-1, *([1] * (x.ndim - 1))), x, x_adv)
    adv_logits = torch.where(use_clean[:, None], clean_logits, adv_logits)
    adv_pred = adv_logits.argmax(dim=1)
    margin = cw_margin_loss(adv_logits, y)
    return AttackResult(
        x_adv=x_adv,
        success=adv_pred != y,
        clean_correct=clean_pred == y,
        adv_correct=adv_pred == y,
        clean_pred=clean_pred,
        adv_pred=adv_pred,
        loss=margin,
        margin=margin,
        params=params,
    )


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
    for position, spec in enumerate(attacks):
        if isinstance(spec, Mapping):
            if spec.get("attack") not in ATTACKS:
                raise ValueError(f"attack spec {position} needs 'attack' set to one of {sorted(ATTACKS)}")
            if "target" in spec:
                raise ValueError("evaluate_robustness measures untargeted robustness; drop 'target'")
        elif not callable(spec):
            raise ValueError(f"attack spec {position} is neither a mapping nor a callable")
    images = _as_images(x).detach()
    labels = _as_labels(y, images.shape[0])
    target_device = torch.device(device) if device is not None else _model_device(model, images.device)
    batch_results: list[AttackResult] = []
    count = images.shape[0]
    batch_count = (count + batch_size - 1) // batch_size
    with tqdm(total=batch_count * len(attacks), desc="attacks", unit="attack", disable=not progress) as bar:
        for batch_index in range(batch_count):
            start = batch_index * batch_size
            x_batch = images[start : start + batch_size].to(target_device)
            y_batch = labels[start : start + batch_size].to(target_device)
            combined: AttackResult | None = None
            for position, spec in enumerate(attacks):
                batch_seed = _derive_seed(seed, position, batch_index)
                if isinstance(spec, Mapping) and spec.get("seed") is not None:
                    batch_seed = _derive_seed(int(spec["seed"]), position, batch_index)
                    spec = {**spec, "seed": batch_seed}
                if combined is None:
                    result = _run_spec(spec, model, x_batch, y_batch, batch_seed, eps)
                    result.attack_index = torch.zeros(len(result), dtype=torch.int64, device=result.success.device)
                    combined = result
                else:
                    remaining = torch.nonzero(~combined.success).squeeze(1)
                    if remaining.numel():
                        result = _run_spec(spec, model, x_batch[remaining], y_batch[remaining], batch_seed, eps)
                        _merge_worst(combined, result, remaining, position)
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
            {key: _jsonable(value) for key, value in spec.items() if key != "seed"} if isinstance(spec, Mapping)
            else {"name": _spec_name(spec, position), **getattr(spec, "params", {})}
            for position, spec in enumerate(attacks)
        ],
        "seed": seed,
    }
    return result


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
