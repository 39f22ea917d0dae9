"""The numbers in README.md, benchmarks/README.md and prompts_zoo/README.md, written from the results files.

    python benchmarks/report.py            # rewrite every block between <!-- report:NAME --> and <!-- /report:NAME -->
    python benchmarks/report.py --check    # exit 1 when a README differs from what this would write, or holds a
                                           # figure outside the blocks (what tests/test_report.py runs)
    python benchmarks/report.py --stale    # list each result whose measured code changed after its commit (not its
                                           # comments, docstrings or row labels; recipes.py only through the recipes
                                           # it ran), and each accuracy row whose seeds ran on different kinds of
                                           # machine (warning)

Every number in those READMEs comes from here: a results file under benchmarks/results/ (or
prompts_zoo/index.json) read as written by its tool, with its date and commit printed beside each table. Prose
outside the blocks holds no measured figure (``--check`` looks for numbers with units there; the few constants
it lets through are listed in ALLOWED). Nothing here reads a README's old numbers or types one in.
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (REPO, markdown_table, merged_from, portable_command, provenance_of, runs_behind,  # noqa: E402
                    runs_count, runs_lines, runs_total)

from visual_prompting.utils import percent  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
READMES = ["README.md", "benchmarks/README.md", "prompts_zoo/README.md"]

# (name, results file, the script whose MEASURES declares the code it measures)
SOURCES = [
    ("accuracy", "benchmarks/results/accuracy.json", "benchmarks/accuracy.py"),
    ("accuracy (GPU)", "benchmarks/results/gpu/accuracy.json", "benchmarks/accuracy.py"),
    ("accuracy (digits)", "benchmarks/results/digits/accuracy.json", "benchmarks/accuracy.py"),
    ("speed", "benchmarks/results/speed.json", "benchmarks/speed.py"),
    ("scaling", "benchmarks/results/scaling.json", "benchmarks/scaling.py"),
    ("app_latency", "benchmarks/results/app_latency.json", "benchmarks/app_latency.py"),
    ("load", "benchmarks/results/load.json", "benchmarks/load.py"),
    ("gpu_check", "benchmarks/results/gpu/gpu_check.json", "scripts/gpu_check.py"),
    ("zoo", "prompts_zoo/index.json", "scripts/build_zoo.py"),
    ("zoo verify", "prompts_zoo/verify.json", "scripts/build_zoo.py"),
    ("readme_train", "benchmarks/results/readme_train.json", "benchmarks/readme_train.py"),
    ("app_defaults", "benchmarks/results/app_defaults.json", "benchmarks/app_defaults.py"),
    ("test_suite", "benchmarks/results/test_suite.json", "benchmarks/test_suite.py"),
]

# figures outside the blocks that are constants, not measurements (the paper's recipe, the library's rules)
ALLOWED = ["(10%)", "the 1.2x goal", "20% held out", "within 10%", "10% above", "last 10% of steps", "~45 s of retries",
           "~20 s", "95% interval"]  # the confidence level of compare's interval, not a measured figure
FIGURE = re.compile(r"(?<![\w.])~?\d[\d,]*(?:\.\d+)?\s?(?:%|x\b|img/s|images/s|min\b|s\b|ms\b|MiB|GB|points?\b)")
BLOCK = re.compile(r"^([ \t]*)<!-- report:([\w-]+) -->\n(.*?)^[ \t]*<!-- /report:\2 -->", re.S | re.M)


# -- reading ---------------------------------------------------------------------------------------------------

def load(rel: str) -> dict | None:
    p = REPO / rel
    return json.loads(p.read_text()) if p.is_file() else None


def assigns(node: ast.AST, name: str) -> bool:
    """Whether a statement is an assignment to the module-level ``name`` (MEASURES, RENDERS, ROWS)."""
    return isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets)


def measures(script: str) -> list[str]:
    """The MEASURES list a script declares (read without importing it)."""
    tree = ast.parse((REPO / script).read_text())
    for node in tree.body:
        if assigns(node, "MEASURES"):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{script} declares no MEASURES")


def command(prov: dict) -> str:
    """The recorded command of a run as shown: a path of the machine that ran it reads ``DIR``."""
    return portable_command(prov.get("command"))


def stamp(prov: dict, rel: str) -> str:
    """`file`: date, commit (dirty), and whether the tool recorded its provenance."""
    c = str(prov.get("git_commit") or "no commit")[:10]
    dirty = " (dirty tree)" if prov.get("git_dirty") else ""
    text = f"`{rel}`, {str(prov.get('date_utc') or 'no date')[:10]}, commit {c}{dirty}"
    if prov.get("source_commit_declared"):  # a lent machine's copy of the tree: its git may report another commit
        text += f" (a copy of commit {str(prov['source_commit_declared'])[:10]}, as its launcher declared)"
    if not prov.get("recorded"):
        text += ", provenance not recorded by the tool (see its `provenance.note`)"
    return text


def cores(prov: dict) -> str:
    m = prov.get("machine") or {}
    gpu = m.get("gpu") or (m.get("device_name") if m.get("device") == "cuda" else None)
    return gpu or f"{m.get('cpus_usable') or m.get('cpu_count')}-core CPU"


def missing(rel: str, command: str) -> str:
    return f"(not measured yet: `{command}` writes `{rel}`)"


# -- blocks ----------------------------------------------------------------------------------------------------

def b_tests_time() -> str:
    d = load("benchmarks/results/test_suite.json")
    if not d or d.get("smoke"):
        return "Its run time is not measured yet: `python benchmarks/test_suite.py` times it."
    p = provenance_of(d)
    opts = f" (with `{d['pytest_addopts']}` from pyproject.toml)" if d.get("pytest_addopts") else ""
    return (f"It took {d['wall_seconds'] / 60:.1f} minutes on the project's {cores(p)}, `{d['pytest_command']}`{opts}: "
            f"{d['summary_line']}; {stamp(p, 'benchmarks/results/test_suite.json')}")


def b_app_defaults() -> str:
    rel = "benchmarks/results/app_defaults.json"
    d = load(rel)
    if not d or d.get("smoke"):
        return "CPU defaults: " + missing(rel, "python benchmarks/app_defaults.py")
    runs = d["runs"]
    if "seconds_to_first_step" not in runs[0]:  # written before the app's runs were timed from the click
        return _app_defaults_steps(d, rel)
    df = d["defaults"]
    cold = next(r for r in runs if r["caches"] == "cold")
    warm = next(r for r in runs if r["again"])
    budget = (f"a training time of {df['time_budget']:.0f} s, at most {df['steps']} steps" if df["time_budget"]
              else f"{df['steps']} steps")
    others = "; ".join(f"recipe {r['recipe']} {percent(r['test_top1'])} in {r['seconds']:.0f} s ({r['steps_done']} "
                       f"steps)" for r in runs if not r["default"])
    pre = next((r for r in runs if r["caches"] == "prewarmed"), None)
    prewarmed = "" if pre is None else (
        f"; a first click in a fresh app after its launch prewarm (which `python app.py` starts with its server; "
        f"done {pre['prewarm_seconds']:.0f} s after the app was made): {percent(pre['test_top1'])} in "
        f"{pre['seconds']:.0f} s ({pre['steps_done']} steps), the first step after "
        f"{pre['seconds_to_first_step']:.1f} s")
    lr = cold.get("settings", {}).get("lr")  # a recipe's short-run lr on a CPU, when it has one
    recipe = df["recipe"] + ("" if lr is None else f" at lr {lr:g}")
    return (f"CPU defaults ({df['model']}, batch {df['batch_size']}, {budget}, recipe {recipe}), measured on the "
            f"bundled subset through the app's training path by `python benchmarks/app_defaults.py` "
            f"({stamp(provenance_of(d), rel)}): the first run of a fresh app gives {percent(cold['test_top1'])} test "
            f"top-1 against {percent(cold['test_top1_no_prompt'])} without a prompt, {cold['steps_done']} steps "
            f"trained, the result {cold['seconds']:.0f} s after the click and the first step shown after "
            f"{cold['seconds_to_first_step']:.1f} s; a later run in the same app (backbone loaded, numbers without a "
            f"prompt cached): {percent(warm['test_top1'])} in {warm['seconds']:.0f} s ({warm['steps_done']} steps), "
            f"the first step after {warm['seconds_to_first_step']:.1f} s{prewarmed}; with the same settings "
            f"otherwise: {others} (one seed each).")


def _app_defaults_steps(d: dict, rel: str) -> str:
    """An app_defaults.json written before the app's CPU default was a training time: each recipe's fixed steps."""
    df, runs = d["defaults"], d["runs"]
    first = runs[0]
    others = ", ".join(f"recipe {r['recipe']} {percent(r['test_top1'])} in {r['seconds']:.0f} s" for r in runs[1:])
    return (f"CPU defaults ({df['model']}, {df['steps']} steps of {df['batch_size']}, recipe {df['recipe']}), "
            f"measured on the bundled subset by `python benchmarks/app_defaults.py` ({stamp(provenance_of(d), rel)}): "
            f"{percent(first['test_top1'])} test top-1 in {first['seconds']:.0f} s against "
            f"{percent(first['test_top1_no_prompt'])} without a prompt; with the same budget: {others} "
            f"(one seed each).")


def b_app_latency() -> str:
    rel = "benchmarks/results/app_latency.json"
    d = load(rel)
    p = provenance_of(d)
    return (f"Measured on the {cores(p)} (`{command(p)}`; {stamp(p, rel)}): {d['launch_to_page_s']:.1f} s from "
            f"`python app.py` to the page answering, {d['launch_to_first_prediction_s']:.1f} s to the first prediction "
            f"through `gradio_client` (the backbone loads on first use), then {d['prediction_s']:.3f} s per prediction "
            f"against {d['gradio_floor_s']:.3f} s for an empty Gradio endpoint with the same inputs and outputs; the "
            f"app's own work is {1000 * d['handler_s']:.1f} ms of it, {d['handler_ratio']:.2f}x the bare forward pass "
            f"of the model.")


def b_readme_train() -> str:
    rel = "benchmarks/results/readme_train.json"
    d = load(rel)
    if not d or d.get("smoke"):
        return "The `train` run above " + missing(rel, "python benchmarks/readme_train.py") + "."
    p = provenance_of(d)
    lines = d["output_lines"]
    body = "\n".join(f"    {ln}" for ln in lines[:1] + ["..."] + lines[1:])
    first = (f", the first step on its progress bar {d['seconds_to_first_step']:.1f} s after the command started"
             if "seconds_to_first_step" in d else "")  # recorded since issue 29
    return (f"The `train` run above, as printed when `python benchmarks/readme_train.py` last ran it on the "
            f"{cores(p)} ({d['wall_seconds'] / 60:.1f} min wall clock{first}, load average before the run "
            f"{p.get('load_average_before_run')}; {stamp(p, rel)}):\n\n{body}\n")


def zoo_rows() -> tuple[str, dict]:
    d = load("prompts_zoo/index.json")
    def recipe(e):
        name = command_recipe(e)
        return f"`{name}`" if name else "-"

    def trained(e):  # the training run's commit and date, when it recorded them
        p = e.get("provenance") or {}
        return f"{p['date_utc'][:10]}, {p['git_commit'][:10]}" if p.get("recorded") else "not recorded"

    rows = [[f"`{e['path']}`", f"{e['prompter']} ({e['prompt_size']} px)", recipe(e), e["dataset"],
             f"{percent(e['metrics']['test_top1_no_prompt'])} -> {percent(e['metrics']['test_top1'])} ({e['metrics']['test_n']})",
             f"{round(e['train_seconds'] / 60)} min" if e.get("train_seconds") else "-", trained(e)] for e in d["prompts"]]
    return markdown_table(["prompt file", "prompter", "recipe", "trained on",
                           "test top-1: no prompt -> prompted (test images)", "train time", "trained (date, commit)"],
                          rows), d


def command_recipe(entry: dict) -> str | None:
    """The ``--recipe`` of the command that trained a zoo entry, None when it names none."""
    words = (entry.get("command") or "").split()
    return words[words.index("--recipe") + 1] if "--recipe" in words[:-1] else None


def b_zoo() -> str:
    table, d = zoo_rows()
    p = provenance_of(d) if isinstance(d.get("provenance"), dict) and d["provenance"].get("recorded") else \
        {"recorded": False, "note": (d.get("provenance") or {}).get("note")}
    v = load("prompts_zoo/verify.json")
    verify = (f"`--verify` ({stamp(provenance_of(v), 'prompts_zoo/verify.json')}): largest difference from the "
              f"listed accuracy {v['largest_difference_points']:.2f} points over {len(v['entries'])} entries."
              if v else "`--verify` has not recorded a run yet (it writes `prompts_zoo/verify.json`).")
    index = (f"{stamp(p, 'prompts_zoo/index.json')} (the run that wrote the index; it measured the bundled-subset accuracies again)"
             if p.get("recorded") else "`prompts_zoo/index.json`")
    untraced = [e for e in d.get("prompts", []) if not (e.get("provenance") or {}).get("recorded")]
    note = (f" {'The' if len(untraced) == len(d.get('prompts', [])) else len(untraced)} training runs recorded no "
            "commit, date or machine (they predate provenance records)." if untraced else "")
    return (f"{table}\n\nFrom {index}.{note} Train times were measured while other jobs "
            f"shared the CPU cores, so they are upper bounds. {verify}\n")


def accuracy_block(rel: str, title: str) -> str:
    d = load(rel)
    acc = _accuracy_module()
    p = provenance_of(d)
    s = acc.summarize(d["rows"])
    runs = runs_behind(d)
    if runs_total(runs) == 1:
        lines = [f"{title} ({stamp(p, rel)}; {cores(p)}, load average before the run "
                 f"{p.get('load_average_before_run')}):", "", f"    {command(p)}", ""]
    else:  # rows merged from several runs: each commit's rows, not one run's command for all
        lines = [f"{title} (`{rel}`, {cores(p)}): {merged_from(runs)}:", "", *runs_lines(runs), ""]
    lines += [acc.table(d["rows"]), ""]
    if "gap_points" in s:
        total = f" {d['total_seconds'] / 60:.1f} min in all." if d.get("total_seconds") else ""
        lines.append(acc.gap_sentence(s) + total)
    lines += [f"- {o}" for o in s["observations"]]
    return "\n".join(lines) + "\n"


def b_accuracy_rows() -> str:
    """The benchmark's rows as accuracy.py defines them (``ROWS``): settings, comparisons, the default run."""
    acc = _accuracy_module()

    def settings(r):
        return ", ".join(([f"recipe `{r.recipe}`"] if r.recipe else []) + [f"`{k}={v}`" for k, v in r.settings.items()])

    rows = [[f"`{r.name}`", r.kind, settings(r) or "-",
             "; ".join(f"`{other}` ({what})" for other, what in r.compared_with) or "-",
             "yes" if r.default else "no", r.description] for r in acc.ROWS]
    reference = next(r.name for r in acc.ROWS if r.time_reference)
    return (markdown_table(["row", "kind", "settings", "compared with (what the difference says)", "default run", "what"],
                           rows)
            + f"\n\nThe fastest row's time to the target accuracy is read against `{reference}`.\n")


