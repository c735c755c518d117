"""BPDA through Discretize against a naive torch BPDA, and PGD attack steps per second (pytest-benchmark).

Run (the README's torch-layer table is written from the JSON by benchmarks/readme_tables.py):

    PIXDISC_BENCH_TORCH_THREADS=1 python -m pytest benchmarks/test_bench_torch.py --benchmark-only --benchmark-json=benchmarks/torch.json

Time: median of forward + backward (the BPDA gradient w.r.t. the input).
Memory: ``extra_info["peak_mib"]`` is the peak resident-memory increase of
one forward + backward, measured in a fresh subprocess (Linux: VmHWM after
the call minus VmRSS before it, the high-water mark reset through
/proc/self/clear_refs), so that memory freed by earlier benchmarks cannot
hide the allocations. torch's CPU allocator has no public peak statistic and
tracemalloc does not see its allocations, hence the process-level measure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixdisc  # noqa: E402
from pixdisc.attacks import pgd_perturb  # noqa: E402
from pixdisc.discretize import Discretize, soft_discretize  # noqa: E402
from pixdisc.models import build_model  # noqa: E402

from timing import sync_cuda  # noqa: E402

CUDA = pixdisc.cuda_available() and torch.cuda.is_available()


@pytest.fixture(autouse=True, scope="module")
def _torch_threads():
    """PIXDISC_BENCH_TORCH_THREADS=N pins torch's CPU threads (on a shared machine 1 is steadier); default: torch's."""
    count = os.environ.get("PIXDISC_BENCH_TORCH_THREADS")
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _record_threads(benchmark):
    """Each row says the torch threads it ran on (the module fixture restores them before the JSON is written)."""
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()

DEVICES = ["cpu"] + (["cuda"] if CUDA else [])

# (name, batch shape, k). The k=300 RGB batch is 64 images, not 256: the naive
# version materialises (pixels, k, C) float32 tensors, 0.9 GB each at 256 images.
CASES = {
    "mnist_k2": ((256, 1, 28, 28), 2),
    "rgb_k300": ((64, 3, 32, 32), 300),
}
ALPHA = 10.0


def _codes(k: int, channels: int) -> np.ndarray:
    if k == 2:
        return np.array([[0.0], [253 / 255]], dtype=np.float32)
    return np.random.default_rng(0).random((k, channels), dtype=np.float32)


def naive_bpda(x: "torch.Tensor", codes: "torch.Tensor", alpha: float) -> "torch.Tensor":
    """BPDA the way one writes it in plain torch: hard nearest code forward, autograd of g backward.

    All pixels at once, ``(pixels, k, C)`` temporaries kept by autograd; the
    straight-through form ``hard + g - g.detach()`` has the value of T and the
    gradient of g.
    """
    channels = codes.shape[1]
    pixels = x.movedim(1, -1).reshape(-1, channels)
    distances = (pixels[:, None, :] - codes[None, :, :]).abs().amax(dim=-1)
    hard = codes[distances.argmin(dim=1)]
    soft = soft_discretize(pixels, codes, alpha, "linf")
    out = hard.detach() + soft - soft.detach()
    return out.reshape(*x.movedim(1, -1).shape).movedim(-1, 1)


def _inputs(case: str, device: str):
    shape, k = CASES[case]
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=generator).to(device)
    upstream = torch.randn(shape, generator=generator).to(device)
    return x, upstream, _codes(k, shape[1])


def _forward_backward(layer, x, upstream):
    x = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad((layer(x) * upstream).sum(), x)
    return gradient


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = {paths!r}
    import numpy as np, torch
    import pixdisc
    from test_bench_torch import _forward_backward, _inputs, naive_bpda, ALPHA
    from pixdisc.discretize import Discretize

    def rss_kib(field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    torch.set_num_threads({threads})
    x, upstream, codes = _inputs({case!r}, "cpu")
    if {kind!r} == "pixdisc":
        layer = Discretize(pixdisc.Codebook(codes), alpha=ALPHA)
    else:
        table = torch.from_numpy(codes)
        layer = lambda images: naive_bpda(images, table, ALPHA)
    before = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak-RSS high-water mark
    _forward_backward(layer, x, upstream)
    print(json.dumps({{"peak_mib": (rss_kib("VmHWM") - before) / 1024}}))
    """
)


