"""Native core against the best plain alternatives (pytest-benchmark; not part of the test run).

Run: pytest benchmarks --benchmark-only --benchmark-json=bench.json && python benchmarks/report.py bench.json
"""

import numpy as np
import pytest

import pixdisc
from pixdisc import _backend

from timing import sync_cuda

CUDA = pixdisc.cuda_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")


def _numpy_rgb_keys(images):
    flat = images.reshape(-1, 3).astype(np.uint32)
    return (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]


# --- histograms -----------------------------------------------------------------------------

@pytest.mark.benchmark(group="gray histogram, 47M uint8 pixels")
def test_gray_histogram_pixdisc(benchmark, mnist_train_pixels):
    counts = benchmark(_backend._core.histogram_gray_u8, mnist_train_pixels.reshape(-1))
    assert counts.sum() == mnist_train_pixels.size


@pytest.mark.benchmark(group="gray histogram, 47M uint8 pixels")
def test_gray_histogram_numpy_bincount(benchmark, mnist_train_pixels):
    benchmark(np.bincount, mnist_train_pixels.reshape(-1), minlength=256)


@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_pixdisc(benchmark, cifar_train_images):
    values, counts = benchmark(pixdisc.pixel_histogram, cifar_train_images)
    assert counts.sum() == cifar_train_images.size // 3
    benchmark.extra_info["distinct_colours"] = int(len(counts))


@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_pixdisc_float_grid(benchmark, cifar_train_images):
    """The same pixels as float32 v/255 (what torch pipelines hold): each value is checked to be on the grid."""
    floats = cifar_train_images.astype(np.float32) / np.float32(255)
    values, counts = benchmark(pixdisc.pixel_histogram, floats)
    assert counts.sum() == cifar_train_images.size // 3
    benchmark.extra_info["input"] = "float32"


@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_numpy_bincount(benchmark, cifar_train_images):
    def run():
        counts = np.bincount(_numpy_rgb_keys(cifar_train_images), minlength=1 << 24)
        keys = np.flatnonzero(counts)
        return keys, counts[keys]

    benchmark.pedantic(run, rounds=3)


@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_numpy_unique(benchmark, cifar_train_images):
    benchmark.pedantic(lambda: np.unique(_numpy_rgb_keys(cifar_train_images), return_counts=True), rounds=1)


@needs_cuda
@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_pixdisc_cuda(benchmark, cifar_train_images):
    import torch

    x = torch.from_numpy(cifar_train_images).cuda()
    pixdisc.pixel_histogram(x)

    def run():
        out = pixdisc.pixel_histogram(x)
        sync_cuda()
        return out

    benchmark(run)


# --- Algorithm 1 --------------------------------------------------------------------------------

def numpy_density_codebook(images, k, r):
    """Vectorised NumPy Algorithm 1: unique colours, then k masked argmax + removal passes."""
    keys, counts = np.unique(_numpy_rgb_keys(images), return_counts=True)
    values = np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], axis=1).astype(np.float32) / 255
    density = counts.astype(np.float64)
    codes = []
    for _ in range(k):
        best = int(np.argmax(density))
        if density[best] < 0:
            break
        codes.append(values[best])
        # pixdisc's rule: float64 distances, within 1e-6 of r counts as <= r.
        near = np.abs(values.astype(np.float64) - values[best].astype(np.float64)).max(axis=1) <= r + 1e-6
        density[near] = -1
    return np.array(codes)


@pytest.mark.benchmark(group="density codebook fit, 51M RGB pixels, k=300, r=16/255")
def test_density_fit_pixdisc(benchmark, cifar_train_images):
    book = benchmark.pedantic(lambda: pixdisc.DensityCodebook(300, 16 / 255).fit(cifar_train_images), rounds=3)
    assert book.n_codes == 300


@pytest.mark.benchmark(group="density codebook fit, 51M RGB pixels, k=300, r=16/255")
def test_density_fit_numpy(benchmark, cifar_train_images):
    codes = benchmark.pedantic(lambda: numpy_density_codebook(cifar_train_images, 300, 16 / 255), rounds=1)
    expect = pixdisc.DensityCodebook(300, 16 / 255).fit(cifar_train_images).codes_
    np.testing.assert_array_equal(codes, expect)  # same algorithm, same answer


# --- nearest code -----------------------------------------------------------------------------------

@pytest.mark.benchmark(group="nearest code, 10M RGB float32 pixels, k=300, linf")
def test_nearest_pixdisc(benchmark, rgb_float_pixels, codes_k300):
    book = pixdisc.Codebook(codes_k300)
    book.assign(rgb_float_pixels[:10])  # build the grid outside the timing
    benchmark(book.assign, rgb_float_pixels)


@pytest.mark.benchmark(group="nearest code, 10M RGB float32 pixels, k=300, linf")
def test_nearest_ckdtree(benchmark, rgb_float_pixels, codes_k300):
    from scipy.spatial import cKDTree

    tree = cKDTree(codes_k300)
    distance, _ = benchmark.pedantic(lambda: tree.query(rgb_float_pixels, p=np.inf, workers=-1), rounds=1)
    # l_inf ties between codes are common, and each tool breaks them its own way: compare distances.
    ours = pixdisc.Codebook(codes_k300).assign(rgb_float_pixels)
    our_distance = np.abs(rgb_float_pixels - codes_k300[ours]).max(axis=1)
    np.testing.assert_allclose(our_distance, distance, atol=1e-6)


@pytest.mark.benchmark(group="nearest code, 10M RGB float32 pixels, k=300, linf")
def test_nearest_sklearn_kdtree(benchmark, rgb_float_pixels, codes_k300):
    from sklearn.neighbors import KDTree

    tree = KDTree(codes_k300, metric="chebyshev")
    benchmark.pedantic(lambda: tree.query(rgb_float_pixels, k=1, return_distance=False), rounds=1)


@needs_cuda
@pytest.mark.benchmark(group="nearest code, 10M RGB float32 pixels, k=300, linf")
def test_nearest_pixdisc_cuda(benchmark, rgb_float_pixels, codes_k300):
    import torch

    book = pixdisc.Codebook(codes_k300)
    x = torch.from_numpy(rgb_float_pixels).cuda()
    book.assign(x, channel_axis=-1)

    def run():
        out = book.assign(x, channel_axis=-1)
        sync_cuda()
        return out

    benchmark(run)


# --- uint8 lookup-table path against memory bandwidth ----------------------------------------------

@pytest.mark.benchmark(group="discretize 47M uint8 gray pixels (LUT) vs memory bandwidth")
def test_lut_transform_pixdisc(benchmark, mnist_train_pixels):
    book = pixdisc.Codebook([[0.0], [253 / 255]])
    benchmark(book.transform, mnist_train_pixels)


@pytest.mark.benchmark(group="discretize 47M uint8 gray pixels (LUT) vs memory bandwidth")
def test_lut_numpy_copy(benchmark, mnist_train_pixels):
    benchmark(np.copy, mnist_train_pixels)


@pytest.mark.benchmark(group="discretize 47M uint8 gray pixels (LUT) vs memory bandwidth")
def test_lut_numpy_take(benchmark, mnist_train_pixels):
    lut = np.where(np.arange(256) <= 126, 0, 253).astype(np.uint8)
    benchmark(np.take, lut, mnist_train_pixels)
