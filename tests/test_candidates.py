"""Candidate sets against brute force: every code a perturbation can reach must be a candidate."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pixdisc
from pixdisc import _native
from pixdisc.candidates import candidate_counts, candidate_sets, log2_set_size

import reference as ref

METRICS = ("linf", "l1", "l2")


def reachable_by_sampling(pixel, codes, metric, eps, rng, samples=4000):
    """Codes that sampled perturbations of one pixel (l_inf box, clipped to [0,1]) discretize to."""
    channels = codes.shape[1]
    lo, hi = np.clip(pixel - eps, 0, 1), np.clip(pixel + eps, 0, 1)
    pts = [rng.uniform(lo, hi, size=(samples, channels)).astype(np.float32)]
    corners = np.array(np.meshgrid(*[[l, h] for l, h in zip(lo, hi)], indexing="ij")).reshape(channels, -1).T
    pts.append(corners.astype(np.float32))
    # Points on the box faces, where reachable cells are often only touched.
    face = rng.uniform(lo, hi, size=(samples, channels)).astype(np.float32)
    axis = rng.integers(0, channels, size=samples)
    face[np.arange(samples), axis] = np.where(rng.random(samples) < 0.5, lo[axis], hi[axis])
    pts.append(face)
    pts = np.clip(np.concatenate(pts), 0, 1).astype(np.float32)
    return set(ref.nearest(pts, codes, metric).tolist())


# --------------------------------------------------------------------------- exact rule vs every float32


def _float32_bits(v, up):
    """Bit pattern of the float32 nearest v from inside: the smallest >= v (up) or the largest <= v."""
    f = np.float32(v)
    if up and float(f) < v:
        f = np.nextafter(f, np.float32(2))
    if not up and float(f) > v:
        f = np.nextafter(f, np.float32(-1))
    return int(np.array(f, np.float32).view(np.uint32))


def floats_in(lo, hi, stride=1):
    """Every float32 in [lo, hi] (0 <= lo <= hi), ascending; every stride-th one when stride > 1."""
    a, b = _float32_bits(lo, True), _float32_bits(hi, False)
    return np.arange(a, b + 1, stride, dtype=np.uint32).view(np.float32)  # positive floats order as their bits


def in_ball(u, x, eps):
    """The distance test of pixdisc: fabs(float64(u) - float64(x)) <= eps."""
    return np.abs(np.asarray(u, np.float32).astype(np.float64) - np.float64(np.float32(x))) <= eps


def brute_force_codes(book, x, eps, dense_from=0.0, sparse_stride=4096):
    """The codes ``book.assign`` gives to the float32s u in [0, 1] with |u - x| <= eps.

    Every float32 of the ball is tried, except below ``dense_from`` (only for
    balls reaching down to 0, which hold ~10^9 floats), where every
    ``sparse_stride``-th one is.
    """
    x = np.float32(x)
    # A margin past the ball: float64 rounding of the test moves its ends by far less. (An absolute
    # 1e-6 would add ~10^9 floats near 0.)
    margin = 1e-9 * eps + 1e-6 * max(float(x), eps) + 2.0**-140
    lo, hi = max(0.0, float(x) - eps - margin), min(1.0, float(x) + eps + margin)
    u = floats_in(max(lo, dense_from), hi)
    if dense_from > lo:
        u = np.concatenate([floats_in(lo, dense_from, sparse_stride), u])
    u = u[in_ball(u, x, eps)]
    assert (u == x).any()
    return set(np.unique(np.asarray(book.assign(u))).tolist())


def assert_exact(book, x, eps, **brute):
    """The exact rule's set of x equals the brute-force set, nearest code first then ascending; returns it."""
    x = np.asarray(x, np.float32).reshape(-1)
    sets = candidate_sets(x, book, eps, rule="exact")
    got = []
    for p, v in enumerate(x):
        members = sets.of(p).tolist()
        expect = brute_force_codes(book, v, eps, **brute)
        assert set(members) == expect, (float(v), eps, book.codes_[:, 0].tolist(), members, sorted(expect))
        assert len(members) == len(set(members))
        assert members[0] == sets.nearest[p] == int(book.assign(np.array([v], np.float32))[0])
        assert members[1:] == sorted(members[1:])
        got.append(members)
    return got


