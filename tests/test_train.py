"""Tests for pixdisc.train: natural/adversarial training, the six paper settings, determinism and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
load_digits = pytest.importorskip("sklearn.datasets").load_digits
from torch import Tensor, nn

from pixdisc.attacks import pgd
from pixdisc.models import build_model, predict
from pixdisc.train import PAPER_TRAINING, SETTINGS, train_model, train_setting

from standins import StandInDefense


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8x8 digits scaled to [0,1], NCHW, split 1200 / 300."""
    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(data.target, dtype=torch.int64)
    return images[:1200], labels[:1200], images[1200:1500], labels[1200:1500]


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", input_size=8, width=8, hidden=64)


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_size=8, hidden=[32])


def test_natural_training_learns_digits(digits):
    x_train, y_train, x_test, y_test = digits
    model, history = train_model(small_cnn(), x_train, y_train, epochs=10, lr=3e-3, batch_size=64, progress=True)
    assert not model.training
    test_accuracy = float((predict(model, x_test) == y_test).float().mean())
    assert test_accuracy > 0.85
    assert history["epoch"] == list(range(1, 11))
    assert history["accuracy"][-1] > 0.9
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["lr"]) == len(history["seconds"]) == 10


def test_same_seed_same_weights_and_rng_untouched(digits):
    x_train, y_train, _, _ = digits
    options = dict(epochs=2, batch_size=50, adversarial=True, eps=0.1, attack_steps=2, step_size=0.05, progress=False)
    first_model, second_model = tiny_mlp(), tiny_mlp()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first, _ = train_model(first_model, x_train[:300], y_train[:300], seed=5, **options)
    # Training reseeds torch privately: the caller's stream continues unchanged.
    assert torch.equal(torch.rand(3), before)
    second, _ = train_model(second_model, x_train[:300], y_train[:300], seed=5, **options)
    third, _ = train_model(tiny_mlp(), x_train[:300], y_train[:300], seed=6, **options)
    for (name, a), (_, b), (_, c) in zip(
        first.state_dict().items(), second.state_dict().items(), third.state_dict().items()
    ):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(first.state_dict().values(), third.state_dict().values()))


def test_adversarial_training_improves_robustness(digits):
    x_train, y_train, x_test, y_test = digits
    options = dict(epochs=10, lr=3e-3, batch_size=64, progress=False)
    natural, _ = train_model(tiny_mlp(), x_train, y_train, **options)
    robust, _ = train_model(
        tiny_mlp(), x_train, y_train, adversarial=True, eps=0.15, attack_steps=5, step_size=0.05, **options
    )
    natural_result = pgd(natural, x_test, y_test, 0.15, 10, 0.03, seed=0)
    robust_result = pgd(robust, x_test, y_test, 0.15, 10, 0.03, seed=0)
    assert robust_result.robust_accuracy > natural_result.robust_accuracy + 0.2
    assert robust_result.clean_accuracy > 0.7


def test_training_through_a_defense_trains_only_the_network(digits):
    x_train, y_train, _, _ = digits
    defense = StandInDefense()
    defense.register_parameter("frozen", nn.Parameter(torch.zeros(1)))
    network, _ = train_model(
        tiny_mlp(), x_train[:100], y_train[:100], epochs=1, batch_size=50, defense=defense,
        adversarial=True, eps=0.2, attack_steps=3, step_size=0.1, progress=False,
    )
    # Two batches: each has 3 attack steps through the defense (with gradients) plus the training step.
    assert defense.calls == 2 * (3 + 1)
    assert defense.gradient_calls == 2 * 3
    assert float(defense.frozen.detach()) == 0.0 and defense.frozen.grad is None
    assert isinstance(network, nn.Sequential) and not any(isinstance(m, StandInDefense) for m in network)


