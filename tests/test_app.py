"""The app's handlers (visual_prompting.ui.VPApp), called directly: real prompts from prompts_zoo/, real example
images, real (short) training runs on the bundled data, and a clear VPError for every kind of bad input."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visual_prompting import VPError
from visual_prompting.prompt_file import load_prompt
from visual_prompting.ui import OWN_BACKBONE, UPLOADED_DATASET, AppConfig, VPApp

from conftest import EFFNET, with_metadata


@pytest.fixture(scope="module")
def vp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    return VPApp(AppConfig(user_zoo_dir=tmp / "zoo", work_dir=tmp / "work", device="cpu"))


@pytest.fixture(scope="module")
def name(vp):
    assert vp.entries, "prompts_zoo/ must ship at least one prompt"
    return next(iter(vp.entries))


def test_try_predicts_top5_over_the_prompts_classes(vp, name):
    assert "test top-1" in vp.prompt_summary(name)[0]
    prompted, zero, with_prompt = vp.predict(name, None, vp.examples()[0])
    model, meta, warning = vp.model(vp.prompt_path(name))
    assert warning is None
    assert prompted.size == (model.image_size, model.image_size)
    classes = set(meta["class_names"])
    img = vp.read_image(vp.examples()[0])
    for labels, use_prompt in ((zero, False), (with_prompt, True)):
        assert len(labels) == 5 and set(labels) <= classes
        # the five most probable classes of the model's own softmax over all of them, with their probabilities
        full = dict(model.predict([img], k=len(model.class_names), use_prompt=use_prompt)[0])
        top5 = sorted(full, key=full.get, reverse=True)[:5]
        assert sorted(labels, key=labels.get, reverse=True) == top5
        assert all(abs(labels[c] - full[c]) < 1e-5 for c in top5)
    assert zero != with_prompt
    # the prompted picture is what the model classified: reading it back gives the same top class
    png = torch.from_numpy(np.array(prompted)).permute(2, 0, 1)
    with torch.no_grad():
        top = model.classify_prompted(model.preprocess(png)).argmax(1)
    assert model.class_names[int(top)] == max(with_prompt, key=with_prompt.get)


def test_a_prompt_whose_class_names_repeat_shows_each_of_its_top5_once(vp, name, tmp_path):
    """A label component is a {name: p} dict: a prompt file listing a name twice (ImageNet's two "crane" classes, or a
    hostile file naming every class alike) must not overwrite one class's probability with another's."""
    path = with_metadata(vp.prompt_path(name), tmp_path / "same_names.safetensors",
                         lambda meta: meta.update(class_names=["same"] * len(meta["class_names"])))
    _, zero, with_prompt = vp.predict(None, path, vp.examples()[0])
    model, _, _ = vp.model(path)
    img = vp.read_image(vp.examples()[0])
    for labels, use_prompt in ((zero, False), (with_prompt, True)):
        top5 = [p for _, p in model.predict([img], k=5, use_prompt=use_prompt)[0]]
        assert list(labels) == ["same", "same (2)", "same (3)", "same (4)", "same (5)"]
        assert list(labels.values()) == pytest.approx(top5, abs=1e-6)


def test_uploaded_prompt_file_wins_over_the_dropdown(vp, trained, name):
    result, _, _ = trained
    assert vp.prompt_summary(name, None)[0] != vp.prompt_summary(name, result.best_path)[0]
    assert "effnet-lite0@64" in vp.prompt_summary(name, result.best_path)[0]
    both = vp.predict(name, result.best_path, vp.examples()[1])  # a zoo prompt chosen AND a file uploaded
    upload = vp.predict(None, result.best_path, vp.examples()[1])
    dropdown = vp.predict(name, None, vp.examples()[1])
    assert both[0].size == upload[0].size == (64, 64) != dropdown[0].size  # the upload's 64 px backbone, not the zoo's
    assert both[0].tobytes() == upload[0].tobytes() and both[1:] == upload[1:]
    assert set(both[2]) <= set(load_prompt(result.best_path).meta["class_names"])


def test_another_backbone_only_with_a_warning(vp, trained):
    result, _, _ = trained
    assert vp.prompt_summary(None, result.best_path)[1][0] == OWN_BACKBONE
    warnings = []
    _, _, labels = vp.predict(None, result.best_path, vp.examples()[0], backbone="torchvision:resnet18/random@64",
                              warn=warnings.append)
    assert len(warnings) == 1 and "trained for effnet-lite0@64" in warnings[0] and "mean nothing" in warnings[0]
    assert len(labels) == 5
    quiet = []
    vp.predict(None, result.best_path, vp.examples()[0], backbone=OWN_BACKBONE, warn=quiet.append)
    assert quiet == []


def test_bad_input_is_a_clear_message(vp, name, tmp_path):
    with pytest.raises(VPError, match="Upload an image"):
        vp.predict(name, None, None)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(VPError, match="broken.png cannot be read"):
        vp.predict(name, None, str(broken))
    with pytest.raises(VPError, match="Pick a prompt"):
        vp.predict(None, None, vp.examples()[0])
    with pytest.raises(VPError, match="not found"):
        vp.predict("no such prompt", None, vp.examples()[0])
    pickle = tmp_path / "evil.safetensors"
    pickle.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    with pytest.raises(VPError):
        vp.predict(name, str(pickle), vp.examples()[0])
    assert vp.prompt_summary(name, str(pickle))[0].startswith("**Cannot use this prompt:**")
    # odd images are fine: RGBA, greyscale, 16-bit, a numpy array
    for img in (Image.new("RGBA", (40, 30), (255, 0, 0, 128)), Image.new("L", (5, 90)), Image.new("I;16", (32, 32))):
        assert len(vp.predict(name, None, img)[2]) == 5
    assert len(vp.predict(name, None, np.zeros((20, 20, 3), "uint8"))[2]) == 5


def test_inspect_shows_the_prompt_its_amplitude_spectrum_saliency_and_metadata(vp, name):
    out = vp.inspect(name, None, vp.examples()[0])
    meta = vp.entries[name]["meta"]
    for key in ("prompt", "amplitude", "spectrum", "saliency"):
        assert min(out[key].size) >= 256
    assert [r[0] for r in out["channels"]] == ["red", "green", "blue"]
    assert all(0 < r[1] <= r[3] <= 255 for r in out["channels"])  # a trained prompt is not zero
    assert out["saliency_class"] in meta["class_names"]
    fields = dict(out["metadata"])
    assert fields["backbone.spec"] == meta["backbone"]["spec"] and "metrics.test_top1" in fields
    assert vp.inspect(name, None, None)["saliency"] is None


def test_a_repeated_prediction_reads_nothing_and_a_changed_file_is_reloaded(vp, name, tmp_path, monkeypatch):
    import os
    import shutil

    import visual_prompting.ui as ui

    path = str(tmp_path / "p.safetensors")
    shutil.copy(vp.prompt_path(name), path)
    first, meta, _ = vp.model(path)
    reads = []
    monkeypatch.setattr(ui, "read_metadata", lambda p, _orig=ui.read_metadata: reads.append(p) or _orig(p))
    again, meta2, _ = vp.model(path)
    assert again is first and meta2 is meta and reads == []
    later = os.path.getmtime(path) + 10
    os.utime(path, (later, later))  # the file changed (same name, new contents)
    reloaded, _, _ = vp.model(path)
    assert reloaded is not first and reads == [path]


def test_zoo_rows_and_gallery_list_every_prompt(vp):
    rows, gallery = vp.zoo_rows(), vp.zoo_gallery()
    assert len(rows) == len(gallery) == len(vp.entries)
    for row, (name, e) in zip(rows, vp.entries.items()):
        cells = dict(zip(VPApp.ZOO_HEADERS, row, strict=True))
        assert cells["name"] == name and cells["backbone"] == e["meta"]["backbone"]["spec"]
        assert cells["test top-1"] == f"{100 * e['meta']['metrics']['test_top1']:.1f}%"


def test_refresh_hands_skipped_files_to_the_caller_who_asked(tmp_path):
    """A broken file in the user's zoo is skipped with its reason, given to the refresh that found it (the app
    shows it to that user); nothing is left on the shared app object for another session to read."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "broken.safetensors").write_bytes(b"not a prompt")
    with pytest.warns(UserWarning, match="broken.safetensors"):  # no one to tell at start-up: a warning (the log)
        app = VPApp(AppConfig(user_zoo_dir=zoo, work_dir=tmp_path / "work", device="cpu"))
    told = []
    names = app.refresh_zoo(warn=told.append)
    assert len(told) == 1 and "broken.safetensors" in told[0]
    assert not any("broken" in n for n in names) and names
    assert not hasattr(app, "skipped")


