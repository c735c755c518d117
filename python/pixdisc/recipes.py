"""Named recipes of certified training: every hyperparameter of a run in one visible place.

A :class:`Recipe` is the network (architecture, width, BatchNorm, initialisation),
the loss (bound, weight of the attack member) and the schedule (epochs, warm-up,
eps ramp, learning-rate milestones). The schedule is stored as shares of the
epochs, so ``recipe.with_epochs(n)`` stretches it to a shorter or longer run;
:meth:`Recipe.schedule` gives the absolute numbers ``train_certified`` takes.
``pixdisc train --mode certified --recipe NAME --show-recipe`` prints one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["RECIPES", "Recipe", "get_recipe", "recipe_from_checkpoint", "train_recipe"]

BOUNDS = ("ibp", "crown-ibp", "crown")
INITS = ("default", "ibp")


@dataclass(frozen=True)
class Recipe:
    """One certified-training configuration (see the module docstring); build variants with :meth:`replace`."""

    name: str
    summary: str
    eps: Optional[float] = None  # training eps; None: the caller gives it (`pixdisc train --eps`)
    certify_eps: Optional[float] = None  # the eps the model is meant to be certified at (None: eps)
    arch: str = "cert_cnn"
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    init: str = "default"  # "ibp": pixdisc.models.ibp_initialise (Shi et al. 2021)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    warmup_epochs: int = 1  # natural epochs before the ramp
    ramp_share: float = 1 / 3  # the eps ramp lasts this share of the epochs (at least one; 0: no ramp)
    lr_milestone_shares: Sequence[float] = (0.7, 0.85)  # lr / 10 from these shares of the epochs on
    kappa_end: float = 0.7  # weight of the point loss after the ramp (the rest is the bound loss)
    member_weight: float = 0.0  # share of the point loss taken on the attack member instead of T(x)
    member_steps: int = 1
    bound: str = "ibp"

    def __post_init__(self) -> None:
        problems = []
        for name in ("eps", "certify_eps"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                problems.append(f"{name} must lie in [0, 1] or be None, got {value!r}")
        for name in ("epochs", "batch_size", "member_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            problems.append(f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        for name in ("ramp_share", "kappa_end", "member_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                problems.append(f"{name} must lie in [0, 1], got {value!r}")
        if any(not isinstance(s, (int, float)) or not 0 <= s < 1 for s in self.lr_milestone_shares):
            problems.append(f"lr_milestone_shares must lie in [0, 1), got {list(self.lr_milestone_shares)!r}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if self.bound not in BOUNDS:
            problems.append(f"bound must be one of {BOUNDS}, got {self.bound!r}")
        if self.init not in INITS:
            problems.append(f"init must be one of {INITS}, got {self.init!r}")
        if problems:
            raise ValueError(f"recipe {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs))
        object.__setattr__(self, "lr_milestone_shares", tuple(float(s) for s in self.lr_milestone_shares))

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` (checked like a new recipe); unknown names are a ValueError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown recipe field(s) {unknown}; fields: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def with_epochs(self, epochs: int) -> "Recipe":
        """The same recipe over ``epochs`` epochs: ramp and milestones keep their shares."""
        return self.replace(epochs=epochs)

    def schedule(self) -> dict[str, Any]:
        """``train_certified``'s schedule in epochs: warmup_epochs, ramp_epochs, lr_milestones, kappa_end."""
        # 1e-9: a share of 1/3 times 9 epochs must give 3, not 2.9999999.
        return {"warmup_epochs": min(self.warmup_epochs, self.epochs),
                "ramp_epochs": max(1, int(self.epochs * self.ramp_share + 1e-9)) if self.ramp_share else 0,
                "lr_milestones": [int(self.epochs * share + 1e-9) for share in self.lr_milestone_shares],
                "kappa_end": self.kappa_end}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the form model files and checkpoints keep); :meth:`from_dict` reads it back."""
        data = dataclasses.asdict(self)
        data["arch_kwargs"] = dict(self.arch_kwargs)
        data["lr_milestone_shares"] = list(self.lr_milestone_shares)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"not a pixdisc recipe: unknown field(s) {unknown}")
        return cls(**dict(data))

    def describe(self) -> list[str]:
        """The recipe as text lines, schedule in absolute epochs (what --show-recipe prints)."""
        schedule = self.schedule()
        eps = "given by the caller (--eps)" if self.eps is None else f"{self.eps:g}"
        if self.certify_eps is not None:
            eps += f" (for certification at eps {self.certify_eps:g})"
        network = ", ".join(f"{key}={value}" for key, value in self.arch_kwargs.items()) or "default size"
        attack = f"the attack member ({self.member_steps} signed-gradient step(s) over the vertices of S(x)'s hull)"
        member = {0.0: "T(x) only", 1.0: attack}.get(float(self.member_weight),
                                                      f"{self.member_weight:g} x {attack}, {1 - self.member_weight:g} x T(x)")
        return [f"recipe {self.name}: {self.summary}",
                f"  network       {self.arch} ({network}), init {self.init}",
                f"  training eps  {eps}",
                f"  epochs        {self.epochs} (batch {self.batch_size}, Adam lr {self.lr:g}, divided by 10 at "
                f"epoch(s) {', '.join(map(str, schedule['lr_milestones'])) or 'never'})",
                f"  schedule      {schedule['warmup_epochs']} natural epoch(s), then eps ramps from 0 over "
                f"{schedule['ramp_epochs']} epoch(s)",
                f"  loss          kappa * point + (1 - kappa) * CE(bound), kappa 1 -> {self.kappa_end:g} over the "
                f"ramp; bound {self.bound}",
                f"  point loss    {member}"]

    def build_network(self, in_channels: int, num_classes: int, input_size: Sequence[int], seed: int) -> Any:
        """The recipe's untrained network, drawn from ``seed`` without touching the global RNG."""
        import torch

        from .models import build_model, ibp_initialise

        kwargs = dict(self.arch_kwargs)
        if self.arch != "cifar_resnet":
            kwargs.setdefault("input_size", [int(side) for side in input_size])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_model(self.arch, in_channels=in_channels, num_classes=num_classes, **kwargs)
            if self.init == "ibp":
                ibp_initialise(net)
        return net


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe("ibp", "interval-bound training with a natural-loss share (the schedule `--epochs` used to derive): "
                  "CertCNN, 20 epochs, eps ramped over the first third"),
    # Chosen by 20,000-image, 10-epoch probes (benchmarks/recipe_probes/results.md; CROWN-verified share of
    # 1,000 test images at eps 0.1): the attack member +1.8 points over T(x) alone at eps_train 0.12,
    # eps_train 0.12 +0.7 over 0.15, width 32 / hidden 512 +1.5 over 16 / 256; BatchNorm with IBP
    # initialisation -6.6 and IBP initialisation alone -0.2 at this depth, so both off.
    Recipe("fashion-mnist", "Fashion-MNIST at eps 0.1 behind `pixdisc codebook --dataset fashion_mnist "
                            "--certified`: attack member plus interval bounds, a wider CertCNN, 24 epochs",
           eps=0.12, certify_eps=0.1, arch_kwargs={"width": 32, "hidden": 512}, epochs=24, member_weight=1.0,
           kappa_end=0.7),
    # MNIST-5k (4,000 training images) behind the k=2 density codes: benchmarks/certify_mnist.py's budgets with
    # the attack member (probes: +0.3 / +0.5 points CROWN-verified at eps 0.1 / 0.3; width 32 added 0.1).
    Recipe("mnist5k-eps0.1", "MNIST-5k at eps 0.1 behind the k=2 density codes: attack member plus interval "
                             "bounds, 40 epochs", eps=0.15, certify_eps=0.1, epochs=40, member_weight=1.0),
    Recipe("mnist5k-eps0.3", "MNIST-5k at eps 0.3 behind the k=2 density codes: attack member plus interval "
                             "bounds, 80 epochs", eps=0.4, certify_eps=0.3, epochs=80, member_weight=1.0),
)}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (one of :data:`RECIPES`)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}") from None


