"""Bound tiers and budgets: every tier sound, tiers nested, the budget covers everything, work budgets repeat.

The tiers (IBP, CROWN-IBP, CROWN, alpha-CROWN) are checked against sampled
and attacked points of the box on the traced graphs of test_bounds_graph
(residual add, eval batch norm, max/avg pooling, cat, flatten); escalation
against each tier run alone; certify against an injected slow layer, two runs
of a work budget, worker counts, and a small ResNet.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

import pixdisc
from pixdisc import bounds
from pixdisc.bounds import TIERS, Meter, escalate, margin_lower_bound
from pixdisc.certification import Budget, certify
from pixdisc.models import cifar_resnet
from pixdisc.sx_attack import SearchBudget
from test_bounds_graph import DT, GRAPHS, TOL, _box, _finish, _samples

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _margins_at(net: nn.Module, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(count, N, K) true margins logit_y - logit_j at points (count, N, ...)."""
    count, n = points.shape[:2]
    with torch.no_grad():
        logits = net(points.reshape((count * n,) + points.shape[2:])).reshape(count, n, -1)
    return logits.gather(2, y.expand(count, n).unsqueeze(2)) - logits


def _pgd_worst(net: nn.Module, lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor, steps: int = 40):
    """(N, K) smallest margins PGD finds inside the box, per class."""
    n, classes = lower.shape[0], int(net(lower[:1]).shape[1])
    best = torch.full((n, classes), float("inf"), dtype=DT)
    for j in range(classes):
        x = ((lower + upper) / 2).clone().requires_grad_(True)
        for _ in range(steps):
            logits = net(x)
            margin = logits.gather(1, y[:, None])[:, 0] - logits[:, j]
            (grad,) = torch.autograd.grad(margin.sum(), x)
            with torch.no_grad():
                x -= 0.25 * (upper - lower) * grad.sign()
                x.copy_(torch.maximum(torch.minimum(x, upper), lower))
        with torch.no_grad():
            logits = net(x)
            best[:, j] = logits.gather(1, y[:, None])[:, 0] - logits[:, j]
    return best


@pytest.mark.parametrize("make,shape", GRAPHS, ids=[g[0].__name__ for g in GRAPHS])
def test_every_tier_is_sound_on_traced_graphs(make, shape):
    net = _finish(make(), seed=3)
    lower, upper = _box(shape, 5, 0.3, seed=4)
    with torch.no_grad():
        y = net((lower + upper) / 2).argmax(1)
    sampled = _margins_at(net, _samples(lower, upper, 400, seed=5), y).min(0).values
    attacked = _pgd_worst(net, lower, upper, y)
    for tier in TIERS:
        with torch.no_grad():
            bound = margin_lower_bound(net, lower, upper, y, method=tier)
        assert (bound <= sampled + TOL).all(), tier
        assert (bound <= attacked + TOL).all(), tier


@pytest.mark.parametrize("make,shape", GRAPHS, ids=[g[0].__name__ for g in GRAPHS])
def test_tiers_are_nested_and_escalation_runs_each_only_where_needed(make, shape):
    """A tighter tier never proves less; escalation's margins are the best of the tiers it ran."""
    net = _finish(make(), seed=7)
    # Radii from tiny to wide, so that some boxes are proven by each tier and some by none.
    gen = torch.Generator().manual_seed(8)
    centre = torch.rand((24,) + shape, generator=gen, dtype=DT)
    radius = torch.logspace(-3, 0.7, 24, dtype=DT).reshape((24,) + (1,) * len(shape))
    lower, upper = centre - radius, centre + radius
    with torch.no_grad():
        y = net((lower + upper) / 2).argmax(1)
        alone = {tier: margin_lower_bound(net, lower, upper, y, method=tier) for tier in TIERS}
    assert (alone["crown-ibp"] >= alone["ibp"] - TOL).all()  # CROWN over intervals is intersected with them
    assert (alone["alpha-crown"] >= alone["crown"] - TOL).all()  # optimised slopes start from CROWN's
    proven_before = torch.zeros(len(y), dtype=torch.bool)
    best = torch.full_like(alone["ibp"], float("-inf"))
    for tier in TIERS:
        result = escalate(net, lower, upper, y, tier)
        worst = result.worst(y)
        best = torch.maximum(best, alone[tier])
        proven = worst > 0
        assert (proven >= proven_before).all(), tier  # nested: nothing proven before is lost
        # Every box's margins are at least the best standalone tier that ran on it.
        ran = [TIERS[: TIERS.index(t) + 1] for t in result.tier]
        for i, tiers in enumerate(ran):
            floor = torch.stack([alone[t][i] for t in tiers]).max(0).values
            if tiers[-1] != "alpha-crown":
                assert torch.allclose(result.margins[i], floor, atol=1e-9), (tier, i)
            else:
                assert (result.margins[i] >= floor - TOL).all()
        proven_before = proven
    assert proven_before.any() and not proven_before.all()  # the case is informative


