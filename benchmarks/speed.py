"""Training speed against the limit: images/s of the library's training step, next to

* ``limit``: one forward and backward through the same frozen backbone (+ head and loss) to the input, on the
  same batch, nothing else (no prompt, no optimiser, no host sync);
* ``reference``: a step written the way the paper's released code does it (hjbahng/visual_prompting,
  main_clip.py / main_vision.py): the prompt added to the *normalised* image by a prompter that allocates its
  zero centre and repeats the prompt across the batch on every call, every backbone weight with
  ``requires_grad=True`` (so every weight gradient is computed, and accumulated, never zeroed), SGD on the
  prompt only, ``loss.item()`` and accuracy every step; for CLIP also the class texts tokenized and run through
  the text encoder on every batch (``model(images, text_tokens)``), fp16 autocast + GradScaler on CUDA, and the
  logit-scale clamp. For vision models the reference runs in fp32 (main_vision.py has no AMP);
  ``--reference-amp same`` gives it the library's autocast instead.

    python benchmarks/speed.py                       # CPU: ~5-6 min on 2 cores (design estimate)
    python benchmarks/speed.py --device cuda         # GPU with AMP: ~2 min (design estimate)
    python benchmarks/speed.py --smoke --out /tmp/s  # tiny models, seconds

The three variants run in one process, interleaved: every repeat times each variant once (the order rotates
from repeat to repeat), after warm-up steps; the reported images/s is the median over repeats. Models:
``clip:ViT-B-32/random`` (the real ViT-B/32 architecture with random weights: same cost as the real weights,
no download) and ``effnet-lite0`` (real weights), both at 224 px. Batch: on CPU 8 (ViT-B/32) and 32
(EfficientNet), 3-5 repeats of 2 steps; on CUDA the paper's batches, 256 and 128, 5 repeats of 10 steps.

Peak memory: each variant is run again in a fresh subprocess (so nothing else is allocated there) for a few
steps. CUDA: ``torch.cuda.max_memory_allocated`` of that process (weights, activations, gradients). CPU: peak
resident memory of that process minus its resident memory just before the model was built (so: weights +
activations + gradients + allocator slack; psutil is not needed, it is ``getrusage``'s ``ru_maxrss``).

Results are merged into ``OUT/speed.json`` by model and device (a GPU run keeps the CPU numbers already there;
``--fresh`` starts over): ``results[model][device]`` holds ``library_img_s``, ``limit_img_s``,
``reference_img_s``, ``ratio_vs_limit`` (goal >= 0.95), ``ratio_vs_reference`` (goal >= 2) and
``library_peak_mem_mib`` / ``limit_peak_mem_mib`` / ``reference_peak_mem_mib``.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (REPO, apply_threads, bench_parser, machine_line, markdown_table, provenance, provenance_of,  # noqa: E402
                    median, pyplot, save_figure, sync, write_json)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from visual_prompting import BackboneCache, TrainConfig, load_backbone  # noqa: E402
from visual_prompting.backbones import ClipBackbone  # noqa: E402
from visual_prompting.classnames import CLASSNAMES, PAPER_TEMPLATE  # noqa: E402
from visual_prompting.data import DataSplits, TensorImageSet  # noqa: E402
from visual_prompting.heads import create_head  # noqa: E402
from visual_prompting.training import Trainer, cosine_lr  # noqa: E402
from visual_prompting.utils import amp_dtype, autocast, pick_device  # noqa: E402

VARIANTS = ("library", "limit", "reference")
CLASS_NAMES = CLASSNAMES["fashion_mnist"]
FULL_MODELS = ["clip:ViT-B-32/random", "effnet-lite0"]
SMOKE_MODELS = ["clip:vp-tiny", "effnet-lite0@32"]



# the code this result measures: `benchmarks/report.py --stale` lists a result as stale once any of these
# paths changed after the commit it records
MEASURES = [
    "benchmarks/speed.py",
    "visual_prompting/training.py",
    "visual_prompting/prompters.py",
    "visual_prompting/heads.py",
    "visual_prompting/backbones.py",
    "visual_prompting/utils.py",
]

def default_batch(spec: str, device: torch.device, smoke: bool) -> int:
    if smoke:
        return 4
    clip = spec.startswith("clip:")
    if device.type == "cuda":
        return 256 if clip else 128  # the paper's batches
    return 8 if clip else 32


def synthetic_splits(image_size: int, n: int = 64) -> DataSplits:
    """A few random images with Fashion-MNIST's class names: the Trainer needs splits, the timing does not."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % len(CLASS_NAMES)
    s = TensorImageSet(imgs, labels, CLASS_NAMES, "synthetic")
    return DataSplits(s, s, s, CLASS_NAMES, "synthetic")


