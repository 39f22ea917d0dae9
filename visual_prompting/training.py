"""Training a visual prompt: the paper's recipe, one loop for every backbone, prompter and dataset.

Recipe (defaults): SGD, lr 40 in the paper's units, momentum 0.9, no weight decay, linear warm-up for 1000
steps (at most a tenth of a short run) then per-step cosine decay, batch 256 for CLIP and 128 for vision
models, AMP on CUDA, seed 0.

The learning rate is given in the paper's units. The paper adds its prompt to the *normalised* image; here
the prompt lives in pixel space, where the same update needs the learning rate times the square of the
normalisation std. The trainer scales each channel's gradient by std_c**2, so ``lr=40`` is exactly the
paper's step (e.g. an effective pixel-space lr of 10 for EfficientNet's std 0.5, about 2.9 for CLIP).

Only the prompt is optimised: the backbone is frozen and no gradient is ever computed for its weights. The
best prompt (by validation accuracy, never test) and the last one (with the optimiser state, to resume) are
written to ``out_dir`` as they change; a run stopped by Ctrl-C, a callback or ``should_stop`` keeps both.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn.functional as F

from .backbones import Backbone, BackboneCache, ClipBackbone, backbone_help, load_backbone
from .data import DataSplits, StreamImageSet, canonical_name, dataset_help, load_splits, to_model_input
from .distributed import (Ranks, all_reduce_sum, broadcast_bytes, check_divisible, global_batches, init_from_env,
                          local_leader_first, rank_seed, reduce_step, rng_states, shard_indices)
from .errors import VPError
from .evaluation import evaluate, logits_over
from .heads import MAPPINGS, TEMPLATE_SETS, create_head, prediction_counts
from .heads import templates_for as _templates_for
from .model import PromptedModel
from .prompt_file import build_metadata, load_prompt, save_prompt
from .augment import AUGMENTATIONS, build_augment
from .capture import CAPTURE_AUGMENTATIONS, build_capture
from .optim import OPTIMIZERS, build_optimizer, load_optimizer_state_tensors, optimizer_state_tensors
from .prompters import CLAMP_MODES, INITS, PROMPTERS, PrompterConfig, create_prompter
from .settings import check_config, listing, setting
from .utils import HostReadback, amp_dtype, autocast, pick_device, seed_everything, write_text_atomic


def _pct(text: str) -> str:
    """A registry's text inside an argparse help string (where % starts a format)."""
    return text.replace("%", "%%")


def _choice_help(intro: str, registry: dict, fmt: str = "{name} = {description}") -> Callable[[], str]:
    return lambda: f"{intro}{_pct(listing(registry, fmt))} (default: %(default)s)"


DEFAULT_HEAD_LR = 1e-3  # a trained head's (fully_map's) lr: Adam's usual step for a linear layer