def test_exact_rule_has_no_slack():
    """Codes {0, 253/255}: the pixels 152/255 (eps 0.1) and 203/255 (eps 0.3) come within 1e-6 of the
    midpoint, so the old 1e-6 widening made them ambiguous; no float32 input reaches the other code."""
    book = pixdisc.Codebook(np.array([0, 253], np.uint8))
    midpoint = float(book.codes_[1, 0]) / 2
    for pixel, eps in ((152, 0.1), (203, 0.3)):
        x = np.float32(pixel) / np.float32(255)
        assert 0 < (float(x) - eps) - midpoint < 1e-6  # only a slack could reach code 0
        assert assert_exact(book, x, eps) == [[1]]
        assert candidate_counts(np.array([pixel], np.uint8), book, eps, rule="exact").tolist() == [1]
        # The sound rule keeps its slack and still holds the unreachable code.
        assert candidate_counts(np.array([pixel], np.uint8), book, eps, rule="sound").tolist() == [2]


# Codes 0.5 -/+ 1/32 meet at the midpoint 0.5; every number below is exact in float32 and float64.
_LOW, _HIGH = 0.46875, 0.53125


@pytest.mark.parametrize("codes, below, above", [
    # (codes, members of x = 0.5 - 1/32 at eps 1/32 (x + eps = 0.5), members of x = 0.5 + 1/32 (x - eps = 0.5))
    ([_LOW, _HIGH], [[0]], [[1, 0]]),  # the tie at 0.5 goes to index 0, the lower value
    ([_HIGH, _LOW], [[1, 0]], [[0]]),  # unsorted: index 0 is the higher value and wins the tie
    ([_HIGH, _LOW, _HIGH, _LOW], [[1, 0]], [[0]]),  # duplicated values: only the lowest index of each
    ([_LOW, _LOW, 1.0, _HIGH, 0.0, _HIGH], [[0]], [[3, 0]]),
])
def test_exact_rule_at_midpoint_ties(codes, below, above):
    book = pixdisc.Codebook(np.array(codes, np.float32))
    assert assert_exact(book, 0.5 - 1 / 32, 1 / 32) == below
    assert assert_exact(book, 0.5 + 1 / 32, 1 / 32) == above
    # The tie point itself, as a pixel: at eps 0 only the tie's winner.
    assert assert_exact(book, 0.5, 0.0) == [[int(book.assign(np.array([0.5], np.float32))[0])]]
    assert len(assert_exact(book, 0.5, 1e-3)[0]) == 2


def test_exact_rule_at_8_bit_ties():
    """8-bit codes and pixels: x +/- eps lands on (or within float rounding of) a midpoint of two codes."""
    for codes in ([100, 102], [102, 100], [102, 100, 102, 104], [104, 100, 102]):
        book = pixdisc.Codebook(np.array(codes, np.uint8))
        pixels = np.arange(98, 107, dtype=np.uint8).astype(np.float32) / np.float32(255)
        for eps in (0.5 / 255, 1 / 255, 2 / 255, np.float32(1) / np.float32(255)):
            assert_exact(book, pixels, float(eps))


def test_exact_rule_eps_zero_is_the_nearest_code():
    rng = np.random.default_rng(10)
    for _ in range(10):
        codes = rng.integers(0, 256, size=int(rng.integers(1, 7))).astype(np.uint8)
        book = pixdisc.Codebook(codes)
        x = np.concatenate([rng.random(50, dtype=np.float32), np.arange(256) / np.float32(255), [0.0, 1.0]])
        x = x.astype(np.float32)
        sets = candidate_sets(x, book, 0.0, rule="exact")
        assert (np.diff(sets.offsets) == 1).all()
        np.testing.assert_array_equal(sets.members, book.assign(x))
    # Brute force agrees (the ball of eps 0 is x alone).
    assert_exact(pixdisc.Codebook(np.array([_HIGH, _LOW], np.float32)), [0.5, 0.0, 1.0, _LOW], 0.0)


def test_exact_rule_at_the_ends_of_the_unit_interval():
    rng = np.random.default_rng(11)
    for eps in (0.05, 0.1, 0.3):
        codes = rng.random(int(rng.integers(2, 7)), dtype=np.float32)
        codes[0] = np.float32(1) - np.float32(eps)  # a code right at the ball's lower end
        assert_exact(pixdisc.Codebook(np.concatenate([codes, [1.0]]).astype(np.float32)), [1.0], eps)
    # Pixel 0: subnormal codes and eps, the tie of codes 0 and 200 ulps at 100 ulps = eps.
    tiny = np.float32(200 * 2.0**-149)
    for codes, expect in (([0.0, tiny, 1.0], [[0]]), ([tiny, 0.0, 1.0], [[1, 0]])):
        book = pixdisc.Codebook(np.array(codes, np.float32))
        assert assert_exact(book, [0.0], 100 * 2.0**-149) == expect
        assert assert_exact(book, [0.0], 0.0) == [[expect[0][0]]]
    # Pixel 0 at eps 0.01: x + eps is (close to) the midpoint of 0.005 and 0.015.
    for codes in ([0.005, 0.015, 0.5], [0.015, 0.005, 0.5]):
        assert_exact(pixdisc.Codebook(np.array(codes, np.float32)), [0.0], 0.01, dense_from=2.0**-8)


