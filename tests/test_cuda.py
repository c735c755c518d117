"""CUDA kernels against the CPU kernels and the NumPy reference (skipped without a CUDA device)."""

import numpy as np
import pytest

import pixdisc

import reference as ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not pixdisc.cuda_available(), reason="no CUDA device (pixdisc.cuda_available() is False)"),
]

METRICS = ("linf", "l1", "l2")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("k", [1, 7, 300, 5000])  # 5000*3 floats exceed shared memory: global path
def test_cuda_nearest_matches_cpu(torch, metric, channels, k):
    rng = np.random.default_rng(k)
    codes = (rng.integers(0, 9, size=(k, channels)) / np.float32(8)).astype(np.float32)  # ties
    x = np.concatenate([rng.random((20000, channels), dtype=np.float32),
                        (rng.integers(0, 17, size=(20000, channels)) / np.float32(16)).astype(np.float32)])
    book = pixdisc.Codebook(codes, metric)
    gpu = book.assign(torch.from_numpy(x).cuda(), channel_axis=-1).cpu().numpy()
    np.testing.assert_array_equal(gpu.reshape(-1), ref.nearest(x, codes, metric))
    out = book.transform(torch.from_numpy(x).cuda(), channel_axis=-1).cpu().numpy()
    np.testing.assert_array_equal(out, book.transform(x))


@pytest.mark.parametrize("channels", [1, 3])
def test_cuda_uint8_nchw(torch, channels):
    rng = np.random.default_rng(0)
    codes = rng.random((50, channels), dtype=np.float32)
    x = rng.integers(0, 256, size=(8, channels, 16, 16), dtype=np.uint8)
    book = pixdisc.Codebook(codes)
    np.testing.assert_array_equal(book.transform(torch.from_numpy(x).cuda()).cpu().numpy(),
                                  book.transform(x, channel_axis=1))
    np.testing.assert_array_equal(book.assign(torch.from_numpy(x).cuda()).cpu().numpy(),
                                  book.assign(x, channel_axis=1))


def test_cuda_rejects_out_of_range(torch):
    x = torch.full((4, 3), 0.5, device="cuda")
    x[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixdisc.Codebook(np.zeros((2, 3), np.float32)).assign(x, channel_axis=-1)


def test_cuda_empty_input(torch):
    book = pixdisc.Codebook(np.zeros((2, 3), np.float32))
    assert book.assign(torch.zeros((0, 3), device="cuda"), channel_axis=-1).shape == (0,)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", ["uint8", "float_grid", "float_any"])
def test_cuda_histogram_matches_cpu(torch, channels, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(30000, channels), dtype=np.uint8)
    if dtype == "float_grid":
        x = x.astype(np.float32) / np.float32(255)
    elif dtype == "float_any":
        x = rng.random((30000, channels), dtype=np.float32)
    values, counts = pixdisc.pixel_histogram(torch.from_numpy(x).cuda(), channel_axis=-1)
    expect_values, expect_counts = pixdisc.pixel_histogram(x)
    np.testing.assert_array_equal(values, expect_values)
    np.testing.assert_array_equal(counts, expect_counts)


def test_cuda_fit_equals_cpu_fit(torch):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(64, 3, 8, 8), dtype=np.uint8)
    gpu = pixdisc.DensityCodebook(20, 0.1).fit(torch.from_numpy(x).cuda())
    cpu = pixdisc.DensityCodebook(20, 0.1).fit(x, channel_axis=1)
    np.testing.assert_array_equal(gpu.codes_, cpu.codes_)


def test_discretize_module_on_cuda(torch):
    from pixdisc.discretize import Discretize

    book = pixdisc.Codebook(np.random.default_rng(3).random((10, 3), dtype=np.float32))
    x = torch.rand(2, 3, 8, 8, device="cuda", requires_grad=True)
    module = Discretize(book).cuda()
    out = module(x)
    out.sum().backward()
    assert x.grad.device.type == "cuda"
    cpu_x = x.detach().cpu().requires_grad_()
    Discretize(book)(cpu_x).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), cpu_x.grad, rtol=1e-4, atol=1e-5)


def test_cuda_enumeration_matches_cpu(torch):
    from pixdisc import _backend

    codes = np.array([[0.0], [0.3], [0.6], [1.0]], np.float32)
    base = np.zeros(12, np.float32)
    positions = np.array([1, 4, 7, 10], np.int64)
    sizes = np.array([2, 3, 2, 4], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    members = np.array([0, 1, 0, 1, 2, 2, 3, 0, 1, 2, 3, 1][: offsets[-1]], np.int32)
    total = int(np.prod(sizes))
    expect = _backend._core.enumerate_candidates(base, positions, 12, offsets, members, codes, 3, total - 3)
    dev = {k: torch.from_numpy(v).cuda() for k, v in dict(
        base=base, positions=positions, offsets=offsets, members=members, codes=codes,
        strides=np.concatenate([[1], np.cumprod(sizes)[:-1]]).astype(np.int64)).items()}
    out = torch.empty((total - 3, 12), device="cuda")
    _backend.require_cuda().enumerate_candidates(
        dev["base"].data_ptr(), 12, dev["positions"].data_ptr(), 12, dev["offsets"].data_ptr(),
        dev["strides"].data_ptr(), dev["members"].data_ptr(), 4, dev["codes"].data_ptr(), 1, 3, total - 3,
        out.data_ptr(), torch.cuda.current_stream().cuda_stream, 0)
    np.testing.assert_array_equal(out.cpu().numpy(), expect)
