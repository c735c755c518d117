"""Candidate generation and S(x) enumeration for the certificate (pytest-benchmark; CPU, and CUDA when present).

Run: pytest benchmarks/test_bench_certify.py --benchmark-only
"""

import numpy as np
import pytest

import pixdisc
from pixdisc import _backend
from pixdisc.candidates import candidate_sets

from timing import sync_cuda

CUDA = pixdisc.cuda_available()


@pytest.fixture(scope="module")
def mnist_test():
    from pixdisc.datasets import as_float_nchw, load_mnist5k

    data = load_mnist5k()
    return as_float_nchw(data.x_test), pixdisc.DensityCodebook(2, 0.6).fit(data.x_train)


@pytest.mark.benchmark(group="candidate sets, 1,000 MNIST test images (784k pixels), k=2, eps=0.3")
@pytest.mark.parametrize("rule", ["exact", "sound"])
def test_candidate_sets(benchmark, mnist_test, rule):
    x, book = mnist_test
    sets = benchmark(candidate_sets, x, book, 0.3, rule=rule, channel_axis=1)
    benchmark.extra_info["ambiguous_pixels"] = int((np.diff(sets.offsets) > 1).sum())


def _problem(n_ambiguous=16):
    codes = np.array([[0.0], [253 / 255]], np.float32)
    base = np.zeros(784, np.float32)
    positions = np.arange(0, 784, 784 // n_ambiguous, dtype=np.int64)[:n_ambiguous]
    offsets = np.arange(0, 2 * n_ambiguous + 1, 2, dtype=np.int64)
    members = np.tile(np.array([0, 1], np.int32), n_ambiguous)
    return codes, base, positions, offsets, members


@pytest.mark.benchmark(group="enumerate 65,536 candidate images of S(x) (16 ambiguous pixels, 28x28)")
def test_enumerate_cpu(benchmark):
    codes, base, positions, offsets, members = _problem()
    out = benchmark(_backend._core.enumerate_candidates, base, positions, 784, offsets, members, codes, 0, 1 << 16)
    assert out.shape == (1 << 16, 784)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.benchmark(group="enumerate 65,536 candidate images of S(x) (16 ambiguous pixels, 28x28)")
def test_enumerate_cuda(benchmark):
    import torch

    codes, base, positions, offsets, members = _problem()
    strides = (1 << np.arange(16)).astype(np.int64)
    dev = {k: torch.from_numpy(v).cuda() for k, v in dict(base=base, positions=positions, offsets=offsets,
                                                           members=members, codes=codes, strides=strides).items()}
    out = torch.empty((1 << 16, 784), device="cuda")
    cuda = _backend.require_cuda()

    def run():
        cuda.enumerate_candidates(dev["base"].data_ptr(), 784, dev["positions"].data_ptr(), 784,
                                  dev["offsets"].data_ptr(), dev["strides"].data_ptr(), dev["members"].data_ptr(), 16,
                                  dev["codes"].data_ptr(), 1, 0, 1 << 16, out.data_ptr(),
                                  torch.cuda.current_stream().cuda_stream, 0)
        sync_cuda()

    benchmark(run)
