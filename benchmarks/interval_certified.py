"""Issue-9 target: on a certified-trained model every test image is decided (floor = ceiling), at eps 0.1 and 0.3.

    python benchmarks/interval_certified.py --models certify-mnist --out benchmarks/interval_certified

Trains (or loads, from the models folder `benchmarks/certify_mnist.py --models` writes) the
CertCNN behind the k=2 density codes with the issue-4 recipe (certified
training, eps_train 0.4, 80 epochs), then on the 1,000 MNIST-5k test images
and each eps runs `robustness_interval`: the default attack suite (S(x)
search, BPDA PGD-CE/CW, Adam-sign, APGD-CE/DLR, Square), then `certify`
(branch and bound with CROWN, 2,000 nodes / 20 s per image, then the exact
mixed-integer stage with `--exact-seconds` per image) on what no attack broke.
Writes OUT.json after every eps and OUT.md from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_mnist import train_or_load  # noqa: E402  (same recipe and model files)


def run(models: Path, out: Path, eps_list: list[float], exact_seconds: float, n: int) -> dict[str, Any]:
    # Imported here so that rendering (benchmarks/readme_tables.py) needs the JSON only.
    import torch

    import pixdisc
    from pixdisc.certification import Budget
    from pixdisc.datasets import as_float_nchw, load_mnist5k
    from pixdisc.evaluation import robustness_interval

    path = out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    data["command"] = (f"python benchmarks/interval_certified.py --models {models} --out {out} "
                       f"--eps {' '.join(f'{e:g}' for e in eps_list)} --exact-seconds {exact_seconds:g} --n {n}")
    mnist = load_mnist5k()
    x_train, x_test = as_float_nchw(mnist.x_train), as_float_nchw(mnist.x_test)[:n]
    y_test = mnist.y_test[:n]
    book = pixdisc.DensityCodebook(2, 0.6).fit(mnist.x_train)
    models.mkdir(parents=True, exist_ok=True)
    net = train_or_load(models / "cert_cnn_disc.pt", book, x_train, mnist.y_train, 0.4, 80)
    defended = torch.nn.Sequential(pixdisc.Discretize(book), net).eval()
    budget = Budget(nodes=2000, seconds=20.0, exact_seconds=exact_seconds)
    for eps in eps_list:
        key = f"{eps:g}"
        if key in data["runs"]:
            continue
        load = os.getloadavg()[0]
        started = time.perf_counter()
        interval = robustness_interval(defended, torch.from_numpy(x_test), torch.from_numpy(y_test), eps,
                                       certify_budget=budget, seed=0, progress=False)
        summary = interval.summary()
        certificate = interval.certificate.summary() if interval.certificate is not None else {}
        data["runs"][key] = {**summary, "wall_seconds": time.perf_counter() - started, "load_before": load,
                             "attack_names": interval.attack_names,
                             "broken_by": {name: int((interval.attack.success & (interval.attack.attack_index == i))
                                                     .sum()) for i, name in enumerate(interval.attack_names)},
                             "certify_decided_by": certificate.get("decided_by"),
                             "certify_outcomes": {k: certificate.get(k) for k in ("certified", "failed", "unable")}}
        print(json.dumps(data["runs"][key]), flush=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    data["torch_threads"] = torch.get_num_threads()
    data["cores"] = os.cpu_count()
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def render(data: dict[str, Any]) -> str:
    lines = ["# Floor and ceiling on a certified-trained model (MNIST-5k, CertCNN behind codes {0, 253}/255)", "",
             f"Command: `{data['command']}`", "",
             f"{data.get('cores', os.cpu_count())} cores, torch threads {data.get('torch_threads', '?')}; load average before each eps: "
             + ", ".join(f"{key}: {run['load_before']:.1f}" for key, run in data["runs"].items())
             + (f" ({data['note']})" if data.get("note") else "") + ".", "",
             "| eps | clean | certified (floor) | robust under attack (ceiling) | undecided | exact? | "
             "certify decided by | broken by | seconds (attacks / certify) |",
             "|---:|---:|---:|---:|---:|:---:|:---|:---|---:|"]
    for key, run in data["runs"].items():
        decided = ", ".join(f"{k} {v}" for k, v in (run.get("certify_decided_by") or {}).items())
        broken = ", ".join(f"{k} {v}" for k, v in run["broken_by"].items() if v)
        seconds = run["seconds"]
        lines.append(f"| {key} | {100 * run['clean_accuracy']:.1f}% | {100 * run['floor']:.1f}% | "
                     f"{100 * run['ceiling']:.1f}% | {run['undecided']} of {run['n']} | "
                     f"{'yes' if run['exact'] else 'no'} | {decided} | {broken} | "
                     f"{seconds['attacks']:.0f} / {seconds.get('certify', 0):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("certify-mnist"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/interval_certified"))
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--exact-seconds", type=float, default=60.0)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if args.render_only else run(args.models, args.out, args.eps,
                                                                        args.exact_seconds, args.n)
    args.out.with_suffix(".md").write_text(render(data))
    print(render(data))


if __name__ == "__main__":
    main()
