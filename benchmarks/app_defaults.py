"""The app's CPU training defaults, measured: what a user who clicks Train in the Train tab gets on the bundled subset.

    python benchmarks/app_defaults.py            # the app's CPU defaults: 3 runs of a ~1 min budget (~5 min, 2 cores)
    python benchmarks/app_defaults.py --smoke --out /tmp/ad   # 3 steps of 16 at 32 px (what the tests run)

Goes through the app's own path, in process and without Gradio: a fresh ``VPApp`` (its own temporary work and
zoo folders, device cpu); the form filled as the Train tab fills it at first (every field the training handler
takes, at its first value: ``train_form.component_args`` of ``VPApp.train_defaults()``, as ``app.py`` builds the
page; another recipe refills the recipe's fields, as the Recipe dropdown does); then, timed from the click (before
``VPApp.train_config``), ``VPApp.train_stream`` to the first update whose status shows a step >= 1
(``seconds_to_first_step``: what the user waits before training shows) and to the last update, the result
(``seconds``). Test top-1 with and without the prompt, the steps done and ``train_seconds`` (the time of the steps
and validations, what the time budget counts) are read from the result's prompt file.

Three runs in the same app, in this order: the default recipe in the fresh app (``caches: cold``: the backbone is
loaded and the numbers without a prompt are computed by this run), the default recipe again (``warm``: a later
click, the backbone loaded and those numbers cached in the app), then the paper's recipe with the same form. Then,
in a fresh Python process (nothing imported or set up yet, as at ``python app.py``), a fresh app whose launch
prewarm (``VPApp.prewarm``, which ``python app.py`` starts with its server) is let finish before the default
recipe's click (``caches: prewarmed``; ``prewarm_seconds``: how long after the launch a click finds it done).
One seed (0): the README quotes these numbers as what one run gave, not as a ranking (benchmarks/accuracy.py
--seeds does that). Gradio's own share of a click (queue, transport) is not in these times: benchmarks/app_latency.py
measures it.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import apply_threads, bench_parser, provenance, write_json  # noqa: E402

MEASURES = ["benchmarks/app_defaults.py", "visual_prompting/ui.py", "visual_prompting/train_form.py",
    "visual_prompting/workspace.py", "visual_prompting/training.py", "visual_prompting/train_config.py",
    "visual_prompting/checkpoint.py", "visual_prompting/baselines.py", "visual_prompting/execution.py",
    "visual_prompting/prompters.py", "visual_prompting/spectral.py", "visual_prompting/heads.py",
    "visual_prompting/backbones.py", "visual_prompting/data.py", "visual_prompting/evaluation.py",
    "visual_prompting/recipes.py", "visual_prompting/optim.py", "visual_prompting/settings.py"]
OTHER_RECIPES = ("paper",)  # run after the default recipe (twice), with the same form
# issue 29's goal for the first run of a fresh app with the default recipe (a user's first click)
GOALS = {"test_top1": (">=", 0.80), "seconds": ("<=", 90.0), "seconds_to_first_step": ("<=", 5.0)}
SMOKE_FORM = {"model": "effnet-lite0@32", "steps": 3, "batch_size": 16, "time_budget": 0}  # 0: no time budget
SESSION = "app-defaults-bench"
STEP = re.compile(r"step (\d+)/")  # the live status line: "step 3/140 · 5 s · loss ..."


def budget(form: dict) -> float | None:
    """The form's training time as a setting: blank or 0 is no time budget (train_form's blank values)."""
    return form["time_budget"] or None


def shown_step(status: str) -> int:
    m = STEP.match(status)
    return int(m.group(1)) if m else 0


def click(vp, form: dict) -> dict:
    """One click on Train: the times the user sees and what the result's prompt file says."""
    from visual_prompting.prompt_file import read_metadata

    t0 = time.perf_counter()
    cfg = vp.train_config(SESSION, **form)
    first_step, last = None, None
    for last in vp.train_stream(cfg, SESSION):
        if first_step is None and shown_step(last.status) >= 1:
            first_step = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    if last is None or not last.done or last.result_path is None:
        raise SystemExit(f"the run gave no prompt: {last.status if last else 'no update at all'}")
    if first_step is None:
        raise SystemExit(f"no update showed a step >= 1 before the result ({last.status})")
    m = read_metadata(last.result_path)["metrics"]
    return {"steps_done": m["steps"], "test_top1": m["test_top1"], "test_top1_no_prompt": m.get("test_top1_no_prompt"),
            "test_n": m.get("test_n"), "seconds": round(seconds, 2), "seconds_to_first_step": round(first_step, 2),
            "train_seconds": m.get("train_seconds"), "status": last.status}


