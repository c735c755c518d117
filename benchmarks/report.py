"""Render the core benchmark JSON (pytest-benchmark) as the README's table, with ratios and targets per group.

    python benchmarks/report.py [benchmarks/core.json]     # prints it and writes benchmarks/core.md

`benchmarks/readme_tables.py` calls `render` to fill the README's
`<!-- core-benchmarks -->` section. Every cell comes from the JSON: the row
names and targets from each benchmark's `extra_info` (set in
`benchmarks/test_bench_core.py`), the machine, threads and load average from
`machine_info` and `run` (set in `benchmarks/conftest.py`).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COMMAND = "python -m pytest benchmarks/test_bench_core.py --benchmark-only --benchmark-json=benchmarks/core.json"


def _seconds(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:#.3g}"


def _ratio(value: float) -> str:
    return f"{value:.1f}x" if value < 100 else f"{value:.0f}x"


def _is_ours(row: dict[str, Any]) -> bool:
    return row["name"].split("[")[0].endswith("_pixdisc")


def _target(row: dict[str, Any], ours: dict[str, Any] | None, copy: dict[str, Any] | None,
            best_baseline: dict[str, Any] | None) -> str:
    target = row.get("extra_info", {}).get("target")
    if not target:
        return ""
    median = row["stats"]["median"]
    if "speedup_at_least" in target and ours is not None and row is best_baseline:
        want = target["speedup_at_least"]
        got = median / ours["stats"]["median"]
        return f">= {want:g}x: {'met' if got >= want else 'not met'}"
    if "seconds_below" in target:
        want = target["seconds_below"]
        return f"< {want:g} s: {'met' if median < want else 'not met'}"
    if "bandwidth_share_at_least" in target and copy is not None:
        want = target["bandwidth_share_at_least"]
        share = copy["stats"]["median"] / median  # same bytes: time ratio = bandwidth ratio
        return (f">= {100 * want:.0f}% of copy bandwidth (fastest copy row): "
                f"{'met' if share >= want else 'not met'} ({100 * share:.0f}%)")
    return ""


def render(data: dict[str, Any]) -> str:
    """The Markdown section (no title), from the JSON alone."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    run = data.get("run", {})
    cuda = any("cuda" in b["name"] for b in data["benchmarks"])
    load = (f"load average {run['load_before']:.2f} before and {run['load_after']:.2f} after the run"
            if "load_before" in run else "load average not recorded")
    lines = [f"Command: `{run.get('command', COMMAND)}`, then `python benchmarks/readme_tables.py` "
             "(or `python benchmarks/report.py benchmarks/core.json` for this table alone).", "",
             f"Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} logical CPUs; pixdisc on "
             f"{run.get('pixdisc_threads', '?')} threads; {load}; "
             f"{'CUDA rows beside the CPU ones' if cuda else 'no GPU, so no CUDA rows (they appear when `pixdisc.cuda_available()`)'}"
             f". Medians of one pytest-benchmark run ({data.get('datetime', '?')[:10]}).", "",
             "| benchmark | implementation | median (s) | time / pixdisc | target |",
             "|---|---|---:|---:|---|"]
    for group, rows in groups.items():
        ours = next((r for r in rows if _is_ours(r)), None)
        # The bandwidth yardstick is the fastest plain copy of the same bytes (one thread or all).
        copy = min((r for r in rows if r.get("extra_info", {}).get("role") == "bandwidth"),
                   key=lambda r: r["stats"]["median"], default=None)
        # A speed-up target holds against the best plain alternative: judged on the fastest row carrying it.
        best_baseline = min((r for r in rows if "speedup_at_least" in r.get("extra_info", {}).get("target", {})),
                            key=lambda r: r["stats"]["median"], default=None)
        colours = next((r["extra_info"]["distinct_colours"] for r in rows
                        if "distinct_colours" in r.get("extra_info", {})), None)
        title = group + (f" ({colours / 1e6:.1f}M distinct colours)" if colours else "")
        ordered = ([ours] if ours else []) + sorted((r for r in rows if r is not ours), key=lambda r: r["stats"]["median"])
        for i, row in enumerate(ordered):
            median = row["stats"]["median"]
            ratio = _ratio(median / ours["stats"]["median"]) if ours else ""
            implementation = row.get("extra_info", {}).get("implementation", row["name"])
            lines.append(f"| {title if i == 0 else ''} | {implementation} | {_seconds(median)} | {ratio} | "
                         f"{_target(row, ours, copy, best_baseline)} |")
    return "\n".join(lines) + "\n"


def main(path: str) -> None:
    text = render(json.loads(Path(path).read_text()))
    (HERE / "core.md").write_text("# Native core against the best plain alternatives\n\n" + text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE / "core.json"))
