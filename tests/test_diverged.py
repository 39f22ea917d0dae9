"""A run whose loss becomes NaN stops with a clear message and keeps the last good prompt (best and last files
finite and loadable, the last one from the evaluation before the NaN); the app says it in words."""
from __future__ import annotations

import json
import os

import torch

from visual_prompting import BackboneCache, TrainConfig
from visual_prompting.data import DataSplits, load_splits
from visual_prompting.prompt_file import load_prompt
from visual_prompting.training import Trainer

SPEC = "effnet-lite0@32"


def small() -> DataSplits:
    full = load_splits("fashion_mnist_subset", image_size=32)
    return DataSplits(full.train.subset(torch.arange(160)), full.val.subset(torch.arange(64)),
                      full.test.subset(torch.arange(64)), full.class_names, full.name)


def poisoned_trainer(tmp, nan_from_call: int, **kw) -> Trainer:
    cfg = TrainConfig(**{**dict(model=SPEC, dataset="fashion_mnist_subset", batch_size=32, steps=12, eval_every=3,
                                device="cpu", seed=0, out_dir=str(tmp), num_workers=0, optimizer="adam",
                                label_mapping="frequency"), **kw})
    t = Trainer(cfg, cache=BackboneCache(), splits=small())  # its own backbone: the poison stays here
    real = t.backbone.forward
    calls = {"train": 0}

    def forward(x):
        out = real(x)
        if torch.is_grad_enabled():  # training steps only (evaluation runs without gradients)
            calls["train"] += 1
            if calls["train"] >= nan_from_call:
                return out * float("nan")
        return out
    t.backbone.forward = forward
    return t


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_prompt(tmp_path):
    t = poisoned_trainer(tmp_path, nan_from_call=8)  # steps 1-7 fine, step 8 NaN (evaluations at 3 and 6)
    events = []
    t.callbacks.append(events.append)
    res = t.run()
    assert res.interrupted and res.steps_done < 12
    assert "The loss became nan at step 8" in res.stop_reason and "lower learning rate" in res.stop_reason
    assert events[-1].kind == "end" and events[-1].message == res.stop_reason
    best, last = load_prompt(res.best_path), load_prompt(res.last_path)
    for pf in (best, last):
        assert all(torch.isfinite(p).all() for p in pf.prompter.parameters())
    assert last.meta["metrics"]["step"] == 6  # the checkpoint of the evaluation before the NaN
    assert best.meta["metrics"]["step"] in (3, 6) and res.metrics["test_top1"] > 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert all(r.get("loss") is None or r["loss"] == r["loss"] for r in history)  # no NaN written
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # atomic writes leave no temporaries


def test_a_nan_before_any_evaluation_is_an_error_in_words(tmp_path):
    import pytest

    from visual_prompting import VPError

    t = poisoned_trainer(tmp_path, nan_from_call=1)
    with pytest.raises(VPError, match="loss became nan at step 1.*no prompt to keep"):
        t.run()
