"""Output transformations: from what the backbone gives to logits over the new task's classes.

* :class:`ClipTextHead` - CLIP's zero-shot classifier: class names go into text templates ("This is a photo
  of a {}" in the paper, or an ensemble); text features are computed once, at construction, and cached.
* :class:`LabelMappingHead` - for vision-only models: each new class reads one source (ImageNet) logit.
  The mapping is the paper's hard-coded first-k, or is learned from how often each source class is
  predicted for each target class (frequency mapping, FLM); iterative mapping (ILM) recomputes it every
  epoch with the current prompt. The head owns all of it: the method (:data:`MAPPINGS`), fitting itself from
  prediction counts (:meth:`LabelMappingHead.fit`) and the no-prompt baseline mapping.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, ClipBackbone
from .classnames import CLIP_TEMPLATES, PAPER_TEMPLATE
from .errors import VPError


# -- registries: text template sets (CLIP) and label-mapping methods (vision-only models) -------------------------

@dataclass(frozen=True)
class TemplateSet:
    name: str
    description: str
    templates: Callable[[str], list[str]]  # canonical dataset name -> templates


TEMPLATE_SETS: dict[str, TemplateSet] = {
    "paper": TemplateSet("paper", f"the paper's '{PAPER_TEMPLATE}'", lambda dataset: [PAPER_TEMPLATE]),
    "ensemble": TemplateSet("ensemble", "CLIP's ensemble for the dataset",
                            lambda dataset: CLIP_TEMPLATES.get(dataset, [PAPER_TEMPLATE])),
}


def templates_for(name: str, dataset_key: str) -> list[str]:
    if name not in TEMPLATE_SETS:
        raise VPError(f"Unknown templates {name!r}; use {' or '.join(repr(k) for k in TEMPLATE_SETS)}.")
    return TEMPLATE_SETS[name].templates(dataset_key)


@dataclass(frozen=True)
class MappingMethod:
    name: str
    description: str  # one line: CLI help, the app, the model card
    fits_from_data: bool = False  # fitted from prediction counts (with the prompt) before training
    refit_each_epoch: bool = False  # and again at every epoch
    sources: int = 1  # source classes per new class (their logits are averaged)
    trains: bool = False  # a trained output layer (:class:`FullyMapHead`): not an input-only method
    bayesian: bool = False  # every class a weighted sum of all source logits (:class:`BayesianMappingHead`)
    top_k_ratio: float = 0.0  # BLM+: counts are the top-k softmax probabilities, k = ratio x the new classes
    contrast: bool = False  # sources picked by mean-logit contrast (:func:`contrast_scores`), not by top-1 counts


MAPPINGS: dict[str, MappingMethod] = {}


def register_mapping(method: MappingMethod) -> MappingMethod:
    MAPPINGS[method.name] = method
    return method


register_mapping(MappingMethod("first_k", "paper"))
register_mapping(MappingMethod("frequency", "once, from data", fits_from_data=True))
register_mapping(MappingMethod("iterative", "recomputed every epoch", fits_from_data=True, refit_each_epoch=True))
register_mapping(MappingMethod("multi_frequency", "each class reads the mean of 10 source logits, once, from data",
                               fits_from_data=True, sources=10))
register_mapping(MappingMethod("contrast", "each class reads the mean of up to 100 source logits, those whose mean on the "
                               "class's images most exceeds their mean on the other classes' (no two classes share "
                               "one), once, from data", fits_from_data=True, sources=100, contrast=True))
register_mapping(MappingMethod("fully_map", "a trained linear layer from all source logits, started from the "
                               "frequency mapping (AutoVP's FullyMap; trains 10k+ numbers besides the prompt, so "
                               "not input-only)", fits_from_data=True, trains=True))
register_mapping(MappingMethod("blm", "Bayesian-guided (BLM): each class a weighted sum of every source logit, the "
                               "weights P(class | source) from the prompted top-1 predictions, recomputed every epoch",
                               fits_from_data=True, refit_each_epoch=True, bayesian=True))
register_mapping(MappingMethod("blm_plus", "BLM+: BLM counting the top-k softmax probabilities (k = 15% of the classes, "
                               "at least 1) instead of the top-1", fits_from_data=True, refit_each_epoch=True,
                               bayesian=True, top_k_ratio=0.15))


# -- heads ------------------------------------------------------------------------------------------------------

class Head(nn.Module):
    """What turns backbone outputs into class logits. ``forward(outputs, use_prompt)``: a head may answer
    differently for unprompted inputs (its no-prompt baseline). Heads that learn from data say so with
    ``fits_from_data`` / ``needs_refit_each_epoch`` and take prediction counts in :meth:`fit`."""

    kind = "base"
    fits_from_data = False  # fit(counts) with the prompt before training
    needs_refit_each_epoch = False
    needs_counts = False  # wants prediction counts at all (e.g. for its baseline)

    def fit(self, counts: torch.Tensor, baseline: bool = False) -> None:
        """Fit from a (num_source, num_target) count matrix; ``baseline``: counts taken without a prompt."""

    def summary(self) -> str:
        """What the head maps to, in a line (a run's "label mapping recomputed" event)."""
        return self.kind

    def count(self, source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> torch.Tensor:
        """What :meth:`fit` takes, for one batch (summed over batches): how often each source class is the top
        prediction for each target class."""
        return prediction_counts(source_logits, labels, num_target)

    @property
    def counting(self) -> str:
        """How :meth:`count` counts (batches counted one way are not counts of another)."""
        return "top1"

    def baseline_indices(self) -> list[int] | None:
        return None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the trainer optimises besides the prompt (none: every head but :class:`FullyMapHead`)."""
        return []

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The trained tensors a prompt file stores (as ``head.<name>``); none for a head with nothing trained."""
        return {}

    def restore(self, head_meta: dict, tensors: dict | None = None) -> None:
        """Take back what :meth:`describe` and :meth:`state_tensors` stored (a resumed run, the best prompt)."""

    def describe(self) -> dict:
        return {"kind": self.kind}

    def without_prompt(self) -> dict:
        """What decides this head's answers for unprompted inputs (a key of
        :class:`~visual_prompting.baselines.BaselineCache`)."""
        return self.describe()

    @staticmethod
    def text(meta: dict) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


HEADS: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    HEADS[cls.kind] = cls
    return cls


def head_text(meta: dict) -> str:
    """A head's stored metadata in words (the CLI's ``info`` and the model card)."""
    cls = HEADS.get(meta.get("kind"))
    return cls.text(meta) if cls else str(meta.get("kind", "?"))


@register_head
class ClipTextHead(Head):
    kind = "clip_text"

    def __init__(self, backbone: ClipBackbone, class_names: list[str], templates: list[str]):
        super().__init__()
        if not templates or any("{}" not in t for t in templates):
            raise VPError("Every text template needs a '{}' where the class name goes.")
        self.class_names = list(class_names)
        self.templates = list(templates)
        self.register_buffer("text_features", self._encode(backbone), persistent=False)
        self.register_buffer("logit_scale", backbone.logit_scale.detach().clone().float(), persistent=False)

    @torch.no_grad()
    def _encode(self, backbone: ClipBackbone) -> torch.Tensor:
        per_class = []
        for name in self.class_names:
            f = F.normalize(backbone.encode_text([t.format(name) for t in self.templates]).float(), dim=-1)
            per_class.append(F.normalize(f.mean(0), dim=-1))  # CLIP's template ensemble
        return torch.stack(per_class)

    def forward(self, image_features: torch.Tensor, use_prompt: bool = True) -> torch.Tensor:
        f = F.normalize(image_features.float(), dim=-1)
        return self.logit_scale * f @ self.text_features.t()

    def describe(self) -> dict:
        return {"kind": self.kind, "templates": self.templates}

    def without_prompt(self) -> dict:
        return {"kind": self.kind, "templates": self.templates, "class_names": self.class_names}

    @staticmethod
    def text(meta: dict) -> str:
        t = meta.get("templates") or ["?"]
        return f"CLIP text classifier ({len(t)} template(s), e.g. `{t[0]}`)"


@register_head
class LabelMappingHead(Head):
    """Each new class reads one source logit, ``mapping[i]``, or (a 2-D mapping, ``multi_frequency``) the mean of
    the source logits ``mapping[i, :]``. Nothing in it is trained: the mapping is fitted from counts. The head owns
    its method (:data:`MAPPINGS`), fits itself from prediction counts (:meth:`fit`), and keeps the mapping found
    *without* a prompt as its no-prompt baseline: unprompted inputs read that one, so "no prompt" is the fair
    comparison, not the prompt's mapping."""

    kind = "label_mapping"
    needs_counts = True

    def __init__(self, mapping: Iterable[int], num_source: int, method: str = "first_k"):
        super().__init__()
        mapping = torch.as_tensor(list(mapping), dtype=torch.long)
        if mapping.ndim not in (1, 2) or mapping.numel() == 0:
            raise VPError("A label mapping is a non-empty list of source-class indices (or of lists of them), one "
                          "per new class.")
        if int(mapping.min()) < 0 or int(mapping.max()) >= num_source:
            raise VPError(f"Label mapping points outside the {num_source} source classes.")
        if method not in MAPPINGS:
            raise VPError(f"Unknown label mapping {method!r}; choose one of {', '.join(MAPPINGS)}.")
        self.method = method
        self.num_source = num_source
        self.register_buffer("mapping", mapping, persistent=False)
        self.baseline: torch.Tensor | None = None  # the mapping found without a prompt, when known

    @property
    def fits_from_data(self) -> bool:
        return MAPPINGS[self.method].fits_from_data

    @property
    def needs_refit_each_epoch(self) -> bool:
        return MAPPINGS[self.method].refit_each_epoch

    def _indices(self, mapping, what: str) -> torch.Tensor:
        """``mapping`` as indices on this head's device, once they are known to be source classes of its backbone
        (a prompt file's ``num_source`` may claim more classes than the backbone it is loaded on has)."""
        t = torch.as_tensor(mapping).to(self.mapping.device, torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_source):
            raise VPError(f"{what} points outside the backbone's {self.num_source} source classes.")
        return t

    def set_mapping(self, mapping) -> None:
        self.mapping = self._indices(mapping, "Label mapping")

    def set_baseline(self, mapping) -> None:
        self.baseline = None if mapping is None else self._indices(mapping, "The no-prompt (baseline) label mapping")

    @property
    def counting(self) -> str:
        return "logit_sums" if MAPPINGS[self.method].contrast else "top1"

    def count(self, source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> torch.Tensor:
        """Top-1 counts (:func:`prediction_counts`), or for a ``contrast`` mapping each class's logit sums
        (:func:`logit_sums`)."""
        if MAPPINGS[self.method].contrast:
            return logit_sums(source_logits, labels, num_target)
        return prediction_counts(source_logits, labels, num_target)

    def fit(self, counts: torch.Tensor, baseline: bool = False) -> None:
        """Greedy frequency mapping (``sources`` rounds of it for a multi-source method), on the top-1 counts or,
        for a ``contrast`` mapping, on :func:`contrast_scores` of the logit sums; the baseline is fitted by the same
        method without the prompt, so "no prompt" gets the same kind of mapping."""
        method = MAPPINGS[self.method]
        scores = contrast_scores(counts) if method.contrast else counts
        k = method.sources
        fitted = frequency_mapping(scores) if k == 1 else multi_frequency_mapping(scores, k)
        (self.set_baseline if baseline else self.set_mapping)(fitted)

    def baseline_indices(self) -> list[int] | None:
        return None if self.baseline is None else self.baseline.tolist()

    def summary(self) -> str:
        return str(self.mapping.tolist())

    def restore(self, head_meta: dict, tensors: dict | None = None) -> None:
        self.set_mapping(head_meta["mapping"])
        if head_meta.get("baseline_mapping"):
            self.set_baseline(head_meta["baseline_mapping"])

    def forward(self, source_logits: torch.Tensor, use_prompt: bool = True) -> torch.Tensor:
        mapping = self.mapping if use_prompt or self.baseline is None else self.baseline.to(source_logits.device)
        if mapping.ndim == 2:
            return source_logits[:, mapping].float().mean(-1)
        return source_logits[:, mapping].float()

    def without_prompt(self) -> dict:
        """Unprompted inputs read the baseline mapping (the prompt's own until one is fitted)."""
        return {"kind": "label_mapping", "reads": (self.baseline if self.baseline is not None else self.mapping).tolist()}

    def describe(self) -> dict:
        """The method and mapping, and (once fitted) the no-prompt baseline mapping under its own key."""
        d = {"kind": self.kind, "method": self.method, "mapping": self.mapping.tolist(), "num_source": self.num_source}
        if self.baseline is not None:
            d["baseline_mapping"] = self.baseline.tolist()
        return d

    @staticmethod
    def text(meta: dict) -> str:
        return f"label mapping `{meta.get('method', '')}` onto the backbone's {meta.get('num_source', '?')} classes"


@register_head
class FullyMapHead(LabelMappingHead):
    """AutoVP's "FullyMap": a trained linear layer from every source logit to the new classes, trained together with
    the prompt. It starts as the frequency mapping (weight 1 from each class's fitted source logit, 0 elsewhere,
    zero bias), so training starts from that mapping's accuracy, not from chance. Its no-prompt baseline stays the
    frequency mapping found without a prompt (nothing is trained for unprompted inputs).

    *Not* input-only: it trains ``num_source * num_classes + num_classes`` numbers besides the prompt (10,010 for
    ImageNet -> 10 classes), so results with it are reported apart, with :meth:`trainable_params`. Its tensors are
    ``head.weight`` / ``head.bias`` in prompt files (:meth:`state_tensors`)."""

    kind = "fully_map"
    input_only = False

    def __init__(self, mapping: Iterable[int], num_source: int, method: str = "fully_map"):
        super().__init__(mapping, num_source, method)
        if self.mapping.ndim != 1:
            raise VPError("A fully connected mapping starts from a one-to-one mapping (one source index per class).")
        self.linear = nn.Linear(num_source, len(self.mapping)).to(self.mapping.device)
        self._init_from_mapping()

    @torch.no_grad()
    def _init_from_mapping(self) -> None:
        self.linear.weight.zero_()
        self.linear.weight[torch.arange(len(self.mapping)), self.mapping] = 1.0
        self.linear.bias.zero_()

    def fit(self, counts: torch.Tensor, baseline: bool = False) -> None:
        """The frequency mapping; with the prompt it also restarts the layer from it (before training)."""
        (self.set_baseline if baseline else self.set_mapping)(frequency_mapping(counts))
        if not baseline:
            self._init_from_mapping()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.linear.parameters())

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.linear.parameters())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.linear.named_parameters()}

    def restore(self, head_meta: dict, tensors: dict | None = None) -> None:
        super().restore(head_meta)
        if tensors is None:
            return
        with torch.no_grad():
            for k, p in self.linear.named_parameters():
                t = tensors.get(k)
                if t is None or tuple(t.shape) != tuple(p.shape):
                    raise VPError(f"The fully_map head needs a tensor 'head.{k}' of shape {tuple(p.shape)} "
                                  f"(got {None if t is None else tuple(t.shape)}).")
                p.copy_(t.to(p.device))

    def without_prompt(self) -> dict:
        if self.baseline is None:  # unprompted inputs go through this run's own layer: nothing to share
            return {"kind": self.kind, "layer": id(self.linear)}
        return super().without_prompt()

    def forward(self, source_logits: torch.Tensor, use_prompt: bool = True) -> torch.Tensor:
        if not use_prompt and self.baseline is not None:
            return source_logits[:, self.baseline.to(source_logits.device)].float()
        return self.linear(source_logits.float())

    def describe(self) -> dict:
        return {**super().describe(), "trainable_params": self.trainable_params()}

    @staticmethod
    def text(meta: dict) -> str:
        n = meta.get("trainable_params")
        return (f"a trained linear layer (fully_map, {f'{n:,}' if isinstance(n, int) else '?'} numbers) from the "
                f"backbone's {meta.get('num_source', '?')} class logits")


