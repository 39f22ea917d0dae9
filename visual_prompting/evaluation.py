"""Accuracy of a (prompted) model on a split: top-1, top-5, per class, with or without the prompt."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .data import ImageSet, to_model_input
from .distributed import all_reduce_sum
from .model import PromptedModel
from .utils import autocast, eval_mode


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    n: int
    per_class: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def logits_over(model: PromptedModel, data: ImageSet, use_prompt: bool = True, batch_size: int = 256,
                amp: bool = True, source: bool = False):
    """Yield ``(logits, labels)`` batch by batch (``source=True``: the backbone's own outputs, no head)."""
    with eval_mode(model):
        for images, labels in data.batches(batch_size):
            # uint8 goes to the device (4x less to copy than float), then becomes the model input there
            x = to_model_input(images.to(model.device, non_blocking=True), model.image_size)
            with autocast(model.device, amp):
                x = model.prompt(x) if use_prompt else x
                out = model.backbone(x) if source else model.logits(model.backbone(x), use_prompt)
            yield out.float(), labels.to(model.device)


def evaluate(model: PromptedModel, data: ImageSet, use_prompt: bool = True, batch_size: int = 256,
             amp: bool = True, sum_across_ranks: bool = False) -> EvalResult:
    """Accuracy over ``data``. ``sum_across_ranks``: ``data`` is this process's part of the split (distributed
    training) and the counts are summed over the processes, so every rank gets the whole split's numbers."""
    k = len(model.class_names)
    correct1 = correct5 = 0
    loss_sum = 0.0
    hits = torch.zeros(k, dtype=torch.long)
    totals = torch.zeros(k, dtype=torch.long)
    for logits, labels in logits_over(model, data, use_prompt, batch_size, amp):
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        top = logits.topk(min(5, k), dim=1).indices
        ok1 = (top[:, 0] == labels).cpu()
        correct1 += int(ok1.sum())
        correct5 += int((top == labels[:, None]).any(dim=1).sum())
        lab = labels.cpu()
        totals += torch.bincount(lab, minlength=k)
        hits += torch.bincount(lab[ok1], minlength=k)
    if sum_across_ranks:
        packed = torch.cat([torch.tensor([correct1, correct5, loss_sum], dtype=torch.float64),
                            hits.double(), totals.double()])
        packed = all_reduce_sum(packed)
        correct1, correct5, loss_sum = int(packed[0]), int(packed[1]), float(packed[2])
        hits, totals = packed[3 : 3 + k].long(), packed[3 + k :].long()
    n = int(totals.sum())
    per_class = {name: (float(hits[i]) / float(totals[i]) if totals[i] else float("nan"))
                 for i, name in enumerate(model.class_names)}
    return EvalResult(correct1 / max(n, 1), correct5 / max(n, 1), loss_sum / max(n, 1), n, per_class)


def test_metrics(model: PromptedModel, test: ImageSet, batch_size: int, amp: bool, sum_across_ranks: bool = False) -> dict:
    """A trained prompt's test numbers as a run records them: top-1, top-5 and per class, with the prompt."""
    r = evaluate(model, test, True, batch_size, amp, sum_across_ranks=sum_across_ranks)
    return {"test_top1": r.top1, "test_top5": r.top5, "test_per_class": r.per_class, "test_n": r.n}
