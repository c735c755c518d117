"""The exact MILP stage against exhaustive enumeration of S(x) on tiny networks and images."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy.optimize")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from pixdisc.certification.exact import decide_milp  # noqa: E402
from pixdisc.certification.exact import decide as exact_decide  # noqa: E402
from pixdisc.certification.exact import solve as exact_solve  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# --------------------------------------------------------------------------- tiny networks


def _mlp(channels, side, classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                         nn.Linear(10, classes))


def _mlp_bn(channels, side, classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, 12), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, classes))


def _conv(channels, side, classes=3):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * ((side - 3) // 2 + 1) ** 2, classes))


def _conv_bn_avg(channels, side, classes=3):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * (side // 2) ** 2, 8), nn.ReLU(), nn.Linear(8, classes))


def _conv_maxpool(channels, side, classes=3):
    return nn.Sequential(nn.Conv2d(channels, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * (side // 2) ** 2, classes))


class _Residual(nn.Module):
    """A traced graph: conv, eval-mode batch norm, functional ReLU, a residual add around a second conv, average
    pooling, a flatten method and a linear head."""

    def __init__(self, channels, side, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(channels, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.body = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(3 * (side // 2) ** 2, classes)
        with torch.no_grad():
            self.stem.weight.mul_(4.0)  # sensitive to single pixels: some samples are not robust

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = h + torch.relu(self.body(h))
        return self.head(self.pool(h).flatten(1))


class _Branches(nn.Module):
    """A traced graph: torch.cat of a ReLU branch and a linear one, max pooling with ceil_mode (windows that
    overhang the image), view, and two heads added."""

    def __init__(self, channels, side, classes=3):
        super().__init__()
        self.a = nn.Conv2d(channels, 2, 3, padding=1)
        self.b = nn.Conv2d(channels, 2, 1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        pooled = 4 * ((side + 1) // 2) ** 2
        self.fc = nn.Linear(pooled, 6)
        self.out = nn.Linear(6, classes)
        self.skip = nn.Linear(pooled, classes)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), self.b(x)], 1)
        h = self.pool(h).view(x.shape[0], -1)
        return self.out(F.relu(self.fc(h))) + self.skip(h)


def _build(make, channels, side, seed):
    torch.manual_seed(seed)
    net = make(channels, side)
    for module in net.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            # Non-trivial running statistics, so eval-mode batch norm is a real affine map.
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


# --------------------------------------------------------------------------- samples and enumeration


def _sample(rng, codes, side, ambiguous, max_candidates):
    """Base codes, ambiguous pixels and candidate lists (the base code first, as the engine orders them)."""
    k = codes.shape[0]
    pixels = side * side
    base_codes = rng.integers(0, k, pixels).astype(np.int32)
    positions = rng.choice(pixels, ambiguous, replace=False).astype(np.int64)
    candidates = []
    for p in positions:
        others = rng.permutation([c for c in range(k) if c != base_codes[p]])
        size = int(rng.integers(2, max_candidates + 1))
        candidates.append(np.array([base_codes[p], *others[: size - 1]], np.int64))
    return base_codes, positions, candidates


def _members(base_codes, positions, candidates):
    combos = np.array(list(itertools.product(*candidates)), np.int64).reshape(-1, len(positions))
    z = np.repeat(base_codes[None], len(combos), 0)
    z[:, positions] = combos
    return z


def _logits(net, codes, z, shape):
    images = torch.from_numpy(np.ascontiguousarray(codes[z].transpose(0, 2, 1)).reshape((-1,) + shape))
    with torch.no_grad():
        return net(images).double().numpy()


def _in_set(z, base_codes, positions, candidates):
    fixed = np.ones(len(base_codes), bool)
    fixed[positions] = False
    return np.array_equal(z[fixed], base_codes[fixed]) and all(z[p] in a for p, a in zip(positions, candidates))


_CODES = {
    "k2": np.array([[0.0], [1.0]], np.float32),
    "k3": np.array([[0.0], [0.45], [1.0]], np.float32),
    "rgb4": np.array([[0.1, 0.2, 0.9], [0.8, 0.1, 0.3], [0.5, 0.5, 0.5], [0.9, 0.9, 0.2]], np.float32),
}
# (architecture, code set, side, ambiguous pixels, largest candidate set)
_CONFIGS = [
    (_mlp, "k2", 4, 10, 2),
    (_mlp, "k3", 6, 8, 3),
    (_mlp_bn, "k3", 4, 8, 3),
    (_conv, "k2", 6, 12, 2),
    (_conv, "k3", 6, 7, 3),
    (_conv_bn_avg, "k3", 6, 7, 3),
    (_conv_maxpool, "k2", 4, 10, 2),
    (_conv, "rgb4", 6, 6, 3),
    (_mlp, "rgb4", 4, 6, 3),
    # Graphs the bound tiers trace with torch.fx (last, so the samples above stay as they were).
    (_Residual, "k3", 4, 8, 3),
    (_Residual, "k2", 6, 12, 2),
    (_Residual, "rgb4", 4, 6, 3),
    (_Branches, "k2", 5, 10, 2),
    (_Branches, "k3", 5, 7, 3),
]
_GRAPHS = ("_Residual", "_Branches")
_SAMPLES_PER_CONFIG = 5


def _cases():
    rng = np.random.default_rng(20240611)
    for index, (make, code_name, side, ambiguous, max_candidates) in enumerate(_CONFIGS):
        codes = _CODES[code_name]
        channels = codes.shape[1]
        net = _build(make, channels, side, seed=index)
        shape = (channels, side, side)
        for _ in range(_SAMPLES_PER_CONFIG):
            base_codes, positions, candidates = _sample(rng, codes, side, ambiguous, max_candidates)
            # The label the net gives the base image: robust or not depends on S(x).
            y = int(_logits(net, codes, base_codes[None], shape)[0].argmax())
            yield f"{make.__name__}-{code_name}", net, codes, shape, base_codes, positions, candidates, y


def _check_against_enumeration():
    """Run every case; assert each verdict against enumeration; return the tallies, the (status, method)
    pairs, and the statuses on the traced graphs."""
    tally = {"certified": 0, "counterexample": 0, "unknown": 0}
    robust_count = 0
    methods = set()
    on_graphs = set()
    for name, net, codes, shape, base_codes, positions, candidates, y in _cases():
        members = _members(base_codes, positions, candidates)
        wrong = _logits(net, codes, members, shape).argmax(1) != y
        image = codes[base_codes].T.reshape(shape)
        out = decide_milp(net, image, positions, candidates, codes, y, time_limit=20.0)
        tally[out.status] += 1
        robust_count += int(not wrong.any())
        if out.status == "certified":
            assert not wrong.any(), f"{name}: certified, but enumeration finds {int(wrong.sum())} misclassified members"
            assert out.margin_bound >= 1e-4
        elif out.status == "counterexample":
            assert out.z_codes is not None and out.z_codes.dtype == np.int32 and out.z_codes.shape == base_codes.shape
            assert _in_set(out.z_codes, base_codes, positions, candidates), f"{name}: counterexample outside S(x)"
            assert _logits(net, codes, out.z_codes[None], shape)[0].argmax() != y
        methods.add((out.status, out.method))
        if name.startswith(_GRAPHS):
            on_graphs.add((out.status, out.method))
    total = sum(tally.values())
    assert total == len(_CONFIGS) * _SAMPLES_PER_CONFIG
    # Both kinds occur (here 49 robust, 21 not), and nearly everything is decided (here all).
    assert 0 < robust_count < total
    assert tally["certified"] > 0 and tally["counterexample"] > 0
    assert tally["unknown"] <= total // 20, tally
    return tally, methods, on_graphs


def test_decisions_agree_with_enumeration():
    tally, methods, on_graphs = _check_against_enumeration()
    # Every stage took part in some proof.
    assert {("certified", m) for m in ("bounds", "lp-highs", "milp-highs")} <= methods, methods
    # The traced graphs (residual add, batch norm, cat, pooling) are decided both ways, past the bounds too.
    assert {s for s, _ in on_graphs} == {"certified", "counterexample"}, on_graphs
    assert {m for _, m in on_graphs} & {"lp-highs", "milp-highs"}, on_graphs


def test_branch_and_bound_alone_agrees_with_enumeration(monkeypatch):
    """Without CROWN and the LP stage, the MILP (with the expression bounds only) decides the cases by itself."""

    def no_lp(*args, **kwargs):
        raise RuntimeError("LP stage switched off for this test")

    monkeypatch.setattr(exact_decide, "crown_margins", lambda *args: None)
    monkeypatch.setattr(exact_decide, "crown_value_bounds", lambda *args: None)
    monkeypatch.setattr(exact_solve, "linprog", no_lp)
    tally, methods, on_graphs = _check_against_enumeration()
    assert ("counterexample", "milp-highs") in methods and ("certified", "milp-highs") in methods, methods
    assert ("counterexample", "milp-highs") in on_graphs and ("certified", "milp-highs") in on_graphs, on_graphs


def test_milp_optimum_is_the_enumerated_minimum():
    """With an unreachable tolerance every class goes to branch and bound; its optimum is the true minimum margin."""
    checked = 0
    for name, net, codes, shape, base_codes, positions, candidates, y in itertools.islice(_cases(), 0, None, 3):
        members = _members(base_codes, positions, candidates)
        logits = _logits(net, codes, members, shape)
        if (logits.argmax(1) != y).any():
            continue
        image = codes[base_codes].T.reshape(shape)
        out = decide_milp(net, image, positions, candidates, codes, y, time_limit=20.0, margin_tolerance=1e9)
        assert out.status == "unknown"
        for entry in out.details:
            assert entry["how"] == "milp" and entry["status"] == 0 and entry["gap"] == 0.0
            truth = float((logits[:, y] - logits[:, entry["class"]]).min())
            assert entry["objective"] == pytest.approx(truth, abs=1e-4), name
            assert entry["bound"] <= truth + 1e-4, name
            checked += 1
    assert checked >= 10


def _one_case(index=3, sample=0):
    make, code_name, side, ambiguous, max_candidates = _CONFIGS[index]
    cases = [case for case in _cases() if case[0] == f"{make.__name__}-{code_name}"]
    return cases[sample]


def _non_robust_case():
    for case in _cases():
        name, net, codes, shape, base_codes, positions, candidates, y = case
        logits = _logits(net, codes, _members(base_codes, positions, candidates), shape)
        # Not robust, though the witness (each pixel at its first candidate) is classified y.
        if (logits.argmax(1) != y).any():
            return case
    raise AssertionError("no non-robust case")


def test_flattened_image_and_base_codes():
    name, net, codes, shape, base_codes, positions, candidates, y = _non_robust_case()
    flat = codes[base_codes].T.reshape(shape[0], -1)  # (C, P), as the certification engine holds it
    out = decide_milp(net, flat.reshape(-1), positions, candidates, codes, y, base_codes=base_codes,
                      image_shape=shape)
    assert out.status == "counterexample"
    assert _in_set(out.z_codes, base_codes, positions, candidates)
    again = decide_milp(net, flat, positions, candidates, codes, y)  # square image inferred, codes recovered
    assert again.status == "counterexample"


def test_misclassified_witness_is_returned_at_once():
    name, net, codes, shape, base_codes, positions, candidates, y = _one_case()
    wrong = (y + 1) % 3
    out = decide_milp(net, codes[base_codes].T.reshape(shape), positions, candidates, codes, wrong)
    assert out.status == "counterexample" and out.method == "evaluation"
    assert np.array_equal(out.z_codes, base_codes)


def test_infeasible_report_is_not_a_proof(monkeypatch):
    """HiGHS declaring the program infeasible (it never is: S(x) is not empty) must leave the sample undecided."""
    name, net, codes, shape, base_codes, positions, candidates, y = _non_robust_case()
    infeasible = SimpleNamespace(status=2, message="infeasible", x=None, fun=None, mip_dual_bound=None,
                                 mip_node_count=0, ineqlin=None, eqlin=None)
    monkeypatch.setattr(exact_solve, "milp", lambda *a, **k: infeasible)
    monkeypatch.setattr(exact_solve, "linprog", lambda *a, **k: infeasible)
    out = decide_milp(net, codes[base_codes].T.reshape(shape), positions, candidates, codes, y, margin_tolerance=1e9)
    assert out.status == "unknown" and "infeasible" in out.reason


def test_lp_bound_is_recomputed_not_trusted(monkeypatch):
    """An LP answer with a made-up objective and multipliers cannot certify a non-robust sample."""
    name, net, codes, shape, base_codes, positions, candidates, y = _non_robust_case()
    rng = np.random.default_rng(0)

    def lying_linprog(c, A_ub, b_ub, A_eq, b_eq, **kwargs):
        return SimpleNamespace(status=0, fun=100.0, x=None,
                               ineqlin=SimpleNamespace(marginals=rng.normal(size=A_ub.shape[0])),
                               eqlin=SimpleNamespace(marginals=rng.normal(size=A_eq.shape[0])))

    monkeypatch.setattr(exact_solve, "linprog", lying_linprog)
    out = decide_milp(net, codes[base_codes].T.reshape(shape), positions, candidates, codes, y)
    assert out.status == "counterexample"


def test_safe_lp_bound_holds_for_any_multipliers():
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    A_ub = sp.csr_array(rng.normal(size=(6, 4)))
    A_eq = sp.csr_array(np.ones((1, 4)))
    lb, ub = np.zeros(4), np.ones(4)
    c = rng.normal(size=4)
    points = rng.dirichlet(np.ones(4), size=2000)  # on sum x = 1, inside the box
    b_ub = (A_ub @ points.T).max(1) + 0.1  # every point feasible
    for _ in range(50):
        multipliers = rng.normal(size=6), rng.normal(size=1)
        bound = exact_solve.safe_lp_bound(c, A_ub, b_ub, A_eq, np.ones(1), lb, ub, *multipliers)
        assert bound <= (points @ c).min() + 1e-12


def test_time_limit_gives_unknown_not_a_verdict():
    name, net, codes, shape, base_codes, positions, candidates, y = _one_case()
    out = decide_milp(net, codes[base_codes].T.reshape(shape), positions, candidates, codes, y, time_limit=0.0,
                      margin_tolerance=1e9)
    assert out.status in ("unknown", "counterexample")
    if out.status == "counterexample":
        assert _in_set(out.z_codes, base_codes, positions, candidates)


def test_unsupported_layer_raises_naming_it():
    """A layer the program cannot encode is an error (NotImplementedError naming it), not a silent verdict."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    codes = _CODES["k2"]
    base_codes = np.zeros(16, np.int32)
    with pytest.raises(NotImplementedError, match="Tanh"):
        decide_milp(net, codes[base_codes].T.reshape(1, 4, 4), np.array([0, 5]), [np.array([0, 1])] * 2, codes, 0)
    train_bn = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    with pytest.raises(NotImplementedError, match="eval mode"):
        decide_milp(train_bn, codes[base_codes].T.reshape(1, 4, 4), np.array([0]), [np.array([0, 1])], codes, 0)


