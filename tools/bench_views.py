"""Time TPT's test-time views: JPEG decode, mintclip's ViewMaker, and the PIL per-view pipeline it replaces.

Usage (from the repo root):
    python tools/bench_views.py [--images 20] [--size 224] [--augmix] [--device cpu|cuda] [--image-size 500x375]

Writes a few synthetic JPEGs to a temp dir, then reports images/s and ms/image for decode alone, views alone
(from decoded images), both together, and the PIL reference (crop + bilinear resize + flip + ToTensor +
Normalize per view, and with --augmix TPT's PIL AugMix ops) with its time relative to ViewMaker's.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mintclip.data.reference_views import pil_views  # noqa: E402
from mintclip.data.views import ViewMaker  # noqa: E402


def write_jpegs(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """A few smooth random images (JPEG-friendly), reused round-robin for `count` paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(min(count, 4)):
        coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
        path = folder / f"image{i}.jpg"
        coarse.resize((width, height), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return [paths[i % len(paths)] for i in range(count)]


def decode(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def timed(label: str, count: int, fn, sync) -> float:
    sync()
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    sync()
    seconds = time.perf_counter() - start
    print(f"{label:<22} {count / seconds:8.2f} images/s {1000 * seconds / count:9.1f} ms/image")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--augmix", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--image-size", default="500x375", help="WxH of the synthetic JPEGs")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    width, height = map(int, args.image_size.lower().split("x"))
    sync = torch.cuda.synchronize if args.device == "cuda" else lambda: None
    maker = ViewMaker(n_views=64, size=args.size, augmix=args.augmix, device=args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.images} images {width}x{height} -> 64 views of {args.size}, augmix={args.augmix}")

    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), args.images, width, height)
        decoded = [decode(path) for path in paths]
        maker(decoded[0], 0, 0)  # warm-up (allocator, CUDA context and kernels)
        sync()
        timed("decode", args.images, lambda i: decode(paths[i]), sync)
        ours = timed("views (ViewMaker)", args.images, lambda i: maker(decoded[i], 0, i), sync)
        timed("decode + views", args.images, lambda i: maker(decode(paths[i]), 0, i), sync)
        ref = timed("views (PIL reference)", args.images, lambda i: pil_views(decoded[i], maker, maker.sample(decoded[i].height, decoded[i].width, 0, i)), lambda: None)
    print(f"PIL reference / ViewMaker time: {ref / ours:.2f}x")


if __name__ == "__main__":
    main()
