"""The `reproduce` report: a quick smoke run of every target, missing data, resumption and the paper's numbers."""

import json
import math
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from pixdisc import datasets, plan  # noqa: E402
from pixdisc.reproduce import PAPER_NUMBERS, TARGETS, reproduce  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = [name for name in TARGETS if name.startswith("fig")]
TABLES = [name for name in TARGETS if name.startswith("table")]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, reproduce("all", out, quick=True, progress=False)


def _sections(index: str) -> dict:
    return dict(re.findall(r"<!-- pixdisc:(\w+):start -->\n(.*?)<!-- pixdisc:\1:end -->", index, re.S))


@pytest.mark.slow
def test_quick_all_writes_every_target(quick_report):
    out, results = quick_report
    # "all" skips the fashion_mnist target: Tables I-III hold its rows already.
    assert set(results) == set(TARGETS) - {"all", "fashion_mnist"}
    sections = _sections((out / "index.md").read_text())
    assert set(sections) == set(results)
    for target, section in sections.items():
        headers = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][:1]
        assert headers and "paper" in headers[0], target
        assert "quick" in section
        data = json.loads((out / f"{target}.json").read_text())
        assert data["target"] == target and data["quick"] is True
        for png in data.get("pngs", []):
            assert (out / png).read_bytes()[:8] == PNG_MAGIC
            assert f"]({png})" in section
    # Data-only figures are computed on MNIST-5k and Fashion-MNIST whenever those load.
    assert any(entry["status"] == "ok" for entry in results["fig5"]["entries"])
    assert results["fig7"]["pngs"]


@pytest.mark.slow
def test_quick_tables_compare_with_paper(quick_report):
    _, results = quick_report
    mnist = [row for row in results["table2"]["rows"] if row["dataset"] == "mnist" and row["status"] == "ok"]
    assert mnist and all(len(row["ours"]) == 4 and len(row["paper"]) == 4 for row in mnist)
    assert all("quick: not comparable" in row["note"] for row in mnist)
    rows = results["table4"]["rows"]
    assert [row["eps"] for row in rows] == [entry[0] for entry in PAPER_NUMBERS["table4"]]
    # The Unable column is data only: done for every eps, even in quick mode.
    assert all(0 <= row["unable_data_only"] <= 100 for row in rows)
    assert rows[0]["unable_data_only"] == 0  # eps=0: every pixel keeps its code


@pytest.mark.slow
def test_missing_data_gives_rows_not_errors(quick_report, tmp_path):
    _, results = quick_report
    cifar = [row for row in results["table1"]["rows"] if row["dataset"] == "cifar10"]
    assert [row["status"] for row in cifar] == ["missing"]
    assert "--data-dir" in cifar[0]["message"] and "cifar" in cifar[0]["message"].lower()
    imagenet = [row for row in results["table2"]["rows"] if row["dataset"] == "imagenet"]
    assert imagenet[0]["status"] == "not available"
    # An empty data_dir: the message says where we looked.
    result = reproduce("fig3", tmp_path / "out", quick=True, data_dir=tmp_path / "nothing", progress=False)
    (entry,) = result["entries"]
    assert entry["status"] == "missing" and str(tmp_path / "nothing") in entry["message"]
    assert "missing" in (tmp_path / "out" / "index.md").read_text()


@pytest.mark.slow
def test_rerun_reuses_cached_models_and_merges_index(quick_report, monkeypatch):
    out, results = quick_report
    assert list((out / "models").rglob("*.pt"))

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was retrained")

    monkeypatch.setattr(plan, "train_setting", no_training)
    monkeypatch.setattr(plan, "train_model", no_training)
    again = reproduce("table2", out, quick=True, progress=False)
    assert [row.get("ours") for row in again["rows"]] == [row.get("ours") for row in results["table2"]["rows"]]
    assert set(_sections((out / "index.md").read_text())) == set(TARGETS) - {"all", "fashion_mnist"}


