"""The prompt zoo: the prompt files in ``prompts_zoo/`` and the index that says what each one measured.

``prompts_zoo/index.json`` is ``{"version": 1, "prompts": [entry, ...]}``; an entry names a prompt by ``path``
(relative to the zoo folder) or ``repo_id`` (a Hugging Face Hub repo, optionally ``filename``/``revision``),
with its ``backbone``, ``dataset``, ``classes``, ``prompter`` and ``metrics`` (and, for prompts made here, the
exact ``command`` that made them). A local prompt that was published also has ``hub``: ``{"repo_id", "revision",
"filename"}`` (where ``scripts/build_zoo.py --push-to`` uploaded it). ``scripts/build_zoo.py`` writes it; tests
check that every entry exists and still measures what it lists.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from .errors import VPError
from .prompt_file import parse_json, read_metadata
from .utils import write_text_atomic

ZOO_DIR = Path(__file__).resolve().parent.parent / "prompts_zoo"
INDEX = ZOO_DIR / "index.json"
# prompts a user adds (e.g. from the app's Train tab) go here, never into the shipped, verified zoo
USER_ZOO_DIR = Path(os.environ.get("VP_USER_ZOO", Path.home() / ".cache" / "visual_prompting" / "zoo"))


def load_index(folder: str | Path = ZOO_DIR) -> list[dict]:
    """The entries of ``folder/index.json`` (empty when there is none); malformed ones are an error."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VPError(f"{path} cannot be read as text ({e}).") from e
    doc = parse_json(text, str(path))
    entries = doc.get("prompts") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise VPError(f"{path} must be {{\"version\": 1, \"prompts\": [...]}}.")
    for e in entries:
        if (not isinstance(e, dict) or not _text(e.get("name")) or not (_text(e.get("path")) or _text(e.get("repo_id")))
                or not all(e.get(k) is None or _text(e[k]) for k in ("path", "repo_id", "filename", "revision"))):
            raise VPError(f"{path}: every entry needs a 'name' and a 'path' or 'repo_id', each a text "
                          f"({e!r:.200}).")
        problem = _hub_problem(e)
        if problem:
            raise VPError(f"{path}: entry {e['name']!r:.100}: {problem}")
    return entries


_REPO_ID = re.compile(r"[\w.-]{1,96}/[\w.-]{1,96}")
_HUB_KEYS = ("repo_id", "revision", "filename")


def _hub_problem(e: dict) -> str | None:
    """Why the entry's Hub fields (``hub``, or the older top-level ``repo_id``/``filename``/``revision``) cannot be
    used, else None. The Hub library checks them again when they are pulled; this keeps a hostile index from
    reaching it (a file name outside the repo, a value that is not a text)."""
    hub = e.get("hub")
    if hub is not None:
        if not isinstance(hub, dict) or not _text(hub.get("repo_id")):
            return f"'hub' must be {{\"repo_id\": \"USER/NAME\", \"revision\": ..., \"filename\": ...}}, not {hub!r:.200}."
        extra = sorted(str(k) for k in hub if k not in _HUB_KEYS)
        if extra:
            return f"'hub' has unknown fields ({', '.join(extra)[:200]}); it takes {', '.join(_HUB_KEYS)}."
        if not all(hub.get(k) is None or _text(hub[k]) for k in _HUB_KEYS):
            return f"'hub' fields repo_id, revision and filename must be texts ({hub!r:.200})."
    for where in (hub or {}, e):
        if where.get("repo_id") is not None and not _REPO_ID.fullmatch(where["repo_id"]):
            return f"{where['repo_id']!r:.100} is not a Hub repo id (USER/NAME)."
        name = where.get("filename")
        if name is not None and (len(name) > 500 or name.startswith("/") or "\\" in name
                                 or ".." in name.split("/") or not name.isprintable()):
            return f"{name!r:.100} is not a file name inside a Hub repo."
        rev = where.get("revision")
        if rev is not None and (len(rev) > 200 or not rev.isprintable()):
            return f"{rev!r:.100} is not a Hub revision."
    return None


def _text(value) -> bool:
    return isinstance(value, str) and bool(value)