def b_accuracy_cpu() -> str:
    return accuracy_block("benchmarks/results/accuracy.json", "On the CPU at 96 px")


def b_accuracy_gpu() -> str:
    return accuracy_block("benchmarks/results/gpu/accuracy.json", "On a GPU at 224 px")


def b_accuracy_digits() -> str:
    return accuracy_block("benchmarks/results/digits/accuracy.json", "On a second dataset, UCI handwritten digits "
                          "(`scripts/make_digits.py`), at 96 px")


def b_accuracy_budget() -> str:
    d = load("benchmarks/results/accuracy.json")
    rows = d["rows"]
    trained = [r["seconds"] / 60 for r in rows if r["kind"] == "prompt"]
    np_ = [r["seconds"] / 60 for r in rows if r["kind"] == "no_prompt"]
    lp = [r["seconds"] / 60 for r in rows if r["kind"] == "linear_probe"]
    provs = [r.get("provenance") or {} for r in rows]
    single = sum(1 for p in provs if (p.get("machine") or {}).get("torch_threads") == 1)
    busy = max((p.get("load_average_before_run") or [0])[0] for p in provs)
    caveat = (f" These are the rows' own times from several runs: {single} of {len(rows)} rows ran with one torch "
              f"thread, side by side with another run, and the busiest started at a load average of {busy:.1f}, so "
              "they overstate what one run on an idle machine takes." if single or busy > 1.5 else "")
    runs = runs_behind(d)
    when = (stamp(provenance_of(d), 'benchmarks/results/accuracy.json') if runs_total(runs) == 1 else
            f"`benchmarks/results/accuracy.json`, {runs_count(runs)}")
    return (f"Measured ({when}): "
            f"{d['total_seconds'] / 60:.1f} min in all on the {cores(provenance_of(d))}; a trained row "
            f"{min(trained):.1f}-{max(trained):.1f} min, the no-prompt rows {min(np_):.1f}-{max(np_):.1f} min, the "
            f"linear probe {lp[0]:.1f} min.{caveat}")


