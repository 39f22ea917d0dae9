"""A training run's files: what a run writes to its folder, and how it reads them back to resume.

    OUT_DIR/best.safetensors   the best prompt so far (by validation top-1, never test), with its head; at the end
                               of the run, its test numbers too
    OUT_DIR/last.safetensors   the latest checkpoint: the prompt and the head, plus (``state.*`` tensors) the
                               optimiser's state and every rank's RNG, so that a resume continues exactly
    OUT_DIR/history.json       the run's events so far (:func:`~visual_prompting.train_config.history_record`)

Both are ordinary prompt files (:mod:`visual_prompting.prompt_file`): either one can be evaluated, shared or pushed.
Each file is written atomically. Under torchrun rank 0 alone writes, and what it reads reaches the other ranks
(:func:`~visual_prompting.distributed.read_on_main`), so the folder need only exist on its machine.

:class:`RunFiles` is the one place that knows this layout; the trainer asks it to save and to resume, and a test
can hand the trainer one of its own (e.g. to see every write). Files of earlier versions keep resuming:

* ``best_val_top1`` of -1.0 in a last file meant "no evaluation yet" (now null);
* a last file without ``history_len`` owns the whole history.json; one without ``state.rng`` leaves the RNG as is;
* the head's no-prompt baseline mapping was kept in ``metrics["baseline_mapping"]``; it is now the head's own
  ``head["baseline_mapping"]`` (:func:`~visual_prompting.prompt_file.upgrade_metadata` moves it on every read,
  since prompts in zoos and on the Hub have it too).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .distributed import SINGLE, Ranks, main_has, rank_seed, read_on_main, rng_states
from .errors import VPError
from .prompt_file import PromptFile, build_metadata, load_prompt, parse_json, save_prompt
from .utils import write_text_atomic

BEST, LAST, HISTORY = "best.safetensors", "last.safetensors", "history.json"
RESUME_SAME = ("optimizer", "label_mapping")  # settings a run resumes only with (its optimiser state, its mapping)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-parameter state of ``optimizer`` as flat tensors, keyed by the parameter's position in ``params``:
    ``momentum.<i>`` for a momentum buffer (the key prompt checkpoints already use) and ``optim.<i>.<name>`` for
    anything else (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``). Numbers become 0-d tensors."""
    out = {}
    for i, p in enumerate(params):
        for k, v in optimizer.state.get(p, {}).items():
            if v is None:
                continue
            t = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            out[f"momentum.{i}" if k == "momentum_buffer" else f"optim.{i}.{k}"] = t
    return out


def load_optimizer_state_tensors(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor],
                                 tensors: dict[str, torch.Tensor]) -> None:
    """Put state written by :func:`optimizer_state_tensors` back (other keys, e.g. ``rng``, are ignored)."""
    params = list(params)
    for key, v in tensors.items():
        parts = key.split(".")
        if parts[0] == "momentum" and len(parts) == 2:
            i, name = int(parts[1]), "momentum_buffer"
        elif parts[0] == "optim" and len(parts) == 3:
            i, name = int(parts[1]), parts[2]
        else:
            continue
        if i >= len(params):
            raise VPError(f"Optimizer state {key!r} is for parameter {i}, but there are {len(params)}.")
        p = params[i]
        if name == "step":  # Adam keeps its step count as a float32 scalar on the CPU unless capturable
            optimizer.state[p][name] = v.to(torch.float32)
        else:
            optimizer.state[p][name] = v.to(p.device)


@dataclass
class Resumed:
    """Where a resumed run picks up: its step, its best and no-prompt validation numbers, its history so far."""

    step: int
    best_val: float | None
    zero_shot_val: float | None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0  # steps and validations so far (a time budget counts them)


