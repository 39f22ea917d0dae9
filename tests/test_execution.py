"""Frozen-model execution for speed (visual_prompting/execution.py): a classifier backbone loaded for prompting has
its BatchNorms folded into its convolutions and runs in channels_last, and computes what the plain model computes:
the same logits and the same input gradients (the prompt's gradient), for every classifier family."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from visual_prompting.backbones import load_backbone
from visual_prompting.execution import (PLAIN, conv_bn_pairs, fold_batchnorm, fold_one_sided_padding,
                                        inplace_activations, speed_up)


def _randomise_batchnorms(net: nn.Module, seed: int = 0) -> int:
    """Random running statistics and affine numbers (random-weight models have the trivial 0 / 1 ones, which any
    folding would keep)."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                n += 1
    return n


def _logits_and_input_grad(backbone, x):
    x = x.clone().requires_grad_(True)
    y = backbone(x)
    y.float().logsumexp(1).sum().backward()
    return y.detach().float(), x.grad


SPECS = ["effnet-lite0@64", "torchvision:resnet18/random@64", "timm:resnet18/random@64"]


@pytest.mark.parametrize("spec", SPECS)
def test_the_fast_backbone_computes_what_the_plain_one_does(spec):
    plain = load_backbone(spec, fast=False)
    fast = load_backbone(spec, fast=False)
    if not spec.startswith("effnet"):  # random weights: make the BatchNorms do something
        assert _randomise_batchnorms(plain.net) == _randomise_batchnorms(fast.net) > 0
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in plain.net.modules())
    fast.execution = speed_up(fast, torch.device("cpu"))
    assert fast.execution["fold_batchnorm"] == bns  # every BatchNorm of these nets follows a convolution
    assert fast.execution["channels_last"] and not any(isinstance(m, nn.BatchNorm2d) for m in fast.net.modules())
    if spec.startswith("effnet"):  # its stride-1 "same" paddings and its ReLU6s (others' ReLUs are in place already)
        assert fast.execution["same_padding"] == 12 and fast.execution["inplace_act"] > 0
        assert fast.execution["one_sided_padding"] == 5  # its stride-2 convolutions, on even sides at 64 px
    assert plain.execution == {} and fast.describe()["execution"] == fast.execution
    assert not any(p.requires_grad for p in fast.parameters())  # still frozen
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y0, g0 = _logits_and_input_grad(plain, x)
    y1, g1 = _logits_and_input_grad(fast, x)
    assert torch.allclose(y1, y0, rtol=1e-4, atol=1e-4 * float(y0.abs().max())), (y1 - y0).abs().max()
    # input gradients: equal to float rounding, except where a ReLU's input sits exactly on its kink in one form
    # and a rounding error away in the other (a different, equally valid subgradient there): a few elements
    rel = float((g1 - g0).norm() / g0.norm())
    off = float(((g1 - g0).abs() > 1e-3 * g0.abs().max()).float().mean())
    assert rel < 1e-2 and off < 1e-2, (rel, off)


def test_a_convolution_read_twice_is_not_folded():
    """Folding a BatchNorm into a convolution whose output is also read elsewhere would change that other reader."""

    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.conv2, self.bn2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            c = self.conv(x)
            y = self.bn2(self.conv2(torch.relu(self.bn(c))))
            return (y + c).mean((2, 3))  # c is read by bn and by the sum

    net = TwoReaders().eval().requires_grad_(False)
    _randomise_batchnorms(net)
    x = torch.rand(2, 3, 8, 8)
    before = net(x)
    assert conv_bn_pairs(net, x) == [("conv2", "bn2")]
    assert fold_batchnorm(net, x) == 1
    assert isinstance(net.bn, nn.BatchNorm2d) and isinstance(net.bn2, nn.Identity)
    assert torch.allclose(net(x), before, atol=1e-5)


def test_the_switch_turns_it_off_and_clip_is_left_as_it_is(tiny_clip):
    assert load_backbone("effnet-lite0@32", fast=False).execution == {}
    assert "execution" not in load_backbone("effnet-lite0@32", fast=False).describe()
    fast = load_backbone("effnet-lite0@32")
    assert fast.execution["fold_batchnorm"] == 49 and fast.execution.keys() == PLAIN.keys()
    assert tiny_clip.execution == {}  # a CLIP tower has no BatchNorm to fold; it is run as built


@pytest.mark.parametrize("spec", ["torchvision:resnet18/random@32", "timm:resnet18/random@32"])
def test_random_weights_are_the_same_model_every_time(spec):
    """'/random' backbones are seeded: a prompt trained on one means the same on the next load (torchvision's were
    drawn from the process's RNG, a different model at every load)."""
    a, b = load_backbone(spec, fast=False), load_backbone(spec, fast=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_an_activation_whose_input_is_read_elsewhere_stays_out_of_place():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.conv2, self.act2 = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 1), nn.ReLU6()

        def forward(self, x):
            c = self.conv(x)
            return (self.act(c) + c).sum((2, 3)) + self.act2(self.conv2(x)).sum((2, 3))  # c is read twice

    net = Residual().eval().requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    assert inplace_activations(net, x) == 1
    assert not net.act.inplace and net.act2.inplace
    assert torch.allclose(net(x), before)