# -- the three variants ----------------------------------------------------------------------------------------

class LibraryStep:
    """``Trainer.advance``, the loop's step: prompt (clamped), frozen backbone, head, loss, backward, grad scale, SGD,
    projection, and the step event (the previous step's loss and accuracy read from the device)."""

    def __init__(self, spec, device, batch, amp, cache):
        self.tmp = tempfile.TemporaryDirectory(prefix="vp-speed-")
        bb = cache.get(spec, device)
        cfg = TrainConfig(model=spec, steps=10**6, batch_size=batch, device=str(device), amp=amp,
                          out_dir=self.tmp.name, num_workers=0)
        self.trainer = Trainer(cfg, cache=cache, splits=synthetic_splits(bb.image_size))
        self.normalized_input = False

    def __call__(self, x, y):
        self.trainer.advance(x, y)  # as the loop steps: train_step, the previous step's loss read one step late


class LimitStep:
    """Forward + backward of the frozen backbone and head to the input: the least a prompt step can cost."""

    normalized_input = False

    def __init__(self, backbone, head, device, amp):
        self.backbone, self.head, self.device, self.amp = backbone, head, device, amp

    def __call__(self, x, y):
        x = x.detach().requires_grad_(True)
        with autocast(self.device, self.amp):
            loss = F.cross_entropy(self.head(self.backbone(x)).float(), y)
        loss.backward()


class ReferencePadPrompter(nn.Module):
    """The reference code's PadPrompter: randn init, prompt in normalised space, a fresh zero centre and a
    batch-sized copy of the prompt on every call."""

    def __init__(self, pad: int, image_size: int):
        super().__init__()
        self.base_size = image_size - 2 * pad
        self.pad_up = nn.Parameter(torch.randn([1, 3, pad, image_size]))
        self.pad_down = nn.Parameter(torch.randn([1, 3, pad, image_size]))
        self.pad_left = nn.Parameter(torch.randn([1, 3, image_size - 2 * pad, pad]))
        self.pad_right = nn.Parameter(torch.randn([1, 3, image_size - 2 * pad, pad]))

    def forward(self, x):
        base = torch.zeros(1, 3, self.base_size, self.base_size, device=x.device)
        prompt = torch.cat([self.pad_left, base, self.pad_right], dim=3)
        prompt = torch.cat([self.pad_up, prompt, self.pad_down], dim=2)
        prompt = torch.cat(x.size(0) * [prompt])
        return x + prompt


class ReferenceStep:
    """One step of the reference training loop (see the module docstring). Takes normalised images, as the
    reference's DataLoader transforms deliver them."""

    normalized_input = True

    def __init__(self, backbone, device, amp, mode: str):
        self.bb = backbone
        self.net = backbone.net
        self.net.requires_grad_(True)  # the reference never freezes the model
        self.net.eval()
        self.device = device
        self.clip = isinstance(backbone, ClipBackbone)
        S = backbone.image_size
        self.prompter = ReferencePadPrompter(max(1, round(30 * S / 224)), S).to(device)
        self.opt = torch.optim.SGD(self.prompter.parameters(), lr=40, momentum=0.9, weight_decay=0)
        self.step = 0
        self.texts = [PAPER_TEMPLATE.format(c) for c in CLASS_NAMES]
        self.indices = list(range(len(CLASS_NAMES)))
        if mode == "faithful":  # main_clip.py: torch.cuda.amp fp16 autocast + GradScaler; main_vision.py: fp32
            on = amp and device.type == "cuda" and self.clip
            self.dtype = torch.float16 if on else None
        else:  # the library's autocast
            self.dtype = amp_dtype(device) if amp else None
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def _autocast(self):
        if self.dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def __call__(self, images, target):
        for g in self.opt.param_groups:  # scheduler(step)
            g["lr"] = cosine_lr(self.step, 10**6, 40.0, 1000)
        self.step += 1
        if self.clip:
            self.opt.zero_grad()
            text_tokens = self.bb.tokenizer(self.texts).to(self.device)
            with self._autocast():
                prompted = self.prompter(images)
                out = self.net(prompted, text_tokens)
                output = out[2] * out[0] @ out[1].t()  # logits_per_image
                loss = F.cross_entropy(output, target)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.opt)
                else:
                    loss.backward()
                    self.opt.step()
            if self.scaler is not None:
                self.scaler.update()
            self.net.logit_scale.data = torch.clamp(self.net.logit_scale.data, 0, 4.6052)
        else:
            with self._autocast():
                prompted = self.prompter(images)
                output = self.net(prompted)[:, self.indices]
                loss = F.cross_entropy(output, target)
            self.opt.zero_grad()
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
        (output.argmax(1) == target).float().mean().item()  # accuracy(output, target)
        loss.item()


