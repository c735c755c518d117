"""Candidate generation and S(x) enumeration for the certificate (pytest-benchmark; CPU, and CUDA when present).

Run (the README's certification section quotes the JSON, through benchmarks/readme_tables.py):

    python -m pytest benchmarks/test_bench_certify.py --benchmark-only --benchmark-json=benchmarks/certify.json
"""

import numpy as np
import pytest

import pixdisc
from pixdisc import _native
from pixdisc.candidates import candidate_sets

from timing import sync_cuda

CUDA = pixdisc.cuda_available()
EPS = 0.3
N_AMBIGUOUS = 16
IMAGE = 784  # 28x28, one channel
ENUMERATE = f"enumerate {1 << N_AMBIGUOUS:,} candidate images of S(x) ({N_AMBIGUOUS} ambiguous pixels, 28x28)"


@pytest.fixture(scope="module")
def mnist_test():
    from pixdisc.datasets import as_float_nchw, load_mnist5k

    data = load_mnist5k()
    return as_float_nchw(data.x_test), pixdisc.DensityCodebook(2, 0.6).fit(data.x_train)


@pytest.mark.parametrize("rule", ["exact", "sound"])
def test_candidate_sets(benchmark, mnist_test, rule):
    x, book = mnist_test
    pixels = int(x.shape[0] * x.shape[2] * x.shape[3])
    benchmark.group = (f"candidate sets, {x.shape[0]:,} MNIST test images ({pixels:,} pixels), "
                       f"k={book.n_codes}, eps={EPS:g}")
    sets = benchmark(candidate_sets, x, book, EPS, rule=rule, channel_axis=1)
    benchmark.extra_info.update({"rule": rule, "images": int(x.shape[0]), "pixels": pixels, "eps": EPS,
                                 "k": int(book.n_codes),
                                 "ambiguous_pixels": int((np.diff(sets.offsets) > 1).sum())})


def _problem(n_ambiguous=N_AMBIGUOUS):
    codes = np.array([[0.0], [253 / 255]], np.float32)
    base = np.zeros(IMAGE, np.float32)
    positions = np.arange(0, IMAGE, IMAGE // n_ambiguous, dtype=np.int64)[:n_ambiguous]
    offsets = np.arange(0, 2 * n_ambiguous + 1, 2, dtype=np.int64)
    members = np.tile(np.array([0, 1], np.int32), n_ambiguous)
    return codes, base, positions, offsets, members


def _enumerate_info(benchmark, device):
    count = 1 << N_AMBIGUOUS
    benchmark.extra_info.update({"device": device, "images": count, "ambiguous_pixels": N_AMBIGUOUS,
                                 "image_pixels": IMAGE, "output_bytes": count * IMAGE * 4})


@pytest.mark.benchmark(group=ENUMERATE)
def test_enumerate_cpu(benchmark):
    codes, base, positions, offsets, members = _problem()
    out = benchmark(_native.enumerate_candidates, base, positions, IMAGE, offsets, members, codes, 0, 1 << N_AMBIGUOUS)
    assert out.shape == (1 << N_AMBIGUOUS, IMAGE)
    _enumerate_info(benchmark, "cpu")


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.benchmark(group=ENUMERATE)
def test_enumerate_cuda(benchmark):
    codes, base, positions, offsets, members = _problem()
    # Uploads the sets and the mixed-radix strides once; each call writes a fresh batch on the device.
    enumerator = _native.CandidateEnumerator(base, positions, IMAGE, offsets, members, codes, device="cuda")

    def run():
        out = enumerator(0, 1 << N_AMBIGUOUS)
        sync_cuda()
        return out

    out = benchmark(run)
    assert tuple(out.shape) == (1 << N_AMBIGUOUS, IMAGE)
    _enumerate_info(benchmark, "cuda")
