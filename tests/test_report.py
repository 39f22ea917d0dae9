"""benchmarks/report.py: the READMEs' numbers are written from the results files, and --check bites."""
from __future__ import annotations

import copy
import importlib.util
import json
import re
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


def head_and_first_commit() -> tuple[str, str]:
    """This repository's HEAD and its first commit: a result at HEAD is fresh, one at the first commit stale."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.split()[0]  # noqa: E731
    return git("rev-parse", "HEAD"), git("rev-list", "--max-parents=0", "HEAD")


def test_readmes_match_the_results_files(report):
    assert report.check() == []


def test_every_readme_number_comes_from_a_block(report):
    text = (ROOT / "README.md").read_text()
    assert report.hand_typed(text) == []
    assert report.hand_typed(text + "\nA training step takes 0.42 s here.\n") == ["0.42 s"]
    phrase = "the kind of prompt people come to look at"  # a sentence of the zoo's paragraph, outside the blocks
    assert phrase in text and report.hand_typed(text.replace(phrase, "a prompt 3.5 points better"))


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
    head, first = head_and_first_commit()
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
    # training.py, measured by speed.py, changed since the first commit (speed.py itself, added later, is not counted)
    assert any(ln.startswith("STALE   old") and "visual_prompting/training.py" in ln for ln in lines)
    assert any(ln.startswith("STALE?  none") for ln in lines) and any(ln.startswith("MISSING missing") for ln in lines)


def test_a_zoo_entry_trained_at_an_older_commit_is_stale_under_a_fresh_index(report, monkeypatch):
    """`build_zoo.py --prompts NAME` (or --index-only) writes the index's provenance afresh; an entry it did not
    train keeps the provenance of its own training run, and --stale judges each entry by that."""
    head, first = head_and_first_commit()
    at = lambda c: {"git_commit": c, "git_dirty": False}  # noqa: E731
    cmd = "python -m visual_prompting train --recipe live --steps 1000"
    index = {"version": 1, "provenance": {**at(head), "recorded": True},
             "prompts": [{"name": "fresh", "command": cmd, "provenance": at(head)},
                         {"name": "old", "command": cmd, "provenance": at(first)},
                         {"name": "untraced", "command": cmd}]}
    real = report.load
    monkeypatch.setattr(report, "load", lambda rel: index if rel == "prompts_zoo/index.json" else real(rel))
    lines = [ln for ln in report.stale() if " zoo" in ln[:12]]
    assert not any(ln.split(" (")[0].endswith("zoo") or "[fresh]" in ln for ln in lines)  # the index, the fresh entry
    assert any(ln.startswith("STALE   zoo [old]") for ln in lines)
    assert any(ln.startswith("STALE?  zoo [untraced]") and "no commit recorded" in ln for ln in lines)


def test_a_recipes_edit_stales_only_the_results_that_ran_a_changed_recipe(report, monkeypatch):
    """recipes.py holds every recipe: an edit of one (or of a description) leaves a result that ran others current,
    judged by each recipe's settings at the result's commit and at HEAD; a result whose recipes are unknown is judged
    by the file, as before."""
    head, _ = head_and_first_commit()
    first = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", report.RECIPES_PY], cwd=ROOT,
                           capture_output=True, text=True).stdout.split()[-1]  # the commit that added recipes.py
    prov = {"git_commit": first, "git_dirty": False}  # recipes.py changed since
    fake = [("other", "x.json", "s.py", prov, {"live"}), ("changed", "y.json", "s.py", prov, {"fast_pad"}),
            ("norecipe", "z.json", "s.py", prov, set()), ("unknown", "w.json", "s.py", prov, None)]
    settings = {first: {"live": {"lr": 0.03}, "fast_pad": {"prompt_fraction": 0.25}},
                head: {"live": {"lr": 0.03}, "fast_pad": {"prompt_fraction": 0.3}, "new": {}}}
    monkeypatch.setattr(report, "entries", lambda: fake)
    monkeypatch.setattr(report, "measures", lambda script: [report.RECIPES_PY])
    monkeypatch.setattr(report, "recipes_at", lambda commit: settings[commit])
    stale = {ln.split()[1] for ln in report.stale() if ln.startswith("STALE")}
    assert stale == {"changed", "unknown"}
    settings[first] = None  # the old copy could not be read: the file decides
    assert {ln.split()[1] for ln in report.stale() if ln.startswith("STALE")} == {"other", "changed", "unknown"}


def test_comments_docstrings_and_row_labels_are_not_measured_code(report):
    base = '''"""Module doc."""
ROWS = [Row("a", "prompt", "pad prompt, 24 px", {"prompter": "pad"}, recipe="fast_pad", default=True,
            compared_with=(("b", "a vs b"),))]


def f(x):
    """Doc."""
    return x + 1  # one
'''
    tree = report.code_parts(base)
    relabelled = (base.replace("Module doc.", "Other doc.").replace("pad prompt, 24 px", "pad prompt, 29 px")
                  .replace("default=True", "default=False").replace('"a vs b"', '"a against b"')
                  .replace("# one", "# two").replace('"""Doc."""', '"""Other."""'))
    assert report.code_parts(relabelled) == tree
    for changed in (base.replace("x + 1", "x + 2"), base.replace('"prompter": "pad"', '"prompter": "full"'),
                    base.replace('recipe="fast_pad"', 'recipe="live"'), base.replace('Row("a"', 'Row("c"')):
        assert report.code_parts(changed) != tree
    assert report.code_parts("def (:") is None
    # recipes.py: a recipe's description labels it; its name and settings are measured
    recipe = 'register_recipe(Recipe("live", "fast at lr 0.03", {**FAST, "lr": 0.03}))\n'
    assert report.code_parts(recipe.replace("fast at lr 0.03", "the default")) == report.code_parts(recipe)
    for changed in (recipe.replace('"lr": 0.03', '"lr": 0.05'), recipe.replace('"live"', '"fast"')):
        assert report.code_parts(changed) != report.code_parts(recipe)
    head, _ = head_and_first_commit()
    assert report.code_of(head, "benchmarks/accuracy.py") == report.code_parts(
        subprocess.run(["git", "show", "HEAD:benchmarks/accuracy.py"], cwd=ROOT, capture_output=True, text=True).stdout)
    assert "recipe_live" in report.code_of(head, "benchmarks/accuracy.py")[1]
    assert report.code_of(head, "no/such/file.py") is None


def test_an_accuracy_row_is_judged_by_its_own_definition(report, monkeypatch):
    """Adding, removing or changing another row leaves a row current; changing its own settings, or any other code
    of the file, does not; a result not judged row by row (rows=None) sees every row."""
    src = {"old": '''ROWS = [Row("a", "prompt", "x", {"lr": 1}), Row("b", "prompt", "y", {"lr": 2})]
STEPS = 10
'''}
    src["added"] = src["old"].replace('{"lr": 2})]', '{"lr": 2}), Row("c", "prompt", "z")]')
    src["b_changed"] = src["old"].replace('{"lr": 2}', '{"lr": 3}')
    src["a_changed"] = src["old"].replace('{"lr": 1}', '{"lr": 9}')
    src["code"] = src["old"].replace("STEPS = 10", "STEPS = 11")
    path = "benchmarks/accuracy.py"
    head = {"now": None}
    monkeypatch.setattr(report, "git", lambda *a: (0, path) if a[0] == "diff" else (0, head["now"]))
    monkeypatch.setattr(report, "code_of", lambda commit, p, renders=(): report.code_parts(src[commit], renders))
    monkeypatch.setattr(report, "renders_of", lambda commit, p: ())
    for now, stale_for_a, stale_for_all in (("added", False, True), ("b_changed", False, True),
                                            ("a_changed", True, True), ("code", True, True), ("old", False, False)):
        head["now"] = now
        assert (report.code_changed("old", [path], None, ["a"]) == [path]) is stale_for_a, now
        assert (report.code_changed("old", [path], None, None) == [path]) is stale_for_all, now
    # a measured file without rows (training.py) whose docstring alone changed: current for every result
    src.update(doc_old='def f():\n    """doc"""\n    return 1\n', doc_new='def f():\n    """other"""\n    return 1\n',
               code_new='def f():\n    """doc"""\n    return 2\n')
    path = "visual_prompting/training.py"
    for now, stale in (("doc_new", False), ("code_new", True)):
        head["now"] = now
        assert (report.code_changed("doc_old", [path], None, ["a"]) == [path]) is stale, now
        assert (report.code_changed("doc_old", [path], None, None) == [path]) is stale, now


def test_a_measures_list_and_a_file_added_after_the_result_do_not_stale_it(report, monkeypatch):
    """A script's MEASURES only names what the check reads: listing one more file changes no number. A measured file
    that did not exist at the result's commit did not run in it; any other edit still stales."""
    src = {"old": 'MEASURES = ["benchmarks/accuracy.py"]\nSTEPS = 10\n'}
    src["listed"] = src["old"].replace('"]', '", "visual_prompting/spectral.py"]')
    src["code"] = src["listed"].replace("STEPS = 10", "STEPS = 11")
    path, new = "benchmarks/accuracy.py", "visual_prompting/spectral.py"
    head = {"now": None}

    def source(commit, p):  # the new module is missing at the result's commit, as git would say
        return src.get(commit) if p == path else None if commit == "old" else "X = 1\n"

    def git(*a):
        if a[0] == "diff":
            return 0, f"{path}\n{new}"
        if a[0] == "cat-file":  # "-e COMMIT:PATH": whether the file exists there
            commit, p = a[-1].split(":", 1)
            return (0, "") if source(commit, p) is not None else (128, "")
        return 0, head["now"]

    monkeypatch.setattr(report, "git", git)
    monkeypatch.setattr(report, "code_of", lambda commit, p, renders=(): None if source(commit, p) is None
                        else report.code_parts(source(commit, p), renders))
    monkeypatch.setattr(report, "renders_of", lambda commit, p: ())
    for now, stale in (("listed", []), ("code", [path]), ("old", [])):
        head["now"] = now
        assert report.code_changed("old", [path, new], None, None) == stale, now
    assert report.code_parts(src["listed"]) == report.code_parts(src["old"])


