"""The live run: what happens before the first step, a time budget, numbers without the prompt shared by runs."""
from __future__ import annotations

import pytest
import torch

from visual_prompting import BackboneCache, TrainConfig
from visual_prompting.baselines import BaselineCache, fingerprint
from visual_prompting.training import Trainer


@pytest.fixture(scope="module")
def cache():
    return BackboneCache()


def _cfg(out, **kw):
    base = dict(model="effnet-lite0@32", dataset="fashion_mnist_subset", batch_size=32, steps=6, eval_every=3,
                device="cpu", seed=0, out_dir=str(out), num_workers=0, label_mapping="frequency")
    return TrainConfig(**{**base, **kw})


def test_stop_before_the_first_step_trains_nothing_and_leaves_nothing(tmp_path, small, cache):
    events = []
    out = tmp_path / "run"
    res = Trainer(_cfg(out), splits=small, cache=cache, callbacks=[events.append], should_stop=lambda: True).run()
    assert res.interrupted and res.steps_done == 0 and res.best_path is None and res.last_path is None
    assert res.stop_reason.startswith("Stopped before the first step: nothing was trained")
    assert not out.exists()  # the run's folder is gone with nothing in it
    assert [e.kind for e in events][-1] == "end" and "step" not in [e.kind for e in events]


def test_stop_while_the_mapping_is_counted_stops_before_the_first_step(tmp_path, small, cache):
    """Stop pressed while preparing is taken between the batches of the count, not after it."""
    polls = []
    res = Trainer(_cfg(tmp_path / "run", batch_size=20), splits=small, cache=cache,
                  should_stop=lambda: polls.append(1) or len(polls) > 2).run()
    assert res.steps_done == 0 and res.best_path is None
    assert len(polls) == 3  # the count of 200 images in batches of 20 was left after 3 batches


def test_the_no_prompt_numbers_are_computed_once_for_runs_that_share_them(tmp_path, small, cache, monkeypatch):
    import visual_prompting.evaluation as ev
    import visual_prompting.training as tr

    passes = []
    orig_over, orig_eval = tr.logits_over, ev.evaluate
    monkeypatch.setattr(tr, "logits_over", lambda m, d, use_prompt, *a, **k: passes.append(("count", use_prompt))
                        or orig_over(m, d, use_prompt, *a, **k))
    monkeypatch.setattr(tr, "evaluate", lambda m, d, use_prompt, *a, **k: passes.append(("eval", use_prompt))
                        or orig_eval(m, d, use_prompt, *a, **k))
    shared = BaselineCache()
    first = Trainer(_cfg(tmp_path / "a"), splits=small, cache=cache, baselines=shared).run()
    assert passes.count(("count", False)) == 1 and passes.count(("eval", False)) == 2  # validation and test
    assert len(shared) == 3
    passes.clear()
    second = Trainer(_cfg(tmp_path / "b", lr=0.5 * 40), splits=small, cache=cache, baselines=shared).run()
    assert ("count", False) not in passes and ("eval", False) not in passes  # all three came from the cache
    for k in ("test_top1_no_prompt", "test_top5_no_prompt", "zero_shot_val_top1"):
        assert second.metrics[k] == first.metrics[k]
    # another mapping sample (another seed) is other images: counted again; a plain backbone is another key
    passes.clear()
    Trainer(_cfg(tmp_path / "c", seed=1), splits=small, cache=cache, baselines=shared).run()
    assert passes.count(("count", False)) == 1
    passes.clear()
    Trainer(_cfg(tmp_path / "d", fast_backbone=False), splits=small, cache=cache, baselines=shared).run()
    assert passes.count(("count", False)) == 1 and passes.count(("eval", False)) == 2


def test_a_fingerprint_sees_one_pixel():
    from visual_prompting.data import TensorImageSet

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    a = TensorImageSet(images, torch.tensor([0, 1, 0, 1]), ["a", "b"], "x")
    b = TensorImageSet(images.clone(), torch.tensor([0, 1, 0, 1]), ["a", "b"], "x")
    assert fingerprint(a) == fingerprint(b)
    b.images[2, 1, 3, 3] ^= 1
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(TensorImageSet(images, torch.tensor([0, 1, 1, 1]), ["a", "b"], "x")) != fingerprint(a)


