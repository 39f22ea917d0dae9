"""The prompt designs from later work: lowrank (LoR-VP), full, scale_pad and learned_scale_pad (AutoVP)."""
import json

import pytest
import torch

from visual_prompting import VPError, create_prompter, load_prompt, save_prompt
from visual_prompting.prompt_file import build_metadata
from visual_prompting.prompters import PROMPTERS, Prompter, PrompterConfig, register_prompter, to_8bit

NEW = ["lowrank", "full", "scale_pad", "learned_scale_pad"]


def test_new_kinds_are_registered_with_size_and_description():
    for kind in NEW:
        cls = PROMPTERS[kind]
        assert cls.kind == kind and cls.description and isinstance(cls.default_size(96), int)
    assert PROMPTERS["lowrank"].default_size(224) == 4
    assert PROMPTERS["scale_pad"].default_size(224) == 30

    class Dummy(Prompter):
        kind = "dummy_test_kind"
        description = "a kind registered by this test"

    try:
        assert register_prompter(Dummy) is Dummy and PROMPTERS["dummy_test_kind"] is Dummy
    finally:
        PROMPTERS.pop("dummy_test_kind", None)


def test_lowrank_has_loR_vp_size_starts_at_zero_and_is_low_rank():
    p = create_prompter(kind="lowrank", image_size=224, size=4)
    assert p.num_parameters() == 2 * 3 * 224 * 4 == 5376
    x = torch.rand(2, 3, 224, 224)
    assert torch.equal(p(x), to_8bit(x))  # B = 0: no change at the start
    q = create_prompter(kind="lowrank", image_size=32, size=3, init="randn", init_std=0.5)
    d = q.delta()
    assert d.shape == (3, 32, 32) and torch.equal(q.mask(), torch.ones(1, 32, 32))
    assert all(int(torch.linalg.matrix_rank(d[c])) == 3 for c in range(3))
    # A is drawn from the seed: the same config gives the same prompter
    again = create_prompter(kind="lowrank", image_size=32, size=3, init="randn", init_std=0.5)
    assert torch.equal(again.lr_a, q.lr_a)


def test_lowrank_projection_bounds_the_prompt_not_the_factors():
    p = create_prompter(kind="lowrank", image_size=32, size=4)
    with torch.no_grad():
        p.lr_b.fill_(3.0)
        p.lr_b[0, 0].fill_(0.01)  # a row well inside the range stays as it is
    small_row = p.delta()[0, 0].clone()
    assert float(p.delta().abs().max()) > 1
    p.project_()
    d = p.delta()
    assert float(d.abs().max()) <= 1 + 1e-5
    assert torch.allclose(d[0, 0], small_row)
    assert float(p.lr_b.abs().max()) > 1  # the factors themselves are not clamped to [-1, 1]
    q = create_prompter(kind="lowrank", image_size=32, size=4, clamp="none")
    with torch.no_grad():
        q.lr_b.fill_(3.0)
    before = q.delta().clone()
    q.project_()
    assert torch.equal(q.delta(), before)


def test_full_prompt_adds_everywhere():
    p = create_prompter(kind="full", image_size=16, size=16, clamp="none")
    assert p.num_parameters() == 3 * 16 * 16
    with torch.no_grad():
        p.full.fill_(0.1)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(p(x), x + 0.1)


def test_scale_pad_with_zero_prompt_is_shrink_pad():
    x = torch.rand(3, 3, 32, 32)
    sp = create_prompter(kind="scale_pad", image_size=32, size=4)
    assert torch.equal(sp(x), create_prompter(kind="shrink_pad", image_size=32, size=4)(x))
    assert sp.num_parameters() == 3 * 32 * 32


def test_scale_pad_with_a_chosen_scale_places_the_image_and_adds_the_prompt():
    p = create_prompter(kind="scale_pad", image_size=32, size=4, scale=0.5, clamp="none")
    with torch.no_grad():
        p.prompt.fill_(0.1)
    x = torch.full((1, 3, 32, 32), 0.2)
    y = p(x)
    assert torch.allclose(y[:, :, 8:24, 8:24], torch.full((1, 3, 16, 16), 0.3))  # image (16 px, centred) + prompt
    assert torch.allclose(y[:, :, :8], torch.full((1, 3, 8, 32), 0.6))  # grey frame + prompt
    assert float(p.image_mask().sum()) == 16 * 16


