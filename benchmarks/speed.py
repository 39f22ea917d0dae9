"""Training speed against the fastest known way to run the frozen model: images/s of the library's training step,
next to

* ``eager``: one forward and backward through the frozen backbone as built (``load_backbone(spec, fast=False)``:
  no BatchNorm folding, NCHW) + head and loss to the input, on the same batch, nothing else (no prompt, no
  optimiser, no host sync). This was called "the limit" before: it is the eager loop, not the hardware's limit;
* the **candidate executions** of that same forward + backward, each computing the same logits and input gradients
  (``tests/test_execution.py``): ``channels_last`` (weights and input in NHWC), ``fold`` (eval BatchNorms folded into
  the convolutions, :func:`visual_prompting.execution.fold_batchnorm`), ``fast_backbone`` (what ``load_backbone``
  does by default and the library trains with: those two, plus EfficientNet-Lite's symmetric "same" paddings moved
  into the convolutions and activations in place where nothing else reads their input; its ``execution`` record is
  kept in the result) and, with ``--compile``, ``compile`` (``torch.compile`` of the fast backbone: its first step, compilation included, is timed
  as ``compile_warmup_s``, and it competes with its throughput over ``--compile-horizon`` steps *including* that
  warm-up, so it is the best execution only where it pays for its compilation). A CLIP backbone is run as built
  (``load_backbone`` rewrites classifiers only): ``eager`` is its only candidate without ``--compile``.
  ``best_execution`` is the fastest candidate measured (``eager`` included);
* ``reference``: a step written the way the paper's released code does it (hjbahng/visual_prompting,
  main_clip.py / main_vision.py): the prompt added to the *normalised* image by a prompter that allocates its
  zero centre and repeats the prompt across the batch on every call, every backbone weight with
  ``requires_grad=True`` (so every weight gradient is computed, and accumulated, never zeroed), SGD on the
  prompt only, ``loss.item()`` and accuracy every step; for CLIP also the class texts tokenized and run through
  the text encoder on every batch (``model(images, text_tokens)``), fp16 autocast + GradScaler on CUDA, and the
  logit-scale clamp. For vision models the reference runs in fp32 (main_vision.py has no AMP);
  ``--reference-amp same`` gives it the library's autocast instead.

    python benchmarks/speed.py                       # CPU: ~6-8 min on 2 cores (design estimate)
    python benchmarks/speed.py --device cuda         # GPU with AMP: ~3 min (design estimate)
    python benchmarks/speed.py --smoke --out /tmp/s  # tiny models, seconds

All variants run in one process, interleaved: every repeat times each variant once (the order rotates from repeat
to repeat), after warm-up steps; the reported images/s is the median over repeats. Models:
``clip:ViT-B-32/random`` (the real ViT-B/32 architecture with random weights: same cost as the real weights,
no download), ``effnet-lite0`` (real weights) at 224 px, and ``effnet-lite0@96``, the app's live training run on a
CPU (``ui.VPApp.train_defaults``: 96 px, batch 64). Batch: on CPU 8 (ViT-B/32), 32 (EfficientNet at 224 px) and 64
(the live run), 3-5 repeats of 2 steps; on CUDA the paper's batches, 256 and 128, 5 repeats of 10 steps.

Distance to the hardware: the FLOPs of one image's forward + backward to the input (the eager model, counted by
``torch.utils.flop_counter.FlopCounterMode``; a multiply-add is 2) times a variant's images/s, divided by the
machine's matmul peak measured in the same repeats (a ``--matmul-size`` square matmul, float32, or the AMP dtype on
CUDA, at the run's thread count, once per repeat, median; where one takes under 50 ms, a GPU's, as many back to back
as fill that, so that the matmuls are timed and not their launch): ``flop_utilisation`` for the library's step,
``best_execution_flop_utilisation`` for the best execution.

Peak memory: the library, eager and reference steps are each run again in a fresh subprocess (so nothing else is
allocated there) for a few steps. CUDA: ``torch.cuda.max_memory_allocated`` of that process (weights, activations,
gradients). CPU: peak resident memory of that process minus its resident memory just before the model was built
(so: weights + activations + gradients + allocator slack; psutil is not needed, it is ``getrusage``'s
``ru_maxrss``).

The library's step in a fresh process: its memory probe then times ``repeats`` x ``steps`` more steps
(``library_fresh_process_img_s``, median over the repeats), the step as the CLI, the app and accuracy.py run it with
nothing run before it, next to ``library_img_s`` measured here among the other variants
(``ratio_fresh_process_vs_in_process``; a warning is printed below 0.9). The two differed by 1.7x on a CPU before the
library tuned the C allocator itself (:func:`visual_prompting.execution.tune_cpu_allocator`): the eager variant's
freed blocks had raised glibc's mmap threshold for everything timed after it. Every variant here runs under that
tuned allocator, so the ratios compare the steps' computation; ``--memory off`` leaves the fresh-process timing out
too.

Results are merged into ``OUT/speed.json`` by model and device (a GPU run keeps the CPU numbers already there;
``--fresh`` starts over): ``results[model][device]`` holds ``library_img_s``, ``eager_img_s``,
``executions_img_s`` (every candidate), ``best_execution`` and ``best_execution_img_s``, ``reference_img_s``,
``ratio_vs_eager``, ``ratio_vs_best_execution`` (goal >= 0.95), ``ratio_vs_reference`` (goal >= 2),
``flops_per_image``, ``matmul_peak`` and ``flop_utilisation``, and ``library_peak_mem_mib`` /
``eager_peak_mem_mib`` / ``reference_peak_mem_mib``. Entries written before this script had candidates call the
eager loop ``limit`` (``limit_img_s``, ``ratio_vs_limit``): :func:`entry` reads both.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (REPO, apply_threads, bench_parser, machine_line, markdown_table, provenance, provenance_of,  # noqa: E402
                    median, pyplot, save_figure, sync, write_json)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from visual_prompting import BackboneCache, TrainConfig, load_backbone  # noqa: E402
from visual_prompting.backbones import ClassifierBackbone, ClipBackbone  # noqa: E402
from visual_prompting.execution import PLAIN as PLAIN_EXECUTION  # noqa: E402
from visual_prompting.execution import fold_batchnorm, is_convnet  # noqa: E402
from visual_prompting.classnames import CLASSNAMES, PAPER_TEMPLATE  # noqa: E402
from visual_prompting.data import DataSplits, TensorImageSet  # noqa: E402
from visual_prompting.heads import create_head  # noqa: E402
from visual_prompting.training import Trainer, cosine_lr  # noqa: E402
from visual_prompting.utils import amp_dtype, autocast, percent, pick_device  # noqa: E402

VARIANTS = ("library", "eager", "reference")  # timed in every row, each one's peak memory measured too
# the other ways to run the eager step's forward + backward (classifier backbones; "compile" with --compile)
EXECUTIONS = ("channels_last", "fold", "fast_backbone")
CLASS_NAMES = CLASSNAMES["fashion_mnist"]
LIVE_RUN = "effnet-lite0@96"  # the app's training run on a CPU (ui.VPApp.train_defaults: effnet-lite0@96, batch 64)
FULL_MODELS = ["clip:ViT-B-32/random", "effnet-lite0", LIVE_RUN]
SMOKE_MODELS = ["clip:vp-tiny", "effnet-lite0@32"]
CPU_BATCH = {LIVE_RUN: 64}  # a model's CPU batch when not the default below
GOAL_VS_BEST, GOAL_VS_REFERENCE, GOAL_LIVE_VS_EAGER = 0.95, 2.0, 1.5


# the code this result measures: `benchmarks/report.py --stale` lists a result as stale once any of these
# paths changed after the commit it records
MEASURES = [
    "benchmarks/speed.py",
    "visual_prompting/training.py",
    "visual_prompting/prompters.py",
    "visual_prompting/heads.py",
    "visual_prompting/backbones.py",
    "visual_prompting/execution.py",
    "visual_prompting/utils.py",
]


def default_batch(spec: str, device: torch.device, smoke: bool) -> int:
    if smoke:
        return 4
    clip = spec.startswith("clip:")
    if device.type == "cuda":
        return 256 if clip else 128  # the paper's batches
    return CPU_BATCH.get(spec, 8 if clip else 32)


def goals(spec: str, device: torch.device | str, r: dict) -> dict:
    """The goals a row is held to: the library's step within 5% of the best execution and at least twice the
    reference-style loop; the app's live run on a CPU also at least 1.5 times the eager loop."""
    out = {f"ratio_vs_best_execution>={GOAL_VS_BEST}": r["ratio_vs_best_execution"] >= GOAL_VS_BEST,
           f"ratio_vs_reference>={GOAL_VS_REFERENCE:g}": r["ratio_vs_reference"] >= GOAL_VS_REFERENCE}
    if spec == LIVE_RUN and str(device) == "cpu":
        out[f"ratio_vs_eager>={GOAL_LIVE_VS_EAGER}"] = r["ratio_vs_eager"] >= GOAL_LIVE_VS_EAGER
    return out