def train_recipe(
    recipe: Recipe,
    x: Any,
    y: Any,
    codebook: Any,
    *,
    eps: Optional[float] = None,
    seed: int = 0,
    num_classes: int = 10,
    progress: bool = True,
    device: Any = None,
    checkpoint_path: Any = None,
    on_epoch: Optional[Callable[[dict[str, float]], None]] = None,
) -> tuple[Any, dict[str, list[float]]]:
    """Build the recipe's network (from ``seed``) and train it with :func:`pixdisc.bound_training.train_certified`.

    ``eps`` overrides the recipe's training eps (needed when the recipe has
    none). The checkpoint records the recipe, so resuming under another one
    is refused. Returns (network in eval mode, history).
    """
    from .inputs import as_images
    from .bound_training import train_certified

    eps = recipe.eps if eps is None else eps
    if eps is None:
        raise ValueError(f"recipe {recipe.name!r} has no training eps: pass eps=")
    images = as_images(x)
    net = recipe.build_network(int(images.shape[1]), num_classes, images.shape[2:], seed)
    return train_certified(
        net, images, y, codebook, eps=eps, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
        member_weight=recipe.member_weight, member_steps=recipe.member_steps, bound=recipe.bound, seed=seed,
        progress=progress, device=device, checkpoint_path=checkpoint_path, on_epoch=on_epoch,
        recipe=recipe.to_dict(), **recipe.schedule())


def recipe_from_checkpoint(path: Any) -> Recipe:
    """The recipe a training checkpoint (``train_recipe(checkpoint_path=...)``) was written under."""
    import json

    from .models import safe_torch_load

    checkpoint = safe_torch_load(path, "cpu", "pixdisc training checkpoint",
                                 "pass a checkpoint written by `pixdisc train --mode certified --checkpoint FILE`")
    try:
        config = json.loads(checkpoint["config"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path} is not a pixdisc training checkpoint (no training config inside)") from None
    if not isinstance(config, dict) or config.get("recipe") is None:
        raise ValueError(f"{path} was not trained from a recipe (pixdisc.recipes.train_recipe or `pixdisc train "
                         f"--recipe`), so it records none")
    return Recipe.from_dict(config["recipe"])
