"""The Train tab is described once (visual_prompting.train_form.TRAIN_FORM): a field added there is on the page,
in the training handler (and the API), in the checks, and refilled by a recipe; every setting has one default."""
from types import SimpleNamespace

import pytest

from visual_prompting import VPError
from visual_prompting.recipes import RECIPES, Recipe
from visual_prompting.train_config import TrainConfig, default_lr
from visual_prompting.train_form import TRAIN_FORM, FormField
from visual_prompting.ui import AppConfig, VPApp

from conftest import EFFNET

BASE = dict(model=EFFNET, dataset="fashion_mnist_subset", steps=2, batch_size=4)


def _app(tmp_path, **kw) -> VPApp:
    return VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu"), **kw)


def _ancestors(block):
    while block.parent is not None:
        block = block.parent
        yield block


def test_a_field_added_in_one_place_reaches_the_layout_the_parsing_and_the_recipe_handler(tmp_path, monkeypatch):
    import app

    momentum = FormField("momentum", "number", "Momentum (SGD)", place="more", recipe=True, high=0.99)
    monkeypatch.setitem(RECIPES, "light-ball", Recipe("light-ball", "a test recipe", {"momentum": 0.5}))
    vp = _app(tmp_path, form=(*TRAIN_FORM, momentum))  # the one place
    demo = app.build_app(vp)

    # the layout: a number box under "More settings" of the Train tab, showing TrainConfig's default
    box = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Momentum (SGD)")
    assert type(box).__name__ == "Number" and box.value == TrainConfig().momentum == 0.9
    labels = [getattr(b, "label", None) for b in _ancestors(box)]
    assert "More settings" in labels and "Train a prompt" in labels

    # the training handler takes it by name, and so does the API
    train = next(fn for fn in demo.fns.values() if fn.api_name == "train")
    assert box in train.inputs and train.input_keyword_names[-1] == "momentum"
    api = demo.get_api_info()["named_endpoints"]["/train"]["parameters"]
    assert [p["parameter_name"] for p in api] == [f.name for f in vp.form if f.api]
    handed = []
    vp.train_stream = lambda cfg, session: handed.append(cfg) or iter(())  # no run: see what the handler built
    form = {f.name: inp.value for f, inp in zip([f for f in vp.form if f.api], train.inputs)}
    list(train.fn(SimpleNamespace(session_hash="s-form"), **{**form, **BASE, "momentum": 0.25}))
    assert handed[0].momentum == 0.25 and handed[0].optimizer == form["optimizer"]

    # the recipe handler refills it (and the recipe's other fields)
    recipe = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "train-recipe")
    use_recipe = next(fn for fn in demo.fns.values() if (recipe._id, "change") in fn.targets)
    assert box in use_recipe.outputs
    values = dict(zip(use_recipe.outputs, use_recipe.fn("light-ball")))
    assert values[box] == 0.5
    assert dict(zip(use_recipe.outputs, use_recipe.fn("fast")))[box] == 0.9  # a recipe without it: the default

    # the parsing and the checks: TrainConfig's own rules, the field's bound on top
    assert vp.train_config("s-form", **BASE, momentum=0.3).momentum == 0.3
    assert vp.train_config("s-form", **BASE).momentum == 0.9  # left out: the setting's default
    with pytest.raises(VPError, match="Momentum must be between 0 and 0.99"):
        vp.train_config("s-form", **BASE, momentum=1.5)
    with pytest.raises(TypeError, match="momentum"):  # not a field of the app's own form
        _app(tmp_path).train_config("s-form", **BASE, momentum=0.3)


def test_each_setting_has_one_default(tmp_path):
    vp = _app(tmp_path)
    base = TrainConfig()
    for name in RECIPES:
        d = vp.train_defaults(name)
        settings = {**{f.name: getattr(base, f.name) for f in TRAIN_FORM if f.recipe}, **RECIPES[name].settings}
        # on a CPU (a short run) the recipe's short-run settings where it has them; an lr still unset is the
        # optimiser's own, decided by train_config.default_lr (as the trainer does)
        settings.update(RECIPES[name].short_run)
        lr = settings["lr"] or default_lr(settings["optimizer"])
        assert d.settings == {**settings, "lr": lr}
        assert d.seed == base.seed and d.dataset == base.dataset and d.prompt_size is None
    # a field left out of the form, or blank, is TrainConfig's default; the trainer fills lr from the optimiser
    cfg = vp.train_config("s-defaults", **BASE, prompt_size=0, seed=None, lr=None)
    for name in ("prompter", "label_mapping", "clamp", "optimizer", "augment", "capture", "prompt_size", "seed",
                 "lr"):
        assert getattr(cfg, name) == getattr(base, name), name
    assert cfg.with_defaults().lr == default_lr(base.optimizer)
    with pytest.raises(VPError, match="Steps must be given"):  # a required field is never defaulted
        vp.train_config("s-defaults", **{**BASE, "steps": None})


def test_the_form_names_real_settings_and_components():
    import app

    settings = {f.name for f in TrainConfig.__dataclass_fields__.values()}
    assert {f.name for f in TRAIN_FORM if f.setting} <= settings
    assert {f.kind for f in TRAIN_FORM} <= set(app.COMPONENTS)
    assert len({f.name for f in TRAIN_FORM}) == len(TRAIN_FORM)
    with pytest.raises(ValueError, match="place must be one of"):
        FormField("seed", "number", "Seed", place="sidebar")


def test_every_setting_a_recipe_sets_is_a_field_the_form_shows_and_sends():
    # the Train tab sends only its fields: a recipe setting without one would be dropped from the app's runs
    from visual_prompting.train_form import TRAIN_FORM, TRAIN_FORM_FIELDS

    sent = {f.name for f in TRAIN_FORM if f.api and f.fills_setting}
    for name, recipe in RECIPES.items():
        assert set(recipe.settings) | set(recipe.short_run) <= set(TRAIN_FORM_FIELDS) & sent, name