@pytest.mark.parametrize("budget", [4.0, 8.0])
def test_a_time_budget_ends_on_time_with_a_best_prompt(tmp_path, small, cache, budget):
    """The schedule spans the budget: the run's steps and validations take about the budget, whatever the machine,
    the lr decays to ~0 at the last step, and the best prompt is kept. (--steps is not given: it is a cap.)"""
    events = []
    cfg = _cfg(tmp_path / "run", steps=None, eval_every=None, time_budget=budget, optimizer="adam")
    res = Trainer(cfg, splits=small, cache=cache, callbacks=[events.append]).run()
    steps = [e for e in events if e.kind == "step"]
    step_time = budget / max(1, len(steps))
    seconds = res.metrics["train_seconds"]
    print(f"budget {budget} s: {seconds:.2f} s in steps and validations, {len(steps)} steps")
    assert not res.interrupted and res.best_path and res.steps_done == len(steps) >= 4, (res.steps_done, seconds)
    # within a few steps (and one validation) of the budget
    assert abs(seconds - budget) < max(0.15 * budget, 5 * step_time), (seconds, budget, len(steps))
    # the cosine reached (near) its end with the budget: under load the estimate can still shrink by a step or two at
    # the end, which leaves the last lr a little above 0
    assert steps[-1].lr < 0.25 * cfg.with_defaults().lr, [(e.step, e.total_steps, e.lr) for e in steps[-5:]]
    # the estimate settled on the steps that fitted (the last step's event may still carry the estimate made before
    # the last evaluation, one step off)
    end = next(e for e in events if e.kind == "end")
    assert end.total_steps == res.steps_done and abs(steps[-1].total_steps - res.steps_done) <= 1
    evals = [e.step for e in events if e.kind == "eval"]
    assert len(evals) >= 5, (evals, res.steps_done)  # about ten evaluations spread over the run


def test_a_time_budget_estimate_counts_each_evaluation_where_it_falls():
    """Steps of 0.1 s and evaluations (every 4 steps) of 0.3 s in a 10 s budget: once an evaluation has been timed,
    the estimated total stays put (an estimate spreading evaluations over the steps dropped after each one, so the
    last steps' events could promise steps that never came), and the run fills the budget without passing it."""
    from visual_prompting.distributed import SINGLE
    from visual_prompting.training import Schedule

    cfg = TrainConfig(steps=None, eval_every=4, time_budget=10.0, batch_size=10)
    schedule, step, totals, evaluated = Schedule(cfg, n_train=1000, is_clip=False, ranks=SINGLE, n_val=100), 0, [], 0
    while step < schedule.total:
        step += 1
        schedule.step_taken(step, 0.1)
        totals.append(schedule.total)
        if schedule.is_eval_step(step):
            schedule.evaluated(step, 0.3)
            evaluated += 1
            totals.append(schedule.total)
    assert len(set(totals[4:])) == 1, totals  # from the first evaluation (after step 4) on
    assert step == schedule.total and abs(schedule.seconds - (step * 0.1 + evaluated * 0.3)) < 1e-9
    assert schedule.seconds <= 10.0 < schedule.seconds + 0.1 + 0.3, (step, schedule.seconds)


def test_a_time_budget_is_not_planned_from_the_first_step_alone():
    """The first step also pays for one-time set-up: a slow one (4 s, then 0.1 s steps, a 10 s budget) used to be
    read as the pace, which planned a few steps with an evaluation at each, the first at step 1. The first guess
    stands until a second step is timed; a first step that spends the whole budget still ends the run."""
    from visual_prompting.distributed import SINGLE
    from visual_prompting.training import Schedule

    cfg = TrainConfig(steps=None, eval_every=None, time_budget=10.0, batch_size=10)
    schedule = Schedule(cfg, n_train=10_000, is_clip=False, ranks=SINGLE, n_val=20)
    guess = schedule.total
    schedule.step_taken(1, 4.0)
    assert schedule.total == guess and not schedule.is_eval_step(1)
    schedule.step_taken(2, 0.1)  # now the pace is the second step's: about 55 more steps fit
    assert 40 < schedule.total < 60 and schedule.eval_every > 1 and not schedule.is_eval_step(2), schedule.total
    spent = Schedule(cfg, n_train=10_000, is_clip=False, ranks=SINGLE, n_val=20)
    spent.step_taken(1, 12.0)
    assert spent.total == 1 and spent.is_eval_step(1)


