"""The tight candidate rule for several channels: sound against dense brute force, tighter than the triangle rule."""

import itertools

import numpy as np
import pytest

import pixdisc
from pixdisc import _native
from pixdisc.candidates import candidate_counts, candidate_sets, resolve_rule
from pixdisc.realize import ball_ends

METRICS = ("linf", "l1", "l2")
TAU = 1e-5  # kTightSlack


def box_points(pixel, eps, per_axis, rng, random=4000):
    """A grid over the float32 box of the ball (its ends included) plus random points of it and of its faces."""
    lo, hi = ball_ends(pixel, eps)
    axes = [np.unique(np.concatenate([np.linspace(l, h, per_axis, dtype=np.float64).astype(np.float32), [l, h]]))
            for l, h in zip(lo, hi)]
    grid = np.array(list(itertools.product(*axes)), np.float32)
    inside = rng.uniform(lo, hi, size=(random, len(pixel))).astype(np.float32)
    face = inside.copy()
    axis = rng.integers(0, len(pixel), size=random)
    face[np.arange(random), axis] = np.where(rng.random(random) < 0.5, lo[axis], hi[axis])
    points = np.clip(np.concatenate([grid, inside, face]), lo, hi).astype(np.float32)
    return points


def reached(book, points):
    return set(np.asarray(book.assign(points, channel_axis=-1)).reshape(-1).tolist())


def codebooks(channels, rng):
    """Random codebooks, and codebooks on a coarse grid (ties between codes and at the box faces)."""
    yield rng.random((24, channels), dtype=np.float32)
    yield (rng.integers(0, 11, size=(16, channels)) / np.float32(10)).astype(np.float32)
    yield (rng.integers(0, 256, size=(40, channels)) / np.float32(255)).astype(np.float32)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [2, 3])
def test_tight_rule_contains_every_code_a_dense_grid_reaches(metric, channels):
    rng = np.random.default_rng(11 + channels)
    per_axis = 161 if channels == 2 else 31
    for codes in codebooks(channels, rng):
        book = pixdisc.Codebook(codes, metric)
        grid_pixels = (rng.integers(0, 11, size=(6, channels)) / np.float32(10)).astype(np.float32)
        x = np.concatenate([rng.random((6, channels), dtype=np.float32), grid_pixels])
        for eps in (2 / 255, 0.05, 0.1):
            sets = candidate_sets(x, book, eps, rule="tight", channel_axis=-1)
            sound = candidate_sets(x, book, eps, rule="sound", channel_axis=-1)
            for p in range(len(x)):
                got = set(sets.of(p).tolist())
                assert reached(book, box_points(x[p], eps, per_axis, rng)) <= got, (metric, codes, x[p], eps)
                assert got <= set(sound.of(p).tolist())
                members = sets.of(p)
                assert members[0] == sets.nearest[p] and list(members[1:]) == sorted(members[1:])


def pairwise_reference(pixel, codes, metric, eps, sound):
    """NumPy reference of the native stage: drop j when one code i beats it by more than TAU on the whole box,
    the minimum over the box found by brute force over the candidate points of each formula."""
    lo, hi = (a.astype(np.float64) for a in ball_ends(pixel, eps))
    c64 = codes.astype(np.float64)

    def beaten(j, i):
        cj, ci = c64[j], c64[i]
        if metric == "l2":
            ends = np.stack([lo, hi])  # a linear function is smallest at an end
            return ((ci - cj) * (2 * ends - ci - cj)).min(axis=0).sum() > TAU
        if metric == "l1":
            total = 0.0
            for c in range(len(pixel)):
                pts = np.array([lo[c], hi[c], np.clip(cj[c], lo[c], hi[c]), np.clip(ci[c], lo[c], hi[c])])
                total += (np.abs(pts - cj[c]) - np.abs(pts - ci[c])).min()
            return total > TAU
        # linf: j survives iff in some channel c' a value s has |s-j| - |s-i| <= TAU and |s-i| >= M - TAU.
        gap = np.maximum(0, np.maximum(lo - cj, cj - hi))
        for c in range(len(pixel)):
            m = max([gap[o] for o in range(len(pixel)) if o != c], default=0.0)
            s = np.concatenate([np.linspace(lo[c], hi[c], 2001), [lo[c], hi[c], cj[c], ci[c]],
                                [(ci[c] + cj[c] + TAU) / 2, (ci[c] + cj[c] - TAU) / 2, ci[c] - (m - TAU),
                                 ci[c] + (m - TAU)]])
            s = s[(s >= lo[c]) & (s <= hi[c])]
            if ((np.abs(s - cj[c]) - np.abs(s - ci[c]) <= TAU) & (np.abs(s - ci[c]) >= m - TAU)).any():
                return False
        return True

    star = sound[0]
    return [star] + [j for j in sound[1:] if not any(beaten(j, i) for i in sound if i != j)]