class LibraryStepStreamSync(LibraryStep):
    """The library's step as it was before :class:`~visual_prompting.utils.HostReadback`: the previous step's loss
    read with a plain device-to-host copy, which on CUDA waits for the whole stream (the step just queued too).
    Timed on CUDA only (``library_stream_sync_img_s``), to show what reading without that wait is worth."""

    def __init__(self, *a):
        super().__init__(*a)
        self.trainer.readback.cuda = False  # values stay on the device; read() then syncs the stream


def build_variant(name, spec, device, batch, amp, mode, cache, library=None):
    if name == "library":
        return LibraryStep(spec, device, batch, amp, cache)
    if name == "library_stream_sync":
        return LibraryStepStreamSync(spec, device, batch, amp, cache)
    if name == "limit":
        bb = cache.get(spec, device)
        head = library.trainer.model.head if library is not None else create_head(bb, CLASS_NAMES)
        return LimitStep(bb, head, device, amp)
    if name == "reference":  # its own copy of the weights: these require grad
        bb = copy.deepcopy(cache.get(spec, device)) if cache is not None else load_backbone(spec, device)
        return ReferenceStep(bb, device, amp, mode)
    raise ValueError(name)


def make_batch(image_size, batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, image_size, image_size, generator=g).mul_(255).round_().div_(255).to(device)
    y = (torch.arange(batch) % len(CLASS_NAMES)).to(device)
    return x, y


# -- timing ----------------------------------------------------------------------------------------------------

