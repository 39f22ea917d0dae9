"""Looking inside a prompt: the prompt itself, its amplitude, its frequency spectrum, where the prompted model looks,
and training curves. Everything returns plain PIL images / rows / records (heat maps through matplotlib's colour
maps), so the app, the Hub model card and scripts show the same pictures.

Conventions: a prompt's ``delta()`` is a (3, S, S) map in pixel units (the [0, 1] image scale); "display" images
map 0 to mid-grey and the largest absolute value to black / white, and are enlarged with nearest-neighbour
resampling so single pixels stay visible.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import VPError
from .utils import eval_mode

COLORMAP = "magma"  # matplotlib's perceptually uniform dark-to-bright map


def colorize(values: np.ndarray, vmax: float | None = None, vmin: float = 0.0, cmap: str = COLORMAP) -> Image.Image:
    """A 2-D array -> RGB heat map through a matplotlib colour map (``vmin`` dark, ``vmax`` - default the array's
    max - bright)."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 2:
        raise VPError(f"colorize needs a 2-D array, got shape {v.shape}.")
    top = float(vmax) if vmax is not None else float(v.max(initial=0.0))
    t = np.clip((v - vmin) / (top - vmin), 0, 1) if top > vmin else np.zeros_like(v)
    rgb = colormaps[cmap](t)[..., :3] * 255
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def enlarge(img: Image.Image, min_size: int = 256) -> Image.Image:
    """Nearest-neighbour enlargement by a whole factor to at least ``min_size`` pixels."""
    s = max(img.size)
    if s >= min_size:
        return img
    f = -(-min_size // s)
    return img.resize((img.size[0] * f, img.size[1] * f), Image.NEAREST)


def _delta_and_mask(prompter) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt where it sits at evaluation (random patch: its fixed place) and the (3, S, S) bool mask."""
    with torch.no_grad(), eval_mode(prompter):
        delta = prompter.delta().detach().float().cpu()
        mask = prompter.mask().detach().float().cpu().expand_as(delta) > 0
    return delta, mask


def prompt_image(prompter, min_size: int = 256) -> Image.Image:
    """The prompt alone as an RGB picture: 0.5 + delta / (2 max|delta|) on its own pixels, grey elsewhere."""
    return delta_image(*_delta_and_mask(prompter), min_size=min_size)


def delta_image(delta: torch.Tensor, mask: torch.Tensor | None = None, min_size: int = 256) -> Image.Image:
    """A (3, S, S) prompt map -> the picture :func:`prompt_image` draws. Without ``mask``, the prompt's pixels are
    taken to be where it is non-zero (e.g. a snapshot sent by the trainer)."""
    delta = delta.detach().float().cpu()
    mask = (delta != 0).any(0, keepdim=True) if mask is None else mask.cpu().bool()
    mask = mask.expand_as(delta)
    peak = float((delta * mask).abs().max())
    img = torch.full_like(delta, 0.5)
    if peak > 0:
        img = torch.where(mask, (0.5 + delta / (2 * peak)).clamp(0, 1), img)
    arr = (img * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return enlarge(Image.fromarray(arr, "RGB"), min_size)


def amplitude(prompter, min_size: int = 256) -> tuple[Image.Image, list[list]]:
    """Per-pixel amplitude (L2 norm over the three channels) as a heat map, and per-channel statistics over the
    prompt's own pixels: rows ``[channel, mean |delta|, RMS, max |delta|]`` in 8-bit levels (1 level = 1/255)."""
    delta, mask = _delta_and_mask(prompter)
    per_pixel = delta.pow(2).sum(0).sqrt().numpy()
    rows = []
    for name, d, m in zip(("red", "green", "blue"), delta, mask):
        vals = d[m].abs() * 255 if m.any() else torch.zeros(1)
        rows.append([name, round(float(vals.mean()), 2), round(float(vals.pow(2).mean().sqrt()), 2),
                     round(float(vals.max()), 2)])
    return enlarge(colorize(per_pixel), min_size), rows


def spectrum(prompter, min_size: int = 256) -> Image.Image:
    """The prompt's 2-D amplitude spectrum (mean over channels, zero frequency in the centre, log scale stretched
    from its smallest to its largest value)."""
    delta, _ = _delta_and_mask(prompter)
    f = torch.fft.fftshift(torch.fft.fft2(delta), dim=(-2, -1)).abs().mean(0)
    logf = torch.log1p(f * 255).numpy()
    return enlarge(colorize(logf, vmin=float(logf.min())), min_size)


def saliency(model, image, min_size: int = 256) -> tuple[Image.Image, str]:
    """Where the prompted model looks: |d logit / d input| of its top prompted class, for every pixel of the
    prompted image (max over channels, scaled to its 99th percentile), laid over a dimmed copy of that image.
    Returns the overlay and the class it explains. The backbone's weights are not touched (they stay frozen)."""
    with eval_mode(model), torch.enable_grad():
        x = model.preprocess([image])
        px = model.prompt(x).detach().requires_grad_(True)
        logits = model.logits(model.backbone(px), True)
        top = int(logits[0].argmax())
        logits[0, top].backward()
    g = px.grad[0].abs().amax(0).float().cpu().numpy()
    heat = np.asarray(colorize(g, vmax=float(np.percentile(g, 99)) or None), dtype=np.float32)
    base = px[0].detach().float().cpu().mean(0, keepdim=True).expand(3, -1, -1).permute(1, 2, 0).numpy() * 255
    out = (0.35 * base + 0.65 * heat).clip(0, 255).round().astype(np.uint8)
    return enlarge(Image.fromarray(out, "RGB"), min_size), model.class_names[top]


def metadata_rows(meta: dict) -> list[list[str]]:
    """A prompt file's metadata as ``[field, value]`` rows (nested keys joined with dots; long lists shortened)."""
    rows: list[list[str]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and len(value) > 12:
            rows.append([prefix, ", ".join(map(_fmt, value[:12])) + f", ... ({len(value)} in all)"])
        elif isinstance(value, list):
            rows.append([prefix, ", ".join(map(_fmt, value))])
        else:
            rows.append([prefix, _fmt(value)])

    walk("", meta)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def curve_records(history: list[dict]) -> list[dict]:
    """Training history (``Trainer.history`` / events) -> long-format records ``{step, value, series}`` for a line
    plot: training loss, training accuracy, validation accuracy with the prompt, and without it (flat)."""
    out = []
    zero = None
    for h in history:
        kind, step = h.get("kind"), h.get("step", 0)
        if h.get("zero_shot_val_top1") is not None:
            zero = h["zero_shot_val_top1"]
        if kind == "step" and h.get("loss") is not None:
            out.append({"step": step, "value": float(h["loss"]), "series": "train loss"})
            if h.get("train_acc") is not None:
                out.append({"step": step, "value": float(h["train_acc"]), "series": "train accuracy"})
        elif kind == "eval" and h.get("val_top1") is not None:
            out.append({"step": step, "value": float(h["val_top1"]), "series": "val accuracy (prompt)"})
            if zero is not None:
                out.append({"step": step, "value": float(zero), "series": "val accuracy (no prompt)"})
    return out
