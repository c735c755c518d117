"""Bounds over traced graphs: residual adds, cat, batch norm, pooling and reshapes; the CIFAR ResNet end to end."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import Tensor, nn
from torch.nn import functional as F

import pixdisc
from pixdisc import bounds
from pixdisc.bounds import certified_by_bounds, crown_bounds, interval_bounds, margin_lower_bound
from pixdisc.models import cifar_resnet

DT = torch.float64
TOL = 1e-9  # float64: a sound bound may miss a sampled value by rounding only

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# --------------------------------------------------------------------------- graph models


class ConvGraph(nn.Module):
    """Residual add, batch norm, max-pool after a ReLU (fused) and avg-pool, cat of both, flatten."""

    def __init__(self, channels: int = 2, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=1, padding=1)
        self.head = nn.Linear(2 * width * 3 * 3, classes)

    def forward(self, x: Tensor) -> Tensor:
        a = self.stem(x)
        b = self.conv1(F.relu(self.bn(a)))
        c = self.conv2(torch.relu(b)) + a
        d = torch.cat([F.max_pool2d(F.relu(c), 2), F.avg_pool2d(c, 2)], dim=1)
        return self.head(torch.flatten(d, 1))


class DenseGraph(nn.Module):
    """view(), BatchNorm1d, a skip straight from the input, cat of a ReLU with its own input."""

    def __init__(self, features: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, features)
        self.bn = nn.BatchNorm1d(features)
        self.fc2 = nn.Linear(features, features)
        self.out = nn.Linear(2 * features, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(x.size(0), -1)
        h = F.relu(self.bn(self.fc1(x)))
        skip = self.fc2(h) + x
        return self.out(torch.cat([skip.relu(), skip], 1))


class PoolGraph(nn.Module):
    """A ReLU read by a max-pool and by a skip (not fused), adaptive average pooling, reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        r = F.relu(self.conv(x))
        m = nn.functional.max_pool2d(r, 2, stride=2)
        s = self.conv2(m) + self.pool(r)
        return self.head(s.reshape(s.shape[0], 12))


GRAPHS = [(ConvGraph, (2, 6, 6)), (DenseGraph, (1, 2, 3)), (PoolGraph, (1, 4, 4))]


def _finish(net: nn.Module, seed: int) -> nn.Module:
    """float64, eval mode, seeded weights with spread biases, non-trivial batch-norm statistics."""
    gen = torch.Generator().manual_seed(seed)
    net = net.to(DT).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen, dtype=DT) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen, dtype=DT))
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen, dtype=DT))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen, dtype=DT) + 0.5)
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen, dtype=DT))
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen, dtype=DT))
    return net


