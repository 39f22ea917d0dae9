"""Limits an upload must respect (zip size, file count, members outside the folder), loads shared between threads
(the app serves several users from one BackboneCache), and the app's limits per user and in total (AppConfig)."""
from __future__ import annotations

import io
import os
import re
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visual_prompting import VPError
from visual_prompting.data import extract_zip_dataset
from visual_prompting.ui import UPLOADED_DATASET, AppConfig, VPApp, limits_table
from visual_prompting.workspace import disk_usage

from conftest import EFFNET


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("member", ["/etc/vp-test-absolute.txt", "\\windows\\vp-test.txt", "a/../../outside.txt"])
def test_zip_members_outside_the_folder_are_refused_and_nothing_is_written(tmp_path, member):
    archive = _zip(tmp_path / "evil.zip", {"cls/ok.png": b"x", member: b"x"})
    dest = tmp_path / "out"
    with pytest.raises(VPError, match="outside the dataset folder"):
        extract_zip_dataset(archive, dest)
    assert not dest.exists()  # checked before anything is extracted


def test_zip_limits_on_files_and_unpacked_bytes(tmp_path):
    archive = _zip(tmp_path / "big.zip", {f"c{i % 2}/{i}.png": b"\0" * 1000 for i in range(6)})
    with pytest.raises(VPError, match="holds 6 files; the limit is 5"):
        extract_zip_dataset(archive, tmp_path / "a", max_files=5)
    with pytest.raises(VPError, match="unpacks to more than"):
        extract_zip_dataset(archive, tmp_path / "b", max_bytes=5999)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    out = extract_zip_dataset(archive, tmp_path / "c", max_files=6, max_bytes=6000)  # at the limits: accepted
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["c0", "c1"] and out == str(tmp_path / "c")


