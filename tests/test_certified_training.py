"""Certified training (issue 18): the mixed attack-and-bound loss, the attack member, recipes, resume, BatchNorm."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn import functional as F  # noqa: E402

import pixdisc  # noqa: E402
from pixdisc.bounds import margin_lower_bound  # noqa: E402
from pixdisc.candidates import box_hull, candidate_sets  # noqa: E402
from pixdisc.models import build_model, ibp_initialise  # noqa: E402
from pixdisc.recipes import RECIPES, Recipe, get_recipe, recipe_from_checkpoint, train_recipe  # noqa: E402
from pixdisc.train import attack_member, certified_loss, train_certified  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SIDE = 12


def _images(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is which half is brighter, with many pixels near the codebook's midpoints."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 1, SIDE, SIDE)).astype(np.float32)
    y = (x[:, 0, :, : SIDE // 2].mean((1, 2)) > x[:, 0, :, SIDE // 2:].mean((1, 2))).astype(np.int64)
    return x, y


def _codebook() -> pixdisc.Codebook:
    """Fashion-MNIST's certified codes (k-medoids k=4): at eps 0.1 about a third of uniform pixels are ambiguous."""
    return pixdisc.Codebook(np.array([[0], [86], [161], [218]], np.float32) / 255)


def _net(seed: int = 0, batch_norm: bool = False):
    torch.manual_seed(seed)
    return build_model("cert_cnn", width=4, hidden=16, input_size=SIDE, batch_norm=batch_norm, num_classes=2)


def _hull(x: np.ndarray, book, eps: float):
    lower, upper = box_hull(x, book, eps, channel_axis=1)
    discrete = np.asarray(book.transform(x, channel_axis=1))
    return torch.from_numpy(discrete), torch.from_numpy(lower), torch.from_numpy(upper)


@pytest.mark.parametrize("steps", [1, 3])
def test_attack_member_is_a_real_member_of_sx(steps):
    """Every pixel of the member is one of its candidate codes (exact rule: a code some input within eps is
    discretized to), and the member beats T(x) on the loss it climbs."""
    x, y = _images()
    book, eps = _codebook(), 0.1
    discrete, lower, upper = _hull(x, book, eps)
    net = _net().eval()
    member, logits = attack_member(net, discrete, lower, upper, torch.from_numpy(y), steps, None)
    sets = candidate_sets(x, book, eps, rule="exact", channel_axis=1)
    values = member.numpy().reshape(-1)
    codes = book.codes_.reshape(-1)
    ok = [np.any(np.isclose(codes[sets.of(p)], values[p], rtol=0, atol=0)) for p in range(values.size)]
    assert all(ok)
    assert not torch.equal(member, discrete)  # it moved (many pixels are ambiguous at eps 0.1)
    torch.testing.assert_close(logits, net(discrete))
    with torch.no_grad():
        before = F.cross_entropy(net(discrete), torch.from_numpy(y))
        after = F.cross_entropy(net(member), torch.from_numpy(y))
    assert after > before


def test_attack_member_on_the_eps_box_is_pgd_inside_the_box():
    x, y = _images()
    eps = 0.05
    point = torch.from_numpy(x)
    lower, upper = (point - eps).clamp(0, 1), (point + eps).clamp(0, 1)
    member, _ = attack_member(_net().eval(), point, lower, upper, torch.from_numpy(y), 4, 2.5 * eps / 4)
    # The training box is x -+ eps in float32 (a float32 rounding past eps is harmless there).
    assert (np.abs(member.numpy().astype(np.float64) - x) <= eps + 1e-7).all()
    assert (member >= 0).all() and (member <= 1).all()
    assert not torch.equal(member, point)


def test_attack_member_leaves_batchnorm_statistics_alone():
    x, y = _images()
    net = _net(batch_norm=True).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    discrete, lower, upper = _hull(x, _codebook(), 0.1)
    attack_member(net, discrete, lower, upper, torch.from_numpy(y), 2, None)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert net.training and all(m.training for m in net.modules())


