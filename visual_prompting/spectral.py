"""Prompts learned in a frequency basis: the full-image additive prompt held as its 2-D cosine (DCT-II) coefficients.

The prompt a :class:`DctPrompter` adds is exactly a ``full`` prompt (3 x S x S pixels, clamped and rounded the same
way); only the numbers the optimiser moves differ. The DCT is orthonormal, so lengths (and plain SGD) are the same in
both bases, but Adam scales its step per number: per pixel in ``full``, per frequency here. At the CPU benchmark's
budget that measured better, with the same learning rate (:mod:`visual_prompting.recipes`, recipe ``live``); weighting
the frequencies (smoother or sharper prompts) measured worse. The kind is registered with the others
(:data:`visual_prompting.prompters.PROMPTERS`) when the package is imported.
"""
from __future__ import annotations

import math

import torch

from .prompters import CLAMP_MODES, PrompterConfig, WholeImagePrompter, register_prompter


def dct_basis(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n x n, float32): row k is the k-th cosine, ``D @ D.T`` is the identity, so
    ``D.T @ C @ D`` turns an (n, n) map of coefficients into pixels and ``D @ X @ D.T`` turns pixels back."""
    i = torch.arange(n, dtype=torch.float32)
    d = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


@register_prompter
class DctPrompter(WholeImagePrompter):
    """The full-image additive prompt (3 x S x S numbers) held as its DCT coefficients (see the module). The prompt
    file keeps the coefficients; :meth:`delta` gives the pixels. ``init`` ``randn`` draws the coefficients, which
    gives the same Gaussian pixels; ``init_offset`` starts it at the constant image's coefficients; ``size`` is not
    used."""

    kind = "full_dct"
    description = "additive prompt over the whole image, learned as its cosine (DCT) coefficients"

    def __init__(self, cfg: PrompterConfig):
        super().__init__(cfg)
        self.coefficients = self._param(3, cfg.image_size, cfg.image_size, pixels=False)
        self.register_buffer("basis", dct_basis(cfg.image_size), persistent=False)
        if cfg.init_offset:  # the constant image's coefficients (all in the lowest, DC one)
            with torch.no_grad():
                self.coefficients += self.coefficients_of(torch.full((3, cfg.image_size, cfg.image_size),
                                                                     float(cfg.init_offset)))

    def delta(self) -> torch.Tensor:
        return self.basis.T @ self.coefficients @ self.basis

    def coefficients_of(self, pixels: torch.Tensor) -> torch.Tensor:
        """The DCT coefficients of a 3 x S x S prompt in pixels (the inverse of :meth:`delta`)."""
        return self.basis @ pixels @ self.basis.T

    @torch.no_grad()
    def _project_prompt(self) -> None:
        """With a clamp that passes gradient beyond the range (straight-through), keep the pixels in [-1, 1] as every
        other kind does (not the coefficients, which can be larger; nothing is touched while the pixels are inside).
        With one that does not (the plain ``hard`` clamp) leave them: a pixel beyond the range changes nothing in the
        image and gets no gradient there, and projecting it back changes every coefficient. Measured (recipe live,
        CPU budget, seed 0): 86.12% with the projection against 86.53% without (records ``live_dct_projected`` and
        ``live_dct0``)."""
        mode = CLAMP_MODES[self.cfg.clamp]
        if mode.projects and mode.gradient_beyond_range:
            d = self.delta()
            if d.abs().max() > 1:
                self.coefficients.copy_(self.coefficients_of(d.clamp(-1.0, 1.0)))
