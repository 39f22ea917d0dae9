"""Train the offline zoo prompts and write prompts_zoo/index.json with what each one measured.

Each entry is EfficientNet-Lite0 (real ImageNet weights, 96 px) on the full Fashion-MNIST from Debian's
dataset-fashion-mnist package, trained with a recipe by the exact CLI command stored in the index (with the run's
provenance: commit, machine, date, load), then evaluated on the full 10,000-image test set and on the bundled
subset's 1,000 test images (which tests can check offline). The prompts (:data:`PROMPTS`): the best full-image
prompt, the best padding prompt (a frame), a capture-robust prompt, and the paper's pad prompt as its example.

    python scripts/build_zoo.py                  # every prompt (about 20 minutes each on 2 CPU cores)
    python scripts/build_zoo.py --prompts pad    # only some
    python scripts/build_zoo.py --index-only     # rewrite the index from the prompts already in prompts_zoo/
    python scripts/build_zoo.py --verify         # evaluate every entry again on its full test set, compare
    python scripts/build_zoo.py --push-to OWNER  # upload every entry to the Hub repo OWNER/<name>, record it
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _bench import provenance  # noqa: E402  (the one provenance function every results writer uses)
from visual_prompting import PromptedModel  # noqa: E402
from visual_prompting.data import load_splits  # noqa: E402
from visual_prompting.evaluation import evaluate  # noqa: E402
from visual_prompting.prompt_file import read_metadata  # noqa: E402
from visual_prompting.utils import write_text_atomic  # noqa: E402
from visual_prompting.zoo import INDEX, ZOO_DIR, index_entry  # noqa: E402

MODEL = "effnet-lite0@96"
# name -> the recipe (and options) it is trained with; the file is effnet-lite0-96_<dataset>_<name>.safetensors
PROMPTS = {
    "live": ["--recipe", "live"],  # the best full-image prompt (fast at lr 0.03: 85.8% vs 85.3%, seed 0)
    "fast_pad": ["--recipe", "fast_pad"],  # the best padding prompt: a frame
    "robust": ["--recipe", "robust"],  # survives JPEG and resizing
    "pad": ["--recipe", "paper"],  # the paper's recipe: its pad prompt, the paper's example
}



# the code this result measures: `benchmarks/report.py --stale` lists a result as stale once any of these
# paths changed after the commit it records
MEASURES = [
    "scripts/build_zoo.py",
    "visual_prompting/training.py",
    "visual_prompting/prompters.py",
    "visual_prompting/spectral.py",
    "visual_prompting/heads.py",
    "visual_prompting/backbones.py",
    "visual_prompting/data.py",
    "visual_prompting/evaluation.py",
    "visual_prompting/cli.py",
    "visual_prompting/recipes.py",  # each prompt is trained with a recipe
    "visual_prompting/transforms.py",
    # the rest of the training path, as benchmarks/accuracy.py declares it, and the CLI's settings
    "visual_prompting/train_config.py",
    "visual_prompting/settings.py",
    "visual_prompting/model.py",
    "visual_prompting/augment.py",
    "visual_prompting/capture.py",  # the robust prompt's capture simulation
    "visual_prompting/execution.py",
    "visual_prompting/optim.py",
    "visual_prompting/utils.py",
    "visual_prompting/baselines.py",
    "visual_prompting/distributed.py",
    # how each prompt is written and listed
    "visual_prompting/checkpoint.py",
    "visual_prompting/prompt_file.py",
    "visual_prompting/zoo.py",
]

def command(name: str, dataset: str, steps: int) -> list[str]:
    return ["python", "-m", "visual_prompting", "train", "--model", MODEL, "--dataset", dataset, *PROMPTS[name],
            "--steps", str(steps), "--batch-size", "64", "--out-dir", f"runs/zoo/{dataset}-{name}", "--quiet"]


HEAD_N = 200  # the first images of the bundled subset's test split: the tests measure each entry on these again


def subset_accuracy(path: Path) -> dict:
    model, pf = PromptedModel.from_prompt_file(path)
    test = load_splits("fashion_mnist_subset", image_size=model.image_size).test
    head = test.subset(torch.arange(HEAD_N))
    return {"subset_test_top1": evaluate(model, test, True).top1, "subset_test_n": len(test),
            "subset_head_top1": evaluate(model, head, True).top1, "subset_head_n": HEAD_N}


def entry(path: Path, cmd: str | None, seconds: float | None, prov: dict | None) -> dict:
    e = index_entry(path.stem, str(path.relative_to(ZOO_DIR)), read_metadata(path))
    e["metrics"].update(subset_accuracy(path))
    if cmd:
        e["command"] = cmd
    if seconds:
        e["train_seconds"] = round(seconds)
    if prov:  # the run that trained this prompt (kept as it was when only the index is rewritten)
        e["provenance"] = prov
    return e


VERIFY = ZOO_DIR / "verify.json"
TOLERANCE = 0.005  # --verify fails when an entry measures more than this (0.5 points) off its listed test top-1


def verify(argv: list[str]) -> int:
    """Evaluate every index entry again on its dataset's test split; writes prompts_zoo/verify.json (each entry's
    listed and measured top-1, the largest difference, provenance) for the READMEs."""
    from _bench import write_json

    from visual_prompting.backbones import BackboneCache
    from visual_prompting.zoo import load_index

    prov = provenance("scripts/build_zoo.py", argv)
    cache, worst, rows = BackboneCache(), 0.0, []
    for e in load_index():
        model, pf = PromptedModel.from_prompt_file(ZOO_DIR / e["path"], cache=cache)
        test = load_splits(e["dataset"], image_size=model.image_size).test
        got = evaluate(model, test, True).top1
        listed = e["metrics"]["test_top1"]
        worst = max(worst, abs(got - listed))
        rows.append({"name": e["name"], "listed_test_top1": listed, "measured_test_top1": got, "test_n": len(test)})
        print(f"{e['name']:48s} listed {100 * listed:6.2f}%  measured {100 * got:6.2f}%  ({len(test)} test images)")
    print(f"largest difference: {100 * worst:.2f} points")
    write_json(VERIFY, {"provenance": prov, "entries": rows, "largest_difference_points": round(100 * worst, 2),
                        "tolerance_points": 100 * TOLERANCE})
    return 0 if worst <= TOLERANCE else 1


def push_zoo(owner: str, folder: str | Path = ZOO_DIR, *, token: str | None = None, endpoint: str | None = None,
             log=print) -> list[dict]:
    """Upload every index entry with a local ``path`` to the Hub repo ``OWNER/<entry name>`` (the folder
    ``hub.prepare_upload`` writes: prompt, config, model card, picture) and record where it went in the entry's
    ``hub`` field: ``{"repo_id", "revision" (the commit the upload made), "filename"}``. ``folder/index.json`` is
    rewritten atomically after each upload, every other field kept, so a failure leaves the uploads before it
    recorded and nothing half-written. Every repo id is checked before the first upload. Returns the pushed
    entries; a failure is a VPError that says which entry and how many were recorded before it."""
    from visual_prompting.errors import VPError
    from visual_prompting.hub import check_repo_id, push_prompt_commit
    from visual_prompting.utils import write_text_atomic
    from visual_prompting.zoo import load_index

    folder = Path(folder)
    index = folder / "index.json"
    load_index(folder)  # a malformed index fails here, before any upload
    doc = json.loads(index.read_text(encoding="utf-8"))
    todo = [e for e in doc["prompts"] if e.get("path")]
    for e in todo:
        check_repo_id(f"{owner}/{e['name']}")
    done = []
    for e in todo:
        repo_id = f"{owner}/{e['name']}"
        try:
            pushed = push_prompt_commit(folder / e["path"], repo_id, token=token, endpoint=endpoint)
        except VPError as err:
            raise VPError(f"{e['name']}: {err} ({len(done)} of {len(todo)} entries were pushed and recorded in "
                          f"{index} before it.)") from err
        e["hub"] = {"repo_id": pushed.repo_id, "revision": pushed.revision, "filename": pushed.filename}
        if pushed.revision is None:
            del e["hub"]["revision"]
        write_text_atomic(index, json.dumps(doc, indent=2) + "\n")
        done.append(e)
        log(f"pushed {e['path']} -> {pushed.url} (revision {pushed.revision})")
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=PROMPTS)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--index-only", action="store_true")
    ap.add_argument("--verify", action="store_true", help="re-evaluate every index entry on its dataset's test "
                    "split and fail if any differs from the listed test top-1 by more than 0.5 points")
    ap.add_argument("--push-to", metavar="OWNER", help="upload every index entry to the Hub repo OWNER/<name> and "
                    "record it in the index (no training; with --index-only the index is rewritten first)")
    ap.add_argument("--token", help="Hub token for --push-to (default: the logged-in token or HF_TOKEN)")
    ap.add_argument("--endpoint", help="Hub endpoint for --push-to (default: HF_ENDPOINT or huggingface.co)")
    ap.add_argument("--zoo-dir", type=Path, default=ZOO_DIR, help="the zoo folder --push-to pushes (its "
                    "index.json; default prompts_zoo/)")
    a = ap.parse_args()
    if a.verify:
        sys.exit(verify(sys.argv[1:]))
    if a.zoo_dir != ZOO_DIR and not (a.push_to and not a.index_only):
        ap.error("--zoo-dir only goes with --push-to (training and --index-only write prompts_zoo/)")
    if a.push_to and not a.index_only:
        sys.exit(push(a))
    prov = provenance("scripts/build_zoo.py", sys.argv[1:])  # before training: its load average, commit, machine
    trained = {}
    if not a.index_only:
        for name in a.prompts:
            cmd = command(name, a.dataset, a.steps)
            run_prov = provenance("scripts/build_zoo.py", sys.argv[1:])  # this prompt's run: its date and load
            t0 = time.perf_counter()
            subprocess.run(cmd[:1] and [sys.executable, *cmd[1:]], cwd=ROOT, check=True)
            dest = ZOO_DIR / f"effnet-lite0-96_{a.dataset.replace('_', '-')}_{name}.safetensors"
            shutil.copyfile(ROOT / cmd[cmd.index("--out-dir") + 1] / "best.safetensors", dest)
            trained[str(dest.relative_to(ZOO_DIR))] = {"command": shlex.join(cmd), "provenance": run_prov,
                                                       "train_seconds": time.perf_counter() - t0}
    # the index as it is now (another build_zoo.py may have trained other prompts meanwhile), then this run's
    old_doc = json.loads(INDEX.read_text()) if INDEX.is_file() else {}
    old = {e["path"]: e for e in old_doc.get("prompts", [])}
    old.update(trained)
    entries = []
    for path in sorted(ZOO_DIR.glob("*.safetensors")):
        prev = old.get(str(path.relative_to(ZOO_DIR)), {})
        entries.append(entry(path, prev.get("command"), prev.get("train_seconds"), prev.get("provenance")))
        if prev.get("hub"):  # pushed before and not retrained now: the Hub copy is still this file
            entries[-1]["hub"] = prev["hub"]
        print(json.dumps({k: entries[-1][k] for k in ("name", "metrics")}))
    # the index's own provenance: this run (the metrics of every entry are measured again by it); an entry's
    # training run keeps its own, or the note of an older index that recorded none
    doc = {"version": 1, "prompts": entries, "provenance": prov}
    if not all("provenance" in e for e in entries):  # the note of the index that first recorded none, kept
        untraced = old_doc.get("training_provenance") or old_doc.get("provenance")
        if isinstance(untraced, dict) and not untraced.get("recorded"):
            doc["training_provenance"] = untraced
    write_text_atomic(INDEX, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {INDEX} ({len(entries)} prompts)")
    if a.push_to:
        sys.exit(push(a))


def push(a) -> int:
    """``--push-to``: 0 when every entry was pushed, else 1 with the reason on one line."""
    from visual_prompting.errors import VPError

    try:
        done = push_zoo(a.push_to, a.zoo_dir, token=a.token, endpoint=a.endpoint)
    except VPError as e:
        print(f"build_zoo.py --push-to: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"pushed {len(done)} prompts; {a.zoo_dir / 'index.json'} records where")
    return 0


if __name__ == "__main__":
    main()