@dataclass
class TrainConfig:
    """One training run. Each field carries its help, choices and checks (:mod:`visual_prompting.settings`): the
    CLI's ``train`` options, the app's checks and ``scripts/reproduce_paper.py`` are generated from them."""

    model: str = setting("effnet-lite0", lambda: f"backbone spec: {_pct(backbone_help())} (default: %(default)s)")
    dataset: str = setting("fashion_mnist_subset", lambda: f"dataset: {_pct(dataset_help())} (default: %(default)s)")
    data_root: str | None = setting(None, "where torchvision datasets live / are downloaded (default: $VP_DATA or "
                                    "~/.cache/visual_prompting/data)")
    download: bool = setting(False, "download a torchvision dataset if it is missing")
    prompter: str = setting("pad", _choice_help("prompt design: ", PROMPTERS), choices=lambda: PROMPTERS)
    prompt_size: int | None = setting(None, "pad width or patch side in pixels (default: the kind's own: 30 at "
                                      "224px scaled to the input size for pads, a quarter of the side for patches)",
                                      low=1, label="Prompt size")
    image_scale: float | None = setting(None, "scale_pad / learned_scale_pad: the image's scale on the canvas, in "
                                        "(0, 1] (the start for learned_scale_pad; default (S - 2 * prompt size) / S, "
                                        "shrink_pad's)", low=0, low_open=True, high=1, label="Image scale")
    clamp: str = setting("straight-through", _choice_help("keep prompted images in [0,1]: ", CLAMP_MODES, "{name} ({description})"),
                         choices=lambda: CLAMP_MODES)
    init: str = setting("zeros", _choice_help("prompt initialisation: ", INITS, "{name} ({description})"), choices=lambda: INITS)
    templates: str = setting("paper", _choice_help("CLIP text templates: ", TEMPLATE_SETS),
                             choices=lambda: TEMPLATE_SETS)
    label_mapping: str = setting("iterative", _choice_help("vision-only models: ", MAPPINGS, "{name} ({description})"),
                                 choices=lambda: MAPPINGS)
    augment: str = setting("none", _choice_help("input diversity, applied to each training batch before the prompt: ",
                                                AUGMENTATIONS), choices=lambda: AUGMENTATIONS)
    capture: str = setting("none", _choice_help("capture simulation, applied to each prompted training batch before "
                                                "the model (expectation over transformation): ", CAPTURE_AUGMENTATIONS),
                           choices=lambda: CAPTURE_AUGMENTATIONS)
    epochs: int = setting(1000, "epochs (default: %(default)s, as the paper)", low=1, label="Epochs")
    steps: int | None = setting(None, "a step budget instead of epochs", low=1, label="Steps")
    batch_size: int | None = setting(None, "default: 256 for CLIP, 128 for vision models", low=1,
                                     label="Batch size")
    optimizer: str = setting("sgd", _choice_help("optimiser / step rule: ", OPTIMIZERS), choices=lambda: OPTIMIZERS)
    lr: float | None = setting(None, "learning rate (default: the optimiser's own: sgd 40 in the paper's units - "
                               "normalised input space, the gradient scaled per channel by std^2 for the pixel-space "
                               "prompt; adam 0.01; l2sgd 70, the step's length)", low=0, low_open=True,
                               label="The learning rate", hint=" (the paper uses 40 with sgd)")
    head_lr: float | None = setting(None, "label mapping fully_map: the learning rate of its linear layer, on the "
                                    "same schedule as the prompt's (default: 0.001)", low=0, low_open=True,
                                    label="The head's learning rate")
    momentum: float = setting(0.9, "SGD momentum (default: %(default)s)", low=0, label="Momentum")
    weight_decay: float = setting(0.0, "(default: %(default)s)", low=0, label="Weight decay")
    warmup_steps: int = setting(1000, "linear warm-up steps, at most a tenth of the run (default: %(default)s)",
                                low=0, label="Warm-up steps")
    eval_every: int | None = setting(None, "validate every N steps (default: once an epoch, at least ten times a "
                                     "run)", low=1, label="Eval every")
    val_fraction: float = setting(0.1, "share of train held out to pick the best prompt (default: %(default)s)",
                                  low=0, high=1, label="Validation fraction")
    mapping_samples: int = setting(5000, "train images used to compute frequency / iterative mappings (default: "
                                   "%(default)s)", low=1, label="Mapping samples")
    seed: int = setting(0, "(default: %(default)s)", label="Seed")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, mps (default: %(default)s)")
    amp: bool = setting(True, "disable mixed precision on CUDA", flag="--no-amp")
    out_dir: str = setting("runs/latest", "where best.safetensors, last.safetensors and history.json go "
                           "(default: %(default)s)")
    resume: bool = setting(False, "continue from OUT_DIR/last.safetensors")
    num_workers: int = setting(2, "image decoding workers for datasets too large to cache (default: %(default)s)",
                               low=0, label="Workers")
    cache_gib: float = setting(4.0, "a split's decoded images are held in memory up to this many GiB; a larger one is "
                               "decoded by --num-workers DataLoader workers as it is used (default: %(default)s)",
                               low=0, label="The cache limit")
    # also measure test accuracy without the prompt (a benchmark with its own no-prompt rows turns it off: it is
    # one more pass over the test set per run)
    test_without_prompt: bool = setting(True, cli=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainEvent:
    """What a callback receives. ``kind`` is start | step | eval | mapping | end."""

    kind: str
    step: int
    total_steps: int
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    train_acc: float | None = None
    images_per_s: float | None = None
    val_top1: float | None = None
    best_val_top1: float | None = None
    zero_shot_val_top1: float | None = None
    is_best: bool = False
    prompt: torch.Tensor | None = None  # (3, S, S) snapshot of the prompt on eval events
    message: str = ""


@dataclass
class TrainResult:
    best_path: str
    last_path: str
    metrics: dict
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False
    steps_done: int = 0
    stop_reason: str | None = None  # why a run ended early, a sentence (Stop, Ctrl-C, a non-finite loss)


HISTORY_STEPS = 2000  # step events kept in a run's history (and plotted), about evenly spaced


def history_record(ev: TrainEvent) -> dict | None:
    """What a run's history keeps of an event: its fields without the prompt snapshot and without empty ones;
    None for the step events thinned out (about :data:`HISTORY_STEPS` of them are kept, and the last)."""
    if ev.kind == "step" and ev.step % max(1, ev.total_steps // HISTORY_STEPS) and ev.step != ev.total_steps:
        return None
    return {f.name: getattr(ev, f.name) for f in fields(ev) if f.name != "prompt" and getattr(ev, f.name) is not None}


class Diverged(Exception):
    """The loss became NaN or infinite: the prompt is no longer usable. The trainer stops, keeps the last good
    checkpoints on disk (it writes nothing non-finite) and says so in :attr:`TrainResult.stop_reason`."""


class StopTraining(Exception):
    """Raise from a callback to end training cleanly (the best prompt stays on disk). Step events arrive one
    step late (see :meth:`Trainer.advance`): raised on step k's event, the run ends after step k+1."""


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to 0 at ``total`` (reference code)."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base


def default_prompt_size(kind: str, image_size: int) -> int:
    """The prompter kind's own default (see :meth:`Prompter.default_size`)."""
    if kind not in PROMPTERS:
        raise VPError(f"Unknown prompter kind {kind!r}; choose one of {', '.join(PROMPTERS)}.")
    return PROMPTERS[kind].default_size(image_size)


def templates_for(cfg: TrainConfig, dataset_key: str) -> list[str]:
    return _templates_for(cfg.templates, dataset_key)


class Trainer:
    """Holds one run: model, data, optimiser, schedule, checkpoints. ``run()`` trains; ``events`` are emitted
    to ``callbacks``; ``should_stop()`` is polled every step (the app's Stop button)."""

    def __init__(self, cfg: TrainConfig, callbacks: list[Callable[[TrainEvent], None]] | None = None,
                 should_stop: Callable[[], bool] | None = None, cache: BackboneCache | None = None,
                 splits: DataSplits | None = None):
        check_config(cfg)
        if cfg.lr is None:  # the optimiser's own lr, written into the config (and so into the prompt file)
            cfg = replace(cfg, lr=OPTIMIZERS[cfg.optimizer].default_lr)
        self.cfg = cfg
        self.callbacks = list(callbacks or [])
        self.should_stop = should_stop or (lambda: False)
        self.device = pick_device(cfg.device)
        # under torchrun: join the other processes (one process: SINGLE, nothing changes; cuda -> cuda:LOCAL_RANK)
        self.ranks: Ranks
        self.ranks, self.device = init_from_env(self.device)
        with local_leader_first(self.ranks):  # weights and data downloaded once per machine, not raced
            self.backbone: Backbone = (cache.get(cfg.model, self.device) if cache
                                       else load_backbone(cfg.model, self.device))
            S = self.backbone.image_size
            self.splits = splits or load_splits(cfg.dataset, image_size=S, root=cfg.data_root, download=cfg.download,
                                                val_fraction=cfg.val_fraction, num_workers=cfg.num_workers,
                                                max_cache_bytes=int(cfg.cache_gib * 2**30))
        # seeded after the load: building a model may draw from the global RNG and a cached one does not, so the
        # draws below (a trained head's first weights, augmentation, capture) would depend on the process's past
        seed_everything(cfg.seed)
        if self.device.type == "cuda":  # streamed batches in page-locked memory: an asynchronous copy to the GPU
            for part in (self.splits.train, self.splits.val, self.splits.test):
                if isinstance(part, StreamImageSet):
                    part.pin_memory = True
        self.class_names = self.splits.class_names
        self.is_clip = isinstance(self.backbone, ClipBackbone)
        self.templates = templates_for(cfg, canonical_name(self.splits.name)) if self.is_clip else None
        if cfg.image_scale is not None and not hasattr(PROMPTERS[cfg.prompter], "learn_scale"):
            raise VPError(f"An image scale applies to the scale_pad kinds only, not to {cfg.prompter!r}.")
        size = cfg.prompt_size or default_prompt_size(cfg.prompter, S)
        self.prompter = create_prompter(
            PrompterConfig(kind=cfg.prompter, image_size=S, size=size, clamp=cfg.clamp, init=cfg.init,
                           init_std=float(self.backbone.std.mean()) if cfg.init == "randn" else 0.0, seed=cfg.seed,
                           scale=cfg.image_scale)
        ).to(self.device)
        head = create_head(self.backbone, self.class_names, templates=self.templates, mapping=cfg.label_mapping)
        self.model = PromptedModel(self.backbone, head, self.prompter, self.class_names)
        self.batch_size = cfg.batch_size or (256 if self.is_clip else 128)  # the global batch, over all ranks
        self.rank_batch = check_divisible(self.batch_size, self.ranks)
        if len(self.splits.train) == 0:
            raise VPError("The training split is empty.")
        self.steps_per_epoch = global_batches(len(self.splits.train), self.batch_size, self.ranks.world_size)
        if self.steps_per_epoch < 1:
            raise VPError(f"{len(self.splits.train)} training images cannot be shared by {self.ranks.world_size} "
                          "processes; use fewer processes.")
        self.total_steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        if self.total_steps < 1:
            raise VPError("Nothing to train: steps (or epochs) must be at least 1.")
        self.warmup = max(1, min(cfg.warmup_steps, self.total_steps // 10))
        self.eval_every = cfg.eval_every or max(1, min(self.steps_per_epoch, self.total_steps // 10))
        # the prompt, then a trained head's layer (fully_map) in its own group, at head_lr (its own units)
        self.head_lr = (cfg.head_lr or DEFAULT_HEAD_LR) if head.trainable_parameters() else None
        if cfg.head_lr is not None and self.head_lr is None:
            raise VPError(f"--head-lr applies to a trained head (label mapping 'fully_map'), not to "
                          f"{'CLIP' if self.is_clip else repr(cfg.label_mapping)}.")
        groups = [{"params": list(self.prompter.parameters()), "lr_factor": 1.0}]
        if self.head_lr is not None:
            groups.append({"params": head.trainable_parameters(), "lr_factor": self.head_lr / cfg.lr})
        self.optimizer = build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.weight_decay)
        self.augment = build_augment(cfg.augment)  # before the prompt (draws from the global RNG: resumable)
        self.capture = build_capture(cfg.capture)  # after it
        # per-channel std**2: turns the paper's normalised-space step into the same step in pixel space
        self.grad_scale = (self.backbone.std.view(3, 1, 1) ** 2).to(self.device)
        dtype = amp_dtype(self.device) if cfg.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        self.out_dir = cfg.out_dir
        self.best_path = os.path.join(self.out_dir, "best.safetensors")
        self.last_path = os.path.join(self.out_dir, "last.safetensors")
        self.history: list[dict] = []
        self.step = 0
        self._pending: tuple | None = None  # the step event advance() holds back until the next step is queued
        self.readback = HostReadback(self.device)  # its loss and accuracy, on their way to the host
        self.best_val: float | None = None  # the best validation top-1 of an evaluation so far (None: none yet)
        self.diverged: str | None = None  # the message, once the loss became non-finite
        self.ctrl_c = False  # Ctrl-C was pressed: stop at the next step boundary
        self.torn = False  # a second Ctrl-C interrupted a step: the state in memory is not a checkpoint
        self.zero_shot_val: float | None = None
        self.mapping_set = None  # the train images a head fits itself on (label mappings), taken once
        if head.needs_counts:  # also for first_k: the no-prompt baseline uses a fitted mapping
            n = len(self.splits.train)
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1))[: min(n, cfg.mapping_samples)]
            self.mapping_set = self.shard(self.splits.train.subset(idx))
        self.val_set = self.shard(self.splits.val)  # this rank's part of the validation split (all of it in one)
        self._votes: list[tuple] = []  # distributed: each step's summed stop votes, read two steps late
        self._vote_readback = HostReadback(self.device, slots=4)
        self._stop_vote = False  # distributed: a callback raised StopTraining here; the ranks stop together
        if self.ranks.distributed and not self.ranks.is_main:
            torch.manual_seed(rank_seed(cfg.seed, self.ranks.rank))  # its own augmentation draws from here on

    def shard(self, data):
        """This rank's contiguous part of a set that is evaluated or counted (the set itself in one process)."""
        if not self.ranks.distributed:
            return data
        return data.subset(shard_indices(torch.arange(len(data)), self.ranks.rank, self.ranks.world_size))

    # -- events -------------------------------------------------------------------------------------------
    def emit(self, ev: TrainEvent) -> None:
        """Send an event to every callback; keep it in ``history`` (see :func:`history_record`)."""
        record = history_record(ev)
        if record is not None:
            self.history.append(record)
        if not self.ranks.distributed:
            for cb in self.callbacks:
                cb(ev)
            return
        for cb in self.callbacks if self.ranks.is_main else ():  # rank 0 alone reports
            try:
                cb(ev)
            except StopTraining:  # a vote: every rank stops at the same step (see _agreed_stop)
                self._stop_vote = True

    # -- the head fits itself (label mapping) ---------------------------------------------------------------
    def fit_head(self, use_prompt: bool = True, counts: torch.Tensor | None = None) -> torch.Tensor:
        """Count the backbone's top source class per target class on the mapping images and let the head fit
        itself (``use_prompt=False``: its no-prompt baseline). ``counts`` given: fit from those instead of
        counting again. Returns the counts."""
        if counts is None:
            counts = torch.zeros(len(self.backbone.source_classes), len(self.class_names), dtype=torch.long)
            for logits, labels in logits_over(self.model, self.mapping_set, use_prompt, self.batch_size,
                                              self.cfg.amp, source=True):
                counts += prediction_counts(logits, labels, len(self.class_names))
            if self.ranks.distributed:
                counts = all_reduce_sum(counts)
        self.model.head.fit(counts, baseline=not use_prompt)
        return counts

    # -- checkpoints --------------------------------------------------------------------------------------
    def metadata(self, metrics: dict) -> dict:
        return build_metadata(
            self.prompter, backbone=self.backbone.describe(), class_names=self.class_names, head=self.model.head.describe(),
            dataset=self.splits.name, train_config=self.cfg.to_dict(), metrics=metrics,
            distributed={"world_size": self.ranks.world_size, "per_rank_batch": self.rank_batch})

    def trained_parameters(self) -> list[torch.Tensor]:
        """Everything the optimiser updates, in a fixed order (the checkpoint's optimiser state is keyed by it)."""
        return [*self.prompter.parameters(), *self.model.head.trainable_parameters()]

    def save_best(self, val_top1: float) -> None:
        if not self.ranks.is_main:  # rank 0 alone writes files
            return
        metrics = {"val_top1": val_top1, "zero_shot_val_top1": self.zero_shot_val, "step": self.step,
                   "baseline_mapping": self.model.head.baseline_indices()}
        save_prompt(self.best_path, self.prompter, self.metadata(metrics), head=self.model.head.state_tensors())

    def save_last(self) -> None:
        if self.diverged or self.torn:  # non-finite, or from the middle of a step: keep the last good checkpoint
            return
        state = optimizer_state_tensors(self.optimizer, self.trained_parameters())
        state["rng"] = torch.get_rng_state()
        if self.ranks.distributed:  # every rank's RNG (its own augmentation draws), so a resume continues them
            for r, b in enumerate(rng_states()):
                if r:
                    state[f"rng_rank{r}"] = torch.frombuffer(bytearray(b), dtype=torch.uint8)
            if not self.ranks.is_main:
                return
        # two files, each written atomically, and a kill can land between them: the history goes first and the
        # checkpoint records how much of it is its own, so a resume from the checkpoint before drops the rest
        # (it would otherwise lose the evaluation that came between, which a resume does not take again)
        write_text_atomic(os.path.join(self.out_dir, "history.json"), json.dumps(self.history))
        metrics = {"step": self.step, "best_val_top1": self.best_val, "zero_shot_val_top1": self.zero_shot_val,
                   "baseline_mapping": self.model.head.baseline_indices(), "history_len": len(self.history)}
        save_prompt(self.last_path, self.prompter, self.metadata(metrics), state=state,
                    head=self.model.head.state_tensors())

    def _load_shared(self, path: str):
        """The prompt file at ``path`` as rank 0 reads it, on every rank (the others may not see its disk: several
        machines); None when it has none. One process: the file, if it is there."""
        if not self.ranks.distributed:
            return load_prompt(path) if os.path.isfile(path) else None
        data = None
        if self.ranks.is_main and os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
        data = broadcast_bytes(data)
        if not data:
            return None
        with tempfile.TemporaryDirectory(prefix="vp-rank-") as tmp:  # the file as rank 0 read it, whatever happens to it
            copy_path = os.path.join(tmp, os.path.basename(path))
            with open(copy_path, "wb") as f:
                f.write(data)
            return load_prompt(copy_path)

    def _read_shared_text(self, path: str) -> str | None:
        """A text file as rank 0 reads it, on every rank (None when rank 0 has none)."""
        if not self.ranks.distributed:
            if not os.path.isfile(path):
                return None
            with open(path) as f:
                return f.read()
        data = None
        if self.ranks.is_main and os.path.isfile(path):
            with open(path, "rb") as f:
                data = b"T" + f.read()  # an empty file is still a file
        data = broadcast_bytes(data)
        return data[1:].decode("utf-8") if data else None

    def _main_has(self, path: str) -> bool:
        """Whether rank 0 has the file (every rank gets its answer)."""
        if not self.ranks.distributed:
            return os.path.isfile(path)
        return broadcast_bytes(b"1" if self.ranks.is_main and os.path.isfile(path) else None) == b"1"

    def try_resume(self) -> bool:
        if not self.cfg.resume:
            return False
        pf = self._load_shared(self.last_path)
        if pf is None:
            return False
        if pf.meta["prompter"] != self.prompter.cfg.to_dict() or pf.meta["backbone"]["spec"] != self.backbone.spec:
            raise VPError(f"{self.last_path} was made with another prompter or backbone; use a new --out-dir.")
        with torch.no_grad():
            for p, q in zip(self.prompter.parameters(), pf.prompter.parameters()):
                p.copy_(q.to(self.device))
        self.model.head.restore(pf.meta["head"], pf.meta["metrics"], pf.head)
        load_optimizer_state_tensors(self.optimizer, self.trained_parameters(), pf.state)
        m = pf.meta["metrics"]
        self.step = int(m["step"])
        if self.ranks.distributed and not self.ranks.is_main:
            own = pf.state.get(f"rng_rank{self.ranks.rank}")
            if own is not None:
                torch.set_rng_state(own)
            else:  # a checkpoint from fewer processes: a fresh stream of this rank's own
                torch.manual_seed(rank_seed(self.cfg.seed, self.ranks.rank) + self.step)
        elif "rng" in pf.state:
            torch.set_rng_state(pf.state["rng"])
        best = m.get("best_val_top1")
        self.best_val = None if best is None or best < 0 else float(best)  # -1.0: "none yet" in older checkpoints
        self.zero_shot_val = m.get("zero_shot_val_top1")
        text = self._read_shared_text(os.path.join(self.out_dir, "history.json"))
        if text is not None:  # the records up to this checkpoint (a later checkpoint's history may be on disk)
            self.history = json.loads(text)[:m.get("history_len")]
        return True

    # -- the loop -----------------------------------------------------------------------------------------
    def _baseline(self) -> float:
        """Validation accuracy with no prompt: the number every prompt is compared with. For a classifier it reads
        the frequency mapping found *without* a prompt, whatever mapping the prompt trains with - with the
        hard-coded first-k mapping an unprompted model is at chance, which would flatter any prompt. :meth:`run`
        fits that mapping first."""
        return evaluate(self.model, self.val_set, use_prompt=False, batch_size=self.batch_size, amp=self.cfg.amp,
                        sum_across_ranks=self.ranks.distributed).top1

    @contextmanager
    def ctrl_c_between_steps(self):
        """In the main thread, Ctrl-C (SIGINT) stops the run at the next step boundary, like the app's Stop: a
        KeyboardInterrupt in the middle of a step could leave the prompt updated but the step not counted, and a
        resume would then take that step twice. A second Ctrl-C interrupts at once; the checkpoint on disk then
        stays the last consistent one (nothing is written from a torn step)."""
        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            yield  # not the main thread, or SIGINT ignored on purpose (started with `nohup ... &`): left as it is
            return

        def on_sigint(signum, frame):
            if self.ctrl_c:
                self.torn = True
                raise KeyboardInterrupt
            self.ctrl_c = True
        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def run(self) -> TrainResult:
        with self.ctrl_c_between_steps():
            return self._run()

    def _run(self) -> TrainResult:
        if self.ranks.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
        resumed = self.try_resume()
        if not resumed:
            head = self.model.head
            baseline_counts = self.fit_head(use_prompt=False) if head.needs_counts else None
            self.zero_shot_val = self._baseline()
            if head.fits_from_data:
                # a prompt that changes no pixel yet (an additive one at zero) sees what the baseline saw: its
                # counts are the baseline's, so the mapping images need not be read a second time
                same = baseline_counts is not None and self.prompter.is_identity()
                self.fit_head(counts=baseline_counts if same else None)
        on = (f"; {self.ranks.world_size} processes, {self.rank_batch} images each per step"
              if self.ranks.distributed else "")
        self.emit(TrainEvent("start", self.step, self.total_steps, zero_shot_val_top1=self.zero_shot_val,
                             message=f"{self.trainable_numbers():,} trainable numbers; "
                                     f"{len(self.splits.train)} train / {len(self.splits.val)} val images{on}"))
        interrupted, reason = False, None
        try:
            self._loop()
        except (KeyboardInterrupt, StopTraining) as e:
            if self.torn and self.ranks.distributed:  # a second Ctrl-C: leave now (torchrun ends the others)
                raise
            interrupted = True
            reason = (f"Stopped{' (Ctrl-C)' if isinstance(e, KeyboardInterrupt) else ''} at step {self.step}; the "
                      "best prompt so far is kept.")
            try:
                self.flush_step()  # the last step taken still gets its event
            except (KeyboardInterrupt, StopTraining, Diverged):
                pass
        except Diverged:
            interrupted = True
        except BaseException:
            if self.ranks.distributed:  # an error on this rank alone: no collective now (the others would wait for
                self.torn = True        # ever); torchrun ends them, the last checkpoint on disk stays
            raise
        finally:
            self.save_last()  # writes nothing once the prompt is non-finite: the last good checkpoint stays
        if self.diverged:
            reason = self.diverged
            if not self._main_has(self.best_path):
                raise VPError(f"{self.diverged} Nothing was evaluated before it, so there is no prompt to keep.")
        elif not self._main_has(self.best_path):  # stopped before the first evaluation: keep what there is
            self.save_best(self._validate())
        metrics = self.finish()
        self.emit(TrainEvent("end", self.step, self.total_steps, best_val_top1=self.best_val,
                             zero_shot_val_top1=self.zero_shot_val,
                             message=reason if interrupted else "done"))
        self.save_last()
        return TrainResult(self.best_path, self.last_path, metrics, self.history, interrupted, self.step, reason)

    def _validate(self) -> float:
        return evaluate(self.model, self.val_set, True, self.batch_size, self.cfg.amp,
                        sum_across_ranks=self.ranks.distributed).top1

    def _loop(self) -> None:
        cfg, model = self.cfg, self.model
        S = self.backbone.image_size
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            if model.head.needs_refit_each_epoch and skip == 0 and epoch > 0:
                self.fit_head()
                self.emit(TrainEvent("mapping", self.step, self.total_steps, epoch=epoch,
                                     message=f"label mapping recomputed: {model.head.mapping.tolist()}"))
            gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            # the global batch order is the same on every rank; each takes its own slice of each global batch
            shard = (self.ranks.rank, self.ranks.world_size) if self.ranks.distributed else None
            for images, labels in self.splits.train.batches(self.batch_size, shuffle=True, generator=gen,
                                                            shard=shard, start=skip):
                if self.step >= self.total_steps:
                    break
                if self.ranks.distributed:
                    self._agreed_stop()
                elif self.ctrl_c:
                    raise KeyboardInterrupt
                elif self.should_stop():
                    raise StopTraining
                if self.device.type == "cuda":  # a copy from pageable memory would wait for the queued steps
                    images, labels = images.pin_memory(), labels.pin_memory()
                self.advance(to_model_input(images.to(self.device, non_blocking=True), S), labels, epoch)
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    self.flush_step()
                    self.eval_and_checkpoint(epoch)
        self.flush_step()

    def advance(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0) -> None:
        """One step as the loop takes it: :meth:`train_step`, then the *previous* step's event. That step's loss and
        accuracy are read from the device one step late, once this step is queued, and through
        :class:`~visual_prompting.utils.HostReadback`, which waits for that step alone (``float(loss)`` would wait
        for the step just queued too), so on a GPU the host never waits for the device to run dry before it queues
        the next step (on CPU it changes nothing).
        :meth:`flush_step` emits the one held back (before each evaluation and at the end)."""
        start = time.perf_counter()
        loss, acc, lr = self.train_step(x, y)
        self.step += 1
        previous, self._pending = self._pending, (self.step, epoch, self.readback.send(loss, acc), lr, len(y), start)
        self._emit_step(previous, end=start)

    def flush_step(self) -> None:
        """Emit the step event that :meth:`advance` holds back, if any."""
        pending, self._pending = self._pending, None
        self._emit_step(pending)

    def _emit_step(self, pending: tuple | None, end: float | None = None) -> None:
        """``images_per_s`` of a step: its images over the time from its start to the start of the next step
        (``end``; the step's own work, its data and bookkeeping included, never an evaluation's), or, for the
        last step before an evaluation or the end, to the moment its result is read back from the device."""
        if pending is None:
            return
        step, epoch, values, lr, n, start = pending
        loss, acc = self.readback.read(values)  # waits for that step on the device (not for the one queued after it)
        if not math.isfinite(loss):
            self.diverged = (f"The loss became {loss} at step {step}: training stopped and the last good prompt is "
                             f"kept (best: {self.best_path}). Try a lower learning rate (now {self.cfg.lr:g}).")
            raise Diverged(self.diverged)
        dt = max((time.perf_counter() if end is None else end) - start, 1e-9)
        self.emit(TrainEvent("step", step, self.total_steps, epoch=epoch, loss=loss, lr=lr, train_acc=acc,
                             images_per_s=n / dt))

    def _agreed_stop(self) -> None:
        """Distributed: stop when any rank asked to (Ctrl-C, the app's Stop, a callback's StopTraining), every rank
        at the same step. Each step's all-reduce sums the ranks' votes (:meth:`reduce_across_ranks`); they are read
        two steps late, so reading them never waits for the step just queued on the device."""
        if len(self._votes) < 2:
            return
        ctrl_c, stop = HostReadback.read(self._votes.pop(0))
        if ctrl_c:
            raise KeyboardInterrupt
        if stop:
            raise StopTraining

    def reduce_across_ranks(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor):
        """After ``backward``: the batch's loss and accuracy (detached 0-d tensors). Distributed, one all-reduce
        first makes every trained gradient the global batch's and returns the global batch's loss and accuracy
        (:func:`~visual_prompting.distributed.reduce_step`), with this rank's stop votes summed along."""
        if not self.ranks.distributed:
            return loss.detach(), (logits.argmax(1) == y).float().mean()
        votes = (int(self.ctrl_c), int(self._stop_vote or bool(self.should_stop())))
        loss, acc, summed = reduce_step(self.trained_parameters(), loss, logits, y, votes)
        self._votes.append(self._vote_readback.send(summed[0], summed[1]))
        return loss, acc

    def trainable_numbers(self) -> int:
        """The prompt's numbers plus a trained head's (an input-only run: the prompt's alone)."""
        return sum(p.numel() for p in self.trained_parameters())

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One SGD step on the prompt. Returns the loss and the batch accuracy as detached 0-d tensors on the
        device (reading them waits for the device: :meth:`advance` does that one step late) and the lr."""
        cfg = self.cfg
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        lr = cosine_lr(self.step, self.total_steps, cfg.lr, self.warmup)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_factor"]
        self.model.train()
        with torch.no_grad():
            x = self.augment(x)  # input diversity: the image before the prompt
        with autocast(self.device, cfg.amp):
            prompted = self.capture(self.prompter(x))  # capture simulation: what a shared prompted image goes through
            logits = self.model.logits(self.backbone(prompted))
            loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        # several processes: the global batch's gradient, loss and accuracy, before any step rule sees them
        loss, acc = self.reduce_across_ranks(loss, logits, y)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.optimizer == "sgd":  # the paper's units; adam and l2sgd do not depend on the gradient's scale
            for p in self.prompter.parameters():
                if p.grad is not None and p.ndim == 3 and p.shape[0] == 3:
                    p.grad.mul_(self.grad_scale)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.prompter.project_()
        return loss, acc, lr

    def eval_and_checkpoint(self, epoch: int) -> None:
        val = self._validate()
        is_best = self.best_val is None or val > self.best_val
        if is_best:
            self.best_val = val
            self.save_best(val)
        self.emit(TrainEvent("eval", self.step, self.total_steps, epoch=epoch, val_top1=val,
                             best_val_top1=self.best_val, zero_shot_val_top1=self.zero_shot_val, is_best=is_best,
                             prompt=self.prompter.delta().detach().cpu().clone()))
        self.save_last()

    def finish(self) -> dict:
        """Test numbers for the best prompt (chosen on validation), with and without the prompt. Reuses this
        run's backbone and head (the text features are not encoded again)."""
        pf = self._load_shared(self.best_path)
        # a copy of this run's head with what the best prompt was saved with (the baseline stays): the live head
        # keeps the last step's state, which save_last writes after this for a resume
        head = copy.deepcopy(self.model.head)
        head.restore(pf.meta["head"], tensors=pf.head)
        best = PromptedModel(self.backbone, head, pf.prompter.to(self.device), self.class_names)
        test, summed = self.shard(self.splits.test), self.ranks.distributed
        with_p = evaluate(best, test, True, self.batch_size, self.cfg.amp, sum_across_ranks=summed)
        metrics = {**pf.meta["metrics"], "test_top1": with_p.top1, "test_top5": with_p.top5,
                   "test_per_class": with_p.per_class, "test_n": with_p.n,
                   # stopped before the first evaluation: the kept prompt's own validation number (the run's
                   # best_val stays None, so a resume's first evaluation is its best as in an uninterrupted run)
                   "best_val_top1": self.best_val if self.best_val is not None else pf.meta["metrics"].get("val_top1"),
                   "steps": self.step}
        if self.cfg.test_without_prompt:
            without = evaluate(best, test, False, self.batch_size, self.cfg.amp, sum_across_ranks=summed)
            metrics.update(test_top1_no_prompt=without.top1, test_top5_no_prompt=without.top5)
        meta = pf.meta
        meta["metrics"] = metrics
        if self.ranks.is_main:
            save_prompt(self.best_path, pf.prompter, meta, head=pf.head)
        return metrics


def train(cfg: TrainConfig, callbacks=None, should_stop=None, cache: BackboneCache | None = None) -> TrainResult:
    """Train a prompt with ``cfg``; see :class:`Trainer`."""
    return Trainer(cfg, callbacks, should_stop, cache).run()
