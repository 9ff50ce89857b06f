"""`mintclip demo`: every method on every shifted domain of shiftbench, through the same engine as
`mintclip run` (records, resume, summary), then `mintclip report` over the runs, and the checks of
whether prompts can matter on the model at all (check.py).

Nothing is downloaded: the images are rendered on the spot (deterministic, a few seconds) and the tiny
CLIP ships with the package. The prompt learners (CoOp, CoCoOp, MaPLe, and MetaTPT's augmentation
network) are trained first, with their default settings, on K shots per class of the source domain,
shiftbench's natural few-shot training set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..adapt.prompts import PROMPTS_FILE
from ..engine import RunConfig, RunError, run
from ..engine.records import read_records
from ..engine.report import detection_metrics, metrics, report_runs
from ..engine.sweep import run_sweep
from ..engine.train_prompts import PromptTrainingRun, train_prompts
from ..model import load_clip
from .check import format_checks, run_checks, verdict_lines
from .render import CLASSES, EMPTY, SHIFTED, write_domains, write_empty_scenes
from .train import DATA_SIZE, shipped_checkpoint

# The papers' row order; the online methods last. "M+coop": method M started from the trained CoOp
# context (TPT + CoOp, and MINT as its official code runs it).
DEMO_METHODS = ("zeroshot", "ensemble", "coop", "cocoop", "maple", "tpt", "tpt+coop", "metatpt", "ctpt", "sar", "zero",
                "mta", "mint", "mint+coop", "tda", "dynaprompt")
# trained before test time on the source domain's shots, and the hyper-parameter that takes the file
TRAINED = {"coop": "prompts", "cocoop": "prompts", "maple": "prompts", "metatpt": "meta"}
# the stream studies (docs/protocols.md): the online methods under these scenarios over the four domains
# in turn; "sequential" is the order of the rows above, whose runs it reuses
STUDY_METHODS = ("mint", "dynaprompt", "tda")
STUDY_SCENARIOS = ("sequential", "cyclic:3", "dirichlet:0.1", f"open-set:folder:{EMPTY}:0.2")
# MINT's own next steps (the paper): the bank size and the confidence share kappa, one at a time
MINT_ABLATION = {"bank_size": ["128", "256", "512", "1024"], "selection": ["0.05", "0.1", "0.2", "0.5"]}


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    per_class: int = 5  # images rendered per class and domain (20 classes: 100 per domain)
    samples: int | None = None  # at most this many per domain (a quicker look)
    methods: list[str] = field(default_factory=lambda: list(DEMO_METHODS))
    weights: str | None = None  # default: the shipped shiftbench checkpoint
    data: str | None = None  # default: <out>/data
    seed: int = 1  # the data's seed; the model's training used 0
    shots: int = 16  # source images per class the prompt learners train on (the seed table's 16 shots)
    device: str = "cpu"
    progress: bool = True
    studies: bool = True  # the online methods under the stream scenarios, and MINT's sensitivity sweep


def ensure_data(folder: Path, per_class: int, seed: int, runs: list[Path]) -> None:
    """Render the shifted domains unless `folder` already holds exactly these. Other images under runs
    made on the old ones would mix two datasets in one table, so that is an error instead."""
    stamp = folder / "shiftbench.json"
    wanted = {"domains": list(SHIFTED), "classes": list(CLASSES), "per_class": per_class, "seed": seed,
              "size": DATA_SIZE}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    if stamp.is_file() and any((run / "config.json").is_file() for run in runs):
        raise RunError(f"{folder}: holds demo images made with other settings, and runs on them exist; choose "
                       "another --out")
    write_domains(folder, SHIFTED, per_class=per_class, seed=seed, size=DATA_SIZE)
    stamp.write_text(json.dumps(wanted, indent=1))


def runs_folder(out: Path, samples: int | None) -> Path:
    """Where the runs of these settings go: `out` for every image, `out/samples-N` for a quicker look, so
    that demos of different sizes each resume their own runs instead of clashing."""
    return out if samples is None else out / f"samples-{samples}"


def demo(config: DemoConfig, log: Callable[[str], None] = print) -> str:
    """Run the demo; returns the report's Markdown. Re-running with the same settings resumes."""
    out = Path(config.out)
    data = Path(config.data) if config.data else out / "data"
    runs = runs_folder(out, config.samples)
    weights = config.weights or str(shipped_checkpoint())
    began = time.perf_counter()
    ensure_data(data, config.per_class, config.seed, [runs / method for method in config.methods])
    rendered = config.per_class * len(CLASSES)
    per_domain = min(rendered, config.samples or rendered)
    log(f"mintclip demo: shiftbench, synthetic images of {len(CLASSES)} classes; domains {', '.join(SHIFTED)} "
        f"({per_domain} images each) in {data}")
    log(f"  model {weights} (a tiny CLIP pretrained on a web-like mix of photos and styled images)")
    log(f"  methods {', '.join(config.methods)}; writing to {runs} (runs already there with these settings resume)")
    for row in config.methods:
        started = time.perf_counter()
        method, _, start = row.partition("+")
        hp = {TRAINED[method]: str(demo_prompts(config, method, weights, log))} if method in TRAINED else {}
        if start:
            hp["coop"] = str(demo_prompts(config, start, weights, log))
        run(RunConfig(data_root=str(data), test_sets=[f"folder:{d}" for d in SHIFTED], method=method,
                      weights=weights, out=str(runs / row), device=config.device, workers=0, hp=hp,
                      limit=config.samples, resume=True, progress=config.progress))
        log(f"  {row}: {time.perf_counter() - started:.0f} s")
    markdown = report_runs([runs / row for row in config.methods], runs / "report", labels=config.methods)
    checks = prompt_checks(weights, config.per_class, config.device, log)
    studies = stream_studies(config, data, runs, weights, log) if config.studies else ""
    (runs / "report" / "summary.md").write_text(f"{markdown}\n{checks}{studies}")
    log(f"done in {time.perf_counter() - began:.0f} s")
    return f"{markdown}\n{checks}{studies}"


