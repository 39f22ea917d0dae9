"""Load: many users of the app at once, all clicking the same examples, while one more user trains.

    python benchmarks/load.py                      # 16 users for 60 s (run it on an idle machine)
    python benchmarks/load.py --users 16,64        # one server per level, every level in the same load.json
    python benchmarks/load.py --smoke --out /tmp/load

For each level of ``--users``, the script starts ``python app.py`` as its own process on a free localhost port
(``GRADIO_ANALYTICS_ENABLED=False``, its own temporary folder for Gradio's cache and the app's work folder; the
server is stopped at the end whatever happens), then runs N ``gradio_client`` users at once for ``--seconds``,
each with its own client (its own session) and its own download folder. All users start together and make the
same sequence of requests, so they send and receive the *same* files at the same moments:

* ``example``: ``/predict`` with the app's first zoo prompt and a bundled example (``assets/examples``, the
  k-th request of every user uses the same example);
* ``upload``: every fourth request from the second on, ``/predict`` with the user's own image: the example perturbed by noise drawn
  from the user and request numbers, a file no other user sends;
* ``inspect``: every tenth request, ``/inspect`` of the same prompt with the example (four pictures back).

A request counts as failed when the call raises (an error message from the app, a broken connection, a download
cut short) or when what comes back is not complete: every returned picture must decode in full, every label must
be a top-5. One more user trains through the Train tab's ``/train`` endpoint from the start (``--train-model``,
``--train-steps``, ``--train-batch`` on the bundled subset, or with ``--train-upload`` on a small .zip of class
folders made from the examples, uploaded through the Train tab: a run of seconds); after the users stop, the
script waits for that run (``--train-timeout``).

Reported per level: requests, failures (counted by kind, with examples of their messages), p50/p95/max latency
of the successful requests (and per request kind), requests per second, the training run's outcome and seconds,
and the lines of the server's log that report a problem (``Traceback``, ``Error``, a response cut short).
Goal: 0 failures at every level and the training finished.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (REPO, apply_threads, bench_parser, markdown_table, provenance, pyplot,  # noqa: E402
                    save_figure, stop_process, write_json, write_markdown)
from app_latency import free_port, wait_for_page  # noqa: E402

# the code this result measures: `benchmarks/report.py --stale` lists a result as stale once any of these
# paths changed after the commit it records
MEASURES = [
    "benchmarks/load.py",
    "app.py",
    "visual_prompting/ui.py",
    "visual_prompting/app_files.py",
    "visual_prompting/model.py",
    "visual_prompting/data.py",
    "visual_prompting/training.py",
    "visual_prompting/visualization.py",
    "visual_prompting/backbones.py",
    "visual_prompting/prompt_file.py",
]

EXAMPLES = REPO / "assets" / "examples"
KINDS = ("example", "upload", "inspect")
# lines of the server's log that say something went wrong
LOG_PROBLEM = re.compile(r"Traceback|Error|Exception|Too little data|Content-Length", re.I)


def request_kind(k: int) -> str:
    """What a user's k-th request is (the same for every user)."""
    return "inspect" if k % 10 == 9 else "upload" if k % 4 == 1 else "example"


def failure_kind(message: str) -> str:
    """A failure message with what varies between requests (paths, file names, numbers) taken out."""
    m = re.sub(r"(?:/[\w.\-]+)+", "<path>", message)
    m = re.sub(r"\b[\w\-]+\.(?:png|jpe?g|webp)\b", "<image>", m)
    return re.sub(r"\d+", "N", m)[:160]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None when there is no value."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def latency(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": percentile(values, 50), "p95_s": percentile(values, 95),
            "max_s": max(values) if values else None}


@contextmanager
def serve_app(tmp: Path, threads: int | None, timeout: float):
    """``python app.py`` on a free localhost port, with its temporary files (Gradio's cache, the app's work
    folder) under ``tmp``; yields (url, log path, seconds to the page answering). Stopped whatever happens."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server_tmp = tmp / "server-tmp"
    server_tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", TMPDIR=str(server_tmp))
    env.pop("GRADIO_TEMP_DIR", None)  # Gradio's cache goes under TMPDIR too
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log = tmp / "server.log"
    with open(log, "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT)
        try:
            wait_for_page(url, proc, timeout, log)
            yield url, log, time.perf_counter() - t0
        finally:
            stop_process(proc)


def perturbed(k: int, seed: list[int]):
    """The k-th example (cycling) with noise drawn from ``seed``: a PIL image no other seed gives."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.asarray(Image.open(examples()[k % len(examples())]).convert("RGB"), dtype=np.int16)
    return Image.fromarray(np.clip(base + rng.integers(-24, 25, base.shape), 0, 255).astype(np.uint8))