def synthetic_splits(image_size: int, n: int = 64) -> DataSplits:
    """A few random images with Fashion-MNIST's class names: the Trainer needs splits, the timing does not."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % len(CLASS_NAMES)
    s = TensorImageSet(imgs, labels, CLASS_NAMES, "synthetic")
    return DataSplits(s, s, s, CLASS_NAMES, "synthetic")


# -- the three variants ----------------------------------------------------------------------------------------

class LibraryStep:
    """``Trainer.advance``, the loop's step: prompt (clamped), frozen backbone, head, loss, backward, grad scale, SGD,
    projection, and the step event (the previous step's loss and accuracy read from the device)."""

    def __init__(self, spec, device, batch, amp, cache):
        self.tmp = tempfile.TemporaryDirectory(prefix="vp-speed-")
        bb = cache.get(spec, device)
        cfg = TrainConfig(model=spec, steps=10**6, batch_size=batch, device=str(device), amp=amp,
                          out_dir=self.tmp.name, num_workers=0)
        self.trainer = Trainer(cfg, cache=cache, splits=synthetic_splits(bb.image_size))
        self.bb = self.trainer.backbone
        self.normalized_input = False

    def __call__(self, x, y):
        self.trainer.advance(x, y)  # as the loop steps: train_step, the previous step's loss read one step late


class ForwardBackward:
    """Forward + backward of a frozen backbone and head to the input, nothing else: ``eager`` and every candidate
    execution (the same function, run another way)."""

    normalized_input = False

    def __init__(self, backbone, head, device, amp):
        self.bb, self.head, self.device, self.amp = backbone, head, device, amp

    def __call__(self, x, y):
        """One step; its logits and the input's gradient (references, no copies: free to return)."""
        x = x.detach().requires_grad_(True)
        with autocast(self.device, self.amp):
            logits = self.head(self.bb(x)).float()
            loss = F.cross_entropy(logits, y)
        loss.backward()
        return logits.detach(), x.grad


def same_function(outputs: dict, amp: bool, fp32: tuple | None = None) -> dict:
    """Each candidate execution's logits and input gradient on the timed batch against the eager model's (``outputs``:
    name -> the pair a :class:`ForwardBackward` step returns): the largest logit difference relative to the largest
    logit, and the gradient difference's norm relative to the gradient's. Raises when a candidate computes something
    else (float rounding apart: a ReLU's input on its kink can take the other subgradient in a few elements).

    Under AMP two correct executions differ by their own low-precision rounding (bf16: EfficientNet-Lite0's eager
    step is 5-6% off fp32 in its logits and ~40% in its input gradient, and folding the BatchNorms rounds other
    numbers, so fold and eager differ as much from each other), so with ``fp32`` (the eager step's pair in float32)
    each candidate is held to the eager AMP step's own error against fp32: at most 1.5x it plus float32's tolerance
    (``*_vs_fp32`` in the record, eager's under ``"eager"``). Without it under AMP: the fixed AMP tolerances."""
    tol_logits, tol_grad = (5e-2, 1e-1) if amp and fp32 is None else (1e-3, 1e-2)

    def diff(a, b) -> dict:
        return {"logits_max_rel_diff": float((a[0] - b[0]).abs().max() / b[0].abs().max()),
                "input_grad_rel_diff": float((a[1] - b[1]).norm() / b[1].norm())}

    out = {}
    if amp and fp32 is not None:
        own = diff(outputs["eager"], fp32)
        out["eager"] = {f"{k}_vs_fp32": v for k, v in own.items()}
    for n, pair in outputs.items():
        if n == "eager":
            continue
        out[n] = diff(pair, outputs["eager"])
        if amp and fp32 is not None:
            out[n].update({f"{k}_vs_fp32": v for k, v in diff(pair, fp32).items()})
            bad = (out[n]["logits_max_rel_diff_vs_fp32"] > 1.5 * own["logits_max_rel_diff"] + tol_logits
                   or out[n]["input_grad_rel_diff_vs_fp32"] > 1.5 * own["input_grad_rel_diff"] + tol_grad)
            how = (f"against float32, 1.5x the eager AMP step's own difference ({own}) plus {tol_logits:g} for "
                   f"logits and {tol_grad:g} for the input gradient")
        else:
            bad = out[n]["logits_max_rel_diff"] > tol_logits or out[n]["input_grad_rel_diff"] > tol_grad
            how = f"tolerance {tol_logits:g} for logits, {tol_grad:g} for the input gradient"
        if bad:
            raise RuntimeError(f"execution {n!r} does not compute what the eager model does: {out[n]} ({how})")
    return out


def execution_names(backbone, compile_: bool) -> list[str]:
    """The candidate executions of a backbone, as built (``eager`` always; the rewrites ``load_backbone`` knows apply
    to classifiers; ``compile`` when asked)."""
    names = ["eager"]
    if isinstance(backbone, ClassifierBackbone):
        names += [n for n in EXECUTIONS if n != "channels_last" or is_convnet(backbone.net)]
    return names + (["compile"] if compile_ else [])


def execution_backbone(name: str, spec: str, device, cache: BackboneCache):
    """The frozen backbone run the way ``name`` says: ``eager`` as built, ``fast_backbone`` as ``load_backbone`` gives
    it by default (the library's), ``fold`` / ``channels_last`` one of its rewrites alone (recorded in
    ``backbone.execution``, which its forward reads), ``compile`` the fast backbone under ``torch.compile`` (not in
    the library)."""
    if name == "eager":
        return cache.get(spec, device, fast=False)
    if name == "fast_backbone":
        return cache.get(spec, device)
    if name == "compile":
        return torch.compile(cache.get(spec, device))
    bb = load_backbone(spec, device, fast=False)
    if name == "fold":
        example = bb.normalize(torch.rand(1, 3, bb.image_size, bb.image_size, device=device))
        bb.execution = {**PLAIN_EXECUTION, "fold_batchnorm": fold_batchnorm(bb.net, example)}
    elif name == "channels_last":
        bb.net.to(memory_format=torch.channels_last)
        bb.execution = {**PLAIN_EXECUTION, "channels_last": True}
    else:
        raise ValueError(name)
    return bb


class ReferencePadPrompter(nn.Module):
    """The reference code's PadPrompter: randn init, prompt in normalised space, a fresh zero centre and a
    batch-sized copy of the prompt on every call."""

    def __init__(self, pad: int, image_size: int):
        super().__init__()
        self.base_size = image_size - 2 * pad
        self.pad_up = nn.Parameter(torch.randn([1, 3, pad, image_size]))
        self.pad_down = nn.Parameter(torch.randn([1, 3, pad, image_size]))
        self.pad_left = nn.Parameter(torch.randn([1, 3, image_size - 2 * pad, pad]))
        self.pad_right = nn.Parameter(torch.randn([1, 3, image_size - 2 * pad, pad]))

    def forward(self, x):
        base = torch.zeros(1, 3, self.base_size, self.base_size, device=x.device)
        prompt = torch.cat([self.pad_left, base, self.pad_right], dim=3)
        prompt = torch.cat([self.pad_up, prompt, self.pad_down], dim=2)
        prompt = torch.cat(x.size(0) * [prompt])
        return x + prompt


class ReferenceStep:
    """One step of the reference training loop (see the module docstring). Takes normalised images, as the
    reference's DataLoader transforms deliver them."""

    normalized_input = True

    def __init__(self, backbone, device, amp, mode: str):
        self.bb = backbone
        self.net = backbone.net
        self.net.requires_grad_(True)  # the reference never freezes the model
        self.net.eval()
        self.device = device
        self.clip = isinstance(backbone, ClipBackbone)
        S = backbone.image_size
        self.prompter = ReferencePadPrompter(max(1, round(30 * S / 224)), S).to(device)
        self.opt = torch.optim.SGD(self.prompter.parameters(), lr=40, momentum=0.9, weight_decay=0)
        self.step = 0
        self.texts = [PAPER_TEMPLATE.format(c) for c in CLASS_NAMES]
        self.indices = list(range(len(CLASS_NAMES)))
        if mode == "faithful":  # main_clip.py: torch.cuda.amp fp16 autocast + GradScaler; main_vision.py: fp32
            on = amp and device.type == "cuda" and self.clip
            self.dtype = torch.float16 if on else None
        else:  # the library's autocast
            self.dtype = amp_dtype(device) if amp else None
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def _autocast(self):
        if self.dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def __call__(self, images, target):
        for g in self.opt.param_groups:  # scheduler(step)
            g["lr"] = cosine_lr(self.step, 10**6, 40.0, 1000)
        self.step += 1
        if self.clip:
            self.opt.zero_grad()
            text_tokens = self.bb.tokenizer(self.texts).to(self.device)
            with self._autocast():
                prompted = self.prompter(images)
                out = self.net(prompted, text_tokens)
                output = out[2] * out[0] @ out[1].t()  # logits_per_image
                loss = F.cross_entropy(output, target)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.opt)
                else:
                    loss.backward()
                    self.opt.step()
            if self.scaler is not None:
                self.scaler.update()
            self.net.logit_scale.data = torch.clamp(self.net.logit_scale.data, 0, 4.6052)
        else:
            with self._autocast():
                prompted = self.prompter(images)
                output = self.net(prompted)[:, self.indices]
                loss = F.cross_entropy(output, target)
            self.opt.zero_grad()
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
        (output.argmax(1) == target).float().mean().item()  # accuracy(output, target)
        loss.item()