def test_alpha_crown_tightens_a_deep_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24),
                        nn.ReLU(), nn.Linear(24, 4)).to(DT).eval()
    lower, upper = _box((8,), 6, 0.4, seed=1)
    y = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        crown = margin_lower_bound(net, lower, upper, y, method="crown")
        alpha = margin_lower_bound(net, lower, upper, y, method="alpha-crown")
    sampled = _margins_at(net, _samples(lower, upper, 400, seed=2), y).min(0).values
    assert (alpha >= crown - TOL).all() and (alpha <= sampled + TOL).all()
    assert float((alpha - crown).sum()) > 1e-3  # the slopes moved the bound


def test_meter_counts_work_in_forward_passes_and_stops_where_it_says():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64, 3)).to(DT).eval()
    lower, upper = _box((1, 4, 4), 3, 0.5, seed=0)
    y = torch.tensor([0, 1, 2])
    meter = Meter()
    escalate(net, lower, upper, y, "ibp", meter=meter)
    # An interval pass is two forward passes per box; the affine tail's exact range adds a little.
    assert 2 * 3 < meter.spent < 4 * 3
    stopped = escalate(net, lower, upper, y, "crown", meter=Meter(work=10))
    assert stopped.exhausted is not None and stopped.exhausted.resource == "work"
    assert "CROWN" in stopped.exhausted.where and "op" in stopped.exhausted.where
    # What finished before the stop still holds: the interval margins.
    ibp = escalate(net, lower, upper, y, "ibp")
    assert torch.equal(stopped.margins.isfinite(), ibp.margins.isfinite())
    late = escalate(net, lower, upper, y, "crown", meter=Meter(deadline=time.monotonic() - 1))
    assert late.exhausted.resource == "seconds"


