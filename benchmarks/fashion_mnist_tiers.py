"""Issue 17 on the README's Fashion-MNIST certified model: bound tiers under a work budget, on all 10,000 test images.

    python benchmarks/fashion_mnist_certified.py train --only disc --models fashion-mnist-runs/certified
    python benchmarks/fashion_mnist_tiers.py --models fashion-mnist-runs/certified [--pause PID ...]

Certifies the discretized CertCNN of benchmarks/fashion_mnist_certified.py at
eps 0.1 on every test image with the default executor (local processes, one
per core) and a work budget (no wall clock, `BUDGET`), once with the tiers up
to CROWN and once up to alpha-CROWN; then checks that the outcomes repeat:
the first `N_REPEAT` images again with 1 worker and with 2 workers; and on
those images, what the S(x) search stage brings (`Budget(search=None)`). Wall
time, peak memory (process and workers) and load are recorded; other long
runs can be SIGSTOPped during the timed steps (`--pause`). Results go to
benchmarks/fashion_mnist/tiers.json, rendered by `render` (README block
`fashion-mnist-tiers`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fashion_mnist_certified import _codebook, _data, _save, timed

EPS = 0.1
# Per image: 2000 branch-and-bound nodes and 20,000 forward passes' worth of bound work; no clock.
BUDGET = {"nodes": 2000, "seconds": None, "work": 20_000}
TIERS = ("crown", "alpha-crown")
N_REPEAT = 1000
OUT = Path(__file__).resolve().parent / "fashion_mnist" / "tiers.json"


def run(models: Path, out: Path, pause: list[int]) -> None:
    from pixdisc.certification import Budget, certify
    from pixdisc.models import load_model

    data, _, x_test = _data()
    book = _codebook(data)
    net = load_model(models / "disc.pt")
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update({"eps": EPS, "budget": BUDGET, "cores": os.cpu_count(), "steps": results.get("steps", {})})

    def step(key: str, body: Any) -> None:
        if key in results["steps"]:
            return
        row = timed(body, pause)
        results["steps"][key] = row
        print(key, json.dumps({k: v for k, v in row.items() if k != "outcomes"}), flush=True)
        _save(out, results)

    def full(tier: str) -> dict[str, Any]:
        result = certify(net, book, x_test, data.y_test, EPS, bound=tier, budget=Budget(**BUDGET), progress=False)
        s = result.summary()
        reasons = [r.split(";")[0] for r in result.reason[result.outcome == "unable"]]
        return {"tier": tier, "n": s["n"], "delta": s["delta"],
                "unable_reasons": {r: reasons.count(r) for r in sorted(set(reasons))}, "certified": s["certified_rate"], "failed": s["failed_rate"],
                "unable": s["unable_rate"], "lower_clopper_pearson": s["lower_clopper_pearson"],
                "seconds": s["wall_seconds"], "max_image_seconds": float(result.seconds.max()),
                "mean_work": float(result.work.mean()), "decided_by": s["decided_by"], "root_tier": s["root_tier"],
                "outcomes": "".join(o[0] for o in result.outcome)}

    def repeat(workers: int, search: bool = True) -> dict[str, Any]:
        executor = "serial" if workers == 1 else None
        budget = Budget(**BUDGET) if search else Budget(**BUDGET, search=None)
        result = certify(net, book, x_test[:N_REPEAT], data.y_test[:N_REPEAT], EPS, bound=TIERS[-1],
                         budget=budget, executor=executor, workers=workers, progress=False)
        s = result.summary()
        return {"tier": TIERS[-1], "workers": workers, "n": N_REPEAT, "seconds": result.wall_seconds,
                "search": search, "certified": s["certified_rate"], "failed": s["failed_rate"],
                "unable": s["unable_rate"], "decided_by": s["decided_by"],
                "outcomes": "".join(o[0] for o in result.outcome)}

    for tier in TIERS:
        step(f"full/{tier}", lambda: full(tier))
    for workers in (1, 2):
        step(f"repeat/{workers}", lambda: repeat(workers))
    step("no-search", lambda: repeat(2, search=False))

    def suite() -> dict[str, Any]:
        # The ceiling beside the floor: pixdisc's default attack suite (S(x) search, BPDA PGD/Adam, APGD,
        # Square), seed 0, 100 steps of 0.01, per-image worst case, with certify's own counterexamples.
        import torch

        from pixdisc.attacks import evaluate_robustness
        from pixdisc.discretize import Discretize

        model = torch.nn.Sequential(Discretize(book), net).eval()
        started = time.perf_counter()
        attack = evaluate_robustness(model, x_test[:N_REPEAT], data.y_test[:N_REPEAT], eps=EPS, seed=0, steps=100,
                                     step_size=0.01, keep_adv=False, progress=False)
        failed = np.array([o == "f" for o in results["steps"]["repeat/2"]["outcomes"]])
        robust = attack.adv_correct.numpy() & ~failed
        return {"n": N_REPEAT, "seconds": time.perf_counter() - started, "ceiling": float(robust.mean()),
                "attacks": [spec.get("name", "?") for spec in attack.params["attacks"]]}

    step("suite", suite)
    reference = results["steps"][f"full/{TIERS[-1]}"]["outcomes"][:N_REPEAT]
    results["identical"] = {f"workers={w}": results["steps"][f"repeat/{w}"]["outcomes"] == reference for w in (1, 2)}
    _save(out, results)


def render(data: dict[str, Any]) -> str:
    budget = data["budget"]
    delta = next(iter(data["steps"].values())).get("delta", 0.01)
    lines = [f"| top tier | certified (Clopper-Pearson lower bound, {1 - delta:.0%}) | failed | unable | wall time | slowest image | mean work/image "
             "| root boxes by last tier | peak memory | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for tier in TIERS:
        row = data["steps"].get(f"full/{tier}")
        if row is None:
            continue
        tiers = ", ".join(f"{name} {count}" for name, count in row["root_tier"].items())
        lines.append(f"| {tier} | {100 * row['certified']:.2f}% ({100 * row['lower_clopper_pearson']:.1f}%) | "
                     f"{100 * row['failed']:.2f}% | {100 * row['unable']:.2f}% | {row['seconds']:.0f} s | "
                     f"{row['max_image_seconds']:.1f} s | {row['mean_work']:.0f} | {tiers} | "
                     f"{row['peak_rss_mb']:.0f} MB | {row['load_before']:.1f} -> {row['load_after']:.1f}"
                     f"{' (others paused)' if 'paused_others_seconds' in row else ''} |")
    same = data.get("identical", {})
    lines += ["", f"`pixdisc.certify(disc, codes, x_test, y_test, eps={data['eps']:g}, bound=TIER, "
                  f"budget=Budget(nodes={budget['nodes']}, seconds=None, work={budget['work']}))` on all "
                  f"{data['steps'][f'full/{TIERS[0]}']['n']:,} test images, default executor ({data['cores']} "
                  "local processes). Work is counted in forward passes of the network, from shapes, not the clock."]
    ceiling = data["steps"].get("suite")
    if ceiling:
        floor = data["steps"]["repeat/2"]["certified"]
        lines.append(f"On the first {ceiling['n']:,} images: floor (certified, alpha-crown) {100 * floor:.1f}%, "
                     f"ceiling (robust under the default attack suite {', '.join(ceiling['attacks'])}, seed 0, 100 "
                     f"steps of 0.01, and certify's counterexamples) {100 * ceiling['ceiling']:.1f}%.")
    plain = data["steps"].get("no-search")
    if plain:
        with_search = data["steps"]["repeat/2"]
        lines.append(f"The S(x) search stage on the first {plain['n']:,} images (top tier {plain['tier']}, 2 workers): "
                     f"with it {100 * with_search['certified']:.1f}% certified / {100 * with_search['failed']:.1f}% "
                     f"failed / {100 * with_search['unable']:.1f}% unable in {with_search['seconds']:.0f} s; "
                     f"`Budget(search=None)`: {100 * plain['certified']:.1f}% / {100 * plain['failed']:.1f}% / "
                     f"{100 * plain['unable']:.1f}% in {plain['seconds']:.0f} s.")
    if same:
        verdicts = ", ".join(f"{key} {'yes' if value else 'NO'}" for key, value in same.items())
        lines.append(f"The first {N_REPEAT:,} images again with 1 worker and with 2: outcomes identical to the full "
                     f"run: {verdicts}.")
    lines.append("Command: `python benchmarks/fashion_mnist_tiers.py --models fashion-mnist-runs/certified`, then "
                 "`python benchmarks/readme_tables.py`.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("fashion-mnist-runs/certified"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--pause", type=int, nargs="*", default=[], metavar="PID",
                        help="stop these processes (other runs) during the timed steps")
    args = parser.parse_args()
    run(args.models, args.out, args.pause)
    (args.out.with_suffix(".md")).write_text(render(json.loads(args.out.read_text())) + "\n")


if __name__ == "__main__":
    main()
