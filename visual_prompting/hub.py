"""Share prompts on the Hugging Face Hub: pull a prompt file, prepare the exact folder to upload, push it.

A prompt repo holds four files, made by :func:`prepare_upload`:

``prompt.safetensors``  the prompt file (tensors + JSON metadata, see :mod:`visual_prompting.prompt_file`)
``config.json``         the same metadata as plain JSON (what the Hub and people read)
``README.md``           a model card: YAML front matter (library_name, tags, datasets, base_model, model-index),
                        how to use it, the accuracy with and without the prompt, a picture of the prompt
``prompt.png``          that picture

Sources accepted by :func:`resolve_prompt`: a local ``.safetensors`` file, a local folder holding
``prompt.safetensors``, ``hf://USER/NAME[@REVISION][/FILENAME]`` (or a huggingface.co web URL), or a plain
``USER/NAME`` repo id when no such local path exists.

Network behaviour: before any Hub call the endpoint (``$HF_ENDPOINT`` or huggingface.co) gets a short TCP probe
(:func:`visual_prompting.network.host_reachable`); then one HEAD request *without retries* checks the file, and
only then ``huggingface_hub.hf_hub_download`` runs. Without this, ``hf_hub_download`` answers a connection error or a
5xx with no cached copy by retrying with exponential backoff (up to 5 retries, 60 s timeout each). Whenever the Hub
cannot be asked (``HF_HUB_OFFLINE=1``, unreachable, 5xx) a copy in the local Hugging Face cache is used if there is
one; otherwise a :class:`VPError` says what happened, within seconds.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

from .backbones import backbone_family, base_model_for, parse_spec
from .data import named_as
from .errors import VPError
from .heads import head_text
from .network import hf_endpoint, host_reachable
from .network import is_offline as _is_offline
from .prompt_file import load_prompt, save_shareable
from .transforms import stack_text
from .utils import percent

PROMPT_FILENAME = "prompt.safetensors"
UPLOAD_FILES = (PROMPT_FILENAME, "config.json", "README.md", "prompt.png")
LIBRARY_NAME = "visual-prompting"
DEFAULT_TIMEOUT = 5.0  # seconds for the TCP probe and for the metadata (HEAD) request
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")
_HUB_DATASETS = {"fashion_mnist_subset": "fashion_mnist"}  # the bundled subset is drawn from Fashion-MNIST
PAPER = "https://arxiv.org/abs/2203.17274"


# -- helpers ---------------------------------------------------------------------------------------------------

def _endpoint(endpoint: str | None) -> str:
    return (endpoint or hf_endpoint()).rstrip("/")


def check_repo_id(repo_id: str) -> None:
    """A :class:`VPError` unless ``repo_id`` is a valid Hub repo id (USER/NAME)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise VPError(f"Bad Hub repo id {repo_id!r}: use USER/NAME (e.g. alice/vp-clip-cifar10).")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise VPError(f"Bad Hub repo id {repo_id!r}: {e}") from e


def _library_version() -> str:
    from . import __version__

    return __version__


# -- pull ------------------------------------------------------------------------------------------------------