def test_the_graph_is_traced_once_per_model(monkeypatch):
    from pixdisc.bounds import graph

    calls = []
    real = graph._Converter.run

    def counting(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(graph._Converter, "run", counting)
    net = cifar_resnet(in_channels=1, depth=10, width=2).eval()
    lower = torch.rand(2, 1, 8, 8)
    for tier in TIERS[:3]:
        margin_lower_bound(net, lower, lower + 0.01, torch.tensor([0, 1]), method=tier)
    assert len(calls) == 1
    net.train().eval()  # same structure, same modes: still cached
    margin_lower_bound(net, lower, lower + 0.01, torch.tensor([0, 1]), method="ibp")
    assert len(calls) == 1
    net.stem = nn.Conv2d(1, 2, 3, padding=1, bias=False)  # a new module: traced again
    margin_lower_bound(net, lower, lower + 0.01, torch.tensor([0, 1]), method="ibp")
    assert len(calls) == 2
    with pytest.raises(ValueError, match="eval mode"):
        margin_lower_bound(net.train(), lower, lower + 0.01, torch.tensor([0, 1]), method="ibp")


# --------------------------------------------------------------------------- certify and its budget


def _digits_task(n: int = 12, hidden: int = 48, seed: int = 0):
    """A small MLP on 8x8 digits behind a 3-code codebook, with many ambiguous pixels at eps 0.2."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[: 300 + n] / 16.0).astype(np.float32)[:, None]
    y = digits.target[: 300 + n]
    book = pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32))
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    train = torch.from_numpy(np.asarray(book.transform(x[:300], channel_axis=1)))
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(train), torch.from_numpy(y[:300])).backward()
        opt.step()
    return net.eval(), book, x[300:], y[300:]


def test_budget_validation():
    with pytest.raises(ValueError, match="seconds or work"):
        Budget(seconds=None)
    with pytest.raises(ValueError, match="work"):
        Budget(work=-1)
    with pytest.raises(ValueError, match="nodes"):
        Budget(nodes=1.5)
    assert Budget(seconds=None, work=100).seconds is None


def test_a_slow_layer_cannot_keep_an_image_past_its_seconds(monkeypatch):
    """Every backward step sleeps: root bounds and branching must still stop near the per-image seconds."""
    from pixdisc.bounds import states

    net, book, x, y = _digits_task(n=3)
    real = states._back_affine_dense

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(states, "_back_affine_dense", slow)
    from pixdisc.bounds import crown

    monkeypatch.setattr(crown, "_back_affine_dense", slow)
    seconds = 0.6
    result = certify(net, book, x, y, 0.2, bound="alpha-crown", budget=Budget(nodes=10_000, seconds=seconds),
                     executor="serial", progress=False, batch_size=1)
    assert (result.seconds <= seconds + 1.0).all(), result.seconds
    assert (result.outcome == "unable").any()  # the slow layer really did run out of time
    unable = result.reason[result.outcome == "unable"]
    assert all("ran out of seconds" in r for r in unable), unable


@pytest.mark.parametrize("search", [SearchBudget(), None], ids=["with-search", "no-search"])
def test_work_budget_gives_the_same_outcomes_every_time(search):
    net, book, x, y = _digits_task()
    budget = Budget(nodes=200, seconds=None, work=3000, search=search)
    runs = [certify(net, book, x, y, 0.1, bound=bound, budget=budget, executor="serial", progress=False)
            for bound in ("crown", "crown", "alpha-crown")]
    np.testing.assert_array_equal(runs[0].outcome, runs[1].outcome)
    np.testing.assert_array_equal(runs[0].nodes, runs[1].nodes)
    np.testing.assert_array_equal(runs[0].work, runs[1].work)
    assert list(runs[0].reason) == list(runs[1].reason)
    counts = runs[0].counts()
    assert counts["certified"] > 0 and counts["failed"] > 0
    if search is None:
        assert counts["unable"] > 0  # without the search the budget binds on this net
    else:
        assert "s(x) search" in set(runs[0].method)
    # A tighter top tier never certifies less under the same budget of work... per image it may spend it
    # differently, so compare what the bounds alone decided.
    assert {"bounds"} <= set(runs[0].method)
    assert all(("ran out of work" in r) or ("ran out of nodes" in r) or not r
               for r in runs[0].reason[runs[0].outcome == "unable"])


@pytest.mark.slow
def test_work_budget_outcomes_do_not_depend_on_worker_processes():
    net, book, x, y = _digits_task(n=24)
    budget = Budget(nodes=200, seconds=None, work=3000)
    serial = certify(net, book, x, y, 0.1, budget=budget, executor="serial", progress=False, chunk_size=8)
    pooled = certify(net, book, x, y, 0.1, budget=budget, workers=2, progress=False, chunk_size=8)
    np.testing.assert_array_equal(serial.outcome, pooled.outcome)
    np.testing.assert_array_equal(serial.nodes, pooled.nodes)


def test_resnet_certify_is_sound_and_within_budget():
    """A small pre-activation ResNet (residual adds, eval batch norm) behind an RGB codebook."""
    torch.manual_seed(0)
    net = cifar_resnet(in_channels=3, depth=10, width=4).eval()
    gen = np.random.default_rng(0)
    x = gen.random((4, 3, 8, 8)).astype(np.float32)
    codes = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]], np.float32)
    book = pixdisc.Codebook(codes)
    with torch.no_grad():
        y = net(torch.from_numpy(np.asarray(book.transform(x, channel_axis=1)))).argmax(1).numpy()
    eps = 0.02
    result = certify(net, book, x, y, eps, bound="alpha-crown", budget=Budget(nodes=50, seconds=None, work=5000),
                     executor="serial", progress=False)
    assert set(result.outcome) <= {"certified", "failed", "unable"}
    assert (result.outcome == "certified").any()
    # Certified images hold on random members of S(x) (each pixel takes any code its candidate set admits).
    from pixdisc.candidates import candidate_sets

    sets = candidate_sets(x, book, eps, channel_axis=1)
    pixels = 64
    for i in np.flatnonzero(result.outcome == "certified"):
        members = []
        for _ in range(64):
            z = [gen.choice(sets.of(i * pixels + p)) for p in range(pixels)]
            members.append(book.codes_[z].T.reshape(3, 8, 8))
        with torch.no_grad():
            assert (net(torch.from_numpy(np.stack(members).astype(np.float32))).argmax(1) == int(y[i])).all()