def test_exact_rule_random_codebooks():
    """Random codebooks of 2..6 codes (float32, and 8-bit with duplicates) against every float32 of the ball."""
    rng = np.random.default_rng(12)
    for eps, pixels in ((0.05, 4), (0.1, 2), (0.3, 1)):
        for trial in range(3):
            k = int(rng.integers(2, 7))
            if trial == 0:
                codes = rng.random(k, dtype=np.float32)
            else:
                codes = (rng.integers(0, 256, size=k) / np.float32(255)).astype(np.float32)
            # Pixels whose ball stays above 0.25, so it holds a few million float32s at most.
            low = 0.25 + eps
            if trial == 2:
                x = rng.integers(int(np.ceil(low * 255)), 256, size=pixels) / np.float32(255)
            else:
                x = rng.uniform(low, 1.0, size=pixels)
            assert_exact(pixdisc.Codebook(codes), x.astype(np.float32), eps)


def test_exact_rule_tightens_rounded_ball_ends():
    """Mutation check: float32(x -/+ eps) can lie outside the ball, on a float that reaches another code.

    A rule that took those rounded ends without stepping back inside would
    add that code; here the exact set has one code only.
    """
    eps = 1 / 32 - 2.0**-27
    for x, codes in ((_HIGH, [_LOW, _HIGH]), (_LOW, [_HIGH, _LOW])):
        book = pixdisc.Codebook(np.array(codes, np.float32))
        rounded = np.float32(x - eps) if x > 0.5 else np.float32(x + eps)
        assert rounded == np.float32(0.5) and not in_ball(rounded, x, eps)
        inward = np.nextafter(rounded, np.float32(x))
        assert in_ball(inward, x, eps)
        wrong = int(book.assign(np.array([rounded], np.float32))[0])
        assert wrong == 0 != int(book.assign(np.array([inward], np.float32))[0])
        assert assert_exact(book, x, eps) == [[1]]


def test_exact_rule_uses_the_float64_distance_test():
    """The float64 test |u - x| <= eps can accept a float32 that exceeds eps by less than half an ulp of
    eps (here 0.5 + 2^-24, the midpoint of the codes); the rule follows that test, erring on the sound side."""
    from fractions import Fraction

    x = np.float32(2.0**-54 + 2.0**-60)
    eps = 0.5 + 2.0**-24 - 2.0**-53
    u = np.float32(0.5 + 2.0**-24)
    assert in_ball(u, x, eps)  # float64 rounding accepts it ...
    assert Fraction(float(u)) - Fraction(float(x)) > Fraction(eps)  # ... exact arithmetic does not
    book = pixdisc.Codebook(np.array([0.5 + 2.0**-23, 0.5], np.float32))
    assert int(book.assign(np.array([u], np.float32))[0]) == 0  # the tie goes to index 0
    assert candidate_sets(np.array([x]), book, eps, rule="exact").of(0).tolist() == [1, 0]


def test_exact_rule_follows_the_float64_test_past_the_rounded_end():
    """x = 0.5, eps = 0.5 - 2^-40: float32(x - eps) = 2^-40, but the float64 test also accepts the 512
    float32s just below it (|u - x| rounds to eps). 2^-40 - 2^-56 reaches code 1, 2^-40 does not;
    a rule that only stepped inwards from the rounded end would miss code 1."""
    x, eps = np.float32(0.5), 0.5 - 2.0**-40
    rounded, beyond = np.float32(float(x) - eps), np.float32(2.0**-40 - 2.0**-56)
    assert float(rounded) == 2.0**-40 and float(beyond) == 2.0**-40 - 2.0**-56
    assert in_ball(beyond, x, eps) and not in_ball(np.float32(2.0**-40 - 2.0**-54), x, eps)
    # Codes 0 and 1 meet at 2^-40 - 2^-57; code 2 (value 0) wins only below 2^-42, outside the ball.
    book = pixdisc.Codebook(np.array([2.0**-39 - 2.0**-56 - 2.0**-41, 2.0**-41, 0.0, 1.0], np.float32))
    assert float(book.codes_[0, 0]) + 2.0**-41 == 2 * (2.0**-40 - 2.0**-57)
    assert book.assign(np.array([beyond, rounded, x, 2.0**-42], np.float32)).tolist() == [1, 0, 0, 1]
    assert candidate_sets(np.array([x]), book, eps, rule="exact").of(0).tolist() == [0, 1, 3]
    # Brute force over the bottom of the ball (all of its ~10^9 floats would take too long).
    u = floats_in(2.0**-40 - 2.0**-50, 2.0**-40 + 2.0**-50)
    u = u[in_ball(u, x, eps)]
    assert float(u.min()) < float(rounded) and 1 in book.assign(u).tolist()


