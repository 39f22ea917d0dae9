import os

import pytest
import torch

from conftest import EFFNET
from visual_prompting import BackboneCache, TrainConfig, VPError, load_prompt
from visual_prompting.data import load_splits
from visual_prompting.recipes import DEFAULT_RECIPE, config_from_recipe
from visual_prompting.training import StopTraining, Trainer, cosine_lr, train


def test_short_real_training_beats_no_prompt_on_held_out_data(trained):
    result, events, cfg = trained
    m = result.metrics
    print({k: v for k, v in m.items() if k != "test_per_class"})
    assert m["test_n"] == 1000
    # the paper's SGD at lr 40 is chaotic over 120 steps: float-level changes move it by points (seeds 0-2 measured
    # +1.1 to +13 points over no prompt); that it learns by a margin is the default recipe's test below
    assert m["test_top1"] > m["test_top1_no_prompt"]
    assert not result.interrupted and result.steps_done == 120
    kinds = [e.kind for e in events]
    # preparing (the label mapping is counted) is shown before the run starts
    assert kinds[0] == "prepare" and "training images" in events[0].message
    assert kinds[1] == "start" and kinds[-1] == "end"
    assert "mapping" in kinds  # iterative mapping recomputed at epoch boundaries
    assert sum(k == "step" for k in kinds) == 120


def test_the_default_recipe_beats_no_prompt_by_a_margin_in_a_short_real_run(tmp_path):
    """The recipe the CLI and the app run (live), 120 steps on the bundled subset: measured +13 to +19 points over no
    prompt on the held-out test images (seeds 0-2)."""
    cfg = config_from_recipe(DEFAULT_RECIPE, model=EFFNET, dataset="fashion_mnist_subset", steps=120, batch_size=64,
                             mapping_samples=1000, eval_every=24, out_dir=str(tmp_path), device="cpu", seed=0)
    m = train(cfg).metrics
    assert m["test_n"] == 1000 and m["test_top1"] > m["test_top1_no_prompt"] + 0.08, m


def test_best_prompt_is_chosen_on_validation_not_test(trained):
    result, events, cfg = trained
    vals = [e.val_top1 for e in events if e.kind == "eval"]
    pf = load_prompt(result.best_path)
    assert pf.meta["metrics"]["val_top1"] == max(vals)
    # the config as given, with the lr it left to the optimiser written in (sgd: the paper's 40)
    assert pf.meta["train_config"] == {**cfg.to_dict(), "lr": 40.0} and cfg.lr is None
    assert pf.meta["head"]["kind"] == "label_mapping" and len(pf.meta["head"]["mapping"]) == 10
    assert os.path.isfile(os.path.join(cfg.out_dir, "history.json"))


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert cosine_lr(0, 100, 40.0, 10) == pytest.approx(4.0)
    assert cosine_lr(9, 100, 40.0, 10) == pytest.approx(40.0)
    assert cosine_lr(55, 100, 40.0, 10) == pytest.approx(20.0)
    assert cosine_lr(100, 100, 40.0, 10) == pytest.approx(0.0, abs=1e-9)


