"""The experiment planner: which networks the paper's six settings need, and the recipe that trains each.

Every job that trains settings (``evaluate``/``demo`` through
:mod:`pixdisc.experiments`, ``reproduce``, the ``train`` command) asks this
module, so the sharing rules (the ``*_pre`` settings reuse the natural and
adversarial networks as they are; the ``*_re`` settings warm-start from them
at half the learning rate) and the recipes are written once.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..profiles import PAPER_TRAINING, profile
from ..train import SETTINGS, train_model, train_setting

if TYPE_CHECKING:  # pragma: no cover
    from .config import ExperimentConfig

__all__ = [
    "TRAINED_NETWORKS",
    "TrainedSettings",
    "adversarial_recipe",
    "certified_recipe",
    "check_settings",
    "networks_to_train",
    "train_settings",
]

# The networks training produces; the other two settings (disc_*_pre) put the
# defense in front of nat_pre / adv_pre without training anything.
TRAINED_NETWORKS = ("nat_pre", "adv_pre", "disc_nat_re", "disc_adv_re")
_NATURAL = {"nat_pre", "disc_nat_pre", "disc_nat_re"}
_ADVERSARIAL = {"adv_pre", "disc_adv_pre", "disc_adv_re"}

# A trainer returns the bare network (no defense in front) and its history.
Trainer = Callable[[], "tuple[nn.Module, dict[str, Any] | None]"]
# A store gets a network's name and its trainer; it may return a saved network instead of training.
Store = Callable[[str, Trainer], "tuple[nn.Module, dict[str, Any] | None]"]


def check_settings(settings: Sequence[str]) -> set[str]:
    """The settings as a set, or a ValueError naming what is unknown."""
    unknown = [name for name in settings if name not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; choose from {SETTINGS}")
    if not settings:
        raise ValueError("choose at least one setting")
    return set(settings)


def networks_to_train(settings: Sequence[str], adversarial_warm_start: bool = False) -> list[str]:
    """The networks (of :data:`TRAINED_NETWORKS`) the settings need, in the order they are trained."""
    wanted = check_settings(settings)
    need_adversarial = bool(wanted & _ADVERSARIAL)
    # disc_*_re warm-start from the matching *_pre network, so it is trained even when not reported.
    need_natural = bool(wanted & _NATURAL) or (need_adversarial and adversarial_warm_start)
    order = (["nat_pre"] if need_natural else []) + (["adv_pre"] if need_adversarial else [])
    return order + [name for name in ("disc_nat_re", "disc_adv_re") if name in wanted]


def adversarial_recipe(dataset: str) -> dict[str, Any]:
    """The paper's adversarial-training attack for a data set: ``eps``, ``attack_steps``, ``step_size``.

    The recipe is the data set's profile's (:mod:`pixdisc.profiles`); MNIST's for a data set without one.
    """
    found = profile(dataset)
    recipe = PAPER_TRAINING["mnist" if found is None else found.recipe]
    return {key: recipe[key] for key in ("eps", "attack_steps", "step_size")}


def certified_recipe(epochs: int) -> dict[str, Any]:
    """Schedule of bound-based training over ``epochs``: the ``ibp`` recipe's (:mod:`pixdisc.recipes`) — one
    natural epoch, eps ramped over the first third, learning rate divided by 10 at 70% and 85%, final loss
    weight 0.7 on the clean term."""
    from ..recipes import get_recipe

    schedule = get_recipe("ibp").with_epochs(epochs).schedule()
    return {**schedule, "lr_milestones": tuple(schedule["lr_milestones"])}


@dataclass
class TrainedSettings:
    """The models of the requested settings (in their order), with training histories and seconds."""

    models: dict[str, nn.Module]
    histories: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _train_now(name: str, train: Trainer) -> "tuple[nn.Module, dict[str, Any] | None]":
    return train()


def train_settings(
    config: "ExperimentConfig",
    x_train: Tensor,
    y_train: Tensor,
    defense: Optional[nn.Module],
    num_classes: int,
    *,
    progress: bool = True,
    store: Optional[Store] = None,
    on_start: Optional[Callable[[str], None]] = None,
    checkpoints: Optional[Callable[[str], "str | os.PathLike[str] | None"]] = None,
) -> TrainedSettings:
    """Train what ``config.settings`` need and return their models.

    ``store(name, trainer)`` decides where a network comes from (default:
    train it now); ``reproduce`` passes one that loads a saved network or
    trains and saves it. ``on_start(name)`` is called before each network
    (progress reporting). ``checkpoints(name)`` names the file each network's
    training checkpoints after every epoch and resumes from (``train_model``'s
    ``checkpoint_path``). ``seconds`` holds ``"train <name>"`` per network.
    """
    store = store or _train_now
    common = {"arch": config.arch, "arch_kwargs": dict(config.arch_kwargs), "num_classes": num_classes,
              "seed": config.seed, "progress": progress, "batch_size": config.batch_size, "device": config.device}
    attack = {"eps": config.train_eps, "attack_steps": config.train_steps, "step_size": config.train_step_size}
    networks: dict[str, nn.Module] = {}

    def checkpoint_of(name: str) -> "str | os.PathLike[str] | None":
        return None if checkpoints is None else checkpoints(name)

    def natural() -> "tuple[nn.Module, dict[str, Any]]":
        return train_setting("nat_pre", x_train, y_train, epochs=config.natural_epochs, lr=config.lr,
                             return_history=True, checkpoint_path=checkpoint_of("nat_pre"), **common)

    def adversarial() -> "tuple[nn.Module, dict[str, Any]]":
        if config.adversarial_warm_start:
            return train_model(copy.deepcopy(networks["nat_pre"]), x_train, y_train,
                               epochs=config.adversarial_epochs, adversarial=True, lr=config.adversarial_lr,
                               lr_milestones=config.adversarial_lr_milestones, seed=config.seed + 1,
                               progress=progress, batch_size=config.batch_size, device=config.device,
                               checkpoint_path=checkpoint_of("adv_pre"), **attack)
        return train_setting("adv_pre", x_train, y_train, epochs=config.adversarial_epochs,
                             lr=config.adversarial_lr, lr_milestones=config.adversarial_lr_milestones,
                             return_history=True, checkpoint_path=checkpoint_of("adv_pre"), **attack, **common)

    def retrained(name: str) -> Trainer:
        # Warm start from the matching *_pre network at half its learning rate, on discretized images.
        if name == "disc_nat_re":
            base, options = "nat_pre", {"epochs": config.retrain_epochs, "lr": config.lr / 2}
        else:
            base, options = "adv_pre", {"epochs": config.adversarial_retrain_epochs,
                                        "lr": config.adversarial_lr / 2, **attack}

        def train() -> "tuple[nn.Module, dict[str, Any]]":
            defended, history = train_setting(name, x_train, y_train, defense=defense, base=networks[base],
                                              return_history=True, checkpoint_path=checkpoint_of(name), **options,
                                              **common)
            return defended[1], history

        return train

    trainers = {"nat_pre": natural, "adv_pre": adversarial}
    result = TrainedSettings(models={})
    for name in networks_to_train(config.settings, config.adversarial_warm_start):
        if on_start is not None:
            on_start(name)
        started = time.perf_counter()
        networks[name], history = store(name, trainers[name] if name in trainers else retrained(name))
        result.seconds[f"train {name}"] = time.perf_counter() - started
        if history is not None:
            result.histories[name] = history
    for name in config.settings:
        if name in ("nat_pre", "adv_pre"):
            result.models[name] = networks[name].eval()
            continue
        # disc_*_pre: the defense in front of nat_pre / adv_pre as they are; disc_*_re: of the re-trained one.
        network = networks[name if name.endswith("_re") else name[len("disc_"):]]
        if defense is None:
            raise ValueError(f"setting {name} needs a defense module (e.g. pixdisc.Discretize)")
        device = next(iter(network.parameters()), torch.empty(0)).device
        result.models[name] = nn.Sequential(defense.to(device), network).eval()
    return result