def train_cfg(vp, session, **kw):
    args = dict(model=EFFNET, dataset="fashion_mnist_subset", steps=12, batch_size=32)
    return vp.train_config(session, **{**args, **kw})


def test_training_streams_progress_curves_and_the_prompt_then_adds_it_to_the_zoo(vp):
    cfg = train_cfg(vp, "s-train")
    updates = list(vp.train_stream(cfg, "s-train", min_interval=0.0))
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    last = updates[-1]
    assert last.done and last.result_path and last.status.startswith("Done.") and "Test top-1" in last.status
    series = {r["series"] for r in last.curves}
    assert {"train loss", "train accuracy", "val accuracy (prompt)", "val accuracy (no prompt)"} <= series
    assert last.prompt is not None and "without a prompt" in last.accuracy
    assert any(u.prompt is not None and not u.done for u in updates)  # the prompt is shown while it trains
    pf = load_prompt(last.result_path)
    assert pf.meta["train_config"]["steps"] == 12 and pf.meta["metrics"]["test_n"] == 1000

    msg = vp.add_to_zoo(last.result_path, "unit-test-pad")
    assert "my/unit-test-pad" in msg and "my/unit-test-pad" in vp.entries
    assert len(vp.predict("my/unit-test-pad", None, vp.examples()[0])[2]) == 5
    with pytest.raises(VPError, match="Zoo names"):
        vp.add_to_zoo(last.result_path, "../escape")
    with pytest.raises(VPError, match="Train a prompt first"):
        vp.add_to_zoo(None, "x")


