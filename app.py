"""Gradio app: try, train, inspect and share visual prompts.

    python app.py            # http://127.0.0.1:7860; works offline with prompts_zoo/ and the bundled data

This file only wires Gradio to the library: every handler calls :class:`visual_prompting.ui.VPApp`, which does the
work (and is tested without Gradio). The same file runs unchanged as a Hugging Face Space (see the README's front
matter); on a ZeroGPU Space (the ``spaces`` package is there) the training function asks for a GPU.
"""
from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager, contextmanager

import gradio as gr
import pandas as pd

from visual_prompting import VPError
from visual_prompting.app_files import atomic_gradio_cache_writes
from visual_prompting.train_form import component_args
from visual_prompting.ui import OWN_BACKBONE, VPApp, unexpected_error

try:  # ZeroGPU Spaces: the decorated function gets a GPU while it runs
    import spaces
except ImportError:
    spaces = None

CURVE_COLUMNS = ["step", "value", "series"]
# the Train tab's field kinds (visual_prompting.train_form) as Gradio components
COMPONENTS = {"dropdown": gr.Dropdown, "radio": gr.Radio, "number": gr.Number, "file": gr.File}
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
def user_errors(action: str = "doing this"):
    """A bad input becomes a readable message in the page (gr.Error), never a stack trace; so does an unexpected
    error (a bug), whose traceback goes to the server's log (ui.unexpected_error)."""
    try:
        yield
    except VPError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except gr.Error:
        raise
    except Exception as e:  # noqa: BLE001 - logged with its traceback, shown in words
        raise gr.Error(unexpected_error(e, action), print_exception=False) from None


def image_input(**kwargs) -> gr.Image:
    """An image input that hands the handler the uploaded file's path without opening it: gr.Image decodes (and
    converts) an upload itself first, so a broken or hostile file (a decompression bomb, zero bytes, text named
    .png) ended in Gradio's generic error. Here VPApp.read_image decodes it, with the app's pixel limit and a
    message in words. (Set on the instance: a gr.Image subclass would make Gradio write an app.pyi stub.)"""
    image = gr.Image(type="filepath", **kwargs)
    decode = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        with user_errors("reading the image"):  # an image sent inline (base64) through the API: Gradio decodes it
            try:
                return decode(payload)
            except Exception as e:  # noqa: BLE001 - PIL's errors on a hostile inline image
                raise VPError(f"The image cannot be read ({type(e).__name__}: {e}). Try a PNG or JPEG.") from e

    image.preprocess = preprocess
    return image


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