def print_profiles(variants: dict, inputs: dict, y, device, steps: int = 5, rows: int = 15) -> None:
    """Where a step's time goes: torch.profiler's ops by self device (else CPU) time, per variant."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for n, v in variants.items():
        sync(device)
        with profile(activities=acts) as prof:
            for _ in range(steps):
                v(inputs[n], y)
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"== profile: {n}, {steps} steps ==\n" + prof.key_averages().table(sort_by=key, row_limit=rows), flush=True)


def time_model(spec, device, batch, amp, mode, steps, repeats, warmup, quiet=False, profile=False) -> dict:
    cache = BackboneCache()
    library = build_variant("library", spec, device, batch, amp, mode, cache)
    variants = {"library": library,
                "limit": build_variant("limit", spec, device, batch, amp, mode, cache, library),
                "reference": build_variant("reference", spec, device, batch, amp, mode, cache)}
    timed_names = list(VARIANTS)
    if device.type == "cuda":  # on CPU a device-to-host read waits for nothing: the two are the same step there
        variants["library_stream_sync"] = build_variant("library_stream_sync", spec, device, batch, amp, mode, cache)
        timed_names.append("library_stream_sync")
    bb = cache.get(spec, device)
    x, y = make_batch(bb.image_size, batch, device)
    with torch.no_grad():
        x_norm = bb.normalize(x)  # the reference's DataLoader normalises before the step
    inputs = {n: (x_norm if v.normalized_input else x) for n, v in variants.items()}
    for n, v in variants.items():
        for _ in range(warmup):
            v(inputs[n], y)
    sync(device)
    per_repeat = {n: [] for n in timed_names}
    for r in range(repeats):
        k = r % len(timed_names)
        order = timed_names[k:] + timed_names[:k]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                variants[n](inputs[n], y)
            sync(device)
            per_repeat[n].append(batch * steps / (time.perf_counter() - t0))
        if not quiet:
            print(f"    repeat {r + 1}/{repeats}: " + "  ".join(f"{n} {per_repeat[n][-1]:.1f}" for n in timed_names)
                  + " img/s", flush=True)
    if profile:
        print_profiles({n: variants[n] for n in ("library", "limit")}, inputs, y, device)
    out = {f"{n}_img_s": median(per_repeat[n]) for n in timed_names}
    out["per_repeat_img_s"] = per_repeat
    out["image_size"] = bb.image_size
    del variants, library, cache, bb, x, y, x_norm, inputs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# -- memory (one fresh process per variant) --------------------------------------------------------------------

def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _reset_peak_rss() -> bool:
    """Linux: reset this process's peak RSS (VmHWM) to its current RSS, so the peak measured next is only
    what comes after (startup spikes, e.g. while libraries load, are not counted)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def probe_memory(variant, spec, device, batch, amp, mode, steps=3) -> dict:
    """Run in a fresh process: build one variant, run a few steps, report its peak memory."""
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    x, y = make_batch(load_backbone_size(spec), batch, device)
    # the libraries a model load imports are loaded first: their memory is not the variant's
    import open_clip  # noqa: F401
    from visual_prompting.backbones import imagenet_classes

    imagenet_classes()
    try:
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        pass
    gc.collect()
    reset = _reset_peak_rss()
    before = _rss_bytes() or _peak_rss_bytes()
    # the reference loads its own weights (cache=None): one copy of the model in this process, as in the others
    cache = BackboneCache() if variant != "reference" else None
    v = build_variant(variant, spec, device, batch, amp, mode, cache)
    bb = v.bb if variant == "reference" else cache.get(spec, device)
    with torch.no_grad():
        xin = bb.normalize(x) if v.normalized_input else x
    for _ in range(steps):
        v(xin, y)
    sync(device)
    if device.type == "cuda":
        return {"peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "memory_kind": "cuda max_memory_allocated in a fresh process"}
    kind = "CPU peak RSS of a fresh process minus its RSS before the model was built"
    if not reset:
        kind += " (peak could not be reset here: an upper bound that may include startup)"
    return {"peak_mem_mib": (_peak_rss_bytes() - before) / 2**20, "memory_kind": kind}


def load_backbone_size(spec: str) -> int:
    from visual_prompting.backbones import TINY_CLIP_CONFIGS, parse_spec

    family, name, _, size = parse_spec(spec)
    if size:
        return size
    if family == "clip" and name in TINY_CLIP_CONFIGS:
        return TINY_CLIP_CONFIGS[name]["vision_cfg"]["image_size"]
    return 224


def memory_in_subprocess(variant, spec, device, batch, amp, mode, threads) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-memory", variant, "--models", spec,
           "--device", str(device), "--batch-size", str(batch), "--reference-amp", mode]
    if not amp:
        cmd.append("--no-amp")
    if threads:
        cmd += ["--threads", str(threads)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"peak_mem_mib": None, "memory_kind": f"probe failed: {(p.stderr or p.stdout)[-300:]}"}
    return json.loads(lines[-1])


# -- report ----------------------------------------------------------------------------------------------------

def table(results: dict) -> str:
    rows = []
    for model, per_dev in results.items():
        for dev, r in per_dev.items():
            rows.append([model, f"{dev} ({provenance_of(r)['machine'].get('device_name')})", r["batch_size"],
                         "on" if r["amp"] else "off", r["library_img_s"], r["limit_img_s"], r["reference_img_s"],
                         r["ratio_vs_limit"], r["ratio_vs_reference"], _mib(r.get("library_peak_mem_mib")),
                         _mib(r.get("limit_peak_mem_mib")), _mib(r.get("reference_peak_mem_mib"))])
    return markdown_table(["model", "device", "batch", "AMP", "library img/s", "limit img/s", "reference img/s",
                           "library/limit (goal >= 0.95)", "library/reference (goal >= 2)", "library MiB",
                           "limit MiB", "reference MiB"], rows)


