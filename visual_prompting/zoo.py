"""The prompt zoo: the prompt files in ``prompts_zoo/`` and the index that says what each one measured.

``prompts_zoo/index.json`` is ``{"version": 1, "prompts": [entry, ...]}``; an entry names a prompt by ``path``
(relative to the zoo folder) or ``repo_id`` (a Hugging Face Hub repo, optionally ``filename``/``revision``),
with its ``backbone``, ``dataset``, ``classes``, ``prompter`` and ``metrics`` (and, for prompts made here, the
exact ``command`` that made them). ``scripts/build_zoo.py`` writes it; tests check that every entry exists and
still measures what it lists.
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
    return entries


def _text(value) -> bool:
    return isinstance(value, str) and bool(value)


def list_prompts(folder: str | Path = ZOO_DIR, include_hub: bool = False,
                 skipped: list[str] | None = None) -> list[dict]:
    """``[{"name", "path", "meta", "index"}]``: every readable prompt file in ``folder`` (with its index entry, if
    any), plus, with ``include_hub``, the index's Hub entries that can be pulled now. Unreadable files and Hub
    entries that cannot be reached are skipped with a message that says why: appended to ``skipped`` when it is
    given (a caller that shows them itself, e.g. the app, per user), else issued as a warning."""
    folder = Path(folder)
    skip = skipped.append if skipped is not None else warnings.warn
    by_path = {e["path"]: e for e in load_index(folder) if e.get("path")}
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
    if include_hub:
        from .hub import pull_prompt

        for e in load_index(folder):
            if not e.get("repo_id"):
                continue
            try:
                path = pull_prompt(e["repo_id"], e.get("filename"), e.get("revision"))
            except VPError as err:
                skip(f"Skipping Hub prompt {e['name']}: {err}")
                continue
            out.append({"name": e["name"], "path": path, "meta": read_metadata(path), "index": e})
    return out


def index_entry(name: str, path: str, meta: dict, **extra) -> dict:
    """An index entry for a prompt file's metadata (what ``index.json`` lists for it)."""
    m = meta.get("metrics", {})
    keep = ("test_top1", "test_top5", "test_top1_no_prompt", "test_top5_no_prompt", "test_n", "best_val_top1")
    return {"name": name, "path": path, "backbone": meta["backbone"]["spec"], "dataset": meta.get("dataset", ""),
            "classes": meta["class_names"], "prompter": meta["prompter"]["kind"],
            "prompt_size": meta["prompter"]["size"], "metrics": {k: m[k] for k in keep if m.get(k) is not None},
            **extra}


def add_prompt(prompt_path, name: str, folder: str | Path = USER_ZOO_DIR, **extra) -> dict:
    """Copy a prompt into the zoo ``folder`` as ``NAME.safetensors`` and list it in that folder's index (replacing
    an entry of the same name). Returns the entry. The file is validated first; a training checkpoint is stored
    without its optimiser state."""
    from .prompt_file import load_prompt, save_shareable

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}", name or ""):
        raise VPError(f"Zoo names use letters, digits, '-', '_' and '.' (at most 96), not {name!r}.")
    pf = load_prompt(prompt_path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.safetensors"
    save_shareable(pf, target)
    entries = [e for e in load_index(folder) if e["name"] != name]
    entry = index_entry(name, target.name, pf.meta, **extra)
    entries.append(entry)
    write_text_atomic(folder / "index.json",
                      json.dumps({"version": 1, "prompts": entries}, indent=1, ensure_ascii=False) + "\n")
    return entry