def effect_points(rows: list[dict], e: dict) -> float:
    """An effect's difference recomputed from its two rows: summarize() stores it rounded to 2 decimals, and
    rounding that again to 1 can disagree with the effect's own text (-2.55 shows as -2.5 beside its -2.6)."""
    by = {r["method"]: r for r in rows}
    return 100 * (by[e["a"]]["test_top1"] - by[e["b"]]["test_top1"])


def row_machines(row: dict) -> set[str]:
    """The kinds of machine (:func:`machine_kind`) a row's seeds, or the row itself, ran on."""
    return set(seed_machines(row)) or {machine_kind(row.get("provenance") or {})}


def across_machines(rows: list[dict], e: dict) -> str:
    """" (its rows ran on different machines)" when an effect compares rows measured on different kinds of machine:
    its difference then mixes the machine's arithmetic with the method, which the seed spread does not cover."""
    by = {r["method"]: r for r in rows}
    return " (its rows ran on different machines)" if len(row_machines(by[e["a"]]) | row_machines(by[e["b"]])) > 1 \
        else ""


def b_accuracy_reading() -> str:
    cpu, gpu = load("benchmarks/results/accuracy.json"), load("benchmarks/results/gpu/accuracy.json")
    acc = _accuracy_module()
    out = []
    for d, where in ((cpu, "CPU, 96 px"), (gpu, "GPU, 224 px")):
        s = acc.summarize(d["rows"])
        seeds = sorted({len(r.get("seeds") or [0]) for r in d["rows"] if r["kind"] == "prompt"})
        out.append(f"- {where}: the best input-only prompt ({s['best_prompt']}, {percent(s['best_prompt_test_top1'])}) is "
                   f"{s['gap_points']:.1f} points below the linear probe ({percent(s['linear_probe_test_top1'])}); "
                   f"prompt rows ran with {'/'.join(map(str, seeds))} seed(s).")
        apart = [r for r in d["rows"] if r["kind"] == "prompt" and r.get("input_only") is False]
        if apart:
            lp = next(r for r in d["rows"] if r["kind"] == "linear_probe")
            out.append("  Not input-only, reported apart: " + "; ".join(
                f"{r['method']} {percent(r['test_top1'])} with {r['trainable_params']:,} trained numbers" for r in apart)
                + f" (the linear probe trains {lp['trainable_params']:,}).")
        if "fastest_to_target" in s:
            out.append("  " + time_to_accuracy(s))
        drops = s.get("capture_drop_points") or {}
        if drops:
            out.append("  Shared or resized prompted images (test top-1 lost after a JPEG-75 / a 0.75x resize round "
                       "trip): " + "; ".join(f"{m} {v['jpeg75']:.1f} / {v['resize075']:.1f} points"
                                             for m, v in drops.items()) + ".")
        conclusive = [e for e in s["effects"] if e["conclusive"]]
        open_ = [e for e in s["effects"] if not e["conclusive"]]
        if conclusive:
            out.append("  Larger than the seed spread: " + "; ".join(
                f"{e['what']} {effect_points(d['rows'], e):+.1f} points{across_machines(d['rows'], e)}"
                for e in conclusive) + ".")
        if open_:
            out.append("  Not shown (one seed, or within the spread): " + "; ".join(
                f"{e['what']} ({effect_points(d['rows'], e):+.1f}){across_machines(d['rows'], e)}" for e in open_) + ".")
    return "\n".join(out) + "\n"


def time_to_accuracy(s: dict) -> str:
    """The reading's sentence on the summary's time to the target accuracy (accuracy.py's ``time_to_target``): the
    fastest row against the time reference row."""
    ref, frac = s["time_reference"], s["fastest_fraction_of_time_reference"]
    if s.get("target_at_first_evaluation"):
        return (f"Time to accuracy: {s['fastest_to_target']} reached the target validation top-1 at the first "
                f"evaluation (step {s['fastest_steps_to_target']}), {ref} at step "
                f"{s['time_reference_steps_to_target']}: at this setting the target is too low to tell rows apart by "
                "speed.")
    against = (f"{ref} at step {s['time_reference_steps_to_target']} ({frac:.2f} of its steps)"
               if s["time_reference_reached_target"] else
               f"{ref} not within its run for every seed (so under {frac:.2f} of the steps it needs)")
    return (f"Time to accuracy: {s['fastest_to_target']} first reached the target validation top-1 at step "
            f"{s['fastest_steps_to_target']} (the slowest of its seeds), {against}.")


