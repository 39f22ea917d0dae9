"""Reproduce the paper's CLIP ViT-B/32 padding prompts: train, evaluate, compare with the paper, push to the Hub.

For each dataset in ``--datasets`` this script trains one pad prompt with the library
(``visual_prompting.training.train``, the paper's recipe: SGD, lr 40, momentum 0.9, no weight decay, 1000 warm-up
steps then cosine decay, batch 256, 1000 epochs, pad of 30 px at 224 px, the text template
"This is a photo of a {}"), evaluates the best prompt (chosen on validation, never test) on the test split, with
and without the prompt, and writes into ``--out-dir``:

``DATASET/``     the run: ``best.safetensors`` (the prompt), ``last.safetensors`` (to ``--resume``), ``history.json``
``results.json`` per dataset: test top-1 / top-5 with the prompt, test top-1 without it (= zero-shot CLIP with the
                 same text template), best validation top-1, steps, seconds, prompt path, Hub URL or the error;
                 plus the paper's numbers and the averages
``results.md``   a markdown table: ours next to the paper's visual-prompt and linear-probe numbers (also printed)

Both files are rewritten after every dataset, so a crash or Ctrl-C keeps what finished. A dataset that fails
(e.g. its download is impossible) is recorded with its error and the others still run; Ctrl-C stops the loop
(the current run keeps its best prompt) and still writes the results so far.

The real run (a machine with a GPU and internet; CLIP weights and the datasets are downloaded once, then cached):

    python scripts/reproduce_paper.py --push-to USER

``--push-to USER`` pushes each best prompt to ``USER/vp-clip-vit-b-32-openai-DATASET`` (``--repo-prefix`` sets
another prefix; log in first with ``hf auth login`` or set ``HF_TOKEN``). Leave it out to push nothing, or use
``--dry-run-push DIR`` to write each upload folder instead. This is a long job: 1000 epochs per dataset, as in the
paper. Shorten it with ``--epochs N`` (or ``--steps N``) and a subset of ``--datasets``, e.g.

    python scripts/reproduce_paper.py --datasets cifar10 eurosat --epochs 20 --out-dir runs/paper-short

and continue an interrupted run with the same command plus ``--resume``.

Datasets: the default list holds the paper's datasets that this library loads by name (through torchvision):
CIFAR10, CIFAR100, SVHN, EuroSAT, Flowers102, Food101, OxfordPets, DTD. The paper's UCF101 (middle frames),
SUN397, RESISC45 and CLEVR (count) are not in the library's dataset registry, so they are not in the default
list; any of them prepared as a folder of class folders (with ``train/`` and ``test/`` inside) can be passed as a
path in ``--datasets``. The WILDS sets are not covered.

The paper's visual-prompt numbers below are approximate (read as "about N" in the project's notes, still to be
confirmed from the PDF); the tables say so. The linear-probe numbers are as the notes give them.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from visual_prompting.backbones import BackboneCache  # noqa: E402
from visual_prompting.data import canonical_name, dataset_names  # noqa: E402
from visual_prompting.errors import VPError  # noqa: E402
from visual_prompting.hub import prepare_upload, push_prompt  # noqa: E402
from visual_prompting.settings import add_arguments, from_args  # noqa: E402
from visual_prompting.train_config import TrainConfig  # noqa: E402
from visual_prompting.training import train  # noqa: E402

PAPER_MODEL = "clip:ViT-B-32/openai"
DEFAULT_DATASETS = ["cifar10", "cifar100", "svhn", "eurosat", "flowers102", "food101", "oxford_pets", "dtd"]

# Bahng et al. 2022 (arXiv 2203.17274), CLIP ViT-B/32, test top-1 in percent, from ../shared/paper-notes.md.
# Visual prompt: approximate ("about N", to be confirmed from the PDF). Linear probe: as the notes give it.
PAPER_VISUAL_PROMPT = {"cifar10": 94.0, "cifar100": 75.0, "flowers102": 70.0, "food101": 80.0, "eurosat": 96.0,
                       "svhn": 88.0, "oxford_pets": 85.0, "dtd": 57.0, "ucf101": 66.0}
PAPER_LINEAR_PROBE = {"cifar10": 95.0, "cifar100": 80.0, "flowers102": 96.9, "food101": 84.6, "eurosat": 95.3,
                      "svhn": 65.4, "oxford_pets": 89.2, "dtd": 74.6, "ucf101": 83.3}
PAPER_AVERAGE_12 = {"visual_prompt": 77.3, "linear_probe": 80.3}  # over the paper's 12 datasets, both "about"
PAPER_CAVEAT = ("The paper's visual-prompt numbers are approximate (\"about N\" in the project's notes, to be "
                "confirmed from the PDF); a delta of a few points against them means little. Linear-probe numbers "
                "are as the notes give them.")


# -- command line ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python scripts/reproduce_paper.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("what to train (defaults: the paper)")
    g.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, metavar="NAME",
                   help=f"datasets, run in this order: library names ({', '.join(dataset_names())}) or folders "
                   "of class folders (default: %(default)s)")
    add_arguments(g, TrainConfig, ["model", "prompter", "prompt_size", "templates"], defaults={"model": PAPER_MODEL},
                  helps={"model": "backbone spec, as for `python -m visual_prompting train --model` (default: "
                                  "%(default)s, the paper's CLIP ViT-B/32)"})
    g = ap.add_argument_group("recipe (defaults: the paper's, i.e. the library's TrainConfig)")
    add_arguments(g, TrainConfig, ["epochs", "steps", "batch_size", "lr", "momentum", "warmup_steps", "eval_every",
                                   "seed", "device", "amp", "num_workers"], defaults={"lr": 40.0})  # the paper's SGD lr
    g = ap.add_argument_group("data and output")
    add_arguments(g, TrainConfig, ["data_root", "download"], defaults={"download": True},
                  helps={"download": "download missing torchvision datasets (needs internet; default: on)"})
    g.add_argument("--out-dir", default="runs/paper", help="one sub-folder per dataset, plus results.json and "
                   "results.md (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue each dataset from OUT_DIR/DATASET/"
                   "last.safetensors when it is there (a finished run is only evaluated again)")
    g.add_argument("--quiet", action="store_true", help="no per-evaluation progress lines")
    g = ap.add_argument_group("Hugging Face Hub (default: push nothing)")
    who = g.add_mutually_exclusive_group()
    who.add_argument("--push-to", metavar="USER", default=None,
                     help="push each best prompt to USER/vp-MODEL-DATASET, where MODEL is the --model spec in "
                     "lower case with '-' for other characters (clip-vit-b-32-openai for the paper's model)")
    who.add_argument("--repo-prefix", metavar="USER/PREFIX", default=None,
                     help="push each best prompt to {PREFIX}{DATASET}, e.g. alice/vp-clip-vitb32- gives "
                     "alice/vp-clip-vitb32-cifar10")
    g.add_argument("--dry-run-push", metavar="DIR", default=None,
                   help="push nothing; write each upload folder (prompt.safetensors, config.json, README.md, "
                   "prompt.png) to DIR/DATASET with visual_prompting.hub.prepare_upload")
    g.add_argument("--token", default=None, help="Hub token with write access (default: the one from `hf auth "
                   "login` or $HF_TOKEN; prefer those, a token on the command line is visible to others)")
    g.add_argument("--private", action="store_true", help="create new Hub repos as private")
    return ap


def model_slug(spec: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", spec.lower()).strip("-")


def repo_prefix(a) -> str | None:
    if a.repo_prefix:
        return a.repo_prefix
    if a.push_to:
        return f"{a.push_to.strip('/')}/vp-{model_slug(a.model)}-"
    return None


def dataset_key(name: str) -> str:
    """The name used for the run folder, the paper lookup and the repo: canonical, or a folder's base name."""
    if os.path.isdir(name):
        return os.path.basename(os.path.normpath(name))
    return canonical_name(name)