def test_learned_scale_starts_at_its_scale_and_gets_a_gradient():
    p = create_prompter(kind="learned_scale_pad", image_size=32, size=4, clamp="none")
    assert float(p.image_scale()) == pytest.approx(24 / 32, abs=1e-5)
    assert p.num_parameters() == 3 * 32 * 32 + 1
    x = torch.full((2, 3, 32, 32), 0.9)
    y = p(x)
    assert torch.allclose(y[:, :, 8:24, 8:24], torch.full((2, 3, 16, 16), 0.9), atol=1e-5)  # inside: the image
    assert torch.allclose(y[:, :, :2], torch.full((2, 3, 2, 32), 0.5), atol=1e-5)  # outside: grey
    # a white image and a white target: a larger image is better; a black image and a grey target: a smaller one
    for value, target, grows in ((1.0, 1.0, True), (0.0, 0.5, False)):
        q = create_prompter(kind="learned_scale_pad", image_size=32, size=4, clamp="none")
        opt = torch.optim.SGD([q.scale_logit], lr=5.0)
        img = torch.full((2, 3, 32, 32), value)
        start = float(q.image_scale())
        for _ in range(10):
            opt.zero_grad()
            ((q(img) - target) ** 2).mean().backward()
            opt.step()
        assert (float(q.image_scale()) > start + 0.02) if grows else (float(q.image_scale()) < start - 0.02)
    # projection leaves the scale alone
    with torch.no_grad():
        q.scale_logit.fill_(3.0)
        q.prompt.fill_(4.0)
    q2 = create_prompter(kind="learned_scale_pad", image_size=32, size=4)
    with torch.no_grad():
        q2.scale_logit.fill_(3.0)
        q2.prompt.fill_(4.0)
    q2.project_()
    assert float(q2.scale_logit) == 3.0 and float(q2.prompt.max()) == 1.0


@pytest.mark.parametrize("kind", NEW)
@pytest.mark.parametrize("clamp", ["straight-through", "hard", "none"])
def test_clamp_modes_work_for_new_kinds(kind, clamp):
    p = create_prompter(kind=kind, image_size=32, size=4, clamp=clamp, init="randn", init_std=0.8)
    x = torch.rand(2, 3, 32, 32)
    y = p(x)
    if clamp == "none":
        assert float(y.min()) < 0 or float(y.max()) > 1
    else:
        assert float(y.min()) >= 0 and float(y.max()) <= 1 and torch.equal(y, (y * 255).round() / 255)
    y.sum().backward()
    if clamp != "hard":
        assert all(q.grad is not None and float(q.grad.abs().sum()) > 0 for q in p.parameters())


@pytest.mark.parametrize("kind, scale", [("lowrank", None), ("full", None), ("scale_pad", 0.6),
                                         ("learned_scale_pad", None), ("learned_scale_pad", 0.9)])
def test_prompt_file_round_trip(tmp_path, kind, scale):
    p = create_prompter(kind=kind, image_size=32, size=4, init="randn", init_std=0.3, scale=scale)
    if kind == "learned_scale_pad":
        with torch.no_grad():
            p.scale_logit.add_(0.37)  # a scale that moved in training is kept
    meta = build_metadata(p, backbone={"spec": "clip:vp-tiny", "kind": "clip"}, class_names=["cat", "dog"],
                          head={"kind": "clip_text", "templates": ["a photo of a {}"]})
    pf = load_prompt(save_prompt(tmp_path / "p.safetensors", p, meta))
    assert pf.meta["prompter"] == json.loads(json.dumps(p.cfg.to_dict()))
    assert ("scale" in pf.meta["prompter"]) == (scale is not None)
    assert pf.prompter.cfg == p.cfg
    for (k, a), (k2, b) in zip(p.named_parameters(), pf.prompter.named_parameters()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(p.eval()(x), pf.prompter.eval()(x))


def test_old_prompter_metadata_is_unchanged_and_still_loads():
    cfg = PrompterConfig(kind="pad", image_size=32, size=4)
    d = cfg.to_dict()
    assert "scale" not in d  # files made by kinds that do not use it are byte-for-byte what they were
    assert PrompterConfig(**d) == cfg
    assert PrompterConfig(**{**d, "scale": 0.5}).to_dict()["scale"] == 0.5


@pytest.mark.parametrize("kw, msg", [
    (dict(kind="lowrank", image_size=16, size=17), "rank"),
    (dict(kind="scale_pad", image_size=32, size=4, scale=1.5), r"\(0, 1\]"),
    (dict(kind="scale_pad", image_size=32, size=4, scale=float("nan")), r"\(0, 1\]"),
    (dict(kind="scale_pad", image_size=32, size=16), "too large"),
    (dict(kind="learned_scale_pad", image_size=32, size=4, scale=0.2), "starts above"),
])
def test_bad_configs_say_what_is_wrong(kw, msg):
    with pytest.raises(VPError, match=msg):
        create_prompter(**kw)