def build_app(vp: VPApp | None = None, delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The page: a header and four tabs, each built (components and events) by its own function below.
    ``delete_cache``: Gradio's ``(every, age)`` in seconds for the files it stores (see :func:`serve`)."""
    atomic_gradio_cache_writes()  # many users, same image: Gradio's cache files are replaced whole, never rewritten
    vp = vp or VPApp()
    with gr.Blocks(title="Visual prompting", delete_cache=delete_cache) as demo:
        gr.Markdown(HEADER)
        gr.Markdown(f"Running on **{vp.device.type.upper()}**. " + (
            "Prompts and training work offline with EfficientNet-Lite0 and the bundled Fashion-MNIST subset; CLIP "
            "backbones need their weights (downloaded once, or already in the open_clip cache)."))
        with gr.Tabs():
            try_prompt = try_tab(vp)
            added = train_tab(vp)
            inspect_prompt = inspect_tab(vp)
            compare_prompts, refreshed = zoo_tab(vp)
        # a prompt added to the zoo, or a refreshed zoo, shows up in the prompt lists of Try, Inspect and Compare
        def prompt_lists(request: gr.Request):
            return [gr.update(choices=vp.prompt_names(request.session_hash))] * 3

        for event in (added, refreshed):
            event.success(prompt_lists, None, [try_prompt, inspect_prompt, compare_prompts], api_name=False)

        def cleanup(request: gr.Request):  # the browser session ended: forget its files
            vp.workspace.cleanup_session(request.session_hash)

        demo.unload(cleanup)
    return demo


def _zoo_names(vp: VPApp) -> tuple[list[str], str | None]:
    return list(vp.entries), vp.best_prompt()  # the tabs open on the zoo's best prompt


def try_tab(vp: VPApp) -> gr.Dropdown:
    """Tab 1: classify an image with and without a prompt. Returns the prompt dropdown."""
    names, first = _zoo_names(vp)
    first_text, first_choices = vp.prompt_summary(first)
    examples = vp.examples()

    def on_prompt_change(choice, upload, request: gr.Request):
        with user_errors("reading the prompt"):
            text, choices = vp.prompt_summary(choice, upload, request.session_hash)
        return text, gr.update(choices=choices, value=OWN_BACKBONE)

    def predict(choice, image, upload=None, backbone=OWN_BACKBONE, request: gr.Request = None):
        with user_errors():
            return vp.predict(choice, upload, image, backbone, warn=gr.Warning,
                              session=request.session_hash if request else None)

    with gr.Tab("Try a prompt", id="try"):
        with gr.Row():
            prompt = gr.Dropdown(names, value=first, label="Prompt", allow_custom_value=True, scale=2,
                                 info="From the zoo, or type a Hub repo id (USER/NAME)")
            backbone = gr.Dropdown(first_choices, value=OWN_BACKBONE, label="Backbone",
                                   info="A prompt only means something on its own backbone")
            upload = gr.File(label="... or upload a prompt (.safetensors)", file_types=[".safetensors"])
        info = gr.Markdown(first_text)
        with gr.Row(equal_height=True):
            image = image_input(label="Original image", sources=["upload", "clipboard"], height=300,
                                elem_id="try-image")
            prompted = gr.Image(type="pil", format="png", label="Prompted image (what the model sees)",
                                interactive=False, height=300, buttons=["download"], elem_id="prompted-image")
        button = gr.Button("Classify", variant="primary", elem_id="classify")
        if examples:
            gr.Examples(examples, inputs=image, label="Example images (click one)")
        with gr.Row():
            zero = gr.Label(num_top_classes=5, label="Zero-shot: no prompt (top-5)", elem_id="zero-shot")
            pred = gr.Label(num_top_classes=5, label="With the prompt (top-5)", elem_id="prompted")

    prompt.change(on_prompt_change, [prompt, upload], [info, backbone], api_name=False)
    upload.change(on_prompt_change, [prompt, upload], [info, backbone], api_name=False)
    button.click(predict, [prompt, image, upload, backbone], [prompted, zero, pred], api_name="predict",
                 concurrency_limit=4, concurrency_id="predict")
    return prompt


def train_tab(vp: VPApp):
    """Tab 2: train a prompt live, add it to the user's zoo, push it to the Hub. Returns the "added to the zoo"
    event (the page then refreshes the other tabs' prompt lists)."""

    def train(request: gr.Request, **form):  # form: every field of vp.form the API takes, by name
        with user_errors():
            cfg = vp.train_config(request.session_hash, **form)
            for u in vp.train_stream(cfg, request.session_hash):
                loss, acc = curves(u.curves)
                yield (progress_bar(u.fraction), u.status, u.accuracy, loss, acc, u.prompt, u.result_path,
                       u.result_path)

    if spaces is not None:
        train = spaces.GPU(duration=600)(train)

    def stop(request: gr.Request):
        with user_errors():
            gr.Info(vp.stop(request.session_hash))

    recipe_fields = [f for f in vp.form if f.recipe]

    def use_recipe(name):
        with user_errors():
            defaults = vp.train_defaults(name)
            return [getattr(defaults, f.name) for f in recipe_fields]

    with gr.Tab("Train a prompt", id="train"):
        with gr.Row():
            with gr.Column(scale=1):
                fields = form_components(vp)
                with gr.Row():
                    start = gr.Button("Train", variant="primary", elem_id="train")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=2):
                outputs, added = train_outputs(vp)

    fields["recipe"].change(use_recipe, fields["recipe"], [fields[f.name] for f in recipe_fields], api_name=False)
    start.click(train, inputs_kwargs={f.name: fields[f.name] for f in vp.form if f.api}, outputs=outputs,
                api_name="train", concurrency_limit=vp.cfg.max_runs, concurrency_id="train", show_progress="hidden")
    stop_button.click(stop, None, None, api_name="stop", concurrency_limit=None)  # never waits behind a run
    return added


def form_components(vp: VPApp) -> dict[str, gr.components.Component]:
    """The Train tab's fields (``vp.form``, see visual_prompting/train_form.py), made in the list's order: the main
    ones, then a row of numbers, then "More settings". ``{name: component}``."""
    made = {}
    args = component_args(vp.form, vp.train_defaults())  # read now: kinds registered after import are offered too

    def make(place: str):
        for f, kwargs in args:
            if f.place == place:
                made[f.name] = COMPONENTS[f.kind](**kwargs)

    make("main")
    with gr.Row():
        make("row")
    with gr.Accordion("More settings", open=False):
        make("more")
    return made


