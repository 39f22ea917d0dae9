"""Training on several processes: torchrun starts 2 CPU processes (gloo) that train one prompt.

* Two processes train the prompt one process trains with the same global batch and seed (within 1e-5): the same
  global batch order, each rank a slice of each batch, the gradient averaged across ranks before the step rule
  (SGD in the paper's units here: the std**2 scaling comes after the all-reduce), label-mapping counts and
  evaluation counts summed. No augmentation (``--recipe paper``: augment none).
* Rank 0 alone writes files (a probe in tests/_torchrun_worker.py logs each write with its rank).
* Ctrl-C (SIGINT to torchrun, which passes it on to its processes and their loader workers) stops every rank at
  the same step, and ``--resume`` then ends where the uninterrupted run ends.
* A folder larger than the cache limit streams through DataLoader workers, each rank decoding only its own
  images, every image once per epoch across the ranks.

Small on purpose: a generated folder of 48 + 12 tiny images, EfficientNet-Lite0 at 32 px, a few steps of 8."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visual_prompting.distributed import ShardedBatchSampler, batch_indices, check_divisible, global_batches, Ranks
from visual_prompting.errors import VPError
from visual_prompting.prompt_file import load_prompt

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "_torchrun_worker.py"
STEPS = 10


def args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--recipe", "paper", "--model", "effnet-lite0@32", "--dataset", str(folder), "--steps",
            str(STEPS), "--batch-size", "8", "--eval-every", "3", "--device", "cpu", "--quiet", "--out-dir", str(out),
            *extra]


def torchrun_cmd(argv: list[str], nproc: int = 2, worker: bool = True) -> list[str]:
    entry = [str(WORKER)] if worker else ["-m", "visual_prompting"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *entry, *argv]


def env(**probes) -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    e.update({k: str(v) for k, v in probes.items()})
    return e


def torchrun(argv, timeout=240, worker=True, **probes) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(torchrun_cmd(argv, worker=worker), cwd=REPO, env=env(**probes), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # what the run had printed (a hang once left nothing to read)
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x for x in (e.stdout, e.stderr) if x)
        pytest.fail(f"torchrun did not end within {timeout} s; its output:\n{out[-3000:]}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes, 16 train + 4 test images each (16 px PNGs: a class colour plus noise). The train split keeps 43
    after validation's 5: 5 global batches of 8 and one of 3 per epoch."""
    root = tmp_path_factory.mktemp("dist") / "colours"
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for c, col in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = (np.array(col)[None, None] * 0.6 + rng.integers(0, 100, (16, 16, 3))).clip(0, 255)
                Image.fromarray(a.astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def two_ranks(folder, tmp_path_factory):
    """An uninterrupted 2-process run, with every file write logged by rank."""
    out = tmp_path_factory.mktemp("two") / "run"
    writes = out.parent / "writes.log"
    r = torchrun(args(folder, out), VP_PROBE_WRITES=writes)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, writes, r


def params(path: Path) -> list[torch.Tensor]:
    return [p.detach().clone() for p in load_prompt(path).prompter.parameters()]


def evals(out: Path) -> list[tuple]:
    return [(r["step"], r["val_top1"]) for r in json.loads((out / "history.json").read_text()) if r["kind"] == "eval"]


def assert_resumed_run_ends_like(r: subprocess.CompletedProcess, out: Path, ref: Path) -> None:
    """The resumed run ``r`` into ``out`` ended where the uninterrupted run in ``ref`` ended: prompts, step, evals."""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("best.safetensors", "last.safetensors"):
        for a, b in zip(params(ref / name), params(out / name)):
            assert torch.allclose(a, b, atol=1e-6), name
    assert load_prompt(out / "last.safetensors").meta["metrics"]["step"] == STEPS
    assert evals(out) == evals(ref)


def test_two_processes_train_the_prompt_one_process_trains_and_rank_0_alone_writes(folder, two_ranks, tmp_path):
    out2, writes, r = two_ranks
    from visual_prompting.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args(folder, tmp_path / "one")) == 0
    finally:
        torch.set_num_threads(threads)
    out1 = tmp_path / "one"
    for name in ("best.safetensors", "last.safetensors"):
        a, b = load_prompt(out1 / name), load_prompt(out2 / name)
        for p, q in zip(a.prompter.parameters(), b.prompter.parameters()):
            assert (p - q).abs().max() < 1e-5, name
            assert p.abs().max() > 0.01  # it trained: the prompt moved away from zero
        assert a.meta["head"]["mapping"] == b.meta["head"]["mapping"]  # refitted at each epoch from summed counts
        assert a.meta["metrics"]["step"] == b.meta["metrics"]["step"]
        assert a.meta["distributed"] == {"world_size": 1, "per_rank_batch": 8}
        assert b.meta["distributed"] == {"world_size": 2, "per_rank_batch": 4}
    m1, m2 = load_prompt(out1 / "best.safetensors").meta["metrics"], load_prompt(out2 / "best.safetensors").meta["metrics"]
    for k in ("test_top1", "test_top5", "test_n", "zero_shot_val_top1", "test_top1_no_prompt"):
        assert m1[k] == m2[k], k  # evaluation counts summed over the ranks: the whole split's numbers
    assert m2["test_n"] == 12
    assert evals(out1) == evals(out2) and len(evals(out2)) == 4  # steps 3, 6, 9, 10

    lines = [ln.split(" ", 1) for ln in writes.read_text().splitlines()]
    assert lines and {rank for rank, _ in lines} == {"0"}, lines  # rank 1 never wrote a file
    assert {Path(p).name for _, p in lines} == {"best.safetensors", "last.safetensors", "history.json"}
    assert sorted(p.name for p in out2.iterdir()) == ["best.safetensors", "history.json", "last.safetensors"]
    assert r.stdout.count("best prompt:") == 1  # rank 0 alone reports