def test_recipes_at_reads_a_commits_recipes(report):
    from visual_prompting.recipes import RECIPES

    head, _ = head_and_first_commit()
    got = report.recipes_at(head)
    committed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", report.RECIPES_PY], cwd=ROOT).returncode == 0
    if committed:  # the working tree's recipes are HEAD's
        assert got == json.loads(json.dumps({k: v.settings for k, v in RECIPES.items()}, sort_keys=True))
    assert got is not None and got["live"]["lr"] == pytest.approx(0.03)
    assert report.recipes_at("0" * 40) is None  # not a commit


def test_a_merged_accuracy_table_is_judged_and_stamped_row_by_row(report, monkeypatch):
    """A table merged from runs at several commits: each commit's rows are judged apart (the file's own provenance
    is only its first run's), and the README names every commit with its rows instead of one run's command."""
    head, first = head_and_first_commit()
    real = report.load
    doc = copy.deepcopy(real("benchmarks/results/accuracy.json"))
    doc["provenance"] = {**report.provenance_of(doc), "git_commit": head, "git_dirty": False}
    for r in doc["rows"]:
        r["provenance"] = dict(doc["provenance"])  # every row from the file's one run
        for s in r.get("per_seed") or []:
            s.pop("provenance", None)
    monkeypatch.setattr(report, "load", lambda rel: doc if rel == "benchmarks/results/accuracy.json" else real(rel))
    fresh = [ln for ln in report.stale() if "(benchmarks/results/accuracy.json" in ln]
    assert fresh == [] and doc["provenance"]["command"] in report.b_accuracy_cpu()  # one run: its command shown
    doc["rows"][0]["provenance"]["command"] += " --rows other"  # two runs at one commit: both named, not one command
    block = report.b_accuracy_cpu()
    assert "rows from 2 runs at 1 commit," in block and doc["provenance"]["command"] not in block

    old = next(r for r in doc["rows"] if r["method"] == "linear_probe")  # deterministic: no seeds
    old["provenance"]["git_commit"] = first
    seeded = next(r for r in doc["rows"] if len(r.get("per_seed") or []) == 3)  # its seeds from two runs
    for s in seeded["per_seed"]:
        s["provenance"] = {**seeded["provenance"], "git_commit": first if s["seed"] == 1 else head}
    lines = [ln for ln in report.stale() if "(benchmarks/results/accuracy.json" in ln]
    assert len(lines) == 1 and lines[0].startswith("STALE   accuracy [") and first[:10] in lines[0]
    assert sorted(lines[0].split("[")[1].split("]")[0].split(", ")) == sorted(["linear_probe", seeded["method"]])
    block = report.b_accuracy_cpu()
    at = {ln.split(",")[0]: ln for ln in block.splitlines() if ln.startswith("- commit ")}
    assert set(at) == {f"- commit {first[:10]}", f"- commit {head[:10]}"}
    at_first, at_head = at[f"- commit {first[:10]}"], at[f"- commit {head[:10]}"]
    assert f"{seeded['method']} (seed 1)" in at_first and "linear_probe" in at_first
    assert f"{seeded['method']} (seeds 0,2)" in at_head and "linear_probe" not in at_head
    assert doc["provenance"]["command"] not in block  # not one run's command for rows it did not measure