def own_image(user: int, k: int, folder: Path) -> Path:
    """The example of request k perturbed for (user, k): a file only this user sends."""
    path = folder / f"user{user}-{k}.png"
    perturbed(k, [user, k]).save(path)
    return path


def small_dataset_zip(path: Path, per_class: int = 4) -> Path:
    """A .zip of class folders (one per bundled example, ``per_class`` perturbed copies each), for a training run
    of seconds through the Train tab's upload."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for k, ex in enumerate(examples()):
            for j in range(per_class):
                buf = io.BytesIO()
                perturbed(k, [10_000 + k, j]).save(buf, format="PNG")
                z.writestr(f"{ex.stem.split('_', 1)[1]}/{j}.png", buf.getvalue())
    return path


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.png"))


def check_picture(path) -> None:
    """A returned picture must be a file that decodes in full."""
    from PIL import Image

    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise RuntimeError(f"no picture came back ({path!r})")
    with Image.open(path) as im:
        im.load()


def check_result(kind: str, res) -> None:
    if kind == "inspect":
        for p in res[:3]:  # prompt, amplitude, spectrum; the saliency map too, as an image was sent
            check_picture(p)
        check_picture(res[3])
        return
    check_picture(res[0])
    for label in res[1:3]:
        conf = label.get("confidences") if isinstance(label, dict) else None
        if not conf or len(conf) != 5:
            raise RuntimeError(f"a label is not a top-5: {label!r}")


def user_loop(user: int, url: str, prompt: str, deadline_box: list, start: threading.Barrier, folder: Path,
              records: list, request_timeout: float) -> None:
    """One user: its own client and folders; requests until the deadline; (kind, seconds, error) per request."""
    from gradio_client import Client, handle_file

    folder.mkdir(parents=True, exist_ok=True)
    client = None
    try:
        client = Client(url, verbose=False, download_files=str(folder / "downloads"), analytics_enabled=False)
    except Exception as e:  # noqa: BLE001 - a user who cannot connect is a failure too
        records.append(("connect", 0.0, f"{type(e).__name__}: {e}"))
    start.wait()  # everyone starts together
    if client is None:
        return
    try:
        k = 0
        while time.monotonic() < deadline_box[0]:
            kind = request_kind(k)
            ex = examples()[k % len(examples())]
            t = time.perf_counter()
            error = None
            try:
                if kind == "inspect":
                    job = client.submit(prompt, None, handle_file(str(ex)), api_name="/inspect")
                else:
                    image = own_image(user, k, folder) if kind == "upload" else ex
                    job = client.submit(prompt, handle_file(str(image)), api_name="/predict")
                check_result(kind, job.result(timeout=request_timeout))
            except Exception as e:  # noqa: BLE001 - every failure is counted with its message
                error = f"{type(e).__name__}: {e}".strip()
            records.append((kind, time.perf_counter() - t, error))
            k += 1
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort; the server is stopped next
            pass


def trainer_loop(url: str, args, start: threading.Barrier, folder: Path, out: dict) -> None:
    """One more user who trains through /train from the start; its outcome into ``out``."""
    from gradio_client import Client

    folder.mkdir(parents=True, exist_ok=True)
    client = None
    try:
        client = Client(url, verbose=False, download_files=str(folder / "downloads"), analytics_enabled=False)
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    start.wait()
    if client is None:
        return
    t = time.perf_counter()
    out["started_monotonic"] = time.monotonic()
    try:
        if args.train_upload:
            from gradio_client import handle_file

            from visual_prompting.ui import UPLOADED_DATASET

            data = (UPLOADED_DATASET, handle_file(str(small_dataset_zip(folder / "classes.zip"))))
        else:
            data = ("fashion_mnist_subset", None)
        job = client.submit(args.train_model, *data, "pad", 0, args.train_steps, args.train_batch, 40, "iterative",
                            "straight-through", 0, api_name="/train")
        outputs = job.result(timeout=args.train_timeout)
        out["status"] = str(outputs[1])
        out["finished"] = out["status"].startswith("Done.")
        out["best_prompt_returned"] = bool(outputs[6]) and os.path.isfile(outputs[6])
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
        out["finished"] = False
    out["seconds"] = time.perf_counter() - t
    out["ended_monotonic"] = time.monotonic()
    try:
        client.close()
    except Exception:  # noqa: BLE001
        pass


def run_level(url: str, users: int, seconds: float, prompt: str, args, folder: Path) -> dict:
    """N users for ``seconds`` and one trainer against a running server; the level's numbers."""
    records: list = []
    train: dict = {"finished": False}
    trains = args.train_steps > 0
    start = threading.Barrier(users + int(trains) + 1)  # the users, the trainer, this thread
    deadline_box = [float("inf")]
    threads = [threading.Thread(target=user_loop, daemon=True, name=f"user-{i}",
                                args=(i, url, prompt, deadline_box, start, folder / f"user{i}", records,
                                      args.request_timeout)) for i in range(users)]
    if trains:
        threads.append(threading.Thread(target=trainer_loop, daemon=True, name="trainer",
                                        args=(url, args, start, folder / "trainer", train)))
    for t in threads:
        t.start()
    start.wait(timeout=max(120.0, 2.0 * users))
    t0 = time.monotonic()
    deadline_box[0] = t0 + seconds
    for t in threads[:users]:
        t.join(timeout=seconds + args.request_timeout + 30)
    users_s = time.monotonic() - t0
    if trains:
        threads[-1].join(timeout=args.train_timeout + 30)
    done = list(records)
    ok = [s for _, s, e in done if e is None]
    errors = [e for _, _, e in done if e is not None]
    by_kind = {}
    for kind in KINDS:
        mine = [(s, e) for k, s, e in done if k == kind]
        by_kind[kind] = {"requests": len(mine), "failures": sum(e is not None for _, e in mine),
                         **latency([s for s, e in mine if e is None])}
    if "ended_monotonic" in train:
        train["finished_while_users_ran"] = train["ended_monotonic"] <= deadline_box[0]
    train = {k: v for k, v in train.items() if not k.endswith("_monotonic")}
    return {"users": users, "seconds": seconds, "users_ran_s": users_s, "requests": len(done),
            "failures": len(errors), "requests_per_s": len(done) / users_s if users_s > 0 else None,
            "latency": latency(ok), "by_kind": by_kind,
            "failure_kinds": dict(Counter(failure_kind(e) for e in errors).most_common()),
            "failure_examples": list(dict.fromkeys(e[:300] for e in errors))[:10],
            "users_stuck": sum(t.is_alive() for t in threads[:users]), "training": train}