def _box(shape, batch: int, eps: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand((batch,) + tuple(shape), generator=gen, dtype=DT)
    radius = eps * torch.rand((batch,) + tuple(shape), generator=gen, dtype=DT)
    return centre - radius, centre + radius


def _samples(lower: Tensor, upper: Tensor, count: int, seed: int) -> Tensor:
    """(count, N, ...) points of the box: uniform, and corners (where ReLU nets take extremes)."""
    gen = torch.Generator().manual_seed(seed)
    uniform = torch.rand((count // 2,) + lower.shape, generator=gen, dtype=DT)
    corners = torch.randint(0, 2, (count - count // 2,) + lower.shape, generator=gen).to(DT)
    t = torch.cat([uniform, corners])
    return lower + t * (upper - lower)


# --------------------------------------------------------------------------- soundness and tightness


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [0.02, 0.2])
@pytest.mark.parametrize("make, shape", GRAPHS, ids=[g[0].__name__ for g in GRAPHS])
def test_graph_bounds_contain_sampled_outputs_and_crown_is_tighter(make, shape, eps, seed):
    net = _finish(make(), seed)
    lower, upper = _box(shape, batch=3, eps=eps, seed=seed + 100)
    with torch.no_grad():
        outs = torch.stack([net(x) for x in _samples(lower, upper, 200, seed)])
        y = net((lower + upper) / 2).argmax(1)
        margins = outs.gather(2, y[None, :, None].expand(outs.shape[0], -1, 1)) - outs
        ibp = interval_bounds(net, lower, upper)
        crown = crown_bounds(net, lower, upper)
        pure = crown_bounds(net, lower, upper, intersect_ibp=False)
        margin_ibp = margin_lower_bound(net, lower, upper, y, "ibp")
        margin_crown = margin_lower_bound(net, lower, upper, y)
        margin_cibp = margin_lower_bound(net, lower, upper, y, intermediate="ibp")
    for lo, hi in (ibp, crown, pure):
        assert (outs >= lo - TOL).all() and (outs <= hi + TOL).all()
    for bound in (margin_ibp, margin_crown, margin_cibp):
        assert (margins >= bound - TOL).all()
    assert (crown[0] >= ibp[0]).all() and (crown[1] <= ibp[1]).all()
    assert (margin_crown >= margin_ibp).all()


def test_crown_gains_over_ibp_on_graphs():
    gains = 0
    for make, shape in GRAPHS:
        net = _finish(make(), 7)
        lower, upper = _box(shape, batch=2, eps=0.05, seed=8)
        with torch.no_grad():
            ibp_lo, ibp_hi = interval_bounds(net, lower, upper)
            lo, hi = crown_bounds(net, lower, upper, intersect_ibp=False)
        gains += int(((hi - lo).mean() < (ibp_hi - ibp_lo).mean()).item())
    assert gains == len(GRAPHS)


@pytest.mark.parametrize("make, shape", GRAPHS, ids=[g[0].__name__ for g in GRAPHS])
def test_patches_fusion_and_chunks_change_nothing_on_graphs(make, shape, monkeypatch):
    # Patch merging at residual joins and channel splits at cat against plain dense coefficients.
    net = _finish(make(), 11)
    lower, upper = _box(shape, batch=3, eps=0.15, seed=12)
    with torch.no_grad():
        fast = crown_bounds(net, lower, upper, intersect_ibp=False)
        monkeypatch.setattr(bounds.tunables, "CHUNK_BYTES", 1)
        chunked = crown_bounds(net, lower, upper, intersect_ibp=False)
        monkeypatch.setattr(bounds.tunables, "USE_PATCHES", False)
        monkeypatch.setattr(bounds.tunables, "FUSE_RELU_POOL", False)
        plain = crown_bounds(net, lower, upper, intersect_ibp=False)
    for got in (chunked, plain):
        for a, b in zip(got, fast):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


class _Wrapped(nn.Module):
    def __init__(self, inner: nn.Sequential) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


def test_traced_chain_equals_the_sequential_path():
    net = _finish(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                nn.Linear(12, 3)), 3)
    lower, upper = _box((1, 4, 4), batch=2, eps=0.1, seed=4)
    y = torch.tensor([0, 2])
    with torch.no_grad():
        for method in ("ibp", "crown"):
            want = margin_lower_bound(net, lower, upper, y, method)
            got = margin_lower_bound(_Wrapped(net), lower, upper, y, method)
            assert torch.equal(got, want)


def test_gradients_reach_every_parameter_of_a_graph():
    net = _finish(ConvGraph(), 5)
    lower, upper = _box((2, 6, 6), batch=2, eps=0.05, seed=6)
    for method in ("ibp", "crown"):
        net.zero_grad()
        margin_lower_bound(net, lower, upper, torch.tensor([0, 1]), method, intermediate="ibp").sum().backward()
        for name, parameter in net.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), (method, name)


# --------------------------------------------------------------------------- errors


class _Sigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc(x.flatten(1)))


class _Branchy(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x if x.sum() > 0 else -x


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1)) * 2


def test_unsupported_graph_operations_are_named_with_their_place():
    box = torch.zeros(1, 1, 2, 2)
    with pytest.raises(TypeError, match=r"sigmoid.*test_bounds_graph\.py"):
        interval_bounds(_Sigmoid(), box, box)
    with pytest.raises(TypeError, match=r"mul.*test_bounds_graph\.py"):
        crown_bounds(_Scaled(), box, box)
    with pytest.raises(TypeError, match="torch.fx"):
        crown_bounds(_Branchy(), box, box)
    training = ConvGraph().to(DT)
    with pytest.raises(ValueError, match="eval mode"):
        interval_bounds(training, torch.zeros(1, 2, 6, 6, dtype=DT), torch.zeros(1, 2, 6, 6, dtype=DT))


def test_exact_stage_takes_the_bounds_graph_of_a_residual_network():
    # The exact stage encodes the graph the bound tiers trace, residual adds included (it once refused them).
    from pixdisc.certification.exact.validate import validate

    net = cifar_resnet(depth=10, width=2).eval()
    codes = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    base = np.zeros((3, 32 * 32), np.float32)
    positions = np.array([0, 5], np.int64)
    candidates = [np.array([0, 1], np.int64), np.array([1, 0], np.int64)]
    problem = validate(net, base, positions, candidates, codes, 0, None, (3, 32, 32))
    assert any(op.kind == "add" for op in problem.graph.ops)


# --------------------------------------------------------------------------- the CIFAR ResNet


def _small_resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = cifar_resnet(depth=10, width=2).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return net


