"""Helpers shared by the benchmark scripts: machine description, JSON/Markdown output, timing, plots.

Not part of the library: the scripts in this folder measure the library from the outside, the way a user
would run it. Every script writes ``OUT/<name>.json`` (the numbers), ``OUT/<name>.png`` (a plot) and
``OUT/<name>.md`` (the table printed at the end, with the command that made it).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results"

if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere, or imported by the tests
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def bench_parser(doc: str, name: str, smoke_help: str):
    """The argument parser every benchmark starts from: ``--out`` (where NAME.json/.png/.md go), ``--smoke`` (tiny
    settings, what the tests run) and ``--threads``. Scripts add their own options to it."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"folder for {name}.json/.png/.md (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    add_threads_arg(ap)
    return ap


def add_threads_arg(ap) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice, one per core). Use 1 when the machine is "
                         "shared: two multi-threaded torch processes on the same cores can run 30-50x slower")


def apply_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# written by the tools (build_zoo.py writes each prompt file, then the index: a zoo built prompt by prompt must not
# record its later prompts as trained on a dirty tree because of the earlier ones)
RESULT_PATHS = ("benchmarks/results", "prompts_zoo/index.json", "prompts_zoo/verify.json",
                "prompts_zoo/*.safetensors")


def git_state() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD")
    # results files are what the tools write, not code: rows merged from several runs must not call the tree dirty
    status = run("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in RESULT_PATHS))
    return {"git_commit": commit or None, "git_dirty": bool(status)}


def machine_info(device: torch.device | str | None = None) -> dict:
    """What ran the benchmark: enough to tell whether two result files are comparable."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        # the SIMD level torch's CPU kernels use (AVX2, AVX512...): it sets the CPU speed, and floats (so a trained
        # prompt) can differ between levels, while the model name may not tell them apart ("AMD EPYC")
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
    }
    if dev.type == "cuda":
        from visual_prompting.utils import amp_dtype

        info["cuda"] = torch.version.cuda
        info["amp_dtype"] = str(amp_dtype(dev))
    return info


def command_line(script: str, argv: list[str] | None) -> str:
    """The command as typed from the repository root (:func:`portable_command`: a folder of the machine that ran it
    shows as ``DIR``); ``script`` is a path from there, or a name in benchmarks/."""
    args = sys.argv[1:] if argv is None else list(argv)
    path = script if "/" in script else f"benchmarks/{script}"
    return portable_command(" ".join(["python", path, *map(shlex.quote, args)]))


# the placeholder a recorded command shows for a path of the machine that ran it, by the option it follows
PATH_PLACEHOLDERS = {"--out": "DIR", "--runs-dir": "DIR", "--merge-from": "JSON"}


def portable_command(command: str | None) -> str | None:
    """``command`` with every path of the machine that ran it (absolute, ``~``, or above the repository root:
    a temporary folder, another checkout) replaced by a placeholder, ``--out DIR`` (:data:`PATH_PLACEHOLDERS`;
    ``PATH`` after another option): what a reader can type. Paths inside the repository stay. Applied when a
    command is recorded and again when one is shown, for files recorded before."""
    if not command:
        return command
    words, option, changed = shlex.split(command), None, False
    for i, w in enumerate(words):
        name, eq, value = w.partition("=") if w.startswith("--") else ("", "", w)
        if (eq or not w.startswith("-")) and value.startswith(("/", "~", "..")):
            words[i] = f"{name}{eq}{PATH_PLACEHOLDERS.get(name or option, 'PATH')}"
            changed = True
        if w.startswith("-"):
            option = None if eq else w
    return shlex.join(words) if changed else command


def provenance(script: str, argv: list[str] | None, device: torch.device | str | None = None) -> dict:
    """Where a results file came from, recorded by the tool and never edited: call it BEFORE the run (the load
    average is the machine's state when the measurement starts, which is what says whether it was shared).

    The one function every tool that writes results uses (benchmarks/*.py, scripts/build_zoo.py,
    scripts/gpu_check.py, benchmarks/readme_train.py). ``git_commit``/``git_dirty`` are what git says in the
    tree that ran; a lent machine that runs a copy of the tree has its own git state, so a session script may
    also declare the commit it copied (``VP_SOURCE_COMMIT``), recorded apart as ``source_commit_declared``."""
    prov = {
        "recorded": True,
        "command": command_line(script, argv),
        **git_state(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # a busy machine makes every timing here meaningless: how busy it was when the run started
        "load_average_before_run": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "machine": machine_info(device),
    }
    if os.environ.get("VP_SOURCE_COMMIT"):
        prov["source_commit_declared"] = os.environ["VP_SOURCE_COMMIT"]
    return prov


def provenance_of(doc: dict) -> dict:
    """A results document's (or a speed.json entry's) provenance in one shape, also for files written before
    :func:`provenance` existed (``machine`` + ``command`` written by the tool). Such a file may carry a
    ``provenance`` marker ``{"recorded": false, "note": ...}`` saying what in it was not recorded by the tool;
    its note is kept and ``recorded`` stays false. Never fills in a field the tool did not write."""
    p = doc.get("provenance")
    if isinstance(p, dict) and p.get("recorded") is True:
        return p
    m = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
    marker = p if isinstance(p, dict) else {}
    out = {"recorded": bool(m) and not marker, "layout": "legacy", "command": doc.get("command"),
           "git_commit": m.get("git_commit"), "git_dirty": m.get("git_dirty"), "date_utc": m.get("date_utc"),
           # the old key said "at start"; whether it was read before the run is in the marker's note
           "load_average_before_run": m.get("load_average_at_start") if not marker else None,
           "machine": {k: v for k, v in m.items() if k not in ("git_commit", "git_dirty", "date_utc",
                                                               "load_average_at_start")}}
    if marker:
        out["note"] = marker.get("note")
    return out


def runs_behind(doc: dict) -> list[dict]:
    """The runs behind a results document whose rows carry their own provenance (an accuracy.json merged from
    several runs, where a row's seeds may come from several runs too): one entry per measured code - commit,
    dirty tree, commit a lent machine's launcher declared - in order of first appearance, each
    ``{"provenance": the first run's, "provenances": every run's, "rows": {method: [seeds] or None}}``. A row
    without its own provenance counts under the document's; a document with no rows is one entry."""
    groups: dict[tuple, dict] = {}

    def add(prov: dict, method: str | None, seed) -> None:
        key = (prov.get("git_commit"), bool(prov.get("git_dirty")), prov.get("source_commit_declared"))
        g = groups.setdefault(key, {"provenance": prov, "provenances": [], "rows": {}})
        if prov not in g["provenances"]:
            g["provenances"].append(prov)
        if method is not None:
            seeds = g["rows"].setdefault(method, None if seed is None else [])
            if seed is not None:
                seeds.append(seed)

    top = provenance_of(doc)
    for r in doc.get("rows") or []:
        per = r.get("per_seed") or []
        if per and all(s.get("provenance") for s in per):  # seeds joined from several runs: each its own
            for s in per:
                add(s["provenance"], r["method"], s["seed"])
        else:
            prov = r.get("provenance") or top
            for seed in (r.get("seeds") or [None]):
                add(prov, r["method"], seed)
    if not groups:
        add(top, None, None)
    return list(groups.values())


def runs_total(runs: list[dict]) -> int:
    """How many runs (distinct provenances) :func:`runs_behind` found: more than one for a merged document."""
    return sum(len(g["provenances"]) for g in runs)


def runs_count(runs: list[dict]) -> str:
    """"N runs at M commits": how many runs (distinct provenances) and measured commits :func:`runs_behind` found."""
    n = runs_total(runs)
    return f"{n} run{'s' * (n != 1)} at {len(runs)} commit{'s' * (len(runs) != 1)}"


def merged_from(runs: list[dict]) -> str:
    """What a table merged from several runs is made of, and where each run's provenance lies (before its
    :func:`runs_lines`)."""
    return (f"rows from {runs_count(runs)}, merged by `accuracy.py --merge-from` (each row's command, commit, date and "
            "load average are in its `provenance`, each seed's under `per_seed` where its seeds came from several "
            "runs)")


def runs_lines(runs: list[dict]) -> list[str]:
    """A merged table's runs, one line per measured commit: its dates, tree, load averages and what it measured."""
    out = []
    for g in runs:
        provs = g["provenances"]
        dates = sorted({str(q.get("date_utc") or "no date")[:10] for q in provs})
        loads = [q["load_average_before_run"][0] for q in provs if q.get("load_average_before_run")]
        what = ", ".join(m if seeds is None else f"{m} (seed{'s' * (len(seeds) > 1)} {','.join(map(str, seeds))})"
                         for m, seeds in g["rows"].items())
        p = g["provenance"]
        c = str(p.get("git_commit") or "no commit")[:10]
        declared = (f", a copy of commit {str(p['source_commit_declared'])[:10]}"
                    if p.get("source_commit_declared") else "")
        load_txt = (f"; load average before the run{'s' * (len(provs) > 1)} "
                    f"{min(loads):.1f}{f'-{max(loads):.1f}' if max(loads) != min(loads) else ''}" if loads else "")
        out.append(f"- commit {c}{' (dirty tree)' if p.get('git_dirty') else ''}{declared}, "
                   f"{' to '.join(dict.fromkeys([dates[0], dates[-1]]))}, {len(provs)} run{'s' * (len(provs) > 1)}"
                   f"{load_txt}: {what}")
    return out


def _clean(obj):
    """JSON-safe: NaN/inf become null, tensors and numpy scalars become Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _clean(obj.item())
        except (ValueError, RuntimeError):
            pass
    return obj


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(_clean(obj), indent=2) + "\n")
    tmp.replace(path)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            if 10 <= abs(v) < 100:  # 3 significant figures, the zero kept: a mean of 85.003% reads "85.0", not "85"
                return f"{v:.1f}"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def machine_text(prov: dict) -> str:
    """The machine of a :func:`provenance`: cores, CPU, device, torch."""
    m = prov.get("machine") or {}
    dev = m.get("gpu") or m.get("device_name") or m.get("device")
    cpu = ", ".join(str(v) for v in (m.get("cpu"), m.get("cpu_capability")) if v)  # older files lack the capability
    return f"{m.get('cpus_usable')} CPU cores ({cpu}), device {dev}, torch {m.get('torch')}"


def machine_line(prov: dict) -> str:
    """One line for a table's footer from :func:`provenance` (or :func:`provenance_of` of an older file)."""
    commit = str(prov.get("git_commit"))[:10]
    text = (f"{machine_text(prov)}, load average before the run {prov.get('load_average_before_run')}; "
            f"{prov.get('date_utc')}, commit {commit}{' (dirty)' if prov.get('git_dirty') else ''}")
    if not prov.get("recorded"):
        text += f" [provenance not recorded by the tool: {prov.get('note') or 'written before it was'}]"
    return text


def write_markdown(path: Path, title: str, prov: dict, body: str, runs: list[dict] | None = None) -> str:
    """A results file's markdown: the command and machine of the run of ``prov``; with ``runs`` (:func:`runs_behind`
    of a document merged from several runs, at one commit or more) each commit's runs and every machine instead,
    not the first run's."""
    if runs and runs_total(runs) > 1:
        machines = dict.fromkeys(machine_text(q) for g in runs for q in g["provenances"])
        text = merged_from(runs)
        head = text[0].upper() + text[1:] + ":\n\n" + "\n".join(runs_lines(runs))
        foot = f"Machine{'s' * (len(machines) > 1)}: {'; '.join(machines)}."
    else:
        head, foot = f"    {portable_command(prov.get('command'))}", f"Machine: {machine_line(prov)}."
    text = f"### {title}\n\n{head}\n\n{body}\n\n{foot}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def pyplot():
    """matplotlib with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path: Path, rect=None) -> None:
    """Lay out, save (120 dpi) and close a figure."""
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds ``fn()`` takes, with the device's queued work finished before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a server a benchmark started: SIGTERM, then SIGKILL when it has not exited within ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def linear_regime(sizes: list[int], seconds_per_item: list[float], tol: float = 0.10) -> dict:
    """Where cost grows linearly with the amount of work, by one stated rule.

    ``seconds_per_item[i]`` is the cost of one image at work size ``sizes[i]`` (sizes ascending). Time is
    linear in the work where that cost is flat; we call it flat within ``tol`` (10%) of the best (lowest)
    cost measured. ``linear_from``: the first size whose cost is within ``tol`` of the best (below it a fixed
    per-call overhead dominates, time grows less than linearly). ``stops_linear_at``: the first larger size
    from which the cost stays more than ``tol`` above the best (time grows faster than the work), or None when
    it stays linear up to the largest size tried."""
    best = min(seconds_per_item)
    start = next(i for i, c in enumerate(seconds_per_item) if c <= (1 + tol) * best)
    above = [c > (1 + tol) * best for c in seconds_per_item]
    # the first size from which every larger size is also above: one noisy point in between does not count
    stop = next((i for i in range(start + 1, len(sizes)) if all(above[i:])), None)
    return {"rule": f"per-image cost within {round(100 * tol)}% of the lowest measured",
            "best_seconds_per_image": best, "linear_from": sizes[start],
            "stops_linear_at": sizes[stop] if stop is not None else None,
            "overhead_bound_below": sizes[start] if start > 0 else None}
