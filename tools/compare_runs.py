"""Compare the records of two runs sample by sample: how many predictions differ, per set.

Used for accuracy parity between mintclip's fast path and the reference order of work on the same
data and seed (e.g. `--hp reference_order=true` for TPT, `--hp fast=false` for MINT): exact
reformulations may only differ where two classes are tied to float rounding.

    python tools/compare_runs.py runs/demo/tpt runs/parity/tpt_reference
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mintclip.data import set_label
from mintclip.engine.records import read_records


def compare(a: Path, b: Path) -> list[str]:
    config = json.loads((a / "config.json").read_text())["run"]
    lines = []
    for seed in config["seeds"]:
        for name in map(set_label, config["test_sets"]):
            left = {r["index"]: r for r in read_records(a / f"seed{seed}" / name / "records.jsonl") if "top5" in r}
            right = {r["index"]: r for r in read_records(b / f"seed{seed}" / name / "records.jsonl") if "top5" in r}
            common = sorted(left.keys() & right.keys())
            differ = [i for i in common if left[i]["top5"][0][0] != right[i]["top5"][0][0]]
            gaps = [abs(left[i]["top5"][0][1] - right[i]["top5"][0][1]) for i in common]
            margins = [left[i]["top5"][0][1] - left[i]["top5"][1][1] for i in differ if len(left[i]["top5"]) > 1]
            lines.append(f"seed {seed} {name}: {len(common)} samples, {len(differ)} predictions differ "
                         f"({100 * len(differ) / max(len(common), 1):.2f}%), max |top-1 probability difference| "
                         f"{max(gaps, default=0):.2e}" + (f", top-1/top-2 margins where they differ: "
                                                          f"{', '.join(f'{m:.3f}' for m in margins)}" if margins else ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    print("\n".join(compare(args.run_a, args.run_b)))


if __name__ == "__main__":
    main()
