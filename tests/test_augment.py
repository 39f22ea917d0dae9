import pytest
import torch
import torchvision.transforms.v2.functional as TF

from visual_prompting import VPError
from visual_prompting.augment import AUGMENTATIONS, TRIVIAL_OPS, FlipCrop, TrivialAugment, build_augment


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_every_augmentation_keeps_shape_range_and_is_seedable(name):
    assert AUGMENTATIONS[name].description
    x = torch.rand(16, 3, 32, 32)
    a = build_augment(name, generator=torch.Generator().manual_seed(1))(x)
    b = build_augment(name, generator=torch.Generator().manual_seed(1))(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)  # same seed, same batch
    torch.manual_seed(5)
    c = build_augment(name)(x)
    torch.manual_seed(5)
    assert torch.equal(c, build_augment(name)(x))  # the global RNG works too
    aug, state = build_augment(name), torch.get_rng_state()  # what a checkpoint saves: a resumed run draws the same
    first = aug(x)
    torch.set_rng_state(state)
    assert torch.equal(aug(x), first)
    torch.manual_seed(7)  # with a generator, the global RNG is left as it was
    build_augment(name, generator=torch.Generator().manual_seed(1))(x)
    after = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(4))
    if name == "none":
        assert torch.equal(a, x)
    else:  # each image gets its own draw: a batch of one image repeated comes out varied
        same = x[:1].expand(16, -1, -1, -1).contiguous()
        out = build_augment(name, generator=torch.Generator().manual_seed(2))(same)
        assert len({tuple(o.flatten()[:64].tolist()) for o in out}) > 4


def test_unknown_augmentation_is_a_clear_error():
    with pytest.raises(VPError, match="Unknown augmentation"):
        build_augment("mixup")
    with pytest.raises(VPError, match=r"\(B, 3, S, S\)"):
        build_augment("flip_crop")(torch.rand(3, 32, 32))


def test_flip_crop_degenerate_settings_are_flip_and_identity():
    x = torch.rand(4, 3, 20, 20)
    flip = FlipCrop(scale=(1, 1), ratio=(1, 1), flip=1.0)(x)
    assert torch.allclose(flip, x.flip(-1), atol=1e-5)
    same = FlipCrop(scale=(1, 1), ratio=(1, 1), flip=0.0)(x)
    assert torch.allclose(same, x, atol=1e-5)


def test_flip_crop_zooms_in():
    # a centred crop of half the side shows the centre enlarged: a bright centre square fills more of the image
    x = torch.zeros(64, 3, 40, 40)
    x[:, :, 15:25, 15:25] = 1.0
    out = FlipCrop(scale=(0.6, 0.6), ratio=(1, 1), flip=0.0, generator=torch.Generator().manual_seed(0))(x)
    assert float(out.mean()) > float(x.mean()) * 1.3


def test_flip_crop_crops_the_area_asked_for():
    # an image whose value is its column: a crop of a quarter of the area (half the side) spans half the columns
    ramp = torch.linspace(0, 1, 64).expand(8, 3, 64, 64).contiguous()
    out = FlipCrop(scale=(0.25, 0.25), ratio=(1, 1), flip=0.0, generator=torch.Generator().manual_seed(0))(ramp)
    span = out[..., 32, -1] - out[..., 32, 0]
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.05)
    flipped = FlipCrop(scale=(1, 1), ratio=(1, 1), flip=1.0)(ramp)
    assert bool((flipped[..., 0] > flipped[..., -1]).all())  # a flip runs the ramp the other way


def _forced(op, level, n=3):
    t = TrivialAugment()
    t.sample = lambda m: (torch.full((m,), TrivialAugment.ops.index(op)), torch.full((m,), float(level)))
    return t


@pytest.mark.parametrize("op, ref", [
    ("Brightness", lambda x, f: TF.adjust_brightness(x, f)),
    ("Color", lambda x, f: TF.adjust_saturation(x, f)),
    ("Contrast", lambda x, f: TF.adjust_contrast(x, f)),
    ("Sharpness", lambda x, f: TF.adjust_sharpness(x, f)),
])
def test_trivial_colour_ops_match_torchvision(op, ref):
    x = torch.rand(3, 3, 24, 24)
    for level in (-0.5, 0.8):
        f = 1 + level * TRIVIAL_OPS[op][0]
        assert torch.allclose(_forced(op, level)(x), ref(x, f), atol=1e-5)


def test_trivial_posterize_solarize_equalize_match_torchvision():
    u8 = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8)
    x = u8.float() / 255
    assert torch.allclose(_forced("Posterize", 1.0)(x), TF.posterize(u8, 2).float() / 255, atol=1e-6)
    assert torch.allclose(_forced("Solarize", 0.25)(x), TF.solarize(x, 0.75), atol=1e-6)
    assert torch.allclose(_forced("Equalize", 0.0)(x), TF.equalize(x), atol=1e-6)
    assert torch.allclose(_forced("AutoContrast", 0.0)(x), TF.autocontrast(x), atol=1e-6)


def test_trivial_translate_shifts_by_32px_at_224():
    x = torch.rand(2, 3, 224, 224)
    out = _forced("TranslateX", 1.0)(x)
    assert torch.allclose(out[..., 32:], x[..., :-32], atol=1e-4) or torch.allclose(out[..., :-32], x[..., 32:], atol=1e-4)
    assert float(out[..., :32].abs().max()) < 1e-4 or float(out[..., -32:].abs().max()) < 1e-4  # zero fill


def test_trivial_rotate_and_shear_magnitudes():
    x = torch.rand(2, 3, 33, 33)
    quarter = _forced("Rotate", 90 / 135)(x)  # 90 degrees is 2/3 of the 135-degree range
    assert any(torch.allclose(quarter, x.rot90(k, (-2, -1)), atol=1e-4) for k in (1, 3))
    # ShearX moves each row sideways in proportion to its distance from the middle row: a column becomes a slant
    col = torch.zeros(1, 3, 33, 33)
    col[..., 16] = 1.0
    m = 0.5
    sheared = _forced("ShearX", m / TRIVIAL_OPS["ShearX"][0])(col)
    assert torch.allclose(sheared[..., 16, :], col[..., 16, :], atol=1e-5)  # the middle row stays
    top = int(sheared[0, 0, 0].argmax())
    assert abs(top - 16) == 8  # 16 rows up, moved by 0.5 * 16 columns


def test_trivial_mixes_ops_in_one_batch():
    t = TrivialAugment(generator=torch.Generator().manual_seed(0))
    op, level = t.sample(500)
    assert set(op.tolist()) == set(range(len(TrivialAugment.ops)))
    assert float(level.min()) < -0.9 and float(level.max()) > 0.9