def test_prewarm_sets_up_the_first_run_and_leaves_nothing_behind(tmp_path):
    """A fresh app's prewarm (what `python app.py` starts with its server): afterwards the backbone is loaded and
    every number without a prompt that the Train tab's first run needs is cached - that run computes none of them
    again - and the prewarm left no run folder and took no run slot."""
    fresh = VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu"))
    form = dict(model="effnet-lite0@32", batch_size=16, steps=3, time_budget=0)  # the first form, smaller
    assert len(fresh.baselines) == 0 and not fresh.cache._cache
    thread = fresh.prewarm(**form)
    thread.join(timeout=600)
    assert not thread.is_alive()
    cached = len(fresh.baselines)
    assert cached >= 3 and ("effnet-lite0@32", "cpu", True) in fresh.cache._cache  # counts, validation and test without a prompt
    assert not list((tmp_path / "work").rglob("run-*")) and not fresh.workspace.active_runs()
    cfg = fresh.train_config("s-after-prewarm", **{**fresh.first_form(), **form})
    last = list(fresh.train_stream(cfg, "s-after-prewarm", min_interval=0.0))[-1]
    assert last.done and last.result_path
    assert len(fresh.baselines) == cached  # the click found every number without a prompt computed


def test_a_prewarm_that_fails_is_logged_and_the_app_keeps_working(tmp_path, caplog):
    fresh = VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu"))
    with caplog.at_level("WARNING", logger="visual_prompting.app"):
        fresh.prewarm(model=EFFNET, dataset="no-such-dataset").join(timeout=60)
    assert any("prewarm failed" in r.getMessage() and "no-such-dataset" in r.getMessage() for r in caplog.records)
    assert len(fresh.baselines) == 0 and fresh.entries  # nothing half-done; the app still lists its prompts


def test_python_app_py_prewarms_unless_told_not_to_or_on_zerogpu(monkeypatch):
    import app

    monkeypatch.setattr(app, "spaces", None)
    assert app.prewarm_wanted(environ={}) and app.prewarm_wanted(environ={"VP_PREWARM": "1"})
    assert not app.prewarm_wanted(environ={"VP_PREWARM": "0"})
    assert not app.prewarm_wanted(False, environ={}) and app.prewarm_wanted(True, environ={"VP_PREWARM": "0"})
    monkeypatch.setattr(app, "spaces", object())  # a ZeroGPU Space
    assert not app.prewarm_wanted(environ={})


def test_stop_ends_the_run_and_keeps_the_best_prompt(vp, shapes):
    cfg = train_cfg(vp, "s-stop", steps=400, dataset=UPLOADED_DATASET, upload=shapes, batch_size=4)
    updates = []
    for u in vp.train_stream(cfg, "s-stop", min_interval=0.0):
        updates.append(u)
        if "step 3/" in u.status:
            vp.stop("s-stop")
    last = updates[-1]
    assert last.done and last.status.startswith("Stopped at step")
    pf = load_prompt(last.result_path)
    assert pf.meta["metrics"]["steps"] < 400
    assert last.fraction == pf.meta["metrics"]["steps"] / 400  # the bar shows how far it got