def test_exact_rule_l2_falls_back_where_squares_underflow():
    """l2 squares float distances; below 2^-63 the squares underflow and tie, and the nearest code is no
    longer monotone in the input. Code 1 (1e-24) is reached from 2^-60 though both ball ends give code 0."""
    book = pixdisc.Codebook(np.array([0.0, 1e-24], np.float32), "l2")
    x, eps = np.float32(2.0**-51), 2.0**-51
    witness = np.array([2.0**-60, 0.0, 2.0**-50, 1e-24], np.float32)
    assert in_ball(witness, x, eps).all()
    assert book.assign(witness).tolist() == [1, 0, 0, 0]  # reached from 2^-60; not at its own value
    assert 1 in candidate_sets(np.array([x]), book, eps, rule="exact").of(0).tolist()
    # Codes 2^-60 apart or more keep the exact rule (here equal to brute force on a tiny ball).
    spaced = pixdisc.Codebook(np.array([0.25, 0.25 + 2.0**-20], np.float32), "l2")
    assert_exact(spaced, [0.25 + 2.0**-21], 2.0**-22)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [1, 3])
def test_sound_rule_contains_every_sampled_code(metric, channels):
    rng = np.random.default_rng(1)
    for trial in range(6):
        codes = (rng.integers(0, 6, size=(12, channels)) / np.float32(5)).astype(np.float32)  # ties on the grid
        x = (rng.integers(0, 11, size=(25, channels)) / np.float32(10)).astype(np.float32)
        eps = float(rng.choice([0.0, 0.05, 0.1, 0.2]))
        book = pixdisc.Codebook(codes, metric)
        sets = candidate_sets(x, book, eps, rule="sound", channel_axis=-1 if channels > 1 else None)
        for p in range(len(x)):
            reached = reachable_by_sampling(x[p], codes, metric, eps, rng, samples=1500)
            assert reached <= set(sets.of(p).tolist()), (metric, trial, p, eps)


def test_eps_zero_is_the_nearest_code_alone_for_the_exact_rule():
    codes = np.array([[0.0], [0.5], [1.0]], np.float32)
    x = np.array([0.1, 0.25, 0.75, 0.9], np.float32)  # 0.25 and 0.75 are equidistant from two codes
    counts = candidate_counts(x, pixdisc.Codebook(codes), 0.0, rule="exact")
    assert counts.tolist() == [1, 1, 1, 1]  # at a tie point only the lower index is reachable
    sound = candidate_counts(x, pixdisc.Codebook(codes), 0.0, rule="sound")
    assert sound.tolist() == [1, 2, 2, 1]  # "<=" keeps the tied code: the paper's "<" would drop it


def test_ties_at_eps_boundary_are_kept():
    """x=0.3, eps=0.1: the ball's top float32 is float32(0.4), exactly the midpoint of codes 0.3 and 0.5,
    where the lower index wins. The exact rule keeps 0.5 only when it has the lower index."""
    x = np.array([0.3], np.float32)
    top = np.float32(0.4)
    assert in_ball(top, x[0], 0.1) and not in_ball(np.nextafter(top, np.float32(1)), x[0], 0.1)
    assert float(top) == (float(np.float32(0.3)) + 0.5) / 2
    for codes, exact in (([0.3, 0.5], [[0]]), ([0.5, 0.3], [[1, 0]])):
        book = pixdisc.Codebook(np.array(codes, np.float32))
        assert assert_exact(book, x, 0.1) == exact
        assert candidate_counts(x, book, 0.1, rule="sound").tolist() == [2]


def test_log2_set_size_per_image():
    codes = np.array([[0.0], [0.5], [1.0]], np.float32)
    x = np.zeros((3, 2, 2), np.float32)
    x[1, 0, 0] = 0.25
    x[2] = 0.25
    sizes = log2_set_size(x, pixdisc.Codebook(codes), 0.01)
    np.testing.assert_allclose(sizes, [0.0, 1.0, 4.0])
    big = np.full((2, 10_000), 0.25, np.float32)  # 2^10000 images: only the log is representable
    np.testing.assert_allclose(log2_set_size(big, pixdisc.Codebook(codes), 0.01), [10_000, 10_000])


