"""The app's disk (visual_prompting.workspace): Gradio's cache folder stays within VP_MAX_GRADIO_CACHE_MB, oldest
files first, never a file the page serves, one that is open or one just made; and in a served app it holds while
users upload images."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from visual_prompting.ui import AppConfig, VPApp
from visual_prompting.workspace import Workspace, disk_usage, open_files

KB = 1024


def _file(root: Path, name: str, size: int, age_s: float, now: float) -> Path:
    """``root/<name>/<name>.bin`` (Gradio's layout: a folder per content hash) of ``size`` bytes, ``age_s`` old."""
    path = root / name / f"{name}.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * size)
    for p in (path, path.parent):
        os.utime(p, (now - age_s, now - age_s))
    return path


def test_the_cache_sweep_removes_the_oldest_files_to_its_limit_and_spares_what_is_in_use(tmp_path):
    cfg = AppConfig(work_dir=tmp_path / "work", max_gradio_cache_mb=50 * KB / 2**20, run_ttl_hours=1,
                    cache_grace_s=60)
    cache, now = tmp_path / "gradio", time.time()
    old = [_file(cache, f"old{i}", 10 * KB, 600 + 60 * i, now) for i in range(8)]  # old7 is the oldest
    expired = _file(cache, "expired", 1 * KB, 2 * 3600, now)  # past the time limit (small: not for its size)
    page = _file(cache, "example", 10 * KB, 5000, now)  # an example the page serves
    fresh = _file(cache, "fresh", 10 * KB, 5, now)  # just uploaded: its request has not read it yet
    sending = _file(cache, "sending", 10 * KB, 3000, now)
    with open(sending, "rb"):  # being sent to a user right now
        removed = Workspace(cfg).sweep_cache(cache, keep=[str(page)], now=now)
    # 111 kB in all: the expired file goes, the spared 30 kB stay, and of the old files the two youngest fit
    assert sorted(removed) == sorted(str(p) for p in [expired, *old[2:]])
    assert all(p.exists() for p in (page, fresh, sending, old[0], old[1]))
    assert disk_usage(cache) == 50 * KB <= cfg.max_gradio_cache_mb * 2**20
    # within the limit: nothing more goes; the folders emptied a minute ago do (a folder just emptied may be
    # about to receive a file again: Gradio makes it before it writes)
    assert (cache / "old2").is_dir()
    assert Workspace(cfg).sweep_cache(cache, keep=[str(page)], now=now + 120) == []
    assert sorted(p.name for p in cache.iterdir()) == ["example", "fresh", "old0", "old1", "sending"]


def test_open_files_are_the_ones_this_process_holds(tmp_path):
    path = tmp_path / "held.bin"
    path.write_bytes(b"x")
    with open(path, "rb"):
        assert str(path.resolve()) in open_files()
    assert str(path.resolve()) not in open_files()


def files_named(root: Path, name: str) -> list[str]:
    """The files called ``name`` under ``root``, listed while the sweeper may remove folders (os.walk passes over a
    folder that vanishes; Path.rglob raised FileNotFoundError in CI)."""
    return [os.path.join(folder, name) for folder, _, files in os.walk(root) if name in files]


def test_the_served_app_starts_its_prewarm_once_the_server_runs(tmp_path, monkeypatch):
    """`python app.py` (app.serve) starts VPApp.prewarm as the server starts (its lifespan), not before the page."""
    import app

    vp = VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu"))
    order, build_app = [], app.build_app
    monkeypatch.setattr(app, "build_app", lambda *a, **kw: order.append("page") or build_app(*a, **kw))
    monkeypatch.setattr(vp, "prewarm", lambda **form: order.append("prewarm"))
    demo = app.serve(vp, prewarm=True, prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    try:
        assert order == ["page", "prewarm"]  # the page is built first; the prewarm starts once, with the server
    finally:
        demo.close()
    demo = app.serve(vp, prewarm=False, prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    demo.close()
    assert order == ["page", "prewarm", "page"]  # asked not to: no prewarm


def test_gradio_cache_stays_under_its_limit_while_users_upload(tmp_path, monkeypatch):
    """The app served as `python app.py` serves it (app.serve): 24 uploads of 100 kB each, and the prompted image of
    each, go through Gradio's cache; its sweeper keeps the folder under a 1 MiB limit, and the page's own files
    (examples) stay."""
    import app
    from gradio_client import Client, handle_file

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # this server's own cache folder
    limit_mb = 1.0
    vp = VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu",
                         max_gradio_cache_mb=limit_mb, cache_sweep_s=0.2, cache_grace_s=1))
    demo = app.serve(vp, prewarm=False, prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    try:
        cache = Path(demo.server_app.uploaded_file_dir)
        assert cache == tmp_path / "gradio" and demo.delete_cache == (3600, 24 * 3600)
        client = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "downloads"))
        name, rng, uploaded, peak = next(iter(vp.entries)), np.random.default_rng(0), 0, 0
        for i in range(24):
            image = tmp_path / f"noise{i}.png"
            Image.fromarray(rng.integers(0, 256, (184, 184, 3), dtype=np.uint8)).save(image)
            uploaded += image.stat().st_size
            assert len(client.predict(name, handle_file(str(image)), api_name="/predict")[2]["confidences"]) == 5
            peak = max(peak, disk_usage(cache))
            if i == 0:
                assert len(files_named(cache, "noise0.png")) == 1  # the upload is stored in this folder
        assert uploaded > 2 * limit_mb * 2**20  # more than twice the limit went through the cache
        deadline = time.monotonic() + 20
        while disk_usage(cache) > limit_mb * 2**20 and time.monotonic() < deadline:
            time.sleep(0.2)  # the next sweeps (every 0.2 s; files younger than 1 s are spared)
        assert disk_usage(cache) <= limit_mb * 2**20, (disk_usage(cache), peak)
        assert not files_named(cache, "noise0.png") and files_named(cache, "noise23.png")  # the oldest went first
        kept = app.page_files(demo)
        assert kept and all(Path(p).is_file() for p in kept)  # the examples (and other page files) stay
        example = next(p for p in kept if p.endswith("3_dress.png"))
        assert client.predict(name, handle_file(example), api_name="/predict")[2]["label"]
    finally:
        demo.close()
