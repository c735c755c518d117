"""Native core against the best plain alternatives a competent NumPy/SciPy user has (pytest-benchmark; not part of the test run).

Run (the README's table is written from the JSON; see benchmarks/readme_tables.py):

    python -m pytest benchmarks/test_bench_core.py --benchmark-only --benchmark-json=benchmarks/core.json

Each benchmark names its row (`extra_info["implementation"]`) and, where the
README has one, its target (`extra_info["target"]`; a speed-up target is
judged against the fastest baseline of its group that carries it);
`benchmarks/report.py` turns the JSON into the table. Baselines cast once,
outside any loop, and use every thread their library offers (cKDTree's
`workers=-1`); NumPy's bincount/unique/take have none, so the copy and take
rows also run split over a thread pool. The bandwidth yardstick is the faster
copy of the same bytes.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import pixdisc
from pixdisc import _native

from timing import sync_cuda

CUDA = pixdisc.cuda_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")


def _label(benchmark, implementation, target=None, **extra):
    benchmark.extra_info["implementation"] = implementation
    if target is not None:
        benchmark.extra_info["target"] = target
    benchmark.extra_info.update(extra)


def _numpy_rgb_keys(images):
    flat = images.reshape(-1, 3).astype(np.uint32)
    return (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]


# --- histograms -----------------------------------------------------------------------------

@pytest.mark.benchmark(group="gray histogram, 47M uint8 pixels")
def test_gray_histogram_pixdisc(benchmark, mnist_train_pixels):
    _label(benchmark, "pixdisc")
    counts = benchmark(_native.histogram_gray_u8, mnist_train_pixels.reshape(-1))
    assert counts.sum() == mnist_train_pixels.size


@pytest.mark.benchmark(group="gray histogram, 47M uint8 pixels")
def test_gray_histogram_numpy_bincount(benchmark, mnist_train_pixels):
    _label(benchmark, "`numpy.bincount`", {"speedup_at_least": 5})
    benchmark(np.bincount, mnist_train_pixels.reshape(-1), minlength=256)


@pytest.mark.benchmark(group="gray histogram, 47M uint8 pixels")
def test_gray_histogram_numpy_bincount_chunked(benchmark, mnist_train_pixels):
    """bincount casts its input to intp: over 1 MB chunks that copy stays in cache instead of taking 8 bytes a pixel."""
    _label(benchmark, "`numpy.bincount` summed over 1 MB chunks", {"speedup_at_least": 5})
    flat = mnist_train_pixels.reshape(-1)
    step = 1 << 20
    benchmark(lambda: sum(np.bincount(flat[i:i + step], minlength=256) for i in range(0, flat.size, step)))


@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_pixdisc(benchmark, cifar_train_images):
    values, counts = benchmark(pixdisc.pixel_histogram, cifar_train_images)
    assert counts.sum() == cifar_train_images.size // 3
    _label(benchmark, "pixdisc", distinct_colours=int(len(counts)))


@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_pixdisc_float_grid(benchmark, cifar_train_images):
    """The same pixels as float32 v/255 (what torch pipelines hold): each value is checked to be on the grid."""
    _label(benchmark, "pixdisc, the same pixels as float32 v/255")
    floats = cifar_train_images.astype(np.float32) / np.float32(255)
    values, counts = benchmark(pixdisc.pixel_histogram, floats)
    assert counts.sum() == cifar_train_images.size // 3


@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_numpy_bincount(benchmark, cifar_train_images):
    _label(benchmark, "`numpy.bincount` of packed keys", {"speedup_at_least": 5})

    def run():
        counts = np.bincount(_numpy_rgb_keys(cifar_train_images), minlength=1 << 24)
        keys = np.flatnonzero(counts)
        return keys, counts[keys]

    benchmark.pedantic(run, rounds=3)


@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_numpy_unique(benchmark, cifar_train_images):
    _label(benchmark, "`numpy.unique` of packed keys", {"speedup_at_least": 5})
    benchmark.pedantic(lambda: np.unique(_numpy_rgb_keys(cifar_train_images), return_counts=True), rounds=1)


@needs_cuda
@pytest.mark.benchmark(group="RGB histogram, 51M uint8 pixels")
def test_rgb_histogram_pixdisc_cuda(benchmark, cifar_train_images):
    import torch

    _label(benchmark, "pixdisc, CUDA")
    x = torch.from_numpy(cifar_train_images).cuda()
    pixdisc.pixel_histogram(x)

    def run():
        out = pixdisc.pixel_histogram(x)
        sync_cuda()
        return out

    benchmark(run)


# --- Algorithm 1 --------------------------------------------------------------------------------

def numpy_density_codebook(images, k, r):
    """Algorithm 1 (identity kernel) as a competent NumPy user writes it for 8-bit images.

    One bincount of packed keys gives every colour's density; one stable sort
    puts them densest first (ties to the smallest value, pixdisc's rule). The
    next code is the first colour in that order not yet removed, found by
    looking ahead in growing windows; removal marks the code's l_inf box in a
    256^3 boolean grid (a slice assignment). On the 1/255 grid pixdisc's
    "within r + 1e-6" is "within floor(255 (r + 1e-6)) levels".
    """
    counts = np.bincount(_numpy_rgb_keys(images), minlength=1 << 24)
    keys = np.flatnonzero(counts)
    order = keys[np.argsort(-counts[keys], kind="stable")]
    radius = int(np.floor(255 * (r + 1e-6)))
    removed = np.zeros((256, 256, 256), bool)
    removed_flat = removed.reshape(-1)
    codes = []
    start = 0
    while len(codes) < k and start < order.size:
        window = 1024
        while True:
            alive = np.flatnonzero(~removed_flat[order[start:start + window]])
            if alive.size or start + window >= order.size:
                break
            start += window
            window *= 2
        if not alive.size:
            break
        start += int(alive[0])
        key = int(order[start])
        start += 1
        red, green, blue = key >> 16, (key >> 8) & 255, key & 255
        codes.append((red, green, blue))
        removed[max(red - radius, 0):red + radius + 1, max(green - radius, 0):green + radius + 1,
                max(blue - radius, 0):blue + radius + 1] = True
    return np.array(codes, np.float32) / np.float32(255)


@pytest.mark.benchmark(group="density codebook fit, 51M RGB pixels, k=300, r=16/255")
def test_density_fit_pixdisc(benchmark, cifar_train_images):
    _label(benchmark, "pixdisc (histogram + selection)", {"seconds_below": 2})
    book = benchmark.pedantic(lambda: pixdisc.DensityCodebook(300, 16 / 255).fit(cifar_train_images), rounds=3)
    assert book.n_codes == 300


@pytest.mark.benchmark(group="density codebook fit, 51M RGB pixels, k=300, r=16/255")
def test_density_fit_numpy(benchmark, cifar_train_images):
    _label(benchmark, "vectorised NumPy Algorithm 1 (bincount, one sort, box removal; same codes)")
    codes = benchmark.pedantic(lambda: numpy_density_codebook(cifar_train_images, 300, 16 / 255), rounds=3)
    expect = pixdisc.DensityCodebook(300, 16 / 255).fit(cifar_train_images).codes_
    np.testing.assert_array_equal(codes, expect)  # same algorithm, same answer


# --- nearest code -----------------------------------------------------------------------------------

@pytest.mark.benchmark(group="nearest code, 10M RGB float32 pixels, k=300, linf")
def test_nearest_pixdisc(benchmark, rgb_float_pixels, codes_k300):
    _label(benchmark, "pixdisc")
    book = pixdisc.Codebook(codes_k300)
    book.assign(rgb_float_pixels[:10])  # build the grid outside the timing
    benchmark(book.assign, rgb_float_pixels)


@pytest.mark.benchmark(group="nearest code, 10M RGB float32 pixels, k=300, linf")
def test_nearest_ckdtree(benchmark, rgb_float_pixels, codes_k300):
    from scipy.spatial import cKDTree

    _label(benchmark, "`scipy.spatial.cKDTree(p=inf, workers=-1)`", {"speedup_at_least": 10})
    tree = cKDTree(codes_k300)
    distance, _ = benchmark.pedantic(lambda: tree.query(rgb_float_pixels, p=np.inf, workers=-1), rounds=1)
    # l_inf ties between codes are common, and each tool breaks them its own way: compare distances.
    ours = pixdisc.Codebook(codes_k300).assign(rgb_float_pixels)
    our_distance = np.abs(rgb_float_pixels - codes_k300[ours]).max(axis=1)
    np.testing.assert_allclose(our_distance, distance, atol=1e-6)


@pytest.mark.benchmark(group="nearest code, 10M RGB float32 pixels, k=300, linf")
def test_nearest_sklearn_kdtree(benchmark, rgb_float_pixels, codes_k300):
    from sklearn.neighbors import KDTree

    _label(benchmark, "scikit-learn `KDTree` (chebyshev; one thread, it has no option)")
    tree = KDTree(codes_k300, metric="chebyshev")
    benchmark.pedantic(lambda: tree.query(rgb_float_pixels, k=1, return_distance=False), rounds=1)


@needs_cuda
@pytest.mark.benchmark(group="nearest code, 10M RGB float32 pixels, k=300, linf")
def test_nearest_pixdisc_cuda(benchmark, rgb_float_pixels, codes_k300):
    import torch

    _label(benchmark, "pixdisc, CUDA")
    book = pixdisc.Codebook(codes_k300)
    x = torch.from_numpy(rgb_float_pixels).cuda()
    book.assign(x, channel_axis=-1)

    def run():
        out = book.assign(x, channel_axis=-1)
        sync_cuda()
        return out

    benchmark(run)


# --- uint8 lookup-table path against the all-thread copy bandwidth ---------------------------------

BANDWIDTH_GROUP = "discretize 47M uint8 gray pixels (step map) vs copying the same bytes"


@pytest.fixture(scope="module")
def copy_pool():
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        yield pool


def _per_thread(pool, src, write):
    """A fresh output like src, each core writing its own slice with write(out_slice, src_slice).

    Like `Codebook.transform`, it allocates the output and every core faults in
    and writes its own part (NumPy releases the GIL while copying or taking).
    """
    out = np.empty_like(src)
    flat_src, flat_out = src.reshape(-1), out.reshape(-1)
    bounds = np.linspace(0, flat_src.size, os.cpu_count() + 1).astype(np.int64)
    list(pool.map(lambda i: write(flat_out[bounds[i]:bounds[i + 1]], flat_src[bounds[i]:bounds[i + 1]]),
                  range(len(bounds) - 1)))
    return out


def threaded_copy(pool, src):
    """A copy of the same bytes on every core: with `numpy.copy`, the memory-bandwidth yardstick (the faster one)."""
    return _per_thread(pool, src, np.copyto)


@pytest.mark.benchmark(group=BANDWIDTH_GROUP)
def test_lut_transform_pixdisc(benchmark, mnist_train_pixels):
    _label(benchmark, "pixdisc (step map, all threads)", {"bandwidth_share_at_least": 0.5},
           threads=pixdisc.get_num_threads())
    book = pixdisc.Codebook([[0.0], [253 / 255]])
    benchmark(book.transform, mnist_train_pixels)


@pytest.mark.benchmark(group=BANDWIDTH_GROUP)
def test_lut_threaded_copy(benchmark, mnist_train_pixels, copy_pool):
    _label(benchmark, f"NumPy copy of the same bytes, one slice per thread ({os.cpu_count()} threads)",
           role="bandwidth", threads=os.cpu_count())
    out = benchmark(threaded_copy, copy_pool, mnist_train_pixels)
    np.testing.assert_array_equal(out, mnist_train_pixels)


@pytest.mark.benchmark(group=BANDWIDTH_GROUP)
def test_lut_numpy_copy(benchmark, mnist_train_pixels):
    _label(benchmark, "`numpy.copy` of the same bytes (one thread)", role="bandwidth", threads=1)
    benchmark(np.copy, mnist_train_pixels)


@pytest.mark.benchmark(group=BANDWIDTH_GROUP)
def test_lut_numpy_take(benchmark, mnist_train_pixels):
    _label(benchmark, "`numpy.take` with a 256-entry table (one thread)")
    lut = np.where(np.arange(256) <= 126, 0, 253).astype(np.uint8)
    benchmark(np.take, lut, mnist_train_pixels)


@pytest.mark.benchmark(group=BANDWIDTH_GROUP)
def test_lut_numpy_take_threaded(benchmark, mnist_train_pixels, copy_pool):
    _label(benchmark, f"`numpy.take` with the table, one slice per thread ({os.cpu_count()} threads)")
    lut = np.where(np.arange(256) <= 126, 0, 253).astype(np.uint8)
    out = benchmark(_per_thread, copy_pool, mnist_train_pixels, lambda out, src: np.take(lut, src, out=out))
    np.testing.assert_array_equal(out, lut[mnist_train_pixels])
