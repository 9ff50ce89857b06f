"""`mintclip train-prompts`: a prompt learner trained with labels on K shots per class before test time
(CoOp, CoCoOp, MaPLe; docs/methods.md § CoOp, § CoCoOp, § MaPLe), reproducible and resumable.

Every random choice is a function of the seed and where training is: the shots are drawn by
`random.Random(seed)`, epoch e's order by a generator seeded from (seed, e), each image's crop and flip
by one seeded from (seed, e, index). A killed training resumed from its last saved step therefore sees
the same batches as one that was never stopped, and the same seed gives the same prompts.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..adapt.base import autocast_for, parse_overrides
from ..adapt.cocoop import CoCoOpTraining
from ..adapt.coop import CoOpPromptLearner, CoOpTraining, save_prompts
from ..adapt.maple import MaPLeTraining
from ..adapt.metatpt import MetaTPTTraining
from ..adapt.prompts import PROMPTS_FILE
from ..data import DatasetError, ImageDataset, open_dataset
from ..data.decode import DecodeError, load_image
from ..data.imagenet import open_imagenet_train
from ..data.views import image_to_tensor, keyed_generator, pil_resize, sample_crops
from ..model import CLIP, load_clip
from .config import RunError
from .records import atomic_write_bytes, atomic_write_json

STATE_FILE = "training_state.safetensors"
# the learners `train-prompts` trains, each with its official defaults
METHODS = {"coop": CoOpTraining, "cocoop": CoCoOpTraining, "maple": MaPLeTraining, "metatpt": MetaTPTTraining}


@dataclass
class PromptTrainingRun:
    data_root: str
    train_set: str  # "I" (ImageNet's train split), "folder", "folder:NAME" or "csv"
    weights: str
    out: str
    method: str = "coop"
    shots: int = 16
    seed: int = 1  # CoOp's scripts train seeds 1, 2 and 3
    device: str = "cpu"
    workers: int = 0
    hp: dict[str, Any] = field(default_factory=dict)  # overrides of the method's training defaults
    save_every: int = 100  # optimiser steps between saves of the training state
    resume: bool = False
    log: Callable[[str], None] = print

    def identity(self) -> dict[str, Any]:
        """What makes two trainings the same (resume must not change it)."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "workers", "save_every", "resume", "log")}


def open_training_set(root: str, set_id: str) -> ImageDataset:
    if set_id == "I":
        return open_imagenet_train(Path(root))
    if set_id in ("folder", "csv") or set_id.startswith("folder:"):
        return open_dataset(root, set_id)
    raise DatasetError(f"train set {set_id!r}: use I (ImageNet's train split), folder, folder:NAME or csv; the "
                       "other set ids name test splits")


def sample_shots(dataset: ImageDataset, shots: int, seed: int) -> list[tuple[Path, int]]:
    """K files per class, drawn without replacement by random.Random(seed) in label order (all of a class
    that has fewer, as Dassl's generate_fewshot_dataset without repeat)."""
    rng = random.Random(seed)
    by_label: dict[int, list[tuple[Path, int]]] = {}
    for sample in dataset.samples:
        by_label.setdefault(sample[1], []).append(sample)
    picked = []
    for label in sorted(by_label):
        items = by_label[label]
        picked += rng.sample(items, shots) if len(items) >= shots else items
    return picked


class AugmentedShots(Dataset):
    """shot i of epoch e -> (normalised random resized crop, flipped half the time, (3, S, S); label), the
    crop as torchvision's RandomResizedCrop (Dassl's random_resized_crop + random_flip)."""

    def __init__(self, files: list[tuple[Path, int]], model: CLIP, seed: int, epoch: int, min_scale: float) -> None:
        self.files, self.seed, self.epoch, self.min_scale = files, seed, epoch, min_scale
        self.preprocess = model.config.preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.files[index]
        image = image_to_tensor(load_image(path)).float().div(255)  # (3, H, W)
        generator = keyed_generator(self.seed, self.epoch, index)
        top, left, h, w = sample_crops(*image.shape[-2:], 1, generator, scale=(self.min_scale, 1.0))[0].tolist()
        size = self.preprocess.image_size
        crop = pil_resize(image[None, :, top:top + h, left:left + w], (size, size), self.preprocess.interpolation)[0]
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in (self.preprocess.mean, self.preprocess.std))
        return (crop - mean) / std, label


