"""Write experiment results: JSON, a Markdown table shaped like the paper's Table II, and PNG plots.

The intervals come from :mod:`pixdisc.statistics`, the paper's numbers (``result["paper"]``) from
:mod:`pixdisc.paper`; this module only lays them out."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._files import write_text
from ..statistics import accuracy_interval, with_intervals
from .figure import png_figure

__all__ = [
    "SETTING_LABELS",
    "accuracy_bars",
    "breakdown_table",
    "check_verdict",
    "draw_accuracy",
    "draw_eps_curve",
    "markdown_table",
    "plot_accuracy",
    "plot_eps_curve",
    "quick_label",
    "write_json",
    "write_markdown",
    "write_report",
    "certify_table",
]

SETTING_LABELS: dict[str, str] = {
    "nat_pre": "natural, no defense",
    "adv_pre": "adversarial, no defense",
    "disc_nat_pre": "natural + discretization (pre-trained)",
    "disc_adv_pre": "adversarial + discretization (pre-trained)",
    "disc_nat_re": "natural, re-trained on discretized images",
    "disc_adv_re": "adversarial, re-trained through BPDA",
}


def _percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.1f}"


def _paper_scale(paper: Mapping[str, Any]) -> float:
    """Factor to percent: results.json files without a "unit" store the paper's numbers in percent."""
    return 100.0 if paper.get("unit") == "fraction" else 1.0


def _percent_ci(value: float | None, n: int | None) -> str:
    interval = accuracy_interval(value, n)
    if interval is None:
        return _percent(value)
    return f"{_percent(value)} ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})"


def quick_label(result: Mapping[str, Any]) -> str:
    """What marks a quick run in every file and figure ("" for a full run)."""
    return "quick run: a smoke test, its numbers mean nothing" if result.get("quick") else ""


def check_verdict(result: Mapping[str, Any], check: Mapping[str, Any]) -> str:
    """How a check of ``result['checks']`` reads: "yes", "NO", or, in a quick run, that nobody judges it.

    A quick run's budgets are far too small for the paper's claims to hold or
    fail, so a claim that fails there is no failure and is not shown as one.
    """
    if result.get("quick"):
        return "not judged (smoke test)"
    return "yes" if check["passed"] else "NO"


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


