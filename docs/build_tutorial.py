"""Build docs/tutorial.md by running its code: every output and figure in the tutorial comes from this run.

    python docs/build_tutorial.py            # rewrites docs/tutorial.md and docs/figures/
    python docs/build_tutorial.py --out DIR  # somewhere else (the test suite does this)

The cells run exactly as printed, in order, in one fresh namespace into which
nothing is imported or defined for them: as a reader pasting them into one
interpreter would run them, so a cell that uses a name no earlier cell
imported fails here as it would for the reader. They run in a fresh working
directory, and the first cell sets one torch thread and a fixed seed, so a
rebuild reproduces the numbers up to library versions. A cell that fails
stops the build: the tutorial never shows code that did not run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (markdown, code): the code of each cell is shown as written and its printed output below it.
CELLS: list[tuple[str, str]] = [
    ("""# Tutorial: pixel discretization on MNIST-5k, from codes to certificates

This walk-through runs on the embedded MNIST-5k split (4,000 training and
1,000 test images of real MNIST), on a laptop-class CPU, in a few minutes.
It fits the paper's codes, puts a classifier behind them, attacks it with the
strongest suite pixdisc has, and then trains a model whose robustness can be
*proven*, not only tested. Every output and figure below was produced by
running this code (`python docs/build_tutorial.py`).""",
     """import time
import numpy as np, torch, pixdisc
from pixdisc import analysis, datasets

torch.manual_seed(0)
torch.set_num_threads(1)  # small models: one thread is as fast and never collapses on a busy machine
data = datasets.load_mnist5k()
x_train = torch.from_numpy(datasets.as_float_nchw(data.x_train)); y_train = torch.from_numpy(data.y_train)
x_test = torch.from_numpy(datasets.as_float_nchw(data.x_test)); y_test = torch.from_numpy(data.y_test)
print(data.x_train.shape, data.x_train.dtype, "->", tuple(x_train.shape), x_train.dtype)"""),
    ("""## 1. Why discretization can work on MNIST

MNIST pixels are nearly binary: almost all of them are black or close to
white. The histogram (log scale) shows the two clusters the codes will sit on.""",
     """counts = analysis.pixel_value_histogram(data.x_train)
analysis.plot_pixel_histogram(counts, "figures/pixel_histogram.png", title="MNIST-5k pixel values")
print(f"{counts[0] / counts.sum():.1%} of pixels are 0, {counts[230:].sum() / counts.sum():.1%} are >= 230")"""),
    ("""![pixel histogram](figures/pixel_histogram.png)

## 2. Codes by density (Algorithm 1)

`DensityCodebook(k=2, r=0.6)` takes the most frequent pixel value as the
first code, removes everything within 0.6 of it, and repeats: the paper's
codes {0, 253}/255. `transform` maps every pixel to its nearest code.""",
     """book = pixdisc.DensityCodebook(k=2, r=0.6).fit(data.x_train)
