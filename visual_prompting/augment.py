"""Input diversity: augmentation of the image *before* the prompt, during training only.

Every augmentation takes a float batch in [0, 1] of shape (B, 3, S, S) on any device and returns one of the same
shape, dtype and device. Whole batches are transformed on the device (no PIL, no Python loop over images); the
per-image random choices are a few numbers drawn on the CPU - from ``generator`` when one is given, else from the
global RNG, so ``torch.manual_seed`` makes a run repeatable - and copied to the device in one go.

``AUGMENTATIONS`` is the registry: name -> :class:`AugmentEntry` (description + factory); :func:`build_augment`
makes one. The trainer applies it to the clean images of a training batch, before ``PromptedModel`` adds the
prompt; evaluation never augments.

``none``        the images unchanged (the paper).
``flip_crop``   EVP's input diversity: a random resized crop of each image (area 0.6..1 of the image, aspect
                3/4..4/3) resized back to S, and a horizontal flip with probability 1/2; one ``grid_sample`` for the
                whole batch.
``trivial``     TrivialAugment Wide (Mueller & Hutter 2021; ACAVP's augmentation for visual prompting): each image
                gets one operation drawn uniformly from 14, with a magnitude drawn uniformly from 31 bins (signed
                ops flip sign with probability 1/2). The batch is grouped by operation: the geometric ones share
                one ``grid_sample`` with a per-image affine matrix, the colour ones are per-image blends with the
                degenerate image torchvision's functionals give (so each image has its own factor).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from .errors import VPError


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise VPError(f"Augmentations take float image batches of shape (B, 3, S, S); got {tuple(x.shape)} {x.dtype}.")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` numbers uniform in [lo, hi), drawn on the CPU (from ``generator`` or the global RNG)."""
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def _warp(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Resample every image of ``x`` through its own 2x3 affine ``theta`` (output coords -> input coords, in
    ``affine_grid``'s [-1, 1] units), bilinear."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FlipCrop(nn.Module):
    """Random resized crop (area ``scale``, aspect ``ratio``) back to the full size, plus a random horizontal flip,
    as one affine resampling of the whole batch."""

    def __init__(self, scale: tuple[float, float] = (0.6, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]) or not (0 <= flip <= 1):
            raise VPError(f"flip_crop needs 0 < scale <= 1, a positive ratio range and 0 <= flip <= 1 "
                          f"(got scale={scale}, ratio={ratio}, flip={flip}).")
        self.scale, self.ratio, self.flip, self.generator = scale, ratio, flip, generator

    def theta(self, n: int) -> torch.Tensor:
        g = self.generator
        area = _uniform(n, *self.scale, g)
        log_r = _uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), g)
        w = (area * log_r.exp()).sqrt().clamp(max=1.0)  # crop width / image width
        h = (area / log_r.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - w)  # crop centre, the crop stays inside the image
        cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - h)
        sign = torch.where(torch.rand(n, generator=g) < self.flip, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        return theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x)
        return _warp(x, self.theta(len(x)), padding_mode="border")


# TrivialAugment Wide's space (torchvision.transforms.v2.TrivialAugmentWide): name -> (max magnitude, signed).
# Translations are a fraction of the side: torchvision's 32 px at 224 px.
TRIVIAL_OPS: dict[str, tuple[float, bool]] = {
    "Identity": (0.0, False), "ShearX": (0.99, True), "ShearY": (0.99, True), "TranslateX": (32 / 224, True),
    "TranslateY": (32 / 224, True), "Rotate": (135.0, True), "Brightness": (0.99, True), "Color": (0.99, True),
    "Contrast": (0.99, True), "Sharpness": (0.99, True), "Posterize": (0.0, False), "Solarize": (0.0, False),
    "AutoContrast": (0.0, False), "Equalize": (0.0, False),
}
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BLENDS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # op -> its degenerate image (factor 0)
    "Brightness": torch.zeros_like,
    "Color": lambda x: TF.adjust_saturation(x, 0.0),
    "Contrast": lambda x: TF.adjust_contrast(x, 0.0),
    "Sharpness": lambda x: TF.adjust_sharpness(x, 0.0),
}


