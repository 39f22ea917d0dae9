"""The new pieces put together the way a training step will use them: augment (clean images) -> prompter ->
capture augmentation (prompted images) -> backbone -> head, stepped by a registered optimiser."""
import pytest
import torch
import torch.nn.functional as F

from visual_prompting import PromptedModel, create_prompter
from visual_prompting.augment import build_augment
from visual_prompting.capture import build_capture, capture_top1
from visual_prompting.data import TensorImageSet
from visual_prompting.heads import create_head
from visual_prompting.optim import build_optimizer


@pytest.mark.parametrize("kind, augment, optimizer, capture", [
    ("lowrank", "flip_crop", "l2sgd", "capture"),
    ("learned_scale_pad", "trivial", "adam", "none"),
    ("full", "none", "sgd", "capture"),
])
def test_a_training_step_with_the_new_pieces(tiny_clip, kind, augment, optimizer, capture):
    torch.manual_seed(0)
    s = tiny_clip.image_size
    prompter = create_prompter(kind=kind, image_size=s, size=2, init="randn", init_std=0.05)
    model = PromptedModel(tiny_clip, create_head(tiny_clip, ["cat", "dog", "bird"], templates=["a {}"]), prompter,
                          ["cat", "dog", "bird"])
    aug, cap = build_augment(augment), build_capture(capture)
    opt = build_optimizer(optimizer, prompter.parameters(), lr={"sgd": 1.0, "l2sgd": 1.0, "adam": 0.01}[optimizer])
    before = [p.detach().clone() for p in prompter.parameters()]
    x, y = torch.rand(6, 3, s, s), torch.tensor([0, 1, 2, 0, 1, 2])
    model.train()
    for _ in range(2):
        logits = model.logits(model.backbone(cap(model.prompt(aug(x)))))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in prompter.parameters())
        assert all(p.grad is None for p in tiny_clip.parameters())  # the backbone stays frozen
        opt.step()
        prompter.project_()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, prompter.parameters()))
    imgs = (torch.rand(10, 3, s, s) * 255).to(torch.uint8)
    data = TensorImageSet(imgs, torch.arange(10) % 3, ["cat", "dog", "bird"], "toy")
    got = capture_top1(model, data, batch_size=4)
    assert set(got) == {"clean", "jpeg75", "resize075"} and all(0 <= v <= 1 for v in got.values())
