"""What a training run is given and what it gives back, without the loop: :class:`TrainConfig` (every setting, with
its help, choices and checks), :class:`TrainEvent` (what callbacks receive), :class:`TrainResult`, and
:class:`StopTraining` (a callback's way to end a run). The CLI, the app and the recipes import these without
importing the trainer (:mod:`visual_prompting.training`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from .augment import AUGMENTATIONS
from .backbones import backbone_help
from .capture import CAPTURE_AUGMENTATIONS
from .data import dataset_help
from .heads import MAPPINGS, TEMPLATE_SETS
from .optim import OPTIMIZERS
from .prompters import CLAMP_MODES, INITS, PROMPTERS
from .settings import listing, setting
from .utils import check_device_name
from .transforms import TRANSFORMS, stack_choices


def _pct(text: str) -> str:
    """A registry's text inside an argparse help string (where % starts a format)."""
    return text.replace("%", "%%")


def _choice_help(intro: str, registry: dict, fmt: str = "{name} = {description}") -> Callable[[], str]:
    return lambda: f"{intro}{_pct(listing(registry, fmt))} (default: %(default)s)"


def default_lr(optimizer: str) -> float:
    """The learning rate a run uses when none is given: the optimiser's own (:data:`~visual_prompting.optim.OPTIMIZERS`;
    sgd 40 in the paper's units, adam 0.01, l2sgd 70). The one place that decides it (the app's form reads it too)."""
    return OPTIMIZERS[optimizer].default_lr


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
    prompt_fraction: float | None = setting(None, "pad width or patch side as a share of the image side, used when "
                                            "--prompt-size is not given (a recipe's frame is then the same at any "
                                            "resolution: 0.25 at 96 px is 24 px, at 224 px 56 px)", low=0,
                                            low_open=True, high=0.5, label="Prompt size as a share of the side")
    image_scale: float | None = setting(None, "scale_pad / learned_scale_pad: the image's scale on the canvas, in "
                                        "(0, 1] (the start for learned_scale_pad; default (S - 2 * prompt size) / S, "
                                        "shrink_pad's)", low=0, low_open=True, high=1, label="Image scale")
    transforms: str = setting("none", lambda: "learned input transforms applied before the prompt, in order (ACAVP): "
                              f"{_pct(listing(TRANSFORMS))}; e.g. affine+colour (default: %(default)s)",
                              choices=stack_choices)
    clamp: str = setting("straight-through", _choice_help("keep prompted images in [0,1]: ", CLAMP_MODES, "{name} ({description})"),
                         choices=lambda: CLAMP_MODES)
    init: str = setting("zeros", _choice_help("prompt initialisation: ", INITS, "{name} ({description})"), choices=lambda: INITS)
    init_offset: float = setting(0.0, "the prompt's starting pixel value wherever it acts, added to --init's (a "
                                 "start a little above 0 lets the plain clamp pass gradient through black pixels from "
                                 "the first step; default %(default)s)", low=-1, high=1, label="Prompt start offset")
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
    steps: int | None = setting(None, "a step budget instead of epochs (with --time-budget: the most steps)", low=1,
                                label="Steps")
    time_budget: float | None = setting(None, "train for this many seconds instead (steps and validations; the number "
                                        "of steps and the lr schedule are fitted to it from the measured step times, "
                                        "corrected as the run goes, so a faster machine trains more steps)", low=0,
                                        low_open=True, label="The time budget")
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
    start_samples: int = setting(500, "the mapping a run starts from is counted on the first this many of the mapping "
                                 "images, so the first step comes within seconds; at the first evaluation the "
                                 "no-prompt baseline is counted on all of them, and after it (unless it ends the run) "
                                 "a mapping fitted once, of a prompt that started as no change, becomes the one all of "
                                 "them give (default: %(default)s)",
                                 low=1, label="Start samples")
    mapping_samples: int = setting(5000, "train images used to compute frequency / iterative mappings (default: "
                                   "%(default)s)", low=1, label="Mapping samples")
    seed: int = setting(0, "(default: %(default)s)", label="Seed")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, mps (default: %(default)s)", check=check_device_name)
    amp: bool = setting(True, "disable mixed precision on CUDA", flag="--no-amp")
    fast_backbone: bool = setting(True, "run a classifier backbone as loaded, without folding its BatchNorms into "
                                  "its convolutions and without channels_last (the same results, slower)",
                                  flag="--no-fast-backbone")
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

    def with_defaults(self) -> TrainConfig:
        """This config with the defaults that depend on other settings filled in: ``lr`` = the optimiser's own
        (:func:`default_lr`), so that the prompt file records the learning rate that was used."""
        return self if self.lr is not None else replace(self, lr=default_lr(self.optimizer))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainEvent:
    """What a callback receives. ``kind`` is prepare (before the first step: what is being done, in ``message``) |
    start | step | eval | mapping | end. With a time budget ``total_steps`` is the current estimate."""

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
    best_path: str | None  # None: stopped before the first step, nothing was kept
    last_path: str | None
    metrics: dict
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False
    steps_done: int = 0
    stop_reason: str | None = None  # why a run ended early, a sentence (Stop, Ctrl-C, a non-finite loss)

    def below_no_prompt(self, zero: float | None = None) -> bool:
        """Whether the kept prompt reads worse on validation than no prompt: a run too short for its machine (seen:
        2 steps at 224 px in 40 s on 2 CPU cores), or a bad learning rate. ``zero``: the no-prompt accuracy when
        the metrics lack it (a front that saw it in an event)."""
        best = self.metrics.get("best_val_top1")
        zero = self.metrics.get("zero_shot_val_top1", zero)
        return best is not None and zero is not None and best < zero


HISTORY_STEPS = 2000  # step events kept in a run's history (and plotted), about evenly spaced


def history_record(ev: TrainEvent) -> dict | None:
    """What a run's history keeps of an event: its fields without the prompt snapshot and without empty ones;
    None for the step events thinned out (about :data:`HISTORY_STEPS` of them are kept, and the last)."""
    if ev.kind == "step" and ev.step % max(1, ev.total_steps // HISTORY_STEPS) and ev.step != ev.total_steps:
        return None
    return {f.name: getattr(ev, f.name) for f in fields(ev) if f.name != "prompt" and getattr(ev, f.name) is not None}


class StopTraining(Exception):
    """Raise from a callback to end training cleanly (the best prompt stays on disk). Step events arrive one
    step late (see :meth:`Trainer.advance`): raised on step k's event, the run ends after step k+1."""


