"""Capture robustness: what happens to a prompted image when it is shared (JPEG) or resized, and a training
transform that makes prompts survive it.

A prompt only helps if the image that reaches the model still carries it. Here the capture step sits between
the prompter's output and the backbone: ``prompter -> capture -> backbone -> head``.

Evaluation transforms (:data:`EVAL_TRANSFORMS`, real operations on the 8-bit image, never trained through):

``clean``      the prompted image as it is.
``jpeg75``     :func:`jpeg_roundtrip`: a real JPEG encode / decode at quality 75 (libjpeg through torchvision).
``resize075``  :func:`resize_roundtrip`: down to 0.75 of the side and back up (bilinear, antialiased), 8-bit.

:func:`capture_top1` measures top-1 under each of them in one pass over a split.

Training transform (:data:`CAPTURE_AUGMENTATIONS`, expectation over transformation): :class:`CaptureAugment`
applies, after the prompt and on the device, per image and each with probability ``p``: a small random shift
(sub-pixel bilinear, a few pixels; kornia's ``translate``), a random down-and-up resize (scale 0.6..1), and a
differentiable JPEG (:func:`diff_jpeg`: YCbCr, 4:2:0 chroma, 8x8 block DCT quantised with the standard tables at a
random quality 50..95). The JPEG is simulated rather than run for real because a real encoder runs on the CPU, one
image at a time, so on a GPU every step would wait for a copy to the host and back; the simulation is batched
tensor maths on the device and its forward pass is JPEG's own lossy step (quantisation of the DCT coefficients; the
rounding is straight-through in the backward pass), so the prompt is trained on what JPEG really keeps (the tests
check it against libjpeg). The output is rounded to 8-bit levels (straight-through), as a captured image would be.
The random choices are drawn on the CPU, from ``generator`` or torch's global RNG (which a checkpoint saves).

kornia's ``jpeg_codec_differentiable`` does this job less well, so :func:`diff_jpeg` is our own (measured for
issue 28.6 on prompted 96 px images, one CPU thread): kornia subsamples chroma with an antialiasing blur instead of
JPEG's 2x2 mean and rounds with a smooth polynomial, which puts it 3.4x farther from libjpeg at quality 75 (4.2
against 1.2 8-bit levels), and it is 8.9x slower forward and backward; the robust recipe trained with it scored
79.7% under JPEG-75 against 80.8% (seed 0, one machine). kornia's YCbCr conversion centres chroma on 127.5 (JPEG:
128) and was 1.2x slower than the two matrices below, so they stay too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.geometry.transform import translate
from torch import nn

from .errors import VPError
from .prompters import straight_through_clamp, to_8bit


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise VPError(f"Capture transforms take float image batches of shape (B, 3, S, S); got {tuple(x.shape)}.")


# -- evaluation transforms (real, not differentiable) ------------------------------------------------------


@torch.no_grad()
def jpeg_roundtrip(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """A real JPEG round trip of the 8-bit image (libjpeg via ``torchvision.io``; 4:2:0 chroma), back as floats
    in [0, 1] on ``x``'s device."""
    _check(x)
    if not 1 <= int(quality) <= 100:
        raise VPError(f"JPEG quality must be between 1 and 100 (got {quality}).")
    from torchvision.io import decode_jpeg, encode_jpeg  # here: importing torchvision costs seconds of start-up

    u8 = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    decoded = decode_jpeg(encode_jpeg(list(u8), quality=int(quality)))
    return (torch.stack(decoded).float() / 255).to(x.device, x.dtype)


@torch.no_grad()
def resize_roundtrip(x: torch.Tensor, factor: float = 0.75) -> torch.Tensor:
    """Down to ``round(factor * S)`` pixels and back up to S (bilinear, antialiased), as 8-bit levels."""
    _check(x)
    if not 0 < factor <= 1:
        raise VPError(f"The resize factor must be in (0, 1] (got {factor}).")
    s = x.shape[-1]
    n = max(1, round(factor * s))
    small = F.interpolate(x.float(), size=(n, n), mode="bilinear", antialias=True, align_corners=False)
    back = F.interpolate(small, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
    return to_8bit(back).to(x.dtype)


EVAL_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "clean": lambda x: x,
    "jpeg75": lambda x: jpeg_roundtrip(x, 75),
    "resize075": lambda x: resize_roundtrip(x, 0.75),
}