def goal_met(run: dict) -> dict:
    return {k: (run[k] >= v) if op == ">=" else (run[k] <= v) for k, (op, v) in GOALS.items()}


def fresh_app(tmp: str):
    from visual_prompting.ui import AppConfig, VPApp

    return VPApp(AppConfig(work_dir=Path(tmp) / "work", user_zoo_dir=Path(tmp) / "zoo", device="cpu"))


def prewarmed_click(smoke: bool) -> dict:
    """The default recipe's click in a fresh app after its launch prewarm finished (run in a process of its own)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        vp = fresh_app(tmp)
        form = {**vp.first_form(), **(SMOKE_FORM if smoke else {})}
        vp.prewarm(**(SMOKE_FORM if smoke else {})).join()
        prewarm_seconds = time.perf_counter() - t0
        if not len(vp.baselines):
            raise SystemExit("the prewarm failed (see the log above): nothing was cached")
        return {"prewarm_seconds": round(prewarm_seconds, 2), **click(vp, form)}


def run_prewarmed(args) -> dict:
    """:func:`prewarmed_click` in a new Python process (its imports and one-time set-up not done by the runs before)."""
    cmd = [sys.executable, __file__, "--prewarmed-click", *(["--smoke"] if args.smoke else []),
           *(["--threads", str(args.threads)] if args.threads else [])]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"the prewarmed run failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = bench_parser(__doc__, "app_defaults", "3 steps of 16 at 32 px, no time budget, instead of the app's defaults")
    ap.add_argument("--prewarmed-click", action="store_true", help=argparse.SUPPRESS)  # the run in its own process
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    if args.prewarmed_click:
        print(json.dumps(prewarmed_click(args.smoke)))
        return {}
    from visual_prompting.utils import percent

    prov = provenance("app_defaults.py", argv, "cpu")
    t_all = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        vp = fresh_app(tmp)
        default = vp.train_defaults().recipe
        page = vp.first_form(default)  # the page as it opens
        plan = [(default, "cold", False), (default, "warm", True), *((r, "warm", False) for r in OTHER_RECIPES)]
        for i, (recipe, caches, again) in enumerate(plan, 1):
            form = {**(page if recipe == default else vp.first_form(recipe)), **(SMOKE_FORM if args.smoke else {})}
            settings = {f.name: form[f.name] for f in vp.form if f.recipe}
            run = {"recipe": recipe, "default": recipe == default, "again": again, "caches": caches, "app_run": i,
                   "settings": settings, "model": form["model"], "steps": form["steps"],
                   "batch_size": form["batch_size"], "time_budget": budget(form), **click(vp, form)}
            if i == 1:  # the goal is the first click's
                run["goal_met"] = goal_met(run)
            runs.append(run)
            print(f"{recipe:8s} {caches}: test top-1 {percent(run['test_top1'])} (no prompt "
                  f"{percent(run['test_top1_no_prompt'])}), {run['steps_done']} steps, "
                  f"{run['seconds']:.1f} s from the click to the result, first step shown after "
                  f"{run['seconds_to_first_step']:.1f} s", flush=True)
        cold = runs[0]
    pre = {**{k: cold[k] for k in ("recipe", "default", "settings", "model", "steps", "batch_size", "time_budget")},
           "again": False, "caches": "prewarmed", "app_run": 1, **run_prewarmed(args)}
    runs.append(pre)
    print(f"{pre['recipe']:8s} prewarmed: the prewarm done {pre['prewarm_seconds']:.1f} s after the app was made; then "
          f"test top-1 {percent(pre['test_top1'])}, {pre['steps_done']} steps, {pre['seconds']:.1f} s from the click "
          f"to the result, first step shown after {pre['seconds_to_first_step']:.1f} s", flush=True)
    # the app's defaults as the page shows them (the runs say what they ran: --smoke runs a smaller form)
    keys = ("model", "steps", "batch_size", "time_budget", "dataset", "seed")
    doc = {"provenance": prov, "defaults": {**{k: page[k] for k in keys}, "time_budget": budget(page), "recipe": default},
           "goals": {k: f"{op} {v:g}" for k, (op, v) in GOALS.items()}, "smoke": args.smoke, "runs": runs,
           "total_seconds": round(time.perf_counter() - t_all, 2)}
    write_json(Path(args.out) / "app_defaults.json", doc)
    return doc


if __name__ == "__main__":
    main()