def test_a_table_whose_every_row_was_replaced_by_one_later_run_is_judged_by_that_run(report, monkeypatch):
    """--merge-from can replace every row of a file with one later run's: the file's own provenance (its first run)
    then measured none of them, and the rows' run decides whether it is stale."""
    head, first = head_and_first_commit()
    real = report.load
    doc = copy.deepcopy(real("benchmarks/results/digits/accuracy.json"))
    prov = report.provenance_of(doc)
    doc["provenance"] = {**prov, "git_commit": first, "git_dirty": False}
    for r in doc["rows"]:
        r["provenance"] = {**prov, "git_commit": head, "git_dirty": False}
        r.pop("per_seed", None)
    monkeypatch.setattr(report, "load", lambda rel: doc if rel == "benchmarks/results/digits/accuracy.json" else real(rel))
    assert [ln for ln in report.stale() if "digits/accuracy.json" in ln] == []
    for r in doc["rows"]:
        r["provenance"]["git_commit"] = first  # and the other way: rows of the first commit are stale
    assert [ln for ln in report.stale() if "digits/accuracy.json" in ln][0].startswith("STALE   accuracy (digits)")


def test_stale_is_a_warning_and_check_fails_on_a_difference(report, monkeypatch, capsys):
    assert report.main(["--stale"]) == 0 and capsys.readouterr().out.strip()  # CI prints it, never fails on it
    assert report.main(["--check"]) == 0
    monkeypatch.setattr(report, "check", lambda: ["README.md: differs"])
    assert report.main(["--check"]) == 1


