"""Affine and colour input transforms (ACAVP): what each computes, that a stack starts as no change, that every
number gets a gradient, that they live in the prompt file (and hostile values there are refused), and training with
them (own lr share, adam only, resumable)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visual_prompting import BackboneCache, PromptedModel, TrainConfig, VPError, create_prompter
from visual_prompting.evaluation import evaluate
from visual_prompting.prompt_file import load_prompt, save_prompt
from visual_prompting.training import Trainer, run_optimizer
from visual_prompting.transforms import TRANSFORMS, split_stack, stack_choices


def _images(n=4, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, s, s), generator=g).float() / 255


def test_the_stack_choices_are_every_ordered_combination_and_parse_back():
    assert stack_choices() == ["none", "affine", "colour", "affine+colour", "colour+affine"]
    assert split_stack("none") == () and split_stack("colour+affine") == ("colour", "affine")
    with pytest.raises(VPError, match="distinct kinds"):
        create_prompter(kind="pad", image_size=32, size=4, transforms=("colour", "colour"))
    with pytest.raises(VPError, match="distinct kinds"):
        create_prompter(kind="pad", image_size=32, size=4, transforms=("sepia",))


@pytest.mark.parametrize("kind", ["pad", "full", "full_dct", "shrink_pad"])
@pytest.mark.parametrize("stack", [("affine",), ("colour",), ("affine", "colour")])
def test_a_stack_starts_as_no_change(kind, stack):
    x = _images(s=96)
    plain, stacked = create_prompter(kind=kind, image_size=96, size=8), create_prompter(kind=kind, image_size=96,
                                                                                       size=8, transforms=stack)
    a, b = plain(x), stacked(x)
    if plain.additive:  # 8-bit images in, 8-bit levels out: the warp's float rounding (< 1e-5) is rounded away
        assert torch.equal(a, b)
    else:  # a resized image's values fall between levels: a rounding error can tip one to the next level
        assert (a - b).abs().max() <= 1 / 255 + 1e-6 and (a != b).float().mean() < 1e-2  # 0.23% here
    assert stacked.is_identity() == plain.is_identity()


def test_colour_is_a_matrix_and_a_bias_over_the_channels():
    t = TRANSFORMS["colour"](8)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(t(x), x)  # exact at the start
    with torch.no_grad():
        t.matrix.copy_(torch.tensor([[0.5, 0, 0], [0.2, -0.1, 0], [0, 0, 0]]))
        t.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
    m = torch.eye(3) + t.matrix.detach()
    want = torch.stack([sum(m[c, k] * x[:, k] for k in range(3)) + t.bias[c].detach() for c in range(3)], 1)
    assert torch.allclose(t(x), want, atol=1e-6)
    assert "+1.50 +0.00 +0.00" in t.summary() and "-0.200" in t.summary()


def test_affine_shifts_zooms_and_says_so():
    s = 32
    t = TRANSFORMS["affine"](s)
    x = torch.zeros(1, 3, s, s)
    x[:, :, 10, 12] = 1.0  # one bright pixel at row 10, column 12
    with torch.no_grad():
        t.delta[0, 2] = -4 / (s / 2) / t.STEP  # sample 4 px to the left: the content moves 4 px right
    y = t(x)
    assert torch.allclose(y[0, :, 10, 16], torch.ones(3), atol=1e-5) and y.sum().item() == pytest.approx(3, abs=1e-4)
    assert "shift (+4.0, +0.0) px" in t.summary() and "zoom 1.000x" in t.summary()
    with torch.no_grad():
        t.delta.zero_()
        t.delta[0, 0] = t.delta[1, 1] = -0.8  # sample 0.8 of the image: it appears 1.25x larger
    assert "zoom 1.250x" in t.summary() and "rotation +0.0 deg" in t.summary()
    with torch.no_grad():  # a rotation by 10 degrees
        a = math.radians(10)
        t.delta.copy_((torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]]) - torch.eye(2, 3))
                      / t.STEP)
    assert "rotation +10.0 deg" in t.summary()
    ref = F.grid_sample(x, F.affine_grid(t.theta()[None], [1, 3, s, s], align_corners=False), align_corners=False)
    assert torch.allclose(t(x), ref)


def test_every_number_of_the_stack_gets_a_gradient_and_stays_in_its_bounds():
    p = create_prompter(kind="pad", image_size=32, size=4, transforms=("affine", "colour"))
    names = [n for n, _ in p.named_parameters()]
    assert {"transforms.0.delta", "transforms.1.matrix", "transforms.1.bias"} <= set(names)
    (p(_images()) * torch.randn(4, 3, 32, 32)).sum().backward()
    for n, q in p.named_parameters():
        assert q.grad is not None and q.grad.abs().sum() > 0, n
    with torch.no_grad():
        for q in p.parameters():
            q.fill_(5.0)
    p.project_()
    assert all(q.abs().max() == 1.0 for q in p.parameters())
    assert p.num_parameters() == sum(q.numel() for q in p.own_parameters()) + 6 + 9 + 3


def _meta(p):
    return {"prompter": p.cfg.to_dict(), "backbone": {"spec": "effnet-lite0@32"}, "class_names": ["a", "b"],
            "head": {"kind": "label_mapping", "mapping": [0, 1], "baseline_mapping": [0, 1],
                     "num_source": 1000}}


def test_the_prompt_file_holds_the_stack_and_gives_the_same_images(tmp_path):
    p = create_prompter(kind="pad", image_size=32, size=4, transforms=("colour", "affine"))
    with torch.no_grad():
        for q in p.parameters():
            q.uniform_(-0.3, 0.3)
    path = save_prompt(tmp_path / "p.safetensors", p, _meta(p))
    pf = load_prompt(path)
    assert pf.meta["prompter"]["transforms"] == ["colour", "affine"]
    assert pf.prompter.cfg.transforms == ("colour", "affine")
    x = _images()
    assert torch.equal(pf.prompter(x), p(x))
    plain = create_prompter(kind="pad", image_size=32, size=4)
    assert "transforms" not in plain.cfg.to_dict()  # files without a stack are written as before


@pytest.mark.parametrize("value, message", [
    (["sepia"], "transforms must be"), (["colour", "colour"], "transforms must be"), ("colour", "transforms must be"),
    ([1], "transforms must be"), (["affine", "colour", "affine"], "transforms must be")])
def test_a_hostile_stack_in_a_file_is_refused(tmp_path, value, message):
    p = create_prompter(kind="pad", image_size=32, size=4)
    meta = _meta(p)
    meta["prompter"]["transforms"] = value
    with pytest.raises(VPError, match=message):
        save_prompt(tmp_path / "p.safetensors", p, meta)


def test_tensors_of_a_stack_the_file_does_not_name_are_refused(tmp_path):
    p = create_prompter(kind="pad", image_size=32, size=4, transforms=("affine",))
    meta = _meta(p)
    del meta["prompter"]["transforms"]  # says plain pad, holds an affine delta
    path = save_prompt(tmp_path / "p.safetensors", p, meta)
    with pytest.raises(VPError, match="unexpected: \\['transforms.0.delta'\\]"):
        load_prompt(path)


@pytest.fixture(scope="module")
def cache():
    return BackboneCache()


def _cfg(out, **kw):
    return TrainConfig(**{**dict(model="effnet-lite0@32", dataset="fashion_mnist_subset", batch_size=50, steps=8,
                                 eval_every=4, device="cpu", seed=0, out_dir=str(out), num_workers=0, prompter="pad",
                                 optimizer="adam", lr=0.03, label_mapping="multi_frequency",
                                 transforms="affine+colour"), **kw})


def test_transforms_train_at_their_share_of_the_lr_and_only_with_adam(tmp_path, small, cache):
    t = Trainer(_cfg(tmp_path / "run"), splits=small, cache=cache)
    res = t.run()
    groups = run_optimizer(t.cfg, t.prompter, t.model.head, None).param_groups
    assert [g["lr_factor"] for g in groups] == [1.0, 0.1, 0.1]
    pf = load_prompt(res.best_path)
    assert not torch.equal(pf.prompter.transforms[0].delta, torch.zeros(2, 3))  # it learned a warp
    model, _ = PromptedModel.from_prompt_file(res.best_path, cache=cache)
    assert evaluate(model, small.test, True, 50).top1 == res.metrics["test_top1"]
    assert t.trainable_numbers() == t.prompter.num_parameters()  # input-only
    with pytest.raises(VPError, match="adam optimiser only"):
        Trainer(_cfg(tmp_path / "sgd", optimizer="sgd", lr=None), splits=small, cache=cache).run()


def test_a_run_with_transforms_resumes_where_it_would_have_ended(cut_and_resume, cache):
    ref, again = cut_and_resume(_cfg, cache)
    a, b = load_prompt(ref.last_path), load_prompt(again.last_path)
    for (n, x), (_, y) in zip(a.prompter.named_parameters(), b.prompter.named_parameters()):
        assert torch.equal(x, y), n
    assert again.metrics["test_top1"] == ref.metrics["test_top1"]
