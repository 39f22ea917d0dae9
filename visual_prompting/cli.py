"""Command line: ``python -m visual_prompting train | eval | predict | compare | info | push``.

A thin front over the library: it parses options into the library's configs, prints results, and turns every
:class:`VPError` into one readable line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys

from .data import DEFAULT_MAX_IMAGE_PIXELS
from .errors import VPError
from .transforms import stack_text
from .settings import checked_type
from .utils import SigintHandler, check_device_name, percent

EPILOG_TRAIN = """examples:
  python -m visual_prompting train --model effnet-lite0@96 --dataset fashion_mnist_subset --steps 200 --batch-size 64
  python -m visual_prompting train --model clip:ViT-B-32/openai --dataset cifar10 --download --epochs 1000
  python -m visual_prompting train --dataset path/to/class_folders --prompter shrink_pad --steps 500 --resume
  torchrun --nproc_per_node=4 -m visual_prompting train --dataset cifar10 --batch-size 256   # 4 GPUs, one prompt
"""


def _add_train(sub, recipe: str, short_run: bool = False) -> None:
    from .recipes import RECIPES, SHORT_RUN_STEPS, recipe_settings
    from .settings import add_arguments
    from .train_config import TrainConfig

    p = sub.add_parser("train", help="learn a visual prompt for a frozen model",
                       description="Learn one visual prompt for a frozen backbone on a dataset. The defaults are a "
                                   "recipe's (--recipe; 'paper' is the paper's SGD lr 40 with a pad prompt); any "
                                   "option given explicitly wins over the recipe. The best prompt by validation "
                                   "accuracy is written to OUT_DIR/best.safetensors as training goes; Ctrl-C stops "
                                   "cleanly and keeps it.",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=recipe, choices=list(RECIPES),
                   help="named settings: " + "; ".join(f"{r.name} = {r.description}" for r in RECIPES.values()).replace("%", "%%")
                   + f" (default: %(default)s; the defaults below are this recipe's; a short run, --steps "
                     f"{SHORT_RUN_STEPS} or fewer, takes the recipe's lr for a short run where it has one)")
    # every option comes from TrainConfig's fields (help, choices, checks), defaulting to the recipe's values
    add_arguments(p, TrainConfig, defaults=recipe_settings(recipe, short_run=short_run))
    p.add_argument("--quiet", action="store_true", help="no progress bar")


PROMPT_HELP = "prompt file (.safetensors), a folder with prompt.safetensors, hf://USER/NAME[@REV][/FILE] or USER/NAME"


def _positive(kind):
    """An argparse type: a finite number of ``kind`` above 0 (a batch size, a top-k, a pixel limit)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
        return value
    return parse


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of a prompt, with and without it",
                       description="Top-1/top-5 of a prompt file's model on a split, with and without the prompt.")
    p.add_argument("--prompt", required=True, help=PROMPT_HELP)
    _add_split_options(p, "the one the prompt was trained on")
    p.add_argument("--per-class", action="store_true", help="also print per-class accuracy")


def _add_split_options(p, default_dataset: str) -> None:
    """What measuring prompts on a split takes (eval, compare): the dataset, split, data, batch, device and --json."""
    p.add_argument("--dataset", default=None, help=f"dataset (default: {default_dataset})")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="(default: %(default)s)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--batch-size", type=_positive(int), default=128)
    p.add_argument("--device", type=checked_type(check_device_name, str), default="auto")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="zero-shot and prompted top-k for images",
                       description="Classify images with and without a prompt and print both top-k side by side.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--prompt", required=True, help=PROMPT_HELP)
    p.add_argument("-k", "--top-k", type=_positive(int), default=5, help="(default: %(default)s)")
    p.add_argument("--device", type=checked_type(check_device_name, str), default="auto")
    p.add_argument("--save-prompted", default=None, metavar="DIR", help="also write each prompted image as a PNG")
    p.add_argument("--max-image-mp", type=_positive(float), default=DEFAULT_MAX_IMAGE_PIXELS / 1e6, metavar="MP",
                   help="refuse images with more megapixels than this, read from the header before decoding "
                        "(default: %(default)g)")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="several prompts on the same images, and whether they differ beyond noise",
                       description="Top-1 of each prompt on one split of one dataset, with and without its prompt; "
                                   "each prompt after the first against the first, image by image: the difference "
                                   "in points with its 95%% interval, the images only one of the two gets right, "
                                   "and McNemar's exact p-value (a small one: the difference is more than the "
                                   "split's noise).")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help=PROMPT_HELP + "; the first is the reference")
    _add_split_options(p, "the one the first prompt was trained on")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what a prompt file holds; or the known datasets and backbones",
                       description="Print a prompt file's metadata and metrics (validated), or with no file the "
                                   "datasets and backbone specs this version knows.")
    p.add_argument("prompt", nargs="?", help=PROMPT_HELP)
    p.add_argument("--json", action="store_true", help="print the raw metadata as JSON")