def test_unknown_target_lists_the_targets(tmp_path):
    with pytest.raises(ValueError, match="table1.*fig7.*all"):
        reproduce("table9", tmp_path)


def test_paper_table4_is_self_consistent():
    # Proposition 2 with delta=0.01 on m=10,000 images gives s_* from s_hat: a check of our transcription.
    factor = 1 - math.sqrt(math.log(100) / (2 * 10_000))
    for eps, b, unable, success, fail, s_star in PAPER_NUMBERS["table4"]:
        assert unable + success + fail == pytest.approx(100, abs=0.02), eps
        assert factor * success == pytest.approx(s_star, abs=0.011), eps


def test_paper_tables_agree_where_they_share_a_row():
    # k=256 (no discretization) is the same model in Tables I and II.
    for name in ("mnist", "fashion_mnist"):
        for base in ("natural", "adversarial"):
            assert PAPER_NUMBERS["table1"][name][base][256] == PAPER_NUMBERS["table2"][name][base][(256, None)]
    for name in ("cifar10", "gtsrb", "imagenet"):
        for base in ("natural", "adversarial"):
            assert PAPER_NUMBERS["table1"][name][base][256] == PAPER_NUMBERS["table2"][name][base][("256^3", None)]


def test_missing_fashion_mnist_is_reported(tmp_path, monkeypatch):
    def absent(data_dir=None):
        raise datasets.DatasetNotFoundError("fashion_mnist: not here. Install dataset-fashion-mnist",
                                            searched=[tmp_path])

    monkeypatch.setattr(datasets.registry, "load_fashion_mnist", absent)
    result = reproduce("fig7", tmp_path / "out", quick=True, progress=False)
    statuses = {entry["dataset"]: entry["status"] for entry in result["entries"]}
    assert statuses == {"mnist": "ok", "fashion_mnist": "missing"}


@pytest.mark.slow
@pytest.mark.skipif(not datasets.FASHION_MNIST_DIR.is_dir(),
                    reason=f"{datasets.FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_target_runs_the_three_tables_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "fm"
    result = reproduce("fashion_mnist", out, quick=True, progress=False)
    assert list(result["tables"]) == ["table1", "table2", "table3"]
    for table, rows in result["tables"].items():
        assert {row["dataset"] for row in rows} == {"fashion_mnist"}, table
        ours = [row for row in rows if row["status"] == "ok"]
        assert len(ours) == 4 and all(row["paper"] is not None or "none" in row["codebook"] for row in ours)
        # Clean accuracy on every test image; the suite on the quick run's n_test.
        assert all(row["n_clean"] == 10_000 and row["n_test"] < 10_000 for row in ours)
        disc = [row for row in ours if row["codes_255"] is not None]
        assert all(len(row["ours_ci95"]) == 2 and row["ours_ci95"][0][0] <= row["ours"][1] <= row["ours_ci95"][0][1]
                   for row in disc)
    assert result["config"]["dataset"] == "fashion_mnist"
    # Uniform k=2 and density k=2 are the same codes {0, 255}: one pair of re-trained networks serves both.
    book_dirs = sorted(path.name for path in (out / "models" / "quick-seed0" / "fashion_mnist").iterdir()
                       if path.is_dir())
    assert book_dirs == ["codes0-192", "codes0-255"]
    table1, table2 = result["tables"]["table1"], result["tables"]["table2"]
    assert [row["ours"] for row in table1] == [row["ours"] for row in table2]
    section = _sections((out / "index.md").read_text())["fashion_mnist"]
    assert section.count("### Table") == 3 and "quick" in section

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was retrained")

    monkeypatch.setattr(plan, "train_setting", no_training)
    monkeypatch.setattr(plan, "train_model", no_training)
    again = reproduce("fashion_mnist", out, quick=True, progress=False)
    assert again["tables"] == result["tables"]
