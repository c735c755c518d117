"""Reproduce the 2019 paper's Tables I-IV and Figures 1-7 on the data at hand, side by side with its numbers."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import analysis, datasets
from ._files import write_text
from .attacks import evaluate_robustness
from .candidates import log2_set_size
from .certification import Budget, certify
from .codebook import Codebook, DensityCodebook, KMedoidsCodebook, UniformCodebook
from .discretize import Discretize
from .experiments import DEMO_CONFIG, QUICK_CONFIG, ExperimentConfig, attack_specs, config_for_dataset, \
    evaluate_setting
from .models import load_model, save_model
from .paper import PAPER_NUMBERS, PAPER_SOURCE
from .plan import train_settings
from .report.reproduction import QUICK_LABEL, TARGETS, TITLES, Figure, write_target
from .train import SETTINGS

__all__ = ["TARGETS", "PAPER_NUMBERS", "PAPER_SOURCE", "reproduce"]


# Where each paper data set lives here, in the order tables list them.
_PAPER_DATASETS = ("mnist", "fashion_mnist", "cifar10", "gtsrb", "imagenet")
_LOADER_NAME = {"imagenet": "imagenet_dev"}
# Sub-folders of --data-dir tried for each data set before data_dir itself.
_SUBDIRS = {
    "mnist": ("mnist", "MNIST"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST"),
    "cifar10": ("cifar10", "cifar-10", "cifar-10-batches-py", "cifar-10-batches-bin"),
    "gtsrb": ("gtsrb", "GTSRB"),
    "imagenet": ("imagenet", "imagenet_dev", "nips2017_dev"),
}
# ImageNet rows need the paper's pretrained ImageNet classifiers, which cannot be downloaded here.
_NO_IMAGENET_MODEL = ("not available here: the paper attacks pretrained ImageNet classifiers (Inception / "
                      "adversarially trained ResNet); no pretrained weights can be downloaded on this machine")

# Robustness-curve eps grids (the figures' ranges are ours; the paper gives curves only).
_CURVE_EPS = {"mnist": (0.05, 0.1, 0.2, 0.3, 0.4), "fashion_mnist": (0.02, 0.05, 0.1, 0.15, 0.2),
              "cifar10": (2 / 255, 4 / 255, 8 / 255, 16 / 255), "gtsrb": (2 / 255, 4 / 255, 8 / 255, 16 / 255)}
_CURVE_EPS_QUICK = {"mnist": (0.1, 0.3), "fashion_mnist": (0.05, 0.1), "cifar10": (4 / 255, 8 / 255),
                    "gtsrb": (4 / 255, 8 / 255)}
_FRAGMENTATION_EPS = {"mnist": 0.3, "fashion_mnist": 0.1, "cifar10": 8 / 255}

# Quick mode: tiny budgets so that `reproduce all --quick` takes about a minute on 2 cores.
# Its network is a 4-channel SmallCNN: the numbers only show that every code path runs.
_QUICK = QUICK_CONFIG.replace(arch_kwargs={"width": 8, "hidden": 64}, n_train=1000, n_test=64, eval_batch_size=64,
                              natural_epochs=2, attacks=("pgd_ce",), steps=3, curve_steps=3, curve_n=32)
_QUICK_CERT = {"n": 8, "budget": Budget(nodes=6, seconds=0.2), "eps": (0.0, 0.1, 0.3)}
# Full runs: 5 s per image at most, so the hopeless (huge S(x)) images cannot take hours each eps.
_FULL_CERT = {"n": None, "budget": Budget(nodes=2000, seconds=5.0), "eps": None}


# ----------------------------------------------------------------------------------------- context


@dataclass
class _Context:
    out: Path
    quick: bool
    data_dir: Path | Mapping[str, Any] | None
    seed: int
    progress: bool
    data: dict[str, tuple[datasets.Dataset | None, str]] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        # Quick and full runs never share cached models or evaluations.
        return f"{'quick' if self.quick else 'full'}-seed{self.seed}"

    def log(self, message: str) -> None:
        if self.progress:
            tqdm.write(message, file=sys.stderr)


def _candidate_dirs(ctx: _Context, name: str) -> list[Path | None]:
    if ctx.data_dir is None:
        return [None]
    if isinstance(ctx.data_dir, Mapping):
        given = ctx.data_dir.get(name) or ctx.data_dir.get(_LOADER_NAME.get(name, name))
        return [Path(given).expanduser()] if given is not None else [None]
    root = Path(ctx.data_dir).expanduser()
    found: list[Path | None] = [root / sub for sub in _SUBDIRS.get(name, ()) if (root / sub).is_dir()] + [root]
    # A data_dir for other data sets must not hide the Debian package's Fashion-MNIST.
    return found + [None] if name == "fashion_mnist" else found


def _dataset(ctx: _Context, name: str) -> tuple[datasets.Dataset | None, str]:
    """The paper's data set ``name`` as available here, or ``(None, why missing and how to get it)``.

    MNIST falls back to the embedded 5,000-image subset (real MNIST) when no
    IDX files are given; Fashion-MNIST defaults to the Debian package.
    """
    if name in ctx.data:
        return ctx.data[name]
    loader = _LOADER_NAME.get(name, name)
    message = ""
    found: datasets.Dataset | None = None
    for directory in _candidate_dirs(ctx, name):
        if directory is None and name == "mnist":
            break
        try:
            found = datasets.load_dataset(loader, directory)
            break
        except datasets.DatasetNotFoundError as error:
            message = message or str(error)
    if found is None and name == "mnist":
        found = datasets.load_dataset("mnist5k")
        message = "full MNIST not given (--data-dir with the IDX files): using the embedded MNIST-5k subset"
    ctx.data[name] = (found, message)
    return found, message


def _float_split(data: datasets.Dataset, n_train: int | None, n_test: int | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n_tr = len(data.x_train) if n_train is None else min(n_train, len(data.x_train))
    n_te = len(data.x_test) if n_test is None else min(n_test, len(data.x_test))
    return (torch.from_numpy(datasets.as_float_nchw(data.x_train[:n_tr])), torch.from_numpy(data.y_train[:n_tr]),
            torch.from_numpy(datasets.as_float_nchw(data.x_test[:n_te])), torch.from_numpy(data.y_test[:n_te]))


def _config(ctx: _Context, data: datasets.Dataset) -> ExperimentConfig:
    base = _QUICK if ctx.quick else DEMO_CONFIG
    config = config_for_dataset(data.name, base=base, seed=ctx.seed)
    if ctx.quick:
        config = config.replace(steps=_QUICK.steps, step_size=config.eps / 2, n_train=_QUICK.n_train,
                                n_test=_QUICK.n_test)
    return config


def _cache_json(path: Path, compute: Callable[[], Any]) -> Any:
    """Load ``path`` when a previous run wrote it; otherwise compute and write it (resumable at this grain)."""
    if path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass  # a torn write from a killed run: recompute
    value = compute()
    write_text(path, json.dumps(_jsonable(value)))
    return value


# ----------------------------------------------------------------------------------- six settings


def _network(ctx: _Context, path: Path, train: Callable[[], nn.Module], meta: Mapping[str, Any]) -> nn.Module:
    """A trained network from ``path`` when a previous run saved it; else train it and save it there."""
    if path.exists():
        return load_model(path)  # type: ignore[return-value]
    ctx.log(f"training {path.relative_to(ctx.out)}")
    network = train()
    save_model(network, path, meta=dict(meta))
    return network


def _store(ctx: _Context, data: datasets.Dataset, codebook: Codebook | None, book_tag: str, config: ExperimentConfig
           ) -> Callable[[str, Callable[[], Any]], tuple[nn.Module, None]]:
    """Where the planner's networks live: nat_pre/adv_pre once per data set (every table shares them),
    re-trained networks once per codebook; each saved as it finishes, so a rerun trains nothing twice."""

    def store(name: str, train: Callable[[], Any]) -> tuple[nn.Module, None]:
        shared = name in ("nat_pre", "adv_pre")
        key = f"network:{data.name}:{name}" + ("" if shared else f":{book_tag}")
        if key not in ctx.memo:
            folder = ctx.out / "models" / ctx.tag / data.name
            if shared:
                x_train, _, _, _ = _float_split(data, config.n_train, config.n_test)
                meta = {"dataset": data.name, "n_train": int(len(x_train)), "quick": ctx.quick, "setting": name}
            else:
                assert codebook is not None
                folder = folder / book_tag
                meta = {"dataset": data.name, "codebook": book_tag, "codes": codebook.codes_.tolist(),
                        "alpha": config.alpha, "quick": ctx.quick, "setting": name}
            ctx.memo[key] = _network(ctx, folder / f"{name}.pt", lambda: train()[0], meta)
        return ctx.memo[key], None

    return store


def _six_settings(ctx: _Context, data: datasets.Dataset, codebook: Codebook | None, book_tag: str,
                  settings: Sequence[str] = SETTINGS) -> dict[str, nn.Module]:
    """The paper's settings for one codebook, trained by the planner (pixdisc.plan) and cached on disk."""
    config = _config(ctx, data).replace(settings=tuple(settings))
    defense = None if codebook is None else Discretize(codebook, bpda=config.bpda, alpha=config.alpha)
    x_train, y_train, _, _ = _float_split(data, config.n_train, config.n_test)
    return train_settings(config, x_train, y_train, defense, data.num_classes, progress=ctx.progress,
                          store=_store(ctx, data, codebook, book_tag, config)).models


