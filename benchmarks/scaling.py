"""Cost as work grows: training throughput against batch size, evaluation time against dataset size.

    python benchmarks/scaling.py                    # CPU: ~1-2 min on 2 cores (design estimate)
    python benchmarks/scaling.py --device cuda      # GPU: larger batches and sets, ~1 min (design estimate)
    python benchmarks/scaling.py --smoke --out /tmp/sc
    python benchmarks/scaling.py --device cuda --processes 1,2,4,8   # the distributed section on 8 GPUs

Training: the library's ``Trainer.train_step`` on batches of 8..128 images (CUDA: 16..1024), EfficientNet-Lite0 at
96 px, pad prompt; each point is the median over 3 repeats of enough steps for ~256 images (CUDA ~4096).
Evaluation: ``visual_prompting.evaluation.evaluate`` (prompted, batch 256) over 250..4000 real Fashion-MNIST
images (CUDA: 1000..32000; the bundled subset, tiled when more are asked for), median of 3.

Where it stops being linear, by one rule applied to both series: time is linear in the work while the cost
per image is flat; "flat" means within 10% of the lowest cost per image measured. ``linear_from`` is the first
size that is within 10% (below it a fixed per-call overhead dominates, so time grows less than linearly);
``stops_linear_at`` is the first larger size from which the cost per image stays more than 10% above the lowest
(time grows faster than the work, e.g. caches or memory; a single noisy point in between does not count), or
null when it stays linear up to the largest size tried.

Distributed (data parallel, one prompt): for each process count P in ``--processes`` (CPU: 1,2; CUDA: 1 up to
the GPUs there), ``torchrun --standalone --nproc_per_node=P benchmarks/scaling.py --dist-worker ...`` runs the
library's ``Trainer.train_step`` on a global batch of ``--dist-batch`` (each rank its slice, one all-reduce of
the gradient per step) with one torch thread per process on CPU. Per P: median seconds per step and global
images/s; the all-reduce alone (median of 50) of the step's buffer and of a 69,840-number prompt (EVP's frame);
and images/s of the streaming loader alone (DataLoader workers decoding a generated JPEG folder, each rank its
shard, summed over ranks) next to the training step's.

Writes ``OUT/scaling.json`` (``training`` and ``evaluation``: sizes, seconds, images/s, the linear regime;
``distributed``: one row per process count) and ``OUT/scaling.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (apply_threads, bench_parser, linear_regime, provenance, markdown_table, median,  # noqa: E402
                    pyplot, save_figure, sync, timed, write_json, write_markdown)

import torch  # noqa: E402

from visual_prompting import BackboneCache, TrainConfig  # noqa: E402
from visual_prompting.data import (DataSplits, TensorImageSet, load_splits, loader_images_per_s,  # noqa: E402
                                   to_model_input)
from visual_prompting.evaluation import evaluate  # noqa: E402
from visual_prompting.training import Trainer  # noqa: E402
from visual_prompting.utils import pick_device  # noqa: E402



# the code this result measures: `benchmarks/report.py --stale` lists a result as stale once any of these
# paths changed after the commit it records
MEASURES = [
    "benchmarks/scaling.py",
    "visual_prompting/training.py",
    "visual_prompting/prompters.py",
    "visual_prompting/heads.py",
    "visual_prompting/backbones.py",
    "visual_prompting/evaluation.py",
    "visual_prompting/model.py",
    "visual_prompting/distributed.py",
    "visual_prompting/data.py",
]
EVP_FRAME = 69_840  # numbers in EVP's 224 px frame prompt: the "~70k" all-reduce

def real_images(image_size: int, n: int) -> TensorImageSet:
    """``n`` real Fashion-MNIST images at ``image_size`` (the bundled subset's 4000, tiled if more are needed)."""
    s = load_splits("fashion_mnist_subset", image_size=image_size, resize_cache_bytes=0)
    imgs = torch.cat([s.train.images, s.val.images, s.test.images])
    labels = torch.cat([s.train.labels, s.val.labels, s.test.labels])
    imgs = TensorImageSet(imgs, labels, s.class_names, s.name).resized(image_size).images  # resize once, then tile
    reps = math.ceil(n / len(labels))
    return TensorImageSet(imgs.repeat(reps, 1, 1, 1)[:n], labels.repeat(reps)[:n], s.class_names, s.name)


def train_scaling(trainer: Trainer, data: TensorImageSet, batch_sizes, target_images, repeats, device) -> dict:
    S = trainer.backbone.image_size
    seconds, ips = [], []
    for b in batch_sizes:
        images, labels = next(data.batches(b))
        x, y = to_model_input(images.to(device), S), labels.to(device)
        trainer.train_step(x, y)  # warm-up at this size
        steps = max(1, math.ceil(target_images / b))
        per = [timed(lambda: [trainer.train_step(x, y) for _ in range(steps)], device) / steps for _ in range(repeats)]
        seconds.append(median(per))
        ips.append(b / seconds[-1])
    return {"batch_sizes": list(batch_sizes), "seconds_per_step": seconds, "images_per_s": ips,
            "linear": linear_regime(list(batch_sizes), [s / b for s, b in zip(seconds, batch_sizes)])}


def eval_scaling(model, data: TensorImageSet, sizes, repeats, device, batch: int) -> dict:
    evaluate(model, data.subset(torch.arange(min(sizes))), True, batch)  # warm-up
    seconds = []
    for n in sizes:
        part = data.subset(torch.arange(n))
        seconds.append(median([timed(lambda: evaluate(model, part, True, batch), device) for _ in range(repeats)]))
    return {"dataset_sizes": list(sizes), "seconds": seconds, "images_per_s": [n / s for n, s in zip(sizes, seconds)],
            "eval_batch_size": batch, "linear": linear_regime(list(sizes), [s / n for s, n in zip(seconds, sizes)])}


def make_folder(root: Path, n: int, size: int) -> Path:
    """``n`` JPEG photos-like images (smooth noise) in 2 class folders: what the streaming loader decodes."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        small = torch.rand(3, 8, 8, generator=g)
        img = torch.nn.functional.interpolate(small[None], size=(size, size), mode="bilinear")[0]
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(d / f"{i}.jpg", quality=90)
    return root


def dist_worker(args) -> None:
    """One process of a torchrun group (see the module text); rank 0 writes the row to ``args.dist_worker``."""
    import torch.distributed as dist

    from visual_prompting.distributed import all_reduce_sum

    apply_threads(args.threads)
    device = pick_device(args.device)
    cache = BackboneCache()
    bb = cache.get(args.model, device if device.type != "cuda" else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    B, steps, warm = args.dist_batch, args.dist_steps, 2
    data = real_images(bb.image_size, B * (steps + warm))
    few = data.subset(torch.arange(8))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=args.model, steps=10**6, batch_size=B, device=str(device), out_dir=tmp, num_workers=0)
        trainer = Trainer(cfg, cache=cache, splits=DataSplits(data, few, few, data.class_names, data.name))
        r, dev = trainer.ranks, trainer.device
        shard = (r.rank, r.world_size) if r.distributed else None
        S = bb.image_size
        batches = [(to_model_input(x.to(dev), S), y.to(dev))
                   for x, y in data.batches(B, shuffle=True, generator=torch.Generator().manual_seed(0), shard=shard)]
        per = []
        for i, (x, y) in enumerate(batches):
            t = timed(lambda: trainer.train_step(x, y), dev)
            if i >= warm:
                per.append(t)
        step = median(per)
        comm = {}
        for name, n in (("step_buffer", trainer.trainable_numbers() + 5), ("evp_frame", EVP_FRAME)):
            if not r.distributed:
                comm[name] = {"numbers": n, "seconds": None}
                continue
            buf = torch.zeros(n, device=dev if r.backend == "nccl" else "cpu")
            for _ in range(5):
                dist.all_reduce(buf)
            comm[name] = {"numbers": n, "seconds": median([timed(lambda: dist.all_reduce(buf), dev) for _ in range(50)])}
        loader_ips = None
        if args.dist_folder:
            stream = load_splits(args.dist_folder, image_size=S, max_cache_bytes=0, val_fraction=0.01,
                                 num_workers=args.dist_workers).train
            stream.pin_memory = dev.type == "cuda"
            mine = loader_images_per_s(stream, B, batches=max(2, len(stream) // B - 1), shard=shard)
            loader_ips = float(all_reduce_sum(torch.tensor([mine], dtype=torch.float64))[0])
    if r.is_main:
        row = {"processes": r.world_size, "backend": r.backend, "global_batch": B, "per_rank_batch": trainer.rank_batch,
               "threads_per_process": torch.get_num_threads(), "steps_timed": len(per), "seconds_per_step": step,
               "images_per_s": B / step, "allreduce": comm, "loader_images_per_s": loader_ips,
               "loader_workers_per_process": args.dist_workers}
        Path(args.dist_worker).write_text(json.dumps(row))


def distributed_scaling(args, model: str, device, processes: list[int], folder: Path | None, tmp: str) -> list[dict]:
    """One torchrun group per process count; their rows (see :func:`dist_worker`)."""
    rows = []
    for p in processes:
        out = Path(tmp) / f"dist{p}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={p}", __file__,
               "--dist-worker", str(out), "--model", model, "--device", str(device.type),
               "--dist-batch", str(args.dist_batch), "--dist-steps", str(args.dist_steps),
               "--dist-workers", str(args.dist_workers), "--threads", str(args.threads or 1)]
        if folder is not None:
            cmd += ["--dist-folder", str(folder)]
        print(f"-- distributed, {p} process(es): {' '.join(cmd[1:])}", flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"torchrun with {p} processes failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        rows.append(json.loads(out.read_text()))
    return rows


def distributed_text(doc: dict) -> str:
    """The distributed section as Markdown (this script's .md and benchmarks/report.py)."""
    rows = doc["distributed"]
    us = lambda r, k: None if r["allreduce"][k]["seconds"] is None else 1e6 * r["allreduce"][k]["seconds"]  # noqa: E731
    t = markdown_table(
        ["processes", "global batch", "per rank", "s / step", "images/s", "all-reduce of the step (us)",
         f"all-reduce of {EVP_FRAME:,} numbers (us)", "loader alone, images/s"],
        [[r["processes"], r["global_batch"], r["per_rank_batch"], r["seconds_per_step"], r["images_per_s"],
          us(r, "step_buffer"), us(r, "evp_frame"), r["loader_images_per_s"]] for r in rows])
    return (f"Distributed (torchrun, {rows[-1]['backend'] or 'one process'}; {rows[0]['threads_per_process']} "
            f"thread(s) per process, {rows[0]['loader_workers_per_process']} loader worker(s) each):\n\n{t}\n\n"
            f"On N GPUs: `{doc['distributed_command_n_gpus']}`")


def describe(linear: dict, what: str) -> str:
    s = f"{what}: per-image cost within 10% of its best from {linear['linear_from']}"
    if linear["overhead_bound_below"]:
        s += f" (below {linear['overhead_bound_below']} a fixed per-call overhead dominates)"
    if linear["stops_linear_at"] is None:
        s += "; linear up to the largest size tried"
    else:
        s += f"; stops being linear at {linear['stops_linear_at']} (cost per image > 10% above its best)"
    return s + "."


def plot(doc: dict, path: Path) -> None:
    plt = pyplot()
    tr, ev = doc["training"], doc["evaluation"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(tr["batch_sizes"], tr["images_per_s"], "o-")
    a.set_xscale("log", base=2)
    a.set_xlabel("batch size")
    a.set_ylabel("training images/s (median)")
    best = 1 / tr["linear"]["best_seconds_per_image"]
    a.axhspan(best / 1.1, best, color="#2ca02c", alpha=0.15, label="linear regime (within 10% of best)")
    a.legend(fontsize=8)
    a.set_title("Training step: throughput vs batch size", fontsize=9)
    b.loglog(ev["dataset_sizes"], ev["seconds"], "o-", label="measured")
    c = ev["linear"]["best_seconds_per_image"]
    b.loglog(ev["dataset_sizes"], [c * n for n in ev["dataset_sizes"]], "--", color="gray",
             label="proportional (best cost/image)")
    b.set_xlabel("images evaluated")
    b.set_ylabel("seconds (median)")
    b.legend(fontsize=8)
    b.set_title("Evaluation: time vs dataset size", fontsize=9)
    fig.suptitle(f"{doc['settings']['model']} on {doc['provenance']['machine']['device_name']}", fontsize=10)
    save_figure(plt, fig, path)


def parse_args(argv):
    ap = bench_parser(__doc__, "scaling", "tiny settings (32 px, batches 2/4, sets of 16/32 images)")
    ap.add_argument("--model", default=None, help="backbone spec (default effnet-lite0@96; smoke effnet-lite0@32)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (default CPU 8,16,32,64,128; CUDA 16..1024)")
    ap.add_argument("--dataset-sizes", default=None, help="comma-separated (default CPU 250..4000; CUDA 1000..32000)")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (smoke 1)")
    ap.add_argument("--target-images", type=int, default=None, help="images per timed training point (default CPU 256, CUDA 4096)")
    ap.add_argument("--processes", default=None, help="distributed section: comma-separated process counts, each "
                    "one torchrun group (default CPU 1,2; CUDA 1,2,4.. up to the GPUs there; smoke 2; '' skips it)")
    ap.add_argument("--dist-batch", type=int, default=None, help="distributed: the global batch (default CPU 64, "
                    "CUDA 256 per GPU of the largest group; smoke 4)")
    ap.add_argument("--dist-steps", type=int, default=None, help="distributed: timed steps (default 20; smoke 2)")
    ap.add_argument("--dist-workers", type=int, default=None, help="distributed: loader workers per process "
                    "(default 2 on CPU, 4 on CUDA; smoke 1)")
    ap.add_argument("--dist-images", type=int, default=None, help="distributed: images in the generated JPEG "
                    "folder the loader streams (default 512; smoke 16)")
    ap.add_argument("--dist-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dist-folder", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)



def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("effnet-lite0@32" if args.smoke else "effnet-lite0@96")
    if args.dist_worker:
        dist_worker(args)
        return {}
    if args.processes is not None:
        processes = [int(v) for v in args.processes.split(",") if v.strip()]
    elif args.smoke:
        processes = [2]
    else:
        gpus = torch.cuda.device_count() if cuda else 2
        processes = [p for p in (1, 2, 4, 8, 16) if p <= gpus]
    args.dist_batch = args.dist_batch or (4 if args.smoke else 256 * max(processes or [1]) if cuda else 64)
    args.dist_steps = args.dist_steps or (2 if args.smoke else 20)
    args.dist_workers = args.dist_workers if args.dist_workers is not None else (1 if args.smoke else 4 if cuda else 2)
    dist_images = args.dist_images or (16 if args.smoke else 512)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    batches = ints(args.batch_sizes) if args.batch_sizes else (
        [2, 4] if args.smoke else [16, 32, 64, 128, 256, 512, 1024] if cuda else [8, 16, 32, 64, 128])
    sizes = ints(args.dataset_sizes) if args.dataset_sizes else (
        [16, 32] if args.smoke else [1000, 2000, 4000, 8000, 16000, 32000] if cuda else [250, 500, 1000, 2000, 4000])
    repeats = args.repeats or (1 if args.smoke else 3)
    target = args.target_images or (4 if args.smoke else 4096 if cuda else 256)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance("scaling.py", argv, device)  # before the run: its load average says whether it was shared
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = BackboneCache()
        bb = cache.get(model, device)
        data = real_images(bb.image_size, max(max(sizes), max(batches)))
        few = data.subset(torch.arange(8))
        splits = DataSplits(data.subset(torch.arange(max(batches))), few, few, data.class_names, data.name)
        cfg = TrainConfig(model=model, steps=10**6, batch_size=max(batches), device=str(device), out_dir=tmp,
                          num_workers=0)
        trainer = Trainer(cfg, cache=cache, splits=splits)
        print(f"-- training step, {model} on {device}: batch sizes {batches}", flush=True)
        training = train_scaling(trainer, data, batches, target, repeats, device)
        print(f"-- evaluation, {model} on {device}: dataset sizes {sizes}", flush=True)
        evaluation = eval_scaling(trainer.model, data, sizes, repeats, device, batch=256)
        distributed = []
        if processes:
            folder = make_folder(Path(tmp) / "jpegs", dist_images, 2 * bb.image_size)
            distributed = distributed_scaling(args, model, device, processes, folder, tmp)
    sync(device)
    doc = {"provenance": prov,
           "settings": {"model": model, "repeats": repeats, "target_images_per_training_point": target,
                        "smoke": args.smoke, "prompter": "pad", "amp": cuda},
           "training": training, "evaluation": evaluation, "distributed": distributed,
           "distributed_command_n_gpus": "python benchmarks/scaling.py --device cuda --processes 1,2,4,8 "
                                         "(each point: torchrun --standalone --nproc_per_node=P ...)",
           "seconds": round(time.perf_counter() - t0, 1)}
    doc["conclusions"] = [describe(training["linear"], "Training (batch size)"),
                          describe(evaluation["linear"], "Evaluation (dataset size)")]
    write_json(out / "scaling.json", doc)
    plot(doc, out / "scaling.png")
    t1 = markdown_table(["batch size", "s / step", "images/s"],
                        [[b, s, i] for b, s, i in zip(batches, training["seconds_per_step"], training["images_per_s"])])
    t2 = markdown_table(["images", "seconds", "images/s"],
                        [[n, s, i] for n, s, i in zip(sizes, evaluation["seconds"], evaluation["images_per_s"])])
    body = f"{t1}\n\n{t2}\n\n" + "\n".join(f"- {c}" for c in doc["conclusions"])
    if distributed:
        body += "\n\n" + distributed_text(doc)
    print(write_markdown(out / "scaling.md", f"Cost as work grows ({model})", doc["provenance"], body))
    return doc


if __name__ == "__main__":
    main()
