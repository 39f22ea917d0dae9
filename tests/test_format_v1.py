"""Run folders written by an earlier version (``tests/fixtures/format_v1``: commit f180084, before checkpoints had a
module of their own) keep loading, and ``--resume`` from them ends where an uninterrupted run ends."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from visual_prompting import BackboneCache
from visual_prompting.prompt_file import load_prompt
from visual_prompting.training import Trainer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "format_v1"
_spec = importlib.util.spec_from_file_location("make_format_v1", FIXTURES / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


@pytest.fixture(scope="module")
def splits():
    return make.small_splits()


@pytest.fixture(scope="module")
def cache():
    return BackboneCache()


@pytest.mark.parametrize("name", list(make.RUNS))
def test_old_files_load(name):
    best, last = load_prompt(FIXTURES / name / "best.safetensors"), load_prompt(FIXTURES / name / "last.safetensors")
    assert last.meta["metrics"]["step"] == 4 and best.meta["metrics"]["step"] == 4
    assert 0 <= best.meta["metrics"]["test_top1"] <= 1
    assert last.state and not best.state  # the optimiser's state (to resume) is in the last file only
    if make.RUNS[name]["model"].startswith("effnet"):
        # v1 kept the no-prompt mapping in the metrics; read today, it is the head's own
        assert len(last.meta["head"]["baseline_mapping"]) == 10 and "baseline_mapping" not in last.meta["metrics"]
    assert isinstance(json.loads((FIXTURES / name / "history.json").read_text()), list)


@pytest.mark.parametrize("name", list(make.RUNS))
def test_resume_from_old_files_ends_where_an_uninterrupted_run_ends(tmp_path, splits, cache, name):
    # the backbone run as it was built, as when the files were written (Adam's steps follow the sign of tiny
    # gradients, so the fast backbone's equal-within-rounding gradients could move a few numbers by a step)
    ref = Trainer(make.config(name, str(tmp_path / "ref"), fast_backbone=False), splits=splits, cache=cache).run()
    out = tmp_path / "old"
    shutil.copytree(FIXTURES / name, out)
    again = Trainer(make.config(name, str(out), resume=True, fast_backbone=False), splits=splits, cache=cache).run()
    assert again.steps_done == ref.steps_done == 8
    a, b = load_prompt(ref.last_path), load_prompt(again.last_path)
    for p, q in zip(a.prompter.parameters(), b.prompter.parameters()):
        # the fixture's first four steps ran on another machine: its floats may differ in the last bits
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-4), (p - q).abs().max()
    assert b.meta["head"].get("mapping") == a.meta["head"].get("mapping")
    assert b.meta["head"].get("baseline_mapping") == a.meta["head"].get("baseline_mapping")
    for k, v in a.head.items():
        assert torch.allclose(v, b.head[k], rtol=1e-3, atol=1e-4)
    steps = lambda h: [r["step"] for r in h if r.get("kind") == "eval"]  # noqa: E731
    assert steps(again.history) == steps(ref.history) == [4, 8]


@pytest.mark.parametrize("history, message", [("[" * 100_000, "nested more than"), ('{"a": 1}', "not a run history"),
                                              ("[1, 2]", "not a run history"), ("{", "not valid JSON")])
def test_a_broken_history_is_a_plain_error_on_resume(tmp_path, splits, cache, history, message):
    from visual_prompting import VPError

    out = tmp_path / "old"
    shutil.copytree(FIXTURES / "effnet_iterative_sgd", out)
    (out / "history.json").write_text(history)
    with pytest.raises(VPError, match=message):
        Trainer(make.config("effnet_iterative_sgd", str(out), resume=True), splits=splits, cache=cache).run()