def test_a_time_budget_counts_a_mapping_refit_without_taking_it_for_a_step():
    from visual_prompting.distributed import SINGLE
    from visual_prompting.training import Schedule

    def run(budget: float, refit: float = 0.0) -> Schedule:
        cfg = TrainConfig(steps=None, eval_every=None, time_budget=budget, batch_size=10)
        schedule = Schedule(cfg, n_train=10_000, is_clip=False, ranks=SINGLE, n_val=100)
        for step in range(1, 5):
            if step == 4 and refit:
                schedule.spent(3, refit)
            schedule.step_taken(step, 0.1)
        return schedule

    refitted, smaller, plain = run(10.0, refit=2.0), run(8.0), run(10.0)
    misread = Schedule(TrainConfig(steps=None, eval_every=None, time_budget=10.0, batch_size=10), n_train=10_000,
                       is_clip=False, ranks=SINGLE, n_val=100)
    for step, seconds in enumerate([0.1, 0.1, 0.1, 2.1], start=1):  # the refit taken for step 4's time
        misread.step_taken(step, seconds)
    # a refit of 2 s leaves what a budget 2 s smaller leaves (the pace stays 0.1 s a step)
    assert refitted.seconds == pytest.approx(2.4) and refitted.total == smaller.total < plain.total, (
        refitted.total, smaller.total, plain.total)
    assert misread.total < refitted.total - 5, (misread.total, refitted.total)


def test_a_time_budget_run_resumed_after_step_100_trains_on(tmp_path, small, cache):
    """The schedule's first guess is 100 steps: a run resumed after step 100 once ended at once, training nothing
    more. Resumed, it goes on from its step (here until a stop at step 110), and counts the seconds trained before."""
    from visual_prompting.distributed import SINGLE
    from visual_prompting.training import Schedule

    kw = dict(steps=None, eval_every=None, time_budget=120.0, batch_size=8, optimizer="adam")
    t = Trainer(_cfg(tmp_path / "r", **kw), splits=small, cache=cache, should_stop=lambda: t.step >= 105)
    first = t.run()
    assert first.interrupted and first.steps_done == 105
    t = Trainer(_cfg(tmp_path / "r", resume=True, **kw), splits=small, cache=cache, should_stop=lambda: t.step >= 110)
    again = t.run()
    assert again.steps_done == 110 and again.metrics["train_seconds"] > first.metrics["train_seconds"]
    spent = Schedule(TrainConfig(**kw), n_train=200, is_clip=False, ranks=SINGLE)
    spent.resumed(150, 121.0)  # resumed with its budget spent: nothing more to train
    assert spent.total == 150


def test_a_time_budget_caps_at_steps(tmp_path, small, cache):
    res = Trainer(_cfg(tmp_path / "run", steps=5, eval_every=None, time_budget=60.0), splits=small, cache=cache).run()
    assert res.steps_done == 5 and res.metrics["train_seconds"] < 60


def test_a_run_starts_from_a_bounded_sample_and_ends_with_the_full_one(tmp_path, small, cache, monkeypatch):
    """Before the first step the mapping is counted on the first start_samples mapping images only; at the first
    evaluation the no-prompt baseline is counted on all of them and, right after it, a mapping fitted once takes it
    over (a prompt that started as no change): the run then reports and trains on with what counting all of them
    first gives."""
    import visual_prompting.training as tr

    sizes = []
    orig = tr.logits_over
    monkeypatch.setattr(tr, "logits_over", lambda m, d, use_prompt, *a, **k: sizes.append((len(d), use_prompt))
                        or orig(m, d, use_prompt, *a, **k))
    events = []
    bounded = Trainer(_cfg(tmp_path / "a", start_samples=50), splits=small, cache=cache, callbacks=[events.append])
    res = bounded.run()
    assert sizes[0] == (50, False)  # the only count before the first step
    assert "50 training images" in events[0].message and events[0].kind == "prepare"
    first_step = next(i for i, e in enumerate(events) if e.kind == "step")
    assert first_step < next(i for i, e in enumerate(events) if e.kind == "eval")
    assert (200, False) in sizes  # all of them, at the first evaluation
    full = Trainer(_cfg(tmp_path / "b", start_samples=500), splits=small, cache=cache).run()
    a, b = (load(r.last_path).meta["head"] for r in (res, full))
    assert a["baseline_mapping"] == b["baseline_mapping"] and a["mapping"] == b["mapping"] == b["baseline_mapping"]
    assert res.metrics["zero_shot_val_top1"] == full.metrics["zero_shot_val_top1"]
    assert res.metrics["test_top1_no_prompt"] == full.metrics["test_top1_no_prompt"]