class RunFiles:
    """The files of one run in ``out_dir`` (see the module's docstring). :meth:`describe_run` tells it what every
    file's metadata says about the run (backbone, classes, dataset, settings) and which process this is."""

    def __init__(self, out_dir):
        self.out_dir = str(out_dir)
        self.best_path = os.path.join(self.out_dir, BEST)
        self.last_path = os.path.join(self.out_dir, LAST)
        self.history_path = os.path.join(self.out_dir, HISTORY)
        self.ranks: Ranks = SINGLE
        self.run_meta: dict = {}

    def describe_run(self, ranks: Ranks = SINGLE, **run_meta) -> None:
        """``run_meta``: :func:`~visual_prompting.prompt_file.build_metadata`'s keyword arguments that stay the same
        all run (``backbone``, ``class_names``, ``dataset``, ``train_config``, ``distributed``)."""
        self.ranks, self.run_meta = ranks, dict(run_meta)
        if ranks.is_main:
            if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
                raise VPError(f"The output folder {self.out_dir} is a file; give --out-dir a folder (new or a run's).")
            os.makedirs(self.out_dir, exist_ok=True)

    # -- writing (rank 0 alone; every write goes through _write_prompt / _write_text) ----------------------------
    def _write_prompt(self, path: str, prompter, meta: dict, **tensors) -> None:
        save_prompt(path, prompter, meta, **tensors)

    def _write_text(self, path: str, text: str) -> None:
        write_text_atomic(path, text)

    def metadata(self, prompter, head, metrics: dict) -> dict:
        return build_metadata(prompter, head=head.describe(), metrics=metrics, **self.run_meta)

    def save_best(self, prompter, head, *, step: int, val_top1: float, zero_shot_val: float | None) -> None:
        if not self.ranks.is_main:
            return
        metrics = {"val_top1": val_top1, "zero_shot_val_top1": zero_shot_val, "step": step}
        self._write_prompt(self.best_path, prompter, self.metadata(prompter, head, metrics),
                           head=head.state_tensors())

    def save_last(self, prompter, head, optimizer, params: list[torch.Tensor], *, step: int,
                  best_val: float | None, zero_shot_val: float | None, history: list[dict],
                  train_seconds: float = 0.0) -> None:
        """The checkpoint to resume from. Every rank calls it (each rank's RNG is gathered); rank 0 writes.

        Two files, each written atomically, and a kill can land between them: the history goes first and the
        checkpoint records how much of it is its own, so a resume from the checkpoint before drops the rest (it would
        otherwise lose the evaluation that came between, which a resume does not take again)."""
        state = optimizer_state_tensors(optimizer, params)
        state["rng"] = torch.get_rng_state()
        if self.ranks.distributed:  # every rank's RNG (its own augmentation draws), so a resume continues them
            for r, b in enumerate(rng_states()):
                if r:
                    state[f"rng_rank{r}"] = torch.frombuffer(bytearray(b), dtype=torch.uint8)
        if not self.ranks.is_main:
            return
        self._write_text(self.history_path, json.dumps(history))
        metrics = {"step": step, "best_val_top1": best_val, "zero_shot_val_top1": zero_shot_val,
                   "history_len": len(history), "train_seconds": train_seconds}
        self._write_prompt(self.last_path, prompter, self.metadata(prompter, head, metrics), state=state,
                           head=head.state_tensors())

    def save_tested(self, pf: PromptFile, metrics: dict) -> None:
        """The best prompt again, its metrics now with the test numbers (the end of a run)."""
        if self.ranks.is_main:
            self._write_prompt(self.best_path, pf.prompter, {**pf.meta, "metrics": metrics}, head=pf.head)

    def discard(self) -> None:
        """A run that kept nothing: its folder goes if it is empty (files from before are never touched)."""
        if self.ranks.is_main:
            try:
                os.rmdir(self.out_dir)
            except OSError:
                pass  # not empty (an earlier run's files) or already gone

    # -- reading (rank 0 reads; every rank gets what it read) ---------------------------------------------------
    def has_best(self) -> bool:
        return main_has(self.best_path, self.ranks)

    def read(self, path: str) -> PromptFile | None:
        """The prompt file at ``path`` as rank 0 reads it, on every rank; None when there is none."""
        if not self.ranks.distributed:
            return load_prompt(path) if os.path.isfile(path) else None
        data = read_on_main(path, self.ranks)
        if not data:
            return None
        with tempfile.TemporaryDirectory(prefix="vp-rank-") as tmp:  # the file as rank 0 read it, whatever happens to it
            copy_path = os.path.join(tmp, os.path.basename(path))
            with open(copy_path, "wb") as f:
                f.write(data)
            return load_prompt(copy_path)

    def read_best(self) -> PromptFile | None:
        return self.read(self.best_path)

    def _history(self, text: bytes | None, length) -> list[dict]:
        """history.json's records up to a checkpoint (its own ``length`` of them); a file that is not a list of
        records (broken by hand, or nested absurdly) is a plain error, never Python's own."""
        if text is None:
            return []
        history = parse_json(text.decode("utf-8", "replace"), self.history_path)
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise VPError(f"{self.history_path} is not a run history (a list of records); use a new --out-dir.")
        return history[:length] if isinstance(length, int) else history

    def resume(self, prompter, head, optimizer, params: list[torch.Tensor], backbone_spec: str) -> Resumed | None:
        """Load the last checkpoint into ``prompter``, ``head``, ``optimizer`` and this process's RNG; where the run
        picks up, or None when there is no checkpoint yet."""
        pf = self.read(self.last_path)
        if pf is None:
            return None
        if pf.meta["prompter"] != prompter.cfg.to_dict() or pf.meta["backbone"]["spec"] != backbone_spec:
            raise VPError(f"{self.last_path} was made with another prompter or backbone; use a new --out-dir.")
        was, now = pf.meta.get("train_config") or {}, self.run_meta.get("train_config") or {}
        other = [f"{k.replace('_', ' ')} {was[k]!r:.40} (this run: {now[k]!r:.40})" for k in RESUME_SAME
                 if k in was and k in now and was[k] != now[k]]
        if "class_names" in self.run_meta and pf.meta["class_names"] != self.run_meta["class_names"]:
            other.append(f"{len(pf.meta['class_names'])} other classes (this run: {len(self.run_meta['class_names'])})")
        if other:  # the optimiser's state or the mapping would not fit this run
            raise VPError(f"{self.last_path} was made with {'; '.join(other)}; resume with the same settings or use a "
                          "new --out-dir.")
        with torch.no_grad():
            for p, q in zip(prompter.parameters(), pf.prompter.parameters()):
                p.copy_(q.to(p.device))
        head.restore(pf.meta["head"], pf.head)
        load_optimizer_state_tensors(optimizer, params, pf.state)
        m = pf.meta["metrics"]
        step = int(m["step"])
        ranks = self.ranks
        if ranks.distributed and not ranks.is_main:
            own = pf.state.get(f"rng_rank{ranks.rank}")
            if own is not None:
                torch.set_rng_state(own)
            else:  # a checkpoint from fewer processes: a fresh stream of this rank's own
                seed = int(self.run_meta.get("train_config", {}).get("seed", 0))
                torch.manual_seed(rank_seed(seed, ranks.rank) + step)
        elif "rng" in pf.state:
            torch.set_rng_state(pf.state["rng"])
        best = m.get("best_val_top1")
        text = read_on_main(self.history_path, ranks)
        # the records up to this checkpoint (a later checkpoint's history may be on disk)
        history = self._history(text, m.get("history_len"))
        return Resumed(step, None if best is None or best < 0 else float(best),  # -1.0: "none yet" in old files
                       m.get("zero_shot_val_top1"), history, float(m.get("train_seconds") or 0.0))