def test_folding_is_as_accurate_as_the_plain_model_under_bf16():
    """Under bf16 autocast (the library's AMP on GPUs) the plain model is itself some way from float32, and folding
    rounds other numbers (the folded weights): folded and plain then differ from each other about as much as each
    differs from float32 - but the folded one must be no further from float32 than the plain one is (what
    benchmarks/speed.py's check holds each execution to under AMP). CPU autocast runs the same bf16 arithmetic."""
    plain = load_backbone("effnet-lite0@64", fast=False)
    fast = load_backbone("effnet-lite0@64", fast=False)
    assert speed_up(fast, torch.device("cpu"))["fold_batchnorm"] > 0
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y32, g32 = _logits_and_input_grad(plain, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yp, gp = _logits_and_input_grad(plain, x)
        yf, gf = _logits_and_input_grad(fast, x)

    def off(y, g):
        return float((y - y32).abs().max() / y32.abs().max()), float((g - g32).norm() / g32.norm())

    plain_off, fast_off = off(yp, gp), off(yf, gf)
    assert plain_off[0] > 1e-3 and plain_off[1] > 1e-2, plain_off  # bf16 did round: the comparison means something
    assert fast_off[0] <= 1.5 * plain_off[0] + 1e-3 and fast_off[1] <= 1.5 * plain_off[1] + 1e-2, (fast_off, plain_off)


@pytest.mark.parametrize("k,stride,side", [(3, 2, 16), (5, 2, 16), (2, 3, 16), (4, 1, 16), (3, 2, 15), (3, 1, 16)])
def test_a_one_sided_padding_folded_into_a_larger_kernel_is_the_same_convolution(k, stride, side):
    """TensorFlow's "same" padding, as EfficientNet-Lite pads (one zero more after than before where the total is
    odd): folded into a kernel one larger with a zero first row and column, the output and the input gradient are
    those of the padded convolution; a symmetric padding is left to fold_same_padding."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    torch.manual_seed(0)
    conv = Conv2dStaticSamePadding(8, 8, k, stride=stride, groups=8, image_size=side).requires_grad_(False)
    left, right, top, bottom = conv.static_padding.padding if isinstance(conv.static_padding, nn.ZeroPad2d) else (0,) * 4
    one_sided = right == left + 1 and bottom == top + 1
    folded = copy.deepcopy(conv)
    assert fold_one_sided_padding(folded) == int(one_sided)
    x = torch.randn(2, 8, side, side)
    outs = []
    for m in (conv, folded):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), xi.grad))
    (y0, g0), (y1, g1) = outs
    assert y1.shape == y0.shape and torch.allclose(y1, y0, atol=1e-5) and torch.allclose(g1, g0, atol=1e-5)
    if one_sided:
        assert folded.weight.shape[-1] == k + 1 and isinstance(folded.static_padding, nn.Identity)
        assert folded.weight[..., 0, :].abs().sum() == 0 and folded.weight[..., :, 0].abs().sum() == 0


def test_a_trainable_convolution_keeps_its_padding():
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    conv = Conv2dStaticSamePadding(4, 4, 3, stride=2, image_size=16)
    assert conv.weight.requires_grad and fold_one_sided_padding(conv) == 0 and conv.weight.shape[-1] == 3


# -- the CPU's allocator ------------------------------------------------------------------------------------------

_FAULTS = """
import resource, sys, torch
from visual_prompting.execution import CPU_ALLOCATOR, tune_cpu_allocator
if sys.argv[1] == "tuned":
    assert tune_cpu_allocator() == CPU_ALLOCATOR
faults = []
for _ in range(15):  # a step's 48 MiB activation, allocated, written and freed again and again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(12 << 20)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-5:]))
"""


def _faults(mode: str) -> int:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_the_tuned_allocator_reuses_a_freed_block_instead_of_faulting_its_pages_in_again():
    from visual_prompting.execution import _glibc

    if _glibc() is None:
        pytest.skip("the allocator is tuned on glibc only")
    plain, tuned = _faults("plain"), _faults("tuned")
    assert plain > 0  # glibc as it starts: a 48 MiB block is mmapped and unmapped every time
    assert tuned * 10 < plain, (plain, tuned)


def test_a_fast_backbone_on_a_cpu_tunes_the_allocator_and_the_switch_leaves_it(monkeypatch):
    import visual_prompting.execution as execution

    calls = []
    monkeypatch.setattr(execution, "tune_cpu_allocator", lambda: calls.append(1) or {})
    load_backbone("effnet-lite0@32", fast=False)
    assert calls == []
    load_backbone("effnet-lite0@32")
    assert calls == [1]
