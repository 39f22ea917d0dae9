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
written to ``out_dir`` as they change (by :class:`~visual_prompting.checkpoint.RunFiles`); a run stopped by Ctrl-C,
a callback or ``should_stop`` keeps both. The run's settings, events and result are
:mod:`visual_prompting.train_config`'s.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .augment import build_augment
from .backbones import Backbone, BackboneCache, ClipBackbone, load_backbone
from .capture import build_capture
from .baselines import BaselineCache, fingerprint, key_of
from .checkpoint import RunFiles
from .data import DataSplits, StreamImageSet, canonical_name, load_splits, to_model_input
from .distributed import (Ranks, all_reduce_sum, check_divisible, global_batches, init_from_env, local_leader_first,
                          rank_seed, reduce_step, shard_indices)
from .errors import VPError
from .evaluation import evaluate, logits_over, test_metrics
from .heads import create_head
from .heads import templates_for as _templates_for
from .model import PromptedModel
from .optim import build_optimizer
from .prompters import PROMPTERS, PrompterConfig, create_prompter
from .settings import check_config
# the run's settings, events and result have their own module; imported here too, where they always were
from .train_config import (DEFAULT_HEAD_LR, StopTraining, TrainConfig, TrainEvent, TrainResult,  # noqa: F401
                           history_record)
from .transforms import split_stack
from .utils import (HostReadback, SigintHandler, amp_dtype, autocast, import_in_background, pick_device,
                    seed_everything)


class Diverged(Exception):
    """The loss became NaN or infinite: the prompt is no longer usable. The trainer stops, keeps the last good
    checkpoints on disk (it writes nothing non-finite) and says so in :attr:`TrainResult.stop_reason`."""


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


def prompt_size_for(cfg: TrainConfig, image_size: int) -> int:
    """A run's prompt size in pixels: ``prompt_size``, else ``prompt_fraction`` of the side, else the kind's own."""
    if cfg.prompt_size:
        return cfg.prompt_size
    if cfg.prompt_fraction:
        return max(1, round(cfg.prompt_fraction * image_size))
    return default_prompt_size(cfg.prompter, image_size)


def templates_for(cfg: TrainConfig, dataset_key: str) -> list[str]:
    return _templates_for(cfg.templates, dataset_key)


def head_lr_for(cfg: TrainConfig, head, is_clip: bool) -> float | None:
    """A trained head's lr (its own units; fully_map's layer), None when the head trains nothing."""
    head_lr = (cfg.head_lr or DEFAULT_HEAD_LR) if head.trainable_parameters() else None
    if cfg.head_lr is not None and head_lr is None:
        raise VPError(f"--head-lr applies to a trained head (label mapping 'fully_map'), not to "
                      f"{'CLIP' if is_clip else repr(cfg.label_mapping)}.")
    return head_lr


def check_prompt_settings(cfg: TrainConfig) -> None:
    """Settings that only go together: an image scale with the scale_pad kinds, input transforms with adam."""
    if cfg.image_scale is not None and not hasattr(PROMPTERS[cfg.prompter], "learn_scale"):
        raise VPError(f"An image scale applies to the scale_pad kinds only, not to {cfg.prompter!r}.")
    if split_stack(cfg.transforms) and cfg.optimizer != "adam":
        raise VPError(f"Input transforms ({cfg.transforms}) are trained with the adam optimiser only (each is a few "
                      f"numbers that move the whole image: {cfg.optimizer}'s pixel-unit steps would throw them far "
                      "off at once).")


def run_optimizer(cfg: TrainConfig, prompter, head, head_lr: float | None) -> torch.optim.Optimizer:
    """The run's optimiser: the prompt in one group, each input transform in its own at its ``lr_factor`` of the
    prompt's lr, a trained head's layer in its own at ``head_lr``."""
    groups = [{"params": prompter.own_parameters(), "lr_factor": 1.0}]
    groups += [{"params": list(t.parameters()), "lr_factor": t.lr_factor} for t in prompter.transforms]
    if head_lr is not None:
        groups.append({"params": head.trainable_parameters(), "lr_factor": head_lr / cfg.lr})
    return build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.weight_decay)


def load_inputs(cfg: TrainConfig, device: torch.device, ranks: Ranks, cache: BackboneCache | None = None,
                splits: DataSplits | None = None) -> tuple[Backbone, DataSplits]:
    """A run's frozen backbone (from ``cache`` when given) and its data (``splits`` when given), downloaded once per
    machine (not raced by the ranks)."""
    with local_leader_first(ranks):
        backbone = (cache.get(cfg.model, device, cfg.fast_backbone) if cache
                    else load_backbone(cfg.model, device, cfg.fast_backbone))
        splits = splits or load_splits(
            cfg.dataset, image_size=backbone.image_size, root=cfg.data_root, download=cfg.download,
            val_fraction=cfg.val_fraction, num_workers=cfg.num_workers, max_cache_bytes=int(cfg.cache_gib * 2**30))
    if device.type == "cuda":  # streamed batches in page-locked memory: an asynchronous copy to the GPU
        for part in (splits.train, splits.val, splits.test):
            if isinstance(part, StreamImageSet):
                part.pin_memory = True
    return backbone, splits


