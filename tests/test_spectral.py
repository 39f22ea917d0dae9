"""The full_dct prompt kind: a full-image prompt held as its DCT coefficients (visual_prompting/spectral.py)."""
import math

import pytest
import torch

from visual_prompting import create_prompter
from visual_prompting.prompters import PROMPTERS
from visual_prompting.spectral import dct_basis


def test_the_basis_is_the_orthonormal_dct_ii():
    n = 12
    d = dct_basis(n)
    assert torch.allclose(d @ d.T, torch.eye(n), atol=1e-5)
    x = torch.randn(n, dtype=torch.float64)
    # DCT-II written out term by term, with the orthonormal scale
    ref = torch.tensor([sum(x[i] * math.cos(math.pi * (2 * i + 1) * k / (2 * n)) for i in range(n))
                        * math.sqrt((1 if k == 0 else 2) / n) for k in range(n)], dtype=torch.float64)
    assert torch.allclose((d.double() @ x), ref, atol=1e-5)


def test_it_adds_the_pixels_its_coefficients_make_exactly_as_a_full_prompt_would():
    p = create_prompter(kind="full_dct", image_size=16, size=16, clamp="hard")
    assert "full_dct" in PROMPTERS and p.num_parameters() == 3 * 16 * 16
    with torch.no_grad():
        p.coefficients.zero_()
        p.coefficients[:, 0, 0] = 0.25 * 16  # the constant cosine: 0.25 on every pixel
    assert torch.allclose(p.delta(), torch.full((3, 16, 16), 0.25), atol=1e-6)
    with torch.no_grad():
        p.coefficients.normal_(0, 0.2)
    full = create_prompter(kind="full", image_size=16, size=16, clamp="hard")
    with torch.no_grad():
        full.full.copy_(p.delta())
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(p(x), full(x))
    assert torch.allclose(p.delta().pow(2).sum(), p.coefficients.pow(2).sum(), rtol=1e-4)  # lengths kept


def test_the_optimiser_moves_the_coefficients_and_the_gradient_is_the_pixel_gradient_transformed():
    p = create_prompter(kind="full_dct", image_size=8, size=8, clamp="none")
    x = torch.rand(2, 3, 8, 8)
    w = torch.randn(2, 3, 8, 8)
    (p(x) * w).sum().backward()
    d = dct_basis(8)
    assert torch.allclose(p.coefficients.grad, d @ w.sum(0) @ d.T, atol=1e-5)
    # Adam's first step is sign-like per number, so it differs from the same step taken per pixel
    opt = torch.optim.Adam(p.parameters(), lr=0.01)
    opt.step()
    per_pixel = -0.01 * torch.sign(w.sum(0))
    assert not torch.allclose(p.delta().detach(), per_pixel, atol=1e-4)


@pytest.mark.parametrize("clamp, projected", [("hard", False), ("straight-through", True), ("none", False)])
def test_projection_keeps_the_pixels_in_range_and_touches_nothing_inside(clamp, projected):
    p = create_prompter(kind="full_dct", image_size=8, size=8, clamp=clamp)
    with torch.no_grad():
        p.coefficients.normal_(0, 0.1)
    inside = p.coefficients.detach().clone()
    p.project_()
    assert torch.equal(p.coefficients, inside)  # no pixel beyond 1: left bit for bit
    with torch.no_grad():
        p.coefficients[:, 0, 0] = 3 * 8  # every pixel near 3
    before = p.delta().detach().clone()
    p.project_()
    after = p.delta().detach()
    if projected:
        assert after.abs().max() <= 1 + 1e-5 and torch.allclose(after, before.clamp(-1, 1), atol=1e-5)
    else:
        assert torch.equal(after, before)


@pytest.mark.parametrize("gradient_beyond_range", [False, True])
def test_what_decides_the_projection_is_the_clamp_modes_gradient_not_its_name(monkeypatch, gradient_beyond_range):
    # a clamp mode of another name, as a user could register one: projected exactly when a pixel beyond the range
    # still gets gradient from it (then it can drift where it changes nothing)
    from visual_prompting.prompters import CLAMP_MODES, ClampMode, hard_clamp
    monkeypatch.setitem(CLAMP_MODES, "edge_test", ClampMode("edge_test", "test", hard_clamp, True, gradient_beyond_range))
    p = create_prompter(kind="full_dct", image_size=8, size=8, clamp="edge_test")
    with torch.no_grad():
        p.coefficients[:, 0, 0] = 3 * 8
    before = p.delta().detach().clone()
    p.project_()
    assert torch.equal(p.delta().detach(), before) is not gradient_beyond_range
    assert bool(p.delta().abs().max() <= 1 + 1e-5) is gradient_beyond_range
