"""Render a reproduction (``pixdisc reproduce``): each target's JSON, its PNG figures and its section of index.md.

:mod:`pixdisc.reproduce` computes; this module only writes what it is given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .._files import write_text
from ..paper import PAPER_NUMBERS, PAPER_SOURCE
from .analysis import plot_fragmentation_cdf, plot_neighbourhood_scatter, plot_pixel_histogram, plot_robustness_curves
from .figure import png_figure

__all__ = ["QUICK_LABEL", "TARGETS", "TITLES", "Figure", "draw", "section_markdown", "update_index", "write_target"]

# Every model-based number of a quick run carries this label.
QUICK_LABEL = "quick: not comparable"

# Target names in report order (``all`` runs them in this order).
TARGETS = ("table1", "table2", "table3", "table4", "fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7",
           "fashion_mnist", "all")



def _fmt(value: Any) -> str:
    if value is None:
        return "N/A"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split(". ")[0].rstrip(".")


def _missing_md(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for entry in entries:
        if entry.get("status") in ("missing", "not available"):
            lines.append(f"- **{entry['dataset']}** ({entry['status']}):")
            lines.extend(f"  {line}" for line in str(entry["message"]).splitlines())
    return lines


def _table_md(target: str, result: Mapping[str, Any]) -> list[str]:
    # "rob" is the attacked ceiling (default suite), "floor" what certify proved on the same images.
    lines = ["| dataset | base model | codebook | ours pre acc | ours pre rob | ours pre floor | ours re acc "
             "| ours re rob | ours re floor | paper pre acc | paper pre rob | paper re acc | paper re rob | note |",
             "|" + "---|" * 14]
    for row in result["rows"]:
        if row["status"] != "ok":
            # No numbers of ours: still list the paper's, so the table stays side by side.
            why = f"{row['status']}: {_first_sentence(row['message'])} (see below)"
            for base, published in row["paper"].items():
                for key, values in published.items():
                    lines.append(f"| {row['dataset']} | {base} | k={key} | – | – | – | – | – | – | "
                                 + " | ".join(_fmt(v) for v in values) + f" | {why} |")
            continue
        paper = row["paper"] or [None] * 4
        pre_clean, pre_rob, re_clean, re_rob = row["ours"]
        floors = row.get("ours_floor", [None, None])
        lines.append(f"| {row['loaded']} | {row['base']} | {row['codebook']} | "
                     + " | ".join(_fmt(v) for v in (pre_clean, pre_rob, floors[0], re_clean, re_rob, floors[1]))
                     + " | "
                     + " | ".join(_fmt(v) for v in paper) + f" | {row['note']} |")
    return lines


def _table4_md(result: Mapping[str, Any]) -> list[str]:
    lines = ["| eps | b | unable ours (data only, log2\\|S\\|>b) | unable paper | success ours | success paper "
             "| fail ours | fail paper | unable ours (budget) | s* ours (paper formula) | s* paper |",
             "|" + "---|" * 11]
    for row in result["rows"]:
        paper = row["paper"]
        lines.append(f"| {row['eps']:.2f} | {row['b']} | {_fmt(row['unable_data_only'])} | {_fmt(paper['unable'])} | "
                     f"{_fmt(row.get('success'))} | {_fmt(paper['success'])} | {_fmt(row.get('fail'))} | "
                     f"{_fmt(paper['fail'])} | {_fmt(row.get('unable_budget'))} | "
                     f"{_fmt(row.get('s_star_paper_formula'))} | {_fmt(paper['s_star'])} |")
    return lines


def _figure_md(target: str, result: Mapping[str, Any]) -> list[str]:
    paper = PAPER_NUMBERS[target]
    lines = ["| dataset | status | ours | paper | note |", "|---|---|---|---|---|"]
    for entry in result["entries"]:
        if entry["status"] != "ok":
            lines.append(f"| {entry['dataset']} | {entry['status']} | | {paper['note']} | "
                         f"{_first_sentence(entry['message'])} (see below) |")
            continue
        ours = _figure_summary(target, entry)
        published = paper["note"]
        if target == "fig6":
            published = f"CIFAR-10 max \\|N\\| = {paper['max_neighbourhood_size']:,} at eps=8 levels"
        lines.append(f"| {entry['loaded']} | ok | {ours} | {published} | {entry.get('note', '')} |")
    return lines


def _figure_summary(target: str, entry: Mapping[str, Any]) -> str:
    if target in ("fig1", "fig2", "fig3"):
        curve = entry["curve"]
        parts = [f"{name}: " + ", ".join(f"{100 * v:.0f}%" for v in values)
                 for name, values in curve["settings"].items()]
        text = f"eps {', '.join(f'{e:.3g}' for e in curve['eps'])} → " + "; ".join(parts)
        if "gap" in entry:
            text += f"; gap train {entry['gap']['train']} vs test {entry['gap']['test']}"
        return text
    if target == "fig4":
        return "; ".join(f"{name}: " + ", ".join(f"{100 * v:.0f}%" for v in values)
                         for name, values in entry["series"].items() if not name.startswith("paper"))
    if target == "fig5":
        return (f"k={entry['k']}, eps={entry['eps']:.3g}, n={entry['n']}: median {entry['median']:.4f}, "
                f"{100 * entry['fraction_zero']:.1f}% of images at 0, mean ambiguous pixels "
                f"{entry['mean_ambiguous_pixels']:.1f}")
    if target == "fig6":
        return (f"{entry['distinct_pixels']:,} distinct pixels, max \\|N\\| = {entry['max_neighbourhood_size']:,}, "
                f"median {entry['median_neighbourhood_size']:,.0f}")
    if target == "fig7":
        return (f"{entry['pixels']:,} pixels: {100 * entry['fraction_le_25']:.1f}% ≤ 25, "
                f"{100 * entry['fraction_ge_230']:.1f}% ≥ 230, {100 * entry['fraction_between']:.1f}% between")
    return ""


TITLES = {
    "table1": "Table I: colour-depth reduction",
    "table2": "Table II: codes by density estimation (Algorithm 1)",
    "table3": "Table III: codes by k-medoids (Algorithm 2, l1)",
    "table4": "Table IV: MNIST certificate",
    "fig1": "Figure 1: MNIST and Fashion-MNIST, robustness vs eps",
    "fig2": "Figure 2: GTSRB and ImageNet, robustness vs eps",
    "fig3": "Figure 3: CIFAR-10, robustness vs eps and the adversarial gap",
    "fig4": "Figure 4: MNIST certificate vs attacks",
    "fig5": "Figure 5: fragmentation CDF",
    "fig6": "Figure 6: pixel neighbourhood sizes",
    "fig7": "Figure 7: pixel-value histogram",
    "fashion_mnist": "Fashion-MNIST rows of Tables I-III on all 60,000 / 10,000 images",
}


def section_markdown(target: str, result: Mapping[str, Any]) -> str:
    mode = f"quick (tiny budgets; model-based numbers are {QUICK_LABEL})" if result["quick"] else "full"
    lines = [f"## {target}: {TITLES[target]}", "",
             f"Mode: {mode}; "
             f"wall time {result['seconds']:.1f} s; raw JSON: [{target}.json]({target}.json).", ""]
    if target in ("table1", "table2", "table3"):
        lines += ["Accuracy / robustness in %; 'pre' = pre-trained model behind the codes, 're' = re-trained on "
                  "them; the 'none (k=256)' rows are the model without discretization (paper's k=256 / 256^3 row).",
                  ""]
        lines += _table_md(target, result)
        entries = result["rows"]
    elif target == "fashion_mnist":
        config = result.get("config") or {}
        lines += [f"Training on {config.get('n_train') or 'all'} training images "
                  f"(natural {config.get('natural_epochs')} epochs, adversarial {config.get('adversarial_epochs')} "
                  f"epochs of {config.get('train_steps')}-step PGD at eps {config.get('train_eps')}, re-training "
                  f"{config.get('retrain_epochs')} / {config.get('adversarial_retrain_epochs')} epochs); clean "
                  f"accuracy on every test image, the attack suite ('rob', per-image worst case) and the certified "
                  f"floor on the first {config.get('n_test')} at eps {config.get('eps')} ({config.get('steps')} "
                  "steps of the gradient attacks).", ""]
        entries = []
        for table, rows in result["tables"].items():
            lines += [f"### {TITLES[table]}", ""] + _table_md(table, {"rows": rows}) + [""]
            entries += rows
    elif target == "table4":
        lines += [f"Data set {result['dataset']}, codes {result['codebook']['codes_255']}/255, model "
                  f"{result['model']}. 'unable (data only)' is the paper's definition, computed on all "
                  f"{result['rows'][0]['n_data_only']} test images; success/fail come from branch-and-bound "
                  f"certification of {result['certify']['n']} images, whose own 'unable' means its budget ran out. "
                  f"{result['note']}", ""]
        lines += _table4_md(result)
        entries = []
    else:
        lines += _figure_md(target, result)
        entries = result["entries"]
    missing = _missing_md(entries)
    if missing:
        lines += ["", "Missing data (where we looked, how to get it):", ""] + missing
    for png in result.get("pngs", []):
        lines += ["", f"![{png}]({png})"]
    return "\n".join(lines) + "\n"


_SECTION = re.compile(r"<!-- pixdisc:(\w+):start -->\n(.*?)<!-- pixdisc:\1:end -->\n", re.S)


def update_index(out: Path, target: str, section: str) -> Path:
    """Merge ``section`` into ``out/index.md``, replacing that target's old section, in TARGETS order."""
    path = out / "index.md"
    sections = dict(_SECTION.findall(path.read_text())) if path.exists() else {}
    sections[target] = section
    header = ["# pixdisc reproduction report", "",
              f"Reproducing {PAPER_SOURCE}, on the data available here. Each section puts our numbers next to "
              "the paper's published ones ('paper' columns); sections accumulate as targets are run.", ""]
    body = [f"<!-- pixdisc:{name}:start -->\n{sections[name]}<!-- pixdisc:{name}:end -->\n"
            for name in TARGETS if name in sections]
    return write_text(path, "\n".join(header) + "\n" + "\n".join(body))


