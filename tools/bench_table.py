"""One markdown table of several `mintclip bench --json` files, with the device and settings of each.

    python tools/bench_table.py gpu_check/eager.json gpu_check/compile.json --out gpu_check/bench.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(files: list[Path]) -> str:
    lines = ["| run | method | path | ms/image | images/s | peak MiB | images/call | compiled | x bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    settings = []
    for file in files:
        saved = json.loads(file.read_text())
        settings.append(f"- {file.stem}: {json.dumps(saved['settings'], sort_keys=True)}")
        bounds = {r["method"]: r["ms_per_image"] for r in saved["results"] if r["path"] == "bound"}  # --breakdown
        for r in saved["results"]:
            over = f"{r['ms_per_image'] / bounds[r['method']]:.2f}" if r["method"] in bounds else "-"
            lines.append(f"| {file.stem} | {r['method']} | {r['path']} | {r['ms_per_image']:.1f} | "
                         f"{r['images_per_s']:.2f} | {r['peak_mib']:.0f} | {r['batch_images']} | {r['compiled']} | "
                         f"{over} |")
    return "\n".join(lines) + "\n\nSettings\n\n" + "\n".join(settings) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(table(args.files))
    print(args.out.read_text())
