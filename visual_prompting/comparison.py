"""Several prompts on the same images: each one's accuracy with and without its prompt, and whether the difference
from the first is more than the test set's noise.

Two prompts measured on one test set are measured on the same images, so their difference is judged image by image
(paired): ``only_reference`` images the first prompt gets right and the other wrong, ``only_other`` the reverse.
McNemar's exact test asks whether those two counts differ by more than chance (a two-sided binomial test on the
images where they disagree); the 95% interval of the difference is the normal one of the per-image differences.
A difference of a few tenths of a point on 10,000 images is often inside it.

    python -m visual_prompting compare A.safetensors B.safetensors [C ...] [--dataset D] [--split test]
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .backbones import BackboneCache
from .data import DataSplits, ImageSet, load_splits
from .errors import VPError
from .evaluation import logits_over
from .model import PromptedModel
from .prompt_file import PromptFile


@dataclass
class PromptScore:
    """One prompt's top-1 on the compared images, with and without its prompt."""
    source: str
    backbone: str
    prompter: str
    top1: float
    top1_no_prompt: float


@dataclass
class PairedDifference:
    """``other`` minus ``reference`` in top-1 points on the same images, image by image."""
    reference: str
    other: str
    difference: float  # points
    ci95: tuple[float, float]  # points
    only_reference: int  # images the reference gets right and the other wrong
    only_other: int
    p_value: float  # McNemar's exact test (two-sided)


@dataclass
class Comparison:
    dataset: str
    split: str
    n: int
    scores: list[PromptScore]
    differences: list[PairedDifference]  # each prompt after the first against the first

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: how likely a split at least this uneven of the ``only_a + only_b`` images
    where two classifiers disagree is, if each disagreement were a fair coin."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    log_half = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half)
               for i in range(k + 1))
    return min(1.0, 2.0 * tail)


def paired_difference(reference: str, other: str, ref_ok: torch.Tensor, other_ok: torch.Tensor) -> PairedDifference:
    """``other`` against ``reference`` from each one's per-image correctness (bool tensors over the same images)."""
    if ref_ok.shape != other_ok.shape:
        raise VPError("The two prompts were not measured on the same images.")
    d = other_ok.double() - ref_ok.double()
    n = d.numel()
    mean = float(d.mean()) if n else 0.0
    half = 1.96 * math.sqrt(float(d.var()) / n) if n > 1 else float("nan")
    only_ref, only_other = int((ref_ok & ~other_ok).sum()), int((other_ok & ~ref_ok).sum())
    return PairedDifference(reference, other, 100 * mean, (100 * (mean - half), 100 * (mean + half)), only_ref,
                            only_other, mcnemar_p(only_ref, only_other))


def correct_per_image(model: PromptedModel, data: ImageSet, use_prompt: bool = True,
                      batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(right, labels): whether the model's top-1 is right on each image of ``data``, in the split's order."""
    right, labels = [], []
    for logits, y in logits_over(model, data, use_prompt, batch_size):
        right.append((logits.argmax(1) == y).cpu())
        labels.append(y.cpu())
    if not right:
        raise VPError("The split has no images.")
    return torch.cat(right), torch.cat(labels)


def prompt_splits(model: PromptedModel, pf: PromptFile, dataset: str | None = None, data_root: str | None = None,
                  download: bool = False) -> tuple[str, DataSplits]:
    """The splits a prompt is measured on: ``dataset`` (default: the one it was trained on) at the prompt's image
    size, its validation carve as in training; refused when the classes are not the prompt's."""
    name = dataset or pf.meta.get("dataset") or ""
    tc = pf.meta.get("train_config", {})
    splits = load_splits(name, image_size=model.image_size, root=data_root or tc.get("data_root"),
                         download=download, val_fraction=tc.get("val_fraction", 0.1))
    if splits.class_names != model.class_names:
        raise VPError(f"{name} has classes {splits.class_names[:5]}... but the prompt was trained for "
                      f"{model.class_names[:5]}...")
    return name, splits


def compare_models(models: list[tuple[str, PromptedModel, str]], data_for: Callable[[PromptedModel], ImageSet],
                   dataset: str, split: str, batch_size: int = 128) -> Comparison:
    """Every ``(name, model, prompter kind)`` on ``data_for(model)`` (the same images for each: one split of one
    dataset, at each model's input size; asked once per input size, for the first model of that size), with and
    without its prompt; each after the first against the first, image by image."""
    if len(models) < 2:
        raise VPError("Give at least two prompts to compare.")
    scores, right, labels = [], [], None
    data_at: dict[int, ImageSet] = {}
    for name, model, kind in models:
        if model.image_size not in data_at:
            data_at[model.image_size] = data_for(model)
        data = data_at[model.image_size]
        if data.class_names != model.class_names:
            raise VPError(f"{name} was trained for the classes {model.class_names[:5]}..., not {dataset}'s "
                          f"{data.class_names[:5]}...")
        ok, y = correct_per_image(model, data, True, batch_size)
        if labels is not None and not torch.equal(y, labels):
            raise VPError(f"{name} was measured on other images than {models[0][0]} (another order or size of the "
                          f"{split} split).")
        labels = y
        ok_without, _ = correct_per_image(model, data, False, batch_size)
        scores.append(PromptScore(name, model.backbone.spec, kind, float(ok.double().mean()),
                                  float(ok_without.double().mean())))
        right.append(ok)
    diffs = [paired_difference(models[0][0], s.source, right[0], r) for s, r in zip(scores[1:], right[1:])]
    return Comparison(dataset, split, len(labels), scores, diffs)


def compare_prompts(sources: list[str], dataset: str | None = None, split: str = "test", device: str = "cpu",
                    data_root: str | None = None, download: bool = False, batch_size: int = 128,
                    cache: BackboneCache | None = None) -> Comparison:
    """Every prompt file in ``sources`` (local files, already resolved) on one split of one dataset (default: the
    first prompt's) with :func:`compare_models`; each prompt's splits as ``eval`` loads them (:func:`prompt_splits`)."""
    if len(sources) < 2:
        raise VPError("Give at least two prompts to compare.")
    cache = cache or BackboneCache()
    loaded = [PromptedModel.from_prompt_file(s, device, cache=cache) for s in sources]
    dataset = dataset or loaded[0][1].meta.get("dataset") or ""
    file_of = {id(model): pf for model, pf in loaded}  # prompt_splits reads the file's dataset and validation carve
    data_for = lambda m: prompt_splits(m, file_of[id(m)], dataset, data_root, download)[1].get(split)  # noqa: E731
    models = [(s, model, pf.meta["prompter"]["kind"]) for s, (model, pf) in zip(sources, loaded)]
    return compare_models(models, data_for, dataset, split, batch_size)
