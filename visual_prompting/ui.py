"""What the app does, without Gradio: pick and load prompts, predict, inspect, train live, add to the zoo, push.

``app.py`` builds the Gradio page and calls :class:`VPApp`; every method here takes and returns plain Python
values (paths, PIL images, dicts, rows) and raises :class:`VPError` with a readable message on bad input, so it is
tested directly and any other front (a notebook, another UI) can reuse it.

Sharing: one :class:`VPApp` serves every user. Backbones and prompted models load lazily, once, and are shared
(they are frozen, so that is safe); everything that belongs to one user (a training run, its stop flag, its output
folder) is keyed by that user's session id. The stop flag is a file in the session's folder, so Stop also reaches a
training function that runs in another process (ZeroGPU Spaces run the decorated function in a worker process).
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from .backbones import BackboneCache, _is_checkpoint_path, parse_spec
from .baselines import BaselineCache
from .data import dataset_names, named_as, open_image, rename_paths, to_rgb
from .errors import VPError
from .execution import release_cpu_memory
from .model import PromptedModel
from .recipes import DEFAULT_RECIPE, recipe_settings
from .prompt_file import check_backbone, load_prompt, read_metadata
from .train_config import TrainConfig, TrainEvent, TrainResult, default_lr, history_record
from .train_form import (  # noqa: F401 - TRAIN_FORM_FIELDS, choice_info, train_choices: also read from here
    TRAIN_FORM,
    TRAIN_FORM_FIELDS,
    UPLOADED_DATASET,
    FormField,
    TrainDefaults,
    choice_info,
    component_args,
    form_settings,
    train_choices,
)
from .transforms import stack_text
from .utils import percent, pick_device
from .visualization import (
    amplitude,
    curve_records,
    delta_image,
    metadata_rows,
    prompt_image,
    saliency,
    spectrum,
)
from .workspace import Workspace
from .zoo import USER_ZOO_DIR, ZOO_DIR, add_prompt, list_prompts

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
OWN_BACKBONE = "the prompt's own (recommended)"
SUBSET = "fashion_mnist_subset"  # the bundled dataset: every server has it, offline (the Zoo tab compares prompts on it)


def _limit(default, what: str):
    """A field of :class:`AppConfig` that bounds what users may use; ``what`` is its line in the README's table."""
    return field(default=default, metadata={"limit": what})


@dataclass
class AppConfig:
    """Where the app keeps its files, and the limits every user's requests must respect (each limit can also be set
    by an environment variable: ``VP_`` + the field name in capitals, e.g. ``VP_MAX_UPLOAD_MB=50``; see
    :meth:`from_env` and the README's table, :func:`limits_table`)."""

    zoo_dir: Path = ZOO_DIR
    user_zoo_dir: Path = USER_ZOO_DIR
    # each browser session its own "my zoo" (in its folder of the workspace, gone with it) instead of user_zoo_dir,
    # which every user of the server would see: from_env turns it on for a Hugging Face Space (SPACE_ID is set) or
    # VP_PRIVATE_ZOOS=1, off with VP_PRIVATE_ZOOS=0
    private_zoos: bool = False
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "visual-prompting-app")
    device: str = "auto"
    max_models: int = 8  # prompted models kept loaded (backbones are shared between them)
    max_backbones: int = 4  # backbones the cache keeps (least recently used dropped first; a kept model holds its own)
    max_upload_mb: float = _limit(200, "size of any uploaded file (image, prompt, dataset .zip)")
    max_image_mp: float = _limit(50, "pixels of an image to classify or inspect, read from its header before "
                                     "decoding (decompression bombs)")
    max_image_size: int = _limit(512, "input size of a model in pixels: a Train-tab model's @SIZE, the image size "
                                      "of a prompt from an upload or the Hub (checked before the model is built)")
    max_dataset_mb: float = _limit(500, "one uploaded dataset, unpacked (from the sizes the .zip declares, before "
                                        "anything is written)")
    max_dataset_files: int = _limit(20_000, "files in one uploaded dataset")
    max_steps: int = _limit(100_000, "training steps of one run")
    max_train_seconds: float = _limit(3600, "training time of one run (the Train tab's time budget)")
    max_batch_size: int = _limit(1024, "batch size of one run")
    # the paper's batch, 256 images of 224 px, is 12.8 MP
    max_batch_mp: float = _limit(13, "pixels of one training batch, batch size x input size squared (224 px when "
                                     "the model names no @SIZE)")
    max_runs: int = _limit(2, "training runs going at once, all users together (each user: one at a time)")
    max_compare: int = _limit(4, "prompts in one comparison of the Zoo tab (each measured on the bundled subset's "
                                 "1,000 test images, with and without its prompt)")
    max_user_disk_mb: float = _limit(1000, "one user's run folders (prompts, unpacked data) and own zoo on disk")
    max_work_disk_mb: float = _limit(5000, "the app's whole work folder on disk (finished runs are removed, "
                                           "oldest first, to make room)")
    run_ttl_hours: float = _limit(24, "how long a finished run's folder is kept (a failed run's is removed at "
                                      "once, its unpacked data as soon as training ends), and a user's own zoo "
                                      "after its last addition")
    max_gradio_cache_mb: float = _limit(2000, "Gradio's cache folder on disk: every upload and every image or file "
                                              "the page shows (the oldest files are removed first to make room, "
                                              "and any past VP_RUN_TTL_HOURS)")
    cache_sweep_s: float = 10  # how often Gradio's cache is swept (app.serve)
    cache_grace_s: float = 60  # a cache file this young is never swept: the request that made it may still use it

    @classmethod
    def from_env(cls, environ=None, **kwargs) -> AppConfig:
        """A config whose limits are read from ``VP_<FIELD>`` environment variables where set (``kwargs`` win)."""
        environ = os.environ if environ is None else environ
        for f in fields(cls):
            var = f"VP_{f.name.upper()}"
            if "limit" in f.metadata and var in environ and f.name not in kwargs:
                kind = int if f.type in ("int", int) else float
                try:
                    value = kind(environ[var])
                    if not value > 0:
                        raise ValueError("must be above 0")
                except ValueError as e:
                    raise VPError(f"{var}={environ[var]!r} is not a valid limit ({e}); give a number above 0.") from e
                kwargs[f.name] = value
        if "private_zoos" not in kwargs:
            flag = environ.get("VP_PRIVATE_ZOOS")
            if flag not in (None, "0", "1"):
                raise VPError(f"VP_PRIVATE_ZOOS={flag!r}: give 1 (each browser session its own zoo) or 0 (one zoo "
                              "for every user of this server).")
            kwargs["private_zoos"] = flag == "1" if flag is not None else "SPACE_ID" in environ
        return cls(**kwargs)


