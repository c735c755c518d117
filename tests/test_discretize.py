"""The torch Discretize module: hard forward equals the native kernels, BPDA gradients are right."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixdisc  # noqa: E402
from pixdisc.discretize import Discretize, soft_discretize  # noqa: E402

METRICS = ("linf", "l1", "l2")


def _codebook(channels, metric, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return pixdisc.Codebook(rng.random((k, channels), dtype=np.float32), metric=metric)


@pytest.mark.parametrize("channels", [1, 3])
def test_forward_is_native_hard_discretization(channels, device):
    book = _codebook(channels, "linf")
    x = torch.rand(4, channels, 6, 6, device=device)
    out = Discretize(book)(x)
    np.testing.assert_array_equal(out.cpu().numpy(), book.transform(x.cpu().numpy(), channel_axis=1))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [1, 3])
def test_soft_gradient_matches_autograd_of_g(metric, channels):
    """The chunked closed-form BPDA gradient equals autograd through the soft approximation g."""
    book = _codebook(channels, metric, k=7)
    module = Discretize(book, bpda="soft", alpha=6.0)
    x = torch.rand(2, channels, 5, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, channels, 5, 5, dtype=torch.float64)
    (module(x) * upstream).sum().backward()
    ours = x.grad.clone()

    x2 = x.detach().clone().requires_grad_()
    pixels = x2.movedim(1, -1).reshape(-1, channels)
    g = soft_discretize(pixels, module.codes.double(), 6.0, metric).reshape(2, 5, 5, channels).movedim(-1, 1)
    (g * upstream).sum().backward()
    torch.testing.assert_close(ours, x2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_soft_approximation_gradcheck(metric):
    codes = torch.tensor([[0.1, 0.2, 0.3], [0.8, 0.5, 0.9], [0.4, 0.9, 0.1]], dtype=torch.float64)
    x = torch.rand(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: soft_discretize(t, codes, 5.0, metric), (x,))


def test_soft_approximation_is_stable_for_large_alpha():
    codes = torch.tensor([[0.0], [1.0]])
    g = soft_discretize(torch.tensor([[0.3], [0.7]]), codes, alpha=1e4)
    torch.testing.assert_close(g, torch.tensor([[0.0], [1.0]]))


def test_identity_and_no_bpda():
    book = _codebook(1, "linf")
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    Discretize(book, bpda="identity")(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    x.grad = None
    Discretize(book, bpda=None)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x))


def test_chunking_does_not_change_the_gradient(monkeypatch):
    import pixdisc.discretize as mod

    book = _codebook(3, "linf", k=40)
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    Discretize(book)(x).sum().backward()
    full = x.grad.clone()
    monkeypatch.setattr(mod, "_CHUNK_ELEMENTS", 1)  # 1024-pixel chunks
    x.grad = None
    Discretize(book)(x).sum().backward()
    torch.testing.assert_close(x.grad, full)


def test_sequential_defended_model_and_bad_inputs():
    book = pixdisc.DensityCodebook(2, 0.6).fit(np.array([0.0, 0.0, 1.0], np.float32))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    model = torch.nn.Sequential(Discretize(book), net)
    x = torch.rand(5, 1, 4, 4, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(ValueError, match="bpda"):
        Discretize(book, bpda="straight")
    with pytest.raises(ValueError, match="alpha"):
        Discretize(book, alpha=0)
    with pytest.raises(pixdisc.NotFittedError):
        Discretize(pixdisc.DensityCodebook(2, 0.1))
    with pytest.raises(ValueError, match="float"):
        Discretize(book)(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize("channels", [1, 3])
def test_load_state_dict_changes_forward_and_backward(channels, device):
    """The codes buffer is the one source of truth: loading other codes moves forward and backward alike."""
    first, second = _codebook(channels, "l1", k=6, seed=1), _codebook(channels, "l1", k=6, seed=2)
    module = Discretize(first, alpha=5.0).to(device)
    module.load_state_dict(Discretize(second).state_dict())
    reference = Discretize(second, alpha=5.0).to(device)
    x = torch.rand(2, channels, 4, 4, device=device)
    upstream = torch.randn(2, channels, 4, 4, device=device)
    grads = []
    for m in (module, reference):
        xi = x.clone().requires_grad_()
        out = m(xi)
        (out * upstream).sum().backward()
        grads.append((out.detach(), xi.grad))
    np.testing.assert_array_equal(grads[0][0].cpu().numpy(), second.transform(x.cpu().numpy(), channel_axis=1))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1])
    np.testing.assert_array_equal(module.codebook.codes_, second.codes_)
    assert module.codebook.metric == "l1"
    assert not np.array_equal(first.codes_, second.codes_)  # the user's codebook is left alone


def test_codebook_follows_in_place_writes_and_keeps_identity_otherwise():
    book = _codebook(1, "linf", k=3)
    module = Discretize(book)
    assert module.codebook is book  # unchanged codes: the given codebook itself
    with torch.no_grad():
        module.codes.copy_(torch.tensor([[0.0], [0.5], [1.0]]))
    assert module.codebook is not book
    np.testing.assert_array_equal(module.codebook.codes_[:, 0], [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(module(torch.tensor([[0.2, 0.3, 0.9]])).numpy(), [[0.0, 0.5, 1.0]])
