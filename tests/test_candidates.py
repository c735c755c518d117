"""Candidate sets against brute force: every code a perturbation can reach must be a candidate."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pixdisc
from pixdisc import _backend
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


def test_one_channel_exact_set_is_the_reachable_set():
    """1-D: the exact rule equals the set of nearest codes over a dense float grid of the interval."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        k = int(rng.integers(2, 9))
        codes = (rng.integers(0, 256, size=(k, 1)) / np.float32(255)).astype(np.float32)  # duplicates possible
        x = (rng.integers(0, 256, size=(30,)) / np.float32(255)).astype(np.float32)
        eps = float(rng.choice([0.0, 1 / 255, 0.05, 0.1, 0.3]))
        book = pixdisc.Codebook(codes)
        sets = candidate_sets(x, book, eps, rule="exact")
        for p, v in enumerate(x):
            lo, hi = max(0.0, float(v) - eps), min(1.0, float(v) + eps)
            grid = np.unique(np.concatenate([np.linspace(lo, hi, 20001), [lo, hi, v]]).astype(np.float32))
            grid = grid[(grid >= lo - 1e-12) & (grid <= hi + 1e-12)]
            reached = set(ref.nearest(grid[:, None], codes, "linf").tolist())
            got = set(sets.of(p).tolist())
            assert reached <= got, (trial, p)  # sound
            assert got <= reached | _boundary_codes(codes, lo, hi), (trial, p)  # exact up to the 1e-6 widening
            assert sets.of(p)[0] == ref.nearest(np.array([[v]]), codes, "linf")[0]


def _boundary_codes(codes, lo, hi):
    """Codes whose Voronoi interval only touches [lo, hi] within 1e-6 (the rule's float slack)."""
    out = set()
    for widen in (1e-6, -1e-6):
        pts = np.array([[lo - widen], [hi + widen]], np.float32).clip(0, 1)
        out |= set(ref.nearest(pts, codes, "linf").tolist())
    return out


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
    assert counts.tolist() == [1, 2, 2, 1]  # a tie point sits on both Voronoi intervals (sound)
    sound = candidate_counts(x, pixdisc.Codebook(codes), 0.0, rule="sound")
    assert sound.tolist() == [1, 2, 2, 1]  # "<=" keeps the tied code: the paper's "<" would drop it


def test_ties_at_eps_boundary_are_kept():
    """x=0.3, eps=0.1 reaches 0.4, exactly the midpoint of codes 0.3 and 0.5."""
    codes = np.array([[0.3], [0.5]], np.float32)
    for rule in ("exact", "sound"):
        counts = candidate_counts(np.array([0.3], np.float32), pixdisc.Codebook(codes), 0.1, rule=rule)
        assert counts.tolist() == [2]


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
    out = _backend._core.enumerate_candidates(base, ambiguous.astype(np.int64), 1, offsets, members, codes, 0, total)
    choices = [codes[sets.of(p), 0] for p in ambiguous]
    expect = []
    for combo in itertools.product(*reversed(choices)):  # digit 0 varies fastest
        z = base.copy()
        z[ambiguous] = list(reversed(combo))
        expect.append(z)
    np.testing.assert_array_equal(out, np.array(expect))
    np.testing.assert_array_equal(out[0], base)  # rank 0 is T(x)
    with pytest.raises(ValueError, match="exceeds"):
        _backend._core.enumerate_candidates(base, ambiguous.astype(np.int64), 1, offsets, members, codes, 1, total)


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