def check_datasets(ap: argparse.ArgumentParser, names: list[str]) -> None:
    known = set(dataset_names())
    bad = [n for n in names if not os.path.isdir(n) and canonical_name(n) not in known]
    if bad:
        ap.error(f"unknown dataset(s) {', '.join(bad)}: use {', '.join(dataset_names())} or a folder of class "
                 "folders")
    keys = [dataset_key(n) for n in names]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        ap.error(f"dataset(s) given twice: {', '.join(dup)}")


# -- one dataset -----------------------------------------------------------------------------------------------

def progress(key: str, quiet: bool):
    def cb(ev) -> None:
        if ev.kind == "start":
            print(f"[{key}] {ev.total_steps} steps; zero-shot val top-1 {pct(ev.zero_shot_val_top1)}; {ev.message}",
                  file=sys.stderr, flush=True)
        elif ev.kind == "eval" and not quiet:
            print(f"[{key}] step {ev.step}/{ev.total_steps}: val top-1 {pct(ev.val_top1)} "
                  f"(best {pct(ev.best_val_top1)})", file=sys.stderr, flush=True)
        elif ev.kind == "end":
            print(f"[{key}] {ev.message} at step {ev.step}; best val top-1 {pct(ev.best_val_top1)}", file=sys.stderr,
                  flush=True)
    return cb


