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
    from pixdisc import _native

    codes = np.array([[0.0], [0.3], [0.6], [1.0]], np.float32)
    base = np.zeros(12, np.float32)
    positions = np.array([1, 4, 7, 10], np.int64)
    sizes = np.array([2, 3, 2, 4], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    members = np.array([0, 1, 0, 1, 2, 2, 3, 0, 1, 2, 3, 1][: offsets[-1]], np.int32)
    total = int(np.prod(sizes))
    expect = _native.enumerate_candidates(base, positions, 12, offsets, members, codes, 3, total - 3)
    on_gpu = _native.CandidateEnumerator(base, positions, 12, offsets, members, codes, device="cuda")
    out = on_gpu(3, total - 3)
    assert out.device.type == "cuda"
    np.testing.assert_array_equal(out.cpu().numpy(), expect)
    with pytest.raises(ValueError, match="exceed"):
        on_gpu(total - 1, 2)


# --------------------------------------------------------------------------
# The CUDA bindings check what they are given, as the CPU ones do


def _cuda_index(channels=3):
    from pixdisc import _native

    codes = np.random.default_rng(0).random((5, channels), dtype=np.float32)
    return _native.require_cuda().NearestIndex(codes, 0, 0), _native


def test_cuda_bindings_reject_wrong_dtype_shape_and_layout(torch):
    index, _native = _cuda_index()
    stream = torch.cuda.current_stream().cuda_stream
    x = torch.rand(8, 3, device="cuda")
    out = torch.empty(8, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="float32"):
        index.assign(x.double(), 8, 3, 1, out, stream, True)
    with pytest.raises(ValueError, match="int32"):
        index.assign(x, 8, 3, 1, out.long(), stream, True)
    with pytest.raises(ValueError, match="does not match"):
        index.assign(x, 9, 3, 1, out, stream, True)
    with pytest.raises(ValueError, match="C-contiguous"):
        index.assign(torch.rand(3, 8, device="cuda").t(), 8, 3, 1, out, stream, True)
    with pytest.raises(ValueError, match="channels"):
        index.assign(torch.rand(8, 2, device="cuda"), 8, 2, 1, out, stream, True)
    with pytest.raises(TypeError, match="__cuda_array_interface__"):
        index.assign(x.cpu(), 8, 3, 1, out, stream, True)
    with pytest.raises(ValueError, match="int64"):
        _native.require_cuda().summed_area_table(torch.zeros(256, dtype=torch.int32, device="cuda"), stream)
    with pytest.raises(ValueError, match="256"):
        _native.require_cuda().summed_area_table(torch.zeros(100, dtype=torch.int64, device="cuda"), stream)


def test_cuda_bindings_reject_host_memory_behind_an_interface(torch):
    index, _native = _cuda_index()
    host = np.zeros(24, np.float32)

    class HostPretendingToBeCuda:
        __cuda_array_interface__ = {"shape": (24,), "typestr": "<f4", "data": (host.ctypes.data, False),
                                    "version": 3, "strides": None}

    out = torch.empty(8, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="host memory|not CUDA memory"):
        index.assign(HostPretendingToBeCuda(), 8, 3, 1, out, torch.cuda.current_stream().cuda_stream, True)


@pytest.mark.skipif(not pixdisc.cuda_available() or __import__("torch").cuda.device_count() < 2,
                    reason="needs two CUDA devices")
def test_cuda_bindings_reject_the_wrong_device(torch):
    index, _native = _cuda_index()  # on cuda:0
    x = torch.rand(8, 3, device="cuda:1")
    with pytest.raises(ValueError, match="cuda:1"):
        index.assign(x, 8, 3, 1, torch.empty(8, dtype=torch.int32, device="cuda:1"),
                     torch.cuda.current_stream(1).cuda_stream, True)
    book = pixdisc.Codebook(np.zeros((2, 3), np.float32))
    assert book.assign(x, channel_axis=-1).device == x.device  # the door picks the device's own index


def test_unchecked_transform_defers_the_range_error(torch):
    """The BPDA forward pass does not wait for the GPU: a bad pixel comes out NaN, the next call raises."""
    from pixdisc.discretize import Discretize

    book = pixdisc.Codebook(np.random.default_rng(4).random((6, 3), dtype=np.float32))
    x = torch.rand(2, 3, 4, 4, device="cuda")
    x[0, 1, 2, 2] = 1.5
    out = Discretize(book)(x)
    assert torch.isnan(out[0, :, 2, 2]).all() and not torch.isnan(out[1]).any()
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match=r"\[0, 1\].*earlier"):
        book.transform(torch.rand(2, 3, 4, 4, device="cuda"))
    book.transform(torch.rand(2, 3, 4, 4, device="cuda"))  # reported once, then clear


def test_cuda_neighbourhood_sizes_match_cpu(torch):
    from pixdisc import analysis

    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, size=(2000, 3), dtype=np.uint8)
    for data in (x, x.astype(np.float32) / np.float32(255)):
        colours, sizes = analysis.neighbourhood_sizes(torch.from_numpy(data).cuda(), 4 / 255, channel_axis=-1)
        expect_colours, expect_sizes = analysis.neighbourhood_sizes(data, 4 / 255, channel_axis=-1)
        np.testing.assert_array_equal(colours, expect_colours)
        np.testing.assert_array_equal(sizes, expect_sizes)
    with pytest.raises(ValueError, match="8-bit"):
        analysis.neighbourhood_sizes(torch.rand(100, 3, device="cuda"), 4 / 255, channel_axis=-1)


@pytest.mark.parametrize("tier", ["ibp", "crown-ibp", "crown", "alpha-crown"])
def test_cuda_bound_tiers_match_cpu(torch, tier):
    """Every tier runs on the model's device and gives the CPU's bounds (float64, up to summation order)."""
    from pixdisc.bounds import margin_lower_bound
    from pixdisc.models import cifar_resnet

    torch.manual_seed(0)
    net = cifar_resnet(in_channels=3, depth=10, width=4).double().eval()
    lower = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    upper = lower + 0.01
    y = torch.tensor([0, 1, 2])
    cpu = margin_lower_bound(net, lower, upper, y, method=tier).detach()
    gpu = margin_lower_bound(net.cuda(), lower.cuda(), upper.cuda(), y.cuda(), method=tier).detach()
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-7)


def test_cuda_certify_matches_cpu_under_a_work_budget(torch):
    from pixdisc.certification import Budget, certify
    from pixdisc.models import cifar_resnet

    torch.manual_seed(0)
    net = cifar_resnet(in_channels=3, depth=10, width=4).eval()
    x = np.random.default_rng(0).random((6, 3, 8, 8)).astype(np.float32)
    book = pixdisc.Codebook(np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32))
    with torch.no_grad():
        y = net(torch.from_numpy(np.asarray(book.transform(x, channel_axis=1)))).argmax(1).numpy()
    budget = Budget(nodes=30, seconds=None, work=3000)
    cpu = certify(net, book, x, y, 0.02, budget=budget, executor="serial", progress=False)
    gpu = certify(net, book, x, y, 0.02, budget=budget, executor="serial", progress=False, device="cuda")
    np.testing.assert_array_equal(cpu.outcome, gpu.outcome)
