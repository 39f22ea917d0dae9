"""Hub sharing without the internet: the upload folder and model card, local sources, and the real
``huggingface_hub.hf_hub_download`` path against a tiny fake Hub served on 127.0.0.1 (``tests/_fake_hub.py``, the
``hub`` fixture of ``conftest.py``)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard, constants

from visual_prompting import VPError, create_prompter, load_prompt, save_prompt
from visual_prompting.hub import (UPLOAD_FILES, base_model_for, prepare_upload, pull_prompt, push_prompt,
                                  resolve_prompt)
from visual_prompting.prompt_file import build_metadata, read_metadata

METRICS = {"val_top1": 0.61, "best_val_top1": 0.61, "zero_shot_val_top1": 0.42, "test_top1": 0.639,
           "test_top5": 0.94, "test_top1_no_prompt": 0.408, "test_top5_no_prompt": 0.839, "test_n": 1000}


def _prompter():
    return create_prompter(kind="pad", image_size=32, size=4, init="randn", init_std=0.2)


def _meta(p, **over):
    m = build_metadata(p, backbone={"spec": "clip:vp-tiny", "kind": "clip"}, class_names=["cat", "dog"],
                       head={"kind": "clip_text", "templates": ["This is a photo of a {}"]}, dataset="cifar10",
                       train_config={"lr": 40.0, "steps": 100, "batch_size": 32}, metrics=dict(METRICS))
    m.update(over)
    return m


def _same_prompt(a, b) -> None:
    pa, pb = load_prompt(a), load_prompt(b)
    assert pa.meta == pb.meta
    ta, tb = dict(pa.prompter.named_parameters()), dict(pb.prompter.named_parameters())
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


pytestmark = pytest.mark.usefixtures("isolated_hf")  # conftest: own cache, no real Hub


@pytest.fixture
def prompt_file(tmp_path):
    p = _prompter()
    return save_prompt(tmp_path / "src" / "best.safetensors", p, _meta(p))


@pytest.fixture
def upload_folder(prompt_file, tmp_path):
    return prepare_upload(prompt_file, tmp_path / "upload", repo_id="alice/vp-test")


# -- the upload folder ---------------------------------------------------------------------------------------------

def test_prepare_upload_writes_exactly_the_upload(prompt_file, upload_folder):
    assert sorted(p.name for p in upload_folder.iterdir()) == sorted(UPLOAD_FILES)
    assert (upload_folder / "prompt.safetensors").read_bytes() == Path(prompt_file).read_bytes()
    assert json.loads((upload_folder / "config.json").read_text()) == read_metadata(prompt_file)

    text = (upload_folder / "README.md").read_text()
    assert text.startswith("---\n")
    import yaml

    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "visual-prompting"
    assert front["tags"] == ["visual-prompting", "image-classification", "clip"]
    assert front["datasets"] == ["cifar10"] and front["metrics"] == ["accuracy"]
    assert "base_model" not in front  # clip:vp-tiny has random weights: no base model
    results = front["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "test"
    assert [r["value"] for r in results["metrics"]] == [0.639, 0.94]

    card = ModelCard.load(upload_folder / "README.md")  # how the Hub library reads it
    assert card.data.library_name == "visual-prompting"
    assert [r.metric_value for r in card.data.eval_results] == [0.639, 0.94]
    body = card.text
    assert "python -m visual_prompting predict IMG --prompt prompt.safetensors" in body
    assert "PromptedModel.from_prompt_file" in body and "![prompt](prompt.png)" in body
    assert "| test top-1 | 40.8% | 63.9% |" in body
    assert "| test top-5 | 83.9% | 94.0% |" in body
    assert "| val top-1 | 42.0% | 61.0% |" in body


def test_prompt_png_shows_the_prompt_on_grey(upload_folder):
    from PIL import Image

    im = Image.open(upload_folder / "prompt.png")
    assert im.mode == "RGB" and im.size[0] == im.size[1] >= 256
    w = im.size[0]
    assert im.getpixel((w // 2, w // 2)) == (128, 128, 128)  # the image area: untouched
    border = [im.getpixel((x, 1)) for x in range(0, w, 8)]
    assert len(set(border)) > 5  # the frame: the random prompt's colours


def test_loading_the_upload_folder_gives_back_the_same_prompt(prompt_file, upload_folder):
    path = resolve_prompt(upload_folder)
    assert Path(path) == upload_folder / "prompt.safetensors"
    _same_prompt(path, prompt_file)
    assert resolve_prompt(prompt_file) == str(prompt_file)


def test_card_without_metrics_and_checkpoint_state(tmp_path):
    p = _prompter()
    ckpt = save_prompt(tmp_path / "last.safetensors", p, _meta(p, metrics={}, dataset="/home/me/my_photos"),
                       state={"rng": torch.zeros(5, dtype=torch.uint8)})
    folder = prepare_upload(ckpt, tmp_path / "up")
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "visual-prompting"
    assert card.data.eval_results is None and card.data.datasets is None  # a local folder is not a Hub dataset
    assert "## Accuracy" not in card.text
    shared = load_prompt(folder / "prompt.safetensors")
    assert shared.state == {}  # optimiser / RNG state is not shared
    _same_prompt(folder / "prompt.safetensors", ckpt)
    with pytest.raises(VPError, match="other files"):
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "notes.txt").write_text("x")
        prepare_upload(ckpt, tmp_path / "busy")


def test_base_model_only_for_known_weights():
    assert base_model_for("clip:ViT-B-32/openai") == "timm/vit_base_patch32_clip_224.openai"
    assert base_model_for("clip:vp-tiny") is None
    assert base_model_for("clip:ViT-B-32/random") is None
    assert base_model_for("effnet-lite0@96") is None


def test_bad_sources_say_what_is_wrong(tmp_path):
    with pytest.raises(VPError, match="not found"):
        resolve_prompt(tmp_path / "runs" / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VPError, match="without prompt.safetensors"):
        resolve_prompt(tmp_path / "empty")
    with pytest.raises(VPError, match="Hub location"):
        resolve_prompt("hf://only-one-part")
    with pytest.raises(VPError, match="repo id"):
        pull_prompt("not a repo")


# -- pulling through huggingface_hub ----------------------------------------------------------------------------

def test_pull_downloads_then_works_from_the_cache(hub, upload_folder, prompt_file, isolated_hf, monkeypatch):
    commit = hub.add_folder("alice/vp-test", upload_folder)
    path = pull_prompt("alice/vp-test")
    assert Path(path).is_relative_to(isolated_hf) and commit in path
    _same_prompt(path, prompt_file)
    assert ("GET", "/alice/vp-test/resolve/main/prompt.safetensors") in hub.requests
    assert resolve_prompt("hf://alice/vp-test") == path
    assert resolve_prompt("alice/vp-test") == path
    assert resolve_prompt(f"hf://alice/vp-test@{commit}/prompt.safetensors") == path

    hub.stop()  # the Hub goes away: the cached copy is used, quickly
    t = time.monotonic()
    assert pull_prompt("alice/vp-test") == path
    assert resolve_prompt(f"hf://alice/vp-test@{commit}") == path
    assert time.monotonic() - t < 10

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1 before huggingface_hub was imported
    assert pull_prompt("alice/vp-test") == path
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # ... or set later
    assert pull_prompt("alice/vp-test") == path
    with pytest.raises(VPError, match="offline mode"):
        pull_prompt("alice/never-downloaded")


def test_missing_repo_file_or_revision_fail_fast(hub, upload_folder):
    hub.add_folder("alice/vp-test", upload_folder)
    hub.down.add("alice/down")
    cases = [(dict(repo_id="nobody/nothing"), "no such repo"),
             (dict(repo_id="alice/vp-test", filename="other.safetensors"), "no file of that name"),
             (dict(repo_id="alice/vp-test", revision="v9"), "no such revision"),
             (dict(repo_id="alice/down"), "HTTP 503"),  # huggingface_hub alone would retry this with backoff
             (dict(repo_id="alice/vp-test", filename="config.json"), "not a usable visual-prompting prompt")]
    for kw, words in cases:
        t = time.monotonic()
        with pytest.raises(VPError, match=words):
            pull_prompt(**kw)
        assert time.monotonic() - t < 5, kw
    with pytest.raises(VPError, match="No local file or folder 'nobody/nothing'.*no such repo"):
        resolve_prompt("nobody/nothing")


def test_unreachable_hub_with_empty_cache_fails_fast():
    t = time.monotonic()
    with pytest.raises(VPError, match="unreachable.*not in the local Hugging Face cache"):
        pull_prompt("alice/vp-test")
    with pytest.raises(VPError, match="unreachable"):
        resolve_prompt("hf://alice/vp-test@v1/prompts/cifar10.safetensors")
    assert time.monotonic() - t < 10


# -- pushing ----------------------------------------------------------------------------------------------------

def test_push_fails_fast_and_clearly_without_a_hub(prompt_file, monkeypatch):
    t = time.monotonic()
    with pytest.raises(VPError, match="unreachable"):
        push_prompt(prompt_file, "alice/vp-test", token="hf_fake")
    assert time.monotonic() - t < 10
    with pytest.raises(VPError, match="repo id"):
        push_prompt(prompt_file, "alice/vp/test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VPError, match="offline"):
        push_prompt(prompt_file, "alice/vp-test")


def test_push_creates_the_repo_and_uploads_the_prepared_folder(hub, prompt_file, monkeypatch):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw, self.endpoint, self.token))
        return huggingface_hub.RepoUrl(f"{self.endpoint}/{repo_id}", endpoint=self.endpoint)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls.append(("upload_folder", repo_id, kw, sorted(p.name for p in Path(folder_path).iterdir())))
        _same_prompt(Path(folder_path) / "prompt.safetensors", prompt_file)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = push_prompt(prompt_file, "alice/vp-new", token="hf_fake", private=True)
    assert url == f"{hub.url}/alice/vp-new"
    (_, rid, kw, endpoint, token), (_, rid2, kw2, files) = calls
    assert rid == rid2 == "alice/vp-new" and endpoint == hub.url and token == "hf_fake"
    assert kw["private"] is True and kw["exist_ok"] is True
    assert files == sorted(UPLOAD_FILES) and "pad" in kw2["commit_message"]

    def refused(self, repo_id, **kw):
        raise HfHubHTTPError("401 Unauthorized", response=httpx2.Response(401, request=httpx2.Request("POST", hub.url)))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    with pytest.raises(VPError, match="refused the token"):
        push_prompt(prompt_file, "alice/vp-new", token="hf_bad")


def test_the_app_train_tab_pushes_with_the_users_token(hub, prompt_file, monkeypatch, tmp_path):
    """What the Train tab's "Push to the Hub" button calls: the same upload, with the token the user typed."""
    from visual_prompting.ui import AppConfig, VPApp

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append((repo_id, self.token, kw["private"]))
        return huggingface_hub.RepoUrl(f"{self.endpoint}/{repo_id}", endpoint=self.endpoint)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls.append(sorted(p.name for p in Path(folder_path).iterdir()))
        _same_prompt(Path(folder_path) / "prompt.safetensors", prompt_file)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    vp = VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu"))
    msg = vp.push(str(prompt_file), " alice/vp-from-app ", " hf_typed ", True)
    assert msg == f"Pushed to {hub.url}/alice/vp-from-app"
    assert calls == [("alice/vp-from-app", "hf_typed", True), sorted(UPLOAD_FILES)]
