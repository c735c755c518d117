"""`pixdisc demo` on a machine busy with other work: one busy process per core, started by this script.

    python benchmarks/demo_under_load.py --out benchmarks/demo_under_load

Runs the demo exactly as a user would (`pixdisc demo -o DIR -q`, default
threads: the CLI picks them from the load) while ``--busy`` processes spin,
and writes ``<out>.json`` with the wall time, the load averages, the torch
threads the demo chose and its peak memory. The idle-machine run is
`benchmarks/demo/` (written by `pixdisc demo` itself).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/demo_under_load"))
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pixdisc-demo-load-"))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(65)  # let the 1-minute load average see the busy processes, as a user's machine would
        load_before = os.getloadavg()
        started = time.perf_counter()
        subprocess.run(["pixdisc", "demo", "-o", str(folder / "demo"), "-q"], check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        load_after = os.getloadavg()
    finally:
        for hog in hogs:
            hog.kill()
    result = json.loads((folder / "demo" / "results.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    data = {
        "command": f"python benchmarks/demo_under_load.py --out {args.out} --busy {args.busy}",
        "cores": os.cpu_count(), "busy_processes": args.busy, "wall_seconds": seconds,
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
        "torch_threads": result.get("run", {}).get("torch_threads"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "robust_accuracy": {name: row["robust_accuracy"] for name, row in result["settings"].items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data))


if __name__ == "__main__":
    main()