@torch.no_grad()
def capture_top1(model, data, transforms=("clean", "jpeg75", "resize075"), batch_size: int = 256,
                 amp: bool = True, use_prompt: bool = True) -> dict[str, float]:
    """Top-1 of ``model`` (a :class:`~visual_prompting.model.PromptedModel` or anything with ``prompt``,
    ``backbone``, ``logits``, ``device``, ``image_size``) on ``data`` (an ``ImageSet``) after each evaluation
    transform of the prompted images: ``{"clean": ..., "jpeg75": ..., "resize075": ...}``. One pass over the
    data; each batch is prompted once. Metric names in results: ``test_top1_<name>``."""
    from .data import to_model_input
    from .utils import autocast, eval_mode

    unknown = [t for t in transforms if t not in EVAL_TRANSFORMS]
    if unknown:
        raise VPError(f"Unknown capture transform(s) {unknown}; choose from {', '.join(EVAL_TRANSFORMS)}.")
    hits = dict.fromkeys(transforms, 0)
    n = 0
    with eval_mode(model):
        for images, labels in data.batches(batch_size):
            x = to_model_input(images.to(model.device, non_blocking=True), model.image_size)
            labels = labels.to(model.device)
            with autocast(model.device, amp):
                px = (model.prompt(x) if use_prompt else x).float()
            for name in transforms:
                with autocast(model.device, amp):
                    logits = model.logits(model.backbone(EVAL_TRANSFORMS[name](px)), use_prompt)
                hits[name] += int((logits.float().argmax(1) == labels).sum())
            n += len(labels)
    return {name: h / max(n, 1) for name, h in hits.items()}


# -- a differentiable JPEG ---------------------------------------------------------------------------------

# ITU-T T.81 Annex K tables (quality 50), scaled per quality as libjpeg does
_LUMA_Q = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_CHROMA_Q = torch.full((8, 8), 99.0)
_CHROMA_Q[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]],
                                 dtype=torch.float32)
_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC2RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def _dct_matrix() -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * torch.pi / 16) * (2 / 8) ** 0.5
    d[0] /= 2 ** 0.5
    return d.float()  # orthonormal DCT-II: coeffs = D @ block @ D.T


_DCT = _dct_matrix()


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's quality scaling of the standard tables, for a (B,) tensor of qualities: two (B, 8, 8) tables."""
    q = quality.float().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)[:, None, None]
    luma = ((_LUMA_Q.to(q.device) * scale + 50) / 100).floor().clamp(1, 255)
    chroma = ((_CHROMA_Q.to(q.device) * scale + 50) / 100).floor().clamp(1, 255)
    return luma, chroma


