"""Issue 10, item 2: which codes certify on Fashion-MNIST. A sweep over k and codebook method.

    python benchmarks/fashion_mnist_sweep.py --models fashion-mnist-runs/sweep --out benchmarks/fashion_mnist/sweep.json

For each k in (2, 3, 4, 6, 8) and method (density with r chosen from the data,
k-medoids l1, uniform), fitted on the 60,000 training images:

- ``ambiguous``: the fraction of test pixels (all 10,000 images) with more than
  one reachable code at eps 0.1, and the median number of ambiguous pixels;
- ``natural_clean``: clean accuracy of a CertCNN trained naturally on the
  discretized images (the ceiling the codes leave);
- ``certified_clean`` / ``certified``: the same CertCNN trained with
  `train_certified` behind the codes, its clean accuracy, and the fraction of
  the first N_CERTIFY test images `certify` proves at eps 0.1.

The training and certification budgets are a sweep's (SWEEP below), not the
headline run's (benchmarks/fashion_mnist_certified.py). Each cell is written to
OUT as it finishes and skipped on a rerun (resumable); models go to MODELS.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

KS = (2, 3, 4, 6, 8)
METHODS = ("density", "kmedoids", "uniform")
EPS = 0.1
# Density's r "from the data": the largest r on this grid for which Algorithm 1 still finds k codes
# (codes as far apart as the data's densest values allow).
R_GRID = tuple(round(0.02 * i, 2) for i in range(25, 0, -1))
SWEEP = {"n_train": 10_000, "epochs": 12, "eps_train": 0.15, "natural_epochs": 3, "n_certify": 500,
         "nodes": 50, "seconds": 0.25}


def fit_codebook(method: str, k: int, x_train: np.ndarray):
    import pixdisc

    if method == "uniform":
        return pixdisc.UniformCodebook(k).fit(x_train[:1]), {}
    if method == "kmedoids":
        return pixdisc.KMedoidsCodebook(k, metric="l1", random_state=0).fit(x_train), {}
    for r in R_GRID:
        book = pixdisc.DensityCodebook(k, r).fit(x_train)
        if book.n_codes_ == k:
            return book, {"r": r}
    raise RuntimeError(f"Algorithm 1 finds fewer than {k} codes at every r of the grid")


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _accuracy(net, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float(np.mean([(net(torch.from_numpy(x[i:i + 1000])).argmax(1).numpy() == y[i:i + 1000]).mean()
                              for i in range(0, len(x), 1000)]))


def run_cell(method: str, k: int, data, models: Path) -> dict[str, Any]:
    import torch

    import pixdisc
    from pixdisc.candidates import candidate_counts
    from pixdisc.certification import Budget, certify
    from pixdisc.datasets import as_float_nchw
    from pixdisc.models import build_model, load_model, save_model
    from pixdisc.train import train_certified

    started = time.perf_counter()
    load = os.getloadavg()[0]
    book, extra = fit_codebook(method, k, data.x_train)
    x_test = as_float_nchw(data.x_test)
    counts = candidate_counts(x_test, book, EPS).reshape(len(x_test), -1)
    n = SWEEP["n_train"]
    x_train, y_train = as_float_nchw(data.x_train[:n]), data.y_train[:n]
    defended = lambda net: torch.nn.Sequential(pixdisc.Discretize(book), net).eval()  # noqa: E731
    nets = {}
    for kind, eps_train, epochs, warmup in (("natural", EPS, SWEEP["natural_epochs"], SWEEP["natural_epochs"]),
                                            ("certified", SWEEP["eps_train"], SWEEP["epochs"], 1)):
        path = models / f"{method}{k}-{kind}.pt"
        if path.exists():
            nets[kind] = load_model(path)
            continue
        torch.manual_seed(0)
        net, _ = train_certified(build_model("cert_cnn"), x_train, y_train, book, eps=eps_train, epochs=epochs,
                                 warmup_epochs=warmup, ramp_epochs=max(1, epochs // 3),
                                 lr_milestones=(int(epochs * 0.7), int(epochs * 0.85)), kappa_end=0.7,
                                 progress=False, checkpoint_path=path.with_suffix(".ckpt"))
        save_model(net, path)
        nets[kind] = net
    m = SWEEP["n_certify"]
    result = certify(nets["certified"], book, x_test[:m], data.y_test[:m], EPS, mode="bab", bound="crown",
                     budget=Budget(nodes=SWEEP["nodes"], seconds=SWEEP["seconds"]), executor="serial",
                     progress=False)
    summary = result.summary()
    return {"method": method, "k": k, **extra, "codes_255": np.rint(book.codes_.ravel() * 255).astype(int).tolist(),
            "ambiguous": float((counts > 1).mean()),
            "median_ambiguous_pixels": float(np.median((counts > 1).sum(1))),
            "natural_clean": _accuracy(defended(nets["natural"]), x_test, data.y_test),
            "certified_clean": _accuracy(defended(nets["certified"]), x_test, data.y_test),
            "certified": summary["certified_rate"], "failed": summary["failed_rate"],
            "unable": summary["unable_rate"], "n_certify": m, "certify_seconds": summary["wall_seconds"],
            "seconds": time.perf_counter() - started, "load_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("fashion-mnist-runs/sweep"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/fashion_mnist/sweep.json"))
    args = parser.parse_args()
    import torch

    from pixdisc.datasets import load_fashion_mnist

    data = load_fashion_mnist()
    args.models.mkdir(parents=True, exist_ok=True)
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out.update({"command": f"python benchmarks/fashion_mnist_sweep.py --models {args.models} --out {args.out}",
                "eps": EPS, "budget": SWEEP, "r_grid": [min(R_GRID), max(R_GRID)], "cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads()})
    out.setdefault("cells", {})
    for k in KS:
        for method in METHODS:
            key = f"{method}{k}"
            if key in out["cells"]:
                continue
            out["cells"][key] = run_cell(method, k, data, args.models)
            print(json.dumps(out["cells"][key]), flush=True)
            _save(args.out, out)


if __name__ == "__main__":
    main()
