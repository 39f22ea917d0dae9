"""How long the test suite takes: the README's test command, timed, with its outcome and provenance.

    python benchmarks/test_suite.py              # CI=true python -m pytest -q, as .ci/run runs it
    python benchmarks/test_suite.py --smoke --out /tmp/ts   # one small test file (what the tests run)

Writes ``OUT/test_suite.json``: the pytest command, wall-clock seconds, pytest's last line (passed/failed/skipped)
and the provenance (the load average before the run says whether the machine was shared). The README's "about N
minutes" is written from it by benchmarks/report.py. CI runs on a fresh clone and does not commit what it
measures, so this file is made by running this script on the project's machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import REPO, bench_parser, provenance, write_json  # noqa: E402

MEASURES = ["tests", "benchmarks/test_suite.py", "visual_prompting", "app.py", "benchmarks/_bench.py",
    "benchmarks/accuracy.py", "benchmarks/speed.py", "benchmarks/scaling.py", "benchmarks/app_latency.py"]


def main(argv: list[str] | None = None) -> dict:
    ap = bench_parser(__doc__, "test_suite", "only tests/test_prompters.py")
    args = ap.parse_args(argv)
    # smoke: one small file in this one process (-n 0: no worker processes to start)
    pytest_args = ["-q", "-n", "0", "tests/test_prompters.py"] if args.smoke else ["-q"]
    env = dict(os.environ, CI=os.environ.get("CI", "true"))
    prov = provenance("test_suite.py", argv)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd=REPO, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    last = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.strip()), "")
    # the options pyproject.toml adds to every pytest run (the worker processes among them)
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"].get("addopts", "")
    doc = {"provenance": prov, "pytest_command": f"CI={env['CI']} python -m pytest {' '.join(pytest_args)}",
           "pytest_addopts": addopts,
           "smoke": args.smoke, "wall_seconds": round(seconds, 1), "returncode": proc.returncode,
           "passed": proc.returncode == 0, "summary_line": last.strip("= "),
           # pytest's short summary: which tests failed and why, in a line each (empty when all passed)
           "failed": [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED ", "ERROR "))]}
    write_json(Path(args.out) / "test_suite.json", doc)
    print("\n".join(doc["failed"] + [f"{doc['summary_line']}  ({seconds:.0f} s wall clock)"]))
    if proc.returncode != 0:  # the whole output, for the failures' tracebacks
        (Path(args.out) / "test_suite.log").write_text(proc.stdout + proc.stderr)
    return doc


if __name__ == "__main__":
    main()
