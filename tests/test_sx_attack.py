"""The S(x) attack and its realization of members of S(x) against brute force on tiny nets and images."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixdisc  # noqa: E402
from pixdisc.discretize import Discretize  # noqa: E402
from pixdisc.realize import ball_ends, pixel_options, within_eps  # noqa: E402
from pixdisc.sx_attack import SearchBudget, sx_attack  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _all_floats_in_ball(value: np.float32, eps: float) -> np.ndarray:
    """Every float32 in [0, 1] within eps of value (brute force over bit patterns)."""
    lo = np.float32(max(0.0, float(value) - eps - 1e-6))
    hi = np.float32(min(1.0, float(value) + eps + 1e-6))
    bits = np.arange(lo.view(np.uint32), hi.view(np.uint32) + 1, dtype=np.uint32)
    floats = bits.view(np.float32)
    return floats[within_eps(floats, np.full_like(floats, value), eps)]


def _reachable(codebook, value, eps):
    floats = _all_floats_in_ball(np.float32(value), eps)
    return set(np.asarray(codebook.assign(floats[:, None], channel_axis=-1)).reshape(-1).tolist())


def _members(options, image, pixels):
    """Every member of image's options as per-pixel code indices."""
    lists = [options.codes[options.offsets[image * pixels + p]:options.offsets[image * pixels + p + 1]]
             for p in range(pixels)]
    return np.array(list(itertools.product(*lists)), dtype=np.int64)


# ------------------------------------------------------------------------------- realization


@pytest.mark.parametrize("codes, value, eps", [
    ([0.0, 253 / 255], 152 / 255, 0.1),  # distance to the midpoint 0.10000002: one code only
    ([0.0, 253 / 255], 203 / 255, 0.3),
    ([0.0, 0.5, 1.0], 0.35, 0.1),  # x + eps lands on the midpoint 0.25..0.75? no: 0.45 < 0.75
    ([0.5, 0.0, 1.0], 0.35, 0.1),  # unsorted codes
    ([0.2, 0.6], 0.5, 0.1),  # x - eps = 0.4 is exactly the midpoint: the tie goes to index 0
    ([0.6, 0.2], 0.5, 0.1),  # same tie, the lower index is now the higher value
    ([0.2, 0.2, 0.6], 0.3, 0.1),  # duplicated code value: only its lowest index is reachable
    ([0.0, 1.0], 0.9, 0.4),  # x - eps = 0.5 exactly: the tie goes to code 0
    ([0.0, 1.0], 0.5, 0.0),
])
def test_one_channel_options_are_exactly_the_reachable_codes(codes, value, eps):
    book = pixdisc.Codebook(np.array(codes, np.float32)[:, None])
    x = np.full((1, 1, 1, 1), np.float32(value), np.float32)
    options = pixel_options(x, book, eps)
    assert set(options.codes.tolist()) == _reachable(book, x.reshape(-1)[0], eps)
    assert within_eps(options.values[:, 0], np.full(len(options.values), x.reshape(-1)[0]), eps).all()
    assert np.array_equal(np.asarray(book.assign(options.values, channel_axis=-1)).reshape(-1), options.codes)


def test_one_channel_options_at_the_ends_of_the_range():
    # Near 0 there are too many floats for brute force; the answers are known.
    book = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))
    x = np.array([0.0, 1.0], np.float32).reshape(1, 1, 1, 2)
    options = pixel_options(x, book, 0.5)
    assert options.codes[options.offsets[0]:options.offsets[1]].tolist() == [0]  # 0.5 is a tie: code 0
    assert options.codes[options.offsets[1]:options.offsets[2]].tolist() == [1, 0]


def test_one_channel_options_on_8bit_pixels_match_brute_force():
    rng = np.random.default_rng(0)
    for k in (2, 4):
        codes = rng.integers(0, 256, size=(k, 1)).astype(np.float32) / np.float32(255)
        book = pixdisc.Codebook(codes)
        for eps in (0.05, 0.1):
            values = np.array([127, 128, 152, 203, 238], np.float32) / np.float32(255)
            x = values.reshape(1, 1, 1, -1)
            options = pixel_options(x, book, eps)
            for p, value in enumerate(values):
                got = set(options.codes[options.offsets[p]:options.offsets[p + 1]].tolist())
                assert got == _reachable(book, value, eps), (codes.ravel() * 255, value * 255, eps)


def test_ball_ends_are_the_extreme_floats_in_the_ball():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.random(200, dtype=np.float32), np.array([0, 1, 0.5, 0.1, 0.3], np.float32)])
    for eps in (0.0, 0.1, 0.3, 1 / 3):
        lower, upper = ball_ends(x, eps)
        assert within_eps(lower, x, eps).all() and within_eps(upper, x, eps).all()
        below = np.nextafter(lower, np.float32(-1))
        above = np.nextafter(upper, np.float32(2))
        assert ((lower == 0) | ~within_eps(below, x, eps)).all()
        assert ((upper == 1) | ~within_eps(above, x, eps)).all()


