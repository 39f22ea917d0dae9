"""Shared fixtures. Everything here runs offline on 2 CPU cores: tiny random CLIP towers, EfficientNet-Lite0 at
64 px with its real ImageNet weights, and the Fashion-MNIST subset bundled in assets/."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from filelock import FileLock

from visual_prompting import TrainConfig, load_backbone, train
from visual_prompting.training import TrainEvent, TrainResult
from visual_prompting.data import DataSplits, load_splits

# one torch thread per pytest-xdist worker (the workers share the cores), else up to 2
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
torch.set_num_threads(int(os.environ.get("VP_TEST_THREADS", max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))))

EFFNET = "effnet-lite0@64"


def with_metadata(src, out, edit) -> str:
    """A copy of the prompt file ``src`` at ``out`` whose JSON metadata ``edit`` has changed in place (its tensors and
    header kept): a file as a user, or an attacker, could upload it. Returns the copy's path."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["metadata"])
    edit(meta)
    save_file(tensors, str(out), metadata={**header, "metadata": json.dumps(meta)})
    return str(out)


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
def trained(tmp_path_factory):
    """One real, short training run shared by the tests that need a trained prompt: (result, events, config).

    Under pytest-xdist the workers share it: the first to need it trains (the others wait on a lock) and writes
    the result and events beside the run; the others read them (the events without their prompt snapshots)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    out = root / "trained-run"
    # label mappings counted on 1,000 of the 2,700 train images, 5 evaluations: the run's time goes to its steps
    cfg = TrainConfig(model=EFFNET, dataset="fashion_mnist_subset", steps=120, batch_size=64, mapping_samples=1000,
                      eval_every=24, out_dir=str(out), device="cpu", seed=0)
    record = root / "trained-run.json"
    with FileLock(str(root / "trained-run.lock")):
        if record.is_file():
            saved = json.loads(record.read_text())
            return TrainResult(**saved["result"]), [TrainEvent(**e) for e in saved["events"]], cfg
        events = []
        result = train(cfg, callbacks=[events.append])
        plain = [{**dataclasses.asdict(e), "prompt": None} for e in events]
        record.write_text(json.dumps({"result": dataclasses.asdict(result), "events": plain}))
    return result, events, cfg


@pytest.fixture
def cut_and_resume(small, tmp_path):
    """``run(cfg, cache)``: a training run whole (``ref``), and the same run stopped after ``at`` steps and resumed
    (``again``), both on ``small``; ``cfg(out, **overrides)`` makes a run's TrainConfig. Returns ``(ref, again)``,
    whose last prompts and metrics a test compares."""
    from visual_prompting.training import Trainer

    def run(cfg, cache, at: int = 5):
        ref = Trainer(cfg(tmp_path / "ref"), splits=small, cache=cache).run()
        t = Trainer(cfg(tmp_path / "cut"), splits=small, cache=cache, should_stop=lambda: t.step >= at)
        assert t.run().steps_done == at
        return ref, Trainer(cfg(tmp_path / "cut", resume=True), splits=small, cache=cache).run()
    return run


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


@pytest.fixture
def isolated_hf(tmp_path, monkeypatch):
    """Own Hugging Face cache, online mode, no proxy for 127.0.0.1 and a Hub that cannot be reached (a test that
    needs one asks for ``hub``): nothing can reach the real Hub."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    return cache


@pytest.fixture
def hub(isolated_hf, monkeypatch):
    """The stand-in Hub (``tests/_fake_hub.py``) on 127.0.0.1, as ``HF_ENDPOINT``."""
    from _fake_hub import FakeHub

    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    fake.stop()


# pytest-xdist hands each worker whole files in collection order: the longest files first (they would otherwise
# finish last, alone), and the files that only read the shared trained run last (by then it is written, and no
# worker waits on its lock)
FIRST = ["test_kill_resume.py", "test_app.py", "test_app_server.py", "test_benchmarks_smoke.py", "test_zoo.py",
         "test_bad_inputs.py", "test_distributed.py", "test_recipes.py"]
LAST = ["test_cli.py", "test_png_roundtrip.py", "test_training.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return FIRST.index(name) if name in FIRST else len(FIRST) + 1 + LAST.index(name) if name in LAST else len(FIRST)
    items.sort(key=rank)  # stable: the order within a file is kept
