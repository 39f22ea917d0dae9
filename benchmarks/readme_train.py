"""The README's command-line `train` example, run as written, with its output kept as a results file.

    python benchmarks/readme_train.py            # the README's command (about 2 min on 2 CPU cores)
    python benchmarks/readme_train.py --smoke --out /tmp/rt   # 3 steps at 32 px (what the tests run)

Writes ``OUT/readme_train.json``: the command, its wall-clock seconds, ``seconds_to_first_step`` (from starting
the command to its progress bar first showing a step done, ``1/N`` or a later count: the child's stderr is read as
it comes, unbuffered), the lines it printed that the README quotes (the zero-shot line, printed at the first
evaluation, and the test/val lines; the progress bar is left out), and the provenance. The
README's block is written from that file by ``benchmarks/report.py``, so it shows what the command printed when
it was last run, and ``report.py --stale`` says when the code it measures has changed since.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import REPO, bench_parser, provenance, write_json  # noqa: E402

# what the README shows (its train example, with --out-dir set per run)
README_ARGS = ["--model", "effnet-lite0@96", "--dataset", "fashion_mnist_subset", "--steps", "200", "--batch-size", "64"]
SMOKE_ARGS = ["--model", "effnet-lite0@32", "--dataset", "fashion_mnist_subset", "--steps", "3", "--batch-size", "16"]
QUOTED = ("zero-shot", "test top-1", "test top-5", "val  top-1")
# the code this result measures (benchmarks/report.py --stale): the CLI and what a training run goes through
MEASURES = ["benchmarks/readme_train.py", "visual_prompting/cli.py", "visual_prompting/training.py",
    "visual_prompting/train_config.py", "visual_prompting/checkpoint.py", "visual_prompting/baselines.py",
    "visual_prompting/execution.py", "visual_prompting/prompters.py", "visual_prompting/heads.py",
    "visual_prompting/backbones.py", "visual_prompting/data.py", "visual_prompting/evaluation.py",
    "visual_prompting/recipes.py", "visual_prompting/optim.py", "visual_prompting/settings.py",
    "visual_prompting/imagenet_classes.py", "visual_prompting/spectral.py"]
# tqdm's bar with a count of steps done: "  3%|▎         | 6/200 [00:04<02:10, ...]"
BAR_COUNT = re.compile(rb"\| *(\d+)/\d+ \[")


def run_timed(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float | None]:
    """Run ``cmd`` and time it: ``(the finished process, its seconds, seconds to its progress bar's first count of
    one step or more, None when it showed none)``. stdout is read in a thread; stderr here, chunk by chunk as the
    child writes it (its bar is flushed at each redraw; ``PYTHONUNBUFFERED`` flushes the rest)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env, "PYTHONUNBUFFERED": "1"})
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    err, first_step = b"", None
    while chunk := os.read(proc.stderr.fileno(), 1 << 16):
        now = time.perf_counter()
        tail = err[-200:] + chunk  # a redraw may come in two chunks
        err += chunk
        if first_step is None and any(int(m.group(1)) >= 1 for m in BAR_COUNT.finditer(tail)):
            first_step = now - t0
    returncode = proc.wait()
    seconds = time.perf_counter() - t0
    reader.join()
    proc.stdout.close()
    proc.stderr.close()
    done = subprocess.CompletedProcess(cmd, returncode, out[0].decode(errors="replace"), err.decode(errors="replace"))
    return done, seconds, first_step


def main(argv: list[str] | None = None) -> dict:
    ap = bench_parser(__doc__, "readme_train", "3 steps at 32 px instead of the README's 200 at 96 px")
    args = ap.parse_args(argv)
    train_args = SMOKE_ARGS if args.smoke else README_ARGS
    out = Path(args.out)
    prov = provenance("readme_train.py", argv)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "visual_prompting", "train", *train_args, "--out-dir", str(Path(tmp) / "run")]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        proc, seconds, first_step = run_timed(cmd, env)
    if proc.returncode != 0:
        raise SystemExit(f"the README's train command failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    if first_step is None:
        raise SystemExit(f"the README's train command never showed a step done on its progress bar:\n"
                         f"{proc.stderr[-2000:]}")
    # the zero-shot line goes to stdout (written above the bar) or, without a bar, to stderr
    printed = (proc.stdout + "\n" + proc.stderr).replace("\r", "\n").splitlines()
    lines = [ln for q in QUOTED for ln in [next((x.rstrip() for x in printed if x.strip().startswith(q)), None)] if ln]
    doc = {"provenance": prov, "readme_command": "python -m visual_prompting train " + shlex.join(train_args),
           "smoke": args.smoke, "wall_seconds": round(seconds, 1), "seconds_to_first_step": round(first_step, 2),
           "output_lines": lines}
    write_json(out / "readme_train.json", doc)
    print("\n".join(lines) + f"\n({seconds:.0f} s; the first step showed after {first_step:.1f} s)")
    return doc


if __name__ == "__main__":
    main()
