"""The local prompt zoo: every valid prompt file under ``prompts_zoo/`` with its metadata."""
from __future__ import annotations

import warnings
from pathlib import Path

from .errors import VPError
from .prompt_file import read_metadata

ZOO_DIR = Path(__file__).resolve().parent.parent / "prompts_zoo"


def list_prompts(folder: str | Path = ZOO_DIR) -> list[dict]:
    """``[{"name", "path", "meta"}]`` for each readable prompt file; unreadable ones are skipped with a warning."""
    out = []
    for path in sorted(Path(folder).glob("**/*.safetensors")):
        try:
            meta = read_metadata(path)
        except VPError as e:
            warnings.warn(f"Skipping {path}: {e}")
            continue
        out.append({"name": str(path.relative_to(folder).with_suffix("")), "path": str(path), "meta": meta})
    return out