def train_outputs(vp: VPApp) -> tuple[list, object]:
    """The Train tab's right column: the training handler's outputs in the order it yields them (progress, status,
    accuracy, the two curves, the prompt, the result file and its path), and the "added to the zoo" event."""
    progress = gr.HTML(progress_bar(0), label="Progress")
    status = gr.Markdown("Press **Train** to start.", elem_id="train-status")
    accuracy = gr.Markdown()
    with gr.Row():
        loss_plot = gr.LinePlot(None, x="step", y="value", color="series", title="Training loss", height=220)
        acc_plot = gr.LinePlot(None, x="step", y="value", color="series", title="Accuracy", y_lim=[0, 1],
                               height=220)
    with gr.Row():
        prompt_pic = gr.Image(label="The prompt as it trains (grey = 0)", interactive=False, height=256)
        with gr.Column():
            result_file = gr.File(label="Best prompt (chosen on validation)", interactive=False)
            result_path = gr.State(None)
            added = zoo_box(vp, result_path)
    hub_box(vp, result_path)
    return [progress, status, accuracy, loss_plot, acc_plot, prompt_pic, result_file, result_path], added


def zoo_box(vp: VPApp, result_path: gr.State):
    """Add the trained prompt to the user's zoo; the "added" event."""

    def add_to_zoo(path, name, request: gr.Request):
        with user_errors():
            return vp.add_to_zoo(path, name, request.session_hash)

    zoo_name = gr.Textbox(label="Name in your zoo", placeholder="my-fashion-pad",
                          info="Each visitor of this server has a zoo of their own, kept while the page is open"
                          if vp.cfg.private_zoos else None)
    add = gr.Button("Add to my zoo")
    added = gr.Markdown()
    return add.click(add_to_zoo, [result_path, zoo_name], added, api_name=False)


def hub_box(vp: VPApp, result_path: gr.State) -> None:
    """Push the trained prompt to the Hugging Face Hub with a token typed for this upload only."""

    def push(path, repo_id, token, private):
        with user_errors():
            return vp.push(path, repo_id, token, private)

    with gr.Accordion("Share on the Hugging Face Hub", open=False):
        with gr.Row():
            repo = gr.Textbox(label="Repo id", placeholder="USER/NAME")
            token = gr.Textbox(label="Token (write access; used for this upload only)", type="password")
            private = gr.Checkbox(label="Private")
        push_button = gr.Button("Push to the Hub")
        pushed = gr.Markdown()
    push_button.click(push, [result_path, repo, token, private], pushed, api_name=False)


def inspect_tab(vp: VPApp) -> gr.Dropdown:
    """Tab 3: the prompt, its amplitude, spectrum and saliency, its metadata. Returns the prompt dropdown."""
    names, first = _zoo_names(vp)
    examples = vp.examples()

    def inspect(choice, upload, image, request: gr.Request):
        with user_errors():
            out = vp.inspect(choice, upload, image, request.session_hash)
        caption = f"Saliency of the prompted prediction: **{out['saliency_class']}**" if out["saliency"] else ""
        return (out["prompt"], out["amplitude"], out["spectrum"], out["saliency"], caption,
                pd.DataFrame(out["channels"], columns=["channel", "mean |delta|", "RMS", "max |delta|"]),
                pd.DataFrame(out["metadata"], columns=["field", "value"]))

    with gr.Tab("Inspect a prompt", id="inspect"):
        with gr.Row():
            prompt = gr.Dropdown(names, value=first, label="Prompt", allow_custom_value=True, scale=2)
            upload = gr.File(label="... or upload a prompt (.safetensors)", file_types=[".safetensors"])
            image = image_input(label="Image for the saliency map", value=examples[0] if examples else None,
                                height=160)
        button = gr.Button("Inspect", variant="primary", elem_id="inspect")
        with gr.Row():
            pictures = [gr.Image(label=label, interactive=False, elem_id=f"inspect-{key}") for key, label in (
                ("prompt", "The prompt (scaled; grey = 0)"), ("amplitude", "Amplitude per pixel (L2 over RGB)"),
                ("spectrum", "2-D frequency spectrum (log, centre = 0)"),
                ("saliency", "Where the prompted model looks (input gradient)"))]
        caption = gr.Markdown()
        with gr.Row():
            channels = gr.Dataframe(label="Amplitude per channel (8-bit levels)", interactive=False)
            meta = gr.Dataframe(label="Metadata and metrics", interactive=False, max_height=400)

    button.click(inspect, [prompt, upload, image], [*pictures, caption, channels, meta], api_name="inspect",
                 concurrency_limit=2, concurrency_id="predict")
    return prompt


