"""Network checks for the Hugging Face Hub, shared by the backbones (weights) and :mod:`visual_prompting.hub`
(prompts): a short TCP probe before any download so that an offline machine gets a clear message within seconds
instead of a retry loop, the offline switch, and "is this file already in the local cache?"."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the URL's host can be opened within ``timeout`` seconds."""
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def hf_endpoint() -> str:
    """``$HF_ENDPOINT`` or huggingface.co, without a trailing slash."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub read it at import, or as the environment says now."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.is_offline_mode()) or env.strip().upper() in OFFLINE_VALUES


def cached_hub_file(repo_id: str, filenames) -> str | None:
    """Path of the first of ``filenames`` of Hub repo ``repo_id`` already in the local Hugging Face cache, else None.
    Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for fn in filenames:
        p = try_to_load_from_cache(repo_id, fn)
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def hub_download_blocked() -> str | None:
    """Why a Hub download cannot start now (offline mode, or the endpoint does not answer), else None."""
    if is_offline():
        return "offline mode is on (HF_HUB_OFFLINE)"
    if not host_reachable(hf_endpoint()):
        return f"{hf_endpoint()} is unreachable"
    return None
