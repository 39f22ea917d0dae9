"""Accuracy on real data, offline: frozen EfficientNet-Lite0 (ImageNet weights) on Fashion-MNIST.

    python benchmarks/accuracy.py                  # the default rows (their time: benchmarks/README.md)
    python benchmarks/accuracy.py --rows pad_first_k,pad_frequency --seeds 3   # some rows, 3 seeds each, merged
    python benchmarks/accuracy.py --smoke --out DIR    # tiny settings, seconds (what the tests run)

Data: the full Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist).
Every method sees the same images: one fixed random train subset (``--train-size``, default 10,000 of the
54,000 training images left after the library's fixed 10% validation carve), one fixed validation subset
(``--val-size``, default 2,000, picks each prompt's best checkpoint and the linear probe's L2 strength) and the
full 10,000-image test set, which is only used for the reported number.

Rows (``method`` in the JSON): :data:`ROWS` below, each defined once with its settings, its description and the
rows it is compared with; ``--help`` lists their names and benchmarks/README.md their table. The no-prompt rows
measure a label mapping alone, the prompt rows train a prompt (the paper's SGD unless a row sets otherwise or runs a
recipe of ``visual_prompting.recipes``), and ``linear_probe`` is the paper's comparison point: logistic regression
on the frozen 1280-d penultimate features of the same train subset, CLIP's recipe (L-BFGS, L2 strength swept on
validation over C = 1e-6 .. 1e6 with a binary-search refinement to 8 steps per decade); implemented in torch.

Each row records test top-1, trainable parameters and wall time on this machine (plus top-5, best validation
accuracy and the validation curve, to tell whether more steps would help).

Budget (the defaults): 96 px input, 10,000 train images, 1000 steps of batch 64 per trained row (6.4 epochs),
validation every 200 steps, no-prompt and probe passes at the training batch on CPU (256 on CUDA); the measured
times are in benchmarks/README.md (written from accuracy.json by benchmarks/report.py).
Rows are written to the JSON as they finish, so an interrupted run keeps them. ``--rows`` runs only some rows and
merges them into an existing accuracy.json of the same settings (replacing those rows, keeping the others with
their own provenance), so the seeds of a slow benchmark can be spread over several sessions. ``--seeds`` trains
each prompt row once per seed and reports the mean and min-max; the summary states a difference between two
rows only when it is larger than their seed spread.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (apply_threads, bench_parser, markdown_table, provenance, provenance_of, pyplot,  # noqa: E402
                    runs_behind, save_figure, write_json, write_markdown)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from visual_prompting import BackboneCache, PromptedModel, TrainConfig  # noqa: E402
from visual_prompting.backbones import ClipBackbone  # noqa: E402
from visual_prompting.data import DEBIAN_FASHION_MNIST, DataSplits, load_splits, to_model_input  # noqa: E402
from visual_prompting.evaluation import evaluate, logits_over  # noqa: E402
from visual_prompting.capture import capture_top1  # noqa: E402
from visual_prompting.heads import create_head, prediction_counts  # noqa: E402
from visual_prompting.recipes import RECIPES, recipe_settings  # noqa: E402
from visual_prompting.training import Trainer  # noqa: E402
from visual_prompting.utils import autocast, percent, pick_device, seed_everything  # noqa: E402

@dataclass(frozen=True)
class Row:
    """One row of the benchmark, defined once: what it runs, what it is, and which rows it is compared with.

    A trained row's TrainConfig is its ``recipe``'s settings (:data:`visual_prompting.recipes.RECIPES`) with
    ``settings`` on top and the library's defaults (the paper's SGD, the straight-through clamp) for the rest; the
    benchmark's budget (steps, batch, seed...) is the same for every row. A no-prompt row's ``settings`` name its
    ``label_mapping``; the linear probe has none. ``compared_with``: (another row, what the difference says) pairs;
    the summary states this row's test top-1 minus the other's when both were measured. ``default``: run by
    ``python benchmarks/accuracy.py`` without ``--rows``. ``time_reference``: the row the fastest row's time to the
    target accuracy is measured against (one row)."""

    name: str
    kind: str  # one of KINDS
    description: str
    settings: dict = field(default_factory=dict)
    recipe: str | None = None
    compared_with: tuple[tuple[str, str], ...] = ()
    default: bool = False
    time_reference: bool = False

    def train_settings(self) -> dict:
        return {**(recipe_settings(self.recipe) if self.recipe else {}), **self.settings}


KINDS = ("no_prompt", "prompt", "linear_probe")
ADAM = {"optimizer": "adam", "lr": 0.01}
PAD_ITERATIVE = {"prompter": "pad", "label_mapping": "iterative"}
VS_PAD = "pad_iterative"
# in the table's order; `python benchmarks/accuracy.py` runs the rows marked default
ROWS = [
    Row("no_prompt_first_k", "no_prompt", "no prompt, hard-coded mapping (paper)", {"label_mapping": "first_k"},
        default=True),
    Row("no_prompt_frequency", "no_prompt", "no prompt, frequency mapping", {"label_mapping": "frequency"},
        compared_with=(("no_prompt_first_k", "mapping without a prompt"),), default=True),
    Row("pad_first_k", "prompt", "pad prompt, hard-coded mapping", {"prompter": "pad", "label_mapping": "first_k"},
        default=True),
    Row("pad_frequency", "prompt", "pad prompt, frequency mapping", {"prompter": "pad", "label_mapping": "frequency"},
        compared_with=(("pad_first_k", "frequency vs hard-coded mapping (pad)"),), default=True, time_reference=True),
    Row("pad_iterative", "prompt", "pad prompt, iterative mapping, clamped (a real image)", PAD_ITERATIVE,
        compared_with=(("pad_frequency", "iterative vs frequency mapping (pad)"),), default=True),
    Row("pad_iterative_unclamped", "prompt", "pad prompt, iterative mapping, unclamped (paper)",
        {**PAD_ITERATIVE, "clamp": "none"}, compared_with=((VS_PAD, "unclamped vs clamped (pad, iterative)"),)),
    Row("fixed_patch_iterative", "prompt", "fixed patch, iterative mapping",
        {**PAD_ITERATIVE, "prompter": "fixed_patch"}, compared_with=((VS_PAD, "fixed patch vs pad"),)),
    Row("random_patch_iterative", "prompt", "random patch, iterative mapping",
        {**PAD_ITERATIVE, "prompter": "random_patch"}, compared_with=((VS_PAD, "random patch vs pad"),)),
    Row("shrink_pad_iterative", "prompt", "shrink-and-pad, iterative mapping",
        {**PAD_ITERATIVE, "prompter": "shrink_pad"}, compared_with=((VS_PAD, "shrink-and-pad vs pad"),)),
    Row("linear_probe", "linear_probe", "linear probe on frozen features (paper's comparison)", default=True),
    # the options and recipes of later work
    Row("no_prompt_multi_frequency", "no_prompt", "no prompt, each class reads the mean of 10 source logits",
        {"label_mapping": "multi_frequency"},
        compared_with=(("no_prompt_frequency", "10-source vs 1-source mapping without a prompt"),), default=True),
    Row("recipe_fast", "prompt", "recipe fast: full-image prompt, Adam lr 0.01, 10-source mapping", recipe="fast",
        compared_with=(("pad_frequency", "recipe fast vs the paper's SGD pad prompt (frequency mapping)"),),
        default=True),
    Row("recipe_robust", "prompt", "recipe robust: fast + capture simulation (shift, resize, JPEG) after the prompt",
        recipe="robust", compared_with=(("recipe_fast", "capture simulation vs none (recipe fast)"),), default=True),
    Row("pad_adam_frequency", "prompt", "pad prompt, Adam lr 0.01",
        {"prompter": "pad", "label_mapping": "frequency", **ADAM},
        compared_with=(("pad_frequency", "Adam vs SGD (pad)"),)),
    Row("pad_l2sgd_frequency", "prompt", "pad prompt, EVP's L2-normalised step",
        {"prompter": "pad", "label_mapping": "frequency", "optimizer": "l2sgd", "lr": 1.0},
        compared_with=(("pad_frequency", "L2-normalised step vs SGD (pad)"),)),
    Row("pad_flip_crop_frequency", "prompt", "pad prompt, EVP's input diversity (crop + flip)",
        {"prompter": "pad", "label_mapping": "frequency", "augment": "flip_crop"},
        compared_with=(("pad_frequency", "input diversity vs none (pad)"),)),
    Row("full_adam_frequency", "prompt", "full-image prompt, Adam, 1-source mapping",
        {"prompter": "full", "label_mapping": "frequency", **ADAM},
        compared_with=(("pad_adam_frequency", "full-image vs pad prompt (Adam)"),)),
    Row("lowrank_adam_multi_frequency", "prompt", "low-rank prompt (rank 16, LoR-VP), Adam, 10-source mapping",
        {"prompter": "lowrank", "label_mapping": "multi_frequency", "prompt_size": 16, **ADAM}),
    Row("pad_fast", "prompt", "recipe fast with a pad prompt (a frame): Adam lr 0.01, 10-source mapping",
        {"prompter": "pad"}, recipe="fast",
        compared_with=(("recipe_fast", "pad vs full-image prompt (recipe fast)"),
                       ("pad_frequency", "recipe fast's settings vs the paper's SGD (pad)"))),
    Row("shrink_pad_fast", "prompt", "recipe fast with shrink-and-pad (a frame around the shrunk image)",
        {"prompter": "shrink_pad"}, recipe="fast",
        compared_with=(("pad_fast", "shrink-and-pad vs pad (recipe fast)"),)),
    Row("blm_fast", "prompt", "recipe fast with BLM (Bayesian-guided mapping, every source weighted, refitted "
        "every epoch) instead of the 10-source mapping", {"label_mapping": "blm"}, recipe="fast",
        compared_with=(("recipe_fast", "BLM vs 10-source mapping (recipe fast)"),)),
    Row("blm_plus_fast", "prompt", "recipe fast with BLM+ (top-k probabilities)", {"label_mapping": "blm_plus"},
        recipe="fast", compared_with=(("blm_fast", "BLM+ vs BLM (recipe fast)"),)),
    Row("recipe_live", "prompt", "recipe live: fast with Adam lr 0.03, the prompt learned in the DCT basis "
        "(full_dct), the contrast mapping and the plain clamp (the default recipe)",
        recipe="live", compared_with=(("recipe_fast", "recipe live vs recipe fast"),), default=True),
    Row("recipe_fast_pad", "prompt", "recipe fast_pad: a pad prompt 0.3 of the side wide, Adam lr 0.03, "
        "10-source mapping, the plain clamp", recipe="fast_pad",
        compared_with=(("pad_fast", "a frame 0.3 of the side at lr 0.03 vs 13 px at lr 0.01"),
                       ("recipe_live", "the frame (recipe fast_pad) vs recipe live")), default=True),
    Row("acavp_live", "prompt", "recipe live + learned affine and colour transforms before the prompt (ACAVP)",
        {"transforms": "affine+colour"}, recipe="live",
        compared_with=(("recipe_live", "affine + colour transforms vs none (recipe live)"),), default=True),
    Row("acavp_fast_pad", "prompt", "recipe fast_pad + learned affine and colour transforms (ACAVP)",
        {"transforms": "affine+colour"}, recipe="fast_pad",
        compared_with=(("recipe_fast_pad", "affine + colour transforms vs none (recipe fast_pad)"),), default=True),
    Row("fully_map_fast", "prompt",
        "recipe fast's prompt + a trained linear output layer (AutoVP's FullyMap): not input-only",
        {"label_mapping": "fully_map"}, recipe="fast"),
]


def row_names() -> list[str]:
    return [r.name for r in ROWS]


def find_row(name: str, rows: list[Row] | None = None) -> Row:
    rows = ROWS if rows is None else rows
    for r in rows:
        if r.name == name:
            return r
    raise KeyError(f"no benchmark row {name!r}; the rows: {', '.join(r.name for r in rows)}")


def comparisons() -> list[tuple[str, str, str]]:
    """(row, the row it is compared with, what the difference says) of every row's ``compared_with``, in row order."""
    return [(r.name, other, what) for r in ROWS for other, what in r.compared_with]