class _Gated(nn.Module):
    """Multiplies by a sigmoid: an op neither the bounds nor the program take."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = x.flatten(1)
        return self.fc(h * torch.sigmoid(h))


def test_unsupported_operation_is_refused_from_one_place():
    """What the bounds' graph refuses, decide_milp refuses with one error that names the operation and where
    it is; the certification engine's exact stage turns it into its reason, never a verdict."""
    from pixdisc.certification.exact.stage import exact_outcome

    codes = _CODES["k2"]
    base_codes = np.zeros(16, np.int32)
    image = codes[base_codes].T.reshape(1, 4, 4)
    args = (image, np.array([0, 5]), [np.array([0, 1])] * 2, codes, 0)
    with pytest.raises(NotImplementedError, match=r"decide_milp cannot encode _Gated: .*sigmoid.*test_exact\.py"):
        decide_milp(_Gated().eval(), *args)
    hooked = _build(_mlp, 1, 4, seed=0)
    handle = hooked[1].register_forward_hook(lambda module, inputs, output: output * 2)
    with pytest.raises(NotImplementedError, match="decide_milp cannot encode Sequential: .*forward hooks"):
        decide_milp(hooked, *args)
    handle.remove()
    outcome, why = exact_outcome(_Gated().eval(), image.reshape(-1), args[1], args[2], codes, 0, base_codes,
                                 (1, 4, 4), 1, 5.0, None, 1e-4)
    assert outcome is None and why.startswith("exact stage: decide_milp cannot encode _Gated") and "sigmoid" in why