def _evaluate(ctx: _Context, data: datasets.Dataset, models: Mapping[str, nn.Module], book_tag: str
              ) -> dict[str, dict[str, Any]]:
    """Clean accuracy, attacked ceiling (the default suite) and certified floor per setting; cached as JSON."""
    config = _config(ctx, data)
    _, _, x_test, y_test = _float_split(data, config.n_train, config.n_test)
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        # The undefended settings do not depend on the codebook: one evaluation serves every table.
        stem = name if name in ("nat_pre", "adv_pre") else f"{book_tag}-{name}"
        path = ctx.out / "cache" / ctx.tag / data.name / f"eval-{stem}.json"

        def run(model: nn.Module = model) -> dict[str, Any]:
            started = time.perf_counter()
            row = evaluate_setting(model, x_test, y_test, config, progress=ctx.progress)
            row["eval_seconds"] = time.perf_counter() - started
            return row

        rows[name] = _cache_json(path, run)
    return rows


def _curves(ctx: _Context, data: datasets.Dataset, models: Mapping[str, nn.Module], book_tag: str,
            eps_grid: Sequence[float], x: Tensor | None = None, y: Tensor | None = None,
            split: str = "test") -> dict[str, list[float]]:
    """Robust accuracy vs eps (PGD-CE, Madry's step rule 2.5 eps / steps) per setting; cached as JSON."""
    config = _config(ctx, data)
    if x is None or y is None:
        _, _, x, y = _float_split(data, config.n_train, config.n_test)
    count = min(config.curve_n, len(x))
    curves: dict[str, list[float]] = {}
    for name, model in models.items():
        grid = "_".join(f"{eps:.4g}" for eps in eps_grid)
        path = ctx.out / "cache" / ctx.tag / data.name / f"curve-{split}-{book_tag}-{name}-eps{grid}.json"

        def run(model: nn.Module = model) -> list[float]:
            values = []
            for eps in eps_grid:
                if eps == 0:
                    with torch.no_grad():
                        values.append(float((model(x[:count]).argmax(1) == y[:count]).float().mean()))
                    continue
                spec = attack_specs(eps, config.curve_steps, 2.5 * eps / max(config.curve_steps, 1), ["pgd_ce"])
                values.append(evaluate_robustness(model, x[:count], y[:count], spec, batch_size=config.eval_batch_size,
                                                  seed=config.seed, eps=eps, keep_adv=False,
                                                  progress=False).robust_accuracy)
            return values

        curves[name] = _cache_json(path, run)
    return {"eps": list(eps_grid), "n": count, "steps": config.curve_steps,
            "settings": curves}  # type: ignore[dict-item]


