"""Write experiment results: JSON, a Markdown table shaped like the paper's Table II, and PNG plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._files import write_text
from .._plotting import png_figure
from ..paper import PAPER_SOURCE, table_ii_settings
from ..statistics import clopper_pearson_interval

__all__ = [
    "PAPER_CITATION",
    "PAPER_TABLE_II",
    "SETTING_LABELS",
    "markdown_table",
    "paper_reference",
    "plot_accuracy",
    "plot_eps_curve",
    "write_json",
    "write_markdown",
    "write_report",
    "certify_table",
]

PAPER_CITATION = f"{PAPER_SOURCE}, Table II (codes by density estimation)"

# Table II of the paper as (accuracy %, robustness %) per setting, for the two
# data sets the six-setting experiment runs on. Its rows map onto the six
# settings as: "k=256" (no discretization) is nat_pre / adv_pre; "k=2,
# pre-trained" is disc_*_pre; "k=2, re-trained" is disc_*_re. MNIST: eps=0.3,
# 100-step attacks, codes k=2, r=0.6; Fashion-MNIST: eps=0.1, 100 steps, k=2,
# r=0.2. The paper used the full data sets and Madry et al.'s models, so these
# are the published reference, not a target for a 4k-image CNN.
PAPER_TABLE_II: dict[str, dict[str, Any]] = {
    name: table_ii_settings(name, eps=eps, k=2, r=r) for name, eps, r in (("mnist", 0.3, 0.6), ("fashion_mnist", 0.1, 0.2))
}

# The embedded MNIST subset is real MNIST: compare it with the paper's MNIST row.
_PAPER_DATASET = {"mnist": "mnist", "mnist5k": "mnist", "fashion_mnist": "fashion_mnist"}

SETTING_LABELS: dict[str, str] = {
    "nat_pre": "natural, no defense",
    "adv_pre": "adversarial, no defense",
    "disc_nat_pre": "natural + discretization (pre-trained)",
    "disc_adv_pre": "adversarial + discretization (pre-trained)",
    "disc_nat_re": "natural, re-trained on discretized images",
    "disc_adv_re": "adversarial, re-trained through BPDA",
}


def paper_reference(dataset: str) -> dict[str, Any] | None:
    """The paper's Table II numbers for ``dataset`` as fractions (like ours), or None where it has none."""
    key = _PAPER_DATASET.get(dataset.strip().lower().replace("-", "_"))
    if key is None:
        return None
    entry = PAPER_TABLE_II[key]
    return {
        "dataset": key,
        "eps": entry["eps"],
        "k": entry["k"],
        "r": entry["r"],
        "source": PAPER_CITATION,
        "unit": "fraction",
        "settings": {
            name: {"clean_accuracy": round(clean / 100, 6), "robust_accuracy": round(robust / 100, 6)}
            for name, (clean, robust) in entry["settings"].items()
        },
    }


def _percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.1f}"


def _paper_scale(paper: Mapping[str, Any]) -> float:
    """Factor to percent: results.json files without a "unit" store the paper's numbers in percent."""
    return 100.0 if paper.get("unit") == "fraction" else 1.0


def accuracy_interval(value: float | None, n: int | None, confidence: float = 0.95) -> list[float] | None:
    """Clopper-Pearson interval of an accuracy measured on ``n`` images (None when there is none)."""
    if value is None or not n or (isinstance(value, float) and math.isnan(value)):
        return None
    return [round(end, 6) for end in clopper_pearson_interval(int(round(value * n)), int(n), confidence)]


