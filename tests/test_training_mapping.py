"""Label mapping in training, through public APIs only (TrainConfig, Trainer, train(), load_prompt, PromptedModel):
which mapping a run trains with, which mapping its no-prompt baseline reads (also after loading the prompt file),
that the iterative mapping is recomputed *with* the prompt, and that a run resumed across an epoch boundary with a
label-mapping head ends exactly like an uninterrupted one (prompt, mapping, best value and history).

Small on purpose: EfficientNet-Lite0 at 32 px (real weights), 200 train images in batches of 50 (4 steps an
epoch), 100 validation and 100 test images of the bundled subset."""
from __future__ import annotations

import pytest
import torch

from visual_prompting import BackboneCache, PromptedModel, TrainConfig
from visual_prompting.training import Trainer
from visual_prompting.evaluation import evaluate
from visual_prompting.prompt_file import load_prompt

SPEC = "effnet-lite0@32"
STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def cache():
    return BackboneCache()


def cfg(tmp, **kw) -> TrainConfig:
    base = dict(model=SPEC, dataset="fashion_mnist_subset", batch_size=50, steps=STEPS_PER_EPOCH + 1,
                eval_every=STEPS_PER_EPOCH + 1, device="cpu", seed=0, out_dir=str(tmp), num_workers=0)
    return TrainConfig(**{**base, **kw})


def run(tmp, small, cache, events=None, should_stop=None, **kw):
    t = Trainer(cfg(tmp, **kw), callbacks=[events.append] if events is not None else None, should_stop=should_stop,
                cache=cache, splits=small)
    return t.run()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small, cache):
    """One short run per mapping (one epoch and a step: the iterative mapping is recomputed once), same seed."""
    out = {}
    for mapping in ("first_k", "frequency", "iterative"):
        events = []
        res = run(tmp_path_factory.mktemp(mapping), small, cache, events, label_mapping=mapping,
                  init="randn" if mapping == "frequency" else "zeros")
        out[mapping] = (res, events)
    return out


def head(res) -> list[int]:
    return load_prompt(res.best_path).meta["head"]["mapping"]


def baseline(res) -> list[int]:
    return load_prompt(res.best_path).meta["head"]["baseline_mapping"]


def test_every_run_reads_the_same_fitted_no_prompt_baseline(runs):
    bases = {m: baseline(res) for m, (res, _) in runs.items()}
    assert len({tuple(b) for b in bases.values()}) == 1  # no prompt: the same images, the same mapping
    base = bases["first_k"]
    assert len(set(base)) == 10 and base != list(range(10))  # fitted, not the hard-coded one (else at chance)
    assert head(runs["first_k"][0]) == list(range(10))


def test_frequency_mapping_is_fitted_with_the_prompt_not_copied_from_the_baseline(runs):
    """A random initial prompt changes what the model predicts, so the frequency mapping fitted with it differs
    from the no-prompt one; a run that reused the baseline would train with the baseline's mapping."""
    res, _ = runs["frequency"]
    m = head(res)
    assert load_prompt(res.best_path).meta["head"]["method"] == "frequency"
    assert len(set(m)) == 10 and m != baseline(res)


def test_iterative_mapping_is_recomputed_with_the_prompt_at_the_epoch(runs):
    """Zero initial prompt: the first mapping equals the baseline; at the epoch boundary it is recomputed with the
    trained prompt and differs (recomputed without the prompt, or not at all, it would stay the baseline)."""
    res, events = runs["iterative"]
    remaps = [e for e in events if e.kind == "mapping"]
    assert [e.step for e in remaps] == [STEPS_PER_EPOCH]
    m = head(res)
    assert str(m) in remaps[0].message  # the mapping the prompt file keeps is the one recomputed at the epoch
    assert len(set(m)) == 10 and m != baseline(res)


def test_the_no_prompt_baseline_mapping_is_restored_from_the_prompt_file(runs, small, cache):
    """Loaded from its file, a prompt's "no prompt" numbers read the baseline mapping it was trained against, not
    the prompt's own mapping: the test accuracy without the prompt is the trainer's."""
    res, _ = runs["iterative"]
    model, pf = PromptedModel.from_prompt_file(res.best_path, cache=cache)
    assert model.head.baseline_indices() == pf.meta["head"]["baseline_mapping"] != pf.meta["head"]["mapping"]
    without = evaluate(model, small.test, use_prompt=False, batch_size=50)
    assert without.top1 == res.metrics["test_top1_no_prompt"]
    model.head.set_baseline(None)  # what a loader that forgot it would measure: the prompt's mapping, unprompted
    assert evaluate(model, small.test, use_prompt=False, batch_size=50).top1 != without.top1


def test_resume_across_an_epoch_boundary_with_a_label_mapping_head(tmp_path, small, cache):
    """Stopped before the epoch boundary and resumed after it: the same prompt, the same mapping (recomputed at
    the boundary from the restored prompt), the same best value and the same evaluation/mapping history."""
    kw = dict(label_mapping="iterative", steps=2 * STEPS_PER_EPOCH + 1, eval_every=3)
    whole_events = []
    whole = run(tmp_path / "whole", small, cache, whole_events, **kw)

    t = Trainer(cfg(tmp_path / "cut", **kw), should_stop=lambda: t.step >= 3, cache=cache, splits=small)
    cut = t.run()
    assert cut.interrupted and cut.steps_done == 3
    resumed = run(tmp_path / "cut", small, cache, resume=True, **kw)
    assert resumed.steps_done == whole.steps_done == 2 * STEPS_PER_EPOCH + 1

    a, b = load_prompt(whole.best_path), load_prompt(resumed.best_path)
    assert all(torch.equal(p, q) for p, q in zip(a.prompter.parameters(), b.prompter.parameters()))
    assert a.meta["head"]["mapping"] == b.meta["head"]["mapping"]
    assert resumed.metrics["best_val_top1"] == whole.metrics["best_val_top1"]
    assert resumed.metrics["test_top1"] == whole.metrics["test_top1"]
    assert baseline(resumed) == baseline(whole)

    def marks(history):
        return [(h["kind"], h["step"], h.get("val_top1"), h.get("best_val_top1"), h.get("message"))
                for h in history if h["kind"] in ("eval", "mapping")]

    assert marks(resumed.history) == marks(whole.history)
    assert [h["step"] for h in resumed.history if h["kind"] == "mapping"] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