# ------------------------------------------------------------------------------------- codebooks


def _density(ctx: _Context, data: datasets.Dataset, k: int | None = None, r: float | None = None) -> Codebook:
    config = _config(ctx, data)
    k = config.k if k is None else k
    r = config.r if r is None else r
    key = f"density:{data.name}:{k}:{r}"
    if key not in ctx.memo:
        # Fitted on the full training split even in quick mode: Algorithm 1 is cheap (a histogram).
        ctx.memo[key] = DensityCodebook(k, r, metric=config.metric).fit(data.x_train)
    return ctx.memo[key]


def _uniform(data: datasets.Dataset, k: int) -> Codebook:
    return UniformCodebook(k).fit(data.x_train[:1])


def _kmedoids(ctx: _Context, data: datasets.Dataset, k: int) -> Codebook:
    key = f"kmedoids:{data.name}:{k}"
    if key not in ctx.memo:
        # PAM is quadratic in distinct colours (KMedoidsCodebook refuses > 50,000): RGB data is
        # subsampled to 40 images (<= 40,960 colours; 10 in quick mode), gray data has only 256 anyway.
        x = data.x_train if data.x_train.shape[-1] == 1 else data.x_train[:10 if ctx.quick else 40]
        ctx.memo[key] = KMedoidsCodebook(k, metric="l1", random_state=ctx.seed).fit(x)
    return ctx.memo[key]