def test_every_results_file_is_left_out_of_the_dirty_check(report):
    """A benchmark run after another one wrote its results must not call the tree dirty: every file the report
    reads as a result lies under a path git_state() leaves out (prompts_zoo/verify.json once did not, and the speed
    rerun after build_zoo --verify recorded a dirty tree)."""
    import _bench  # report.py put benchmarks/ on the path
    for _, rel, _ in report.SOURCES:
        assert any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in _bench.RESULT_PATHS), rel


def test_the_dirty_check_ignores_what_the_tools_write_and_sees_code(report, tmp_path, monkeypatch):
    """A zoo prompt file or a results file changed by a tool leaves the tree clean; a changed source file does not."""
    import subprocess

    import _bench  # report.py put benchmarks/ on the path

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "prompts_zoo").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    files = {"prompts_zoo/a.safetensors": "p", "prompts_zoo/index.json": "{}", "benchmarks/results/x.json": "{}",
             "code.py": "x = 1"}
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    monkeypatch.setattr(_bench, "REPO", tmp_path)
    assert _bench.git_state()["git_dirty"] is False
    for rel in ("prompts_zoo/a.safetensors", "prompts_zoo/index.json", "benchmarks/results/x.json"):
        (tmp_path / rel).write_text("changed by a tool")
    assert _bench.git_state()["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2")
    assert _bench.git_state()["git_dirty"] is True


def test_a_footer_names_the_cpu_capability_when_the_file_records_it(report):
    """Two CPUs both called "AMD EPYC" can run torch's kernels at different SIMD levels (speed, and the floats of a
    trained prompt, differ): a machine line shows the level a file records, and older files still read as before."""
    import _bench  # report.py put benchmarks/ on the path
    import torch

    old = {"machine": {"cpus_usable": 2, "cpu": "AMD EPYC", "device_name": "AMD EPYC", "torch": "2.14.1"}}
    new = copy.deepcopy(old)
    new["machine"]["cpu_capability"] = "AVX2"
    assert _bench.machine_text(old) == "2 CPU cores (AMD EPYC), device AMD EPYC, torch 2.14.1"
    assert _bench.machine_text(new) == "2 CPU cores (AMD EPYC, AVX2), device AMD EPYC, torch 2.14.1"
    assert _bench.machine_info()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_the_reading_states_an_effect_as_its_own_text_does(report, monkeypatch):
    """An effect of -2.5549 points reads "-2.6" in its own text; the reading must not print the stored, already
    rounded -2.55 again to one decimal ("-2.5", as it did for capture simulation vs none)."""
    real = report.load
    doc = copy.deepcopy(real("benchmarks/results/accuracy.json"))
    acc = report._accuracy_module()
    e = acc.summarize(doc["rows"])["effects"][0]
    a = next(r for r in doc["rows"] if r["method"] == e["a"])
    b = next(r for r in doc["rows"] if r["method"] == e["b"])
    b["test_top1"] = a["test_top1"] + 0.025549  # a - b = -2.5549 points
    monkeypatch.setattr(report, "load", lambda rel: doc if rel == "benchmarks/results/accuracy.json" else real(rel))
    e = next(x for x in acc.summarize(doc["rows"])["effects"] if x["what"] == e["what"])
    assert "= -2.6 points" in e["text"] and e["diff_points"] == -2.55
    cpu = report.b_accuracy_reading().split("- GPU")[0]
    assert f"{e['what']} -2.6 points" in cpu or f"{e['what']} (-2.6)" in cpu
    assert f"{e['what']} -2.5 points" not in cpu and f"{e['what']} (-2.5)" not in cpu