def limits_table(cfg: AppConfig | None = None) -> list[tuple[str, str, object, str]]:
    """``(field, environment variable, value, what it bounds)`` for every limit of ``cfg`` (the defaults: the
    README's table)."""
    cfg = cfg or AppConfig()
    return [(f.name, f"VP_{f.name.upper()}", getattr(cfg, f.name), f.metadata["limit"])
            for f in fields(cfg) if "limit" in f.metadata]


@dataclass
class TrainUpdate:
    """One refresh of the Train tab."""

    fraction: float
    status: str
    curves: list[dict] = field(default_factory=list)
    prompt: object | None = None  # PIL image of the prompt as it is now
    accuracy: str = ""
    result_path: str | None = None
    done: bool = False


CPU_TRAIN_SECONDS = 65.0  # the Train tab's first training time on a CPU (benchmarks/app_defaults.py measures it)
CPU_MAX_STEPS = 1000


def label_scores(top: list[tuple[str, float]]) -> dict[str, float]:
    """``{class: p}`` for a label component from top-k ``(name, p)`` pairs, every pair kept: a name a prompt lists
    twice (ImageNet has two "crane" classes; a hostile file can name every class alike) comes again with a number,
    "crane (2)", instead of overwriting the first one's probability with its own."""
    out: dict[str, float] = {}
    for name, p in top:
        key, n = name, 2
        while key in out:
            key, n = f"{name} ({n})", n + 1
        out[key] = p
    return out


