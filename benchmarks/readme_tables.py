"""Write the README's measured tables from the result JSONs, between their markers, so no number is typed.

    python benchmarks/readme_tables.py            # after the runs named below; needs no data, only the JSONs

It first re-renders each `benchmarks/*.md` from its JSON (so the Markdown
files and the README cannot drift from the data), then fills:

- `<!-- core-benchmarks -->`: `benchmarks/core.json` (`python -m pytest benchmarks/test_bench_core.py
  --benchmark-only --benchmark-json=benchmarks/core.json`), rendered by benchmarks/report.py;
- `<!-- certify-native -->`: `benchmarks/certify.json` (`python -m pytest benchmarks/test_bench_certify.py
  --benchmark-only --benchmark-json=benchmarks/certify.json`), benchmarks/report.py;
- `<!-- torch-benchmarks -->`: `benchmarks/torch.json` (`PIXDISC_BENCH_TORCH_THREADS=1 python -m pytest
  benchmarks/test_bench_torch.py --benchmark-only --benchmark-json=benchmarks/torch.json`), benchmarks/report.py;
- `<!-- analysis-mnist -->`: `benchmarks/analysis_mnist.json` (benchmarks/analysis_mnist.py; the paper's
  row from `pixdisc.paper.table_iv()`);
- `<!-- analysis-neighbourhoods -->`: `benchmarks/analysis.json` (`python -m pytest
  benchmarks/test_bench_analysis.py --benchmark-only --benchmark-json=benchmarks/analysis.json`), benchmarks/report.py;
- `<!-- certify-mnist -->`: `benchmarks/certify_mnist.json` (benchmarks/certify_mnist.py);
- `<!-- demo-table -->`: `benchmarks/demo/results.json`, written by `pixdisc demo` (the report
  folder's results.json/md and PNGs copied there; table, wall time, machine load);
- `<!-- attack-strength -->`: `benchmarks/attack_strength.json` (benchmarks/attack_strength.py);
- `<!-- interval-certified -->`: `benchmarks/interval_certified.json` (benchmarks/interval_certified.py);
- `<!-- fashion-mnist -->`: `benchmarks/fashion_mnist/*.json` (benchmarks/fashion_mnist_sweep.py,
  benchmarks/fashion_mnist_certified.py, `pixdisc reproduce fashion_mnist`), rendered with
  `benchmarks/fashion_mnist.md` by benchmarks/fashion_mnist_report.py;
- `<!-- certify-scale -->`: `benchmarks/certify_scale.json` (benchmarks/certify_scale.py);
- `<!-- fashion-mnist-tiers -->`: `benchmarks/fashion_mnist/tiers.json` (benchmarks/fashion_mnist_tiers.py);
- `<!-- demo-tiers -->`: `benchmarks/demo_tiers.json` (benchmarks/demo_tiers.py);
- `<!-- demo-suite -->`: `benchmarks/demo_suite.json` (benchmarks/demo_suite.py: the demo timed, and its adaptive
  suite against the full suite on the same models);
- `<!-- mnist5k-recipe -->`: `benchmarks/mnist5k_recipe.json` (benchmarks/mnist5k_recipe.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Callable

from pixdisc.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))


def _demo_block() -> str:
    result = json.loads((ROOT / "benchmarks" / "demo" / "results.json").read_text())
    timings = result["timings"]
    minutes, seconds = divmod(round(timings["total"]), 60)
    run = result.get("run", {})
    lines = [markdown_table(result), "",
             f"Command: `pixdisc demo` (seed {result['config']['seed']}; its report is in `benchmarks/demo/`); "
             f"wall time "
             f"**{minutes} min {seconds:02d} s** on {run.get('cores', '?')} cores, load average "
             f"{run.get('load_before', '?')} before the run; per stage: "
             + ", ".join(f"{name} {value:.0f} s" for name, value in timings.items() if name != "total") + "."]
    curve = result.get("curve")
    if curve and curve.get("settings"):
        lines += ["", f"Robustness against eps (`robustness_vs_eps.png`; the same suite, gradient attacks "
                      f"{curve['steps']} steps, first {curve['n']} test images), in % at eps "
                      f"{', '.join(f'{e:g}' for e in curve['eps'])}: "
                  + "; ".join(f"`{name}` " + ", ".join(f"{100 * v:.0f}" for v in values)
                              for name, values in curve["settings"].items()) + "."]
    return "\n".join(lines)


def _demo_load_block() -> str:
    """The demo beside busy processes (benchmarks/demo_under_load.json), next to the idle run above it."""
    data = json.loads((BENCH / "demo_under_load.json").read_text())
    minutes, seconds = divmod(round(data["wall_seconds"]), 60)
    idle = json.loads((BENCH / "demo" / "results.json").read_text())["settings"]
    same = all(abs(idle[name]["robust_accuracy"] - value) < 1e-12 for name, value in data["robust_accuracy"].items())
    return (f"Under load, with {data['busy_processes']} busy processes on the {data['cores']} cores (load average "
            f"{data['load_before'][0]} at the start): **{minutes} min {seconds:02d} s**; the CLI chose "
            f"{data['torch_threads']} torch thread(s) from the load, peak memory {data['peak_rss_mb']} MB; the "
            f"robust accuracies are {'the same as' if same else 'not identical to'} the idle run's"
            + ("" if data.get("suite") == "adaptive" else
               " (measured before the demo's adaptive suite, with every attack on every image still standing)")
            + ". Command: "
            f"`{data['command']}`.")


def _rendered(stem: str, render: Callable[[dict], str], title: str = "") -> str:
    """Render benchmarks/STEM.md from benchmarks/STEM.json; the README block is the file without its title."""
    text = render(json.loads((BENCH / f"{stem}.json").read_text()))
    (BENCH / f"{stem}.md").write_text((f"# {title}\n\n" if title else "") + text)
    return "\n".join(line for line in text.strip().splitlines() if not line.startswith("# "))


def _core_block() -> str:
    import report

    return _rendered("core", report.render, "Native core against the best plain alternatives")


def _certify_native_block() -> str:
    import report

    return _rendered("certify", report.render_certify)


def _torch_block() -> str:
    import report

    return _rendered("torch", report.render_torch, "BPDA through Discretize and PGD steps per second")


def _analysis_mnist_block() -> str:
    import analysis_mnist

    return _rendered("analysis_mnist", analysis_mnist.render)


def _neighbourhoods_block() -> str:
    import report

    return _rendered("analysis", report.render_analysis, "Neighbourhood sizes of every distinct colour")


def _certify_block() -> str:
    import certify_mnist

    return _rendered("certify_mnist", certify_mnist.render)


def _attack_block() -> str:
    import attack_strength

    return _rendered("attack_strength", attack_strength.render)


def _interval_block() -> str:
    import interval_certified

    return _rendered("interval_certified", interval_certified.render)


def _fashion_block() -> str:
    import fashion_mnist_report

    fashion_mnist_report.main()  # benchmarks/fashion_mnist.md and its figure
    return fashion_mnist_report.headline()


def _certify_scale_block() -> str:
    import certify_scale

    return _rendered("certify_scale", certify_scale.render)


def _fashion_tiers_block() -> str:
    import fashion_mnist_tiers

    return _rendered("fashion_mnist/tiers", fashion_mnist_tiers.render)


def _demo_tiers_block() -> str:
    import demo_tiers

    return _rendered("demo_tiers", demo_tiers.render)


def _demo_suite_block() -> str:
    import demo_suite

    return _rendered("demo_suite", demo_suite.render)


def _mnist5k_recipe_block() -> str:
    import mnist5k_recipe

    return _rendered("mnist5k_recipe", mnist5k_recipe.render)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    blocks = {"core-benchmarks": _core_block, "certify-mnist": _certify_block, "demo-table": _demo_block,
              "demo-load": _demo_load_block,
              "attack-strength": _attack_block, "interval-certified": _interval_block,
              "certify-native": _certify_native_block, "torch-benchmarks": _torch_block,
              "analysis-mnist": _analysis_mnist_block, "analysis-neighbourhoods": _neighbourhoods_block,
              "fashion-mnist": _fashion_block, "certify-scale": _certify_scale_block,
              "fashion-mnist-tiers": _fashion_tiers_block, "demo-tiers": _demo_tiers_block,
              "demo-suite": _demo_suite_block, "mnist5k-recipe": _mnist5k_recipe_block}
    for marker, make in blocks.items():
        pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {marker}:start/end --> markers")
        try:
            block = make()
        except FileNotFoundError as exc:
            print(f"skipped {marker}: {exc.filename} does not exist")
            continue
        text = pattern.sub(lambda match: match.group(1) + block.strip() + "\n" + match.group(2), text)
    readme.write_text(text)


if __name__ == "__main__":
    main()