def test_stale_flags_a_row_whose_seeds_ran_on_different_machines(report, monkeypatch):
    """Seeds merged with --add-seeds from a CPU with another SIMD level (or a file that did not record it) make the
    row's spread mix machines with seeds: --stale says so, naming the seeds; one kind of machine says nothing."""
    real = report.load
    doc = copy.deepcopy(real("benchmarks/results/accuracy.json"))
    # a row of 3 seeds; each seed gets a provenance of its own as --add-seeds gives it (the real file has such
    # seeds only while a row's seeds come from several runs, so the test does not depend on that)
    row = next(r for r in doc["rows"] if len(r.get("per_seed") or []) >= 3)
    for s in row["per_seed"]:
        s["provenance"] = copy.deepcopy(s.get("provenance") or row["provenance"])
        s["provenance"]["machine"]["cpu_capability"] = "AVX2"
    assert report.mixed_machines(doc) == []
    row["per_seed"][-1]["provenance"]["machine"]["cpu_capability"] = "AVX512"
    seeds = [s["seed"] for s in row["per_seed"]]
    monkeypatch.setattr(report, "load", lambda rel: doc if rel == "benchmarks/results/accuracy.json" else real(rel))
    mixed = [ln for ln in report.stale() if ln.startswith("MIXED")]
    assert len(mixed) == 1 and f"row {row['method']}:" in mixed[0]
    assert f"AVX512 (seed {seeds[-1]})" in mixed[0] and f"AVX2 (seeds {','.join(map(str, seeds[:-1]))})" in mixed[0]
    del row["per_seed"][0]["provenance"]["machine"]["cpu_capability"]  # a file from before the record: its own kind
    assert "capability not recorded (seed" in report.mixed_machines(doc)[0]


def test_a_function_declared_in_renders_is_not_measured_code(report, monkeypatch):
    """A function the current copy names in RENDERS (it only formats numbers) may change, or be declared for the
    first time, without staling a result; any other function's edit stales it as before."""
    old = 'def run(x):\n    return x + 1\n\n\ndef table(rows):\n    return str(round(rows, 2))\n'
    src = {"old": old,
           "table": 'RENDERS = ("table",)\n' + old.replace("str(round(rows, 2))", "f'{rows:.1f}'"),
           "run": 'RENDERS = ("table",)\n' + old.replace("x + 1", "x + 2"),
           "undeclared": old.replace("str(round(rows, 2))", "f'{rows:.1f}'")}
    path = "benchmarks/accuracy.py"
    head = {"now": None}
    monkeypatch.setattr(report, "git", lambda *a: (0, path) if a[0] == "diff" else (0, head["now"]))
    monkeypatch.setattr(report, "code_of", lambda commit, p, renders=(): report.code_parts(src[commit], renders))
    monkeypatch.setattr(report, "renders_of", lambda commit, p: ("table",) if "RENDERS" in src[commit] else ())
    for now, stale in (("table", False), ("run", True), ("undeclared", True), ("old", False)):
        head["now"] = now
        assert (report.code_changed("old", [path], None, None) == [path]) is stale, now


def test_accuracy_renders_names_its_own_formatting_functions_and_rounds_a_cell_once(report):
    head, _ = head_and_first_commit()
    acc = report._accuracy_module()
    assert report.renders_of(head, "benchmarks/accuracy.py") == acc.RENDERS  # HEAD's copy, as the check reads it
    assert all(callable(getattr(acc, name, None)) for name in acc.RENDERS)
    assert not {"main", "run_prompt", "summarize", "linear_probe"} & set(acc.RENDERS)  # these make the numbers
    # 87.4467% rounded to 2 decimals first (87.45) read 87.5 in the table beside 87.4 in the reading
    row = {"method": "m", "kind": "prompt", "test_top1": 0.874467, "seeds": [0], "trainable_params": 1,
           "seconds": 1.0, "val_top1": 0.86049, "description": "d", "test_top1_jpeg75": None}
    line = acc.table([row]).splitlines()[-1]
    assert "| 87.4 |" in line and "| 86.0 |" in line and "87.5" not in line


def test_a_table_keeps_the_zero_of_a_mean_such_as_85_0(report):
    # report.py's tables come from _bench.markdown_table; a mean of 85.0033% read "85" beside "84.8-85.3"
    table = report.markdown_table(["mean %", "seconds", "s / step"], [[85.0, 4.0, 0.077], [41.26, 378.22, 1234.5]])
    assert "| 85.0 | 4 | 0.077 |" in table  # below 10, no zero is added that the source did not have
    assert "| 41.3 | 378 | 1,234 |" in table