def test_ctrl_c_stops_every_rank_at_one_step_and_resume_ends_where_the_uninterrupted_run_ends(folder, two_ranks,
                                                                                               tmp_path):
    ref = two_ranks[0]
    out = tmp_path / "run"
    # streamed (DataLoader workers, which leave Ctrl-C to their process) and slow (rank 0 sleeps at each step
    # event, the others wait for it at the next all-reduce); the reference is held in memory: the same pixels
    stream = ("--cache-gib", "0", "--num-workers", "1")
    p = subprocess.Popen(torchrun_cmd(args(folder, out, *stream)), cwd=REPO, env=env(VP_PROBE_STEP_DELAY=0.3),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         # Ctrl-C as in a terminal, even when pytest runs in the background (`cmd &` starts it with
                         # SIGINT ignored, inherited by every process, and a run leaves an ignored SIGINT ignored)
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.safetensors").is_file():  # the first checkpoint (step 3)
            assert p.poll() is None and time.monotonic() < deadline, p.stdout.read() if p.poll() is not None else ""
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)  # torchrun passes it on to every process
        log, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0, log[-3000:]
    assert "Stopped (Ctrl-C) at step" in log, log[-3000:]
    stopped = load_prompt(out / "last.safetensors").meta["metrics"]["step"]
    assert 3 <= stopped < STEPS, stopped  # it stopped early, with a checkpoint of the step it stopped at
    assert load_prompt(out / "best.safetensors").meta["metrics"]["test_n"] == 12  # finished cleanly: tested

    r = torchrun(args(folder, out, "--resume", *stream), worker=False)  # the entry point: torchrun -m visual_prompting
    assert_resumed_run_ends_like(r, out, ref)


