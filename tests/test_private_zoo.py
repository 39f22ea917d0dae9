"""A hosted app (a Hugging Face Space) gives each browser session a "my zoo" of its own: what one visitor adds is
neither listed nor usable for another, it counts against the visitor's disk share, and it goes with the session
(page closed, or nothing added for VP_RUN_TTL_HOURS). On a laptop (no SPACE_ID) the zoo stays one folder that
outlives the page."""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from visual_prompting import VPError
from visual_prompting.ui import OWN_BACKBONE, AppConfig, VPApp

REPO = Path(__file__).resolve().parent.parent
PAD = str(REPO / "prompts_zoo" / "effnet-lite0-96_fashion-mnist_pad.safetensors")
EXAMPLE = str(REPO / "assets" / "examples" / "7_sneaker.png")


def _app(tmp_path, **kw) -> VPApp:
    return VPApp(AppConfig(user_zoo_dir=tmp_path / "shared", work_dir=tmp_path / "work", device="cpu",
                           private_zoos=True, **kw))


@pytest.mark.parametrize("environ, private", [
    ({}, False),                                         # python app.py on a laptop: one zoo that outlives the page
    ({"SPACE_ID": "someone/vp"}, True),                  # a Space: every visitor their own
    ({"SPACE_ID": "someone/vp", "VP_PRIVATE_ZOOS": "0"}, False),
    ({"VP_PRIVATE_ZOOS": "1"}, True),
])
def test_private_zoos_are_on_for_a_space_and_can_be_set(environ, private):
    assert AppConfig.from_env(environ).private_zoos is private


def test_a_bad_private_zoos_setting_is_refused_in_words():
    with pytest.raises(VPError, match="VP_PRIVATE_ZOOS='yes': give 1"):
        AppConfig.from_env({"VP_PRIVATE_ZOOS": "yes"})


def test_each_session_lists_and_uses_only_its_own_zoo(tmp_path):
    vp = _app(tmp_path)
    shared = set(vp.entries)
    assert "lasts while this page is open" in vp.add_to_zoo(PAD, "mine", "alice")
    assert "my/mine" in vp.prompt_names("alice") and "my/mine" not in vp.prompt_names("bob")
    assert "my/mine" not in vp.entries and set(vp.prompt_names("bob")) == shared
    assert not (tmp_path / "shared").exists()  # nothing in the folder every user would see
    vp.refresh_zoo()
    assert "my/mine" not in vp.entries

    _, zero, prompted = vp.predict("my/mine", None, EXAMPLE, session="alice")
    assert len(prompted) == 5 and len(zero) == 5
    assert vp.inspect("my/mine", None, session="alice")["channels"] == vp.inspect(None, PAD)["channels"]
    for call in (lambda: vp.predict("my/mine", None, EXAMPLE, session="bob"),
                 lambda: vp.inspect("my/mine", None, session="bob"),
                 lambda: vp.predict("my/mine", None, EXAMPLE)):  # no session: the shared names only
        with pytest.raises(VPError, match="`my/mine` is not in your zoo. On this server each browser session"):
            call()
    assert "Cannot use this prompt" in vp.prompt_summary("my/mine", session="bob")[0]
    assert "my/mine" in [r[0] for r in vp.zoo_rows("alice")] and "my/mine" not in [r[0] for r in vp.zoo_rows("bob")]
    assert len(vp.zoo_gallery("alice")) == len(vp.zoo_gallery("bob")) + 1

    # bob may use the same name: his zoo is another folder, alice's prompt stays hers
    before = Path(vp.prompt_path("my/mine", session="alice")).read_bytes()
    vp.add_to_zoo(str(REPO / "prompts_zoo" / "effnet-lite0-96_fashion-mnist_live.safetensors"), "mine", "bob")
    assert Path(vp.prompt_path("my/mine", session="alice")).read_bytes() == before
    assert vp.prompt_path("my/mine", session="bob") != vp.prompt_path("my/mine", session="alice")
    with pytest.raises(VPError, match="`mine` is in the zoo already"):
        vp.add_to_zoo(PAD, "mine", "alice")

    vp.workspace.cleanup_session("alice")  # the page was closed
    assert "my/mine" not in vp.prompt_names("alice") and "my/mine" in vp.prompt_names("bob")


def test_a_session_zoo_needs_a_valid_session_and_stays_in_its_disk_share(tmp_path):
    size = os.path.getsize(PAD)
    vp = _app(tmp_path, max_user_disk_mb=1.5 * size / 2**20)
    with pytest.raises(VPError, match="no valid id"):
        vp.add_to_zoo(PAD, "mine", None)
    with pytest.raises(VPError, match="no valid id"):
        vp.prompt_names("../../etc")
    vp.add_to_zoo(PAD, "one", "alice")
    with pytest.raises(VPError, match="Adding this prompt to your zoo needs .* MiB, more than is left of your"):
        vp.add_to_zoo(PAD, "two", "alice")
    assert "my/two" not in vp.prompt_names("alice")
    vp.add_to_zoo(PAD, "two", "bob")  # another visitor's share


def test_a_session_zoo_is_swept_once_nothing_was_added_for_the_ttl(tmp_path):
    vp = _app(tmp_path, run_ttl_hours=1)
    vp.add_to_zoo(PAD, "mine", "alice")
    vp.add_to_zoo(PAD, "mine", "bob")
    zoo = vp.workspace.zoo_dir("alice")
    assert vp.workspace.sweep() == []
    old = time.time() - 2 * 3600
    os.utime(zoo, (old, old))
    assert vp.workspace.sweep() == [str(zoo)]
    assert "my/mine" not in vp.prompt_names("alice") and "my/mine" in vp.prompt_names("bob")


def _handler(demo, name: str):
    return next(fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == name)


def test_the_page_passes_each_browser_session_to_the_zoo(tmp_path):
    """app.py's handlers (Add to my zoo, the prompt lists, Classify, Inspect, Refresh) read the session of the
    request, as Gradio passes it."""
    import app

    vp = _app(tmp_path)
    demo = app.build_app(vp)
    alice, bob = SimpleNamespace(session_hash="alice"), SimpleNamespace(session_hash="bob")
    assert "Added as `my/mine`" in _handler(demo, "add_to_zoo")(PAD, "mine", alice)
    lists = _handler(demo, "prompt_lists")
    assert "my/mine" in lists(alice)[0]["choices"] and "my/mine" not in lists(bob)[0]["choices"]
    predict = _handler(demo, "predict")
    assert len(predict("my/mine", EXAMPLE, None, OWN_BACKBONE, alice)[2]) == 5
    with pytest.raises(gr.Error, match="not in your zoo"):
        predict("my/mine", EXAMPLE, None, OWN_BACKBONE, bob)
    with pytest.raises(gr.Error, match="not in your zoo"):
        _handler(demo, "inspect")("my/mine", None, None, bob)
    _, table = _handler(demo, "refresh")(False, alice)
    assert "my/mine" in set(table["name"])
    _, table = _handler(demo, "refresh")(False, bob)
    assert "my/mine" not in set(table["name"])
