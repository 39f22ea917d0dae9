"""What a run measures without its prompt, computed once and shared.

Before a label-mapping run can take its first step it counts the backbone's predictions on the mapping images without
a prompt (the no-prompt baseline mapping, and the starting mapping of a prompt that starts at zero); every run also
reports the validation and test accuracy without the prompt. None of that depends on the prompt: for one backbone
(run the same way), one set of images and one head, it is the same number in every run. A :class:`BaselineCache`
keeps them, so the app computes them once for all its users and runs (``VPApp`` holds one, like its
:class:`~visual_prompting.backbones.BackboneCache`), and a benchmark once for all its rows.

Keys are made of what determines the number: the backbone's description (spec, size, normalisation, how it is run),
the head's no-prompt description (mapping method and baseline mapping, or CLIP's class names and templates) and a
fingerprint of the images and labels (:func:`fingerprint`). Sets decoded on the fly (too large for memory) have no
fingerprint and are not cached.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

from .data import ImageSet, TensorImageSet

T = TypeVar("T")


def fingerprint(data: ImageSet) -> str | None:
    """A digest of an in-memory set's pixels and labels (None for a streamed set). Every pixel is read: sets that differ
    in one pixel get different digests."""
    if not isinstance(data, TensorImageSet):
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([list(data.images.shape), str(data.images.dtype), data.class_names]).encode())
    h.update(data.labels.to(torch.int64).numpy().tobytes())
    h.update(data.images.contiguous().numpy().tobytes())
    return h.hexdigest()


def key_of(*parts) -> str:
    """A cache key from JSON-able parts."""
    return json.dumps(parts, sort_keys=True, default=str)


class BaselineCache:
    """Thread-safe ``key -> value`` store: :meth:`get` computes a missing value once, while other callers with the same
    key wait for it (two users starting the same run at once count once)."""

    def __init__(self):
        self._values: dict[str, object] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: str | None, compute: Callable[[], T]) -> T:
        if key is None:  # nothing identifies the data: not cached
            return compute()
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = compute()
            return self._values[key]

    def __len__(self) -> int:
        return len(self._values)
