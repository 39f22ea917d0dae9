"""Shared fixtures. Everything here runs offline on 2 CPU cores: tiny random CLIP towers, EfficientNet-Lite0 at
64 px with its real ImageNet weights, and the Fashion-MNIST subset bundled in assets/."""
from __future__ import annotations

import os

import pytest
import torch

from visual_prompting import TrainConfig, load_backbone, train
from visual_prompting.data import DataSplits, load_splits

torch.set_num_threads(int(os.environ.get("VP_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))

EFFNET = "effnet-lite0@64"


@pytest.fixture(scope="session")
def tiny_clip():
    return load_backbone("clip:vp-tiny")


@pytest.fixture(scope="session")
def effnet():
    return load_backbone(EFFNET)


@pytest.fixture(scope="session")
def subset_splits():
    return load_splits("fashion_mnist_subset", image_size=64)


@pytest.fixture(scope="session")
def small():
    """A small fixed part of the bundled subset at 32 px: 200 train, 100 validation, 100 test images."""
    full = load_splits("fashion_mnist_subset", image_size=32)
    g = torch.Generator().manual_seed(0)
    pick = lambda part, n: part.subset(torch.randperm(len(part), generator=g)[:n].sort().values)  # noqa: E731
    return DataSplits(pick(full.train, 200), pick(full.val, 100), pick(full.test, 100), full.class_names, full.name)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, subset_splits):
    """One real, short training run shared by the tests that need a trained prompt."""
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(model=EFFNET, dataset="fashion_mnist_subset", steps=120, batch_size=64,
                      out_dir=str(out), device="cpu", seed=0)
    events = []
    result = train(cfg, callbacks=[events.append])
    return result, events, cfg


@pytest.fixture
def isolated_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of its own, whatever this machine has cached, and a Hub that cannot be reached.

    huggingface_hub reads ``HF_HUB_CACHE`` into ``huggingface_hub.constants`` when it is first imported, so setting
    the variable later changes nothing for code that asks the library: patch the constant too."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    return cache