@pytest.mark.parametrize("setting", SETTINGS)
def test_train_setting_structure(setting, digits):
    x_train, y_train, _, _ = digits
    defense = StandInDefense()
    options = dict(
        arch="mlp", arch_kwargs={"hidden": [16]}, epochs=1, batch_size=100, eps=0.2, attack_steps=2,
        step_size=0.1, progress=False,
    )
    model, history = train_setting(
        setting, x_train[:200], y_train[:200], defense=defense, return_history=True, **options
    )
    assert not model.training
    if setting.startswith("disc_"):
        assert isinstance(model, nn.Sequential) and len(model) == 2
        assert model[0] is defense
        network = model[1]
    else:
        network = model
        assert not any(isinstance(module, StandInDefense) for module in model.modules())
    assert network(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert history["epoch"] == [1]
    # Only the retrained settings send training batches through the defense;
    # only the adversarial ones attack through its BPDA gradient.
    assert (defense.calls > 0) == setting.endswith("_re")
    assert (defense.gradient_calls > 0) == (setting == "disc_adv_re")


def test_train_setting_reuses_or_warm_starts_from_base(digits):
    x_train, y_train, _, _ = digits
    defense = StandInDefense()
    base = tiny_mlp()
    base_state = {key: value.clone() for key, value in base.state_dict().items()}
    bolted = train_setting("disc_nat_pre", x_train[:100], y_train[:100], defense=defense, base=base, progress=False)
    assert bolted[1] is base and bolted[0] is defense
    retrained = train_setting(
        "disc_nat_re", x_train[:100], y_train[:100], defense=defense, base=base, epochs=1, batch_size=50,
        progress=False,
    )
    assert retrained[1] is not base
    assert all(torch.equal(base_state[key], value) for key, value in base.state_dict().items())
    assert any(not torch.equal(base_state[key], value) for key, value in retrained[1].state_dict().items())


def test_train_setting_errors(digits):
    x_train, y_train, _, _ = digits
    with pytest.raises(ValueError, match="unknown setting"):
        train_setting("disc_magic", x_train[:10], y_train[:10], defense=StandInDefense())
    with pytest.raises(ValueError, match="needs a defense"):
        train_setting("disc_adv_re", x_train[:10], y_train[:10])
    with pytest.raises(ValueError, match="fixed by the setting"):
        train_setting("nat_pre", x_train[:10], y_train[:10], adversarial=True)


def _interrupt_after(model: nn.Module, calls: int) -> None:
    """Make ``model`` raise on its ``calls``-th forward pass, like a killed process."""
    counter = {"calls": 0}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        counter["calls"] += 1
        if counter["calls"] == calls:
            raise KeyboardInterrupt("simulated kill")

    model.register_forward_pre_hook(hook)


def test_checkpoint_resume_matches_uninterrupted_run(digits, tmp_path: Path):
    x_train, y_train, _, _ = digits
    x_small, y_small = x_train[:200], y_train[:200]
    options = dict(batch_size=50, lr=3e-3, adversarial=True, eps=0.1, attack_steps=2, step_size=0.05, progress=False)
    uninterrupted, full_history = train_model(small_cnn(), x_small, y_small, epochs=2, **options)

    checkpoint = tmp_path / "run" / "checkpoint.pt"
    train_model(small_cnn(), x_small, y_small, epochs=1, checkpoint_path=checkpoint, **options)
    assert checkpoint.exists()
    # The resumed second epoch is killed halfway (4 batches of 3 forward passes each).
    doomed = small_cnn()
    _interrupt_after(doomed, 6)
    with pytest.raises(KeyboardInterrupt):
        train_model(doomed, x_small, y_small, epochs=2, checkpoint_path=checkpoint, **options)
    assert [path.name for path in checkpoint.parent.iterdir()] == ["checkpoint.pt"]
    # A fresh process: a differently initialised model picks up the saved state.
    resumed, history = train_model(
        small_cnn(seed=99), x_small, y_small, epochs=2, checkpoint_path=checkpoint, **options
    )
    for (name, expected), (_, actual) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(expected, actual), name
    assert history["epoch"] == [1, 2]
    assert history["loss"] == pytest.approx(full_history["loss"])

    # Re-running a finished training just reloads it.
    again, _ = train_model(small_cnn(seed=7), x_small, y_small, epochs=2, checkpoint_path=checkpoint, **options)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(ValueError, match="different training run.*lr"):
        train_model(small_cnn(), x_small, y_small, epochs=3, checkpoint_path=checkpoint, **{**options, "lr": 1e-2})
    with pytest.raises(ValueError, match="beyond the requested epochs=1"):
        train_model(small_cnn(), x_small, y_small, epochs=1, checkpoint_path=checkpoint, **options)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt.pt"):
        train_model(small_cnn(), x_small, y_small, epochs=1, checkpoint_path=corrupt, **options)


def test_train_model_input_checks(digits):
    x_train, y_train, _, _ = digits
    with pytest.raises(ValueError, match="epochs"):
        train_model(tiny_mlp(), x_train[:10], y_train[:10], epochs=-1)
    with pytest.raises(ValueError, match="optimizer"):
        train_model(tiny_mlp(), x_train[:10], y_train[:10], epochs=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="shape"):
        train_model(tiny_mlp(), x_train[:10], y_train[:9], epochs=1)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        train_model(tiny_mlp(), x_train[:10] * 16, y_train[:10], epochs=1)
    with pytest.raises(ValueError, match="labels go up to 10"):
        train_model(tiny_mlp(), x_train[:10], y_train[:10] * 0 + 10, epochs=1, progress=False)
    with pytest.raises(ValueError, match="empty"):
        train_model(tiny_mlp(), x_train[:0], y_train[:0], epochs=1)


def test_numpy_inputs_sgd_and_lr_milestones(digits):
    x_train, y_train, _, _ = digits
    _, history = train_model(
        tiny_mlp(), x_train[:100].numpy(), y_train[:100].numpy().astype(np.int32), epochs=3, optimizer="sgd",
        lr=0.1, lr_milestones=[1, 2], batch_size=50, progress=False,
    )
    assert history["lr"] == pytest.approx([0.1, 0.01, 0.001])


def test_paper_training_presets():
    assert PAPER_TRAINING["mnist"]["eps"] == 0.3 and PAPER_TRAINING["mnist"]["attack_steps"] == 40
    assert PAPER_TRAINING["fashion_mnist"]["eps"] == 0.1 and PAPER_TRAINING["fashion_mnist"]["attack_steps"] == 20
    assert PAPER_TRAINING["cifar10"]["eps"] == 8 / 255 and PAPER_TRAINING["cifar10"]["attack_steps"] == 7


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_attack_on_gpu():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    model = build_model("cifar_resnet", in_channels=3, depth=10, width=8)
    model, history = train_model(
        model, x, y, epochs=1, batch_size=32, adversarial=True, eps=8 / 255, attack_steps=2, step_size=2 / 255,
        defense=StandInDefense(), device="cuda", progress=False,
    )
    assert next(model.parameters()).is_cuda
    result = pgd(nn.Sequential(StandInDefense(), model), x.cuda(), y.cuda(), 8 / 255, 3, 2 / 255, seed=0)
    assert result.x_adv.is_cuda and len(history["loss"]) == 1