def test_three_channel_options_are_realized():
    rng = np.random.default_rng(2)
    codes = rng.random((12, 3), dtype=np.float32)
    for metric in ("linf", "l1", "l2"):
        book = pixdisc.Codebook(codes, metric=metric)
        x = rng.random((2, 3, 4, 4), dtype=np.float32)
        options = pixel_options(x, book, 0.08)
        owner = np.repeat(np.arange(len(options.counts)), options.counts)
        pixels = x.transpose(0, 2, 3, 1).reshape(-1, 3)
        assert within_eps(options.values, pixels[owner], 0.08).all()
        assigned = np.asarray(book.assign(options.values, channel_axis=-1)).reshape(-1)
        assert np.array_equal(assigned, options.codes)
        # Dense sampling of the ball reaches few codes that the probes missed.
        samples = np.clip(pixels[:, None, :] + rng.uniform(-0.08, 0.08, (len(pixels), 400, 3)), 0, 1)
        samples = samples.astype(np.float32)
        ok = within_eps(samples, np.broadcast_to(pixels[:, None, :], samples.shape), 0.08).all(axis=2)
        reached = np.asarray(book.assign(samples.reshape(-1, 3), channel_axis=-1)).reshape(len(pixels), -1)
        missed = 0
        for p in range(len(pixels)):
            have = set(options.codes[options.offsets[p]:options.offsets[p + 1]].tolist())
            missed += len(set(reached[p][ok[p]].tolist()) - have)
        assert missed <= 0.1 * len(options.codes), (metric, missed)  # tiny cells: random probes may miss a few


# ----------------------------------------------------------------------------------- attack


def _tiny_problem(channels, codes, eps, seed, n=24, side=4, classes=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, side, side, generator=gen)
    book = pixdisc.Codebook(np.asarray(codes, np.float32))
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * side * side, 24), torch.nn.ReLU(),
                              torch.nn.Linear(24, classes))
    model = torch.nn.Sequential(Discretize(book), net).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y, book, net, model


def _brute_force(x, y, book, net, eps, cap=2 ** 14):
    """Per sample: does a member of S(x) (reachable options) fool net? None when S(x) is too big."""
    options = pixel_options(x.numpy(), book, eps)
    pixels = options.pixels
    answers = []
    for b in range(x.shape[0]):
        counts = options.counts[b * pixels:(b + 1) * pixels]
        if np.prod(counts.astype(float)) > cap:
            answers.append(None)
            continue
        members = _members(options, b, pixels)
        images = torch.from_numpy(book.codes_[members].transpose(0, 2, 1).reshape(-1, *x.shape[1:]).copy())
        with torch.no_grad():
            answers.append(bool((net(images).argmax(1) != y[b]).any()))
    return answers


@pytest.mark.parametrize("channels, codes, eps", [
    (1, [[0.0], [1.0]], 0.3),
    (1, [[0.0], [0.5], [1.0]], 0.12),
    (1, [[0.2], [0.45], [0.7], [0.9]], 0.08),
    (3, [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0.6, 1], [0.5, 0.5, 0.5]], 0.15),
])
def test_exact_when_enumerating(channels, codes, eps):
    x, y, book, net, model = _tiny_problem(channels, codes, eps, seed=3)
    truth = _brute_force(x, y, book, net, eps, cap=2 ** 12)
    result = sx_attack(model, x, y, eps, seed=0, budget=SearchBudget(enumerate_log2=12))
    decided = [i for i, t in enumerate(truth) if t is not None]
    assert decided, "the test needs samples small enough to enumerate"
    assert [bool(result.success[i]) for i in decided] == [truth[i] for i in decided]


@pytest.mark.parametrize("channels, codes, eps", [
    (1, [[0.0], [1.0]], 0.3),
    (1, [[0.0], [0.5], [1.0]], 0.12),
    (3, [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0.6, 1], [0.5, 0.5, 0.5]], 0.15),
])
def test_search_finds_what_brute_force_finds(channels, codes, eps):
    x, y, book, net, model = _tiny_problem(channels, codes, eps, seed=4, n=40)
    truth = _brute_force(x, y, book, net, eps)
    result = sx_attack(model, x, y, eps, seed=0, budget=SearchBudget(enumerate_log2=0))
    found = result.success.numpy()
    fooled = [i for i, t in enumerate(truth) if t]
    robust = [i for i, t in enumerate(truth) if t is False]
    assert fooled and robust
    assert not found[robust].any()  # never a success brute force rules out
    assert found[fooled].mean() >= 0.9