def b_speed() -> str:
    d = load("benchmarks/results/speed.json")
    sp = _speed_module()
    out = [sp.table(d["results"]), ""]
    for model, per in d["results"].items():
        for dev, r in per.items():
            p = provenance_of(r)
            out.append(f"- {model} {dev}: `{command(p)}`; {stamp(p, 'benchmarks/results/speed.json')}; "
                       f"load average before the run {p.get('load_average_before_run')}")
    out += [""]
    for model, per in d["results"].items():
        for dev, r in per.items():
            out.append(speed_line(sp, model, dev, sp.entry(r)))
    return "\n".join(out) + "\n"


def speed_line(sp, model: str, dev: str, r: dict) -> str:
    """One speed.json entry in words: the library's step against the best execution, the eager loop and the
    reference loop (each with its goal), the distance to the hardware, every execution's images/s."""
    rep = r.get("per_repeat_img_s") or {}
    rng = lambda k: (f"{min(rep[k]):,.1f}-{max(rep[k]):,.1f}" if rep.get(k) else "-")  # noqa: E731
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    head = f"- {model} on {dev} ({cores(provenance_of(r))}, batch {r['batch_size']}): "
    ref = (f"library/reference {r['ratio_vs_reference']:.2f} (goal {sp.GOAL_VS_REFERENCE:g}: "
           f"{met(r['ratio_vs_reference'] >= sp.GOAL_VS_REFERENCE)})")
    sync = (f" The same step reading each loss with a stream sync (as before `HostReadback`): "
            f"{r['library_stream_sync_img_s']:,.0f} img/s, {r['library_stream_sync_img_s'] / r['eager_img_s']:.2f}x "
            "the eager loop." if r.get("library_stream_sync_img_s") else "")
    if r.get("eager_loop_only"):  # measured before the candidate executions
        return (head + f"library/eager {r['ratio_vs_eager']:.2f} (this run timed only the eager loop, then called "
                f"the limit: no other execution, FLOP count or matmul peak), {ref}; per repeat, library "
                f"{rng('library')} img/s, eager {rng('eager')} img/s." + sync)
    best, mm = r["best_execution"], r["matmul_peak"]
    live = f"goal {sp.GOAL_LIVE_VS_EAGER}: {met(r['ratio_vs_eager'] >= sp.GOAL_LIVE_VS_EAGER)}, the app's live run" \
        if any(k.startswith("ratio_vs_eager>=") for k in r["goals"]) else "no goal"
    compiled = (f"; torch.compile {r['compile_img_s']:,.1f} img/s after a first step of {r['compile_warmup_s']:.0f} s, "
                f"so {r['executions_img_s']['compile']:,.1f} over {r['compile_horizon_steps']} steps"
                if "compile_img_s" in r else "")
    return (head + f"library/best execution {r['ratio_vs_best_execution']:.2f} (goal {sp.GOAL_VS_BEST}: "
            f"{met(r['ratio_vs_best_execution'] >= sp.GOAL_VS_BEST)}; best: {best}), library/eager "
            f"{r['ratio_vs_eager']:.2f} ({live}), {ref}. FLOP utilisation (FLOPs per image x images/s over the "
            f"measured matmul peak): library {percent(r['flop_utilisation'])}, best execution "
            f"{percent(r['best_execution_flop_utilisation'])}, eager {percent(r['eager_flop_utilisation'])} "
            f"({r['flops_per_image'] / 1e9:.3g} GFLOP per image; peak {mm['flop_s'] / 1e9:,.1f} GFLOP/s, "
            f"{mm['n']}x{mm['n']} {mm['dtype']} matmul, {mm['threads']} thread(s)). Executions, img/s: "
            + ", ".join(f"{n} {v:,.1f}" for n, v in r["executions_img_s"].items() if n != "compile") + compiled
            + f"; per repeat, library {rng('library')} img/s, {best} {rng(best)} img/s." + sync)


def b_scaling() -> str:
    rel = "benchmarks/results/scaling.json"
    d = load(rel)
    p = provenance_of(d)
    tr, ev = d["training"], d["evaluation"]
    t1 = markdown_table(["batch size", "s / step", "images/s"],
                        [list(x) for x in zip(tr["batch_sizes"], tr["seconds_per_step"], tr["images_per_s"])])
    t2 = markdown_table(["images", "seconds", "images/s"],
                        [list(x) for x in zip(ev["dataset_sizes"], ev["seconds"], ev["images_per_s"])])
    best = max(range(len(tr["images_per_s"])), key=lambda i: tr["images_per_s"][i])
    return (f"{d['settings']['model']} ({stamp(p, rel)}; {cores(p)}):\n\n    {command(p)}\n\n{t1}\n\n{t2}\n\n"
            + "\n".join(f"- {c}" for c in d["conclusions"])
            + f"\n- Training throughput peaks at batch {tr['batch_sizes'][best]} ({tr['images_per_s'][best]:.0f} img/s) "
              f"and reads {tr['images_per_s'][-1]:.0f} img/s at batch {tr['batch_sizes'][-1]}; evaluation reads "
              f"{min(ev['images_per_s']):.0f}-{max(ev['images_per_s']):.0f} img/s over "
              f"{ev['dataset_sizes'][0]}-{ev['dataset_sizes'][-1]} images.\n"
            + (f"\n{_scaling().distributed_text(d)}\n" if d.get("distributed") else ""))


def _scaling():
    """benchmarks/scaling.py as a module (its distributed section's text)."""
    import importlib

    return importlib.import_module("scaling")


def b_app_latency_table() -> str:
    rel = "benchmarks/results/app_latency.json"
    d = load(rel)
    p = provenance_of(d)
    t = markdown_table(
        ["launch -> page (s)", "launch -> first prediction (s)", "prediction (s)", "handler in process (s)",
         "bare forward, batch 2 (s)", "ratio (goal <= 1.2)", "handler ratio", "empty Gradio endpoint (s)"],
        [[d["launch_to_page_s"], d["launch_to_first_prediction_s"], d["prediction_s"], d["handler_s"],
          d["bare_forward_s"], d["ratio"], d["handler_ratio"], d["gradio_floor_s"]]])
    return (f"{stamp(p, rel)}; {cores(p)}:\n\n    {command(p)}\n\n{t}\n\n"
            f"- In process the handler is {d['handler_ratio']:.2f}x the bare forward ({1000 * d['handler_s']:.1f} vs "
            f"{1000 * d['bare_forward_s']:.1f} ms; goal 1.2: {'met' if d['handler_ratio'] <= 1.2 else 'not met'}).\n"
            f"- Over HTTP a prediction takes {1000 * d['prediction_s']:.0f} ms ({d['ratio']:.1f}x the bare forward); "
            f"an endpoint that does no work takes {1000 * d['gradio_floor_s']:.0f} ms.\n")


def b_load() -> str:
    rel = "benchmarks/results/load.json"
    d = load(rel)
    if not d or d["settings"].get("smoke"):
        return missing(rel, "python benchmarks/load.py --users 16,64")
    p = provenance_of(d)
    return f"{stamp(p, rel)}:\n\n    {command(p)}\n\n{_load_test_module().load_table(d, cores(p))}\n"