class Schedule:
    """When a run's steps happen: the global batch (over all ranks) and each rank's part of it, steps per epoch, the
    total, warm-up, the evaluation interval and the lr at each step.

    A step budget (``steps``, or ``epochs``) fixes the total. A time budget (``time_budget`` seconds of steps and
    validations) estimates it: after every step and evaluation the total becomes the steps done plus those that fit
    in the time left at the measured pace (a step's time, and each evaluation's spread over the steps between two),
    keeping time for a last evaluation, at most ``steps`` when that is given. The warm-up, the evaluation interval and
    the cosine decay follow the estimate, so the lr reaches 0 as the budget runs out and the run ends on time."""

    def __init__(self, cfg: TrainConfig, n_train: int, is_clip: bool, ranks: Ranks, n_val: int = 0):
        self.cfg = cfg
        self.batch_size = cfg.batch_size or (256 if is_clip else 128)
        self.rank_batch = check_divisible(self.batch_size, ranks)
        if n_train == 0:
            raise VPError("The training split is empty.")
        self.steps_per_epoch = global_batches(n_train, self.batch_size, ranks.world_size)
        if self.steps_per_epoch < 1:
            raise VPError(f"{n_train} training images cannot be shared by {ranks.world_size} processes; use fewer "
                          "processes.")
        self.budget = cfg.time_budget
        self.total = cfg.steps or cfg.epochs * self.steps_per_epoch
        if self.budget is not None:
            self.total = min(self.total, 100) if cfg.steps else 100  # a first guess, corrected after the first step
        if self.total < 1:
            raise VPError("Nothing to train: steps (or epochs) must be at least 1.")
        self.n_val = n_val
        self.seconds = 0.0  # time spent so far in steps and validations (carried over by a resume)
        self._steps: list[float] = []
        self._evals: list[float] = []

    @property
    def warmup(self) -> int:
        return max(1, min(self.cfg.warmup_steps, self.total // 10))

    @property
    def eval_every(self) -> int:
        return self.cfg.eval_every or max(1, min(self.steps_per_epoch, self.total // 10))

    def lr(self, step: int) -> float:
        return cosine_lr(step, self.total, self.cfg.lr, self.warmup)

    def is_eval_step(self, step: int) -> bool:
        return step % self.eval_every == 0 or step >= self.total

    def step_taken(self, step: int, seconds: float) -> None:
        self.seconds += seconds
        self._steps.append(seconds)
        self._estimate(step, evaluated=False)

    def resumed(self, step: int, seconds: float) -> None:
        """A resumed run at ``step`` that trained ``seconds`` before: a time budget counts them, and its first guess
        starts from ``step`` (the first guess alone, 100 steps, ended a run resumed after step 100 at once, having
        trained nothing more)."""
        self.seconds = seconds
        if self.budget is not None:
            more = 100 if seconds < self.budget else 0
            self.total = max(1, min(step + more, self.cfg.steps or step + more))

    def spent(self, step: int, seconds: float) -> None:
        """Time within the budget that is neither a step nor an evaluation (a mapping recomputed at an epoch's start):
        it counts against the budget, and is not taken for the next step's time (which the estimate's pace reads)."""
        self.seconds += seconds

    def evaluated(self, step: int, seconds: float) -> None:
        self.seconds += seconds
        self._evals.append(seconds)
        self._estimate(step, evaluated=True)

    def _estimate(self, step: int, evaluated: bool) -> None:
        if self.budget is None or not self._steps:
            return
        if len(self._steps) == 1 and not self._evals and self.seconds < self.budget:
            # the first step also pays for one-time set-up (the optimiser's imports, first allocations): an estimate
            # from it alone planned a handful of steps with an evaluation at each, the first at step 1 (a CLI run
            # of 40 s on 2 CPU cores evaluated at step 1 and ended there); the first guess stands until a second
            # step is timed
            return
        recent = self._steps[1:][-20:] or self._steps  # the first step also pays for one-time set-up
        t_step = sum(recent) / len(recent)
        # an evaluation: as measured, or (none yet) its forward passes at a third of a training step per batch
        t_eval = (sum(self._evals) / len(self._evals) if self._evals
                  else t_step * max(1, self.n_val / self.batch_size) / 3)
        left = self.budget - self.seconds

        def cost(n: int, every: int) -> float:
            """n more steps, each evaluation among them and a last one at the end (one at this step if it is due and
            not taken yet): evaluations are counted where they fall, so the estimate does not drop after each one."""
            end = step + n
            evals = end // every - step // every + (end % every != 0) if n else 0
            evals += not evaluated and (n == 0 or step % every == 0)
            return n * t_step + evals * t_eval

        total = step
        for _ in range(2):  # the interval depends on the total: settle it
            every = self.cfg.eval_every or max(1, min(self.steps_per_epoch, max(total, 10) // 10))
            lo, hi = 0, max(0, int(left / max(t_step, 1e-9))) + 1  # the most steps whose cost fits (it grows with n)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if cost(mid, every) <= left else (lo, mid - 1)
            total = step + lo
        self.total = max(step, min(total, self.cfg.steps or total))


class RunEvents:
    """A run's events: each goes to every callback (rank 0 alone reports) and into ``history``.

    Step events arrive one step late: :meth:`step_taken` holds a step's loss and accuracy on their way from the
    device (:class:`~visual_prompting.utils.HostReadback`, which waits for that step alone; ``float(loss)`` would
    wait for the step just queued too) and emits the step before it, so on a GPU the host never waits for the device
    to run dry before it queues the next step (on CPU it changes nothing). :meth:`flush` emits the one held back
    (before each evaluation and at the end). A non-finite loss raises :class:`Diverged` with ``diverged(step, loss)``
    as its message (kept in :attr:`diverged`). Distributed, a callback's :class:`StopTraining` is a vote
    (:attr:`stop_vote`): every rank stops at the same step."""

    def __init__(self, callbacks, ranks: Ranks, device: torch.device, diverged: Callable[[int, float], str]):
        self.callbacks, self.ranks, self._diverged_message = list(callbacks), ranks, diverged
        self.history: list[dict] = []
        self.readback = HostReadback(device)
        self._pending: tuple | None = None
        self.diverged: str | None = None  # the message, once the loss became non-finite
        self.stop_vote = False

    def emit(self, ev: TrainEvent) -> None:
        record = history_record(ev)
        if record is not None:
            self.history.append(record)
        if not self.ranks.distributed:
            for cb in self.callbacks:
                cb(ev)
            return
        for cb in self.callbacks if self.ranks.is_main else ():
            try:
                cb(ev)
            except StopTraining:
                self.stop_vote = True

    def step_taken(self, step: int, total: int, epoch: int, loss: torch.Tensor, acc: torch.Tensor, lr: float,
                   n: int, start: float) -> None:
        previous, self._pending = self._pending, (step, total, epoch, self.readback.send(loss, acc), lr, n, start)
        self._emit_step(previous, end=start)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        self._emit_step(pending)

    def _emit_step(self, pending: tuple | None, end: float | None = None) -> None:
        """``images_per_s`` of a step: its images over the time from its start to the start of the next step
        (``end``; the step's own work, its data and bookkeeping included, never an evaluation's), or, for the
        last step before an evaluation or the end, to the moment its result is read back from the device."""
        if pending is None:
            return
        step, total, epoch, values, lr, n, start = pending
        loss, acc = self.readback.read(values)  # waits for that step on the device (not for the one queued after it)
        if not math.isfinite(loss):
            self.diverged = self._diverged_message(step, loss)
            raise Diverged(self.diverged)
        dt = max((time.perf_counter() if end is None else end) - start, 1e-9)
        self.emit(TrainEvent("step", step, total, epoch=epoch, loss=loss, lr=lr, train_acc=acc, images_per_s=n / dt))


class RunMeasures:
    """What a run measures on its data: prediction counts on the mapping images (label mappings), validation and test
    accuracy. A number without the prompt does not depend on the prompt: with a baseline cache it is computed once
    and shared (keyed by the backbone as it is run, the head's answer to unprompted inputs and the images, see
    :mod:`visual_prompting.baselines`). ``stop_if_asked`` is called between the batches of a count."""

    def __init__(self, model: PromptedModel, mapping_set, val_set, batch_size: int, amp: bool, ranks: Ranks,
                 baselines: BaselineCache | None, stop_if_asked: Callable[[], None]):
        self.model, self.mapping_set, self.val_set = model, mapping_set, val_set
        self.batch_size, self.amp, self.ranks, self.baselines = batch_size, amp, ranks, baselines
        self.stop_if_asked = stop_if_asked

    def shared(self, what: str, data, compute: Callable, head=None):
        """``compute()`` through the baseline cache when there is one (one process: ranks see parts of the sets)."""
        if self.baselines is None or self.ranks.distributed:
            return compute()
        fp = fingerprint(data)
        head = head or self.model.head
        reads = head.counting if what == "counts" else head.without_prompt()
        key = None if fp is None else key_of(what, self.model.backbone.describe(), self.model.device.type, self.amp,
                                             reads, fp)
        return self.baselines.get(key, compute)

    def counts(self, use_prompt: bool, first: int | None = None) -> torch.Tensor:
        """How often each source class is the backbone's top-1 for each target class, on the mapping images (the
        ``first`` so many of them: this process's, in a distributed run)."""
        data = self.mapping_set
        if first is not None and first < len(data):
            data = data.subset(torch.arange(first))
        if not use_prompt:
            return self.shared("counts", data, lambda: self._count(data, False))
        return self._count(data, True)

    def _count(self, data, use_prompt: bool) -> torch.Tensor:
        head, counts = self.model.head, None
        for logits, labels in logits_over(self.model, data, use_prompt, self.batch_size, self.amp, source=True):
            c = head.count(logits, labels, len(self.model.class_names))
            counts = c if counts is None else counts + c
            self.stop_if_asked()
        return all_reduce_sum(counts) if self.ranks.distributed else counts

    def validate(self, use_prompt: bool = True) -> float:
        """Validation top-1. Without the prompt it is the number every prompt is compared with: for a classifier it
        reads the mapping found *without* a prompt, whatever mapping the prompt trains with (with the hard-coded
        first-k mapping an unprompted model is at chance, which would flatter any prompt)."""
        run = lambda: evaluate(self.model, self.val_set, use_prompt, self.batch_size, self.amp,  # noqa: E731
                               sum_across_ranks=self.ranks.distributed).top1
        return run() if use_prompt else self.shared("val", self.val_set, run)

    def test_file(self, pf, test, without_prompt: bool) -> dict:
        """The test numbers of a saved prompt (the best one), with this run's backbone and a copy of its head
        restored to what the file holds (the text features are not encoded again; the live head keeps the last
        step's state, which a resume needs)."""
        head = copy.deepcopy(self.model.head)
        head.restore(pf.meta["head"], tensors=pf.head)
        m = self.model
        return self.test(PromptedModel(m.backbone, head, pf.prompter.to(m.device), m.class_names), test, without_prompt)

    def test(self, model: PromptedModel, test, without_prompt: bool) -> dict:
        """The test numbers of ``model`` (a trained prompt), and without its prompt (shared through the cache)."""
        summed = self.ranks.distributed
        metrics = test_metrics(model, test, self.batch_size, self.amp, summed)
        if without_prompt:
            r = self.shared("test", test, lambda: evaluate(model, test, False, self.batch_size, self.amp,
                                                           sum_across_ranks=summed), model.head)
            metrics.update(test_top1_no_prompt=r.top1, test_top5_no_prompt=r.top5)
        return metrics


class SigintBetweenSteps(SigintHandler):
    """In the main thread, Ctrl-C (SIGINT) only sets :attr:`pressed`, and the loop stops at the next step boundary,
    like the app's Stop: a KeyboardInterrupt in the middle of a step could leave the prompt updated but the step not
    counted, and a resume would then take that step twice. A second Ctrl-C interrupts at once and sets :attr:`torn`
    (the state in memory is then not a checkpoint: nothing is written from it). Elsewhere (another thread, or SIGINT
    ignored on purpose, as under ``nohup ... &``) the handler is left as it is."""

    def __init__(self):
        super().__init__()
        self.pressed = self.torn = False

    def _on_sigint(self, signum, frame):
        if self.pressed:
            self.torn = True
            raise KeyboardInterrupt
        self.pressed = True


class Trainer:
    """One run: set-up, the loop, stop votes. ``run()`` trains; events go to ``callbacks`` (:class:`RunEvents`);
    ``should_stop()`` is polled every step and while preparing (the app's Stop). ``files`` write and read the run's
    files (:class:`~visual_prompting.checkpoint.RunFiles`); ``baselines`` share the numbers without the prompt
    (:class:`~visual_prompting.baselines.BaselineCache`)."""

    def __init__(self, cfg: TrainConfig, callbacks: list[Callable[[TrainEvent], None]] | None = None,
                 should_stop: Callable[[], bool] | None = None, cache: BackboneCache | None = None,
                 splits: DataSplits | None = None, files: RunFiles | None = None,
                 baselines: BaselineCache | None = None):
        check_config(cfg)
        # torch.optim imports torch._dynamo with the first optimiser (seconds): started now, in the background, it is
        # done while the data loads and the mapping is counted; the optimiser itself is built when first used
        self._optimizer, self._imports = None, import_in_background("torch._dynamo")
        self.cfg = cfg = cfg.with_defaults()  # the lr used is written into the prompt file
        self.should_stop = should_stop or (lambda: False)
        # under torchrun: join the other processes (one process: SINGLE, nothing changes; cuda -> cuda:LOCAL_RANK)
        self.ranks, self.device = init_from_env(pick_device(cfg.device))
        self.backbone, self.splits = load_inputs(cfg, self.device, self.ranks, cache, splits)
        self.class_names, self.is_clip = self.splits.class_names, isinstance(self.backbone, ClipBackbone)
        # seeded after the load (building a model may draw from the RNG, a cached one does not): the draws below
        seed_everything(cfg.seed)
        self._build_model()
        self.schedule = Schedule(cfg, len(self.splits.train), self.is_clip, self.ranks, n_val=len(self.splits.val))
        self.head_lr = head_lr_for(cfg, self.model.head, self.is_clip)
        # per-channel std**2: turns the paper's normalised-space step into the same step in pixel space
        self.grad_scale = (self.backbone.std.view(3, 1, 1) ** 2).to(self.device)
        fp16 = cfg.amp and amp_dtype(self.device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.measures = RunMeasures(self.model, self.mapping_set, self.val_set, self.batch_size, cfg.amp, self.ranks,
                                    baselines, self._stop_if_asked)
        self.files = files or RunFiles(cfg.out_dir)
        self.files.describe_run(
            self.ranks, backbone=self.backbone.describe(), class_names=self.class_names, dataset=self.splits.name,
            train_config=cfg.to_dict(), distributed={"world_size": self.ranks.world_size,
                                                     "per_rank_batch": self.schedule.rank_batch})
        self.events = RunEvents(callbacks or [], self.ranks, self.device, lambda step, loss: (
            f"The loss became {loss} at step {step}: training stopped and the last good prompt is kept (best: "
            f"{self.best_path}). Try a lower learning rate (now {self.cfg.lr:g})."))
        self.sigint = SigintBetweenSteps()
        self.step = 0
        self.best_val: float | None = None  # the best validation top-1 of an evaluation so far (None: none yet)
        self.zero_shot_val: float | None = None
        self._all_counts: torch.Tensor | None = None  # no-prompt counts on all mapping images, until the takeover
        self._replaced: tuple[int, torch.Tensor] | None = None  # the takeover's step and the mapping it replaced
        self._votes: list[tuple] = []  # distributed: each step's summed stop votes, read two steps late
        self._vote_readback = HostReadback(self.device, slots=4)
        if self.ranks.distributed and not self.ranks.is_main:
            torch.manual_seed(rank_seed(cfg.seed, self.ranks.rank))  # its own augmentation draws from here on

    # -- set-up -------------------------------------------------------------------------------------------
    def _build_model(self) -> None:
        """The prompter (the only thing trained, with a fully_map head's layer), the model around it, the
        augmentation before it and the capture simulation after it."""
        cfg, S = self.cfg, self.backbone.image_size
        templates = templates_for(cfg, canonical_name(self.splits.name)) if self.is_clip else None
        check_prompt_settings(cfg)
        self.prompter = create_prompter(PrompterConfig(
            kind=cfg.prompter, image_size=S, size=prompt_size_for(cfg, S),
            clamp=cfg.clamp, init=cfg.init, init_std=float(self.backbone.std.mean()) if cfg.init == "randn" else 0.0,
            seed=cfg.seed, scale=cfg.image_scale, transforms=split_stack(cfg.transforms),
            init_offset=cfg.init_offset)).to(self.device)
        head = create_head(self.backbone, self.class_names, templates=templates, mapping=cfg.label_mapping)
        self.model = PromptedModel(self.backbone, head, self.prompter, self.class_names)
        self.augment = build_augment(cfg.augment)  # draws from the global RNG: resumable
        self.capture = build_capture(cfg.capture)
        self.mapping_set = None  # the train images a head fits itself on (label mappings), taken once
        if head.needs_counts:  # also for first_k: the no-prompt baseline uses a fitted mapping
            n = len(self.splits.train)
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1))[:cfg.mapping_samples]
            self.mapping_set = self.shard(self.splits.train.subset(idx))
        self.val_set = self.shard(self.splits.val)  # this rank's part of the validation split (all of it in one)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = run_optimizer(self.cfg, self.prompter, self.model.head, self.head_lr)
        return self._optimizer

    # the schedule's numbers and the files' paths, where they always were
    batch_size = property(lambda self: self.schedule.batch_size)
    rank_batch = property(lambda self: self.schedule.rank_batch)
    steps_per_epoch = property(lambda self: self.schedule.steps_per_epoch)
    total_steps = property(lambda self: self.schedule.total)
    best_path = property(lambda self: self.files.best_path)
    last_path = property(lambda self: self.files.last_path)
    callbacks = property(lambda self: self.events.callbacks)
    history = property(lambda self: self.events.history)
    diverged = property(lambda self: self.events.diverged)

    def shard(self, data):
        """This rank's contiguous part of a set that is evaluated or counted (the set itself in one process)."""
        if not self.ranks.distributed:
            return data
        return data.subset(shard_indices(torch.arange(len(data)), self.ranks.rank, self.ranks.world_size))

    def trained_parameters(self) -> list[torch.Tensor]:  # all the optimiser updates, in the order its state is saved
        return [*self.prompter.parameters(), *self.model.head.trainable_parameters()]

    def trainable_numbers(self) -> int:  # the prompt's numbers plus a trained head's (input-only: the prompt's alone)
        return sum(p.numel() for p in self.trained_parameters())

    # -- the head fits itself (label mapping) ---------------------------------------------------------------
    def fit_head(self, use_prompt: bool = True, counts: torch.Tensor | None = None, first: int | None = None):
        """Let the head fit itself from prediction counts on the (``first``) mapping images (``use_prompt=False``: its
        no-prompt baseline, shared through the baseline cache). ``counts`` given: fit from those. Returns them."""
        counts = self.measures.counts(use_prompt, first) if counts is None else counts
        self.model.head.fit(counts, baseline=not use_prompt)
        return counts

    def _stop_if_asked(self) -> None:
        """One process stops at once when asked, also while preparing and counting (distributed runs agree on stops
        in the steps' all-reduce, see :meth:`_check_stop`)."""
        if self.ranks.distributed:
            return
        if self.sigint.pressed:
            raise KeyboardInterrupt
        if self.should_stop():
            raise StopTraining

    def _prepare(self) -> None:
        """Before the first step (not on a resume): the head's no-prompt baseline mapping and the mapping the prompt
        starts from, counted on the first ``start_samples`` mapping images (all of them count at the first evaluation,
        :meth:`_zero_shot` and :meth:`_take_over_mapping`: they do not hold the first step up)."""
        head, first = self.model.head, self.cfg.start_samples
        self._stop_if_asked()
        if not head.needs_counts:
            return
        self.events.emit(TrainEvent("prepare", 0, self.total_steps, message=(
            f"Fitting the label mapping: the backbone's predictions on {min(first, len(self.mapping_set))} training "
            "images")))
        baseline_counts = self.fit_head(use_prompt=False, first=first)
        if head.fits_from_data:
            # a prompt that changes no pixel yet (an additive one at zero) sees what the baseline saw: its counts are
            # the baseline's, so the mapping images need not be read a second time
            self.fit_head(counts=baseline_counts if self.prompter.is_identity() else None, first=first)

    # -- checkpoints (the files are RunFiles' business) ----------------------------------------------------
    def save_best(self, val_top1: float) -> None:
        self.files.save_best(self.prompter, self.model.head, step=self.step, val_top1=val_top1,
                             zero_shot_val=self.zero_shot_val)

    def save_last(self) -> None:
        if self.diverged or self.sigint.torn:  # non-finite, or from the middle of a step: keep the last good one
            return
        self.files.save_last(self.prompter, self.model.head, self.optimizer, self.trained_parameters(),
                             step=self.step, best_val=self.best_val, zero_shot_val=self.zero_shot_val,
                             history=self.history, train_seconds=self.schedule.seconds)

    def try_resume(self) -> bool:
        got = self.cfg.resume and self.files.resume(self.prompter, self.model.head, self.optimizer,
                                                    self.trained_parameters(), self.backbone.spec)
        if got:
            self.step, self.best_val, self.zero_shot_val = got.step, got.best_val, got.zero_shot_val
            self.events.history[:] = got.history
            self.schedule.resumed(got.step, got.train_seconds)
        return bool(got)

    # -- the run ------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        with self.sigint:
            return self._run()

    def _run(self) -> TrainResult:
        try:
            if not self.try_resume():
                self._prepare()
            on = (f"; {self.ranks.world_size} processes, {self.rank_batch} images each per step"
                  if self.ranks.distributed else "")
            self.events.emit(TrainEvent("start", self.step, self.total_steps, zero_shot_val_top1=self.zero_shot_val,
                                        message=f"{self.trainable_numbers():,} trainable numbers; {len(self.splits.train)}"
                                                f" train / {len(self.splits.val)} val images{on}"))
            interrupted, reason = self._train()
        except (KeyboardInterrupt, StopTraining):  # before the first step of a new run (see _train)
            reason = "Stopped before the first step: nothing was trained, and nothing was kept."
            self.files.discard()
            self.events.emit(TrainEvent("end", 0, self.total_steps, message=reason))
            return TrainResult(None, None, {}, self.history, True, 0, reason)
        if self.diverged:
            reason = self.diverged
            if not self.files.has_best():
                raise VPError(f"{self.diverged} Nothing was evaluated before it, so there is no prompt to keep.")
        elif not self.files.has_best():  # stopped before the first evaluation: keep what there is
            self.measures.stop_if_asked = lambda: None  # the stop was heard: the kept prompt's counts are not stopped
            self._zero_shot()
            self.save_best(self.measures.validate())
        metrics = self.finish()
        self.events.emit(TrainEvent("end", self.step, self.total_steps, best_val_top1=self.best_val,
                                    zero_shot_val_top1=self.zero_shot_val, message=reason if interrupted else "done"))
        self.save_last()
        return TrainResult(self.best_path, self.last_path, metrics, self.history, interrupted, self.step, reason)

    def _train(self) -> tuple[bool, str | None]:
        """The loop, and how it ended: ``(interrupted, why)``; a stop before any step is raised (nothing to keep)."""
        try:
            self._loop()
            return False, None
        except (KeyboardInterrupt, StopTraining) as e:
            if (self.sigint.torn and self.ranks.distributed) or self.step == 0:  # a second Ctrl-C (torchrun ends the
                raise                                                             # others), or nothing trained
            try:
                self.events.flush()  # the last step taken still gets its event
            except (KeyboardInterrupt, StopTraining, Diverged):
                pass
            return True, (f"Stopped{' (Ctrl-C)' if isinstance(e, KeyboardInterrupt) else ''} at step {self.step}; the "
                          "best prompt so far is kept.")
        except Diverged:
            return True, self.diverged
        except BaseException:
            if self.ranks.distributed:  # an error on this rank alone: no collective now (the others would wait
                self.sigint.torn = True  # for ever); torchrun ends them, the last checkpoint on disk stays
            raise
        finally:
            if self.step > 0:
                self.save_last()  # writes nothing once the prompt is non-finite: the last good checkpoint stays

    def _loop(self) -> None:
        cfg, model, S = self.cfg, self.model, self.backbone.image_size
        self._mark = time.perf_counter()  # the schedule's clock: each step's and evaluation's time
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            if model.head.needs_refit_each_epoch and skip == 0 and epoch > 0:
                self.fit_head()
                self._tick(self.schedule.spent)  # the budget's, not the next step's time
                self.events.emit(TrainEvent("mapping", self.step, self.total_steps, epoch=epoch,
                                            message=f"label mapping recomputed: {model.head.summary()}"))
            gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            # the global batch order is the same on every rank; each takes its own slice of each global batch
            shard = (self.ranks.rank, self.ranks.world_size) if self.ranks.distributed else None
            for images, labels in self.splits.train.batches(self.batch_size, shuffle=True, generator=gen,
                                                            shard=shard, start=skip):
                if self.step >= self.total_steps:
                    break
                self._check_stop()
                if self.device.type == "cuda":  # a copy from pageable memory would wait for the queued steps
                    images, labels = images.pin_memory(), labels.pin_memory()
                self.advance(to_model_input(images.to(self.device, non_blocking=True), S), labels, epoch)
                if self.schedule.is_eval_step(self.step):
                    self.events.flush()
                    self.eval_and_checkpoint(epoch)
        self.events.flush()
        self._validate_the_taken_over_mapping()

    def advance(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0) -> None:
        """One step as the loop takes it: :meth:`train_step`, then the *previous* step's event (see
        :class:`RunEvents`)."""
        start = time.perf_counter()
        loss, acc, lr = self.train_step(x, y)
        self.step += 1
        self._tick(self.schedule.step_taken)  # a time budget's estimate with this step's time: its event carries it
        self.events.step_taken(self.step, self.total_steps, epoch, loss, acc, lr, len(y), start)

    # -- stop votes ---------------------------------------------------------------------------------------
    def _check_stop(self) -> None:
        """Stop before the next step when asked (Ctrl-C, the app's Stop, a callback's StopTraining). Distributed,
        every rank stops at the same step: each step's all-reduce sums the ranks' votes
        (:meth:`reduce_across_ranks`), and they are read two steps late, so reading them never waits for the step
        just queued on the device."""
        if not self.ranks.distributed or len(self._votes) < 2:
            return self._stop_if_asked()
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
        votes = (int(self.sigint.pressed), int(self.events.stop_vote or bool(self.should_stop())))
        loss, acc, summed = reduce_step(self.trained_parameters(), loss, logits, y, votes)
        self._votes.append(self._vote_readback.send(summed[0], summed[1]))
        return loss, acc

    # -- one step, one evaluation ---------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One SGD step on the prompt. Returns the loss and the batch accuracy as detached 0-d tensors on the
        device (reading them waits for the device: :meth:`advance` does that one step late) and the lr."""
        cfg = self.cfg
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        lr = self.schedule.lr(self.step)
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
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        # several processes: the global batch's gradient, loss and accuracy, before any step rule sees them
        loss, acc = self.reduce_across_ranks(loss, logits, y)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.optimizer == "sgd":  # the paper's units; adam and l2sgd do not depend on the gradient's scale
            for p in self.prompter.parameters():
                if p.grad is not None and p.ndim == 3 and p.shape[0] == 3:
                    p.grad.mul_(self.grad_scale)
        self.scaler.step(self.optimizer) if self.scaler is not None else self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        self.prompter.project_()
        return loss, acc, lr

    def _tick(self, record: Callable[[int, float], None]) -> None:  # the schedule's clock: time since the last tick
        now = time.perf_counter()
        record(self.step, now - getattr(self, "_mark", now))
        self._mark = now

    def _zero_shot(self) -> None:
        """At the first evaluation: the no-prompt baseline on all the mapping images if the run started from fewer,
        then the no-prompt validation. Measured once, not before the first step, and not training: off the time
        budget's clock."""
        if self.zero_shot_val is not None:
            return
        if self._counts_all_later():
            self._all_counts = self.fit_head(use_prompt=False)
        self.zero_shot_val = self.measures.validate(use_prompt=False)
        self._mark = time.perf_counter()

    def _counts_all_later(self) -> bool:
        return self.model.head.needs_counts and self.cfg.start_samples < len(self.mapping_set)

    def _take_over_mapping(self) -> None:
        """After the first evaluation: a mapping fitted once (not trained) of a prompt that started as no change is
        refitted on all the mapping images' no-prompt counts. That evaluation, and the prompt it kept, used the
        mapping the steps before it trained with (switching before it lost 10-27 points at 160 steps when it was the
        last); a run that ends before another evaluation validates the new mapping at its end
        (:meth:`_validate_the_taken_over_mapping`)."""
        head = self.model.head
        if not (self._counts_all_later() and head.fits_from_data and not head.needs_refit_each_epoch
                and not head.trainable_parameters() and create_prompter(self.prompter.cfg).is_identity()):
            return
        t0, counts = time.perf_counter(), self._all_counts  # None: resumed after a stop before the first evaluation
        self._replaced = (self.step, head.mapping.clone())
        self.fit_head(counts=counts if counts is not None else self.measures.counts(False))
        self._all_counts = None
        self._mark += time.perf_counter() - t0  # a count is not training: off the time budget's clock

    def _validate_the_taken_over_mapping(self) -> None:
        """At the end of a run that took no step after the mapping was taken over (its first evaluation was its last,
        or a time budget's estimate shrank to it): the prompt with the full mapping has not been validated, and the
        start mapping, counted on a few hundred images, can be far worse (a 40 s run at 224 px on 2 CPU cores kept a
        prompt at 40% validation top-1 against 63% without it), while a prompt trained many steps on the start
        mapping can do worse with the full one. The full mapping is validated and kept if better (validation, not
        test, chooses); otherwise the run ends with the mapping its steps trained with."""
        if self._replaced is None or self._replaced[0] != self.step:
            return
        start, self._replaced = self._replaced[1], None
        val = self.measures.validate()
        is_best = val > self.best_val
        if is_best:
            self.best_val = val
            self.save_best(val)
        else:
            self.model.head.set_mapping(start)
        self.events.emit(TrainEvent("eval", self.step, self.total_steps, val_top1=val, best_val_top1=self.best_val,
                                    zero_shot_val_top1=self.zero_shot_val, is_best=is_best,
                                    message="with the mapping counted on all the mapping images"
                                            f"{'' if is_best else ', not better: the start mapping is kept'}",
                                    prompt=self.prompter.delta().detach().cpu().clone()))
        self.save_last()
        self._tick(self.schedule.evaluated)

    def eval_and_checkpoint(self, epoch: int) -> None:
        self._zero_shot()
        val = self.measures.validate()
        first, is_best = self.best_val is None, self.best_val is None or val > self.best_val
        if is_best:
            self.best_val = val
            self.save_best(val)
        self.events.emit(TrainEvent("eval", self.step, self.total_steps, epoch=epoch, val_top1=val,
                                    best_val_top1=self.best_val, zero_shot_val_top1=self.zero_shot_val,
                                    is_best=is_best, prompt=self.prompter.delta().detach().cpu().clone()))
        if first:
            self._take_over_mapping()
        self.save_last()
        self._tick(self.schedule.evaluated)

    def finish(self) -> dict:
        """Test numbers for the best prompt (chosen on validation), with and without the prompt, written into its
        file."""
        pf = self.files.read_best()
        metrics = {**pf.meta["metrics"], **self.measures.test_file(pf, self.shard(self.splits.test),
                                                                   self.cfg.test_without_prompt),
                   # stopped before the first evaluation: the kept prompt's own validation number (the run's
                   # best_val stays None, so a resume's first evaluation is its best as in an uninterrupted run)
                   "best_val_top1": self.best_val if self.best_val is not None else pf.meta["metrics"].get("val_top1"),
                   "steps": self.step, "train_seconds": round(self.schedule.seconds, 3)}
        self.files.save_tested(pf, metrics)
        return metrics


def train(cfg: TrainConfig, callbacks=None, should_stop=None, cache: BackboneCache | None = None) -> TrainResult:
    """Train a prompt with ``cfg``; see :class:`Trainer`."""
    return Trainer(cfg, callbacks, should_stop, cache).run()
