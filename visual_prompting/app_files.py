"""Files the web app hands to Gradio, written so that many users at once never see a half-written one.

Gradio (6.31) stores a component's images in its cache under a name made from the *content*:
``<cache>/<sha256 of the bytes>/<name>.<format>``. That is how an image input that Gradio converts (an example
PNG in grey, turned into RGB for ``gr.Image(type="filepath")``) and every image output (``gr.Image``,
``gr.Gallery``) reach the disk. Identical content from different users therefore goes to the *same* path, and
``processing_utils.save_pil_to_cache`` (also ``save_bytes_to_cache``, ``save_base64_to_cache``) writes it in
place (``Path.write_bytes``: truncate, then write). With many users clicking the same example with the same
prompt, one request truncates the file while another's handler opens it ("The image 3_dress.png cannot be read")
or while the file route streams it to a third user, whose download then ends short ("Too little data for
declared Content-Length").

:func:`atomic_gradio_cache_writes` makes those writers atomic without changing what they write or where: the
original function runs unchanged into a private staging folder inside the cache folder, and its file is then
moved onto the real path with ``os.replace``. A reader sees the old complete file or the new complete file,
never a partial one; since the path is the hash of the content, both are the same bytes. (Gradio's
``save_file_to_cache``, used for file paths and examples, already writes this way.)
"""
from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
from pathlib import Path

# Gradio's functions that write a cache file in place, each with a ``cache_dir`` argument
GRADIO_CACHE_WRITERS = ("save_pil_to_cache", "save_bytes_to_cache", "save_base64_to_cache", "save_audio_to_cache")
_MARK = "_vp_atomic"


def _atomic(write):
    """``write(..., cache_dir=...)`` run into a staging folder inside ``cache_dir``; its file then replaces the
    one at the same relative path in ``cache_dir`` in one step."""
    sig = inspect.signature(write)

    @functools.wraps(write)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        cache_dir = Path(bound.arguments["cache_dir"])
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".staging-")).resolve()
        try:
            bound.arguments["cache_dir"] = str(staging)
            written = Path(write(*bound.args, **bound.kwargs)).resolve()
            dest = cache_dir.resolve() / written.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written, dest)
            return str(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    setattr(wrapper, _MARK, True)
    return wrapper


def atomic_gradio_cache_writes() -> list[str]:
    """Make Gradio's in-place cache writers atomic (see the module's text); the names wrapped. Idempotent; a
    writer this Gradio does not have is skipped."""
    from gradio import processing_utils

    done = []
    for name in GRADIO_CACHE_WRITERS:
        fn = getattr(processing_utils, name, None)
        if fn is None:
            continue
        if not getattr(fn, _MARK, False):
            if "cache_dir" not in inspect.signature(fn).parameters:
                raise RuntimeError(f"gradio.processing_utils.{name} has no cache_dir argument: this Gradio "
                                   "writes its cache differently; check visual_prompting/app_files.py")
            setattr(processing_utils, name, _atomic(fn))
        done.append(name)
    return done