def pull_prompt(repo_id: str, filename: str | None = None, revision: str | None = None, cache_dir=None,
                timeout: float = DEFAULT_TIMEOUT, *, token: str | bool | None = None, endpoint: str | None = None,
                repo_type: str | None = None, reachable: bool | None = None) -> str:
    """Download a prompt file from a Hub repo into the Hugging Face cache and return its local path.

    ``filename`` defaults to ``prompt.safetensors``; ``revision`` to ``main``; ``cache_dir`` to the Hugging Face
    cache (``$HF_HUB_CACHE``); ``endpoint`` to ``$HF_ENDPOINT`` or huggingface.co. With ``HF_HUB_OFFLINE=1``, or when
    the endpoint does not answer within ``timeout`` seconds, the cached copy is used. The file is validated as a
    prompt. Every failure is a :class:`VPError` with a plain message, raised within seconds (no retry loops).
    ``reachable``: what a probe of the endpoint the caller has just made said (one probe for many pulls, e.g. the
    zoo's Hub entries); None probes now.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    check_repo_id(repo_id)
    filename = filename or PROMPT_FILENAME
    endpoint = _endpoint(endpoint)
    where = f"{repo_id}/{filename}" + (f" (revision {revision})" if revision else "")
    kw = dict(repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir, repo_type=repo_type)

    if _is_offline():
        path = _from_cache(**kw)
        if path is None:
            raise VPError(f"Cannot get {where}: offline mode is on (HF_HUB_OFFLINE) and it is not in the local "
                          "Hugging Face cache. Unset HF_HUB_OFFLINE and connect once, or use a local prompt file.")
        return _validated(path, where)

    if not (host_reachable(endpoint, timeout=timeout) if reachable is None else reachable):
        path = _from_cache(**kw)
        if path is None:
            raise VPError(f"Cannot download {where}: {endpoint} is unreachable and it is not in the local Hugging Face "
                          "cache. Connect to the internet once (it is cached afterwards) or use a local prompt file.")
        return _validated(path, where)

    # One HEAD request without retries: a missing repo/file, a bad token or a Hub outage is known in one round trip
    # (hf_hub_download would retry outages with backoff for a long time when nothing is cached).
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision, repo_type=repo_type, endpoint=endpoint),
                             token=token, timeout=timeout, endpoint=endpoint,
                             library_name=LIBRARY_NAME, library_version=_library_version())
    except Exception as e:  # every failure becomes a VPError (or falls back to the cache) below
        kind, message = _classify(e, where, endpoint)
        path = None if kind == "missing" else _from_cache(**kw)
        if path is None:
            raise VPError(message) from e
        return _validated(path, where)

    try:
        path = hf_hub_download(**kw, endpoint=endpoint, token=token, etag_timeout=timeout,
                               library_name=LIBRARY_NAME, library_version=_library_version())
    except Exception as e:  # every failure becomes one readable VPError
        raise VPError(_classify(e, where, endpoint)[1]) from e
    return _validated(path, where)


def _from_cache(*, repo_id, filename, revision=None, cache_dir=None, repo_type=None) -> str | None:
    """The cached file for this repo/revision, or None. Never touches the network."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir,
                               repo_type=repo_type, local_files_only=True)
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: simply not cached
        return None
    return path if isinstance(path, str) and os.path.isfile(path) else None


