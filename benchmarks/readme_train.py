"""The README's command-line `train` example, run as written, with its output kept as a results file.

    python benchmarks/readme_train.py            # the README's command (about 2 min on 2 CPU cores)
    python benchmarks/readme_train.py --smoke --out /tmp/rt   # 3 steps at 32 px (what the tests run)

Writes ``OUT/readme_train.json``: the command, its wall-clock seconds, the lines it printed that the README
quotes (the zero-shot line and the test/val lines; the progress bar is left out), and the provenance. The
README's block is written from that file by ``benchmarks/report.py``, so it shows what the command printed when
it was last run, and ``report.py --stale`` says when the code it measures has changed since.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
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
    "visual_prompting/prompters.py", "visual_prompting/heads.py", "visual_prompting/backbones.py",
    "visual_prompting/data.py", "visual_prompting/evaluation.py"]


def main(argv: list[str] | None = None) -> dict:
    ap = bench_parser(__doc__, "readme_train", "3 steps at 32 px instead of the README's 200 at 96 px")
    args = ap.parse_args(argv)
    train_args = SMOKE_ARGS if args.smoke else README_ARGS
    out = Path(args.out)
    prov = provenance("readme_train.py", argv)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "visual_prompting", "train", *train_args, "--out-dir", str(Path(tmp) / "run")]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the README's train command failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    printed = (proc.stdout + "\n" + proc.stderr).replace("\r", "\n").splitlines()  # the zero-shot line goes to stderr
    lines = [ln for q in QUOTED for ln in [next((x.rstrip() for x in printed if x.strip().startswith(q)), None)] if ln]
    doc = {"provenance": prov, "readme_command": "python -m visual_prompting train " + shlex.join(train_args),
           "smoke": args.smoke, "wall_seconds": round(seconds, 1), "output_lines": lines}
    write_json(out / "readme_train.json", doc)
    print("\n".join(lines) + f"\n({seconds:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
