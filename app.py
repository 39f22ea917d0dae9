"""Gradio app: try, train, inspect and share visual prompts.

    python app.py            # http://127.0.0.1:7860; works offline with prompts_zoo/ and the bundled data

This file only wires Gradio to the library: every handler calls :class:`visual_prompting.ui.VPApp`, which does the
work (and is tested without Gradio). The same file runs unchanged as a Hugging Face Space (see the README's front
matter); on a ZeroGPU Space (the ``spaces`` package is there) the training function asks for a GPU.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import gradio as gr
import pandas as pd

from visual_prompting import VPError
from visual_prompting.ui import CLAMPS, LABEL_MAPPINGS, OWN_BACKBONE, PROMPTER_KINDS, TRAIN_BACKBONES, VPApp

try:  # ZeroGPU Spaces: the decorated function gets a GPU while it runs
    import spaces
except ImportError:
    spaces = None

CURVE_COLUMNS = ["step", "value", "series"]
# small images (28 px Fashion-MNIST, 96 px model inputs) are shown enlarged with sharp pixels; the PNG that is
# downloaded stays the exact model input
CSS = """
#try-image img, #prompted-image img, .vp-pixels img { width: 100%; height: 100%; object-fit: contain;
  image-rendering: pixelated; }
"""
HEADER = """# Visual prompting
One learned image perturbation (a frame or a patch) adapts a **frozen** model to a new task - no weight changes.
Try a trained prompt on an image, train your own live, look inside one, or browse the zoo.
Method: [Bahng et al., *Exploring Visual Prompts for Adapting Large-Scale Models* (2022)](https://arxiv.org/abs/2203.17274)."""


@contextmanager
def user_errors():
    """A bad input becomes a readable message in the page (gr.Error), never a stack trace."""
    try:
        yield
    except VPError as e:
        raise gr.Error(str(e), print_exception=False) from None


def progress_bar(fraction: float) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="vp-progress" role="progressbar" aria-valuenow="{pct:.0f}" aria-valuemin="0" '
            f'aria-valuemax="100" style="background:var(--neutral-200);border-radius:4px;height:12px">'
            f'<div style="width:{pct:.1f}%;background:var(--color-accent);height:12px;border-radius:4px"></div></div>')


def curve_frame(records: list[dict] | None = None) -> pd.DataFrame:
    """Records -> a frame with numeric step/value columns (also when empty: the plot's axes take their type from
    the first value it gets)."""
    df = pd.DataFrame(records or [], columns=CURVE_COLUMNS)
    return df.astype({"step": "int64", "value": "float64", "series": "str"})