def _classify(e: Exception, where: str, endpoint: str) -> tuple[str, str]:
    """``("missing" | "unavailable", message)`` for an exception from a Hub call."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return "unavailable", (f"Cannot download {where}: the repo is gated; accept its conditions on the Hub and log "
                               "in (hf auth login, or HF_TOKEN).")
    if isinstance(e, RepositoryNotFoundError):
        return "unavailable", (f"Cannot download {where}: no such repo on {endpoint} (or it is private and no valid "
                               "token was given: hf auth login, HF_TOKEN or --token).")
    if isinstance(e, RevisionNotFoundError):
        return "missing", f"Cannot download {where}: the repo has no such revision (branch, tag or commit)."
    if isinstance(e, RemoteEntryNotFoundError):
        return "missing", f"Cannot download {where}: the repo has no file of that name."
    if isinstance(e, OfflineModeIsEnabled):
        return "unavailable", f"Cannot download {where}: offline mode is on (HF_HUB_OFFLINE) and it is not cached."
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return "unavailable", f"Cannot download {where}: the token was refused (401); check it or log in again."
        if status == 403:
            return "unavailable", f"Cannot download {where}: access denied (403); the token lacks read access."
        return "unavailable", (f"Cannot download {where}: the Hub answered HTTP {status} and it is not in the local "
                               f"cache; try again later. ({_first_line(e)})")
    if isinstance(e, LocalEntryNotFoundError):
        return "unavailable", f"Cannot download {where}: not reachable and not in the local cache. ({_first_line(e)})"
    return "unavailable", (f"Cannot download {where} from {endpoint}: {type(e).__name__}: {_first_line(e)}. "
                           "It is not in the local Hugging Face cache either.")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _validated(path: str, where: str) -> str:
    try:
        with named_as({path: Path(path).name}):  # the file by its name in the repo, not its place in the cache
            load_prompt(path)
    except VPError as e:
        raise VPError(f"{where} is not a usable visual-prompting prompt: {e}") from e
    return path


# -- sources ---------------------------------------------------------------------------------------------------

def resolve_prompt(source, **kw) -> str:
    """A local path to the prompt file named by ``source``.

    ``source`` is a local ``.safetensors`` file; a local folder with ``prompt.safetensors`` (or exactly one
    ``.safetensors`` file) in it, e.g. a folder made by :func:`prepare_upload`; ``hf://USER/NAME[@REVISION][/FILE]``
    or a huggingface.co URL; or ``USER/NAME`` when no such local path exists. ``kw`` goes to :func:`pull_prompt`
    (``cache_dir``, ``timeout``, ``token``, ``endpoint``, ``revision``, ``filename``).
    """
    s = os.fspath(source)
    if os.path.isfile(s):
        return s
    if os.path.isdir(s):
        return _prompt_in_folder(s)
    if s.startswith("hf://") or s.lower().startswith(("http://", "https://")):
        return _pull_uri(s, **kw)
    if _REPO_ID.match(s) and not s.endswith(".safetensors"):
        try:
            return pull_prompt(s, **kw)
        except VPError as e:
            raise VPError(f"No local file or folder {s!r}, and as a Hub repo: {e}") from e
    raise VPError(f"Prompt file not found: {s} (give a .safetensors file, a folder with {PROMPT_FILENAME}, "
                  "hf://USER/NAME or USER/NAME).")


def _prompt_in_folder(folder: str) -> str:
    p = os.path.join(folder, PROMPT_FILENAME)
    if os.path.isfile(p):
        return p
    found = sorted(Path(folder).glob("*.safetensors"))
    if len(found) == 1:
        return str(found[0])
    if not found:
        raise VPError(f"{folder} is a folder without {PROMPT_FILENAME} (or any .safetensors file).")
    raise VPError(f"{folder} holds several prompt files ({', '.join(f.name for f in found[:5])}); name one.")


def _pull_uri(uri: str, **kw) -> str:
    from huggingface_hub import parse_hf_uri

    try:
        u = parse_hf_uri(uri)
    except ValueError as e:
        raise VPError(f"Cannot read Hub location {uri!r}: {e}") from e
    if u.type == "bucket":
        raise VPError(f"{uri}: prompts are pulled from model (or dataset) repos, not buckets.")
    filename = kw.pop("filename", None)
    path = u.path_in_repo
    if path and not path.endswith(".safetensors"):  # a folder in the repo
        path = f"{path.rstrip('/')}/{PROMPT_FILENAME}"
    revision = u.revision if u.revision is not None else kw.pop("revision", None)
    kw.pop("revision", None)
    kw.setdefault("repo_type", None if u.type == "model" else u.type)
    return pull_prompt(u.id, filename=path or filename, revision=revision, **kw)


# -- upload folder -------------------------------------------------------------------------------------------

def prepare_upload(prompt_path, folder, *, repo_id: str | None = None) -> Path:
    """Write the exact folder :func:`push_prompt` uploads: ``prompt.safetensors``, ``config.json``, ``README.md``
    (model card) and ``prompt.png``. ``repo_id`` (optional) only fills the usage examples in the card.

    A training checkpoint (with optimiser state) is written without that state; any other prompt file is copied
    byte for byte. Files of other names already in ``folder`` are refused, so the folder is exactly the upload.
    """
    pf = load_prompt(prompt_path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extra = sorted(p.name for p in folder.iterdir() if p.name not in UPLOAD_FILES)
    if extra:
        raise VPError(f"{folder} already holds other files ({', '.join(extra[:5])}); use an empty folder.")
    save_shareable(pf, folder / PROMPT_FILENAME)
    (folder / "config.json").write_text(json.dumps(pf.meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    render_prompt_png(pf.prompter, folder / "prompt.png")
    (folder / "README.md").write_text(model_card(pf.meta, repo_id=repo_id, num_parameters=pf.prompter.num_parameters()),
                                      encoding="utf-8")
    return folder


def render_prompt_png(prompter, path, min_size: int = 256) -> Path:
    """Save the prompt as an RGB PNG (:func:`visual_prompting.visualization.prompt_image`)."""
    from .visualization import prompt_image

    prompt_image(prompter, min_size).save(path)
    return Path(path)


def _hub_dataset(name: str) -> str | None:
    from .classnames import CLASSNAMES

    if name in _HUB_DATASETS:
        return _HUB_DATASETS[name]
    return name if name in CLASSNAMES else None


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


MODEL_CARD = """\
---
{yaml}
---

