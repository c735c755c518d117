"""Tests for pixdisc.bounds: soundness against sampling and attacks, exact cases, tightness, errors and gradients."""

from __future__ import annotations

import itertools
import time
import warnings
from typing import Callable, List, Optional, Tuple

import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from pixdisc import bounds
from pixdisc.bounds import (
    SUPPORTED_LAYERS,
    certified_by_bounds,
    crown_bounds,
    interval_bounds,
    margin_lower_bound,
    margin_matrix,
)

DT = torch.float64
# float64 nets: a sound bound may miss a sampled value by rounding only.
TOL = 1e-9


pytestmark = pytest.mark.usefixtures("single_torch_thread")


# --------------------------------------------------------------------------- nets and boxes


def _randomize_bn(layer: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=gen, dtype=DT))
        layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=gen, dtype=DT) + 0.5)
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=DT))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen, dtype=DT))


def _finish(net: nn.Sequential, seed: int) -> nn.Sequential:
    """float64, eval mode, weights from the seed (biases spread so that ReLUs split)."""
    gen = torch.Generator().manual_seed(seed)
    net = net.to(DT).eval()
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            with torch.no_grad():
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen, dtype=DT) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen, dtype=DT))
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            _randomize_bn(module, gen)
    return net


def mlp(seed: int) -> Tuple[nn.Sequential, Tuple[int, ...]]:
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 12), nn.ReLU(), nn.BatchNorm1d(12), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4)
    )
    return _finish(net, seed), (2, 3)


def cnn_maxpool(seed: int) -> Tuple[nn.Sequential, Tuple[int, ...]]:
    """The shipped shape: conv/ReLU/MaxPool twice (ReLU folded into the pool), then an MLP head."""
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Flatten(),
        nn.Linear(24, 10),
        nn.ReLU(),
        nn.Linear(10, 5),
    )
    return _finish(net, seed), (2, 8, 8)


def cnn_strided(seed: int) -> Tuple[nn.Sequential, Tuple[int, ...]]:
    """The IBP paper's small CNN at a toy size: stride-2 convs with leftovers (output_padding cases)."""
    net = nn.Sequential(
        nn.Conv2d(1, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    )
    return _finish(net, seed), (1, 9, 9)


def cnn_zoo(seed: int) -> Tuple[nn.Sequential, Tuple[int, ...]]:
    """Every option the backward pass treats specially: BN, 'same', dilation, groups, odd pools."""
    net = nn.Sequential(
        nn.Identity(),
        nn.Conv2d(2, 4, 3, padding="same", dilation=2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AvgPool2d(2, stride=1, padding=1, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(4, 4, 2, stride=2, groups=2, bias=False),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=1, padding=1),  # overlapping windows with padding
        nn.Conv2d(4, 3, 2, stride=1, padding=0),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=2, ceil_mode=True),  # a partial window at the edge
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 4),
    )
    return _finish(net, seed), (2, 7, 7)


ARCHS: List[Callable[[int], Tuple[nn.Sequential, Tuple[int, ...]]]] = [mlp, cnn_maxpool, cnn_strided, cnn_zoo]