def test_sigkill_of_every_process_mid_run_then_resume_ends_where_the_uninterrupted_run_ends(folder, two_ranks,
                                                                                          tmp_path):
    """The whole torchrun group killed at once (SIGKILL: no handler runs, no rank says goodbye) after the first
    checkpoint: the files on disk load, and ``--resume`` with 2 processes ends where the uninterrupted run ends."""
    ref = two_ranks[0]
    out = tmp_path / "killed"
    p = subprocess.Popen(torchrun_cmd(args(folder, out)), cwd=REPO, env=env(VP_PROBE_STEP_DELAY=0.3),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.safetensors").is_file():  # the first checkpoint (step 3)
            assert p.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        time.sleep(0.2)  # somewhere in the steps after it
        os.killpg(p.pid, signal.SIGKILL)  # torchrun and both ranks at once
        p.wait(60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    killed_at = load_prompt(out / "last.safetensors").meta["metrics"]["step"]
    assert 3 <= killed_at < STEPS, killed_at
    json.loads((out / "history.json").read_text())  # never half a file

    r = torchrun(args(folder, out, "--resume"))
    assert_resumed_run_ends_like(r, out, ref)


def test_a_folder_over_the_cache_limit_streams_and_each_rank_decodes_its_own_images_once_per_epoch(folder, tmp_path):
    seen = tmp_path / "seen.log"
    epoch = global_batches(43, 8, 2)  # 6: one epoch exactly
    argv = args(folder, tmp_path / "run", "--cache-gib", "0", "--num-workers", "1")
    argv[argv.index("--steps") + 1] = str(epoch)
    r = torchrun(argv, VP_PROBE_SEEN=seen)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    by_rank = {"0": [], "1": []}
    for line in seen.read_text().splitlines():
        rank, i = line.split()
        by_rank[rank].append(int(i))
    assert by_rank["0"] and by_rank["1"]
    for rank, idx in by_rank.items():
        assert max(Counter(idx).values()) == 1, rank  # no image twice on a rank
    assert not set(by_rank["0"]) & set(by_rank["1"])  # each rank its own images
    assert sorted(by_rank["0"] + by_rank["1"]) == list(range(43))  # together: every image once
    assert load_prompt(tmp_path / "run" / "best.safetensors").meta["metrics"]["test_n"] == 12


# -- the pieces, in one process -------------------------------------------------------------------------------

@pytest.mark.parametrize("n,batch", [(43, 8), (40, 8), (41, 8), (7, 4)])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_slice_the_global_batches_of_one_process(n, batch, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    one = list(batch_indices(order, batch))
    parts = [list(batch_indices(order, batch, (r, world))) for r in range(world)]
    assert len(one) == -(-n // batch) and all(len(p) == global_batches(n, batch, world) for p in parts)
    for b in range(global_batches(n, batch, world)):
        joined = torch.cat([parts[r][b] for r in range(world)])
        assert torch.equal(joined, one[b])  # the ranks' slices, in rank order, are the one-process batch
        assert all(len(parts[r][b]) >= 1 for r in range(world))
    dropped = n - sum(len(i) for p in parts for i in p)
    assert dropped == (n % batch if 0 < n % batch < world else 0)  # only a tail smaller than the ranks
    sampler = ShardedBatchSampler(order, batch, 1 % world, world, start=1)
    assert list(sampler) == [t.tolist() for t in parts[1 % world][1:]] and len(sampler) == len(parts[0]) - 1


def test_the_global_batch_must_split_evenly():
    assert check_divisible(256, Ranks(0, 4)) == 64
    with pytest.raises(VPError, match="multiple of 3"):
        check_divisible(256, Ranks(0, 3))


def test_streamed_loader_workers_are_forked_by_a_fork_server_under_torchrun_and_by_the_process_alone(tmp_path):
    """A process that runs gloo's threads does not fork its decoding workers itself (a fork copies locks those
    threads hold: a resume once waited for ever on a worker that never delivered its first batch); one process
    alone still forks them. Seen from inside the workers: their parent process."""
    (tmp_path / "ppid_images.py").write_text(
        "import os\nimport torch\nfrom PIL import Image\n\n\n"
        "class PpidImages(torch.utils.data.Dataset):  # label: the decoding process's parent\n"
        "    def __len__(self):\n        return 4\n\n"
        "    def __getitem__(self, i):\n        return Image.new('RGB', (8, 8)), os.getppid()\n")
    script = tmp_path / "probe.py"
    script.write_text(f"""
import json, os, sys
import torch
import torch.distributed as dist
from ppid_images import PpidImages
from visual_prompting.data import StreamImageSet


def parents():
    s = StreamImageSet(PpidImages(), torch.zeros(4, dtype=torch.long), ["a"], "p", 8, num_workers=1)
    return sorted({{int(v) for _, y in s.batches(2) for v in y}})


if __name__ == "__main__":  # the fork server's workers import this script again
    alone = parents()
    dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
    ranked = parents()
    dist.destroy_process_group()
    print(json.dumps([os.getpid(), alone, ranked]))
""")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**env(), "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"})
    assert r.returncode == 0, r.stderr[-3000:]
    pid, alone, ranked = json.loads(r.stdout.strip().splitlines()[-1])
    assert alone == [pid]  # forked by the process itself
    assert len(ranked) == 1 and ranked != [pid]  # by one other process: the fork server


@pytest.mark.parametrize("group", [False, True])
def test_the_cli_process_ends_with_its_code_and_its_output_flushed(tmp_path, group):
    """``python -m visual_prompting`` ends through ``end_process``: outside a process group a plain exit (atexit
    handlers run); in one (here a 1-process gloo group), the group left and ``os._exit`` with the same code after
    flushing what was printed - the interpreter's teardown, where a torchrun rank sometimes aborted (SIGABRT) after a
    good run, is skipped, so an atexit handler does not run."""
    code = (
        "import atexit, sys\n"
        "import torch.distributed as dist\n"
        "from visual_prompting.distributed import end_process\n"
        f"if {group}:\n"
        f"    dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "print('unflushed line', end='')\n"
        "end_process(3)\n"
        "print('not reached')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr[-2000:]
    assert r.stdout.startswith("unflushed line") and "not reached" not in r.stdout
    assert ("atexit ran" in r.stdout) is (not group)
