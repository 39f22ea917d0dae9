"""What tests/test_distributed.py starts with torchrun: the CLI's ``main``, with test-only probes around it.

    torchrun --nproc_per_node=2 tests/_torchrun_worker.py train ...

Probes (environment variables; each file gets one line per event, appended):

* ``VP_PROBE_WRITES=FILE``: ``<rank> <path>`` for every prompt file / history the trainer writes (its
  :class:`RunFiles` logs each write)
* ``VP_PROBE_SEEN=FILE``: ``<rank> <index>`` for every training image decoded (the training set's own indices)
* ``VP_PROBE_STEP_DELAY=S``: rank 0 sleeps S seconds at each step event (a run long enough to interrupt)
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from visual_prompting import training  # noqa: E402
from visual_prompting.checkpoint import RunFiles  # noqa: E402
from visual_prompting.cli import main  # noqa: E402
from visual_prompting.distributed import end_process  # noqa: E402


def _rank() -> str:
    return os.environ.get("RANK", "0")


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class _Seen(torch.utils.data.Dataset):
    def __init__(self, inner, path):
        self.inner, self.path = inner, path

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        _append(self.path, f"{_rank()} {i}")
        return self.inner[i]


class _ProbedFiles(RunFiles):
    """A run's files that log every write (``<rank> <path>``) before making it."""

    def __init__(self, out_dir, log: str):
        super().__init__(out_dir)
        self.log = log

    def _write_prompt(self, path, *a, **k):
        _append(self.log, f"{_rank()} {path}")
        return super()._write_prompt(path, *a, **k)

    def _write_text(self, path, text):
        _append(self.log, f"{_rank()} {path}")
        return super()._write_text(path, text)


def _install() -> None:
    writes = os.environ.get("VP_PROBE_WRITES")
    if writes:  # the CLI builds the trainer: hand it a RunFiles that logs its writes
        init_files = training.Trainer.__init__

        def probed_init(self, cfg, *a, files=None, **k):
            init_files(self, cfg, *a, files=files or _ProbedFiles(cfg.out_dir, writes), **k)

        training.Trainer.__init__ = probed_init

    seen = os.environ.get("VP_PROBE_SEEN")
    if seen:
        loop = training.Trainer._loop

        def seen_loop(self):
            train = self.splits.train
            assert hasattr(train, "dataset"), "VP_PROBE_SEEN needs a streamed training set"
            train.dataset = _Seen(train.dataset, seen)  # after set-up: only the training loop's decoding is seen
            return loop(self)

        training.Trainer._loop = seen_loop

    delay = float(os.environ.get("VP_PROBE_STEP_DELAY", "0"))
    if delay:
        init = training.Trainer.__init__

        def slow_init(self, *a, **k):
            init(self, *a, **k)
            self.callbacks.append(lambda ev: time.sleep(delay) if ev.kind == "step" else None)

        training.Trainer.__init__ = slow_init


if __name__ == "__main__":
    _install()
    end_process(main(sys.argv[1:]))  # as python -m visual_prompting ends
