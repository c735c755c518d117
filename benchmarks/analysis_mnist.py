"""The README analysis section's data-only MNIST-5k numbers: codes, fragmentation, ambiguous pixels, the paper's Unable.

    python benchmarks/analysis_mnist.py       # writes benchmarks/analysis_mnist.json and .md (seconds; no model)

Codes by Algorithm 1 (k=2, r=0.6, the paper's MNIST setting) fitted on the
MNIST-5k training images; on its test images: the median fragmentation
``(1/d) log_k prod_i |C(x_i)|`` and the median number of ambiguous pixels at
eps=0.3, and, at every (eps, b) of the paper's Table IV, the share of images
with ``log2 |S(x)| > b`` (the paper's "Unable"). The (eps, b) pairs and the
paper's row are read from ``pixdisc.paper.table_iv()``, never typed here.
`benchmarks/readme_tables.py` calls `render` for the README's
`<!-- analysis-mnist -->` section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
COMMAND = "python benchmarks/analysis_mnist.py"
FRAGMENTATION_EPS = 0.3
K, R = 2, 0.6


def run() -> dict[str, Any]:
    import pixdisc
    from pixdisc import analysis
    from pixdisc.candidates import log2_set_size
    from pixdisc.datasets import as_float_nchw, load_mnist5k
    from pixdisc.paper import table_iv

    load_before = list(os.getloadavg())
    started = time.perf_counter()
    data = load_mnist5k()
    book = pixdisc.DensityCodebook(K, R).fit(data.x_train)
    x = as_float_nchw(data.x_test)
    fragmentation = analysis.fragmentation(x, book, FRAGMENTATION_EPS, channel_axis=1)
    ambiguous = analysis.ambiguous_counts(x, book, FRAGMENTATION_EPS, channel_axis=1)
    unable = []
    for eps, row in table_iv().items():
        log2 = log2_set_size(x, book, eps, channel_axis=1)
        unable.append({"eps": eps, "b": row["b"], "unable": float(np.mean(log2 > row["b"]))})
    return {"dataset": data.name, "n_train": int(len(data.x_train)), "n_test": int(len(x)),
            "codebook": {"algorithm": "density (Algorithm 1)", "k": K, "r": R,
                         "codes_255": np.rint(book.codes_ * 255).astype(int).ravel().tolist()},
            "fragmentation": {"eps": FRAGMENTATION_EPS, "median": float(np.median(fragmentation)),
                              "median_ambiguous_pixels": float(np.median(ambiguous)),
                              "image_pixels": int(x[0, 0].size)},
            "unable": unable, "command": COMMAND, "seconds": round(time.perf_counter() - started, 1),
            "machine": {"cores": os.cpu_count(), "load_averages_before": load_before,
                        "load_averages_after": list(os.getloadavg()),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def render(data: dict[str, Any]) -> str:
    """The Markdown section, from the JSON and, for the paper's row, pixdisc.paper."""
    from pixdisc.paper import PAPER_SOURCE, table_iv

    paper = table_iv()
    frag = data["fragmentation"]
    codes = ", ".join(str(c) for c in data["codebook"]["codes_255"])
    rows = data["unable"]
    machine = data["machine"]
    lines = [f"Command: `{data['command']}` ({data['seconds']:g} s on {machine['cores']} cores, load average "
             f"{machine['load_averages_before'][0]:.2f} before; no model; the paper's row is read from "
             "`pixdisc.paper.table_iv()`), then `python benchmarks/readme_tables.py`.", "",
             f"On the {data['n_test']:,} {data['dataset']} test images, with codes fitted by Algorithm 1 "
             f"(k={data['codebook']['k']}, r={data['codebook']['r']:g}) on its {data['n_train']:,} training images: "
             f"the codes are {{{codes}}}/255; at eps={frag['eps']:g} the median fragmentation is "
             f"{frag['median']:.3f} and the median image has {frag['median_ambiguous_pixels']:g} ambiguous pixels "
             f"(of {frag['image_pixels']}). The share of test images with `log2|S(x)| > b` (the paper's "
             "\"Unable\"; the paper's numbers are on the 10,000 MNIST test images):", "",
             "| (eps, b) | " + " | ".join(f"({row['eps']:g}, {row['b']})" for row in rows) + " |",
             "|---|" + "---:|" * len(rows),
             f"| pixdisc, {data['dataset']} test | " + " | ".join(_pct(row["unable"]) for row in rows) + " |",
             "| paper, Table IV | " + " | ".join(f"{paper[row['eps']]['unable']:g}%" for row in rows) + " |", "",
             f"Paper: {PAPER_SOURCE}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "analysis_mnist")
    parser.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json")
    args = parser.parse_args()
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if args.render_only else run()
    if not args.render_only:
        path.write_text(json.dumps(data, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(data))
    print(render(data))


if __name__ == "__main__":
    sys.exit(main())
