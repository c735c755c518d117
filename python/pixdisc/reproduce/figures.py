"""Figures 1-7: the data each figure needs (the report draws them)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .. import analysis, datasets
from ..report.reproduction import QUICK_LABEL, Figure
from .context import (_CURVE_EPS, _CURVE_EPS_QUICK, _Context, _FRAGMENTATION_EPS, _NO_IMAGENET_MODEL, _config, _curves,
                      _dataset, _density, _float_split, _six_settings)


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