def test_one_channel_codes_on_colour_images_search_every_value():
    # A one-channel codebook discretizes every value of a colour image alone (as Codebook.transform does),
    # so S(x) is a product over the C*H*W values.
    x, y, book, net, model = _tiny_problem(3, [[0.0], [0.5], [1.0]], 0.12, seed=3, side=2)
    truth = _brute_force(x.reshape(len(x), 1, -1), y, book, net, 0.12, cap=2 ** 12)
    result = sx_attack(model, x, y, 0.12, seed=0, budget=SearchBudget(enumerate_log2=12))
    decided = [i for i, t in enumerate(truth) if t is not None]
    assert decided and any(truth[i] for i in decided)
    assert [bool(result.success[i]) for i in decided] == [truth[i] for i in decided]
    assert within_eps(result.x_adv.numpy(), x.numpy(), 0.12).all()


def test_successes_are_real_inputs_within_eps():
    x, y, book, net, model = _tiny_problem(1, [[0.0], [0.5], [1.0]], 0.12, seed=5, n=40)
    result = sx_attack(model, x, y, 0.12, seed=0)
    assert result.success.any()
    assert within_eps(result.x_adv.numpy(), x.numpy(), 0.12).all()
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    with torch.no_grad():
        again = model(result.x_adv).argmax(1)
    assert torch.equal(again != y, result.success)


def test_ties_on_8bit_boundaries_realize_the_intended_code():
    # Codes {0, 253}/255: at eps 0.3 the pixel 203/255 cannot reach 0, while 202/255 can (x - eps < midpoint).
    book = pixdisc.Codebook(np.array([[0.0], [253 / 255]], np.float32))
    x = torch.full((2, 1, 2, 2), 203 / 255)
    x[1, 0, 0, 0] = 202 / 255
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():  # class 1 unless the first pixel is dark
        net[1].weight.copy_(torch.tensor([[-2.0, 0, 0, 0], [0.0, 0, 0, 0]]))
        net[1].bias.copy_(torch.tensor([1.0, 0.0]))
    model = torch.nn.Sequential(Discretize(book), net).eval()
    y = torch.tensor([1, 1])
    result = sx_attack(model, x, y, 0.3, seed=0)
    assert result.success.tolist() == [False, True]
    assert int(book.assign(result.x_adv[1:2].numpy(), channel_axis=1).reshape(-1)[0]) == 0


def test_planted_weakness_is_found_by_exact_local_search():
    """Only one member of S(x) is misclassified, and the gradient points away from it."""
    side = 5
    pixels = side * side
    book = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))
    gen = torch.Generator().manual_seed(0)
    # Every pixel ambiguous at eps 0.3: values within 0.3 of the midpoint 0.5.
    x = (0.35 + 0.3 * torch.rand(1, 1, side, side, generator=gen))
    base = (x.reshape(-1) > 0.5).float()  # T(x) as values
    planted = base.clone()
    planted[7] = 1 - planted[7]
    weights = torch.where(planted > 0.5, 1.0, -1.0)
    decoy = torch.where(base > 0.5, -1.0, 1.0)  # rewards flipping every pixel...
    decoy[7] = 0.0  # ...except the planted one
    first = torch.nn.Linear(pixels, 2)
    second = torch.nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.copy_(torch.stack([weights, decoy]))
        first.bias.copy_(torch.tensor([-(float(planted.sum()) - 0.5), float((decoy < 0).sum())]))
        # logit 0 (the label) = 1; logit 1 = 10 * match + 0.03 * decoy score (< 1 unless matched).
        second.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.03]]))
        second.bias.copy_(torch.tensor([1.0, 0.0]))
    net = torch.nn.Sequential(torch.nn.Flatten(), first, torch.nn.ReLU(), second)
    model = torch.nn.Sequential(Discretize(book), net).eval()
    y = torch.tensor([0])
    assert int(model(x).argmax(1)) == 0
    result = sx_attack(model, x, y, 0.3, seed=0)
    assert bool(result.success[0])
    z = torch.from_numpy(np.asarray(book.transform(result.x_adv.numpy(), channel_axis=1))).reshape(-1)
    assert torch.equal(z, planted)


def test_deterministic_for_a_seed():
    x, y, book, net, model = _tiny_problem(1, [[0.0], [0.5], [1.0]], 0.15, seed=6, n=16, side=6)
    first = sx_attack(model, x, y, 0.15, seed=3, budget=SearchBudget(enumerate_log2=0))
    second = sx_attack(model, x, y, 0.15, seed=3, budget=SearchBudget(enumerate_log2=0))
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.success, second.success)


def test_bad_inputs():
    x, y, book, net, model = _tiny_problem(1, [[0.0], [1.0]], 0.3, seed=7, n=4)
    with pytest.raises(ValueError, match="Discretize"):
        sx_attack(net, x, y, 0.3)
    with pytest.raises(ValueError, match="eps"):
        sx_attack(model, x, y, -0.1)
    with pytest.raises(ValueError, match="NCHW"):
        sx_attack(model, x.reshape(4, -1), y, 0.3)
    empty = sx_attack(model, x[:0], y[:0], 0.3)
    assert len(empty) == 0
