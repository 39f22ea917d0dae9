"""Optimisers and step rules for the prompt: a registry, so a recipe names one and the rest of the code reads it.

``OPTIMIZERS``: name -> :class:`OptimizerEntry` (description, suggested base lr, factory); :func:`build_optimizer`
makes one. Every entry is a ``torch.optim.Optimizer``, so ``state_dict`` / ``load_state_dict``, ``GradScaler``
and the trainer's per-step lr (it sets ``group["lr"]`` each step) work unchanged.

``sgd``     the paper's rule: SGD with momentum 0.9, lr 40 in the paper's (normalised-space) units; the trainer
            turns that into pixel space by scaling the gradient by std**2 before the step.
``l2sgd``   EVP's rule (Wu et al., TMLR 2024; UCSC-VLAA/EVP ``main.py``): the step is ``lr * g / ||g||_2`` with the
            norm taken over the *whole* prompt gradient (all parameter tensors together, as EVP does with its one
            perturbation tensor), optionally with momentum on the normalised steps. The gradient's scale no longer
            matters (so the trainer's std**2 scaling only re-weights the channels), and ``lr`` is the L2 length of
            the whole step in pixel units: EVP's 70 on a 69,840-number frame is a root-mean-square step of
            70 / sqrt(69,840) = 0.265 per number; for a prompt of n numbers the same per-number step is
            ``0.265 * sqrt(n)`` (see :func:`l2sgd_lr_for`). (EVP normalises the gradient of a full-image
            perturbation and masks it afterwards, so its frame's step is somewhat shorter than 70; here only the
            prompt's own numbers have gradients.) EVP itself uses no momentum: pass ``momentum=0`` for its rule.
``adam``    Adam (lr 0.01: ILM-VP's setting for CNN prompts). Per-number steps of about lr whatever the gradient's
            scale (the std**2 scaling changes nothing but eps); ``momentum`` is not used (Adam has its betas).

The suggested lrs are documentation: ``build_optimizer(lr=None)`` uses them, an explicit lr always wins.
A checkpoint stores any of these optimisers' state as flat tensors (:mod:`visual_prompting.checkpoint`), so a run
resumes with its momentum / Adam moments.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .errors import VPError

EVP_FRAME_NUMBERS = 3 * (224**2 - 164**2)  # 69,840: the frame EVP's lr 70 was tuned for
EVP_LR = 70.0


class L2SGD(torch.optim.Optimizer):
    """SGD on the L2-normalised gradient: ``d = g / (||g|| + eps)``, ``buf = momentum * buf + d`` (with momentum),
    ``p -= lr * (buf or d)``. ``norm="global"`` normalises over every parameter of every group together (EVP);
    ``norm="tensor"`` normalises each parameter tensor on its own. Weight decay is added to the normalised step
    (``d += weight_decay * p``)."""

    def __init__(self, params, lr: float = EVP_LR, momentum: float = 0.0, weight_decay: float = 0.0,
                 norm: str = "global", eps: float = 1e-10):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise VPError(f"l2sgd needs lr, momentum and weight decay >= 0 (got {lr}, {momentum}, {weight_decay}).")
        if norm not in ("global", "tensor"):
            raise VPError(f"l2sgd norm must be 'global' or 'tensor', not {norm!r}.")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, norm=norm, eps=eps))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not with_grad:
            return loss
        total = None
        if any(g["norm"] == "global" for g, _ in with_grad):
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for _, p in with_grad]))
        for group, p in with_grad:
            n = total if group["norm"] == "global" else torch.linalg.vector_norm(p.grad.float())
            d = p.grad / (n + group["eps"]).to(p.grad.dtype)
            if group["weight_decay"]:
                d = d.add(p, alpha=group["weight_decay"])
            if group["momentum"]:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                d = buf
            p.add_(d, alpha=-group["lr"])
        return loss


def l2sgd_lr_for(num_numbers: int) -> float:
    """The ``l2sgd`` lr that gives a prompt of ``num_numbers`` the per-number step EVP's lr 70 gives its
    69,840-number frame (the step's L2 length grows with sqrt(n) for the same per-number step)."""
    return EVP_LR * math.sqrt(num_numbers / EVP_FRAME_NUMBERS)


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    description: str
    default_lr: float  # suggested base lr (documented, used when no lr is given)
    factory: Callable[..., torch.optim.Optimizer]  # factory(params, lr, momentum, weight_decay)


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register_optimizer(name: str, description: str, default_lr: float):
    """Decorator: register ``factory(params, lr, momentum, weight_decay) -> Optimizer`` under ``name``."""
    def deco(factory):
        OPTIMIZERS[name] = OptimizerEntry(name, description, default_lr, factory)
        return factory
    return deco


@register_optimizer("sgd", "SGD with momentum (the paper: lr 40 in normalised-space units, momentum 0.9)", 40.0)
def _sgd(params, lr, momentum, weight_decay):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@register_optimizer("l2sgd", "EVP's L2-normalised gradient step (lr = length of the whole step in pixel units; "
                    "EVP: 70 for a 69,840-number frame, no momentum)", EVP_LR)
def _l2sgd(params, lr, momentum, weight_decay):
    return L2SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@register_optimizer("adam", "Adam (lr 0.01, ILM-VP's setting for CNNs; momentum unused)", 0.01)
def _adam(params, lr, momentum, weight_decay):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def build_optimizer(name: str, params: Iterable, lr: float | None = None, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimiser called ``name`` over ``params``; ``lr=None`` takes the entry's suggested lr."""
    if name not in OPTIMIZERS:
        raise VPError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")
    entry = OPTIMIZERS[name]
    lr = entry.default_lr if lr is None else float(lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise VPError(f"The learning rate must be a positive number (got {lr}).")
    if momentum < 0 or weight_decay < 0:
        raise VPError(f"Momentum and weight decay must be >= 0 (got {momentum}, {weight_decay}).")
    return entry.factory(list(params), lr, momentum, weight_decay)