def test_stop_while_preparing_says_nothing_was_trained_and_leaves_nothing(vp, shapes, monkeypatch):
    """Stop pressed before the first step (here: while the label mapping is counted): the run ends at once, says
    that nothing was trained, offers no prompt, and its folder (with the unpacked upload) is gone."""
    from visual_prompting.training import Trainer

    prepare = Trainer._prepare

    def press_stop_then_prepare(self):
        vp.stop("s-early")
        prepare(self)
    monkeypatch.setattr(Trainer, "_prepare", press_stop_then_prepare)
    cfg = train_cfg(vp, "s-early", steps=400, dataset=UPLOADED_DATASET, upload=shapes, batch_size=4)
    assert Path(cfg.out_dir).is_dir()
    last = list(vp.train_stream(cfg, "s-early", min_interval=0.0))[-1]
    assert last.done and last.result_path is None and last.fraction == 0.0
    assert last.status.startswith("Stopped before the first step: nothing was trained")
    assert not Path(cfg.out_dir).exists()


def test_closing_the_stream_stops_training_and_keeps_the_prompt_on_disk(vp, shapes):
    cfg = train_cfg(vp, "s-close", steps=400, dataset=UPLOADED_DATASET, upload=shapes, batch_size=4)
    stream = vp.train_stream(cfg, "s-close", min_interval=0.0)
    for u in stream:
        if "step 2/" in u.status:
            break
    stream.close()  # the browser went away
    pf = load_prompt(f"{cfg.out_dir}/best.safetensors")
    assert pf.meta["metrics"]["steps"] < 400


def shapes_zip(folder) -> str:
    """A zip of two class folders, 8 small images each: a dataset a user uploads (and a run that starts at once)."""
    archive = folder / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for c, colour in (("red_things", (200, 30, 30)), ("blue_things", (30, 30, 200))):
            for i in range(8):
                img = Image.new("RGB", (24, 24), tuple(max(0, v - 9 * i) for v in colour))
                path = folder / f"{c}{i}.png"
                img.save(path)
                z.write(path, f"shapes/{c}/{i}.png")
    return str(archive)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return shapes_zip(tmp_path_factory.mktemp("shapes"))


def test_training_on_an_uploaded_zip_of_class_folders(vp, shapes):
    cfg = train_cfg(vp, "s-zip", dataset=UPLOADED_DATASET, upload=shapes, steps=3, batch_size=4)
    last = list(vp.train_stream(cfg, "s-zip"))[-1]
    assert load_prompt(last.result_path).meta["class_names"] == ["blue things", "red things"]


def test_bad_training_settings_and_archives_are_clear_messages(vp, tmp_path):
    with pytest.raises(VPError, match="Steps must be between"):
        train_cfg(vp, "s-bad", steps=0)
    with pytest.raises(VPError, match="whole number"):
        train_cfg(vp, "s-bad", batch_size=2.5)
    with pytest.raises(VPError, match="learning rate"):
        train_cfg(vp, "s-bad", lr=-1)
    with pytest.raises(VPError, match="Unknown backbone spec"):
        train_cfg(vp, "s-bad", model="resnet")
    with pytest.raises(VPError, match="Pick a dataset"):
        train_cfg(vp, "s-bad", dataset="/etc")
    with pytest.raises(VPError, match="Upload a .zip"):
        train_cfg(vp, "s-bad", dataset=UPLOADED_DATASET)
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    with pytest.raises(VPError, match="not a readable .zip"):
        train_cfg(vp, "s-bad", dataset=UPLOADED_DATASET, upload=str(text))
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../outside.txt", "x")
    with pytest.raises(VPError, match="outside the dataset folder"):
        train_cfg(vp, "s-bad", dataset=UPLOADED_DATASET, upload=str(evil))
    with pytest.raises(VPError, match="valid id"):
        train_cfg(vp, "../other-user")
    # a run whose data cannot be read fails with the library's message, not a traceback
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("only/readme.txt", "x")
    with pytest.raises(VPError, match="at least two class folders"):
        list(vp.train_stream(train_cfg(vp, "s-empty", dataset=UPLOADED_DATASET, upload=str(empty)), "s-empty"))


