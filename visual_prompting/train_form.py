"""The app's Train tab, described once: :data:`TRAIN_FORM` lists its fields (name, kind of component, where it
sits, the :class:`~visual_prompting.train_config.TrainConfig` setting it fills), and everything else reads it:

* ``app.py`` makes one Gradio component per field (:func:`component_args`: label, value, choices, info) in the
  list's order, in its place ("main", "row": side by side, "more": under "More settings"), hands the training
  handler every ``api`` field by name, and lets the Recipe dropdown refill every ``recipe`` field;
* :meth:`VPApp.train_config <visual_prompting.ui.VPApp.train_config>` turns the values into settings with
  :func:`form_settings` (TrainConfig's own checks, the app's limits on top).

A new field is one :class:`FormField` here (a setting of TrainConfig with its checks already there). Plain data,
no Gradio: the same list can drive another front.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .backbones import backbone_examples
from .data import dataset_names
from .recipes import RECIPES
from .settings import choices, parse_value
from .train_config import TrainConfig

UPLOADED_DATASET = "upload a .zip of class folders"
PLACES = ("main", "row", "more")


@dataclass(frozen=True)
class FormField:
    """One field of the Train tab.

    ``name``: the TrainConfig setting it fills (``fills_setting``), the training handler's keyword and the API's
    parameter name. ``kind``: ``dropdown`` | ``radio`` | ``number`` | ``file``. ``place``: one of :data:`PLACES`.
    ``recipe``: a recipe sets it (choosing a recipe refills it). ``api``: a value the training handler receives
    (not the Recipe dropdown itself). ``required``: a blank is an error; else ``blank`` values (and a field left
    out) mean the setting's default, and a blank default shows as ``blank[-1]``. ``high``: an upper bound, a
    number or the name of an :class:`~visual_prompting.ui.AppConfig` limit. ``choices``: where the choices come
    from (:data:`CHOICE_SOURCES`; None: the setting's own registry). ``info``: the help under the field;
    ``{choices}`` in it is the list of choices with their descriptions. ``options``: more of the component's
    arguments (precision, minimum, elem_id, ...)."""

    name: str
    kind: str
    label: str
    place: str = "main"
    fills_setting: bool = True
    recipe: bool = False
    api: bool = True
    required: bool = False
    blank: tuple = ()
    high: float | str | None = None
    choices: str | None = None
    info: str = ""
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.place not in PLACES:
            raise ValueError(f"FormField {self.name!r}: place must be one of {PLACES}, not {self.place!r}")

    @property
    def setting(self) -> str | None:
        return self.name if self.fills_setting else None


_WHOLE = {"precision": 0}
TRAIN_FORM: tuple[FormField, ...] = (  # in this order on the page (per place) and in the /train API
    FormField("model", "dropdown", "Backbone", choices="backbones", required=True,
              info="effnet-lite0 works offline; @96 = 96 px input",
              options={"allow_custom_value": True, "elem_id": "train-model"}),
    FormField("dataset", "dropdown", "Dataset", choices="datasets", blank=(None, "")),
    FormField("upload", "file", "Dataset .zip (one folder of images per class)", fills_setting=False,
              options={"file_types": [".zip"]}),
    FormField("recipe", "dropdown", "Recipe", fills_setting=False, api=False, choices="recipes",
              info="{choices} - sets the fields below", options={"elem_id": "train-recipe"}),
    FormField("prompter", "radio", "Prompt kind", recipe=True, info="{choices}"),
    FormField("prompt_size", "number", "Prompt size, px (0 = the share below, else the kind's default: 30 px at "
              "224)", blank=(None, 0), options=_WHOLE),
    FormField("steps", "number", "Steps (the most, with a training time)", place="row", required=True,
              high="max_steps", options={**_WHOLE, "minimum": 1, "elem_id": "train-steps"}),
    FormField("batch_size", "number", "Batch size", place="row", required=True, high="max_batch_size",
              options={**_WHOLE, "minimum": 1, "elem_id": "train-batch"}),
    FormField("lr", "number", "Learning rate (paper: 40 with sgd)", place="row", recipe=True, high=10_000),
    FormField("label_mapping", "radio", "Label mapping (vision models)", place="more", recipe=True,
              info="{choices}"),
    FormField("clamp", "radio", "Clamp the prompted image", place="more", recipe=True, info="{choices}"),
    FormField("seed", "number", "Seed", place="more", blank=(None,), options=_WHOLE),
    FormField("optimizer", "radio", "Optimiser", place="more", recipe=True, info="{choices}"),
    FormField("augment", "radio", "Input diversity (before the prompt)", place="more", recipe=True,
              info="{choices}"),
    FormField("capture", "radio", "Capture simulation (after the prompt)", place="more", recipe=True,
              info="{choices}"),
    # last in the API (positional callers of /train keep their order; fields added later go after it), beside
    # Steps on the page
    FormField("time_budget", "number", "Training time, s (0 = train all the steps)", place="row", blank=(None, 0),
              high="max_train_seconds", options={"minimum": 0, "elem_id": "train-seconds"}),
    FormField("prompt_fraction", "number", "Prompt size as a share of the side (0 = not used)", place="more",
              recipe=True, blank=(None, 0), options={"minimum": 0, "maximum": 0.5}),
    FormField("transforms", "dropdown", "Learned input transforms (before the prompt, in order)", place="more",
              recipe=True, info="ACAVP's affine (a warp) and colour (a 3 x 3 colour matrix and bias); adam only"),
    FormField("init_offset", "number", "Prompt start offset (the pixel value it starts at)", place="more",
              recipe=True, blank=(None,), options={"minimum": -1, "maximum": 1}),
    FormField("start_samples", "number", "Mapping images counted before the first step", place="more",
              recipe=True, blank=(None,), options={**_WHOLE, "minimum": 1}),
)
# the settings a recipe may set (the form shows each)
TRAIN_FORM_FIELDS = tuple(f.name for f in TRAIN_FORM if f.recipe)


def dataset_choices() -> list[str]:
    return [*dataset_names(), UPLOADED_DATASET]


def _recipe_names() -> list[str]:
    return list(RECIPES)


# where a field's choices come from, read when the page is built (kinds registered after import are offered too)
CHOICE_SOURCES = {"backbones": backbone_examples, "datasets": dataset_choices, "recipes": _recipe_names}


def field_choices(f: FormField) -> list | None:
    """A field's choices now: its source's (:data:`CHOICE_SOURCES`), else its setting's registry; None for a
    field without choices."""
    if f.choices is not None:
        return CHOICE_SOURCES[f.choices]()
    return choices(TrainConfig, f.name) if f.setting and f.kind in ("radio", "dropdown") else None


def train_choices(form: tuple[FormField, ...] = TRAIN_FORM) -> dict[str, list[str]]:
    """The Train tab's choices from the registries now, by setting: ``{"prompter": [...], "clamp": [...], ...}``."""
    return {f.name: field_choices(f) for f in form if f.kind == "radio"}


def choice_info(name: str) -> str:
    """One line per choice of a field (``kind: description``) for the app's info text."""
    from .augment import AUGMENTATIONS
    from .capture import CAPTURE_AUGMENTATIONS
    from .heads import MAPPINGS
    from .optim import OPTIMIZERS
    from .prompters import CLAMP_MODES, PROMPTERS

    registry = {"prompter": PROMPTERS, "label_mapping": MAPPINGS, "clamp": CLAMP_MODES, "optimizer": OPTIMIZERS,
                "augment": AUGMENTATIONS, "capture": CAPTURE_AUGMENTATIONS, "recipe": RECIPES}[name]
    return "; ".join(f"{k}: {getattr(v, 'description', v)}" for k, v in registry.items())


@dataclass
class TrainDefaults:
    """The Train tab's first values: the backbone, steps and batch size for this device, a recipe and its
    settings (``settings``: the recipe's value of each ``recipe`` field, TrainConfig's default where it sets none).
    ``defaults.<setting>`` reads any setting: the recipe's, else TrainConfig's own default."""

    model: str
    steps: int
    batch_size: int
    recipe: str
    settings: dict
    time_budget: float | None = None  # seconds of training (steps then the most); None: train the steps

    def __getattr__(self, name):
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        for f in fields(TrainConfig):
            if f.name == name:
                return f.default
        raise AttributeError(name)


def component_args(form: tuple[FormField, ...], defaults: TrainDefaults) -> list[tuple[FormField, dict]]:
    """Each field with the keyword arguments of its component: label, first value, choices, info, its options."""
    out = []
    for f in form:
        kw = {"label": f.label}
        if f.kind != "file":
            value = getattr(defaults, f.name)
            kw["value"] = f.blank[-1] if value is None and f.blank else value
        options = field_choices(f)
        if options is not None:
            kw["choices"] = options
        if f.info:
            kw["info"] = f.info.format(choices=choice_info(f.name)) if "{choices}" in f.info else f.info
        out.append((f, {**kw, **f.options}))
    return out


def form_settings(form: tuple[FormField, ...], values: dict, limits) -> dict:
    """The TrainConfig settings a filled-in form gives, each checked by TrainConfig's own rules
    (:func:`~visual_prompting.settings.parse_value`; the form's numbers arrive as floats) and bounded by the
    field's ``high`` (``limits``: an AppConfig). A field left out, or blank, is the setting's default (not set
    here); a required one must be given."""
    unknown = sorted(set(values) - {f.name for f in form if f.api})
    if unknown:
        raise TypeError(f"not a field of the Train tab: {', '.join(unknown)}")
    settings = {}
    for f in form:
        value = values.get(f.name)
        if not f.setting or (not f.required and (f.name not in values or value in f.blank)):
            continue
        high = getattr(limits, f.high) if isinstance(f.high, str) else f.high
        bounds = {} if high is None else {"high": high}
        settings[f.name] = parse_value(TrainConfig, f.name, value, required=f.required, **bounds)
    return settings