def wall_time_text(seconds: float) -> str:
    """A run's wall time as the report and the CLI print it, e.g. ``5 min 07 s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def breakdown_table(result: Mapping[str, Any]) -> str:
    """Where each setting's images went, as counts: clean errors, first broken by each attack, not broken.

    Only images the model classified correctly count under an attack, so the
    columns add up to ``n``. Rows from before the two were kept apart (no
    ``not_broken`` key: their ``broken_by`` includes the clean errors) show
    "—" in the attack columns. "" when no row has the counts.
    """
    rows = result["settings"]
    if not any("clean_errors" in row for row in rows.values()):
        return ""
    labels = {attack["name"]: attack["label"] for attack in result["attack"]["attacks"]}
    labels["certify"] = "certify"
    attacks = [name for name in labels if any(name in row.get("broken_by", {}) for row in rows.values())]
    header = ["setting", "n", "clean errors"] + [f"broken by {labels[name]}" for name in attacks] + ["not broken"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, row in rows.items():
        cells = [f"`{name}`", str(row["n"]), str(row.get("clean_errors", "—"))]
        separated = "not_broken" in row
        for attack in attacks:
            count = row.get("broken_by", {}).get(attack)
            cells.append("—" if count is None or not separated else str(count))
        cells.append(str(row["not_broken"]) if separated else "—")
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
        f"{attack['step_size']:g}, through BPDA where the defense is present): {_suite_text(attack) or names}; "
        f"accuracies in % "
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
    limits = [f"at most {budget['nodes']} node{'s' if budget['nodes'] != 1 else ''}"]
    if budget.get("work") is not None:
        limits.append(f"{budget['work']:g} forward passes of work")
    if budget.get("seconds") is not None:
        limits.append(f"{budget['seconds']:g} s")
    return f"{bound}, " + " and ".join(limits)


def _suite_text(attack: Mapping[str, Any]) -> str:
    """How the adaptive suite split its effort, from the report's attack entries ("" for the full suite)."""
    if attack.get("suite") != "adaptive":
        return ""
    parts = []
    for entry in attack["attacks"]:
        where = ("every image" if "focus" not in entry
                 else f"the {100 * entry['focus']:g}% of survivors closest to breaking")
        parts.append(f"{entry['label']} on {where}" + (", while the one before still broke something"
                                                         if entry.get("chained") else ""))
    return "the adaptive suite, in order: " + "; ".join(parts)


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
        lines += [f"**{quick_label(result).capitalize()}.** Every step ran once with tiny budgets (training on "
                  f"{result['dataset']['n_train']} images, attacks and certify on {result['dataset']['n_test']}), "
                  "to show that the code works. Its accuracies and checks say nothing about the defense, good or bad; run without "
                  "`--quick` for the experiment itself.", ""]
    lines += _describe(result)
    lines += ["", markdown_table(result), ""]
    breakdown = breakdown_table(result)
    if breakdown:
        lines += ["## Clean errors and attack breaks (images)", "",
                  "Clean errors are the images the model got wrong before any attack. Each attack column counts "
                  "only images the model got right: those that attack was the first to break (the attacks run in "
                  "the table's order, each on what the ones before it left). Not broken: right, and no attack "
                  "broke them. Each row adds up to n.", "",
                  breakdown, ""]
    paper = result.get("paper")
    if paper is not None:
        lines.append(
            f"Paper columns: {paper['source']}; its {paper['dataset']} row (eps={paper['eps']:g}, "
            f"k={paper['k']}, r={paper['r']}), full data set and Madry et al.'s models."
        )
        lines.append("")
    checks = result.get("checks", {})
    if checks:
        lines += ["## Checks" + (" (not judged: a smoke test)" if result.get("quick") else ""), ""]
        for check in checks.values():
            lines.append(f"- {check['description']}: **{check_verdict(result, check)}** ({check['detail']})")
        lines.append("")
    timings = result.get("timings", {})
    if timings:
        run = result.get("run", {})
        lines += ["## Timings (seconds)", ""]
        if "total" in timings:
            lines += [f"Wall time {wall_time_text(timings['total'])} on {run.get('cores', '?')} cores "
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


def accuracy_bars(result: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """What ``accuracy.png`` draws per setting, in percent: ``clean``, ``ceiling`` (robust under attack),
    ``floor`` (certified; None where certify did not run) and ``paper`` (Table II's robust accuracy, or None)."""
    paper = result.get("paper")
    bars: dict[str, dict[str, float | None]] = {}
    for name, row in result["settings"].items():
        floor = row.get("floor")
        reference = None if paper is None else paper["settings"].get(name)
        bars[name] = {
            "clean": 100 * (row["clean_accuracy"] or 0.0),
            "ceiling": 100 * (row["robust_accuracy"] or 0.0),
            "floor": None if floor is None else 100 * floor,
            "paper": None if reference is None else _paper_scale(paper) * reference["robust_accuracy"],
        }
    return bars


# Colours of accuracy.png, one per idea: clean, what the attacks left (ceiling), what certify proved (floor).
_CLEAN, _CEILING, _FLOOR = "#4c72b0", "#dd8452", "#55a868"


def draw_accuracy(axes: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    """Draw :func:`accuracy_bars` on ``axes``: per setting a clean bar and, beside it, robust accuracy as the
    interval [floor, ceiling]. Returns the artists by role (a role no setting needs is None).

    The robust bar is solid green up to the certified floor and hatched orange from there to the attacked
    ceiling: the hatched part is what neither side decided. A setting that certify did not run on (no
    discretizer) has a plain orange bar up to its ceiling: nothing under it is proved.
    """
    bars = accuracy_bars(result)
    names = list(bars)
    width = 0.38
    clean_x = [p - width / 2 for p in range(len(names))]
    robust_x = [p + width / 2 for p in range(len(names))]
    certified = [(x, bars[name]) for x, name in zip(robust_x, names) if bars[name]["floor"] is not None]
    uncertified = [(x, bars[name]) for x, name in zip(robust_x, names) if bars[name]["floor"] is None]
    artists: dict[str, Any] = {"clean": axes.bar(clean_x, [bars[name]["clean"] for name in names], width,
                                                label="clean", color=_CLEAN),
                               "ceiling": None, "floor": None, "undecided": None, "interval": None, "paper": None}
    if uncertified:
        artists["ceiling"] = axes.bar([x for x, _ in uncertified], [bar["ceiling"] for _, bar in uncertified],
                                      width, label="ceiling (attacked), not certified", color=_CEILING)
    if certified:
        x = [x for x, _ in certified]
        floors = [bar["floor"] for _, bar in certified]
        ceilings = [bar["ceiling"] for _, bar in certified]
        artists["floor"] = axes.bar(x, floors, width, label="floor (certified)", color=_FLOOR)
        artists["undecided"] = axes.bar(x, [c - f for c, f in zip(ceilings, floors)], width, bottom=floors,
                                        label="undecided: between floor and ceiling", facecolor="white",
                                        edgecolor=_CEILING, hatch="///", linewidth=1.2)
        # The interval itself, capped at both ends, so that it shows even where it is a few points wide.
        middle = [(c + f) / 2 for c, f in zip(ceilings, floors)]
        artists["interval"] = axes.errorbar(x, middle, yerr=[[m - f for m, f in zip(middle, floors)],
                                                              [c - m for c, m in zip(ceilings, middle)]],
                                            fmt="none", ecolor="black", elinewidth=1.2, capsize=6, zorder=4,
                                            label="robust accuracy [floor, ceiling]")
    marks = [(x, bars[name]["paper"]) for x, name in zip(robust_x, names) if bars[name]["paper"] is not None]
    if marks:
        artists["paper"] = axes.scatter([m[0] for m in marks], [m[1] for m in marks], marker="_", s=400,
                                        color="black", linewidths=2, label="paper robust (Table II)", zorder=3)
    for x, name in zip(robust_x, names):
        bar = bars[name]
        if bar["floor"] is None:
            text = f"{bar['ceiling']:.0f}"
        elif bar["floor"] == bar["ceiling"]:
            text = f"{bar['ceiling']:.0f} exact"
        else:
            digits = 1 if round(bar["floor"]) == round(bar["ceiling"]) else 0
            text = f"{bar['floor']:.{digits}f}–{bar['ceiling']:.{digits}f}"
        axes.text(x, bar["ceiling"] + 1.5, text, ha="center", va="bottom", fontsize=7)
    axes.set_xticks(list(range(len(names))))
    axes.set_xticklabels(names, rotation=20)
    axes.set_ylim(0, 125)
    axes.set_ylabel("accuracy (%)")
    axes.legend(loc="upper left", ncol=3, fontsize=7)
    return artists


def plot_accuracy(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``accuracy.png``: per setting clean accuracy and the robust interval [certified floor, attacked ceiling]
    (:func:`draw_accuracy`), the paper's robust accuracy as markers."""
    attack = result["attack"]
    title = (f"{result['dataset']['name']}: eps={attack['eps']:g}, {attack['steps']} steps, "
             f"n={result['dataset']['n_test']}" + (f"\n({quick_label(result)})" if quick_label(result) else ""))
    with png_figure(path, (9, 4.8), title) as (_, axes):
        draw_accuracy(axes, result)
    return Path(path)


# One look per curve of robustness_vs_eps.png, so that curves that coincide stay apart: later curves are drawn
# thinner, with smaller hollow markers and another dash pattern, on top of the earlier ones.
_CURVE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_CURVE_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)))


def draw_eps_curve(axes: Any, curve: Mapping[str, Any]) -> list[Any]:
    """Draw robust accuracy against eps, one line per setting of ``curve['settings']``; returns the lines.

    A setting whose values equal an earlier one's says so in the legend ("same as ..."), since its line
    lies exactly on the other.
    """
    lines = []
    drawn: dict[tuple[float, ...], str] = {}
    for index, (name, values) in enumerate(curve["settings"].items()):
        key = tuple(float(v) for v in values)
        label = name if key not in drawn else f"{name} (same as {drawn[key]})"
        drawn.setdefault(key, name)
        (line,) = axes.plot(curve["eps"], [100 * v for v in values], label=label,
                            marker=_CURVE_MARKERS[index % len(_CURVE_MARKERS)],
                            linestyle=_CURVE_LINESTYLES[index % len(_CURVE_LINESTYLES)],
                            linewidth=max(2.8 - 0.4 * index, 1.0), markersize=max(10 - 1.2 * index, 4),
                            markerfacecolor="none", markeredgewidth=1.4, zorder=2 + index)
        lines.append(line)
    axes.set_xlabel("eps (l_inf, pixel scale [0,1])")
    axes.set_ylabel("robust accuracy (%)")
    axes.set_ylim(-2, 102)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return lines


def plot_eps_curve(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """Robust accuracy against eps for the settings in ``result['curve']`` (:func:`draw_eps_curve`); None when
    there is no curve."""
    curve = result.get("curve")
    if not curve or not curve.get("settings"):
        return None
    attack = "PGD-CE" if curve.get("attack") == "pgd_ce" else "attack suite"  # older results: PGD-CE only
    title = (f"{result['dataset']['name']}: {attack}, {curve['steps']} steps, n={curve['n']}"
             + (f"\n({quick_label(result)})" if quick_label(result) else ""))
    with png_figure(path, (6, 4.5), title) as (_, axes):
        draw_eps_curve(axes, curve)
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