def test_push_needs_a_token_and_fails_fast_offline(vp, trained, monkeypatch):
    result, _, _ = trained
    with pytest.raises(VPError, match="token"):
        vp.push(result.best_path, "someone/prompt", "")
    with pytest.raises(VPError, match="Train a prompt first"):
        vp.push(None, "someone/prompt", "hf_x")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(VPError, match="unreachable"):
        vp.push(result.best_path, "someone/prompt", "hf_x")


def test_blocks_build_with_the_four_tabs(vp):
    import app

    demo = app.build_app(vp)
    labels = {b.label for b in demo.blocks.values() if type(b).__name__ == "Tab"}
    assert labels == {"Try a prompt", "Train a prompt", "Inspect a prompt", "Zoo"}
    assert {"predict", "train", "inspect", "stop"} <= {d.api_name for d in demo.fns.values() if d.api_name}


def test_clip_weights_out_of_reach_is_a_plain_message_and_the_app_keeps_working(vp, name, isolated_hf_cache):
    cfg = train_cfg(vp, "s-clip", model="clip:ViT-B-32/openai")
    with pytest.raises(VPError, match="unreachable"):
        list(vp.train_stream(cfg, "s-clip"))
    assert len(vp.predict(name, None, vp.examples()[0])[2]) == 5


def test_training_asks_for_a_zerogpu_when_the_spaces_package_is_there(vp, monkeypatch):
    import importlib
    import importlib.util
    import sys
    import types

    import app

    asked = []

    def gpu(duration=None):
        def wrap(fn):
            asked.append((fn.__name__, duration))
            return fn
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    try:
        importlib.reload(app).build_app(vp)
        assert asked == [("train", 600)]
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(app)
    assert (app.spaces is None) == (importlib.util.find_spec("spaces") is None)


def test_two_sessions_train_at_once_and_a_stop_stops_only_its_own(vp, shapes):
    """Two browser sessions train at the same time: each run has its own folder and result, and one session's Stop
    does not end the other's run."""
    import threading

    # set once a session's run has taken a step (a Stop before that would be cleared when its run starts)
    out, started = {}, {"s-par-a": threading.Event(), "s-par-b": threading.Event()}

    def go(session, seed, steps):
        cfg = train_cfg(vp, session, steps=steps, batch_size=4, seed=seed, dataset=UPLOADED_DATASET, upload=shapes)
        updates = []
        for u in vp.train_stream(cfg, session, min_interval=0.0):
            updates.append(u)
            if u.fraction > 0:
                started[session].set()
        out[session] = (cfg, updates)

    a = threading.Thread(target=go, args=("s-par-a", 0, 60))
    b = threading.Thread(target=go, args=("s-par-b", 1, 400))
    a.start()
    b.start()
    assert started["s-par-a"].wait(120) and started["s-par-b"].wait(120)
    vp.stop("s-par-b")
    a_was_going = "s-par-a" not in out  # both runs were training when b's Stop came
    a.join(300)
    b.join(300)
    assert a_was_going
    (cfg_a, ua), (cfg_b, ub) = out["s-par-a"], out["s-par-b"]
    assert cfg_a.out_dir != cfg_b.out_dir and "s-par-a" in cfg_a.out_dir and "s-par-b" in cfg_b.out_dir
    assert ua[-1].done and ub[-1].done and ua[-1].result_path != ub[-1].result_path
    assert load_prompt(ua[-1].result_path).meta["train_config"]["seed"] == 0
    assert load_prompt(ua[-1].result_path).meta["metrics"]["steps"] == 60  # the other session's Stop did not end it
    assert load_prompt(ub[-1].result_path).meta["metrics"]["steps"] < 400  # its own Stop did


def test_the_tabs_open_on_the_zoos_best_prompt(tmp_path, trained):
    """Try and Inspect open on the shipped zoo's prompt with the highest listed test top-1, not on the first."""
    import shutil

    import app

    zoo = tmp_path / "shipped"
    zoo.mkdir()
    entries = []
    for name, top1 in (("a_first", 0.61), ("b_best", 0.87), ("c_last", 0.70)):
        shutil.copyfile(trained[0].best_path, zoo / f"{name}.safetensors")
        entries.append({"name": name, "path": f"{name}.safetensors", "metrics": {"test_top1": top1}})
    (zoo / "index.json").write_text(json.dumps({"version": 1, "prompts": entries}))
    vp = VPApp(AppConfig(zoo_dir=zoo, user_zoo_dir=tmp_path / "mine", work_dir=tmp_path / "work", device="cpu"))
    assert list(vp.entries)[0] == "a_first" and vp.best_prompt() == "b_best"
    demo = app.build_app(vp)
    dropdowns = [b for b in demo.blocks.values() if type(b).__name__ == "Dropdown" and b.label == "Prompt"]
    assert len(dropdowns) == 2 and all(d.value == "b_best" for d in dropdowns)
    (zoo / "index.json").write_text(json.dumps({"version": 1, "prompts": []}))  # nothing measured: the first
    vp.refresh_zoo()
    assert vp.best_prompt() == "a_first"


