"""Issue 18 on MNIST-5k: the mnist5k-eps0.1 and mnist5k-eps0.3 recipes, certified on the 1,000 test images.

    python benchmarks/mnist5k_recipe.py [--seeds 0] [--models mnist5k-runs/recipe]

Each recipe (`pixdisc.recipes`) is trained on the 4,000 training images behind
the k=2 density codes of benchmarks/certify_mnist.py (r=0.6, codes {0, 253}/255)
and certified at its `certify_eps` on all 1,000 test images with a work budget
(`BUDGET`, no wall clock, top tier alpha-CROWN). Models are resumed from
per-epoch checkpoints; results go to benchmarks/mnist5k_recipe.json (a rerun
skips what it holds) and benchmarks/mnist5k_recipe.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

RECIPES = ("mnist5k-eps0.1", "mnist5k-eps0.3")
BUDGET = {"nodes": 2000, "seconds": None, "work": 20_000}
TIER = "alpha-crown"
TARGETS = {"mnist5k-eps0.1": 0.97, "mnist5k-eps0.3": 0.92}
OUT = Path(__file__).resolve().parent / "mnist5k_recipe.json"


def run(models: Path, out: Path, seeds: list[int]) -> None:
    import numpy as np
    import torch

    import pixdisc
    from pixdisc.certification import Budget, certify
    from pixdisc.datasets import as_float_nchw, load_mnist5k
    from pixdisc.models import load_model, predict, save_model
    from pixdisc.recipes import get_recipe, train_recipe

    data = load_mnist5k()
    book = pixdisc.DensityCodebook(k=2, r=0.6).fit(data.x_train)
    x_train, x_test = as_float_nchw(data.x_train), as_float_nchw(data.x_test)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update({"budget": BUDGET, "tier": TIER, "codes_255": np.rint(book.codes_.ravel() * 255).astype(int).tolist()})
    results.setdefault("rows", {})
    models.mkdir(parents=True, exist_ok=True)
    for name in RECIPES:
        recipe = get_recipe(name)
        for seed in seeds:
            key = f"{name}-s{seed}"
            if key in results["rows"]:
                continue
            path = models / f"{key}.pt"
            if not path.exists():
                load = os.getloadavg()[0]
                net, history = train_recipe(recipe, x_train, data.y_train, book, seed=seed, progress=False,
                                            checkpoint_path=path.with_suffix(".ckpt"))
                save_model(net, path, meta={"recipe": recipe.to_dict(), "history": history, "load_before": load,
                                            "torch_threads": torch.get_num_threads()})
            net, meta = load_model(path, return_meta=True)
            defended = torch.nn.Sequential(pixdisc.Discretize(book), net).eval()
            clean = float((predict(defended, x_test) == torch.from_numpy(data.y_test)).float().mean())
            load = os.getloadavg()[0]
            result = certify(net, book, x_test, data.y_test, recipe.certify_eps, bound=TIER, budget=Budget(**BUDGET),
                             progress=False)
            s = result.summary()
            results["rows"][key] = {"recipe": name, "seed": seed, "eps": recipe.certify_eps, "clean": clean,
                                    "certified": s["certified_rate"], "failed": s["failed_rate"],
                                    "unable": s["unable_rate"], "certify_seconds": s["wall_seconds"],
                                    "train_seconds": float(sum(meta["history"]["seconds"])),
                                    "torch_threads": meta["torch_threads"], "load_before_certify": load}
            print(key, json.dumps(results["rows"][key]), flush=True)
            out.write_text(json.dumps(results, indent=2) + "\n")


def render(data: dict[str, Any]) -> str:
    lines = ["| recipe | seed | eps | clean | certified | target | failed | unable | training | certify |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, row in sorted(data["rows"].items()):
        target = TARGETS[row["recipe"]]
        verdict = "met" if row["certified"] >= target else f"missed by {100 * (target - row['certified']):.1f} points"
        lines.append(f"| {row['recipe']} | {row['seed']} | {row['eps']:g} | {100 * row['clean']:.1f}% | "
                     f"{100 * row['certified']:.1f}% | >= {target:.0%} ({verdict}) | {100 * row['failed']:.1f}% | "
                     f"{100 * row['unable']:.1f}% | {row['train_seconds']:.0f} s ({row['torch_threads']} thread) | "
                     f"{row['certify_seconds']:.0f} s (load {row['load_before_certify']:.1f}) |")
    budget = data["budget"]
    lines += ["", f"MNIST-5k, 1,000 test images, codes {data['codes_255']}/255; `pixdisc.certify(..., bound="
                  f"'{data['tier']}', budget=Budget(nodes={budget['nodes']}, seconds=None, work={budget['work']}))`. "
                  "Every failed image is misclassified or has a checked counterexample, so certified plus unable is also the "
                  "ceiling: the verifier leaves nothing to gain, the model is the limit.",
              "Command: `python benchmarks/mnist5k_recipe.py`."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("mnist5k-runs/recipe"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    run(args.models, args.out, args.seeds)
    args.out.with_suffix(".md").write_text(render(json.loads(args.out.read_text())) + "\n")


if __name__ == "__main__":
    main()
