"""How a frozen backbone is run: the same function, computed faster.

A prompt is trained by back-propagating through a model that never changes, so the model can be rewritten once, when
it is loaded, into a faster form that computes the same logits and the same input gradients:

* **BatchNorm folded into the convolution before it.** In eval mode a BatchNorm is a per-channel scale and shift;
  :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` folds it into the convolution's weight and bias, and the BatchNorm
  becomes an identity. Which convolution feeds which BatchNorm is read off one traced forward pass
  (:func:`conv_bn_pairs`): a pair is folded only when the BatchNorm's input *is* the convolution's output and nothing
  else reads that output (its autograd node has one consumer), so a model whose code is not a plain
  ``nn.Sequential`` (EfficientNet-Lite0's same-padding convolutions, torchvision's and timm's blocks) is folded
  too, and a convolution whose output is also read elsewhere is left alone. BatchNorm subclasses that do more (timm's
  ``BatchNormAct2d`` applies its activation inside) are left alone.
* **channels_last memory format** for the weights and the input of convolutional networks: on the CPUs this project
  runs on (oneDNN) and on CUDA GPUs (cuDNN, with bf16 autocast) convolutions run faster in NHWC.
* **"Same" padding inside the convolution** (:func:`fold_same_padding`): EfficientNet-Lite's convolutions pad a copy
  of their input (TensorFlow's "same") before convolving; where that padding is the same on both sides the
  convolution pads by itself, with the same zeros and no copy. Where it has one zero more after than before (the
  stride-2 convolutions on an even side; :func:`fold_one_sided_padding`, on CPU) the kernel grows by one row and
  column of zeros in front and the convolution pads both sides by the larger amount: the same sums, no padded copy
  (forward, and its slice backward): forward + backward to the input measured 6-19% faster at 96 px (batch 64) and
  14-19% at 224 px (batch 32) on a 2-core CPU, A/B in one process (the spread is the VM's, between runs).
* **Activations in place** (:func:`inplace_activations`): a ReLU / ReLU6 whose input nothing else reads (one
  autograd consumer at every call, in one traced pass) overwrites it instead of filling a new tensor; its backward
  reads its output, which holds the same information.

:func:`speed_up` applies what suits the backbone and device and returns what it did (recorded in the backbone's
description, so in every prompt file and benchmark result). ``TrainConfig.fast_backbone=False`` (``--no-fast-backbone``)
turns it off. The results equal the plain model's within float tolerance: ``tests/test_execution.py`` checks logits
and input gradients for every classifier family.

One more thing decides a CPU step's speed and is not the model's: **the C library's allocator**
(:func:`tune_cpu_allocator`, applied by ``load_backbone`` for a fast backbone on a CPU, any family). A step allocates
and frees its activations anew (tens of MiB each at 96 px, batch 64). glibc's malloc hands a block at or above its
mmap threshold (128 KiB at the start; raised only when such a block is freed, to 32 MiB at most) fresh pages from the
kernel, and gives the top of its heap back above its trim threshold, so every step faulted its activations' pages in
again: the README's 200-step training command took 7.1 million minor page faults, 0.34 million with the thresholds
raised (41.7 s against 37.4 s, start-up and evaluations included), and the library's step ran 240-300 img/s in a
fresh process against 430-470 with them (effnet-lite0@96, batch 64, 2 threads, 2-core AMD EPYC, three processes of
each, alternated); in a worker thread, as the app trains, 190-450 (it depends on the thread's arena) against
370-410. ``benchmarks/speed.py`` had read 451 img/s for the same step because it runs the eager model first, whose
freed blocks had raised the threshold: the process's history, not the step. The numbers computed are the same bit
for bit; the price is that freed memory stays with the process up to :data:`CPU_ALLOCATOR`'s trim threshold
(:func:`release_cpu_memory` gives it back, as the app does after a training run). Elsewhere than glibc (macOS,
Windows, musl) nothing is changed.
"""
from __future__ import annotations