def epoch_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Epoch `epoch`'s batches of shot indices: a seeded permutation, the last short batch dropped when there
    is at least one full batch (Dassl's train loader)."""
    order = torch.randperm(n, generator=keyed_generator(seed, epoch, -1)).tolist()
    cut = n - n % batch if n >= batch else n
    return [order[i:i + batch] for i in range(0, cut, batch)]


def learning_rate(epoch: int, hp: CoOpTraining) -> float:
    """Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=epochs), stepped once per epoch: warmup_lr
    for the first warmup_epochs, then the cosine from lr, one step behind the epoch count."""
    if epoch < hp.warmup_epochs:
        return hp.warmup_lr
    return hp.lr * 0.5 * (1 + math.cos(math.pi * (epoch - hp.warmup_epochs) / hp.epochs))


def usable_files(files: list[tuple[Path, int]], log: Callable[[str], None]) -> tuple[list, list[str]]:
    """The sampled files that decode; the others are listed (and not replaced, so the draw stays the seed's)."""
    good, bad = [], []
    for path, label in files:
        try:
            load_image(path)
            good.append((path, label))
        except DecodeError as error:
            bad.append(f"{path}: {error}")
            log(f"  skipped {path}: {error}")
    return good, bad


def train_prompts(run: PromptTrainingRun) -> Path:
    """Train, saving the state every `save_every` steps and at each epoch's end; returns the prompt file."""
    if run.method not in METHODS:
        raise RunError(f"train-prompts: unknown method {run.method!r}; trainable: {', '.join(METHODS)}")
    hp = METHODS[run.method](**parse_overrides(METHODS[run.method], run.hp))
    out = Path(run.out)
    state_path = out / STATE_FILE
    if state_path.exists() and not run.resume:
        raise RunError(f"{out}: holds a training already; pass --resume to continue it, or another --out")
    dataset = open_training_set(run.data_root, run.train_set)
    model, _ = load_clip(run.weights, device=run.device)
    files, skipped = usable_files(sample_shots(dataset, run.shots, run.seed), run.log)
    torch.manual_seed(run.seed)  # the learners' random parts (CoCoOp's meta-net, MaPLe's, MetaTPT's) start from it
    learner = hp.learner(model, dataset.classnames)
    optimizer = torch.optim.SGD(learner.learned().values(), lr=hp.lr, momentum=hp.momentum,
                                weight_decay=hp.weight_decay)
    identity = {**run.identity(), "hp": asdict(hp)}
    epoch, step, history, partial = 0, 0, [], [0, 0.0, 0, 0.0]
    if state_path.exists():
        epoch, step, history, partial = load_state(state_path, identity, learner, optimizer)
        run.log(f"resuming at epoch {epoch + 1}, step {step}")
    run.log(f"train-prompts: {run.method} on {dataset.summary()}; {len(files)} shots ({run.shots} per class, seed "
            f"{run.seed}); {hp.epochs} epochs of batch {hp.batch_size} on {run.device}")
    scale = model.logit_scale.exp().float()
    for epoch in range(epoch, hp.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch, hp)
        batches = epoch_batches(len(files), hp.batch_size, run.seed, epoch)
        shots = AugmentedShots(files, model, run.seed, epoch, hp.min_crop_scale)
        loader = DataLoader(shots, batch_sampler=batches[step:], num_workers=run.workers)
        seen, loss_sum, right, seconds = partial  # an epoch resumed part-way counts its earlier steps too
        began = time.perf_counter() - seconds
        for images, labels in loader:
            images, labels = images.to(model.device), labels.to(model.device)
            with autocast_for(model.device):
                logits = learner.batch_logits(images, scale)  # (B, C)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(labels)
            loss_sum += float(loss.detach()) * len(labels)
            right += int((logits.argmax(-1) == labels).sum())
            if step % run.save_every == 0 and step < len(batches):
                save_state(state_path, identity, learner, optimizer, epoch, step, history,
                           [seen, loss_sum, right, time.perf_counter() - began])
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "accuracy": 100.0 * right / max(seen, 1),
                        "lr": learning_rate(epoch, hp), "images_per_s": seen / (time.perf_counter() - began)})
        run.log("  epoch {epoch}/{total}  loss {loss:.4f}  acc {accuracy:.1f}%  lr {lr:.2e}  {images_per_s:.0f} img/s"
                .format(total=hp.epochs, **history[-1]))
        step, partial = 0, [0, 0.0, 0, 0.0]
        save_state(state_path, identity, learner, optimizer, epoch + 1, 0, history, partial)
    config = {"method": run.method, "n_ctx": learner.n_ctx, "ctx_init": hp.ctx_init,
              "class_token_position": hp.class_token_position, "training": identity, "classnames": dataset.classnames,
              "files": [[relative(path, dataset.root), label] for path, label in files], "skipped": skipped,
              "history": history}
    save_prompts(out / PROMPTS_FILE, learner.learned(), config)
    atomic_write_json(out / "history.json", history)
    run.log(f"wrote {out / PROMPTS_FILE}")
    return out / PROMPTS_FILE


def relative(path: Path, root: Path) -> str:
    """A sampled file as recorded: relative to the set's folder where it lies inside it."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def save_state(path: Path, identity: dict, learner: CoOpPromptLearner, optimizer: torch.optim.SGD,
               epoch: int, step: int, history: list[dict], partial: list) -> None:
    """The learned tensors and SGD's momentum of each, where training is, and what it is: written atomically."""
    tensors = {}
    for name, param in learner.learned().items():
        tensors[name] = param.detach().cpu().contiguous()
        momentum = optimizer.state.get(param, {}).get("momentum_buffer")
        if momentum is not None:
            tensors[f"momentum/{name}"] = momentum.detach().cpu().contiguous()
    meta = {"identity": json.dumps(identity, sort_keys=True), "epoch": str(epoch), "step": str(step),
            "history": json.dumps(history), "partial": json.dumps(partial)}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))


def load_state(path: Path, identity: dict, learner: CoOpPromptLearner,
               optimizer: torch.optim.SGD) -> tuple[int, int, list[dict], list]:
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
        if json.loads(meta["identity"]) != json.loads(json.dumps(identity, sort_keys=True)):
            raise RunError(f"{path.parent}: was trained with other settings; use another --out to train these")
        for name, param in learner.learned().items():
            with torch.no_grad():
                param.copy_(handle.get_tensor(name).to(param))
            if f"momentum/{name}" in handle.keys():
                optimizer.state[param]["momentum_buffer"] = handle.get_tensor(f"momentum/{name}").to(param)
    return int(meta["epoch"]), int(meta["step"]), json.loads(meta["history"]), json.loads(meta["partial"])
