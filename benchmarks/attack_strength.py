"""Issue-9 targets: is pixdisc's default suite at least as strong as every attack a reviewer would try?

    pixdisc demo -o pixdisc-demo
    python benchmarks/attack_strength.py --demo pixdisc-demo --n 1000 --out benchmarks/attack_strength

On the demo's discretized models (MNIST-5k, codes {0, 253}/255, eps 0.3) each
attack runs alone on the same test images: the S(x) search (default budget and
5x it), the three BPDA attacks of the paper (PGD-CE, PGD-CW, Adam-sign, 100
steps of 0.01, alpha 10), torchattacks APGD-CE and APGD-DLR through BPDA, and
torchattacks Square (2,000 queries, no gradients, on the hard model). Then the
default suite (`evaluate_robustness(attacks=None)`) and the certified floor
(`robustness_interval`) on the same images. Results go to OUT.json after every
run (a rerun skips what is there) and OUT.md is rendered from that JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from pixdisc.attacks import attack_spec, evaluate_robustness
from pixdisc.codebook import load_codebook
from pixdisc.discretize import Discretize
from pixdisc.evaluation import DEFAULT_CERTIFY_BUDGET, robustness_interval
from pixdisc.experiments import DEMO_CONFIG, load_data
from pixdisc.models import load_model
from pixdisc.sx_attack import SearchBudget

EPS, STEPS, STEP_SIZE, ALPHA = 0.3, 100, 0.01, 10.0
SETTINGS = ("disc_nat_pre", "disc_adv_pre", "disc_nat_re", "disc_adv_re")
# name -> (label, spec builder)
ATTACKS: dict[str, tuple[str, Any]] = {
    "sx": ("S(x) search (default budget)", lambda: attack_spec("sx", EPS)),
    "sx_5x": ("S(x) search, 5x budget", lambda: {"name": "sx_5x", "attack": "sx", "eps": EPS,
                                                 "budget": SearchBudget().scaled(5)}),
    "pgd_ce": ("BPDA PGD-CE", lambda: attack_spec("pgd_ce", EPS, steps=STEPS, step_size=STEP_SIZE)),
    "pgd_cw": ("BPDA PGD-CW", lambda: attack_spec("pgd_cw", EPS, steps=STEPS, step_size=STEP_SIZE)),
    "adam_sign": ("BPDA Adam-sign", lambda: attack_spec("adam_sign", EPS, steps=STEPS, step_size=STEP_SIZE)),
    "apgd_ce": ("torchattacks APGD-CE (BPDA)", lambda: attack_spec("apgd_ce", EPS, steps=STEPS)),
    "apgd_dlr": ("torchattacks APGD-DLR (BPDA)", lambda: attack_spec("apgd_dlr", EPS, steps=STEPS)),
    "square": ("torchattacks Square, 2,000 queries", lambda: attack_spec("square", EPS, square_queries=2000)),
}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}


def run(demo: Path, n: int, settings: list[str], out: Path) -> dict[str, Any]:
    data = _load(out.with_suffix(".json"))
    data.update({"n": n, "eps": EPS, "steps": STEPS, "step_size": STEP_SIZE, "alpha": ALPHA, "demo": str(demo),
                 "command": f"python benchmarks/attack_strength.py --demo {demo} --n {n} --out {out}"})
    _, _, x, y, _ = load_data(DEMO_CONFIG.replace(dataset="mnist5k"))
    x, y = x[:n], y[:n]
    codebook = load_codebook(demo / "codes.npz")
    for setting in settings:
        loaded = load_model(demo / "models" / f"{setting}.pt")
        net = loaded[0] if isinstance(loaded, tuple) else loaded
        model = torch.nn.Sequential(Discretize(codebook, alpha=ALPHA), net).eval()
        runs = data["runs"].setdefault(setting, {})
        for name, (label, make) in ATTACKS.items():
            if name in runs:
                continue
            before = os.getloadavg()[0]
            started = time.perf_counter()
            result = evaluate_robustness(model, x, y, [make()], eps=EPS, seed=0, keep_adv=False, progress=False)
            seconds = time.perf_counter() - started
            runs[name] = {"label": label, "robust": result.robust_accuracy, "seconds": seconds,
                          "broken": result.success.nonzero().squeeze(1).tolist(), "load_before": before,
                          "load_after": os.getloadavg()[0]}
            print(f"{setting} {label}: robust {100 * result.robust_accuracy:.1f}% in {seconds:.0f} s", flush=True)
            _save(out.with_suffix(".json"), data)
        if "suite" not in runs:
            started = time.perf_counter()
            interval = robustness_interval(model, x, y, EPS, steps=STEPS, step_size=STEP_SIZE, seed=0,
                                           progress=False)
            seconds = time.perf_counter() - started
            runs["suite"] = {"label": "pixdisc default suite + certify", **interval.summary(),
                             "attack_names": interval.attack_names, "seconds_total": seconds,
                             "broken": interval.attack.success.nonzero().squeeze(1).tolist(),
                             "certify_budget": {"nodes": DEFAULT_CERTIFY_BUDGET.nodes,
                                                "seconds": DEFAULT_CERTIFY_BUDGET.seconds}}
            print(f"{setting} suite: ceiling {100 * interval.ceiling:.1f}%, floor {100 * interval.floor:.1f}% "
                  f"in {seconds:.0f} s", flush=True)
            _save(out.with_suffix(".json"), data)
    data["machine"] = _machine()
    _save(out.with_suffix(".json"), data)
    return data


def _budget_label(data: dict[str, Any]) -> str:
    """The certify budget the suite runs recorded ("20 nodes / 0.5 s"); one per setting if they differ."""
    budgets = {setting: runs["suite"]["certify_budget"] for setting, runs in data["runs"].items()
               if "certify_budget" in runs.get("suite", {})}
    labels = {setting: f"{b['nodes']} nodes / {b['seconds']:g} s" for setting, b in budgets.items()}
    if len(set(labels.values())) <= 1:
        return next(iter(labels.values()), "budget not recorded")
    return ", ".join(f"`{setting}` {label}" for setting, label in labels.items())


def render(data: dict[str, Any]) -> str:
    """The Markdown report, from the JSON alone."""
    settings = list(data["runs"])
    lines = [f"# Attack strength on the demo's discretized models (n={data['n']}, eps={data['eps']:g})", "",
             f"Command: `{data['command']}`", "",
             f"Machine: {data.get('machine', {}).get('cores', '?')} cores, torch threads "
             f"{data.get('machine', {}).get('torch_threads', '?')}; the load average before each run is in the JSON"
             + (f" ({data['note']})" if data.get("note") else "") + ".",
             "", "Robust accuracy (%) under each attack alone, lower is stronger; seconds in brackets.", "",
             "| attack | " + " | ".join(f"`{s}`" for s in settings) + " |",
             "|:---|" + "---:|" * len(settings)]
    for name, (label, _) in ATTACKS.items():
        cells = []
        for setting in settings:
            entry = data["runs"][setting].get(name)
            cells.append("—" if entry is None else f"{100 * entry['robust']:.1f} ({entry['seconds']:.0f} s)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells, floors, undecided, checks, cost = [], [], [], [], []
    for setting in settings:
        runs = data["runs"][setting]
        suite = runs.get("suite")
        if suite is None:
            cells.append("—"), floors.append("—"), undecided.append("—"), checks.append("—"), cost.append("—")
            continue
        cells.append(f"**{100 * suite['ceiling']:.1f}** ({suite['seconds']['attacks']:.0f} s)")
        floors.append(f"{100 * suite['floor']:.1f} ({suite['seconds'].get('certify', 0):.0f} s)")
        undecided.append(f"{suite['undecided']} of {suite['n']}")
        broken = set(suite["broken"])
        weaker = [name for name in ATTACKS if name in runs and not set(runs[name]["broken"]) <= broken]
        checks.append("yes" if not weaker else "no: " + ", ".join(weaker))
        bpda = sum(runs[name]["seconds"] for name in ("pgd_ce", "pgd_cw", "adam_sign") if name in runs)
        cost.append(f"{runs['sx']['seconds']:.0f} s vs {bpda:.0f} s" if "sx" in runs else "—")
    lines += ["| **default suite (ceiling)** | " + " | ".join(cells) + " |",
              "| certified floor (certify, same images) | " + " | ".join(floors) + " |",
              f"| undecided images (certify: CROWN, {_budget_label(data)} per image) | " + " | ".join(undecided) + " |",
              "| suite breaks every image any attack above breaks | " + " | ".join(checks) + " |",
              "| S(x) search vs the three BPDA attacks together | " + " | ".join(cost) + " |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=Path("pixdisc-demo"), help="folder written by `pixdisc demo`")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/attack_strength"))
    parser.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json")
    args = parser.parse_args()
    data = _load(args.out.with_suffix(".json")) if args.render_only else run(
        args.demo, args.n, [s.strip() for s in args.settings.split(",") if s.strip()], args.out)
    args.out.with_suffix(".md").write_text(render(data))
    print(render(data))


if __name__ == "__main__":
    main()
