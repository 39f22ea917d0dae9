"""Limits an upload must respect (zip size, file count, members outside the folder) and loads shared between
threads (the app serves several users from one BackboneCache)."""
from __future__ import annotations

import threading
import time
import zipfile

import pytest

from visual_prompting import VPError
from visual_prompting.data import extract_zip_dataset


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

    def slow_load(spec, device="cpu"):
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
