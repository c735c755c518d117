"""The six-setting experiment, the demo and its reports (JSON, Markdown, PNG)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
from pixdisc import cli
from pixdisc.attacks import ADAPTIVE_ORDER, GRADIENT_ORDER, SUITE
from pixdisc.experiments import (
    DEMO_CONFIG,
    FULL_SCALE_TRAINING,
    QUICK_CONFIG,
    attack_specs,
    check_paper_claims,
    config_for_dataset,
    run_experiment,
)
from pixdisc.models import load_model
from pixdisc.report import (PAPER_TABLE_II, markdown_table, paper_reference, plot_accuracy,
                            write_report)
from pixdisc.train import SETTINGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """`pixdisc demo --quick --json` once for the module: (exit code, parsed stdout, folder, seconds)."""
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["demo", "--quick", "--out", str(out), "--json"])
    seconds = time.perf_counter() - started
    return code, json.loads(stdout.getvalue()), out, seconds


def test_demo_quick_runs_fast_and_reports(quick_demo):
    code, report, out, seconds = quick_demo
    assert code == 0
    assert report["quick"] is True
    assert list(report["settings"]) == list(SETTINGS)
    for row in report["settings"].values():
        assert 0.0 <= row["robust_accuracy"] <= row["clean_accuracy"] <= 1.0
        after = list(row["robust_after"].values())
        # Cumulative over attacks: never increasing, ending at the worst case.
        assert after == sorted(after, reverse=True)
        assert after[-1] == row["robust_accuracy"]
        # Clean errors apart: the attacks count only images the model got right, and the three counts add up.
        assert row["clean_errors"] + sum(row["broken_by"].values()) + row["not_broken"] == row["n"]
        assert row["clean_errors"] == round(row["n"] * (1 - row["clean_accuracy"]))
        assert sum(row["broken_by"].values()) <= round(row["n"] * (1 - row["robust_accuracy"]))
        # Floor and ceiling: certified <= robust under attack, and the three statuses add up.
        assert row["ceiling"] == row["robust_accuracy"]
        if row["floor"] is not None:
            assert row["floor"] <= row["ceiling"]
            assert row["certified"] + row["broken"] + row["undecided"] == row["n"]
    # The S(x) search and Square run on the discretized settings only; certify's column too.
    # The demo's adaptive suite: the S(x) searches and Square first, then the BPDA gradient attacks.
    assert list(report["settings"]["disc_nat_pre"]["robust_after"]) == [*ADAPTIVE_ORDER, "certify"]
    assert list(report["settings"]["nat_pre"]["robust_after"]) == list(GRADIENT_ORDER)
    assert report["settings"]["nat_pre"]["floor"] is None
    assert report["codebook"]["codes_255"] == [[0], [253]]
    assert report["checks"]["codes_as_expected"]["passed"] is True
    # One unit in the file: the paper's percentages converted to fractions like ours.
    assert report["paper"]["settings"]["disc_adv_pre"] == {"clean_accuracy": 0.9817, "robust_accuracy": 0.9724}
    assert report["attack"]["eps"] == 0.3
    assert [a["name"] for a in report["attack"]["attacks"]] == list(ADAPTIVE_ORDER)
    assert report["attack"]["suite"] == "adaptive"
    assert set(report["versions"]) >= {"pixdisc", "torch", "numpy", "python"}
    assert report["timings"]["total"] > 0


def test_demo_quick_writes_parseable_files(quick_demo):
    _, report, out, _ = quick_demo
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"].keys() == report["settings"].keys()
    assert set(saved) >= {"config", "dataset", "codebook", "attack", "training", "settings", "paper", "checks",
                          "timings", "versions"}
    markdown = (out / "results.md").read_text()
    tables = "\n".join(line if line.startswith("|") else "" for line in markdown.splitlines()).split("\n\n")
    table, breakdown = [[line for line in block.splitlines() if line] for block in tables if block.strip()]
    assert len(table) == len(breakdown) == 2 + len(SETTINGS)
    # The second table counts images: clean errors, then what each attack broke among the rest.
    assert breakdown[0].startswith("| setting | n | clean errors | broken by S(x) search |")
    assert breakdown[0].endswith("| broken by certify | not broken |")
    assert table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert "ceiling (attacked)" in table[0] and "floor (certified)" in table[0] and "paper robust" in table[0]
    assert "arXiv:1805.07816" in markdown
    # The curve runs the table's suite (what applies to each setting) from eps = 0, clean accuracy.
    curve = saved["curve"]
    assert curve["eps"][0] == 0 and curve["attacks"]["disc_nat_pre"][0] == "sx"
    assert "sx" not in curve["attacks"]["nat_pre"] and "pgd_ce" in curve["attacks"]["nat_pre"]
    for values in curve["settings"].values():
        assert values[0] >= max(values[1:])
    # Quick runs say so; every accuracy is a fraction with its 95% interval around it.
    assert "Quick run: a smoke test, its numbers mean nothing" in markdown and "**NO**" not in markdown
    for row in saved["settings"].values():
        for key in ("clean_accuracy", "robust_accuracy"):
            low, high = row["ci95"][key]
            assert 0 <= low <= row[key] <= high <= 1
        assert set(row["ci95"]["robust_after"]) == set(row["robust_after"])
    for name in ("accuracy.png", "robustness_vs_eps.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    for setting in SETTINGS:
        model, meta = load_model(out / "models" / f"{setting}.pt", return_meta=True)
        assert meta["setting"] == setting
        assert (meta["defense"] is not None) == setting.startswith("disc_")
    assert (out / "codes.npz").exists()


def test_demo_model_files_attack_through_recorded_defense(quick_demo, capsys):
    _, _, out, _ = quick_demo
    code = cli.main(["attack", str(out / "models" / "disc_nat_pre.pt"), "--limit", "20", "--steps", "2",
                     "--step-size", "0.1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["defense"]["codes_255"] == [[0], [253]]
    assert report["setting"] == "disc_nat_pre"
    assert report["n"] == 20


def test_evaluate_subset_on_digits(tmp_path, capsys):
    out = tmp_path / "digits"
    code = cli.main(["evaluate", "--dataset", "digits", "--quick", "--settings", "nat_pre,disc_nat_re",
                     "--no-curve", "--out", str(out), "-q"])
    assert code == 0
    text = capsys.readouterr().out
    assert "`nat_pre`" in text and "`disc_nat_re`" in text and "`adv_pre`" not in text
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["settings"]) == ["nat_pre", "disc_nat_re"]
    assert saved["paper"] is None and saved["curve"] is None
    assert (out / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "robustness_vs_eps.png").exists()


def test_config_for_dataset_uses_paper_budgets():
    fashion = config_for_dataset("fashion-mnist")
    assert (fashion.eps, fashion.steps, fashion.k, fashion.r, fashion.alpha) == (0.1, 100, 2, 0.2, 10.0)
    # On the whole 60,000-image split the training budget is Fashion-MNIST's full-scale one...
    assert fashion.n_train is None and fashion.adversarial_epochs == FULL_SCALE_TRAINING["fashion_mnist"][
        "adversarial_epochs"] < DEMO_CONFIG.adversarial_epochs
    # ... a subset keeps the base's epochs, and explicit overrides win over both.
    assert config_for_dataset("fashion_mnist", QUICK_CONFIG).adversarial_epochs == QUICK_CONFIG.adversarial_epochs
    assert config_for_dataset("fashion_mnist", adversarial_epochs=9).adversarial_epochs == 9
    mnist = config_for_dataset("mnist5k", n_test=None)
    assert (mnist.eps, mnist.steps, mnist.step_size, mnist.k, mnist.r) == (0.3, 100, 0.01, 2, 0.6)
    assert mnist.n_test == DEMO_CONFIG.n_test  # a None override means "keep the default"
    cifar = config_for_dataset("cifar10")
    assert math.isclose(cifar.alpha, 25.5) and math.isclose(cifar.eps, 8 / 255)
    assert QUICK_CONFIG.steps < DEMO_CONFIG.steps


def test_attack_specs_are_the_papers_attacks():
    assert [getattr(s, "__name__", None) or s["name"] for s in attack_specs(0.3, 100, 0.01)] == list(SUITE)
    specs = attack_specs(0.3, 100, 0.01, ["pgd_ce", "pgd_cw", "adam_sign"])
    assert [(s["attack"], s["loss"]) for s in specs] == [("pgd", "ce"), ("pgd", "cw"), ("adam_sign", "cw")]
    assert all(s["eps"] == 0.3 and s["steps"] == 100 and s["step_size"] == 0.01 for s in specs)
    with pytest.raises(ValueError, match="unknown attack"):
        attack_specs(0.3, 10, 0.1, ["fgsm"])


def test_run_experiment_rejects_bad_settings_and_codebooks():
    with pytest.raises(ValueError, match="unknown setting"):
        run_experiment(QUICK_CONFIG.replace(settings=("nat_pre", "bogus")), progress=False)
    import pixdisc

    rgb = pixdisc.Codebook([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="channel"):
        run_experiment(QUICK_CONFIG.replace(dataset="digits", settings=("nat_pre",)), codebook=rgb,
                       progress=False)


def test_paper_table_is_copied_exactly():
    mnist = PAPER_TABLE_II["mnist"]["settings"]
    assert mnist["nat_pre"] == (99.17, 0.00)
    assert mnist["adv_pre"] == (98.40, 92.72)
    assert mnist["disc_nat_pre"] == (98.81, 75.35)
    assert mnist["disc_adv_pre"] == (98.17, 97.24)
    assert mnist["disc_nat_re"] == (99.15, 80.91)
    assert mnist["disc_adv_re"] == (98.56, 92.80)
    assert paper_reference("mnist5k")["dataset"] == "mnist"
    assert paper_reference("cifar10") is None


def _synthetic_result(robust: dict[str, float]) -> dict:
    attacks = [{"name": "pgd_ce", "label": "PGD-CE"}, {"name": "pgd_cw", "label": "PGD-CW"}]
    rows = {
        name: {"n": 100, "clean_accuracy": 0.98, "robust_accuracy": value,
               "robust_after": {"pgd_ce": min(1.0, value + 0.01), "pgd_cw": value}, "broken_by": {}}
        for name, value in robust.items()
    }
    return {
        "dataset": {"name": "mnist5k", "n_train": 4000, "n_test": 100, "shape": [1, 28, 28]},
        "attack": {"eps": 0.3, "steps": 100, "step_size": 0.01, "attacks": attacks},
        "settings": rows,
        "paper": paper_reference("mnist5k"),
        "curve": {"eps": [0.1, 0.3], "steps": 40, "n": 100, "settings": {"nat_pre": [0.5, 0.0]}},
    }


def test_paper_claims_pass_and_fail():
    good = _synthetic_result({"nat_pre": 0.0, "adv_pre": 0.6, "disc_nat_pre": 0.75, "disc_adv_pre": 0.85,
                              "disc_nat_re": 0.8, "disc_adv_re": 0.83})
    assert all(check["passed"] for check in check_paper_claims(good).values())
    assert len(check_paper_claims(good)) == 3
    bad = _synthetic_result({"nat_pre": 0.2, "adv_pre": 0.6, "disc_nat_pre": 0.3, "disc_adv_pre": 0.7,
                             "disc_nat_re": 0.8, "disc_adv_re": 0.75})
    assert not any(check["passed"] for check in check_paper_claims(bad).values())


def _make_reportable(result: dict) -> dict:
    result.update(config={}, codebook={"kind": "DensityCodebook", "params": {"k": 2, "r": 0.6, "metric": "linf"},
                                       "codes_255": [[0], [253]]},
                  defense={"alpha": 10.0, "bpda": "soft"},
                  training={"arch": "small_cnn", "natural_epochs": 1, "adversarial_epochs": 1,
                            "retrain_epochs": 1, "adversarial_retrain_epochs": 1,
                            "adversarial": {"eps": 0.3, "steps": 10, "step_size": 0.04}},
                  checks={}, timings={"total": 1.0}, versions={"pixdisc": "0"})
    return result


def test_markdown_and_plots_from_a_result(tmp_path):
    result = _synthetic_result({name: 0.5 for name in SETTINGS})
    table = markdown_table(result).splitlines()
    assert table[0] == ("| setting | clean | PGD-CE | +PGD-CW | ceiling (attacked) | floor (certified) | undecided "
                        "| paper clean | paper robust |")
    # Clean, ceiling and floor carry 95% Clopper-Pearson intervals over the n = 100 images.
    clean, half = "98.0 (93.0–99.8)", "50.0 (39.8–60.2)"
    assert table[2].startswith(f"| `nat_pre` | {clean} | 51.0 | 50.0 | **{half}** | — | — | 99.17 | 0.00 |")
    result["settings"]["disc_nat_pre"].update(floor=0.5, undecided=0, exact=True)
    assert f"| `disc_nat_pre` | {clean} | 51.0 | 50.0 | **{half}** (exact) | {half} | 0 |" in markdown_table(result)
    assert plot_accuracy(result, tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC
    _make_reportable(result)
    result["settings"]["nat_pre"]["clean_accuracy"] = float("nan")  # strict JSON: becomes null
    files = write_report(result, tmp_path / "report")
    assert json.loads(Path(files["json"]).read_text())["settings"]["nat_pre"]["clean_accuracy"] is None
    assert set(files) == {"json", "markdown", "accuracy_png", "eps_curve_png"}


def test_quick_runs_are_marked_in_every_figure(monkeypatch, tmp_path):
    import contextlib

    from pixdisc.report import experiment as report_module

    titles = []

    @contextlib.contextmanager
    def recording(path, size, title):
        titles.append(title)
        with real(path, size, title) as figure:
            yield figure

    real = report_module.png_figure
    monkeypatch.setattr(report_module, "png_figure", recording)
    result = _make_reportable(_synthetic_result({name: 0.5 for name in SETTINGS}))
    for quick in (False, True):
        titles.clear()
        write_report({**result, "quick": quick}, tmp_path / str(quick))
        assert len(titles) == 2 and all(("smoke test" in title) == quick for title in titles), titles