def _peak_mib(case: str, kind: str) -> float | None:
    """Peak RSS increase of one CPU forward+backward in a fresh interpreter; None where /proc is missing."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    paths = [str(Path(__file__).parent), str(Path(pixdisc.__file__).parent.parent)]
    script = _PEAK_SCRIPT.format(paths=paths, case=case, kind=kind, threads=torch.get_num_threads())
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        return None
    return round(json.loads(completed.stdout.strip().splitlines()[-1])["peak_mib"], 1)


# --- BPDA forward + backward --------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_bpda_pixdisc(benchmark, case, device):
    x, upstream, codes = _inputs(case, device)
    layer = Discretize(pixdisc.Codebook(codes), alpha=ALPHA).to(device)
    benchmark.group = f"BPDA forward+backward {case} {tuple(x.shape)} {device}"

    def run():
        gradient = _forward_backward(layer, x, upstream)
        if device == "cuda":
            sync_cuda()
        return gradient

    gradient = benchmark(run)
    # Same gradient as the naive version: the closed form is the autograd of g. Exact
    # l_inf ties between channels (random RGB codes) split the gradient differently
    # in autograd's amax, so a handful of pixels may differ.
    expected = _forward_backward(lambda images: naive_bpda(images, torch.from_numpy(codes).to(device), ALPHA),
                                 x, upstream)
    close = torch.isclose(gradient, expected, rtol=1e-4, atol=1e-5)
    assert float(close.float().mean()) > 0.999
    if device == "cpu":
        benchmark.extra_info["peak_mib"] = _peak_mib(case, "pixdisc")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_bpda_naive_torch(benchmark, case, device):
    x, upstream, codes = _inputs(case, device)
    table = torch.from_numpy(codes).to(device)
    benchmark.group = f"BPDA forward+backward {case} {tuple(x.shape)} {device}"

    def run():
        gradient = _forward_backward(lambda images: naive_bpda(images, table, ALPHA), x, upstream)
        if device == "cuda":
            sync_cuda()
        return gradient

    benchmark.pedantic(run, rounds=5 if case == "rgb_k300" else 20, warmup_rounds=1)
    if device == "cpu":
        benchmark.extra_info["peak_mib"] = _peak_mib(case, "naive")


# --- attack steps per second ----------------------------------------------------------------------

PGD_STEPS = 10
PGD_BATCH = 256


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("defended", [False, True], ids=["bare", "discretize"])
def test_pgd_steps_per_second(benchmark, defended, device):
    torch.manual_seed(0)
    network = build_model("small_cnn").to(device).eval()
    model = torch.nn.Sequential(Discretize(pixdisc.Codebook(_codes(2, 1)), alpha=ALPHA), network).to(device).eval()
    model = model if defended else network
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((PGD_BATCH, 1, 28, 28), generator=generator).to(device)
    y = torch.randint(0, 10, (PGD_BATCH,), generator=generator).to(device)
    benchmark.group = f"PGD, SmallCNN, {PGD_BATCH} MNIST-size images, {PGD_STEPS} steps, {device}"

    def run():
        # pgd_perturb: every step runs on every image (no early exit), so the rate is exact.
        out = pgd_perturb(model, x, y, eps=0.3, steps=PGD_STEPS, step_size=0.01,
                          generator=torch.Generator().manual_seed(2))
        if device == "cuda":
            sync_cuda()
        return out

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["steps_per_second"] = round(PGD_STEPS / median, 2)
    benchmark.extra_info["image_steps_per_second"] = round(PGD_STEPS * PGD_BATCH / median, 1)
