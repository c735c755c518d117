"""The experiment report's figures and counts: floor, ceiling and interval; quick runs; clean errors apart."""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")
from pixdisc.attacks import AttackResult
from pixdisc.experiments import summarise_result
from pixdisc.report import experiment as report_module
from pixdisc.report import paper_reference
from pixdisc.train import SETTINGS

ATTACKS = [{"name": "pgd_ce", "label": "PGD-CE"}, {"name": "pgd_cw", "label": "PGD-CW"}]


def _result(**extra) -> dict:
    """A six-setting result as run_experiment writes it: the disc_* rows certified, the bare ones not."""
    rows = {}
    for position, name in enumerate(SETTINGS):
        ceiling = 0.40 + 0.08 * position
        row = {"n": 100, "clean_accuracy": 0.9, "robust_accuracy": ceiling,
               "robust_after": {"pgd_ce": ceiling + 0.01, "pgd_cw": ceiling},
               "broken_by": {"pgd_ce": 49 - 8 * position, "pgd_cw": 1}, "clean_errors": 10,
               "not_broken": 40 + 8 * position, "floor": None}
        if name.startswith("disc_"):
            row.update(floor=ceiling - 0.2 if name != "disc_adv_re" else ceiling, undecided=20, exact=False)
        rows[name] = row
    result = {
        "dataset": {"name": "mnist5k", "n_train": 4000, "n_test": 100, "shape": [1, 28, 28]},
        "attack": {"eps": 0.3, "steps": 100, "step_size": 0.01, "attacks": ATTACKS},
        "settings": rows,
        "paper": paper_reference("mnist5k"),
        "curve": {"eps": [0.0, 0.1, 0.3], "steps": 40, "n": 100,
                  "settings": {"nat_pre": [0.9, 0.5, 0.0], "disc_nat_pre": [0.9, 0.7, 0.4],
                               "adv_pre": [0.9, 0.5, 0.0], "disc_adv_pre": [0.9, 0.8, 0.6]}},
        "codebook": {"kind": "DensityCodebook", "params": {"k": 2, "r": 0.6, "metric": "linf"},
                     "codes_255": [[0], [253]]},
        "defense": {"alpha": 10.0, "bpda": "soft"},
        "training": {"arch": "small_cnn", "natural_epochs": 1, "adversarial_epochs": 1, "retrain_epochs": 1,
                     "adversarial_retrain_epochs": 1, "adversarial": {"eps": 0.3, "steps": 10, "step_size": 0.04}},
        "checks": {"adversarial_defended_most_robust": {
            "description": "the adversarially trained model behind discretization is the most robust",
            "passed": False, "detail": "disc_adv_re 10.0% vs best other adv_pre 12.0%"}},
        "timings": {"total": 1.0},
        "versions": {"pixdisc": "0"},
    }
    result.update(extra)
    return result


@pytest.fixture
def drawn_axes(monkeypatch):
    """The axes of every figure the report writes, kept after the file is written (artists, not pixels)."""
    kept = []
    real = report_module.png_figure

    @contextlib.contextmanager
    def keeping(path, size, title=None, **options):
        with real(path, size, title, **options) as (figure, axes):
            kept.append(axes)
            yield figure, axes

    monkeypatch.setattr(report_module, "png_figure", keeping)
    return kept


def _bars(axes, label: str) -> list:
    containers = [c for c in axes.containers if c.get_label() == label and hasattr(c, "patches")]
    assert len(containers) == 1, [c.get_label() for c in axes.containers]
    return list(containers[0].patches)


def test_accuracy_figure_shows_clean_ceiling_floor_and_the_interval(drawn_axes, tmp_path):
    result = _result()
    report_module.plot_accuracy(result, tmp_path / "accuracy.png")
    (axes,) = drawn_axes
    rows = result["settings"]
    certified = [name for name in SETTINGS if rows[name]["floor"] is not None]
    bare = [name for name in SETTINGS if rows[name]["floor"] is None]
    assert [bar.get_height() for bar in _bars(axes, "clean")] == pytest.approx([90.0] * len(SETTINGS))
    # Certified settings: a floor bar from 0, and the undecided part stacked on it up to the ceiling.
    floors = _bars(axes, "floor (certified)")
    assert [bar.get_height() for bar in floors] == pytest.approx([100 * rows[n]["floor"] for n in certified])
    undecided = _bars(axes, "undecided: between floor and ceiling")
    assert [bar.get_y() for bar in undecided] == pytest.approx([100 * rows[n]["floor"] for n in certified])
    assert [bar.get_y() + bar.get_height() for bar in undecided] == pytest.approx(
        [100 * rows[n]["robust_accuracy"] for n in certified])
    assert undecided[0].get_hatch()  # told apart from the proved part by more than colour
    # Settings certify did not run on: the ceiling alone, called what it is.
    ceilings = _bars(axes, "ceiling (attacked), not certified")
    assert [bar.get_height() for bar in ceilings] == pytest.approx([100 * rows[n]["robust_accuracy"] for n in bare])
    # The interval [floor, ceiling] as a capped bar per certified setting.
    (interval,) = [c for c in axes.containers if c.get_label() == "robust accuracy [floor, ceiling]"]
    spans = sorted((min(s[0][1], s[1][1]), max(s[0][1], s[1][1])) for s in interval.lines[2][0].get_segments())
    assert spans == pytest.approx(sorted((100 * rows[n]["floor"], 100 * rows[n]["robust_accuracy"])
                                         for n in certified))
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert {"clean", "floor (certified)", "ceiling (attacked), not certified"} <= set(legend)
    # An exact interval (floor == ceiling) says so in its label.
    assert any(text.get_text().endswith("exact") for text in axes.texts)