@pytest.mark.parametrize("best, says", [(0.40, True), (0.70, False)])
def test_the_train_tab_says_when_the_prompt_is_below_no_prompt(best, says):
    """The final status of a run whose best prompt validates below no prompt (a run too short for its machine)
    says so and what to do; one above it does not."""
    from visual_prompting.train_config import TrainResult
    from visual_prompting.ui import _LiveView

    metrics = {"best_val_top1": best, "zero_shot_val_top1": 0.633, "test_top1": best, "test_top1_no_prompt": 0.596,
               "test_n": 1000}
    status = _LiveView().final(TrainResult("best.safetensors", "last.safetensors", metrics, steps_done=2), 40.0).status
    assert ("below no prompt on validation" in status) is says and "Done. 2 steps" in status


def test_below_no_prompt_reads_the_metrics_or_the_no_prompt_number_a_front_saw():
    from visual_prompting.train_config import TrainResult

    def res(**m):
        return TrainResult("best.safetensors", None, m)

    assert res(best_val_top1=0.4, zero_shot_val_top1=0.6).below_no_prompt()
    assert not res(best_val_top1=0.6, zero_shot_val_top1=0.6).below_no_prompt()  # level is not below
    assert not res(best_val_top1=0.4).below_no_prompt()  # nothing to compare with: no claim
    assert res(best_val_top1=0.4).below_no_prompt(0.6)  # the number the live view saw in an event
    assert not res(best_val_top1=0.4, zero_shot_val_top1=0.3).below_no_prompt(0.6)  # the run's own number first
    assert not res(zero_shot_val_top1=0.6).below_no_prompt()  # stopped before a validation


def test_the_zoo_tab_compares_prompts_on_the_bundled_test_images(vp):
    from visual_prompting.comparison import compare_prompts
    from visual_prompting.ui import SUBSET

    best = vp.best_prompt()
    other = next(n for n in vp.entries if n != best)
    rows, text = vp.compare([best, other, best])  # a prompt picked twice counts once
    assert [r[0] for r in rows] == [best, other] and rows[0][3] == "(reference)"
    # the numbers the library's comparison gives for the same two files, as the table shows them
    c = compare_prompts([vp.prompt_path(best), vp.prompt_path(other)], SUBSET, "test", "cpu")
    d = c.differences[0]
    assert rows[0][1:3] == [f"{100 * c.scores[0].top1:.1f}%", f"{100 * c.scores[0].top1_no_prompt:.1f}%"]
    assert rows[1][1:3] == [f"{100 * c.scores[1].top1:.1f}%", f"{100 * c.scores[1].top1_no_prompt:.1f}%"]
    assert rows[1][3] == f"{d.difference:+.2f} ({d.ci95[0]:+.2f} to {d.ci95[1]:+.2f})"
    assert rows[1][4] == f"{d.p_value:.3g}" and rows[1][5] == c.scores[1].backbone
    assert f"{c.n} test images" in text and c.n == 1000


def test_the_zoo_tab_refuses_a_comparison_it_cannot_make(tmp_path):
    vp = VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu", max_compare=2))
    names = list(vp.entries)
    with pytest.raises(VPError, match="at least two prompts"):
        vp.compare([names[0]])
    with pytest.raises(VPError, match="at least two prompts"):
        vp.compare(None)
    with pytest.raises(VPError, match=r"At most 2 prompts .*VP_MAX_COMPARE.* you picked 3"):
        vp.compare(names[:3])
    # a prompt of the user's zoo trained for other classes than the bundled subset's
    other = with_metadata(vp.prompt_path(names[0]), tmp_path / "other.safetensors",
                          lambda m: m.update(class_names=[f"class {i}" for i in range(len(m["class_names"]))]))
    vp.add_to_zoo(other, "other")
    vp.refresh_zoo()
    with pytest.raises(VPError, match=r"my/other was trained for the classes \['class 0'"):
        vp.compare([names[0], "my/other"])