def _tiny_cfg(tmp_path, **kw):
    base = dict(model="clip:vp-tiny", dataset="fashion_mnist_subset", steps=20, batch_size=32, device="cpu",
                out_dir=str(tmp_path), eval_every=5, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_splits():
    return load_splits("fashion_mnist_subset", image_size=32)


def test_paper_learning_rate_is_converted_to_pixel_space(tmp_path, tiny_splits):
    """One SGD step on the pixel-space prompt equals the paper's step on a prompt in normalised space."""
    t = Trainer(_tiny_cfg(tmp_path, clamp="none", init="randn", warmup_steps=1, momentum=0.0, lr=40.0),
                splits=tiny_splits)
    std, mean = t.backbone.std, t.backbone.mean
    x = torch.rand(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    p0 = t.prompter.delta().detach().clone()
    # the paper: d lives in normalised space, f(norm(x) + d)
    d = (p0 / std[0]).clone().requires_grad_(True)
    feats = t.backbone.net.encode_image((x - mean) / std + d * t.prompter.mask())
    loss = torch.nn.functional.cross_entropy(t.model.head(feats), y)
    loss.backward()
    d1 = d.detach() - 40.0 * d.grad * t.prompter.mask()
    t.train_step(x, y)
    p1 = t.prompter.delta().detach()
    assert torch.allclose(p1, d1 * std[0] * t.prompter.mask(), atol=1e-5)


def test_clip_training_changes_only_the_prompt(tmp_path, tiny_splits, monkeypatch):
    t = Trainer(_tiny_cfg(tmp_path, steps=6), splits=tiny_splits)
    before = {k: v.clone() for k, v in t.backbone.state_dict().items()}
    calls = []
    orig = t.backbone.net.encode_text
    monkeypatch.setattr(t.backbone.net, "encode_text", lambda *a, **k: calls.append(1) or orig(*a, **k))
    p0 = t.prompter.delta().detach().clone()
    res = t.run()
    assert calls == []  # text features were encoded once, before training
    assert not torch.equal(t.prompter.delta().detach(), p0)
    after = t.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_prompt(res.best_path).meta["head"]["templates"] == ["This is a photo of a {}"]


def test_stopping_keeps_the_best_prompt_on_disk(tmp_path, tiny_splits):
    seen = []

    def stop_after_12(ev):
        if ev.kind == "step":
            seen.append(ev.step)
            if ev.step == 12:
                raise StopTraining

    res = Trainer(_tiny_cfg(tmp_path), callbacks=[stop_after_12], splits=tiny_splits).run()
    # step events come one step late (the host reads a step's loss once the next is queued): the run stops after
    # step 13, and that step still gets its event, so the history has every step taken
    assert res.interrupted and res.steps_done == 13 and seen == list(range(1, 14))
    assert os.path.isfile(res.best_path) and os.path.isfile(res.last_path)
    assert load_prompt(res.last_path).meta["metrics"]["step"] == 13
    assert "test_top1" in load_prompt(res.best_path).meta["metrics"]


def test_ctrl_c_and_stop_flag_keep_the_best_prompt(tmp_path, tiny_splits):
    def ctrl_c(ev):
        if ev.kind == "step" and ev.step == 3:
            raise KeyboardInterrupt

    res = Trainer(_tiny_cfg(tmp_path / "a"), callbacks=[ctrl_c], splits=tiny_splits).run()
    assert res.interrupted and res.steps_done == 4 and os.path.isfile(res.best_path)  # events come one step late
    t = Trainer(_tiny_cfg(tmp_path / "b"), should_stop=lambda: t.step >= 7, splits=tiny_splits)
    res = t.run()
    assert res.interrupted and res.steps_done == 7 and os.path.isfile(res.best_path)


def test_resume_gives_the_same_prompt_as_an_uninterrupted_run(tmp_path, tiny_splits):
    full = Trainer(_tiny_cfg(tmp_path / "full", prompter="random_patch"), splits=tiny_splits)
    full.run()

    def stop_at_9(ev):
        if ev.kind == "step" and ev.step == 9:
            raise StopTraining

    Trainer(_tiny_cfg(tmp_path / "cut", prompter="random_patch"), callbacks=[stop_at_9], splits=tiny_splits).run()
    resumed = Trainer(_tiny_cfg(tmp_path / "cut", prompter="random_patch", resume=True), splits=tiny_splits)
    res = resumed.run()
    assert res.steps_done == 20
    assert torch.allclose(resumed.prompter.delta(), full.prompter.delta(), atol=1e-6)


def test_a_seed_gives_the_same_run_whether_the_backbone_was_loaded_before(tmp_path, small):
    """Loading a backbone may draw from the global RNG (EfficientNet's layers initialise before the weights load),
    a cached one does not: the seed is set after the load, so the capture draws and a trained head's first weights
    do not depend on whether this process loaded the model before (benchmarks train seeds one after another)."""
    cache = BackboneCache()
    runs = []
    for name in ("cold", "warm"):  # the first run loads the backbone into the cache, the second finds it there
        cfg = TrainConfig(model="effnet-lite0@32", dataset=small.name, prompter="full", optimizer="adam",
                          label_mapping="fully_map", capture="capture", steps=4, batch_size=16, eval_every=4,
                          device="cpu", seed=1, out_dir=str(tmp_path / name), num_workers=0,
                          test_without_prompt=False)
        t = Trainer(cfg, cache=cache, splits=small)
        t.run()
        runs.append([p.detach().clone() for p in (*t.prompter.parameters(), *t.model.head.trainable_parameters())])
    cold, warm = runs
    assert len(cold) == len(warm) > 1
    assert all(torch.equal(a, b) for a, b in zip(cold, warm))


def test_resume_refuses_a_different_run(tmp_path, tiny_splits):
    Trainer(_tiny_cfg(tmp_path, steps=2), splits=tiny_splits).run()
    with pytest.raises(VPError, match="another prompter"):
        Trainer(_tiny_cfg(tmp_path, steps=4, prompter="fixed_patch", resume=True), splits=tiny_splits).run()


def test_the_no_prompt_test_pass_can_be_left_out(tmp_path, tiny_splits, monkeypatch):
    import visual_prompting.evaluation as ev

    passes = []
    orig = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda m, data, use_prompt, *a, **k: passes.append((data, use_prompt))
                        or orig(m, data, use_prompt, *a, **k))
    t = Trainer(_tiny_cfg(tmp_path, steps=2, test_without_prompt=False), splits=tiny_splits)
    m = t.run().metrics
    assert "test_top1" in m and "test_top1_no_prompt" not in m
    assert [u for d, u in passes if d is t.splits.test] == [True]


# label mapping in training (which mapping, the baseline, iterative recompute, resume): test_training_mapping.py


def test_bad_training_settings_are_clear(tmp_path, tiny_splits, monkeypatch):
    with pytest.raises(VPError, match="templates"):
        Trainer(_tiny_cfg(tmp_path, templates="fancy"), splits=tiny_splits)
    with pytest.raises(VPError, match="at least 1"):
        Trainer(_tiny_cfg(tmp_path, steps=None, epochs=0), splits=tiny_splits)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same check on a machine with a GPU
    with pytest.raises(VPError, match="CUDA is not available"):
        Trainer(_tiny_cfg(tmp_path, device="cuda"), splits=tiny_splits)


def test_the_trainer_writes_through_the_run_files_it_is_given(tmp_path, tiny_splits):
    """What a run writes goes through its RunFiles: one handed in sees every write, in order (an evaluation that is
    the best so far writes the best prompt, every evaluation the history then the last checkpoint; the end writes the
    best again with its test numbers), and nothing is written anywhere else."""
    from visual_prompting.checkpoint import RunFiles

    class Recording(RunFiles):
        def __init__(self, out_dir):
            super().__init__(out_dir)
            self.writes = []

        def _write_prompt(self, path, *a, **k):
            self.writes.append(os.path.basename(path))
            super()._write_prompt(path, *a, **k)

        def _write_text(self, path, text):
            self.writes.append(os.path.basename(path))
            super()._write_text(path, text)

    files = Recording(tmp_path / "given")
    cfg = _tiny_cfg(tmp_path / "configured", steps=4, eval_every=2)
    events = []
    res = Trainer(cfg, splits=tiny_splits, files=files, callbacks=[events.append]).run()
    bests = [e.is_best for e in events if e.kind == "eval"]
    expected = []
    for is_best in bests:
        expected += (["best.safetensors"] if is_best else []) + ["history.json", "last.safetensors"]
    # the end: the last checkpoint as the loop left it, the best prompt with its test numbers, the last again
    expected += ["history.json", "last.safetensors", "best.safetensors", "history.json", "last.safetensors"]
    assert files.writes == expected
    assert res.best_path == str(tmp_path / "given" / "best.safetensors")
    assert not (tmp_path / "configured").exists()
    assert sorted(os.listdir(tmp_path / "given")) == ["best.safetensors", "history.json", "last.safetensors"]