def _add_push(sub) -> None:
    p = sub.add_parser("push", help="upload a prompt to the Hugging Face Hub",
                       description="Upload a prompt to a Hub model repo (created if missing): prompt.safetensors, "
                                   "config.json, a model card (README.md) with its accuracy, and prompt.png.")
    p.add_argument("prompt", help="prompt file (.safetensors)")
    p.add_argument("--repo-id", required=True, metavar="USER/NAME", help="the Hub repo to create or update")
    p.add_argument("--token", default=None, help="token with write access (default: the one from `hf auth login` "
                   "or $HF_TOKEN; prefer those, a token on the command line is visible to others)")
    p.add_argument("--private", action="store_true", help="make a new repo private (an existing one keeps its "
                   "visibility)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", metavar="DIR", default=None, help="only write the folder that would be uploaded")


def _train_defaults_in(argv: list[str] | None) -> tuple[str, bool]:
    """What a command line says about the train options' defaults, read before the full parser is built: the recipe
    it names (else the default one) and whether it asks for a short run (``--steps`` of at most
    :data:`~visual_prompting.recipes.SHORT_RUN_STEPS`: the recipe's lr for a short run is then the default)."""
    from .recipes import DEFAULT_RECIPE, RECIPES, is_short_run

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=DEFAULT_RECIPE)
    pre.add_argument("--steps", default=None)
    a = pre.parse_known_args(argv)[0]
    try:
        short = is_short_run(None if a.steps is None else int(a.steps))
    except ValueError:  # not a number: the full parser says so
        short = False
    return (a.recipe if a.recipe in RECIPES else DEFAULT_RECIPE), short  # an unknown name: the full parser says so


def build_parser(recipe: str | None = None, short_run: bool = False) -> argparse.ArgumentParser:
    from .recipes import DEFAULT_RECIPE

    ap = argparse.ArgumentParser(prog="python -m visual_prompting",
                                 description="Visual prompting: adapt a frozen vision model to a new classification "
                                             "task by learning one image perturbation.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{train,eval,predict,compare,info,push}")
    _add_train(sub, recipe or DEFAULT_RECIPE, short_run)
    _add_eval(sub)
    _add_predict(sub)
    _add_compare(sub)
    _add_info(sub)
    _add_push(sub)
    return ap


def _pct(x) -> str:  # the CLI's columns: the number in 5 characters, "n/a" in the same ones
    return percent(x, width=5, missing="n/a")


def cmd_train(a, should_stop=None) -> int:
    """``should_stop``: polled while the run prepares and every step (the CLI's: a Ctrl-C came, see :class:`_CtrlC`)."""
    from .settings import from_args
    from .train_config import TrainConfig
    from .training import train

    cfg = from_args(TrainConfig, a)
    bar, zero = None, None

    def say(msg: str) -> None:
        (bar.write(msg) if bar is not None else print(msg, file=sys.stderr))

    def progress(ev):
        nonlocal bar, zero
        if ev.kind == "prepare":
            say(f"{ev.message} ...")
        elif ev.kind == "start":
            say(ev.message)
            if not a.quiet:
                from tqdm import tqdm

                bar = tqdm(total=ev.total_steps, initial=ev.step, unit="step", dynamic_ncols=True)
        elif ev.kind == "step" and bar is not None:
            if bar.total != ev.total_steps:  # a time budget: the estimate of the steps that fit
                bar.total = ev.total_steps
            bar.update(ev.step - bar.n)
            bar.set_postfix(loss=f"{ev.loss:.3f}", lr=f"{ev.lr:.3g}", img_s=f"{ev.images_per_s:.0f}")
        elif ev.kind == "eval":
            if zero is None and ev.zero_shot_val_top1 is not None:  # measured at the first evaluation
                zero = ev.zero_shot_val_top1
                say(f"zero-shot (no prompt) val top-1: {_pct(zero)}")
            say(f"step {ev.step}: val top-1 {_pct(ev.val_top1)} (best {_pct(ev.best_val_top1)})"
                + (f" {ev.message}" if ev.message else ""))
        elif ev.kind == "end" and bar is not None:
            bar.close()

    res = train(cfg, callbacks=[progress], should_stop=should_stop)
    from .distributed import current

    if not current().is_main:  # several processes (torchrun): rank 0 alone reports
        return 130 if res.interrupted else 0
    m = res.metrics
    if res.interrupted:
        print(res.stop_reason)
    if res.best_path is None:  # stopped before the first step
        return 130
    print(f"best prompt: {res.best_path}  (last: {res.last_path})")
    print(f"test top-1   no prompt {_pct(m.get('test_top1_no_prompt'))}   prompted {_pct(m['test_top1'])}   "
          f"({m['test_n']} images)")
    print(f"test top-5   no prompt {_pct(m.get('test_top5_no_prompt'))}   prompted {_pct(m['test_top5'])}")
    print(f"val  top-1   no prompt {_pct(m.get('zero_shot_val_top1'))}   prompted {_pct(m.get('best_val_top1'))}")
    if res.below_no_prompt():
        print(f"The prompt is below no prompt on validation after {m.get('steps')} step(s): it needs more training "
              "(--steps, --time-budget; on a CPU a smaller input fits more steps in the same time, e.g. --model "
              "effnet-lite0@96) or another --lr.")
    return 130 if res.interrupted else 0


