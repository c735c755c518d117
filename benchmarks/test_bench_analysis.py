"""Neighbourhood sizes |N_inf(p, eps)| of every distinct colour (Fig. 6) against plain alternatives.

Run: python -m pytest benchmarks/test_bench_analysis.py --benchmark-only --benchmark-json=benchmarks/analysis.json
(the README's analysis section is written from the JSON by benchmarks/readme_tables.py)

Two groups. "all colours": every distinct colour of the CIFAR-size synthetic
set (~4M colours of 51M pixels), pixdisc against the same summed-area-table
algorithm written in NumPy. "query subset": answering a random sample of
colours from scratch; the brute-force NumPy scan and the scipy cKDTree ball
query cost O(neighbours) per colour, far too long for all of them, so they
run on the sample and ``extra_info['extrapolated_all_colours_s']`` scales
their time linearly to every colour (an estimate, not a measurement; the
cKDTree row times the queries only, its tree build is in ``tree_build_s``).
"""

import time

import numpy as np
import pytest

import pixdisc
from pixdisc import _native, analysis

from timing import sync_cuda

CUDA = pixdisc.cuda_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")

EPS = 8 / 255  # the paper's Fig. 6 radius: 8 levels
RADIUS = 8
SUBSET = 1000
ALL = "neighbourhood sizes of all ~4M distinct colours, 51M RGB pixels, eps=8/255"
SOME = f"neighbourhood sizes of {SUBSET} colours from scratch, 51M RGB pixels, eps=8/255"


@pytest.fixture(scope="module")
def colour_histogram(cifar_train_images):
    values, counts = pixdisc.pixel_histogram(cifar_train_images)
    return np.rint(values * 255).astype(np.int64), counts


@pytest.fixture(scope="module")
def query_subset(colour_histogram):
    colours, _ = colour_histogram
    pick = np.random.default_rng(0).choice(len(colours), size=SUBSET, replace=False)
    return np.sort(pick)


@pytest.fixture(scope="module")
def reference_sizes(cifar_train_images):
    return analysis.neighbourhood_sizes(cifar_train_images, EPS)[1]


def numpy_sat_sizes(images, radius):
    """The same algorithm in plain NumPy: bincount, three cumsums, 8 fancy-indexed corners per colour."""
    flat = images.reshape(-1, 3).astype(np.int64)
    keys = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    table = np.bincount(keys, minlength=1 << 24)
    present = np.flatnonzero(table)
    sat = np.zeros((257, 257, 257), np.int64)  # a zero plane in front: index -1 reads 0
    sat[1:, 1:, 1:] = table.reshape(256, 256, 256).cumsum(0).cumsum(1).cumsum(2)
    c = np.stack([(present >> 16) & 255, (present >> 8) & 255, present & 255], axis=1)
    lo = np.clip(c - radius, 0, 255)  # corner index lo - 1 + 1 in the padded table
    hi = np.clip(c + radius, 0, 255) + 1
    total = np.zeros(len(present), np.int64)
    for corner in range(8):
        pick = [hi[:, a] if corner >> a & 1 else lo[:, a] for a in range(3)]
        sign = -1 if (3 - bin(corner).count("1")) % 2 else 1
        total += sign * sat[pick[0], pick[1], pick[2]]
    return total


def brute_force_sizes(colours, counts, queries, radius):
    out = np.empty(len(queries), np.int64)
    for i, q in enumerate(queries):
        out[i] = counts[np.abs(colours - q).max(axis=1) <= radius].sum()
    return out


@pytest.mark.benchmark(group=ALL)
def test_all_colours_pixdisc(benchmark, cifar_train_images, reference_sizes):
    colours, sizes = benchmark.pedantic(analysis.neighbourhood_sizes, args=(cifar_train_images, EPS), rounds=3)
    np.testing.assert_array_equal(sizes, reference_sizes)
    benchmark.extra_info["distinct_colours"] = int(len(sizes))
    benchmark.extra_info["colours_per_s"] = round(len(sizes) / benchmark.stats.stats.median)
    benchmark.extra_info["max_size"] = int(sizes.max())
    benchmark.extra_info["eps_levels"] = RADIUS


@pytest.mark.benchmark(group=ALL)
def test_all_colours_numpy_sat(benchmark, cifar_train_images, reference_sizes):
    sizes = benchmark.pedantic(numpy_sat_sizes, args=(cifar_train_images, RADIUS), rounds=1)
    np.testing.assert_array_equal(sizes, reference_sizes)


@needs_cuda
@pytest.mark.benchmark(group=ALL)
def test_all_colours_pixdisc_cuda(benchmark, cifar_train_images, reference_sizes):
    import torch

    x = torch.from_numpy(cifar_train_images).cuda()
    analysis.neighbourhood_sizes(x, EPS)  # warm up: context, allocator

    def run():
        out = analysis.neighbourhood_sizes(x, EPS)
        sync_cuda()
        return out

    _, sizes = benchmark.pedantic(run, rounds=5)
    np.testing.assert_array_equal(sizes, reference_sizes)
    benchmark.extra_info["colours_per_s"] = round(len(sizes) / benchmark.stats.stats.median)


@pytest.mark.benchmark(group=SOME)
def test_subset_pixdisc(benchmark, cifar_train_images, colour_histogram, query_subset, reference_sizes):
    colours, _ = colour_histogram
    queries = colours[query_subset].astype(np.uint8)

    def run():
        # From the pixels like the baselines (whose colour histogram is given to them for free):
        # histogram, count table, summed-area table, then the queries.
        values, counts = pixdisc.pixel_histogram(cifar_train_images)
        points = np.rint(values * 255).astype(np.uint8)
        return _native.neighbourhood_counts(points, counts, queries, RADIUS)

    sizes = benchmark.pedantic(run, rounds=3)
    np.testing.assert_array_equal(sizes, reference_sizes[query_subset])


@pytest.mark.benchmark(group=SOME)
def test_subset_brute_force_numpy(benchmark, colour_histogram, query_subset, reference_sizes):
    colours, counts = colour_histogram
    colours = colours.astype(np.int16)  # narrow enough for |a - b|, and half the bytes of int32
    queries = colours[query_subset]
    sizes = benchmark.pedantic(brute_force_sizes, args=(colours, counts, queries, RADIUS), rounds=1)
    np.testing.assert_array_equal(sizes, reference_sizes[query_subset])
    benchmark.extra_info["queries"] = SUBSET
    benchmark.extra_info["extrapolated_all_colours_s"] = round(
        benchmark.stats.stats.median * len(colours) / SUBSET, 1)


@pytest.mark.benchmark(group=SOME)
def test_subset_ckdtree(benchmark, colour_histogram, query_subset, reference_sizes):
    from scipy.spatial import cKDTree

    colours, counts = colour_histogram
    queries = colours[query_subset]

    start = time.perf_counter()
    tree = cKDTree(colours)
    build = time.perf_counter() - start

    def run():
        # +0.5: integer levels, so the ball of radius 8.5 holds exactly the colours within 8.
        neighbours = tree.query_ball_point(queries, r=RADIUS + 0.5, p=np.inf, workers=-1, return_sorted=False)
        return np.array([counts[np.asarray(n, np.int64)].sum() for n in neighbours])

    sizes = benchmark.pedantic(run, rounds=1)
    np.testing.assert_array_equal(sizes, reference_sizes[query_subset])
    benchmark.extra_info["tree_build_s"] = round(build, 2)
    benchmark.extra_info["queries"] = SUBSET
    benchmark.extra_info["extrapolated_all_colours_s"] = round(
        build + benchmark.stats.stats.median * len(colours) / SUBSET, 1)
