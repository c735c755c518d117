"""Tests for pixdisc.attacks: PGD, the Adam-on-sign attack, losses and worst-case evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn import functional as F

from pixdisc.attacks import (
    PAPER_BUDGETS,
    AttackResult,
    adam_sign_attack,
    cross_entropy_loss,
    cw_margin_loss,
    evaluate_robustness,
    pgd,
    pgd_perturb,
)
from pixdisc.models import build_model

from standins import StandInDefense

TOLERANCE = 1e-6


pytestmark = pytest.mark.usefixtures("single_torch_thread")


class Recorder(nn.Module):
    """Passes inputs to ``inner`` and keeps a copy of every batch the attack evaluates."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x)


def threshold_model(scale: float = 10.0) -> nn.Module:
    """Linear 2-class model on (N,1,1,2) inputs: class 1 iff x[...,0] > 0.5, so the l_inf margin is |x0 - 0.5|."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[-scale, 0.0], [scale, 0.0]]))
        linear.bias.copy_(torch.tensor([scale / 2, -scale / 2]))
    return nn.Sequential(nn.Flatten(), linear).eval()


def separable_points(distances: np.ndarray, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Points at l_inf distance ``distances`` from the boundary x0 = 0.5, alternating classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(len(distances)) % 2
    x0 = np.where(labels == 1, 0.5 + distances, 0.5 - distances)
    x1 = rng.uniform(0.0, 1.0, size=len(distances))
    x = np.stack([x0, x1], axis=1).reshape(-1, 1, 1, 2)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def test_losses_against_hand_computation():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 4.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 2])
    # Largest other logit minus the true one: 3-1, 4-5, 0-0.
    assert torch.allclose(cw_margin_loss(logits, labels), torch.tensor([2.0, -1.0, 0.0]))
    by_hand = torch.tensor(
        [
            -1.0 + math.log(math.exp(1) + math.exp(3) + math.exp(2)),
            -5.0 + math.log(math.exp(5) + math.exp(0) + math.exp(4)),
            math.log(3.0),
        ]
    )
    assert torch.allclose(cross_entropy_loss(logits, labels), by_hand)


def test_paper_budgets():
    assert PAPER_BUDGETS["mnist"] == {"eps": 0.3, "steps": 100, "step_size": 0.01}
    assert PAPER_BUDGETS["fashion_mnist"]["eps"] == 0.1 and PAPER_BUDGETS["fashion_mnist"]["steps"] == 100
    assert PAPER_BUDGETS["cifar10"] == {"eps": 8 / 255, "steps": 40, "step_size": 2 / 255}
    assert PAPER_BUDGETS["cifar10_nat"]["eps"] == 2 / 255
    assert all("alpha" not in budget for budget in PAPER_BUDGETS.values())


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("attack", [pgd, adam_sign_attack])
def test_linear_model_robust_accuracy_matches_analytic_margin(attack, loss):
    rng = np.random.default_rng(1)
    distances = rng.uniform(0.05, 0.45, size=64)
    eps = 0.2
    # Keep clear of eps itself so that float rounding cannot decide a sample.
    distances = distances[np.abs(distances - eps) > 0.01]
    x, y = separable_points(distances)
    model = threshold_model()
    kwargs = {"loss": loss, "seed": 0}
    if attack is adam_sign_attack:
        kwargs["random_start"] = False
    result = attack(model, x, y, eps, 30, eps / 5, **kwargs)
    assert bool(result.clean_correct.all())
    expected_robust = torch.tensor(distances > eps)
    assert torch.equal(result.adv_correct, expected_robust)
    assert torch.equal(result.success, ~expected_robust)
    # Below the smallest margin nothing can be broken.
    below = attack(model, x, y, 0.04, 30, 0.01, **kwargs)
    assert bool(below.adv_correct.all())
    assert below.robust_accuracy == 1.0


def _assert_inputs_in_ball(seen: list[Tensor], x: Tensor, eps: float) -> int:
    """Every row seen lies in [0,1] and within eps of its own sample (samples are > 2 eps apart)."""
    flat_x = x.flatten(1)
    rows = 0
    for batch in seen:
        flat = batch.flatten(1)
        assert float(flat.min()) >= 0.0 and float(flat.max()) <= 1.0
        distance = (flat[:, None, :] - flat_x[None, :, :]).abs().amax(dim=2)
        assert bool((distance.amin(dim=1) <= eps + TOLERANCE).all())
        rows += flat.shape[0]
    return rows


@pytest.mark.parametrize("attack", [pgd, adam_sign_attack])
@pytest.mark.parametrize("defended", [False, True])
def test_every_evaluated_input_respects_ball_and_box(attack, defended):
    # Points hugging the box edges so that the [0,1] clip is active.
    x0 = torch.tensor([0.02, 0.98, 0.0, 1.0, 0.3, 0.7])
    x1 = torch.tensor([0.0, 1.0, 0.5, 0.2, 1.0, 0.0])
    x = torch.stack([x0, x1], dim=1).view(-1, 1, 1, 2)
    y = (x0 > 0.5).long()
    network = threshold_model()
    inner = nn.Sequential(StandInDefense(), network) if defended else network
    recorder = Recorder(inner)
    eps = 0.3
    result = attack(recorder, x, y, eps, 15, 0.07, restarts=3, random_start=True, seed=4)
    assert len(recorder.seen) >= 16
    # All samples are classified correctly, so with restarts the first pass covers every row.
    assert recorder.seen[1].shape == x.shape
    for batch in recorder.seen:
        if batch.shape == x.shape:
            assert float((batch - x).abs().max()) <= eps + TOLERANCE
    _assert_inputs_in_ball(recorder.seen, x, eps)
    assert float((result.x_adv - x).abs().max()) <= eps + TOLERANCE
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0


def test_worst_case_over_restarts_and_iterates():
    # Samples at least 0.15 apart in x1 so every evaluated row maps back to one sample.
    distances = np.array([0.01, 0.03, 0.045, 0.06, 0.02, 0.04, 0.08])
    eps = 0.05
    x, y = separable_points(distances)
    x[:, 0, 0, 1] = torch.arange(len(distances), dtype=torch.float32) * 0.15
    # The last sample starts on the wrong side: already broken, needs no perturbation.
    x[-1, 0, 0, 0] = 1.0 - x[-1, 0, 0, 0]
    recorder = Recorder(threshold_model())
    result = pgd(recorder, x, y, eps, 2, 0.004, restarts=6, seed=11)

    flat_x = x.flatten(1)
    candidates: list[list[Tensor]] = [[] for _ in range(len(distances))]
    for batch in recorder.seen:
        owners = (batch.flatten(1)[:, None, :] - flat_x[None]).abs().amax(dim=2).argmin(dim=1)
        for row, owner in zip(batch, owners.tolist()):
            candidates[owner].append(row)
    model = threshold_model()
    saw_success, saw_failure = False, False
    for index, rows in enumerate(candidates):
        stacked = torch.stack(rows)
        with torch.no_grad():
            logits = model(stacked)
        labels = y[index].repeat(len(rows))
        fooled = logits.argmax(1) != labels
        losses = F.cross_entropy(logits, labels, reduction="none")
        if bool(fooled.any()):
            expected = int(torch.nonzero(fooled)[0])
            saw_success = True
        else:
            expected = int(losses.argmax())
            saw_failure = True
        assert torch.equal(result.x_adv[index], stacked[expected]), index
        assert bool(result.success[index]) == bool(fooled.any())
        assert torch.isclose(result.loss[index], losses[expected])
    assert saw_success and saw_failure
    assert torch.equal(result.x_adv[-1], x[-1]) and bool(result.success[-1])
    assert not bool(result.clean_correct[-1])


def test_more_restarts_never_hurt_the_attacker():
    # With no steps the attack is random search: more restarts find more adversarials.
    distances = np.full(40, 0.2)
    x, y = separable_points(distances)
    model = threshold_model()
    one = pgd(model, x, y, 0.25, 0, 0.0, restarts=1, seed=0)
    many = pgd(model, x, y, 0.25, 0, 0.0, restarts=40, seed=0)
    assert int(many.success.sum()) > int(one.success.sum())
    assert float(many.robust_accuracy) < 0.2


def test_bpda_through_stand_in_defense():
    # Pixels at 0.3 / 0.7 are rounded to 0 / 1: only eps > 0.2 crosses the rounding threshold.
    x0 = torch.tensor([0.3, 0.7, 0.3, 0.7])
    x = torch.stack([x0, torch.full_like(x0, 0.5)], dim=1).view(-1, 1, 1, 2)
    y = (x0 > 0.5).long()
    defended = nn.Sequential(StandInDefense(), threshold_model())
    assert pgd(defended, x, y, 0.15, 20, 0.03, seed=0).robust_accuracy == 1.0
    assert pgd(defended, x, y, 0.25, 20, 0.03, seed=0).robust_accuracy == 0.0


def test_targeted_attack():
    # logits = x: the class is the brightest of three pixels, so any target is reachable with eps=0.6.
    linear = nn.Linear(3, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3))
        linear.bias.zero_()
    model = nn.Sequential(nn.Flatten(), linear).eval()
    torch.manual_seed(0)
    x = torch.rand(20, 1, 1, 3) * 0.4
    y = x.flatten(1).argmax(1)
    target = (y + 1) % 3
    result = pgd(model, x, y, 0.6, 30, 0.05, target=target, seed=0)
    assert torch.equal(result.success, result.adv_pred == target)
    assert bool(result.success.all())
    assert result.params["targeted"] is True
    # Too small a budget reaches no target; the untargeted labels are still reported.
    small = pgd(model, x, y, 0.0, 5, 0.05, target=target, seed=0)
    assert not bool(small.success.any()) and bool(small.adv_correct.all())


def test_attack_leaves_model_state_alone():
    torch.manual_seed(0)
    model = build_model("small_cnn", width=2, hidden=8, input_size=8)
    model.train()
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    pgd(model, x, y, 0.1, 3, 0.05, seed=0)
    adam_sign_attack(model, x, y, 0.1, 3, 0.05)
    assert model.training
    assert all(parameter.grad is None for parameter in model.parameters())


def test_seeded_attacks_are_reproducible():
    torch.manual_seed(0)
    model = build_model("mlp", input_size=4, hidden=[8]).eval()
    x = torch.rand(10, 1, 4, 4)
    y = torch.arange(10)
    first = pgd(model, x, y, 0.1, 5, 0.03, seed=7, restarts=2)
    second = pgd(model, x, y, 0.1, 5, 0.03, seed=7, restarts=2)
    assert torch.equal(first.x_adv, second.x_adv)


def test_bad_inputs_raise():
    model = threshold_model()
    x, y = separable_points(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, -0.1, 5, 0.01)
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, float("nan"), 5, 0.01)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, -1, 0.01)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, 2.5, 0.01)
    with pytest.raises(ValueError, match="step_size"):
        adam_sign_attack(model, x, y, 0.1, 5, -0.01)
    with pytest.raises(ValueError, match="restarts"):
        pgd(model, x, y, 0.1, 5, 0.01, restarts=0)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        pgd(model, x + 1.0, y, 0.1, 5, 0.01)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        pgd(model, x - 0.5, y, 0.1, 5, 0.01)
    with pytest.raises(ValueError, match="NaN"):
        pgd(model, torch.full_like(x, float("nan")), y, 0.1, 5, 0.01)
    with pytest.raises(ValueError, match="shape"):
        pgd(model, x, y[:1], 0.1, 5, 0.01)
    with pytest.raises(ValueError, match="integer class labels"):
        pgd(model, x, y.float(), 0.1, 5, 0.01)
    with pytest.raises(ValueError, match="out of range"):
        pgd(model, x, y + 5, 0.1, 5, 0.01)
    with pytest.raises(ValueError, match="unknown loss"):
        pgd(model, x, y, 0.1, 5, 0.01, loss="hinge")
    with pytest.raises(ValueError, match="no gradient"):
        pgd(nn.Sequential(_Detach(), model), x, y, 0.1, 5, 0.01)


class _Detach(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.detach()


def test_numpy_and_uint8_inputs():
    model = threshold_model()
    x, y = separable_points(np.array([0.1, 0.3]))
    result = pgd(model, x.numpy(), y.numpy(), 0.2, 10, 0.05, seed=0)
    assert result.success.tolist() == [True, False]
    as_uint8 = (x.numpy() * 255).round().astype(np.uint8)
    assert pgd(model, as_uint8, y, 0.2, 10, 0.05, seed=0).success.tolist() == [True, False]


def test_evaluate_robustness_worst_case_across_attacks():
    rng = np.random.default_rng(3)
    distances = rng.uniform(0.02, 0.4, size=30)
    distances = distances[(np.abs(distances - 0.1) > 0.01) & (np.abs(distances - 0.25) > 0.01)]
    x, y = separable_points(distances)
    model = threshold_model()
    weak = {"attack": "pgd", "eps": 0.1, "steps": 10, "step_size": 0.02, "random_start": False}
    strong = {"attack": "adam_sign", "eps": 0.25, "steps": 20, "step_size": 0.05}
    weak_alone = evaluate_robustness(model, x, y, [weak], progress=False)
    strong_alone = evaluate_robustness(model, x, y, [strong], progress=False)
    combined = evaluate_robustness(model, x, y, [weak, strong], batch_size=7, progress=True)
    assert torch.equal(combined.adv_correct, weak_alone.adv_correct & strong_alone.adv_correct)
    assert torch.equal(combined.adv_correct, torch.tensor(distances > 0.25))
    assert bool((combined.attack_index[~weak_alone.adv_correct] == 0).all())
    assert bool((combined.attack_index[weak_alone.adv_correct & ~strong_alone.adv_correct] == 1).all())
    summary = combined.summary()
    assert summary["n"] == len(distances)
    assert summary["robust"] == int((distances > 0.25).sum())
    assert summary["robust_accuracy"] == pytest.approx(float(np.mean(distances > 0.25)))
    assert summary["clean_accuracy"] == 1.0
    assert [spec["attack"] for spec in summary["params"]["attacks"]] == ["pgd", "adam_sign"]
    assert float((combined.x_adv - x).abs().max()) <= 0.25 + TOLERANCE


def test_evaluate_robustness_is_batch_invariant_and_can_drop_images():
    torch.manual_seed(0)
    model = build_model("mlp", input_size=4, hidden=[16]).eval()
    x = torch.rand(23, 1, 4, 4)
    y = torch.randint(0, 10, (23,))
    spec = {"attack": "pgd", "eps": 0.05, "steps": 5, "step_size": 0.02, "random_start": False}
    whole = evaluate_robustness(model, x, y, [spec], batch_size=100, progress=False)
    pieces = evaluate_robustness(model, x, y, [spec], batch_size=4, progress=False, keep_adv=False)
    assert torch.equal(whole.adv_correct, pieces.adv_correct)
    assert torch.allclose(whole.margin, pieces.margin)
    assert pieces.x_adv is None and whole.x_adv.shape == x.shape
    assert isinstance(AttackResult.concatenate([whole, whole]), AttackResult)


def test_evaluate_robustness_input_checks():
    model = threshold_model()
    x, y = separable_points(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="at least one"):
        evaluate_robustness(model, x, y, [], progress=False)
    with pytest.raises(ValueError, match="'attack'"):
        evaluate_robustness(model, x, y, [{"attack": "fgsm", "eps": 0.1}], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_robustness(model, x, y, [{"attack": "pgd", "eps": 0.1, "steps": 1, "step_size": 0.1}], batch_size=0)

    def cheater(model_: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        return (images + 0.5).clamp(0, 1)

    with pytest.raises(ValueError, match="larger than eps"):
        evaluate_robustness(model, x, y, [cheater], eps=0.1, progress=False)


def test_torchattacks_on_stand_in_defended_model():
    torchattacks = pytest.importorskip("torchattacks")
    torch.manual_seed(0)
    network = build_model("small_cnn", width=4, hidden=16, input_size=8).eval()
    defended = nn.Sequential(StandInDefense(), network).eval()
    x = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    attack = torchattacks.PGD(defended, eps=0.3, alpha=0.05, steps=5, random_start=True)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 0.3 + TOLERANCE
    result = evaluate_robustness(
        defended, x, y, [lambda model, images, labels: attack(images, labels)], eps=0.3, progress=False
    )
    assert result.robust_accuracy <= result.clean_accuracy
    assert float((result.x_adv - x).abs().max()) <= 0.3 + TOLERANCE


def test_pgd_perturb_stays_in_ball():
    model = threshold_model()
    x, y = separable_points(np.array([0.1, 0.3, 0.45]))
    x_adv = pgd_perturb(model, x, y, eps=0.2, steps=10, step_size=0.05, generator=torch.Generator().manual_seed(0))
    assert float((x_adv - x).abs().max()) <= 0.2 + TOLERANCE
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).tolist() == [True, False, False]


@settings(max_examples=25, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.0, 0.6),
    steps=st.integers(0, 4),
    step_size=st.floats(0.0, 0.3),
    restarts=st.integers(1, 3),
    loss=st.sampled_from(["ce", "cw"]),
    use_adam=st.booleans(),
)
def test_result_invariants(seed, eps, steps, step_size, restarts, loss, use_adam):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 2, 2, generator=generator)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 3, (6,), generator=generator)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 4, generator=generator))
        model[1].bias.copy_(torch.randn(3, generator=generator))
    attack = adam_sign_attack if use_adam else pgd
    result = attack(model, x, y, eps, steps, step_size, loss=loss, restarts=restarts, random_start=True, seed=seed)
    assert float((result.x_adv - x).abs().max()) <= eps + TOLERANCE
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert torch.equal(result.success, ~result.adv_correct)
    # Robust implies clean-correct: the clean point is always a candidate.
    assert bool((result.adv_correct <= result.clean_correct).all())
    with torch.no_grad():
        logits = model(result.x_adv)
    assert torch.equal(logits.argmax(1), result.adv_pred)
    assert torch.allclose(cw_margin_loss(logits, y), result.margin, atol=1e-5)
    summary = result.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["robust"] <= summary["clean_correct"] <= summary["n"] == 6


def test_empty_inputs_and_strict_json_summary():
    model = threshold_model()
    x, y = separable_points(np.array([0.1]))
    spec = {"attack": "pgd", "eps": 0.1, "steps": 1, "step_size": 0.1, "loss": cw_margin_loss}
    result = evaluate_robustness(model, x[:0], y[:0], [spec], progress=False)
    assert len(result) == 0
    summary = result.summary()
    assert summary["robust_accuracy"] is None
    assert json.loads(json.dumps(summary, allow_nan=False))["params"]["attacks"][0]["loss"] == "cw_margin_loss"