def zoo_tab(vp: VPApp) -> tuple[gr.Dropdown, object]:
    """Tab 4: every prompt in the zoo as a picture and a table, and several of them compared on the same images.
    Returns the compare tab's prompt list and the refresh event."""
    names, first = _zoo_names(vp)

    def refresh(include_hub, request: gr.Request):
        with user_errors("reading the zoo"):
            vp.refresh_zoo(include_hub=include_hub, warn=gr.Warning)
            session = request.session_hash
            return vp.zoo_gallery(session), pd.DataFrame(vp.zoo_rows(session), columns=VPApp.ZOO_HEADERS)

    def compare(choices, request: gr.Request = None):
        with user_errors("comparing the prompts"):
            rows, text = vp.compare(choices, request.session_hash if request else None)
            return pd.DataFrame(rows, columns=VPApp.COMPARE_HEADERS), text

    with gr.Tab("Zoo", id="zoo"):
        with gr.Row():
            hub = gr.Checkbox(False, label="Also list the Hub prompts named in prompts_zoo/index.json")
            button = gr.Button("Refresh")
        gallery = gr.Gallery(vp.zoo_gallery(), label="Prompts", columns=5, height="auto")
        table = gr.Dataframe(pd.DataFrame(vp.zoo_rows(), columns=VPApp.ZOO_HEADERS), interactive=False)
        with gr.Row():
            picked = gr.Dropdown(names, value=([first] if first else []) + [n for n in names if n != first][:1],
                                 multiselect=True, scale=3,
                                 label="Compare prompts on the same images (the first is the reference)",
                                 max_choices=vp.cfg.max_compare)
            compare_button = gr.Button("Compare", scale=1, elem_id="compare")
        compared = gr.Dataframe(headers=VPApp.COMPARE_HEADERS, interactive=False)
        compared_text = gr.Markdown()
    compare_button.click(compare, picked, [compared, compared_text], api_name="compare", concurrency_limit=1,
                         concurrency_id="compare")
    return picked, button.click(refresh, hub, [gallery, table], api_name=False)


def page_files(demo: gr.Blocks) -> set[str]:
    """The files in Gradio's cache that the page itself serves (examples, default values): never swept."""
    return set(demo.keep_in_cache).union(*(getattr(b, "keep_in_cache", ()) for b in demo.blocks.values()))


def server_lifespan(vp: VPApp, demo: gr.Blocks, prewarm: bool = False):
    """A lifespan for Gradio's server: while it serves, ``vp.workspace.sweep_cache`` keeps Gradio's cache folder
    (its uploads folder) within ``VP_MAX_GRADIO_CACHE_MB``, at start and then every ``cfg.cache_sweep_s`` seconds,
    in a worker thread. ``prewarm``: also start :meth:`VPApp.prewarm` as the server starts (not before: the page
    does not wait for it)."""

    @asynccontextmanager
    async def lifespan(server):
        if prewarm:
            vp.prewarm()

        async def sweep_forever():
            while True:
                try:
                    await asyncio.to_thread(vp.workspace.sweep_cache, server.uploaded_file_dir, page_files(demo))
                except Exception:  # noqa: BLE001 - a failed sweep is logged; the next one tries again
                    logging.getLogger("visual_prompting.app").exception("sweeping Gradio's cache failed")
                await asyncio.sleep(vp.cfg.cache_sweep_s)

        task = asyncio.create_task(sweep_forever())
        try:
            yield
        finally:
            task.cancel()

    return lifespan


def prewarm_wanted(prewarm: bool | None = None, environ=None) -> bool:
    """Whether :func:`serve` starts :meth:`VPApp.prewarm`: as asked, else unless ``VP_PREWARM=0`` or on a ZeroGPU
    Space (the ``spaces`` package is there: a run gets its GPU only inside the training call)."""
    if prewarm is not None:
        return prewarm
    return (os.environ if environ is None else environ).get("VP_PREWARM", "1") != "0" and spaces is None


def serve(vp: VPApp | None = None, prewarm: bool | None = None, **launch) -> gr.Blocks:
    """Build the app and serve it as ``python app.py`` does, with its disk bounded: Gradio refuses an upload over
    ``VP_MAX_UPLOAD_MB``, deletes the files it stored once they are ``VP_RUN_TTL_HOURS`` old (all of them when the
    server stops), and its cache folder is swept to ``VP_MAX_GRADIO_CACHE_MB`` (:func:`server_lifespan`). As the
    server starts, :meth:`VPApp.prewarm` sets up the Train tab's first run in the background, so a first click starts
    as a later one does (``prewarm``: default on, unless ``VP_PREWARM=0`` or on a ZeroGPU Space, where a run gets its
    GPU only inside the training call). ``launch``: more of ``Blocks.launch``'s arguments."""
    vp = vp or VPApp()  # its limits: AppConfig's defaults, or VP_* environment variables (README, "Limits")
    ttl = max(1, int(vp.cfg.run_ttl_hours * 3600))
    demo = build_app(vp, delete_cache=(min(ttl, 3600), ttl))
    launch = {"css": CSS, "max_file_size": int(vp.cfg.max_upload_mb * 2**20),
              "app_kwargs": {"lifespan": server_lifespan(vp, demo, prewarm_wanted(prewarm))}, **launch}
    demo.queue(default_concurrency_limit=2).launch(**launch)
    return demo


def main() -> None:
    serve(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))


if __name__ == "__main__":
    main()
