"""How torch's thread count behaves on an idle and on a busy machine: the evidence for the CLI's default.

    python benchmarks/threads_under_load.py --out benchmarks/threads_under_load

Runs the demo's heaviest step in miniature (adversarial training of the
demo's SmallCNN: PGD-10 on 1,000 MNIST-5k images, one epoch) with 1 torch
thread and with one per core, first on the machine as it is, then with one
busy process per core started by this script (what "a machine busy with
other work" means here). Each condition runs in a fresh process. Writes
``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_WORKLOAD = """
import time, torch
from pixdisc import datasets
from pixdisc.train import train_setting
torch.set_num_threads({threads})
data = datasets.load_mnist5k()
x = torch.from_numpy(datasets.as_float_nchw(data.x_train[:1000])); y = torch.from_numpy(data.y_train[:1000])
started = time.perf_counter()
train_setting("adv_pre", x, y, epochs=1, eps=0.3, attack_steps=10, step_size=0.05, progress=False, seed=0)
print(time.perf_counter() - started)
"""


def _run(threads: int) -> float:
    out = subprocess.run([sys.executable, "-c", _WORKLOAD.format(threads=threads)], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return float(out.stdout.strip().splitlines()[-1])


def _busy(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def measure(repeats: int) -> dict:
    cores = os.cpu_count() or 1
    rows = []
    for background in (0, cores):
        hogs = _busy(background)
        try:
            time.sleep(1.0 if background else 0.0)
            for threads in sorted({1, cores}):
                load = os.getloadavg()[0]
                seconds = [_run(threads) for _ in range(repeats)]
                rows.append({"background_processes": background, "torch_threads": threads,
                             "seconds": seconds, "median": sorted(seconds)[len(seconds) // 2],
                             "load_at_start": round(load, 2)})
                print(rows[-1], file=sys.stderr)
        finally:
            for hog in hogs:
                hog.kill()
    return {"cores": cores, "repeats": repeats, "workload": "adv_pre, 1 epoch, PGD-10, 1,000 MNIST-5k images",
            "rows": rows}


def render(data: dict, command: str) -> str:
    lines = ["# torch threads on an idle and a busy machine", "", f"Command: `{command}`", "",
             f"{data['workload']}; {data['cores']} cores; median of {data['repeats']} run(s) per condition, "
             "each in a fresh process.", "",
             "| busy background processes | torch threads | seconds (median) | load at start |",
             "|---:|---:|---:|---:|"]
    for row in data["rows"]:
        lines.append(f"| {row['background_processes']} | {row['torch_threads']} | {row['median']:.1f} | "
                     f"{row['load_at_start']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/threads_under_load"))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    data = measure(args.repeats)
    command = f"python benchmarks/threads_under_load.py --out {args.out} --repeats {args.repeats}"
    data["command"] = command
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(data, command))


if __name__ == "__main__":
    main()
