"""benchmarks/report.py: the READMEs' numbers are written from the results files, and --check bites."""
from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("benchmarks_report", ROOT / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readmes_match_the_results_files(report):
    assert report.check() == []


def test_every_readme_number_comes_from_a_block(report):
    text = (ROOT / "README.md").read_text()
    assert report.hand_typed(text) == []
    assert report.hand_typed(text + "\nA training step takes 0.42 s here.\n") == ["0.42 s"]
    assert report.hand_typed(text.replace("(padding works best)", "(padding is 3.5 points better)"))


def test_a_changed_result_or_readme_number_fails_the_check(report, monkeypatch):
    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert report.render(text) == text
    acc = json.loads((ROOT / "benchmarks/results/accuracy.json").read_text())
    lp = next(i for i, r in enumerate(acc["rows"]) if r["method"] == "linear_probe")
    shown = f"{100 * acc['rows'][lp]['test_top1']:.1f}"  # the linear probe, as the table prints it
    assert f"| linear_probe | {shown}" in text
    assert report.render(text.replace(f"| linear_probe | {shown}", "| linear_probe | 99.9")) == text  # rewritten back
    changed = copy.deepcopy(acc)
    changed["rows"][lp]["test_top1"] = 0.999
    real = report.load
    monkeypatch.setattr(report, "load", lambda rel: changed if rel.endswith("results/accuracy.json") else real(rel))
    assert report.render(text) != text  # a result that moves makes the README differ


def test_stale_lists_results_whose_measured_code_changed(report, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split()[0]
    fake = [("now", "x.json", "benchmarks/speed.py", {"git_commit": head, "git_dirty": False}),
            ("old", "y.json", "benchmarks/speed.py", {"git_commit": first, "git_dirty": False}),
            ("none", "z.json", "benchmarks/speed.py", {"git_commit": None}),
            ("missing", "w.json", "benchmarks/speed.py", None),
            # a lent machine's copy: its git reports an old commit, its launcher declared the commit it copied
            ("copy", "v.json", "benchmarks/speed.py", {"git_commit": first, "git_dirty": True,
                                                       "source_commit_declared": head}),
            ("copydirty", "u.json", "benchmarks/speed.py", {"git_commit": head, "source_commit_declared": f"{head} (dirty)"})]
    monkeypatch.setattr(report, "entries", lambda: fake)
    lines = report.stale()
    assert not any(" now " in ln or " copy " in ln for ln in lines)
    assert any(ln.startswith("STALE?  copydirty") and "dirty tree" in ln for ln in lines)
    assert any(ln.startswith("STALE   old") and "benchmarks/speed.py" in ln for ln in lines)
    assert any(ln.startswith("STALE?  none") for ln in lines) and any(ln.startswith("MISSING missing") for ln in lines)


def test_stale_is_a_warning_and_check_fails_on_a_difference(report, monkeypatch, capsys):
    assert report.main(["--stale"]) == 0 and capsys.readouterr().out.strip()  # CI prints it, never fails on it
    assert report.main(["--check"]) == 0
    monkeypatch.setattr(report, "check", lambda: ["README.md: differs"])
    assert report.main(["--check"]) == 1
