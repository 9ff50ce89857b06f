"""Regenerate mintclip's package data from the open_clip_torch 3.3.0 wheel.

Usage (from the repo root):
    python tools/regen_assets.py [--wheel open_clip_torch-3.3.0-py3-none-any.whl] [--timm-wheel timm-1.0.31-...whl]

Writes src/mintclip/assets/bpe_simple_vocab_16e6.txt.gz, known_checkpoints.json, imagenet.json and
THIRD_PARTY_LICENSES.md. Output depends only on the wheels, so reruns are byte-identical.
"""
import argparse
import hashlib
import importlib
import json
import re
import subprocess
import sys
import tempfile
import types
import zipfile
from collections import Counter
from pathlib import Path

OC_VERSION = "3.3.0"
TIMM_VERSION = "1.0.31"
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "src" / "mintclip" / "assets"
# The hash is part of the URL: OpenAI publishes the full SHA-256, open_clip releases an 8-hex prefix.
OPENAI_URL = re.compile(r"^https://openaipublic\.azureedge\.net/clip/models/([0-9a-f]{64})/([^/]+\.pt)$")
RELEASE_URL = re.compile(r"^https://github\.com/mlfoundations/open_clip/releases/download/[^/]+/([^/]+-([0-9a-f]{8})\.pth?)$")
OPENAI_MIT = """MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def fetch_wheel(package: str, version: str, dest: Path) -> Path:
    """Download a pinned wheel with pip, since the registry is the only network we rely on."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:none:", f"{package}=={version}",
           "-d", str(dest)]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob(f"{package}-{version}-*.whl"))
    if not wheels:
        sys.exit(f"error: pip did not produce a {package} {version} wheel in {dest}")
    return wheels[0]


def import_open_clip(src: Path, module: str) -> types.ModuleType:
    """Import open_clip.<module> from the unpacked wheel without the package __init__, which pulls in
    torchvision (never installed here)."""
    pkg = types.ModuleType("open_clip")
    pkg.__path__ = [str(src / "open_clip")]
    sys.modules["open_clip"] = pkg
    # Optional deps of pretrained.py that only matter for downloading; blocking them keeps the import light.
    for name in ("safetensors", "huggingface_hub"):
        sys.modules[name] = None  # type: ignore[assignment]
    return importlib.import_module(f"open_clip.{module}")


def load_pretrained(src: Path) -> dict:
    mod = import_open_clip(src, "pretrained")
    if mod.__version__ != OC_VERSION:
        sys.exit(f"error: wheel is open_clip {mod.__version__}, expected {OC_VERSION}")
    return mod._PRETRAINED


def checkpoint_table(src: Path) -> list[dict]:
    """Keep the pretrained entries whose download URL carries a SHA-256 (full or prefix), one per file."""
    table = load_pretrained(src)
    rows, seen = [], set()
    for name in sorted(table):
        if name.endswith("-quickgelu"):  # generated aliases of the same files
            continue
        for tag in sorted(table[name]):
            cfg = table[name][tag]
            if m := OPENAI_URL.match(cfg["url"]):
                sha, match, file = m.group(1), "full", m.group(2)
            elif m := RELEASE_URL.match(cfg["url"]):
                sha, match, file = m.group(2), "prefix", m.group(1)
            else:
                continue
            if sha in seen:
                continue
            seen.add(sha)
            model_cfg = json.loads((src / "open_clip" / "model_configs" / f"{name}.json").read_text())
            image_size = model_cfg["vision_cfg"]["image_size"]
            assert isinstance(image_size, int), (name, image_size)
            rows.append({
                "sha256": sha, "match": match, "name": name, "tag": tag, "file": file,
                "act": "quick_gelu" if cfg.get("quick_gelu", False) else "gelu",
                "image_size": image_size,
                "mean": [float(x) for x in cfg["mean"]], "std": [float(x) for x in cfg["std"]],
                "interpolation": cfg["interpolation"], "resize_mode": cfg["resize_mode"],
            })
    return rows


def imagenet_metadata(oc_src: Path, timm_src: Path) -> dict:
    """CLIP's curated class names and templates (open_clip), the sorted wnids and the A/R subsets (timm)."""
    meta = import_open_clip(oc_src, "zero_shot_metadata")
    info = timm_src / "timm" / "data" / "_info"
    wnids = (info / "imagenet_synsets.txt").read_text().split()
    subsets = {s: (info / f"imagenet_{s}_synsets.txt").read_text().split() for s in ("a", "r")}
    assert len(meta.IMAGENET_CLASSNAMES) == len(wnids) == 1000 and wnids == sorted(wnids)
    for name, subset in subsets.items():  # timm's index files must agree with the wnid lists
        indices = [int(i) for i in (info / f"imagenet_{name}_indices.txt").read_text().split()]
        assert len(subset) == 200 and subset == sorted(subset) and indices == [wnids.index(w) for w in subset]
    return {
        "generated_by": "tools/regen_assets.py",
        "source": f"open_clip_torch {OC_VERSION} (open_clip/zero_shot_metadata.py: classnames, templates); "
                  f"timm {TIMM_VERSION} (timm/data/_info: imagenet_synsets.txt, imagenet_[ar]_synsets.txt)",
        "license": "MIT (open_clip), Apache-2.0 (timm), see THIRD_PARTY_LICENSES.md",
        "classnames": list(meta.IMAGENET_CLASSNAMES),
        "wnids": wnids,
        "imagenet_a_wnids": subsets["a"],
        "imagenet_r_wnids": subsets["r"],
        "templates": {"openai_80": [t("{}") for t in meta.OPENAI_IMAGENET_TEMPLATES],
                      "simple_7": [t("{}") for t in meta.SIMPLE_IMAGENET_TEMPLATES]},
    }