def random_box(shape: Tuple[int, ...], batch: int, eps: float, seed: int) -> Tuple[Tensor, Tensor]:
    """Boxes of uneven widths around random centres; some coordinates are points."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand((batch,) + shape, generator=gen, dtype=DT)
    radius = eps * torch.rand((batch,) + shape, generator=gen, dtype=DT)
    radius = radius * (torch.rand((batch,) + shape, generator=gen, dtype=DT) > 0.1)
    return centre - radius, centre + radius


# --------------------------------------------------------------------------- sampling and attacks


def _forward_many(net: nn.Module, points: Tensor) -> Tensor:
    """net on (R, N, *input) points: (R, N, outputs)."""
    reps, batch = points.shape[:2]
    return net(points.reshape((reps * batch,) + points.shape[2:])).reshape(reps, batch, -1)


def _attack(net: nn.Module, lower: Tensor, upper: Tensor, C: Tensor, steps: int = 12, seed: int = 0) -> Tensor:
    """Points (R, N, *input) of the box found by projected sign-gradient steps on every ±row of C."""
    gen = torch.Generator().manual_seed(seed)
    specs = C.shape[1]
    directions = torch.cat([C, -C], 1)  # (N, 2S, K): push every row both ways
    reps = 2 * specs
    x = lower + (upper - lower) * torch.rand((reps,) + lower.shape, generator=gen, dtype=DT)
    step = (upper - lower) / 4
    found = []
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        out = _forward_many(net, x)  # (R, N, K)
        objective = torch.einsum("rnk,nrk->", out, directions)
        (grad,) = torch.autograd.grad(objective, x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x + step * grad.sign(), lower), upper)
        found.append(x.detach())
        step = step * 0.7
    return torch.cat(found, 0)


def sampled_values(
    net: nn.Module, lower: Tensor, upper: Tensor, C: Optional[Tensor] = None, samples: int = 300, attacked: int = 16
) -> Tensor:
    """(R, N, S) values of C @ net(x) (C = identity if None) at uniform points, corners and attack points.

    At most ``attacked`` rows of C (evenly spaced) get their own attack; the
    values of every row are recorded at every attack point.
    """
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        outputs = net(lower).reshape(lower.shape[0], -1).shape[1]
    if C is None:
        C = torch.eye(outputs, dtype=DT).expand(lower.shape[0], -1, -1)
    uniform = lower + (upper - lower) * torch.rand((samples,) + lower.shape, generator=gen, dtype=DT)
    points = [uniform, lower[None], upper[None], ((lower + upper) / 2)[None]]
    dims = lower[0].numel()
    if dims <= 8:  # every corner of a tiny box
        flags = torch.tensor(list(itertools.product([0.0, 1.0], repeat=dims)), dtype=DT)
        corners = lower.flatten(1)[None] + flags[:, None, :] * (upper - lower).flatten(1)[None]
        points.append(corners.reshape((-1,) + lower.shape))
    with torch.no_grad():
        values = [torch.einsum("nsk,rnk->rns", C, _forward_many(net, p)) for p in points]
    rows = torch.linspace(0, C.shape[1] - 1, min(attacked, C.shape[1])).round().long().unique()
    attack_points = _attack(net, lower, upper, C[:, rows])
    with torch.no_grad():
        values.append(torch.einsum("nsk,rnk->rns", C, _forward_many(net, attack_points)))
    return torch.cat(values, 0)


def assert_contains(lo: Tensor, hi: Tensor, values: Tensor) -> None:
    slack = TOL * (1 + values.abs())
    below = (lo.reshape(1, *lo.shape[:2]) - values - slack).max().item()
    above = (values - hi.reshape(1, *hi.shape[:2]) - slack).max().item()
    assert below <= 0, f"a sampled value lies {below:.3g} below the lower bound"
    assert above <= 0, f"a sampled value lies {above:.3g} above the upper bound"


def all_bounds(net: nn.Module, lower: Tensor, upper: Tensor, C: Optional[Tensor] = None) -> dict:
    return {
        "ibp": interval_bounds(net, lower, upper, C),
        "crown": crown_bounds(net, lower, upper, C),
        "crown-pure": crown_bounds(net, lower, upper, C, intersect_ibp=False),
        "crown-ibp": crown_bounds(net, lower, upper, C, intermediate="ibp", intersect_ibp=False),
    }


def _flat(pair: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
    return pair[0].reshape(pair[0].shape[0], -1), pair[1].reshape(pair[1].shape[0], -1)


# --------------------------------------------------------------------------- soundness


@pytest.mark.parametrize("arch", ARCHS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("eps", [0.02, 0.3])
def test_bounds_contain_sampled_and_attacked_outputs(arch, eps):
    for seed in range(2):
        net, shape = arch(seed)
        lower, upper = random_box(shape, batch=3, eps=eps, seed=seed + 10)
        values = sampled_values(net, lower, upper)
        for name, pair in all_bounds(net, lower, upper).items():
            lo, hi = _flat(pair)
            assert (lo <= hi + TOL).all(), name
            assert_contains(lo, hi, values)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda f: f.__name__)
def test_margin_bounds_contain_sampled_and_attacked_margins(arch):
    net, shape = arch(3)
    lower, upper = random_box(shape, batch=3, eps=0.1, seed=4)
    with torch.no_grad():
        y = net(lower).argmax(1)
    classes = net(lower).shape[1]
    C = margin_matrix(y, classes, dtype=DT)
    values = sampled_values(net, lower, upper, C)
    for method in ("ibp", "crown"):
        margins = margin_lower_bound(net, lower, upper, y, method)
        assert_contains(margins, torch.full_like(margins, float("inf")), values)
    for name, (lo, hi) in all_bounds(net, lower, upper, C).items():
        assert_contains(lo, hi, values)


@pytest.mark.parametrize("arch", [cnn_maxpool, cnn_zoo], ids=lambda f: f.__name__)
def test_every_prefix_is_bounded_soundly(arch):
    # Prefixes end at the nodes whose CROWN bounds feed the relaxations.
    net, shape = arch(5)
    layers = bounds._flatten_net(net)
    lower, upper = random_box(shape, batch=2, eps=0.2, seed=6)
    for end in range(1, len(layers) + 1):
        prefix = nn.Sequential(*layers[:end])
        values = sampled_values(prefix, lower, upper, samples=100)
        lo, hi = _flat(crown_bounds(prefix, lower, upper, intersect_ibp=False))
        assert_contains(lo, hi, values)


@settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.0, 0.6), arch=st.sampled_from(ARCHS))
def test_bounds_sound_property(seed, eps, arch):
    net, shape = arch(seed)
    lower, upper = random_box(shape, batch=2, eps=eps, seed=seed + 1)
    gen = torch.Generator().manual_seed(seed)
    uniform = lower + (upper - lower) * torch.rand((200,) + lower.shape, generator=gen, dtype=DT)
    with torch.no_grad():
        values = _forward_many(net, torch.cat([uniform, lower[None], upper[None]]))
    for name, pair in all_bounds(net, lower, upper).items():
        lo, hi = _flat(pair)
        assert_contains(lo, hi, values)


def test_float32_bounds_are_sound_up_to_rounding():
    net, shape = cnn_maxpool(40)
    net = net.float()
    lower, upper = random_box(shape, batch=3, eps=0.1, seed=41)
    lower, upper = lower.float(), upper.float()
    uniform = lower + (upper - lower) * torch.rand((300,) + lower.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        values = _forward_many(net, torch.cat([uniform, lower[None], upper[None]]))
    for lo, hi in (interval_bounds(net, lower, upper), crown_bounds(net, lower, upper)):
        assert lo.dtype == torch.float32
        slack = 1e-5 * (1 + values.abs())
        assert (lo[None] - slack <= values).all() and (values <= hi[None] + slack).all()


def test_shared_spec_and_non_contiguous_boxes():
    net, shape = cnn_maxpool(42)
    lower, upper = random_box(shape, batch=3, eps=0.1, seed=43)
    C = torch.randn(4, 5, dtype=DT, generator=torch.Generator().manual_seed(0))
    per_sample = crown_bounds(net, lower, upper, C.expand(3, -1, -1))
    shared = crown_bounds(net, lower, upper, C)
    for got, want in zip(shared, per_sample):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # The same boxes stored transposed in memory.
    lower_t = lower.transpose(2, 3).contiguous().transpose(2, 3)
    upper_t = upper.transpose(2, 3).contiguous().transpose(2, 3)
    assert not lower_t.is_contiguous()
    for got, want in zip(crown_bounds(net, lower_t, upper_t, C), shared):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- exact cases


@pytest.mark.parametrize("arch", ARCHS, ids=lambda f: f.__name__)
def test_point_box_gives_the_exact_output(arch):
    net, shape = arch(7)
    point, _ = random_box(shape, batch=3, eps=0.0, seed=8)
    with torch.no_grad():
        exact = net(point)
        y = exact.argmax(1)
        exact_margins = exact.gather(1, y[:, None]) - exact
    for name, (lo, hi) in all_bounds(net, point, point).items():
        torch.testing.assert_close(lo, exact, rtol=0, atol=1e-12, msg=name)
        torch.testing.assert_close(hi, exact, rtol=0, atol=1e-12, msg=name)
    for method in ("ibp", "crown"):
        margins = margin_lower_bound(net, point, point, y, method)
        torch.testing.assert_close(margins, exact_margins, rtol=0, atol=1e-12)


def test_single_linear_layer_is_exact_and_attained_at_corners():
    torch.manual_seed(0)
    net = nn.Linear(5, 3).to(DT)
    lower, upper = random_box((5,), batch=4, eps=0.5, seed=1)
    weight, bias = net.weight.detach(), net.bias.detach()
    # The maximising corner of w.x takes u where w > 0 and l elsewhere.
    argmax_corner = torch.where(weight[None] > 0, upper[:, None], lower[:, None])  # (N, K, D)
    argmin_corner = torch.where(weight[None] > 0, lower[:, None], upper[:, None])
    exact_hi = (argmax_corner * weight).sum(-1) + bias
    exact_lo = (argmin_corner * weight).sum(-1) + bias
    with torch.no_grad():
        attained = torch.stack([net(argmax_corner[:, k])[:, k] for k in range(3)], 1)
    torch.testing.assert_close(attained, exact_hi)
    for name, (lo, hi) in all_bounds(net, lower, upper).items():
        torch.testing.assert_close(lo, exact_lo, rtol=0, atol=1e-12, msg=name)
        torch.testing.assert_close(hi, exact_hi, rtol=0, atol=1e-12, msg=name)
    # Margins of a linear net are linear too: their bound is the exact minimum.
    y = torch.tensor([0, 1, 2, 1])
    C = margin_matrix(y, 3, dtype=DT)
    spec_weight = C @ weight  # (N, K, D)
    corner = torch.where(spec_weight > 0, lower[:, None], upper[:, None])
    exact_margin = (corner * spec_weight).sum(-1) + C @ bias
    for method in ("ibp", "crown"):
        torch.testing.assert_close(margin_lower_bound(net, lower, upper, y, method), exact_margin, rtol=0, atol=1e-12)


def test_relu_of_a_box_is_exact():
    relu = nn.Sequential(nn.ReLU())
    cases = [
        (torch.tensor([[0.0, 0.5, 1.0]], dtype=DT), torch.tensor([[0.2, 0.5, 3.0]], dtype=DT), False),
        (torch.tensor([[-2.0, -0.5, -1.0]], dtype=DT), torch.tensor([[-1.0, 0.0, -0.5]], dtype=DT), False),
        (torch.tensor([[-2.0, -0.5]], dtype=DT), torch.tensor([[1.0, 3.0]], dtype=DT), True),
    ]
    for lower, upper, split in cases:
        for name, (lo, hi) in all_bounds(relu, lower, upper).items():
            if split and name in ("crown-pure", "crown-ibp"):
                continue  # a linear lower line cannot be exact on a split ReLU; intersection fixes it
            # Stable cases are bit-exact; the chord of a split ReLU is exact up to rounding.
            atol = 1e-15 if split else 0.0
            torch.testing.assert_close(lo, lower.clamp(min=0), rtol=0, atol=atol, msg=name)
            torch.testing.assert_close(hi, upper.clamp(min=0), rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("same_kernel", [3, 2])
def test_affine_chain_bounds_are_exact(same_kernel):
    # No ReLU: CROWN composes the affine maps, so its bound is the exact
    # range f(mid) ± |J| rad. This checks every adjoint (conv with stride
    # leftovers, 'same' (asymmetric for an even kernel), dilation, groups,
    # both avg-pool paths, BN, Flatten) against autograd's Jacobian.
    net = _finish(
        nn.Sequential(
            nn.Conv2d(2, 4, 3, stride=2, padding=1),
            nn.BatchNorm2d(4),
            nn.AvgPool2d(2, stride=1, padding=1, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(4, 4, same_kernel, padding="same", groups=2),
            nn.AvgPool2d(2, stride=1),
            nn.Conv2d(4, 3, 3, stride=2, padding=2, dilation=2),
            nn.Flatten(),
            nn.Linear(12, 5),
        ),
        seed=11,
    )
    lower, upper = random_box((2, 8, 8), batch=2, eps=0.3, seed=12)
    mid, rad = (lower + upper) / 2, (upper - lower) / 2
    for n in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on even-kernel 'same' padding
            jac = torch.autograd.functional.jacobian(lambda x: net(x[None])[0], mid[n]).reshape(5, -1)
            centre = net(mid[n : n + 1])[0].detach()
        spread = jac.abs() @ rad[n].flatten()
        lo, hi = crown_bounds(net, lower[n : n + 1], upper[n : n + 1], intersect_ibp=False)
        torch.testing.assert_close(lo[0], centre - spread, rtol=0, atol=1e-12)
        torch.testing.assert_close(hi[0], centre + spread, rtol=0, atol=1e-12)


def test_conv_node_bounds_are_exact_through_patches():
    # Two mixing layers before a ReLU make CROWN bound the 4-d node in patch
    # mode; the result must equal the exact affine range (relu of it).
    net = _finish(
        nn.Sequential(
            nn.Conv2d(1, 3, 3, stride=2, padding=1),
            nn.BatchNorm2d(3),
            nn.AvgPool2d(2, stride=1),
            nn.Conv2d(3, 2, 2, stride=1, padding=1, groups=1),
            nn.ReLU(),
        ),
        seed=13,
    )
    lower, upper = random_box((1, 7, 7), batch=2, eps=0.3, seed=14)
    affine = nn.Sequential(*list(net)[:-1])
    exact_lo, exact_hi = crown_bounds(affine, lower, upper, intersect_ibp=False)
    lo, hi = crown_bounds(net, lower, upper)
    torch.testing.assert_close(lo, exact_lo.clamp(min=0), rtol=0, atol=1e-12)
    torch.testing.assert_close(hi, exact_hi.clamp(min=0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", [cnn_maxpool, cnn_strided, cnn_zoo], ids=lambda f: f.__name__)
def test_patches_and_folded_relu_change_nothing(arch, monkeypatch):
    net, shape = arch(15)
    lower, upper = random_box(shape, batch=3, eps=0.15, seed=16)
    fast = crown_bounds(net, lower, upper, intersect_ibp=False)
    monkeypatch.setattr(bounds.tunables, "USE_PATCHES", False)
    monkeypatch.setattr(bounds.tunables, "FUSE_RELU_POOL", False)
    plain = crown_bounds(net, lower, upper, intersect_ibp=False)
    for got, want in zip(fast, plain):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_small_chunks_change_nothing(monkeypatch):
    net, shape = cnn_maxpool(17)
    lower, upper = random_box(shape, batch=3, eps=0.15, seed=18)
    whole = crown_bounds(net, lower, upper)
    monkeypatch.setattr(bounds.tunables, "CHUNK_BYTES", 1)
    chunked = crown_bounds(net, lower, upper)
    for got, want in zip(chunked, whole):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- tightness


def _shipped_nets() -> List[Tuple[str, nn.Module, Tuple[int, ...]]]:
    from pixdisc.models import MLP, MadryMNIST, SmallCNN

    torch.manual_seed(0)
    return [
        ("SmallCNN", SmallCNN(width=4, hidden=16, input_size=12).to(DT).eval(), (1, 12, 12)),
        ("MadryMNIST", MadryMNIST(input_size=8).to(DT).eval(), (1, 8, 8)),
        ("MLP", MLP(input_size=6, hidden=(16, 16)).to(DT).eval(), (1, 6, 6)),
    ]


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.3])
def test_crown_is_never_looser_than_ibp_on_shipped_architectures(eps):
    for name, net, shape in _shipped_nets():
        lower, upper = random_box(shape, batch=2, eps=eps, seed=19)
        lower, upper = lower.clamp(0, 1), upper.clamp(0, 1)
        with torch.no_grad():
            y = net(lower).argmax(1)
            ibp_lo, ibp_hi = interval_bounds(net, lower, upper)
            crown_lo, crown_hi = crown_bounds(net, lower, upper)
            assert (crown_lo >= ibp_lo).all() and (crown_hi <= ibp_hi).all(), name
            ibp_margin = margin_lower_bound(net, lower, upper, y, "ibp")
            crown_margin = margin_lower_bound(net, lower, upper, y, "crown")
            assert (crown_margin >= ibp_margin).all(), name
            assert (crown_margin > ibp_margin).any() or eps == 0.3, name  # CROWN does gain at small eps


def test_pure_crown_is_tighter_than_ibp_on_average():
    widths = {"ibp": 0.0, "crown": 0.0}
    for seed in range(6):
        for arch in (cnn_maxpool, cnn_strided, cnn_zoo):
            net, shape = arch(seed)
            lower, upper = random_box(shape, batch=2, eps=0.1, seed=seed)
            for name, fn in (("ibp", interval_bounds), ("crown", crown_bounds)):
                kwargs = {} if name == "ibp" else {"intersect_ibp": False}
                lo, hi = fn(net, lower, upper, **kwargs)
                widths[name] += (hi - lo).mean().item()
    assert widths["crown"] < 0.8 * widths["ibp"], widths


def test_margins_via_spec_are_tighter_than_logit_differences():
    net, shape = cnn_maxpool(20)
    lower, upper = random_box(shape, batch=4, eps=0.1, seed=21)
    y = torch.tensor([0, 1, 2, 3])
    for method, fn in (("ibp", interval_bounds), ("crown", crown_bounds)):
        lo, hi = fn(net, lower, upper)
        naive = lo.gather(1, y[:, None]) - hi
        naive = naive.scatter(1, y[:, None], 0.0)
        margins = margin_lower_bound(net, lower, upper, y, method)
        assert (margins >= naive - TOL).all(), method
        assert (margins > naive + 1e-6).any(), method


# --------------------------------------------------------------------------- margins and certificates


def test_margin_lower_bound_shape_and_own_class_entry():
    net, shape = mlp(22)
    lower, upper = random_box(shape, batch=5, eps=0.05, seed=23)
    y = torch.tensor([0, 3, 1, 2, 3])
    for method in ("ibp", "crown"):
        margins = margin_lower_bound(net, lower, upper, y, method)
        assert margins.shape == (5, 4) and margins.dtype == DT
        assert (margins.gather(1, y[:, None]) == 0).all()


def test_certified_by_bounds_on_points_and_wide_boxes():
    net, shape = cnn_maxpool(24)
    point, _ = random_box(shape, batch=6, eps=0.0, seed=25)
    with torch.no_grad():
        logits = net(point)
    predicted = logits.argmax(1)
    wrong = (predicted + 1) % logits.shape[1]
    for method in ("ibp", "crown"):
        verdict = certified_by_bounds(net, point, point, predicted, method)
        assert verdict.dtype == torch.bool and verdict.shape == (6,)
        assert verdict.all()
        assert not certified_by_bounds(net, point, point, wrong, method).any()
        assert not certified_by_bounds(net, point - 5, point + 5, predicted, method).any()


def test_certificate_agrees_with_margins():
    net, shape = cnn_strided(26)
    lower, upper = random_box(shape, batch=8, eps=0.02, seed=27)
    with torch.no_grad():
        y = net((lower + upper) / 2).argmax(1)
    margins = margin_lower_bound(net, lower, upper, y)
    others = margins.scatter(1, y[:, None], float("inf"))
    torch.testing.assert_close(certified_by_bounds(net, lower, upper, y), (others > 0).all(1))


# --------------------------------------------------------------------------- dtypes, gradients, size


def test_dtype_option_computes_in_float64():
    net32, shape = cnn_maxpool(28)
    net32 = net32.float()
    lower, upper = random_box(shape, batch=2, eps=0.05, seed=29)
    lo32, hi32 = crown_bounds(net32, lower.float(), upper.float())
    assert lo32.dtype == torch.float32
    lo64, hi64 = crown_bounds(net32, lower.float(), upper.float(), dtype=DT)
    assert lo64.dtype == DT and net32[0].weight.dtype == torch.float32
    torch.testing.assert_close(lo64, lo32.double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hi64, hi32.double(), rtol=1e-4, atol=1e-4)


def test_narrowing_cast_only_grows_the_box():
    # A float64 box bounded in float32 must not shrink by rounding to nearest.
    lower = torch.tensor([[0.1, -1 / 3, 2.0]], dtype=DT)
    upper = torch.tensor([[1 / 3, -0.1, 2.0]], dtype=DT)
    lo, hi = interval_bounds(nn.Sequential(nn.Identity()), lower, upper, dtype=torch.float32)
    assert lo.dtype == torch.float32
    assert (lo.double() <= lower).all() and (hi.double() >= upper).all()


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_gradients_reach_every_parameter(method):
    net, shape = cnn_maxpool(30)
    lower, upper = random_box(shape, batch=4, eps=0.1, seed=31)
    y = torch.tensor([0, 1, 2, 3])
    if method == "crown-ibp":
        margins = margin_lower_bound(net, lower, upper, y, "crown", intermediate="ibp")
    else:
        margins = margin_lower_bound(net, lower, upper, y, method)
    # Certified training's loss: cross-entropy on the negated margin bounds.
    loss = nn.functional.cross_entropy(-margins, y)
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_gradient_of_ibp_matches_finite_differences():
    net, shape = mlp(32)
    lower, upper = random_box(shape, batch=2, eps=0.1, seed=33)
    weight = net[1].weight

    def objective() -> Tensor:
        lo, hi = interval_bounds(net, lower, upper)
        return (hi - lo).sum()

    (grad,) = torch.autograd.grad(objective(), weight)
    step = 1e-6
    with torch.no_grad():
        weight[0, 0] += step
        plus = objective()
        weight[0, 0] -= 2 * step
        minus = objective()
        weight[0, 0] += step
    assert abs((plus - minus).item() / (2 * step) - grad[0, 0].item()) < 1e-5


def test_empty_batch():
    net, shape = cnn_maxpool(34)
    empty = torch.zeros((0,) + shape, dtype=DT)
    lo, hi = crown_bounds(net, empty, empty)
    assert lo.shape == (0, 5) and hi.shape == (0, 5)
    assert interval_bounds(net, empty, empty)[0].shape == (0, 5)
    assert certified_by_bounds(net, empty, empty, torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_ibp_paper_cnn_batch_of_32_is_fast():
    # The small CNN of the IBP paper on MNIST-sized input: CROWN with CROWN
    # intermediate bounds for 32 images must stay well under a second on a
    # quiet CPU; the limit here is loose so that a loaded machine passes.
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    ).eval()
    x = torch.rand(32, 1, 28, 28)
    lower, upper = (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1)
    y = torch.arange(32) % 10
    with torch.no_grad():
        start = time.perf_counter()
        margins = margin_lower_bound(net, lower, upper, y)
        elapsed = time.perf_counter() - start
        ibp = margin_lower_bound(net, lower, upper, y, "ibp")
    assert margins.shape == (32, 10) and torch.isfinite(margins).all()
    assert (margins >= ibp).all()
    assert elapsed < 10.0, f"CROWN took {elapsed:.2f} s"


# --------------------------------------------------------------------------- errors


class _Custom(nn.Linear):
    pass


class _Overridden(nn.Sequential):
    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never run
        return super().forward(x) * 2


@pytest.mark.parametrize(
    "net, name",
    [
        (nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())), "Sigmoid"),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh()), "Tanh"),
        (nn.Sequential(nn.Flatten(), _Custom(4, 3)), "_Custom"),
        (_Overridden(nn.Flatten(), nn.Linear(4, 3)), "_Overridden"),
        (nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(4, 3)), "Dropout"),
    ],
)
def test_unsupported_layers_are_named(net, name):
    box = torch.zeros(1, 1, 2, 2)
    for call in (interval_bounds, crown_bounds):
        with pytest.raises(TypeError) as info:
            call(net, box, box)
        message = str(info.value)
        assert name in message
        for supported in SUPPORTED_LAYERS:
            assert supported.__name__ in message


def test_invalid_boxes_and_options_raise_value_errors():
    net, shape = mlp(35)
    lower, upper = random_box(shape, batch=2, eps=0.1, seed=36)
    swapped = upper.clone()
    swapped[1, 0, 2] = lower[1, 0, 2] - 1e-3
    nan = upper.clone()
    nan[0, 0, 0] = float("nan")
    y = torch.tensor([0, 1])
    for call in (interval_bounds, crown_bounds):
        with pytest.raises(ValueError, match="lower > upper"):
            call(net, lower, swapped)
        with pytest.raises(ValueError, match="finite"):
            call(net, lower, nan)
        with pytest.raises(ValueError, match="same shape"):
            call(net, lower, upper[:1])
        with pytest.raises(ValueError, match="C must have shape"):
            call(net, lower, upper, torch.zeros(2, 3, 5, dtype=DT))
    with pytest.raises(ValueError, match="lower > upper"):
        margin_lower_bound(net, lower, swapped, y)
    with pytest.raises(ValueError, match="labels"):
        margin_lower_bound(net, lower, upper, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="shape"):
        margin_lower_bound(net, lower, upper, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="method"):
        margin_lower_bound(net, lower, upper, y, method="lp")
    with pytest.raises(ValueError, match="intermediate"):
        crown_bounds(net, lower, upper, intermediate="alpha")
    hooked = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).to(DT)
    hooked[1].register_forward_hook(lambda module, inputs, output: output * 2)
    with pytest.raises(ValueError, match="hooks"):
        crown_bounds(hooked, lower, upper)
    training_bn = nn.Sequential(nn.Flatten(), nn.Linear(6, 3), nn.BatchNorm1d(3)).to(DT)
    with pytest.raises(ValueError, match="eval mode"):
        interval_bounds(training_bn, lower, upper)