def test_a_run_stopped_before_its_first_evaluation_keeps_its_mapping_and_resumes_as_if_never_stopped(
        tmp_path, small, cache):
    """Stopped before its first evaluation (a mapping counted on a bounded sample, more mapping images to count), a
    run keeps a prompt with the mapping it trained with - the stop does not cut the counting of the kept prompt's
    numbers short - and --resume then takes the mapping over after the first evaluation, as the uninterrupted run
    does: the same prompt and mapping at the end."""
    kw = dict(start_samples=8, steps=6, eval_every=3)
    whole = Trainer(_cfg(tmp_path / "whole", **kw), splits=small, cache=cache).run()
    start = []
    t = Trainer(_cfg(tmp_path / "cut", **kw), splits=small, cache=cache, should_stop=lambda: t.step >= 2,
                callbacks=[lambda e: e.kind == "start" and start.append(t.model.head.mapping.tolist())])
    cut = t.run()
    assert cut.interrupted and cut.steps_done == 2 and cut.best_path
    assert load(cut.best_path).meta["head"]["mapping"] == start[0] != load(whole.last_path).meta["head"]["mapping"]
    resumed = Trainer(_cfg(tmp_path / "cut", resume=True, **kw), splits=small, cache=cache).run()
    assert resumed.steps_done == whole.steps_done == 6
    a, b = load(whole.last_path), load(resumed.last_path)
    assert a.meta["head"] == b.meta["head"]
    assert all(torch.equal(p, q) for p, q in zip(a.prompter.parameters(), b.prompter.parameters()))
    assert resumed.metrics["best_val_top1"] == whole.metrics["best_val_top1"]


@pytest.mark.parametrize("evaluations", [1, 2, 0])
def test_a_prompt_is_validated_and_kept_with_the_mapping_it_trained_with(tmp_path, small, cache, evaluations):
    """The mapping counted on all the mapping images takes over right *after* the first evaluation, and only when the
    run goes on: every validation, and the kept prompt, use the mapping the steps before them trained with. With no
    evaluation (stopped first) the run keeps its start mapping. (It once switched before the first evaluation: a run
    evaluated only at its end was tested on a mapping it never trained with.) When the first evaluation is also the
    last (one evaluation, at the end), the start mapping and the full one are both validated and the better one is
    kept: the start mapping, counted on few images, could leave the kept prompt below no prompt at all."""
    seen, at_eval, validated = [], [], []

    class Spy(Trainer):
        def train_step(self, x, y):
            seen.append(self.model.head.mapping.tolist())
            return super().train_step(x, y)

    cfg = _cfg(tmp_path / "r", start_samples=8, steps=6, eval_every=[6, 6, 3][evaluations])
    t = Spy(cfg, splits=small, cache=cache, should_stop=(lambda: len(seen) >= 2) if evaluations == 0 else None,
            callbacks=[lambda e: e.kind == "eval" and at_eval.append((e.step, t.model.head.mapping.tolist(),
                                                                      e.val_top1))])
    validate = t.measures.validate
    t.measures.validate = lambda use_prompt=True: (
        validated.append((t.model.head.mapping.tolist(), validate(use_prompt))) or validated[-1][1]
        if use_prompt else validate(use_prompt))
    res = t.run()
    start, full = seen[0], t.model.head.baseline.tolist()
    assert start != full  # the two mappings differ, so the test tells them apart
    assert len(at_eval) == evaluations + (evaluations == 1) and res.steps_done == len(seen)
    assert seen == ([start] * 3 + [full] * 3 if evaluations == 2 else [start] * len(seen))
    kept = load(res.best_path).meta
    if evaluations == 1:  # both validated at the end, the better one kept (a tie keeps the one trained with)
        assert [m for m, _ in validated] == [start, full]
        (_, v_start), (_, v_full) = validated
        better = full if v_full > v_start else start
        assert at_eval == [(6, start, v_start), (6, better, v_full)] and kept["head"]["mapping"] == better
        assert kept["metrics"]["val_top1"] == max(v_start, v_full) == res.metrics["best_val_top1"]
        assert load(res.last_path).meta["head"]["mapping"] == better
        return
    for step, mapping, _ in at_eval:
        assert mapping == seen[step - 1]  # validated with the mapping its last step trained with
    assert kept["head"]["mapping"] == (seen[kept["metrics"]["step"] - 1] if evaluations else start)