# ---------------------------------------------------------------------------------- tables I-III


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * float(value), 2)


def _table_rows(ctx: _Context, table: str) -> list[dict[str, Any]]:
    """Tables I-III: one row per (data set, base model, codebook), ours and the paper's."""
    paper = PAPER_NUMBERS[table]
    rows: list[dict[str, Any]] = []
    for name in _PAPER_DATASETS:
        if name == "imagenet":
            rows.append({"dataset": name, "status": "not available", "message": _NO_IMAGENET_MODEL,
                         "paper": _paper_rows(paper[name])})
            continue
        data, message = _dataset(ctx, name)
        if data is None:
            rows.append({"dataset": name, "status": "missing", "message": message,
                         "paper": _paper_rows(paper[name])})
            continue
        config = _config(ctx, data)
        if table == "table1":
            k = 2 if data.shape[2] == 1 else 8
            book, book_tag, paper_key = _uniform(data, k), f"uniform{k}", k
        elif table == "table2":
            # The paper gives r in levels for colour data, on [0, 1] for gray.
            r_paper = round(config.r * 255, 4) if data.shape[2] == 3 else config.r
            book, book_tag, paper_key = _density(ctx, data), f"density{config.k}-r{config.r:.4g}", (config.k, r_paper)
        else:
            k = 2 if data.shape[2] == 1 else 300
            book, book_tag, paper_key = _kmedoids(ctx, data, k), f"kmedoids{k}", k
        ctx.log(f"{table}: {data.name}, {book_tag}")
        models = _six_settings(ctx, data, book, book_tag)
        result = _evaluate(ctx, data, models, book_tag)
        undisc_key = 256 if data.shape[2] == 1 else "256^3"
        if table == "table2":
            undisc_key = (undisc_key, None)
        elif data.shape[2] == 3:
            undisc_key = 256
        for base, prefix in (("natural", "nat"), ("adversarial", "adv")):
            pre, re_ = result[f"disc_{prefix}_pre"], result[f"disc_{prefix}_re"]
            bare = result[f"{prefix}_pre"]
            published = paper[name][base]
            rows.append(_row(name, data.name, base, book_tag, book.codes_, pre, re_, published.get(paper_key),
                             ctx.quick, message, config))
            bare_label = "none (k=256)" if data.shape[2] == 1 else "none (k=256^3)"
            rows.append(_row(name, data.name, base, bare_label, None, bare, None, published.get(undisc_key),
                             ctx.quick, message, config))
    return rows