def test_the_reading_marks_an_effect_whose_rows_ran_on_different_machines(report, monkeypatch):
    """An effect compares two rows; when they ran on different kinds of machine (a row rerun on this AVX2 VM against
    one from an AVX-512 VM) the reading says so beside the effect, and says nothing when both ran on one kind."""
    real = report.load
    doc = copy.deepcopy(real("benchmarks/results/accuracy.json"))
    e = report._accuracy_module().summarize(doc["rows"])["effects"][0]
    pair = [r for r in doc["rows"] if r["method"] in (e["a"], e["b"])]

    def set_capability(row, cap):
        for p in [s["provenance"] for s in row.get("per_seed") or [] if s.get("provenance")] or [row["provenance"]]:
            p["machine"]["cpu"], p["machine"]["cpu_capability"] = "AMD EPYC", cap

    monkeypatch.setattr(report, "load", lambda rel: doc if rel == "benchmarks/results/accuracy.json" else real(rel))

    def line():
        cpu = report.b_accuracy_reading().split("- GPU")[0]
        return cpu.split(f"{e['what']} ", 1)[1].split(";")[0].split("\n")[0]  # this effect's own words

    for r in pair:
        set_capability(r, "AVX2")
    assert "different machines" not in line()
    set_capability(pair[0], "AVX512")
    assert "(its rows ran on different machines)" in line()


def test_a_row_defined_once_shows_up_with_its_comparison(report, monkeypatch):
    """A benchmark row is one entry of accuracy.py's ROWS: its comparison reaches the summary, the table, the reading
    and the rows table; the time to accuracy reads whichever row is the time reference, not a row-named key."""
    import dataclasses

    acc = report._accuracy_module()
    new = acc.Row("pad_frequency_again", "prompt", "pad prompt, frequency mapping, once more",
                  {"prompter": "pad", "label_mapping": "frequency"},
                  compared_with=(("pad_frequency", "a comparison defined with its row"),))
    monkeypatch.setattr(acc, "ROWS", [*acc.ROWS, new])
    acc.check_rows(acc.ROWS)
    real = report.load
    doc = copy.deepcopy(real("benchmarks/results/accuracy.json"))
    pad = next(r for r in doc["rows"] if r["method"] == "pad_frequency")
    # three seeds a point apart, whatever the real file holds now (a rerun may have one seed so far), so that a
    # 20-point difference is one the summary states
    pad.update(seeds=[0, 1, 2], test_top1_min=pad["test_top1"] - 0.005, test_top1_max=pad["test_top1"] + 0.005)
    again = {**copy.deepcopy(pad), "method": new.name, "description": new.description}
    again.update(test_top1=pad["test_top1"] + 0.2, test_top1_min=pad["test_top1_min"] + 0.2,
                 test_top1_max=pad["test_top1_max"] + 0.2)
    doc["rows"].append(again)
    monkeypatch.setattr(report, "load", lambda rel: doc if rel == "benchmarks/results/accuracy.json" else real(rel))

    e = next(e for e in acc.summarize(doc["rows"])["effects"] if e["a"] == new.name)
    assert (e["b"], e["what"], e["diff_points"], e["conclusive"]) == ("pad_frequency", new.compared_with[0][1], 20.0,
                                                                       True)
    block = report.b_accuracy_cpu()
    assert f"| {new.name} | " in block
    assert f"- a comparison defined with its row: {new.name} - pad_frequency = +20.0 points" in block
    cpu = report.b_accuracy_reading().split("- GPU")[0]
    assert "a comparison defined with its row +20.0 points" in cpu
    assert f"| `{new.name}` | prompt | `prompter=pad`, `label_mapping=frequency` | `pad_frequency` (a comparison " \
           "defined with its row) | no |" in report.b_accuracy_rows()

    # the time reference is a row's own flag: moved to recipe_fast, the reading names recipe_fast
    assert ", pad_frequency " in cpu.split("Time to accuracy:")[1].split("\n")[0]
    moved = [dataclasses.replace(r, time_reference=r.name == "recipe_fast") for r in acc.ROWS]
    monkeypatch.setattr(acc, "ROWS", moved)
    s = acc.summarize(doc["rows"])
    fast = next(r for r in doc["rows"] if r["method"] == "recipe_fast")
    assert s["time_reference"] == "recipe_fast" and s["time_reference_steps_to_target"] == fast["steps_to_target"]
    line = report.b_accuracy_reading().split("- GPU")[0].split("Time to accuracy:")[1].split("\n")[0]
    # (either wording: "... recipe_fast at step N (..." or, when a row already met the target at the first
    # evaluation, "... recipe_fast at step N: at this setting ...", as the results since the mapping fix read)
    assert f", recipe_fast at step {fast['steps_to_target']}" in line and "pad_frequency" not in line