def b_gpu_check() -> str:
    rel = "benchmarks/results/gpu/gpu_check.json"
    d = load(rel)
    p = provenance_of(d)
    by = {}
    for r in d["throughput"]:
        by.setdefault(r["spec"], {})[r["amp"]] = r["images_per_s"]
    parts = ", ".join(f"{s} {v.get(True, 0):,.0f} vs {v.get(False, 0):,.0f} img/s" for s, v in by.items())
    sr = d.get("short_run") or {}
    return (f"`scripts/gpu_check.py` on {d['device']} ({stamp(p, rel)}): the library's step with AMP against fp32: "
            f"{parts}; loss and prompt finite in every case: "
            f"{all(r['loss_finite'] and r['prompt_finite'] for r in d['throughput'])}. A {sr.get('steps')}-step "
            f"{sr.get('spec')} run on the bundled subset took {sr.get('seconds')} s: {percent(sr.get('test_top1'))} test "
            f"top-1 against {percent(sr.get('test_top1_no_prompt'))} without the prompt.\n")


def search_steps(r: dict) -> int:
    """The step budget of a recipe_search.jsonl record: its settings' ``steps``, else its command's ``--steps``, else
    the script's default (1000, the CPU budget)."""
    given = r.get("given") or r.get("settings") or {}
    if given.get("steps"):
        return int(given["steps"])
    m = re.search(r"--steps (\d+)", str((r.get("provenance") or {}).get("command") or ""))
    return int(m.group(1)) if m else 1000


BUDGET_DATASET = "fashion_mnist"  # recipe_search.py's default: the accuracy benchmark's Fashion-MNIST subsets


def recipe_search_groups(records: list[dict], min_seeds: int = 3, steps: int | None = 1000,
                         dataset: str | None = BUDGET_DATASET) -> list[dict]:
    """Candidates of ``benchmarks/results/recipe_search.jsonl`` finished with ``min_seeds`` or more seeds at ``steps``
    steps on ``dataset`` (None: any step count / any dataset but the budget's) in one run of the search (same name,
    dataset, steps, device, commit and day), best mean first."""
    groups: dict[tuple, list] = {}
    for r in records:
        ds, n = r.get("dataset") or BUDGET_DATASET, search_steps(r)
        wanted = ds == dataset if dataset is not None else not (ds == BUDGET_DATASET and n == 1000)
        if r.get("test_top1") is None or not wanted or (steps is not None and n != steps):
            continue
        p = r.get("provenance") or {}
        dev = (p.get("machine") or {}).get("device_name") if p.get("recorded") else None
        key = (r["name"], dev or "2-core CPU", str(p.get("git_commit") or "")[:10], str(p.get("date_utc") or "")[:10],
               ds, n)
        groups.setdefault(key, []).append(r)
    out = []
    for (name, where, commit, day, ds, n_steps), rs in groups.items():
        if len({r["seed"] for r in rs}) < min_seeds:
            continue
        rs = sorted(rs, key=lambda r: r["seed"])
        given = {k: v for k, v in (rs[0].get("given") or {}).items()  # another recipe than live is a change
                 if k != "amp" and (k, v) != ("recipe", "live")}
        what = ", ".join(f"{k} {v}" for k, v in given.items())
        if rs[0].get("experiment_env"):
            what = ", ".join(filter(None, [what, rs[0]["experiment_env"] + " (experiment diff)"]))
        # a folder of class folders reads as its name (the record keeps the path it ran on)
        label = Path(ds).name if "/" in ds else ds
        out.append({"name": name, "where": where, "day": day, "commit": commit, "dataset": label, "steps": n_steps,
                    "seeds": [r["seed"] for r in rs],
                    "tops": [r["test_top1"] for r in rs], "mean": sum(r["test_top1"] for r in rs) / len(rs),
                    "what": what or ("the default recipe" if name == "live" else "-")})
    return sorted(out, key=lambda g: -g["mean"])


