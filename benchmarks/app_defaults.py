"""The app's CPU training defaults, measured: what a first run in the Train tab gives on the bundled subset.

    python benchmarks/app_defaults.py            # the app's CPU defaults with each recipe (~3 min, 2 CPU cores)
    python benchmarks/app_defaults.py --smoke --out /tmp/ad   # 3 steps at 32 px (what the tests run)

Reads the defaults from the app itself (``VPApp.train_defaults(recipe)`` on CPU: backbone, steps, batch and the
recipe's settings) and trains them on ``fashion_mnist_subset`` once per recipe (the app's default first, then the
paper's), seed 0, recording test top-1 with and without the prompt and the wall time. One seed: the README quotes
these numbers as what one run gave, not as a ranking (benchmarks/accuracy.py --seeds does that).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import apply_threads, bench_parser, provenance, write_json  # noqa: E402

from visual_prompting import TrainConfig, train  # noqa: E402

MEASURES = ["benchmarks/app_defaults.py", "visual_prompting/ui.py", "visual_prompting/training.py",
    "visual_prompting/prompters.py", "visual_prompting/heads.py", "visual_prompting/backbones.py",
    "visual_prompting/data.py", "visual_prompting/evaluation.py", "visual_prompting/recipes.py",
    "visual_prompting/optim.py"]
RECIPES = ("fast", "paper")  # the app's default first


def main(argv: list[str] | None = None) -> dict:
    ap = bench_parser(__doc__, "app_defaults", "3 steps of 16 at 32 px instead of the app's defaults")
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    from visual_prompting.ui import VPApp

    vp = VPApp()
    default = vp.train_defaults().recipe
    prov = provenance("app_defaults.py", argv, "cpu")
    runs = []
    for recipe in sorted(RECIPES, key=lambda r: r != default):
        d = vp.train_defaults(recipe)
        model, steps, batch = (d.model, d.steps, d.batch_size) if not args.smoke else ("effnet-lite0@32", 3, 16)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = train(TrainConfig(model=model, dataset="fashion_mnist_subset", steps=steps, batch_size=batch,
                                    device="cpu", seed=0, out_dir=tmp, **d.settings))
            seconds = time.perf_counter() - t0
        m = res.metrics
        runs.append({"recipe": recipe, "default": recipe == default, "settings": d.settings, "model": model,
                     "steps": steps, "batch_size": batch, "test_top1": m["test_top1"],
                     "test_top1_no_prompt": m.get("test_top1_no_prompt"), "test_n": m.get("test_n"),
                     "seconds": round(seconds, 1)})
        print(f"{recipe:8s} test top-1 {100 * m['test_top1']:.1f}% (no prompt "
              f"{100 * (m.get('test_top1_no_prompt') or 0):.1f}%) in {seconds:.0f} s", flush=True)
    first = runs[0]
    doc = {"provenance": prov, "defaults": {"model": first["model"], "steps": first["steps"],
                                            "batch_size": first["batch_size"], "recipe": default,
                                            "dataset": "fashion_mnist_subset", "seed": 0},
           "smoke": args.smoke, "runs": runs}
    write_json(Path(args.out) / "app_defaults.json", doc)
    return doc


if __name__ == "__main__":
    main()
