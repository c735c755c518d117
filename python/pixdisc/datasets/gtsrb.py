"""GTSRB traffic signs from the official folders: ROI crops, a dark-image filter, a split by track."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .core import Dataset, DatasetNotFoundError, PathLike, _first_existing, _require_dir
from .splits import _stratified_split

_GTSRB_CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)",
    "Speed limit (60km/h)", "Speed limit (70km/h)", "Speed limit (80km/h)",
    "End of speed limit (80km/h)", "Speed limit (100km/h)", "Speed limit (120km/h)",
    "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop",
    "No vehicles", "Vehicles over 3.5 metric tons prohibited", "No entry",
    "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right",
    "Road work", "Traffic signals", "Pedestrians", "Children crossing",
    "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing",
    "End of all speed and passing limits", "Turn right ahead", "Turn left ahead",
    "Ahead only", "Go straight or right", "Go straight or left", "Keep right",
    "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)

_GTSRB_HELP = (
    "Download GTSRB_Final_Training_Images.zip (and optionally GTSRB_Final_Test_Images.zip with "
    "GTSRB_Final_Test_GT.zip) from https://benchmark.ini.rub.de/gtsrb_dataset.html, unzip them "
    "into one directory (it creates GTSRB/Final_Training/Images/<class>/ and "
    "GTSRB/Final_Test/Images/; put GT-final_test.csv in Final_Test/Images/) and pass it as --data-dir."
)
_GTSRB_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
# Training file names are <track>_<image>.ppm: the ~30 images of a track are one
# physical sign, so the fallback split holds out whole tracks.
_GTSRB_TRACK = re.compile(r"^(\d+)_\d+\.ppm$", re.IGNORECASE)


@dataclass(frozen=True)
class _GtsrbEntry:
    image: Path
    width: int
    height: int
    roi: tuple[int, int, int, int]
    label: int
    group: str


def _read_gtsrb_csv(csv_path: Path, image_dir: Path) -> list[_GtsrbEntry]:
    entries = []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file, delimiter=";")
            fields = [field.strip() for field in (reader.fieldnames or [])]
            reader.fieldnames = fields
            missing = [column for column in _GTSRB_COLUMNS if column not in fields]
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {';'.join(fields)})")
            for line, row in enumerate(reader, start=2):
                try:
                    width, height, x1, y1, x2, y2, label = (
                        int(row[column]) for column in _GTSRB_COLUMNS[1:]
                    )
                except (TypeError, ValueError) as error:
                    raise ValueError(f"{csv_path}, line {line}: malformed row {row}") from error
                if not 0 <= label < len(_GTSRB_CLASSES):
                    raise ValueError(f"{csv_path}, line {line}: ClassId {label} not in 0..{len(_GTSRB_CLASSES) - 1}")
                filename = row["Filename"].strip()
                track = _GTSRB_TRACK.match(filename)
                group = f"{label}/{track.group(1) if track else filename}"
                entries.append(_GtsrbEntry(image_dir / filename, width, height, (x1, y1, x2, y2), label, group))
    except UnicodeDecodeError as error:
        raise ValueError(f"{csv_path}: not a text CSV file") from error
    return entries


def _load_gtsrb_image(entry: _GtsrbEntry, size: int) -> tuple[np.ndarray, float]:
    """ROI crop resized to size x size, and the crop's mean intensity (0..255) before resizing."""
    from PIL import Image

    try:
        with Image.open(entry.image) as opened:
            image = opened.convert("RGB")
    except FileNotFoundError as error:
        raise ValueError(f"{entry.image}: listed in the GTSRB annotations but missing") from error
    except OSError as error:  # includes PIL.UnidentifiedImageError
        raise ValueError(f"{entry.image}: cannot read image ({error})") from error
    if image.size != (entry.width, entry.height):
        raise ValueError(f"{entry.image}: size {image.size} differs from the annotated {(entry.width, entry.height)}")
    # GTSRB's Roi.X2/Roi.Y2 are the lower-right pixel itself (inclusive), hence the +1.
    x1, y1, x2, y2 = entry.roi
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, entry.width - 1), min(y2, entry.height - 1)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{entry.image}: empty ROI {entry.roi}")
    crop = image.crop((x1, y1, x2 + 1, y2 + 1))
    mean_intensity = float(np.asarray(crop, dtype=np.float64).mean())
    if crop.size != (size, size):
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8), mean_intensity


