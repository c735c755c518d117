"""Turn a pytest-benchmark JSON file into the README's Markdown table with ratios per group."""

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b["group"]].append(b)
    machine = data.get("machine_info", {})
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', '?')}, "
          f"{machine.get('cpu', {}).get('count', '?')} logical CPUs\n")
    print("| benchmark | implementation | median (s) | vs pixdisc (CPU) |")
    print("|---|---|---:|---:|")
    for group, rows in groups.items():
        ours = next((r for r in rows if r["name"].endswith("_pixdisc")), None)
        for r in sorted(rows, key=lambda r: r["stats"]["median"]):
            median = r["stats"]["median"]
            impl = r["name"].split("[")[0].split("_", 2)[-1]
            impl = impl.split("_", 1)[1] if "_" in impl else impl
            ratio = f"{median / ours['stats']['median']:.1f}x" if ours else ""
            extra = "".join(f", {k}={v}" for k, v in r.get("extra_info", {}).items())
            print(f"| {group} | {impl.replace('_', ' ')}{extra} | {median:.4f} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