class TrivialAugment(nn.Module):
    """TrivialAugment Wide on whole batches: one random op per image, grouped by op (see the module text)."""

    ops = tuple(TRIVIAL_OPS)

    def __init__(self, num_magnitude_bins: int = 31, generator: torch.Generator | None = None):
        super().__init__()
        if num_magnitude_bins < 2:
            raise VPError(f"trivial needs at least 2 magnitude bins (got {num_magnitude_bins}).")
        self.bins, self.generator = num_magnitude_bins, generator

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(op index, bin index / (bins-1) with its sign) for ``n`` images, on the CPU."""
        g = self.generator
        op = torch.randint(len(self.ops), (n,), generator=g)
        level = torch.randint(self.bins, (n,), generator=g).float() / (self.bins - 1)
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        return op, level * sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x)
        op, level = self.sample(len(x))
        out = x.clone()
        geo = [self.ops.index(k) for k in _GEOMETRIC]
        idx = torch.nonzero(torch.isin(op, torch.tensor(geo))).flatten()
        if len(idx):
            theta = torch.zeros(len(idx), 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = 1.0
            for k in _GEOMETRIC:
                sel = op[idx] == self.ops.index(k)
                m = level[idx][sel] * TRIVIAL_OPS[k][0]
                if k == "ShearX":
                    theta[sel, 0, 1] = m
                elif k == "ShearY":
                    theta[sel, 1, 0] = m
                elif k == "TranslateX":
                    theta[sel, 0, 2] = 2 * m
                elif k == "TranslateY":
                    theta[sel, 1, 2] = 2 * m
                else:  # Rotate (degrees)
                    a = torch.deg2rad(m)
                    theta[sel, 0, 0], theta[sel, 0, 1] = a.cos(), -a.sin()
                    theta[sel, 1, 0], theta[sel, 1, 1] = a.sin(), a.cos()
            d = idx.to(x.device)
            out[d] = _warp(x[d], theta)  # zero fill, as torchvision's default
        for k in ("Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"):
            sel = torch.nonzero(op == self.ops.index(k)).flatten()
            if not len(sel):
                continue
            d = sel.to(x.device)
            xs = x[d]
            if k in _BLENDS:
                f = (1.0 + level[sel] * TRIVIAL_OPS[k][0]).to(x.device, x.dtype).view(-1, 1, 1, 1)
                deg = _BLENDS[k](xs)
                out[d] = (deg + f * (xs - deg)).clamp(0.0, 1.0)
            elif k == "Posterize":  # bits 8 .. 2 over the bins (torchvision's linspace), per image
                bits = (8 - level[sel].abs() * 6).round()
                step = (2.0 ** (8 - bits)).to(x.device, x.dtype).view(-1, 1, 1, 1)
                out[d] = torch.floor(torch.floor(xs * 255) / step) * step / 255
            elif k == "Solarize":  # threshold 1 .. 0 over the bins: invert the pixels at or above it
                t = (1.0 - level[sel].abs()).to(x.device, x.dtype).view(-1, 1, 1, 1)
                out[d] = torch.where(xs >= t, 1.0 - xs, xs)
            elif k == "AutoContrast":
                out[d] = TF.autocontrast(xs)
            else:  # Equalize (per image and channel)
                out[d] = TF.equalize(xs)
        return out


@dataclass(frozen=True)
class AugmentEntry:
    name: str
    description: str
    factory: Callable[..., nn.Module]  # factory(generator=None) -> module: x -> x


AUGMENTATIONS: dict[str, AugmentEntry] = {}


def register_augment(name: str, description: str):
    """Decorator: register a factory ``f(generator=None) -> nn.Module`` under ``name``."""
    def deco(factory):
        AUGMENTATIONS[name] = AugmentEntry(name, description, factory)
        return factory
    return deco


register_augment("none", "no augmentation (the paper)")(lambda generator=None: Identity())
register_augment("flip_crop", "EVP's input diversity: random resized crop (area 0.6-1, aspect 3/4-4/3) and "
                 "horizontal flip of each image, before the prompt")(lambda generator=None: FlipCrop(generator=generator))
register_augment("trivial", "TrivialAugment Wide: one random op with a random magnitude per image, before the "
                 "prompt")(lambda generator=None: TrivialAugment(generator=generator))


def build_augment(name: str, generator: torch.Generator | None = None) -> nn.Module:
    """The augmentation called ``name`` (a module: ``x -> x``). ``generator`` (a CPU ``torch.Generator``) makes
    it draw from its own stream; without one it draws from the global RNG."""
    if name not in AUGMENTATIONS:
        raise VPError(f"Unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}.")
    return AUGMENTATIONS[name].factory(generator=generator)