def stream_studies(config: DemoConfig, data: Path, runs: Path, weights: str, log: Callable[[str], None]) -> str:
    """The demo's online methods under STUDY_SCENARIOS (one table: top-1 averaged over the domains, and
    the open-set stream's AUROC / FPR@95 against empty scenes), then MINT's one-at-a-time sweep of its
    bank size and kappa (sensitivity plots in runs/sweep-mint/report); returns the Markdown."""
    methods = [m for m in STUDY_METHODS if m in config.methods]
    if not methods:
        return ""
    write_empty_scenes(data, per_kind=max(2, config.per_class * len(CLASSES) // 10), seed=config.seed)
    base = dict(data_root=str(data), test_sets=[f"folder:{d}" for d in SHIFTED], weights=weights,
                device=config.device, workers=0, limit=config.samples, resume=True, progress=config.progress)
    header = ["method", *STUDY_SCENARIOS[:-1], "open-set top-1", "AUROC", "FPR@95"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method in methods:
        cells = []
        for scenario in STUDY_SCENARIOS:
            started = time.perf_counter()
            folder = runs / method if scenario == "sequential" else runs / f"{method}-{scenario.split(':')[0]}"
            if scenario != "sequential":
                run(RunConfig(**base, method=method, out=str(folder), scenario=scenario))
                log(f"  {method} --scenario {scenario}: {time.perf_counter() - started:.0f} s")
            sets = [read_records(folder / "seed0" / d / "records.jsonl") for d in SHIFTED]
            cells.append(f"{sum(metrics(r).top1 for r in sets) / len(sets):.2f}")
        found = [f for f in map(detection_metrics, sets) if f is not None]  # the open-set stream's domains
        cells += [f"{sum(f.auroc for f in found) / len(found):.2f}" if found else "-",
                  f"{sum(f.fpr95 for f in found) / len(found):.2f}" if found else "-"]  # a --samples cut may hold no OOD
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    markdown = ("\n## Online methods under stream scenarios (top-1 %, average of the four domains; open-set: "
                f"{STUDY_SCENARIOS[-1]}, AUROC and FPR@95 % of in-distribution versus empty scenes by maximum "
                "softmax probability)\n\n" + "\n".join(lines) + "\n")
    if "mint" in methods:
        started = time.perf_counter()
        sweep = run_sweep(RunConfig(**base, method="mint", out=""), runs / "sweep-mint", {}, MINT_ABLATION)
        log(f"  mint sweep of {', '.join(MINT_ABLATION)}: {time.perf_counter() - started:.0f} s")
        tables = [part.replace("](sensitivity_", "](../sweep-mint/report/sensitivity_")  # links from runs/report
                  for part in sweep.split("\n## ")[1:] if not part.startswith(("Diagnostics", "Files"))]
        markdown += (f"\n## MINT's bank size and kappa, one at a time (plots and diagnostics in "
                     f"{runs / 'sweep-mint' / 'report'})\n" + "".join(f"\n### {part.rstrip()}\n" for part in tables))
    return markdown


def demo_prompts(config: DemoConfig, method: str, weights: str, log: Callable[[str], None]) -> Path:
    """`train-prompts --method METHOD --train_set folder:source` with the official settings, on `shots`
    source images per class rendered with the data's seed; a finished training is reused, a killed one
    resumed."""
    shots = Path(config.out) / f"train-{config.shots}"
    stamp = shots / "shiftbench.json"
    wanted = {"domain": "source", "per_class": config.shots, "seed": config.seed, "size": DATA_SIZE}
    if not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        write_domains(shots, ["source"], per_class=config.shots, seed=config.seed, size=DATA_SIZE)
        stamp.write_text(json.dumps(wanted, indent=1))
    if (shots / method / PROMPTS_FILE).is_file():
        return shots / method / PROMPTS_FILE
    started = time.perf_counter()
    path = train_prompts(PromptTrainingRun(data_root=str(shots), train_set="folder:source", weights=weights,
                                           out=str(shots / method), method=method, shots=config.shots,
                                           device=config.device, resume=True, log=lambda _: None))
    log(f"  {method}: prompts trained on {config.shots} source images per class in "
        f"{time.perf_counter() - started:.0f} s ({path})")
    return path


def prompt_checks(weights: str, per_class: int, device: str, log: Callable[[str], None]) -> str:
    """`mintclip shiftbench check` on view 0 (prompt sensitivity, the supervised bound): whether this model
    lets prompts matter at all. A failure is said in the demo's output, since then a prompt-tuning
    method's gain of zero says nothing about the method."""
    model, _ = load_clip(weights, device=device)
    checks = run_checks(model, per_class, views=False)
    lines = verdict_lines(checks)
    for line in lines:
        log(f"  check {line[2:]}")
    if any(line.startswith("- FAIL") for line in lines):
        log("  a check failed: on this model prompts barely matter, so prompt-tuning results here do not judge the "
            "methods (mintclip shiftbench check gives all the figures)")
    return "## Can prompts matter on this model? (mintclip shiftbench check, view 0)\n\n" + format_checks(checks) + "\n"