# Visual prompt: {kind} for `{spec}`{on_dataset}

A **visual prompt** for the frozen model `{spec}`: one learned image perturbation ({kind_text}) added to every \
input image so that the unchanged model classifies {num_classes} new classes{dataset_paren}. No weight of the model \
was trained; this repo holds only the prompt{numbers} and the head it was trained with: {head_text}. Method: Bahng \
et al., *Exploring Visual Prompts for Adapting Large-Scale Models* ({paper}), made with the `visual-prompting` library.

![prompt](prompt.png)

The prompt, drawn as 0.5 + delta / (2 max|delta|) per channel: grey is no change, brighter adds, darker subtracts; \
pixels the prompt does not touch are plain grey.

## How to use

```bash
{download}python -m visual_prompting predict IMG --prompt {filename}
python -m visual_prompting info {filename}
```

```python
from PIL import Image
from visual_prompting import PromptedModel
from visual_prompting.hub import resolve_prompt

path = resolve_prompt({src!r})  # a local file, a folder, or hf://USER/NAME
model, prompt = PromptedModel.from_prompt_file(path)
model.predict([Image.open("img.png")], k=5)                    # prompted top-5
model.predict([Image.open("img.png")], k=5, use_prompt=False)  # the frozen model alone
```

{accuracy}## Details

{details}

`config.json` holds the full metadata (the same JSON as inside `prompt.safetensors`). The prompt only means \
something for the model it was trained for; the library refuses to apply it to another.
"""

ACCURACY = """\
## Accuracy

On {where}; "no prompt" is the same frozen model without the prompt {fairness}

| split | no prompt | prompted |
|---|---:|---:|
{rows}

"""


def _card_data(meta: dict, name: str, base: str | None, hub_ds: str | None):
    """The model card's YAML part (library, tags, datasets, base model, model-index with the test accuracy)."""
    from huggingface_hub import EvalResult, ModelCardData

    m, dataset = meta.get("metrics") or {}, meta.get("dataset") or ""
    try:
        family = backbone_family(parse_spec(meta["backbone"]["spec"]).family)
    except VPError:
        family = None
    evals = [EvalResult(task_type="image-classification", task_name="Image Classification",
                        dataset_type=hub_ds or dataset or "custom", dataset_name=dataset or "custom",
                        dataset_split="test", metric_type="accuracy", metric_name=f"{label} (prompted)",
                        metric_value=round(float(m[key]), 4), metric_config=None if key == "test_top1" else "top5")
             for key, label in (("test_top1", "Top-1 accuracy"), ("test_top5", "Top-5 accuracy"))
             if isinstance(m.get(key), (int, float))]
    return ModelCardData(library_name=LIBRARY_NAME,
                         tags=[t for t in ("visual-prompting", "image-classification", family and family.hub_tag) if t],
                         datasets=[hub_ds] if hub_ds else None, metrics=["accuracy"], base_model=base,
                         pipeline_tag="image-classification",
                         model_name=name if evals else None, eval_results=evals or None)