def _key_label(key: Any) -> str:
    if isinstance(key, tuple):
        return f"{key[0]}" if key[1] is None else f"{key[0]}, r={key[1]:g}"
    return str(key)


def _paper_rows(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {base: {_key_label(k): list(v) for k, v in rows.items()} for base, rows in entry.items()}


def _row(name: str, loaded: str, base: str, codebook: str, codes: np.ndarray | None, pre: Mapping[str, Any],
         re_: Mapping[str, Any] | None, published: Sequence[float | None] | None, quick: bool, message: str,
         config: ExperimentConfig) -> dict[str, Any]:
    ours = [_pct(pre["clean_accuracy"]), _pct(pre["robust_accuracy"]),
            _pct(re_["clean_accuracy"]) if re_ else None, _pct(re_["robust_accuracy"]) if re_ else None]
    notes = [note for note in (QUICK_LABEL if quick else "", message) if note]
    return {"dataset": name, "loaded": loaded, "status": "ok", "base": base, "codebook": codebook,
            "codes_255": None if codes is None else np.rint(np.asarray(codes) * 255).astype(int).tolist(),
            "n_test": pre["n"], "eps": config.eps, "steps": config.steps,
            "ours": ours, "ours_floor": [_pct(pre.get("floor")), _pct(re_.get("floor")) if re_ else None],
            "paper": None if published is None else list(published), "note": "; ".join(notes)}


# ---------------------------------------------------------------------------------------- table IV


def _table4(ctx: _Context) -> dict[str, Any]:
    data, message = _dataset(ctx, "mnist")
    assert data is not None  # MNIST always falls back to the embedded subset
    book = _density(ctx, data, 2, 0.6)
    x_all = datasets.as_float_nchw(data.x_test)
    cert = _QUICK_CERT if ctx.quick else _FULL_CERT
    n = len(x_all) if cert["n"] is None else min(cert["n"], len(x_all))
    defended = _six_settings(ctx, data, book, "density2", ("disc_adv_pre",))["disc_adv_pre"]
    rows = []
    eps_run = cert["eps"]
    for eps, b, unable, success, fail, s_star in PAPER_NUMBERS["table4"]:
        # Data-only: the paper's Unable is log2|S(x)| > b, on every test image.
        log2 = log2_set_size(x_all, book, eps)
        row: dict[str, Any] = {"eps": eps, "b": b, "unable_data_only": _pct(float(np.mean(log2 > b))),
                               "n_data_only": int(len(x_all)), "median_log2_size": float(np.median(log2)),
                               "paper": {"unable": unable, "success": success, "fail": fail, "s_star": s_star}}
        if eps_run is None or any(abs(eps - e) < 1e-9 for e in eps_run):
            checkpoint = ctx.out / "checkpoints" / ctx.tag / f"table4-{data.name}-eps{eps:.2f}.jsonl"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            ctx.log(f"table4: certifying {n} images at eps={eps}")
            result = certify(defended, None, x_all[:n], data.y_test[:n], eps, mode="bab", b=b,
                             budget=cert["budget"], checkpoint=checkpoint, delta=0.01,
                             executor="serial" if ctx.quick else None, progress=ctx.progress)
            summary = result.summary()
            row.update({"n_certified": summary["n"], "success": _pct(summary.get("certified_rate")),
                        "fail": _pct(summary.get("failed_rate")), "unable_budget": _pct(summary.get("unable_rate")),
                        "s_star_paper_formula": _pct(summary.get("lower_paper_formula")),
                        "s_star_hoeffding": _pct(summary.get("lower_hoeffding")),
                        "s_star_clopper_pearson": _pct(summary.get("lower_clopper_pearson"))})
        rows.append(row)
    notes = [note for note in (message, QUICK_LABEL + " (success/fail/s*)" if ctx.quick else "") if note]
    codes_255 = np.rint(book.codes_ * 255).astype(int).tolist()
    return {"dataset": data.name, "codebook": {"k": 2, "r": 0.6, "codes_255": codes_255},
            "model": "disc_adv_pre (adversarially trained network behind the codes)", "rows": rows,
            "certify": {"mode": "bab", "n": n, "budget": asdict(cert["budget"])},
            "note": "; ".join(notes)}


# ------------------------------------------------------------------------------------------ figures


def _missing_entry(name: str, message: str) -> dict[str, Any]:
    return {"dataset": name, "status": "missing", "message": message}


def _fig_curves(ctx: _Context, target: str, names: Sequence[str]) -> dict[str, Any]:
    """Figs. 1-3: robust accuracy vs eps for the natural / adversarial models with and without the codes."""
    entries: list[dict[str, Any]] = []
    figures: list[Figure] = []
    for name in names:
        if name == "imagenet":
            entries.append({"dataset": name, "status": "not available", "message": _NO_IMAGENET_MODEL})
            continue
        data, message = _dataset(ctx, name)
        if data is None:
            entries.append(_missing_entry(name, message))
            continue
        k = {"cifar10": 50, "gtsrb": 50}.get(name)
        r = 48 / 255 if k == 50 else None
        book = _density(ctx, data, k, r)
        tag = f"density{book.n_codes}"
        models = _six_settings(ctx, data, book, tag, ("nat_pre", "adv_pre", "disc_nat_pre", "disc_adv_pre"))
        grid = (_CURVE_EPS_QUICK if ctx.quick else _CURVE_EPS)[name]
        curve = _curves(ctx, data, models, tag, grid)
        png = f"{target}_{data.name}.png"
        figures.append(Figure(png, "curves", {"eps": curve["eps"], "curves": curve["settings"],
                                              "title": f"{target}: {data.name}, {book.n_codes} codes"
                                              + (" (quick)" if ctx.quick else "")}))
        entry = {"dataset": name, "loaded": data.name, "status": "ok", "codes": book.n_codes, "curve": curve,
                 "png": png, "note": "; ".join(x for x in (QUICK_LABEL if ctx.quick else "", message) if x)}
        if target == "fig3":
            # Fig. 3b: the adversarial generalization gap of the adversarially re-trained defended model.
            config = _config(ctx, data)
            x_tr, y_tr, _, _ = _float_split(data, config.n_train, config.n_test)
            re_models = _six_settings(ctx, data, book, tag, ("disc_adv_re",))
            train_curve = _curves(ctx, data, re_models, tag, grid, x_tr, y_tr, "train")
            test_curve = _curves(ctx, data, re_models, tag, grid)
            gap_png = f"fig3b_{data.name}.png"
            gap = {"train": train_curve["settings"]["disc_adv_re"], "test": test_curve["settings"]["disc_adv_re"]}
            figures.append(Figure(gap_png, "curves", {"eps": grid, "curves": gap,
                                                      "title": "adversarial generalization gap (disc_adv_re)"}))
            entry["gap"] = {**gap, "png": gap_png}
        entries.append(entry)
    return {"entries": entries, "figures": figures}


def _fig4(ctx: _Context, table4: Mapping[str, Any]) -> dict[str, Any]:
    data, _ = _dataset(ctx, "mnist")
    assert data is not None
    book = _density(ctx, data, 2, 0.6)
    rows = [row for row in table4["rows"] if "success" in row]
    eps = [row["eps"] for row in rows]
    models = _six_settings(ctx, data, book, "density2", ("nat_pre", "disc_adv_pre"))
    curve = _curves(ctx, data, models, "density2", eps)
    series = {"nat_pre (PGD)": curve["settings"]["nat_pre"], "disc_adv_pre (PGD)": curve["settings"]["disc_adv_pre"],
              "certified s_hat": [row["success"] / 100 for row in rows],
              "certified s_hat_* (paper formula)": [(row["s_star_paper_formula"] or 0) / 100 for row in rows],
              "paper s_hat": [row["paper"]["success"] / 100 for row in rows],
              "paper s_hat_*": [row["paper"]["s_star"] / 100 for row in rows]}
    png = "fig4_mnist.png"
    figure = Figure(png, "curves", {"eps": eps, "curves": series, "ylabel": "accuracy (%)",
                                    "title": "certificate vs attacks on MNIST" + (" (quick)" if ctx.quick else "")})
    return {"entries": [{"dataset": "mnist", "loaded": data.name, "status": "ok", "eps": eps,
                         "series": series, "png": png, "note": QUICK_LABEL if ctx.quick else ""}],
            "figures": [figure]}


def _fig5(ctx: _Context) -> dict[str, Any]:
    """Fig. 5: fragmentation CDF (data only, so computed in full even in quick mode)."""
    entries, series = [], {}
    for name in ("mnist", "fashion_mnist", "cifar10"):
        data, message = _dataset(ctx, name)
        if data is None:
            entries.append(_missing_entry(name, message))
            continue
        k, r = (300, 16 / 255) if name == "cifar10" else (None, None)
        book = _density(ctx, data, k, r)
        eps = _FRAGMENTATION_EPS[name]
        values = analysis.fragmentation(datasets.as_float_nchw(data.x_test), book, eps, channel_axis=1)
        ambiguous = analysis.ambiguous_counts(datasets.as_float_nchw(data.x_test), book, eps, channel_axis=1)
        series[f"{data.name} (k={book.n_codes}, eps={eps:.3g})"] = values
        entries.append({"dataset": name, "loaded": data.name, "status": "ok", "k": book.n_codes, "eps": eps,
                        "n": int(values.size), "median": float(np.median(values)),
                        "fraction_zero": float(np.mean(values == 0)), "mean_ambiguous_pixels": float(ambiguous.mean()),
                        "quantiles": {str(q): float(np.quantile(values, q)) for q in (0.1, 0.5, 0.9)},
                        "note": message})
    figures = [Figure("fig5_fragmentation_cdf.png", "fragmentation_cdf",
                      {"values": series, "title": "fragmentation CDF"})] if series else []
    return {"entries": entries, "figures": figures}


def _fig6(ctx: _Context) -> dict[str, Any]:
    """Fig. 6: neighbourhood sizes; the 3-D scatter needs CIFAR-10, gray data gets a 1-D analogue."""
    entries: list[dict[str, Any]] = []
    figures: list[Figure] = []
    eps = 8 / 255
    for name in ("cifar10", "mnist", "fashion_mnist"):
        data, message = _dataset(ctx, name)
        if data is None:
            entries.append(_missing_entry(name, message))
            continue
        colours, sizes = analysis.neighbourhood_sizes(data.x_train, eps)
        entry = {"dataset": name, "loaded": data.name, "status": "ok", "eps_levels": 8,
                 "distinct_pixels": int(len(sizes)), "max_neighbourhood_size": int(sizes.max()),
                 "median_neighbourhood_size": float(np.median(sizes)), "note": message}
        if colours.shape[1] == 3:
            for suffix, sample, log in (("a", 40_000, False), ("b", 400_000, True)):
                figures.append(Figure(f"fig6{suffix}_{data.name}.png", "neighbourhood_scatter",
                                      {"colours": colours, "sizes": sizes, "sample": sample, "log_scale": log,
                                       "seed": ctx.seed}))
        else:
            figures.append(Figure(f"fig6_{data.name}_gray.png", "gray_neighbourhoods",
                                  {"levels": colours[:, 0], "sizes": sizes,
                                   "title": f"{data.name}: |N_inf(p, 8/255)| (gray analogue)"}))
            entry["note"] = "; ".join(x for x in ("gray analogue of the paper's RGB scatter", message) if x)
        entry["png"] = figures[-1].file
        entries.append(entry)
    return {"entries": entries, "figures": figures}


def _fig7(ctx: _Context) -> dict[str, Any]:
    """Fig. 7: pixel-value histograms on a log scale (data only)."""
    entries: list[dict[str, Any]] = []
    figures: list[Figure] = []
    for name in ("mnist", "fashion_mnist"):
        data, message = _dataset(ctx, name)
        if data is None:
            entries.append(_missing_entry(name, message))
            continue
        counts = analysis.pixel_value_histogram(data.x_train)
        total = int(counts.sum())
        png = f"fig7_{data.name}.png"
        figures.append(Figure(png, "pixel_histogram", {"counts": counts, "title": f"{data.name}: pixel values"}))
        entries.append({"dataset": name, "loaded": data.name, "status": "ok", "pixels": total,
                        "fraction_black": float(counts[0] / total),
                        "fraction_le_25": float(counts[:26].sum() / total),
                        "fraction_ge_230": float(counts[230:].sum() / total),
                        "fraction_between": float(counts[26:230].sum() / total),
                        "counts": counts.tolist(), "png": png, "note": message})
    return {"entries": entries, "figures": figures}


# ------------------------------------------------------------------------------------------ plumbing


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _run_target(ctx: _Context, target: str) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any]
    if target in ("table1", "table2", "table3"):
        result = {"rows": _table_rows(ctx, target)}
    elif target == "table4":
        result = _table4(ctx)
    elif target == "fig1":
        result = _fig_curves(ctx, target, ("mnist", "fashion_mnist"))
    elif target == "fig2":
        result = _fig_curves(ctx, target, ("gtsrb", "imagenet"))
    elif target == "fig3":
        result = _fig_curves(ctx, target, ("cifar10",))
    elif target == "fig4":
        table4 = ctx.memo.get("table4") or _table4(ctx)
        result = _fig4(ctx, table4)
    elif target == "fig5":
        result = _fig5(ctx)
    elif target == "fig6":
        result = _fig6(ctx)
    else:
        result = _fig7(ctx)
    if target == "table4":
        ctx.memo["table4"] = result
    figures = result.pop("figures", [])
    result["pngs"] = [figure.file for figure in figures]
    result = {"target": target, "title": TITLES[target], "quick": ctx.quick, "seed": ctx.seed,
              "paper": _jsonable(PAPER_NUMBERS[target] if target not in ("table1", "table2", "table3") else
                                 {name: _paper_rows(entry) for name, entry in PAPER_NUMBERS[target].items()}),
              "source": PAPER_SOURCE, **result, "seconds": time.perf_counter() - started}
    result = _jsonable(result)
    write_target(ctx.out, target, result, figures)
    return result