class LibraryStepStreamSync(LibraryStep):
    """The library's step as it was before :class:`~visual_prompting.utils.HostReadback`: the previous step's loss
    read with a plain device-to-host copy, which on CUDA waits for the whole stream (the step just queued too).
    Timed on CUDA only (``library_stream_sync_img_s``), to show what reading without that wait is worth."""

    def __init__(self, *a):
        super().__init__(*a)
        self.trainer.events.readback.cuda = False  # values stay on the device; read() then syncs the stream


def build_variant(name, spec, device, batch, amp, mode, cache, library=None):
    if name == "library":
        return LibraryStep(spec, device, batch, amp, cache)
    if name == "library_stream_sync":
        return LibraryStepStreamSync(spec, device, batch, amp, cache)
    if name == "reference":  # its own copy of the weights: these require grad
        bb = copy.deepcopy(cache.get(spec, device, fast=False)) if cache is not None else load_backbone(spec, device, fast=False)
        return ReferenceStep(bb, device, amp, mode)
    if name in ("eager", *EXECUTIONS, "compile"):
        bb = execution_backbone(name, spec, device, cache)
        head = library.trainer.model.head if library is not None else create_head(getattr(bb, "_orig_mod", bb), CLASS_NAMES)
        return ForwardBackward(bb, head, device, amp)
    raise ValueError(name)