def licenses_md(oc_license: str, timm_license: str) -> str:
    """THIRD_PARTY_LICENSES.md: provenance of the shipped data plus both MIT texts in full."""
    oc_license, timm_license = ("\n".join(line.rstrip() for line in text.strip().splitlines()) + "\n"
                                for text in (oc_license, timm_license))
    copyright_line = " ".join(oc_license.split("\n\n")[0].split())
    return f"""# Third-party licenses

mintclip ships data files derived from third-party projects. They are listed here with their licences.

## `src/mintclip/assets/{BPE_NAME}`

OpenAI's CLIP byte-pair-encoding vocabulary (MIT License, Copyright (c) 2021 OpenAI). The file is
byte-identical to the one in https://github.com/openai/CLIP and to `open_clip/{BPE_NAME}`
shipped in the open_clip_torch {OC_VERSION} wheel, from which `tools/regen_assets.py` copies it.

SHA-256: `{BPE_SHA256}`

## `src/mintclip/assets/known_checkpoints.json`

Holds only checkpoint names, tags, file names, SHA-256 hashes (full or prefix) and preprocessing
settings, read by `tools/regen_assets.py` from `open_clip/pretrained.py` and `open_clip/model_configs/`
in the open_clip_torch {OC_VERSION} wheel (https://github.com/mlfoundations/open_clip, MIT License,
{copyright_line}). No model weights are included.

## `src/mintclip/assets/imagenet.json`

ImageNet metadata, read by `tools/regen_assets.py`:
- the 1000 class names (CLIP's curated names, duplicates included), the 80 CLIP ImageNet prompt
  templates and the 7 "simple" templates, from `open_clip/zero_shot_metadata.py` in the
  open_clip_torch {OC_VERSION} wheel (MIT, as above; the names and templates come from OpenAI's CLIP
  prompt-engineering notebook, MIT, Copyright (c) 2021 OpenAI);
- the 1000 sorted WordNet IDs and the 200-class ImageNet-A and ImageNet-R subsets, from
  `timm/data/_info/` in the timm {TIMM_VERSION} wheel (https://github.com/huggingface/pytorch-image-models,
  Apache License 2.0, Copyright 2019 Ross Wightman; licence text below).

## OpenAI CLIP licence

```text
{OPENAI_MIT}```

## open_clip licence (copied from `open_clip_torch-{OC_VERSION}.dist-info/licenses/LICENSE`)

```text
{oc_license}```

## timm licence (copied from `timm-{TIMM_VERSION}.dist-info/licenses/LICENSE`)

```text
{timm_license}```
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="open_clip_torch wheel; downloaded with pip if omitted")
    ap.add_argument("--timm-wheel", type=Path, help="timm wheel; downloaded with pip if omitted")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel("open_clip_torch", OC_VERSION, Path(tmp) / "dl")
        timm_wheel = args.timm_wheel or fetch_wheel("timm", TIMM_VERSION, Path(tmp) / "dl")
        src, timm_src = Path(tmp) / "wheel", Path(tmp) / "timm"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(src)
        with zipfile.ZipFile(timm_wheel) as zf:
            zf.extractall(timm_src)
        bpe = (src / "open_clip" / BPE_NAME).read_bytes()
        if (got := hashlib.sha256(bpe).hexdigest()) != BPE_SHA256:
            sys.exit(f"error: {BPE_NAME} in {wheel} has SHA-256 {got}, expected {BPE_SHA256}")
        rows = checkpoint_table(src)
        imagenet = imagenet_metadata(src, timm_src)
        oc_license = (src / f"open_clip_torch-{OC_VERSION}.dist-info" / "licenses" / "LICENSE").read_text()
        timm_license = (timm_src / f"timm-{TIMM_VERSION}.dist-info" / "licenses" / "LICENSE").read_text()
    doc = {"generated_by": "tools/regen_assets.py",
           "source": f"open_clip_torch {OC_VERSION} wheel (open_clip/pretrained.py, open_clip/model_configs)",
           "license": "MIT (open_clip), see THIRD_PARTY_LICENSES.md", "checkpoints": rows}
    ASSETS.mkdir(parents=True, exist_ok=True)
    (ASSETS / BPE_NAME).write_bytes(bpe)
    (ASSETS / "known_checkpoints.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (ASSETS / "imagenet.json").write_text(json.dumps(imagenet, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (ROOT / "THIRD_PARTY_LICENSES.md").write_text(licenses_md(oc_license, timm_license), encoding="utf-8")
    counts = Counter(r["match"] for r in rows)
    print(f"wrote {BPE_NAME}, THIRD_PARTY_LICENSES.md, imagenet.json ({len(imagenet['classnames'])} classes) and "
          f"known_checkpoints.json with {len(rows)} entries ({counts['full']} full, {counts['prefix']} prefix)")


if __name__ == "__main__":
    main()
