"""Reproduce the 2019 paper's Tables I-IV and Figures 1-7 on the data at hand, side by side with its numbers.

Layout: ``context`` (data discovery, configs, cached networks and evaluations), ``tables`` and ``figures``
(what each target computes); :mod:`pixdisc.report.reproduction` writes the results.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from ..paper import PAPER_NUMBERS, PAPER_SOURCE
from ..report.reproduction import TARGETS, TITLES, write_target
from .context import _Context, _config, _dataset, _jsonable
from .figures import _fig4, _fig5, _fig6, _fig7, _fig_curves
from .tables import _paper_rows, _table4, _table_rows


__all__ = ["TARGETS", "PAPER_NUMBERS", "PAPER_SOURCE", "reproduce"]


# ------------------------------------------------------------------------------------------ plumbing


def _run_target(ctx: _Context, target: str) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any]
    if target in ("table1", "table2", "table3"):
        result = {"rows": _table_rows(ctx, target)}
    elif target == "fashion_mnist":
        # The paper's Fashion-MNIST rows of Tables I-III on the whole data set (its full-scale budget).
        result = {"tables": {table: _table_rows(ctx, table, ("fashion_mnist",))
                             for table in ("table1", "table2", "table3")},
                  "config": _config_of(ctx, "fashion_mnist")}
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
              "paper": _jsonable(_paper_of(target)),
              "source": PAPER_SOURCE, **result, "seconds": time.perf_counter() - started}
    result = _jsonable(result)
    write_target(ctx.out, target, result, figures)
    return result


def _paper_of(target: str) -> Any:
    if target == "fashion_mnist":
        return {table: _paper_rows(PAPER_NUMBERS[table]["fashion_mnist"]) for table in ("table1", "table2", "table3")}
    if target in ("table1", "table2", "table3"):
        return {name: _paper_rows(entry) for name, entry in PAPER_NUMBERS[target].items()}
    return PAPER_NUMBERS[target]


def _config_of(ctx: _Context, name: str) -> dict[str, Any] | None:
    data, _ = _dataset(ctx, name)
    return None if data is None else _config(ctx, data).to_dict()


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
    # Tables I-III already hold the Fashion-MNIST rows: "all" does not run them twice.
    names = [name for name in TARGETS if name not in ("all", "fashion_mnist")]
    results: dict[str, Any] = {}
    with tqdm(names, desc="reproduce", unit="target", disable=not progress, file=sys.stderr) as bar:
        for name in bar:
            bar.set_description(f"reproduce {name}")
            results[name] = _run_target(ctx, name)
    return results
