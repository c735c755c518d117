"""The experiment planner: what each set of settings trains, sharing, recipes, and the store hook."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import pixdisc  # noqa: E402
from pixdisc import plan  # noqa: E402
from pixdisc.experiments import QUICK_CONFIG  # noqa: E402


@pytest.mark.parametrize("settings, warm, expected", [
    (("nat_pre",), False, ["nat_pre"]),
    (("disc_adv_pre",), False, ["adv_pre"]),
    (("disc_adv_pre",), True, ["nat_pre", "adv_pre"]),  # adversarial training warm-starts from nat_pre
    (("disc_nat_re",), False, ["nat_pre", "disc_nat_re"]),
    (("disc_adv_re", "disc_nat_pre"), False, ["nat_pre", "adv_pre", "disc_adv_re"]),
    (plan.SETTINGS, False, ["nat_pre", "adv_pre", "disc_nat_re", "disc_adv_re"]),
])
def test_networks_to_train(settings, warm, expected):
    assert plan.networks_to_train(settings, warm) == expected


def test_unknown_or_no_setting_is_refused():
    with pytest.raises(ValueError, match="unknown setting.*nat_post"):
        plan.networks_to_train(("nat_post",))
    with pytest.raises(ValueError, match="at least one"):
        plan.networks_to_train(())


def test_recipes():
    assert plan.adversarial_recipe("mnist5k") == {"eps": 0.3, "attack_steps": 40, "step_size": 0.01}
    assert plan.adversarial_recipe("Fashion-MNIST")["eps"] == 0.1
    recipe = plan.certified_recipe(20)
    assert recipe["lr_milestones"] == (14, 17) and recipe["warmup_epochs"] == 1 and recipe["ramp_epochs"] == 6


def _tiny_data(n=48, side=8):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, side, side, generator=gen)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    return x, y


def test_train_settings_shares_networks_and_asks_the_store():
    x, y = _tiny_data()
    config = QUICK_CONFIG.replace(arch="mlp", arch_kwargs={"hidden": (8,)}, batch_size=16, train_steps=1)
    defense = pixdisc.Discretize(pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32)))
    asked = []

    def store(name, train):
        asked.append(name)
        network, history = train()
        assert not isinstance(network, nn.Sequential) or not isinstance(network[0], pixdisc.Discretize)
        return network, history

    trained = plan.train_settings(config, x, y, defense, 2, progress=False, store=store)
    assert asked == ["nat_pre", "adv_pre", "disc_nat_re", "disc_adv_re"]
    models = trained.models
    assert list(models) == list(config.settings)
    # The *_pre settings put the defense in front of the very networks nat_pre / adv_pre.
    assert models["disc_nat_pre"][1] is models["nat_pre"] and models["disc_adv_pre"][1] is models["adv_pre"]
    assert models["disc_nat_re"][0] is defense and models["disc_nat_re"][1] is not models["nat_pre"]
    assert set(trained.histories) == set(asked) and set(trained.seconds) == {f"train {n}" for n in asked}


def test_a_saved_network_is_not_trained_again():
    x, y = _tiny_data()
    config = QUICK_CONFIG.replace(arch="mlp", arch_kwargs={"hidden": (8,)}, settings=("disc_nat_pre",))
    defense = pixdisc.Discretize(pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32)))
    saved = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))

    def store(name, train):
        return saved, None  # as if loaded from disk: the trainer is never called

    trained = plan.train_settings(config, x, y, defense, 2, progress=False, store=store)
    assert trained.models["disc_nat_pre"][1] is saved and trained.histories == {}


def test_a_disc_setting_without_defense_is_refused():
    x, y = _tiny_data()
    config = QUICK_CONFIG.replace(arch="mlp", arch_kwargs={"hidden": (8,)}, settings=("disc_nat_pre",))
    with pytest.raises(ValueError, match="disc_nat_pre needs a defense"):
        plan.train_settings(config, x, y, None, 2, progress=False, store=lambda name, train: (nn.Linear(1, 1), None))
