"""The adaptive suite: stages that focus on the samples closest to breaking and chains that stop paying."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import Tensor, nn

from pixdisc import Codebook, Discretize
from pixdisc.attacks import SUITE, AttackResult, Stage, adaptive_attacks, evaluate_robustness, result_from_inputs
from pixdisc.models import build_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class Margins(nn.Module):
    """Two classes on (N,1,1,1) inputs; the logit of class 1 is the input, so the margin of label 0 is 2x - 1."""

    def forward(self, x: Tensor) -> Tensor:
        value = x.reshape(len(x), 1)
        return torch.cat([1 - value, value], dim=1)


class Scripted:
    """An attack callable that records the samples it is given and breaks those listed (by their value)."""

    def __init__(self, name: str, breaks: set[float]) -> None:
        self.__name__ = name
        self.breaks = breaks
        self.seen: list[list[float]] = []

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        values = [round(float(v), 4) for v in x.flatten()]
        self.seen.append(values)
        x_adv = torch.where(torch.tensor([v in self.breaks for v in values]).view(-1, 1, 1, 1),
                            torch.ones_like(x), x)
        return x_adv


def _points(values: list[float]) -> tuple[Tensor, Tensor]:
    return torch.tensor(values).view(-1, 1, 1, 1), torch.zeros(len(values), dtype=torch.int64)


def test_focus_attacks_the_share_closest_to_breaking():
    x, y = _points([0.1, 0.4, 0.2, 0.3, 0.05])
    first, focused = Scripted("first", set()), Scripted("focused", set())
    evaluate_robustness(Margins(), x, y, [first, Stage(focused, focus=0.4)], progress=False)
    assert first.seen == [[0.1, 0.4, 0.2, 0.3, 0.05]]
    # 40% of 5 standing: the two with the highest margins (0.4 and 0.3), in their original order.
    assert focused.seen == [[0.4, 0.3]]


def test_focus_rounds_up_and_never_skips_a_lone_survivor():
    x, y = _points([0.1, 0.2])
    first, focused = Scripted("first", {0.2}), Scripted("focused", set())
    evaluate_robustness(Margins(), x, y, [first, Stage(focused, focus=0.01)], progress=False)
    assert focused.seen == [[0.1]]


def test_a_chain_stops_after_an_attack_that_broke_nothing():
    x, y = _points([0.1, 0.2, 0.3])
    first = Scripted("first", set())
    a, b, c = Scripted("a", {0.1}), Scripted("b", set()), Scripted("c", {0.3})
    result = evaluate_robustness(Margins(), x, y, [first, Stage(a, chained=True), Stage(b, chained=True),
                                                   Stage(c, chained=True)], progress=False)
    assert a.seen == [[0.1, 0.2, 0.3]] and b.seen == [[0.2, 0.3]]
    assert c.seen == []  # b broke nothing: c never runs, and 0.3 stands
    assert result.success.tolist() == [True, False, False]


def test_an_unchained_stage_runs_after_an_idle_chain_and_the_chain_restarts_per_batch():
    x, y = _points([0.1, 0.2, 0.3, 0.35])
    first, a, b, square = Scripted("first", set()), Scripted("a", set()), Scripted("b", {0.35}), Scripted("sq", {0.2})
    evaluate_robustness(Margins(), x, y, [first, Stage(a, chained=True), Stage(b, chained=True), square],
                        batch_size=2, progress=False)
    assert a.seen == [[0.1, 0.2], [0.3, 0.35]]
    assert b.seen == []  # a broke nothing in either batch
    assert square.seen == [[0.1, 0.2], [0.3, 0.35]]


def test_stages_are_recorded_in_the_params():
    x, y = _points([0.1, 0.2])
    result = evaluate_robustness(Margins(), x, y, [Scripted("first", set()), Stage(Scripted("f", set()), focus=0.5),
                                                   Stage(Scripted("c", set()), chained=True)], progress=False)
    entries = result.params["attacks"]
    assert [entry["name"] for entry in entries] == ["first", "f", "c"]
    assert entries[1]["focus"] == 0.5 and "chained" not in entries[1] and entries[2]["chained"] is True


@pytest.mark.parametrize("focus", [0, -0.5, 1.5, float("nan")])
def test_bad_focus_is_refused(focus):
    with pytest.raises(ValueError, match="focus"):
        Stage(lambda model, x, y: x, focus=focus)


def test_adaptive_attacks_spend_the_search_first_and_chain_the_gradient_attacks():
    codebook = Codebook(np.array([[0.0], [1.0]]))
    defended = nn.Sequential(Discretize(codebook), build_model("mlp", in_channels=1, num_classes=10,
                                                              input_size=4)).eval()
    stages = adaptive_attacks(defended, 0.1, names=SUITE)
    names = [stage.spec["name"] if isinstance(stage.spec, dict) else stage.spec.__name__ for stage in stages]
    assert names[:2] == ["sx", "sx_focus"] and stages[1].focus < 1 and not stages[0].chained
    gradient = [stage for stage, name in zip(stages, names) if name.startswith(("pgd", "apgd", "adam"))]
    assert gradient and all(stage.chained for stage in gradient)
    plain = adaptive_attacks(build_model("mlp", in_channels=1, num_classes=10, input_size=4).eval(), 0.1)
    assert all(not (isinstance(stage.spec, dict) and stage.spec["name"].startswith("sx")) for stage in plain)


def test_adaptive_suite_never_reports_more_robust_than_its_own_first_attack():
    # A real defended model: the adaptive suite's worst case includes the S(x) search's, image by image.
    torch.manual_seed(0)
    codebook = Codebook(np.array([[0.0], [1.0]]))
    net = build_model("mlp", in_channels=1, num_classes=3, input_size=4).eval()
    defended = nn.Sequential(Discretize(codebook), net).eval()
    x = torch.rand(24, 1, 4, 4)
    with torch.no_grad():
        y = defended(x).argmax(1)
    stages = adaptive_attacks(defended, 0.2, steps=5, square_queries=10)
    suite = evaluate_robustness(defended, x, y, stages, progress=False)
    alone = evaluate_robustness(defended, x, y, [stages[0].spec], progress=False)
    assert bool((alone.success <= suite.success).all())
    assert bool(suite.success.any())


@pytest.mark.slow
def test_adaptive_suite_is_as_strong_as_the_full_suite_on_a_fixed_small_model():
    # A fixed small defended model (an MLP trained briefly on 600 digits behind Algorithm 1's k=2 codes): the
    # demo's adaptive suite must break every image the full suite breaks, or at least as many.
    from pixdisc import DensityCodebook
    from pixdisc.attacks import default_attacks
    from pixdisc.datasets import as_float_nchw, load_digits
    from pixdisc.train import train_model

    data = load_digits()
    x, y = torch.from_numpy(as_float_nchw(data.x_train)[:600]), torch.from_numpy(data.y_train[:600])
    x_test, y_test = torch.from_numpy(as_float_nchw(data.x_test)[:200]), torch.from_numpy(data.y_test[:200])
    codebook = DensityCodebook(2, 0.5).fit(data.x_train)
    torch.manual_seed(0)
    net, _ = train_model(build_model("mlp", input_size=8, hidden=(64,)), x, y, epochs=10, batch_size=32,
                         progress=False, defense=Discretize(codebook), seed=0)
    defended = nn.Sequential(Discretize(codebook), net).eval()
    eps, options = 0.15, {"steps": 20, "step_size": 0.02, "square_queries": 200, "seed": 0}
    full = evaluate_robustness(defended, x_test, y_test, default_attacks(defended, eps, **options), progress=False)
    adaptive = evaluate_robustness(defended, x_test, y_test, adaptive_attacks(defended, eps, **options),
                                   progress=False)
    assert 0.05 < full.robust_accuracy < full.clean_accuracy - 0.05  # the attacks have work to do here
    assert adaptive.robust_accuracy <= full.robust_accuracy, (adaptive.robust_accuracy, full.robust_accuracy)
