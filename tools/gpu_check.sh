#!/usr/bin/env bash
# The GPU check, one command on a machine with one CUDA GPU and the README's install (with a CUDA build
# of PyTorch): the tests marked `cuda`, then `mintclip bench` at ViT-B/16 x 1000 classes x 64 views,
# eager, with the image encoder compiled, and with 8 images per call, each writing JSON into OUT, and
# one markdown table of them all (OUT/bench.md). Meant to take under 8 minutes; not yet timed on a GPU.
#
#   tools/gpu_check.sh [--dry-run] [OUT]      OUT defaults to gpu_check/
#
# --dry-run prints the commands and exits 0, on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
out="${1:-gpu_check}"
common="--arch ViT-B/16 --classes 1000 --views 64 --images 3 --warmup 1 --gpu 0"
steps=(
  "python -m pytest -q -m cuda tests/test_cuda.py"
  "python -m mintclip.cli bench --method zeroshot,tpt,ctpt,zero,mta,mint,tda,dynaprompt $common --breakdown --json $out/eager.json"
  "python -m mintclip.cli bench --method zeroshot,tpt,zero,mta,mint $common --compile --json $out/compile.json"
  "python -m mintclip.cli bench --method tpt,ctpt,zero,mta $common --batch-images 8 --json $out/batch8.json"
  "python tools/bench_table.py $out/eager.json $out/compile.json $out/batch8.json --out $out/bench.md"
)
if (( dry_run )); then
  printf '%s\n' "${steps[@]}"
  exit 0
fi
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False); see --dry-run" >&2
  exit 1
fi
mkdir -p "$out"
for step in "${steps[@]}"; do
  echo "+ $step"
  started=$SECONDS
  $step
  echo "  ($((SECONDS - started)) s)"
done
echo "wrote $out/ (eager.json, compile.json, batch8.json, bench.md)"