def _mib(v):
    return None if v is None else round(v)


def plot(results: dict, path: Path) -> None:
    """Speeds relative to the limit (so CPU and GPU entries share an axis), absolute img/s written on the bars;
    peak memory in MiB."""
    plt = pyplot()
    entries = [(m, d, r) for m, per in results.items() for d, r in per.items()]
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.5 + 1.2 * len(entries)))
    labels = [f"{m}\n{d}, batch {r['batch_size']}" for m, d, r in entries]
    colors = {"library": "#1f77b4", "limit": "#2ca02c", "reference": "#ff7f0e"}
    h = 0.27
    mem_seen = []
    for j, v in enumerate(VARIANTS):
        ys = [i + (j - 1) * h for i in range(len(entries))]
        rel = [(r[f"{v}_img_s"] or 0) / r["limit_img_s"] for _, _, r in entries]
        mems = [r.get(f"{v}_peak_mem_mib") for _, _, r in entries]
        mem_seen += [m for m in mems if m]
        axes[0].barh(ys, rel, height=h, color=colors[v], label=v)
        for y_, x_, (_, _, r) in zip(ys, rel, entries):
            axes[0].text(x_, y_, f" {r[f'{v}_img_s']:.4g} img/s", va="center", fontsize=7)
        axes[1].barh(ys, [m or 0 for m in mems], height=h, color=colors[v], label=v)
        for y_, m in zip(ys, mems):
            axes[1].text(m or 0, y_, f" {m:,.0f}" if m else " not measured", va="center", fontsize=7)
    axes[0].axvline(0.95, color="gray", ls="--", lw=1, label="goal: library >= 0.95 x limit")
    axes[0].set_xlabel("training images/s relative to the limit (median over repeats)")
    axes[0].set_xlim(0, 1.45)
    axes[1].set_xlabel("peak memory (MiB)")
    if mem_seen and max(mem_seen) / min(mem_seen) > 20:
        axes[1].set_xscale("log")
        axes[1].set_xlim(min(mem_seen) / 2, max(mem_seen) * 3)
    elif mem_seen:
        axes[1].set_xlim(0, max(mem_seen) * 1.2)
    for ax in axes:
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("One training step: library vs forward+backward limit vs reference-style loop", fontsize=10)
    save_figure(plt, fig, path, rect=(0, 0.07, 1, 1))


