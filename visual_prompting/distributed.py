"""Several processes training one prompt (data parallelism), on torch.distributed as torchrun sets it up.

    torchrun --nproc_per_node=2 -m visual_prompting train --dataset cifar10 --batch-size 256 ...

torchrun (``python -m torch.distributed.run``) starts the processes, one per GPU (or CPU slot), on one machine or
several, and puts ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment;
:func:`init_from_env` joins them into one process group: NCCL on CUDA (each process on ``cuda:LOCAL_RANK``),
gloo otherwise. Outside torchrun (``WORLD_SIZE`` unset or 1) nothing is set up and every helper here is a no-op,
so one process runs exactly as it always has.

How the trainer uses it (the frozen backbone never communicates; there is no DDP wrapper because the only
trained numbers are the prompt's and a trained head's):

* every rank draws the same global batch order (same seed) and takes its own contiguous slice of each global
  batch (:func:`shard_indices`; :class:`ShardedBatchSampler` for sets decoded by DataLoader workers), so the
  global batch is the one a single process would take;
* after ``backward`` one all-reduce (:func:`reduce_step`) sums a flat buffer: each trained gradient weighted by
  the rank's share of the global batch, the loss and the correct count, and the ranks' stop votes. Every rank
  then holds the global batch's gradient, loss and accuracy, and the optimiser's rule (the std**2 scaling,
  Adam, l2sgd's norm) runs after it on the same numbers everywhere;
* counts (label mappings, evaluation) are summed (:func:`all_reduce_sum`), so every rank fits the same mapping and
  reads the same validation accuracy: the best-prompt choice is the same everywhere; a stop (Ctrl-C, Stop) is a
  vote summed in the step's all-reduce, so every rank stops at the same step;
* rank 0 alone writes files and reports; what it read from disk (a checkpoint to resume, the best prompt to
  test) reaches the others by :func:`broadcast_bytes`, so the output folder need only exist on its machine.
"""
from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import VPError


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank, how many there are, its rank on its machine, the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise VPError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number.") from None


def current() -> Ranks:
    """This process's :class:`Ranks` once :func:`init_from_env` joined a group, else :data:`SINGLE`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


def init_from_env(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun's environment describes (once per process; later calls reuse it) and
    return this process's ranks and device: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``. Outside
    torchrun: :data:`SINGLE` and ``device`` unchanged."""
    world = env_world_size()
    if world <= 1:
        return SINGLE, device
    import torch.distributed as dist

    if not dist.is_available():
        raise VPError("This PyTorch build has no torch.distributed; run one process (without torchrun).")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local)
        if device.index >= torch.cuda.device_count():
            raise VPError(f"Process {local} on this machine would use {device}, but only "
                          f"{torch.cuda.device_count()} GPU(s) are visible; start at most that many processes "
                          "per machine (--nproc_per_node).")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return current(), device


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int | None) -> None:
    """How ``python -m visual_prompting`` ends: ``sys.exit(code)``, and, in a process that joined a torchrun group,
    first a barrier (no rank leaves while another still talks to it; skipped after an error, when torchrun ends the
    others), the group left, the output flushed, then ``os._exit(code)``. The interpreter's own teardown is skipped
    there: under load a rank that had printed its results sometimes aborted in it ("terminate called without an
    active exception", SIGABRT, in C++ with no Python frame left), and torchrun then failed a good run."""
    import sys

    import torch.distributed as dist

    code = 0 if code is None else int(code)
    if not (dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    try:
        if code == 0:
            dist.barrier()
        _destroy()
    finally:
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _comm_device() -> torch.device:
    """Where a tensor must be for the group's backend (NCCL: this process's GPU)."""
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (a new tensor where ``t`` had to move for the backend; ``t`` itself when not
    distributed)."""
    if not current().distributed:
        return t
    import torch.distributed as dist

    work = t.to(_comm_device())
    work = work.clone() if work is t else work
    dist.all_reduce(work)
    return work.to(t.device)


def broadcast_bytes(data: bytes | None, src: int = 0) -> bytes:
    """``data`` as rank ``src`` has it, on every rank (others pass None). Raw bytes, never pickled."""
    r = current()
    if not r.distributed:
        return data or b""
    import torch.distributed as dist

    dev = _comm_device()
    n = torch.tensor([len(data) if r.rank == src and data else 0], dtype=torch.int64, device=dev)
    dist.broadcast(n, src)
    if int(n) == 0:
        return b""
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if r.rank == src
           else torch.empty(int(n), dtype=torch.uint8, device=dev))
    dist.broadcast(buf, src)
    return data if r.rank == src else buf.cpu().numpy().tobytes()


def all_gather_bytes(data: bytes) -> list[bytes]:
    """Every rank's ``data`` (any lengths), in rank order, on every rank."""
    r = current()
    if not r.distributed:
        return [data]
    import torch.distributed as dist

    dev = _comm_device()
    n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(r.world_size)]
    dist.all_gather(sizes, n)
    longest = max(int(s) for s in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8, device=dev)
    if data:
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev)
    out = [torch.empty_like(buf) for _ in range(r.world_size)]
    dist.all_gather(out, buf)
    return [o[: int(s)].cpu().numpy().tobytes() for o, s in zip(out, sizes)]


def read_on_main(path, ranks: Ranks) -> bytes | None:
    """The file at ``path`` as rank 0 reads it, on every rank (the others may not see its disk: several machines);
    None when rank 0 has no such file. One process: the file's bytes, if it is there."""
    if not ranks.distributed:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()
    data = None
    if ranks.is_main and os.path.isfile(path):
        with open(path, "rb") as f:
            data = b"F" + f.read()  # an empty file is still a file
    data = broadcast_bytes(data)
    return data[1:] if data else None