def test_accuracy_bars_are_the_rows_in_percent():
    result = _result()
    bars = report_module.accuracy_bars(result)
    assert list(bars) == list(SETTINGS)
    assert bars["nat_pre"]["floor"] is None and bars["nat_pre"]["ceiling"] == pytest.approx(40.0)
    assert bars["disc_nat_pre"] == pytest.approx({"clean": 90.0, "ceiling": 56.0, "floor": 36.0,
                                                  "paper": 75.35})


def test_eps_curves_that_coincide_stay_distinguishable(drawn_axes, tmp_path):
    result = _result()
    assert report_module.plot_eps_curve(result, tmp_path / "curve.png") is not None
    (axes,) = drawn_axes
    lines = axes.get_lines()
    assert len(lines) == 4
    # nat_pre and adv_pre have the same values: the line drawn on top must not hide the other.
    looks = {(line.get_marker(), str(line.get_linestyle())) for line in lines}
    assert len(looks) == len(lines)
    nat, adv = lines[0], lines[2]
    assert list(nat.get_ydata()) == list(adv.get_ydata()) == [90.0, 50.0, 0.0]  # no values moved to show them
    assert adv.get_linewidth() < nat.get_linewidth() and adv.get_markersize() < nat.get_markersize()
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["nat_pre", "disc_nat_pre", "adv_pre (same as nat_pre)", "disc_adv_pre"]


def test_quick_report_is_a_smoke_test_and_judges_no_check(tmp_path):
    quick = report_module.write_markdown(_result(quick=True), tmp_path / "quick.md").read_text()
    assert "smoke test" in quick and "mean nothing" in quick
    assert "**NO**" not in quick and "not judged" in quick
    assert report_module.check_verdict({"quick": True}, {"passed": False}) == "not judged (smoke test)"
    full = report_module.write_markdown(_result(), tmp_path / "full.md").read_text()
    assert "**NO**" in full and "smoke test" not in full


def test_quick_figures_say_smoke_test(drawn_axes, tmp_path):
    report_module.write_report(_result(quick=True), tmp_path / "report")
    assert len(drawn_axes) == 2
    assert all("smoke test" in axes.get_title() for axes in drawn_axes)


def _attack_result(clean_correct, success, attack_index) -> AttackResult:
    clean_correct = torch.tensor(clean_correct)
    success = torch.tensor(success)
    n = len(success)
    labels = torch.zeros(n, dtype=torch.int64)
    return AttackResult(x_adv=None, success=success, clean_correct=clean_correct, adv_correct=~success,
                        clean_pred=torch.where(clean_correct, labels, labels + 1),
                        adv_pred=torch.where(success, labels + 1, labels), loss=torch.zeros(n),
                        margin=torch.zeros(n), attack_index=torch.tensor(attack_index))


def test_broken_by_counts_only_images_that_were_right_before_the_attack():
    # Images 0 and 4 are wrong before any attack (the first attack "succeeds" on them for free);
    # the first attack breaks image 1, the second image 3; image 2 survives.
    result = _attack_result(clean_correct=[False, True, True, True, False],
                            success=[True, True, False, True, True], attack_index=[0, 0, 0, 1, 0])
    row = summarise_result(result, ["pgd_ce", "pgd_cw"])
    assert row["clean_errors"] == 2
    assert row["broken_by"] == {"pgd_ce": 1, "pgd_cw": 1}
    assert row["not_broken"] == 1
    assert row["clean_errors"] + sum(row["broken_by"].values()) + row["not_broken"] == row["n"]
    # Accuracies are unchanged: clean errors are not robust.
    assert row["robust_after"] == {"pgd_ce": 0.4, "pgd_cw": 0.2}
    assert row["robust_accuracy"] == 0.2 and row["clean_accuracy"] == 0.6


def test_report_lists_clean_errors_apart_from_attack_breaks(tmp_path):
    result = _result()
    table = report_module.breakdown_table(result).splitlines()
    assert table[0] == "| setting | n | clean errors | broken by PGD-CE | broken by PGD-CW | not broken |"
    assert table[2] == "| `nat_pre` | 100 | 10 | 49 | 1 | 40 |"
    # A row from before the split (no not_broken: its broken_by holds the clean errors) claims no attack counts.
    del result["settings"]["nat_pre"]["not_broken"]
    assert report_module.breakdown_table(result).splitlines()[2] == "| `nat_pre` | 100 | 10 | — | — | — |"
    markdown = report_module.write_markdown(result, tmp_path / "results.md").read_text()
    assert "## Clean errors and attack breaks (images)" in markdown