def test_mixed_loss_is_the_sum_of_its_parts_and_both_carry_gradient():
    """kappa * (w * CE(member) + (1 - w) * CE(T(x))) + (1 - kappa) * CE(-bound): the gradient of the mix is the
    weighted sum of the parts' gradients, and each part alone has a non-zero gradient."""
    x, y = _images()
    labels = torch.from_numpy(y)
    discrete, lower, upper = _hull(x, _codebook(), 0.1)
    net = _net()

    def gradient(**options):
        net.zero_grad()
        loss, _, _ = certified_loss(net, discrete, lower, upper, labels, **options)
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()]).clone(), float(loss.detach())

    mixed, mixed_loss = gradient(kappa=0.6, member_weight=0.25)
    member, member_loss = gradient(kappa=1.0, member_weight=1.0)
    point, point_loss = gradient(kappa=1.0, member_weight=0.0)
    bound, bound_loss = gradient(kappa=0.0)
    assert min(member.abs().max(), point.abs().max(), bound.abs().max()) > 0
    assert not torch.allclose(member, point)  # the member is not T(x)
    torch.testing.assert_close(mixed, 0.6 * (0.25 * member + 0.75 * point) + 0.4 * bound, rtol=1e-4, atol=1e-6)
    assert math.isclose(mixed_loss, 0.6 * (0.25 * member_loss + 0.75 * point_loss) + 0.4 * bound_loss,
                        rel_tol=1e-5)
    # The bound part is the cross-entropy of the negated margin lower bounds.
    margins = margin_lower_bound(net, lower, upper, labels, method="ibp")
    assert math.isclose(bound_loss, float(F.cross_entropy(-margins, labels).detach()), rel_tol=1e-5)


def test_crown_ibp_training_bound_blends_into_ibp_over_the_ramp():
    x, y = _images()
    labels = torch.from_numpy(y)
    discrete, lower, upper = _hull(x, _codebook(), 0.1)
    net = _net()
    losses = {}
    for bound, ramp in (("ibp", 0.5), ("crown-ibp", 1.0), ("crown-ibp", 0.0), ("crown-ibp", 0.5)):
        losses[bound, ramp] = float(certified_loss(net, discrete, lower, upper, labels, kappa=0.0, bound=bound,
                                                   ramp=ramp)[0].detach())
    assert losses["crown-ibp", 1.0] == pytest.approx(losses["ibp", 0.5])  # the end of the ramp is pure IBP
    assert losses["crown-ibp", 0.0] < losses["ibp", 0.5]  # CROWN-IBP is tighter here
    with torch.no_grad():
        ibp = margin_lower_bound(net, lower, upper, labels, method="ibp")
        crown = margin_lower_bound(net, lower, upper, labels, method="crown-ibp")
    blend = float(F.cross_entropy(-(0.5 * ibp + 0.5 * crown), labels))
    assert losses["crown-ibp", 0.5] == pytest.approx(blend, rel=1e-5)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_batchnorm_bounds_hold_against_sampled_members(method):
    """A CertCNN with BatchNorm (trained a little, so its running statistics are not the identity): margin
    bounds over the hull of S(x), in eval mode, are below the margins of sampled members of S(x)."""
    x, y = _images(16)
    book = _codebook()
    net = _net(batch_norm=True)
    train_certified(net, x, y, book, eps=0.1, epochs=2, warmup_epochs=0, ramp_epochs=1, batch_size=8,
                    member_weight=0.5, progress=False)
    norm = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
    net.eval()
    discrete, lower, upper = _hull(x, book, 0.1)
    labels = torch.from_numpy(y)
    bounds = margin_lower_bound(net, lower, upper, labels, method=method)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(50):
            member = torch.where(torch.rand(lower.shape, generator=generator) < 0.5, lower, upper)
            logits = net(member)
            margins = logits.gather(1, labels[:, None]) - logits
            assert (margins >= bounds - 1e-5).all()


def test_ibp_initialisation_scales_weights_by_fan_in():
    net = ibp_initialise(build_model("cert_cnn", width=32, hidden=256))
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = module.weight[0].numel()
            assert float(module.weight.detach().std()) == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.1)
            assert not module.bias.any()


def test_recipes_validate_and_stretch_their_schedule():
    from pixdisc import recipes
    from pixdisc.bound_training import TRAINING_BOUNDS

    assert recipes.BOUNDS == TRAINING_BOUNDS
    ibp = get_recipe("ibp")
    assert ibp.schedule() == {"warmup_epochs": 1, "ramp_epochs": 6, "lr_milestones": [14, 17], "kappa_end": 0.7}
    assert ibp.with_epochs(9).schedule()["ramp_epochs"] == 3 and ibp.with_epochs(9).schedule()["lr_milestones"] == [6, 7]
    assert ibp.replace(ramp_share=0).schedule()["ramp_epochs"] == 0
    for name, recipe in RECIPES.items():
        assert recipe.name == name and Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
        assert any(name in line for line in recipe.describe())
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="member_weight must lie in"):
        ibp.replace(member_weight=2)
    with pytest.raises(ValueError, match="bound must be one of"):
        ibp.replace(bound="milp")
    with pytest.raises(ValueError, match="unknown recipe field"):
        ibp.replace(dropout=0.1)
    with pytest.raises(ValueError, match="not a pixdisc recipe"):
        Recipe.from_dict({"name": "x", "summary": "y", "colour": "red"})


