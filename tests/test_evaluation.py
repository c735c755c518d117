"""Robust accuracy as an interval: the certified floor and the attacked ceiling never contradict each other."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixdisc  # noqa: E402
from pixdisc import evaluation  # noqa: E402
from pixdisc.certification import Budget  # noqa: E402
from pixdisc.discretize import Discretize  # noqa: E402
from pixdisc.evaluation import robustness_interval  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _problem(seed=0, n=30, side=5, codes=((0.0,), (0.5,), (1.0,))):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, side, side, generator=gen)
    book = pixdisc.Codebook(np.asarray(codes, np.float32))
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(side * side, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 3))
    model = torch.nn.Sequential(Discretize(book), net).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 3  # two clean errors: broken with no perturbation
    return x, y, model


def _no_attack(model, x, y):
    return x.clone()


_no_attack.__name__ = "no_attack"


@pytest.mark.parametrize("eps", [0.05, 0.12, 0.3])
def test_certified_samples_are_never_broken_and_statuses_add_up(eps):
    x, y, model = _problem()
    interval = robustness_interval(model, x, y, eps, certify_all=True, progress=False,
                                   certify_budget=Budget(nodes=200, seconds=5.0))
    certificate = interval.certificate
    assert len(certificate) == len(x)  # certify ran on every sample
    certified = certificate.outcome == "certified"
    assert not (certified & interval.attack.success.numpy()).any()
    counterexample = (certificate.outcome == "failed") & certificate.verified
    assert (interval.status[counterexample] == "broken").all()
    assert interval.status[:2].tolist() == ["broken", "broken"]
    counts = interval.summary()
    assert counts["certified"] + counts["broken"] + counts["undecided"] == len(x)
    assert interval.floor <= interval.ceiling
    assert interval.floor == counts["certified"] / len(x)
    assert interval.exact == (counts["undecided"] == 0)
    assert interval.attack_names[0] == "sx" and interval.attack_names[-1] == "certify"


def test_certify_counterexamples_count_as_attacks():
    x, y, model = _problem(seed=1)
    interval = robustness_interval(model, x, y, 0.3, attacks=[_no_attack], progress=False,
                                   certify_budget=Budget(nodes=200, seconds=5.0))
    certificate = interval.certificate
    found = np.flatnonzero((certificate.outcome == "failed") & certificate.verified)
    assert len(found) > 2, "the test needs counterexamples that only certify finds"
    samples = interval.certified_on[found]
    assert interval.attack.success[samples].all()
    late = samples[samples >= 2]
    assert (interval.attack.attack_index[late] == interval.attack_names.index("certify")).all()
    # Their counterexamples are real: within eps and misclassified through the whole model.
    x_adv = interval.attack.x_adv[late]
    assert float((x_adv - x[late]).abs().max()) <= 0.3 + 1e-7
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y[late]).all()


def test_a_contradiction_is_raised(monkeypatch):
    x, y, model = _problem(seed=2, n=8)
    real_certify = evaluation.certify

    def overclaiming(*args, **kwargs):
        result = real_certify(*args, **kwargs)
        result.outcome[:] = "certified"
        return result

    monkeypatch.setattr(evaluation, "certify", overclaiming)
    with pytest.raises(RuntimeError, match="certified robust and broken"):
        robustness_interval(model, x, y, 0.3, certify_all=True, progress=False)


def test_undefended_model_has_no_floor():
    x, y, model = _problem(seed=3, n=8)
    interval = robustness_interval(model[1], x, y, 0.1, attacks=[{"attack": "pgd", "eps": 0.1, "steps": 3,
                                                                  "step_size": 0.05}], progress=False)
    assert interval.certificate is None and interval.floor is None and not interval.exact
    assert set(interval.status.tolist()) <= {"broken", "undecided"}
    assert interval.attack_names == ["pgd"]


def test_a_network_the_bounds_cannot_walk_has_no_floor_and_says_why():
    x, y, model = _problem(seed=4, n=6)

    class Custom(torch.nn.Module):  # an operation (sin) no bound rule covers
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.sin(self.inner(x))

    wrapped = torch.nn.Sequential(model[0], Custom(model[1])).eval()
    interval = robustness_interval(wrapped, x, y, 0.1, attacks=[_no_attack], progress=False)
    assert interval.certificate is None and interval.floor is None
    assert "no certified floor" in interval.summary()["floor_unavailable"]