class VPApp:
    """The app's logic. ``form``: the Train tab's fields (:data:`~visual_prompting.train_form.TRAIN_FORM`);
    ``workspace``: its disk (:class:`~visual_prompting.workspace.Workspace`)."""

    def __init__(self, cfg: AppConfig | None = None, form: tuple[FormField, ...] = TRAIN_FORM):
        self.cfg = cfg or AppConfig.from_env()
        self.form = form
        self.workspace = Workspace(self.cfg)
        self.device = pick_device(self.cfg.device)
        self.cache = BackboneCache(self.cfg.max_backbones)
        self.baselines = BaselineCache()  # numbers without a prompt: computed once for every user's runs
        self._models: OrderedDict[tuple[str, float, str], tuple[PromptedModel, dict, str | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._zoo_lock = threading.Lock()
        self.entries: dict[str, dict] = {}
        self.refresh_zoo()
        self.workspace.sweep()  # what an earlier server left past its time (it also runs before every training run)

    # -- the zoo ------------------------------------------------------------------------------------------
    # ``entries``: what every user sees (the shipped zoo, the Hub entries, and the user zoo folder unless each
    # session has its own: AppConfig.private_zoos); :meth:`entries_for` adds one session's own zoo to them.
    def refresh_zoo(self, include_hub: bool = False, warn: Callable[[str], None] | None = None) -> list[str]:
        """Re-read the shipped zoo, the user zoo folder (not with ``private_zoos``) and (``include_hub``) the
        index's Hub entries; the names. Files or Hub entries that were skipped go to ``warn`` (the app: a toast for
        the user who asked), else are issued as warnings."""
        entries, skipped = {}, []
        with named_as(self._zoo_names()):
            for e in list_prompts(self.cfg.zoo_dir, include_hub=include_hub, skipped=skipped):
                entries[e["name"]] = {**e, "source": "hub" if e.get("hub") else "zoo"}
            if not self.cfg.private_zoos:
                entries.update(self._user_entries(self.cfg.user_zoo_dir, skipped))
        self.entries = entries
        for msg in skipped:
            (warn or warnings.warn)(rename_paths(msg, self._zoo_names()))
        return list(entries)

    @staticmethod
    def _user_entries(folder, skipped: list[str]) -> dict[str, dict]:
        """A user zoo folder's prompts, named ``my/NAME``."""
        if not Path(folder).is_dir():
            return {}
        return {f"my/{e['name']}": {**e, "source": "yours"} for e in list_prompts(folder, skipped=skipped)}

    def user_zoo(self, session: str | None) -> Path:
        """The folder "Add to my zoo" writes to for ``session``: its own (``private_zoos``) or the shared one."""
        return self.workspace.zoo_dir(session) if self.cfg.private_zoos else Path(self.cfg.user_zoo_dir)

    def entries_for(self, session: str | None = None) -> dict[str, dict]:
        """The prompts ``session`` can pick: :attr:`entries` and, with ``private_zoos``, the session's own zoo (read
        now: it changes only when that session adds to it; the app wrote every file of it)."""
        if not self.cfg.private_zoos or session is None:
            return self.entries
        skipped = []
        folder = self.user_zoo(session)
        with named_as({folder: "my"}):
            mine = self._user_entries(folder, skipped)
        for msg in skipped:
            warnings.warn(rename_paths(msg, {folder: "my"}))
        return {**self.entries, **mine}

    def prompt_names(self, session: str | None = None) -> list[str]:
        """The names the Try and Inspect tabs offer to ``session``."""
        return list(self.entries_for(session))

    def best_prompt(self) -> str | None:
        """The shipped zoo's prompt with the highest listed test top-1 (what the Try and Inspect tabs open on), else
        the first prompt listed (None: no prompts)."""
        listed = [(e["index"]["metrics"]["test_top1"], name) for name, e in self.entries.items()
                  if e["source"] == "zoo" and isinstance(((e.get("index") or {}).get("metrics") or {}).get("test_top1"),
                                                          float)]
        return max(listed, key=lambda t: t[0])[1] if listed else next(iter(self.entries), None)

    def _zoo_names(self) -> dict:
        """The zoo folders as messages name them: as the prompt lists do (``my/NAME``), not by their place here."""
        return {self.cfg.zoo_dir: "prompts_zoo", self.cfg.user_zoo_dir: "my"}

    def zoo_rows(self, session: str | None = None) -> list[list]:
        """One row per prompt ``session`` can pick (:attr:`ZOO_HEADERS`): name, test top-1 with and without the
        prompt (first: the numbers a wide table must not hide), prompt, backbone, dataset, source, classes."""
        rows = []
        for name, e in self.entries_for(session).items():
            m = e["meta"]
            met = m.get("metrics", {})
            classes = m["class_names"]
            rows.append([name, percent(met.get("test_top1")), percent(met.get("test_top1_no_prompt")),
                         f"{m['prompter']['kind']} ({m['prompter']['size']} px)", m["backbone"]["spec"],
                         m.get("dataset", ""), e["source"],
                         f"{len(classes)}: " + ", ".join(classes[:6]) + (" ..." if len(classes) > 6 else "")])
        return rows

    ZOO_HEADERS = ["name", "test top-1", "no prompt", "prompt", "backbone", "dataset", "source", "classes"]

    def zoo_gallery(self, session: str | None = None) -> list[tuple]:
        """``[(picture of the prompt, caption)]`` for every prompt ``session`` can pick."""

        out = []
        for name, e in self.entries_for(session).items():
            try:
                pf = load_prompt(e["path"])
            except VPError:
                continue
            met = e["meta"].get("metrics", {})
            cap = f"{name} - {e['meta']['backbone']['spec']} - {e['meta'].get('dataset', '')} - {percent(met.get('test_top1'))}"
            out.append((prompt_image(pf.prompter, 192), cap))
        return out

    # -- choosing a prompt --------------------------------------------------------------------------------
    def prompt_path(self, choice: str | None, upload: str | None = None, session: str | None = None) -> str:
        """The file behind the user's choice: an uploaded file wins; then a zoo name (``session``'s own zoo too, see
        :meth:`entries_for`); then anything :func:`hub.resolve_prompt` understands (``USER/NAME``, ``hf://...``)
        typed into the box."""
        if upload:
            path = self.workspace.check_upload(upload, "prompt file")
            with named_as({path: Path(path).name}):  # Gradio keeps the user's own file name, in a folder of its own
                load_prompt(path)  # a clear message for a file that is not a prompt, or a broken one (an upload is small)
            return path
        if not choice:
            raise VPError("Pick a prompt from the zoo, type a Hub repo id (USER/NAME), or upload a prompt file.")
        if choice in self.entries:
            return self.entries[choice]["path"]
        if self.cfg.private_zoos and choice.startswith("my/"):
            mine = self.entries_for(session)
            if choice not in mine:
                raise VPError(f"`{choice}` is not in your zoo. On this server each browser session has a zoo of its "
                              "own, which goes when the page is closed or reloaded; download a prompt to keep it.")
            return mine[choice]["path"]
        from .hub import resolve_prompt

        if os.path.exists(choice):
            raise VPError("Only prompts from the zoo, the Hub or an upload can be used here.")
        return resolve_prompt(choice)

    def prompt_summary(self, choice: str | None, upload: str | None = None,
                       session: str | None = None) -> tuple[str, list[str]]:
        """What the Try tab shows when the prompt changes, reading (or pulling) the prompt once: a Markdown line
        about it (or why it cannot be used), and the backbones to offer - its own first, then others that take
        the same image size (to *see* that a prompt means nothing elsewhere; choosing one comes with a warning)."""
        try:
            meta = read_metadata(self.prompt_path(choice, upload, session))
        except VPError as e:
            return f"**Cannot use this prompt:** {e}", [OWN_BACKBONE]
        met = meta.get("metrics", {})
        acc = (f"test top-1 **{percent(met['test_top1'])}** with the prompt, {percent(met.get('test_top1_no_prompt'))} "
               f"without" + (f" ({met['test_n']} images)" if met.get("test_n") else "")
               if met.get("test_top1") is not None else "no test numbers stored")
        p, spec = meta["prompter"], meta["backbone"]["spec"]
        text = (f"**{p['kind']}** prompt ({p['size']} px at {p['image_size']} px{stack_text(p)}) for `{spec}` "
                f"on **{meta.get('dataset') or '?'}**, {len(meta['class_names'])} classes: {acc}")
        size = p["image_size"]
        others = [f"effnet-lite0@{size}" if size != 224 else "effnet-lite0", f"torchvision:resnet18@{size}"]
        if size == 224:
            others += ["clip:ViT-B-32/openai"]
        return text, [OWN_BACKBONE] + [o for o in others if o != spec]

    def model(self, path: str, backbone: str | None = None) -> tuple[PromptedModel, dict, str | None]:
        """The prompted model for a prompt file (cached with its metadata, by path, modification time and
        backbone: a repeated prediction reads nothing from disk), its metadata, and a warning when ``backbone`` is
        not the one the prompt was trained for."""
        own = backbone in (None, "", OWN_BACKBONE)
        key = (os.path.abspath(path), os.path.getmtime(path), OWN_BACKBONE if own else backbone)
        with self._lock:
            hit = self._models.get(key)
            if hit is not None:
                self._models.move_to_end(key)
        if hit is None:
            meta = read_metadata(path)
            use = meta["backbone"]["spec"] if own else backbone
            if not own or not self._shipped(path):  # a user's choice or a user's file: checked before it is built
                self.check_spec(use, meta["prompter"]["image_size"])
            model, _ = PromptedModel.from_prompt_file(path, device=self.device, cache=self.cache, backbone=use,
                                                      allow_other_backbone=True)
            hit = (model, meta, check_backbone(meta, use))
            with self._lock:
                self._models[key] = hit
                while len(self._models) > self.cfg.max_models:
                    self._models.popitem(last=False)
        return hit

    def _shipped(self, path: str) -> bool:
        """Whether ``path`` is a prompt of the app's own zoo folders (not an upload, not pulled from the Hub)."""
        return any(e["source"] in ("zoo", "yours") and os.path.abspath(e["path"]) == os.path.abspath(path)
                   for e in self.entries.values())

    def check_spec(self, spec: str, image_size: int | None = None) -> None:
        """Refuse, before anything is loaded, a backbone that a user's request (a typed model, an uploaded or Hub
        prompt) may not make this server build: weights read from a file here (a request names published weights
        or ``random``), an input size over ``max_image_size``, or a size other than the prompt's ``image_size``."""
        parsed = parse_spec(spec)
        if parsed.weights and _is_checkpoint_path(parsed.weights):
            raise VPError(f"The backbone {spec!r} names a weights file; the app loads published weights (e.g. "
                          "clip:ViT-B-32/openai) or 'random' only. Use the CLI for weights of your own.")
        for what, size in (("The prompt's image size", image_size), ("The model's input size", parsed.size)):
            if size is not None and size > self.cfg.max_image_size:
                raise VPError(f"{what} ({size} px) is over this app's limit of {self.cfg.max_image_size} px "
                              "(VP_MAX_IMAGE_SIZE).")
        if image_size is not None and parsed.size is not None and parsed.size != image_size:
            raise VPError(f"This prompt is for {image_size} px images but {spec} takes {parsed.size} px; "
                          "a prompt only fits a backbone of its own image size.")

    def check_batch(self, spec: str, batch_size: int) -> None:
        """Refuse a batch whose pixels (``batch_size`` x the input size squared) are over ``max_batch_mp``: each
        limit alone allows a batch that would take the server's memory (1024 images of 512 px)."""
        size = parse_spec(spec).size
        side = size or 224
        mp = batch_size * side * side / 1e6
        if mp > self.cfg.max_batch_mp:
            named = "" if size else " (the model names no @SIZE)"
            raise VPError(f"A batch of {batch_size} images of {side} px{named} is {mp:.1f} MP, over this app's limit "
                          f"of {self.cfg.max_batch_mp:g} MP (VP_MAX_BATCH_MP); use a smaller batch or input size.")

    # -- Try ----------------------------------------------------------------------------------------------
    def predict(self, choice, upload, image, backbone: str | None = None,
                warn: Callable[[str], None] | None = None, session: str | None = None):
        """``(prompted PIL image, zero-shot {class: p}, prompted {class: p})``, top-5 over the prompt's classes."""
        img = self.read_image(image)
        model, _, warning = self.model(self.prompt_path(choice, upload, session), backbone)
        if warning and warn:
            warn(warning)
        (zs,), (pr,), (prompted,) = model.predict_both([img], 5, with_images=True)
        return prompted, label_scores(zs), label_scores(pr)

    COMPARE_HEADERS = ["prompt", "test top-1", "no prompt", "minus the first (points, 95% interval)", "McNemar p",
                       "backbone"]

    def compare(self, choices: list[str] | None, session: str | None = None) -> tuple[list[list], str]:
        """The prompts ``choices`` (names of the zoo and of ``session``'s own zoo; the first is the reference) on the
        bundled Fashion-MNIST subset's test images (:func:`~visual_prompting.comparison.compare_models`): one row
        each (:attr:`COMPARE_HEADERS`) and a line saying what the numbers are."""
        from .comparison import compare_models
        from .data import load_splits

        choices = list(dict.fromkeys(choices or []))
        if len(choices) < 2:
            raise VPError("Pick at least two prompts to compare; the first one is the reference.")
        if len(choices) > self.cfg.max_compare:
            raise VPError(f"At most {self.cfg.max_compare} prompts in one comparison on this server "
                          f"(VP_MAX_COMPARE); you picked {len(choices)}.")
        models = []
        for name in choices:
            model, meta, _ = self.model(self.prompt_path(name, None, session))
            models.append((name, model, meta["prompter"]["kind"]))
        # the subset's 1,000 test images at each prompt's input size (resized batch by batch above 64 MiB)
        data_for = lambda m: load_splits(SUBSET, image_size=m.image_size, resize_cache_bytes=64 << 20).test  # noqa: E731
        c = compare_models(models, data_for, SUBSET, "test")
        rows = [[c.scores[0].source, percent(c.scores[0].top1), percent(c.scores[0].top1_no_prompt), "(reference)",
                 "", c.scores[0].backbone]]
        for s, d in zip(c.scores[1:], c.differences):
            rows.append([s.source, percent(s.top1), percent(s.top1_no_prompt),
                         f"{d.difference:+.2f} ({d.ci95[0]:+.2f} to {d.ci95[1]:+.2f})", f"{d.p_value:.3g}", s.backbone])
        text = (f"{c.n} test images of the bundled Fashion-MNIST subset, each prompt with its own backbone. McNemar's "
                "exact test on the images only one of two prompts gets right: p below 0.05 means the difference is "
                "more than this test set's noise.")
        return rows, text

    def read_image(self, image):
        """A PIL image, a path or an array from the UI -> RGB PIL image; a clear message when there is none, or when
        it is broken, not an image, or over the pixel limit (``AppConfig.max_image_mp``)."""
        max_pixels = int(self.cfg.max_image_mp * 1e6)
        if image is None or (isinstance(image, str) and not image):
            raise VPError("Upload an image or pick an example first.")
        if isinstance(image, (str, os.PathLike)):
            path = self.workspace.check_upload(image, "image")
            try:
                return open_image(path, max_pixels=max_pixels)
            except VPError as e:  # the path is a temporary upload name: say what is wrong, not where
                name = Path(path).name
                if e.__cause__ is None:  # our own check (too many pixels, none): its message is the answer
                    raise VPError(rename_paths(str(e), {path: name})) from e
                cause = rename_paths(f" ({e.__cause__})", {path: name})
                raise VPError(f"The image {name} cannot be read{cause}. Try a PNG or JPEG.") from e
        if hasattr(image, "shape"):
            import numpy as np
            from PIL import Image

            arr = np.asarray(image)
            if arr.ndim not in (2, 3) or arr.size == 0 or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
                raise VPError(f"Cannot read an image of shape {arr.shape}.")
            if arr.shape[0] * arr.shape[1] > max_pixels:
                raise VPError(f"The image has {arr.shape[0] * arr.shape[1] / 1e6:.0f} MP; the limit is "
                              f"{self.cfg.max_image_mp:g} MP.")
            arr = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
            return to_rgb(Image.fromarray(np.nan_to_num(arr).clip(0, 255).astype(np.uint8)))
        if not hasattr(image, "size") or not hasattr(image, "mode"):
            raise VPError(f"Cannot read a {type(image).__name__} as an image; upload a PNG or JPEG.")
        w, h = image.size
        if w * h > max_pixels or w < 1 or h < 1:
            raise VPError(f"The image is {w} x {h} pixels; the limit is {self.cfg.max_image_mp:g} MP.")
        return to_rgb(image)

    # -- Inspect ------------------------------------------------------------------------------------------
    def inspect(self, choice, upload, image=None, session: str | None = None) -> dict:
        """Pictures and tables that show what a prompt is: ``prompt``, ``amplitude``, ``channels`` (rows),
        ``spectrum``, ``saliency`` (None without an image), ``saliency_class``, ``metadata`` (rows)."""

        path = self.prompt_path(choice, upload, session)
        pf = load_prompt(path)
        amp, channels = amplitude(pf.prompter)
        out = {"prompt": prompt_image(pf.prompter), "amplitude": amp, "channels": channels,
               "spectrum": spectrum(pf.prompter), "saliency": None, "saliency_class": "",
               "metadata": metadata_rows(pf.meta) + [[f"input transform {i}", t.summary()]
                                                     for i, t in enumerate(pf.prompter.transforms)]}
        if image is not None:
            model, _, _ = self.model(path)
            out["saliency"], out["saliency_class"] = saliency(model, self.read_image(image))
        return out

    # -- Train --------------------------------------------------------------------------------------------
    def train_defaults(self, recipe: str | None = None) -> TrainDefaults:
        """The Train tab's first values: a recipe's settings (by default
        :data:`~visual_prompting.recipes.DEFAULT_RECIPE`, ``live``), sized so a first run on a CPU shows progress within
        seconds and ends in a minute and a half; the paper's batch size on a GPU. What these defaults
        reach is measured by ``benchmarks/app_defaults.py`` (numbers in README.md). On a CPU the run is short, so
        a recipe's settings for a short run apply (:attr:`~visual_prompting.recipes.Recipe.short_run`)."""
        recipe = recipe or DEFAULT_RECIPE
        base = TrainConfig()
        gpu = self.device.type == "cuda"  # 1000 steps; anything else trains for about a minute: a short run
        settings = {**{f.name: getattr(base, f.name) for f in self.form if f.recipe},
                    **recipe_settings(recipe, short_run=not gpu)}
        if settings["lr"] is None:
            settings["lr"] = default_lr(settings["optimizer"])
        if gpu:
            return TrainDefaults("effnet-lite0", 1000, 128, recipe, settings)
        # a CPU: a budget of training time (so a faster machine trains more steps in the same wait), steps a cap
        return TrainDefaults("effnet-lite0@96", CPU_MAX_STEPS, 64, recipe, settings, time_budget=CPU_TRAIN_SECONDS)

    def first_form(self, recipe: str | None = None) -> dict:
        """The Train tab's values as the page opens (every field the training handler takes, at its first value, as
        ``app.py`` builds the page), with ``recipe`` chosen in the Recipe dropdown (it refills the recipe's fields)."""
        form = {f.name: kw.get("value") for f, kw in component_args(self.form, self.train_defaults()) if f.api}
        chosen = self.train_defaults(recipe)
        form.update({f.name: getattr(chosen, f.name) for f in self.form if f.recipe})
        return form

    def train_config(self, session: str, **form) -> TrainConfig:
        """The Train tab's values (keywords: the names of :attr:`form`'s fields; one left out is its setting's
        default) checked (:func:`~visual_prompting.train_form.form_settings`) and turned into a
        :class:`TrainConfig` for a new run of this session, its uploaded dataset unpacked into the run's folder."""
        settings = form_settings(self.form, form, self.cfg)
        self.check_spec(settings["model"])
        self.check_batch(settings["model"], settings["batch_size"])
        dataset, upload = settings.pop("dataset", None), form.get("upload")
        uploaded = dataset == UPLOADED_DATASET or bool(upload and not dataset)
        if uploaded and not upload:
            raise VPError("Upload a .zip that holds one folder of images per class.")
        if not uploaded and dataset not in dataset_names():
            raise VPError(f"Pick a dataset from the list (or upload a .zip of class folders), not {dataset!r}.")
        run_dir, unpacked = self.workspace.new_run(session, upload if uploaded else None)
        # torchvision datasets: fetched once (offline: a clear message)
        return self._run_config(settings, unpacked or dataset, run_dir, download=True)

    def _run_config(self, settings: dict, dataset: str, out_dir, download: bool) -> TrainConfig:
        """A run of this app: checked form ``settings`` on this app's device, data read in the run's own thread."""
        return TrainConfig(**settings, dataset=dataset, out_dir=str(out_dir), device=str(self.device), num_workers=0,
                           download=download)

    def prewarm(self, **form) -> threading.Thread:
        """Start what a first click on Train would otherwise wait for, in a background thread: one step of the Train
        tab's first form (``form``: values that replace some of it) in a folder of its own, deleted after. It loads
        the backbone into :attr:`cache`, puts the numbers without a prompt (the mapping's counts, validation and
        test accuracy) into :attr:`baselines`, and pays a first step's one-time costs (imports, the kernels for the
        step's shapes). A click after it starts as a later click does; a click during it waits only for what is not
        done yet (both caches compute a value once, the others wait for it). It claims no run slot and writes nothing
        to the workspace; a prewarm that fails is logged and changes nothing else. Returns the thread (``join`` it
        to wait). ``python app.py`` starts one (``serve``; ``VP_PREWARM=0`` leaves it out)."""
        import logging

        def work():
            try:
                from .training import Trainer

                settings = form_settings(self.form, {**self.first_form(), **form}, self.cfg)
                dataset = settings.pop("dataset")
                with tempfile.TemporaryDirectory(prefix="vp-prewarm-") as tmp:
                    cfg = self._run_config({**settings, "steps": 1, "time_budget": None}, dataset, tmp, download=False)
                    Trainer(cfg, cache=self.cache, baselines=self.baselines).run()
            except Exception as e:  # noqa: BLE001 - a failed prewarm leaves the first click as it was
                logging.getLogger("visual_prompting.app").warning("prewarm failed (the first run will set up "
                                                                  "itself): %s: %s", type(e).__name__, e)

        thread = threading.Thread(target=work, name="prewarm", daemon=True)
        thread.start()
        return thread

    def stop(self, session: str) -> str:
        """Ask this session's training run to stop after the current step (its best prompt is kept)."""
        self.workspace.stop(session)
        return "Stopping after this step; the best prompt so far is kept."

    def train_stream(self, cfg: TrainConfig, session: str, min_interval: float = 0.5) -> Iterator[TrainUpdate]:
        """Train in a background thread and yield a :class:`TrainUpdate` at most every ``min_interval`` seconds
        (and at every evaluation). Closing the generator (the user left) stops the run; the best prompt stays in
        ``cfg.out_dir`` either way."""
        stop_file, busy = self.workspace.claim_run(session, cfg.out_dir)
        from .training import Trainer  # the loop, imported when a run starts

        run = _BackgroundRun(lambda callback, should_stop: Trainer(cfg, callbacks=[callback], should_stop=should_stop,
                                                                   cache=self.cache, baselines=self.baselines).run(),
                             stop_file, busy, name=f"train-{session}")
        view = _LiveView()
        last_yield = 0.0
        try:
            yield TrainUpdate(0.0, f"Loading `{cfg.model}` and the data ...")
            for ev in run.events():
                view.add(ev)
                now = time.perf_counter()
                if ev.kind == "step" and now - last_yield < min_interval and ev.step != ev.total_steps:
                    continue
                last_yield = now
                yield view.update(ev, now - run.t0)
        finally:
            run.close()
            self.workspace.drop_data(cfg.out_dir, cfg.dataset)  # decoded into memory when the run started
            release_cpu_memory()  # what the allocator kept for the run's steps (execution.tune_cpu_allocator)
        data = Path(cfg.out_dir) / "data"  # an unpacked upload: its folders and files as the user's .zip has them
        try:
            with named_as({f"{data}{os.sep}": "", data: "the uploaded .zip", cfg.out_dir: "the run's folder"}):
                result = run.result()
        except BaseException:
            self.workspace.remove_failed(cfg.out_dir)
            raise
        if result.best_path is None:  # stopped before the first step: nothing to keep
            self.workspace.remove_failed(cfg.out_dir)
        yield view.final(result, time.perf_counter() - run.t0)

    def add_to_zoo(self, path: str | None, name: str, session: str | None = None) -> str:
        """Copy a trained prompt into ``session``'s zoo (:meth:`user_zoo`: ``AppConfig.user_zoo_dir``, shared by
        everyone this app serves, or with ``private_zoos`` the session's own, within its disk share) under
        ``name``, a name not taken yet there (no one's prompt is replaced)."""
        if not path or not os.path.isfile(path):
            raise VPError("Train a prompt first (or wait until the run has saved one).")
        name = (name or "").strip()
        folder = self.user_zoo(session)
        with self._zoo_lock, named_as({**self._zoo_names(), folder: "my"}):  # one writer of a zoo's index at a time
            if self.cfg.private_zoos:
                self.workspace.check_room(session, os.path.getsize(path), "Adding this prompt to your zoo")
            entry = add_prompt(path, name, folder, replace=False, source="trained in the app")
            if not self.cfg.private_zoos:
                self.refresh_zoo()
        if self.cfg.private_zoos:
            return (f"Added as `my/{entry['name']}` to your zoo, which lasts while this page is open (each visitor of "
                    "this server has a zoo of their own); download the prompt to keep it.")
        return f"Added as `my/{entry['name']}` to your zoo."

    def push(self, path: str | None, repo_id: str, token: str | None, private: bool = False) -> str:
        """Upload a trained prompt to the Hub (prompt, config.json, model card, picture); the repo URL."""
        from .hub import push_prompt

        if not path or not os.path.isfile(path):
            raise VPError("Train a prompt first; then it can be pushed.")
        if not (token or "").strip():
            raise VPError("Give a Hugging Face token with write access to push (it is used for this upload only).")
        url = push_prompt(path, (repo_id or "").strip(), token=token.strip(), private=bool(private))
        return f"Pushed to {url}"

    @staticmethod
    def examples() -> list[str]:
        return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))


