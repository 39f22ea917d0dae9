"""Prompt files: ``safetensors`` with the prompt's tensors and JSON metadata. Nothing is ever unpickled.

Layout: tensors ``prompt.<name>`` (the prompter's parameters), ``head.<name>`` for a head with trained numbers
(``fully_map``: ``head.weight``, ``head.bias``) plus, in training checkpoints only, ``state.<name>`` (optimiser
momentum, RNG state) for resuming. The safetensors header's ``__metadata__`` has
``format = "visual-prompting"``, ``format_version`` and ``metadata``: a JSON document with

``prompter``      the prompter config (kind, image_size, size, clamp, init, seed)
``backbone``      ``{"spec": ..., "kind": "clip"|"classifier", "image_size": ..., "mean": ..., "std": ...}``
``class_names``   list of the new task's class names
``head``          ``{"kind": "clip_text", "templates": [...]}`` or
                  ``{"kind": "label_mapping", "method": ..., "mapping": [...], "num_source": ...}`` or
                  ``{"kind": "fully_map", ...the same, "trainable_params": ...}`` (with ``head.*`` tensors)
``dataset``       name of the training data (informative)
``train_config``  the full training config (so the prompt can be re-made)
``metrics``       e.g. ``{"val_top1": ..., "test_top1": ..., "test_top1_no_prompt": ...}``
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import VPError
from .prompters import Prompter, PrompterConfig, create_prompter
from .utils import temporary_beside

FORMAT = "visual-prompting"
FORMAT_VERSION = 1
REQUIRED = ("prompter", "backbone", "class_names", "head")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_TEMPLATES = 100  # a CLIP head's text templates: each class name is encoded once per template
MAX_CLASSES = 10_000  # class names of one prompt
MAX_TEXTS = 100_000  # a CLIP head's class names x templates (ImageNet-1k with CLIP's 80 templates: 80,000)


@dataclass
class PromptFile:
    prompter: Prompter
    meta: dict
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # training state (checkpoints only)
    path: str | None = None
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # a trained head's tensors (fully_map), else empty


def build_metadata(prompter: Prompter, *, backbone: dict, class_names: list[str], head: dict, dataset: str = "",
                   train_config: dict | None = None, metrics: dict | None = None, **extra) -> dict:
    return {"prompter": prompter.cfg.to_dict(), "backbone": backbone, "class_names": list(class_names),
            "head": head, "dataset": dataset, "train_config": train_config or {}, "metrics": metrics or {}, **extra}


def save_prompt(path, prompter: Prompter, meta: dict, state: dict[str, torch.Tensor] | None = None,
                head: dict[str, torch.Tensor] | None = None) -> str:
    """Write a prompt file atomically (a temporary file renamed into place: a crash never leaves half a file).
    ``head``: a trained head's tensors (``Head.state_tensors()``)."""
    path = str(path)
    validate_metadata(meta)
    tensors = {f"prompt.{k}": v.detach().float().cpu().contiguous() for k, v in prompter.named_parameters()}
    for k, v in (head or {}).items():
        tensors[f"head.{k}"] = v.detach().float().cpu().contiguous()
    for k, v in (state or {}).items():
        tensors[f"state.{k}"] = v.detach().cpu().contiguous()
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "metadata": json.dumps(meta)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_beside(path)
    save_file(tensors, tmp, metadata=header)
    os.replace(tmp, path)
    return path


def save_shareable(pf: PromptFile, target) -> str:
    """Write a loaded prompt file to ``target`` as one to share: a training checkpoint without its optimiser / RNG
    state, any other prompt file copied byte for byte (nothing when ``target`` is the file itself)."""
    if pf.state:
        return save_prompt(target, pf.prompter, pf.meta, head=pf.head)
    if os.path.realpath(pf.path) != os.path.realpath(target):
        shutil.copyfile(pf.path, target)
    return str(target)


def read_metadata(path) -> dict:
    """Only the JSON metadata (cheap: reads the header, not the tensors)."""
    return _open(path)[0]


