"""``scripts/build_zoo.py --push-to OWNER`` end to end against the stand-in Hub (``tests/_fake_hub.py``): every
index entry is uploaded (prompt, config, model card, picture), the index records where (repo, commit, file name)
and keeps everything else, the zoo then lists the Hub copies, and they are the same prompts. Failures (no Hub, a
refused token, a hostile index) are one clear message and leave the index as it was."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from visual_prompting import VPError, create_prompter, load_prompt, save_prompt
from visual_prompting.hub import UPLOAD_FILES
from visual_prompting.prompt_file import build_metadata, read_metadata
from visual_prompting.zoo import index_entry, list_prompts, load_index

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_zoo.py"
KINDS = ("pad", "fixed_patch")
TOKEN = "hf_write_token"

pytestmark = pytest.mark.usefixtures("isolated_hf")  # conftest: own Hugging Face cache, the real Hub unreachable


@pytest.fixture(scope="module")
def build_zoo():
    spec = importlib.util.spec_from_file_location("build_zoo", SCRIPT)  # scripts/ is not a package
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def zoo(tmp_path):
    """A zoo folder like prompts_zoo/: two prompt files and an index with the fields build_zoo.py writes."""
    folder = tmp_path / "zoo"
    entries = []
    for i, kind in enumerate(KINDS):
        p = create_prompter(kind=kind, image_size=32, size=4, init="randn", init_std=0.2)
        meta = build_metadata(p, backbone={"spec": "clip:vp-tiny", "kind": "clip"}, class_names=["cat", "dog"],
                              head={"kind": "clip_text", "templates": ["This is a photo of a {}"]},
                              dataset="cifar10", metrics={"test_top1": 0.6 + i / 100, "test_n": 100})
        name = f"vp-tiny-32_cifar10_{kind}"
        save_prompt(folder / f"{name}.safetensors", p, meta)
        entries.append(index_entry(name, f"{name}.safetensors", meta, command=f"python -m visual_prompting train "
                                   f"--prompter {kind}", train_seconds=12 + i, provenance={"commit": "abc"}))
    (folder / "index.json").write_text(json.dumps({"version": 1, "prompts": entries, "provenance": {"x": 1}},
                                                  indent=2) + "\n")
    return folder


def _doc(folder: Path) -> dict:
    return json.loads((folder / "index.json").read_text())


def _same_tensors(a, b) -> None:
    ta, tb = dict(load_prompt(a).prompter.named_parameters()), dict(load_prompt(b).prompter.named_parameters())
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_push_uploads_every_entry_records_it_and_the_zoo_lists_the_hub_copies(hub, zoo, build_zoo):
    hub.tokens = {TOKEN}
    before = _doc(zoo)
    logged = []
    done = build_zoo.push_zoo("alice", zoo, token=TOKEN, log=logged.append)
    assert [e["name"] for e in done] == [e["name"] for e in before["prompts"]] and len(logged) == 2

    # the stand-in received one commit per entry, with the four files prepare_upload writes, under our token
    assert [c["repo_id"] for c in hub.commits] == [f"alice/{e['name']}" for e in before["prompts"]]
    for c, e in zip(hub.commits, before["prompts"]):
        assert sorted(c["files"]) == sorted(UPLOAD_FILES) and c["token"] == TOKEN
        assert c["files"]["prompt.safetensors"] == (zoo / e["path"]).read_bytes()
        assert json.loads(c["files"]["config.json"]) == read_metadata(zoo / e["path"])
        assert c["files"]["README.md"].startswith(b"---\n") and b"library_name: visual-prompting" in c["files"]["README.md"]
        assert c["files"]["prompt.png"].startswith(b"\x89PNG")

    # the index records where each went; every other field is as it was
    after = _doc(zoo)
    for old, new, c in zip(before["prompts"], after["prompts"], hub.commits):
        assert new["hub"] == {"repo_id": f"alice/{old['name']}", "revision": c["oid"], "filename": "prompt.safetensors"}
        assert {k: v for k, v in new.items() if k != "hub"} == old
    assert {k: v for k, v in after.items() if k != "prompts"} == {k: v for k, v in before.items() if k != "prompts"}
    assert not list(zoo.glob("index.json.tmp*"))
    assert load_index(zoo) == after["prompts"]

    # the zoo lists each Hub copy beside its local file; it is the same prompt
    skipped = []
    listed = {p["name"]: p for p in list_prompts(zoo, include_hub=True, skipped=skipped)}
    assert skipped == []
    assert sorted(listed) == sorted([e["name"] for e in after["prompts"]] + [f"{e['name']} (Hub)" for e in after["prompts"]])
    for e in after["prompts"]:
        remote = listed[f"{e['name']} (Hub)"]
        assert remote["hub"] == e["hub"] and remote["index"] == e and "hf-cache" in remote["path"]
        assert remote["meta"] == listed[e["name"]]["meta"]
        _same_tensors(remote["path"], zoo / e["path"])
    revisions = {e["hub"]["revision"] for e in after["prompts"]}
    assert {r for m, r in hub.requests if m == "GET" and "/resolve/" in r} == {
        f"/alice/{e['name']}/resolve/{e['hub']['revision']}/prompt.safetensors" for e in after["prompts"]}
    assert len(revisions) == 2
    assert list_prompts(zoo) == [p for p in listed.values() if "hub" not in p]  # without include_hub: local only

    # pushing again (e.g. after --index-only) makes a new commit and records it
    build_zoo.push_zoo("alice", zoo, token=TOKEN, log=logged.append)
    assert [e["hub"]["revision"] for e in _doc(zoo)["prompts"]] == [c["oid"] for c in hub.commits[2:]]


def test_the_app_lists_the_hub_copies_only_when_asked_and_the_hub_answers(hub, zoo, build_zoo, tmp_path,
                                                                            monkeypatch):
    from visual_prompting.ui import AppConfig, VPApp

    build_zoo.push_zoo("alice", zoo, token=TOKEN, log=lambda *_: None)
    asked = len(hub.requests)
    vp = VPApp(AppConfig(zoo_dir=zoo, user_zoo_dir=tmp_path / "my", work_dir=tmp_path / "work", device="cpu"))
    names = sorted(f"vp-tiny-32_cifar10_{k}" for k in KINDS)
    assert sorted(vp.entries) == names and len(hub.requests) == asked  # start-up: local files only, no Hub request
    got = vp.refresh_zoo(include_hub=True)
    assert sorted(got) == sorted(names + [f"{n} (Hub)" for n in names])
    source = VPApp.ZOO_HEADERS.index("source")
    assert {r[0]: r[source] for r in vp.zoo_rows()} == {**{n: "zoo" for n in names}, **{f"{n} (Hub)": "hub" for n in names}}

    hub.stop()  # the Hub goes away: the copies pulled before come from the cache; a fresh cache has none
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    warned = []
    t = time.monotonic()
    assert sorted(vp.refresh_zoo(include_hub=True, warn=warned.append)) == names
    assert time.monotonic() - t < 10
    assert len(warned) == 2 and all("Skipping Hub prompt" in w and "unreachable" in w for w in warned)


def test_unreachable_hub_fails_with_one_clear_message_and_the_index_unchanged(zoo, build_zoo):
    before = (zoo / "index.json").read_bytes()
    t = time.monotonic()
    with pytest.raises(VPError, match=r"vp-tiny-32_cifar10_pad: Cannot push to alice/.*unreachable.*0 of 2"):
        build_zoo.push_zoo("alice", zoo, token=TOKEN)
    assert time.monotonic() - t < 10
    assert (zoo / "index.json").read_bytes() == before


def test_a_refused_token_stops_with_a_clear_message(hub, zoo, build_zoo):
    hub.tokens = {TOKEN}
    before = (zoo / "index.json").read_bytes()
    with pytest.raises(VPError, match=r"refused the token \(401\).*0 of 2 entries"):
        build_zoo.push_zoo("alice", zoo, token="hf_wrong", log=lambda *_: None)
    assert (zoo / "index.json").read_bytes() == before and hub.commits == []


def test_a_failure_midway_keeps_what_was_pushed_before_it(hub, zoo, build_zoo):
    second = _doc(zoo)["prompts"][1]["name"]
    hub.down.add(f"alice/{second}")  # the Hub fails (503) on the second upload
    with pytest.raises(VPError, match=rf"{second}: .*HTTP 503.*1 of 2 entries were pushed and recorded"):
        build_zoo.push_zoo("alice", zoo, token=TOKEN, log=lambda *_: None)
    first, other = _doc(zoo)["prompts"]
    assert first["hub"]["revision"] == hub.commits[0]["oid"] and "hub" not in other
    assert load_index(zoo)  # whole and valid


def test_bad_owner_or_name_fails_before_any_upload(hub, zoo, build_zoo):
    doc = _doc(zoo)
    doc["prompts"][1]["name"] = "bad name with spaces"
    (zoo / "index.json").write_text(json.dumps(doc))
    with pytest.raises(VPError, match="Bad Hub repo id 'alice/bad name with spaces'"):
        build_zoo.push_zoo("alice", zoo, token=TOKEN)
    with pytest.raises(VPError, match="Bad Hub repo id"):
        build_zoo.push_zoo("al/ice", zoo, token=TOKEN)
    assert hub.commits == [] and "hub" not in _doc(zoo)["prompts"][0]


HOSTILE = [
    ("alice/x", "'hub' must be"),
    ([], "'hub' must be"),
    ({"revision": "main"}, "'hub' must be"),
    ({"repo_id": 5}, "'hub' must be"),
    ({"repo_id": "alice/x", "revision": ["main"]}, "must be texts"),
    ({"repo_id": "alice/x", "filename": {"a": 1}}, "must be texts"),
    ({"repo_id": "alice/x", "token": "hf_..."}, "unknown fields"),
    ({"repo_id": "../../etc"}, "not a Hub repo id"),
    ({"repo_id": "alice/x", "filename": "../../../.ssh/id_rsa"}, "not a file name inside a Hub repo"),
    ({"repo_id": "alice/x", "filename": "/etc/passwd"}, "not a file name inside a Hub repo"),
    ({"repo_id": "alice/x", "revision": "main\n"}, "not a Hub revision"),
]


@pytest.mark.parametrize("value,words", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_a_hostile_hub_field_is_a_clear_error(zoo, value, words):
    doc = _doc(zoo)
    doc["prompts"][0]["hub"] = value
    (zoo / "index.json").write_text(json.dumps(doc))
    with pytest.raises(VPError, match=r"index.json: entry 'vp-tiny-32_cifar10_pad': .*" + words):
        load_index(zoo)
    with pytest.raises(VPError, match=words):
        list_prompts(zoo, include_hub=True)


def test_older_entries_with_only_a_repo_id_keep_working(hub, zoo):
    src = zoo / "vp-tiny-32_cifar10_pad.safetensors"
    up = Path(str(zoo) + "-upload")
    from visual_prompting.hub import prepare_upload

    commit = hub.add_folder("bob/old-style", prepare_upload(src, up))
    doc = copy.deepcopy(_doc(zoo))
    doc["prompts"].append({"name": "old-style", "repo_id": "bob/old-style", "revision": commit})
    (zoo / "index.json").write_text(json.dumps(doc))
    listed = {p["name"]: p for p in list_prompts(zoo, include_hub=True)}
    assert listed["old-style"]["hub"] == {"repo_id": "bob/old-style", "revision": commit, "filename": None}
    _same_tensors(listed["old-style"]["path"], src)


def test_the_cli_pushes_and_says_why_it_fails(hub, zoo):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_TOKEN": ""}
    hub.tokens = {TOKEN}
    cmd = [sys.executable, str(SCRIPT), "--push-to", "carol", "--zoo-dir", str(zoo), "--endpoint", hub.url]
    bad = subprocess.run([*cmd, "--token", "hf_wrong"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "refused the token (401)" in bad.stderr
    ok = subprocess.run([*cmd, "--token", TOKEN], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert [e["hub"]["repo_id"] for e in _doc(zoo)["prompts"]] == [f"carol/vp-tiny-32_cifar10_{k}" for k in KINDS]
    assert "pushed 2 prompts" in ok.stdout
