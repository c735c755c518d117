"""Write the README's measured tables from the result files, between their markers, so no number is typed.

    python benchmarks/readme_tables.py            # after the runs named below

- `<!-- demo-table -->`: `benchmarks/demo/results.json`, written by `pixdisc demo` (the report
  folder's results.json/md and PNGs copied there; table, wall time, machine load);
- `<!-- attack-strength -->`: `benchmarks/attack_strength.md` (benchmarks/attack_strength.py);
- `<!-- interval-certified -->`: `benchmarks/interval_certified.md` (benchmarks/interval_certified.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pixdisc.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def _demo_block() -> str:
    result = json.loads((ROOT / "benchmarks" / "demo" / "results.json").read_text())
    timings = result["timings"]
    minutes, seconds = divmod(round(timings["total"]), 60)
    run = result.get("run", {})
    lines = [markdown_table(result), "",
             f"Command: `pixdisc demo` (seed {result['config']['seed']}; its report is in `benchmarks/demo/`); "
             f"wall time "
             f"**{minutes} min {seconds:02d} s** on {run.get('cores', '?')} cores, load average "
             f"{run.get('load_before', '?')} before the run; per stage: "
             + ", ".join(f"{name} {value:.0f} s" for name, value in timings.items() if name != "total") + "."]
    return "\n".join(lines)


def _file_block(name: str) -> str:
    text = (ROOT / "benchmarks" / name).read_text().strip()
    # Drop the file's own title: the README section has one.
    return "\n".join(line for line in text.splitlines() if not line.startswith("# "))


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    blocks = {"demo-table": _demo_block, "attack-strength": lambda: _file_block("attack_strength.md"),
              "interval-certified": lambda: _file_block("interval_certified.md")}
    for marker, make in blocks.items():
        pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {marker}:start/end --> markers")
        try:
            block = make()
        except FileNotFoundError as exc:
            print(f"skipped {marker}: {exc.filename} does not exist")
            continue
        text = pattern.sub(lambda match: match.group(1) + block.strip() + "\n" + match.group(2), text)
    readme.write_text(text)


if __name__ == "__main__":
    main()