def load_prompt(path) -> PromptFile:
    """Load and validate a prompt file; every problem is a :class:`VPError` that says what is wrong."""
    meta, tensors = _open(path, with_tensors=True)
    for k, t in tensors.items():  # numbers the prompt and head are made of (a training state keeps its own types)
        if not k.startswith("state.") and t.dtype not in FLOAT_DTYPES:
            raise VPError(f"{path}: tensor {k!r} holds {str(t.dtype).removeprefix('torch.')} values; a prompt's "
                          "tensors hold float16, bfloat16, float32 or float64 numbers.")
    cfg = PrompterConfig(**meta["prompter"])
    prompter = create_prompter(cfg)
    expected = dict(prompter.named_parameters())
    got = {k[len("prompt."):]: v for k, v in tensors.items() if k.startswith("prompt.")}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise VPError(f"{path}: tensors do not match a {cfg.kind} prompt (missing: {missing or 'none'}, "
                      f"unexpected: {unexpected or 'none'}).")
    for k, p in expected.items():
        if tuple(got[k].shape) != tuple(p.shape):
            raise VPError(f"{path}: prompt tensor {k!r} has shape {tuple(got[k].shape)}, expected {tuple(p.shape)} "
                          f"for a {cfg.kind} prompt of size {cfg.size} at {cfg.image_size}px.")
        if not torch.isfinite(got[k]).all():
            raise VPError(f"{path}: prompt tensor {k!r} holds NaN or infinite values.")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(got[k])
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    _check_head_tensors(path, meta, head)
    return PromptFile(prompter, meta, state, str(path), head)


def _check_head_tensors(path, meta: dict, head: dict[str, torch.Tensor]) -> None:
    """A fully_map head's ``head.weight`` (classes x source) and ``head.bias`` (classes), finite; other heads none."""
    h = meta["head"]
    if h["kind"] == "bayesian_mapping":  # fitted weights (sources x classes): head.weight, and head.baseline
        want = (h["num_source"], len(meta["class_names"]))
        if "weight" not in head or set(head) - {"weight", "baseline"}:
            raise VPError(f"{path}: a Bayesian label mapping needs head.weight (and may have head.baseline) "
                          f"(found: {', '.join('head.' + k for k in sorted(head)) or 'none'}).")
        for k, t in head.items():
            if tuple(t.shape) != want or not torch.isfinite(t).all() or bool((t < 0).any()):
                raise VPError(f"{path}: head.{k} must be {want[0]} x {want[1]} finite weights of at least 0.")
        return
    if h["kind"] != "fully_map":
        if head:
            raise VPError(f"{path}: a {h['kind']} head has no trained tensors, but the file holds "
                          f"{', '.join('head.' + k for k in sorted(head))}.")
        return
    n = len(meta["class_names"])
    want = {"weight": (n, h["num_source"]), "bias": (n,)}
    if set(head) != set(want):
        raise VPError(f"{path}: a fully_map head needs the tensors head.weight and head.bias "
                      f"(found: {', '.join('head.' + k for k in sorted(head)) or 'none'}).")
    for k, shape in want.items():
        if tuple(head[k].shape) != shape:
            raise VPError(f"{path}: head.{k} has shape {tuple(head[k].shape)}, expected {shape}.")
        if not torch.isfinite(head[k]).all():
            raise VPError(f"{path}: head.{k} holds NaN or infinite values.")


