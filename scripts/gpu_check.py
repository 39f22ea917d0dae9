"""Short prepared check of the CUDA paths, for when a GPU is lent (a few minutes at most).

    python scripts/gpu_check.py                 # on a GPU machine: AMP training steps, throughput, a short run
    python scripts/gpu_check.py --device cpu --tiny   # smoke test of this script on CPU

Prints one JSON document (and writes it to $OUT/gpu_check.json when OUT is set): for each backbone, images/s of
the library's training step with and without AMP, the AMP dtype, whether prompt gradients were finite, and
peak GPU memory; then a short real training run (EfficientNet-Lite0 on the bundled subset) with its accuracies.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _bench import provenance  # noqa: E402  (the one provenance function every results writer uses)
from visual_prompting import TrainConfig  # noqa: E402
from visual_prompting.data import load_splits  # noqa: E402
from visual_prompting.training import Trainer  # noqa: E402
from visual_prompting.utils import amp_dtype  # noqa: E402



# the code this result measures: `benchmarks/report.py --stale` lists a result as stale once any of these
# paths changed after the commit it records
MEASURES = [
    "scripts/gpu_check.py",
    "visual_prompting/training.py",
    "visual_prompting/prompters.py",
    "visual_prompting/heads.py",
    "visual_prompting/backbones.py",
    "visual_prompting/utils.py",
]

def throughput(spec: str, device: str, amp: bool, batch: int, steps: int, splits) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(TrainConfig(model=spec, steps=1000, batch_size=batch, device=device, amp=amp, out_dir=d,
                                label_mapping="first_k"), splits=splits)
        S = t.backbone.image_size
        x = torch.rand(batch, 3, S, S, device=t.device)
        y = torch.randint(0, 10, (batch,), device=t.device)
        if t.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(3):  # warm-up
            t.train_step(x, y)
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses = [float(t.train_step(x, y)[0]) for _ in range(steps)]  # read each step: a sync, as a loop that logs
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        finite = all(torch.isfinite(p).all() for p in t.prompter.parameters())
        return {"spec": spec, "amp": amp, "amp_dtype": str(amp_dtype(t.device)) if amp else None,
                "images_per_s": round(batch * steps / dt, 1), "loss_finite": all(map(lambda v: v == v, losses)),
                "prompt_finite": bool(finite),
                "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20) if t.device.type == "cuda" else None}


def readback_check(device: str, rounds: int = 6) -> dict:
    """HostReadback on this device: each value read back (one step late, as the trainer reads) equals what a plain
    ``.item()`` gives once the device is idle, while the next step's work is still queued."""
    from visual_prompting.utils import HostReadback

    dev = torch.device(device)
    rb = HostReadback(dev)
    n = 2048 if dev.type == "cuda" else 64
    a = torch.randn(n, n, device=dev)
    held, pairs = None, []
    for _ in range(rounds + 1):
        b = a @ a  # a step's worth of queued work
        t = (b.mean(), b.std())
        token = rb.send(*t)
        if held is not None:
            got = rb.read(held[0])
            pairs.append((got, [float(v) for v in held[1]]))
        held = (token, t)
        a = b / b.norm()
    return {"device": device, "rounds": len(pairs), "values_equal": all(g == e for g, e in pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models and few steps (CPU smoke test)")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here; use --device cpu --tiny for a smoke test")
    prov = provenance("scripts/gpu_check.py", sys.argv[1:], a.device)  # before the run
    specs = ["clip:vp-tiny", "effnet-lite0@64"] if a.tiny else ["clip:ViT-B-32/random", "effnet-lite0", "clip:ViT-B-16/random"]
    batch, steps = (16, 3) if a.tiny else (256, 20)
    report = {"device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "provenance": prov, "throughput": []}
    report["readback"] = readback_check(a.device)
    print(json.dumps(report["readback"]), flush=True)
    for spec in specs:
        S = 32 if spec == "clip:vp-tiny" else (64 if a.tiny else 224)
        splits = load_splits("fashion_mnist_subset", image_size=S)
        for amp in (True, False):
            report["throughput"].append(throughput(spec, a.device, amp, batch, steps, splits))
            print(json.dumps(report["throughput"][-1]), flush=True)
    with tempfile.TemporaryDirectory() as d:
        spec = "effnet-lite0@64" if a.tiny else "effnet-lite0"
        t0 = time.perf_counter()
        res = Trainer(TrainConfig(model=spec, steps=10 if a.tiny else 300, batch_size=64 if a.tiny else 128,
                                  device=a.device, out_dir=d)).run()
        m = res.metrics
        report["short_run"] = {"spec": spec, "steps": res.steps_done, "seconds": round(time.perf_counter() - t0, 1),
                               "test_top1": m["test_top1"], "test_top1_no_prompt": m["test_top1_no_prompt"]}
    print(json.dumps(report, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
