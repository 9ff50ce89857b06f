"""Time MINT per test image: the exact fast path (fast=True) against the code's order (fast=False).

Usage (from the repo root):
    python tools/bench_mint.py [--arch tiny|vit-b16] [--classes 200] [--images 3] [--warmup 1] [--views 64]
                               [--steps 3] [--device cpu|cuda] [--precision auto] [--threads N] [--json PATH]

The CLIP has random weights of a real shape (`tiny`: a ViT of width 256, 6 blocks, patch 16 at 224 px with a
256-wide 6-block text tower, for CPUs; `vit-b16`: ViT-B/16's shapes), the classes random made-up names, the
views random tensors: timing needs none of the real ones, and nothing is downloaded. MINT keeps its
defaults (bank 512, 3 steps, selection 0.1, query blocks 3,7,11; 1,3,5 on the 6-block tiny ViT).

Each path runs in its own process, so that its peak memory is its own: on CUDA the peak of
torch.cuda.max_memory_allocated over the images, less what was allocated before the first image (model,
bank, text prompts); on CPU the growth of the process's peak resident set (getrusage ru_maxrss) from
before the first image to the end, which is what the images needed beyond the model. The first
`--warmup` images are not timed (allocator, kernel selection, lazy imports), but count for memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mintclip.adapt import build_method  # noqa: E402
from mintclip.model import CLIP, CLIPConfig, Preprocess, TextConfig, VisionConfig  # noqa: E402

ARCHS = {
    # name: (vision width, blocks, heads, text width, blocks, heads, embed dim, MINT's query blocks)
    "tiny": (256, 6, 4, 256, 6, 4, 256, "1,3,5"),
    "vit-b16": (768, 12, 12, 512, 12, 8, 512, "3,7,11"),
}
PATHS = {"fast": True, "reference": False}


def build_clip(arch: str, device: str) -> CLIP:
    v_width, v_layers, v_heads, t_width, t_layers, t_heads, embed, _ = ARCHS[arch]
    config = CLIPConfig(embed_dim=embed, act="quick_gelu", preprocess=Preprocess(224),
                        vision=VisionConfig("vit", width=v_width, layers=v_layers, heads=v_heads, image_size=224,
                                            patch_size=16),
                        text=TextConfig(width=t_width, layers=t_layers, heads=t_heads))
    torch.manual_seed(0)
    model = CLIP(config)
    model.logit_scale.data.fill_(np.log(100.0))  # a trained CLIP's temperature
    return model.eval().requires_grad_(False).to(device)  # as load_clip returns it


def class_names(count: int, seed: int = 0) -> list[str]:
    """Made-up names of 1-3 words, a few BPE tokens each, like dataset class names."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ter", "son", "ra", "vel", "quin", "bor", "ish", "dra", "pu", "ne", "gor"]

    def word() -> str:
        return "".join(rng.choice(syllables, size=rng.integers(2, 5)))

    return [" ".join(word() for _ in range(rng.integers(1, 4))) for _ in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_one_path(args: argparse.Namespace) -> dict:
    """In this process: build the model and MINT, then warm-up and timed images."""
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_clip(args.arch, device)
    method = build_method("mint", {"fast": PATHS[args.path], "n_views": args.views, "steps": args.steps,
                                   "precision": args.precision, "query_layers": ARCHS[args.arch][-1]})
    method.setup(model, class_names(args.classes), "bench")
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(args.views, 3, 224, 224, generator=generator) for _ in range(args.warmup + args.images)]
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = maxrss_mib()
    seconds = []
    for i, views in enumerate(images):
        views = views.to(device)
        sync(device)
        start = time.perf_counter()
        logits = method.predict(views)
        sync(device)
        if i >= args.warmup:
            seconds.append(time.perf_counter() - start)
        assert torch.isfinite(logits).all()
    if device.startswith("cuda"):
        peak = (torch.cuda.max_memory_allocated() - baseline) / 2**20
        memory = "CUDA max_memory_allocated above the model's (MiB)"
    else:
        peak = maxrss_mib() - baseline
        memory = "CPU peak resident-set growth, getrusage ru_maxrss (MiB)"
    ms = 1000 * sum(seconds) / len(seconds)
    return {"path": args.path, "fast": PATHS[args.path], "ms_per_image": ms, "images_per_s": 1000 / ms,
            "median_ms": 1000 * float(np.median(seconds)),
            "seconds": seconds, "peak_mib": peak, "memory": memory, "model": model.config.arch_name,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--images", type=int, default=3, help="timed images per path")
    parser.add_argument("--warmup", type=int, default=1, help="untimed images before them")
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=["fast", "reference"])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--path", choices=sorted(PATHS), help=argparse.SUPPRESS)  # one path, in a child process
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.images < 1:
        parser.error("--images must be at least 1")

    if args.path:  # the child: one path, results to --child-out
        Path(args.child_out).write_text(json.dumps(time_one_path(args)))
        return

    shared = ["--arch", args.arch, "--classes", str(args.classes), "--images", str(args.images), "--warmup",
              str(args.warmup), "--views", str(args.views), "--steps", str(args.steps), "--device", args.device,
              "--precision", args.precision, "--threads", str(args.threads)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            out = Path(tmp) / f"{path}.json"
            subprocess.run([sys.executable, __file__, *shared, "--path", path, "--child-out", str(out)], check=True)
            results.append(json.loads(out.read_text()))

    head = (f"MINT per test image: {results[0]['model']} with random weights, {args.classes} classes, "
            f"{args.views} views, {args.steps} steps, {args.device}, precision {args.precision}, "
            f"{results[0]['threads']} threads; {args.images} timed image(s) after {args.warmup} warm-up")
    print(head)
    print(f"{'path':<24} {'ms/image':>10} {'median ms':>10} {'images/s':>9} {'peak MiB':>9}")
    for r in results:
        label = "fast (fast=True)" if r["fast"] else "reference (fast=False)"
        print(f"{label:<24} {r['ms_per_image']:>10.1f} {r['median_ms']:>10.1f} {r['images_per_s']:>9.3f} "
              f"{r['peak_mib']:>9.0f}")
    by_path = {r["path"]: r for r in results}
    ratio = None
    if len(by_path) == 2:
        ratio = by_path["reference"]["ms_per_image"] / by_path["fast"]["ms_per_image"]
        print(f"reference / fast: {ratio:.2f}x time (means), "
              f"{by_path['reference']['peak_mib'] / max(by_path['fast']['peak_mib'], 1e-9):.2f}x memory")
    print(f"peak memory: {results[0]['memory']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": {k: v for k, v in vars(args).items()
                                                          if k not in ("path", "child_out")},
                                               "summary": head, "results": results, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