def test_candidate_rules_and_errors():
    book3 = pixdisc.Codebook(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="one-channel"):
        candidate_counts(np.zeros((2, 3), np.float32), book3, 0.1, rule="exact")
    with pytest.raises(ValueError, match="eps"):
        candidate_counts(np.zeros((2, 3), np.float32), book3, -0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        candidate_counts(np.full((2, 3), 2.0, np.float32), book3, 0.1)
    assert candidate_counts(np.zeros((0, 3), np.float32), book3, 0.1).shape == (0,)


def test_l1_and_l2_use_the_metric_radius_of_an_linf_move():
    """Moving every channel by eps moves an RGB pixel 3*eps in l1: the sound rule must allow for it."""
    codes = np.array([[0.5, 0.5, 0.5], [0.58, 0.58, 0.58]], np.float32)
    x = np.array([[0.5, 0.5, 0.5]], np.float32)
    assert candidate_counts(x, pixdisc.Codebook(codes, "l1"), 0.05).tolist() == [2]
    assert candidate_counts(x, pixdisc.Codebook(codes, "l2"), 0.05).tolist() == [2]
    assert candidate_counts(x, pixdisc.Codebook(codes, "linf"), 0.03).tolist() == [1]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), metric=st.sampled_from(METRICS), channels=st.sampled_from([1, 3]),
       eps=st.sampled_from([0.0, 1 / 255, 0.02, 0.1]))
def test_sound_rule_property(seed, metric, channels, eps):
    rng = np.random.default_rng(seed)
    codes = rng.random((int(rng.integers(1, 10)), channels), dtype=np.float32)
    x = rng.random((5, channels), dtype=np.float32)
    book = pixdisc.Codebook(codes, metric)
    sets = candidate_sets(x, book, eps, rule="sound", channel_axis=-1 if channels > 1 else None)
    for p in range(len(x)):
        assert reachable_by_sampling(x[p], codes, metric, eps, rng, samples=300) <= set(sets.of(p).tolist())


def test_enumeration_matches_itertools_product():
    import itertools

    codes = np.array([[0.0], [0.4], [0.6], [1.0]], np.float32)
    image = np.array([0.5, 0.0, 0.45, 1.0, 0.55], np.float32)  # 3 ambiguous pixels at eps=0.1
    book = pixdisc.Codebook(codes)
    sets = candidate_sets(image, book, 0.1)
    base = book.transform(image)
    ambiguous = np.flatnonzero(np.diff(sets.offsets) > 1)
    offsets = np.concatenate([[0], np.cumsum(np.diff(sets.offsets)[ambiguous])]).astype(np.int64)
    members = np.concatenate([sets.of(p) for p in ambiguous]).astype(np.int32)
    total = int(np.prod(np.diff(offsets)))
    out = _native.enumerate_candidates(base, ambiguous.astype(np.int64), 1, offsets, members, codes, 0, total)
    choices = [codes[sets.of(p), 0] for p in ambiguous]
    expect = []
    for combo in itertools.product(*reversed(choices)):  # digit 0 varies fastest
        z = base.copy()
        z[ambiguous] = list(reversed(combo))
        expect.append(z)
    np.testing.assert_array_equal(out, np.array(expect))
    np.testing.assert_array_equal(out[0], base)  # rank 0 is T(x)
    with pytest.raises(ValueError, match="exceeds"):
        _native.enumerate_candidates(base, ambiguous.astype(np.int64), 1, offsets, members, codes, 1, total)


@pytest.mark.parametrize("channels", [1, 3])
def test_box_hull_contains_every_candidate(channels):
    from pixdisc.candidates import box_hull

    rng = np.random.default_rng(3)
    codes = rng.random((7, channels), dtype=np.float32)
    book = pixdisc.Codebook(codes)
    x = rng.random((4, channels, 3, 5), dtype=np.float32)
    lower, upper = box_hull(x, book, 0.1, channel_axis=1)
    assert lower.shape == x.shape and (lower <= upper).all()
    sets = candidate_sets(x, book, 0.1, channel_axis=1)
    values = np.moveaxis(x, 1, -1).reshape(-1, channels)
    lo = np.moveaxis(lower, 1, -1).reshape(-1, channels)
    hi = np.moveaxis(upper, 1, -1).reshape(-1, channels)
    for p in range(len(values)):
        members = codes[sets.of(p)]
        np.testing.assert_array_equal(lo[p], members.min(0))
        np.testing.assert_array_equal(hi[p], members.max(0))
