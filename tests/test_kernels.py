"""Native kernels against the plain NumPy references: histograms, nearest code, codebook fits."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pixdisc
from pixdisc import _native

import reference as ref

METRICS = ("linf", "l1", "l2")


def grid_pixels(rng, n, channels, levels=9):
    """Pixels on a coarse grid: many exact distance ties with grid codes."""
    return (rng.integers(0, levels, size=(n, channels)) / np.float32(levels - 1)).astype(np.float32)


# --- histogram --------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["uint8", "float_grid", "float_any"])
def test_histogram_matches_numpy_unique(rng, channels, kind):
    if kind == "uint8":
        x = rng.integers(0, 256, size=(3000, channels), dtype=np.uint8)
        x[:1000] = x[0]  # a heavy value
    elif kind == "float_grid":
        x = rng.integers(0, 256, size=(3000, channels)).astype(np.float32) / np.float32(255)
    else:
        x = rng.random((3000, channels), dtype=np.float32)
        x[::3] = x[0]
    values, counts = pixdisc.pixel_histogram(x, channel_axis=-1) if channels in (1, 3) else _hist(x)
    expect_values, expect_counts = ref.histogram(ref.to_unit(x))
    np.testing.assert_array_equal(values, expect_values)
    np.testing.assert_array_equal(counts, expect_counts)


def _hist(x):
    values, counts, _ = _native.histogram(np.ascontiguousarray(x).reshape(-1), x.shape[0], x.shape[1], 1)
    return values, counts


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout", ["nhwc", "nchw", "float_grid"])
def test_rgb_histogram_partition_edge_cases(rng, threads, layout):
    """Large enough for several workers; the RGB path partitions by the first
    channel, so build partitions that fill their compaction slots exactly:
    every one of the 2^16 low keys (plus repeats), all-distinct pixels, one
    heavy value, and a partition of a single pixel."""
    low = np.arange(1 << 16, dtype=np.uint32)
    every_low = np.concatenate([low, rng.choice(low, 70_000)])
    all_distinct = rng.choice(low, 40_000, replace=False)
    parts = [
        (0, every_low),
        (1, all_distinct),
        (255, np.full(200_000, 0x1234, np.uint32)),
        (17, np.array([7], np.uint32)),
        (None, rng.integers(0, 1 << 24, 299_999, dtype=np.uint32)),  # total divisible by 16
    ]
    keys = np.concatenate([k if high is None else (high << 16) | k for high, k in parts]).astype(np.uint32)
    keys = rng.permutation(keys)
    pixels = np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], axis=1).astype(np.uint8)
    expect_keys, expect_counts = np.unique(keys, return_counts=True)
    expect_values = np.stack([(expect_keys >> s) & 255 for s in (16, 8, 0)], axis=1) / np.float32(255)

    images = pixels.reshape(-1, 16, 3)  # 16-pixel "images"
    previous = _native.get_num_threads()
    pixdisc.set_num_threads(threads)
    try:
        if layout == "nhwc":
            values, counts = pixdisc.pixel_histogram(images)
        elif layout == "nchw":
            values, counts = pixdisc.pixel_histogram(np.ascontiguousarray(images.transpose(0, 2, 1)), channel_axis=1)
        else:
            values, counts = pixdisc.pixel_histogram(images.astype(np.float32) / np.float32(255))
    finally:
        pixdisc.set_num_threads(previous)
    np.testing.assert_array_equal(values, expect_values.astype(np.float32))
    np.testing.assert_array_equal(counts, expect_counts)


def test_rgb_histogram_off_grid_float_in_a_large_input(rng):
    """One off-grid value anywhere in a multi-worker input switches to the exact sort path."""
    x = (rng.integers(0, 256, size=(700_000, 3)) / np.float32(255)).astype(np.float32)
    x[650_001, 2] = np.float32(0.123456)
    values, counts = pixdisc.pixel_histogram(x)
    expect_values, expect_counts = ref.histogram(x)
    np.testing.assert_array_equal(values, expect_values)
    np.testing.assert_array_equal(counts, expect_counts)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_float_grid_detection_is_exact(rng, channels):
    """Exactly the float32 values k/255 count as 8-bit data; their float neighbours
    and the half-way points between levels do not (they take the exact sort path)."""
    grid = np.arange(256, dtype=np.float32) / np.float32(255)
    on_grid = rng.choice(grid, size=(600_000, channels))
    values, counts, flag = _native.histogram(on_grid.reshape(-1), on_grid.shape[0], channels, 1)
    assert flag
    expect_values, expect_counts = ref.histogram(on_grid)
    np.testing.assert_array_equal(values, expect_values)
    np.testing.assert_array_equal(counts, expect_counts)
    level = int(rng.integers(1, 255))
    for off in (np.nextafter(grid[level], np.float32(0)), np.nextafter(grid[level], np.float32(1)),
                np.float32((level + 0.5) / 255)):
        x = on_grid.copy()
        x[599_999, channels - 1] = off
        values, counts, flag = _native.histogram(x.reshape(-1), x.shape[0], channels, 1)
        assert not flag
        expect_values, expect_counts = ref.histogram(x)
        np.testing.assert_array_equal(values, expect_values)
        np.testing.assert_array_equal(counts, expect_counts)


def test_histogram_gray_u8_matches_bincount(rng):
    x = rng.integers(0, 256, size=100_003, dtype=np.uint8)
    np.testing.assert_array_equal(_native.histogram_gray_u8(x), np.bincount(x, minlength=256))
    assert _native.histogram_gray_u8(np.zeros(0, np.uint8)).sum() == 0


def test_histogram_layouts_agree(rng):
    """NCHW (channel axis 1) and NHWC give the same histogram without copies."""
    nhwc = rng.integers(0, 4, size=(5, 6, 7, 3), dtype=np.uint8)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    a = pixdisc.pixel_histogram(nhwc)
    b = pixdisc.pixel_histogram(nchw, channel_axis=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].sum() == 5 * 6 * 7


def test_histogram_gray_shapes_are_all_pixels(rng):
    x = rng.integers(0, 256, size=(10, 784), dtype=np.uint8)
    values, counts = pixdisc.pixel_histogram(x)
    assert values.shape[1] == 1 and counts.sum() == x.size


def test_histogram_empty_and_one_pixel():
    values, counts = pixdisc.pixel_histogram(np.zeros((0, 3), np.float32))
    assert values.shape == (0, 3) and counts.shape == (0,)
    values, counts = pixdisc.pixel_histogram(np.array([[0.25, 0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(values, [[0.25, 0.5, 1.0]])
    np.testing.assert_array_equal(counts, [1])


def test_histogram_negative_zero_is_zero():
    values, counts = pixdisc.pixel_histogram(np.array([0.0, -0.0, 0.3, 0.7], np.float32))
    assert values.shape == (3, 1) and counts.tolist() == [2, 1, 1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.1, 1.5])
def test_histogram_rejects_out_of_range(bad):
    x = np.full((4, 3), 0.5, np.float32)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixdisc.pixel_histogram(x)


# --- nearest code ------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 3, 17, 300])
def test_assign_matches_reference_random(rng, metric, channels, k):
    codes = rng.random((k, channels), dtype=np.float32)
    x = rng.random((4000, channels), dtype=np.float32)
    book = pixdisc.Codebook(codes, metric=metric)
    got = book.assign(x, channel_axis=-1) if channels > 1 else book.assign(x[:, 0])
    np.testing.assert_array_equal(got.reshape(-1), ref.nearest(x, codes, metric))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [1, 3])
def test_assign_ties_go_to_lowest_index(rng, metric, channels):
    """Grid pixels and grid codes (with duplicates) tie exactly and often."""
    codes = grid_pixels(rng, 40, channels, levels=5)
    x = grid_pixels(rng, 5000, channels, levels=9)
    book = pixdisc.Codebook(codes, metric=metric)
    expect = ref.nearest(x, codes, metric)
    np.testing.assert_array_equal(book.assign(x).reshape(-1), expect)
    d = ref.pixel_distances(x, codes, metric)
    assert ((d == d.min(axis=1, keepdims=True)).sum(axis=1) > 1).mean() > 0.1  # ties really happen


def test_midpoint_tie_one_channel():
    book = pixdisc.Codebook([[0.75], [0.25]])
    assert book.assign(np.array([0.5], np.float32)).tolist() == [0]  # equidistant: lowest index
    book = pixdisc.Codebook([[0.25], [0.75]])
    assert book.assign(np.array([0.5], np.float32)).tolist() == [0]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [1, 3])
def test_uint8_path_matches_float_path(rng, metric, channels):
    codes = rng.random((37, channels), dtype=np.float32)
    x = rng.integers(0, 256, size=(3000, channels), dtype=np.uint8)
    book = pixdisc.Codebook(codes, metric=metric)
    expect = ref.nearest(ref.to_unit(x), codes, metric)
    np.testing.assert_array_equal(book.assign(x).reshape(-1), expect)
    out = book.transform(x)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.reshape(-1, channels), np.rint(codes * 255).astype(np.uint8)[expect])


@pytest.mark.parametrize("channels", [1, 3])
def test_transform_float_nchw_and_nhwc(rng, channels):
    codes = rng.random((20, channels), dtype=np.float32)
    nhwc = rng.random((4, 5, 6, channels), dtype=np.float32)
    book = pixdisc.Codebook(codes)
    out = book.transform(nhwc)
    idx = ref.nearest(nhwc.reshape(-1, channels), codes, "linf")
    np.testing.assert_array_equal(out.reshape(-1, channels), codes[idx])
    nchw = nhwc.transpose(0, 3, 1, 2)  # non-contiguous view
    out2 = book.transform(nchw, channel_axis=1)
    np.testing.assert_array_equal(out2, out.transpose(0, 3, 1, 2))
    # The channel axis is removed for one channel too, as the README and the docstring say.
    assert book.assign(nchw, channel_axis=1).shape == (4, 5, 6)
    assert book.assign(nhwc).shape == (4, 5, 6)


def test_non_contiguous_and_float64_inputs(rng):
    codes = rng.random((8, 3), dtype=np.float32)
    x = rng.random((50, 6), dtype=np.float64)[:, ::2]
    book = pixdisc.Codebook(codes)
    np.testing.assert_array_equal(book.assign(x), ref.nearest(x.astype(np.float32), codes, "linf"))


def test_empty_and_single_pixel():
    book = pixdisc.Codebook([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert book.assign(np.zeros((0, 3), np.float32)).shape == (0,)
    assert book.transform(np.zeros((0, 3), np.uint8)).shape == (0, 3)
    assert book.assign(np.array([[0.9, 0.9, 0.2]], np.float32)).tolist() == [1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1e-3, 1.0001])
def test_transform_rejects_bad_values(bad):
    x = np.full((3, 3), 0.5, np.float32)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixdisc.Codebook([[0.5, 0.5, 0.5]]).transform(x)


def test_wrong_dtype_and_channels_raise():
    book = pixdisc.Codebook(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="int64"):
        book.assign(np.zeros((4, 3), np.int64))
    with pytest.raises(ValueError, match="3 channels"):
        book.assign(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="bool"):
        book.assign(np.zeros((4, 3), bool))


def test_native_binding_refuses_silent_conversion():
    index = _native.NearestIndex(np.zeros((2, 1), np.float32), 0)
    with pytest.raises(ValueError, match="C-contiguous float32.*float64"):
        index.assign(np.zeros(4, np.float64), 4, 1, 1)
    with pytest.raises(ValueError, match="does not match"):
        index.assign(np.zeros(4, np.float32), 5, 1, 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 70),
    channels=st.sampled_from([1, 2, 3]),
    metric=st.sampled_from(METRICS),
    levels=st.sampled_from([3, 5, 17, 256]),
)
def test_assign_property(seed, k, channels, metric, levels):
    rng = np.random.default_rng(seed)
    codes = grid_pixels(rng, k, channels, levels)
    x = np.concatenate([grid_pixels(rng, 300, channels, levels), rng.random((300, channels), dtype=np.float32)])
    x[0] = 0.0
    x[1] = 1.0
    got = pixdisc.Codebook(codes, metric).assign(x, channel_axis=-1 if channels > 1 else None)
    np.testing.assert_array_equal(np.asarray(got).reshape(-1), ref.nearest(x, codes, metric))


def test_many_codes(rng):
    codes = rng.random((1024, 3), dtype=np.float32)
    x = rng.random((2000, 3), dtype=np.float32)
    for metric in METRICS:
        np.testing.assert_array_equal(pixdisc.Codebook(codes, metric).assign(x), ref.nearest(x, codes, metric))


def test_thread_count_does_not_change_results(rng):
    codes = rng.random((50, 3), dtype=np.float32)
    x = rng.random((200_000, 3), dtype=np.float32)
    book = pixdisc.Codebook(codes)
    before = pixdisc.get_num_threads()
    try:
        pixdisc.set_num_threads(1)
        one = book.assign(x)
        pixdisc.set_num_threads(3)
        assert pixdisc.get_num_threads() == 3
        three = book.assign(x)
    finally:
        pixdisc.set_num_threads(0)
    np.testing.assert_array_equal(one, three)
    assert pixdisc.get_num_threads() == before
