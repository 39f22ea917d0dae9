"""Pictures of a prompt: exact values on prompts whose content is known."""
import numpy as np
import torch

from visual_prompting import PromptedModel, create_prompter
from visual_prompting.heads import create_head
from visual_prompting.visualization import (amplitude, colorize, curve_records, delta_image, metadata_rows,
                                            prompt_image, saliency, spectrum)


def red_frame(size=32, pad=4, value=0.2):
    p = create_prompter(kind="pad", image_size=size, size=pad)
    with torch.no_grad():
        for t in p.parameters():
            t.zero_()
            t[0] = value  # red channel only
    return p


def test_prompt_image_maps_zero_to_grey_and_the_peak_to_white():
    p = red_frame()
    arr = np.asarray(prompt_image(p, min_size=32))
    assert arr.shape == (32, 32, 3)
    assert tuple(arr[0, 0]) == (255, 128, 128)  # red at +peak, green/blue at 0 -> grey
    assert tuple(arr[16, 16]) == (128, 128, 128)  # the centre is not the prompt's
    # a trainer snapshot (no mask) draws the same picture
    assert np.array_equal(np.asarray(delta_image(p.delta())), np.asarray(prompt_image(p)))


def test_amplitude_per_pixel_and_per_channel_in_8bit_levels():
    heat, rows = amplitude(red_frame(value=0.2), min_size=32)
    assert rows[0] == ["red", 51.0, 51.0, 51.0] and rows[1][1:] == [0.0, 0.0, 0.0] and rows[2][0] == "blue"
    arr = np.asarray(heat)
    assert arr[0, 0].sum() > arr[16, 16].sum()  # frame bright, centre dark
    assert tuple(arr[16, 16]) == (0, 0, 4)


def test_spectrum_of_a_frame_peaks_at_zero_frequency():
    arr = np.asarray(spectrum(red_frame(), min_size=32)).astype(int).sum(-1)
    assert np.unravel_index(arr.argmax(), arr.shape) == (16, 16)  # fftshift puts zero frequency in the centre


def test_colorize_is_monotone_and_handles_all_zero():
    ramp = np.asarray(colorize(np.linspace(0, 1, 50)[None, :])).astype(int).sum(-1)[0]
    assert (np.diff(ramp) >= 0).all()
    assert np.asarray(colorize(np.zeros((3, 3)))).max() <= 4


class HalfMeans(torch.nn.Module):
    """A toy classifier whose source class 0 is carried by the left half of the image alone (its mean brightness
    plus a bias) and class 1 by the right half alone."""

    def __init__(self, bias):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(bias))

    def forward(self, x):
        half = x.shape[-1] // 2
        return torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], 1) + self.bias


def test_saliency_explains_the_top_prompted_class_without_touching_the_weights(effnet):
    """On EfficientNet: the class explained is the top prompted class, and no weight gets a gradient. On a toy
    classifier whose two classes are carried by the left and the right half of a flat grey image (so the dimmed copy
    under the heat map is flat too): the overlay is bright on the top class's half and dark on the other, whichever
    class the bias makes top."""
    from PIL import Image

    from visual_prompting.backbones import ClassifierBackbone

    p = create_prompter(kind="pad", image_size=effnet.image_size, size=8)
    names = ["a", "b", "c"]
    model = PromptedModel(effnet, create_head(effnet, names), p, names)
    img = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    overlay, cls = saliency(model, img, min_size=64)
    assert overlay.size == (64, 64) and cls == model.predict([img], 1)[0][0][0]
    assert all(w.grad is None for w in effnet.parameters()) and all(q.grad is None for q in p.parameters())

    img = Image.new("RGB", (32, 32), (128, 128, 128))
    for bias, top, carried in (([1.0, 0.0], "left", slice(0, 16)), ([0.0, 1.0], "right", slice(16, 32))):
        net = HalfMeans(bias)
        backbone = ClassifierBackbone("toy@32", net, 32, (0.5,) * 3, (0.25,) * 3, ["source 0", "source 1"])
        names = ["left", "right"]
        model = PromptedModel(backbone, create_head(backbone, names), create_prompter(kind="pad", image_size=32,
                                                                                       size=4), names)
        overlay, cls = saliency(model, img, min_size=32)
        assert cls == top == model.predict([img], 1)[0][0][0]
        brightness = np.asarray(overlay).astype(float).sum(-1)
        other = np.ones(32, bool)
        other[carried] = False
        assert brightness[:, carried].min() > brightness[:, other].max() + 300, (top, brightness[0])
        assert net.bias.grad is None


def test_metadata_rows_and_curve_records():
    rows = dict(metadata_rows({"a": {"b": 1.23456, "c": None}, "classes": list(range(20))}))
    assert rows["a.b"] == "1.235" and rows["a.c"] == "" and rows["classes"].endswith("(20 in all)")
    rec = curve_records([{"kind": "start", "step": 0, "zero_shot_val_top1": 0.4},
                         {"kind": "step", "step": 1, "loss": 2.0, "train_acc": 0.25},
                         {"kind": "eval", "step": 1, "val_top1": 0.5}])
    assert {(r["series"], r["value"]) for r in rec} == {("train loss", 2.0), ("train accuracy", 0.25),
                                                        ("val accuracy (prompt)", 0.5),
                                                        ("val accuracy (no prompt)", 0.4)}