def main_has(path, ranks: Ranks) -> bool:
    """Whether rank 0 has the file at ``path`` (every rank gets its answer)."""
    if not ranks.distributed:
        return os.path.isfile(path)
    return broadcast_bytes(b"1" if ranks.is_main and os.path.isfile(path) else None) == b"1"


def barrier() -> None:
    if current().distributed:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def local_leader_first(ranks: Ranks):
    """The first process of each machine runs the block before the others on that machine do (a download or an
    unpacked cache is then made once per machine, not raced). A no-op for one process."""
    if ranks.distributed and ranks.local_rank != 0:
        barrier()
    try:
        yield
    finally:
        if ranks.distributed and ranks.local_rank == 0:
            barrier()


def check_divisible(global_batch: int, ranks: Ranks) -> int:
    """The per-rank batch: the global batch split evenly over the ranks, or a :class:`VPError` that says why not."""
    if global_batch % ranks.world_size:
        raise VPError(f"The batch size {global_batch} (the global batch, over all processes) cannot be split evenly "
                      f"over {ranks.world_size} processes; use a multiple of {ranks.world_size}.")
    return global_batch // ranks.world_size


def shard_indices(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous part of ``indices`` (sizes differ by at most one; the parts cover ``indices``
    once, in order)."""
    if world_size <= 1:
        return indices
    return torch.tensor_split(indices, world_size)[rank]


def global_batches(n: int, batch_size: int, world_size: int = 1) -> int:
    """How many global batches a pass over ``n`` items takes: ``ceil(n / batch_size)`` in one process. With
    several, a last batch with fewer items than processes is left out (some rank would get none): at most
    ``world_size - 1`` items of an epoch, the same ones on every rank."""
    full, tail = divmod(n, batch_size)
    return full + (1 if tail >= max(1, world_size) else 0)


def batch_indices(order: torch.Tensor, batch_size: int, shard: tuple[int, int] | None = None,
                  start: int = 0) -> Iterator[torch.Tensor]:
    """The indices of each batch of ``order`` from global batch ``start`` on: the whole batch, or with
    ``shard=(rank, world_size)`` that rank's slice of it (:func:`shard_indices`, :func:`global_batches`)."""
    rank, world = shard or (0, 1)
    for b in range(start, global_batches(len(order), batch_size, world)):
        yield shard_indices(order[b * batch_size : (b + 1) * batch_size], rank, world)


def rank_seed(seed: int, rank: int) -> int:
    """The global RNG's seed for rank ``rank`` > 0 after set-up (augmentations then draw different numbers on
    each rank; rank 0 keeps the one-process stream)."""
    return (seed * 1_000_003 + 7919 * rank) % (2**63 - 1)


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Batches of indices for a DataLoader: the global batches of ``batch_size`` over ``n`` items in ``order``
    (``torch.randperm(n, generator)`` when shuffling, the same draw as an in-memory set makes; else
    ``0..n-1``), of which this rank yields its own slice of each (:func:`batch_indices`), from global batch
    ``start`` on. Over an epoch the ranks together see every item exactly once (but a last batch smaller than
    the number of ranks: :func:`global_batches`)."""

    def __init__(self, order: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if batch_size < 1:
            raise VPError("The batch size must be at least 1.")
        self.order, self.batch_size, self.rank, self.world_size, self.start = order, batch_size, rank, world_size, start

    def __len__(self) -> int:
        return max(0, global_batches(len(self.order), self.batch_size, self.world_size) - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in batch_indices(self.order, self.batch_size, (self.rank, self.world_size), self.start):
            yield idx.tolist()


def reduce_step(params: list[torch.Tensor], loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                votes: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step's communication, one all-reduce: afterwards every rank's ``params[i].grad`` is the
    gradient of the mean loss over the *global* batch (each rank's gradient of its own mean, weighted by its
    share of the images), and it returns the global batch's mean loss and accuracy (0-d tensors on the device)
    and the summed ``votes`` (Ctrl-C, stop) as a 2-element tensor, left on the device: reading it waits for
    this step."""
    import torch.distributed as dist

    n = len(y)
    dev = loss.device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if n:
        tail = torch.stack([loss.detach().float() * n, (logits.argmax(1) == y).sum().float()])
    else:  # the mean over no images is NaN; its gradients are zeros already
        tail = torch.zeros(2, device=dev)
    extra = torch.empty(3, device=dev)  # filled in place: no copy from pageable host memory (it would wait for the
    extra[0], extra[1], extra[2] = float(n), float(votes[0]), float(votes[1])  # whole queued stream on a GPU)
    parts = [g.detach().reshape(-1).float() * n if n else torch.zeros(g.numel(), device=dev) for g in grads]
    flat = torch.cat([*parts, tail, extra])
    work = flat.to(_comm_device())
    dist.all_reduce(work)
    flat = work.to(dev)
    total = flat[-3].clamp(min=1.0)
    offset = 0
    for p, g in zip(params, grads):
        k = g.numel()
        new = (flat[offset : offset + k] / total).view_as(g).to(g.dtype)
        if p.grad is None:
            p.grad = new
        else:
            p.grad.copy_(new)
        offset += k
    return flat[-5] / total, flat[-4] / total, flat[-2:]


def rng_states() -> list[bytes]:
    """Every rank's CPU RNG state (for a checkpoint that resumes each rank's augmentation stream)."""
    return all_gather_bytes(torch.get_rng_state().numpy().tobytes())
