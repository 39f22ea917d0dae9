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

:func:`speed_up` applies what suits the backbone and device and returns what it did (recorded in the backbone's
description, so in every prompt file and benchmark result). ``TrainConfig.fast_backbone=False`` (``--no-fast-backbone``)
turns it off. The results equal the plain model's within float tolerance: ``tests/test_execution.py`` checks logits
and input gradients for every classifier family.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PLAIN = {"fold_batchnorm": 0, "channels_last": False}


def _consumers(root: torch.Tensor) -> Counter:
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
    try:
        with torch.enable_grad():
            out = net(example.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    out = out[0] if isinstance(out, (tuple, list)) else out
    consumers = _consumers(out)
    by_output = {id(outs[0]): conv for conv, outs in conv_out.items() if len(outs) == 1}
    pairs = []
    for bn, ins in bn_in.items():
        conv = by_output.get(id(ins[0])) if len(ins) == 1 else None
        if conv is not None and consumers[conv_out[conv][0].grad_fn] == 1:
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


def speed_up(backbone, device: torch.device) -> dict:
    """Rewrite a frozen classifier backbone's network in place for speed (see the module docstring); what was done:
    ``{"fold_batchnorm": N folded, "channels_last": bool}``."""
    net = backbone.net
    S = backbone.image_size
    example = torch.rand(1, 3, S, S, device=device)
    done = dict(PLAIN)
    done["fold_batchnorm"] = fold_batchnorm(net, backbone.normalize(example))
    if is_convnet(net) and device.type in ("cpu", "cuda"):
        net.to(memory_format=torch.channels_last)
        done["channels_last"] = True
    return done