def test_program_uses_the_bounds_of_the_same_graph():
    """The program's big-M constants come from the bound tiers' own values of the graph it encodes (the public
    bounds.value_bounds), and every one of them contains the witness."""
    from pixdisc.bounds import value_bounds
    from pixdisc.certification.exact.validate import validate

    name, net, codes, shape, base_codes, positions, candidates, y = _one_case(len(_CONFIGS) - 5)
    assert name == "_Residual-k3"
    problem = validate(net, codes[base_codes].T.reshape(shape), positions, candidates, codes, y, None, None)
    assert {op.kind for op in problem.graph.ops} >= {"add", "layer"}
    lower, upper = problem.box()
    bounds = exact_decide.crown_value_bounds(problem, lower, upper)
    assert bounds is not None and len(bounds) == len(problem.graph.ops)
    graph, values = value_bounds(net, torch.from_numpy(lower.reshape((1,) + shape)),
                                 torch.from_numpy(upper.reshape((1,) + shape)), dtype=torch.float64)
    assert graph is problem.graph
    witness = torch.from_numpy(codes[problem.z0].T.reshape((1,) + shape).copy())
    with torch.no_grad():
        inner = [witness]
        for op in graph.ops[1:]:  # the witness's own value at every op, from the net's modules
            if op.kind == "layer":
                inner.append(op.module(inner[op.inputs[0]]))
            elif op.kind == "add":
                inner.append(inner[op.inputs[0]] + inner[op.inputs[1]])
            else:
                assert op.kind == "reshape", op.kind
                inner.append(inner[op.inputs[0]].reshape((1,) + op.shape))
    for (lo, hi), value in zip(values, inner):
        assert (lo <= value.double() + 1e-6).all() and (value.double() <= hi + 1e-6).all()


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(2), nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(3, stride=2, padding=1),
    nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.MaxPool2d((2, 3), stride=(1, 2), dilation=(2, 1)),
    nn.MaxPool2d(3, stride=3, padding=1, ceil_mode=True),
])
@pytest.mark.parametrize("side", [5, 6, 7])
def test_pool_windows_reproduce_the_layer(pool, side):
    """Max over the program's windows (padding left out) equals the layer on random planes, ceil_mode included."""
    from pixdisc.certification.exact.program import pool_windows

    shape = (2, side, side)
    windows, out_shape = pool_windows(pool, shape)
    planes = torch.randn((1,) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(side))
    flat = planes.reshape(2, -1).numpy()
    expect = pool(planes)[0]
    assert tuple(expect.shape) == out_shape
    got = np.array([[flat[ch, w[w >= 0]].max() for w in windows] for ch in range(2)])
    np.testing.assert_array_equal(got, expect.reshape(2, -1).numpy())


