"""A clamped prompted image is a real image: saved as an 8-bit PNG and classified again, it gives the same top-1
as the in-memory prompted tensor."""
import numpy as np
import pytest
import torch

from visual_prompting import PromptedModel
from visual_prompting.data import open_image, to_model_input


def test_prompted_png_is_the_prompted_tensor_bit_for_bit(trained, subset_splits, tmp_path):
    """Saved as PNG and read back, the prompted image is exactly the tensor the model classified (the clamp rounds
    to 8-bit levels), so it classifies the same; 64 images suffice for an exact equality."""
    result, _, _ = trained
    model, _ = PromptedModel.from_prompt_file(result.best_path)
    model.eval()
    images, _ = next(iter(subset_splits.test.batches(64)))
    x = to_model_input(images, model.image_size)
    with torch.no_grad():
        prompted = model.prompter(x)
        in_memory = model(x).argmax(1)
    pngs = []
    for i, im in enumerate(model.prompted_images(images)):
        path = tmp_path / f"{i}.png"
        im.save(path)
        pngs.append(open_image(path))
    reread = to_model_input(torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pngs]),
                            model.image_size)
    assert reread.dtype == prompted.dtype and torch.equal(reread, prompted)
    with torch.no_grad():
        assert torch.equal(model.classify_prompted(reread).argmax(1), in_memory)


def test_unclamped_prompt_leaves_the_pixel_range_and_the_clamp_keeps_8bit_levels():
    """Why the clamp matters: the paper's unclamped prompt gives values a PNG cannot hold; the default clamp keeps
    every pixel in [0, 1] on the 8-bit grid."""
    from visual_prompting import create_prompter

    x = torch.full((1, 3, 64, 64), 0.6)
    out = {}
    for clamp in ("none", "straight-through"):
        p = create_prompter(kind="pad", image_size=64, size=9, clamp=clamp)
        with torch.no_grad():
            p.pad_up.fill_(0.7)
            p.pad_left.fill_(-0.33)
            out[clamp] = p(x)
    assert float(out["none"].max()) == pytest.approx(1.3) and float(out["none"].min()) == pytest.approx(0.27)
    y = out["straight-through"]
    assert float(y.max()) == 1.0 and torch.equal(y * 255, (y * 255).round())
    assert float(y[0, 0, 32, 0] * 255) == pytest.approx(69)  # the left frame: 0.6 - 0.33 = 0.27, on the 8-bit grid


def test_predict_both_images_match_prompted_images(trained):
    from PIL import Image

    model, _ = PromptedModel.from_prompt_file(trained[0].best_path)
    img = Image.open("assets/examples/3_dress.png")
    zs, pr, ims = model.predict_both([img], 3, with_images=True)
    assert (zs, pr) == model.predict_both([img], 3)
    assert ims[0].tobytes() == model.prompted_images([img])[0].tobytes()
    for both, alone in ((pr[0], model.predict([img], 3)[0]), (zs[0], model.predict([img], 3, use_prompt=False)[0])):
        assert [n for n, _ in both] == [n for n, _ in alone]
        assert all(abs(p - q) < 1e-5 for (_, p), (_, q) in zip(both, alone))
