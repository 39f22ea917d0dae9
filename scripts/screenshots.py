"""Drive the app in a real browser (Playwright + Debian's chromium) and save a screenshot of each tab.

    python scripts/screenshots.py                    # -> assets/screenshots/{try,train,inspect,zoo}.png
    python scripts/screenshots.py --steps 50 --model effnet-lite0@96

It launches ``app.py``'s Blocks in this process on a free local port, lets the launch prewarm finish (as
``python app.py`` starts it), runs a prediction on an example image, trains a
prompt through the Train tab (with the form as a user first sees it, or ``--steps`` / ``--model`` / ``--batch-size``
typed in), inspects the default prompt, and compares two prompts in the Zoo tab; each step waits for what
the page shows, and the timings are printed. ``tests/test_app_server.py`` uses the same helpers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def chromium_path() -> str | None:
    """Debian's chromium (installed by .ci/run from apt-packages.txt), or $CHROMIUM."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def launch_app(vp=None, port: int | None = None):
    """Build and launch the app in this process; returns the Blocks (``.local_url``, ``.close()``)."""
    import app

    demo = app.build_app(vp)
    demo.queue(default_concurrency_limit=2).launch(prevent_thread_lock=True, quiet=True, server_port=port,
                                                   server_name="127.0.0.1", css=app.CSS)
    return demo


def open_browser(playwright):
    exe = chromium_path()
    if exe is None:
        raise SystemExit("No chromium found: `apt-get install chromium` (see apt-packages.txt) or set $CHROMIUM.")
    return playwright.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def predict_example(page, index: int = 0, timeout_ms: int = 60_000) -> tuple[str, str]:
    """Click an example image, press Classify, wait until both prediction panels show labels; their text."""
    open_tab(page, "Try a prompt")
    page.locator("button.gallery-item").nth(index).click()
    page.wait_for_selector("#try-image img", timeout=timeout_ms)
    page.click("#classify")
    for panel in ("#zero-shot", "#prompted"):
        page.wait_for_function(
            f"() => {{ const e = document.querySelector('{panel}'); return e && /%/.test(e.innerText); }}",
            timeout=timeout_ms)
    return page.locator("#zero-shot").inner_text(), page.locator("#prompted").inner_text()


def fill(page, elem_id: str, value, key: str = "Tab") -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press(key)


def train(page, steps: int | None = None, model: str | None = None, batch_size: int | None = None,
          timeout_ms: int = 600_000) -> str:
    """Train through the Train tab and wait for the run to finish; the final status text. Fields left ``None``
    keep the form's defaults (on a CPU: a training time, with Steps as the most)."""
    open_tab(page, "Train a prompt")
    if model:
        fill(page, "train-model", model, key="Enter")
    if steps:
        fill(page, "train-steps", steps)
    if batch_size:
        fill(page, "train-batch", batch_size)
    page.click("#train")
    page.wait_for_function(  # this run has started (the status of an earlier run may still say "Done.")
        "() => /Loading|step \\d/.test(document.querySelector('#train-status').innerText)", timeout=timeout_ms)
    page.wait_for_function(
        "() => { const e = document.querySelector('#train-status'); "
        "return e && /(Done|Stopped early)\\./.test(e.innerText); }", timeout=timeout_ms)
    return page.locator("#train-status").inner_text()


def inspect(page, timeout_ms: int = 60_000) -> None:
    open_tab(page, "Inspect a prompt")
    page.click("#inspect")
    page.wait_for_function("() => /Saliency of the prompted prediction/.test(document.body.innerText)",
                           timeout=timeout_ms)
    for part in ("prompt", "amplitude", "spectrum", "saliency"):
        page.wait_for_function(f"() => {{ const i = document.querySelector('#inspect-{part} img'); "
                               "return i && i.complete && i.naturalWidth > 0; }", timeout=timeout_ms)


def compare(page, timeout_ms: int = 120_000) -> None:
    """Open the Zoo tab and compare the prompts it has picked (the best one and the next), until the table shows."""
    open_tab(page, "Zoo")
    page.click("#compare")
    page.wait_for_function("() => /test images of the bundled Fashion-MNIST subset/.test(document.body.innerText)",
                           timeout=timeout_ms)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "assets" / "screenshots"))
    ap.add_argument("--steps", type=int, default=None, help="steps of the training run (default: the form's own; "
                    "on a CPU the run is then as long as its training time)")
    ap.add_argument("--model", default=None, help="backbone for the training run (default: the app's)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--no-prewarm", dest="prewarm", action="store_false", help="skip the launch prewarm that "
                    "`python app.py` starts (the training run then also loads the backbone and its numbers)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from visual_prompting.ui import AppConfig, VPApp

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vp-shots-") as tmp:
        t0 = time.perf_counter()
        vp = VPApp(AppConfig(user_zoo_dir=Path(tmp) / "zoo", work_dir=Path(tmp) / "work"))
        demo = launch_app(vp)
        print(f"app up in {time.perf_counter() - t0:.1f} s at {demo.local_url}")
        try:
            if args.prewarm:  # as `python app.py` does while its page loads
                vp.prewarm().join()
                print(f"launch prewarm done {time.perf_counter() - t0:.1f} s after the start")
            with sync_playwright() as p:
                browser = open_browser(p)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(demo.local_url)
                t = time.perf_counter()
                zero, prompted = predict_example(page)
                print(f"prediction in the browser: {time.perf_counter() - t:.1f} s")
                page.screenshot(path=str(out / "try.png"), full_page=True)
                t = time.perf_counter()
                status = train(page, args.steps, args.model, args.batch_size)
                steps = f"{args.steps} steps" if args.steps else "the form's defaults"
                print(f"training through the UI ({steps}): {time.perf_counter() - t:.1f} s - {status}")
                page.screenshot(path=str(out / "train.png"), full_page=True)
                inspect(page)
                page.screenshot(path=str(out / "inspect.png"), full_page=True)
                t = time.perf_counter()
                compare(page)
                print(f"comparison of two prompts in the browser: {time.perf_counter() - t:.1f} s")
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / "zoo.png"), full_page=True)
                browser.close()
        finally:
            demo.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
