import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from visual_prompting import VPError
from visual_prompting.capture import (
    CAPTURE_AUGMENTATIONS,
    EVAL_TRANSFORMS,
    CaptureAugment,
    build_capture,
    capture_top1,
    diff_jpeg,
    jpeg_roundtrip,
    resize_roundtrip,
)
from visual_prompting.data import TensorImageSet


def _natural(n=4, s=96, seed=0):
    """Smooth colour fields with a sharp rectangle: something like a photo, on 8-bit levels."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 12, 12, generator=g), size=(s, s), mode="bicubic", align_corners=False)
    x = x.clamp(0, 1)
    x[:, :, s // 3 : s // 2, s // 4 : 3 * s // 4] = 0.9
    return (x * 255).round() / 255


def _mad(a, b):
    return float((a - b).abs().mean() * 255)  # mean difference in 8-bit levels


def test_jpeg_roundtrip_is_libjpeg():
    x = _natural()
    out = jpeg_roundtrip(x, 75)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(out, TF.jpeg(u8, 75).float() / 255)
    assert _mad(out, x) > 1.0  # quality 75 really loses something
    assert _mad(jpeg_roundtrip(x, 100), x) < _mad(out, x) / 2
    with pytest.raises(VPError, match="quality"):
        jpeg_roundtrip(x, 0)


def test_resize_roundtrip_keeps_smooth_images_and_loses_fine_detail():
    x = _natural()
    assert torch.equal(resize_roundtrip(x, 1.0), x)
    smooth = resize_roundtrip(x, 0.75)
    assert torch.equal(smooth, (smooth * 255).round() / 255)  # 8-bit levels
    checker = torch.zeros(1, 3, 32, 32)
    checker[..., ::2, ::2] = checker[..., 1::2, 1::2] = 1.0
    assert _mad(resize_roundtrip(checker, 0.75), checker) > 5 * _mad(smooth, x)
    with pytest.raises(VPError, match="factor"):
        resize_roundtrip(x, 1.5)


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_diff_jpeg_is_close_to_real_jpeg(quality):
    for x in (_natural(), torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))):
        real = jpeg_roundtrip(x, quality)
        sim = diff_jpeg(x, quality)
        # the simulation is far closer to libjpeg than the untouched image is
        assert _mad(sim, real) < 0.4 * _mad(x, real)


def test_diff_jpeg_per_image_quality_odd_sizes_and_gradient():
    x = _natural(n=2, s=40)  # not a multiple of 16: padded and cropped back
    both = diff_jpeg(x, torch.tensor([50, 95]))
    assert both.shape == x.shape
    assert torch.allclose(both[:1], diff_jpeg(x[:1], 50), atol=1e-5)
    assert torch.allclose(both[1:], diff_jpeg(x[1:], 95), atol=1e-5)
    y = x.clone().requires_grad_()
    diff_jpeg(y, 75).sum().backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_capture_augment_is_differentiable_seedable_and_degrades():
    x = _natural(n=8, s=64)
    assert torch.equal(CaptureAugment(p=0.0)(x), x)  # nothing drawn: the 8-bit image unchanged
    y = x.clone().requires_grad_()
    out = CaptureAugment(p=1.0, generator=torch.Generator().manual_seed(0))(y)
    assert out.shape == x.shape and torch.equal(out, (out * 255).round() / 255)
    assert _mad(out, x) > 1.0
    out.sum().backward()
    assert float(y.grad.abs().sum()) > 0
    z = x.clone().requires_grad_()  # p = 1/2: some images transformed, the rest passed through, all get gradient
    CaptureAugment(generator=torch.Generator().manual_seed(3))(z).sum().backward()
    assert bool((z.grad.abs().flatten(1).sum(1) > 0).all())
    a = CaptureAugment(generator=torch.Generator().manual_seed(3))(x)
    b = CaptureAugment(generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, b)
    shifted = CaptureAugment(p=1.0, max_shift=2.0, resize=(1, 1), quality=(100, 100),
                             generator=torch.Generator().manual_seed(0))(x)
    assert 0 < _mad(shifted, x) < 0.5 * _mad(x.roll(1, 0), x)  # a small shift, not a different image


def test_capture_shift_is_per_image_sub_pixel_and_bounded():
    # a horizontal ramp of 4 levels per pixel: a shift of dx pixels changes the interior by -dx * 4 levels
    ramp = (torch.arange(64.0) * 4 / 255).expand(16, 3, 64, 64).contiguous()
    out = CaptureAugment(p=1.0, max_shift=2.0, resize=(1, 1), quality=(100, 100),
                         generator=torch.Generator().manual_seed(0))(ramp)
    dx = -((out - ramp)[..., 8:-8, 8:-8] * 255 / 4).mean(dim=(1, 2, 3))
    assert float(dx.abs().max()) <= 2.1  # at most max_shift pixels
    assert len({round(v, 1) for v in dx.tolist()}) > 8  # each image its own shift
    assert any(0.1 < abs(v - round(v)) < 0.4 for v in dx.tolist())  # sub-pixel


def test_capture_draws_from_the_global_rng_when_resumed():
    x = _natural(n=8, s=32)
    aug = CaptureAugment()
    torch.manual_seed(0)
    aug(x)
    state = torch.get_rng_state()  # what a checkpoint saves
    first = aug(x)
    torch.set_rng_state(state)
    assert torch.equal(aug(x), first)


def test_capture_registry_and_errors():
    assert set(CAPTURE_AUGMENTATIONS) == {"none", "capture"}
    assert all(e.description for e in CAPTURE_AUGMENTATIONS.values())
    x = _natural(n=2, s=32)
    assert torch.equal(build_capture("none")(x), x)
    assert isinstance(build_capture("capture"), CaptureAugment)
    with pytest.raises(VPError, match="Unknown capture"):
        build_capture("photo")
    with pytest.raises(VPError, match="resize"):
        CaptureAugment(resize=(0.0, 1.0))


class _HighFrequencyModel(nn.Module):
    """A stand-in for PromptedModel: no prompt; class 0 = 'has a fine checkerboard', class 1 = 'flat'."""

    device = torch.device("cpu")
    image_size = 32

    def prompt(self, x):
        return x

    def backbone(self, x):
        hf = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        return torch.stack([hf, torch.full_like(hf, 0.1)], 1)

    def logits(self, out, use_prompt=True):
        return out


def test_capture_top1_measures_each_transform():
    imgs = torch.full((20, 3, 32, 32), 128, dtype=torch.uint8)
    imgs[:10, :, ::2, ::2] = imgs[:10, :, 1::2, 1::2] = 255
    imgs[:10, :, 1::2, ::2] = imgs[:10, :, ::2, 1::2] = 0
    labels = torch.tensor([0] * 10 + [1] * 10)
    data = TensorImageSet(imgs, labels, ["fine", "flat"], "toy")
    got = capture_top1(_HighFrequencyModel(), data, batch_size=8)
    assert set(got) == set(EVAL_TRANSFORMS)
    assert got["clean"] == 1.0
    assert got["resize075"] == 0.5  # the checkerboard does not survive a resize: every image looks flat
    assert 0.5 <= got["jpeg75"] <= 1.0
    with pytest.raises(VPError, match="Unknown capture transform"):
        capture_top1(_HighFrequencyModel(), data, transforms=("blur",))