def make_batch(image_size, batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, image_size, image_size, generator=g).mul_(255).round_().div_(255).to(device)
    y = (torch.arange(batch) % len(CLASS_NAMES)).to(device)
    return x, y


# -- timing ----------------------------------------------------------------------------------------------------

def print_profiles(variants: dict, inputs: dict, y, device, steps: int = 5, rows: int = 15) -> None:
    """Where a step's time goes: torch.profiler's ops by self device (else CPU) time, per variant."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for n, v in variants.items():
        sync(device)
        with profile(activities=acts) as prof:
            for _ in range(steps):
                v(inputs[n], y)
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"== profile: {n}, {steps} steps ==\n" + prof.key_averages().table(sort_by=key, row_limit=rows), flush=True)


def eager_flops_per_image(step: ForwardBackward, x, y) -> float:
    """FLOPs of one image's forward + backward to the input through the eager backbone and head (a multiply-add is 2),
    counted by ``torch.utils.flop_counter`` over the whole batch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(x, y)
    return counter.get_total_flops() / len(x)


class MatmulPeak:
    """The machine's matmul peak as this run sees it: ``n x n`` matmuls (float32; on CUDA with AMP, the AMP dtype the
    step runs in) at the run's thread count, timed once per repeat. One matmul per timing where it takes at least
    ``min_s`` (a CPU's 2048 x 2048); where it is quicker (a GPU finishes one in tens of microseconds, so its launch and
    the synchronisation would be timed, not the matmul) as many back to back as fill ``min_s``, counted once at
    warm-up."""

    def __init__(self, device, n: int, dtype=torch.float32, min_s: float = 0.05):
        g = torch.Generator().manual_seed(0)
        self.a, self.b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
        self.device, self.n, self.dtype = device, n, dtype
        self.per_repeat: list[float] = []
        self.calls = 1
        self()  # warm-up: the first call allocates and (CUDA) picks its kernel
        one = self._timed()  # then one timed, to count how many fill min_s
        self.calls = max(1, math.ceil(min_s / max(one, 1e-9)))

    def __call__(self) -> None:
        for _ in range(self.calls):
            torch.mm(self.a, self.b)

    def _timed(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        self()
        sync(self.device)
        return time.perf_counter() - t0

    def time(self) -> float:
        self.per_repeat.append(self.calls * 2 * self.n ** 3 / self._timed())
        return self.per_repeat[-1]

    def record(self) -> dict:
        return {"flop_s": median(self.per_repeat), "per_repeat_flop_s": self.per_repeat, "n": self.n,
                "calls_per_repeat": self.calls, "dtype": str(self.dtype).replace("torch.", ""),
                "threads": torch.get_num_threads(),
                "what": f"{self.calls} {self.n}x{self.n} matmul(s) back to back per repeat, 2*n^3 FLOPs each over "
                        "their time, median"}


def time_model(spec, device, batch, amp, mode, steps, repeats, warmup, quiet=False, profile=False,
               compile_=False, compile_horizon=100, matmul_size=2048) -> dict:
    cache = BackboneCache()
    library = build_variant("library", spec, device, batch, amp, mode, cache)
    executions = execution_names(cache.get(spec, device, fast=False), compile_)
    variants = {"library": library}
    for n in executions:
        variants[n] = build_variant(n, spec, device, batch, amp, mode, cache, library)
    variants["reference"] = build_variant("reference", spec, device, batch, amp, mode, cache)
    if device.type == "cuda":  # on CPU a device-to-host read waits for nothing: the two are the same step there
        variants["library_stream_sync"] = build_variant("library_stream_sync", spec, device, batch, amp, mode, cache)
    timed_names = list(variants)
    bb = cache.get(spec, device)
    x, y = make_batch(bb.image_size, batch, device)
    with torch.no_grad():
        x_norm = bb.normalize(x)  # the reference's DataLoader normalises before the step
    inputs = {n: (x_norm if v.normalized_input else x) for n, v in variants.items()}
    out, first = {}, {}
    for n in executions:  # each one's first step: checked against eager's, and it counts as a warm-up step
        sync(device)
        t0 = time.perf_counter()
        first[n] = variants[n](x, y)
        sync(device)
        if n == "compile":  # its first step compiles (forward and backward): what it costs before it runs at speed
            out["compile_warmup_s"] = time.perf_counter() - t0
            if not quiet:
                print(f"    compile: first step {out['compile_warmup_s']:.1f} s", flush=True)
    fp32 = None
    if amp and len(executions) > 1:  # the eager step in float32: what AMP's own rounding is measured against
        e = variants["eager"]
        fp32 = tuple(t.clone() for t in ForwardBackward(e.bb, e.head, device, False)(x, y))
    out["executions_check"] = same_function(first, amp, fp32)
    del first, fp32
    for n, v in variants.items():
        for _ in range(warmup - (n in executions)):
            v(inputs[n], y)
    peak = MatmulPeak(device, matmul_size, amp_dtype(device) if amp else torch.float32)
    sync(device)
    per_repeat = {n: [] for n in timed_names}
    for r in range(repeats):
        peak.time()
        k = r % len(timed_names)
        order = timed_names[k:] + timed_names[:k]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                variants[n](inputs[n], y)
            sync(device)
            per_repeat[n].append(batch * steps / (time.perf_counter() - t0))
        if not quiet:
            print(f"    repeat {r + 1}/{repeats}: " + "  ".join(f"{n} {per_repeat[n][-1]:.1f}" for n in timed_names)
                  + f" img/s; matmul {peak.per_repeat[-1] / 1e9:.1f} GFLOP/s", flush=True)
    med = {n: median(v) for n, v in per_repeat.items()}
    out.update({f"{n}_img_s": med[n] for n in ("library", "eager", "reference", "library_stream_sync") if n in med})
    out["executions_img_s"] = {n: med[n] for n in executions if n != "compile"}
    if compile_:  # it competes with its rate over the horizon, compilation included
        out["compile_img_s"] = med["compile"]
        out["compile_horizon_steps"] = compile_horizon
        out["executions_img_s"]["compile"] = compile_horizon * batch / (
            out["compile_warmup_s"] + (compile_horizon - 1) * batch / med["compile"])
    out["best_execution"] = max(out["executions_img_s"], key=out["executions_img_s"].get)
    out["best_execution_img_s"] = out["executions_img_s"][out["best_execution"]]
    out["fast_backbone_execution"] = dict(bb.execution)  # what load_backbone did (the library's backbone)
    out["per_repeat_img_s"] = per_repeat
    out["matmul_peak"] = peak.record()
    out["flops_per_image"] = eager_flops_per_image(variants["eager"], x, y)
    out["flops_counted_by"] = "torch.utils.flop_counter.FlopCounterMode, eager forward + backward to the input"
    out["image_size"] = bb.image_size
    if profile:
        print_profiles({n: variants[n] for n in ("library", out["best_execution"])}, inputs, y, device)
    del variants, library, cache, bb, x, y, x_norm, inputs, peak
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def derived(r: dict) -> dict:
    """The ratios and utilisations of a row, from its measured numbers."""
    peak = r["matmul_peak"]["flop_s"]
    return {"ratio_vs_eager": r["library_img_s"] / r["eager_img_s"],
            "ratio_vs_best_execution": r["library_img_s"] / r["best_execution_img_s"],
            "ratio_vs_reference": r["library_img_s"] / r["reference_img_s"],
            "flop_utilisation": r["flops_per_image"] * r["library_img_s"] / peak,
            "best_execution_flop_utilisation": r["flops_per_image"] * r["best_execution_img_s"] / peak,
            "eager_flop_utilisation": r["flops_per_image"] * r["eager_img_s"] / peak}


# -- memory (one fresh process per variant) --------------------------------------------------------------------

def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _reset_peak_rss() -> bool:
    """Linux: reset this process's peak RSS (VmHWM) to its current RSS, so the peak measured next is only
    what comes after (startup spikes, e.g. while libraries load, are not counted)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def probe_memory(variant, spec, device, batch, amp, mode, steps=3, timed_steps: int = 0, repeats: int = 1) -> dict:
    """Run in a fresh process: build one variant, run a few steps, report its peak memory; with ``timed_steps``,
    then time ``repeats`` x ``timed_steps`` more steps (``img_s``: the median repeat's images/s)."""
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    x, y = make_batch(load_backbone_size(spec), batch, device)
    # the libraries a model load imports are loaded first: their memory is not the variant's
    import open_clip  # noqa: F401
    from visual_prompting.backbones import imagenet_classes

    imagenet_classes()
    try:
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        pass
    gc.collect()
    reset = _reset_peak_rss()
    before = _rss_bytes() or _peak_rss_bytes()
    # the reference loads its own weights (cache=None): one copy of the model in this process, as in the others
    cache = BackboneCache() if variant != "reference" else None
    v = build_variant(variant, spec, device, batch, amp, mode, cache)
    bb = getattr(v.bb, "_orig_mod", v.bb)  # its own backbone: loading another would count its weights
    with torch.no_grad():
        xin = bb.normalize(x) if v.normalized_input else x
    for _ in range(steps):
        v(xin, y)
    sync(device)
    if device.type == "cuda":
        out = {"peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20,
               "memory_kind": "cuda max_memory_allocated in a fresh process"}
    else:
        kind = "CPU peak RSS of a fresh process minus its RSS before the model was built"
        if not reset:
            kind += " (peak could not be reset here: an upper bound that may include startup)"
        out = {"peak_mem_mib": (_peak_rss_bytes() - before) / 2**20, "memory_kind": kind}
    if timed_steps:
        per = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(timed_steps):
                v(xin, y)
            sync(device)
            per.append(batch * timed_steps / (time.perf_counter() - t0))
        out["img_s"], out["per_repeat_img_s"] = median(per), per
    return out


def load_backbone_size(spec: str) -> int:
    from visual_prompting.backbones import TINY_CLIP_CONFIGS, parse_spec

    family, name, _, size = parse_spec(spec)
    if size:
        return size
    if family == "clip" and name in TINY_CLIP_CONFIGS:
        return TINY_CLIP_CONFIGS[name]["vision_cfg"]["image_size"]
    return 224


def memory_in_subprocess(variant, spec, device, batch, amp, mode, threads, timed_steps=0, repeats=1) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-memory", variant, "--models", spec,
           "--device", str(device), "--batch-size", str(batch), "--reference-amp", mode,
           "--probe-steps", str(timed_steps), "--repeats", str(repeats)]
    if not amp:
        cmd.append("--no-amp")
    if threads:
        cmd += ["--threads", str(threads)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"peak_mem_mib": None, "memory_kind": f"probe failed: {(p.stderr or p.stdout)[-300:]}"}
    return json.loads(lines[-1])


# -- report ----------------------------------------------------------------------------------------------------

def entry(r: dict) -> dict:
    """A ``speed.json`` entry under the current keys. An entry written before the candidate executions timed only the
    eager loop, under the name ``limit`` (``limit_img_s``, ``ratio_vs_limit``, ``limit_peak_mem_mib``): its eager
    numbers are read from there, and what it did not measure (executions, FLOPs, the matmul peak) is None."""
    if "eager_img_s" in r:
        return r
    e = dict(r, eager_img_s=r["limit_img_s"], ratio_vs_eager=r["ratio_vs_limit"],
             eager_peak_mem_mib=r.get("limit_peak_mem_mib"), executions_img_s={}, best_execution=None,
             best_execution_img_s=None, ratio_vs_best_execution=None, flops_per_image=None, matmul_peak=None,
             flop_utilisation=None, best_execution_flop_utilisation=None, eager_flop_utilisation=None,
             eager_loop_only=True)
    e["per_repeat_img_s"] = {("eager" if k == "limit" else k): v for k, v in (r.get("per_repeat_img_s") or {}).items()}
    return e


def table(results: dict) -> str:
    rows = []
    for model, per_dev in results.items():
        for dev, r in per_dev.items():
            r = entry(r)
            flops = r["flops_per_image"]
            rows.append([model, f"{dev} ({provenance_of(r)['machine'].get('device_name')})", r["batch_size"],
                         "on" if r["amp"] else "off", r["library_img_s"], r["eager_img_s"], r["best_execution"],
                         r["best_execution_img_s"], r["reference_img_s"], r["ratio_vs_eager"],
                         r["ratio_vs_best_execution"], r["ratio_vs_reference"],
                         None if flops is None else flops / 1e9, percent(r["flop_utilisation"]),
                         _mib(r.get("library_peak_mem_mib")), _mib(r.get("eager_peak_mem_mib")),
                         _mib(r.get("reference_peak_mem_mib")), r.get("library_fresh_process_img_s")])
    return markdown_table(["model", "device", "batch", "AMP", "library img/s", "eager img/s", "best execution",
                           "best execution img/s", "reference img/s", "library/eager",
                           f"library/best execution (goal >= {GOAL_VS_BEST})",
                           f"library/reference (goal >= {GOAL_VS_REFERENCE:g})", "GFLOP/image", "FLOP utilisation",
                           "library MiB", "eager MiB", "reference MiB", "library img/s, fresh process"], rows)


def _mib(v):
    return None if v is None else round(v)


def plot(results: dict, path: Path) -> None:
    """Speeds relative to the best execution (so CPU and GPU entries share an axis; an entry that timed only the eager
    loop: relative to that), absolute img/s written on the bars; peak memory in MiB."""
    plt = pyplot()
    entries = [(m, d, entry(r)) for m, per in results.items() for d, r in per.items()]
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.5 + 1.5 * len(entries)))
    labels = [f"{m}\n{d}, batch {r['batch_size']}" for m, d, r in entries]
    colors = {"library": "#1f77b4", "best_execution": "#2ca02c", "eager": "#7f7f7f", "reference": "#ff7f0e"}
    bars = ("library", "best_execution", "eager", "reference")
    h = 0.2
    mem_seen = []
    for j, v in enumerate(bars):
        ys = [i + (j - 1.5) * h for i in range(len(entries))]
        base = [r["best_execution_img_s"] or r["eager_img_s"] for _, _, r in entries]
        rel = [(r[f"{v}_img_s"] or 0) / b for (_, _, r), b in zip(entries, base)]
        axes[0].barh(ys, rel, height=h, color=colors[v], label=v.replace("_", " "))
        for y_, x_, (_, _, r) in zip(ys, rel, entries):
            name = f" ({r['best_execution']})" if v == "best_execution" and r["best_execution"] else ""
            axes[0].text(x_, y_, f" {r[f'{v}_img_s']:.4g} img/s{name}" if r[f"{v}_img_s"] else " not measured",
                         va="center", fontsize=7)
        if v == "best_execution":
            continue
        mems = [r.get(f"{v}_peak_mem_mib") for _, _, r in entries]
        mem_seen += [m for m in mems if m]
        axes[1].barh(ys, [m or 0 for m in mems], height=h, color=colors[v], label=v)
        for y_, m in zip(ys, mems):
            axes[1].text(m or 0, y_, f" {m:,.0f}" if m else " not measured", va="center", fontsize=7)
    axes[0].axvline(GOAL_VS_BEST, color="gray", ls="--", lw=1,
                    label=f"goal: library >= {GOAL_VS_BEST} x best execution")
    axes[0].set_xlabel("training images/s relative to the best execution (an entry that timed only the eager loop: "
                       "to that), median over repeats", fontsize=8)
    axes[0].set_xlim(0, 1.6)
    axes[1].set_xlabel("peak memory (MiB)")
    if mem_seen and max(mem_seen) / min(mem_seen) > 20:
        axes[1].set_xscale("log")
        axes[1].set_xlim(min(mem_seen) / 2, max(mem_seen) * 3)
    elif mem_seen:
        axes[1].set_xlim(0, max(mem_seen) * 1.2)
    for ax in axes:
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle("One training step: library vs the best execution of the frozen forward+backward, the eager loop "
                 "and a reference-style loop", fontsize=10)
    save_figure(plt, fig, path, rect=(0, 0.07, 1, 1))


