"""The shipped zoo: every index entry is a real prompt file that still measures what the index says."""
import json

import pytest
import torch

from visual_prompting import PromptedModel, VPError
from visual_prompting.backbones import BackboneCache
from visual_prompting.data import load_splits
from visual_prompting.evaluation import evaluate
from visual_prompting.zoo import INDEX, ZOO_DIR, list_prompts, load_index

ENTRIES = load_index()


def test_index_lists_exactly_the_shipped_prompts():
    files = sorted(str(p.relative_to(ZOO_DIR)) for p in ZOO_DIR.glob("**/*.safetensors"))
    assert files and sorted(e["path"] for e in ENTRIES if e.get("path")) == files
    assert all(e.get("command", "").startswith("python -m visual_prompting train") for e in ENTRIES)
    for e in ENTRIES:  # every prompt says how, where and when it was made
        p = e.get("provenance") or {}
        assert p.get("recorded") is True and p.get("git_commit") and p.get("date_utc") and p.get("machine"), e["name"]


def _train_config(e):
    from visual_prompting.prompt_file import read_metadata

    return read_metadata(ZOO_DIR / e["path"])["train_config"]


def test_the_zoo_holds_the_best_prompts_of_each_kind_on_the_full_test_set():
    full = [e for e in ENTRIES if e["dataset"] == "fashion_mnist" and e["metrics"].get("test_n") == 10000]
    best = lambda es: max((e["metrics"]["test_top1"] for e in es), default=0)  # noqa: E731
    assert best([e for e in full if e["prompter"] in ("full", "full_dct")]) >= 0.84  # the best full-image prompt
    assert best([e for e in full if e["prompter"] in ("pad", "shrink_pad")]) >= 0.80  # a frame worth inspecting
    assert any(_train_config(e)["capture"] == "capture" for e in full)  # a capture-robust prompt
    paper = [e for e in full if _train_config(e)["optimizer"] == "sgd" and e["prompter"] == "pad"]
    assert paper and all(_train_config(e)["label_mapping"] == "iterative" for e in paper)  # the paper's example


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_entry_matches_its_file_and_still_measures_what_it_lists(entry):
    listed = {p["name"]: p for p in list_prompts()}
    meta = listed[entry["name"]]["meta"]
    assert meta["backbone"]["spec"] == entry["backbone"] and meta["dataset"] == entry["dataset"]
    assert meta["class_names"] == entry["classes"] and meta["prompter"]["kind"] == entry["prompter"]
    model, _ = PromptedModel.from_prompt_file(ZOO_DIR / entry["path"], cache=_CACHE)
    m = entry["metrics"]  # measured again on the subset's first test images (build_zoo.py measured all 1,000 too)
    test = load_splits("fashion_mnist_subset", image_size=model.image_size).test
    got = evaluate(model, test.subset(torch.arange(m["subset_head_n"])), True).top1
    assert m["subset_head_n"] >= 200 and abs(got - m["subset_head_top1"]) <= 1 / m["subset_head_n"] + 1e-9  # one image


_CACHE = BackboneCache()


def test_malformed_index_is_a_clear_error(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(VPError, match="not valid JSON"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"version": 1, "prompts": [{"name": "x"}]}))
    with pytest.raises(VPError, match="'path' or 'repo_id'"):
        load_index(tmp_path)


def test_unreachable_hub_entries_are_skipped_with_a_reason(tmp_path, isolated_hf_cache):
    (tmp_path / "index.json").write_text(json.dumps({"version": 1, "prompts": [
        {"name": "remote", "repo_id": "someone/vp-prompt"}]}))
    with pytest.warns(UserWarning, match="Skipping Hub prompt remote"):
        assert list_prompts(tmp_path, include_hub=True) == []
    skipped = []  # a caller that shows the reasons itself gets them instead of a warning
    assert list_prompts(tmp_path, include_hub=True, skipped=skipped) == []
    assert len(skipped) == 1 and skipped[0].startswith("Skipping Hub prompt remote")


def test_index_file_is_committed():
    assert INDEX.is_file()


def test_add_prompt_replaces_a_name_unless_asked_not_to(tmp_path):
    from visual_prompting.zoo import add_prompt

    pad, live = (ZOO_DIR / f"effnet-lite0-96_fashion-mnist_{n}.safetensors" for n in ("pad", "live"))
    add_prompt(pad, "mine", tmp_path)
    add_prompt(live, "mine", tmp_path)  # a user's own zoo: the newer prompt replaces the older
    (entry,) = load_index(tmp_path)
    assert entry["name"] == "mine" and entry["prompter"] == read_kind(live)
    before = (tmp_path / "mine.safetensors").read_bytes()
    with pytest.raises(VPError, match="`mine` is in the zoo already; pick another name"):
        add_prompt(pad, "mine", tmp_path, replace=False)  # a folder several users add to
    assert (tmp_path / "mine.safetensors").read_bytes() == before and len(load_index(tmp_path)) == 1
    with pytest.raises(VPError, match="Zoo names use letters"):
        add_prompt(pad, "../mine", tmp_path, replace=False)  # the name's rule first, whatever is on disk


def read_kind(path) -> str:
    from visual_prompting.prompt_file import read_metadata

    return read_metadata(path)["prompter"]["kind"]
