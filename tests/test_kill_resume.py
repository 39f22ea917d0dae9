"""Killed runs lose nothing: a CLI training run (``visual_prompting.cli.main(["train", ...])`` in a child process) is
killed with SIGKILL or SIGINT at random moments and resumed with ``--resume``, again and again, until it finishes.
After every kill the best and last prompt files that exist load (atomic writes: never half a file), the run history
is valid JSON, and the resumed run ends exactly where an uninterrupted run with the same settings ends.

The children are forked from this process (the imports are already done: a kill round costs the run's own work,
not seconds of importing torch), each with one thread. Small on purpose: EfficientNet-Lite0 at 32 px, the bundled
subset's first 2,700 train images, 160 steps of 32 with a checkpoint every 8 steps. Each round kills at a random
point of the run's progress, at most two evaluations (16 steps) on, so a run needs many rounds to finish."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from visual_prompting.prompt_file import load_prompt

ARGS = ["train", "--model", "effnet-lite0@32", "--dataset", "fashion_mnist_subset", "--steps", "160",
        "--batch-size", "32", "--eval-every", "8", "--device", "cpu", "--quiet", "--seed", "3"]
MAX_ROUNDS = 60


def _child(argv: list[str], log: str) -> None:
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, however pytest was started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held back since the fork (start()): take it now
        torch.set_num_threads(1)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # pytest's capture replaced sys.stdout/err with objects of its own: write to the log's file descriptors,
        # line by line (the test follows the run's progress by its evaluation lines)
        sys.stdout, sys.stderr = (open(f, "w", buffering=1, closefd=False) for f in (1, 2))
        from visual_prompting.cli import main

        code = main(argv)  # the CLI turns a Ctrl-C into 130 itself, from its first line on
        sys.stdout.flush()
        sys.stderr.flush()
    except KeyboardInterrupt:
        # a Ctrl-C that lands while this child is still setting up, before main() runs (a kill at the very start of a
        # round): a real `python -m visual_prompting` process interrupted while it starts ends by SIGINT, 130 to the
        # shell, too (a kill at that moment once ended the child with 1, an uncaught exception, and failed the test)
        code = 130
    os._exit(code)


def start(out: Path, resume: bool) -> mp.Process:
    argv = [*ARGS, "--out-dir", str(out), *(["--resume"] if resume else [])]
    p = mp.get_context("fork").Process(target=_child, args=(argv, str(out.parent / f"{out.name}.log")))
    # the child starts with SIGINT held back until _child() can take it: a kill in the first instants after the fork
    # would otherwise land in multiprocessing's start-up code, which is not the program under test
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        p.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return p


def check_files(out: Path) -> int:
    """Every prompt file there loads and is finite; history.json parses. Returns the last checkpoint's step."""
    step = 0
    for name in ("best.safetensors", "last.safetensors"):
        if (out / name).is_file():
            pf = load_prompt(out / name)
            assert all(torch.isfinite(p).all() for p in pf.prompter.parameters())
            if name == "last.safetensors":
                step = int(pf.meta["metrics"]["step"])
    if (out / "history.json").is_file():
        assert isinstance(json.loads((out / "history.json").read_text()), list)
    return step


EVAL_LINE = re.compile(r"^step \d+: val top-1", re.M)


def evals_after(log: Path, offset: int) -> int:
    """How many evaluation lines ("step N: val top-1 ...", every 8 steps) the log has past byte ``offset``."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return len(EVAL_LINE.findall(f.read().decode("utf-8", "replace")))
    except FileNotFoundError:
        return 0


def watch(p: mp.Process, log: Path, offset: int, until, seen: list[float], timeout: float = 300.0) -> None:
    """Polls the run's log while ``p`` lives until ``until(number of evaluation lines)`` holds; appends to ``seen``
    the moment each new evaluation line was seen."""
    t0 = time.monotonic()
    while p.is_alive() and time.monotonic() - t0 < timeout:
        n = evals_after(log, offset)
        seen += [time.monotonic()] * (n - len(seen))
        if until(n):
            break
        time.sleep(0.005)


def evals(history: list[dict]) -> list[tuple]:
    """A run history's evaluations: (step, validation top-1)."""
    return [(r["step"], r["val_top1"]) for r in history if r.get("kind") == "eval"]