def reproduce(target: str, out_dir: str | os.PathLike[str], *, quick: bool = False,
              data_dir: str | os.PathLike[str] | Mapping[str, Any] | None = None, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
    """Reproduce one of ``TARGETS`` into ``out_dir``: ``index.md`` (merged), ``<target>.json`` and PNGs.

    ``data_dir`` is one folder holding the data sets (each in a sub-folder
    such as ``cifar-10-batches-py`` or ``GTSRB``, or the folder itself) or a
    mapping ``{dataset: folder}``; without it MNIST is the embedded 5k subset,
    Fashion-MNIST the Debian package, and CIFAR-10 / GTSRB / ImageNet rows say
    they are missing and how to get them. Trained networks are cached in
    ``out_dir/models/``, evaluations in ``out_dir/cache/`` and certification
    in ``out_dir/checkpoints/``, so a killed run resumes. ``quick`` runs tiny
    budgets whose model-based numbers are not comparable with the paper.
    Returns the JSON-able result (for ``all``: ``{target: result}``).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Context(out=out, quick=quick, data_dir=data_dir if isinstance(data_dir, Mapping) or data_dir is None
                   else Path(data_dir), seed=seed, progress=progress)
    if target != "all":
        return _run_target(ctx, target)
    names = [name for name in TARGETS if name != "all"]
    results: dict[str, Any] = {}
    with tqdm(names, desc="reproduce", unit="target", disable=not progress, file=sys.stderr) as bar:
        for name in bar:
            bar.set_description(f"reproduce {name}")
            results[name] = _run_target(ctx, name)
    return results
