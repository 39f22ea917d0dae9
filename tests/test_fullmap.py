"""The fully connected output mapping (label mapping ``fully_map``, AutoVP's FullyMap): the head on its own, then
through training, the prompt file and PromptedModel (EfficientNet-Lite0 at 32 px, real weights, a small part of the
bundled subset)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from visual_prompting import BackboneCache, PromptedModel, TrainConfig, VPError
from visual_prompting.evaluation import evaluate
from visual_prompting.heads import FullyMapHead, LabelMappingHead
from visual_prompting.prompt_file import load_prompt
from visual_prompting.training import Trainer

from conftest import with_metadata

SPEC = "effnet-lite0@32"


def test_it_starts_as_the_label_mapping_and_counts_its_numbers():
    mapping = [5, 3, 999, 0]
    h = FullyMapHead(mapping, 1000)
    ref = LabelMappingHead(mapping, 1000, "frequency")
    logits = torch.randn(8, 1000)
    assert torch.equal(h(logits), ref(logits))
    assert h.trainable_params() == 4 * 1000 + 4 == sum(p.numel() for p in h.trainable_parameters())
    assert h.describe()["kind"] == "fully_map" and h.describe()["trainable_params"] == 4004
    assert LabelMappingHead(mapping, 1000).trainable_parameters() == []  # a fitted mapping trains nothing


def test_fit_restarts_the_layer_from_the_fitted_mapping_and_keeps_a_baseline():
    h = FullyMapHead([0, 1, 2], 12)
    with torch.no_grad():
        h.linear.weight.add_(1.0)
    counts = torch.zeros(12, 3, dtype=torch.long)
    counts[7, 0], counts[4, 1], counts[9, 2] = 5, 5, 5
    h.fit(counts)
    assert h.mapping.tolist() == [7, 4, 9]
    x = torch.randn(6, 12)
    assert torch.equal(h(x), x[:, [7, 4, 9]])
    counts2 = torch.zeros(12, 3, dtype=torch.long)
    counts2[1, 0], counts2[2, 1], counts2[3, 2] = 5, 5, 5
    h.fit(counts2, baseline=True)  # the no-prompt baseline: a plain mapping, the layer untouched
    assert torch.equal(h(x, use_prompt=False), x[:, [1, 2, 3]]) and torch.equal(h(x), x[:, [7, 4, 9]])


def test_it_learns_what_a_one_to_one_mapping_cannot():
    # each class is the *sum* of two source logits: no single source logit separates them, a linear layer does
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(3, 12)
    w[0, [0, 1]] = w[1, [2, 3]] = w[2, [4, 5]] = 1.0
    x = torch.randn(600, 12, generator=g)
    y = (x @ w.T).argmax(1)
    h = FullyMapHead([0, 2, 4], 12)
    start = float((h(x).argmax(1) == y).float().mean())
    opt = torch.optim.Adam(h.trainable_parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(h(x), y).backward()
        opt.step()
    end = float((h(x).argmax(1) == y).float().mean())
    assert start < 0.85 and end > 0.95


# -- through training -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache():
    return BackboneCache()


def trainer(tmp, small, cache, events=None, should_stop=None, **kw) -> Trainer:
    base = dict(model=SPEC, dataset="fashion_mnist_subset", batch_size=50, steps=6, eval_every=3, device="cpu",
                seed=0, out_dir=str(tmp), num_workers=0, prompter="full", optimizer="adam",
                label_mapping="fully_map", head_lr=0.01)
    return Trainer(TrainConfig(**{**base, **kw}), callbacks=[events.append] if events is not None else None,
                   should_stop=should_stop, cache=cache, splits=small)


@pytest.fixture(scope="module")
def run(tmp_path_factory, small, cache):
    events = []
    t = trainer(tmp_path_factory.mktemp("fm"), small, cache, events)
    start_mapping = None

    def grab(ev):
        nonlocal start_mapping
        if ev.kind == "start":
            start_mapping = t.model.head.mapping.tolist()
    t.callbacks.append(grab)
    return t, t.run(), events, start_mapping


def test_training_trains_the_layer_and_the_prompt_file_holds_it(run, small, cache):
    t, res, events, start_mapping = run
    pf = load_prompt(res.best_path)
    assert pf.meta["head"]["kind"] == "fully_map" and set(pf.head) == {"weight", "bias"}
    w = pf.head["weight"]
    assert w.shape == (10, 1000)
    start = torch.zeros(10, 1000)
    start[torch.arange(10), torch.tensor(start_mapping)] = 1.0
    assert (w - start).abs().max() > 1e-3 and pf.head["bias"].abs().max() > 0  # the layer moved off its start
    prompt_numbers = sum(p.numel() for p in t.prompter.parameters())
    assert t.trainable_numbers() == prompt_numbers + 10_010
    start = next(e for e in events if e.kind == "start")
    assert f"{prompt_numbers + 10_010:,} trainable numbers" in start.message
    # the file alone rebuilds the trained model: the same test accuracy as the run measured
    model, _ = PromptedModel.from_prompt_file(res.best_path, cache=cache)
    assert evaluate(model, small.test, True, 50).top1 == res.metrics["test_top1"]
    # its no-prompt baseline is a plain frequency mapping found without the prompt
    base = pf.meta["head"]["baseline_mapping"]
    x = torch.randn(4, 1000)
    assert torch.equal(model.head(x, use_prompt=False), x[:, base])


def test_the_head_lr_reaches_the_layer(tmp_path, small, cache):
    t = trainer(tmp_path, small, cache, head_lr=1e-9, steps=3, eval_every=3)
    groups = t.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["params"] == t.model.head.trainable_parameters()
    res = t.run()
    w = load_prompt(res.best_path).head["weight"]
    assert ((w - w.round()).abs().max()) < 1e-5  # a 1e-9 lr leaves the 0/1 start (nearly) where it was


def test_resume_restores_the_layer_and_its_optimiser_state(tmp_path, small, cache):
    ref = trainer(tmp_path / "ref", small, cache).run()
    # stopped after 4 steps (an evaluation and a checkpoint at step 3)
    t = trainer(tmp_path / "r", small, cache, should_stop=lambda: t.step >= 4)
    first = t.run()
    assert first.interrupted and first.steps_done == 4
    again = trainer(tmp_path / "r", small, cache, resume=True).run()
    a, b = load_prompt(ref.last_path), load_prompt(again.last_path)
    assert torch.allclose(a.head["weight"], b.head["weight"], atol=1e-6)
    assert torch.allclose(a.prompter.delta(), b.prompter.delta(), atol=1e-6)
    assert again.metrics["test_top1"] == ref.metrics["test_top1"]


def test_head_lr_without_a_trained_head_is_an_error(tmp_path, small, cache):
    with pytest.raises(VPError, match="head-lr applies to a trained head"):
        trainer(tmp_path, small, cache, label_mapping="frequency")


@pytest.mark.parametrize("change, msg", [
    (lambda t: t.pop("head.bias"), "needs the tensors head.weight and head.bias"),
    (lambda t: t.update({"head.weight": torch.zeros(10, 999)}), "shape"),
    (lambda t: t["head.bias"].__setitem__(0, float("nan")), "NaN"),
])
def test_a_broken_head_in_a_prompt_file_is_refused(run, tmp_path, change, msg):
    from safetensors import safe_open

    src = run[1].best_path
    with safe_open(src, "pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    bad = str(tmp_path / "bad.safetensors")
    save_file(tensors, bad, metadata=header)
    with pytest.raises(VPError, match=msg):
        load_prompt(bad)


def test_head_tensors_in_a_plain_mapping_file_are_refused(run, tmp_path):
    bad = with_metadata(run[1].best_path, tmp_path / "bad.safetensors",
                        lambda meta: meta["head"].update(kind="label_mapping"))
    with pytest.raises(VPError, match="has no trained tensors"):
        load_prompt(bad)
    assert load_file(run[1].best_path)["head.weight"].shape == (10, 1000)
