"""Training recipes and the options from later work, wired through TrainConfig, the Trainer, the CLI and the app."""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from visual_prompting import TrainConfig
from visual_prompting.cli import build_parser
from visual_prompting.data import load_splits
from visual_prompting.errors import VPError
from visual_prompting.model import PromptedModel
from visual_prompting.prompt_file import load_prompt
from visual_prompting.recipes import RECIPES, Recipe, config_from_recipe, recipe_settings, register_recipe
from visual_prompting.settings import from_args
from visual_prompting.training import StopTraining, Trainer


@pytest.fixture(scope="module")
def splits32():
    return load_splits("fashion_mnist_subset", image_size=32)


@pytest.fixture(scope="module")
def small32(splits32):
    """The same train set (mapping counts and steps unchanged) with 100 test images instead of 1,000: for the runs
    whose test numbers no assertion reads (a run's end evaluates the test set twice, with and without the prompt;
    on 1,000 images that was most of these tests' time). Validation stays whole: the best prompt is chosen on it."""
    return dataclasses.replace(splits32, test=splits32.test.subset(torch.arange(100)))


def _cfg(tmp_path, **kw):
    base = dict(model="effnet-lite0@32", steps=12, batch_size=16, device="cpu", out_dir=str(tmp_path), eval_every=4,
                seed=0, mapping_samples=300)
    return TrainConfig(**{**base, **kw})


def test_paper_recipe_is_the_config_defaults_exactly():
    assert config_from_recipe("paper") == TrainConfig()
    a = build_parser("paper").parse_args(["train", "--recipe", "paper"])
    assert from_args(TrainConfig, a) == TrainConfig()


def test_cli_default_is_the_live_recipe_and_explicit_options_win():
    a = build_parser().parse_args(["train"])
    cfg = from_args(TrainConfig, a)
    assert a.recipe == "live" and cfg.lr == 0.03
    for k, v in recipe_settings("live").items():
        assert getattr(cfg, k) == v
    # the recipe is read from the command line itself (main pre-parses it), and an explicit option wins
    from visual_prompting.cli import _train_defaults_in

    argv = ["train", "--recipe", "robust", "--lr", "0.05", "--prompter", "pad"]
    cfg = from_args(TrainConfig, build_parser(*_train_defaults_in(argv)).parse_args(argv))
    assert (cfg.capture, cfg.optimizer, cfg.lr, cfg.prompter) == ("capture", "adam", 0.05, "pad")


def test_a_short_cli_run_takes_the_recipes_short_run_settings_and_an_explicit_lr_wins():
    from visual_prompting.cli import _train_defaults_in
    from visual_prompting.recipes import SHORT_RUN_STEPS

    def cfg(*args):
        argv = ["train", *args]
        return from_args(TrainConfig, build_parser(*_train_defaults_in(argv)).parse_args(argv))

    short = RECIPES["live"].short_run["lr"]
    assert cfg("--steps", "200").lr == cfg("--steps", str(SHORT_RUN_STEPS)).lr == cfg("--steps=50").lr == short
    assert cfg("--steps", str(SHORT_RUN_STEPS + 1)).lr == cfg().lr == cfg("--epochs", "1").lr == 0.03  # long runs
    # a long run starts the prompt above 0 and counts every mapping image before its first step; a short one not
    assert (cfg("--steps", "200").init_offset, cfg("--steps", "200").start_samples) == (0.0, 500)
    assert (cfg("--steps", "1000").init_offset, cfg("--steps", "1000").start_samples) == (0.01, 5000)
    assert cfg("--steps", "200", "--init-offset", "0.02").init_offset == 0.02  # given: it wins
    assert cfg("--steps", "200", "--lr", "0.02").lr == 0.02  # given: it wins
    assert cfg("--recipe", "fast", "--steps", "200").lr == 0.01  # no short-run lr measured: the recipe's own
    with pytest.raises(SystemExit):  # not a number: refused by the full parser, as before
        cfg("--steps", "many")


def test_unknown_recipe_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--recipe", "nope"])
    with pytest.raises(VPError, match="Unknown recipe"):
        config_from_recipe("nope")


