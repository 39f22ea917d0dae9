"""The one way to predict: a frozen backbone, a head, and (optionally) a prompt, on one device.

``PromptedModel`` is what the trainer trains, what evaluation measures, and what the CLI and the app use to
predict; ``PromptedModel.from_prompt_file`` rebuilds it from a saved prompt.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone, BackboneCache, load_backbone
from .data import pil_to_uint8, to_model_input
from .errors import VPError
from .heads import create_head
from .prompters import Prompter
from .utils import eval_mode


def _to_pil(images: torch.Tensor) -> list:
    """[0, 1] float batch (B, 3, S, S) -> 8-bit RGB PIL images."""
    from PIL import Image

    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class PromptedModel(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module, prompter: Prompter | None, class_names: list[str]):
        super().__init__()
        self.backbone, self.head, self.prompter = backbone, head, prompter
        self.class_names = list(class_names)
        if prompter is not None and prompter.cfg.image_size != backbone.image_size:
            raise VPError(f"The prompt is for {prompter.cfg.image_size}px images but {backbone.spec} takes "
                          f"{backbone.image_size}px; use '{backbone.spec.split('@')[0]}@{prompter.cfg.image_size}'.")

    @property
    def device(self) -> torch.device:
        return self.backbone.mean.device

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    def prompt(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> prompted [0, 1] images (unchanged when there is no prompt)."""
        return self.prompter(images) if self.prompter is not None else images

    def forward(self, images: torch.Tensor, use_prompt: bool = True) -> torch.Tensor:
        """[0, 1] images (B, 3, S, S) -> logits over ``class_names``."""
        x = self.prompt(images) if use_prompt else images
        return self.logits(self.backbone(x), use_prompt)

    def classify_prompted(self, prompted: torch.Tensor) -> torch.Tensor:
        """Logits for images that already carry the prompt (e.g. a prompted PNG read back from disk)."""
        return self.head(self.backbone(prompted))

    def logits(self, outputs: torch.Tensor, use_prompt: bool = True) -> torch.Tensor:
        """Backbone outputs -> class logits. Without a prompt the head gives its no-prompt baseline (a label
        mapping reads the mapping found without a prompt, when known: the fair comparison)."""
        return self.head(outputs, use_prompt)

    def preprocess(self, images) -> torch.Tensor:
        """PIL images or uint8 tensors -> float [0, 1] batch on the model's device."""
        if isinstance(images, torch.Tensor):
            batch = images if images.ndim == 4 else images.unsqueeze(0)
        else:
            batch = torch.stack([pil_to_uint8(im, self.image_size) for im in images])
        return to_model_input(batch, self.image_size).to(self.device)

    @torch.no_grad()
    def prompted_images(self, images) -> list:
        """The prompted images as 8-bit RGB PIL images (what you would save as PNG and classify again)."""
        with eval_mode(self):
            x = self.prompt(self.preprocess(images))
        return _to_pil(x)

    def _top(self, logits: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        top = logits.softmax(-1).topk(min(k, logits.shape[1]), dim=1)
        return [[(self.class_names[int(i)], float(p)) for p, i in zip(ps, ids)] for ps, ids in zip(top.values, top.indices)]

    @torch.no_grad()
    def predict(self, images, k: int = 5, use_prompt: bool = True) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) for each image."""
        with eval_mode(self):
            logits = self(self.preprocess(images), use_prompt=use_prompt)
        return self._top(logits, k)

    @torch.no_grad()
    def predict_both(self, images, k: int = 5, with_images: bool = False):
        """``(zero_shot, prompted)`` top-k for each image, from one forward pass over the plain and the prompted
        images together (what the app and ``predict`` show side by side). ``with_images=True`` also returns the
        prompted images as 8-bit PIL images, from the same tensors (no second preprocessing)."""
        with eval_mode(self):
            x = self.preprocess(images)
            px = self.prompt(x)
            out = self.backbone(torch.cat([x, px]))
        n = len(x)
        result = (self._top(self.logits(out[:n], False), k), self._top(self.logits(out[n:], True), k))
        if not with_images:
            return result
        return (*result, _to_pil(px))

    @classmethod
    def from_prompt_file(cls, path, device="cpu", cache: BackboneCache | None = None, backbone: str | None = None,
                         allow_other_backbone: bool = False):
        """Rebuild the model a prompt file was trained with. ``backbone`` names another backbone; that is refused
        (a prompt only means something for its own model) unless ``allow_other_backbone`` is set, e.g. to *show*
        what the prompt does elsewhere. Then the head is rebuilt for that backbone (CLIP: the same class names and
        templates; a classifier: the stored mapping when its indices exist there, else first-k), and callers
        should say so plainly (``prompt_file.check_backbone`` gives the text)."""
        from .prompt_file import load_prompt

        pf = load_prompt(path)
        spec = pf.meta["backbone"]["spec"]
        other = backbone is not None and backbone != spec
        if other and not allow_other_backbone:
            raise VPError(f"This prompt was trained for {spec}, not {backbone}; it would not mean anything there.")
        use = backbone if other else spec
        bb = cache.get(use, device) if cache is not None else load_backbone(use, device)
        head_meta = pf.meta["head"]
        indices = head_meta.get("mapping")
        if other and indices is not None and (not hasattr(bb, "source_classes")
                                              or int(torch.as_tensor(indices).max()) >= len(bb.source_classes)):
            indices = None
        head = create_head(bb, pf.meta["class_names"], templates=head_meta.get("templates"),
                           mapping=head_meta.get("method", "first_k"), mapping_indices=indices)
        if not other:
            head.restore(head_meta, pf.head)
        model = cls(bb, head, pf.prompter.to(device), pf.meta["class_names"]).eval()  # a loaded model predicts
        return model, pf
