"""Render the pytest-benchmark JSONs as the README's tables and sentences, every cell from the JSON.

    python benchmarks/report.py [benchmarks/core.json]     # prints the core table and writes benchmarks/core.md

`benchmarks/readme_tables.py` calls the renderers here to fill the README's
sections: `render` (`<!-- core-benchmarks -->`, from `benchmarks/core.json`),
`render_certify` (`<!-- certify-native -->`, `benchmarks/certify.json`),
`render_torch` (`<!-- torch-benchmarks -->`, `benchmarks/torch.json`) and
`render_analysis` (`<!-- analysis-neighbourhoods -->`, `benchmarks/analysis.json`).
Every number comes from the JSON: row names and targets from each
benchmark's `extra_info` (set in the `benchmarks/test_bench_*.py` files), the
machine, threads and load average from `machine_info` and `run` (set in
`benchmarks/conftest.py`), and the command from `run["command"]`.
"""

from __future__ import annotations

import json
import re
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


def _torch_threads(data: dict[str, Any]) -> str:
    """The torch threads the benchmarks ran on: their `extra_info`, else the setting the run recorded."""
    counts = {b["extra_info"]["torch_threads"] for b in data["benchmarks"] if "torch_threads" in b["extra_info"]}
    if counts:
        return "/".join(str(c) for c in sorted(counts))
    return data.get("run", {}).get("environment", {}).get("PIXDISC_BENCH_TORCH_THREADS", "torch's default")


def _machine(data: dict[str, Any], torch: bool = False) -> str:
    """The machine, threads and load average of a run (`machine_info`, `run`), as one sentence."""
    cpu = data.get("machine_info", {}).get("cpu", {})
    run = data.get("run", {})
    cuda = any("cuda" in b["name"] for b in data["benchmarks"])
    load = (f"load average {run['load_before']:.2f} before and {run['load_after']:.2f} after the run"
            if "load_before" in run else "load average not recorded")
    threads = f"pixdisc on {run.get('pixdisc_threads', '?')} threads"
    if torch:
        threads += f", torch on {_torch_threads(data)}"
    return (f"Machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} logical CPUs; {threads}; {load}; "
            f"{'CUDA rows beside the CPU ones' if cuda else 'no GPU, so no CUDA rows (they appear when `pixdisc.cuda_available()`)'}"
            f". Medians of one pytest-benchmark run ({data.get('datetime', '?')[:10]}).")


def _command(data: dict[str, Any]) -> str:
    return f"Command: `{data['run']['command']}`, then `python benchmarks/readme_tables.py`."


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _duration(seconds: float) -> str:
    """A time as a reader says it: 0.44 s, 3.1 s, 53 minutes, 2.1 hours."""
    if seconds < 60:
        return f"{seconds:#.2g} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in data["benchmarks"]}


def render_certify(data: dict[str, Any]) -> str:
    """The certification section's "native pieces" paragraph, from `benchmarks/certify.json`."""
    sets = [b for b in data["benchmarks"] if b["name"].startswith("test_candidate_sets")]
    info = sets[0]["extra_info"]
    per_rule = "; ".join(f"{b['extra_info']['rule']} rule {_ms(b['stats']['median'])} "
                         f"({b['extra_info']['ambiguous_pixels']:,} ambiguous)" for b in sets)
    enumerate_rows = [b for b in data["benchmarks"] if b["name"].startswith("test_enumerate")]
    first = enumerate_rows[0]["extra_info"]
    per_device = ", ".join(f"{_ms(b['stats']['median'])} on the {b['extra_info']['device'].upper()}"
                           for b in enumerate_rows)
    side = int(round(first["image_pixels"] ** 0.5))
    return "\n".join([
        f"Native pieces: candidate sets of all {info['pixels']:,} pixels of the {info['images']:,} MNIST-5k test "
        f"images at eps={info['eps']:g} (k={info['k']}): {per_rule}. {first['images']:,} candidate {side}x{side} "
        f"images of S(x) ({first['ambiguous_pixels']} ambiguous pixels, {first['output_bytes'] / 1e6:.0f} MB) "
        f"enumerated in {per_device}.", "", _command(data), "", _machine(data)]) + "\n"


