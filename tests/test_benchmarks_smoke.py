"""The benchmark scripts in benchmarks/ run in their tiny ``--smoke`` mode and write the result files anyone can
check by script: the keys and shapes the benchmarks promise, not how good the numbers are (benchmarks are not
tests; their full runs are not part of this suite).

Each script runs with ``--threads 1``: on a shared 2-core machine two multi-threaded torch processes can slow
each other down 30-50x, and these settings are too small to gain from a second thread."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import sys
from pathlib import Path

import pytest
import torch

from visual_prompting.utils import percent

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ("accuracy", "speed", "scaling", "app_latency", "app_defaults", "readme_train", "recipe_search")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # a dataclass (accuracy.Row) looks its module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in this file (the scripts also get ``--threads 1``); the suite's setting comes back after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def is_num(v, lo=0.0) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo


def read(path: Path) -> dict:
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text())


def check_provenance(p: dict, script: str) -> None:
    """What _bench.provenance() promises: recorded by the tool, with command, commit, dirty, date, machine and the
    load average before the run."""
    assert p["recorded"] is True
    assert p["command"].startswith(f"python benchmarks/{script}.py")
    assert isinstance(p["git_commit"], str) and len(p["git_commit"]) == 40 and isinstance(p["git_dirty"], bool)
    assert p["date_utc"].endswith("Z") and len(p["load_average_before_run"]) == 3
    assert {"cpu", "cpu_count", "cpus_usable", "gpu", "torch"} <= set(p["machine"])
    assert p["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def check_outputs(out: Path, name: str) -> dict:
    doc = read(out / f"{name}.json")
    png = out / f"{name}.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}.md").read_text().startswith("### ")
    if name == "speed":
        for per_device in doc["results"].values():
            for r in per_device.values():
                check_provenance(r["provenance"], name)
    else:
        check_provenance(doc["provenance"], name)
    return doc


def load_read_before(mod, monkeypatch, run_fn: str) -> list:
    """Record the order of 'load average read' and 'the run starts' (``run_fn`` of the script's module)."""
    order = []
    real = os.getloadavg
    monkeypatch.setattr(os, "getloadavg", lambda: (order.append("load"), real())[1])
    inner = getattr(mod, run_fn)
    monkeypatch.setattr(mod, run_fn, lambda *a, **k: (order.append("run"), inner(*a, **k))[1])
    return order


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_help(name, capsys):
    mod = load(name)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--smoke" in text and "--out" in text


def test_recipe_search_appends_one_record_with_its_provenance(tmp_path):
    rs = load("recipe_search")
    out = tmp_path / "search.jsonl"
    for seed in (0, 1):
        rs.main(["pad_live", str(seed), '{"recipe": "live", "prompter": "pad", "prompt_fraction": 0.25}', "--smoke",
                 "--out", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seed"] for r in recs] == [0, 1] and all(r["provenance"]["recorded"] for r in recs)
    assert recs[0]["given"]["prompt_fraction"] == 0.25 and 0 <= recs[0]["test_top1"] <= 1
    assert [c[0] for c in recs[0]["val_curve"]] == [3]


def test_accuracy_smoke(tmp_path):
    acc = load("accuracy")
    # every row, on smaller held-out sets than the smoke defaults (100 val, 200 test): every row evaluates the
    # test set three times (clean, JPEG, resized), which was most of this test's time
    acc.main(["--smoke", "--out", str(tmp_path), "--threads", "1", "--quiet", "--rows", "all", "--val-size", "40",
              "--test-size", "64"])
    doc = check_outputs(tmp_path, "accuracy")
    rows = doc["rows"]
    methods = [r["method"] for r in rows]
    assert methods == acc.row_names() and len(set(methods)) == len(methods)
    for r in rows:
        assert isinstance(r["method"], str)
        assert is_num(r["test_top1"]) and r["test_top1"] <= 1
        assert isinstance(r["trainable_params"], int) and r["trainable_params"] >= 0
        assert is_num(r["seconds"])
    no_prompt = [r for r in rows if r["method"].startswith("no_prompt")]
    assert len(no_prompt) == 3 and all(r["trainable_params"] == 0 for r in no_prompt)
    assert sum(r["method"] == "linear_probe" for r in rows) == 1
    trained = [r for r in rows if r["kind"] == "prompt"]
    assert len(trained) == sum(r.kind == "prompt" for r in acc.ROWS) and all(r["trainable_params"] > 0 for r in trained)
    # every trained row: time to target, capture robustness, its settings, input-only
    for r in trained:
        assert r["steps_to_target"] is None or 1 <= r["steps_to_target"] <= r["steps"]
        assert 0 <= r["test_top1_jpeg75"] <= 1 and 0 <= r["test_top1_resize075"] <= 1
        # only a row that also trains an output layer is not input-only, and it counts that layer's numbers
        assert r["input_only"] is (r["label_mapping"] != "fully_map")
    fm, fast = next(r for r in trained if r["method"] == "fully_map_fast"), next(
        r for r in trained if r["method"] == "recipe_fast")
    assert fm["trainable_params"] == fast["trainable_params"] + 1000 * 10 + 10
    by = {r["method"]: r for r in rows}
    assert by["recipe_robust"]["settings"]["capture"] == "capture" and by["recipe_fast"]["settings"]["optimizer"] == "adam"
    assert by["linear_probe"]["input_only"] is False
    assert {r["clamp"] for r in trained if r["prompter"] == "pad" and r["label_mapping"] == "iterative"} == \
        {"straight-through", "none"}
    assert doc["status"] == "complete" and "gap_points" in doc["summary"]
    assert (doc["settings"]["val_size"], doc["settings"]["test_size"]) == (40, 64)
    for ps in (ps for r in trained for ps in r["per_seed"]):  # each evaluation's wall time: time to the probe
        secs = [t for _, t in ps["eval_seconds"]]
        assert [s for s, _ in ps["eval_seconds"]] == [s for s, _ in ps["val_curve"]] and secs == sorted(secs)
    assert set(doc["summary"]["time_to_probe"]) == {r["method"] for r in trained if r["input_only"]}
    assert "steps / s to the probe's val" in (tmp_path / "accuracy.md").read_text()


def test_time_to_the_probe_is_the_slowest_seeds_step_and_seconds():
    acc = load("accuracy")
    row = {"per_seed": [{"val_curve": [[200, 0.80], [400, 0.86], [600, 0.88]], "eval_seconds": [[200, 90.0], [400, 180.5],
                                                                                                 [600, 270.0]]},
                        {"val_curve": [[200, 0.85], [400, 0.87]], "eval_seconds": [[200, 95.0], [400, 185.0]]}]}
    assert acc.to_probe(row, 0.86) == {"probe_val_top1": 0.86, "seeds_reached": 2, "seeds": 2, "steps": 400,
                                       "seconds": 185.0}
    assert acc.to_probe(row, 0.875)["steps"] is None and acc.to_probe(row, 0.875)["seeds_reached"] == 1
    old = {"val_curve": [[200, 0.9]]}  # recorded before eval_seconds: the step, no seconds
    assert acc.to_probe(old, 0.86) == {"probe_val_top1": 0.86, "seeds_reached": 1, "seeds": 1, "steps": 200,
                                       "seconds": None}


def test_accuracy_titles_its_table_with_the_dataset_it_measured(tmp_path):
    """accuracy.md's title names the dataset and model of its settings (``--dataset cifar10`` once still read
    "Fashion-MNIST, frozen EfficientNet-Lite0")."""
    acc = load("accuracy")
    doc = read(BENCH / "results" / "accuracy.json")
    doc["settings"].update(dataset="cifar10", model="timm:resnet18@64")
    text = acc.render(doc, tmp_path)
    assert text.splitlines()[0] == "### Accuracy (cifar10, frozen timm:resnet18@64)"
    assert (tmp_path / "accuracy.md").read_text() == text and "Fashion-MNIST" not in text


def test_speed_smoke_merges_models_and_measures_memory(tmp_path):
    speed = load("speed")
    out = ["--smoke", "--out", str(tmp_path), "--threads", "1", "--quiet"]
    speed.main(out + ["--models", "clip:vp-tiny", "--memory", "off"])  # CLIP: text encoder in the reference loop
    speed.main(out + ["--models", "effnet-lite0@32"])  # merged into the same file, peak memory in subprocesses
    doc = check_outputs(tmp_path, "speed")
    assert set(doc["results"]) == {"clip:vp-tiny", "effnet-lite0@32"}
    for model, per_device in doc["results"].items():
        r = per_device["cpu"]
        for k in ("library_img_s", "eager_img_s", "best_execution_img_s", "reference_img_s", "ratio_vs_eager",
                  "ratio_vs_best_execution", "ratio_vs_reference", "flops_per_image", "flop_utilisation",
                  "best_execution_flop_utilisation", "eager_flop_utilisation"):
            assert is_num(r[k]) and r[k] > 0, (model, k)
        # the ratios are the quotients of the measured images/s
        assert r["ratio_vs_eager"] == pytest.approx(r["library_img_s"] / r["eager_img_s"])
        assert r["ratio_vs_best_execution"] == pytest.approx(r["library_img_s"] / r["best_execution_img_s"])
        assert r["ratio_vs_reference"] == pytest.approx(r["library_img_s"] / r["reference_img_s"])
        # the best execution is the fastest candidate measured, the eager loop among them
        ex = r["executions_img_s"]
        assert ex["eager"] == r["eager_img_s"] and r["best_execution_img_s"] == ex[r["best_execution"]] == max(ex.values())
        assert r["per_repeat_img_s"].keys() >= {"library", "reference", *ex}
        # utilisation: FLOPs per image x images/s over the matmul peak measured in the same repeats, within (0, 1]
        peak = r["matmul_peak"]
        assert is_num(peak["flop_s"], 1e6) and len(peak["per_repeat_flop_s"]) == r["repeats"]
        assert peak["flop_s"] == pytest.approx(statistics.median(peak["per_repeat_flop_s"]))
        for v in ("", "best_execution_", "eager_"):
            u = r[f"{v}flop_utilisation"]
            assert 0 < u <= 1, (model, v, u)
            assert u == pytest.approx(r["flops_per_image"] * r[f"{v or 'library_'}img_s"] / peak["flop_s"])
        assert r["goals"][f"ratio_vs_best_execution>={speed.GOAL_VS_BEST}"] is (r["ratio_vs_best_execution"] >= 0.95)
        for v in ("library", "eager", "reference"):
            key = f"{v}_peak_mem_mib"
            assert key in r
            if model.startswith("effnet"):
                assert is_num(r[key]) and r[key] > 0, (key, r["memory_kind"])
            else:
                assert r[key] is None
        # the library's step timed again in its fresh memory probe: what a run with nothing before it gets
        if model.startswith("effnet"):
            assert is_num(r["library_fresh_process_img_s"]) and r["library_fresh_process_img_s"] > 0
            assert r["ratio_fresh_process_vs_in_process"] == pytest.approx(
                r["library_fresh_process_img_s"] / r["library_img_s"])
        else:  # --memory off: no fresh process
            assert r["library_fresh_process_img_s"] is None and r["ratio_fresh_process_vs_in_process"] is None
    clip, effnet = (doc["results"][m]["cpu"] for m in ("clip:vp-tiny", "effnet-lite0@32"))
    # load_backbone rewrites classifiers only: CLIP runs as built, EfficientNet has every candidate
    assert list(clip["executions_img_s"]) == ["eager"] and clip["executions_check"] == {}
    assert list(effnet["executions_img_s"]) == ["eager", "channels_last", "fold", "fast_backbone"]
    assert effnet["fast_backbone_execution"]["channels_last"] and effnet["fast_backbone_execution"]["fold_batchnorm"] > 0
    # every candidate computed what the eager model computes, on the timed batch
    assert set(effnet["executions_check"]) == set(effnet["executions_img_s"]) - {"eager"}
    for n, c in effnet["executions_check"].items():
        assert c["logits_max_rel_diff"] < 1e-3 and c["input_grad_rel_diff"] < 1e-2, (n, c)
    # an entry written before the candidate executions (eager loop as 'limit') reads under the current keys
    old = {k: v for k, v in effnet.items() if not k.startswith(("eager", "best_execution", "ratio_vs_eager",
                                                                   "ratio_vs_best"))}
    old.update(limit_img_s=effnet["eager_img_s"], ratio_vs_limit=effnet["ratio_vs_eager"])
    read = speed.entry(old)
    assert read["eager_img_s"] == effnet["eager_img_s"] and read["ratio_vs_eager"] == effnet["ratio_vs_eager"]
    assert read["best_execution"] is None and read["eager_loop_only"] and speed.entry(effnet) is effnet
    # what the README shows of a row: the best execution by name, the utilisation, and no "limit"
    line = load("report").speed_line(speed, "effnet-lite0@32", "cpu", effnet)
    assert f"best: {effnet['best_execution']}" in line and percent(effnet["flop_utilisation"]) in line
    assert "limit" not in line and "limit" not in (tmp_path / "speed.md").read_text()
    assert "the limit" in load("report").speed_line(speed, "effnet-lite0@32", "cpu", read)  # says what it was called


def test_speed_refuses_an_execution_that_computes_something_else():
    speed = load("speed")
    g = torch.Generator().manual_seed(0)
    logits, grad = torch.randn(4, 10, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    ok = speed.same_function({"eager": (logits, grad), "same": (logits + 1e-7, grad)}, amp=False)
    assert ok["same"]["logits_max_rel_diff"] < 1e-6 and ok["same"]["input_grad_rel_diff"] == 0
    with pytest.raises(RuntimeError, match="'off'"):
        speed.same_function({"eager": (logits, grad), "off": (logits, grad * 1.1)}, amp=False)


def test_speed_holds_an_amp_execution_to_the_eager_amp_steps_own_rounding():
    """Under AMP each candidate is compared with the eager step in float32: as far from it as the eager AMP step (its
    own rounding) passes, although the two AMP steps differ from each other by more than the fixed AMP tolerance (5%
    of the logits, 10% of the gradient, the check that stopped fold under bf16 on an H200); far further fails."""
    speed = load("speed")
    g = torch.Generator().manual_seed(0)
    logits, grad = torch.randn(4, 10, generator=g), torch.randn(4, 3, 8, 8, generator=g)

    def rounded(scale):  # the fp32 pair plus noise of the given relative size
        return (logits + scale * logits.abs().max() * torch.randn(4, 10, generator=g),
                grad + scale * grad.norm() / grad.numel() ** 0.5 * torch.randn(4, 3, 8, 8, generator=g))

    eager, fold = rounded(0.2), rounded(0.2)
    ok = speed.same_function({"eager": eager, "fold": fold}, amp=True, fp32=(logits, grad))
    assert ok["fold"]["input_grad_rel_diff"] > 0.1  # the old check would have refused it
    assert ok["eager"]["input_grad_rel_diff_vs_fp32"] == pytest.approx(0.2, rel=0.3)
    assert ok["fold"]["input_grad_rel_diff_vs_fp32"] <= 1.5 * ok["eager"]["input_grad_rel_diff_vs_fp32"] + 1e-2
    with pytest.raises(RuntimeError, match="'wrong'.*against float32"):
        speed.same_function({"eager": eager, "wrong": rounded(1.0)}, amp=True, fp32=(logits, grad))
    with pytest.raises(RuntimeError, match="'off'"):  # without the float32 step: the fixed AMP tolerances
        speed.same_function({"eager": eager, "off": fold}, amp=True)


def test_the_matmul_peak_times_enough_matmuls_to_time_them_and_not_their_launch():
    speed = load("speed")
    small = speed.MatmulPeak(torch.device("cpu"), 32, min_s=0.02)  # one takes microseconds: many are timed
    assert small.calls > 10
    big = speed.MatmulPeak(torch.device("cpu"), 32, min_s=0.0)  # one already fills the time asked for
    assert big.calls == 1
    small.time()
    rec = small.record()
    assert rec["calls_per_repeat"] == small.calls and rec["flop_s"] > 0 and f"{small.calls} 32x32" in rec["what"]


def test_scaling_smoke(tmp_path, monkeypatch):
    mod = load("scaling")
    order = load_read_before(mod, monkeypatch, "train_scaling")
    mod.main(["--smoke", "--out", str(tmp_path), "--threads", "1"])
    assert order[:2] == ["load", "run"]  # the load average in the file is the machine's before the measurement
    doc = check_outputs(tmp_path, "scaling")
    tr, ev = doc["training"], doc["evaluation"]
    assert len(tr["batch_sizes"]) == len(tr["images_per_s"]) == 2 and all(is_num(v) for v in tr["images_per_s"])
    assert len(ev["dataset_sizes"]) == len(ev["seconds"]) == 2 and all(is_num(v) for v in ev["seconds"])
    for part in (tr, ev):
        assert {"linear_from", "stops_linear_at", "rule"} <= set(part["linear"])
    assert len(doc["conclusions"]) == 2
    (row,) = doc["distributed"]  # smoke: one torchrun group of 2 processes (gloo)
    assert row["processes"] == 2 and row["per_rank_batch"] * 2 == row["global_batch"]
    assert is_num(row["seconds_per_step"], 1e-9) and is_num(row["images_per_s"], 1e-9)
    assert is_num(row["loader_images_per_s"], 1e-9)
    for part in row["allreduce"].values():
        assert is_num(part["seconds"], 1e-9) and part["numbers"] > 0


def test_linear_regime_rule():
    linear_regime = load("_bench").linear_regime

    r = linear_regime([8, 16, 32, 64, 128], [3.0, 1.5, 1.0, 1.05, 1.5])
    assert r["linear_from"] == 32 and r["overhead_bound_below"] == 32 and r["stops_linear_at"] == 128
    r = linear_regime([1, 2, 4, 8], [1.0, 1.3, 1.0, 1.02])  # one noisy point is not the end of linearity
    assert r["linear_from"] == 1 and r["stops_linear_at"] is None


def test_linear_probe_fits_separable_data():
    acc = load("accuracy")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 16, generator=g)
    y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()
    W, b = acc.fit_logreg(X, y, C=100.0, num_classes=4, max_iter=100)
    assert acc.accuracy(X, y, W, b) > 0.97
    W0, _ = acc.fit_logreg(X, y, C=1e-6, num_classes=4, max_iter=100)  # strong L2: weights near zero
    assert float(W0.abs().max()) < 1e-2


def test_app_latency_smoke(tmp_path, monkeypatch):
    pytest.importorskip("gradio_client")
    mod = load("app_latency")
    order = load_read_before(mod, monkeypatch, "measure_in_process")
    mod.main(["--smoke", "--out", str(tmp_path), "--threads", "1"])
    assert order[:2] == ["load", "run"]
    doc = check_outputs(tmp_path, "app_latency")
    for k in ("launch_to_first_prediction_s", "prediction_s", "bare_forward_s", "ratio"):
        assert is_num(doc[k]) and doc[k] > 0, k
    assert doc["launch_to_first_prediction_s"] >= doc["launch_to_page_s"]
    assert doc["ratio"] == pytest.approx(doc["prediction_s"] / doc["bare_forward_s"])
    assert len(doc["prompted_top5_example"]) == 5


def test_app_defaults_smoke_times_the_apps_own_path_cold_and_warm(tmp_path, monkeypatch):
    """The app's defaults as the page shows them; three clicks in one fresh app (the default recipe, again, then
    paper) with the smoke form, then the default recipe in a fresh process's app after its launch prewarm; each timed
    from the click to its first step shown and to its result."""
    from visual_prompting.train_config import TrainEvent
    from visual_prompting.ui import AppConfig, VPApp, _status

    mod = load("app_defaults")
    # the step a live status line shows, read as the app writes it: none while loading and preparing
    prepare = TrainEvent("prepare", 0, 100, message="Fitting the label mapping: ... on 2700 training images")
    assert mod.shown_step(_status(prepare, 1.0)) == 0 and mod.shown_step("Loading `effnet-lite0@96` ...") == 0
    assert mod.shown_step(_status(TrainEvent("step", 1, 140, loss=2.0, images_per_s=50.0), 3.0)) == 1
    assert mod.shown_step(_status(TrainEvent("step", 12, 140, loss=2.0), 9.0)) == 12
    order = load_read_before(mod, monkeypatch, "click")
    doc = mod.main(["--smoke", "--out", str(tmp_path), "--threads", "1"])
    assert order[:2] == ["load", "run"]
    assert read(tmp_path / "app_defaults.json") == json.loads(json.dumps(doc))
    check_provenance(doc["provenance"], "app_defaults")
    vp = VPApp(AppConfig(work_dir=tmp_path / "work", user_zoo_dir=tmp_path / "zoo", device="cpu"))
    d = vp.train_defaults()
    assert doc["defaults"] == {"model": d.model, "steps": d.steps, "batch_size": d.batch_size,
                               "time_budget": d.time_budget, "recipe": d.recipe, "dataset": "fashion_mnist_subset",
                               "seed": 0}
    runs = doc["runs"]
    assert [(r["recipe"], r["caches"], r["again"], r["app_run"]) for r in runs] == [
        (d.recipe, "cold", False, 1), (d.recipe, "warm", True, 2), ("paper", "warm", False, 3),
        (d.recipe, "prewarmed", False, 1)]
    assert runs[0]["settings"] == runs[1]["settings"] == runs[3]["settings"] == d.settings
    assert runs[2]["settings"] == vp.train_defaults("paper").settings
    for r in runs:
        assert (r["model"], r["steps"], r["batch_size"], r["time_budget"]) == ("effnet-lite0@32", 3, 16, None)
        assert r["steps_done"] == 3 and r["test_n"] == 1000
        assert 0 <= r["test_top1"] <= 1 and 0 <= r["test_top1_no_prompt"] <= 1
        assert 0 < r["seconds_to_first_step"] < r["seconds"] and 0 < r["train_seconds"] < r["seconds"]
        assert r["status"].startswith("Done. 3 steps") and percent(r["test_top1"]) in r["status"]
    # the later click finds the backbone loaded and the numbers without a prompt cached: its first step comes sooner
    assert runs[1]["seconds_to_first_step"] < runs[0]["seconds_to_first_step"]
    # so does a first click after the launch's prewarm (in its own process: nothing set up by the runs before)
    assert runs[3]["seconds_to_first_step"] < runs[0]["seconds_to_first_step"] and runs[3]["prewarm_seconds"] > 0
    assert runs[0]["goal_met"] == {"test_top1": runs[0]["test_top1"] >= 0.80, "seconds": runs[0]["seconds"] <= 90,
                                   "seconds_to_first_step": runs[0]["seconds_to_first_step"] <= 5}
    assert "goal_met" not in runs[1]
    assert doc["total_seconds"] > sum(r["seconds"] for r in runs) - 0.02  # each rounded to 0.01 s


def test_readme_train_smoke_times_the_first_step_on_the_bar(tmp_path):
    mod = load("readme_train")
    # the first step is the bar's first count of one or more: "0/3" is not one, and the clock starts at the launch
    bar = ("import sys, time; w = sys.stderr.write; w('Fitting ...\\n\\r  0%|  | 0/3 [00:00<?]'); sys.stderr.flush(); "
           "time.sleep(1.0); w('\\r 33%|# | 1/3 [00:01<00:02]'); sys.stderr.flush(); time.sleep(1.0); print('done')")
    proc, seconds, first = mod.run_timed([sys.executable, "-c", bar], dict(os.environ))
    assert proc.returncode == 0 and proc.stdout == "done\n" and "1/3" in proc.stderr
    assert 1.0 <= first <= seconds - 0.9
    assert mod.run_timed([sys.executable, "-c", "print('no bar')"], dict(os.environ))[2] is None

    doc = mod.main(["--smoke", "--out", str(tmp_path), "--threads", "1"])
    assert read(tmp_path / "readme_train.json") == json.loads(json.dumps(doc))
    check_provenance(doc["provenance"], "readme_train")
    assert doc["smoke"] and doc["readme_command"] == "python -m visual_prompting train " + " ".join(mod.SMOKE_ARGS)
    assert 0 < doc["seconds_to_first_step"] < doc["wall_seconds"]
    lines = doc["output_lines"]  # the zero-shot line (printed at the first evaluation now) and the test/val lines
    assert [next(q for q in mod.QUOTED if ln.startswith(q)) for ln in lines] == list(mod.QUOTED)
    assert lines[0].startswith("zero-shot (no prompt) val top-1:") and lines[1].endswith("(1000 images)")


def test_accuracy_seeds_and_rows_merge(tmp_path, monkeypatch):
    """--seeds trains each prompt row once per seed (mean, min-max, every seed kept); --rows merges into the same
    accuracy.json, replacing the rows it runs and keeping the others with their own provenance; --merge-from
    --add-seeds joins the seeds of one row run by two processes."""
    acc = load("accuracy")
    real = acc.provenance  # as if the tree were committed (seeds are joined only for the same clean commit)
    monkeypatch.setattr(acc, "provenance", lambda *a, **k: {**real(*a, **k), "git_dirty": False})
    base = ["--smoke", "--out", str(tmp_path), "--threads", "1", "--quiet", "--steps", "2"]
    acc.main(base + ["--rows", "no_prompt_first_k,pad_first_k", "--seeds", "2"])
    acc.main(base + ["--rows", "pad_frequency", "--seeds", "0,3"])
    doc = read(tmp_path / "accuracy.json")
    by = {r["method"]: r for r in doc["rows"]}
    assert list(by) == ["no_prompt_first_k", "pad_first_k", "pad_frequency"]
    assert by["pad_first_k"]["seeds"] == [0, 1] and by["pad_frequency"]["seeds"] == [0, 3]
    assert by["no_prompt_first_k"]["deterministic"] and by["no_prompt_first_k"]["seeds"] == []
    for m in ("pad_first_k", "pad_frequency"):
        r = by[m]
        tops = [s["test_top1"] for s in r["per_seed"]]
        assert [s["seed"] for s in r["per_seed"]] == r["seeds"]
        assert r["test_top1"] == pytest.approx(sum(tops) / 2)
        assert (r["test_top1_min"], r["test_top1_max"]) == (min(tops), max(tops))
    assert "--seeds 2" in by["pad_first_k"]["provenance"]["command"]
    assert "pad_frequency" in by["pad_frequency"]["provenance"]["command"]
    with pytest.raises(SystemExit, match="other settings"):  # rows of another budget are never mixed in
        acc.main(base[:-1] + ["3", "--rows", "pad_first_k"])

    # seeds 4 and 5 of pad_frequency run elsewhere (another process), then added to the row's seeds 0 and 3
    other = tmp_path / "other"
    acc.main(base[:2] + [str(other)] + base[3:] + ["--rows", "pad_frequency", "--seeds", "4,5"])
    acc.main(["--out", str(tmp_path), "--merge-from", str(other / "accuracy.json"), "--add-seeds"])
    r = {r["method"]: r for r in read(tmp_path / "accuracy.json")["rows"]}["pad_frequency"]
    tops = [s["test_top1"] for s in r["per_seed"]]
    assert r["seeds"] == [0, 3, 4, 5] and len(tops) == 4 and r["test_top1"] == pytest.approx(sum(tops) / 4)
    assert "--seeds 4,5" in r["per_seed"][3]["provenance"]["command"]
    assert "--seeds 0,3" in r["per_seed"][0]["provenance"]["command"]
    md = (tmp_path / "accuracy.md").read_text()  # names the three runs behind the rows, not the first one's command
    assert "3 runs at 1 commit," in md and "pad_frequency (seeds 0,3,4,5)" in md and "\n    python" not in md
    with pytest.raises(SystemExit, match="the same seed"):  # a seed is never counted twice
        acc.main(["--out", str(tmp_path), "--merge-from", str(other / "accuracy.json"), "--add-seeds"])


def test_accuracy_effects_need_more_than_the_seed_spread():
    acc = load("accuracy")

    def row(m, tops):
        return {"method": m, "kind": "prompt", "test_top1": sum(tops) / len(tops), "seeds": list(range(len(tops))),
                "test_top1_min": min(tops), "test_top1_max": max(tops)}

    no_prompt = {"method": "no_prompt_first_k", "kind": "no_prompt", "test_top1": 0.1, "deterministic": True}
    one = acc.effect(row("a", [0.80]), row("b", [0.75]), "x")
    assert not one["conclusive"] and "no conclusion" in one["text"]  # one seed: 5 points say nothing
    close = acc.effect(row("a", [0.80, 0.78, 0.79]), row("b", [0.79, 0.77, 0.76]), "x")
    assert close["diff_points"] == pytest.approx(1.67, abs=0.01) and close["spread_points"] == pytest.approx(3.0)
    assert not close["conclusive"] and "within the spread" in close["text"]
    far = acc.effect(row("a", [0.80, 0.81, 0.79]), row("b", [0.70, 0.71, 0.72]), "x")
    assert far["conclusive"] and "larger than the spread" in far["text"]
    assert acc.effect(row("a", [0.5, 0.52]), no_prompt, "x")["conclusive"]  # a deterministic row has no spread


def test_test_suite_smoke_times_a_real_pytest_run(tmp_path):
    ts = load("test_suite")
    doc = ts.main(["--smoke", "--out", str(tmp_path)])
    assert read(tmp_path / "test_suite.json") == json.loads(json.dumps(doc))
    assert doc["passed"] and doc["returncode"] == 0 and doc["failed"] == []
    assert " passed" in doc["summary_line"] and doc["wall_seconds"] > 0
    assert doc["pytest_command"].endswith("tests/test_prompters.py") and "-n" in doc["pytest_addopts"]
    assert doc["provenance"]["recorded"] and doc["provenance"]["command"].startswith("python benchmarks/test_suite.py")
