"""What a user's request may make the app's server do, checked before it is done: the backbone an uploaded or typed
prompt / model names (no weights read from a server file, no input size over the limit or other than the prompt's),
how many backbones stay loaded, a run's slot held while it loads (before its first step), and the shared zoo
folder written by one user at a time without replacing anyone's prompt."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from visual_prompting import VPError
from visual_prompting.backbones import BackboneCache
from visual_prompting.ui import AppConfig, VPApp, _BackgroundRun
from visual_prompting.workspace import _fresh
from visual_prompting.zoo import load_index

from conftest import with_metadata

REPO = Path(__file__).resolve().parent.parent
PAD = REPO / "prompts_zoo" / "effnet-lite0-96_fashion-mnist_pad.safetensors"
EXAMPLE = str(REPO / "assets" / "examples" / "7_sneaker.png")


def _app(tmp_path, **limits) -> VPApp:
    return VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu", **limits))


def _prompt_with_spec(tmp_path, spec: str) -> str:
    """The shipped pad prompt (96 px) with its backbone spec changed, as a user could upload it."""
    return with_metadata(PAD, tmp_path / f"upload-{abs(hash(spec))}.safetensors",
                         lambda meta: meta["backbone"].update(spec=spec))


@pytest.fixture
def builds(monkeypatch):
    """The specs the app asks its backbone cache to build."""
    asked = []
    from visual_prompting import backbones

    real = backbones.load_backbone
    monkeypatch.setattr(backbones, "load_backbone", lambda spec, *a, **k: (asked.append(spec), real(spec, *a, **k))[1])
    return asked


@pytest.mark.parametrize("spec, message", [
    ("torchvision:resnet18//etc/passwd", "names a weights file"),  # (a label-mapping head: a classifier family)
    ("timm:resnet18/weights.pt@96", "names a weights file"),
    ("effnet-lite0@128", "is for 96 px images but effnet-lite0@128 takes 128 px"),
    ("effnet-lite0@4096", "The model's input size \\(4096 px\\) is over this app's limit of 512 px"),
])
def test_an_uploaded_prompt_naming_a_backbone_the_app_must_not_build_is_refused_before_building(
        tmp_path, builds, spec, message):
    vp = _app(tmp_path)
    upload = _prompt_with_spec(tmp_path, spec)
    with pytest.raises(VPError, match=message):
        vp.predict(None, upload, EXAMPLE)
    assert builds == []  # refused from the metadata alone: nothing loaded, nothing kept in memory


def test_a_prompt_over_the_image_size_limit_is_refused_and_the_shipped_zoo_still_predicts(tmp_path, builds):
    vp = _app(tmp_path, max_image_size=64)
    upload = tmp_path / PAD.name
    upload.write_bytes(PAD.read_bytes())
    with pytest.raises(VPError, match="The prompt's image size \\(96 px\\) is over this app's limit of 64 px"):
        vp.predict(None, str(upload), EXAMPLE)  # the same file, uploaded: a user's file
    assert builds == []
    name = next(n for n, e in vp.entries.items() if Path(e["path"]).name == PAD.name)
    _, zero_shot, prompted = vp.predict(name, None, EXAMPLE)  # the app's own zoo is not a user's request
    assert len(prompted) == 5 and len(zero_shot) == 5 and builds == ["effnet-lite0@96"]
    with pytest.raises(VPError, match="over this app's limit"):  # another backbone, chosen by the user
        vp.predict(name, None, EXAMPLE, backbone="effnet-lite0@1024")


def test_the_train_tab_refuses_a_typed_model_over_the_size_limit_or_with_local_weights(tmp_path, builds):
    vp = _app(tmp_path)

    def form(model):
        return {**vp.first_form(), "model": model, "dataset": "fashion_mnist_subset", "steps": 1}

    with pytest.raises(VPError, match="The model's input size \\(2048 px\\) is over this app's limit of 512 px"):
        vp.train_config("s1", **form("effnet-lite0@2048"))
    with pytest.raises(VPError, match="names a weights file"):
        vp.train_config("s1", **form("clip:ViT-B-32/" + os.path.join("srv", "ckpt.bin")))
    assert builds == [] and not list((tmp_path / "work").rglob("run-*"))  # no run folder was made either
    assert vp.train_config("s1", **form("effnet-lite0@64")).model == "effnet-lite0@64"  # within the limit: set up


def test_the_train_tab_refuses_a_batch_of_too_many_pixels_though_each_number_is_within_its_limit(tmp_path, builds):
    vp = _app(tmp_path)

    def form(model, batch_size):
        return {**vp.first_form(), "model": model, "batch_size": batch_size, "dataset": "fashion_mnist_subset",
                "steps": 1}

    with pytest.raises(VPError, match=r"A batch of 1024 images of 512 px is 268\.4 MP, over this app's limit of 13 MP "
                                      r"\(VP_MAX_BATCH_MP\)"):
        vp.train_config("s1", **form("effnet-lite0@512", 1024))
    with pytest.raises(VPError, match=r"A batch of 512 images of 224 px \(the model names no @SIZE\) is 25\.7 MP"):
        vp.train_config("s1", **form("effnet-lite0", 512))
    assert builds == [] and not list((tmp_path / "work").rglob("run-*"))
    assert vp.train_config("s1", **form("effnet-lite0", 256)).batch_size == 256  # the paper's batch: allowed
    assert vp.train_config("s2", **form("effnet-lite0@96", 1024)).batch_size == 1024
    loose = _app(tmp_path / "loose", max_batch_mp=300)
    assert loose.train_config("s1", **form("effnet-lite0@512", 1024)).batch_size == 1024  # VP_MAX_BATCH_MP raised


def test_the_apps_backbone_cache_keeps_the_most_recently_used_few(monkeypatch):
    from visual_prompting import backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda spec, device="cpu", fast=True: object())
    cache = BackboneCache(max_items=2)
    a, b = cache.get("a"), cache.get("b")
    assert cache.get("a") is a  # a hit, and now the most recently used
    c = cache.get("c")  # drops b, the least recently used
    assert cache.get("a") is a and cache.get("c") is c and cache.get("b") is not b
    assert len(cache._cache) == 2
    keeps_all = BackboneCache()  # scripts and tests: no bound
    first = [keeps_all.get(s) for s in "abcdef"]
    assert [keeps_all.get(s) for s in "abcdef"] == first


def test_a_run_holds_its_slot_while_it_loads_before_its_first_step(tmp_path):
    busy, stop = tmp_path / "RUNNING", tmp_path / "STOP"
    busy.touch()
    os.utime(busy, (time.time() - 3600,) * 2)  # as if the claim were long ago: only the heartbeat can refresh it
    loading = threading.Event()

    def work(callback, should_stop):  # a run still loading: it never calls should_stop
        loading.wait(5)
        return "done"

    run = _BackgroundRun(work, stop, busy, "t", heartbeat_s=0.02)
    try:
        deadline = time.time() + 5
        while not _fresh(busy) and time.time() < deadline:
            time.sleep(0.01)
        assert _fresh(busy)  # the workspace counts this run as going
    finally:
        loading.set()
        run.close()
    assert run.result() == "done" and not busy.exists()  # the slot is free once the run ends


def test_adding_to_the_shared_zoo_replaces_no_ones_prompt_and_concurrent_adds_all_land(tmp_path):
    vp = _app(tmp_path)
    assert "Added as `my/mine`" in vp.add_to_zoo(str(PAD), "mine")
    before = (tmp_path / "zoo" / "mine.safetensors").read_bytes()
    live = REPO / "prompts_zoo" / "effnet-lite0-96_fashion-mnist_live.safetensors"
    with pytest.raises(VPError, match="`mine` is in the zoo already; pick another name"):
        vp.add_to_zoo(str(live), "mine")  # another user's add under the same name
    assert (tmp_path / "zoo" / "mine.safetensors").read_bytes() == before
    errors = []

    def add(i):
        try:
            vp.add_to_zoo(str(PAD), f"u{i}")
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(e["name"] for e in load_index(tmp_path / "zoo")) == sorted(["mine"] + [f"u{i}" for i in range(8)])
    assert {f"my/u{i}" for i in range(8)} <= set(vp.entries)