def render_torch(data: dict[str, Any]) -> str:
    """The torch layer's BPDA table and PGD attack rate, from `benchmarks/torch.json`."""
    lines = [_command(data), "", _machine(data, torch=True), "",
             "| case | device | `Discretize` | naive torch | speed-up | peak memory (`Discretize` / naive) |",
             "|---|---|---:|---:|---:|---:|"]
    bpda: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        if bench["name"].startswith("test_bpda_"):
            kind = "pixdisc" if bench["name"].startswith("test_bpda_pixdisc") else "naive"
            bpda[(bench["params"]["case"], bench["params"]["device"])][kind] = bench
    for (case, device), pair in bpda.items():
        ours, naive = pair.get("pixdisc"), pair.get("naive")
        shape = re.search(r"\(([\d, ]+)\)", (ours or naive)["group"]).group(1).replace(", ", "×")
        k = case.rsplit("_k", 1)[-1]
        memory = "—"
        if ours and naive and ours["extra_info"].get("peak_mib") is not None:
            memory = f"{ours['extra_info']['peak_mib']:,.0f} / {naive['extra_info']['peak_mib']:,.0f} MiB"
        speed = f"{naive['stats']['median'] / ours['stats']['median']:.2f}×" if ours and naive else "—"
        lines.append(f"| {shape}, k={k} | {device} | {_ms(ours['stats']['median']) if ours else '—'} | "
                     f"{_ms(naive['stats']['median']) if naive else '—'} | {speed} | {memory} |")
    pgd = defaultdict(dict)
    for bench in data["benchmarks"]:
        if bench["name"].startswith("test_pgd_"):
            pgd[bench["params"]["device"]]["discretize" if bench["params"]["defended"] else "bare"] = bench
    for device, pair in pgd.items():
        group = next(iter(pair.values()))["group"].rsplit(",", 1)[0]
        rates = " and ".join(f"{b['extra_info']['steps_per_second']:.1f} steps/s "
                             f"{'bare' if kind == 'bare' else 'behind `Discretize`'}" for kind, b in pair.items())
        images = " and ".join(f"{b['extra_info']['image_steps_per_second']:,.0f}" for b in pair.values())
        lines += ["", f"{group} on {device.upper()}: {rates} ({images} image-steps per second)."]
    return "\n".join(lines) + "\n"


def render_analysis(data: dict[str, Any]) -> str:
    """The analysis section's neighbourhood-size timings, from `benchmarks/analysis.json`."""
    rows = _by_name(data)
    ours = rows["test_all_colours_pixdisc"]
    numpy_sat = rows.get("test_all_colours_numpy_sat")
    tree = rows.get("test_subset_ckdtree")
    brute = rows.get("test_subset_brute_force_numpy")
    cuda = rows.get("test_all_colours_pixdisc_cuda")
    info = ours["extra_info"]
    parts = [f"Neighbourhood sizes for all {info['distinct_colours'] / 1e6:.1f}M distinct colours of the "
             f"CIFAR-size synthetic set (eps = {info['eps_levels']}/255): {_duration(ours['stats']['median'])} "
             "end to end on the CPU (histogram included)"]
    if cuda:
        parts.append(f"{_duration(cuda['stats']['median'])} on the GPU")
    if numpy_sat:
        parts.append(f"the same summed-area algorithm in plain NumPy takes {_duration(numpy_sat['stats']['median'])}")
    extrapolated = [(name, b) for name, b in (("scipy `cKDTree(p=inf, workers=-1)`", tree),
                                              ("a brute-force NumPy scan", brute)) if b]
    if extrapolated:
        queries = extrapolated[0][1]["extra_info"]["queries"]
        parts.append(" and ".join(f"{name} about {_duration(b['extra_info']['extrapolated_all_colours_s'])}"
                                  for name, b in extrapolated)
                     + f" (extrapolated from {queries:,} colours)")
    return "\n".join([_command(data), "", _machine(data), "", "; ".join(parts) + "."]) + "\n"


def render(data: dict[str, Any]) -> str:
    """The Markdown section (no title), from the JSON alone."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    run = data.get("run", {})
    lines = [f"Command: `{run.get('command', COMMAND)}`, then `python benchmarks/readme_tables.py` "
             "(or `python benchmarks/report.py benchmarks/core.json` for this table alone).", "",
             _machine(data), "",
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