def test_rows_that_cannot_be_run_or_compared_are_refused(report):
    acc = report._accuracy_module()
    fine = list(acc.ROWS)
    acc.check_rows(fine)
    bad = [(acc.Row("x", "prompt", "x", compared_with=(("no_such_row", "x vs nothing"),)), "no_such_row"),
           (acc.Row("x", "prompt", "x", {"no_such_setting": 1}), "no_such_setting"),
           (acc.Row("x", "prompt", "x", recipe="no_such_recipe"), "no_such_recipe"),
           (acc.Row("x", "prompt", "x", time_reference=True), "time reference"),
           (fine[0], "defined twice")]
    for row, says in bad:
        with pytest.raises(ValueError, match=says):
            acc.check_rows(fine + [row])


def test_no_readme_shows_a_path_of_the_machine_that_ran_a_command(report):
    """A command a results file recorded shows `--out DIR`, not the temporary folder its run wrote to (the GPU speed
    run recorded `--out /tmp/tmp.OzJtVYiGlO`): when a tool records it, and when a file recorded before is shown."""
    import shlex

    import _bench  # report.py put benchmarks/ on the path
    for rel in report.READMES:
        for cmd in re.findall(r"python benchmarks/[^`\n]*", (ROOT / rel).read_text()):
            assert not [w for w in shlex.split(cmd) if w.startswith(("/", "~"))], (rel, cmd)
    assert _bench.provenance("accuracy.py", ["--out", "/tmp/tmp.x1", "--rows", "a,b", "--runs-dir=/var/r"],
                             "cpu")["command"] == "python benchmarks/accuracy.py --out DIR --rows a,b --runs-dir=DIR"
    recorded = "python benchmarks/accuracy.py --merge-from /w/a.json ../b.json --out benchmarks/results/gpu"
    assert _bench.portable_command(recorded) == \
        "python benchmarks/accuracy.py --merge-from JSON JSON --out benchmarks/results/gpu"  # a repo path stays
    assert report.command({"command": "python benchmarks/speed.py --out /tmp/t --steps 2"}) == \
        "python benchmarks/speed.py --out DIR --steps 2"


def test_every_front_shows_a_fraction_with_one_formatter():
    """utils.percent is the one formatter of the CLI, the app, the model card and the reports; each front keeps its
    own look through its arguments."""
    from visual_prompting import cli
    from visual_prompting.utils import percent

    assert percent(0.85003) == "85.0%" and percent(0.85003, 2) == "85.00%" and percent(1) == "100.0%"
    assert percent(None) == "-" and percent(float("nan"), missing="n/a") == "n/a" and percent("0.5") == "-"
    assert cli._pct(0.659) == " 65.9%" and cli._pct(None) == "  n/a " and len(cli._pct(None)) == len(cli._pct(0.5))


