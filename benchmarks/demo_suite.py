"""`pixdisc demo` timed as a user runs it, and its adaptive suite against the full suite on the demo's own models.

    python benchmarks/demo_suite.py [--pause PID ...]

1. `pixdisc demo -o benchmarks/demo` in a fresh folder (seed 0, default
   threads): wall time, peak memory (largest resident set of the demo's
   process tree, from the kernel's rusage), load average before and after.
2. On the models that run saved and the same 1,000 test images, the full
   suite: every attack of the default suite (S(x) search, BPDA PGD-CE/CW,
   Adam-sign, APGD-CE/DLR, Square) on every image still standing, the demo's
   suite before it became adaptive, with the same certified floor. Per
   defended setting: the ceiling of each suite, their seconds, and the
   ceilings issue 19 holds the demo to (the full suite's on the demo's models
   before the change).

Other runs given by ``--pause`` are SIGSTOPped for both steps. Writes
``benchmarks/demo_suite.json`` (after each step; a rerun with ``--skip-demo``
reuses step 1) and ``benchmarks/demo_suite.md`` (README block `demo-suite`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
OUT = HERE / "demo_suite"
DEMO = HERE / "demo"
# The full suite's ceilings on the demo's models (1,000 test images, seed 0) before the adaptive suite:
# benchmarks/demo/results.json at cd89892, the numbers issue 19 quotes.
BEFORE = {"disc_nat_pre": 0.697, "disc_adv_pre": 0.833}
TARGET_SECONDS = 360.0
TARGET_MB = 1200.0


@contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_demo(folder: Path, pause: list[int]) -> dict[str, Any]:
    if folder.exists():
        shutil.rmtree(folder)  # a fresh run: a resumed one would reuse trained networks
    with paused(pause):
        load_before = os.getloadavg()
        started = time.perf_counter()
        subprocess.run(["pixdisc", "demo", "-o", str(folder)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        load_after = os.getloadavg()
    result = json.loads((folder / "results.json").read_text())
    return {"wall_seconds": seconds, "reported_seconds": result["timings"]["total"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
            "torch_threads": result["run"]["torch_threads"], "timings": result["timings"],
            "settings": {name: {key: row[key] for key in ("clean_accuracy", "robust_accuracy", "floor", "broken_by",
                                                          "clean_errors", "not_broken", "eval_seconds")}
                         for name, row in result["settings"].items()}}


def run_full(folder: Path, pause: list[int]) -> dict[str, Any]:
    from torch import nn

    from pixdisc import Discretize, load_codebook
    from pixdisc.experiments import DEMO_CONFIG, load_data
    from pixdisc.experiments.run import evaluate_setting
    from pixdisc.models import load_model

    config = DEMO_CONFIG.replace(dataset="mnist5k", suite="full")
    _, _, x, y, _ = load_data(config)
    codebook = load_codebook(folder / "codes.npz")
    rows: dict[str, Any] = {}
    for name in ("disc_nat_pre", "disc_adv_pre", "disc_nat_re", "disc_adv_re"):
        model = nn.Sequential(Discretize(codebook, bpda=config.bpda, alpha=config.alpha),
                              load_model(folder / "models" / f"{name}.pt")).eval()
        with paused(pause):
            started = time.perf_counter()
            row = evaluate_setting(model, x, y, config, progress=False)
            seconds = time.perf_counter() - started
        rows[name] = {"robust_accuracy": row["robust_accuracy"], "floor": row["floor"], "broken_by": row["broken_by"],
                      "seconds": seconds}
        print(f"full suite {name}: ceiling {100 * row['robust_accuracy']:.1f}% ({seconds:.0f} s)", flush=True)
    return rows


def render(data: dict[str, Any]) -> str:
    demo, full = data["demo"], data.get("full", {})
    lines = [
        f"Command: `{data['command']}` (seed 0; {data['cores']}-core machine, load average "
        f"{demo['load_before'][0]} before the demo, {demo['load_after'][0]} after it (the demo's own two threads); "
        + (f"other runs paused: {data['paused']})." if data.get("paused") else "nothing else running).") + "",
        "",
        f"`pixdisc demo`: **{demo['wall_seconds'] / 60:.1f} min** wall ({demo['wall_seconds']:.0f} s; the demo "
        f"reports {demo['reported_seconds']:.0f} s), peak memory **{demo['peak_rss_mb']:.0f} MB**, "
        f"{demo['torch_threads']} torch threads (issue 19: at most {TARGET_SECONDS / 60:.0f} min and "
        f"{TARGET_MB / 1000:.1f} GB). Seconds per setting are the attacks' and the floor's; the last column is the "
        f"full suite's ceiling on the demo's models before this change (issue 19's targets).",
        "",
        "| setting | adaptive suite (the demo): ceiling | seconds | full suite, same models and images: ceiling "
        "| seconds | full suite before the change |",
        "|:---|---:|---:|---:|---:|---:|",
    ]
    for name, row in full.items():
        mine = demo["settings"][name]
        before = BEFORE.get(name)
        lines.append(f"| `{name}` | {100 * mine['robust_accuracy']:.1f}% | {mine['eval_seconds']:.0f} | "
                     f"{100 * row['robust_accuracy']:.1f}% | {row['seconds']:.0f} | "
                     + ("—" if before is None else f"{100 * before:.1f}%") + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=int, nargs="*", default=[], metavar="PID",
                        help="processes to SIGSTOP while timing (resumed afterwards)")
    parser.add_argument("--skip-demo", action="store_true", help="reuse step 1 from benchmarks/demo_suite.json")
    args = parser.parse_args()
    path = OUT.with_suffix(".json")
    data = json.loads(path.read_text()) if args.skip_demo and path.exists() else {}
    data.update({"command": "python benchmarks/demo_suite.py", "cores": os.cpu_count()})
    if args.pause:
        data["paused"] = args.pause
    if not args.skip_demo or "demo" not in data:
        data["demo"] = run_demo(DEMO, args.pause)
        data.pop("full", None)
        _save(path, data)
        print(f"demo: {data['demo']['wall_seconds']:.0f} s, {data['demo']['peak_rss_mb']:.0f} MB", flush=True)
    data["full"] = run_full(DEMO, args.pause)
    _save(path, data)
    OUT.with_suffix(".md").write_text(render(data))
    print(OUT.with_suffix(".md").read_text())


if __name__ == "__main__":
    sys.exit(main())