def test_fast_recipe_trains_and_its_settings_reach_the_prompt_file(tmp_path, splits32):
    cfg = config_from_recipe("fast", **{k: v for k, v in dataclasses.asdict(_cfg(tmp_path)).items()
                                        if k not in recipe_settings("fast")})
    t = Trainer(cfg, splits=splits32)
    res = t.run()
    meta = load_prompt(res.best_path).meta
    tc = meta["train_config"]
    assert (tc["prompter"], tc["optimizer"], tc["lr"], tc["label_mapping"]) == ("full", "adam", 0.01, "multi_frequency")
    assert isinstance(t.optimizer, torch.optim.Adam)
    # multi-source mapping: 10 distinct source classes per class, stored and read back by the loaded model
    mapping = meta["head"]["mapping"]
    assert len(mapping) == 10 and all(len(r) == 10 for r in mapping)
    assert len({i for r in mapping for i in r}) == 100
    model, _ = PromptedModel.from_prompt_file(res.best_path)
    assert model.head.mapping.shape == (10, 10)
    x = torch.rand(4, 3, 32, 32)
    src = model.backbone(model.prompt(x))
    assert torch.allclose(model(x), src[:, model.head.mapping].mean(-1), atol=1e-5)
    # the no-prompt baseline is the same kind of mapping, fitted without the prompt
    assert torch.as_tensor(meta["head"]["baseline_mapping"]).shape == (10, 10)
    assert res.metrics["test_top1"] > 0.1


def test_no_lr_takes_the_optimisers_own(tmp_path, splits32):
    t = Trainer(_cfg(tmp_path, optimizer="adam", prompter="full", steps=1), splits=splits32)
    assert t.cfg.lr == 0.01 and t.optimizer.param_groups[0]["lr"] <= 0.01
    t = Trainer(_cfg(tmp_path, steps=1), splits=splits32)
    assert t.cfg.lr == 40.0


@pytest.mark.parametrize("optimizer, prompter", [("adam", "full"), ("l2sgd", "lowrank")])
def test_resume_is_exact_for_other_optimisers(tmp_path, small32, optimizer, prompter):
    """Adam's moments and step count go into last.safetensors, so a resumed run ends where an uninterrupted one
    does (the paper's SGD momentum was the only state kept before)."""
    kw = dict(optimizer=optimizer, prompter=prompter, label_mapping="frequency", augment="flip_crop")
    full = Trainer(_cfg(tmp_path / "full", **kw), splits=small32)
    full.run()

    def stop_at_5(ev):
        if ev.kind == "step" and ev.step == 5:
            raise StopTraining

    Trainer(_cfg(tmp_path / "cut", **kw), callbacks=[stop_at_5], splits=small32).run()
    resumed = Trainer(_cfg(tmp_path / "cut", resume=True, **kw), splits=small32)
    assert resumed.run().steps_done == 12
    assert torch.allclose(resumed.prompter.delta(), full.prompter.delta(), atol=1e-6)


def test_augment_and_capture_sit_before_and_after_the_prompt(tmp_path, splits32):
    calls = []
    t = Trainer(_cfg(tmp_path, steps=1, prompter="full", optimizer="adam", augment="flip_crop", capture="capture"),
                splits=splits32)
    t.augment.register_forward_hook(lambda m, i, o: calls.append(("augment", i[0].requires_grad)))
    t.prompter.register_forward_hook(lambda m, i, o: calls.append(("prompt", o.requires_grad)))
    t.capture.register_forward_hook(lambda m, i, o: calls.append(("capture", i[0].requires_grad)))
    x = torch.rand(8, 3, 32, 32)
    t.train_step(x, torch.randint(0, 10, (8,)))
    assert calls == [("augment", False), ("prompt", True), ("capture", True)]
    assert float(t.prompter.full.detach().abs().sum()) > 0  # the gradient reached the prompt through capture
    # evaluation uses neither
    calls.clear()
    t.model.eval()
    with torch.no_grad():
        t.model(x)
    assert calls == [("prompt", False)]