def mapping_text(mapping: list) -> str:
    """A label mapping in a line: the list itself, or for a multi-source one (a list of lists: up to 1,000 numbers
    for ``contrast``) its shape and the first class's first sources (``info --json`` prints it whole)."""
    if not mapping or not isinstance(mapping[0], list):
        return str(mapping)
    first = mapping[0]
    more = " ..." if len(first) > 10 else ""
    return f"{len(mapping)} classes x {len(first)} sources each, the first reads {first[:10]}{more}"


def cmd_eval(a) -> int:
    from .comparison import prompt_splits
    from .evaluation import evaluate
    from .model import PromptedModel
    from .utils import pick_device

    model, pf = PromptedModel.from_prompt_file(a.prompt, pick_device(a.device))
    name, splits = prompt_splits(model, pf, a.dataset, a.data_root, a.download)
    data = splits.get(a.split)
    with_p = evaluate(model, data, True, a.batch_size)
    without = evaluate(model, data, False, a.batch_size)  # uses the no-prompt mapping when the file has one
    if a.json:
        print(json.dumps({"prompted": with_p.to_dict(), "no_prompt": without.to_dict()}, indent=2))
        return 0
    print(f"{name} / {a.split}: {with_p.n} images, {len(model.class_names)} classes, backbone {model.backbone.spec}")
    print("            no prompt   prompted")
    print(f"top-1        {_pct(without.top1)}     {_pct(with_p.top1)}")
    print(f"top-5        {_pct(without.top5)}     {_pct(with_p.top5)}")
    if a.per_class:
        for c in model.class_names:
            print(f"  {c:30s} {_pct(without.per_class[c])}     {_pct(with_p.per_class[c])}")
    return 0


def cmd_compare(a) -> int:
    from .comparison import compare_prompts
    from .utils import pick_device

    c = compare_prompts(a.prompts, a.dataset, a.split, pick_device(a.device), a.data_root, a.download, a.batch_size)
    if a.json:
        print(json.dumps(c.to_dict(), indent=2))
        return 0
    print(f"{c.dataset} / {c.split}: {c.n} images, each prompt with its own backbone")
    print(f"  {'':3s} {'no prompt':>9s} {'prompted':>9s}  prompt")
    for i, s in enumerate(c.scores):
        print(f"  {'ref' if i == 0 else i:>3} {_pct(s.top1_no_prompt):>9s} {_pct(s.top1):>9s}  {s.source} "
              f"({s.prompter}, {s.backbone})")
    for i, d in enumerate(c.differences, 1):
        lo, hi = d.ci95
        print(f"  {i} - ref: {d.difference:+.2f} points (95% {lo:+.2f} to {hi:+.2f}); right only with ref "
              f"{d.only_reference}, only with {i} {d.only_other}; McNemar p = {d.p_value:.3g}")
    return 0


def cmd_predict(a) -> int:
    import os

    from .data import open_image
    from .model import PromptedModel
    from .utils import pick_device

    if a.save_prompted and os.path.exists(a.save_prompted) and not os.path.isdir(a.save_prompted):
        raise VPError(f"--save-prompted {a.save_prompted} is a file; give it a folder (new or existing).")
    model, pf = PromptedModel.from_prompt_file(a.prompt, pick_device(a.device))
    failures = 0
    for path in a.images:
        try:
            img = open_image(path, max_pixels=int(a.max_image_mp * 1e6))
        except VPError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        (zs,), (pr,), (prompted,) = model.predict_both([img], a.top_k, with_images=True)
        print(f"\n{path}")
        print(f"  {'zero-shot (no prompt)':36s}  {'prompted':36s}")
        for (n0, p0), (n1, p1) in zip(zs, pr):
            print(f"  {n0[:28]:28s} {100 * p0:5.1f}%   {n1[:28]:28s} {100 * p1:5.1f}%")
        if a.save_prompted:
            os.makedirs(a.save_prompted, exist_ok=True)
            out = os.path.join(a.save_prompted, os.path.splitext(os.path.basename(path))[0] + "_prompted.png")
            prompted.save(out)
            print(f"  prompted image: {out}")
    return 2 if failures == len(a.images) else (1 if failures else 0)


