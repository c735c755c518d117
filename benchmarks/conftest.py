"""Benchmark fixtures: data sets of real sizes, built once per session."""

import os

import numpy as np
import pytest

from synthetic import cifar_like, mnist_like


@pytest.fixture(scope="session")
def mnist_train_pixels():
    """47M uint8 gray pixels: the size of the MNIST training set."""
    return mnist_like(60_000)


@pytest.fixture(scope="session")
def cifar_train_images():
    """51M uint8 RGB pixels: the size of the CIFAR-10 training set."""
    return cifar_like(50_000)


@pytest.fixture(scope="session")
def rgb_float_pixels():
    """10M float32 RGB pixels."""
    return np.random.default_rng(1).random((10_000_000, 3), dtype=np.float32)


@pytest.fixture(scope="session")
def codes_k300(cifar_train_images):
    import pixdisc

    return pixdisc.DensityCodebook(300, 16 / 255).fit(cifar_train_images[:5000]).codes_



_LOAD_AT_START = os.getloadavg()
# Settings that change the timings; a run that set them is reproduced only with them.
_ENVIRONMENT = ("OMP_NUM_THREADS", "PIXDISC_BENCH_TORCH_THREADS")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record what the timings ran beside: cores, native threads, settings, and the load average before and after.

    torch's threads are per benchmark (`extra_info["torch_threads"]`): a
    fixture may pin them for a module and restore them before this runs.
    """
    import pixdisc

    environment = {name: os.environ[name] for name in _ENVIRONMENT if name in os.environ}
    prefix = "".join(f"{name}={value} " for name, value in environment.items())
    output_json["run"] = {"cores": os.cpu_count(), "pixdisc_threads": pixdisc.get_num_threads(),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "environment": environment,
                          "load_before": _LOAD_AT_START[0], "load_after": os.getloadavg()[0],
                          "load_averages_before": list(_LOAD_AT_START), "load_averages_after": list(os.getloadavg()),
                          "command": prefix + "python -m pytest " + " ".join(config.invocation_params.args)}