@register_head
class BayesianMappingHead(Head):
    """BLM and BLM+ (Bayesian-guided label mapping, Cai et al., NeurIPS 2024): every new class reads a weighted sum of
    *all* the source logits, ``logits = source_logits @ w``. From ``N[s, t]``, how the backbone's predictions on the
    mapping images co-occur with the new labels, ``w[s, t] = N[s, t] / (sum_t' N[s, t'] + lambda)`` (an estimate of
    P(t | s), Laplace-smoothed, lambda = 1), then each column ``t`` is normalised over the sources. ``N`` counts the
    top-1 predictions (BLM) or sums the top-k softmax probabilities, k = 15% of the new classes and at least 1 (BLM+;
    ``top_k_ratio`` 0.15 and lambda 1 as in tmlr-group/BayesianLM's configuration). Fitted with the prompt before
    training and again every epoch (as iterative mapping); its no-prompt baseline is the same estimate without the
    prompt. Nothing in it is trained: the prompt stays the only trained thing. Its weights are fitted numbers, stored
    in a prompt file as ``head.weight`` and ``head.baseline`` (:meth:`state_tensors`)."""

    kind = "bayesian_mapping"
    needs_counts = True
    fits_from_data = True
    needs_refit_each_epoch = True

    def __init__(self, num_source: int, num_target: int, method: str = "blm", lam: float = 1.0):
        super().__init__()
        if method not in MAPPINGS or not MAPPINGS[method].bayesian:
            raise VPError(f"{method!r} is not a Bayesian label mapping; choose one of "
                          f"{', '.join(k for k, m in MAPPINGS.items() if m.bayesian)}.")
        self.method, self.num_source, self.num_target, self.lam = method, int(num_source), int(num_target), float(lam)
        self.register_buffer("weight", torch.full((num_source, num_target), 1.0 / num_source), persistent=False)
        self.baseline: torch.Tensor | None = None  # the weights found without a prompt, when known

    @property
    def top_k(self) -> int:
        ratio = MAPPINGS[self.method].top_k_ratio
        return max(1, int(ratio * self.num_target)) if ratio else 0

    @property
    def counting(self) -> str:
        return f"top{self.top_k}_probabilities" if self.top_k else "top1"

    def count(self, source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> torch.Tensor:
        if not self.top_k:
            return prediction_counts(source_logits, labels, num_target)
        probs = source_logits.float().softmax(dim=1)
        top = probs.topk(self.top_k, dim=1)
        kept = torch.zeros_like(probs).scatter_(1, top.indices, top.values).double().cpu()
        return torch.zeros(num_target, probs.shape[1], dtype=torch.float64).index_add_(0, labels.cpu().long(), kept).t()

    def fit(self, counts: torch.Tensor, baseline: bool = False) -> None:
        w = blm_weights(counts, self.lam).to(self.weight.device)
        if baseline:
            self.baseline = w
        else:
            self.weight = w

    def forward(self, source_logits: torch.Tensor, use_prompt: bool = True) -> torch.Tensor:
        w = self.weight if use_prompt or self.baseline is None else self.baseline
        return source_logits.float() @ w.to(source_logits.device)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight.detach().float().cpu().contiguous()}
        if self.baseline is not None:
            out["baseline"] = self.baseline.detach().float().cpu().contiguous()
        return out

    def restore(self, head_meta: dict, tensors: dict | None = None) -> None:
        for k, t in (tensors or {}).items():
            if k in ("weight", "baseline"):
                if tuple(t.shape) != (self.num_source, self.num_target):
                    raise VPError(f"The Bayesian label mapping needs head.{k} of shape "
                                  f"{(self.num_source, self.num_target)}, not {tuple(t.shape)}.")
                setattr(self, k, t.float().to(self.weight.device))

    def describe(self) -> dict:
        return {"kind": self.kind, "method": self.method, "num_source": self.num_source, "lambda": self.lam,
                "top_k": self.top_k}

    def summary(self) -> str:
        return f"{self.method} weights; the heaviest source per class {self.weight.argmax(dim=0).tolist()}"

    def without_prompt(self) -> dict:
        w = self.baseline if self.baseline is not None else self.weight
        digest = hashlib.blake2b(w.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        return {"kind": self.kind, "reads": digest}

    @staticmethod
    def text(meta: dict) -> str:
        plus = meta.get("method") == "blm_plus"
        return (f"Bayesian-guided label mapping ({'BLM+, top-' + str(meta.get('top_k', '?')) if plus else 'BLM'}): "
                f"every class a weighted sum of the backbone's {meta.get('num_source', '?')} class logits")


def blm_weights(counts: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """BLM's weights from a (num_source, num_target) count matrix: ``counts[s, t] / (sum_t counts[s, t] + lam)``,
    each column then normalised to sum 1 over the sources (a class with no counts at all reads every source
    equally)."""
    c = counts.double()
    w = c / (c.sum(dim=1, keepdim=True) + lam)
    col = w.sum(dim=0, keepdim=True)
    w = torch.where(col > 0, w / col.clamp_min(1e-300), torch.full_like(w, 1.0 / w.shape[0]))
    return w.float()


def first_k_mapping(num_target: int, num_source: int) -> torch.Tensor:
    """The paper's mapping: new class i reads source logit i."""
    if num_target > num_source:
        raise VPError(f"{num_target} classes cannot be mapped onto {num_source} source classes.")
    return torch.arange(num_target)


def frequency_mapping(counts: torch.Tensor) -> torch.Tensor:
    """Greedy one-to-one mapping from a (num_source, num_target) count matrix (ILM-VP's rule).

    Repeatedly take the largest count, map that target to that source, and strike out both the row and the
    column, until every target class has its own source class. Any real scores work (counts, or
    :func:`contrast_scores`, which can be negative): struck entries become -inf."""
    num_source, num_target = counts.shape
    if num_target > num_source:
        raise VPError(f"{num_target} classes cannot be mapped onto {num_source} source classes.")
    c = counts.double().clone()
    mapping = torch.empty((num_target,), dtype=torch.long)
    for _ in range(num_target):
        idx = int(torch.argmax(c))
        s, t = divmod(idx, num_target)
        mapping[t] = s
        c[s, :] = float("-inf")
        c[:, t] = float("-inf")
    return mapping


def multi_frequency_mapping(counts: torch.Tensor, k: int) -> torch.Tensor:
    """(num_target, k') mapping: ``k`` rounds of :func:`frequency_mapping`, each round giving every target class one
    more source class not used before (k' = min(k, num_source // num_target))."""
    num_source, num_target = counts.shape
    rounds = min(k, num_source // max(1, num_target))
    if rounds < 1:
        raise VPError(f"{num_target} classes cannot be mapped onto {num_source} source classes.")
    c = counts.double().clone()
    cols = []
    for _ in range(rounds):
        m = frequency_mapping(c)
        cols.append(m)
        c[m, :] = float("-inf")  # those source classes are taken
    return torch.stack(cols, dim=1)


def prediction_counts(source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> torch.Tensor:
    """(num_source, num_target) matrix: how often each source class is the top prediction for each target."""
    pred = source_logits.argmax(dim=1).cpu()
    counts = torch.zeros(source_logits.shape[1], num_target, dtype=torch.long)
    counts.index_put_((pred, labels.cpu().long()), torch.ones_like(pred), accumulate=True)
    return counts


def logit_sums(source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> torch.Tensor:
    """(num_source + 1, num_target) float64: for each target class the sum of every source logit over its images, and
    in the last row how many images it had (summed over batches and processes like counts)."""
    lg = source_logits.detach().double().cpu()
    onehot = F.one_hot(labels.cpu().long(), num_target).double()  # (B, num_target)
    return torch.cat([lg.t() @ onehot, onehot.sum(0, keepdim=True)])


def contrast_scores(sums: torch.Tensor) -> torch.Tensor:
    """(num_source, num_target) scores from :func:`logit_sums`: each source's mean logit on a class's images minus its
    mean over the other classes' means (how much more that source answers this class than the others); the greedy
    mappings take them as they are. A class without images reads a mean of 0."""
    mean = sums[:-1].double() / sums[-1:].double().clamp(min=1)
    nt = mean.shape[1]
    rest = (mean.sum(dim=1, keepdim=True) - mean) / max(1, nt - 1)
    return mean - rest


def create_head(backbone: Backbone, class_names: list[str], *, templates: list[str] | None = None,
                mapping: str = "first_k", mapping_indices: list[int] | None = None) -> nn.Module:
    """The right head for a backbone: a cached text classifier for CLIP, a label mapping otherwise.

    For label mapping, ``mapping`` names the method; the indices start as first-k unless ``mapping_indices``
    gives them (from a prompt file). Frequency and iterative mappings are filled in by the trainer from data."""
    if not class_names:
        raise VPError("No class names given.")
    device = backbone.mean.device
    if isinstance(backbone, ClipBackbone):
        return ClipTextHead(backbone, class_names, templates or [PAPER_TEMPLATE]).to(device)
    num_source = len(backbone.source_classes)
    if mapping_indices is None:
        mapping_indices = first_k_mapping(len(class_names), num_source).tolist()
    if len(mapping_indices) != len(class_names):
        raise VPError(f"The label mapping has {len(mapping_indices)} entries but there are {len(class_names)} classes.")
    if mapping not in MAPPINGS:
        raise VPError(f"Unknown label mapping {mapping!r}; choose one of {', '.join(MAPPINGS)}.")
    if MAPPINGS[mapping].bayesian:
        return BayesianMappingHead(num_source, len(class_names), mapping).to(device)
    cls = FullyMapHead if MAPPINGS[mapping].trains else LabelMappingHead
    return cls(mapping_indices, num_source, mapping).to(device)
