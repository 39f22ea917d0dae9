"""The small app: its handler works on the shipped zoo and example images, and bad input is a clear message."""
import pytest
from PIL import Image

app = pytest.importorskip("app")


@pytest.fixture(scope="module")
def state():
    return app.TryPrompt()


def test_zoo_has_a_real_prompt_and_the_handler_predicts(state):
    assert state.prompts, "prompts_zoo/ must ship at least one prompt"
    name = next(iter(state.prompts))
    assert "test top-1" in state.describe(name)
    prompted, zero, with_prompt = state.run(name, Image.open(app.EXAMPLES[0]))
    size = state.model(name).image_size
    assert prompted.size == (size, size)
    assert len(zero) == 5 and len(with_prompt) == 5
    classes = set(state.prompts[name]["meta"]["class_names"])
    assert set(zero) <= classes and set(with_prompt) <= classes
    assert abs(sum(with_prompt.values()) - 1) < 0.5


def test_bad_input_is_a_message(state):
    with pytest.raises(app.VPError, match="Upload an image"):
        state.run(next(iter(state.prompts)), None)
    with pytest.raises(app.VPError, match="Pick a prompt"):
        state.run("no such prompt", Image.new("RGB", (8, 8)))


def test_blocks_build(state):
    assert app.build_app(state) is not None