def _accuracy_section(meta: dict) -> str:
    m, head = meta.get("metrics") or {}, meta["head"]
    rows = [(label, m.get(a), m.get(b)) for label, a, b in (
        ("test top-1", "test_top1_no_prompt", "test_top1"),
        ("test top-5", "test_top5_no_prompt", "test_top5"),
        ("val top-1", "zero_shot_val_top1", "best_val_top1" if "best_val_top1" in m else "val_top1"),
    ) if isinstance(m.get(a), (int, float)) or isinstance(m.get(b), (int, float))]
    if not rows:
        return ""
    n = m.get("test_n")
    fairness = ("(with the label mapping found without a prompt, so the comparison is fair)."
                if head["kind"] == "label_mapping" else "(same text classifier).")
    return ACCURACY.format(where=(meta.get("dataset") or "the task") + (f" ({n} test images)" if n else ""),
                           fairness=fairness, rows="\n".join(f"| {lb} | {percent(a, missing='n/a')} | "
                                                             f"{percent(b, missing='n/a')} |" for lb, a, b in rows))


def _details(meta: dict, base: str | None) -> str:
    pc, spec, m = meta["prompter"], meta["backbone"]["spec"], meta.get("metrics") or {}
    tc, classes = meta.get("train_config") or {}, meta["class_names"]
    details = [f"- prompter: `{pc['kind']}`, size {pc['size']} at {pc['image_size']} px{stack_text(pc)}, clamp "
               f"`{pc.get('clamp')}`, init `{pc.get('init')}`"
               + (f" from {pc['init_offset']:+g}" if pc.get("init_offset") else ""),
               f"- backbone: `{spec}`" + (f" (weights: [{base}](https://huggingface.co/{base}))" if base else ""),
               f"- head: {head_text(meta['head'])}"]
    picked = {k: tc[k] for k in ("epochs", "steps", "batch_size", "lr", "momentum", "weight_decay", "warmup_steps",
                                 "seed") if tc.get(k) is not None}
    if picked:
        details.append("- training: " + ", ".join(f"{k} {v}" for k, v in picked.items()))
    if isinstance(m.get("steps"), int):
        details.append(f"- steps done: {m['steps']}")
    shown = ", ".join(_md(c) for c in classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    details.append(f"- classes: {shown}")
    return "\n".join(details)


def model_card(meta: dict, repo_id: str | None = None, num_parameters: int | None = None) -> str:
    """The README.md (YAML front matter + markdown) for a prompt's metadata: :data:`MODEL_CARD` filled in. The
    prompter's words come from its registered class, the head's from :func:`visual_prompting.heads.head_text`."""
    pc, spec, dataset = meta["prompter"], meta["backbone"]["spec"], meta.get("dataset") or ""
    hub_ds, base = _hub_dataset(dataset), base_model_for(spec)
    name = repo_id.split("/")[-1] if repo_id else f"visual-prompt-{pc['kind']}-{dataset or 'task'}"
    return MODEL_CARD.format(
        yaml=_card_data(meta, name, base, hub_ds).to_yaml(), kind=pc["kind"], spec=spec, kind_text=_kind_text(pc),
        on_dataset=f" on {dataset}" if dataset else "", dataset_paren=f" ({dataset})" if dataset else "",
        num_classes=len(meta["class_names"]), numbers=f" ({num_parameters:,} numbers)" if num_parameters else "",
        head_text=head_text(meta["head"]), paper=PAPER, filename=PROMPT_FILENAME,
        download=f"hf download {repo_id} {PROMPT_FILENAME} --local-dir .\n" if repo_id else "",
        src=f"hf://{repo_id}" if repo_id else PROMPT_FILENAME, accuracy=_accuracy_section(meta),
        details=_details(meta, base))


def _kind_text(pc: dict) -> str:
    from .prompters import kind_text

    return kind_text(pc["kind"], pc["size"], pc["image_size"])


# -- push ------------------------------------------------------------------------------------------------------

class Pushed(NamedTuple):
    """Where :func:`push_prompt_commit` put a prompt: the repo's URL and id, the commit the upload made (None when the
    Hub did not say) and the prompt's file name in the repo."""
    url: str
    repo_id: str
    revision: str | None
    filename: str


def push_prompt(prompt_path, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str | None = None, *, endpoint: str | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> str:
    """Upload a prompt to the Hub model repo ``repo_id`` (created if missing) and return the repo URL
    (:func:`push_prompt_commit` also says which commit the upload made)."""
    return push_prompt_commit(prompt_path, repo_id, token, private, commit_message, endpoint=endpoint,
                              timeout=timeout).url


def push_prompt_commit(prompt_path, repo_id: str, token: str | None = None, private: bool = False,
                       commit_message: str | None = None, *, endpoint: str | None = None,
                       timeout: float = DEFAULT_TIMEOUT) -> Pushed:
    """Upload a prompt to the Hub model repo ``repo_id`` (created if missing); :class:`Pushed` says where it went.

    The upload is the folder :func:`prepare_upload` writes. ``private=True`` makes a *new* repo private (otherwise the
    Hub's default applies; an existing repo keeps its visibility). ``token`` defaults to the logged-in token /
    ``HF_TOKEN``. Fails fast with a :class:`VPError` when offline, unreachable, or the token is missing / refused.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    pf = load_prompt(prompt_path)  # a bad file fails before any network call
    endpoint = _endpoint(endpoint)
    if _is_offline():
        raise VPError(f"Cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE). Unset it to upload.")
    if not host_reachable(endpoint, timeout=timeout):
        raise VPError(f"Cannot push to {repo_id}: {endpoint} is unreachable. Check the connection (or HF_ENDPOINT).")
    message = commit_message or (f"Upload visual prompt ({pf.meta['prompter']['kind']} for "
                                 f"{pf.meta['backbone']['spec']}" + (f", {pf.meta['dataset']}" if pf.meta.get("dataset")
                                                                      else "") + ")")
    with tempfile.TemporaryDirectory(prefix="vp-upload-") as tmp:
        folder = prepare_upload(prompt_path, tmp, repo_id=repo_id)
        api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=_library_version())
        try:
            url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message,
                                       repo_type="model")
        except Exception as e:  # every failure becomes one readable VPError
            raise VPError(_push_error(e, repo_id, endpoint)) from e
    oid = getattr(commit, "oid", None)  # huggingface_hub's CommitInfo
    return Pushed(str(url), repo_id, oid if isinstance(oid, str) and oid else None, PROMPT_FILENAME)


def _push_error(e: Exception, repo_id: str, endpoint: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    if isinstance(e, LocalTokenNotFoundError):
        return f"Cannot push to {repo_id}: not logged in. Run `hf auth login`, set HF_TOKEN, or pass --token."
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return (f"Cannot push to {repo_id}: the Hub refused the token (401). Run `hf auth login`, set HF_TOKEN or "
                    "pass --token with a token that has write access.")
        if status == 403:
            return (f"Cannot push to {repo_id}: forbidden (403). The token needs write access to the "
                    f"'{repo_id.split('/')[0]}' namespace.")
        return f"Cannot push to {repo_id}: the Hub answered HTTP {status}: {_first_line(e)}"
    return f"Cannot push to {repo_id} on {endpoint}: {type(e).__name__}: {_first_line(e)}"