print("codes (x255):", np.rint(book.codes_.ravel() * 255).astype(int).tolist())
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
for i in range(8):
    axes[0, i].imshow(x_test[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[1, i].imshow(book.transform(x_test[i : i + 1])[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
for axis in axes.ravel():
    axis.axis("off")
fig.savefig("figures/discretized.png", dpi=100, bbox_inches="tight"); plt.close(fig)"""),
    ("""![test images and their discretized versions](figures/discretized.png)

## 3. What an attacker can still move

Within an l_inf budget eps a pixel can reach another code only if it lies
within eps of the decision threshold between codes. Those *ambiguous* pixels
are the attacker's whole freedom: the set S(x) of discretized images it can
produce has 2^(ambiguous pixels) members here.""",
     """for eps in (0.1, 0.3):
    counts = analysis.ambiguous_counts(x_test.numpy(), book, eps, channel_axis=1)
    print(f"eps={eps}: median {np.median(counts):.0f} ambiguous pixels per image, max {counts.max()}")"""),
    ("""## 4. A classifier behind the codes

A small CNN trained naturally, then put behind `Discretize`, which applies the
codes in the forward pass and passes a smooth (BPDA) gradient backwards, so
every gradient attack can run through it.""",
     """from pixdisc.train import train_setting

started = time.perf_counter()
net = train_setting("nat_pre", x_train, y_train, epochs=6, progress=False)
defended = torch.nn.Sequential(pixdisc.Discretize(book), net).eval()
with torch.no_grad():
    clean = (net(x_test).argmax(1) == y_test).float().mean().item()
    behind = (defended(x_test).argmax(1) == y_test).float().mean().item()
print(f"trained in {time.perf_counter() - started:.0f} s; clean accuracy {clean:.1%}, behind the codes {behind:.1%}")"""),
    ("""## 5. Robust accuracy is an interval

An attack only shows that an image is *not* robust. `robustness_interval`
runs the strongest suite (the S(x) search, BPDA gradient attacks, APGD and the
gradient-free Square attack, per-image worst case) and then certifies the
images no attack broke: the certified fraction is a floor, the unbroken one a
ceiling.""",
     """from pixdisc.evaluation import robustness_interval

interval = robustness_interval(defended, x_test[:100], y_test[:100], eps=0.3, progress=False)
print("attacks:", ", ".join(interval.attack_names))
print(f"certified {interval.floor:.0%} <= robust accuracy <= {interval.ceiling:.0%} (attacked), "
      f"{interval.count('undecided')} of 100 undecided")"""),
    ("""A naturally trained network is not built to be proven robust: most images
stay undecided, and the ceiling is all we know.

## 6. Training for the certificate

`train_certified` trains the network on discretized images while pushing up a
*lower bound* of its margin over the whole of S(x) (interval bounds over the
box hull of the candidate codes). `certify` then proves or refutes each image:
bounds first, branch and bound on the candidate codes where they are not
enough, and a counterexample that is checked on the real model for every
failure.""",
     """from pixdisc.certification import Budget, certify
from pixdisc.models import build_model
from pixdisc.report import certify_table
from pixdisc.train import train_certified

started = time.perf_counter()
cert_net = build_model("cert_cnn", in_channels=1, num_classes=10, input_size=28)
cert_net, history = train_certified(cert_net, x_train, y_train, book, eps=0.3, epochs=8, warmup_epochs=1,
                                    ramp_epochs=4, kappa_end=0.7, progress=False)
print(f"trained in {time.perf_counter() - started:.0f} s; verified on its last training batches: "
      f"{history['verified'][-1]:.0%}")
rows = [certify(cert_net, book, x_test[:200], y_test[:200], eps, executor="serial", progress=False,
                budget=Budget(nodes=200, seconds=2)).summary() for eps in (0.1, 0.3)]
print(certify_table(rows))"""),
    ("""Every "failed" image comes with a real input x' within eps that the model
misclassifies, checked; every "certified" one is robust for *every* input in
the eps-ball. The last columns are lower confidence bounds on the certified
fraction of the whole distribution from these 200 images.

## 7. Floor and ceiling against eps

The same interval for the certified-trained model at several budgets. Where
the two lines meet, robust accuracy is known exactly.""",
     """cert_defended = torch.nn.Sequential(pixdisc.Discretize(book), cert_net).eval()
grid, floors, ceilings = (0.1, 0.2, 0.3, 0.4), [], []
for eps in grid:
    interval = robustness_interval(cert_defended, x_test[:100], y_test[:100], eps=eps, progress=False,
                                   certify_budget=Budget(nodes=50, seconds=1))
    floors.append(interval.floor); ceilings.append(interval.ceiling)
    print(f"eps={eps}: certified {interval.floor:.0%}, attacked {interval.ceiling:.0%}")
analysis.plot_robustness_curves(grid, {"ceiling (attacked)": ceilings, "floor (certified)": floors},
                                "figures/interval_vs_eps.png", title="certified-trained CNN behind the codes")"""),
    ("""![floor and ceiling against eps](figures/interval_vs_eps.png)

## The same from the command line

```bash
pixdisc codebook -k 2 -r 0.6 -o codes.npz
pixdisc train --mode certified --codebook codes.npz --eps 0.3 --epochs 8 -o cert.pt
pixdisc certify cert.pt --codebook codes.npz --eps 0.1 0.3 --limit 200
pixdisc attack cert.pt --limit 100 --eps 0.3      # the defense recorded in cert.pt is used
```

Where to go next: the README's API and CLI reference, `pixdisc demo` for the
paper's six settings, and `pixdisc reproduce` for its tables and figures.""", ""),
]


def run(out: Path, cells: list[tuple[str, str]] = CELLS) -> str:
    """Execute the code of ``cells`` in ``out``, in order in one fresh namespace, and return the Markdown."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    importlib.import_module("pixdisc")  # imported (in a development install: rebuilt) before output is captured
    namespace: dict = {"__name__": "__tutorial__"}  # a module name and nothing else: the cells import the rest
    parts: list[str] = []
    previous = Path.cwd()
    os.chdir(out)
    try:
        for number, (text, code) in enumerate(cells, 1):
            parts.append(text.strip())
            code = code.strip()  # run exactly what is shown
            if not code:
                continue
            buffer = io.StringIO()
            started = time.perf_counter()
            with contextlib.redirect_stdout(buffer):
                exec(compile(code, f"<tutorial cell {number}>", "exec"), namespace)  # noqa: S102 - our own cells
            print(f"cell {number}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
            parts.append(f"```python\n{code}\n```")
            if buffer.getvalue().strip():
                parts.append(f"```text\n{buffer.getvalue().rstrip()}\n```")
    finally:
        os.chdir(previous)
    return "\n\n".join(parts) + "\n"


def build(out: Path = HERE) -> Path:
    """Run the tutorial in ``out`` and write ``out/tutorial.md`` (figures in ``out/figures``)."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    text = run(out)
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".md") as handle:
        handle.write(text)
    target = out / "tutorial.md"
    os.replace(handle.name, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for tutorial.md and figures/ (default: docs/)")
    args = parser.parse_args()
    started = time.perf_counter()
    path = build(args.out)
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
