"""Many users at once: Gradio's cache files are never seen half written, and the app under a short load test
(benchmarks/load.py against a real ``python app.py``) answers every request while one user trains."""
from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from visual_prompting.app_files import (
    _MARK,
    GRADIO_CACHE_WRITERS,
    _atomic,
    atomic_gradio_cache_writes,
)

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "examples" / "3_dress.png"


def race(write, read, seconds: float = 1.0) -> tuple[int, list[str], list[str]]:
    """Two threads write while two read, for ``seconds``: (reads, failures of the reads, failures of the writes).
    A writer that fails goes on writing (a crashed writer would leave the readers an old, complete file)."""
    stop = time.monotonic() + seconds
    reads, failures, write_failures = [0], [], []

    def loop(step, failed):
        while time.monotonic() < stop:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - a failure is what this counts
                failed.append(repr(e))

    def read_once():
        read()
        reads[0] += 1

    threads = [threading.Thread(target=loop, args=args) for args in
               ((write, write_failures), (write, write_failures), (read_once, failures), (read_once, failures))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reads[0], failures, write_failures


def wrap_depth(fn) -> int:
    """How many times ``fn`` is our atomic wrapper around Gradio's writer (the chain of ``__wrapped__``)."""
    depth = 0
    while fn is not None:
        depth += bool(getattr(fn, _MARK, False))
        fn = getattr(fn, "__wrapped__", None)
    return depth


def test_a_writer_made_atomic_is_never_seen_half_written(tmp_path):
    """The wrapper itself, on a writer that writes in place in two halves (as Path.write_bytes can be seen):
    read alone it fails, wrapped it never does, and it lands where the writer would have put it."""
    data = bytes(range(256)) * 4096

    def save_in_place(data: bytes, cache_dir: str) -> str:
        path = Path(cache_dir) / "same" / "file.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.0005)
            f.write(data[len(data) // 2:])
        return str(path.resolve())

    def check(path):
        if Path(path).read_bytes() != data:
            raise ValueError("partial file")

    raw = save_in_place(data, str(tmp_path / "raw"))
    _, failures, write_failures = race(lambda: save_in_place(data, str(tmp_path / "raw")), lambda: check(raw))
    assert failures, "the in-place writer should be caught half way (else this test shows nothing)"
    assert not write_failures, write_failures[:3]

    atomic = _atomic(save_in_place)
    path = atomic(data, cache_dir=str(tmp_path / "safe"))
    assert path == str((tmp_path / "safe" / "same" / "file.bin").resolve())
    reads, failures, write_failures = race(lambda: atomic(data, str(tmp_path / "safe")), lambda: check(path))
    assert reads > 0 and not failures and not write_failures, (failures[:3], write_failures[:3])
    assert [p.name for p in (tmp_path / "safe").iterdir()] == ["same"]  # no staging folder left behind


def test_gradio_image_cache_writes_are_atomic_with_the_same_path_and_bytes(tmp_path):
    """Gradio's save_pil_to_cache, as the app installs it: same path and bytes as Gradio's own, and many writers of
    the same picture never leave a reader a file it cannot decode (unwrapped, nearly every read failed here)."""
    from gradio import processing_utils

    assert "save_pil_to_cache" in atomic_gradio_cache_writes()
    installed = {name: getattr(processing_utils, name, None) for name in GRADIO_CACHE_WRITERS}
    assert atomic_gradio_cache_writes() == atomic_gradio_cache_writes()  # idempotent: wrapped once
    for name, fn in installed.items():
        if fn is not None:
            assert getattr(processing_utils, name) is fn, f"{name} was wrapped again"
            assert wrap_depth(fn) == 1, (name, wrap_depth(fn))
    img = Image.open(EXAMPLE).convert("RGB")
    original = processing_utils.save_pil_to_cache.__wrapped__
    mine = processing_utils.save_pil_to_cache(img, str(tmp_path / "a"), name="3_dress", format="png")
    theirs = original(img, str(tmp_path / "b"), name="3_dress", format="png")
    assert Path(mine).relative_to(tmp_path / "a") == Path(theirs).relative_to(tmp_path / "b")
    assert Path(mine).read_bytes() == Path(theirs).read_bytes()

    def read():
        with Image.open(mine) as im:
            im.load()

    reads, failures, write_failures = race(lambda: processing_utils.save_pil_to_cache(img, str(tmp_path / "a"),
                                                                                      name="3_dress", format="png"),
                                           read)
    assert reads > 0 and not failures and not write_failures, (failures[:3], write_failures[:3])


def test_load_several_users_same_files_while_one_trains(tmp_path):
    """benchmarks/load.py, short: 5 users for 10 s against ``python app.py``, all sending the same examples at the
    same moments (and their own images, and /inspect), while one more user trains on an uploaded .zip. Every
    request answers in full and the run finishes. (Before the fix, 8 users for 20 s failed 11 of 160 requests.)"""
    pytest.importorskip("gradio_client")
    spec = importlib.util.spec_from_file_location("benchmarks_load", BENCH / "load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    doc = load.main(["--users", "5", "--seconds", "10", "--train-upload", "--train-steps", "4", "--train-batch", "8",
                     "--train-timeout", "120", "--threads", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "load.json").read_text())["levels"][0]["requests"] == doc["levels"][0]["requests"]
    assert (tmp_path / "load.md").is_file() and (tmp_path / "load.png").is_file()
    lv = doc["levels"][0]
    # every user makes its first request (the same example as every other user) whatever the machine's load
    assert lv["users"] == 5 and lv["by_kind"]["example"]["requests"] >= 5, lv["by_kind"]
    assert lv["failures"] == 0, (lv["failure_kinds"], lv["failure_examples"], lv["by_kind"])
    assert lv["training"]["finished"], lv["training"]
    assert not lv["server_log_problems"], lv["server_log_problems"]
    assert doc["goal_met"] and doc["provenance"]["recorded"]
    assert 0 < lv["latency"]["p50_s"] <= lv["latency"]["p95_s"] <= lv["latency"]["max_s"]
