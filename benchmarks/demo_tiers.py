"""The certified floor each bound tier reaches on the demo's hardest model (issue 17), beside the attack ceiling.

    pixdisc demo -o pixdisc-demo        # or any run of the demo's recipe that saved models/disc_adv_pre.pt
    python benchmarks/demo_tiers.py --demo pixdisc-demo

`disc_adv_pre` of the demo (SmallCNN adversarially trained at eps 0.3 on
MNIST-5k, behind the demo's k=2 codes) at eps 0.3 on the first N test images:
`certify(bound=TIER, budget=Budget(nodes=NODES, seconds=None, work=WORK))`
for every tier (`pixdisc.bounds.TIERS`), the default executor. The budget is
work, not seconds, so the outcomes repeat on any machine load (wall times are
recorded with the load average). The ceiling beside it: per image the worst
case of pixdisc's default attack suite (S(x) search, BPDA PGD/Adam, APGD,
Square; seed 0), the S(x) attack alone, and every checked counterexample
certify found, on the same images. Results go to benchmarks/demo_tiers.json after each
tier (a rerun skips the tiers it holds) and benchmarks/demo_tiers.md is
rendered from it (README block `demo-tiers`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

EPS = 0.3
N = 500
NODES = 2000
WORK = 2000.0
SETTING = "disc_adv_pre"
OUT = Path(__file__).resolve().parent / "demo_tiers"


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(demo: Path, n: int, out: Path) -> dict[str, Any]:
    import torch

    from pixdisc.bounds import TIERS
    from pixdisc.certification import Budget, certify
    from pixdisc.codebook import load_codebook
    from pixdisc.discretize import Discretize
    from pixdisc.experiments import DEMO_CONFIG, load_data
    from pixdisc.models import load_model
    from pixdisc.sx_attack import sx_attack

    path = out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update({"n": n, "eps": EPS, "setting": SETTING, "budget": {"nodes": NODES, "seconds": None, "work": WORK},
                 "cores": os.cpu_count(), "command": f"python benchmarks/demo_tiers.py --demo {demo} --n {n}"})
    data.setdefault("tiers", {})
    _, _, x, y, _ = load_data(DEMO_CONFIG.replace(dataset="mnist5k"))
    x, y = x[:n].numpy(), y[:n].numpy()
    codebook = load_codebook(demo / "codes.npz")
    loaded = load_model(demo / "models" / f"{SETTING}.pt")
    net = (loaded[0] if isinstance(loaded, tuple) else loaded).eval()
    for tier in TIERS:
        if tier in data["tiers"]:
            continue
        before = os.getloadavg()[0]
        result = certify(net, codebook, x, y, EPS, bound=tier, budget=Budget(nodes=NODES, seconds=None, work=WORK),
                         progress=False)
        s = result.summary()
        data["tiers"][tier] = {"certified": s["certified_rate"], "failed": s["failed_rate"],
                               "unable": s["unable_rate"], "seconds": s["wall_seconds"],
                               "decided_by": s["decided_by"], "mean_work": float(result.work.mean()),
                               "load_before": before, "load_after": os.getloadavg()[0],
                               "outcome": "".join(o[0] for o in result.outcome)}
        print(tier, json.dumps({k: v for k, v in data["tiers"][tier].items() if k != "outcome"}), flush=True)
        _save(path, data)
    if "suite" not in data:  # the default suite (S(x) search, BPDA PGD/Adam, APGD, Square), seed 0
        from pixdisc.attacks import evaluate_robustness

        model = torch.nn.Sequential(Discretize(codebook), net).eval()
        started = time.perf_counter()
        attack = evaluate_robustness(model, x, y, eps=EPS, seed=0, keep_adv=False, progress=False)
        data["suite"] = {"seconds": time.perf_counter() - started,
                         "attacks": [spec.get("name", "?") for spec in attack.params["attacks"]],
                         "robust": "".join("1" if ok else "0" for ok in attack.adv_correct.tolist())}
        _save(path, data)
    if "sx" not in data:
        model = torch.nn.Sequential(Discretize(codebook), net).eval()
        started = time.perf_counter()
        attack = sx_attack(model, torch.from_numpy(x), torch.from_numpy(y), EPS, seed=0)
        data["sx"] = {"seconds": time.perf_counter() - started, "clean": float(attack.clean_correct.float().mean()),
                      "robust": "".join("1" if ok else "0" for ok in attack.adv_correct.tolist())}
        _save(path, data)
    return data


def render(data: dict[str, Any]) -> str:
    n = data["n"]
    robust = np.array([c == "1" for c in data["sx"]["robust"]]) if "sx" in data else np.ones(n, bool)
    if "suite" in data:
        robust &= np.array([c == "1" for c in data["suite"]["robust"]])
    for row in data["tiers"].values():  # every "failed" is a checked counterexample: one more attack
        robust &= np.array([o != "f" for o in row["outcome"]])
    budget = data["budget"]
    lines = ["| top tier | certified (floor) | failed | unable | mean work/image | wall time | load |",
             "|---|---|---|---|---|---|---|"]
    for tier, row in data["tiers"].items():
        lines.append(f"| {tier} | {100 * row['certified']:.1f}% | {100 * row['failed']:.1f}% | "
                     f"{100 * row['unable']:.1f}% | {row['mean_work']:.0f} | {row['seconds']:.0f} s | "
                     f"{row['load_before']:.1f} -> {row['load_after']:.1f} |")
    attacks = ", ".join(data["suite"]["attacks"]) + ", " if "suite" in data else ""
    lines += ["", f"Ceiling (robust under attack): **{100 * robust.mean():.1f}%** (per image the worst case of the "
                  f"default suite {attacks}the S(x) attack alone, seed 0, and every counterexample certify found); "
                  "clean "
                  f"{100 * data['sx']['clean']:.1f}%." if "sx" in data else "",
              "",
              f"The demo's `{data['setting']}` at eps {data['eps']:g} on the first {n} MNIST-5k test images: "
              f"`certify(bound=TIER, budget=Budget(nodes={budget['nodes']}, seconds=None, work={budget['work']:g}))`"
              f", default executor ({data['cores']} processes); work in forward passes of the network per image, "
              "so the outcomes do not depend on the machine's load.",
              f"Command: `{data['command']}`."]
    return "\n".join(line for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("pixdisc-demo"), help="folder written by `pixdisc demo`")
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if args.render_only else run(args.demo, args.n, args.out)
    text = render(data)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