# ------------------------------------------------------------------------------------------ figures


@dataclass
class Figure:
    """A figure the computation asks for: the PNG's file name, its kind and the data to draw."""

    file: str
    kind: str  # one of the kinds draw() knows
    data: dict[str, Any]


def _gray_neighbourhoods(levels: np.ndarray, sizes: np.ndarray, path: Path, title: str) -> Path:
    with png_figure(path, (6, 4), title) as (_, axes):
        axes.bar(np.asarray(levels) * 255, np.asarray(sizes), width=1.0, color="0.3")
        axes.set_yscale("log")
        axes.set_xlabel("pixel value (level)")
        axes.set_ylabel("|N_inf(p, eps)|")
    return path


def draw(figure: Figure, out: Path) -> Path:
    """Draw ``figure`` into ``out / figure.file``."""
    path = out / figure.file
    data = dict(figure.data)
    if figure.kind == "curves":
        return plot_robustness_curves(data.pop("eps"), data.pop("curves"), path, **data)
    if figure.kind == "fragmentation_cdf":
        return plot_fragmentation_cdf(data.pop("values"), path, **data)
    if figure.kind == "neighbourhood_scatter":
        return plot_neighbourhood_scatter(data.pop("colours"), data.pop("sizes"), path, **data)
    if figure.kind == "pixel_histogram":
        return plot_pixel_histogram(data.pop("counts"), path, **data)
    if figure.kind == "gray_neighbourhoods":
        return _gray_neighbourhoods(data["levels"], data["sizes"], path, data["title"])
    raise ValueError(f"unknown figure kind {figure.kind!r}")


def write_target(out: Path, target: str, result: Mapping[str, Any], figures: Sequence[Figure]) -> None:
    """Write one target's figures, ``<target>.json`` and its section of ``index.md``."""
    for figure in figures:
        draw(figure, out)
    write_text(out / f"{target}.json", json.dumps(result, indent=1))
    update_index(out, target, section_markdown(target, result))