def _load_gtsrb_entries(
    entries: Sequence[_GtsrbEntry], size: int, min_mean_intensity: float
) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(entries), size, size, 3), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int64)
    kept = 0
    for entry in entries:
        pixels, mean_intensity = _load_gtsrb_image(entry, size)
        if mean_intensity < min_mean_intensity:
            continue
        images[kept], labels[kept] = pixels, entry.label
        kept += 1
    return images[:kept].copy(), labels[:kept].copy()


def _group_split(groups: Sequence[str], labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of whole groups (tracks): each class sends round(test_fraction * tracks) tracks to test."""
    unique_groups, group_of_item = np.unique(np.asarray(groups), return_inverse=True)
    group_labels = np.zeros(len(unique_groups), dtype=np.int64)
    group_labels[group_of_item] = labels
    _, test_groups = _stratified_split(group_labels, test_fraction)
    is_test = np.isin(group_of_item, test_groups)
    # Keep file order inside each split: reading stays sequential on disk.
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_gtsrb(
    data_dir: PathLike,
    size: int = 32,
    min_mean_intensity: float = 50.0,
    test_fraction: float = 0.2,
) -> Dataset:
    """GTSRB traffic signs (43 classes): ROI-cropped, resized to ``size`` x ``size`` RGB (bilinear).

    Images whose ROI crop has a mean intensity (0..255, over all channels)
    below ``min_mean_intensity`` are dropped from both splits (the paper's
    dark-image filter; 0 keeps everything).

    ``data_dir`` is the folder holding ``Final_Training/`` or its parent with a
    ``GTSRB/`` subfolder. Test set: the official ``Final_Test/Images/`` with
    ``GT-final_test.csv`` (searched in ``Final_Test/Images/``, ``Final_Test/`` and
    the root) when present; otherwise whole tracks of the training set
    (round(``test_fraction`` x tracks) per class, fixed seed) are held out, so
    that near-identical frames of one sign never straddle the split.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    base = _require_dir(data_dir, "gtsrb", _GTSRB_HELP)
    roots = [base, base / "GTSRB"]
    root = next((candidate for candidate in roots if (candidate / "Final_Training" / "Images").is_dir()), None)
    if root is None:
        raise DatasetNotFoundError(
            f"Could not find the GTSRB training images (Final_Training/Images/). {_GTSRB_HELP}",
            searched=[candidate / "Final_Training" / "Images" for candidate in roots],
        )
    train_dir = root / "Final_Training" / "Images"
    train_entries: list[_GtsrbEntry] = []
    for class_dir in sorted(path for path in train_dir.iterdir() if path.is_dir()):
        csv_path = class_dir / f"GT-{class_dir.name}.csv"
        if not csv_path.is_file():
            raise ValueError(f"{class_dir}: class folder without its annotation file {csv_path.name}")
        train_entries.extend(_read_gtsrb_csv(csv_path, class_dir))
    if not train_entries:
        raise DatasetNotFoundError(f"No annotated images in {train_dir}. {_GTSRB_HELP}", searched=[train_dir])

    test_images_dir = root / "Final_Test" / "Images"
    test_csv = _first_existing(
        directory / "GT-final_test.csv" for directory in (test_images_dir, root / "Final_Test", root)
    )
    if test_csv is not None and test_images_dir.is_dir():
        test_entries = _read_gtsrb_csv(test_csv, test_images_dir)
    else:
        labels = np.array([entry.label for entry in train_entries], dtype=np.int64)
        train_index, test_index = _group_split([entry.group for entry in train_entries], labels, test_fraction)
        test_entries = [train_entries[index] for index in test_index]
        train_entries = [train_entries[index] for index in train_index]

    x_train, y_train = _load_gtsrb_entries(train_entries, size, min_mean_intensity)
    x_test, y_test = _load_gtsrb_entries(test_entries, size, min_mean_intensity)
    return Dataset(
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        name="gtsrb", num_classes=len(_GTSRB_CLASSES), classes=_GTSRB_CLASSES,
    )
