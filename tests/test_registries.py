"""A prompter kind added from outside the package (here, in the test file) is usable everywhere the package
offers kinds: the CLI's options, the app's choices and checks, training, the prompt file and the model card -
without editing the package. Also: the settings helper and the label-mapping head's own fitting."""
from __future__ import annotations

import pytest
import torch

from visual_prompting import VPError
from visual_prompting.cli import build_parser
from visual_prompting.heads import MAPPINGS, LabelMappingHead, head_text
from visual_prompting.hub import model_card
from visual_prompting.prompt_file import load_prompt
from visual_prompting.prompters import CLAMP_MODES, PROMPTERS, FixedPatchPrompter, register_prompter
from visual_prompting.settings import check_value, choices, parse_value
from visual_prompting.training import TrainConfig, Trainer, default_prompt_size
from visual_prompting.ui import AppConfig, VPApp, choice_info, train_choices


class CentrePatchPrompter(FixedPatchPrompter):
    """A toy kind: the patch sits in the middle of the image; its default side is a third of the image."""

    kind = "toy_centre_patch"
    description = "square in the middle of the image (a toy from the tests)"

    @classmethod
    def default_size(cls, image_size: int) -> int:
        return max(1, image_size // 3)

    def _location(self) -> tuple[int, int]:
        c = (self.cfg.image_size - self.cfg.size) // 2
        return c, c


@pytest.fixture
def toy_kind():
    register_prompter(CentrePatchPrompter)
    yield CentrePatchPrompter.kind
    PROMPTERS.pop(CentrePatchPrompter.kind, None)


def test_a_toy_prompter_kind_reaches_the_cli_and_its_help(toy_kind, capsys):
    a = build_parser().parse_args(["train", "--prompter", toy_kind])
    assert a.prompter == toy_kind and TrainConfig(prompter=a.prompter).prompter == toy_kind
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert toy_kind in out and "square in the middle of the image" in out
    assert default_prompt_size(toy_kind, 96) == 32


def test_a_toy_prompter_kind_reaches_the_app(toy_kind, tmp_path):
    assert toy_kind in train_choices()["prompter"] and "a toy from the tests" in choice_info("prompter")
    vp = VPApp(AppConfig(zoo_dir=tmp_path / "zoo", user_zoo_dir=tmp_path / "mine", work_dir=tmp_path / "work",
                         device="cpu"))
    cfg = vp.train_config("s-toy", model="clip:vp-tiny", dataset="fashion_mnist_subset", prompter=toy_kind,
                          steps=2, batch_size=16)
    assert cfg.prompter == toy_kind
    with pytest.raises(VPError, match="Unknown prompter"):
        vp.train_config("s-toy", model="clip:vp-tiny", dataset="fashion_mnist_subset", prompter="no_such_kind")


def test_a_toy_prompter_kind_trains_saves_loads_and_gets_a_model_card(toy_kind, tmp_path):
    from visual_prompting.data import load_splits

    splits = load_splits("fashion_mnist_subset", image_size=32)
    cfg = TrainConfig(model="clip:vp-tiny", prompter=toy_kind, steps=2, batch_size=16, eval_every=2, device="cpu",
                      out_dir=str(tmp_path), test_without_prompt=False)
    res = Trainer(cfg, splits=splits).run()
    pf = load_prompt(res.best_path)
    assert isinstance(pf.prompter, CentrePatchPrompter) and pf.meta["prompter"]["size"] == 32 // 3
    mask = pf.prompter.mask()[0]
    assert mask[16, 16] == 1 and mask[0, 0] == 0  # the toy's own placement came back from the file
    card = model_card(pf.meta, num_parameters=pf.prompter.num_parameters())
    assert f"Visual prompt: {toy_kind}" in card and "square in the middle of the image" in card


def test_registered_kinds_describe_themselves():
    for registry in (PROMPTERS, CLAMP_MODES, MAPPINGS):
        for name, entry in registry.items():
            assert getattr(entry, "description", "").strip(), name
    assert PROMPTERS["pad"].default_size(224) == 30 and PROMPTERS["pad"].default_size(96) == 13
    assert PROMPTERS["fixed_patch"].default_size(224) == 56
    with pytest.raises(ValueError):
        register_prompter(type("Nameless", (FixedPatchPrompter,), {"kind": "nameless", "description": ""}))
    assert "nameless" not in PROMPTERS


def test_settings_give_choices_and_clear_messages():
    assert choices(TrainConfig, "clamp") == list(CLAMP_MODES) and choices(TrainConfig, "lr") is None
    assert parse_value(TrainConfig, "steps", 3.0) == 3 and parse_value(TrainConfig, "steps", None) is None
    with pytest.raises(VPError, match="whole number"):
        parse_value(TrainConfig, "batch_size", 2.5)
    with pytest.raises(VPError, match="Steps must be between 1 and 50"):
        parse_value(TrainConfig, "steps", 60, high=50)
    with pytest.raises(VPError, match="learning rate must be a positive number"):
        check_value(TrainConfig, "lr", 0.0)
    with pytest.raises(VPError, match="Unknown label mapping 'best'"):
        check_value(TrainConfig, "label_mapping", "best")
    with pytest.raises(VPError, match="Batch size must be given"):
        parse_value(TrainConfig, "batch_size", None, required=True)


def test_the_label_mapping_head_fits_itself_and_keeps_its_baseline():
    head = LabelMappingHead([0, 1], num_source=4, method="iterative")
    assert head.fits_from_data and head.needs_refit_each_epoch and head.needs_counts
    assert not LabelMappingHead([0, 1], 4, "first_k").fits_from_data
    with_prompt = torch.tensor([[0, 0], [0, 0], [5, 0], [0, 7]])  # target 0 -> source 2, target 1 -> source 3
    without = torch.tensor([[0, 3], [4, 0], [0, 0], [0, 0]])  # target 0 -> source 1, target 1 -> source 0
    head.fit(with_prompt)
    head.fit(without, baseline=True)
    logits = torch.arange(8.0).view(2, 4)
    assert head(logits).tolist() == logits[:, [2, 3]].tolist()
    assert head(logits, use_prompt=False).tolist() == logits[:, [1, 0]].tolist()
    meta = head.describe()
    assert meta["baseline_mapping"] == head.baseline_indices() == [1, 0]  # the head keeps it under its own key
    again = LabelMappingHead([0, 1], 4, "iterative")
    again.restore(meta)
    assert again(logits, use_prompt=False).tolist() == head(logits, use_prompt=False).tolist()
    assert "label mapping `iterative` onto the backbone's 4 classes" == head_text(meta)
