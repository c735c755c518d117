"""The defense inside other toolkits: torchattacks and ART run real attacks through its BPDA gradient."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixdisc  # noqa: E402
from pixdisc.discretize import Discretize  # noqa: E402


def _toy_problem():
    """Gray 4x4 images whose class is the brightness of the left half; a linear net that knows it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 4, 4, generator=gen)
    y = (x[:, :, :, :2].mean(dim=(1, 2, 3)) > 0.5).long()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        weight = torch.zeros(2, 16)
        left = torch.tensor([1.0 if (i % 4) < 2 else 0.0 for i in range(16)])
        weight[1], weight[0] = left, -left
        net[1].weight.copy_(weight)
        net[1].bias.copy_(torch.tensor([4.0, -4.0]))  # class 1 iff the left half's mean > 0.5
    book = pixdisc.UniformCodebook(8).fit(x.numpy(), channel_axis=1)
    return x, y, net, book


def test_torchattacks_pgd_through_discretize():
    torchattacks = pytest.importorskip("torchattacks")
    x, y, net, book = _toy_problem()
    model = torch.nn.Sequential(Discretize(book, alpha=20.0), net).eval()
    eps = 0.3
    attack = torchattacks.PGD(model, eps=eps, alpha=0.05, steps=10, random_start=False)
    x_adv = attack(x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    clean = (model(x).argmax(1) == y).float().mean()
    robust = (model(x_adv).argmax(1) == y).float().mean()
    assert clean > 0.8
    assert robust < clean  # the BPDA gradient is informative: the attack succeeds on some images


def test_art_preprocessor_adapter_runs_pgd():
    pytest.importorskip("art")
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    from pixdisc.integrations import ArtDiscretizer

    x, y, net, book = _toy_problem()
    defence = ArtDiscretizer(book, alpha=20.0)
    classifier = PyTorchClassifier(model=net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 4, 4), nb_classes=2,
                                   clip_values=(0.0, 1.0), preprocessing_defences=[defence])
    x_np = x.numpy()
    # Predictions go through the defence: they equal the net on discretized inputs.
    expect = net(torch.from_numpy(book.transform(x_np, channel_axis=1))).argmax(1).numpy()
    np.testing.assert_array_equal(classifier.predict(x_np).argmax(1), expect)
    attack = ProjectedGradientDescent(classifier, eps=0.3, eps_step=0.05, max_iter=10, verbose=False)
    x_adv = attack.generate(x_np, y=y.numpy())
    assert np.abs(x_adv - x_np).max() <= 0.3 + 1e-6
    robust = (classifier.predict(x_adv).argmax(1) == y.numpy()).mean()
    clean = (expect == y.numpy()).mean()
    assert clean > 0.8
    assert robust < clean
