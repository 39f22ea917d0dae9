"""A prompt that starts at a constant pixel offset (``init_offset``): every kind that holds pixels (or their DCT
coefficients) starts there, the prompt file keeps it only when it is not 0, bad values are refused, and a run
built with it starts from that prompt."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from visual_prompting import VPError, create_prompter, load_prompt, save_prompt
from visual_prompting.prompt_file import FORMAT_VERSION, build_metadata
from visual_prompting.prompters import PROMPTERS, PrompterConfig

OFFSET_KINDS = sorted(k for k, cls in PROMPTERS.items() if cls.starts_at_offset)


@pytest.mark.parametrize("kind", OFFSET_KINDS)
def test_every_pixel_kind_starts_at_the_offset_where_it_acts(kind):
    p = create_prompter(kind=kind, image_size=16, size=3, clamp="none", init_offset=0.01)
    p.eval()
    x = torch.full((1, 3, 16, 16), 0.5)
    base = create_prompter(kind=kind, image_size=16, size=3, clamp="none")
    base.eval()
    with torch.no_grad():
        diff = p(x) - base(x)  # the unchanged start against the offset one: the offset where the prompt acts
    inside = (p.mask() > 0).expand(3, -1, -1)
    assert inside.any()
    assert torch.allclose(diff[0][inside], torch.full_like(diff[0][inside], 0.01), atol=1e-6)
    assert torch.allclose(diff[0][~inside], torch.zeros_like(diff[0][~inside]))
    assert not p.is_identity() and (not base.additive or base.is_identity())


def test_the_dct_prompt_starts_at_the_constant_images_coefficients_only():
    p = create_prompter(kind="full_dct", image_size=12, init_offset=-0.2)
    assert torch.allclose(p.delta(), torch.full((3, 12, 12), -0.2), atol=1e-6)
    c = p.coefficients.detach()
    assert torch.allclose(c[:, 0, 0], torch.full((3,), -0.2 * 12), atol=1e-5)  # the DC coefficient: offset * S
    c[:, 0, 0] = 0
    assert c.abs().max() < 1e-5  # nothing else


def test_the_offset_adds_to_a_random_start():
    torch.manual_seed(0)
    a = create_prompter(kind="full", image_size=8, init="randn", init_std=0.1)
    torch.manual_seed(0)
    b = create_prompter(kind="full", image_size=8, init="randn", init_std=0.1, init_offset=0.05)
    assert torch.allclose(b.full - a.full, torch.full_like(a.full, 0.05))


def test_bad_offsets_and_kinds_without_pixels_are_refused():
    for bad in (1.5, -1.01, math.nan):
        with pytest.raises(VPError, match="start offset must be a number from -1 to 1"):
            create_prompter(kind="full", image_size=8, init_offset=bad)
    assert not PROMPTERS["lowrank"].starts_at_offset
    with pytest.raises(VPError, match="cannot start at an offset"):
        create_prompter(kind="lowrank", image_size=8, size=2, init_offset=0.01)
    create_prompter(kind="lowrank", image_size=8, size=2)  # without one it builds


def _meta(p):
    return build_metadata(p, backbone={"spec": "clip:vp-tiny", "kind": "clip"}, class_names=["cat", "dog"],
                          head={"kind": "clip_text", "templates": ["This is a photo of a {}"]}, dataset="toy",
                          train_config={"lr": 0.03}, metrics={"val_top1": 0.5})


def test_the_prompt_file_keeps_the_offset_only_when_set_and_refuses_a_bad_one(tmp_path):
    assert "init_offset" not in PrompterConfig(kind="full").to_dict()  # files written before it existed compare equal
    p = create_prompter(kind="full_dct", image_size=8, size=8, init_offset=0.01)
    assert p.cfg.to_dict()["init_offset"] == 0.01
    path = save_prompt(tmp_path / "p.safetensors", p, _meta(p))
    pf = load_prompt(path)
    assert pf.prompter.cfg.init_offset == 0.01 and torch.equal(pf.prompter.coefficients, p.coefficients)
    tensors = {f"prompt.{k}": v.detach().contiguous() for k, v in p.named_parameters()}
    for bad in ("0.01", 2.0, float("inf"), None):
        meta = _meta(p)
        meta["prompter"]["init_offset"] = bad
        bad_path = str(tmp_path / "bad.safetensors")  # written by hand: save_prompt itself refuses such metadata
        save_file(tensors, bad_path, metadata={"format": "visual-prompting", "format_version": str(FORMAT_VERSION),
                                               "metadata": json.dumps(meta)})
        with pytest.raises(VPError, match="init_offset must be a number from -1 to 1"):
            load_prompt(bad_path)


def test_on_black_pixels_the_plain_clamp_passes_gradient_only_to_a_prompt_started_above_0():
    black = torch.zeros(2, 3, 8, 8)
    grads = {}
    for offset in (0.0, 0.01):
        p = create_prompter(kind="full", image_size=8, clamp="hard", init_offset=offset)
        p(black).sum().backward()
        grads[offset] = p.full.grad
    assert grads[0.0].abs().sum() == 0  # at the range's edge the plain clamp passes nothing: a dead start
    assert (grads[0.01] != 0).all()


def test_a_run_starts_from_the_offset_and_its_files_record_it(tmp_path):
    from visual_prompting import TrainConfig
    from visual_prompting.data import load_splits
    from visual_prompting.training import Trainer

    splits = load_splits("fashion_mnist_subset", image_size=32)
    cfg = TrainConfig(model="clip:vp-tiny", dataset="fashion_mnist_subset", steps=4, batch_size=16, device="cpu",
                      out_dir=str(tmp_path), eval_every=2, seed=0, prompter="full_dct", clamp="hard",
                      optimizer="adam", lr=0.03, init_offset=0.01)
    t = Trainer(cfg, splits=splits)
    assert torch.allclose(t.prompter.delta(), torch.full((3, 32, 32), 0.01), atol=1e-6)
    res = t.run()
    meta = load_prompt(res.last_path).meta
    assert meta["prompter"]["init_offset"] == 0.01 and meta["train_config"]["init_offset"] == 0.01
    assert not torch.allclose(load_prompt(res.last_path).prompter.delta(), torch.full((3, 32, 32), 0.01))


def test_the_model_card_says_where_the_prompt_started():
    from visual_prompting.hub import model_card

    p = create_prompter(kind="full_dct", image_size=8, size=8, init_offset=0.01)
    assert "clamp `straight-through`, init `zeros` from +0.01" in model_card(_meta(p))
    q = create_prompter(kind="full_dct", image_size=8, size=8)
    assert "init `zeros`\n" in model_card(_meta(q))
