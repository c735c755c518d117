"""Tables I-IV: our numbers beside the paper's."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any, Mapping, Sequence

import numpy as np

from .. import datasets
from ..candidates import log2_set_size
from ..certification import certify
from ..experiments import ExperimentConfig
from ..paper import PAPER_NUMBERS
from ..report.reproduction import QUICK_LABEL
from ..statistics import clopper_pearson_interval
from .context import (_Context, _FULL_CERT, _NO_IMAGENET_MODEL, _PAPER_DATASETS, _QUICK_CERT, _config, _dataset,
                      _density, _evaluate, _kmedoids, _six_settings, _uniform)


# ---------------------------------------------------------------------------------- tables I-III


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * float(value), 2)


def _table_rows(ctx: _Context, table: str, names: Sequence[str] = _PAPER_DATASETS) -> list[dict[str, Any]]:
    """Tables I-III: one row per (data set, base model, codebook), ours and the paper's."""
    paper = PAPER_NUMBERS[table]
    rows: list[dict[str, Any]] = []
    for name in names:
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
        # Networks and evaluations are stored by the codes, so tables whose codebooks coincide (uniform k=2
        # and density k=2 are both {0, 255} on Fashion-MNIST) share them instead of training twice.
        models = _six_settings(ctx, data, book, _codes_tag(book.codes_))
        result = _evaluate(ctx, data, models, _codes_tag(book.codes_))
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


def _codes_tag(codes: np.ndarray) -> str:
    levels = np.rint(np.asarray(codes) * 255).astype(int).ravel()
    if levels.size <= 8:
        return "codes" + "-".join(str(level) for level in levels)
    return "codes-" + hashlib.sha256(np.asarray(codes, dtype=np.float64).tobytes()).hexdigest()[:12]


def _key_label(key: Any) -> str:
    if isinstance(key, tuple):
        return f"{key[0]}" if key[1] is None else f"{key[0]}, r={key[1]:g}"
    return str(key)


def _paper_rows(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {base: {_key_label(k): list(v) for k, v in rows.items()} for base, rows in entry.items()}


def _ci(row: Mapping[str, Any], key: str) -> list[float]:
    """95% Clopper-Pearson interval (in %) of an accuracy measured on row["n"] images."""
    low, high = clopper_pearson_interval(round(float(row[key]) * row["n"]), row["n"])
    return [_pct(low), _pct(high)]


def _row(name: str, loaded: str, base: str, codebook: str, codes: np.ndarray | None, pre: Mapping[str, Any],
         re_: Mapping[str, Any] | None, published: Sequence[float | None] | None, quick: bool, message: str,
         config: ExperimentConfig) -> dict[str, Any]:
    # Clean accuracy on every test image where the evaluation measured it there (the suite ran on n_test).
    def clean(row: Mapping[str, Any]) -> float | None:
        return _pct(row.get("clean_accuracy_all", row["clean_accuracy"]))

    ours = [clean(pre), _pct(pre["robust_accuracy"]),
            clean(re_) if re_ else None, _pct(re_["robust_accuracy"]) if re_ else None]
    notes = [note for note in (QUICK_LABEL if quick else "", message) if note]
    return {"dataset": name, "loaded": loaded, "status": "ok", "base": base, "codebook": codebook,
            "codes_255": None if codes is None else np.rint(np.asarray(codes) * 255).astype(int).tolist(),
            "n_test": pre["n"], "n_clean": pre.get("n_all", pre["n"]), "eps": config.eps, "steps": config.steps,
            "ours": ours, "ours_floor": [_pct(pre.get("floor")), _pct(re_.get("floor")) if re_ else None],
            "ours_ci95": [_ci(pre, "robust_accuracy"), _ci(re_, "robust_accuracy") if re_ else None],
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


