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
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import build_augment
from .backbones import Backbone, BackboneCache, ClipBackbone, load_backbone
from .capture import build_capture
from .checkpoint import RunFiles
from .data import DataSplits, StreamImageSet, canonical_name, load_splits, to_model_input
from .distributed import (Ranks, all_reduce_sum, check_divisible, global_batches, init_from_env, local_leader_first,
                          rank_seed, reduce_step, shard_indices)
from .errors import VPError
from .evaluation import evaluate, logits_over, test_metrics
from .heads import create_head, prediction_counts
from .heads import templates_for as _templates_for
from .model import PromptedModel
from .optim import build_optimizer
from .prompters import PROMPTERS, PrompterConfig, create_prompter
from .settings import check_config
# the run's settings, events and result have their own module; imported here too, where they always were
from .train_config import (DEFAULT_HEAD_LR, StopTraining, TrainConfig, TrainEvent, TrainResult,  # noqa: F401
                           history_record)
from .utils import HostReadback, amp_dtype, autocast, pick_device, seed_everything


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


def templates_for(cfg: TrainConfig, dataset_key: str) -> list[str]:
    return _templates_for(cfg.templates, dataset_key)


@dataclass(frozen=True)
class StepPlan:
    """How a run's steps are laid out: the global batch (over all ranks) and each rank's part of it, steps per
    epoch and in all, warm-up steps, evaluation interval."""

    batch_size: int
    rank_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    eval_every: int