def test_the_recipe_search_table_keeps_finished_three_seed_candidates_of_one_sweep(report):
    """benchmarks/README.md's recipe-search block: a candidate is listed once per sweep (name, machine, commit, day)
    when three seeds finished at 1000 steps; stopped runs, other step counts (settings or --steps) and two seeds are
    left out; the best mean comes first."""
    def rec(name, seed, top, steps=None, commit="a" * 40, day="2026-12-04T10:00:00Z", device_name="NVIDIA H200",
            command="python benchmarks/recipe_search.py x 0 '{}'"):
        given = {"recipe": "live", "lr": 0.02} | ({"steps": steps} if steps else {})
        return {"name": name, "seed": seed, "given": given, "test_top1": top,
                "provenance": {"recorded": True, "git_commit": commit, "date_utc": day, "command": command,
                               "machine": {"device_name": device_name}}}

    records = [rec("a", s, 0.80 + s / 100) for s in range(3)]
    records += [rec("b", s, 0.90) for s in range(3)]
    records += [rec("a", s, 0.70, commit="b" * 40) for s in range(3)]  # the same name in another sweep: its own row
    records += [rec("c", s, 0.95, steps=3000) for s in range(3)]  # another budget
    records += [rec("d", s, 0.95, command="python benchmarks/recipe_search.py d 0 '{}' --steps 160") for s in range(3)]
    records += [rec("e", s, 0.99) for s in range(2)]  # two seeds
    records += [rec("f", s, None) for s in range(3)]  # stopped
    groups = report.recipe_search_groups(records)
    assert [(g["name"], g["commit"]) for g in groups] == [("b", "a" * 10), ("a", "a" * 10), ("a", "b" * 10)]
    assert groups[1]["tops"] == pytest.approx([0.80, 0.81, 0.82]) and groups[1]["mean"] == pytest.approx(0.81)
    assert groups[0]["what"] == "lr 0.02" and groups[0]["where"] == "NVIDIA H200"
    d = next(r for r in records if r["name"] == "d")
    assert report.search_steps(d) == 160 and report.search_steps(records[0]) == 1000
    # the budget's step count on other data is not a budget candidate: it is listed with the short runs, by data
    subset = [dict(rec("s", s, 0.6), dataset="fashion_mnist_subset") for s in range(3)]
    assert [g["name"] for g in report.recipe_search_groups(records + subset)] == ["b", "a", "a"]
    short = report.recipe_search_groups(records + subset, steps=None, dataset=None)
    assert sorted((g["name"], g["dataset"], g["steps"]) for g in short) == [
        ("c", "fashion_mnist", 3000), ("d", "fashion_mnist", 160), ("s", "fashion_mnist_subset", 1000)]
    # a folder of class folders reads as its name; a recipe other than live is a change the table names
    folder = [dict(rec("p", s, 0.9), dataset="/tmp/x/digits", given={"recipe": "fast_pad", "lr": 0.05})
              for s in range(3)]
    g = next(g for g in report.recipe_search_groups(folder, steps=None, dataset=None) if g["name"] == "p")
    assert (g["dataset"], g["what"]) == ("digits", "recipe fast_pad, lr 0.05")


def test_the_recipe_search_block_reads_longer_runs_of_the_budget_data_against_the_probe(report, tmp_path,
                                                                                        monkeypatch):
    """Candidates finished with three seeds at more than the budget's 1000 steps on its data are read against the
    linear probe (their mean, range and difference); shorter runs and other data are not."""
    def rec(name, seed, top, steps, dataset="fashion_mnist"):
        return {"name": name, "seed": seed, "given": {"recipe": "live"}, "test_top1": top, "dataset": dataset,
                "provenance": {"recorded": True, "git_commit": "a" * 40, "date_utc": "2026-12-05T10:00:00Z",
                               "command": f"python benchmarks/recipe_search.py {name} {seed} '{{}}' --steps {steps}",
                               "machine": {}}}

    tops = (0.8718, 0.8632, 0.8700)
    records = [rec("live_3000", s, t, 3000) for s, t in enumerate(tops)]
    records += [rec("live_160", s, 0.80, 160) for s in range(3)] + [rec("sub", s, 0.9, 3000, "digits") for s in range(3)]
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "recipe_search.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "benchmarks" / "results" / "accuracy.json").write_text(json.dumps(
        {"rows": [{"method": "linear_probe", "kind": "linear_probe", "test_top1": 0.8688}]}))
    monkeypatch.setattr(report, "REPO", tmp_path)
    text = report.b_recipe_search()
    line = next(ln for ln in text.splitlines() if ln.startswith("On the CPU budget's data with more steps"))
    mean = 100 * sum(tops) / 3
    assert f"`live_3000` (3000 steps, 3 seeds) {mean:.2f}% (86.32-87.18), {mean - 86.88:+.2f} points" in line
    assert "86.88%" in line and "live_160" not in line and "`sub`" not in line


def test_the_train_fit_reading_does_not_call_a_prompt_above_the_probe_short_of_generalisation(report):
    """The digits rows: the best prompt fits the train set better than the probe and is above it on the test set;
    the reading says so. Lowered under the probe on the test set, the same fit reads as a generalisation gap."""
    acc = report._accuracy_module()
    rows = json.loads((ROOT / "benchmarks" / "results" / "digits" / "accuracy.json").read_text())["rows"]

    def reading(rows):
        return next(o for o in acc.summarize(rows)["observations"] if o.startswith("train accuracy:"))

    probe = next(r for r in rows if r["method"] == "linear_probe")
    best = acc.summarize(rows)["best_prompt"]
    assert next(r for r in rows if r["method"] == best)["test_top1"] > probe["test_top1"]
    assert reading(rows).endswith("at or above it on the test set too")
    lowered = [dict(r, test_top1=probe["test_top1"] - 0.05) if r["method"] not in ("linear_probe",) and
               r.get("kind") != "no_prompt" else r for r in rows]
    assert "what it lacks on the test set is generalisation" in reading(lowered)