# -- main ------------------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = bench_parser(__doc__, "speed", "tiny models (clip:vp-tiny, effnet-lite0@32), batch 4, 1 step")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    ap.add_argument("--models", default=None, help=f"comma-separated backbone specs (default: {','.join(FULL_MODELS)})")
    ap.add_argument("--batch-size", type=int, default=None, help="one batch for every model (default: per model, see above)")
    ap.add_argument("--steps", type=int, default=None, help="steps per variant per repeat (default: CPU 2, CUDA 10)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default: CPU 5 (3 for CLIP), CUDA 5)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default: CPU 1, CUDA 3)")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="no autocast on CUDA")
    ap.add_argument("--reference-amp", choices=["faithful", "same"], default="faithful",
                    help="reference loop's precision: as the reference code (CLIP fp16, vision fp32) or the library's")
    ap.add_argument("--memory", choices=["subprocess", "off"], default="subprocess",
                    help="measure each variant's peak memory in a fresh process (off: leave it null)")
    ap.add_argument("--fresh", action="store_true", help="do not merge with an existing speed.json")
    ap.add_argument("--probe-memory", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true",
                    help="run nothing: rewrite speed.md and speed.png from OUT/speed.json (e.g. after merging in the "
                         "entries of a run on another machine)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of library and limit")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = pick_device(args.device)
    models = args.models.split(",") if args.models else (SMOKE_MODELS if args.smoke else FULL_MODELS)
    amp = bool(args.amp and device.type == "cuda")
    if args.probe_memory:  # internal: one variant, in this fresh process
        spec = models[0]
        batch = args.batch_size or default_batch(spec, device, args.smoke)
        print(json.dumps(probe_memory(args.probe_memory, spec, device, batch, amp, args.reference_amp)))
        return {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "speed.json"
    if args.render:
        doc = json.loads(json_path.read_text())
        print(render(doc, out))
        return doc
    doc = {"results": {}}
    if json_path.is_file() and not args.fresh:
        try:
            doc = json.loads(json_path.read_text())
            doc.setdefault("results", {})
        except json.JSONDecodeError:
            doc = {"results": {}}
    prov = provenance("speed.py", argv, device)  # before the run; each entry keeps the provenance of its own run
    doc.pop("machine", None)  # files before provenance(): the last run's machine, now per entry
    doc["notes"] = ("images/s: median over interleaved repeats. limit: forward+backward of the frozen backbone+head "
                    "to the input only. reference: the paper's released training loop's habits (see speed.py). "
                    "clip:ViT-B-32/random has the real ViT-B/32 architecture with random weights (same cost). "
                    "Peak memory: a fresh process per variant (CUDA: max_memory_allocated; CPU: peak RSS minus RSS "
                    "before the model was built).")
    for spec in models:
        batch = args.batch_size or default_batch(spec, device, args.smoke)
        clip = spec.startswith("clip:") and not args.smoke
        steps = args.steps or (1 if args.smoke else 10 if device.type == "cuda" else 2)
        repeats = args.repeats or (2 if args.smoke else 5 if device.type == "cuda" else 3 if clip else 5)
        warmup = args.warmup if args.warmup is not None else (1 if args.smoke or device.type != "cuda" else 3)
        if not args.quiet:
            print(f"-- {spec} on {device}: batch {batch}, {repeats} repeats x {steps} steps, AMP {amp}", flush=True)
        r = time_model(spec, device, batch, amp, args.reference_amp, steps, repeats, warmup, args.quiet, args.profile)
        r.update(batch_size=batch, steps=steps, repeats=repeats, warmup=warmup, amp=amp,
                 amp_dtype=str(amp_dtype(device)) if amp else None, reference_amp=args.reference_amp,
                 ratio_vs_limit=r["library_img_s"] / r["limit_img_s"],
                 ratio_vs_reference=r["library_img_s"] / r["reference_img_s"])
        for v in VARIANTS:
            if args.memory == "subprocess":
                mem = memory_in_subprocess(v, spec, device, batch, amp, args.reference_amp, args.threads)
            else:
                mem = {"peak_mem_mib": None, "memory_kind": "not measured (--memory off)"}
            r[f"{v}_peak_mem_mib"] = mem["peak_mem_mib"]
            r["memory_kind"] = mem["memory_kind"]
        r["goals"] = {"ratio_vs_limit>=0.95": r["ratio_vs_limit"] >= 0.95,
                      "ratio_vs_reference>=2": r["ratio_vs_reference"] >= 2}
        r["provenance"] = prov
        doc["results"].setdefault(spec, {})[device.type] = r
        write_json(json_path, doc)
        if not args.quiet:
            print(f"   library {r['library_img_s']:.1f}  limit {r['limit_img_s']:.1f}  reference "
                  f"{r['reference_img_s']:.1f} img/s; library/limit {r['ratio_vs_limit']:.2f}, "
                  f"library/reference {r['ratio_vs_reference']:.2f}"
                  + (f"; before HostReadback (a stream sync per step) {r['library_stream_sync_img_s']:.1f}"
                     if "library_stream_sync_img_s" in r else ""), flush=True)
    print(render(doc, out))
    return doc


def render(doc: dict, out: Path) -> str:
    """speed.md and speed.png from a speed.json's results (CPU and GPU entries may come from different runs and
    machines: each entry's command and machine are listed)."""
    plot(doc["results"], out / "speed.png")
    entries = [(m, d, r) for m, per in doc["results"].items() for d, r in per.items()]
    commands = list(dict.fromkeys(provenance_of(r)["command"] for _, _, r in entries))
    machines = {}
    for m, d, r in entries:
        machines.setdefault(machine_line(provenance_of(r)), []).append(f"{m} {d}")
    text = ("### Training speed against the limit\n\n" + "".join(f"    {c}\n" for c in commands) + "\n"
            + table(doc["results"]) + "\n\n"
            + "".join(f"Machine ({', '.join(v)}): {k}.\n" for k, v in machines.items()))
    (out / "speed.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
