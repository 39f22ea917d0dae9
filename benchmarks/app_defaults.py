"""The app's CPU training defaults, measured: what a first run in the Train tab gives on the bundled subset.

    python benchmarks/app_defaults.py            # the app's CPU defaults with each label mapping (~4 min, 2 CPU cores)
    python benchmarks/app_defaults.py --smoke --out /tmp/ad   # 3 steps at 32 px (what the tests run)

Reads the defaults from the app itself (``VPApp.train_defaults()`` on CPU: backbone, steps, batch, mapping) and
trains them on ``fashion_mnist_subset`` once per label mapping (the default first), seed 0, recording test top-1
with and without the prompt and the wall time. One seed: the README quotes these numbers as what one run gave,
not as a ranking of the mappings (benchmarks/accuracy.py --seeds does that).
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
    "visual_prompting/data.py", "visual_prompting/evaluation.py"]
MAPPINGS = ("first_k", "frequency", "iterative")


def main(argv: list[str] | None = None) -> dict:
    ap = bench_parser(__doc__, "app_defaults", "3 steps of 16 at 32 px instead of the app's defaults")
    args = ap.parse_args(argv)
    apply_threads(args.threads)
    from visual_prompting.ui import VPApp

    d = VPApp().train_defaults() if not args.smoke else None
    model, steps, batch, default = (d.model, d.steps, d.batch_size, d.label_mapping) if d else \
        ("effnet-lite0@32", 3, 16, "first_k")
    prov = provenance("app_defaults.py", argv, "cpu")
    runs = []
    for mapping in sorted(MAPPINGS, key=lambda m: m != default):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = train(TrainConfig(model=model, dataset="fashion_mnist_subset", steps=steps, batch_size=batch,
                                    label_mapping=mapping, device="cpu", seed=0, out_dir=tmp))
            seconds = time.perf_counter() - t0
        m = res.metrics
        runs.append({"label_mapping": mapping, "default": mapping == default, "test_top1": m["test_top1"],
                     "test_top1_no_prompt": m.get("test_top1_no_prompt"), "test_n": m.get("test_n"),
                     "seconds": round(seconds, 1)})
        print(f"{mapping:10s} test top-1 {100 * m['test_top1']:.1f}% (no prompt "
              f"{100 * (m.get('test_top1_no_prompt') or 0):.1f}%) in {seconds:.0f} s", flush=True)
    doc = {"provenance": prov, "defaults": {"model": model, "steps": steps, "batch_size": batch,
                                            "label_mapping": default, "dataset": "fashion_mnist_subset", "seed": 0},
           "smoke": args.smoke, "runs": runs}
    write_json(Path(args.out) / "app_defaults.json", doc)
    return doc


if __name__ == "__main__":
    main()