def check_rows(rows: list[Row]) -> None:
    """Each row once, of a known kind, with TrainConfig settings and a known recipe; each comparison names a row; one
    time reference among the trained rows."""
    names = [r.name for r in rows]
    fields_ = {f.name for f in dataclass_fields(TrainConfig)}
    problems = [f"row {n!r} is defined twice" for n in sorted({n for n in names if names.count(n) > 1})]
    for r in rows:
        problems += [f"row {r.name!r}: kind {r.kind!r} is not one of {KINDS}"] * (r.kind not in KINDS)
        problems += [f"row {r.name!r}: {k!r} is no TrainConfig setting" for k in r.settings if k not in fields_]
        problems += [f"row {r.name!r}: unknown recipe {r.recipe!r}"] * (r.recipe is not None and r.recipe not in RECIPES)
        problems += [f"row {r.name!r} is compared with {o!r}, which is no row" for o, _ in r.compared_with
                     if o not in names]
    refs = [r.name for r in rows if r.time_reference]
    if len(refs) != 1 or find_row(refs[0], rows).kind != "prompt":
        problems.append(f"one trained row must be the time reference, not {refs}")
    if problems:
        raise ValueError("benchmark rows: " + "; ".join(problems))


check_rows(ROWS)


# -- data ------------------------------------------------------------------------------------------------------


