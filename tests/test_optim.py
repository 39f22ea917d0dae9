import math

import pytest
import torch

from visual_prompting import VPError
from visual_prompting.optim import (
    EVP_FRAME_NUMBERS,
    L2SGD,
    OPTIMIZERS,
    build_optimizer,
    l2sgd_lr_for,
)
from visual_prompting.checkpoint import load_optimizer_state_tensors, optimizer_state_tensors


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 4, 5, generator=g)), torch.nn.Parameter(torch.randn(3, 2, generator=g))]


def _loss(params):
    return sum(((p - 0.3) ** 2).sum() for p in params)


def _steps(opt, params, n):
    for _ in range(n):
        opt.zero_grad()
        _loss(params).backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_descends_with_its_suggested_lr_scaled_down(name):
    e = OPTIMIZERS[name]
    assert e.description and e.default_lr > 0
    params = _params()
    opt = build_optimizer(name, params)
    assert opt.param_groups[0]["lr"] == e.default_lr  # lr=None takes the suggestion
    for g in opt.param_groups:  # a quadratic needs a smaller step than a prompt
        g["lr"] = 0.01 if name != "l2sgd" else 0.1
    before = float(_loss(params))
    _steps(opt, params, 20)
    assert float(_loss(params)) < before * 0.9
    assert isinstance(opt, torch.optim.Optimizer)


def test_l2sgd_step_has_length_lr_over_the_whole_gradient():
    for scale in (1e-6, 1.0, 1e4):  # the gradient's size does not matter
        params = _params()
        start = [p.detach().clone() for p in params]
        opt = L2SGD(params, lr=0.5, momentum=0.0)
        opt.zero_grad()
        (scale * _loss(params)).backward()
        grads = [p.grad.clone() for p in params]
        opt.step()
        steps = [s - p.detach() for s, p in zip(start, params)]
        length = math.sqrt(sum(float((s**2).sum()) for s in steps))
        assert length == pytest.approx(0.5, rel=1e-5)
        # direction: the gradient's (over all tensors together)
        gn = math.sqrt(sum(float((g**2).sum()) for g in grads))
        for s, g in zip(steps, grads):
            assert torch.allclose(s, 0.5 * g / gn, atol=1e-6)


def test_l2sgd_per_tensor_norm_and_momentum():
    params = _params()
    start = [p.detach().clone() for p in params]
    opt = L2SGD(params, lr=0.2, norm="tensor")
    opt.zero_grad()
    _loss(params).backward()
    opt.step()
    for s, p in zip(start, params):
        assert float((s - p.detach()).norm()) == pytest.approx(0.2, rel=1e-5)
    # with momentum the buffer sums the normalised steps: the second step of a constant direction is 1.9x
    p = torch.nn.Parameter(torch.zeros(4))
    opt = L2SGD([p], lr=1.0, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        (p * torch.tensor([1.0, 0, 0, 0])).sum().backward()
        opt.step()
    assert float(p[0]) == pytest.approx(-(1 + 1.9), rel=1e-6)


def test_l2sgd_lr_for_matches_evp_per_number_step():
    assert l2sgd_lr_for(EVP_FRAME_NUMBERS) == pytest.approx(70.0)
    assert l2sgd_lr_for(EVP_FRAME_NUMBERS // 4) == pytest.approx(35.0, rel=1e-4)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_from_flat_state_tensors_is_exact(name):
    kw = dict(lr=0.05 if name != "l2sgd" else 0.1, momentum=0.9)
    ref = _params()
    opt = build_optimizer(name, ref, **kw)
    _steps(opt, ref, 5)
    a = _params()
    opt_a = build_optimizer(name, a, **kw)
    _steps(opt_a, a, 3)
    saved = {k: v.clone() for k, v in optimizer_state_tensors(opt_a, a).items()}
    assert saved  # every one of these keeps state (momentum or moments)
    assert all(isinstance(v, torch.Tensor) for v in saved.values())
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = build_optimizer(name, b, **kw)
    load_optimizer_state_tensors(opt_b, b, {**saved, "rng": torch.zeros(3)})
    _steps(opt_b, b, 2)
    for x, y in zip(ref, b):
        assert torch.equal(x, y)
    # and torch's own state_dict round trip works for the custom optimiser too
    sd = opt_b.state_dict()
    opt_c = build_optimizer(name, b, **kw)
    opt_c.load_state_dict(sd)
    assert opt_c.state_dict()["state"].keys() == sd["state"].keys()


def test_sgd_state_keys_match_existing_checkpoints():
    p = _params()
    opt = build_optimizer("sgd", p, lr=0.1)
    _steps(opt, p, 1)
    assert sorted(optimizer_state_tensors(opt, p)) == ["momentum.0", "momentum.1"]


@pytest.mark.parametrize("kw, msg", [
    (dict(name="rmsprop"), "Unknown optimizer"),
    (dict(name="sgd", lr=-1.0), "positive"),
    (dict(name="adam", lr=float("nan")), "positive"),
    (dict(name="sgd", momentum=-0.1), "Momentum"),
])
def test_bad_settings_say_what_is_wrong(kw, msg):
    with pytest.raises(VPError, match=msg):
        build_optimizer(params=_params(), **kw)
    with pytest.raises(VPError, match="norm"):
        L2SGD(_params(), norm="max")
