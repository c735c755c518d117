"""The NIPS-2017 adversarial competition's ImageNet dev set (1,000 PNGs and a label CSV), as a test split."""

from __future__ import annotations

import csv

import numpy as np

from .core import Dataset, DatasetNotFoundError, PathLike, _first_existing, _require_dir

_IMAGENET_DEV_HELP = (
    "Use the NIPS-2017 adversarial competition development set: a folder with images/<ImageId>.png "
    "and images.csv (or dev_dataset.csv) with columns ImageId,...,TrueLabel,...; pass it as --data-dir."
)
_IMAGENET_CLASSES = tuple(str(index) for index in range(1000))


def load_imagenet_dev(data_dir: PathLike) -> Dataset:
    """The NIPS-2017 ImageNet dev set (1,000 images, 299x299 RGB), all of it as the test split.

    It has no training part: ``x_train``/``y_train`` are empty with the test
    images' shape. ``TrueLabel`` in the CSV is 1..1000 (index 0 of the
    competition's Inception-v3 is "background"); labels here are 0-based,
    ``TrueLabel - 1``, i.e. the usual 1000-class ImageNet index. Class names
    are those indices as strings (no ImageNet metadata ships offline).
    Images keep the CSV's row order and must all have the same size.
    """
    from PIL import Image

    root = _require_dir(data_dir, "imagenet_dev", _IMAGENET_DEV_HELP)
    csv_candidates = [root / name for name in ("images.csv", "dev_dataset.csv")]
    csv_candidates += [root / "images" / name for name in ("images.csv", "dev_dataset.csv")]
    csv_path = _first_existing(csv_candidates)
    image_dir = root / "images" if (root / "images").is_dir() else root
    if csv_path is None:
        raise DatasetNotFoundError(
            f"Could not find the dev set's label file. {_IMAGENET_DEV_HELP}", searched=csv_candidates
        )

    rows: list[tuple[str, int]] = []
    with open(csv_path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        fields = reader.fieldnames or []
        if "ImageId" not in fields or "TrueLabel" not in fields:
            raise ValueError(f"{csv_path}: needs ImageId and TrueLabel columns (header: {','.join(fields)})")
        for line, row in enumerate(reader, start=2):
            try:
                true_label = int(row["TrueLabel"])
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{csv_path}, line {line}: TrueLabel {row['TrueLabel']!r} is not an integer"
                ) from error
            if not 1 <= true_label <= 1000:
                raise ValueError(f"{csv_path}, line {line}: TrueLabel {true_label} not in 1..1000")
            rows.append((row["ImageId"].strip(), true_label - 1))

    images: np.ndarray | None = None
    for index, (image_id, _) in enumerate(rows):
        path = image_dir / f"{image_id}.png"
        try:
            with Image.open(path) as opened:
                pixels = np.asarray(opened.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError as error:
            raise ValueError(f"{csv_path} lists image {image_id} but {path} is missing") from error
        except OSError as error:
            raise ValueError(f"{path}: cannot read image ({error})") from error
        if images is None:
            images = np.empty((len(rows), *pixels.shape), dtype=np.uint8)
        elif pixels.shape != images.shape[1:]:
            raise ValueError(f"{path}: shape {pixels.shape} differs from the other images' {images.shape[1:]}")
        images[index] = pixels
    if images is None:  # an empty CSV: keep the documented 299x299 RGB shape
        images = np.empty((0, 299, 299, 3), dtype=np.uint8)
    labels = np.array([label for _, label in rows], dtype=np.int64)
    return Dataset(
        x_train=np.empty((0, *images.shape[1:]), dtype=np.uint8), y_train=np.empty(0, dtype=np.int64),
        x_test=images, y_test=labels,
        name="imagenet_dev", num_classes=1000, classes=_IMAGENET_CLASSES,
    )