def b_recipe_search() -> str:
    rel = "benchmarks/results/recipe_search.jsonl"
    p = REPO / rel
    records = [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.is_file() else []
    groups = recipe_search_groups(records)
    acc = load("benchmarks/results/accuracy.json") or {"rows": []}
    probe = next((r for r in acc["rows"] if r["kind"] == "linear_probe"), None)
    names = {r["name"] for r in records}
    def cells(g: dict, *data: str) -> list[str]:
        """A candidate's row: name, what it changes, ``data`` (any), where and when, each seed's and the mean."""
        return [f"`{g['name']}`", g["what"], *data, f"{g['where']}, {g['day']}, {g['commit'] or 'commit not recorded'}",
                ", ".join(f"{100 * t:.2f}" for t in g["tops"]), f"{100 * g['mean']:.2f}"]

    rows = [cells(g) for g in groups]
    on_budget = sum((r.get("dataset") or BUDGET_DATASET) == BUDGET_DATASET for r in records)
    head = (f"`{rel}`: {len(records)} runs (some stopped early, some at other step counts) of {len(names)} named "
            f"candidates, {on_budget} of them on the CPU budget's data (effnet-lite0@96, "
            f"the benchmark's 10,000 train / 2,000 validation images, batch 64, one seed per run; the commands and "
            f"machines are in each record). The candidates finished with three seeds or more in one sweep at 1000 "
            f"steps, best mean first")
    tail = ""
    if probe and groups:
        above = [g for g in groups if g["mean"] >= probe["test_top1"]]
        tail = (f"\n\nThe linear probe (`benchmarks/results/accuracy.json`): {percent(probe['test_top1'], 2)}; "
                + (f"{len(above)} of these at or above it." if above else
                   f"none of these reaches it (the best, `{groups[0]['name']}`, {100 * groups[0]['mean']:.2f}%)."))
    short = recipe_search_groups(records, steps=None, dataset=None)
    if short:
        tail += ("\n\nFinished with three seeds or more at other step counts or on other data (test top-1 on that "
                 "data's test split; the bundled subset: 2,700 train / 300 validation / 1,000 test images), best mean "
                 "first within each:\n\n" + markdown_table(
                     ["candidate", "what it changes (from recipe live)", "data, steps", "run on", "test top-1 % per seed",
                      "mean %"],
                     [cells(g, f"{g['dataset']}, {g['steps']}")
                      for g in sorted(short, key=lambda g: (g["dataset"], g["steps"], -g["mean"]))]))
        longer = sorted((g for g in short if g["dataset"] == BUDGET_DATASET and g["steps"] > 1000),
                        key=lambda g: (g["steps"], -g["mean"]))
        if probe and longer:  # the same data as the probe's row: its 10,000 train, 2,000 validation and test images
            tail += ("\n\nOn the CPU budget's data with more steps than its 1000 (the probe's data and test images), "
                     "against the linear probe's " + percent(probe["test_top1"], 2) + ": " + "; ".join(
                         f"`{g['name']}` ({g['steps']} steps, {len(g['tops'])} seeds) {100 * g['mean']:.2f}% "
                         f"({100 * min(g['tops']):.2f}-{100 * max(g['tops']):.2f}), "
                         f"{100 * (g['mean'] - probe['test_top1']):+.2f} points"
                         for g in longer) + ".")
    return (head + ":\n\n" + markdown_table(["candidate", "what it changes (from recipe live)", "run on",
                                              "test top-1 % per seed", "mean %"], rows) + tail + "\n")


def b_benchmarks_table() -> str:
    sp, sp_mod = load("benchmarks/results/speed.json")["results"], _speed_module()
    sc, al = load("benchmarks/results/scaling.json"), load("benchmarks/results/app_latency.json")
    acc, gacc = load("benchmarks/results/accuracy.json"), load("benchmarks/results/gpu/accuracy.json")
    rows = []
    for dev in ("cpu", "cuda"):
        groups: dict[tuple[str, str], dict] = {}  # entries measured by different runs/machines get their own rows
        for m, per in sp.items():
            if dev in per:
                prov = provenance_of(per[dev])
                groups.setdefault((cores(prov), command(prov)), {})[m] = sp_mod.entry(per[dev])
        for (where, cmd), ent in groups.items():
            rows.append([f"{where}: training step vs the best execution of the frozen model", f"`{cmd}`", "; ".join(
                f"{m}: not measured (that run timed the eager loop only)" if r.get("eager_loop_only") else
                f"{r['ratio_vs_best_execution']:.2f}x ({m}, batch {r['batch_size']}; best: {r['best_execution']}; "
                + (f"{percent(r['flop_utilisation'])} of the matmul peak)" if r["flop_utilisation"] <= 1 else
                   # an entry from before speed.py timed enough matmuls per repeat (one on a GPU is launch-bound)
                   "matmul peak under-measured: one timed matmul was too short on this device; rerun speed.py)")
                for m, r in ent.items())])
            rows.append([f"{where}: training step vs the eager loop", "same",
                         ", ".join(f"{r['ratio_vs_eager']:.2f}x ({m})" for m, r in ent.items())])
            rows.append([f"{where}: training step vs a reference-style loop", "same",
                         ", ".join(f"{r['ratio_vs_reference']:.2f}x faster ({m})" for m, r in ent.items())])
    tr = sc["training"]
    best = max(range(len(tr["images_per_s"])), key=lambda i: tr["images_per_s"][i])
    rows.append([f"throughput vs batch size ({sc['settings']['model']}, {cores(provenance_of(sc))})",
                 f"`{command(provenance_of(sc))}`",
                 f"best at batch {tr['batch_sizes'][best]} ({tr['images_per_s'][best]:.0f} img/s), "
                 f"{tr['images_per_s'][-1]:.0f} img/s at {tr['batch_sizes'][-1]}"])
    rows.append(["app: launch -> first prediction, one prediction", f"`{command(provenance_of(al))}`",
                 f"{al['launch_to_first_prediction_s']:.1f} s, {al['prediction_s']:.3f} s over HTTP (empty endpoint "
                 f"{al['gradio_floor_s']:.3f} s); handler {al['handler_ratio']:.2f}x the bare forward"])
    acc_runs = [(d, runs_behind(d)) for d in (acc, gacc)]
    for d, runs in acc_runs:
        p, st = provenance_of(d), d["settings"]
        s = _accuracy_module().summarize(d["rows"])
        where = " + ".join(sorted({cores(q) for g in runs for q in g["provenances"]})) or cores(p)
        rows.append([f"accuracy, {st['dataset']} ({st['model']}, {st['steps']} steps of {st['batch_size']}, "
                     f"{where})", f"`{command(p)}`" if runs_total(runs) == 1 else
                     f"`python benchmarks/accuracy.py` ({runs_count(runs)}, merged: `benchmarks/README.md`)",
                     f"best prompt ({s['best_prompt']}) {percent(s['best_prompt_test_top1'])} vs linear probe "
                     f"{percent(s['linear_probe_test_top1'])}"])
    provs = [provenance_of(x) for x in (sc, al)] + [q for _, runs in acc_runs for g in runs
                                                    for q in g["provenances"]]
    dates = sorted({q["date_utc"][:10] for q in provs if q.get("date_utc")})
    return (markdown_table(["what", "command", "result"], rows)
            + f"\n\nDates and commits of each result: `benchmarks/README.md` (results dated {', '.join(dates)}).\n")


def b_cpu_speed() -> str:
    sc, sp = load("benchmarks/results/scaling.json"), load("benchmarks/results/speed.json")["results"]
    tr = sc["training"]
    best = max(range(len(tr["images_per_s"])), key=lambda i: tr["images_per_s"][i])
    eff = sp.get("effnet-lite0", {}).get("cpu")
    vit = sp.get("clip:ViT-B-32/random", {}).get("cpu")
    return (f"on the project's CPU a training step of EfficientNet-Lite0 runs at {tr['images_per_s'][best]:.0f} images/s at best at 96 px "
            f"(batch {tr['batch_sizes'][best]}, `scaling.json`) but {eff['library_img_s']:.1f} images/s at 224 px "
            f"(batch {eff['batch_size']}, `speed.json`), and ViT-B/32 at 224 px {vit['library_img_s']:.1f} images/s "
            f"(batch {vit['batch_size']}); hence `@96` in the examples.")


def b_bench_times() -> str:
    rows = []
    for script, rel, what, key in [
            ("accuracy.py", "accuracy.json", "test top-1 of every prompt kind and label mapping vs the linear probe",
             "total_seconds"),
            ("speed.py", "speed.json", "images/s of one training step: library vs the best execution of the frozen "
             "model vs the eager loop vs a reference-style loop; FLOP utilisation", None),
            ("scaling.py", "scaling.json", "training throughput vs batch size, evaluation time vs dataset size, 1 vs 2 "
             "processes (torchrun)",
             "seconds"),
            ("app_latency.py", "app_latency.json", "app start-up and one prediction vs the bare forward pass", None),
            ("load.py", "load.json", "many users at once while one trains: failed requests, latency", "total_seconds"),
            ("readme_train.py", "readme_train.json", "the README's `train` example", "wall_seconds"),
            ("app_defaults.py", "app_defaults.json", "the app's CPU training defaults per recipe", "total_seconds"),
            ("test_suite.py", "test_suite.json", "the README's test command, timed", "wall_seconds")]:
        d = load(f"benchmarks/results/{rel}")
        t = "not measured yet" if d is None else (f"{d[key] / 60:.1f} min ({cores(provenance_of(d))})"
                                                  if key and d.get(key) else "not recorded")
        rows.append([f"`{script}`", what, t])
    return markdown_table(["script", "measures", "time of the committed run"], rows) + "\n"


BLOCKS = {
    "tests-time": b_tests_time, "app-defaults": b_app_defaults, "app-latency": b_app_latency,
    "readme-train": b_readme_train, "zoo": b_zoo, "benchmarks-table": b_benchmarks_table, "cpu-speed": b_cpu_speed,
    "bench-times": b_bench_times, "accuracy-rows": b_accuracy_rows, "accuracy-cpu": b_accuracy_cpu, "accuracy-gpu": b_accuracy_gpu,
    "accuracy-digits": b_accuracy_digits,
    "accuracy-budget": b_accuracy_budget, "accuracy-reading": b_accuracy_reading, "speed": b_speed,
    "scaling": b_scaling, "app-latency-table": b_app_latency_table, "gpu-check": b_gpu_check, "load": b_load,
    "recipe-search": b_recipe_search,
}


def _load_module(name: str):
    """benchmarks/NAME.py as a module, executed once: kept in sys.modules (a dataclass needs its module there), so
    every block reads the same module (its ROWS, say)."""
    import importlib.util

    key = f"report_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[key]
            raise
    return sys.modules[key]


def _accuracy_module():
    return _load_module("accuracy")


def _speed_module():
    return _load_module("speed")


def _load_test_module():
    return _load_module("load")


# -- rewrite / check -------------------------------------------------------------------------------------------

def render(text: str) -> str:
    def sub(m):
        indent, name = m.group(1), m.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"unknown report block {name!r}")
        body = "\n".join(indent + ln if ln else ln for ln in BLOCKS[name]().rstrip("\n").split("\n"))
        return f"{indent}<!-- report:{name} -->\n{body}\n{indent}<!-- /report:{name} -->"

    return BLOCK.sub(sub, text)