def _small_recipe(**changes) -> Recipe:
    return get_recipe("fashion-mnist").replace(arch_kwargs={"width": 4, "hidden": 16, "batch_norm": True},
                                                epochs=3, batch_size=16, **changes)


def test_recipe_round_trips_through_the_checkpoint_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    x, y = _images(48)
    book = _codebook()
    recipe = _small_recipe()
    whole, whole_history = train_recipe(recipe, x, y, book, num_classes=2, seed=3, progress=False,
                                        checkpoint_path=tmp_path / "whole.ckpt")
    assert recipe_from_checkpoint(tmp_path / "whole.ckpt") == recipe
    # Interrupted after two epochs (a two-epoch run of the same recipe is a different schedule, so the
    # interruption is simulated by stopping the run from on_epoch), then resumed.
    class Stop(Exception):
        pass

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train_recipe(recipe, x, y, book, num_classes=2, seed=3, progress=False,
                     checkpoint_path=tmp_path / "cut.ckpt", on_epoch=stop_after_two)
    seen = []
    resumed, history = train_recipe(recipe, x, y, book, num_classes=2, seed=3, progress=False,
                                    checkpoint_path=tmp_path / "cut.ckpt", on_epoch=seen.append)
    assert [row["epoch"] for row in seen] == [3]
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert {k: v for k, v in history.items() if k != "seconds"} == \
        {k: v for k, v in whole_history.items() if k != "seconds"}
    # Another recipe does not resume this run's checkpoint.
    with pytest.raises(ValueError, match="different training run"):
        train_recipe(recipe.replace(member_weight=0.5), x, y, book, num_classes=2, seed=3, progress=False,
                     checkpoint_path=tmp_path / "whole.ckpt")


def test_member_training_refuses_a_multichannel_codebook():
    x = np.random.default_rng(0).uniform(0, 1, (20, 3, SIDE, SIDE)).astype(np.float32)
    book = pixdisc.Codebook(np.array([[0, 0, 0], [0.5, 0.5, 0.5], [1, 1, 1]], np.float32))
    net = build_model("cert_cnn", in_channels=3, width=4, hidden=16, input_size=SIDE, num_classes=2)
    with pytest.raises(ValueError, match="one-channel codebook"):
        train_certified(net, x, np.zeros(20, np.int64), book, eps=0.1, epochs=1, member_weight=0.5,
                        progress=False)


def test_cli_shows_resolves_and_trains_a_recipe(tmp_path, capsys):
    from pixdisc import cli

    assert cli.main(["train", "--recipe", "fashion-mnist", "--show-recipe"]) == 0
    text = capsys.readouterr().out
    assert "recipe fashion-mnist" in text and "width=32" in text and "certification at eps 0.1" in text
    assert cli.main(["train", "--recipe", "fashion-mnist", "--epochs", "10", "--member-weight", "0.5",
                     "--show-recipe", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["changed"] == ["epochs", "member_weight"] and shown["schedule"]["ramp_epochs"] == 3
    assert Recipe.from_dict(shown["recipe"]) == get_recipe("fashion-mnist").replace(epochs=10, member_weight=0.5)
    for argv, message in ((["--recipe", "ibp", "--mode", "natural"], "--recipe is certified training"),
                          (["--mode", "natural", "--member-weight", "0.5"], "only for --mode certified"),
                          (["--recipe", "ibp"], "needs --eps"),
                          (["--recipe", "ibp", "--eps", "0.1", "--ramp-epochs", "30"], "longer than the 20 epochs")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["train", *argv, "-o", str(tmp_path / "m.pt")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err
    # A short run on the digits: one JSON line per epoch, then the result; the model file keeps the recipe.
    model = tmp_path / "m.pt"
    codes = tmp_path / "codes.npz"
    _codebook().save(codes)
    assert cli.main(["train", "--recipe", "fashion-mnist", "--dataset", "digits", "--arch", "mlp", "--epochs", "2",
                     "--limit", "200", "--test-limit", "50", "--codebook", str(codes), "--checkpoint",
                     str(tmp_path / "m.ckpt"), "-o", str(model), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["event"] for row in lines] == ["epoch", "epoch", "result"]
    assert lines[-1]["changed"] == ["arch", "arch_kwargs", "epochs"]
    _, meta = pixdisc.models.load_model(model, return_meta=True)
    assert Recipe.from_dict(meta["recipe"]) == recipe_from_checkpoint(tmp_path / "m.ckpt")
    assert Recipe.from_dict(meta["recipe"]).arch == "mlp"
