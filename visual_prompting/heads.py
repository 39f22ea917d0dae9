"""Output transformations: from what the backbone gives to logits over the new task's classes.

* :class:`ClipTextHead` - CLIP's zero-shot classifier: class names go into text templates ("This is a photo
  of a {}" in the paper, or an ensemble); text features are computed once, at construction, and cached.
* :class:`LabelMappingHead` - for vision-only models: each new class reads one source (ImageNet) logit.
  The mapping is the paper's hard-coded first-k, or is learned from how often each source class is
  predicted for each target class (frequency mapping, FLM); iterative mapping (ILM) recomputes it every
  epoch with the current prompt (the trainer does that through :func:`frequency_mapping`).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, ClipBackbone
from .errors import VPError

PAPER_TEMPLATE = "This is a photo of a {}"
MAPPINGS = ("first_k", "frequency", "iterative")


class ClipTextHead(nn.Module):
    kind = "clip_text"

    def __init__(self, backbone: ClipBackbone, class_names: list[str], templates: list[str]):
        super().__init__()
        if not templates or any("{}" not in t for t in templates):
            raise VPError("Every text template needs a '{}' where the class name goes.")
        self.class_names = list(class_names)
        self.templates = list(templates)
        self.register_buffer("text_features", self._encode(backbone), persistent=False)
        self.register_buffer("logit_scale", backbone.logit_scale.detach().clone().float(), persistent=False)

    @torch.no_grad()
    def _encode(self, backbone: ClipBackbone) -> torch.Tensor:
        per_class = []
        for name in self.class_names:
            f = F.normalize(backbone.encode_text([t.format(name) for t in self.templates]).float(), dim=-1)
            per_class.append(F.normalize(f.mean(0), dim=-1))  # CLIP's template ensemble
        return torch.stack(per_class)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(image_features.float(), dim=-1)
        return self.logit_scale * f @ self.text_features.t()

    def describe(self) -> dict:
        return {"kind": self.kind, "templates": self.templates}


class LabelMappingHead(nn.Module):
    kind = "label_mapping"

    def __init__(self, mapping: Iterable[int], num_source: int, method: str = "first_k"):
        super().__init__()
        mapping = torch.as_tensor(list(mapping), dtype=torch.long)
        if mapping.ndim != 1 or len(mapping) == 0:
            raise VPError("A label mapping is a non-empty list of source-class indices, one per new class.")
        if int(mapping.min()) < 0 or int(mapping.max()) >= num_source:
            raise VPError(f"Label mapping points outside the {num_source} source classes.")
        if method not in MAPPINGS:
            raise VPError(f"Unknown label mapping {method!r}; choose one of {', '.join(MAPPINGS)}.")
        self.method = method
        self.num_source = num_source
        self.register_buffer("mapping", mapping, persistent=False)

    def set_mapping(self, mapping: torch.Tensor) -> None:
        self.mapping = mapping.to(self.mapping.device, torch.long)

    def forward(self, source_logits: torch.Tensor) -> torch.Tensor:
        return source_logits[:, self.mapping].float()

    def describe(self) -> dict:
        return {"kind": self.kind, "method": self.method, "mapping": self.mapping.tolist(), "num_source": self.num_source}


def first_k_mapping(num_target: int, num_source: int) -> torch.Tensor:
    """The paper's mapping: new class i reads source logit i."""
    if num_target > num_source:
        raise VPError(f"{num_target} classes cannot be mapped onto {num_source} source classes.")
    return torch.arange(num_target)


def frequency_mapping(counts: torch.Tensor) -> torch.Tensor:
    """Greedy one-to-one mapping from a (num_source, num_target) count matrix (ILM-VP's rule).

    Repeatedly take the largest count, map that target to that source, and strike out both the row and the
    column, until every target class has its own source class."""
    num_source, num_target = counts.shape
    if num_target > num_source:
        raise VPError(f"{num_target} classes cannot be mapped onto {num_source} source classes.")
    c = counts.double().clone()
    mapping = torch.full((num_target,), -1, dtype=torch.long)
    for _ in range(num_target):
        idx = int(torch.argmax(c))
        s, t = divmod(idx, num_target)
        mapping[t] = s
        c[s, :] = -1
        c[:, t] = -1
    return mapping


def prediction_counts(source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> torch.Tensor:
    """(num_source, num_target) matrix: how often each source class is the top prediction for each target."""
    pred = source_logits.argmax(dim=1).cpu()
    counts = torch.zeros(source_logits.shape[1], num_target, dtype=torch.long)
    counts.index_put_((pred, labels.cpu().long()), torch.ones_like(pred), accumulate=True)
    return counts


def create_head(backbone: Backbone, class_names: list[str], *, templates: list[str] | None = None,
                mapping: str = "first_k", mapping_indices: list[int] | None = None) -> nn.Module:
    """The right head for a backbone: a cached text classifier for CLIP, a label mapping otherwise.

    For label mapping, ``mapping`` names the method; the indices start as first-k unless ``mapping_indices``
    gives them (from a prompt file). Frequency and iterative mappings are filled in by the trainer from data."""
    if not class_names:
        raise VPError("No class names given.")
    device = backbone.mean.device
    if isinstance(backbone, ClipBackbone):
        return ClipTextHead(backbone, class_names, templates or [PAPER_TEMPLATE]).to(device)
    num_source = len(backbone.source_classes)
    if mapping_indices is None:
        mapping_indices = first_k_mapping(len(class_names), num_source).tolist()
    if len(mapping_indices) != len(class_names):
        raise VPError(f"The label mapping has {len(mapping_indices)} entries but there are {len(class_names)} classes.")
    return LabelMappingHead(mapping_indices, num_source, mapping).to(device)