class _RoundST(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def _blocks_quantise(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, H, W) plane (level-shifted, H and W multiples of 8), (B, 8, 8) table -> the plane after 8x8 DCT
    quantisation. The 2-D DCT of every block is one matrix product with kron(D, D) (64 x 64)."""
    b, h, w = plane.shape
    d = _DCT.to(plane.device, plane.dtype)
    k = torch.kron(d, d)  # vec(D @ X @ D.T) = kron(D, D) @ vec(X) for row-major vec
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 64)
    t = table.reshape(b, 1, 64).to(plane.dtype)
    coeffs = _RoundST.apply((blocks @ k.T) / t) * t
    back = coeffs @ k  # k is orthogonal: its inverse is its transpose
    return back.reshape(b, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h, w)


def diff_jpeg(x: torch.Tensor, quality: torch.Tensor | float = 75) -> torch.Tensor:
    """A differentiable JPEG of a [0, 1] batch: RGB -> YCbCr, chroma averaged over 2x2 (4:2:0) and brought back
    with bilinear upsampling, 8x8 block DCT quantised with the standard tables at ``quality`` (a number or a (B,)
    tensor, one per image), back to RGB. Sides that are not multiples of 16 are padded by edge replication (as
    encoders do) and cropped back. Rounding is straight-through; everything else is exact linear maths."""
    _check(x)
    with torch.autocast(device_type=x.device.type, enabled=False):  # the DCT in float32, also under AMP
        return _diff_jpeg(x, quality)


def _diff_jpeg(x: torch.Tensor, quality) -> torch.Tensor:
    b, _, h, w = x.shape
    q = torch.as_tensor(quality, dtype=torch.float32, device=x.device)
    q = q.expand(b) if q.ndim == 0 else q
    ph, pw = (-h) % 16, (-w) % 16
    xf = x.float()
    if ph or pw:
        xf = F.pad(xf, (0, pw, 0, ph), mode="replicate")
    ycc = torch.einsum("ij,bjhw->bihw", _RGB2YCC.to(x.device), xf * 255)
    luma_t, chroma_t = quant_tables(q)
    y = _blocks_quantise(ycc[:, 0] - 128, luma_t) + 128  # JPEG's level shift
    chroma = F.avg_pool2d(ycc[:, 1:], 2)
    cb = _blocks_quantise(chroma[:, 0], chroma_t)  # chroma is centred on 0 already (no +128 offset here)
    cr = _blocks_quantise(chroma[:, 1], chroma_t)
    chroma = F.interpolate(torch.stack([cb, cr], 1), scale_factor=2, mode="bilinear", align_corners=False)
    rgb = torch.einsum("ij,bjhw->bihw", _YCC2RGB.to(x.device), torch.cat([y[:, None], chroma], 1)) / 255
    return rgb[:, :, :h, :w].clamp(0, 1).to(x.dtype)


# -- the training transform (expectation over transformation) -----------------------------------------------


def _apply_to(x: torch.Tensor, on: torch.Tensor, fn) -> torch.Tensor:
    """``fn(x[sel], sel)`` for the images where the CPU mask ``on`` is set, the others unchanged (the choice is
    made on the CPU, so the device is never waited for)."""
    sel = torch.nonzero(on).flatten()
    if len(sel) == 0:
        return x
    if len(sel) == len(x):
        return fn(x, sel)
    d = sel.to(x.device)
    return x.index_put((d,), fn(x[d], sel))


class CaptureAugment(nn.Module):
    """Random capture degradations after the prompt, differentiable and batched on the device. Each image, each
    with probability ``p``: a shift of up to ``max_shift`` pixels (sub-pixel, bilinear, edge pixels repeated), a
    down-and-up resize to a scale in ``resize`` (antialiased bilinear; the batch is split into ``groups`` chunks,
    each with its own scale), a JPEG at a quality in ``quality`` (:func:`diff_jpeg`). Then 8-bit rounding
    (straight-through). Draws on the CPU from ``generator`` or the global RNG."""

    def __init__(self, resize: tuple[float, float] = (0.6, 1.0), quality: tuple[int, int] = (50, 95),
                 max_shift: float = 2.0, p: float = 0.5, groups: int = 4, generator: torch.Generator | None = None):
        super().__init__()
        if not (0 < resize[0] <= resize[1] <= 1) or not (1 <= quality[0] <= quality[1] <= 100):
            raise VPError(f"capture needs 0 < resize <= 1 and 1 <= quality <= 100 (got {resize}, {quality}).")
        if max_shift < 0 or not 0 <= p <= 1 or groups < 1:
            raise VPError(f"capture needs max_shift >= 0, 0 <= p <= 1, groups >= 1 (got {max_shift}, {p}, {groups}).")
        self.resize, self.quality, self.max_shift, self.p, self.groups = resize, quality, max_shift, p, groups
        self.generator = generator

    def _rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x)
        b, _, s, _ = x.shape
        # 1. shift (only the images drawn for it are resampled)
        on = self._rand(b) < self.p
        shift = (self._rand(2 * b).view(b, 2) * 2 - 1) * self.max_shift
        if self.max_shift > 0:  # output pixel u reads input u - shift; edge pixels repeated
            x = _apply_to(x, on, lambda xs, sel: translate(xs, shift[sel].to(xs.device, xs.dtype),
                                                           padding_mode="border", align_corners=False))
        # 2. down-and-up resize, one scale per chunk
        chunks = []
        for part in x.chunk(self.groups):
            if float(self._rand(1)) < self.p:
                lo, hi = self.resize
                n = max(1, round(s * (lo + (hi - lo) * float(self._rand(1)))))
                if n < s:
                    part = F.interpolate(part, size=(n, n), mode="bilinear", antialias=True, align_corners=False)
                    part = F.interpolate(part, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
            chunks.append(part)
        x = torch.cat(chunks)
        # 3. JPEG at a random quality, per image
        on = self._rand(b) < self.p
        lo, hi = self.quality
        quality = torch.randint(lo, hi + 1, (b,), generator=self.generator)
        x = _apply_to(x, on, lambda xs, sel: diff_jpeg(xs, quality[sel]))
        return straight_through_clamp(x)


@dataclass(frozen=True)
class CaptureEntry:
    name: str
    description: str
    factory: Callable[..., nn.Module]  # factory(generator=None) -> module: prompted x -> x


CAPTURE_AUGMENTATIONS: dict[str, CaptureEntry] = {
    "none": CaptureEntry("none", "no capture simulation (the paper)", lambda generator=None: nn.Identity()),
    "capture": CaptureEntry("capture", "after the prompt, each with probability 1/2: shift of up to 2 px, resize "
                            "down to 0.6-1 and back, JPEG at quality 50-95 (differentiable, on the device)",
                            lambda generator=None: CaptureAugment(generator=generator)),
}


def build_capture(name: str, generator: torch.Generator | None = None) -> nn.Module:
    """The capture training transform called ``name`` (applied to prompted images, training only)."""
    if name not in CAPTURE_AUGMENTATIONS:
        raise VPError(f"Unknown capture augmentation {name!r}; choose one of {', '.join(CAPTURE_AUGMENTATIONS)}.")
    return CAPTURE_AUGMENTATIONS[name].factory(generator=generator)