# -- main ------------------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = bench_parser(__doc__, "speed", "tiny models (clip:vp-tiny, effnet-lite0@32), batch 4, 1 step")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    ap.add_argument("--models", default=None, help=f"comma-separated backbone specs (default: {','.join(FULL_MODELS)})")
    ap.add_argument("--batch-size", type=int, default=None, help="one batch for every model (default: per model, see above)")
    ap.add_argument("--steps", type=int, default=None, help="steps per variant per repeat (default: CPU 2, CUDA 10)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default: CPU 5 (3 for CLIP), CUDA 5)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default: CPU 1, CUDA 3)")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="no autocast on CUDA")
    ap.add_argument("--reference-amp", choices=["faithful", "same"], default="faithful",
                    help="reference loop's precision: as the reference code (CLIP fp16, vision fp32) or the library's")
    ap.add_argument("--memory", choices=["subprocess", "off"], default="subprocess",
                    help="measure each variant's peak memory in a fresh process (off: leave it null)")
    ap.add_argument("--fresh", action="store_true", help="do not merge with an existing speed.json")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile of the fast backbone as a candidate execution (its first step, "
                         "compilation included, is recorded and counted over --compile-horizon steps)")
    ap.add_argument("--compile-horizon", type=int, default=100,
                    help="steps over which compile's warm-up is counted (default: %(default)s, the app's CPU run)")
    ap.add_argument("--matmul-size", type=int, default=None,
                    help="side of the square matmul that measures the machine's peak (default: 2048; smoke 256)")
    ap.add_argument("--probe-memory", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true",
                    help="run nothing: rewrite speed.md and speed.png from OUT/speed.json (e.g. after merging in the "
                         "entries of a run on another machine)")
    ap.add_argument("--profile", action="store_true",
                    help="also print torch.profiler's top ops of library and the best execution")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = pick_device(args.device)
    models = args.models.split(",") if args.models else (SMOKE_MODELS if args.smoke else FULL_MODELS)
    amp = bool(args.amp and device.type == "cuda")
    if args.probe_memory:  # internal: one variant, in this fresh process
        spec = models[0]
        batch = args.batch_size or default_batch(spec, device, args.smoke)
        print(json.dumps(probe_memory(args.probe_memory, spec, device, batch, amp, args.reference_amp,
                                      timed_steps=args.probe_steps, repeats=args.repeats or 1)))
        return {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "speed.json"
    if args.render:
        doc = json.loads(json_path.read_text())
        print(render(doc, out))
        return doc
    doc = {"results": {}}
    if json_path.is_file() and not args.fresh:
        try:
            doc = json.loads(json_path.read_text())
            doc.setdefault("results", {})
        except json.JSONDecodeError:
            doc = {"results": {}}
    prov = provenance("speed.py", argv, device)  # before the run; each entry keeps the provenance of its own run
    doc.pop("machine", None)  # files before provenance(): the last run's machine, now per entry
    doc["notes"] = ("images/s: median over interleaved repeats. eager: forward+backward of the frozen backbone+head "
                    "as built to the input only (called 'limit' in entries before the candidate executions). "
                    "executions: the same forward+backward run other ways (channels_last, BatchNorm folded, both as "
                    "load_backbone does by default, torch.compile with its warm-up counted); best_execution: the "
                    "fastest. flop_utilisation: FLOPs per image (torch.utils.flop_counter) x images/s / the measured "
                    "matmul peak. reference: the paper's released training loop's habits (see speed.py). "
                    "clip:ViT-B-32/random has the real ViT-B/32 architecture with random weights (same cost). "
                    "Peak memory: a fresh process per variant (CUDA: max_memory_allocated; CPU: peak RSS minus RSS "
                    "before the model was built).")
    for spec in models:
        batch = args.batch_size or default_batch(spec, device, args.smoke)
        clip = spec.startswith("clip:") and not args.smoke
        steps = args.steps or (1 if args.smoke else 10 if device.type == "cuda" else 2)
        repeats = args.repeats or (2 if args.smoke else 5 if device.type == "cuda" else 3 if clip else 5)
        warmup = args.warmup if args.warmup is not None else (1 if args.smoke or device.type != "cuda" else 3)
        if not args.quiet:
            print(f"-- {spec} on {device}: batch {batch}, {repeats} repeats x {steps} steps, AMP {amp}", flush=True)
        r = time_model(spec, device, batch, amp, args.reference_amp, steps, repeats, warmup, args.quiet, args.profile,
                       args.compile, args.compile_horizon, args.matmul_size or (256 if args.smoke else 2048))
        r.update(batch_size=batch, steps=steps, repeats=repeats, warmup=warmup, amp=amp,
                 amp_dtype=str(amp_dtype(device)) if amp else None, reference_amp=args.reference_amp, **derived(r))
        r["library_fresh_process_img_s"] = r["ratio_fresh_process_vs_in_process"] = None
        for v in VARIANTS:
            if args.memory == "subprocess":  # the library's probe times its step too: a fresh process's speed
                timed = steps if v == "library" else 0
                mem = memory_in_subprocess(v, spec, device, batch, amp, args.reference_amp, args.threads, timed,
                                           repeats)
            else:
                mem = {"peak_mem_mib": None, "memory_kind": "not measured (--memory off)"}
            r[f"{v}_peak_mem_mib"] = mem["peak_mem_mib"]
            r["memory_kind"] = mem["memory_kind"]
            if mem.get("img_s"):
                r["library_fresh_process_img_s"] = mem["img_s"]
                r["ratio_fresh_process_vs_in_process"] = mem["img_s"] / r["library_img_s"]
        fresh = r["ratio_fresh_process_vs_in_process"]
        if fresh is not None and fresh < 0.9:
            print(f"   WARNING: {spec}: the library's step in a fresh process runs at {fresh:.2f}x its speed here "
                  "(among the other variants): what ran before changes it, so the in-process number is not what "
                  "a user's run gets", flush=True)
        r["goals"] = goals(spec, device.type, r)
        r["provenance"] = prov
        doc["results"].setdefault(spec, {})[device.type] = r
        write_json(json_path, doc)
        if not args.quiet:
            print(f"   library {r['library_img_s']:.1f}  eager {r['eager_img_s']:.1f}  best execution "
                  f"({r['best_execution']}) {r['best_execution_img_s']:.1f}  reference {r['reference_img_s']:.1f} "
                  f"img/s; library/eager {r['ratio_vs_eager']:.2f}, library/best {r['ratio_vs_best_execution']:.2f}, "
                  f"library/reference {r['ratio_vs_reference']:.2f}; FLOP utilisation {r['flop_utilisation']:.1%} "
                  f"({r['flops_per_image'] / 1e9:.2f} GFLOP/image, matmul peak "
                  f"{r['matmul_peak']['flop_s'] / 1e9:.1f} GFLOP/s)"
                  + (f"; before HostReadback (a stream sync per step) {r['library_stream_sync_img_s']:.1f}"
                     if "library_stream_sync_img_s" in r else ""), flush=True)
    print(render(doc, out))
    return doc


def render(doc: dict, out: Path) -> str:
    """speed.md and speed.png from a speed.json's results (CPU and GPU entries may come from different runs and
    machines: each entry's command and machine are listed)."""
    plot(doc["results"], out / "speed.png")
    entries = [(m, d, r) for m, per in doc["results"].items() for d, r in per.items()]
    commands = list(dict.fromkeys(provenance_of(r)["command"] for _, _, r in entries))
    machines = {}
    for m, d, r in entries:
        machines.setdefault(machine_line(provenance_of(r)), []).append(f"{m} {d}")
    text = ("### Training speed against the best execution of the frozen model\n\n" + "".join(f"    {c}\n" for c in commands) + "\n"
            + table(doc["results"]) + "\n\n"
            + "".join(f"Machine ({', '.join(v)}): {k}.\n" for k, v in machines.items()))
    (out / "speed.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