def test_inconsistent_inputs_are_rejected():
    net = _build(_mlp, 1, 4, seed=0)
    codes = _CODES["k2"]
    image = codes[np.zeros(16, np.int32)].T.reshape(1, 4, 4)
    with pytest.raises(ValueError):
        decide_milp(net, image, np.array([0, 0]), [np.array([0, 1])] * 2, codes, 0)  # repeated pixel
    with pytest.raises(ValueError):
        decide_milp(net, image, np.array([0]), [np.array([0, 2])], codes, 0)  # no code 2
    with pytest.raises(ValueError):
        decide_milp(net, image + 0.25, np.array([0]), [np.array([0, 1])], codes, 0)  # not made of codes


def test_single_member_set_is_decided_by_evaluation():
    name, net, codes, shape, base_codes, positions, candidates, y = _one_case()
    image = codes[base_codes].T.reshape(shape)
    out = decide_milp(net, image, positions[:2], [a[:1] for a in candidates[:2]], codes, y)
    assert out.status == "certified" and out.method == "evaluation"
    out = decide_milp(net, image, np.zeros(0, np.int64), [], codes, y)
    assert out.status == "certified"


# --------------------------------------------------------------------------- inside certify


def test_certify_exact_stage_decides_what_branching_leaves_open(monkeypatch):
    """With no root bound and no branching budget every image reaches the exact stage; it must agree with
    enumeration of S(x), and without the stage the same images stay unable."""
    import pixdisc
    from pixdisc.certification import engine
    from pixdisc.certification import Budget, certify
    from pixdisc.realize import pixel_options

    from pixdisc.bounds import Escalation

    def no_proof(self, boxes, labels, meter, first, top):
        return np.full(len(boxes), -np.inf), Escalation(torch.zeros(len(boxes), 3), [first] * len(boxes))

    monkeypatch.setattr(engine._Engine, "_margins", no_proof)
    side, n = 4, 12
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(n, 1, side, side, generator=gen)
    x[:, :, :2] = (x[:, :, :2] > 0.5).float()  # half the pixels fixed, half within eps of the threshold
    x[:, :, 2:] = 0.35 + 0.3 * x[:, :, 2:]
    book = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))
    net = _build(_mlp, 1, side, seed=5)
    with torch.no_grad():
        net[1].weight.mul_(6.0)  # sensitive to the ambiguous pixels: some images robust, some not
        y = net(torch.from_numpy(np.asarray(book.transform(x.numpy(), channel_axis=1)))).argmax(1)
    y[0] = (y[0] + 1) % 3  # one image misclassified at T(x)
    eps = 0.2
    # No S(x) search either: it would decide the failures before the exact stage.
    open_ = certify(net, book, x, y, eps, budget=Budget(nodes=0, search=None), executor="serial", progress=False)
    decided = certify(net, book, x, y, eps, budget=Budget(nodes=0, exact_seconds=20, search=None),
                      executor="serial", progress=False)
    assert (open_.outcome[1:] == "unable").all()
    options = pixel_options(x.numpy(), book, eps)
    pixels = side * side
    for i in range(n):
        lists = [options.codes[options.offsets[i * pixels + p]:options.offsets[i * pixels + p + 1]]
                 for p in range(pixels)]
        members = np.array(list(itertools.product(*lists)))
        images = torch.from_numpy(book.codes_[members][..., 0].reshape(-1, 1, side, side).copy())
        with torch.no_grad():
            robust = bool((net(images).argmax(1) == y[i]).all())
        assert decided.outcome[i] == ("certified" if robust else "failed"), i
        if not robust:
            assert decided.verified[i]
    assert set(decided.method[1:]) <= {"evaluation", "bounds", "lp-highs", "milp-highs", "counterexample"}
    # Not trivial: robust and non-robust images, some proved by the MILP itself.
    assert {"certified", "failed"} <= set(decided.outcome[1:]) and "milp-highs" in set(decided.method)