# the code this result measures: `benchmarks/report.py --stale` lists a result as stale once any of these
# paths changed after the commit it records
MEASURES = [
    "benchmarks/accuracy.py",
    "visual_prompting/training.py",
    "visual_prompting/train_config.py",  # the defaults a row's settings leave alone (the paper's SGD, the clamp)
    "visual_prompting/recipes.py",  # the settings of the rows that run a recipe
    "visual_prompting/prompters.py",
    "visual_prompting/spectral.py",
    "visual_prompting/heads.py",
    "visual_prompting/backbones.py",
    "visual_prompting/data.py",
    "visual_prompting/evaluation.py",
    "visual_prompting/model.py",
    "visual_prompting/augment.py",  # the input diversity of the rows that use it
    "visual_prompting/capture.py",  # recipe_robust's capture simulation, and every row's JPEG-75 / resize numbers
    "visual_prompting/execution.py",  # how the frozen backbone is run
    "visual_prompting/transforms.py",  # the acavp rows' affine and colour transforms
    "visual_prompting/optim.py",  # the optimisers and their schedules
    "visual_prompting/utils.py",  # seeding and autocast
    "visual_prompting/baselines.py",  # the no-prompt counts a mapping starts from, cached and reused
    "visual_prompting/distributed.py",  # the order of the training batches
]
# the functions that only format what was measured (accuracy.md's table, its plot, the gap sentence): `report.py
# --stale` leaves them out, so mending how a number is shown does not ask for every row to be measured again
RENDERS = ("table", "plot", "render", "gap_sentence")

def build_splits(dataset: str, image_size: int, train_size: int, val_size: int, test_size: int | None,
                 seed: int) -> DataSplits:
    """One fixed train subset, one fixed validation subset and the test set, resized once to ``image_size``."""
    full = load_splits(dataset, image_size=image_size, resize_cache_bytes=0)  # decoded, not resized yet

    def pick(part, n, s):
        if n is None or n >= len(part):
            return part
        idx = torch.randperm(len(part), generator=torch.Generator().manual_seed(s))[:n].sort().values
        return part.subset(idx)

    train = pick(full.train, train_size, seed)
    val = pick(full.val, val_size, seed + 1)
    test = pick(full.test, test_size, seed + 2)
    return DataSplits(train.resized(image_size), val.resized(image_size), test.resized(image_size),
                      full.class_names, full.name)


# -- rows ------------------------------------------------------------------------------------------------------

def run_no_prompt(spec: str, mapping: str, splits: DataSplits, cache: BackboneCache, device, batch: int) -> dict:
    bb = cache.get(spec, device)
    head = create_head(bb, splits.class_names, mapping=mapping)
    model = PromptedModel(bb, head, None, splits.class_names)
    if head.fits_from_data:  # greedy mapping(s) from what the model predicts on the train subset
        counts = torch.zeros(len(bb.source_classes), len(splits.class_names), dtype=torch.long)
        for logits, labels in logits_over(model, splits.train, use_prompt=False, batch_size=batch, source=True):
            counts += prediction_counts(logits, labels, len(splits.class_names))
        head.fit(counts)
    test = evaluate(model, splits.test, use_prompt=False, batch_size=batch)
    val = evaluate(model, splits.val, use_prompt=False, batch_size=batch)
    return {"test_top1": test.top1, "test_top5": test.top5, "val_top1": val.top1, "trainable_params": 0,
            "mapping": head.mapping.tolist()}


def run_prompt_seeds(spec: str, settings: dict, splits: DataSplits, cache: BackboneCache, args, out_dir: str) -> dict:
    """One prompt row (its TrainConfig ``settings``) trained once per seed: the mean of each number, its spread, and
    every seed's own record."""
    per_seed = []
    for seed in args.seeds:
        if not args.quiet and len(args.seeds) > 1:
            print(f"   seed {seed}", flush=True)
        per_seed.append({"seed": seed, **run_prompt(spec, settings, splits, cache, args,
                                                    str(Path(out_dir) / f"seed{seed}"), seed)})
    first = per_seed[0]
    return {**aggregate_seeds(per_seed), "trainable_params": first["trainable_params"],
            "prompt_size": first["prompt_size"], "steps": first["steps"], "settings": first["settings"],
            "input_only": first["input_only"]}