def test_concurrent_loads_of_one_backbone_load_it_once(monkeypatch):
    from visual_prompting import backbones

    calls = []

    def slow_load(spec, device="cpu", fast=True):
        calls.append(spec)
        time.sleep(0.3)  # long enough for every thread to ask while the first load runs
        return object()

    monkeypatch.setattr(backbones, "load_backbone", slow_load)
    cache = backbones.BackboneCache()
    got, barrier = [], threading.Barrier(8)

    def ask(spec):
        barrier.wait()
        got.append((spec, cache.get(spec)))

    threads = [threading.Thread(target=ask, args=("a" if i % 4 else "b",)) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == ["a", "b"]  # one load per backbone, however many asked at once
    assert len({id(b) for s, b in got if s == "a"}) == 1 and len({id(b) for s, b in got if s == "b"}) == 1
    assert time.monotonic() - t0 < 0.55  # two different backbones load side by side, not one after the other


# -- the app's limits (AppConfig; README "Limits"), each with a small value so the tests stay fast -----------------



def _app(tmp_path, **limits) -> VPApp:
    return VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu", **limits))


def _png(path, w, h):
    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def _dataset_zip(path, per_class=6, extra: dict | None = None):
    members = {}
    for c in range(2):
        for i in range(per_class):
            buf = io.BytesIO()
            Image.new("RGB", (12, 12), (40 * i, 100 * c, 0)).save(buf, format="PNG")
            members[f"set/c{c}/{i}.png"] = buf.getvalue()
    return str(_zip(path, {**members, **(extra or {})}))


def _start(vp, session, upload=None, steps=2):
    cfg = vp.train_config(session, model=EFFNET, dataset=UPLOADED_DATASET if upload else "fashion_mnist_subset",
                          upload=upload, steps=steps, batch_size=16)
    return cfg, vp.train_stream(cfg, session, min_interval=0)


def test_upload_size_limit_for_images_prompts_and_datasets(tmp_path):
    vp = _app(tmp_path, max_upload_mb=0.01)  # 10 KiB
    name = next(iter(vp.entries))
    small, big = _png(tmp_path / "small.png", 8, 8), _png(tmp_path / "big.png", 100, 100)  # ~30 KB of noise
    assert len(vp.predict(name, None, small)[2]) == 5
    with pytest.raises(VPError, match=r"uploaded image big\.png is 0\.0\d+ MiB; the limit is 0\.01 MiB"):
        vp.predict(name, None, big)
    with pytest.raises(VPError, match=r"uploaded prompt file .* the limit is 0\.01 MiB"):
        vp.predict(None, vp.entries[name]["path"], small)  # a zoo prompt (~ 30 KB) sent as an upload
    archive = _dataset_zip(tmp_path / "d.zip", extra={"set/c0/noise.bin": np.random.default_rng(1).bytes(20000)})
    with pytest.raises(VPError, match=r"uploaded dataset d\.zip is .* the limit is 0\.01 MiB"):
        _start(vp, "s", archive)
    assert list((tmp_path / "work" / "s").glob("run-*")) == []


def test_pixel_limit(tmp_path):
    vp = _app(tmp_path, max_image_mp=0.001)  # 1000 pixels
    name = next(iter(vp.entries))
    assert len(vp.predict(name, None, _png(tmp_path / "ok.png", 40, 25))[2]) == 5
    with pytest.raises(VPError, match=r"40 x 26 pixels \(0 MP\); the limit is 0\.001 MP"):
        vp.predict(name, None, _png(tmp_path / "over.png", 40, 26))
    with pytest.raises(VPError, match=r"the limit is 0\.001 MP"):
        vp.predict(name, None, Image.new("RGB", (40, 26)))  # a PIL image from another front
    with pytest.raises(VPError, match=r"the limit is 0\.001 MP"):
        vp.predict(name, None, np.zeros((26, 40, 3), np.uint8))


def test_dataset_size_and_file_count_limits(tmp_path):
    vp = _app(tmp_path, max_dataset_mb=0.01, max_dataset_files=12)  # 10 KiB
    with pytest.raises(VPError, match=r"holds 13 files; the limit is 12"):
        _start(vp, "s", _dataset_zip(tmp_path / "many.zip", extra={"set/c0/x.png": b"x"}))
    with pytest.raises(VPError, match=r"unpacks to more than the 0\.01 MiB allowed"):
        _start(vp, "s", _dataset_zip(tmp_path / "big.zip", per_class=5, extra={"set/c0/zeros.bin": b"\0" * 20000}))
    assert list((tmp_path / "work" / "s").glob("run-*")) == []
    cfg, stream = _start(vp, "s", _dataset_zip(tmp_path / "ok.zip"))  # within both limits: trains
    assert list(stream)[-1].status.startswith("Done.")
    assert not (Path(cfg.out_dir) / "data").exists() and (Path(cfg.out_dir) / "best.safetensors").is_file()


def test_concurrent_runs_in_total_and_per_user(tmp_path):
    vp = _app(tmp_path, max_runs=1)
    data = _dataset_zip(tmp_path / "d.zip")  # small: each run starts at once
    cfg, a = _start(vp, "a", data, steps=400)
    assert next(a).fraction == 0.0  # a's run is going (its RUNNING file is fresh)
    _, same_user = _start(vp, "a", data)
    with pytest.raises(VPError, match="already going in this session"):
        next(same_user)
    cfg_b, b = _start(vp, "b", data)
    with pytest.raises(VPError, match=r"1 training run\(s\) are going now, the most this app runs at once"):
        next(b)
    assert not Path(cfg_b.out_dir).exists()  # the refused run's folder is gone
    assert vp.workspace.active_runs() == ["a"]
    a.close()  # a's user left: the run stops
    assert vp.workspace.active_runs() == []
    _, b = _start(vp, "b", data)
    assert list(b)[-1].status.startswith("Done.")


def test_run_folders_are_removed_after_the_time_limit_and_the_work_folder_stays_bounded(tmp_path):
    vp = _app(tmp_path, run_ttl_hours=1, max_work_disk_mb=0.05)  # ~ 52 kB for everything
    work, now = tmp_path / "work", time.time()

    def run(session, name, age_h, size):
        d = work / session / name
        d.mkdir(parents=True)
        (d / "best.safetensors").write_bytes(b"\0" * size)
        os.utime(d, (now - age_h * 3600, now - age_h * 3600))
        return d

    old = run("u1", "run-old", 2, 100)
    recent = [run("u2", f"run-{i}", 0.5 - i * 0.1, 15000) for i in range(4)]  # 60 kB: over the bound
    going = run("u3", "run-going", 5, 100)
    (work / "u3" / "RUNNING").touch()  # u3 trains right now: nothing of u3 is touched
    removed = vp.workspace.sweep(now)
    assert str(old) in removed and not old.exists()  # past the time limit
    assert not recent[0].exists() and all(r.exists() for r in recent[1:])  # the oldest, until under the bound
    assert going.exists() and disk_usage(work) <= 0.05 * 2**20


def test_a_users_disk_share_and_the_total_bound_refuse_an_upload_in_words(tmp_path):
    vp = _app(tmp_path, max_user_disk_mb=0.02, max_work_disk_mb=0.04)
    archive = _dataset_zip(tmp_path / "d.zip")  # ~ 1 kB unpacked
    mine = tmp_path / "work" / "me" / "run-earlier"
    mine.mkdir(parents=True)
    (mine / "best.safetensors").write_bytes(b"\0" * 20500)
    (tmp_path / "work" / "me" / "RUNNING").touch()  # keeps the sweep off it (and marks a run going)
    with pytest.raises(VPError, match=r"more than is left of your 0\.02 MiB"):
        vp.train_config("me", model=EFFNET, dataset=UPLOADED_DATASET, upload=archive, steps=2, batch_size=16)
    other = tmp_path / "work" / "other" / "run-x"
    other.mkdir(parents=True)
    (other / "big.bin").write_bytes(b"\0" * 21500)  # the two users together: over the bound
    (tmp_path / "work" / "other" / "RUNNING").touch()
    with pytest.raises(VPError, match=r"The app's disk is full right now \(0\.04 MiB for all users\)"):
        vp.train_config("new", model=EFFNET, dataset=UPLOADED_DATASET, upload=archive, steps=2, batch_size=16)
    assert list((tmp_path / "work" / "new").glob("run-*")) == []


def test_limits_come_from_the_environment_and_are_all_in_the_readme(tmp_path):
    cfg = AppConfig.from_env({"VP_MAX_UPLOAD_MB": "5", "VP_MAX_RUNS": "3", "VP_MAX_MODELS": "99"}, work_dir=tmp_path)
    assert cfg.max_upload_mb == 5.0 and cfg.max_runs == 3 and isinstance(cfg.max_runs, int)
    assert cfg.max_models == AppConfig().max_models  # not a limit: not read from the environment
    assert AppConfig.from_env({"VP_MAX_RUNS": "3"}, max_runs=1).max_runs == 1  # an explicit value wins
    for bad in ("many", "0", "-1", "nan"):
        with pytest.raises(VPError, match=r"VP_MAX_STEPS=.* is not a valid limit"):
            AppConfig.from_env({"VP_MAX_STEPS": bad})
    # the README's Limits table, cell by cell: one row per limit (its variable, its default, what it bounds)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("### Limits", 1)[1].split("\n\n| Variable | Default | Bounds |\n|---|---|---|\n", 1)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.split("\n\n", 1)[0].splitlines()]
    assert all(len(r) == 3 for r in rows), rows
    cells = {var: (value, what) for var, value, what in rows}
    limits = limits_table()
    assert len(cells) == len(rows) and sorted(cells) == sorted(f"`{var}`" for _, var, _, _ in limits), sorted(cells)
    for _, var, default, what in limits:
        value, bounds = cells[f"`{var}`"]
        assert re.fullmatch(r"\d{1,3}(,\d{3})*(\.\d+)?|\d+(\.\d+)?", value), (var, value)
        assert float(value.replace(",", "")) == default, (var, value, default)
        assert bounds == what, (var, bounds, what)
