"""Time methods per test image: mintclip's path against the reference code's order of work, side by side.

The CLIP has random weights of a real shape (nothing is downloaded), the class names are made up, the
views random tensors: timing needs none of the real ones, and view making is not timed here (a run's
timing.json includes it). Methods that declare a reference order (`Method.reference_overrides`: TPT,
C-TPT, MINT, DynaPrompt) are timed both ways; the others once.

Each (method, path) runs in its own process, so its peak memory is its own: on CUDA the peak of
torch.cuda.max_memory_allocated over the images less what was allocated before the first (model, text,
bank); on CPU the growth of the peak resident set (getrusage ru_maxrss). The first `warmup` images are
not timed (allocator, kernel selection, lazy imports).

Episodic methods can take `batch_images` test images per call (`Method.predict_batch`); the figures stay
per image. Online methods are sequential by nature, so they always take one (their rows say so).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .adapt import available_methods, build_method
from .bound import WORK, Bound
from .breakdown import WORK_PHASES, PhaseClock, synchronise
from .data import TestSet, ViewMaker
from .model import CLIP, CLIPConfig, Preprocess, TextConfig, VisionConfig

# name: (image size, patch, vision width, blocks, heads, text width, blocks, heads, embed dim)
ARCHS = {
    "micro": (32, 8, 128, 3, 2, 64, 2, 1, 32),  # for tests
    "tiny": (224, 16, 256, 6, 4, 256, 6, 4, 256),  # for CPUs
    "ViT-B/32": (224, 32, 768, 12, 12, 512, 12, 8, 512),
    "ViT-B/16": (224, 16, 768, 12, 12, 512, 12, 8, 512),
}


@dataclass
class Timing:
    method: str
    path: str  # "mintclip" or "reference"
    ms_per_image: float
    median_ms: float  # the median call's time, per image
    images_per_s: float
    peak_mib: float
    memory: str
    model: str
    threads: int
    batch_images: int = 1  # test images per call: predict_batch when above 1
    compiled: bool = False  # the image encoder under torch.compile (mintclip's path only)
    phases_ms: dict[str, float] | None = None  # --breakdown: ms per image by phase, views made and timed too
    tokens: dict[str, float] | None = None  # --breakdown: image and text tokens encoded per image


def build_clip(arch: str, device: str) -> CLIP:
    size, patch, v_width, v_layers, v_heads, t_width, t_layers, t_heads, embed = ARCHS[arch]
    config = CLIPConfig(embed_dim=embed, act="quick_gelu", preprocess=Preprocess(size),
                        vision=VisionConfig("vit", v_width, v_layers, v_heads, size, patch),
                        text=TextConfig(t_width, t_layers, t_heads))
    torch.manual_seed(0)
    model = CLIP(config)
    model.logit_scale.data.fill_(np.log(100.0))  # a trained CLIP's temperature
    return model.eval().requires_grad_(False).to(device)  # as load_clip returns it


def class_names(count: int, seed: int = 0) -> list[str]:
    """Made-up names of 1-3 words, a few BPE tokens each, like dataset class names."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ter", "son", "ra", "vel", "quin", "bor", "ish", "dra", "pu", "ne", "gor"]
    word = lambda: "".join(rng.choice(syllables, size=rng.integers(2, 5)))  # noqa: E731
    return [" ".join(word() for _ in range(rng.integers(1, 4))) for _ in range(count)]


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_method(method_name: str, path: str, arch: str, classes: int, views: int, images: int, warmup: int,
                device: str, precision: str, batch_images: int = 1, compile_encoder: bool = False,
                breakdown: bool = False) -> Timing:
    """In this process: build the model and the method, then run warm-up and timed images, `batch_images`
    per call for an episodic method (images and warmup rounded up to whole calls), one for an online one.
    `compile_encoder`: mintclip's path runs the image encoder under torch.compile (compiled in warm-up).
    `breakdown`: the views are made from a random 500x375 image per test image, and each phase of the
    timed images is timed on its own (breakdown.py)."""
    if path == "bound" and not breakdown:
        raise ValueError("a bound is timed by the breakdown's clock: pass breakdown=True")
    reference = available_methods()[method_name].reference_overrides if path == "reference" else {}
    method = build_method(method_name, {"precision": precision, **reference})  # MINT: query_layers auto
    if hasattr(method.config, "n_views"):
        method.config.n_views = views
    model = build_clip(arch, device)
    compiled = compile_encoder and path == "mintclip"
    if compiled:
        model.visual.compile(dynamic=False)
    test_set = TestSet.named("folder", class_names(classes))
    method.setup(model, test_set)
    size = model.config.vision.image_size
    clock = PhaseClock(device) if breakdown else None
    if clock is not None:
        clock.install(model)
        augmix = method.augmix(test_set)
        make_views = clock.timed("views", ViewMaker(n_views=views, size=size, device=device,
                                                    augmix=test_set.augmix if augmix is None else augmix))
    bound = Bound(method) if path == "bound" else None
    per_call = 1 if method.online or bound is not None else max(1, batch_images)
    warmup_calls, timed_calls = -(-warmup // per_call), -(-images // per_call)
    shape = (views, 3, size, size) if per_call == 1 else (per_call, views, 3, size, size)
    generator = torch.Generator().manual_seed(1)
    calls = warmup_calls + timed_calls
    batches = [torch.randn(shape, generator=generator) for _ in range(calls)] if clock is None else [None] * calls
    synchronise(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _maxrss_mib()
    seconds = []
    for i, batch in enumerate(batches):
        timed = i >= warmup_calls
        if clock is not None:  # views made from a random 500x375 image per test image, and timed
            clock.active = timed and bound is None
            made = [make_views(torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=generator), 0,
                               i * per_call + b) for b in range(per_call)]
            batch = made[0] if per_call == 1 else torch.stack(made)
        batch = batch.to(device)
        synchronise(device)
        start = time.perf_counter()
        logits = method.predict(batch) if per_call == 1 else method.predict_batch(batch).logits
        synchronise(device)
        if bound is not None:  # the method has decided; now only the work it could not avoid, timed
            clock.active = timed
            bound(batch)
            if timed:
                seconds.append(sum(clock.seconds[p] for p in WORK_PHASES) - sum(seconds))
        elif timed:
            seconds.append(time.perf_counter() - start)
        if clock is not None:
            clock.active = False
        if not torch.isfinite(logits).all():
            raise RuntimeError(f"{method_name} ({path}) gave non-finite logits")
    if device.startswith("cuda"):
        peak, memory = (torch.cuda.max_memory_allocated() - baseline) / 2**20, "CUDA max_memory_allocated above the model's"
    else:
        peak, memory = _maxrss_mib() - baseline, "CPU peak resident-set growth (getrusage ru_maxrss)"
    ms = 1000 * sum(seconds) / (len(seconds) * per_call)
    phases, tokens = (None, None) if clock is None else clock.per_image(
        len(seconds) * per_call, sum(seconds) + clock.seconds["views"])
    return Timing(method_name, path, ms, 1000 * float(np.median(seconds)) / per_call, 1000 / ms, peak, memory,
                  model.config.arch_name, torch.get_num_threads(), per_call, compiled, phases, tokens)


def run_benchmark(methods: list[str], arch: str, classes: int, views: int, images: int, warmup: int, device: str,
                  precision: str, batch_images: int = 1, compile_encoder: bool = False,
                  breakdown: bool = False) -> list[Timing]:
    """Every (method, path) in a child process of its own; returns the timings in order."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            paths = ["mintclip", "reference"] if available_methods()[method].reference_overrides else ["mintclip"]
            for path in paths + (["bound"] if breakdown and method in WORK else []):
                out = Path(tmp) / f"{method}-{path}.json"
                spec = json.dumps([method, path, arch, classes, views, images, warmup, device, precision,
                                   batch_images, compile_encoder, breakdown])
                code = ("import json, sys; from dataclasses import asdict; from mintclip.bench import time_method; "
                        "open(sys.argv[2], 'w').write(json.dumps(asdict(time_method(*json.loads(sys.argv[1])))))")
                subprocess.run([sys.executable, "-c", code, spec, str(out)], check=True)
                results.append(Timing(**json.loads(out.read_text())))
    return results


def format_table(results: list[Timing], header: str) -> str:
    lines = [header, f"{'method':<10} {'path':<10} {'ms/image':>10} {'median ms':>10} {'images/s':>9} {'peak MiB':>9} "
                     f"{'imgs/call':>9}"]
    for r in results:
        lines.append(f"{r.method:<10} {r.path:<10} {r.ms_per_image:>10.1f} {r.median_ms:>10.1f} {r.images_per_s:>9.3f} "
                     f"{r.peak_mib:>9.0f} {r.batch_images:>9}")
    by_key = {(r.method, r.path): r for r in results}
    for method in dict.fromkeys(r.method for r in results):
        if (method, "reference") in by_key:
            ours, ref = by_key[method, "mintclip"], by_key[method, "reference"]
            lines.append(f"{method}: reference / mintclip = {ref.ms_per_image / ours.ms_per_image:.2f}x time, "
                         f"{ref.peak_mib / max(ours.peak_mib, 1e-9):.2f}x memory")
    lines.append(f"peak memory: {results[0].memory} (MiB)")
    if all(r.phases_ms is not None for r in results):
        lines += ["", "ms per image by phase (views made from a 500x375 image; rest: selection, losses, bookkeeping, "
                      "transfers), and tokens encoded per image"]
        phases = list(results[0].phases_ms)
        lines.append(f"{'method':<10} {'path':<10} " + " ".join(f"{p:>13}" for p in phases)
                     + f" {'image tokens':>13} {'text tokens':>13} {'x work':>7} {'x bound':>7}")
        bounds = {r.method: r.ms_per_image for r in results if r.path == "bound"}
        for r in results:
            over = f"{r.ms_per_image / bounds[r.method]:>7.2f}" if r.method in bounds else f"{'-':>7}"
            lines.append(f"{r.method:<10} {r.path:<10} " + " ".join(f"{r.phases_ms[p]:>13.1f}" for p in phases)
                         + f" {r.tokens['image']:>13.0f} {r.tokens['text']:>13.0f} {work_ratio(r):>7.3f} {over}")
        lines.append("x work: the prediction's time over the encoder, backward and optimiser work it timed; "
                     "x bound: over the bound's (the work no exact reformulation removes, docs/performance.md)")
    return "\n".join(lines)


def work_ratio(timing: Timing) -> float:
    """The prediction's time over its timed encoder, backward and optimiser phases: how much goes to
    everything else (selection, losses, bookkeeping, host transfers); 1.0 is none."""
    work = sum(timing.phases_ms[p] for p in WORK_PHASES)
    return timing.ms_per_image / max(work, 1e-9)


def to_json(results: list[Timing], settings: dict) -> str:
    return json.dumps({"settings": settings, "results": [asdict(r) for r in results]}, indent=1)