@pytest.mark.parametrize("start_samples", [8, 5000])
def test_a_prompt_started_at_an_offset_keeps_the_mapping_it_starts_with(tmp_path, small, cache, start_samples):
    """A prompt that does not start as no change (``init_offset``) is never switched to the no-prompt mapping: it
    trains and is kept with the mapping counted, with its start, before its first step; counting every mapping
    image there (``start_samples`` at least the mapping images, a long run of the live recipe) gives that mapping
    all of them."""
    seen = []

    class Spy(Trainer):
        def train_step(self, x, y):
            seen.append(self.model.head.mapping.tolist())
            return super().train_step(x, y)

    t = Spy(_cfg(tmp_path / "r", start_samples=start_samples, init_offset=0.01, steps=6, eval_every=3),
            splits=small, cache=cache)
    res = t.run()
    assert len(seen) == 6 and all(m == seen[0] for m in seen)  # one mapping throughout, past the first evaluation
    assert load(res.best_path).meta["head"]["mapping"] == seen[0]
    if start_samples == 8:  # counted on 8 images: not the mapping all of them give
        assert seen[0] != t.model.head.baseline.tolist()


def test_a_run_evaluated_only_at_its_end_keeps_the_full_mapping_when_it_validates_better(tmp_path, small, cache):
    """One step at a tiny lr (the prompt is still almost no change) and 8 start images: the full mapping validates
    better than the start one (here 48% against 13%), so the kept prompt is the full mapping's and not worse than no
    prompt."""
    res = Trainer(_cfg(tmp_path / "r", start_samples=8, steps=1, eval_every=1, lr=1e-6, optimizer="adam",
                       label_mapping="multi_frequency"), splits=small, cache=cache).run()
    kept = load(res.best_path).meta
    assert kept["head"]["mapping"] == kept["head"]["baseline_mapping"]
    assert res.metrics["best_val_top1"] >= res.metrics["zero_shot_val_top1"] - 0.02, res.metrics


def load(path):
    from visual_prompting.prompt_file import load_prompt

    return load_prompt(path)


def test_starting_a_run_does_not_import_torchvision():
    """torchvision pulls in torch._dynamo and sympy: seconds before a CLI run's first step. The trainer, the CLI and
    the app's logic import it only where it is used (torchvision datasets and backbones, JPEG round trips)."""
    import subprocess
    import sys

    code = ("import sys; import visual_prompting.training, visual_prompting.cli, visual_prompting.ui; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_the_baseline_cache_keeps_the_most_recently_used_values_only():
    cache, computed = BaselineCache(max_entries=2), []

    def value(k):
        return lambda: computed.append(k) or k.upper()

    assert [cache.get(k, value(k)) for k in ("a", "b", "a", "c")] == ["A", "B", "A", "C"]
    assert computed == ["a", "b", "c"] and len(cache) == 2  # "b", the least recently used, went
    assert cache.get("a", value("a")) == "A" and cache.get("b", value("b")) == "B"
    assert computed == ["a", "b", "c", "b"]
    assert cache.get(None, value("x")) == "X" and len(cache) == 2  # no key: computed, never kept
