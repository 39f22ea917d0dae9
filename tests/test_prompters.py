import pytest
import torch

from visual_prompting import VPError, create_prompter
from visual_prompting.prompters import PROMPTERS, straight_through_clamp, to_8bit


def test_pad_prompt_has_the_paper_size():
    p = create_prompter(kind="pad", image_size=224, size=30)
    assert p.num_parameters() == 3 * (224**2 - 164**2) == 69_840


@pytest.mark.parametrize("kind", sorted(PROMPTERS))
def test_shape_and_gradient_only_reach_the_prompt(kind):
    p = create_prompter(kind=kind, image_size=32, size=6, init="randn", init_std=0.1)
    x = torch.rand(4, 3, 32, 32) * 0.8 + 0.1
    y = p(x)
    assert y.shape == x.shape
    assert 0.0 <= float(y.detach().min()) and float(y.detach().max()) <= 1.0
    assert torch.equal(y, (y * 255).round() / 255)  # a real 8-bit image
    (y * torch.randn_like(y)).sum().backward()
    grads = [q.grad for q in p.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # the prompt acts only where its mask says (shrink_pad replaces the whole image, so it is excluded)
    if kind != "shrink_pad":
        p.eval()
        outside = (p.mask() == 0).expand(3, -1, -1)
        assert torch.equal(p(x)[:, outside], to_8bit(x)[:, outside])


def test_pad_prompt_adds_its_frame():
    p = create_prompter(kind="pad", image_size=16, size=3, clamp="none")
    with torch.no_grad():
        p.pad_up.fill_(0.25)
        p.pad_left.fill_(-0.5)
    x = torch.full((1, 3, 16, 16), 0.5)
    y = p(x)
    assert torch.allclose(y[0, :, :3, :], torch.full((3, 3, 16), 0.75))
    assert torch.allclose(y[0, :, 3:13, :3], torch.zeros(3, 10, 3))
    assert torch.allclose(y[0, :, 3:13, 3:13], x[0, :, 3:13, 3:13])


def test_shrink_pad_puts_the_image_inside_the_frame():
    p = create_prompter(kind="shrink_pad", image_size=32, size=4)
    x = torch.rand(2, 3, 32, 32)
    y = p(x)
    inner = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(y[:, :, 4:28, 4:28], to_8bit(inner))
    assert torch.equal(y[:, :, :4, :], torch.full_like(y[:, :, :4, :], 128 / 255))  # zero prompt = grey frame


def test_random_patch_moves_in_training_and_is_fixed_in_eval():
    p = create_prompter(kind="random_patch", image_size=32, size=4, seed=3)
    with torch.no_grad():
        p.patch.fill_(1.0)
    x = torch.zeros(1, 3, 32, 32)
    p.train()
    torch.manual_seed(0)
    places = {tuple(torch.nonzero(p(x)[0, 0])[0].tolist()) for _ in range(20)}
    assert len(places) > 3
    p.eval()
    a, b = p(x), p(x)
    assert torch.equal(a, b)
    again = create_prompter(kind="random_patch", image_size=32, size=4, seed=3).eval()
    with torch.no_grad():
        again.patch.fill_(1.0)
    assert torch.equal(again(x), a)  # same seed, same place


def test_fixed_patch_is_top_left():
    p = create_prompter(kind="fixed_patch", image_size=16, size=5, clamp="none")
    with torch.no_grad():
        p.patch.fill_(0.3)
    y = p(torch.zeros(1, 3, 16, 16)).detach()
    assert torch.allclose(y[0, :, :5, :5], torch.full((3, 5, 5), 0.3))
    assert float(y[0, :, 5:, :].abs().sum()) == 0 and float(y[0, :, :, 5:].abs().sum()) == 0


def test_clamp_modes_and_why_straight_through_exists():
    # a zero prompt over a black border: the case where a plain clamp stops learning
    x = torch.zeros(1, 3, 16, 16)
    grads = {}
    for mode in ("straight-through", "hard", "none"):
        p = create_prompter(kind="pad", image_size=16, size=3, clamp=mode)
        with torch.no_grad():
            p.pad_up.fill_(-0.2)  # pushed below 0 by an earlier step
        y = p(x)
        if mode == "none":
            assert float(y.min()) < 0
        else:
            assert float(y.min()) >= 0
        y.sum().backward()
        grads[mode] = float(p.pad_up.grad.abs().sum())
    assert grads["hard"] == 0.0
    assert grads["straight-through"] > 0 and grads["none"] > 0


def test_straight_through_clamp_values_and_gradient():
    x = torch.tensor([-0.5, 0.2, 1.7, 0.5], requires_grad=True)
    y = straight_through_clamp(x)
    assert torch.equal(y.detach(), torch.tensor([0.0, 51 / 255, 1.0, 128 / 255]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))


def test_project_keeps_prompt_in_range_unless_unclamped():
    p = create_prompter(kind="pad", image_size=16, size=3)
    q = create_prompter(kind="pad", image_size=16, size=3, clamp="none")
    for m in (p, q):
        with torch.no_grad():
            m.pad_up.fill_(5.0)
        m.project_()
    assert float(p.pad_up.max()) == 1.0 and float(q.pad_up.max()) == 5.0


@pytest.mark.parametrize("kw, msg", [
    (dict(kind="pad", image_size=32, size=16), "too large"),
    (dict(kind="fixed_patch", image_size=32, size=40), "larger than"),
    (dict(kind="spiral"), "Unknown prompter kind"),
    (dict(kind="pad", clamp="soft"), "Unknown clamp"),
    (dict(kind="pad", size=0), "positive"),
])
def test_bad_configs_say_what_is_wrong(kw, msg):
    with pytest.raises(VPError, match=msg):
        create_prompter(**kw)


def test_wrong_image_shape_is_a_clear_error():
    p = create_prompter(kind="pad", image_size=32, size=4)
    with pytest.raises(VPError, match=r"\(B, 3, 32, 32\)"):
        p(torch.rand(2, 3, 64, 64))