def hand_typed(text: str) -> list[str]:
    """Figures with units outside the report blocks (code blocks included), minus the ALLOWED constants."""
    outside = BLOCK.sub("", text)
    for a in ALLOWED:
        outside = outside.replace(a, "")
    return [m.group(0) for m in FIGURE.finditer(outside)]


def check() -> list[str]:
    problems = []
    for rel in READMES:
        text = (REPO / rel).read_text()
        if render(text) != text:
            problems.append(f"{rel}: differs from the results files (run `python benchmarks/report.py`)")
        figs = hand_typed(text)
        if figs:
            problems.append(f"{rel}: figures outside the report blocks: {figs}")
    return problems


# -- staleness -------------------------------------------------------------------------------------------------

def git(*args) -> tuple[int, str]:
    p = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return p.returncode, p.stdout.strip()


def entries() -> list[tuple[str, str, str, dict, set | None, list | None]]:
    """(name, file, script, provenance, recipes, rows) of every result, one per speed.json entry; ``recipes``: the
    names of the recipes the result's runs trained with when the result says (accuracy rows, zoo entries), else None;
    ``rows``: an accuracy result's rows (None for other results)."""
    out = []
    for name, rel, script in SOURCES:
        d = load(rel)
        if d is None:
            out.append((name, rel, script, None, None, None))
        elif name.startswith("accuracy") and len(runs := runs_behind(d)) > 1:  # merged: each commit's rows apart
            out += [(f"{name} [{', '.join(g['rows'])}]", rel, script, g["provenance"], rows_recipes(g["rows"]),
                     list(g["rows"])) for g in runs]
        elif name.startswith("accuracy"):  # one run behind every row: its provenance, which is the file's own
            methods = [r["method"] for r in d.get("rows") or []]  # unless merges replaced all of the file's rows
            out.append((name, rel, script, runs[0]["provenance"], rows_recipes(methods), methods))
        elif name == "speed":
            out += [(f"speed {m} {dev}", rel, script, provenance_of(r), None, None) for m, per in d["results"].items()
                    for dev, r in per.items()]
        elif name.startswith("zoo"):
            out.append((name, rel, script, provenance_of(d), zoo_recipes(), None))
            if name == "zoo":  # then each prompt's own training run: a run of `--prompts NAME` or `--index-only`
                # writes a fresh index over entries trained at older commits
                out += [(f"{name} [{e.get('name')}]", rel, script, e.get("provenance") or {},
                         {r} if (r := command_recipe(e)) else None, None) for e in d.get("prompts") or []]
        else:
            out.append((name, rel, script, provenance_of(d), None, None))
    return out


RECIPES_PY = "visual_prompting/recipes.py"


def rows_recipes(names) -> set | None:
    """The recipes that accuracy rows ``names`` run (a row without one depends on no recipe); None when a row is
    not in accuracy.py's ROWS any more."""
    rows = {r.name: r for r in _accuracy_module().ROWS}
    if any(n not in rows for n in names):
        return None
    return {rows[n].recipe for n in names if rows[n].recipe}


def zoo_recipes() -> set | None:
    """The recipes of the commands that trained the zoo's entries; None when one names none (the default's)."""
    names = {command_recipe(e) for e in (load("prompts_zoo/index.json") or {}).get("prompts") or []}
    return None if None in names else names


@functools.lru_cache(maxsize=None)
def recipes_at(commit: str) -> dict | None:
    """Each recipe's settings as visual_prompting/recipes.py defines them at ``commit`` ({name: settings}), None
    when that copy cannot be read. The settings are Python expressions, so that commit's package is imported from
    a ``git archive`` of it, in a subprocess (our own history, never a downloaded file)."""
    arch = subprocess.run(["git", "archive", commit, "visual_prompting"], cwd=REPO, capture_output=True)
    if arch.returncode:
        return None
    code = ("import json, visual_prompting.recipes as r; "
            "print(json.dumps({k: v.settings for k, v in r.RECIPES.items()}, sort_keys=True, default=repr))")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["tar", "-x", "-C", tmp], input=arch.stdout, check=True)
        p = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": tmp})
    return json.loads(p.stdout) if p.returncode == 0 else None


def recipes_same(commit: str, names: set) -> bool:
    """Whether every recipe in ``names`` has the same settings at ``commit`` as at HEAD: then an edit of recipes.py
    since ``commit`` (another recipe, a description, the default's name) did not change what was measured."""
    if not names:
        return True
    before, now = recipes_at(commit), recipes_at(git("rev-parse", "HEAD")[1])
    return before is not None and now is not None and all(n in before and before[n] == now.get(n) for n in names)


def code_changed(commit: str, paths: list[str], recipes: set | None, rows: list | None = None) -> list[str]:
    """The measured ``paths`` whose code differs between ``commit`` and HEAD (:func:`code_parts`): not when only
    docstrings, accuracy rows' labels or the functions HEAD's copy declares in ``RENDERS`` (:func:`renders_of`)
    changed, nor, for an accuracy result (``rows``: its rows), when only other rows were added, removed or changed;
    recipes.py not when the recipes the result ran (``recipes``; None: unknown) kept their settings
    (:func:`recipes_same`); a path that did not exist at ``commit`` not at all (a module added since, listed in
    MEASURES for the results measured after it)."""
    _, diff = git("diff", "--name-only", commit, "HEAD", "--", *paths)
    head = git("rev-parse", "HEAD")[1]
    out = []
    for path in diff.split():
        if git("cat-file", "-e", f"{commit}:{path}")[0] != 0:
            continue  # new since the result: what ran then could not run it, and what puts it to use (an import, a
            # recipe's settings) is an edit of a file that existed then
        before = now = None
        if path.endswith(".py"):
            renders = renders_of(head, path)
            before, now = code_of(commit, path, renders), code_of(head, path, renders)
        if before is not None and now is not None and before[0] == now[0]:
            # a result's own rows where the file defines rows (accuracy.py); every row of a file otherwise (none in
            # a file without ROWS: its tree alone decides)
            names = set(rows) if rows is not None and (before[1] or now[1]) else set(before[1]) | set(now[1])
            if all(before[1].get(n) is not None and before[1].get(n) == now[1].get(n) for n in names):
                continue
        if path == RECIPES_PY and recipes is not None and recipes_same(commit, recipes):
            continue
        out.append(path)
    return out


