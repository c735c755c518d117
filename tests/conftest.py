"""Shared pytest fixtures: devices to parametrise over and deterministic data."""

import numpy as np
import pytest

import pixdisc

DEVICES = ["cpu"] + (["cuda"] if pixdisc.cuda_available() else [])


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