def plan_steps(cfg: TrainConfig, n_train: int, is_clip: bool, ranks: Ranks) -> StepPlan:
    batch = cfg.batch_size or (256 if is_clip else 128)
    rank_batch = check_divisible(batch, ranks)
    if n_train == 0:
        raise VPError("The training split is empty.")
    per_epoch = global_batches(n_train, batch, ranks.world_size)
    if per_epoch < 1:
        raise VPError(f"{n_train} training images cannot be shared by {ranks.world_size} processes; use fewer "
                      "processes.")
    total = cfg.steps or cfg.epochs * per_epoch
    if total < 1:
        raise VPError("Nothing to train: steps (or epochs) must be at least 1.")
    return StepPlan(batch, rank_batch, per_epoch, total, warmup=max(1, min(cfg.warmup_steps, total // 10)),
                    eval_every=cfg.eval_every or max(1, min(per_epoch, total // 10)))


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


class SigintBetweenSteps:
    """In the main thread, Ctrl-C (SIGINT) only sets :attr:`pressed`, and the loop stops at the next step boundary,
    like the app's Stop: a KeyboardInterrupt in the middle of a step could leave the prompt updated but the step not
    counted, and a resume would then take that step twice. A second Ctrl-C interrupts at once and sets :attr:`torn`
    (the state in memory is then not a checkpoint: nothing is written from it). Elsewhere (another thread, or SIGINT
    ignored on purpose, as under ``nohup ... &``) the handler is left as it is."""

    def __init__(self):
        self.pressed = self.torn = False
        self._previous = None

    def _on_sigint(self, signum, frame):
        if self.pressed:
            self.torn = True
            raise KeyboardInterrupt
        self.pressed = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class Trainer:
    """Holds one run: model, data, optimiser, schedule. ``run()`` trains; events go to ``callbacks``
    (:class:`RunEvents`); ``should_stop()`` is polled every step (the app's Stop button). What the run writes and
    reads back (best and last prompt, history, resume) is ``files``' business (a
    :class:`~visual_prompting.checkpoint.RunFiles` in ``cfg.out_dir`` unless one is given)."""

    def __init__(self, cfg: TrainConfig, callbacks: list[Callable[[TrainEvent], None]] | None = None,
                 should_stop: Callable[[], bool] | None = None, cache: BackboneCache | None = None,
                 splits: DataSplits | None = None, files: RunFiles | None = None):
        check_config(cfg)
        self.cfg = cfg = cfg.with_defaults()  # the lr used is written into the prompt file
        self.should_stop = should_stop or (lambda: False)
        # under torchrun: join the other processes (one process: SINGLE, nothing changes; cuda -> cuda:LOCAL_RANK)
        self.ranks, self.device = init_from_env(pick_device(cfg.device))
        self._load(cache, splits)
        # seeded after the load: building a model may draw from the global RNG and a cached one does not, so the
        # draws below (a trained head's first weights, augmentation, capture) would depend on the process's past
        seed_everything(cfg.seed)
        self._build_model()
        self.plan = plan_steps(cfg, len(self.splits.train), self.is_clip, self.ranks)
        self._build_optimizer()
        self.files = files or RunFiles(cfg.out_dir)
        self.files.describe_run(
            self.ranks, backbone=self.backbone.describe(), class_names=self.class_names, dataset=self.splits.name,
            train_config=cfg.to_dict(), distributed={"world_size": self.ranks.world_size,
                                                     "per_rank_batch": self.plan.rank_batch})
        self.events = RunEvents(callbacks or [], self.ranks, self.device, self._diverged_message)
        self.sigint = SigintBetweenSteps()
        self.step = 0
        self.best_val: float | None = None  # the best validation top-1 of an evaluation so far (None: none yet)
        self.zero_shot_val: float | None = None
        self._votes: list[tuple] = []  # distributed: each step's summed stop votes, read two steps late
        self._vote_readback = HostReadback(self.device, slots=4)
        if self.ranks.distributed and not self.ranks.is_main:
            torch.manual_seed(rank_seed(cfg.seed, self.ranks.rank))  # its own augmentation draws from here on

    # -- set-up -------------------------------------------------------------------------------------------
    def _load(self, cache: BackboneCache | None, splits: DataSplits | None) -> None:
        """The frozen backbone and the data, downloaded once per machine (not raced by the ranks)."""
        cfg = self.cfg
        with local_leader_first(self.ranks):
            self.backbone: Backbone = (cache.get(cfg.model, self.device, cfg.fast_backbone) if cache
                                       else load_backbone(cfg.model, self.device, cfg.fast_backbone))
            self.splits = splits or load_splits(
                cfg.dataset, image_size=self.backbone.image_size, root=cfg.data_root, download=cfg.download,
                val_fraction=cfg.val_fraction, num_workers=cfg.num_workers, max_cache_bytes=int(cfg.cache_gib * 2**30))
        if self.device.type == "cuda":  # streamed batches in page-locked memory: an asynchronous copy to the GPU
            for part in (self.splits.train, self.splits.val, self.splits.test):
                if isinstance(part, StreamImageSet):
                    part.pin_memory = True
        self.class_names = self.splits.class_names
        self.is_clip = isinstance(self.backbone, ClipBackbone)

    def _build_model(self) -> None:
        """The prompter (the only thing trained, with a fully_map head's layer), the model around it, the
        augmentation before it and the capture simulation after it."""
        cfg, S = self.cfg, self.backbone.image_size
        templates = templates_for(cfg, canonical_name(self.splits.name)) if self.is_clip else None
        if cfg.image_scale is not None and not hasattr(PROMPTERS[cfg.prompter], "learn_scale"):
            raise VPError(f"An image scale applies to the scale_pad kinds only, not to {cfg.prompter!r}.")
        self.prompter = create_prompter(PrompterConfig(
            kind=cfg.prompter, image_size=S, size=cfg.prompt_size or default_prompt_size(cfg.prompter, S),
            clamp=cfg.clamp, init=cfg.init, init_std=float(self.backbone.std.mean()) if cfg.init == "randn" else 0.0,
            seed=cfg.seed, scale=cfg.image_scale)).to(self.device)
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

    def _build_optimizer(self) -> None:
        """The prompt in one group; a trained head's layer (fully_map) in its own, at head_lr (its own units)."""
        cfg, head = self.cfg, self.model.head
        self.head_lr = (cfg.head_lr or DEFAULT_HEAD_LR) if head.trainable_parameters() else None
        if cfg.head_lr is not None and self.head_lr is None:
            raise VPError(f"--head-lr applies to a trained head (label mapping 'fully_map'), not to "
                          f"{'CLIP' if self.is_clip else repr(cfg.label_mapping)}.")
        groups = [{"params": list(self.prompter.parameters()), "lr_factor": 1.0}]
        if self.head_lr is not None:
            groups.append({"params": head.trainable_parameters(), "lr_factor": self.head_lr / cfg.lr})
        self.optimizer = build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.weight_decay)
        # per-channel std**2: turns the paper's normalised-space step into the same step in pixel space
        self.grad_scale = (self.backbone.std.view(3, 1, 1) ** 2).to(self.device)
        dtype = amp_dtype(self.device) if cfg.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    # the plan's numbers and the files' paths, where they always were
    batch_size = property(lambda self: self.plan.batch_size)
    rank_batch = property(lambda self: self.plan.rank_batch)
    steps_per_epoch = property(lambda self: self.plan.steps_per_epoch)
    total_steps = property(lambda self: self.plan.total_steps)
    eval_every = property(lambda self: self.plan.eval_every)
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

    def trained_parameters(self) -> list[torch.Tensor]:
        """Everything the optimiser updates, in a fixed order (the checkpoint's optimiser state is keyed by it)."""
        return [*self.prompter.parameters(), *self.model.head.trainable_parameters()]

    def trainable_numbers(self) -> int:
        """The prompt's numbers plus a trained head's (an input-only run: the prompt's alone)."""
        return sum(p.numel() for p in self.trained_parameters())

    def _diverged_message(self, step: int, loss: float) -> str:
        return (f"The loss became {loss} at step {step}: training stopped and the last good prompt is kept (best: "
                f"{self.best_path}). Try a lower learning rate (now {self.cfg.lr:g}).")

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

    def _validate(self, use_prompt: bool = True) -> float:
        """Validation top-1. Without the prompt it is the number every prompt is compared with: for a classifier it
        reads the mapping found *without* a prompt, whatever mapping the prompt trains with (with the hard-coded
        first-k mapping an unprompted model is at chance, which would flatter any prompt)."""
        return evaluate(self.model, self.val_set, use_prompt, self.batch_size, self.cfg.amp,
                        sum_across_ranks=self.ranks.distributed).top1

    def _prepare(self) -> None:
        """Before the first step (not on a resume): the head's no-prompt baseline, its validation accuracy, and the
        mapping the prompt starts from."""
        head = self.model.head
        baseline_counts = self.fit_head(use_prompt=False) if head.needs_counts else None
        self.zero_shot_val = self._validate(use_prompt=False)
        if head.fits_from_data:
            # a prompt that changes no pixel yet (an additive one at zero) sees what the baseline saw: its counts are
            # the baseline's, so the mapping images need not be read a second time
            same = baseline_counts is not None and self.prompter.is_identity()
            self.fit_head(counts=baseline_counts if same else None)

    # -- checkpoints (the files are RunFiles' business) ----------------------------------------------------
    def save_best(self, val_top1: float) -> None:
        self.files.save_best(self.prompter, self.model.head, step=self.step, val_top1=val_top1,
                             zero_shot_val=self.zero_shot_val)

    def save_last(self) -> None:
        if self.diverged or self.sigint.torn:  # non-finite, or from the middle of a step: keep the last good one
            return
        self.files.save_last(self.prompter, self.model.head, self.optimizer, self.trained_parameters(),
                             step=self.step, best_val=self.best_val, zero_shot_val=self.zero_shot_val,
                             history=self.history)

    def try_resume(self) -> bool:
        got = self.cfg.resume and self.files.resume(self.prompter, self.model.head, self.optimizer,
                                                    self.trained_parameters(), self.backbone.spec)
        if got:
            self.step, self.best_val, self.zero_shot_val = got.step, got.best_val, got.zero_shot_val
            self.events.history[:] = got.history
        return bool(got)

    # -- the run ------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        with self.sigint:
            return self._run()

    def _run(self) -> TrainResult:
        if not self.try_resume():
            self._prepare()
        on = (f"; {self.ranks.world_size} processes, {self.rank_batch} images each per step"
              if self.ranks.distributed else "")
        self.events.emit(TrainEvent("start", self.step, self.total_steps, zero_shot_val_top1=self.zero_shot_val,
                                    message=f"{self.trainable_numbers():,} trainable numbers; "
                                            f"{len(self.splits.train)} train / {len(self.splits.val)} val images{on}"))
        interrupted, reason = False, None
        try:
            self._loop()
        except (KeyboardInterrupt, StopTraining) as e:
            if self.sigint.torn and self.ranks.distributed:  # a second Ctrl-C: leave now (torchrun ends the others)
                raise
            interrupted = True
            reason = (f"Stopped{' (Ctrl-C)' if isinstance(e, KeyboardInterrupt) else ''} at step {self.step}; the "
                      "best prompt so far is kept.")
            try:
                self.events.flush()  # the last step taken still gets its event
            except (KeyboardInterrupt, StopTraining, Diverged):
                pass
        except Diverged:
            interrupted = True
        except BaseException:
            if self.ranks.distributed:  # an error on this rank alone: no collective now (the others would wait
                self.sigint.torn = True  # for ever); torchrun ends them, the last checkpoint on disk stays
            raise
        finally:
            self.save_last()  # writes nothing once the prompt is non-finite: the last good checkpoint stays
        if self.diverged:
            reason = self.diverged
            if not self.files.has_best():
                raise VPError(f"{self.diverged} Nothing was evaluated before it, so there is no prompt to keep.")
        elif not self.files.has_best():  # stopped before the first evaluation: keep what there is
            self.save_best(self._validate())
        metrics = self.finish()
        self.events.emit(TrainEvent("end", self.step, self.total_steps, best_val_top1=self.best_val,
                                    zero_shot_val_top1=self.zero_shot_val, message=reason if interrupted else "done"))
        self.save_last()
        return TrainResult(self.best_path, self.last_path, metrics, self.history, interrupted, self.step, reason)

    def _loop(self) -> None:
        cfg, model, S = self.cfg, self.model, self.backbone.image_size
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            if model.head.needs_refit_each_epoch and skip == 0 and epoch > 0:
                self.fit_head()
                self.events.emit(TrainEvent("mapping", self.step, self.total_steps, epoch=epoch,
                                            message=f"label mapping recomputed: {model.head.mapping.tolist()}"))
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
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    self.events.flush()
                    self.eval_and_checkpoint(epoch)
        self.events.flush()

    def advance(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0) -> None:
        """One step as the loop takes it: :meth:`train_step`, then the *previous* step's event (see
        :class:`RunEvents`)."""
        start = time.perf_counter()
        loss, acc, lr = self.train_step(x, y)
        self.step += 1
        self.events.step_taken(self.step, self.total_steps, epoch, loss, acc, lr, len(y), start)

    # -- stop votes ---------------------------------------------------------------------------------------
    def _check_stop(self) -> None:
        """Stop before the next step when asked (Ctrl-C, the app's Stop, a callback's StopTraining). Distributed,
        every rank stops at the same step: each step's all-reduce sums the ranks' votes
        (:meth:`reduce_across_ranks`), and they are read two steps late, so reading them never waits for the step
        just queued on the device."""
        if not self.ranks.distributed:
            if self.sigint.pressed:
                raise KeyboardInterrupt
            if self.should_stop():
                raise StopTraining
            return
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
        lr = cosine_lr(self.step, self.total_steps, cfg.lr, self.plan.warmup)
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
        self.events.emit(TrainEvent("eval", self.step, self.total_steps, epoch=epoch, val_top1=val,
                                    best_val_top1=self.best_val, zero_shot_val_top1=self.zero_shot_val,
                                    is_best=is_best, prompt=self.prompter.delta().detach().cpu().clone()))
        self.save_last()

    def finish(self) -> dict:
        """Test numbers for the best prompt (chosen on validation), with and without the prompt, written into its
        file. Reuses this run's backbone and a copy of its head (the text features are not encoded again; the live
        head keeps the last step's state, which save_last writes after this for a resume)."""
        pf = self.files.read_best()
        head = copy.deepcopy(self.model.head)
        head.restore(pf.meta["head"], tensors=pf.head)
        best = PromptedModel(self.backbone, head, pf.prompter.to(self.device), self.class_names)
        metrics = {**pf.meta["metrics"], **test_metrics(best, self.shard(self.splits.test), self.batch_size,
                                                        self.cfg.amp, self.ranks.distributed,
                                                        self.cfg.test_without_prompt),
                   # stopped before the first evaluation: the kept prompt's own validation number (the run's
                   # best_val stays None, so a resume's first evaluation is its best as in an uninterrupted run)
                   "best_val_top1": self.best_val if self.best_val is not None else pf.meta["metrics"].get("val_top1"),
                   "steps": self.step}
        self.files.save_tested(pf, metrics)
        return metrics


def train(cfg: TrainConfig, callbacks=None, should_stop=None, cache: BackboneCache | None = None) -> TrainResult:
    """Train a prompt with ``cfg``; see :class:`Trainer`."""
    return Trainer(cfg, callbacks, should_stop, cache).run()