@functools.lru_cache(maxsize=None)
def source_at(commit: str, path: str) -> str | None:
    """A file's text at ``commit`` (read once for :func:`code_of` and :func:`renders_of`); None when it is missing."""
    p = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def code_of(commit: str, path: str, renders: tuple[str, ...] = ()) -> tuple[str, dict] | None:
    """A Python file at ``commit`` as the stale check compares it (:func:`code_parts`, leaving out the module-level
    functions named in ``renders``); None when it is missing."""
    source = source_at(commit, path)
    return code_parts(source, renders) if source is not None else None


@functools.lru_cache(maxsize=None)
def renders_of(commit: str, path: str) -> tuple[str, ...]:
    """The functions a script at ``commit`` declares in a module-level ``RENDERS = (...)``: they only format numbers
    already measured (a results table, a plot, a sentence), so an edit of them changes no result. Read without
    importing; () when the file declares none, or none that reads as a tuple of names, or cannot be read (then every
    function counts, the cautious side)."""
    source = source_at(commit, path)
    try:
        tree = ast.parse(source) if source is not None else None
    except SyntaxError:
        return ()
    for node in tree.body if tree is not None else []:
        if assigns(node, "RENDERS"):
            try:
                names = ast.literal_eval(node.value)
            except ValueError:
                return ()
            return tuple(names) if isinstance(names, (tuple, list)) and all(isinstance(n, str) for n in names) else ()
    return ()


def code_parts(source: str, renders: tuple[str, ...] = ()) -> tuple[str, dict] | None:
    """Python source as the stale check compares it: (its syntax tree without the accuracy rows, {row name: that
    ``Row(...)``'s tree}). Comments are never in a tree; docstrings are left out, and so is what only labels a row - its
    description, the rows it is compared with, whether it runs by default - or a recipe (a ``Recipe(...)``'s
    description): edits of those change no number. The rows
    (the ``Row`` calls in a module-level ``ROWS = [...]``) are apart so that a row is judged by its own definition.
    The module-level functions named in ``renders`` (the ``RENDERS`` the current copy declares: :func:`renders_of`)
    and that ``RENDERS`` itself are left out too, and so is a script's ``MEASURES`` (it names the files this check
    reads; listing one more changes no number). None when the source does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    tree.body = [node for node in tree.body
                 if not (isinstance(node, ast.FunctionDef) and node.name in renders)
                 and not assigns(node, "RENDERS") and not assigns(node, "MEASURES")]
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Row":
            if len(node.args) > 2:
                node.args[2] = ast.Constant("")
            node.keywords = [k for k in node.keywords if k.arg not in ("description", "compared_with", "default")]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Recipe":  # recipes.py: its description
            if len(node.args) > 1:
                node.args[1] = ast.Constant("")
            node.keywords = [k for k in node.keywords if k.arg != "description"]
    rows = {}
    for node in tree.body:
        if assigns(node, "ROWS") and isinstance(node.value, ast.List):
            kept = []
            for e in node.value.elts:
                if isinstance(e, ast.Call) and getattr(e.func, "id", None) == "Row" and e.args and \
                        isinstance(e.args[0], ast.Constant):
                    rows[e.args[0].value] = ast.dump(e)
                else:
                    kept.append(e)
            node.value.elts = kept
    return ast.dump(tree), rows


def stale() -> list[str]:
    lines = []
    for name, rel, script, prov, *scope in entries():
        if prov is None:
            lines.append(f"MISSING {name}: {rel} not written yet (`python {script}`)")
            continue
        commit = prov.get("git_commit")
        measured_dirty = prov.get("git_dirty")
        declared = str(prov.get("source_commit_declared") or "")
        if declared:  # a lent machine ran a copy of the tree: the commit its launcher declared is what was measured
            commit, measured_dirty = declared.split()[0], "dirty" in declared
        paths = measures(script)
        if not commit:
            lines.append(f"STALE?  {name} ({rel}): no commit recorded, cannot tell; rerun `python {script}`")
            continue
        if git("cat-file", "-e", f"{commit}^{{commit}}")[0] != 0:
            lines.append(f"STALE?  {name} ({rel}): commit {commit[:10]} is not in this repository")
            continue
        paths = code_changed(commit, paths, *(scope[:2] if scope else (None,)))
        _, log = git("log", "--format=%h %cs %s", f"{commit}..HEAD", "--", *paths) if paths else (0, "")
        changed = [ln for ln in log.splitlines() if ln]
        dirty = " (measured on a dirty tree)" if measured_dirty else ""
        if changed:
            _, files = git("diff", "--name-only", commit, "HEAD", "--", *paths)
            lines.append(f"STALE   {name} ({rel}, commit {commit[:10]}{dirty}): {len(changed)} later commit(s) "
                         f"changed {', '.join(files.split())}; newest: {changed[0][:90]}")
        elif dirty:
            lines.append(f"STALE?  {name} ({rel}, commit {commit[:10]}){dirty}: the measured code may differ")
    for name, rel, _ in SOURCES:
        if name.startswith("accuracy") and (d := load(rel)) is not None:
            lines += [f"MIXED   {name} ({rel}) {ln}" for ln in mixed_machines(d)]
    return lines


def machine_kind(prov: dict) -> str:
    """What a run's numbers depend on beyond the code: the accelerator's name, or on a CPU its name and the SIMD
    level torch's kernels ran at (two "AMD EPYC" at AVX2 and AVX-512 train a prompt to different floats)."""
    m = prov.get("machine") or {}
    if m.get("gpu"):
        return str(m["gpu"])
    return f"{m.get('cpu')}, {m.get('cpu_capability') or 'capability not recorded'}"


def seed_machines(row: dict) -> dict[str, list]:
    """A row's seeds by the kind of machine (:func:`machine_kind`) each ran on, from their ``per_seed`` provenance."""
    kinds: dict[str, list] = {}
    for s in row.get("per_seed") or []:
        if s.get("provenance"):
            kinds.setdefault(machine_kind(s["provenance"]), []).append(s["seed"])
    return kinds


def mixed_machines(doc: dict) -> list[str]:
    """The rows of an accuracy document whose seeds ran on different kinds of machine (merged with --add-seeds):
    their spread then mixes machines with seeds. A seed whose file predates the capability record counts as its
    own kind, since it cannot be told apart."""
    out = []
    for r in doc.get("rows") or []:
        kinds = seed_machines(r)
        if len(kinds) > 1:
            out.append(f"row {r['method']}: seeds ran on different machines - " + "; ".join(
                f"{k} (seed{'s' * (len(v) > 1)} {','.join(map(str, v))})" for k, v in kinds.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail when a README differs from the results files")
    ap.add_argument("--stale", action="store_true",
                    help="list results whose measured code changed since, and accuracy rows whose seeds ran on "
                    "different kinds of machine (exit 0)")
    a = ap.parse_args(argv)
    if a.stale:
        lines = stale()
        print("\n".join(lines) if lines else "no stale results")
        return 0
    if a.check:
        problems = check()
        print("\n".join(problems) if problems else "READMEs match the results files")
        return 1 if problems else 0
    for rel in READMES:
        p = REPO / rel
        text = p.read_text()
        new = render(text)
        if new != text:
            p.write_text(new)
            print(f"rewrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