def aggregate_seeds(per_seed: list[dict]) -> dict:
    """Mean over seeds of test/val top-1 and train accuracy, with the std (sample, None for one seed) and min-max
    of test top-1; ``still_improving_at_end`` when it is so for most seeds."""
    import statistics

    def mean(key):
        vals = [r[key] for r in per_seed if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    tops = [r["test_top1"] for r in per_seed]
    s2t = [r.get("steps_to_target") for r in per_seed]
    return {"test_top1": mean("test_top1"), "test_top5": mean("test_top5"), "val_top1": mean("val_top1"),
            "test_top1_jpeg75": mean("test_top1_jpeg75"), "test_top1_resize075": mean("test_top1_resize075"),
            # the slowest seed's (None when some seed never reached the target)
            "steps_to_target": None if None in s2t else max(s2t), "target": per_seed[0].get("target"),
            "train_acc_last_10pct": mean("train_acc_last_10pct"),
            "seeds": [r["seed"] for r in per_seed],
            "test_top1_std": statistics.stdev(tops) if len(tops) > 1 else None,
            "test_top1_min": min(tops), "test_top1_max": max(tops),
            "still_improving_at_end": 2 * sum(bool(r["still_improving_at_end"]) for r in per_seed) > len(per_seed),
            "per_seed": per_seed}


def run_prompt(spec: str, settings: dict, splits: DataSplits, cache: BackboneCache, args, out_dir: str,
               seed: int) -> dict:
    """One training run of a prompt row: its ``settings``, under the benchmark's budget (the same for every row)."""
    budget = dict(model=spec, dataset=splits.name, steps=args.steps, batch_size=args.batch_size, device=args.device,
                  seed=seed, out_dir=out_dir, num_workers=0, eval_every=args.eval_every,
                  test_without_prompt=False)  # the no_prompt rows measure that once for all rows
    cfg = TrainConfig(**{**settings, **budget})

    t0, eval_seconds = time.perf_counter(), []

    def progress(ev):
        if ev.kind == "eval":  # the wall time from the run's start (set-up, training, evaluations) to this one
            eval_seconds.append([ev.step, round(time.perf_counter() - t0, 1)])
            if not args.quiet:
                print(f"    step {ev.step}/{ev.total_steps}  val top-1 {ev.val_top1:.3f}", flush=True)

    trainer = Trainer(cfg, callbacks=[progress], cache=cache, splits=splits)
    result = trainer.run()
    m = result.metrics
    evals = [(h["step"], h["val_top1"]) for h in result.history if h.get("kind") == "eval"]
    steps_acc = [h["train_acc"] for h in result.history if h.get("kind") == "step" and "train_acc" in h]
    tail = steps_acc[-max(1, len(steps_acc) // 10):]
    best_step = max(evals, key=lambda e: e[1])[0] if evals else None
    # what happens to the best prompt's images when they are shared (JPEG 75) or resized (0.75x down and up)
    best, _ = PromptedModel.from_prompt_file(result.best_path, trainer.device, cache=cache)
    cap = capture_top1(best, splits.test, ("jpeg75", "resize075"), batch_size=args.eval_batch)
    return {"test_top1": m["test_top1"], "test_top5": m["test_top5"], "val_top1": m.get("best_val_top1"),
            "test_top1_jpeg75": cap["jpeg75"], "test_top1_resize075": cap["resize075"],
            "steps_to_target": steps_to_target(evals, args.target), "target": args.target,
            "settings": {k: getattr(trainer.cfg, k) for k in ("prompter", "optimizer", "lr", "label_mapping",
                                                              "augment", "capture", "clamp", "transforms",
                                                              "prompt_fraction")},
            "trainable_params": trainer.trainable_numbers(),  # a trained head's numbers too
            # the prompt alone is trained (a fitted label mapping trains nothing); fully_map trains a layer too
            "input_only": not trainer.model.head.trainable_parameters(),
            "prompt_size": trainer.prompter.cfg.size, "steps": result.steps_done,
            "train_acc_last_10pct": sum(tail) / len(tail) if tail else None,
            "best_val_step": best_step, "still_improving_at_end": bool(evals) and best_step == evals[-1][0],
            "val_curve": [[s, round(v, 4)] for s, v in evals], "eval_seconds": eval_seconds}


def steps_to_target(evals: list, target: float) -> int | None:
    """The first evaluation step whose validation top-1 is at or above ``target`` (None: never reached)."""
    return next((s for s, v in evals if v >= target), None)


# -- linear probe ------------------------------------------------------------------------------------------------

@torch.no_grad()
def frozen_features(bb, data, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features of the frozen backbone (the input of its last linear layer; CLIP: the image
    embedding), computed through the library's own forward, no prompt."""
    grabbed: list[torch.Tensor] = []
    hook = None
    if not isinstance(bb, ClipBackbone):
        last = [m for m in bb.net.modules() if isinstance(m, nn.Linear)][-1]
        hook = last.register_forward_pre_hook(lambda mod, inp: grabbed.append(inp[0].detach().float().flatten(1)))
    feats, labels = [], []
    try:
        for images, y in data.batches(batch):
            x = to_model_input(images.to(device), bb.image_size)
            with autocast(device):
                out = bb(x)
            feats.append((grabbed.pop() if hook is not None else out.float()).cpu())
            labels.append(y)
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(feats), torch.cat(labels)


def fit_logreg(X, y, C: float, num_classes: int, max_iter: int, init=None):
    """Multinomial logistic regression, sklearn's objective C * sum(CE) + ||W||^2 / 2 (bias unpenalised),
    written as mean(CE) + ||W||^2 / (2 C n) and minimised with L-BFGS."""
    n, d = X.shape
    W = torch.zeros(d, num_classes) if init is None else init[0].clone()
    b = torch.zeros(num_classes) if init is None else init[1].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    lam = 1.0 / (C * n)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(X @ W + b, y) + 0.5 * lam * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def accuracy(X, y, W, b) -> float:
    return float(((X @ W + b).argmax(1) == y).float().mean())


def linear_probe(bb, splits: DataSplits, batch: int, device, refinements: int, max_iter: int,
                 log_c_grid: list[float]) -> dict:
    Xtr, ytr = frozen_features(bb, splits.train, batch, device)
    Xva, yva = frozen_features(bb, splits.val, batch, device)
    Xte, yte = frozen_features(bb, splits.test, batch, device)
    k = len(splits.class_names)
    fits: dict[float, tuple] = {}
    sweep = []

    def fit(logc, init=None):
        if logc not in fits:
            W, b = fit_logreg(Xtr, ytr, 10.0 ** logc, k, max_iter, init)
            fits[logc] = (W, b, accuracy(Xva, yva, W, b))
            sweep.append({"C": 10.0 ** logc, "val_top1": fits[logc][2]})
        return fits[logc]

    prev = None
    for logc in sorted(log_c_grid):  # strong to weak regularisation, each fit warm-started from the last
        prev = fit(logc, prev[:2] if prev else None)
    best = max(fits, key=lambda c: (fits[c][2], -c))
    grid = sorted(log_c_grid)
    step = (grid[1] - grid[0]) if len(grid) > 1 else 1.0
    for _ in range(refinements):  # CLIP: halve the interval around the peak until 8 steps per decade
        step /= 2
        for logc in (best - step, best + step):
            if grid[0] <= logc <= grid[-1]:
                fit(round(logc, 6), fits[best][:2])
        best = max(fits, key=lambda c: (fits[c][2], -c))
    W, b, val = fits[best]
    return {"test_top1": accuracy(Xte, yte, W, b),
            "test_top5": float(((Xte @ W + b).topk(min(5, k), 1).indices == yte[:, None]).any(1).float().mean()),
            "val_top1": val, "train_top1": accuracy(Xtr, ytr, W, b), "trainable_params": W.numel() + b.numel(),
            "feature_dim": Xtr.shape[1], "best_C": 10.0 ** best, "sweep": sorted(sweep, key=lambda s: s["C"])}


# -- report ------------------------------------------------------------------------------------------------------

def seed_spread(row: dict) -> float | None:
    """Points between the row's best and worst seed; 0 for a deterministic row (no prompt, linear probe); None
    when a trained row ran with one seed (its spread is unknown)."""
    if row.get("deterministic") or row["kind"] != "prompt":
        return 0.0
    if len(row.get("seeds") or []) < 2:
        return None
    return 100 * (row["test_top1_max"] - row["test_top1_min"])


def effect(a: dict, b: dict, what: str) -> dict:
    """The difference of two rows' (mean) test top-1, stated as a difference only when it is larger than the seed
    spread (min-max) of both rows; a trained row with one seed supports no conclusion."""
    d = 100 * (a["test_top1"] - b["test_top1"])
    sa, sb = seed_spread(a), seed_spread(b)
    n = min(len(r.get("seeds") or []) or 1 for r in (a, b) if r["kind"] == "prompt") if "prompt" in (
        a["kind"], b["kind"]) else None
    e = {"what": what, "a": a["method"], "b": b["method"], "diff_points": round(d, 2), "seeds": n}
    head = f"{what}: {a['method']} - {b['method']} = {d:+.1f} points"
    if sa is None or sb is None:
        e.update(spread_points=None, conclusive=False)
        e["text"] = f"{head} (one seed: the seed spread is unknown, no conclusion)"
    else:
        spread = max(sa, sb)
        e.update(spread_points=round(spread, 2), conclusive=abs(d) > spread)
        seeds = f"mean of {n} seeds, " if n else ""
        e["text"] = (f"{head} ({seeds}seed spread up to {spread:.1f}): "
                     + ("larger than the spread" if e["conclusive"] else "within the spread, no difference shown"))
    return e


def summarize(rows: list[dict]) -> dict:
    """What the measured rows say: the best input-only prompt against the linear probe (the goal), every comparison
    of the rows' definitions (:func:`comparisons`) whose two rows were measured, the time to the target accuracy
    against the time reference row, what capture costs, and notes."""
    every_prompt = [r for r in rows if r["kind"] == "prompt"]
    # the goal is for input-only prompts: a row that also trains an output layer is reported apart
    prompts = [r for r in every_prompt if r.get("input_only", True)]
    probe = next((r for r in rows if r["kind"] == "linear_probe"), None)
    out: dict = {"goal": "the best input-only prompt reaches the linear probe's test top-1"}
    if prompts:
        best = max(prompts, key=lambda r: r["test_top1"])
        out.update(best_prompt=best["method"], best_prompt_test_top1=best["test_top1"])
    if probe:
        out["linear_probe_test_top1"] = probe["test_top1"]
        if prompts:
            out["gap_points"] = round(100 * (probe["test_top1"] - out["best_prompt_test_top1"]), 2)
            out["goal_met"] = out["best_prompt_test_top1"] >= probe["test_top1"]
    by = {r["method"]: r for r in rows}
    out["effects"] = [effect(by[a], by[b], what) for a, b, what in comparisons() if a in by and b in by]
    obs = [e["text"] for e in out["effects"]]
    if probe:
        obs += [f"not input-only (reported apart): {r['method']} trains {r['trainable_params']:,} numbers, "
                f"{percent(r['test_top1'], 2)} test top-1 (linear probe {percent(probe['test_top1'], 2)}, "
                f"{probe['trainable_params']:,} numbers)" for r in every_prompt if not r.get("input_only", True)]
    out.update(time_to_target(by, prompts))
    if probe and probe.get("val_top1") is not None:
        out["time_to_probe"] = {r["method"]: to_probe(r, probe["val_top1"]) for r in prompts}
    robust = [r for r in prompts if r.get("test_top1_jpeg75") is not None]
    if robust:
        out["capture_drop_points"] = {r["method"]: {
            "jpeg75": round(100 * (r["test_top1"] - r["test_top1_jpeg75"]), 2),
            "resize075": round(100 * (r["test_top1"] - r["test_top1_resize075"]), 2)} for r in robust}
    rising = [r["method"] for r in prompts if r.get("still_improving_at_end")]
    if rising:
        obs.append("best validation accuracy at the last evaluation (more steps would likely help): " + ", ".join(rising))
    if probe and prompts:
        best = by[out["best_prompt"]]
        if best.get("train_acc_last_10pct") is not None and probe.get("train_top1") is not None:
            fits = best["train_acc_last_10pct"] >= probe["train_top1"]
            ahead = best["test_top1"] >= probe["test_top1"]
            obs.append(f"train accuracy: best prompt ~{percent(best['train_acc_last_10pct'])} (last 10% of steps) vs "
                       f"linear probe {percent(probe['train_top1'])}: " + (
                           "the prompt fits the train set at least as well as the probe and is at or above it on the "
                           "test set too" if fits and ahead else
                           "the prompt fits the train set at least as well as the probe, so what it lacks on the test "
                           "set is generalisation (regularisation, more data), not capacity" if fits else
                           "the prompt is at or above the probe on the test set while it fits the train set less "
                           "closely" if ahead else
                           "a prompt that also underfits the train set is limited by capacity/optimisation (steps, "
                           "prompt size, mapping), not by overfitting"))
    out["observations"] = obs
    return out


def time_to_target(by: dict[str, dict], prompts: list[dict]) -> dict:
    """The input-only rows first at the target validation accuracy (every row tied at the fewest steps), against the
    time reference row (:class:`Row`): its steps, whether it got there within its run, and the fraction of its
    steps the fastest needed. Nothing when the reference row or a row at the target is missing."""
    reference = next((r.name for r in ROWS if r.time_reference), None)
    fastest = [(row_steps_to_target(r), r["method"]) for r in prompts if row_steps_to_target(r) is not None]
    if reference not in by or not fastest:
        return {}
    ref = row_steps_to_target(by[reference])
    n = min(k for k, _ in fastest)
    # the reference not at the target within its run (some seed never got there): it needs more than its steps,
    # so the fraction is an upper bound
    reached = ref is not None
    out = {"fastest_to_target": " and ".join(sorted(name for k, name in fastest if k == n)),
           "fastest_steps_to_target": n, "time_reference": reference, "time_reference_steps_to_target": ref,
           "time_reference_reached_target": reached,
           "fastest_fraction_of_time_reference": round(n / (ref if reached else by[reference]["steps"]), 3)}
    first_evals = [c[0][0] for r in prompts for ps in (r.get("per_seed") or [r]) if (c := ps.get("val_curve"))]
    if first_evals and ref == n <= min(first_evals):  # the reference too at the first look: nothing separated
        out["target_at_first_evaluation"] = True
    return out


def to_probe(r: dict, probe_val: float) -> dict:
    """When a prompt row first reached the linear probe's validation top-1 (its C was chosen on the same validation
    images): the slowest seed's evaluation step and the wall seconds from its run's start to that evaluation (None
    when some seed never got there), and how many seeds got there."""
    runs = r.get("per_seed") or [r]
    hits = []
    for ps in runs:
        step = steps_to_target(ps.get("val_curve") or [], probe_val)
        secs = dict(map(tuple, ps.get("eval_seconds") or [])).get(step) if step is not None else None
        hits.append((step, secs))
    done = [h for h in hits if h[0] is not None]
    every = len(done) == len(hits)
    return {"probe_val_top1": probe_val, "seeds_reached": len(done), "seeds": len(hits),
            "steps": max(h[0] for h in done) if every else None,
            "seconds": (max(h[1] for h in done) if every and all(h[1] is not None for h in done) else None)}


def table(rows: list[dict]) -> str:
    def seeds(r):
        return "-" if r["kind"] != "prompt" else ",".join(map(str, r.get("seeds") or ["?"]))

    def spread(r):
        return (f"{100 * r['test_top1_min']:.1f}-{100 * r['test_top1_max']:.1f}" if len(r.get("seeds") or []) > 1
                else "-" if r["kind"] != "prompt" else "one seed")

    def number(r, key):  # a fraction as a number of percent (the column's header says "%"), rounded once, by the table
        return 100 * r[key] if r.get(key) is not None else "-"

    def s2t(r):
        if r["kind"] != "prompt":
            return "-"
        n = row_steps_to_target(r)
        return "not reached" if n is None else n

    probe = next((r for r in rows if r["kind"] == "linear_probe" and r.get("val_top1") is not None), None)

    def t2p(r):  # steps and seconds to the probe's validation top-1 (the slowest seed's)
        if r["kind"] != "prompt" or probe is None or not any(ps.get("eval_seconds") for ps in r.get("per_seed") or [r]):
            return "-"
        t = to_probe(r, probe["val_top1"])
        return (f"{t['steps']} / {t['seconds']:.0f} s" if t["steps"] is not None and t["seconds"] is not None
                else f"not reached ({t['seeds_reached']}/{t['seeds']} seeds)")

    return markdown_table(
        ["method", "test top-1 % (mean)", "seeds", "test top-1 % min-max", "steps to 79% val",
         "steps / s to the probe's val", "JPEG-75 %", "resize 0.75 %", "trainable params", "input only", "seconds",
         "val top-1 %", "what"],
        [[r["method"], number(r, "test_top1"), seeds(r), spread(r), s2t(r), t2p(r), number(r, "test_top1_jpeg75"),
          number(r, "test_top1_resize075"), r["trainable_params"],
          {True: "yes", False: "no"}.get(r.get("input_only", r["kind"] != "linear_probe")),
          round(r["seconds"], 1), number(r, "val_top1"), r["description"]] for r in rows])


def row_steps_to_target(r: dict, target: float = 0.79) -> int | None:
    """A trained row's steps_to_target; for rows recorded before the field existed, read from their validation
    curve (the same rule on the same evaluations)."""
    if "steps_to_target" in r:
        return r["steps_to_target"]
    return steps_to_target(r.get("val_curve") or [], target)


def plot(rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    names = [r["method"] for r in rows][::-1]
    vals = [100 * r["test_top1"] for r in rows][::-1]
    colors = ["#999999" if r["kind"] == "no_prompt" else "#d62728" if r["kind"] == "linear_probe" else "#1f77b4"
              for r in rows][::-1]
    ax.barh(names, vals, color=colors)
    for i, v in enumerate(vals):
        ax.text(v + 0.5, i, f"{v:.1f}", va="center", fontsize=8)
    lp = [r for r in rows if r["method"] == "linear_probe"]
    if lp:
        ax.axvline(100 * lp[0]["test_top1"], color="#d62728", ls="--", lw=1, label="linear probe")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 105)
    ax.set_xlabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    save_figure(plt, fig, path)


# -- main ------------------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = bench_parser(__doc__, "accuracy", "tiny settings (32 px, 200 train / 100 val / 200 test images, 3 steps): checks the script runs")
    ap.add_argument("--model", default="effnet-lite0", help="backbone without @size (default: %(default)s)")
    ap.add_argument("--image-size", type=int, default=None, help="input size in px (default 96; smoke 32)")
    ap.add_argument("--dataset", default="auto",
                    help="'auto' = Debian's full fashion_mnist (smoke: the bundled subset when it is absent)")
    ap.add_argument("--train-size", type=int, default=None, help="train subset size (default 10000; smoke 200)")
    ap.add_argument("--val-size", type=int, default=None, help="validation subset size (default 2000; smoke 100)")
    ap.add_argument("--test-size", type=int, default=None, help="test subset size (default: the full test set; smoke 200)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per prompt row (default 1000; smoke 3)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default 64; smoke 32)")
    ap.add_argument("--eval-batch-size", type=int, default=None,
                    help="batch of the no-prompt rows' and the probe's passes (default: CPU the training batch, "
                         "where 2 cores are fastest per image; CUDA 256)")
    ap.add_argument("--eval-every", type=int, default=None,
                    help="validate (and keep the best prompt) every N steps (default steps/5; smoke 1)")
    ap.add_argument("--rows", default="default", help="'default' (the rows below marked *), 'all', or a comma-separated "
                    "subset, run in the order given and merged into OUT/accuracy.json: "
                    + ", ".join(r.name + "*" * r.default for r in ROWS))
    ap.add_argument("--target", type=float, default=0.79,
                    help="validation top-1 whose first reaching is each trained row's steps_to_target (default 0.79)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fixed train/val/test subsets (and the training "
                    "seed when --seeds is not given)")
    ap.add_argument("--seeds", default=None,
                    help="training seeds of every prompt row: a list (0,1,2) or a count (3 = 0,1,2). Each prompt row "
                         "is trained once per seed and reports the mean and the spread (std, min-max); the summary "
                         "states a difference only when it is larger than the spread. No-prompt rows and the linear "
                         "probe are deterministic and run once. Default: --seed alone")
    ap.add_argument("--lp-max-iter", type=int, default=None, help="L-BFGS iterations per linear-probe fit (default 1000)")
    ap.add_argument("--runs-dir", default=None, help="keep each row's prompt files here (default: a temp folder)")
    ap.add_argument("--render", action="store_true",
                    help="run nothing: rewrite the summary, accuracy.md and accuracy.png from OUT/accuracy.json's rows")
    ap.add_argument("--merge-from", nargs="+", default=None, metavar="JSON",
                    help="run nothing: take the rows of these accuracy.json files (measured with the same settings, "
                         "e.g. by runs side by side with other --out folders) into OUT/accuracy.json, each row with its "
                         "own provenance, replacing rows of the same name")
    ap.add_argument("--add-seeds", action="store_true",
                    help="with --merge-from: a row that OUT/accuracy.json has already gains the file's seeds (the same "
                         "row run with other --seeds by another process, same commit and settings) instead of being "
                         "replaced: its mean and spread then cover every seed")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.render:
        return a
    smoke = a.smoke
    a.image_size = a.image_size or (32 if smoke else 96)
    a.train_size = a.train_size or (200 if smoke else 10000)
    a.val_size = a.val_size or (100 if smoke else 2000)
    a.test_size = a.test_size or (200 if smoke else None)
    a.steps = a.steps or (3 if smoke else 1000)
    a.batch_size = a.batch_size or (32 if smoke else 64)
    a.lp_max_iter = a.lp_max_iter or (50 if smoke else 1000)
    a.eval_every = a.eval_every or max(1, a.steps // 5)
    if a.dataset == "auto":
        if DEBIAN_FASHION_MNIST.is_dir():
            a.dataset = "fashion_mnist"
        elif smoke:
            a.dataset = "fashion_mnist_subset"
        else:
            ap.error(f"the full Fashion-MNIST is not at {DEBIAN_FASHION_MNIST}: install Debian's dataset-fashion-mnist "
                     "(apt-get install dataset-fashion-mnist), or pass --dataset NAME to benchmark something else")
    try:
        a.seeds = ([a.seed] if a.seeds is None else [int(v) for v in a.seeds.split(",") if v.strip()]
                   if "," in a.seeds else list(range(int(a.seeds))))
    except ValueError:
        ap.error(f"--seeds takes a list of seeds (0,1,2) or a count (3), not {a.seeds!r}")
    if not a.seeds or len(set(a.seeds)) != len(a.seeds):
        ap.error(f"--seeds needs at least one seed, each once (got {a.seeds!r})")
    a.merge = a.rows not in ("all", "default")
    a.rows = (row_names() if a.rows == "all" else [r.name for r in ROWS if r.default] if a.rows == "default"
              else list(dict.fromkeys(m.strip() for m in a.rows.split(",") if m.strip())))
    unknown = set(a.rows) - set(row_names())
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(row_names())}")
    return a


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    apply_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:  # the summary is derived from the rows: recomputed, with accuracy.md and .png
        doc = json.loads((out / "accuracy.json").read_text())
        doc["summary"] = summarize(doc["rows"])
        write_json(out / "accuracy.json", doc)
        print(render(doc, out))
        return doc
    if args.merge_from:
        return merge_files(out, [Path(p) for p in args.merge_from], args.add_seeds)
    device = pick_device(args.device)
    args.device = str(device)
    eval_batch = args.eval_batch_size or (args.batch_size if device.type == "cpu" else max(args.batch_size, 256))
    prov = provenance("accuracy.py", argv, device)  # before the run: its load average says whether it was shared
    seed_everything(args.seed)
    spec = f"{args.model}@{args.image_size}"
    t0 = time.perf_counter()
    splits = build_splits(args.dataset, args.image_size, args.train_size, args.val_size, args.test_size, args.seed)
    data_seconds = time.perf_counter() - t0
    settings = {"model": spec, "dataset": splits.name, "image_size": args.image_size, "train_size": len(splits.train),
                "val_size": len(splits.val), "test_size": len(splits.test), "steps": args.steps,
                "batch_size": args.batch_size, "eval_every": args.eval_every, "eval_batch_size": eval_batch,
                "seed": args.seed, "smoke": args.smoke,
                "recipe": "library defaults: SGD lr 40 (paper units), momentum 0.9, warm-up min(1000, steps/10), cosine; "
                          "best checkpoint by validation",
                "linear_probe": "L-BFGS logistic regression on frozen penultimate features, no augmentation; C swept "
                                "1e-6..1e6 on validation (CLIP's recipe), fitted on the train subset only",
                "data_seconds": round(data_seconds, 2)}
    settings["seeds"] = args.seeds  # the training seeds of this run's prompt rows (each row also records its own)
    doc = {"provenance": prov, "settings": settings,
           "status": "running", "rows": []}
    json_path = out / "accuracy.json"
    kept = merge_base(json_path, settings, args.rows) if args.merge else []
    print(f"{spec} on {splits.name}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
          f"images, {args.steps} steps of {args.batch_size} per prompt row, device {device}", flush=True)
    cache = BackboneCache()
    runs_parent = args.runs_dir or tempfile.mkdtemp(prefix="vp-accuracy-")
    args.eval_batch = eval_batch
    for method in args.rows:  # in the order given (the linear probe first, say, when a run may be cut short)
        row = {**run_row(find_row(method), spec, splits, cache, device, args, runs_parent), "provenance": prov}
        doc["rows"].append(row)
        doc["rows"] = ordered(kept + doc["rows"])
        write_json(json_path, doc)  # keep what is done if the run is stopped
        doc["rows"] = [r for r in doc["rows"] if r["method"] in args.rows]
        print(f"   {method}: test top-1 {percent(row['test_top1'], 2)}  params {row['trainable_params']:,}  "
              f"{row['seconds']:.1f} s", flush=True)
    if not args.runs_dir:
        shutil.rmtree(runs_parent, ignore_errors=True)
    doc["rows"] = ordered(kept + doc["rows"])
    doc["summary"] = summarize(doc["rows"])
    doc["status"] = "complete"
    if kept:  # rows of earlier runs merged in: this run's time is not the benchmark's
        doc["run_seconds"] = round(time.perf_counter() - t0, 1)
        doc["total_seconds"] = round(sum(r["seconds"] for r in doc["rows"]), 1)
        doc["total_seconds_is"] = "sum of the rows' seconds (rows from several runs)"
    else:
        doc["total_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(json_path, doc)
    print(render(doc, out))
    return doc


def run_row(row: Row, spec: str, splits: DataSplits, cache: BackboneCache, device, args, runs_parent: str) -> dict:
    """One row measured: its record in accuracy.json (without the run's provenance)."""
    if not args.quiet:
        print(f"-- {row.name}: {row.description}", flush=True)
    t = time.perf_counter()
    settings = row.train_settings()
    if row.kind == "no_prompt":
        res = run_no_prompt(spec, settings["label_mapping"], splits, cache, device, args.eval_batch)
    elif row.kind == "prompt":
        res = run_prompt_seeds(spec, settings, splits, cache, args, str(Path(runs_parent) / row.name))
    else:
        log_grid = [-2.0, 0.0, 2.0] if args.smoke else [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
        res = linear_probe(cache.get(spec, device), splits, args.eval_batch, device,
                           refinements=0 if args.smoke else 4, max_iter=args.lp_max_iter, log_c_grid=log_grid)
    ran = res.get("settings") or settings  # a trained row: the TrainConfig it ran with, defaults included
    return {"method": row.name, "test_top1": res.pop("test_top1"), "trainable_params": res.pop("trainable_params"),
            "seconds": round(time.perf_counter() - t, 2), "kind": row.kind, "description": row.description,
            **{k: ran.get(k) for k in ("prompter", "label_mapping", "clamp")},
            **({} if row.kind == "prompt" else {"seeds": [], "deterministic": True,
                                                "input_only": row.kind == "no_prompt"}), **res}


SAME_RUN_SETTINGS = ("model", "dataset", "image_size", "train_size", "val_size", "test_size", "steps", "batch_size",
                     "eval_every", "seed", "smoke")


def ordered(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: row_names().index(r["method"]))


def merge_base(json_path: Path, settings: dict, methods: list[str]) -> list[dict]:
    """The rows of an earlier accuracy.json that ``--rows`` keeps (the rows it runs replace theirs), when that
    file measured the same thing (same SAME_RUN_SETTINGS); a row without its own provenance gets its file's."""
    if not json_path.is_file():
        return []
    old = json.loads(json_path.read_text())
    differ = {k: (old.get("settings", {}).get(k), settings[k]) for k in SAME_RUN_SETTINGS
              if old.get("settings", {}).get(k) != settings[k]}
    if differ:
        raise SystemExit(f"{json_path} was measured with other settings ({differ}): its rows cannot be merged with "
                         "these; use another --out, or rerun every row")
    kept = [r for r in old.get("rows", []) if r["method"] not in methods]
    for r in kept:
        r.setdefault("provenance", provenance_of(old))
        if r["kind"] == "prompt":
            r.setdefault("seeds", [old["settings"]["seed"]])
    return kept


def union_seeds(a: dict, b: dict, src: Path) -> dict:
    """Row ``a`` with the seeds of row ``b`` (the same prompt row run with other seeds, e.g. by two processes side by
    side): one row whose mean and spread cover every seed. Only rows of the same code (commit, clean tree) and the
    same training settings are joined; each seed keeps the provenance of the run that measured it."""
    def commit(r):
        p = r.get("provenance") or {}
        return p.get("git_commit"), bool(p.get("git_dirty"))

    why = ("not a prompt row run with --seeds" if not (a.get("per_seed") and b.get("per_seed")) else
           "measured at other commits (or on a dirty tree)" if commit(a) != commit(b) or commit(a)[1] else
           "other training settings" if a.get("settings") != b.get("settings") else
           "the same seed in both" if set(a["seeds"]) & set(b["seeds"]) else None)
    if why:
        raise SystemExit(f"{src}: row {b['method']} cannot add its seeds {b.get('seeds')} to those merged already "
                         f"({a.get('seeds')}): {why}")
    per_seed = sorted([{"provenance": a["provenance"], **s} for s in a["per_seed"]]
                      + [{"provenance": b["provenance"], **s} for s in b["per_seed"]], key=lambda s: s["seed"])
    # a's row fields stay (method, kind, settings, ...); every number that depends on the seeds is aggregated again
    return {**a, **aggregate_seeds(per_seed), "seconds": round(a["seconds"] + b["seconds"], 2)}


def merge_files(out: Path, sources: list[Path], add_seeds: bool = False) -> dict:
    """OUT/accuracy.json with the rows of ``sources`` merged in (same SAME_RUN_SETTINGS, checked; a row keeps
    its own provenance); the summary, accuracy.md and accuracy.png are rewritten from the merged rows. With
    ``add_seeds`` a row that is there already gains the source's seeds instead of being replaced."""
    json_path = out / "accuracy.json"
    doc = json.loads(json_path.read_text())
    for src in sources:
        other = json.loads(src.read_text())
        new = [r for r in other.get("rows", []) if r.get("provenance")]
        if len(new) != len(other.get("rows", [])):
            raise SystemExit(f"{src}: every row to merge needs its own provenance")
        kept = merge_base(json_path, other["settings"], [r["method"] for r in new])
        if add_seeds:  # the seeds of a row measured in several runs become one row (same code, other seeds)
            have = {r["method"]: r for r in doc["rows"]}
            new = [union_seeds(have[r["method"]], r, src) if r["method"] in have else r for r in new]
        doc["rows"] = ordered(kept + new)
        write_json(json_path, {**doc, "summary": summarize(doc["rows"])})
    doc["summary"] = summarize(doc["rows"])
    doc["total_seconds"] = round(sum(r["seconds"] for r in doc["rows"]), 1)
    doc["total_seconds_is"] = "sum of the rows' seconds (rows from several runs)"
    doc.pop("run_seconds", None)
    write_json(json_path, doc)
    print(render(doc, out))
    return doc


def gap_sentence(s: dict) -> str:
    """The summary's best prompt against the linear probe, in one sentence (accuracy.md and the READMEs)."""
    return (f"Best prompt: {s['best_prompt']} {percent(s['best_prompt_test_top1'], 2)}; linear probe "
            f"{percent(s['linear_probe_test_top1'], 2)}; gap {s['gap_points']:+.2f} points "
            f"(goal {'met' if s['goal_met'] else 'not met'}).")


def render(doc: dict, out: Path) -> str:
    """accuracy.md and accuracy.png from an accuracy.json document."""
    st = doc["settings"]
    title = (f"{st['model']}, {st['dataset']}: {st['train_size']} train, {st['test_size']} test, "
             f"{st['steps']} steps x {st['batch_size']}")
    plot(doc["rows"], out / "accuracy.png", title)
    s = doc.get("summary") or summarize(doc["rows"])
    lines = [table(doc["rows"])]
    if "gap_points" in s:
        total = f" Total {doc['total_seconds'] / 60:.1f} min." if doc.get("total_seconds") else ""
        lines.append("\n" + gap_sentence(s) + total)
    lines += [f"- {o}" for o in s["observations"]]
    return write_markdown(out / "accuracy.md", f"Accuracy ({st['dataset']}, frozen {st['model']})",
                          provenance_of(doc), "\n".join(lines), runs=runs_behind(doc))


if __name__ == "__main__":
    main()