def log_problems(log: Path) -> dict:
    """The server log's lines that report a problem, counted by kind (numbers and paths taken out); a traceback's
    indented lines are left out, its first and last lines count."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    heads = [ln.strip() for ln in text.splitlines() if ln[:1] not in (" ", "\t") and LOG_PROBLEM.search(ln)]
    return dict(Counter(failure_kind(ln) for ln in heads).most_common(20))


def measure(users: int, seconds: float, prompt: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="vp-load-") as tmp:
        tmp = Path(tmp)
        with serve_app(tmp, args.threads, args.timeout) as (url, log, launch_s):
            level = run_level(url, users, seconds, prompt, args, tmp / "clients")
        level["launch_to_page_s"] = launch_s
        level["server_log_problems"] = log_problems(log)
    return level


def plot(doc: dict, path: Path) -> None:
    plt = pyplot()
    levels = doc["levels"]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    xs = range(len(levels))
    for off, key, colour in ((-0.25, "p50_s", "#1f77b4"), (0, "p95_s", "#ff7f0e"), (0.25, "max_s", "#d62728")):
        ax.bar([x + off for x in xs], [lv["latency"][key] or 0 for lv in levels], width=0.25, color=colour,
               label=key[:-2])
    ax.set_xticks(list(xs), [f"{lv['users']} users\n{lv['failures']} failed of {lv['requests']}" for lv in levels])
    ax.set_ylabel("seconds per request")
    ax.legend(fontsize=8)
    ax.set_title("Latency of the successful requests while one user trains", fontsize=9)
    save_figure(plt, fig, path)


def parse_users(text: str) -> list[int]:
    try:
        users = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--users takes numbers separated by commas (16 or 16,64), not {text!r}") from None
    if not users or min(users) < 1:
        raise SystemExit(f"--users needs at least one user per level, not {text!r}")
    return users


def parse_args(argv):
    ap = bench_parser(__doc__, "load", "2 users for 5 s, a 3-step training run: checks the script runs")
    ap.add_argument("--users", default=None, help="concurrent users, one level or several: 16 or 16,64 "
                                                   "(default 16; smoke 2)")
    ap.add_argument("--seconds", type=float, default=None, help="how long the users send requests, per level "
                                                                "(default 60; smoke 5)")
    ap.add_argument("--prompt", default=None, help="prompt name (default: the app's first)")
    ap.add_argument("--train-model", default="effnet-lite0@64", help="backbone of the training run "
                                                                     "(default: %(default)s)")
    ap.add_argument("--train-steps", type=int, default=None, help="steps of the training run; 0: no trainer "
                                                                  "(default 60; smoke 3)")
    ap.add_argument("--train-batch", type=int, default=None, help="its batch size (default 32; smoke 8)")
    ap.add_argument("--train-upload", action="store_true",
                    help="train on a small .zip of class folders made from the examples, uploaded through the Train "
                         "tab, instead of the bundled subset (a run of seconds: what the tests use)")
    ap.add_argument("--train-timeout", type=float, default=600, help="seconds to wait for the training run "
                                                                     "(default: %(default)s)")
    ap.add_argument("--request-timeout", type=float, default=300, help="seconds one request may take before it "
                                                                       "counts as failed (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for the page (default: %(default)s)")
    args = ap.parse_args(argv)
    args.users = parse_users(args.users or ("2" if args.smoke else "16"))
    args.seconds = args.seconds or (5.0 if args.smoke else 60.0)
    args.train_steps = args.train_steps if args.train_steps is not None else (3 if args.smoke else 60)
    args.train_batch = args.train_batch or (8 if args.smoke else 32)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    apply_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from visual_prompting.ui import VPApp  # the app's own list, so the name is what its dropdown shows first

    prompt = args.prompt or next(iter(VPApp().entries), None)
    if prompt is None:
        raise SystemExit("prompts_zoo/ has no prompt: the app has nothing to predict with")
    prov = provenance("load.py", argv, "cpu")  # before the run: its load average says whether it was shared
    levels, t0 = [], time.perf_counter()
    for users in args.users:
        levels.append(measure(users, args.seconds, prompt, args))
        lv = levels[-1]
        print(f"{users} users: {lv['requests']} requests, {lv['failures']} failed, p50 {lv['latency']['p50_s']} s, "
              f"training finished: {lv['training'].get('finished')}", flush=True)
    doc = {"provenance": prov,
           "settings": {"users": args.users, "seconds": args.seconds, "prompt": prompt,
                        "examples": [str(p.relative_to(REPO)) for p in examples()],
                        "requests": "every user: /predict with the k-th example; every 4th request its own "
                                    "perturbed image; every 10th /inspect with the example",
                        "train": {"model": args.train_model,
                                  "dataset": "an uploaded .zip of the examples" if args.train_upload else
                                  "fashion_mnist_subset",
                                  "steps": args.train_steps, "batch_size": args.train_batch},
                        "request_timeout_s": args.request_timeout, "smoke": args.smoke,
                        "server_threads": args.threads or "torch default"},
           "levels": levels,
           "goal": "0 failed requests at every level, and the training run finished"}
    doc["total_seconds"] = time.perf_counter() - t0
    doc["goal_met"] = all(lv["failures"] == 0 and (lv["training"].get("finished") or args.train_steps == 0)
                          for lv in levels)
    write_json(out / "load.json", doc)
    plot(doc, out / "load.png")
    print(write_markdown(out / "load.md", "Load: concurrent users while one trains", prov, load_table(doc)))
    return doc


def load_table(doc: dict, machine: str | None = None) -> str:
    """The Markdown table of a load.json, with a machine column when ``machine`` is given (what
    benchmarks/report.py shows), and the failures by kind."""
    rows = []
    for lv in doc["levels"]:
        tr, lat = lv["training"], lv["latency"]
        trained = (f"yes, in {tr['seconds']:.0f} s" if tr.get("finished") else
                   "no run" if doc["settings"]["train"]["steps"] == 0 else "no")
        rows.append([lv["users"], f"{lv['seconds']:.0f} s", lv["requests"], lv["failures"], lat["p50_s"],
                     lat["p95_s"], lat["max_s"], trained] + ([machine] if machine else []))
    table = markdown_table(["users", "for", "requests", "failed", "p50 (s)", "p95 (s)", "max (s)",
                            "training finished"] + (["machine"] if machine else []), rows)
    kinds = Counter()
    for lv in doc["levels"]:
        kinds.update(lv["failure_kinds"])
    if kinds:
        table += "\n\nFailures by kind: " + "; ".join(f"{n} x `{k}`" for k, n in kinds.most_common()) + "."
    return table


if __name__ == "__main__":
    main()