def _open(path, with_tensors: bool = False):
    path = str(path)
    if not os.path.isfile(path):
        raise VPError(f"Prompt file not found: {path}")
    try:
        with safe_open(path, "pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise VPError(f"{path} is not a safetensors prompt file ({e}).") from e
    if header.get("format") != FORMAT:
        raise VPError(f"{path} is a safetensors file but not a visual-prompting prompt (no 'format: {FORMAT}').")
    try:
        version = int(header.get("format_version", "0"))
    except ValueError:
        version = 0
    if version < 1 or version > FORMAT_VERSION:
        raise VPError(f"{path}: prompt format version {header.get('format_version')!r} is not supported "
                      f"(this version reads 1..{FORMAT_VERSION}); upgrade visual-prompting.")
    meta = parse_json(header.get("metadata", ""), f"{path}: the metadata")
    meta = upgrade_metadata(meta)
    validate_metadata(meta, source=path)
    # the prompter config with the defaults of the keys a file left out written in, as the prompter is built
    return {**meta, "prompter": PrompterConfig(**meta["prompter"]).to_dict()}, tensors


MAX_JSON_DEPTH = 32  # metadata this version writes nests 3 deep; a file's JSON nested deeper is refused


def parse_json(text: str, what: str):
    """JSON from a file someone else may have made (``what`` names it in a message: "x.safetensors: the
    metadata"): every way it can be wrong is a :class:`VPError`, never Python's own error. That includes nesting
    deeper than :data:`MAX_JSON_DEPTH` (Python's parser runs out of stack on a few thousand ``[``, and whatever
    walks the document afterwards would too) and numbers too long to convert."""
    try:
        doc = json.loads(text)
    except RecursionError:
        doc = None  # nested thousands deep: refused below, as any document deeper than the limit
        depth = MAX_JSON_DEPTH + 1
    except ValueError as e:  # JSONDecodeError; a number with more digits than Python converts
        raise VPError(f"{what} is not valid JSON ({e}).") from e
    else:
        depth = json_depth(doc, MAX_JSON_DEPTH + 1)
    if depth > MAX_JSON_DEPTH:
        raise VPError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; refused.")
    return doc


def json_depth(doc, stop: int | None = None) -> int:
    """How deep ``doc``'s lists and objects nest (0 for a plain value), walked without recursion; the walk ends
    as soon as the depth reaches ``stop``."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if stop is not None and deepest >= stop:
                break
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def upgrade_metadata(meta):
    """Metadata as this version lays it out, from any earlier version's. One rule so far: the no-prompt baseline
    mapping of a label-mapping head was kept in ``metrics["baseline_mapping"]`` and is the head's own
    ``head["baseline_mapping"]`` now (see :mod:`visual_prompting.checkpoint` for the rules of resuming)."""
    if not isinstance(meta, dict):
        return meta
    head, metrics = meta.get("head"), meta.get("metrics")
    if isinstance(metrics, dict) and "baseline_mapping" in metrics:
        metrics = dict(metrics)
        baseline = metrics.pop("baseline_mapping")
        meta = {**meta, "metrics": metrics}
        if isinstance(head, dict) and baseline and "baseline_mapping" not in head:
            meta["head"] = {**head, "baseline_mapping": baseline}
    return meta


def validate_metadata(meta: dict, source: str = "metadata") -> None:
    if not isinstance(meta, dict):
        raise VPError(f"{source}: metadata must be a JSON object.")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise VPError(f"{source}: metadata is missing {', '.join(missing)}.")
    pc = meta["prompter"]
    if not isinstance(pc, dict) or set(pc) - set(PrompterConfig.__dataclass_fields__):
        raise VPError(f"{source}: 'prompter' must be a prompter config with keys from "
                      f"{', '.join(PrompterConfig.__dataclass_fields__)}.")
    _check_prompter_config(pc, source)
    names = meta["class_names"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise VPError(f"{source}: 'class_names' must be a list of at least two non-empty names.")
    if len(names) > MAX_CLASSES:
        raise VPError(f"{source}: 'class_names' lists {len(names)} classes; at most {MAX_CLASSES} are read.")
    bb = meta["backbone"]
    if not isinstance(bb, dict) or not isinstance(bb.get("spec"), str):
        raise VPError(f"{source}: 'backbone' must say which model the prompt is for ('spec').")
    head = meta["head"]
    kind = head.get("kind") if isinstance(head, dict) else None
    if kind == "clip_text":
        t = head.get("templates")
        if (not isinstance(t, list) or not t or len(t) > MAX_TEMPLATES
                or not all(isinstance(s, str) and _one_slot(s) for s in t)):
            raise VPError(f"{source}: a CLIP head needs 1 to {MAX_TEMPLATES} 'templates', each with one '{{}}' for "
                          "the class name and no other braces (write '{{' or '}}' for a brace).")
        if len(t) * len(names) > MAX_TEXTS:
            raise VPError(f"{source}: a CLIP head of {len(names)} classes x {len(t)} templates is {len(t) * len(names)}"
                          f" texts to encode; at most {MAX_TEXTS} are.")
    elif kind in ("label_mapping", "fully_map"):
        m = head.get("mapping")
        # one source index per class, or (multi-source methods) one equally long list of them per class
        rows = [r if isinstance(r, list) else [r] for r in m] if isinstance(m, list) else None
        if (rows is None or len(rows) != len(names) or len({len(r) for r in rows}) != 1 or not rows[0]
                or not all(_is_int(i) and 0 <= i < MAX_SOURCE_CLASSES for r in rows for i in r)):
            raise VPError(f"{source}: 'mapping' must list one source-class index (or one list of them) per class "
                          f"({len(names)}).")
        flat = [i for r in rows for i in r]
        if len(set(flat)) != len(flat):
            raise VPError(f"{source}: 'mapping' maps two classes onto the same source class.")
        if not isinstance(head.get("method", ""), str):
            raise VPError(f"{source}: the head's 'method' must name a label mapping, not {head['method']!r:.80}.")
        ns = head.get("num_source")
        if ns is not None and (not _is_int(ns) or max(flat) >= ns):
            raise VPError(f"{source}: 'mapping' points outside the {ns!r} source classes ('num_source').")
        base = head.get("baseline_mapping")
        if base is not None and ns is None:
            raise VPError(f"{source}: a 'baseline_mapping' needs the number of source classes ('num_source').")
        if base is not None:  # the no-prompt mapping: laid out as 'mapping', within the same source classes
            brows = [r if isinstance(r, list) else [r] for r in base] if isinstance(base, list) else None
            if (brows is None or len(brows) != len(rows) or any(len(b) != len(rows[0]) for b in brows)
                    or not all(_is_int(i) and i >= 0 and (ns is None or i < ns) for b in brows for i in b)
                    or any(isinstance(b, list) != isinstance(r, list) for b, r in zip(base, m))):
                raise VPError(f"{source}: 'baseline_mapping' must be laid out as 'mapping' (one source-class index, "
                              "or one list of them, per class) within the source classes.")
        if kind == "fully_map":
            ns = head.get("num_source")
            if (not isinstance(ns, int) or isinstance(ns, bool) or max(flat) >= ns
                    or not all(isinstance(r, int) for r in m)):
                raise VPError(f"{source}: a fully_map head needs an integer 'num_source' above every index of its "
                              "one-to-one starting 'mapping'.")
    elif kind == "bayesian_mapping":
        from .heads import MAPPINGS

        method, ns = head.get("method"), head.get("num_source")
        if not (isinstance(method, str) and method in MAPPINGS and MAPPINGS[method].bayesian):
            raise VPError(f"{source}: a Bayesian label mapping's 'method' must be one of "
                          f"{', '.join(k for k, m in MAPPINGS.items() if m.bayesian)}, not {method!r:.80}.")
        if not (_is_int(ns) and 0 < ns <= MAX_SOURCE_CLASSES) or not _is_number(head.get("lambda", 1.0)):
            raise VPError(f"{source}: a Bayesian label mapping needs a whole 'num_source' from 1 to "
                          f"{MAX_SOURCE_CLASSES} and a number 'lambda'.")
    else:
        raise VPError(f"{source}: 'head.kind' must be {', '.join(map(repr, HEAD_KINDS))}, not {kind!r:.80}.")
    family = _family(bb["spec"])
    if (kind == "clip_text") != (family == "clip") and family is not None:
        raise VPError(f"{source}: a {kind} head does not fit the backbone {bb['spec']!r:.80} (CLIP text heads go with "
                      "clip: backbones, label mappings with classifiers).")
    _check_extras(meta, source)


HEAD_KINDS = ("clip_text", "label_mapping", "fully_map", "bayesian_mapping")


def _family(spec: str) -> str | None:
    """The backbone family a spec names (``clip``, ``effnet``, ...); None when no family of this version reads it
    (the model's loader then says so)."""
    from .backbones import parse_spec

    try:
        return parse_spec(spec).family
    except VPError:
        return None


def _one_slot(template: str) -> bool:
    """Whether ``template.format(name)`` fills exactly one plain ``{}`` and reads nothing else (``{0}``, ``{x}``,
    ``{0.__class__}``, ``{:>9}``, ``{!r}`` are refused; ``{{`` and ``}}`` are literal braces)."""
    import string

    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError:  # a lone brace
        return False
    return fields == [("", "", None)]  # no format spec either: '{:>999999999}' would pad a name to a gigabyte


# what the fronts read besides the fields above, checked by type when present (a hostile file could put a list where
# a name goes, a text where a number goes)
EXTRAS = {"dataset": str, "train_config": dict, "metrics": dict, "distributed": dict}
METRIC_COUNTS = ("step", "steps", "test_n", "history_len")
METRIC_NUMBERS = ("val_top1", "best_val_top1", "zero_shot_val_top1", "test_top1", "test_top5", "test_top1_no_prompt",
                  "test_top5_no_prompt")


def _check_extras(meta: dict, source: str) -> None:
    for key, kind in EXTRAS.items():
        if key in meta and not isinstance(meta[key], kind):
            raise VPError(f"{source}: {key!r} must be {'a text' if kind is str else 'a JSON object'}, not "
                          f"{meta[key]!r:.80}.")
    metrics = meta.get("metrics", {})
    for key in METRIC_COUNTS + METRIC_NUMBERS:
        value = metrics.get(key)
        if value is not None and not (_is_int(value) if key in METRIC_COUNTS else _is_number(value, finite=False)):
            raise VPError(f"{source}: metrics.{key} must be {'a whole number' if key in METRIC_COUNTS else 'a number'}"
                          f", not {value!r:.80}.")
    if not _is_int(meta.get("distributed", {}).get("world_size", 1)):
        raise VPError(f"{source}: distributed.world_size must be a whole number.")


MAX_IMAGE_SIZE = 2048  # no backbone takes larger inputs; a prompt file that claims more is refused before allocating
MAX_SOURCE_CLASSES = 2**31  # a label mapping's indices: source classes of a backbone (ImageNet-21k has 21,841)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x, finite: bool = True) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and (not finite or math.isfinite(x))


def _check_prompter_config(pc: dict, source: str) -> None:
    """The prompter config's values, by type and range, before anything is built from them (a hostile file could
    ask for a 10^9 px prompt, or a string where a number goes)."""
    from .prompters import CLAMP_MODES, INITS, PROMPTERS
    from .transforms import TRANSFORMS, check_stack

    if not isinstance(pc.get("kind"), str) or pc["kind"] not in PROMPTERS:
        raise VPError(f"{source}: unknown prompter kind {pc.get('kind')!r:.80}; this version knows "
                      f"{', '.join(PROMPTERS)}.")
    image_size, size = pc.get("image_size", 224), pc.get("size", 30)
    if not _is_int(image_size) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise VPError(f"{source}: the prompter's image_size must be a whole number of pixels from 1 to "
                      f"{MAX_IMAGE_SIZE}, not {image_size!r}.")
    if not _is_int(size) or not 1 <= size <= image_size:
        raise VPError(f"{source}: the prompter's size must be a whole number from 1 to its image_size "
                      f"({image_size}), not {size!r}.")
    clamp, init = pc.get("clamp", "straight-through"), pc.get("init", "zeros")
    if not isinstance(clamp, str) or not isinstance(init, str) or clamp not in CLAMP_MODES or init not in INITS:
        raise VPError(f"{source}: the prompter's clamp ({clamp!r:.80}) or init ({init!r:.80}) is not one "
                      f"this version knows ({', '.join(CLAMP_MODES)}; {', '.join(INITS)}).")
    seed = pc.get("seed", 0)
    if not _is_number(pc.get("init_std", 0.0)) or not _is_int(seed) or not -(2**63) <= seed < 2**64:
        raise VPError(f"{source}: the prompter's init_std must be a number and its seed a whole number "
                      "(64 bits).")
    offset = pc.get("init_offset", 0.0)
    if not _is_number(offset) or not -1 <= offset <= 1:
        raise VPError(f"{source}: the prompter's init_offset must be a number from -1 to 1, not {offset!r:.80}.")
    scale = pc.get("scale")
    if scale is not None and (not _is_number(scale) or not 0 < scale <= 1):
        raise VPError(f"{source}: the prompter's scale must be a number above 0 and at most 1, not {scale!r}.")
    stack = pc.get("transforms", [])
    if not isinstance(stack, list) or len(stack) > len(TRANSFORMS) or not all(isinstance(k, str) for k in stack):
        raise VPError(f"{source}: the prompter's transforms must be a list of distinct kinds of "
                      f"{', '.join(TRANSFORMS)}, not {stack!r:.120}.")
    try:  # distinct, known kinds: the rule the prompter is built by
        check_stack(stack)
    except VPError as e:
        raise VPError(f"{source}: {e}") from None


def check_backbone(meta: dict, spec: str) -> str | None:
    """A warning text when a prompt is used with a backbone other than the one it was trained for."""
    want = meta["backbone"]["spec"]
    if want != spec:
        return (f"This prompt was trained for {want}; applied to {spec} it is just noise to that model, "
                "and its predictions mean nothing.")
    return None
