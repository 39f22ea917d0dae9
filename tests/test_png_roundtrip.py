"""A clamped prompted image is a real image: saved as an 8-bit PNG and classified again, it gives the same top-1
as the in-memory prompted tensor."""
import torch

from visual_prompting import PromptedModel
from visual_prompting.data import open_image, to_model_input


def test_prompted_png_classifies_like_the_tensor(trained, subset_splits, tmp_path):
    result, _, _ = trained
    model, _ = PromptedModel.from_prompt_file(result.best_path)
    model.eval()
    test = subset_splits.test
    same = total = 0
    for images, _ in test.batches(250):
        x = to_model_input(images, model.image_size)
        with torch.no_grad():
            in_memory = model(x).argmax(1)
        pngs = []
        for i, im in enumerate(model.prompted_images(images)):
            path = tmp_path / f"{total + i}.png"
            im.save(path)
            pngs.append(open_image(path))
        reread = torch.stack([torch.from_numpy(__import__("numpy").array(p)).permute(2, 0, 1) for p in pngs])
        with torch.no_grad():
            from_png = model.classify_prompted(to_model_input(reread, model.image_size)).argmax(1)
        same += int((from_png == in_memory).sum())
        total += len(images)
    assert total == 1000
    assert same / total >= 0.99, f"only {same}/{total} PNGs kept their top-1"


def test_unclamped_prompt_leaves_the_pixel_range(trained):
    """Why the clamp matters: the paper's unclamped prompt gives values a PNG cannot hold."""
    from visual_prompting import create_prompter

    p = create_prompter(kind="pad", image_size=64, size=9, clamp="none")
    with torch.no_grad():
        p.pad_up.fill_(0.7)
    y = p(torch.full((1, 3, 64, 64), 0.6))
    assert float(y.detach().max()) > 1.0


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