@pytest.mark.parametrize("metric", METRICS)
def test_native_stage_matches_numpy_reference(metric):
    rng = np.random.default_rng(3)
    for codes in codebooks(3, rng):
        book = pixdisc.Codebook(codes, metric)
        x = np.concatenate([rng.random((12, 3), dtype=np.float32),
                            (rng.integers(0, 11, size=(8, 3)) / np.float32(10)).astype(np.float32)])
        for eps in (0.0, 0.03, 0.1):
            sound = candidate_sets(x, book, eps, rule="sound", channel_axis=-1)
            _, offsets, members = _native.candidate_sets(book.nearest_index(), x.reshape(-1), len(x), 3, 1, eps, 2)
            for p in range(len(x)):
                expect = pairwise_reference(x[p], codes, metric, eps, sound.of(p).tolist())
                assert members[offsets[p] : offsets[p + 1]].tolist() == expect, (metric, x[p], eps)


def test_voronoi_lp_drops_a_code_no_single_code_beats():
    """Box [0.4, 0.6]^2: code 1's cell needs p_y >= max(0.8875 - p_x/2, p_x/2 + 0.3375) >= 0.6125 > 0.6, so
    no input reaches it, yet neither code 0 nor code 4 alone beats it on the whole box."""
    codes = np.array([[0.55, 0.3], [0.3, 0.8], [0.15, 0.3], [0.1, 0.15], [0.25, 0.7]], np.float32)
    book = pixdisc.Codebook(codes, "l2")
    x = np.array([[0.5, 0.5]], np.float32)
    _, _, pairwise = _native.candidate_sets(book.nearest_index(), x.reshape(-1), 1, 2, 1, 0.1, 2)
    assert pairwise.tolist() == [0, 1, 4]
    assert candidate_sets(x, book, 0.1, rule="tight", channel_axis=-1).members.tolist() == [0, 4]
    assert candidate_counts(x, book, 0.1, rule="tight", channel_axis=-1).tolist() == [2]
    rng = np.random.default_rng(0)
    assert reached(book, box_points(x[0], 0.1, 401, rng)) == {0, 4}
    # Just reachable (the box reaches p_y = 0.6125): the LP must keep code 1.
    assert 1 in candidate_sets(np.array([[0.55, 0.5125]], np.float32), book, 0.1, rule="tight",
                               channel_axis=-1).members.tolist()


@pytest.mark.parametrize("metric", METRICS)
def test_codes_touching_the_box_only_at_a_tie_are_kept(metric):
    """x = (0.3, 0.3), eps = 0.1: the top float32 of the ball is float32(0.4), the midpoint of 0.3 and 0.5; the
    code (0.5, 0.3) ties with (0.3, 0.3) there and wins when its index is lower."""
    x = np.array([[0.3, 0.3]], np.float32)
    for codes in ([[0.3, 0.3], [0.5, 0.3]], [[0.5, 0.3], [0.3, 0.3]]):
        book = pixdisc.Codebook(np.array(codes, np.float32), metric)
        members = set(candidate_sets(x, book, 0.1, rule="tight", channel_axis=-1).members.tolist())
        point = np.array([[0.4, 0.3]], np.float32)
        assert set(np.asarray(book.assign(point, channel_axis=-1)).tolist()) <= members
        assert members == {0, 1}


@pytest.mark.parametrize("metric", METRICS)
def test_tight_rule_is_tighter_on_random_rgb_codebooks(metric):
    rng = np.random.default_rng(7)
    book = pixdisc.Codebook(rng.random((32, 3), dtype=np.float32), metric)
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    sound = candidate_counts(x, book, 8 / 255, rule="sound", channel_axis=1)
    tight = candidate_counts(x, book, 8 / 255, rule="tight", channel_axis=1)
    assert (tight <= sound).all() and (tight >= 1).all()
    assert tight.sum() < 0.9 * sound.sum()


def test_tight_rule_is_auto_for_several_channels_and_checks_inputs():
    book3 = pixdisc.Codebook(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32), "l2")
    assert resolve_rule("auto", book3) == "tight"
    assert resolve_rule("auto", pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))) == "exact"
    with pytest.raises(ValueError, match="rule"):
        candidate_counts(np.zeros((2, 3), np.float32), book3, 0.1, rule="tighter")
    with pytest.raises(ValueError, match="eps"):
        candidate_counts(np.zeros((2, 3), np.float32), book3, -0.1, rule="tight")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        candidate_counts(np.full((2, 3), 2.0, np.float32), book3, 0.1, rule="tight")
    with pytest.raises(ValueError, match="rule"):
        _native.candidate_sets(book3.nearest_index(), np.zeros(3, np.float32), 1, 3, 1, 0.1, 3)
    for metric in METRICS:
        book = pixdisc.Codebook(book3.codes_, metric)
        assert candidate_counts(np.zeros((0, 3), np.float32), book, 0.1, rule="tight").shape == (0,)
        sets = candidate_sets(np.zeros((0, 3), np.float32), book, 0.1, rule="tight")
        assert sets.offsets.tolist() == [0] and len(sets.members) == 0
        # One pixel, eps 0: its nearest code alone.
        one = candidate_sets(np.full((1, 3), 0.2, np.float32), book, 0.0, rule="tight")
        assert one.members.tolist() == [0]
        # Non-contiguous channel-first input gives the same sets as its contiguous copy.
        x = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
        strided = np.asfortranarray(x)
        a = candidate_sets(strided, book, 0.2, rule="tight", channel_axis=0)
        b = candidate_sets(np.ascontiguousarray(x), book, 0.2, rule="tight", channel_axis=0)
        np.testing.assert_array_equal(a.members, b.members)
        np.testing.assert_array_equal(a.offsets, b.offsets)
