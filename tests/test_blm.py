"""Bayesian-guided label mapping (BLM, BLM+): the weights as the paper defines them, soft top-k counts, training with
it (refitted every epoch, resumable), and prompt files that hold it."""
from __future__ import annotations

import pytest
import torch

from visual_prompting import BackboneCache, PromptedModel, TrainConfig, VPError
from visual_prompting.evaluation import evaluate
from visual_prompting.heads import MAPPINGS, BayesianMappingHead, blm_weights
from visual_prompting.prompt_file import load_prompt, save_prompt
from visual_prompting.training import Trainer


def test_blm_weights_are_smoothed_conditional_frequencies_normalised_per_class():
    counts = torch.tensor([[6, 2], [0, 3], [0, 0]])  # 3 source classes, 2 new classes
    w = blm_weights(counts, lam=1.0)
    # w[s, t] = N[s, t] / (sum_t N[s, t] + 1), then each column over the sources
    raw = torch.tensor([[6 / 9, 2 / 9], [0.0, 3 / 4], [0.0, 0.0]])
    assert torch.allclose(w, raw / raw.sum(0, keepdim=True))
    assert torch.allclose(w.sum(0), torch.ones(2))
    assert torch.equal(blm_weights(torch.zeros(3, 2)), torch.full((3, 2), 1 / 3))  # no counts: every source alike
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    head = BayesianMappingHead(3, 2, "blm")
    head.fit(counts)
    assert torch.allclose(head(logits), logits @ w)


def test_blm_plus_counts_the_top_k_probabilities():
    assert MAPPINGS["blm_plus"].top_k_ratio == 0.15
    head = BayesianMappingHead(4, 20, "blm_plus")
    assert head.top_k == 3 and BayesianMappingHead(4, 10, "blm_plus").top_k == 1  # 15% of the classes, at least 1
    logits = torch.tensor([[4.0, 3.0, 2.0, -9.0], [0.0, 0.0, 5.0, 1.0]])
    labels = torch.tensor([7, 7])
    c = head.count(logits, labels, 20)
    p = logits.softmax(1)
    expected = p.clone()
    expected[0, 3] = 0  # outside the top 3
    expected[1, 0] = 0  # ties broken by topk: one of the two zeros is left out
    assert c.shape == (4, 20) and torch.count_nonzero(c[:, :7]) == 0
    assert torch.allclose(c[:, 7].float(), expected.sum(0)) or torch.allclose(
        c[:, 7].float(), (p * torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])).sum(0))
    assert torch.equal(BayesianMappingHead(4, 20, "blm").count(logits, labels, 20)[:, 7], torch.tensor([1, 0, 1, 0]))


@pytest.fixture(scope="module")
def cache():
    return BackboneCache()


def _cfg(out, method, **kw):
    return TrainConfig(model="effnet-lite0@32", dataset="fashion_mnist_subset", batch_size=50, steps=9, eval_every=3,
                       device="cpu", seed=0, out_dir=str(out), num_workers=0, label_mapping=method, optimizer="adam",
                       **kw)


@pytest.mark.parametrize("method", ["blm", "blm_plus"])
def test_training_with_blm_refits_every_epoch_and_the_file_holds_the_weights(tmp_path, small, cache, method):
    events = []
    t = Trainer(_cfg(tmp_path / "run", method), splits=small, cache=cache, callbacks=[events.append])
    res = t.run()
    assert [e.step for e in events if e.kind == "mapping"] == [4, 8]  # 200 images, 50 a step: an epoch is 4 steps
    pf = load_prompt(res.best_path)
    assert pf.meta["head"]["kind"] == "bayesian_mapping" and pf.meta["head"]["method"] == method
    assert set(pf.head) == {"weight", "baseline"} and pf.head["weight"].shape == (1000, 10)
    last = load_prompt(res.last_path)  # refitted with the trained prompt at steps 4 and 8: the estimate moved
    assert not torch.equal(last.head["weight"], last.head["baseline"])
    assert torch.allclose(pf.head["weight"].sum(0), torch.ones(10), atol=1e-5)
    assert t.trainable_numbers() == sum(p.numel() for p in t.prompter.parameters())  # input-only
    model, _ = PromptedModel.from_prompt_file(res.best_path, cache=cache)
    assert evaluate(model, small.test, True, 50).top1 == res.metrics["test_top1"]
    assert evaluate(model, small.test, False, 50).top1 == res.metrics["test_top1_no_prompt"]


def test_a_blm_run_resumes_where_it_would_have_ended(cut_and_resume, cache):
    ref, again = cut_and_resume(lambda out, **kw: _cfg(out, "blm", **kw), cache)
    a, b = load_prompt(ref.last_path), load_prompt(again.last_path)
    assert torch.equal(a.prompter.delta(), b.prompter.delta()) and torch.equal(a.head["weight"], b.head["weight"])
    assert again.metrics["test_top1"] == ref.metrics["test_top1"]


@pytest.mark.parametrize("tensors, message", [
    ({"weight": -torch.ones(1000, 10)}, "at least 0"),
    ({"weight": torch.full((1000, 10), float("nan"))}, "finite"),
    ({"weight": torch.ones(10, 1000)}, "1000 x 10"),
    ({}, "needs head.weight"),
    ({"weight": torch.ones(1000, 10), "bias": torch.ones(10)}, "needs head.weight")])
def test_a_broken_blm_head_in_a_file_is_refused(tmp_path, tensors, message):
    from visual_prompting import create_prompter

    p = create_prompter(kind="pad", image_size=32, size=4)
    meta = {"prompter": p.cfg.to_dict(), "backbone": {"spec": "effnet-lite0@32"}, "class_names": [str(i) for i in range(10)],
            "head": {"kind": "bayesian_mapping", "method": "blm", "num_source": 1000, "lambda": 1.0}}
    path = save_prompt(tmp_path / "p.safetensors", p, meta, head=tensors)
    with pytest.raises(VPError, match=message):
        load_prompt(path)
    with pytest.raises(VPError, match="Bayesian label mapping's 'method'"):
        save_prompt(tmp_path / "q.safetensors", p, {**meta, "head": {**meta["head"], "method": "iterative"}})
