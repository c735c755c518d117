"""Tests for pixdisc.models: architectures, safe save/load and batched prediction."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from pixdisc.models import (
    MLP,
    MODELS,
    MadryMNIST,
    SmallCNN,
    build_model,
    cifar_resnet,
    load_model,
    predict,
    save_model,
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


# Layer types the bound-propagation module supports.
BOUNDABLE = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear)


@pytest.mark.parametrize(
    ("factory", "input_shape", "classes"),
    [
        (lambda: MadryMNIST(), (2, 1, 28, 28), 10),
        (lambda: SmallCNN(), (2, 1, 28, 28), 10),
        (lambda: SmallCNN(in_channels=3, num_classes=43, width=8, input_size=32), (2, 3, 32, 32), 43),
        (lambda: SmallCNN(input_size=8, width=4, hidden=16), (3, 1, 8, 8), 10),
        (lambda: SmallCNN(input_size=(12, 8), width=4), (1, 1, 12, 8), 10),
        (lambda: MLP(input_size=8, hidden=(32,)), (5, 1, 8, 8), 10),
        (lambda: cifar_resnet(), (2, 3, 32, 32), 10),
        (lambda: cifar_resnet(depth=10, width=8, num_classes=5), (2, 3, 32, 32), 5),
    ],
)
def test_output_shapes(factory, input_shape, classes):
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        logits = model(torch.rand(input_shape))
    assert logits.shape == (input_shape[0], classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["madry_mnist", "small_cnn", "mlp"])
def test_mnist_models_are_plain_sequential_of_boundable_layers(name):
    model = build_model(name)
    assert isinstance(model, nn.Sequential)
    assert all(isinstance(layer, BOUNDABLE) for layer in model)


def test_madry_mnist_layout():
    model = MadryMNIST()
    convolutions = [layer for layer in model if isinstance(layer, nn.Conv2d)]
    linears = [layer for layer in model if isinstance(layer, nn.Linear)]
    assert [(conv.out_channels, conv.kernel_size, conv.padding) for conv in convolutions] == [
        (32, (5, 5), (2, 2)),
        (64, (5, 5), (2, 2)),
    ]
    assert [(linear.in_features, linear.out_features) for linear in linears] == [(7 * 7 * 64, 1024), (1024, 10)]


def test_build_model_registry_and_errors():
    assert set(MODELS) >= {"madry_mnist", "small_cnn", "mlp", "cifar_resnet"}
    model = build_model("small_cnn", in_channels=3, num_classes=7, width=4, input_size=16)
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 7)
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        build_model("resnet9000")
    with pytest.raises(ValueError, match="bad arguments for model 'small_cnn'"):
        build_model("small_cnn", depth=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model("small_cnn", input_size=10)
    with pytest.raises(ValueError, match="depth"):
        build_model("cifar_resnet", in_channels=3, depth=11)


def test_save_load_round_trip(tmp_path: Path):
    torch.manual_seed(1)
    model = build_model("small_cnn", width=4, hidden=16, input_size=8)
    path = tmp_path / "sub" / "model.pt"
    save_model(model, path, meta={"dataset": "digits", "accuracy": 0.9, "codes": [0.0, 1.0]})
    loaded, meta = load_model(path, return_meta=True)
    assert meta == {"dataset": "digits", "accuracy": 0.9, "codes": [0.0, 1.0]}
    assert not loaded.training
    inputs = torch.rand(4, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), loaded(inputs))
    # Atomic write: nothing but the final file is left behind.
    assert os.listdir(path.parent) == ["model.pt"]
    # Saving again over an existing file replaces it.
    save_model(loaded, path, meta={"round": 2})
    assert load_model(path, return_meta=True)[1] == {"round": 2}


def test_save_load_resnet_with_batchnorm_buffers(tmp_path: Path):
    torch.manual_seed(2)
    model = build_model("cifar_resnet", in_channels=3, depth=10, width=4)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))  # moves the BatchNorm running statistics
    path = tmp_path / "resnet.pt"
    save_model(model, path)
    loaded = load_model(path)
    inputs = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), loaded(inputs))


def test_save_model_needs_a_name_for_hand_built_models(tmp_path: Path):
    model = MLP(input_size=4, hidden=(8,))
    with pytest.raises(ValueError, match="name="):
        save_model(model, tmp_path / "m.pt")
    save_model(model, tmp_path / "m.pt", name="mlp", arch_kwargs={"input_size": 4, "hidden": [8]})
    assert isinstance(load_model(tmp_path / "m.pt"), MLP)
    with pytest.raises(ValueError, match="JSON"):
        save_model(model, tmp_path / "m.pt", name="mlp", arch_kwargs={"input_size": 4}, meta={"x": object()})


def test_load_missing_file(tmp_path: Path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(missing)


def test_load_corrupt_file(tmp_path: Path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a torch file at all")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_model(path)
    # A truncated real file is just as clear.
    good = tmp_path / "good.pt"
    save_model(build_model("mlp", input_size=4, hidden=[4]), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_model(truncated)


def test_load_non_pixdisc_files(tmp_path: Path):
    plain_state = tmp_path / "plain_state.pt"
    torch.save(build_model("mlp", input_size=4, hidden=[4]).state_dict(), plain_state)
    with pytest.raises(ValueError, match="plain_state.pt is not a pixdisc model file"):
        load_model(plain_state)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="tensor.pt is not a pixdisc model file"):
        load_model(tensor_file)


def test_load_wrong_architecture(tmp_path: Path):
    path = tmp_path / "wrong.pt"
    save_model(build_model("mlp", input_size=4, hidden=[4]), path)
    payload = torch.load(path, weights_only=True)
    payload["arch_kwargs"] = '{"in_channels": 1, "num_classes": 10, "input_size": 4, "hidden": [5]}'
    torch.save(payload, path)
    with pytest.raises(ValueError, match="wrong.pt: weights do not match architecture 'mlp'"):
        load_model(path)
    payload["arch"] = "not_a_model"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="unknown architecture 'not_a_model'"):
        load_model(path)


class _Exploit:
    """Unpickling this would create a marker file: the safe loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_objects_are_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "pixdisc-model", "payload": _Exploit(str(marker))}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_model(path)
    assert not marker.exists()
    # A bare pickle (not a torch zip) is refused without being executed as well.
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ValueError, match="raw.pkl"):
        load_model(raw)
    assert not marker.exists()


def test_predict_batches_and_restores_mode():
    torch.manual_seed(3)
    model = build_model("mlp", input_size=4, hidden=[8])
    model.train()
    images = torch.rand(37, 1, 4, 4)
    labels = predict(model, images, batch_size=5)
    assert labels.dtype == torch.int64 and labels.shape == (37,)
    with torch.no_grad():
        assert torch.equal(labels, model(images).argmax(1))
    assert model.training
    as_uint8 = (images.numpy() * 255).round().astype(np.uint8)
    assert predict(model, as_uint8).shape == (37,)
    assert predict(model, images[:0]).shape == (0,)
