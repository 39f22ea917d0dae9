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


def _run(name, out, splits, cache, *, stop_at=None, resume=False):
    """A run of the fixture's settings into ``out`` (the backbone run as it was built, as when the files were written:
    the fast backbone's equal-within-rounding gradients would be another draw), stopped before step ``stop_at + 1``
    as make.py stops it (the app's Stop), or to its end."""
    holder = {}
    stop = None if stop_at is None else (lambda: holder["t"].step >= stop_at)
    t = Trainer(make.config(name, str(out), resume=resume, fast_backbone=False), splits=splits, cache=cache,
                should_stop=stop)
    holder["t"] = t
    return t, t.run()


def _close(a, b):  # the fixture's four steps ran on another machine: its floats may differ in the last bits
    return torch.allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", list(make.RUNS))
def test_resume_from_old_files_takes_up_the_old_run_where_it_stopped(tmp_path, splits, cache, name):
    # what the old files resume into (stopped again before step 5) is what today's code resumes into from the same
    # run stopped at step 4 on this machine: prompt, optimiser state, mapping, step, RNG stream, history
    mine = tmp_path / "mine"
    _run(name, mine, splits, cache, stop_at=4)
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / name, old)
    a, _ = _run(name, mine, splits, cache, stop_at=4, resume=True)
    b, _ = _run(name, old, splits, cache, stop_at=4, resume=True)
    assert a.step == b.step == 4
    for p, q in zip(a.prompter.parameters(), b.prompter.parameters(), strict=True):
        assert _close(p, q), (p - q).abs().max()
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and sa  # SGD's momentum buffers, Adam's moments and step counts
    for k in sa:
        assert sa[k].keys() == sb[k].keys()
        for key in sa[k]:
            assert _close(torch.as_tensor(sa[k][key]).float(), torch.as_tensor(sb[k][key]).float()), (k, key)
    assert a.model.head.describe().get("mapping") == b.model.head.describe().get("mapping")
    assert a.model.head.describe().get("baseline_mapping") == b.model.head.describe().get("baseline_mapping")
    for (k, v), (k2, v2) in zip(a.model.head.state_dict().items(), b.model.head.state_dict().items(), strict=True):
        assert k == k2 and _close(v.float(), v2.float()), k
    assert torch.equal(load_prompt(FIXTURES / name / "last.safetensors").state["rng"],
                       load_prompt(mine / "last.safetensors").state["rng"])
    steps = lambda h: [r["step"] for r in h if r.get("kind") == "eval"]  # noqa: E731
    assert steps(b.history) == steps(a.history) == [4]


@pytest.mark.parametrize("name", list(make.RUNS))
def test_resume_from_old_files_runs_to_the_end(tmp_path, splits, cache, name):
    # with the test above, this is "resuming old files ends where an uninterrupted run ends": a resume from the state
    # they hold ends exactly where an uninterrupted run on this machine ends. The old files' own four steps are
    # another machine's floats, and the paper's SGD (lr 40) can grow a 1e-5 difference there to 0.06 in four more
    # steps (seen on an AVX2 VM against AVX-512 fixtures), so their end is compared by what does not depend on them.
    _, ref = _run(name, tmp_path / "ref", splits, cache)
    mine = tmp_path / "mine"
    _run(name, mine, splits, cache, stop_at=4)
    _, again = _run(name, mine, splits, cache, resume=True)
    a, b = load_prompt(ref.last_path), load_prompt(again.last_path)
    for p, q in zip(a.prompter.parameters(), b.prompter.parameters(), strict=True):
        assert torch.equal(p, q), (p - q).abs().max()
    assert b.meta["head"].get("mapping") == a.meta["head"].get("mapping")
    assert b.meta["head"].get("baseline_mapping") == a.meta["head"].get("baseline_mapping")
    for k, v in a.head.items():
        assert torch.equal(v, b.head[k])
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / name, old)
    _, from_old = _run(name, old, splits, cache, resume=True)
    assert from_old.steps_done == again.steps_done == ref.steps_done == 8
    steps = lambda h: [r["step"] for r in h if r.get("kind") == "eval"]  # noqa: E731
    assert steps(from_old.history) == steps(again.history) == steps(ref.history) == [4, 8]
    assert load_prompt(from_old.last_path).meta["metrics"]["step"] == 8


@pytest.mark.parametrize("history, message", [("[" * 100_000, "nested more than"), ('{"a": 1}', "not a run history"),
                                              ("[1, 2]", "not a run history"), ("{", "not valid JSON")])
def test_a_broken_history_is_a_plain_error_on_resume(tmp_path, splits, cache, history, message):
    from visual_prompting import VPError

    out = tmp_path / "old"
    shutil.copytree(FIXTURES / "effnet_iterative_sgd", out)
    (out / "history.json").write_text(history)
    with pytest.raises(VPError, match=message):
        Trainer(make.config("effnet_iterative_sgd", str(out), resume=True), splits=splits, cache=cache).run()
