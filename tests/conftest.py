"""Shared pytest fixtures: devices to parametrise over and deterministic data."""

import os

import numpy as np
import pytest

import pixdisc

DEVICES = ["cpu"] + (["cuda"] if pixdisc.cuda_available() else [])


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """Decoded data sets are cached in a folder of this session, never in the user's home;
    subprocesses (the CLI tests) inherit it through the environment."""
    previous = os.environ.get("PIXDISC_CACHE_DIR")
    os.environ["PIXDISC_CACHE_DIR"] = str(tmp_path_factory.mktemp("pixdisc-cache"))
    yield
    if previous is None:
        os.environ.pop("PIXDISC_CACHE_DIR", None)
    else:
        os.environ["PIXDISC_CACHE_DIR"] = previous


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module's tiny models: on a shared 2-core machine spinning
    OpenMP threads cost far more than the arithmetic. Restores the setting after."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