def tiny_trainer(out, splits, cache, callbacks=(), **kw):
    """8 steps of 32 on EfficientNet-Lite0 at 32 px, evaluated every 4 steps, in this process."""
    from visual_prompting import TrainConfig
    from visual_prompting.training import Trainer

    cfg = TrainConfig(model="effnet-lite0@32", dataset="fashion_mnist_subset", batch_size=32, steps=8, eval_every=4,
                      device="cpu", seed=0, out_dir=str(out), num_workers=0, label_mapping="frequency", **kw)
    return Trainer(cfg, cache=cache, splits=splits, callbacks=list(callbacks))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_random_kills_and_resumes_end_where_an_uninterrupted_run_ends(tmp_path):
    """The kills are placed by the run's progress, not by the clock (a clock measured on one run lands elsewhere
    when the machine's load changes: under a busy CI the run once finished between two kills): each round waits
    for 0 or 1 evaluation lines, then a random part of an evaluation interval, and is killed at the latest when
    the next evaluation line appears. So a round moves the run on by at most 2 evaluations (16 steps, and the step
    a Ctrl-C finishes): start-up, steps and checkpoint writes (right after an evaluation line) are all hit, and
    with this seed's draws the run cannot finish in fewer than 10 rounds."""
    ref_log = tmp_path / "ref.log"
    ref = start(tmp_path / "ref", resume=False)
    seen = []
    watch(ref, ref_log, 0, lambda n: False, seen)
    ref.join(300)
    assert ref.exitcode == 0, ref_log.read_text()
    gaps = [b - a for a, b in zip(seen, seen[1:])]  # the time between two evaluations (8 steps), updated as it goes
    assert len(seen) == 20, ref_log.read_text()[-3000:]

    rng = random.Random(0)
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    kinds, steps, finished = [], [], False
    for k in range(MAX_ROUNDS):  # kill, resume, kill ... until the run gets to its end between two kills
        offset = log.stat().st_size if log.exists() else 0
        wait, part = rng.choice([0, 1, 1]), rng.random()
        p = start(out, resume=k > 0)
        seen = []
        watch(p, log, offset, lambda n: n >= wait, seen)
        gap = sorted(gaps)[len(gaps) // 2]
        t_kill = time.monotonic() + part * gap
        watch(p, log, offset, lambda n: n > wait or time.monotonic() >= t_kill, seen)
        gaps += [b - a for a, b in zip(seen, seen[1:])]
        if not p.is_alive():
            p.join()
            assert p.exitcode == 0, log.read_text()[-3000:]
            finished = True
            break
        sig = rng.choice([signal.SIGKILL, signal.SIGINT])
        os.kill(p.pid, sig)
        p.join(120)
        assert p.exitcode is not None, "the child did not stop"
        if sig == signal.SIGINT:  # Ctrl-C: a clean stop (130), or the run had just finished (0)
            assert p.exitcode in (0, 130), p.exitcode
            finished = p.exitcode == 0
        kinds.append(sig.name)
        steps.append(check_files(out))
        if finished:
            break
    if not finished:
        final = start(out, resume=True)
        final.join(300)
        assert final.exitcode == 0, log.read_text()[-3000:]

    print(f"{len(kinds)} kills ({kinds.count('SIGKILL')} SIGKILL, {kinds.count('SIGINT')} SIGINT); last checkpoint "
          f"step after each: {steps}")
    assert len(kinds) >= 10 and {"SIGKILL", "SIGINT"} <= set(kinds), kinds  # >= 10 kills of both kinds landed
    assert len(set(steps)) > 3, steps  # they landed at many points of the run, not all at its start
    a, b = load_prompt(tmp_path / "ref" / "best.safetensors"), load_prompt(out / "best.safetensors")
    la, lb = load_prompt(tmp_path / "ref" / "last.safetensors"), load_prompt(out / "last.safetensors")
    for x, y in ((a, b), (la, lb)):
        for p, q in zip(x.prompter.parameters(), y.prompter.parameters()):
            assert torch.allclose(p, q, atol=1e-6)
    assert b.meta["metrics"]["step"] == a.meta["metrics"]["step"]
    assert b.meta["metrics"]["test_top1"] == a.meta["metrics"]["test_top1"]
    assert b.meta["head"]["mapping"] == a.meta["head"]["mapping"]
    hist_a = json.loads((tmp_path / "ref" / "history.json").read_text())
    hist_b = json.loads((out / "history.json").read_text())
    assert evals(hist_b) == evals(hist_a)


@pytest.fixture
def terminal_sigint():
    """SIGINT as in a terminal (pytest started in the background, `cmd &`, inherits it ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_stops_between_steps_and_the_resume_is_exact(tmp_path, terminal_sigint):
    """SIGINT in the middle of a step (here: sent to this main thread from inside step 3, after the optimiser's
    update and before the step is counted) is taken at the next step boundary: the last checkpoint is that step's,
    and resuming ends where an uninterrupted run ends (taken mid-step, step 3 would be replayed on resume)."""
    from visual_prompting import BackboneCache
    from visual_prompting.data import DataSplits, load_splits

    full = load_splits("fashion_mnist_subset", image_size=32)
    splits = DataSplits(full.train.subset(torch.arange(128)), full.val.subset(torch.arange(64)),
                        full.test.subset(torch.arange(64)), full.class_names, full.name)
    cache = BackboneCache()

    def trainer(out, **kw):
        return tiny_trainer(out, splits, cache, optimizer="adam", **kw)

    ref = trainer(tmp_path / "ref").run()
    t = trainer(tmp_path / "run")
    real, calls = t.prompter.project_, {"n": 0}

    def project_():  # runs inside a step, after the optimiser's update and before the step is counted
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        real()
    t.prompter.project_ = project_
    first = t.run()
    assert first.interrupted and first.stop_reason.startswith("Stopped (Ctrl-C) at step")
    assert load_prompt(first.last_path).meta["metrics"]["step"] == first.steps_done < 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run put the handler back
    # stopped before the first evaluation (step 4): the kept prompt was validated, and that number is reported
    kept = load_prompt(first.best_path).meta["metrics"]["val_top1"]
    assert 0.0 <= kept <= 1.0 and first.metrics["best_val_top1"] == kept
    again = trainer(tmp_path / "run", resume=True).run()
    a, b = load_prompt(ref.last_path), load_prompt(again.last_path)
    assert torch.equal(a.prompter.delta(), b.prompter.delta())
    assert again.metrics["test_top1"] == ref.metrics["test_top1"]


def test_an_ignored_sigint_stays_ignored_while_training(tmp_path, small):
    """A run started with SIGINT ignored on purpose (`nohup ... &`) does not take Ctrl-C over for itself."""
    from visual_prompting import TrainConfig
    from visual_prompting.training import Trainer

    seen = []
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cfg = TrainConfig(model="effnet-lite0@32", dataset="fashion_mnist_subset", batch_size=16, steps=2, eval_every=2,
                          device="cpu", out_dir=str(tmp_path), num_workers=0, label_mapping="first_k")
        Trainer(cfg, splits=small, callbacks=[lambda ev: seen.append(signal.getsignal(signal.SIGINT))]).run()
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen and all(h is signal.SIG_IGN for h in seen)


def test_a_kill_between_writing_the_history_and_the_checkpoint_loses_no_evaluation(tmp_path, small):
    """A checkpoint is two files (history.json, then last.safetensors), and a kill can land between the two writes:
    the history on disk is then a checkpoint ahead. The resume keeps only the checkpoint's own part of it, and takes
    the evaluation after it again, once: its evaluations are the uninterrupted run's (seen once in the random-kill
    test above: the evaluation of the step between was missing)."""
    from visual_prompting import BackboneCache

    cache = BackboneCache()

    def trainer(out, callbacks=(), **kw):
        return tiny_trainer(out, small, cache, callbacks, **kw)

    ref = trainer(tmp_path / "ref").run()
    out = tmp_path / "run"

    def keep_step4_checkpoint(ev):  # step 8's evaluation comes before its checkpoint: last is step 4's here
        if ev.kind == "eval" and ev.step == 8:
            shutil.copyfile(out / "last.safetensors", tmp_path / "last4.safetensors")
    trainer(out, [keep_step4_checkpoint]).run()
    assert load_prompt(tmp_path / "last4.safetensors").meta["metrics"]["step"] == 4
    shutil.copyfile(tmp_path / "last4.safetensors", out / "last.safetensors")  # the kill: history.json is newer
    again = trainer(out, resume=True).run()
    assert evals(again.history) == evals(json.loads((out / "history.json").read_text())) == evals(ref.history)
    assert len(evals(ref.history)) == 2


def test_a_ctrl_c_that_a_library_turns_into_another_error_still_ends_the_cli_as_interrupted(
        monkeypatch, capsys, terminal_sigint):
    """A Ctrl-C while the bundled subset loads came back from safetensors' ``get_tensor`` as a ValueError (a kill
    round of the test above ended with a traceback and exit 1): the CLI ends it as an interruption (130, "interrupted")
    all the same, and puts Python's handler back. The same error without a Ctrl-C is not hidden."""
    from visual_prompting import cli

    def load_while_ctrl_c():  # what the extension did: the KeyboardInterrupt raised inside it comes out as ValueError
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # (the handler runs before this returns)
        except KeyboardInterrupt:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None
        return 0

    monkeypatch.setattr(cli, "cmd_info", lambda args: load_while_ctrl_c())
    zoo_prompt = next((Path(__file__).resolve().parent.parent / "prompts_zoo").glob("*.safetensors"))
    assert cli.main(["info", str(zoo_prompt)]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def fails():
        raise ValueError("a real error")
    monkeypatch.setattr(cli, "cmd_info", lambda args: fails())
    with pytest.raises(ValueError, match="a real error"):
        cli.main(["info", str(zoo_prompt)])


def test_a_ctrl_c_that_a_library_swallows_while_the_run_prepares_still_stops_the_cli_run(tmp_path, terminal_sigint,
                                                                                         monkeypatch, capsys):
    """A Ctrl-C can land in library code that catches it and goes on (an ``except BaseException``, a finalizer:
    Python only prints "Exception ignored"). The CLI remembers it came and stops the run where the trainer next asks
    (while preparing, or at the next step), exit 130, instead of training on to the end (the random-kill test once
    saw a run that a SIGINT had hit while it resumed go on to its last step and exit 0)."""
    from visual_prompting import cli, training

    real = training.load_inputs

    def swallowing_load(*args, **kw):  # a library call that swallows the KeyboardInterrupt and returns normally
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here (it raises KeyboardInterrupt), not in the test's own code
        except KeyboardInterrupt:
            pass
        return real(*args, **kw)

    monkeypatch.setattr(training, "load_inputs", swallowing_load)
    out = tmp_path / "run"
    code = cli.main([*ARGS[:5], "--steps", "4", "--batch-size", "16", "--eval-every", "2", "--device", "cpu",
                     "--quiet", "--out-dir", str(out)])
    said = capsys.readouterr()
    assert code == 130, said
    assert "Stopped before the first step" in said.out, said
    assert not (out / "last.safetensors").exists()  # it did not train on to its end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the CLI put the handler back
