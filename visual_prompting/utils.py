"""Small helpers shared by training, evaluation and the fronts: device choice, seeding, autocast."""
from __future__ import annotations

import contextlib
import numbers
import os
import random
import signal
import threading

import numpy as np
import torch

from .errors import VPError


def check_device_name(name: str | None) -> None:
    """Refuse a ``name`` torch does not know as a device (cpu, cuda, cuda:1, mps; auto or empty: the best there);
    whether the device is there is checked when it is used (:func:`pick_device`)."""
    if name in (None, "", "auto"):
        return
    try:
        torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise VPError(f"{name!r:.80} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu. An explicit device that is not there is an error, not a fallback."""
    check_device_name(name)
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VPError(f"Device {name!r} was asked for but CUDA is not available here; use --device cpu or auto.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VPError(f"Device {name!r} was asked for but MPS is not available here; use --device cpu or auto.")
    return dev


class HostReadback:
    """A step's scalars (loss, accuracy) on their way to the host, read later without waiting for the work queued
    after them.

    ``float(t)`` / ``t.item()`` on a CUDA tensor synchronises the whole stream: read one step late, it still waits
    for the step just queued, and the GPU runs dry while the host queues the next one. Here, on CUDA, the values
    are copied into one of a few pinned host buffers behind an event, and :meth:`read` waits for that event only.
    Elsewhere (CPU, MPS) the values are kept as they are and read directly (nothing to overlap on CPU).
    At most ``slots - 1`` sent values may wait unread (the trainer keeps one)."""

    def __init__(self, device: torch.device, n: int = 2, slots: int = 3):
        self.cuda = device.type == "cuda"
        self.n = n
        self._bufs = [torch.empty(n, pin_memory=True) for _ in range(slots)] if self.cuda else []
        self._next = 0

    def send(self, *values: torch.Tensor) -> tuple:
        v = torch.stack([t.detach().float().reshape(()) for t in values])
        if not self.cuda:
            return v, None
        buf = self._bufs[self._next]
        self._next = (self._next + 1) % len(self._bufs)
        buf.copy_(v, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        return buf, ev

    @staticmethod
    def read(token: tuple) -> list[float]:
        values, event = token
        if event is not None:
            event.synchronize()
        return values.tolist()


def percent(x, digits: int = 1, missing: str = "-", width: int | None = None) -> str:
    """A fraction as people read it, the one formatter of every front (CLI, app, model card, benchmark reports):
    ``percent(0.8503) == "85.0%"``. ``missing`` stands for a number that is not there (None, NaN, or not a number,
    e.g. a field absent from a prompt file's metadata). ``width``: the number is right-aligned in that many
    characters before its ``%``, and ``missing`` takes the same columns (``percent(None, width=5, missing="n/a")
    == "  n/a "``), so a column of them lines up."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or x != x:  # x != x: NaN
        return missing if width is None else f"{missing:>{width}} "
    return f"{100 * x:{width or ''}.{digits}f}%"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype used on this device, or None when AMP does not apply (CPU, MPS)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True):
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Evaluation mode inside the block, the module's own mode again after it (also on error). A module that is
    already in eval mode is left alone: switching walks every submodule (hundreds in EfficientNet), on every call."""
    was = module.training
    if was:
        module.eval()
    try:
        yield module
    finally:
        if was:
            module.train()


def temporary_beside(path) -> str:
    """A temporary name beside ``path`` for one writer (this process and thread: the app's users are threads of
    one process) to write in full before it renames it into place."""
    return f"{path}.tmp{os.getpid()}.{threading.get_ident()}"


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place: a process killed at any moment,
    or a second writer (another process, or another thread of this one), leaves the old file or the new one, never
    half of one."""
    tmp = temporary_beside(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def import_in_background(*modules: str):
    """Start importing ``modules`` in a daemon thread and return it: module imports are thread-safe (a thread that
    needs one meanwhile waits for it), and much of an import's time can overlap work that runs outside Python
    (a model's forward passes). A module that fails to import here raises where it is imported for use."""
    import importlib

    def work():
        for m in modules:
            try:
                importlib.import_module(m)
            except Exception:  # noqa: BLE001 - the import that needs the module reports it
                pass
    t = threading.Thread(target=work, name="vp-imports", daemon=True)
    t.start()
    return t


class SigintHandler:
    """A Ctrl-C (SIGINT) handler for a ``with`` block: installed in the main thread over the handler in place when
    :meth:`_takes_over` accepts that one, the previous handler put back on leaving; elsewhere (another thread) nothing
    is touched. Subclasses say what a Ctrl-C does (:meth:`_on_sigint`); by default they do not install over SIG_IGN
    (a SIGINT ignored on purpose, as under ``nohup ... &``)."""

    def __init__(self):
        self._previous = None

    def _takes_over(self, current) -> bool:
        return current is not signal.SIG_IGN

    def _on_sigint(self, signum, frame):  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and self._takes_over(signal.getsignal(signal.SIGINT)):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
