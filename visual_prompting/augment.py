"""Input diversity: augmentation of the image *before* the prompt, during training only.

Every augmentation takes a float batch in [0, 1] of shape (B, 3, S, S) on any device and returns one of the same
shape, dtype and device. Whole batches are transformed on the device by kornia (no PIL, no Python loop over
images), each image with its own random parameters. The random choices are drawn on the CPU, from torch's global
RNG (which a training checkpoint saves, so a resumed run continues the same draws) or, when ``generator`` is
given, from that ``torch.Generator``.

``AUGMENTATIONS`` is the registry: name -> :class:`AugmentEntry` (description + factory); :func:`build_augment`
makes one. The trainer applies it to the clean images of a training batch, before ``PromptedModel`` adds the
prompt; evaluation never augments.

``none``        the images unchanged (the paper).
``flip_crop``   EVP's input diversity: a random resized crop of each image (area 0.6..1 of the image, aspect
                3/4..4/3) resized back to S, and a horizontal flip with probability 1/2 (kornia's
                ``RandomResizedCrop``, one batched warp, and ``RandomHorizontalFlip``).
``trivial``     TrivialAugment Wide (Mueller & Hutter 2021; ACAVP's augmentation for visual prompting): each image
                gets one operation drawn uniformly from 14, with a magnitude drawn uniformly from 31 bins (signed
                ops flip sign with probability 1/2). The batch is grouped by operation: the geometric ones share
                one kornia ``warp_affine`` with a per-image matrix, posterize and solarize are kornia's with per-image
                bits and thresholds, the colour ones are per-image blends with the degenerate image torchvision's
                functionals give (so each image has its own factor). kornia's own ``auto.TrivialAugment`` is not
                used: it applies one operation to the whole batch per call, from a different (not Wide) space.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import kornia.augmentation as KA
import torch
from kornia.enhance import posterize, solarize
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from torch import nn

from .errors import VPError


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise VPError(f"Augmentations take float image batches of shape (B, 3, S, S); got {tuple(x.shape)} {x.dtype}.")


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FlipCrop(nn.Module):
    """Random resized crop (area ``scale``, aspect ``ratio``) back to the full size, plus a random horizontal flip
    with probability ``flip``: kornia's ``RandomResizedCrop`` (one bilinear warp of the whole batch, a crop per
    image) and ``RandomHorizontalFlip``."""

    def __init__(self, scale: tuple[float, float] = (0.6, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]) or not (0 <= flip <= 1):
            raise VPError(f"flip_crop needs 0 < scale <= 1, a positive ratio range and 0 <= flip <= 1 "
                          f"(got scale={scale}, ratio={ratio}, flip={flip}).")
        self.scale, self.ratio, self.generator = scale, ratio, generator
        self.crops = nn.ModuleDict()  # kornia's crop is made for one output size: one per size seen
        self.hflip = KA.RandomHorizontalFlip(p=flip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x)
        key = "x".join(map(str, x.shape[-2:]))
        if key not in self.crops:
            self.crops[key] = KA.RandomResizedCrop(tuple(x.shape[-2:]), scale=self.scale, ratio=self.ratio,
                                                   cropping_mode="resample", align_corners=False)
        if self.generator is None:  # kornia draws on the CPU from the global RNG
            return self.hflip(self.crops[key](x))
        with torch.random.fork_rng(devices=[]):  # from a stream the generator seeds; the global RNG is untouched
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
            return self.hflip(self.crops[key](x))


# TrivialAugment Wide's space (torchvision.transforms.v2.TrivialAugmentWide): name -> (max magnitude, signed).
# Translations are a fraction of the side: torchvision's 32 px at 224 px.
TRIVIAL_OPS: dict[str, tuple[float, bool]] = {
    "Identity": (0.0, False), "ShearX": (0.99, True), "ShearY": (0.99, True), "TranslateX": (32 / 224, True),
    "TranslateY": (32 / 224, True), "Rotate": (135.0, True), "Brightness": (0.99, True), "Color": (0.99, True),
    "Contrast": (0.99, True), "Sharpness": (0.99, True), "Posterize": (0.0, False), "Solarize": (0.0, False),
    "AutoContrast": (0.0, False), "Equalize": (0.0, False),
}
def _tf():
    """torchvision's functional transforms, imported when first used (importing torchvision costs seconds of a run's
    start-up)."""
    import torchvision.transforms.v2.functional as tf

    return tf


_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BLENDS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # op -> its degenerate image (factor 0)
    "Brightness": torch.zeros_like,
    "Color": lambda x: _tf().adjust_saturation(x, 0.0),
    "Contrast": lambda x: _tf().adjust_contrast(x, 0.0),
    "Sharpness": lambda x: _tf().adjust_sharpness(x, 0.0),
}


class TrivialAugment(nn.Module):
    """TrivialAugment Wide on whole batches: one random op per image, grouped by op (see the module text)."""

    ops = tuple(TRIVIAL_OPS)

    def __init__(self, num_magnitude_bins: int = 31, generator: torch.Generator | None = None):
        super().__init__()
        if num_magnitude_bins < 2:
            raise VPError(f"trivial needs at least 2 magnitude bins (got {num_magnitude_bins}).")
        self.bins, self.generator = num_magnitude_bins, generator
        self._geometric_ids = torch.tensor([self.ops.index(k) for k in _GEOMETRIC])

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(op index, bin index / (bins-1) with its sign) for ``n`` images, on the CPU."""
        g = self.generator
        op = torch.randint(len(self.ops), (n,), generator=g)
        level = torch.randint(self.bins, (n,), generator=g).float() / (self.bins - 1)
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        return op, level * sign

    def _geometric(self, x: torch.Tensor, op: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The shear / translate / rotate images, each through its own matrix (kornia), in one warp."""
        n, (h, w) = len(op), x.shape[-2:]

        def amount(k: str) -> torch.Tensor:  # each image's magnitude for op k, 0 where its op is another one
            return torch.where(op == self.ops.index(k), level * TRIVIAL_OPS[k][0], 0.0)

        matrix = get_affine_matrix2d(
            translations=torch.stack([amount("TranslateX") * w, amount("TranslateY") * h], 1),
            center=torch.tensor([[(w - 1) / 2, (h - 1) / 2]]).expand(n, 2), scale=torch.ones(n, 2),
            angle=amount("Rotate"), sx=amount("ShearX").atan(), sy=amount("ShearY").atan())
        return warp_affine(x, matrix[:, :2].to(x.device, x.dtype), (h, w))  # zero fill, as torchvision's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x)
        op, level = self.sample(len(x))
        out = x.clone()
        for k in ("geometric", "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                  "AutoContrast", "Equalize"):
            on = torch.isin(op, self._geometric_ids) if k == "geometric" else op == self.ops.index(k)
            sel = torch.nonzero(on).flatten()
            if not len(sel):
                continue
            d = sel.to(x.device)
            xs, m = x[d], level[sel]
            if k == "geometric":
                out[d] = self._geometric(xs, op[sel], m)
            elif k in _BLENDS:
                f = (1.0 + m * TRIVIAL_OPS[k][0]).to(x.device, x.dtype).view(-1, 1, 1, 1)
                deg = _BLENDS[k](xs)
                out[d] = (deg + f * (xs - deg)).clamp(0.0, 1.0)
            elif k == "Posterize":  # bits 8 .. 2 over the bins (torchvision's linspace), per image
                out[d] = posterize(xs, (8 - m.abs() * 6).round().int())
            elif k == "Solarize":  # threshold 1 .. 0 over the bins: invert the pixels at or above it
                out[d] = solarize(xs, (1.0 - m.abs()).to(x.device, x.dtype))
            elif k == "AutoContrast":
                out[d] = _tf().autocontrast(xs)
            else:  # Equalize (per image and channel)
                out[d] = _tf().equalize(xs)
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