def train_config(a, name: str, out: Path) -> TrainConfig:
    """The run for one dataset: the options that are TrainConfig fields (generated from it), this dataset and folder."""
    return from_args(TrainConfig, a, dataset=name, out_dir=str(out))


def share(a, key: str, best_path: str, row: dict) -> None:
    """Dry-run upload folder or Hub push of one best prompt; failures are recorded in ``row``, never raised."""
    prefix = repo_prefix(a)
    repo_id = f"{prefix}{key}" if prefix else None
    try:
        if a.dry_run_push:
            folder = prepare_upload(best_path, Path(a.dry_run_push) / key, repo_id=repo_id)
            row["upload_dir"] = str(folder)
            print(f"[{key}] upload folder: {folder}", file=sys.stderr)
        elif repo_id:
            row["repo_id"] = repo_id
            row["hub_url"] = push_prompt(best_path, repo_id, token=a.token, private=a.private)
            print(f"[{key}] pushed: {row['hub_url']}", file=sys.stderr)
    except VPError as e:
        row["hub_error"] = str(e)
        print(f"[{key}] push failed: {e}", file=sys.stderr)


def run_one(a, name: str, cache: BackboneCache) -> dict:
    """Train, evaluate and share one dataset; the row for results.json. Ctrl-C inside the training loop gives
    status 'interrupted' (the library keeps the best prompt so far); Ctrl-C while the data or the backbone load
    propagates as KeyboardInterrupt; Ctrl-C while sharing sets ``row['stop']``."""
    key = dataset_key(name)
    out = Path(a.out_dir) / key
    row: dict = {"dataset": key, "status": "failed", "out_dir": str(out),
                 "paper_visual_prompt_pct": PAPER_VISUAL_PROMPT.get(key),
                 "paper_linear_probe_pct": PAPER_LINEAR_PROBE.get(key)}
    t0 = time.perf_counter()
    try:
        res = train(train_config(a, name, out), callbacks=[progress(key, a.quiet)], cache=cache)
    except VPError as e:
        row["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - one broken dataset must not end a long multi-dataset run
        traceback.print_exc()
        row["error"] = f"{type(e).__name__}: {e}"
    else:
        m = res.metrics
        row.update(status="interrupted" if res.interrupted else "ok", prompt=res.best_path,
                   test_top1=m.get("test_top1"), test_top5=m.get("test_top5"),
                   test_top1_no_prompt=m.get("test_top1_no_prompt"),
                   test_top5_no_prompt=m.get("test_top5_no_prompt"), best_val_top1=m.get("best_val_top1"),
                   zero_shot_val_top1=m.get("zero_shot_val_top1"), test_n=m.get("test_n"),
                   steps=res.steps_done)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    if "error" in row:
        print(f"[{key}] failed: {row['error']}", file=sys.stderr)
    elif row["status"] == "ok":
        try:
            share(a, key, row["prompt"], row)
        except KeyboardInterrupt:
            row["hub_error"] = "not shared: interrupted (Ctrl-C)"
            row["stop"] = True
    else:
        row["hub_error"] = "not shared: the run was interrupted before its last step"
    return row


# -- results ---------------------------------------------------------------------------------------------------

def pct(x) -> str:
    return "n/a" if not isinstance(x, (int, float)) or math.isnan(x) else f"{100 * x:.1f}%"


def num(x, signed: bool = False) -> str:
    if not isinstance(x, (int, float)):
        return "—"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def _mean(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def averages(rows: list[dict]) -> list[dict]:
    """Average rows over the datasets that ran (have test numbers): over all of them for our columns, and, when
    some have no paper number, a second row over those that do (so ours and the paper's cover the same sets)."""
    ran = [r for r in rows if isinstance(r.get("test_top1"), (int, float))]
    if not ran:
        return []

    def avg(rs, label):
        ours = _mean([100 * r["test_top1"] for r in rs])
        paper = _mean([r["paper_visual_prompt_pct"] for r in rs])
        all_paper = all(isinstance(r["paper_visual_prompt_pct"], (int, float)) for r in rs)
        return {"label": label, "datasets": [r["dataset"] for r in rs],
                "zero_shot_pct": _mean([100 * r["test_top1_no_prompt"] for r in rs]),
                "visual_prompt_pct": ours,
                "paper_visual_prompt_pct": paper if all_paper else None,
                "paper_linear_probe_pct": _mean([r["paper_linear_probe_pct"] for r in rs]) if all_paper else None,
                "delta_vs_paper": ours - paper if all_paper else None}

    out = [avg(ran, f"average over the {len(ran)} that ran")]
    with_paper = [r for r in ran if isinstance(r["paper_visual_prompt_pct"], (int, float))]
    if with_paper and len(with_paper) < len(ran):
        out.append(avg(with_paper, f"average over the {len(with_paper)} with paper numbers"))
    return out


def markdown(rows: list[dict], avgs: list[dict], a) -> str:
    lines = [f"# Visual prompting: `{a.model}`, {a.prompter} prompt, ours vs the paper", "",
             "Test top-1 in percent. Zero-shot (ours) is the same frozen model with the same text template and no "
             "prompt. Paper: Bahng et al. 2022 (arXiv 2203.17274), CLIP ViT-B/32.", "",
             "| dataset | zero-shot (ours) | visual prompt (ours) | visual prompt (paper, approx.†) | "
             "linear probe (paper) | delta vs paper |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pv, pl = r["paper_visual_prompt_pct"], r["paper_linear_probe_pct"]
        pv_text = f"~{num(pv)}" if isinstance(pv, (int, float)) else "—"
        if isinstance(r.get("test_top1"), (int, float)):
            ours = 100 * r["test_top1"]
            zs = num(100 * r["test_top1_no_prompt"])
            mine = num(ours) + (" (interrupted)" if r["status"] == "interrupted" else "")
            delta = num(ours - pv, signed=True) if isinstance(pv, (int, float)) else "—"
        else:
            zs, mine, delta = "failed‡", "failed‡", "—"
        lines.append(f"| {r['dataset']} | {zs} | {mine} | {pv_text} | {num(pl)} | {delta} |")
    for v in avgs:
        pv = v["paper_visual_prompt_pct"]
        lines.append(f"| **{v['label']}** | {num(v['zero_shot_pct'])} | {num(v['visual_prompt_pct'])} | "
                     f"{'~' + num(pv) if pv is not None else '—'} | {num(v['paper_linear_probe_pct'])} | "
                     f"{num(v['delta_vs_paper'], signed=True)} |")
    lines += ["", f"† {PAPER_CAVEAT} The paper's averages over its 12 datasets are about "
              f"{PAPER_AVERAGE_12['visual_prompt']} (visual prompt) and {PAPER_AVERAGE_12['linear_probe']} "
              "(linear probe); the averages above cover only the datasets listed.", ""]
    failed = [r for r in rows if "error" in r]
    if failed:
        lines.append("‡ Failed:")
        lines += [f"- {r['dataset']}: {r['error']}" for r in failed]
        lines.append("")
    lines.append("Runs:")
    for r in rows:
        bits = [f"{r.get('steps', 0)} steps", f"{r['seconds']} s"]
        if r.get("prompt"):
            bits.append(f"prompt `{r['prompt']}`")
        for k in ("hub_url", "upload_dir", "hub_error"):
            if r.get(k):
                bits.append(f"{k.replace('_', ' ')}: {r[k]}")
        lines.append(f"- {r['dataset']} ({r['status']}): " + "; ".join(bits))
    return "\n".join(lines) + "\n"


def write_results(a, rows: list[dict], interrupted: bool, finished: bool) -> str:
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    avgs = averages(rows)
    cfg = {k: v for k, v in vars(a).items() if k != "token"}
    doc = {"paper": {"title": "Exploring Visual Prompts for Adapting Large-Scale Models (Bahng et al., 2022)",
                     "url": "https://arxiv.org/abs/2203.17274", "model": "CLIP ViT-B/32",
                     "visual_prompt_pct": PAPER_VISUAL_PROMPT, "linear_probe_pct": PAPER_LINEAR_PROBE,
                     "average_12_datasets_pct": PAPER_AVERAGE_12, "caveat": PAPER_CAVEAT},
           "config": cfg, "finished": finished, "interrupted": interrupted,
           "note": "accuracies of ours are fractions in [0, 1]; the paper's numbers are percent",
           "results": rows, "averages": avgs}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    md = markdown(rows, avgs, a)
    (out / "results.md").write_text(md, encoding="utf-8")
    return md


# -- main ------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Run the reproduction; returns 0 when every dataset ran (and was shared, if asked), 1 when some failed,
    130 when interrupted."""
    ap = build_parser()
    a = ap.parse_args(argv)
    check_datasets(ap, a.datasets)
    cache = BackboneCache()  # the backbone (and its weights) is loaded once for all datasets
    rows: list[dict] = []
    interrupted = False
    for i, name in enumerate(a.datasets):
        print(f"== {dataset_key(name)} ({i + 1}/{len(a.datasets)})", file=sys.stderr, flush=True)
        try:
            row = run_one(a, name, cache)
        except KeyboardInterrupt:
            key = dataset_key(name)
            rows.append({"dataset": key, "status": "interrupted", "out_dir": str(Path(a.out_dir) / key),
                         "error": "interrupted (Ctrl-C) before it had test numbers", "seconds": 0.0,
                         "paper_visual_prompt_pct": PAPER_VISUAL_PROMPT.get(key),
                         "paper_linear_probe_pct": PAPER_LINEAR_PROBE.get(key)})
            interrupted = True
        else:
            interrupted = row["status"] == "interrupted" or bool(row.pop("stop", False))
            rows.append(row)
        write_results(a, rows, interrupted, finished=False)
        if interrupted:
            print("interrupted: stopping here; results so far are written", file=sys.stderr)
            break
        gc.collect()  # drop the finished run's decoded images before the next dataset loads
    md = write_results(a, rows, interrupted, finished=not interrupted)
    print(md)
    print(f"results: {Path(a.out_dir) / 'results.json'} and {Path(a.out_dir) / 'results.md'}")
    if interrupted:
        return 130
    return 1 if any("error" in r or "hub_error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