def unexpected_error(e: BaseException, action: str = "doing this") -> str:
    """The sentence a user sees for an error that is not theirs (a bug, a full disk): what happened in words, while
    the traceback goes to the server's log for whoever maintains it."""
    import logging

    logging.getLogger("visual_prompting.app").error("unexpected error while %s", action, exc_info=e)
    return (f"Something went wrong on the server while {action} ({type(e).__name__}); it was logged for the "
            "maintainers. Try again, or with another input.")


def _status(ev: TrainEvent, elapsed: float) -> str:
    parts = [f"step {ev.step}/{ev.total_steps}", f"{elapsed:.0f} s"]
    if ev.loss is not None:
        parts.append(f"loss {ev.loss:.3f}")
    if ev.images_per_s:
        parts.append(f"{ev.images_per_s:.0f} img/s")
    if ev.message:
        parts.append(ev.message)
    return " · ".join(parts)


def _accuracy(zero, val, best) -> str:
    if zero is None:
        return ""
    s = f"Validation top-1 without a prompt: **{percent(zero)}**"
    if val is not None:
        s += f" · with the prompt now: **{percent(val)}** · best so far: **{percent(best)}**"
    return s


class _BackgroundRun:
    """``work(callback, should_stop)`` in a daemon thread; :meth:`events` yields what it sends to ``callback``.
    ``should_stop`` reads ``stop_file``; :meth:`close` stops a run still going. A second thread touches ``busy``
    every ``heartbeat_s`` seconds while the run's thread lives, so the run holds its slot (the workspace counts a
    RUNNING file untouched for 30 s as a run that is gone) also while it loads a backbone or unpacks data, before
    its first step."""

    def __init__(self, work: Callable, stop_file: Path, busy: Path, name: str, heartbeat_s: float = 5.0):
        self.stop_file, self.busy, self.heartbeat_s = stop_file, busy, heartbeat_s
        self._queue: queue.Queue = queue.Queue()
        self._outcome: dict = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(work,), name=name, daemon=True)
        self.t0 = time.perf_counter()
        self._thread.start()
        threading.Thread(target=self._heartbeat, name=f"{name}-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self._done.wait(self.heartbeat_s):
            try:
                self.busy.touch()
            except OSError:  # the session's folder is gone: nothing left to hold
                return

    def _should_stop(self) -> bool:
        return self.stop_file.exists()

    def _work(self, work: Callable) -> None:
        try:
            self._outcome["result"] = work(self._queue.put, self._should_stop)
        except BaseException as e:  # noqa: BLE001 - handed to the generator, which reports it
            self._outcome["error"] = e
        finally:
            self._done.set()
            self._queue.put(None)

    def events(self) -> Iterator[TrainEvent]:
        while (ev := self._queue.get()) is not None:
            yield ev

    def close(self) -> None:
        if self._thread.is_alive():  # the generator was closed early: end the run cleanly
            self.stop_file.touch()
            self._thread.join()
        self.busy.unlink(missing_ok=True)

    def result(self) -> TrainResult:
        if "error" in self._outcome:
            e = self._outcome["error"]
            if isinstance(e, VPError):
                raise e
            traceback.print_exception(e)
            raise VPError(f"Training failed: {type(e).__name__}: {e}") from e
        return self._outcome["result"]


class _LiveView:
    """What the Train tab shows, grown event by event: curves, the prompt, the accuracies."""

    def __init__(self):
        self.records: list[dict] = []
        self.prompt_pic, self.zero, self.best, self.val, self.total = None, None, None, None, 1

    def add(self, ev: TrainEvent) -> None:
        record = history_record(ev)
        if record is not None:
            self.records += curve_records([record])  # eval events carry the no-prompt accuracy themselves
        self.total = ev.total_steps
        if ev.zero_shot_val_top1 is not None:
            self.zero = ev.zero_shot_val_top1
        if ev.kind == "eval":
            self.val, self.best = ev.val_top1, ev.best_val_top1
            if ev.prompt is not None:
                self.prompt_pic = delta_image(ev.prompt)

    def update(self, ev: TrainEvent, elapsed: float) -> TrainUpdate:
        return TrainUpdate(ev.step / max(1, ev.total_steps), _status(ev, elapsed), list(self.records),
                           self.prompt_pic, _accuracy(self.zero, self.val, self.best))

    def final(self, res: TrainResult, elapsed: float) -> TrainUpdate:
        if res.best_path is None:  # stopped before the first step
            return TrainUpdate(0.0, f"{res.stop_reason} ({elapsed:.0f} s)", self.records, None, "", None, True)
        m = res.metrics
        head = res.stop_reason if res.interrupted else "Done."
        status = (f"{head} {res.steps_done} steps in {elapsed:.0f} s. Test top-1 "
                  f"**{percent(m.get('test_top1'))}** with the prompt, {percent(m.get('test_top1_no_prompt'))} without "
                  f"({m.get('test_n')} test images; the prompt was chosen on validation).")
        if res.below_no_prompt(self.zero):
            status += (" The prompt is below no prompt on validation: it needs more training (a longer training "
                       "time or more steps) or another learning rate.")
        fraction = 1.0 if not res.interrupted else res.steps_done / max(1, self.total)
        return TrainUpdate(fraction, status, self.records, self.prompt_pic,
                           _accuracy(self.zero, self.val, m.get("best_val_top1")), res.best_path, True)