def with_intervals(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` with ``ci95`` beside every accuracy of every setting (clean, each attack column, ceiling, floor)."""
    out = dict(result)
    settings = {}
    for name, row in result.get("settings", {}).items():
        n = row.get("n")
        ci = {key: accuracy_interval(row.get(key), n) for key in ("clean_accuracy", "robust_accuracy", "floor")}
        ci["robust_after"] = {attack: accuracy_interval(value, n)
                              for attack, value in row.get("robust_after", {}).items()}
        settings[name] = {**row, "ci95": ci}
    out["settings"] = settings
    return out


def _percent_ci(value: float | None, n: int | None) -> str:
    interval = accuracy_interval(value, n)
    if interval is None:
        return _percent(value)
    return f"{_percent(value)} ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})"


def quick_label(result: Mapping[str, Any]) -> str:
    """What marks a quick run in every file and figure ("" for a full run)."""
    return "quick run: reduced budgets, numbers not comparable" if result.get("quick") else ""


def markdown_table(result: Mapping[str, Any]) -> str:
    """The settings as a Markdown table: clean, robust after each attack, the attacked ceiling, the certified floor.

    Attack columns are cumulative: a point counts as robust under "+PGD-CW"
    only if no attack before it broke it either, so the last attack column is
    the per-sample worst case over all attacks (the ceiling). "+certify" adds
    the certificate's checked counterexamples. An attack that does not apply
    to a setting (the S(x) search and Square need a discretizer) shows "—".
    The certified floor and the undecided count sit beside the ceiling; where
    nothing is undecided the robust accuracy is exact. Clean accuracy,
    ceiling and floor carry their 95% Clopper-Pearson intervals.
    """
    attacks = [(attack["name"], attack["label"]) for attack in result["attack"]["attacks"]]
    if any("certify" in row.get("robust_after", {}) for row in result["settings"].values()):
        attacks.append(("certify", "certify"))
    paper = result.get("paper")
    header = ["setting", "clean"]
    header += [label if index == 0 else f"+{label}" for index, (_, label) in enumerate(attacks)]
    header += ["ceiling (attacked)", "floor (certified)", "undecided"]
    if paper is not None:
        header += ["paper clean", "paper robust"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for name, row in result["settings"].items():
        n = row.get("n")
        cells = [f"`{name}`", _percent_ci(row["clean_accuracy"], n)]
        cells += [_percent(row["robust_after"].get(attack)) for attack, _ in attacks]
        floor = row.get("floor")
        exact = " (exact)" if row.get("exact") else ""
        cells.append(f"**{_percent_ci(row['robust_accuracy'], n)}**{exact}")
        cells.append(_percent_ci(floor, n))
        cells.append("—" if floor is None else str(row.get("undecided", "—")))
        if paper is not None:
            reference = paper["settings"].get(name)
            if reference is None:
                cells += ["—", "—"]
            else:
                scale = _paper_scale(paper)
                cells += [f"{scale * reference['clean_accuracy']:.2f}", f"{scale * reference['robust_accuracy']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _describe(result: Mapping[str, Any]) -> list[str]:
    dataset = result["dataset"]
    book = result["codebook"]
    attack = result["attack"]
    defense = result["defense"]
    codes = ", ".join("(" + ", ".join(str(v) for v in code) + ")/255" if len(code) > 1 else f"{code[0]}/255"
                      for code in book["codes_255"])
    names = ", ".join(a["label"] for a in attack["attacks"])
    return [
        f"- data: `{dataset['name']}`, {dataset['n_train']} training / {dataset['n_test']} evaluated test images "
        f"of shape {tuple(dataset['shape'])}",
        f"- defense: {book['kind']} k={book['params'].get('k')}, r={book['params'].get('r')}, "
        f"metric {book['params'].get('metric')} -> codes {{{codes}}}; BPDA `{defense['bpda']}`, "
        f"alpha={defense['alpha']:g}",
        f"- attacks (l_inf, eps={attack['eps']:g}; gradient attacks {attack['steps']} steps of "
        f"{attack['step_size']:g}, through BPDA where the defense is present): {names}; accuracies in % "
        f"with 95% Clopper-Pearson intervals in parentheses (results.json: fractions, `ci95` per accuracy)",
        f"- robust accuracy is an interval: the ceiling is what no attack broke, the floor what `certify` proved "
        f"(branch and bound, {_budget_text(attack.get('certify_budget'))} per image, on the images no attack "
        f"broke); where nothing is undecided it is exact",
        f"- model: `{result['training']['arch']}`; training: {_training_summary(result['training'])}",
    ] + _curve_text(result.get("curve"))


def _curve_text(curve: Mapping[str, Any] | None) -> list[str]:
    if not curve or not curve.get("settings"):
        return []
    suite = "PGD-CE" if curve.get("attack") == "pgd_ce" else "the table's attacks that apply to each setting"
    return [f"- robustness against eps (`robustness_vs_eps.png`): {suite}, gradient attacks {curve['steps']} "
            f"steps, on the first {curve['n']} test images; eps = 0 is clean accuracy"]


def _budget_text(budget: Mapping[str, Any] | None) -> str:
    if not budget:
        return "default budget"
    bound = {"ibp": "interval bounds", "crown": "CROWN"}.get(budget.get("bound", "crown"), budget.get("bound"))
    return f"{bound}, at most {budget['nodes']} nodes and {budget['seconds']:g} s"


def _training_summary(training: Mapping[str, Any]) -> str:
    adversarial = training["adversarial"]
    return (
        f"natural {training['natural_epochs']} epochs; adversarial {training['adversarial_epochs']} epochs of "
        f"PGD-{adversarial['steps']} (step {adversarial['step_size']:g}, eps {adversarial['eps']:g})"
        f"{', warm-started from nat_pre' if training.get('adversarial_warm_start') else ''}; "
        f"re-training {training['retrain_epochs']} (natural) / {training['adversarial_retrain_epochs']} "
        f"(adversarial) epochs from the pre-trained networks"
    )


def write_markdown(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """A Markdown report: what was run, the Table-II-style table, the qualitative checks and timings."""
    lines = [f"# pixdisc: the paper's six settings on `{result['dataset']['name']}`", ""]
    if quick_label(result):
        lines += [f"**{quick_label(result).capitalize()}**: a smoke run of every code path.", ""]
    lines += _describe(result)
    lines += ["", markdown_table(result), ""]
    paper = result.get("paper")
    if paper is not None:
        lines.append(
            f"Paper columns: {paper['source']}; its {paper['dataset']} row (eps={paper['eps']:g}, "
            f"k={paper['k']}, r={paper['r']}), full data set and Madry et al.'s models."
        )
        lines.append("")
    checks = result.get("checks", {})
    if checks:
        lines += ["## Checks", ""]
        for name, check in checks.items():
            mark = "yes" if check["passed"] else "NO"
            lines.append(f"- {check['description']}: **{mark}** ({check['detail']})")
        lines.append("")
    timings = result.get("timings", {})
    if timings:
        run = result.get("run", {})
        lines += ["## Timings (seconds)", ""]
        if "total" in timings:
            minutes, seconds = divmod(round(timings["total"]), 60)
            lines += [f"Wall time {minutes} min {seconds:02d} s on {run.get('cores', '?')} cores "
                      f"({run.get('torch_threads', '?')} torch threads), load average {run.get('load_before', '?')} "
                      "at the start.", ""]
        for stage, seconds in timings.items():
            if isinstance(seconds, (int, float)):
                lines.append(f"- {stage}: {seconds:.1f}")
        lines.append("")
    versions = result.get("versions", {})
    if versions:
        lines.append("Versions: " + ", ".join(f"{key} {value}" for key, value in versions.items()))
        lines.append("")
    return write_text(path, "\n".join(lines))


def write_json(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """The whole result as strict JSON (NaN becomes null; every accuracy a fraction with its ``ci95``), atomically."""
    text = json.dumps(_strict(with_intervals(result)), indent=2, sort_keys=False, allow_nan=False)
    return write_text(path, text + "\n")


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def plot_accuracy(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Bar chart: clean vs worst-case robust accuracy per setting, the paper's robust accuracy as markers."""
    names = list(result["settings"])
    clean = [100 * (result["settings"][name]["clean_accuracy"] or 0.0) for name in names]
    robust = [100 * (result["settings"][name]["robust_accuracy"] or 0.0) for name in names]
    positions = range(len(names))
    width = 0.38
    attack = result["attack"]
    title = (f"{result['dataset']['name']}: eps={attack['eps']:g}, {attack['steps']} steps, "
             f"n={result['dataset']['n_test']}" + (f"\n({quick_label(result)})" if quick_label(result) else ""))
    with png_figure(path, (9, 4.5), title) as (_, axes):
        axes.bar([p - width / 2 for p in positions], clean, width, label="clean", color="#4c72b0")
        axes.bar([p + width / 2 for p in positions], robust, width, label="robust (worst case)", color="#dd8452")
        paper = result.get("paper")
        if paper is not None:
            marks = [(p + width / 2, _paper_scale(paper) * paper["settings"][name]["robust_accuracy"])
                     for p, name in zip(positions, names) if name in paper["settings"]]
            if marks:
                axes.scatter([m[0] for m in marks], [m[1] for m in marks], marker="_", s=400, color="black",
                             linewidths=2, label="paper robust (Table II)", zorder=3)
        for p, value in zip(positions, robust):
            # Inside the bar's top where it fits, so it does not collide with the paper's marker.
            inside = value > 8
            axes.text(p + width / 2, value - 1 if inside else value + 1, f"{value:.0f}", ha="center",
                      va="top" if inside else "bottom", fontsize=8, color="white" if inside else "black")
        axes.set_xticks(list(positions))
        axes.set_xticklabels(names, rotation=20)
        axes.set_ylim(0, 118)
        axes.set_ylabel("accuracy (%)")
        axes.legend(loc="upper left", ncol=3, fontsize=8)
    return Path(path)


def plot_eps_curve(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """Robust accuracy against eps for the settings in ``result['curve']``; None when there is no curve."""
    curve = result.get("curve")
    if not curve or not curve.get("settings"):
        return None
    attack = "PGD-CE" if curve.get("attack") == "pgd_ce" else "attack suite"  # older results: PGD-CE only
    title = (f"{result['dataset']['name']}: {attack}, {curve['steps']} steps, n={curve['n']}"
             + (f"\n({quick_label(result)})" if quick_label(result) else ""))
    with png_figure(path, (6, 4.5), title) as (_, axes):
        for name, values in curve["settings"].items():
            axes.plot(curve["eps"], [100 * v for v in values], marker="o", label=name)
        axes.set_xlabel("eps (l_inf, pixel scale [0,1])")
        axes.set_ylabel("robust accuracy (%)")
        axes.set_ylim(-2, 102)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return Path(path)


def write_report(result: Mapping[str, Any], out_dir: str | os.PathLike[str],
                 plots: Sequence[str] = ("accuracy", "eps_curve")) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and the PNG plots into ``out_dir``; returns {kind: path}."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": str(write_json(result, folder / "results.json")),
        "markdown": str(write_markdown(result, folder / "results.md")),
    }
    if "accuracy" in plots:
        paths["accuracy_png"] = str(plot_accuracy(result, folder / "accuracy.png"))
    if "eps_curve" in plots:
        curve_path = plot_eps_curve(result, folder / "robustness_vs_eps.png")
        if curve_path is not None:
            paths["eps_curve_png"] = str(curve_path)
    return paths


def certify_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of certification summaries (``CertifyResult.summary()``), one row per eps, as the
    paper's Table IV: Unable / Success / Fail rates and the lower bounds on the certified fraction.

    The enumeration budget b applies to paper mode only: its column appears when some row is in paper
    mode, and reads "-" on the other rows (branch and bound has no b)."""

    def uses_b(r: Mapping[str, Any]) -> bool:
        return r.get("mode", "paper") == "paper" and "b" in r

    with_b = any(uses_b(r) for r in rows)
    head = ["eps"] + (["b"] if with_b else []) + ["Unable", "Success (s_hat)", "Fail", "Hoeffding LB",
                                                  "Clopper-Pearson LB", "paper formula", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [f"{r['eps']:.3f}"]
        if with_b:
            cells.append(f"{r['b']:g}" if uses_b(r) else "-")
        cells += [f"{100 * r['unable_rate']:.2f}%", f"{100 * r['certified_rate']:.2f}%", f"{100 * r['failed_rate']:.2f}%",
                  f"{100 * r['lower_hoeffding']:.2f}%", f"{100 * r['lower_clopper_pearson']:.2f}%",
                  f"{100 * r['lower_paper_formula']:.2f}%", f"{r['wall_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
