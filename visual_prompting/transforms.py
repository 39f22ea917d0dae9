"""Input transforms a prompt can learn besides its additive pixels (ACAVP, 2025: affine and colour prompts).

A prompt may carry a stack of these, applied in order to the image before its own kind acts (``PrompterConfig.
transforms``, e.g. ``("affine", "colour")`` then a pad frame): each is a few learned numbers that start as "no
change", are trained with the prompt, bounded by :meth:`InputTransform.project_` and stored in the prompt file with
the prompt's own tensors (``prompt.transforms.0.theta`` ...). Like the additive prompt, they act on the input only:
every weight of the model stays frozen.

``affine``  a learned 2 x 3 warp of the image (zoom, rotation, shear, shift; bilinear, black outside the image),
            within 1 +- 0.25 of identity per coefficient
``colour``  a learned 3 x 3 colour matrix and per-channel bias (gain, colour mixing, brightness; a grey image
            can gain colour), within +-1 of identity

Add one with :func:`register_transform`.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .errors import VPError


class InputTransform(nn.Module):
    """One learned transform of (B, 3, S, S) images in [0, 1]; starts as the identity."""

    kind = ""
    description = ""
    # its Adam lr as a share of the prompt's: each number moves the whole image, so a step the size of one
    # pixel's would change far more than the additive prompt's step does
    lr_factor = 0.1

    def __init__(self, image_size: int):
        super().__init__()
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def is_identity(self) -> bool:
        """True when the transform returns every image as it is: exactly (colour), or up to float rounding (the
        identity warp resamples at the pixel centres: off by at most 3e-5 at 224 px, which the 8-bit rounding of
        the prompted image takes away but for exact ties)."""
        return all(bool((p == 0).all()) for p in self.parameters())

    @torch.no_grad()
    def project_(self) -> None:
        for p in self.parameters():
            p.clamp_(-1.0, 1.0)

    def summary(self) -> str:  # pragma: no cover - abstract
        """What it does now, in words and numbers (the app's and the model card's text)."""
        raise NotImplementedError


TRANSFORMS: dict[str, type[InputTransform]] = {}


def register_transform(cls: type[InputTransform]) -> type[InputTransform]:
    if not cls.kind or "+" in cls.kind or not cls.description:
        raise ValueError(f"{cls.__name__} needs its own `kind` (no '+') and a one-line `description`.")
    TRANSFORMS[cls.kind] = cls
    return cls


@register_transform
class AffineTransform(InputTransform):
    """``theta = I + STEP * delta`` (2 x 3, in ``affine_grid``'s normalised coordinates); ``delta`` in [-1, 1]."""

    kind = "affine"
    description = "a learned warp of the image (zoom, rotation, shear, shift)"
    STEP = 0.25  # the largest change of each coefficient: zoom 0.75-1.25, shift up to an eighth of the side

    def __init__(self, image_size: int):
        super().__init__(image_size)
        self.delta = nn.Parameter(torch.zeros(2, 3))

    def theta(self) -> torch.Tensor:
        return torch.eye(2, 3, device=self.delta.device) + self.STEP * self.delta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        theta = self.theta().to(torch.float32).expand(n, 2, 3)
        grid = F.affine_grid(theta, [n, c, h, w], align_corners=False).to(images.dtype)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def summary(self) -> str:
        t = self.theta().detach().cpu().double()
        a = t[:, :2]
        zoom = 1.0 / float(a.det().abs().sqrt())  # how much larger the image appears (sampling 1/zoom of it)
        angle = float(torch.rad2deg(torch.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))
        shift = [v + 0.0 for v in (-t[:, 2] * self.image_size / 2).tolist()]  # + 0.0: no "-0.0"
        return (f"affine warp: zoom {zoom:.3f}x, rotation {angle:+.1f} deg, shift ({shift[0]:+.1f}, {shift[1]:+.1f}) px "
                f"at {self.image_size} px")


@register_transform
class ColourTransform(InputTransform):
    """``out[c] = sum_k (I + matrix)[c, k] * image[k] + bias[c]``; ``matrix`` and ``bias`` in [-1, 1]."""

    kind = "colour"
    description = "a learned 3 x 3 colour matrix and bias (gain, colour mixing, brightness)"

    def __init__(self, image_size: int):
        super().__init__(image_size)
        self.matrix = nn.Parameter(torch.zeros(3, 3))
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # at the start (all zero) this is exactly the identity: x * 1 + 0 * the other channels + 0
        m = (torch.eye(3, device=images.device) + self.matrix).to(images.dtype)
        return torch.einsum("ck,bkhw->bchw", m, images) + self.bias.to(images.dtype)[None, :, None, None]

    def summary(self) -> str:
        m = (torch.eye(3) + self.matrix.detach().cpu()).tolist()
        rows = "; ".join(" ".join(f"{v:+.2f}" for v in row) for row in m)
        b = ", ".join(f"{v:+.3f}" for v in self.bias.detach().cpu().tolist())
        return f"colour: matrix [{rows}] (RGB rows), bias ({b})"


def split_stack(text: str | None) -> tuple[str, ...]:
    """``"affine+colour"`` -> ``("affine", "colour")``; ``"none"`` / ``""`` / None -> ``()``."""
    if not text or text == "none":
        return ()
    return tuple(text.split("+"))


def check_stack(kinds) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in TRANSFORMS]
    if unknown or len(set(kinds)) != len(kinds):
        raise VPError(f"Input transforms must be distinct kinds of {', '.join(TRANSFORMS)} (got {'+'.join(kinds)!r}).")
    return kinds


def stack_choices() -> list[str]:
    """Every stack as the CLI and the app write it: "none", then each kind, then ordered combinations."""
    out = ["none"]
    for n in range(1, len(TRANSFORMS) + 1):
        out += ["+".join(p) for p in itertools.permutations(TRANSFORMS, n)]
    return out


def stack_text(pc: dict) -> str:
    """A prompter config's transforms in words for the app, the CLI and the model card ("" without any)."""
    kinds = pc.get("transforms") or []
    return f", after learned {' + '.join(kinds)} transform{'s' if len(kinds) > 1 else ''} of the image" if kinds else ""


def build_transforms(kinds, image_size: int) -> nn.ModuleList:
    return nn.ModuleList(TRANSFORMS[k](image_size) for k in check_stack(kinds))
