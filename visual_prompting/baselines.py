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
from collections import OrderedDict
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
    key wait for it (two users starting the same run at once count once). It keeps the ``max_entries`` most recently
    used values (an app that serves many uploaded datasets does not grow without bound; an entry is a count matrix
    or a few numbers, ~100 KB at most)."""

    def __init__(self, max_entries: int = 512):
        self.max_entries = max_entries
        self._values: OrderedDict[str, object] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: str | None, compute: Callable[[], T]) -> T:
        if key is None:  # nothing identifies the data: not cached
            return compute()
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key]
            value = compute()
            with self._guard:
                self._values[key] = value
                while len(self._values) > self.max_entries:
                    old, _ = self._values.popitem(last=False)
                    self._locks.pop(old, None)
            return value

    def __len__(self) -> int:
        return len(self._values)
