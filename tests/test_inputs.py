"""The one place for input checks: eps, images, labels, the channel rule and defended models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixdisc  # noqa: E402
from pixdisc.inputs import as_float_nchw, as_images, as_labels, check_channels, check_eps, split_defended


def test_eps_is_a_finite_number_at_least_zero():
    assert check_eps(0) == 0.0 and check_eps(np.float32(0.25)) == 0.25
    assert check_eps(np.array(0.5)) == 0.5 and check_eps(torch.tensor(0.125)) == 0.125
    for bad in (-0.1, float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            check_eps(bad)


def test_images_uint8_means_v_over_255_and_floats_must_lie_in_the_unit_range():
    pixels = np.array([[0, 51, 255]], np.uint8)
    assert torch.equal(as_images(pixels), torch.tensor([[0.0, 0.2, 1.0]]))
    assert as_images(np.zeros((2, 3), np.float64)).dtype == torch.float64
    assert as_images(np.zeros((2, 3), np.float64), dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\[0, 1\].*got values in \[0, 2\]"):
        as_images(np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        as_images(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="dtype"):
        as_images(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="NCHW"):
        as_images(np.zeros((2, 3), np.float32), min_ndim=3)
    nchw = as_float_nchw(np.full((1, 2, 2, 3), 255, np.uint8))
    assert nchw.shape == (1, 3, 2, 2) and nchw.flags.c_contiguous and (nchw == 1).all()


def test_labels_are_one_non_negative_integer_per_image():
    assert as_labels([2, 0], 2).dtype == torch.int64
    with pytest.raises(ValueError, match="integer class labels"):
        as_labels([0.0, 1.0], 2)
    with pytest.raises(ValueError, match=r"shape \(3,\).*labels"):
        as_labels([0, 1], 3)
    with pytest.raises(ValueError, match="negative"):
        as_labels([0, -1], 2)


def test_a_codebook_needs_the_images_channels_or_one():
    gray = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))
    rgb = pixdisc.Codebook(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32))
    check_channels(gray, (3, 4, 4))  # every value alone
    check_channels(rgb, (3, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\) have 1 channel but codes.npz has 3-channel codes"):
        check_channels(rgb, (1, 4, 4), codebook_name="codes.npz")


def test_split_defended_takes_the_discretizer_off_the_front():
    book = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))
    net = torch.nn.Linear(4, 2)
    defense, rest = split_defended(torch.nn.Sequential(pixdisc.Discretize(book), net))
    assert isinstance(defense, pixdisc.Discretize) and rest is net
    defense, rest = split_defended(torch.nn.Sequential(pixdisc.Discretize(book), torch.nn.Flatten(), net))
    assert isinstance(rest, torch.nn.Sequential) and len(rest) == 2
    assert split_defended(net) == (None, net)
    with pytest.raises(ValueError, match="the S\\(x\\) attack needs a defended model"):
        split_defended(net, required_by="the S(x) attack")
    with pytest.raises(ValueError, match="no network after"):
        split_defended(torch.nn.Sequential(pixdisc.Discretize(book)))