def curves(records: list[dict]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(loss curve, accuracy curves) for the two line plots; None while a curve has no points (Gradio 6.31's
    LinePlot never draws lines, nor a legend, once it has rendered an empty frame - seen in the browser).
    The accuracy plot waits for the first evaluation, so its three series arrive together: the plot keeps the
    series (colours, legend) of the first frame it draws."""
    df = curve_frame(records)
    is_loss = df["series"] == "train loss"
    loss, acc = df[is_loss], df[~is_loss]
    return (loss if len(loss) else None,
            acc if (acc["series"] == "val accuracy (prompt)").any() else None)


def build_app(vp: VPApp | None = None) -> gr.Blocks:
    vp = vp or VPApp()
    names = list(vp.entries)
    first = names[0] if names else None
    first_text, first_choices = vp.prompt_summary(first)
    examples = vp.examples()
    defaults = vp.train_defaults()

    # -- handlers (thin: validate through the library, turn VPError into a message) ----------------------------
    def on_prompt_change(choice, upload):
        text, choices = vp.prompt_summary(choice, upload)
        return text, gr.update(choices=choices, value=OWN_BACKBONE)

    def predict(choice, image, upload=None, backbone=OWN_BACKBONE):
        with user_errors():
            return vp.predict(choice, upload, image, backbone, warn=gr.Warning)

    def inspect(choice, upload, image):
        with user_errors():
            out = vp.inspect(choice, upload, image)
        caption = f"Saliency of the prompted prediction: **{out['saliency_class']}**" if out["saliency"] else ""
        return (out["prompt"], out["amplitude"], out["spectrum"], out["saliency"], caption,
                pd.DataFrame(out["channels"], columns=["channel", "mean |delta|", "RMS", "max |delta|"]),
                pd.DataFrame(out["metadata"], columns=["field", "value"]))

    def refresh(include_hub):
        with user_errors():
            names = vp.refresh_zoo(include_hub=include_hub, warn=gr.Warning)
        table = pd.DataFrame(vp.zoo_rows(), columns=VPApp.ZOO_HEADERS)
        return vp.zoo_gallery(), table, gr.update(choices=names), gr.update(choices=names)

    def train(model, dataset, upload, prompter, size, steps, batch, lr, mapping, clamp, seed,
              request: gr.Request):
        with user_errors():
            cfg = vp.train_config(request.session_hash, model=model, dataset=dataset, upload=upload,
                                  prompter=prompter, prompt_size=size, steps=steps, batch_size=batch, lr=lr,
                                  label_mapping=mapping, clamp=clamp, seed=seed)
            for u in vp.train_stream(cfg, request.session_hash):
                loss, acc = curves(u.curves)
                yield (progress_bar(u.fraction), u.status, u.accuracy, loss, acc, u.prompt, u.result_path,
                       u.result_path)

    if spaces is not None:
        train = spaces.GPU(duration=600)(train)

    def stop(request: gr.Request):
        with user_errors():
            gr.Info(vp.stop(request.session_hash))

    def add_to_zoo(path, name):
        with user_errors():
            msg = vp.add_to_zoo(path, name)
        names = list(vp.entries)
        return msg, gr.update(choices=names), gr.update(choices=names)

    def push(path, repo_id, token, private):
        with user_errors():
            return vp.push(path, repo_id, token, private)

    def cleanup(request: gr.Request):
        vp.cleanup_session(request.session_hash)

    # -- layout (top to bottom: what the user sees) ----------------------------------------------------------------
    with gr.Blocks(title="Visual prompting") as demo:
        gr.Markdown(HEADER)
        gr.Markdown(f"Running on **{vp.device.type.upper()}**. " + (
            "Prompts and training work offline with EfficientNet-Lite0 and the bundled Fashion-MNIST subset; CLIP "
            "backbones need their weights (downloaded once, or already in the open_clip cache)."))
        with gr.Tabs():
            # 1. Try ------------------------------------------------------------------------------------------
            with gr.Tab("Try a prompt", id="try"):
                with gr.Row():
                    t_prompt = gr.Dropdown(names, value=first, label="Prompt", allow_custom_value=True, scale=2,
                                           info="From the zoo, or type a Hub repo id (USER/NAME)")
                    t_backbone = gr.Dropdown(first_choices, value=OWN_BACKBONE, label="Backbone",
                                             info="A prompt only means something on its own backbone")
                    t_upload = gr.File(label="... or upload a prompt (.safetensors)", file_types=[".safetensors"])
                t_info = gr.Markdown(first_text)
                with gr.Row(equal_height=True):
                    t_image = gr.Image(type="filepath", label="Original image", sources=["upload", "clipboard"],
                                       height=300, elem_id="try-image")
                    t_prompted = gr.Image(type="pil", format="png", label="Prompted image (what the model sees)",
                                          interactive=False, height=300, buttons=["download"],
                                          elem_id="prompted-image")
                t_button = gr.Button("Classify", variant="primary", elem_id="classify")
                if examples:
                    gr.Examples(examples, inputs=t_image, label="Example images (click one)")
                with gr.Row():
                    t_zero = gr.Label(num_top_classes=5, label="Zero-shot: no prompt (top-5)", elem_id="zero-shot")
                    t_pred = gr.Label(num_top_classes=5, label="With the prompt (top-5)", elem_id="prompted")

            # 2. Train ----------------------------------------------------------------------------------------
            with gr.Tab("Train a prompt", id="train"):
                with gr.Row():
                    with gr.Column(scale=1):
                        r_model = gr.Dropdown(TRAIN_BACKBONES, value=defaults.model, label="Backbone",
                                              allow_custom_value=True, elem_id="train-model", info="effnet-lite0 works offline; @96 = 96 px input")
                        r_dataset = gr.Dropdown(vp.dataset_choices(), value="fashion_mnist_subset", label="Dataset")
                        r_zip = gr.File(label="Dataset .zip (one folder of images per class)", file_types=[".zip"])
                        r_prompter = gr.Radio(PROMPTER_KINDS, value="pad", label="Prompt kind")
                        r_size = gr.Number(0, precision=0, label="Prompt size, px (0 = default: 30 px at 224)")
                        with gr.Row():
                            r_steps = gr.Number(defaults.steps, precision=0, label="Steps", minimum=1,
                                                elem_id="train-steps")
                            r_batch = gr.Number(defaults.batch_size, precision=0, label="Batch size",
                                                minimum=1, elem_id="train-batch")
                            r_lr = gr.Number(40, label="Learning rate (paper: 40)")
                        with gr.Accordion("More settings", open=False):
                            r_mapping = gr.Radio(LABEL_MAPPINGS, value=defaults.label_mapping,
                                                 label="Label mapping (vision models)",
                                                 info="first_k: the paper's; iterative: best in long runs")
                            r_clamp = gr.Radio(CLAMPS, value="straight-through", label="Clamp the prompted image")
                            r_seed = gr.Number(0, precision=0, label="Seed")
                        with gr.Row():
                            r_start = gr.Button("Train", variant="primary", elem_id="train")
                            r_stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    with gr.Column(scale=2):
                        r_progress = gr.HTML(progress_bar(0), label="Progress")
                        r_status = gr.Markdown("Press **Train** to start.", elem_id="train-status")
                        r_acc = gr.Markdown()
                        with gr.Row():
                            r_loss = gr.LinePlot(None, x="step", y="value",
                                                 color="series", title="Training loss", height=220)
                            r_accplot = gr.LinePlot(None, x="step", y="value",
                                                    color="series", title="Accuracy", y_lim=[0, 1], height=220)
                        with gr.Row():
                            r_prompt = gr.Image(label="The prompt as it trains (grey = 0)", interactive=False,
                                                height=256)
                            with gr.Column():
                                r_file = gr.File(label="Best prompt (chosen on validation)", interactive=False)
                                r_path = gr.State(None)
                                r_name = gr.Textbox(label="Name in your zoo", placeholder="my-fashion-pad")
                                r_add = gr.Button("Add to my zoo")
                                r_added = gr.Markdown()
                        with gr.Accordion("Share on the Hugging Face Hub", open=False):
                            with gr.Row():
                                r_repo = gr.Textbox(label="Repo id", placeholder="USER/NAME")
                                r_token = gr.Textbox(label="Token (write access; used for this upload only)",
                                                     type="password")
                                r_private = gr.Checkbox(label="Private")
                            r_push = gr.Button("Push to the Hub")
                            r_pushed = gr.Markdown()

            # 3. Inspect --------------------------------------------------------------------------------------
            with gr.Tab("Inspect a prompt", id="inspect"):
                with gr.Row():
                    i_prompt = gr.Dropdown(names, value=first, label="Prompt", allow_custom_value=True, scale=2)
                    i_upload = gr.File(label="... or upload a prompt (.safetensors)", file_types=[".safetensors"])
                    i_image = gr.Image(type="filepath", label="Image for the saliency map",
                                       value=examples[0] if examples else None, height=160)
                i_button = gr.Button("Inspect", variant="primary", elem_id="inspect")
                with gr.Row():
                    i_pic = gr.Image(label="The prompt (scaled; grey = 0)", interactive=False, elem_id="inspect-prompt")
                    i_amp = gr.Image(label="Amplitude per pixel (L2 over RGB)", interactive=False, elem_id="inspect-amplitude")
                    i_spec = gr.Image(label="2-D frequency spectrum (log, centre = 0)", interactive=False, elem_id="inspect-spectrum")
                    i_sal = gr.Image(label="Where the prompted model looks (input gradient)", interactive=False, elem_id="inspect-saliency")
                i_sal_caption = gr.Markdown()
                with gr.Row():
                    i_channels = gr.Dataframe(label="Amplitude per channel (8-bit levels)", interactive=False)
                    i_meta = gr.Dataframe(label="Metadata and metrics", interactive=False, max_height=400)

            # 4. Zoo ------------------------------------------------------------------------------------------
            with gr.Tab("Zoo", id="zoo"):
                with gr.Row():
                    z_hub = gr.Checkbox(False, label="Also list the Hub prompts named in prompts_zoo/index.json")
                    z_refresh = gr.Button("Refresh")
                z_gallery = gr.Gallery(vp.zoo_gallery(), label="Prompts", columns=5, height="auto")
                z_table = gr.Dataframe(pd.DataFrame(vp.zoo_rows(), columns=VPApp.ZOO_HEADERS), interactive=False)

        # -- events ---------------------------------------------------------------------------------------------------
        t_prompt.change(on_prompt_change, [t_prompt, t_upload], [t_info, t_backbone], api_name=False)
        t_upload.change(on_prompt_change, [t_prompt, t_upload], [t_info, t_backbone], api_name=False)
        t_button.click(predict, [t_prompt, t_image, t_upload, t_backbone], [t_prompted, t_zero, t_pred],
                       api_name="predict", concurrency_limit=4, concurrency_id="predict")
        r_start.click(
            train, [r_model, r_dataset, r_zip, r_prompter, r_size, r_steps, r_batch, r_lr, r_mapping, r_clamp, r_seed],
            [r_progress, r_status, r_acc, r_loss, r_accplot, r_prompt, r_file, r_path],
            api_name="train", concurrency_limit=1, concurrency_id="train", show_progress="hidden")
        r_stop.click(stop, None, None, api_name="stop", concurrency_limit=None)  # never waits behind a run
        r_add.click(add_to_zoo, [r_path, r_name], [r_added, t_prompt, i_prompt], api_name=False)
        r_push.click(push, [r_path, r_repo, r_token, r_private], r_pushed, api_name=False)
        i_button.click(inspect, [i_prompt, i_upload, i_image],
                       [i_pic, i_amp, i_spec, i_sal, i_sal_caption, i_channels, i_meta], api_name="inspect",
                       concurrency_limit=2, concurrency_id="predict")
        z_refresh.click(refresh, z_hub, [z_gallery, z_table, t_prompt, i_prompt], api_name=False)
        demo.unload(cleanup)
    return demo


def main() -> None:
    build_app().queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), css=CSS)


if __name__ == "__main__":
    main()
