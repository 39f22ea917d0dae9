"""Visual prompts: one learnable perturbation in pixel space, added to every input image.

Every prompter takes images in [0, 1] of shape (B, 3, S, S), *before* the backbone's own normalisation, and
returns prompted images of the same shape. By default the result is clamped to [0, 1], so a prompted image
is a real image that can be saved as a PNG and classified again with the same result.

Clamp modes (``clamp``):

``"straight-through"`` (default)
    The output is clamped to [0, 1] and rounded to 8-bit levels (k/255), so it is exactly what a PNG holds;
    the backward pass lets the gradient through as if neither had happened. A plain
    clamp kills the gradient wherever a pixel is pushed out of range, and a zero-initialised frame over a
    black border starts right at that edge and never moves. After each optimiser step the trainer calls
    :meth:`Prompter.project_`, which keeps the prompt in [-1, 1] (beyond that it changes nothing).
``"hard"``
    A plain ``clamp`` (and the same 8-bit rounding): zero gradient outside the range and on its edge (torch's
    clamp passes none at exactly 0 or 1), so a prompt pixel over a pixel that is 0 in every image never moves.
    Yet with Adam it measured *better* than straight-through, for the full-image prompt and for the frame, so
    recipes ``live`` and ``fast_pad`` use it (the measurements: :mod:`visual_prompting.recipes`); straight-through
    stays the library's default (the paper's recipe and ``TrainConfig``).
``"none"``
    The paper's behaviour: no clamping, the prompted image may leave [0, 1].
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import VPError
from .transforms import build_transforms

INITS: dict[str, str] = {"zeros": "no change at the start", "randn": "Gaussian noise, the reference code's"}


@dataclass
class PrompterConfig:
    """Everything needed to rebuild a prompter (stored in the prompt file's metadata)."""

    kind: str = "pad"  # a key of PROMPTERS
    image_size: int = 224
    size: int = 30  # pad width, or patch side
    clamp: str = "straight-through"
    init: str = "zeros"
    init_std: float = 0.0  # std of the "randn" init, in pixel units (the paper's randn in normalised space * std)
    seed: int = 0  # random_patch: where the patch sits at evaluation
    # the prompt's starting pixel value wherever it acts, added to ``init``'s (0: the prompt starts at no change)
    init_offset: float = 0.0
    scale: float | None = None  # scale_pad kinds: the image's scale on the canvas (None: (S - 2*size) / S)
    # learned input transforms applied in this order before the kind acts (:mod:`visual_prompting.transforms`)
    transforms: tuple[str, ...] = ()

    def __post_init__(self):
        self.transforms = tuple(self.transforms)  # a JSON list from a file, or a tuple

    def to_dict(self) -> dict:
        """The config as stored in prompt files. ``scale`` is left out while it is None, ``init_offset`` while it is
        0 and ``transforms`` while it is empty, so every prompter that does not use them writes exactly the metadata
        it wrote before the fields existed (and old files, which lack them, compare equal on resume)."""
        d = asdict(self)
        if d["scale"] is None:
            del d["scale"]
        if d["init_offset"] == 0:
            del d["init_offset"]
        if d["transforms"]:
            d["transforms"] = list(d["transforms"])  # as JSON reads it back
        else:
            del d["transforms"]
        return d


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image."""
    return x.clamp(0.0, 1.0).mul_(255.0).round_().div_(255.0)  # one new tensor (clamp's), the rest in place


class _StraightThrough8bit(torch.autograd.Function):
    """Forward: exactly :func:`to_8bit`. Backward: identity. The same
    gradient as ``x + (to_8bit(x) - x).detach()`` with two fewer image-sized passes and no temporaries kept,
    and the forward output is exactly on the 8-bit levels (that form can be off by a rounding error)."""

    @staticmethod
    def forward(ctx, x):
        return to_8bit(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def straight_through_clamp(x: torch.Tensor) -> torch.Tensor:
    """Forward: clamp to [0, 1] and round to 8-bit levels. Backward: identity."""
    return _StraightThrough8bit.apply(x)


# -- clamp modes: name -> what it does to the prompted image (see the module's docstring) ---------------------

@dataclass(frozen=True)
class ClampMode:
    name: str
    description: str  # one line, for the CLI's help, the app and the model card
    apply: Callable[[torch.Tensor], torch.Tensor]
    projects: bool = True  # keep the prompt in [-1, 1] after each step (useless beyond that when clamped)
    # whether a pixel at or beyond the range's edge still gets a gradient: then it can drift where it changes nothing,
    # and a prompt held in another basis (spectral.DctPrompter) has to be projected back; without it, it stays put
    gradient_beyond_range: bool = True


CLAMP_MODES: dict[str, ClampMode] = {}


def register_clamp(name: str, description: str, projects: bool = True, gradient_beyond_range: bool = True):
    """Decorator: register ``fn(prompted) -> image`` as the clamp mode ``name`` (see :class:`ClampMode`)."""
    def add(fn: Callable[[torch.Tensor], torch.Tensor]):
        CLAMP_MODES[name] = ClampMode(name, description, fn, projects, gradient_beyond_range)
        return fn
    return add


register_clamp("straight-through", "clamped output, gradient passes")(straight_through_clamp)


@register_clamp("hard", "plain clamp", gradient_beyond_range=False)
def hard_clamp(x: torch.Tensor) -> torch.Tensor:
    c = x.clamp(0.0, 1.0)
    return c + (to_8bit(c) - c).detach()


@register_clamp("none", "paper, unclamped", projects=False)
def no_clamp(x: torch.Tensor) -> torch.Tensor:
    return x


class Prompter(nn.Module):
    """Base class: holds the config, the clamp and the helpers shared by every prompt design."""

    kind = "base"
    description = ""  # one line: the CLI's help, the app's choices and the model card read it
    starts_at_offset = True  # whether the kind can start at ``init_offset`` (its prompt is held as pixels, or DCT's)

    @classmethod
    def default_size(cls, image_size: int) -> int:
        """The prompt size when none is given: a quarter of the side (patches); frames override it."""
        return max(1, image_size // 4)

    @classmethod
    def card_text(cls, size: int, image_size: int) -> str:
        """What the prompt is, in words, with its sizes (the model card's text; see :func:`kind_text`)."""
        return f"{cls.kind} ({cls.description}), size {size} at {image_size} px"

    def __init__(self, cfg: PrompterConfig):
        super().__init__()
        if cfg.clamp not in CLAMP_MODES:
            raise VPError(f"Unknown clamp mode {cfg.clamp!r}; choose one of {', '.join(CLAMP_MODES)}.")
        if cfg.init not in INITS:
            raise VPError(f"Unknown prompt init {cfg.init!r}; choose one of {', '.join(INITS)}.")
        if cfg.image_size < 1 or cfg.size < 1:
            raise VPError(f"Prompt size and image size must be positive (got size={cfg.size}, image={cfg.image_size}).")
        if not -1.0 <= cfg.init_offset <= 1.0:  # also refuses NaN
            raise VPError(f"The prompt's start offset must be a number from -1 to 1, not {cfg.init_offset!r}.")
        if cfg.init_offset and not self.starts_at_offset:
            raise VPError(f"The {self.kind} prompt cannot start at an offset (its numbers are not pixels).")
        self.cfg = cfg
        self.transforms = build_transforms(cfg.transforms, cfg.image_size)  # applied first, in order

    # -- parameters ---------------------------------------------------------------------------------------
    def _param(self, *shape: int, pixels: bool = True) -> nn.Parameter:
        """A prompt tensor at its start: ``init``'s draw, plus ``init_offset`` when it holds pixels."""
        t = torch.zeros(*shape)
        if self.cfg.init == "randn":
            t.normal_(0.0, self.cfg.init_std)
        if pixels:
            t += self.cfg.init_offset
        return nn.Parameter(t)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def own_parameters(self) -> list[nn.Parameter]:
        """The kind's own tensors (the additive prompt), without its input transforms'."""
        inside = {id(p) for p in self.transforms.parameters()}
        return [p for p in self.parameters() if id(p) not in inside]

    @torch.no_grad()
    def project_(self) -> None:
        """Keep the prompt where it can still act: [-1, 1] when the output is clamped (each input transform
        keeps its own bounds)."""
        for t in self.transforms:
            t.project_()
        self._project_prompt()

    @torch.no_grad()
    def _project_prompt(self) -> None:
        if CLAMP_MODES[self.cfg.clamp].projects:
            for p in self.own_parameters():
                p.clamp_(-1.0, 1.0)

    # -- applying -----------------------------------------------------------------------------------------
    def _check(self, images: torch.Tensor) -> None:
        s = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != s or images.shape[3] != s:
            raise VPError(
                f"{self.kind} prompt expects images of shape (B, 3, {s}, {s}); got {tuple(images.shape)}."
            )

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return CLAMP_MODES[self.cfg.clamp].apply(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        for t in self.transforms:
            images = t(images)
        return self._finish(self._prompt(images))

    def _prompt(self, images: torch.Tensor) -> torch.Tensor:
        """An additive kind adds :meth:`delta`; the others override this."""
        if not self.additive:  # pragma: no cover - abstract
            raise NotImplementedError
        return images + self.delta().to(images.dtype)

    # -- looking at it ------------------------------------------------------------------------------------
    def delta(self) -> torch.Tensor:
        """The prompt as a (3, S, S) map in pixel units (zero where it does not act)."""
        raise NotImplementedError

    def mask(self) -> torch.Tensor:
        """(1, S, S) float mask of the pixels the prompt owns."""
        raise NotImplementedError

    additive = False  # the output is exactly the clamp of image + delta() (no resizing, no canvas)

    @torch.no_grad()
    def is_identity(self) -> bool:
        """True when the prompt leaves every [0, 1] 8-bit image unchanged (an additive prompt that is all zero):
        then a prompted pass gives exactly the unprompted one."""
        return (self.additive and all(t.is_identity() for t in self.transforms)
                and bool((self.delta() == 0).all()))


PROMPTERS: dict[str, type[Prompter]] = {}


def register_prompter(cls: type[Prompter]) -> type[Prompter]:
    """Class decorator: make a prompter kind known to :func:`create_prompter`, the CLI, the app and the model card.
    The class sets ``kind`` (its name), ``description`` (one line) and, if a quarter of the side is not right,
    the classmethod ``default_size(image_size)``."""
    if not cls.kind or cls.kind == Prompter.kind or not cls.description:
        raise ValueError(f"{cls.__name__} needs its own `kind` and a one-line `description` to be registered.")
    PROMPTERS[cls.kind] = cls
    return cls


def _pad_delta(up, down, left, right, s: int, p: int) -> torch.Tensor:
    centre = torch.zeros(3, s - 2 * p, s - 2 * p, device=up.device, dtype=up.dtype)
    middle = torch.cat([left, centre, right], dim=2)
    return torch.cat([up, middle, down], dim=1)


@register_prompter
class PadPrompter(Prompter):
    """A frame of width p around the image (the paper's default: p=30 at 224, 69,840 numbers)."""

    kind = "pad"
    additive = True
    description = "frame around the image (paper default)"

    @classmethod
    def default_size(cls, image_size: int) -> int:
        """The paper's 30 px at 224 px, scaled to the input size."""
        return max(1, round(30 * image_size / 224))

    @classmethod
    def card_text(cls, size: int, image_size: int) -> str:
        return f"a frame {size} px wide around the {image_size} px image"

    def __init__(self, cfg: PrompterConfig):
        super().__init__(cfg)
        s, p = cfg.image_size, cfg.size
        if 2 * p >= s:
            raise VPError(f"Pad width {p} is too large for {s}px images (needs 2*pad < image size).")
        self.pad_up = self._param(3, p, s)
        self.pad_down = self._param(3, p, s)
        self.pad_left = self._param(3, s - 2 * p, p)
        self.pad_right = self._param(3, s - 2 * p, p)

    def delta(self) -> torch.Tensor:
        return _pad_delta(self.pad_up, self.pad_down, self.pad_left, self.pad_right, self.cfg.image_size, self.cfg.size)

    def mask(self) -> torch.Tensor:
        s, p = self.cfg.image_size, self.cfg.size
        m = torch.ones(1, s, s)
        m[:, p : s - p, p : s - p] = 0
        return m


@register_prompter
class FixedPatchPrompter(Prompter):
    """A p x p patch at the top-left corner."""

    kind = "fixed_patch"
    additive = True
    description = "square at the top-left"

    @classmethod
    def card_text(cls, size: int, image_size: int) -> str:
        return f"a {size} x {size} px patch at the top-left of the {image_size} px image"

    def __init__(self, cfg: PrompterConfig):
        super().__init__(cfg)
        if cfg.size > cfg.image_size:
            raise VPError(f"Patch size {cfg.size} is larger than the {cfg.image_size}px image.")
        self.patch = self._param(3, cfg.size, cfg.size)

    def _location(self) -> tuple[int, int]:
        return 0, 0

    def delta(self) -> torch.Tensor:
        s, p = self.cfg.image_size, self.cfg.size
        y, x = self._location()
        return F.pad(self.patch, (x, s - p - x, y, s - p - y))

    def mask(self) -> torch.Tensor:
        s, p = self.cfg.image_size, self.cfg.size
        y, x = self._location()
        m = torch.zeros(1, s, s)
        m[:, y : y + p, x : x + p] = 1
        return m


@register_prompter
class RandomPatchPrompter(FixedPatchPrompter):
    """A p x p patch at a random place: a new place for every batch while training; at evaluation one fixed
    place drawn from ``cfg.seed``, so results are repeatable."""

    kind = "random_patch"
    description = "square at a random place"

    @classmethod
    def card_text(cls, size: int, image_size: int) -> str:
        return f"a {size} x {size} px patch of the {image_size} px image"

    def __init__(self, cfg: PrompterConfig):
        super().__init__(cfg)
        g = torch.Generator().manual_seed(cfg.seed)
        hi = cfg.image_size - cfg.size + 1
        self.eval_location = tuple(int(v) for v in torch.randint(0, hi, (2,), generator=g))
        self._train_location: tuple[int, int] | None = None

    def _location(self) -> tuple[int, int]:
        if self.training and self._train_location is not None:
            return self._train_location
        return self.eval_location

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            hi = self.cfg.image_size - self.cfg.size + 1
            self._train_location = tuple(int(v) for v in torch.randint(0, hi, (2,)))
        return super().forward(images)


@register_prompter
class ShrinkPadPrompter(PadPrompter):
    """The image is shrunk to S-2p and the learned frame fills the border (no overlap with the image).

    The frame starts grey (0.5, close to the backbone's mean colour, like EVP's zero in normalised space)."""

    kind = "shrink_pad"
    additive = False
    description = "image shrunk inside the frame"

    @classmethod
    def card_text(cls, size: int, image_size: int) -> str:
        return f"the image shrunk to {image_size - 2 * size} px inside a learned {size} px frame"
    base = 0.5

    def _prompt(self, images: torch.Tensor) -> torch.Tensor:
        s, p = self.cfg.image_size, self.cfg.size
        inner = F.interpolate(images, size=(s - 2 * p, s - 2 * p), mode="bilinear", antialias=True, align_corners=False)
        canvas = F.pad(inner, (p, p, p, p), value=0.0)
        frame = (self.base + self.delta()) * self.mask().to(images.device)
        return canvas + frame.to(images.dtype)


def kind_text(kind: str, size: int, image_size: int) -> str:
    """A prompt kind in words with its sizes: the class's own ``card_text`` when its class body writes one (a
    subclass does not inherit its parent's words: they describe the parent), else its kind and description."""
    cls = PROMPTERS.get(kind)
    if cls is None:
        return f"{kind}, size {size}"
    return (cls if "card_text" in vars(cls) else Prompter).card_text.__func__(cls, size, image_size)


def create_prompter(cfg: PrompterConfig | None = None, **overrides) -> Prompter:
    """Build a prompter from a config (or keyword arguments), e.g. ``create_prompter(kind="pad", size=30)``."""
    cfg = PrompterConfig(**{**(cfg.to_dict() if cfg else {}), **overrides})
    if cfg.kind not in PROMPTERS:
        raise VPError(f"Unknown prompter kind {cfg.kind!r}; choose one of {', '.join(PROMPTERS)}.")
    return PROMPTERS[cfg.kind](cfg)


# -- prompt designs from later work (LoR-VP, full-image, AutoVP-style input scale) ----------------------------


class WholeImagePrompter(Prompter):
    """Base of the additive kinds that act on every pixel (3 x S x S in pixels, however they are held): the whole
    image is theirs (:meth:`mask`), and ``size`` is the side unless the kind gives it another meaning."""

    additive = True

    @classmethod
    def default_size(cls, image_size: int) -> int:
        return image_size

    def mask(self) -> torch.Tensor:
        return torch.ones(1, self.cfg.image_size, self.cfg.image_size)


@register_prompter
class LowRankPrompter(WholeImagePrompter):
    """LoR-VP (ICLR 2025): a low-rank prompt ``B @ A`` per channel, added over the whole image; rank r = ``size``
    (2 x 3 x S x r numbers: 5,376 at 224 px and rank 4, 13x fewer than a 30 px frame). LoRA-style start: ``B`` is
    zero (the prompt starts at zero; ``init="randn"`` draws it from N(0, init_std) instead) and ``A`` is uniform in
    +-1/sqrt(S), drawn from ``cfg.seed`` (a zero ``A`` would never get a gradient).

    :meth:`project_` bounds the *prompt*, not the factors: every row of ``B @ A`` whose largest value passes 1 is
    scaled back to 1 by scaling that row of ``B`` (clamping the factors to [-1, 1] would cap the prompt far below
    the range it needs)."""

    kind = "lowrank"
    description = "low-rank prompt B @ A over the whole image (LoR-VP); size = rank"
    starts_at_offset = False  # B @ A: a constant is not what a zero-start LoRA factor pair holds

    @classmethod
    def default_size(cls, image_size: int) -> int:
        return 4

    def __init__(self, cfg: PrompterConfig):
        super().__init__(cfg)
        s, r = cfg.image_size, cfg.size
        if r > s:
            raise VPError(f"Low-rank prompt rank {r} is larger than the {s}px image.")
        self.lr_b = self._param(3, s, r, pixels=False)
        g = torch.Generator().manual_seed(cfg.seed)
        bound = s ** -0.5
        self.lr_a = nn.Parameter((torch.rand(3, r, s, generator=g) * 2 - 1) * bound)

    def delta(self) -> torch.Tensor:
        return torch.bmm(self.lr_b, self.lr_a)

    @torch.no_grad()
    def _project_prompt(self) -> None:
        if not CLAMP_MODES[self.cfg.clamp].projects:
            return
        row_max = torch.bmm(self.lr_b, self.lr_a).abs().amax(dim=2, keepdim=True)  # (3, S, 1)
        self.lr_b.div_(row_max.clamp(min=1.0))


@register_prompter
class FullPrompter(WholeImagePrompter):
    """One additive number per pixel and channel over the whole image (3 x S x S); ``size`` is not used."""

    kind = "full"
    description = "additive prompt over the whole image (3 x S x S numbers)"

    def __init__(self, cfg: PrompterConfig):
        super().__init__(cfg)
        self.full = self._param(3, cfg.image_size, cfg.image_size)

    def delta(self) -> torch.Tensor:
        return self.full


@register_prompter
class ScalePadPrompter(Prompter):
    """AutoVP-style input scale: the image is resized to ``scale`` of the side and centred on a grey (0.5) canvas,
    and a learned prompt over the whole canvas is added on top (the frame around the image and an additive prompt
    over it: 3 x S x S numbers). ``cfg.scale`` fixes the scale; when it is None the scale is (S - 2*size) / S, so
    ``size`` works as shrink_pad's pad width. The image becomes round(scale * S) pixels (antialiased bilinear) at
    offset (S - n) // 2: with the same pad width this is shrink_pad's image, plus the prompt over it."""

    kind = "scale_pad"
    description = "image resized to a chosen scale on a grey canvas, prompt over the whole canvas (AutoVP)"
    base = 0.5
    learn_scale = False

    @classmethod
    def default_size(cls, image_size: int) -> int:
        return max(1, round(30 * image_size / 224))

    def __init__(self, cfg: PrompterConfig):
        super().__init__(cfg)
        s = cfg.image_size
        if cfg.scale is None and 2 * cfg.size >= s:
            raise VPError(f"Pad width {cfg.size} is too large for {s}px images (needs 2*pad < image size).")
        scale = cfg.scale if cfg.scale is not None else (s - 2 * cfg.size) / s
        if not (0.0 < scale <= 1.0):  # also False for NaN
            raise VPError(f"The image scale must be in (0, 1] (got {scale}).")
        self.scale0 = float(scale)
        self.prompt = self._param(3, s, s)

    def image_scale(self) -> float | torch.Tensor:
        return self.scale0

    def delta(self) -> torch.Tensor:
        return self.prompt

    def mask(self) -> torch.Tensor:
        return torch.ones(1, self.cfg.image_size, self.cfg.image_size)

    def image_mask(self) -> torch.Tensor:
        """(1, S, S): 1 where the resized image sits, 0 on the grey frame."""
        s = self.cfg.image_size
        n = max(1, min(s, round(self.scale0 * s)))
        o = (s - n) // 2
        m = torch.zeros(1, s, s)
        m[:, o : o + n, o : o + n] = 1
        return m

    def _prompt(self, images: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        n = max(1, min(s, round(self.scale0 * s)))
        o = (s - n) // 2
        inner = images if n == s else F.interpolate(images, size=(n, n), mode="bilinear", antialias=True,
                                                   align_corners=False)
        canvas = F.pad(inner, (o, s - n - o, o, s - n - o), value=0.0)
        frame = self.base * (1 - self.image_mask().to(images.device))
        return canvas + (frame + self.prompt).to(images.dtype)


@register_prompter
class LearnedScalePadPrompter(ScalePadPrompter):
    """:class:`ScalePadPrompter` with the scale learned too (AutoVP's trainable resize): scale =
    MIN_SCALE + (1 - MIN_SCALE) * sigmoid(``scale_logit``), starting at ``cfg.scale`` (or (S - 2*size) / S). The
    resize is one ``affine_grid`` / ``grid_sample`` (bilinear, no antialiasing), so the loss has a gradient for
    the scale; the image fades into the grey frame over a two-pixel ramp that moves with the scale, so the edge
    has a gradient even over a flat image.
    ``project_`` bounds the prompt only; the scale stays in (MIN_SCALE, 1) by construction."""

    kind = "learned_scale_pad"
    description = "scale_pad with the image scale learned by a differentiable resize (AutoVP)"
    learn_scale = True
    MIN_SCALE = 0.25

    def __init__(self, cfg: PrompterConfig):
        super().__init__(cfg)
        lo = self.MIN_SCALE
        if self.scale0 <= lo:
            raise VPError(f"A learned image scale starts above {lo} (got {self.scale0}).")
        frac = min((self.scale0 - lo) / (1 - lo), 1 - 1e-3)
        self.scale_logit = nn.Parameter(torch.logit(torch.tensor(frac)))

    def image_scale(self) -> torch.Tensor:
        return self.MIN_SCALE + (1 - self.MIN_SCALE) * torch.sigmoid(self.scale_logit)

    def _grid(self, n: int, device, dtype) -> torch.Tensor:
        s = self.cfg.image_size
        inv = 1.0 / self.image_scale().to(device=device, dtype=torch.float32)
        eye = torch.eye(2, 3, device=device)
        theta = eye * torch.stack([inv, inv, torch.ones_like(inv)])  # (2, 3): scale the coordinates by 1/scale
        return F.affine_grid(theta.expand(n, 2, 3), [n, 3, s, s], align_corners=False).to(dtype)

    def _coverage(self, device) -> torch.Tensor:
        """(S, S): the image's weight on each canvas pixel: 1 inside, 0 outside, a linear ramp two pixels wide
        across the edge (the image's pixel coverage smoothed by one pixel), differentiable in the scale: the edge
        pixels give the scale its gradient even where the image is flat. (A one-pixel ramp, the exact coverage,
        has no gradient when the edge falls on a pixel boundary, as it does at an integer pad width.)"""
        s = self.cfg.image_size
        u = (torch.arange(s, device=device, dtype=torch.float32) + 0.5) * (2.0 / s) - 1.0  # pixel centres
        cov = ((self.image_scale().to(device) - u.abs()) * (s / 4) + 0.5).clamp(0.0, 1.0)
        return cov[:, None] * cov[None, :]

    def image_mask(self) -> torch.Tensor:
        with torch.no_grad():
            return self._coverage(self.scale_logit.device)[None].cpu()

    def _prompt(self, images: torch.Tensor) -> torch.Tensor:
        grid = self._grid(len(images), images.device, images.dtype)
        canvas = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        inside = self._coverage(images.device).to(images.dtype)
        return canvas * inside + self.base * (1 - inside) + self.prompt.to(images.dtype)

    @torch.no_grad()
    def _project_prompt(self) -> None:
        if self.cfg.clamp != "none":
            self.prompt.clamp_(-1.0, 1.0)