def list_prompts(folder: str | Path = ZOO_DIR, include_hub: bool = False,
                 skipped: list[str] | None = None) -> list[dict]:
    """``[{"name", "path", "meta", "index"}]``: every readable prompt file in ``folder`` (with its index entry, if
    any), plus, with ``include_hub``, the Hub copies the index names that can be pulled now (these also have
    ``"hub": {"repo_id", "revision", "filename"}``): an entry with a ``hub`` field as ``NAME (Hub)``, an entry that
    is only a ``repo_id`` as ``NAME``. Unreadable files and Hub copies that cannot be reached are skipped with a
    message that says why: appended to ``skipped`` when it is given (a caller that shows them itself, e.g. the app,
    per user), else issued as a warning. The Hub's endpoint is probed once for all entries."""
    folder = Path(folder)
    skip = skipped.append if skipped is not None else warnings.warn
    index = load_index(folder)
    by_path = {e["path"]: e for e in index if e.get("path")}
    out = []
    for path in sorted(folder.glob("**/*.safetensors")):
        rel = str(path.relative_to(folder))
        try:
            meta = read_metadata(path)
        except VPError as e:
            skip(f"Skipping {path}: {e}")
            continue
        entry = by_path.get(rel)
        out.append({"name": entry["name"] if entry else str(Path(rel).with_suffix("")), "path": str(path),
                    "meta": meta, "index": entry})
    remote = [(e, hub_copy(e)) for e in index] if include_hub else []
    remote = [(e, h) for e, h in remote if h]
    if remote:
        from .hub import DEFAULT_TIMEOUT, pull_prompt
        from .network import hf_endpoint, host_reachable, is_offline

        reachable = False if is_offline() else host_reachable(hf_endpoint(), timeout=DEFAULT_TIMEOUT)
        for e, h in remote:
            name = f"{e['name']} (Hub)" if e.get("path") else e["name"]
            try:
                path = pull_prompt(h["repo_id"], h["filename"], h["revision"], reachable=reachable)
            except VPError as err:
                skip(f"Skipping Hub prompt {name}: {err}")
                continue
            out.append({"name": name, "path": path, "meta": read_metadata(path), "index": e, "hub": h})
    return out


def hub_copy(entry: dict) -> dict | None:
    """``{"repo_id", "revision", "filename"}`` of an index entry's Hub copy (its ``hub`` field, or the older
    top-level ``repo_id``/``revision``/``filename``), or None when it has none."""
    hub = entry.get("hub") or (entry if entry.get("repo_id") else None)
    return {k: hub.get(k) for k in _HUB_KEYS} if hub else None


def index_entry(name: str, path: str, meta: dict, **extra) -> dict:
    """An index entry for a prompt file's metadata (what ``index.json`` lists for it)."""
    m = meta.get("metrics", {})
    keep = ("test_top1", "test_top5", "test_top1_no_prompt", "test_top5_no_prompt", "test_n", "best_val_top1")
    return {"name": name, "path": path, "backbone": meta["backbone"]["spec"], "dataset": meta.get("dataset", ""),
            "classes": meta["class_names"], "prompter": meta["prompter"]["kind"],
            "prompt_size": meta["prompter"]["size"], "metrics": {k: m[k] for k in keep if m.get(k) is not None},
            **extra}


def add_prompt(prompt_path, name: str, folder: str | Path = USER_ZOO_DIR, replace: bool = True, **extra) -> dict:
    """Copy a prompt into the zoo ``folder`` as ``NAME.safetensors`` and list it in that folder's index (replacing
    an entry of the same name; ``replace=False``: refusing it, e.g. for a folder several users add to). Returns the
    entry. The file is validated first; a training checkpoint is stored without its optimiser state."""
    from .prompt_file import load_prompt, save_shareable

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}", name or ""):
        raise VPError(f"Zoo names use letters, digits, '-', '_' and '.' (at most 96), not {name!r}.")
    folder = Path(folder)
    if not replace and (folder / f"{name}.safetensors").exists():
        raise VPError(f"`{name}` is in the zoo already; pick another name (no prompt is replaced).")
    pf = load_prompt(prompt_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.safetensors"
    save_shareable(pf, target)
    entries = [e for e in load_index(folder) if e["name"] != name]
    entry = index_entry(name, target.name, pf.meta, **extra)
    entries.append(entry)
    write_text_atomic(folder / "index.json",
                      json.dumps({"version": 1, "prompts": entries}, indent=1, ensure_ascii=False) + "\n")
    return entry
