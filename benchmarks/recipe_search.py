"""One candidate recipe at the accuracy benchmark's CPU budget, for choosing recipes before the full benchmark:
effnet-lite0@96 on accuracy.py's fixed Fashion-MNIST subsets (10,000 train / 2,000 validation / the 10,000 test
images), 1000 steps of 64, one seed, one thread, validation every 200 steps; the best prompt by validation is
tested. Appends one JSON record (settings, test top-1, best validation top-1, the validation curve, seconds,
provenance) to ``benchmarks/results/recipe_search.jsonl``.

    python benchmarks/recipe_search.py NAME SEED '{"recipe": "live", "prompter": "pad", "prompt_fraction": 0.25}'
    python benchmarks/recipe_search.py NAME SEED '{...}' --dataset /path/to/class_folders

Two of these side by side use the two cores of the project's machine (one thread each). A search result is one
seed: the recipes it picks are measured with three seeds by ``benchmarks/accuracy.py``. ``--device cuda`` runs
the same search on a lent GPU (``scripts/gpu_session.sh`` runs a sweep of them side by side); give it
``"amp": false`` in the settings to keep CPU's fp32 arithmetic, and compare its numbers with CPU's only through
a candidate measured on both.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import REPO, apply_threads, provenance  # noqa: E402
from accuracy import build_splits  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "recipe_search.jsonl"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("seed", type=int)
    ap.add_argument("settings", help="TrainConfig settings as JSON; 'recipe' names a recipe to start from")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--device", default="cpu", help="cpu (the budget's machine), or cuda on a lent GPU")
    ap.add_argument("--smoke", action="store_true", help="3 steps at 32 px on 200 bundled-subset images (the tests)")
    a = ap.parse_args(argv)
    apply_threads(1)
    from visual_prompting import BackboneCache
    from visual_prompting.recipes import recipe_settings
    from visual_prompting.train_config import TrainConfig
    from visual_prompting.training import Trainer

    given = json.loads(a.settings)
    settings = {**(recipe_settings(given["recipe"]) if "recipe" in given else {}),
                **{k: v for k, v in given.items() if k != "recipe"}}
    prov = provenance("recipe_search.py", argv if argv is not None else sys.argv[1:], a.device)
    size, sizes = (32, (200, 100, 100)) if a.smoke else (96, (10000, 2000, None))
    splits = build_splits("fashion_mnist_subset" if a.smoke else a.dataset, size, *sizes, 0)
    t0, curve = time.perf_counter(), []

    def progress(ev):
        if ev.kind == "eval":
            curve.append([ev.step, round(ev.val_top1, 4), round(time.perf_counter() - t0, 1)])
            print(f"  step {ev.step}  val {ev.val_top1:.4f}  {curve[-1][2]:.0f} s", flush=True)

    budget = dict(model=f"effnet-lite0@{size}", dataset=splits.name, steps=3 if a.smoke else a.steps,
                  batch_size=16 if a.smoke else 64, device=a.device, seed=a.seed, out_dir=tempfile.mkdtemp(),
                  num_workers=0, eval_every=3 if a.smoke else 200, test_without_prompt=False)
    cfg = TrainConfig(**{**budget, **settings})  # the settings may change the budget too (steps, eval_every)
    r = Trainer(cfg, callbacks=[progress], cache=BackboneCache(), splits=splits).run()
    rec = {"name": a.name, "seed": a.seed, "dataset": a.dataset, "given": given, "test_top1": r.metrics["test_top1"],
           "best_val_top1": r.metrics["best_val_top1"], "val_curve": curve,
           "seconds": round(time.perf_counter() - t0), "provenance": prov}
    print(json.dumps({k: rec[k] for k in ("name", "seed", "test_top1", "best_val_top1", "seconds")}), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


if __name__ == "__main__":
    main()
