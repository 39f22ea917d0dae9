"""Gradio app: try a visual prompt on an image (zero-shot vs prompted, side by side).

    python app.py            # http://127.0.0.1:7860, works offline with the prompts in prompts_zoo/

This file only wires Gradio to the library; everything it shows is computed by ``visual_prompting``.
The full app (train live, inspect, zoo gallery) is tracked as its own issue.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from visual_prompting import BackboneCache, PromptedModel, VPError
from visual_prompting.data import to_rgb
from visual_prompting.zoo import ZOO_DIR, list_prompts

EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "assets" / "examples").glob("*.png"))


class TryPrompt:
    """State shared by every user: backbones and prompted models are loaded lazily, once."""

    def __init__(self, zoo_dir=ZOO_DIR):
        self.cache = BackboneCache()
        self.models: dict[str, PromptedModel] = {}
        self.prompts = {p["name"]: p for p in list_prompts(zoo_dir)}

    def model(self, name: str) -> PromptedModel:
        if name not in self.prompts:
            raise VPError("Pick a prompt from the list.")
        if name not in self.models:
            self.models[name], _ = PromptedModel.from_prompt_file(self.prompts[name]["path"], cache=self.cache)
        return self.models[name]

    def describe(self, name: str | None) -> str:
        if name not in self.prompts:
            return "No prompt selected."
        m = self.prompts[name]["meta"]
        met = m.get("metrics", {})
        acc = (f"test top-1 {100 * met['test_top1']:.1f}% (no prompt {100 * met['test_top1_no_prompt']:.1f}%)"
               if "test_top1" in met else "no test numbers stored")
        return (f"**{m['prompter']['kind']}** prompt for `{m['backbone']['spec']}` on **{m.get('dataset', '?')}** "
                f"({len(m['class_names'])} classes) - {acc}")

    def run(self, name, image):
        """(prompted PIL image, zero-shot {label: p}, prompted {label: p}); VPError on bad input."""
        if image is None:
            raise VPError("Upload an image or pick an example first.")
        model = self.model(name)
        img = to_rgb(image)
        (zs,), (pr,), (prompted,) = model.predict_both([img], 5, with_images=True)
        return prompted, dict(zs), dict(pr)


def build_app(state: TryPrompt | None = None) -> gr.Blocks:
    state = state or TryPrompt()
    names = list(state.prompts)
    first = names[0] if names else None

    def run(name, image):
        try:
            return state.run(name, image)
        except VPError as e:
            raise gr.Error(str(e))

    with gr.Blocks(title="Visual prompting") as demo:
        gr.Markdown("# Visual prompting\nOne learned image perturbation adapts a frozen model to a new task. "
                    "Pick a prompt and an image: the model's answer without and with the prompt, side by side.")
        with gr.Row():
            choice = gr.Dropdown(names, value=first, label="Prompt (prompts_zoo/)")
            info = gr.Markdown(state.describe(first))
        with gr.Row():
            image = gr.Image(type="pil", label="Image", image_mode="RGB")
            prompted = gr.Image(type="pil", label="Prompted image", format="png")
        with gr.Row():
            zero = gr.Label(num_top_classes=5, label="Zero-shot (no prompt)")
            with_prompt = gr.Label(num_top_classes=5, label="Prompted")
        button = gr.Button("Classify", variant="primary")
        if EXAMPLES:
            gr.Examples(EXAMPLES, inputs=image)
        choice.change(state.describe, choice, info)
        button.click(run, [choice, image], [prompted, zero, with_prompt], api_name="predict", concurrency_limit=4)
    return demo


if __name__ == "__main__":
    build_app().queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
