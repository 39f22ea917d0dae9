"""Cost as work grows: training throughput against batch size, evaluation time against dataset size.

    python benchmarks/scaling.py                    # CPU: ~1-2 min on 2 cores (design estimate)
    python benchmarks/scaling.py --device cuda      # GPU: larger batches and sets, ~1 min (design estimate)
    python benchmarks/scaling.py --smoke --out /tmp/sc

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

Writes ``OUT/scaling.json`` (``training`` and ``evaluation``: sizes, seconds, images/s, the linear regime) and
``OUT/scaling.png``.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (apply_threads, bench_parser, linear_regime, provenance, markdown_table, median,  # noqa: E402
                    pyplot, save_figure, sync, timed, write_json, write_markdown)

import torch  # noqa: E402

from visual_prompting import BackboneCache, TrainConfig  # noqa: E402
from visual_prompting.data import DataSplits, TensorImageSet, load_splits, to_model_input  # noqa: E402
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
]

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
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("effnet-lite0@32" if args.smoke else "effnet-lite0@96")
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
    sync(device)
    doc = {"provenance": prov,
           "settings": {"model": model, "repeats": repeats, "target_images_per_training_point": target,
                        "smoke": args.smoke, "prompter": "pad", "amp": cuda},
           "training": training, "evaluation": evaluation, "seconds": round(time.perf_counter() - t0, 1)}
    doc["conclusions"] = [describe(training["linear"], "Training (batch size)"),
                          describe(evaluation["linear"], "Evaluation (dataset size)")]
    write_json(out / "scaling.json", doc)
    plot(doc, out / "scaling.png")
    t1 = markdown_table(["batch size", "s / step", "images/s"],
                        [[b, s, i] for b, s, i in zip(batches, training["seconds_per_step"], training["images_per_s"])])
    t2 = markdown_table(["images", "seconds", "images/s"],
                        [[n, s, i] for n, s, i in zip(sizes, evaluation["seconds"], evaluation["images_per_s"])])
    body = f"{t1}\n\n{t2}\n\n" + "\n".join(f"- {c}" for c in doc["conclusions"])
    print(write_markdown(out / "scaling.md", f"Cost as work grows ({model})", doc["provenance"], body))
    return doc


if __name__ == "__main__":
    main()
