"""The ``contrast`` label mapping: sources picked by how much more their logit answers one class than the others
(not by how often they are the top-1), fitted from summed logits, trained with, stored and resumed."""
from __future__ import annotations

import pytest
import torch

from visual_prompting import BackboneCache, PromptedModel, TrainConfig
from visual_prompting.evaluation import evaluate
from visual_prompting.heads import MAPPINGS, LabelMappingHead, contrast_scores, logit_sums, prediction_counts
from visual_prompting.prompt_file import load_prompt
from visual_prompting.training import Trainer


def test_logit_sums_add_up_each_classs_logits_and_count_its_images():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [-1.0, 0.0, 1.0]])
    labels = torch.tensor([1, 0, 1])
    s = logit_sums(logits, labels, 3)
    assert s.dtype == torch.float64 and s.shape == (4, 3)  # 3 sources + the image counts, 3 classes
    assert s[:3, 0].tolist() == [4.0, 5.0, 6.0] and s[:3, 1].tolist() == [0.0, 2.0, 4.0]
    assert s[:3, 2].tolist() == [0.0, 0.0, 0.0] and s[3].tolist() == [1.0, 2.0, 0.0]
    # batches add up like counts (and so do processes)
    assert torch.equal(logit_sums(logits[:1], labels[:1], 3) + logit_sums(logits[1:], labels[1:], 3), s)


def test_contrast_picks_the_source_that_tells_a_class_apart_where_frequency_picks_the_loudest():
    # source 0 is the top-1 for every image (a loud class); source 1 rises on class 0, source 2 on class 1
    logits = torch.tensor([[9.0, 5.0, 0.0], [9.0, 5.0, 0.0], [9.0, 0.0, 5.0], [9.5, 0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    freq = LabelMappingHead([0, 1], 3, "frequency")
    freq.fit(prediction_counts(logits, labels, 2))
    assert freq.mapping.tolist()[0] == 0  # frequency takes the loud source 0 for class 0 and one left over for 1
    contrast_method = MAPPINGS["contrast"]
    assert contrast_method.contrast and contrast_method.sources == 100 and contrast_method.fits_from_data
    head = LabelMappingHead([0, 1], 3, "contrast")
    assert head.counting == "logit_sums" and freq.counting == "top1"  # two kinds of counts, cached apart
    sums = head.count(logits, labels, 2)
    scores = contrast_scores(sums)
    # mean on the class minus the mean on the other class: class 0 [-0.25, 5, -5], class 1 the negative
    expected = torch.tensor([[-0.25, 0.25], [5.0, -5.0], [-5.0, 5.0]], dtype=torch.float64)
    assert torch.allclose(scores, expected, atol=1e-12)
    head.fit(sums)
    # a 3-source backbone has one whole round of sources for 2 classes: class 0 reads source 1, class 1 source 2
    assert head.mapping.tolist() == [[1], [2]]
    assert head(logits).argmax(1).tolist() == [0, 0, 1, 1]  # all right, where frequency's reads are not
    head.fit(sums, baseline=True)  # the no-prompt baseline is fitted the same way
    assert head.baseline_indices() == [[1], [2]]


def test_contrast_takes_as_many_sources_as_there_are_for_each_class():
    sums = torch.cat([torch.randn(1000, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                      torch.full((1, 20), 5.0, dtype=torch.float64)])
    head = LabelMappingHead(list(range(20)), 1000, "contrast")
    head.fit(sums)
    m = head.mapping
    assert m.shape == (20, 50) and len(set(m.flatten().tolist())) == 1000  # 1000 // 20 each, no source twice
    few = LabelMappingHead(list(range(4)), 1000, "contrast")
    few.fit(sums[:, :4].clone())
    assert few.mapping.shape == (4, 100)  # at most 100 sources a class


@pytest.fixture(scope="module")
def cache():
    return BackboneCache()


def _cfg(out, **kw):
    return TrainConfig(**{**dict(model="effnet-lite0@32", dataset="fashion_mnist_subset", batch_size=50, steps=9,
                                 eval_every=3, device="cpu", seed=0, out_dir=str(out), num_workers=0,
                                 label_mapping="contrast", optimizer="adam", lr=0.05, prompter="full"), **kw})


def test_training_with_the_contrast_mapping_stores_it_and_predicts_the_same_from_the_file(tmp_path, small, cache,
                                                                                          capsys):
    t = Trainer(_cfg(tmp_path / "run"), splits=small, cache=cache)
    res = t.run()
    pf = load_prompt(res.best_path)
    head = pf.meta["head"]
    assert head["kind"] == "label_mapping" and head["method"] == "contrast"
    mapping = torch.tensor(head["mapping"])
    assert mapping.shape == (10, 100) and len(set(mapping.flatten().tolist())) == 1000
    assert torch.tensor(head["baseline_mapping"]).shape == (10, 100)
    assert t.trainable_numbers() == sum(p.numel() for p in t.prompter.parameters())  # input-only
    from visual_prompting.cli import main

    capsys.readouterr()
    assert main(["info", res.best_path]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("head"))
    assert f"10 classes x 100 sources each, the first reads {head['mapping'][0][:10]} ..." in line and len(line) < 300
    model, _ = PromptedModel.from_prompt_file(res.best_path, cache=cache)
    assert evaluate(model, small.test, True, 50).top1 == res.metrics["test_top1"]
    assert evaluate(model, small.test, False, 50).top1 == res.metrics["test_top1_no_prompt"]
    # the no-prompt numbers are shared between runs (the app's users): a top-1-count mapping run after it in the
    # same cache gets its own counts, as it does in a fresh cache
    shared = Trainer(_cfg(tmp_path / "freq", label_mapping="multi_frequency", steps=3), splits=small, cache=cache).run()
    fresh = Trainer(_cfg(tmp_path / "fresh", label_mapping="multi_frequency", steps=3), splits=small,
                    cache=BackboneCache()).run()
    a, b = (load_prompt(r.best_path).meta["head"]["baseline_mapping"] for r in (shared, fresh))
    assert a == b and torch.tensor(a).shape == (10, 10)


def test_a_contrast_run_resumes_where_it_would_have_ended(cut_and_resume, cache):
    ref, again = cut_and_resume(_cfg, cache)
    a, b = load_prompt(ref.last_path), load_prompt(again.last_path)
    assert torch.equal(a.prompter.delta(), b.prompter.delta()) and a.meta["head"] == b.meta["head"]
    assert again.metrics["test_top1"] == ref.metrics["test_top1"]