import ctypes
import platform
from collections import Counter

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PLAIN = {"fold_batchnorm": 0, "channels_last": False, "same_padding": 0, "one_sided_padding": 0, "inplace_act": 0}
# glibc malloc's thresholds for a process that trains on a CPU (:func:`tune_cpu_allocator`): blocks below 256 MiB come
# from the heap (a step's largest activation is 54 MiB at 96 px, batch 64), and up to 1 GiB of freed heap is kept
CPU_ALLOCATOR = {"mmap_threshold": 256 * 2**20, "trim_threshold": 2**30}
_MALLOPT = {"trim_threshold": -1, "mmap_threshold": -3}  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)


def consumers(root: torch.Tensor) -> Counter:
    """How many autograd nodes read each node's output, over the graph that produced ``root``."""
    count: Counter = Counter()
    seen, stack = set(), [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                count[nxt] += 1
                stack.append(nxt)
    return count


def traced_readers(net: nn.Module, example: torch.Tensor, hooks: list) -> Counter:
    """Run ``net`` once on ``example`` with autograd on (``hooks``, the handles of the hooks that watch the pass, are
    removed afterwards): how many autograd nodes read each node's output (:func:`consumers`)."""
    try:
        with torch.enable_grad():
            out = net(example.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    return consumers(out[0] if isinstance(out, (tuple, list)) else out)


def conv_bn_pairs(net: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, batchnorm name)`` for every plain BatchNorm2d whose only input is a Conv2d's output that nothing
    else reads, found by running ``net`` once on ``example`` (each module called once)."""
    names = {m: n for n, m in net.named_modules()}
    conv_out: dict[str, list] = {}
    bn_in: dict[str, list] = {}
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o: conv_out.setdefault(names[mod], []).append(o)))
        elif type(m) is nn.BatchNorm2d:
            hooks.append(m.register_forward_pre_hook(lambda mod, i: bn_in.setdefault(names[mod], []).append(i[0])))
    readers = traced_readers(net, example, hooks)
    by_output = {id(outs[0]): conv for conv, outs in conv_out.items() if len(outs) == 1}
    pairs = []
    for bn, ins in bn_in.items():
        conv = by_output.get(id(ins[0])) if len(ins) == 1 else None
        if conv is not None and readers[conv_out[conv][0].grad_fn] == 1:
            pairs.append((conv, bn))
    return pairs


def _set(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, module)


@torch.no_grad()
def fold_batchnorm(net: nn.Module, example: torch.Tensor) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into it (see :func:`conv_bn_pairs`); the
    number folded. ``net`` must be in eval mode (a frozen backbone always is)."""
    pairs = conv_bn_pairs(net, example)
    for conv, bn in pairs:
        c, b = net.get_submodule(conv), net.get_submodule(bn)
        if b.running_mean is None or b.running_var is None:
            continue
        fused = fuse_conv_bn_eval(c, b)
        fused.weight.requires_grad_(False)
        fused.bias.requires_grad_(False)
        _set(net, conv, fused)
        _set(net, bn, nn.Identity())
    return len(pairs)


def is_convnet(net: nn.Module) -> bool:
    """A network whose work is mostly convolutions (more than a patch-embedding stem)."""
    return sum(isinstance(m, nn.Conv2d) for m in net.modules()) >= 3


def fold_same_padding(net: nn.Module) -> int:
    """Move each symmetric static "same" padding into its convolution's own padding; how many. EfficientNet-Lite's
    convolutions (``Conv2dStaticSamePadding``) hold TensorFlow's "same" padding as a ``static_padding`` ``ZeroPad2d``
    applied before ``F.conv2d(x, ..., self.padding, ...)``: a padded copy of the activation forward and a slice of it
    backward. Where that padding is the same on both sides (the stride-1 convolutions) the convolution pads by
    itself, the same zeros; a stride-2 convolution's padding is one-sided and stays."""
    n = 0
    for m in net.modules():
        pad = getattr(m, "static_padding", None)
        if isinstance(m, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and tuple(m.padding) == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                m.padding, m.static_padding = (top, left), nn.Identity()
                n += 1
    return n


@torch.no_grad()
def fold_one_sided_padding(net: nn.Module) -> int:
    """Fold each static "same" padding with one zero more after than before (``left + 1 == right``,
    ``top + 1 == bottom``: TensorFlow's padding of a stride-2 convolution on an even side) into its convolution; how
    many. Output ``i`` of the padded convolution reads input rows ``s*i - top .. s*i - top + k - 1``; a kernel one row
    and one column larger whose first row and column are zero, padded by ``top + 1`` on both sides, reads rows
    ``s*i - top - 1 ..``, the first with a zero weight: the same rows, the same weights, the same output size, and no
    padded copy of the activation. Only frozen, undilated convolutions (the weight is replaced)."""
    n = 0
    for m in net.modules():
        pad = getattr(m, "static_padding", None)
        if not (isinstance(m, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and tuple(m.padding) == (0, 0)
                and tuple(m.dilation) == (1, 1) and not m.weight.requires_grad):
            continue
        left, right, top, bottom = pad.padding
        if right != left + 1 or bottom != top + 1:
            continue
        w = m.weight
        grown = w.new_zeros(w.shape[0], w.shape[1], w.shape[2] + 1, w.shape[3] + 1)
        grown[:, :, 1:, 1:] = w
        m.weight = nn.Parameter(grown, requires_grad=False)
        m.kernel_size, m.padding, m.static_padding = tuple(grown.shape[2:]), (bottom, right), nn.Identity()
        n += 1
    return n


def inplace_activations(net: nn.Module, example: torch.Tensor) -> int:
    """Make each ReLU / ReLU6 / Hardtanh module in place where, at every call in one traced forward pass, nothing but
    the activation reads its input (its autograd node has one consumer); how many. (Were a producer to need its output
    for its backward, autograd would refuse the in-place write at once, never compute something else.)"""
    calls: dict[nn.Module, list] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, i: calls.setdefault(mod, []).append(i[0]))
             for m in net.modules() if type(m) in (nn.ReLU, nn.ReLU6, nn.Hardtanh) and not m.inplace]
    readers = traced_readers(net, example, hooks)
    n = 0
    for m, inputs in calls.items():
        if all(t.grad_fn is not None and readers[t.grad_fn] == 1 for t in inputs):
            m.inplace = True
            n += 1
    return n


def speed_up(backbone, device: torch.device) -> dict:
    """Rewrite a frozen classifier backbone's network in place for speed (see the module docstring); what was done:
    the number of BatchNorms folded, paddings moved (symmetric ones, one-sided ones), activations made in place, and
    whether it runs channels_last."""
    net = backbone.net
    S = backbone.image_size
    example = backbone.normalize(torch.rand(1, 3, S, S, device=device))
    done = dict(PLAIN)
    done["fold_batchnorm"] = fold_batchnorm(net, example)
    done["same_padding"] = fold_same_padding(net)
    if device.type == "cpu":  # measured on CPU (oneDNN); on a GPU the larger depthwise kernels are not measured yet
        done["one_sided_padding"] = fold_one_sided_padding(net)
    done["inplace_act"] = inplace_activations(net, example)
    if is_convnet(net) and device.type in ("cpu", "cuda"):
        net.to(memory_format=torch.channels_last)
        done["channels_last"] = True
    return done


# -- the CPU's allocator ---------------------------------------------------------------------------------------

def _glibc():
    """The process's C library through ctypes where it is glibc (the one with ``mallopt`` and ``malloc_trim``)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_cpu_allocator() -> dict:
    """Raise glibc malloc's mmap and trim thresholds to :data:`CPU_ALLOCATOR` for this process, so that a CPU training
    step reuses the memory its last step freed instead of faulting fresh pages in (see the module docstring). Returns
    the thresholds set (what ``mallopt`` accepted); empty where the C library is not glibc. Setting them again is
    harmless. The mmap threshold goes first: a trim threshold set alone would also freeze the mmap threshold at its
    128 KiB start."""
    libc = _glibc()
    if libc is None:
        return {}
    done = {}
    for name in ("mmap_threshold", "trim_threshold"):
        if libc.mallopt(ctypes.c_int(_MALLOPT[name]), ctypes.c_int(CPU_ALLOCATOR[name])) == 1:
            done[name] = CPU_ALLOCATOR[name]
    return done


def release_cpu_memory() -> bool:
    """Give the memory glibc keeps for reuse (see :func:`tune_cpu_allocator`) back to the system, e.g. when a
    long-lived process (the app) has finished a training run. Whether any was given back; False elsewhere than glibc."""
    libc = _glibc()
    return bool(libc.malloc_trim(ctypes.c_size_t(0))) if libc is not None else False
