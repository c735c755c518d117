"""What the subcommands share: errors and exit codes, loading user files and data, reporting."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..profiles import PAPER_BUDGETS, dataset_key, profile


# Exit codes: 0 success, 1 a data/input problem (message on stderr), 2 bad usage
# (argparse, or a contradictory combination of options), 3 an internal error (a
# bug: message, version, --debug for the traceback), 130 interrupted (Ctrl-C).
EXIT_OK, EXIT_INPUT_ERROR, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# pixdisc.train.SETTINGS, spelled out so that building the parser does not import
# torch (tests/test_startup.py checks the two agree).
SETTINGS = ("nat_pre", "adv_pre", "disc_nat_pre", "disc_adv_pre", "disc_nat_re", "disc_adv_re")


class CommandError(Exception):
    """A problem with the user's data or files; printed without a traceback, exit 1."""


class UsageError(CommandError):
    """Options that do not go together; printed with the subcommand's usage line, exit 2."""


# ---------------------------------------------------------------- option types: nonsense is refused at parse time


def _bounded(kind: type, low: float, high: Optional[float] = None, *, open_low: bool = False,
             open_high: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind`` parsed from text and checked against [low, high] (open ends as asked)."""
    lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
    wanted = f"a number in {lo}{low:g}, {'inf' if high is None else f'{high:g}'}{hi}" if kind is float else (
        f"an integer >= {low:g}" if high is None else f"an integer in [{low:g}, {high:g}]")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        bad_low = value <= low if open_low else value < low
        bad_high = high is not None and (value >= high if open_high else value > high)
        if bad_low or bad_high or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text} is not {wanted}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _bounded(int, 1)
nonnegative_int = _bounded(int, 0)
unit_float = _bounded(float, 0.0, 1.0)  # eps and radii on the [0, 1] pixel scale
positive_float = _bounded(float, 0.0, open_low=True)
nonnegative_float = _bounded(float, 0.0)
probability = _bounded(float, 0.0, 1.0, open_low=True, open_high=True)


def positive_float_or_none(text: str) -> Optional[float]:
    """A positive number, or ``none`` (no limit)."""
    return None if text.strip().lower() == "none" else positive_float(text)


positive_float_or_none.__name__ = "float"


# ---------------------------------------------------------------- one vocabulary for the same thing everywhere


def add_model_argument(p: argparse.ArgumentParser, help: str) -> None:
    """The model file: positional; ``--model FILE`` is accepted as well (older spelling)."""
    p.add_argument("model", type=Path, nargs="?", metavar="MODEL", help=help)
    p.add_argument("--model", dest="model_option", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(_needs_model=True)


def add_codebook_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--codebook FILE`` (``--codes`` is accepted as well)."""
    p.add_argument("--codebook", type=Path, metavar="FILE", help=help)
    p.add_argument("--codes", dest="codebook", type=Path, help=argparse.SUPPRESS)


def add_checkpoint_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--checkpoint FILE`` (``--resume`` is accepted as well)."""
    p.add_argument("--checkpoint", type=Path, metavar="FILE", default=None, help=help)
    p.add_argument("--resume", dest="checkpoint", type=Path, help=argparse.SUPPRESS)


def add_output_option(p: argparse.ArgumentParser, default: Optional[Path], help: str) -> None:
    """``-o/--output`` (``--out`` is accepted as well)."""
    p.add_argument("-o", "--output", type=Path, default=default, metavar="PATH", help=help)
    p.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)


def add_force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")


def refuse_overwrite(path: Path, force: bool) -> None:
    """Existing outputs are never replaced silently."""
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it or -o to write elsewhere")


def check_output_folder(path: Path) -> None:
    """A report folder (demo, evaluate, reproduce) must be creatable: no file where it or a parent should be."""
    for place in (path, *path.parents):
        if place.exists():
            if place.is_dir():
                return
            where = "" if place == path else f", so the report folder {path} cannot be made there"
            raise UsageError(f"{place} is a file, not a folder{where}: -o names the report folder to write "
                             f"(a new one, or the folder of an earlier run to resume it); pass another -o, "
                             f"or move {place} away")


def dataset_name(text: str) -> str:
    """An argparse type: a data set name of pixdisc.datasets.DATASETS (``-`` and ``_`` interchangeable)."""
    from ..datasets import DATASETS

    key = dataset_key(text)
    if key not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown data set {text!r}; choose from {', '.join(DATASETS)}")
    return key


def add_data_options(p: argparse.ArgumentParser, default: Optional[str] = "mnist5k",
                     default_text: Optional[str] = None) -> None:
    from ..datasets import DATASETS

    default_text = default_text or ("mnist5k, the embedded MNIST subset" if default == "mnist5k" else str(default))
    p.add_argument("--dataset", type=dataset_name, default=default, metavar="NAME",
                   help=f"data set, one of {', '.join(DATASETS)} (default: {default_text})")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="folder holding the data set's files")


# torch is imported inside the helpers so that `pixdisc codebook` works without it.


def progress_enabled(args: argparse.Namespace) -> bool:
    # Bars go to stderr; they are off for --quiet, and for --json so that a
    # pipeline sees nothing but the report.
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_codebook_file(path: Path):
    import zipfile

    from .. import load_codebook

    if path.suffix == ".npz" and path.is_file():
        # Check the archive first: np.load leaks its file handle on a truncated .npz.
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError) as exc:
            raise CommandError(f"{path} is not a valid pixdisc codebook (not a complete .npz archive: "
                               f"{first_line(exc)})") from None
        if damaged is not None:
            raise CommandError(f"{path} is not a valid pixdisc codebook (damaged member {damaged})")
    try:
        return load_codebook(path)
    except FileNotFoundError as exc:
        raise CommandError(f"codebook file not found: {path} (make one with `pixdisc codes ... -o {path}`)") from exc
    except ValueError as exc:
        raise CommandError(first_line(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - e.g. zipfile.BadZipFile from a truncated .npz
        raise CommandError(f"{path} is not a valid pixdisc codebook ({first_line(exc)})") from exc


def load_model_file(path: Path, device: Optional[str]) -> Tuple[Any, Dict[str, Any]]:
    from ..models import load_model

    try:
        model, meta = load_model(path, map_location=device or "cpu", return_meta=True)
    except FileNotFoundError as exc:
        raise CommandError(f"model file not found: {path} (train one with `pixdisc train -o {path}`)") from exc
    except ValueError as exc:
        raise CommandError(first_line(exc)) from exc
    return model, meta if isinstance(meta, dict) else {}


def load_split(dataset: str, data_dir: Optional[Path], split: str, limit: Optional[int]):
    """(x, y, dataset) of one split as float NCHW / int64 tensors; ``limit`` keeps a prefix (the splits are shuffled)."""
    import torch

    from .. import datasets

    if limit is not None and limit < 1:
        raise CommandError(f"--limit must be >= 1, got {limit}")
    data = datasets.load_dataset(dataset, data_dir)
    images, labels = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if len(images) == 0:
        raise CommandError(f"{dataset}: the {split} split is empty")
    return torch.from_numpy(datasets.as_float_nchw(images)), torch.from_numpy(labels), data


def check_model_fits(model: Any, x: Any, num_classes: int, what: str) -> None:
    """Run the model on one image so that a shape mismatch is a message, not a traceback from inside torch."""
    import torch

    try:
        with torch.no_grad():
            logits = model.eval()(x[:1].to(next(iter(model.parameters())).device))
    except (RuntimeError, ValueError) as exc:
        raise CommandError(f"{what} does not accept images of shape {tuple(x.shape[1:])} "
                           f"({first_line(exc)})") from None
    if logits.ndim != 2 or logits.shape[1] < num_classes:
        raise CommandError(f"{what} returns {tuple(logits.shape[1:])} outputs per image, but the data set "
                           f"has {num_classes} classes")


def check_codebook_fits(codebook: Any, x: Any, source: str, dataset: str) -> None:
    """A codebook whose channels fit none of the data set's images is the user's problem: say which file, and
    how to make one that fits."""
    from ..inputs import check_channels

    try:
        check_channels(codebook, tuple(x.shape[1:]), codebook_name=source, images_name=f"{dataset} images")
    except ValueError as exc:
        raise CommandError(f"{exc} (fit one on this data set: `pixdisc codebook --dataset {dataset}`)") from None


def defense_from_meta(meta: Dict[str, Any]):
    from ..codebook import Codebook

    spec = meta.get("defense")
    if not isinstance(spec, dict) or "codes" not in spec:
        return None
    try:
        return Codebook(np.asarray(spec["codes"], dtype=np.float32), metric=spec.get("metric", "linf"))
    except (TypeError, ValueError) as exc:
        raise CommandError(f"the model file's recorded defense is damaged: {first_line(exc)}") from exc


def attack_budget(dataset: str, eps: Optional[float], steps: Optional[int],
                   step_size: Optional[float]) -> Tuple[float, int, float]:
    found = profile(dataset)
    budget = PAPER_BUDGETS[found.budget] if found is not None else None
    if budget is None and None in (eps, steps, step_size):
        raise UsageError(f"no paper budget for data set {dataset!r}: pass --eps, --steps and --step-size")
    eps = float(budget["eps"]) if eps is None else eps
    steps = int(budget["steps"]) if steps is None else steps
    step_size = float(budget["step_size"]) if step_size is None else step_size
    return eps, steps, step_size


def parse_attacks(text: str) -> List[str]:
    from ..attacks import SUITE

    names = [name.strip().replace("-", "_").lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUITE]
    if unknown or not names:
        raise UsageError(f"--attacks takes a comma-separated list of {', '.join(SUITE)}; got {text!r}")
    return names


def percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def emit(args: argparse.Namespace, report: Dict[str, Any], text: List[str]) -> None:
    if args.json:
        print(json.dumps(report, allow_nan=False, default=str))
    else:
        print("\n".join(text))


def check_device(device: Optional[str]) -> None:
    """A CUDA device asked for on a machine without one is the user's problem, not a crash inside torch."""
    if device is None or not str(device).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise CommandError(f"{device} was asked for, but no CUDA device is usable here (torch {torch.__version__}); "
                           "run on the CPU (the default) or on a machine with a GPU")


def add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text (no progress bars)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def torch_from(array: Any) -> Any:
    import torch

    return torch.from_numpy(array)
