"""A fully connected output mapping (AutoVP's "FullyMap"): a trainable linear layer from the backbone's source
logits (e.g. ImageNet's 1000) to the new task's classes.

This is *not* input-only: besides the prompt it trains num_source x num_classes + num_classes numbers (10,010 for
ImageNet -> Fashion-MNIST, seven times a 13 px frame at 96 px), so results with it are reported apart, with
:meth:`FullyMapHead.trainable_params`. For vision-only models (a classifier backbone) only; CLIP keeps its text head.

It can start as a label mapping (``init="mapping"``: weight 1 from each class's mapped source logit, 0 elsewhere,
zero bias), so training starts from the frequency mapping's accuracy instead of chance; ``init="random"`` is
``nn.Linear``'s default, as AutoVP.

Integration (the trainer, the prompt file): its parameters are trained *with* the prompt but need their own
parameter group (lr in the linear layer's units, e.g. Adam 1e-3; not the prompt's std**2 gradient scaling and
not ``Prompter.project_``); in a prompt file they are the tensors ``head.weight`` / ``head.bias``
(:meth:`FullyMapHead.state_tensors` / :meth:`FullyMapHead.from_state`) and ``describe()`` is the metadata's
``head`` entry (kind ``fully_map``).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .errors import VPError

INITS = ("mapping", "random")


class FullyMapHead(nn.Module):
    kind = "fully_map"
    input_only = False

    def __init__(self, num_source: int, num_classes: int, init: str = "mapping",
                 mapping: Iterable[int] | None = None, seed: int = 0):
        super().__init__()
        if num_source < 1 or num_classes < 2:
            raise VPError(f"A fully connected mapping needs source logits and at least two classes "
                          f"(got {num_source} -> {num_classes}).")
        if init not in INITS:
            raise VPError(f"Unknown fully-map init {init!r}; choose one of {', '.join(INITS)}.")
        self.num_source, self.num_classes, self.init = num_source, num_classes, init
        self.linear = nn.Linear(num_source, num_classes)
        self.init_mapping: list[int] | None = None
        with torch.no_grad():
            if init == "mapping":
                idx = list(range(num_classes)) if mapping is None else [int(i) for i in mapping]
                if len(idx) != num_classes or min(idx) < 0 or max(idx) >= num_source:
                    raise VPError(f"The starting mapping needs one source index in 0..{num_source - 1} per class "
                                  f"({num_classes}); got {idx}.")
                self.linear.weight.zero_()
                self.linear.weight[torch.arange(num_classes), torch.tensor(idx)] = 1.0
                self.linear.bias.zero_()
                self.init_mapping = idx
            else:
                g = torch.Generator().manual_seed(seed)
                bound = num_source ** -0.5  # nn.Linear's default range, drawn from the seed
                self.linear.weight.copy_((torch.rand(num_classes, num_source, generator=g) * 2 - 1) * bound)
                self.linear.bias.copy_((torch.rand(num_classes, generator=g) * 2 - 1) * bound)

    def forward(self, source_logits: torch.Tensor) -> torch.Tensor:
        return self.linear(source_logits.float())

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict:
        d = {"kind": self.kind, "num_source": self.num_source, "num_classes": self.num_classes, "init": self.init,
             "trainable_params": self.trainable_params()}
        if self.init_mapping is not None:
            d["init_mapping"] = self.init_mapping
        return d

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``{"head.weight": ..., "head.bias": ...}`` for a safetensors prompt file."""
        return {f"head.{k}": v.detach().float().cpu().contiguous() for k, v in self.linear.named_parameters()}

    @classmethod
    def from_state(cls, desc: dict, tensors: dict[str, torch.Tensor]) -> FullyMapHead:
        """Rebuild from ``describe()`` and :meth:`state_tensors` (extra keys in ``tensors`` are ignored); every
        problem is a :class:`VPError`."""
        try:
            head = cls(int(desc["num_source"]), int(desc["num_classes"]), init="random")
        except (KeyError, TypeError, ValueError) as e:
            raise VPError(f"A fully_map head needs integer 'num_source' and 'num_classes' ({e}).") from e
        with torch.no_grad():
            for k, p in head.linear.named_parameters():
                t = tensors.get(f"head.{k}")
                if t is None:
                    raise VPError(f"The fully_map head's tensor 'head.{k}' is missing.")
                if tuple(t.shape) != tuple(p.shape):
                    raise VPError(f"'head.{k}' has shape {tuple(t.shape)}, expected {tuple(p.shape)}.")
                if not torch.isfinite(t).all():
                    raise VPError(f"'head.{k}' holds NaN or infinite values.")
                p.copy_(t)
        head.init = desc.get("init", "random")
        head.init_mapping = desc.get("init_mapping")
        return head