def test_cifar_resnet_bounds_and_certificate_end_to_end():
    net = _small_resnet(0)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    lower, upper = (x - 1e-3).clamp(0, 1), (x + 1e-3).clamp(0, 1)
    started = time.perf_counter()
    with torch.no_grad():
        y = net(x).argmax(1)
        ibp = interval_bounds(net, lower, upper)
        crown = crown_bounds(net, lower, upper)
        proof = certified_by_bounds(net, lower, upper, y)
        outs = torch.stack([net(s) for s in _samples(lower.double(), upper.double(), 40, 2).float()])
    elapsed = time.perf_counter() - started
    assert (outs >= crown[0] - 1e-4).all() and (outs <= crown[1] + 1e-4).all()
    assert (crown[0] >= ibp[0]).all() and (crown[1] <= ibp[1]).all()
    assert proof.dtype == torch.bool and proof.shape == (2,)
    assert proof.any()  # a radius at which CROWN proves the prediction of these weights
    assert elapsed < 30, f"ResNet bounds took {elapsed:.1f} s"


def test_certify_a_discretized_cifar_resnet():
    from pixdisc.candidates import candidate_sets
    from pixdisc.certification import Budget, certify

    net = _small_resnet(3)
    codes = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    book = pixdisc.Codebook(codes)
    rng = np.random.default_rng(0)
    pick = rng.integers(0, 4, size=(3, 32, 32))
    x = np.transpose(codes[pick], (0, 3, 1, 2)) + rng.uniform(-0.05, 0.05, size=(3, 3, 32, 32))
    # A few pixels halfway between two codes: two candidates each, so the box is not a point.
    x[:, :, 5, 5:9] = 0.5
    x = x.clip(0, 1).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(book.transform(x, channel_axis=1))).argmax(1).numpy()
    eps = 0.02
    result = certify(net, book, x, y, eps, mode="bab", b=64, executor="serial", progress=False,
                     budget=Budget(nodes=20, seconds=20, exact_seconds=0))
    certified = np.flatnonzero(result.outcome == "certified")
    assert len(certified) >= 1
    for i in certified:
        sets = candidate_sets(x[i : i + 1], book, eps, rule="sound", channel_axis=1)  # what certify bounds over
        lists = [sets.of(p) for p in range(32 * 32)]
        assert max(len(s) for s in lists) >= 2  # the box really had width
        for _ in range(20):
            z = np.array([s[rng.integers(len(s))] for s in lists])
            image = np.ascontiguousarray(codes[z].T.reshape(1, 3, 32, 32))
            with torch.no_grad():
                assert int(net(torch.from_numpy(image)).argmax(1)) == y[i]


@pytest.mark.parametrize("bound", ["ibp", "crown"])
def test_certified_training_steps_on_a_graph_model(bound):
    from pixdisc.train import train_certified

    class Residual(nn.Module):  # no batch norm: training mode would normalise by the batch itself
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 3, 3, padding=1)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.head = nn.Linear(2 * 3 * 3 * 3, 2)

        def forward(self, x: Tensor) -> Tensor:
            a = self.stem(x)
            b = self.conv(F.relu(a)) + a
            return self.head(torch.cat([F.max_pool2d(F.relu(b), 2), F.avg_pool2d(a, 2)], 1).flatten(1))

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 6, 6)).astype(np.float32)
    y = (x.mean((1, 2, 3)) > 0.5).astype(np.int64)
    model = Residual()
    before = [p.detach().clone() for p in model.parameters()]
    model, history = train_certified(model, x, y, None, eps=0.05, epochs=1, warmup_epochs=0, ramp_epochs=1,
                                     kappa_end=0.0, bound=bound, batch_size=4, lr=1e-2, progress=False)
    assert np.isfinite(history["loss"]).all() and history["eps"][-1] == pytest.approx(0.05)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_certified_training_of_a_cifar_resnet_with_batch_norm():
    """Training-mode BatchNorm has no bound over a box: the bound uses the running statistics (eval mode),
    the clean pass the batch's, and the model comes back trained and bounded like the certificate sees it."""
    from pixdisc.train import train_certified

    torch.manual_seed(0)
    from pixdisc.models import cifar_resnet

    model = cifar_resnet(depth=10, width=2, num_classes=2)
    rng = np.random.default_rng(1)
    x = rng.random((8, 3, 32, 32)).astype(np.float32)
    y = (x.mean((1, 2, 3)) > 0.5).astype(np.int64)
    running = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    norms = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model, history = train_certified(model, x, y, None, eps=0.01, epochs=1, warmup_epochs=0, ramp_epochs=1,
                                     kappa_end=0.5, bound="ibp", batch_size=4, lr=1e-2, progress=False)
    assert np.isfinite(history["loss"]).all() and not model.training
    after = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(not torch.equal(r, m.running_mean) for r, m in zip(running, after))  # the clean pass updated them
    assert any(not torch.equal(w, m.weight) for w, m in zip(norms, after))  # and the affine part learned
    with torch.no_grad():
        lower, upper = torch.from_numpy(x - 0.01).clamp(0, 1), torch.from_numpy(x + 0.01).clamp(0, 1)
        low, high = interval_bounds(model, lower, upper)
        out = model(torch.from_numpy(x))
    assert (out >= low - 1e-4).all() and (out <= high + 1e-4).all()