def test_images_per_second_is_a_steps_own_rate(tmp_path, small32, monkeypatch):
    """The rate shown at an evaluation step and at the step after it is the step's own, not a step's time over
    zero (it read 130,000+ img/s) nor an evaluation's (2-55 img/s). Each evaluation here takes 2 s more, so a rate
    that counted one would be at most 8 img/s, far below any step's own even on a busy machine (the bounds are
    wide: the suite's workers share two cores, and a step's time varies with them)."""
    import visual_prompting.training as tr

    evaluate, pause = tr.evaluate, 2.0
    monkeypatch.setattr(tr, "evaluate", lambda *a, **k: (time.sleep(pause), evaluate(*a, **k))[1])
    events = []
    cfg = _cfg(tmp_path, steps=12, eval_every=3)
    Trainer(cfg, callbacks=[events.append], splits=small32).run()
    rates = [e.images_per_s for e in events if e.kind == "step"]
    assert len(rates) == 12 and sum(e.kind == "eval" for e in events) >= 4
    counted_an_evaluation = cfg.batch_size / pause
    med = sorted(rates)[len(rates) // 2]
    assert all(3 * counted_an_evaluation < r < med * 50 for r in rates), rates


def test_short_run_settings_replace_only_theirs_and_only_when_asked():
    live = RECIPES["live"]
    assert recipe_settings("live", short_run=True) == {**live.settings, "lr": 0.05, "init_offset": 0.0,
                                                       "start_samples": 500}
    assert recipe_settings("live") == live.settings and live.settings["lr"] == 0.03  # the recipe itself unchanged
    assert recipe_settings("paper", short_run=True) == recipe_settings("paper") == {}  # none measured: its own
    assert config_from_recipe("live", steps=200).lr == 0.05  # the library's way, as the CLI's
    assert config_from_recipe("live", steps=1000).lr == config_from_recipe("live").lr == 0.03
    assert config_from_recipe("live", steps=200, lr=0.02).lr == 0.02
    with pytest.raises(ValueError, match="a short run's lr must be above 0"):
        register_recipe(Recipe("bad-short", "x", {"lr": 0.1}, short_run={"lr": 0.0}))
    with pytest.raises(ValueError, match="unknown settings: speed"):
        register_recipe(Recipe("bad-short", "x", {"lr": 0.1}, short_run={"speed": 2}))
    assert "bad-short" not in RECIPES
    with pytest.raises(VPError, match="Unknown recipe"):
        recipe_settings("nope", short_run=True)


def test_every_recipe_builds_a_valid_config():
    for name in RECIPES:
        cfg = config_from_recipe(name)
        assert cfg.to_dict()["prompter"] in ("pad", "full", "full_dct")


def test_app_form_follows_a_recipe(tmp_path):
    from visual_prompting.ui import TRAIN_FORM_FIELDS, VPApp, train_choices

    vp = VPApp()
    d = vp.train_defaults()  # on a CPU: the recipe for a short live run, a minute of training
    short = RECIPES["live"].short_run["lr"]
    assert d.recipe == "live" and d.prompter == "full_dct" and d.optimizer == "adam" and d.lr == short != 0.03
    assert RECIPES["live"].settings == {**RECIPES["fast"].settings, "prompter": "full_dct", "lr": 0.03,
                                        "label_mapping": "contrast", "clamp": "hard", "init_offset": 0.01,
                                        "start_samples": 5000}
    assert (d.settings["init_offset"], d.settings["start_samples"]) == (0.0, 500)  # a short run's start
    assert d.settings["clamp"] == "hard"  # the form shows the recipe's clamp
    assert RECIPES["fast_pad"].settings == {**RECIPES["fast"].settings, "prompter": "pad", "prompt_fraction": 0.3,
                                            "lr": 0.03, "clamp": "hard"}
    assert vp.train_defaults("fast_pad").settings["clamp"] == "hard"
    assert d.time_budget == 65
    assert vp.train_defaults("fast").lr == 0.01  # a recipe without a short-run lr keeps its own
    vp.device = torch.device("cuda")  # (only read here) a GPU trains 1000 steps: the recipe's lr
    assert vp.train_defaults().lr == 0.03 and vp.train_defaults().time_budget is None
    assert vp.train_defaults().settings["init_offset"] == 0.01  # a long run's start
    vp.device = torch.device("cpu")
    assert vp.train_defaults("paper").settings == {f: getattr(TrainConfig(), f) if f != "lr" else 40.0
                                                   for f in TRAIN_FORM_FIELDS}
    ch = train_choices()
    assert {"adam", "l2sgd", "sgd"} <= set(ch["optimizer"]) and "flip_crop" in ch["augment"]
    cfg = vp.train_config("s1", model="effnet-lite0@32", dataset="fashion_mnist_subset", steps=5, batch_size=8,
                          **{f: d.settings[f] for f in TRAIN_FORM_FIELDS})
    assert (cfg.optimizer, cfg.prompter, cfg.label_mapping) == ("adam", "full_dct", "contrast")
    with pytest.raises(VPError, match="optimizer"):
        vp.train_config("s1", model="effnet-lite0@32", dataset="fashion_mnist_subset", steps=5, batch_size=8,
                        optimizer="rmsprop")


def test_image_scale_reaches_the_scale_prompters_and_nothing_else(tmp_path, splits32):
    t = Trainer(_cfg(tmp_path, prompter="scale_pad", image_scale=0.5, steps=1), splits=splits32)
    assert t.prompter.cfg.scale == 0.5 and t.prompter.image_scale() == 0.5
    with pytest.raises(VPError, match="scale_pad kinds only"):
        Trainer(_cfg(tmp_path, prompter="pad", image_scale=0.5, steps=1), splits=splits32)
    a = build_parser().parse_args(["train", "--prompter", "learned_scale_pad", "--image-scale", "0.7"])
    assert from_args(TrainConfig, a).image_scale == 0.7


def test_amp_path_runs_in_bfloat16_on_cpu(tmp_path, splits32, monkeypatch):
    """The AMP code path (autocast around prompt, capture, backbone and head; the loss in float32) runs on CPU in
    bf16: the backbone really computes in bf16 there, and the step still trains the prompt."""
    import visual_prompting.utils as utils

    monkeypatch.setattr(utils, "amp_dtype", lambda device: torch.bfloat16)
    seen = []
    t = Trainer(_cfg(tmp_path, amp=True, steps=2, prompter="full", optimizer="adam"), splits=splits32)
    t.backbone.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = t.prompter.full.detach().clone()
    loss, acc, lr = t.train_step(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    assert torch.bfloat16 in seen and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert not torch.equal(before, t.prompter.full.detach())


def test_a_prompt_that_changes_nothing_yet_reuses_the_baseline_counts(tmp_path, small32, monkeypatch):
    """A zero additive prompt is exactly the identity (checked for every kind that says so), so the mapping is
    fitted from the baseline's counts without reading the mapping images again - and gives the same mapping."""
    from visual_prompting.prompters import PROMPTERS, create_prompter

    x = torch.randint(0, 256, (4, 3, 32, 32)).float() / 255
    for kind in PROMPTERS:
        p = create_prompter(kind=kind, image_size=32, size=4).eval()
        if p.is_identity():
            assert torch.equal(p(x), x), kind
    assert create_prompter(kind="shrink_pad", image_size=32, size=4).is_identity() is False

    import visual_prompting.training as tr

    passes = []
    orig = tr.logits_over
    monkeypatch.setattr(tr, "logits_over", lambda model, data, use_prompt, *a, **k: passes.append(use_prompt)
                        or orig(model, data, use_prompt, *a, **k))
    t = Trainer(_cfg(tmp_path / "a", steps=1, label_mapping="frequency"), splits=small32)
    t.run()
    assert passes == [False]  # the baseline's pass only
    mapping = t.model.head.mapping.tolist()
    assert mapping == t.model.head.baseline_indices()
    passes.clear()
    t = Trainer(_cfg(tmp_path / "b", steps=1, label_mapping="frequency", init="randn"), splits=small32)
    t.run()
    assert passes == [False, True]  # a random start changes pixels: counted again with the prompt


def test_a_prompt_size_as_a_share_of_the_side_scales_with_the_image(tmp_path, splits32):
    from visual_prompting.training import prompt_size_for

    assert prompt_size_for(TrainConfig(prompter="pad", prompt_fraction=0.25), 96) == 24
    assert prompt_size_for(TrainConfig(prompter="pad", prompt_fraction=0.25), 224) == 56
    assert prompt_size_for(TrainConfig(prompter="pad", prompt_fraction=0.25, prompt_size=5), 96) == 5  # px win
    assert prompt_size_for(TrainConfig(prompter="pad"), 224) == 30  # neither: the kind's own
    t = Trainer(_cfg(tmp_path, prompter="pad", prompt_fraction=0.25, steps=1), splits=splits32)
    assert t.prompter.cfg.size == 8  # a quarter of 32 px
    with pytest.raises(VPError, match="share of the side must be between 0 and 0.5"):
        config_from_recipe("fast", prompt_fraction=0.6)
    a = build_parser().parse_args(["train", "--prompt-fraction", "0.25"])
    assert a.prompt_fraction == 0.25