def cmd_info(a) -> int:
    if not a.prompt:
        from .backbones import backbone_help
        from .data import dataset_help

        print("datasets:", dataset_help())
        print("backbones:", backbone_help())
        return 0
    from .heads import head_text
    from .prompt_file import load_prompt

    pf = load_prompt(a.prompt)
    m = pf.meta
    if a.json:
        print(json.dumps(m, indent=2))
        return 0
    pc, head = m["prompter"], m["head"]
    print(f"prompt file   {a.prompt}")
    print(f"prompter      {pc['kind']}, size {pc['size']} at {pc['image_size']}px{stack_text(pc)}, clamp "
          f"{pc['clamp']}, {pf.prompter.num_parameters():,} numbers")
    for t in pf.prompter.transforms:
        print(f"              {t.summary()}")
    print(f"backbone      {m['backbone']['spec']}")
    print(f"dataset       {m.get('dataset', '')}")
    print(f"classes       {len(m['class_names'])}: {', '.join(m['class_names'][:10])}{' ...' if len(m['class_names']) > 10 else ''}")
    print(f"head          {head_text(head)}" + (f": {mapping_text(head['mapping'])}" if "mapping" in head else ""))
    ranks = m.get("distributed") or {}
    if ranks.get("world_size", 1) > 1:
        print(f"trained on    {ranks['world_size']} processes, {ranks.get('per_rank_batch')} images each per step")
    for k, v in m.get("metrics", {}).items():
        if isinstance(v, float):
            print(f"  {k:24s} {v:.4f}")
        elif isinstance(v, (int, str)):
            print(f"  {k:24s} {v}")
    return 0


def cmd_push(a) -> int:
    from .hub import prepare_upload, push_prompt

    if a.dry_run:
        print(f"upload folder: {prepare_upload(a.prompt, a.dry_run, repo_id=a.repo_id)}")
        return 0
    print(f"pushed: {push_prompt(a.prompt, a.repo_id, token=a.token, private=a.private, commit_message=a.message)}")
    return 0


class _CtrlC(SigintHandler):
    """Remembers that a Ctrl-C came (and raises KeyboardInterrupt as Python's own handler does), so that one which
    lands inside a library call and comes back as another exception (safetensors' ``get_tensor`` turned it into a
    ValueError while the bundled subset loaded) still ends the command as an interruption, and one that a library
    swallowed altogether still stops a training run (``cmd_train`` polls :attr:`came` while preparing and every
    step). Installed only in the main thread over Python's default handler (not over SIG_IGN, as under
    ``nohup ... &``, nor over a caller's own); the trainer's step-boundary handler (``training.SigintBetweenSteps``)
    sits on top of it while steps run."""

    def __init__(self):
        super().__init__()
        self.came = False

    def _takes_over(self, current) -> bool:
        return current is signal.default_int_handler

    def _on_sigint(self, signum, frame):
        self.came = True
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    with _CtrlC() as ctrl_c:
        return _main(argv, ctrl_c)


def _main(argv: list[str] | None, ctrl_c: _CtrlC) -> int:
    try:
        given = sys.argv[1:] if argv is None else argv
        args = build_parser(*_train_defaults_in(given)).parse_args(argv)
        if getattr(args, "prompt", None) and args.command in ("eval", "predict", "info"):
            from .hub import resolve_prompt

            args.prompt = resolve_prompt(args.prompt)
        if args.command == "compare":
            from .hub import resolve_prompt

            args.prompts = [resolve_prompt(p) for p in args.prompts]
        if args.command == "train":  # a Ctrl-C that a library swallowed while the run prepared still stops it
            return cmd_train(args, should_stop=lambda: ctrl_c.came)
        return {"eval": cmd_eval, "predict": cmd_predict, "compare": cmd_compare, "info": cmd_info,
                "push": cmd_push}[args.command](args)
    except VPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        if not ctrl_c.came:
            raise
        print("interrupted", file=sys.stderr)  # the Ctrl-C came back from a library call as another exception
        return 130
