"""The app served on localhost: its API through gradio_client, and the page in a real browser (Playwright driving
Debian's chromium). Both are installed by .ci/run; outside CI the browser test is skipped when chromium or
Playwright is missing, in CI it fails."""
import importlib.util
import os
from pathlib import Path

import pytest

from visual_prompting.ui import AppConfig, VPApp

from conftest import EFFNET

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "screenshots.py"
spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)  # scripts/ is not a package
shots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shots)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    vp = VPApp(AppConfig(user_zoo_dir=tmp / "zoo", work_dir=tmp / "work", device="cpu"))
    demo = shots.launch_app(vp)
    yield demo, vp
    demo.close()


def test_api_predict_train_and_errors_through_gradio_client(served, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    demo, vp = served
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))
    name = next(iter(vp.entries))
    example = vp.examples()[0]
    prompted, zero, with_prompt = client.predict(name, handle_file(example), api_name="/predict")
    classes = set(vp.entries[name]["meta"]["class_names"])
    for label in (zero, with_prompt):
        assert len(label["confidences"]) == 5 and label["label"] in classes
        assert {c["label"] for c in label["confidences"]} <= classes
    assert Path(prompted).suffix == ".png" and Path(prompted).stat().st_size > 0

    with pytest.raises(AppError, match="Upload an image"):
        client.predict(name, None, api_name="/predict")
    with pytest.raises(AppError, match="not found"):
        client.predict("nobody/no-such-prompt.safetensors", handle_file(example), api_name="/predict")

    job = client.submit(EFFNET, "fashion_mnist_subset", None, "pad", 0, 6, 32, 40, "iterative", "straight-through", 0,
                        api_name="/train")
    outputs = job.result(timeout=300)
    status, best = outputs[1], outputs[6]
    assert status.startswith("Done.") and "Test top-1" in status
    assert Path(best).suffix == ".safetensors" and Path(best).stat().st_size > 0

    # the server is still serving after all that
    assert client.predict(name, handle_file(vp.examples()[1]), api_name="/predict")[2]["label"] in classes


def test_predictions_are_served_while_a_run_trains_and_stop_ends_it(served, tmp_path):
    """One user's training does not hold up another's prediction, and Stop (same session) ends the run cleanly."""
    import time

    from gradio_client import Client, handle_file

    demo, vp = served
    trainer = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "a"))
    other = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "b"))
    name = next(iter(vp.entries))
    job = trainer.submit(EFFNET, "fashion_mnist_subset", None, "pad", 0, 2000, 32, 40, "first_k", "straight-through",
                         0, api_name="/train")
    deadline = time.monotonic() + 120
    while "step " not in str(job.outputs()[-1][1] if job.outputs() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not job.done(), "the run should still be training"
    t = time.monotonic()
    zero = other.predict(name, handle_file(vp.examples()[2]), api_name="/predict")[1]
    waited = time.monotonic() - t
    assert len(zero["confidences"]) == 5 and not job.done()
    assert waited < 30, f"a prediction waited {waited:.1f} s behind the training run"
    trainer.predict(api_name="/stop")
    status, best = job.result(timeout=120)[1], job.result()[6]
    assert status.startswith("Stopped at step") and Path(best).is_file()


def _browser_or_skip():
    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)")
    if shots.chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run installs it from apt-packages.txt")
        pytest.skip("no chromium (apt-get install chromium)")


def test_browser_predicts_on_an_example_and_trains(served):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    demo, vp = served
    classes = vp.entries[next(iter(vp.entries))]["meta"]["class_names"]
    with sync_playwright() as p:
        browser = shots.open_browser(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(demo.local_url)
            zero, prompted = shots.predict_example(page, index=1)
            for panel in (zero, prompted):
                assert any(c in panel for c in classes), panel
                assert "%" in panel
            status = shots.train(page, steps=8, model=EFFNET, batch_size=32, timeout_ms=300_000)
            assert status.startswith("Done.") and "Test top-1" in status
            shots.inspect(page)
            shots.open_tab(page, "Zoo")
            assert page.get_by_text(next(iter(vp.entries))).first.is_visible()
        finally:
            browser.close()


def test_the_zoo_tab_compares_prompts_over_http(served, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    demo, vp = served
    client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))
    best = vp.best_prompt()
    other = next(n for n in vp.entries if n != best)
    table, text = client.predict([best, other], api_name="/compare")
    assert table["headers"] == VPApp.COMPARE_HEADERS
    assert table["data"] == [[str(c) for c in row] for row in vp.compare([best, other])[0]]
    assert "1000 test images" in text
    with pytest.raises(AppError, match="at least two prompts"):
        client.predict([best], api_name="/compare")
