"""Datasets: decoded once into uint8 tensors (when they fit in memory), split deterministically, batched.

Names accepted by :func:`load_splits`:

* ``fashion_mnist_subset`` - the small balanced Fashion-MNIST subset shipped in ``assets/`` (tests, offline demo)
* ``cifar10 cifar100 svhn eurosat flowers102 dtd oxford_pets food101 gtsrb mnist fashion_mnist`` - through
  torchvision (downloaded into ``root`` when ``download=True``); ``fashion_mnist`` is read from Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``) when that is installed
* a directory of class folders (torchvision's ImageFolder layout); if it has ``train/`` and ``test/`` (or ``val/``)
  inside, those are the splits, otherwise a fixed 20% is held out as test
* a ``.zip`` of such a folder (unpacked safely by :func:`extract_zip_dataset`, decoded, and the copy removed)

Each kind is a source registered once with :func:`register_dataset_source`; :func:`load_splits`, the CLI and the
app read :data:`DATASET_SOURCES`.

The validation split is carved from train with a fixed seed (independent of the training seed) and is what
picks the best prompt; the test split is only for the final number.
"""
from __future__ import annotations

import gzip
import os
import re
from struct import error as struct_error
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .classnames import CLASSNAMES
from .distributed import ShardedBatchSampler, batch_indices
from .errors import VPError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_SUBSET = ASSETS / "fashion_mnist_subset.safetensors"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = os.environ.get("VP_DATA", os.path.join(os.path.expanduser("~"), ".cache", "visual_prompting", "data"))
SPLIT_SEED = 0
# torchvision's ImageFolder extensions (datasets.folder.IMG_EXTENSIONS; written out so that reading data does not
# import torchvision, seconds of start-up; tests/test_data.py checks they still agree), and GIF
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


# -- paths in messages ---------------------------------------------------------------------------------------

def rename_paths(text: str, names: dict) -> str:
    """``text`` with each path of ``names`` (a file or folder on this machine) written as its name there, the
    longest path first (a folder's files before the folder), each found as given and as its real path. A folder
    given with a trailing separator and the name "" leaves what is inside it: with ``{"/tmp/r/data/": ""}``,
    ``/tmp/r/data/set/c0/0.png`` reads ``set/c0/0.png``."""
    pairs: dict[str, str] = {}
    for path, name in names.items():
        path = os.fspath(path)
        tail = os.sep if path.endswith(os.sep) else ""
        for p in (path, os.path.realpath(path) + tail):
            pairs.setdefault(p, name)
    for p in sorted(pairs, key=len, reverse=True):
        text = text.replace(p, pairs[p])
    return text


@contextmanager
def named_as(names: dict) -> Iterator[None]:
    """A :class:`VPError` raised within whose message holds a path of ``names`` is raised again with those paths
    written as their names (:func:`rename_paths`): a file the reader knows by another name than its place on this
    machine, e.g. an upload's temporary copy by the upload's own name, an unpacked archive by the places inside it."""
    try:
        yield
    except VPError as e:
        text = rename_paths(str(e), names)
        if text == str(e):
            raise
        raise VPError(text) from e


# -- images ---------------------------------------------------------------------------------------------------

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # 50 MP: any photo a phone takes; a header that claims more is refused
IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
                KeyError, ZeroDivisionError, MemoryError, struct_error, Image.DecompressionBombError)


def open_image(path_or_file, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open any image as RGB (its EXIF orientation applied, transparency on white), with a clear message when it is
    not an image, is broken, or has more than ``max_pixels`` pixels (checked from the header, before decoding:
    a decompression bomb costs nothing; ``None``: PIL's own limit)."""
    name = getattr(path_or_file, "name", path_or_file)
    try:
        with warnings.catch_warnings():  # PIL warns above its own limit; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path_or_file)
        w, h = img.size
        if w < 1 or h < 1:
            raise VPError(f"{name} has no pixels ({w} x {h}).")
        if max_pixels and w * h > max_pixels:
            raise VPError(f"{name} is {w} x {h} pixels ({w * h / 1e6:.0f} MP); the limit is "
                          f"{max_pixels / 1e6:g} MP. Use a smaller image.")
        img.load()
        img = _exif_upright(img)
    except Image.DecompressionBombError as e:  # PIL's own check, in Image.open, above twice its own limit
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        mp = f"{int(claimed.group(1)) / 1e6:.0f} MP" if claimed else "too many pixels"
        raise VPError(f"{name} has {mp}; the limit is {(max_pixels or Image.MAX_IMAGE_PIXELS) / 1e6:g} MP. "
                      "Use a smaller image.") from None
    except IMAGE_ERRORS as e:
        raise VPError(f"Cannot read {name} as an image ({e}).") from e
    return to_rgb(img)


def _exif_upright(img: Image.Image) -> Image.Image:
    """The image the way a viewer shows it (EXIF orientation applied); unchanged when the EXIF data is broken."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF: the pixels are still fine
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("La", "RGBa"):  # premultiplied alpha: PIL converts these to their straight form first
        img = img.convert({"La": "LA", "RGBa": "RGBA"}[img.mode])
    if img.mode in ("RGBA", "LA", "P", "PA"):  # composite transparency on white, the way a viewer shows it
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integers, floats: stretched to 8 bits
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        arr = (255 * (arr - arr.min()) / max(arr.max() - arr.min(), 1e-12)).astype(np.uint8)
        img = Image.fromarray(arr)
    return img.convert("RGB")


def pil_to_uint8(img: Image.Image, size: int | None) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) uint8: shorter side resized to ``size`` (bicubic), centre crop."""
    img = to_rgb(img)
    if size is not None:
        w, h = img.size
        if w < 1 or h < 1:
            raise VPError("Image has no pixels.")
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        if max(nw, nh) <= 4 * size:
            img = img.resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size))
        else:  # a long strip (1 x 10000): resize only the part that is kept, not a huge whole
            box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
            img = img.resize((size, size), Image.BICUBIC, box=box)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def to_model_input(batch: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, 3, S, S) in [0, 1]; grey becomes RGB; resized (antialiased) if needed.

    A resized batch is rounded back to 8-bit levels, as a resized image file would be, so that a prompted
    image saved as a PNG holds exactly what the model saw."""
    x = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (image_size, image_size):
        if x.shape[-2] != x.shape[-1]:
            raise VPError(f"Images of shape {tuple(x.shape[-2:])} must be square here; decode them with pil_to_uint8.")
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0).mul_(255.0).round_().div_(255.0)
    return x.contiguous()


# -- image sets -----------------------------------------------------------------------------------------------

class ImageSet:
    """Images of one split with their labels; yields uint8 batches."""

    def __init__(self, labels: torch.Tensor, class_names: list[str], name: str):
        self.labels = labels.long()
        self.class_names = list(class_names)
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageSet:
        raise NotImplementedError

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                shard: tuple[int, int] | None = None, start: int = 0):
        """Yield ``(uint8 images, labels)`` once over the set: batches of ``batch_size`` in order, or in the order
        ``torch.randperm(len, generator=generator)`` draws when ``shuffle``, from batch ``start`` on.
        ``shard=(rank, world_size)``: each batch is the global batch a single process takes, and only this
        rank's contiguous slice of it is yielded (:func:`~visual_prompting.distributed.batch_indices`), so the
        ranks together see every image once per pass (a last batch with fewer images than ranks is left out)."""
        raise NotImplementedError


class TensorImageSet(ImageSet):
    """Every image already decoded, as one uint8 tensor (N, C, H, W) - no decoding per step."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names, name):
        super().__init__(labels, class_names, name)
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise VPError(f"{name}: images must be uint8 (N, C, H, W) with one label each.")
        self.images = images

    def subset(self, indices):
        return TensorImageSet(self.images[indices], self.labels[indices], self.class_names, self.name)

    def resized(self, size: int, chunk: int = 512) -> TensorImageSet:
        """The same set resized once to ``size`` (same arithmetic as :func:`to_model_input`, kept as uint8)."""
        if self.images.shape[-2:] == (size, size):
            return self
        out = torch.empty(len(self), self.images.shape[1], size, size, dtype=torch.uint8)
        for i in range(0, len(self), chunk):
            x = self.images[i : i + chunk].float().div_(255.0)
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            out[i : i + chunk] = x.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        return TensorImageSet(out, self.labels, self.class_names, self.name)

    def batches(self, batch_size, shuffle=False, generator=None, shard=None, start=0):
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for idx in batch_indices(order, batch_size, shard, start):
            yield self.images[idx], self.labels[idx]


class StreamImageSet(ImageSet):
    """Images decoded on the fly by DataLoader workers (datasets too big to hold decoded in memory).

    The batches come from a :class:`~visual_prompting.distributed.ShardedBatchSampler`: the same order an
    in-memory set draws, and with ``shard`` each rank's workers decode only that rank's images. ``pin_memory``
    (the trainer sets it on CUDA) puts batches in page-locked memory for an asynchronous copy to the GPU; each
    worker keeps ``prefetch_factor`` batches decoded ahead."""

    def __init__(self, dataset, labels, class_names, name, image_size: int, num_workers: int = 2,
                 pin_memory: bool = False, prefetch_factor: int = 4):
        super().__init__(labels, class_names, name)
        self.dataset, self.image_size, self.num_workers = dataset, image_size, num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor

    def subset(self, indices):
        return StreamImageSet(torch.utils.data.Subset(self.dataset, indices.tolist()), self.labels[indices],
                              self.class_names, self.name, self.image_size, self.num_workers, self.pin_memory,
                              self.prefetch_factor)

    def _item(self, i):
        img, y = self.dataset[i]
        return pil_to_uint8(img, self.image_size), int(y)

    def batches(self, batch_size, shuffle=False, generator=None, shard=None, start=0):
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        sampler = ShardedBatchSampler(order, batch_size, *(shard or (0, 1)), start=start)
        workers = self.num_workers
        loader = torch.utils.data.DataLoader(
            _Decoded(self), batch_sampler=sampler, num_workers=workers, persistent_workers=False,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            prefetch_factor=self.prefetch_factor if workers else None,
            # the workers' base seed comes from this generator, never from the global RNG (augmentations use that)
            generator=generator if generator is not None else torch.Generator().manual_seed(SPLIT_SEED),
            worker_init_fn=_ignore_ctrl_c, multiprocessing_context=worker_start_method() if workers else None)
        for x, y in loader:
            yield x, y


def worker_start_method():
    """How DataLoader workers start: forked (the default) in one process; from a fork server under torchrun.

    A torchrun process runs gloo's threads, and a fork copies any lock another thread holds at that moment without
    the thread that would release it. Seen here: a decoding worker, forked by a rank, that never delivered its
    first batch (its rank waited for it for ever, the other rank in the gradient's all-reduce; 4 of 77 streamed
    2-process resumes while the test suite ran beside them, none of the first runs). The fork server is a
    single-threaded process started once per rank, with this module already imported, that forks the workers
    (about 3 s a run here: a 2-process streamed run of the distributed tests' size took 10.0 s instead of 6.9 s).
    The ``python -m visual_prompting`` entry point is not run again in them; a script of one's own that trains
    on several processes needs the ``if __name__ == "__main__":`` guard."""
    import multiprocessing as mp

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or "forkserver" not in mp.get_all_start_methods():
        return None
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # torch and this module, imported once in the server
    return ctx


def _ignore_ctrl_c(worker_id: int) -> None:
    """A decoding worker leaves Ctrl-C (SIGINT: a terminal sends it to the whole process group, torchrun to each
    process's group) to the training process, which stops at a step boundary; a worker that quit on it would
    break the loader before that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader_images_per_s(data: ImageSet, batch_size: int, batches: int = 20, shard: tuple[int, int] | None = None,
                        shuffle: bool = True) -> float:
    """Images per second that ``data.batches`` delivers alone (decoding, workers, pinning; no model), over at most
    ``batches`` batches after the first (which pays for starting the workers)."""
    import time

    it = data.batches(batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0), shard=shard)
    if next(it, None) is None:
        return float("nan")
    n, t0 = 0, time.perf_counter()
    for k, (x, _) in enumerate(it):
        n += len(x)
        if k + 1 >= batches:
            break
    dt = time.perf_counter() - t0
    return n / dt if n else float("nan")


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, s: StreamImageSet):
        self.s = s

    def __len__(self):
        return len(self.s)

    def __getitem__(self, i):
        return self.s._item(i)


@dataclass
class DataSplits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: list[str]
    name: str

    def get(self, split: str) -> ImageSet:
        if split not in ("train", "val", "test"):
            raise VPError(f"Unknown split {split!r}; use train, val or test.")
        return getattr(self, split)


# -- building -------------------------------------------------------------------------------------------------

def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    aliases = {"cifar_10": "cifar10", "cifar_100": "cifar100", "fmnist": "fashion_mnist",
               "fashionmnist": "fashion_mnist", "oxfordiiitpet": "oxford_pets", "pets": "oxford_pets",
               "flowers": "flowers102", "flowers_102": "flowers102", "food_101": "food101"}
    return aliases.get(key, key)


def carve(n: int, fraction: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split of range(n) into (kept, held_out) with ``fraction`` held out (at least one)."""
    if n < 2:
        raise VPError("A split needs at least two images.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(n - 1, max(1, round(n * fraction)))
    return perm[k:].sort().values, perm[:k].sort().values


# -- dataset sources: a registry -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceOptions:
    """What a source's loader may need besides the dataset string."""

    root: str
    download: bool
    image_size: int
    max_cache_bytes: int
    num_workers: int


@dataclass(frozen=True)
class DatasetSource:
    """One kind of dataset string. ``matches(name)`` says whether it is this source's; ``load(name, opts)`` gives
    ``(train, test, label)``; ``names()`` lists the names it offers (the CLI's help, the app's list; empty for paths)."""

    name: str
    description: str
    matches: Callable[[str], bool]
    load: Callable[[str, SourceOptions], tuple[ImageSet, ImageSet, str]]
    names: Callable[[], list[str]]


DATASET_SOURCES: dict[str, DatasetSource] = {}


def register_dataset_source(name: str, *, description: str, matches: Callable[[str], bool],
                            names: Callable[[], list[str]] = list):
    """Decorator: register ``load(name, opts) -> (train, test, label)`` as a dataset source. Sources are asked in
    registration order; the first whose ``matches`` is true loads the dataset."""

    def deco(load):
        DATASET_SOURCES[name] = DatasetSource(name, description, matches, load, names)
        return load

    return deco


def unregister_dataset_source(name: str) -> None:
    DATASET_SOURCES.pop(name, None)


def dataset_names() -> list[str]:
    """Every dataset offered by name (bundled, torchvision, ...), in registration order, without repeats."""
    return list(dict.fromkeys(n for src in DATASET_SOURCES.values() for n in src.names()))


def dataset_help() -> str:
    """One line per source for the CLI's help and ``info``."""
    return "; ".join(f"{src.description}" + (f" ({', '.join(src.names())})" if src.names() else "")
                     for src in DATASET_SOURCES.values())


def find_source(name: str) -> DatasetSource:
    for src in DATASET_SOURCES.values():
        if src.matches(name):
            return src
    raise VPError(f"Unknown dataset {name!r}: not a folder of class folders, not a .zip of them, and not one of "
                  f"{', '.join(dataset_names())}.")


def load_splits(name: str, *, image_size: int = 224, root: str | None = None, download: bool = False,
                val_fraction: float = 0.1, max_cache_bytes: int = 4 << 30, num_workers: int = 2,
                resize_cache_bytes: int = 1 << 30) -> DataSplits:
    """Train / val / test splits of a dataset: a name, a folder or a .zip (see the module docstring and
    :data:`DATASET_SOURCES`).

    Images are decoded once. Sets held as tensors are also resized once to ``image_size`` when the resized
    copy fits in ``resize_cache_bytes`` (per split); larger ones are resized batch by batch as they are used
    (a cheap tensor op next to the model), and sets over ``max_cache_bytes`` are decoded by DataLoader workers."""
    opts = SourceOptions(root or DEFAULT_ROOT, download, image_size, max_cache_bytes, num_workers)
    train, test, label = find_source(name).load(name, opts)
    keep, held = carve(len(train), val_fraction)
    parts = [train.subset(keep), train.subset(held), test]
    parts = [p.resized(image_size) if isinstance(p, TensorImageSet)
             and len(p) * p.images.shape[1] * image_size**2 <= resize_cache_bytes else p for p in parts]
    return DataSplits(*parts, train.class_names, label)


def _is_zip(name: str) -> bool:
    return name.lower().endswith(".zip") and os.path.isfile(name)


@register_dataset_source("folder", description="a folder of class folders (with train/ and test/ or val/ inside, "
                                                "or a fixed 20% held out as test)", matches=os.path.isdir)
def _load_folder(name: str, o: SourceOptions):
    train, test = _image_folder(name, o.image_size, o.max_cache_bytes, o.num_workers)
    return train, test, os.path.basename(os.path.normpath(name))


@register_dataset_source("zip", description="a .zip of class folders (the same layout, unpacked safely)",
                         matches=_is_zip)
def _load_zip(name: str, o: SourceOptions):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vp-zip-") as tmp:  # decoded into memory, so the copy can go
        folder = extract_zip_dataset(name, tmp)
        with named_as({tmp + os.sep: "", tmp: name}):  # the unpacked copy's files by their places in the archive
            train, test = _image_folder(folder, o.image_size, 1 << 62, o.num_workers)  # never streamed from tmp
    label = Path(folder).name if Path(folder) != Path(tmp) else Path(name).stem
    return train, test, label


@register_dataset_source("bundled", description="the Fashion-MNIST subset bundled with the library",
                         matches=lambda n: canonical_name(n) == "fashion_mnist_subset",
                         names=lambda: ["fashion_mnist_subset"])
def _load_bundled(name: str, o: SourceOptions):
    return (*_bundled_subset(), "fashion_mnist_subset")


@register_dataset_source("debian", description="fashion_mnist from Debian's dataset-fashion-mnist package when "
                                                f"installed ({DEBIAN_FASHION_MNIST})",
                         matches=lambda n: canonical_name(n) == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir())
def _load_debian(name: str, o: SourceOptions):
    return (*(_read_idx_set(DEBIAN_FASHION_MNIST, s) for s in ("train", "t10k")), "fashion_mnist")


def _bundled_subset() -> tuple[ImageSet, ImageSet]:
    if not BUNDLED_SUBSET.is_file():
        raise VPError(f"The bundled subset {BUNDLED_SUBSET} is missing; run scripts/make_bundled_subset.py.")
    import json

    from safetensors import safe_open

    with safe_open(str(BUNDLED_SUBSET), "pt") as f:
        meta = json.loads(f.metadata()["class_names"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    return (TensorImageSet(t["train_images"], t["train_labels"], meta, "fashion_mnist_subset"),
            TensorImageSet(t["test_images"], t["test_labels"], meta, "fashion_mnist_subset"))


def read_idx(path: Path) -> np.ndarray:
    """Read an (optionally gzipped) IDX file of uint8 data, as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise VPError(f"{path} is not a uint8 IDX file.")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise VPError(f"{path} is truncated.")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise VPError(f"{path} is truncated.")
    return arr.reshape(dims)


def _read_idx_set(folder: Path, prefix: str) -> TensorImageSet:
    images = torch.from_numpy(read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    return TensorImageSet(images, labels, CLASSNAMES["fashion_mnist"], "fashion_mnist")


# torchvision dataset class name, train split kwargs, test split kwargs (None: one set, a fixed 20% held out as test)
TORCHVISION_SETS = {
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}),
    "svhn": ("SVHN", {"split": "train"}, {"split": "test"}),
    "eurosat": ("EuroSAT", {}, None),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}),
    "dtd": ("DTD", {"split": "train"}, {"split": "test"}),
    "oxford_pets": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "food101": ("Food101", {"split": "train"}, {"split": "test"}),
    "gtsrb": ("GTSRB", {"split": "train"}, {"split": "test"}),
    "mnist": ("MNIST", {"train": True}, {"train": False}),
    "fashion_mnist": ("FashionMNIST", {"train": True}, {"train": False}),
}


@register_dataset_source("torchvision", description="a torchvision dataset, downloaded into --data-root with "
                                                     "--download", matches=lambda n: canonical_name(n) in TORCHVISION_SETS,
                         names=lambda: list(TORCHVISION_SETS))
def _load_torchvision(name: str, o: SourceOptions):
    key = canonical_name(name)
    return (*_torchvision(key, o.root, o.download, o.image_size, o.max_cache_bytes, o.num_workers), key)


def _torchvision(key: str, root: str, download: bool, image_size: int, max_bytes: int, workers: int):
    import torchvision.datasets as D

    names = CLASSNAMES[key]
    cls_name, train_kw, test_kw = TORCHVISION_SETS[key]
    cls = getattr(D, cls_name)

    def make(kw):
        try:
            return cls(root=root, download=download, **kw)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
            hint = "add --download (needs internet)" if not download else "check the internet connection"
            raise VPError(f"{key} is not in {root} ({e}); {hint}.") from e
        except OSError as e:  # URLError, DNS failure
            raise VPError(f"Could not download {key} into {root}: {e}. Offline, use fashion_mnist_subset "
                          "or a folder of class folders.") from e

    def wrap(ds):
        return _decode_all(ds, names, key, image_size, max_bytes, workers)

    if test_kw is None:
        full = wrap(make(train_kw))
        keep, held = carve(len(full), 0.2, seed=SPLIT_SEED + 1)
        return full.subset(keep), full.subset(held)
    return wrap(make(train_kw)), wrap(make(test_kw))


def _decode_all(ds, names, key, image_size, max_bytes, workers) -> ImageSet:
    """Fast paths for datasets that hold arrays; otherwise decode each image once (or stream if too big)."""
    data = getattr(ds, "data", None)
    if isinstance(data, torch.Tensor) and data.ndim == 3:  # MNIST family (N, 28, 28)
        return TensorImageSet(data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets), names, key)
    if isinstance(data, np.ndarray) and data.ndim == 4:  # CIFAR (N, 32, 32, 3) or SVHN (N, 3, 32, 32)
        t = torch.from_numpy(data)
        t = t if t.shape[1] == 3 else t.permute(0, 3, 1, 2)
        labels = getattr(ds, "targets", None)
        labels = labels if labels is not None else ds.labels
        return TensorImageSet(t.contiguous(), torch.as_tensor(np.asarray(labels)), names, key)
    labels = _labels_of(ds)
    if len(labels) * 3 * image_size * image_size > max_bytes:
        return StreamImageSet(ds, labels, names, key, image_size, workers)
    return _decode_list(ds, labels, names, key, image_size)


def _labels_of(ds) -> torch.Tensor:
    for attr in ("targets", "_labels", "labels"):
        v = getattr(ds, attr, None)
        if v is not None:
            return torch.as_tensor(np.asarray(v)).long()
    if hasattr(ds, "_samples"):  # GTSRB
        return torch.tensor([int(y) for _, y in ds._samples])
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))])


def _decode_list(ds, labels, names, key, image_size) -> TensorImageSet:
    out = torch.empty(len(ds), 3, image_size, image_size, dtype=torch.uint8)
    for i in range(len(ds)):
        out[i] = pil_to_uint8(ds[i][0], image_size)
    return TensorImageSet(out, labels, names, key)


def _folder_items(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, class index)`` for every image under ``folder``, and the class names: torchvision's ImageFolder
    conventions (``find_classes``: sorted folder names; ``make_dataset``: images by extension, walked in order),
    hidden folders (``.git``, ``.ipynb_checkpoints``) left out."""
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes = [c for c in find_classes(str(folder))[0] if not c.startswith(".")]
    except FileNotFoundError:
        classes = []
    if len(classes) < 2:
        raise VPError(f"{folder} needs at least two class folders (one folder of images per class).")
    items = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMAGE_EXTS, allow_empty=True)
    if not items:
        raise VPError(f"No images ({', '.join(IMAGE_EXTS)}) found under {folder}.")
    present = {y for _, y in items}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:  # a class no image teaches would still be one of the model's answers
        raise VPError(f"Class folder{'s' if len(empty) > 1 else ''} with no images ({', '.join(IMAGE_EXTS)}) under "
                      f"{folder}: {', '.join(empty)}. Add images to {'them' if len(empty) > 1 else 'it'} or "
                      f"remove {'them' if len(empty) > 1 else 'it'}.")
    return items, classes


def _image_folder(path: str, image_size: int, max_bytes: int, workers: int) -> tuple[ImageSet, ImageSet]:
    """A folder of class folders -> decoded sets. Broken images are skipped with a warning that names them."""
    folder = Path(path)
    sub = {d.name.lower(): d for d in folder.iterdir() if d.is_dir()}
    test_dir = sub.get("test") or sub.get("val")
    if "train" in sub and test_dir is not None:
        train_items, classes = _folder_items(sub["train"])
        test_items, test_classes = _folder_items(test_dir)
        if test_classes != classes:
            raise VPError(f"{sub['train']} and {test_dir} must have the same class folders.")
    else:
        items, classes = _folder_items(folder)
        keep, held = carve(len(items), 0.2, seed=SPLIT_SEED + 1)
        train_items, test_items = [items[i] for i in keep], [items[i] for i in held]
    names = [c.replace("_", " ") for c in classes]
    label = folder.name

    def load(items):
        if len(items) * 3 * image_size**2 > max_bytes:  # too large to hold decoded: read as it is used
            labels = torch.tensor([y for _, y in items], dtype=torch.long)
            return StreamImageSet(_FolderFiles(items), labels, names, label, image_size, workers)
        return _decode_items(items, names, label, image_size, folder)

    return load(train_items), load(test_items)


class _FolderFiles(torch.utils.data.Dataset):
    """The image files of a folder dataset, opened when asked for (the streaming path: an unreadable file is an
    error when its turn comes, where the in-memory path skips it with a warning up front)."""

    def __init__(self, items: list[tuple[str, int]]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, y = self.items[i]
        return open_image(path), y


def _decode_items(items, names, label, image_size, folder: Path) -> TensorImageSet:
    """Decode every image of the dataset ``folder``; unreadable ones are skipped with a warning that names them from
    the folder's own name on (``set/c0/0.png``, as inside an uploaded archive, not where this machine unpacked it)."""
    imgs, labels, bad = [], [], []
    for p, y in items:
        try:
            imgs.append(pil_to_uint8(open_image(p), image_size))
            labels.append(y)
        except VPError:
            bad.append(os.path.relpath(p, folder.parent))
    if bad:
        warnings.warn(f"Skipped {len(bad)} unreadable image(s): {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    if not imgs:
        raise VPError(f"None of the images of {folder} could be read.")
    return TensorImageSet(torch.stack(imgs), torch.tensor(labels), names, label)


def mib(n: float) -> str:
    """Bytes as MiB for a message, with the digits that matter for small sizes too (0.029, 3.0, 150.0)."""
    return f"{n / 2**20:.1f}" if n >= 2**20 else f"{n / 2**20:.2g}"


def _zip_members(zf) -> list:
    return [m for m in zf.infolist() if not m.is_dir() and "__MACOSX" not in m.filename]


def _open_zip(zip_path):
    import zipfile

    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise VPError(f"{Path(str(zip_path)).name} is not a readable .zip file ({e}). Zip a folder that holds one "
                      "folder of images per class.") from e


def zip_size(zip_path) -> tuple[int, int]:
    """``(files, bytes)`` an uploaded ``.zip`` would unpack to, read from its directory (nothing is unpacked; the
    sizes it declares are also all that :func:`extract_zip_dataset` lets each member write)."""
    with _open_zip(zip_path) as zf:
        members = _zip_members(zf)
        return len(members), sum(m.file_size for m in members)


def extract_zip_dataset(zip_path, dest, max_files: int = 200_000, max_bytes: int = 4 << 30) -> str:
    """Unpack an uploaded ``.zip`` of class folders into ``dest`` and return the folder :func:`load_splits` should
    read (the archive's single top-level folder when it has one). Refuses archives that are not zip files, whose
    members would land outside ``dest`` (absolute paths, ``..``), that hold more than ``max_files`` files or unpack
    to more than ``max_bytes`` (from the sizes the archive declares, before anything is written; a member never
    writes more than it declares), or that are broken or encrypted (then nothing is left in ``dest``). Symbolic
    links in the archive are written as plain files, never followed."""
    import errno
    import shutil
    import zipfile
    import zlib

    dest = Path(dest)
    with _open_zip(zip_path) as zf:
        members = _zip_members(zf)
        if len(members) > max_files:
            raise VPError(f"The archive holds {len(members)} files; the limit is {max_files}.")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise VPError(f"The archive unpacks to more than the {mib(max_bytes)} MiB allowed ({mib(total)} MiB); "
                          "use a smaller dataset.")
        root = dest.resolve()
        for m in members:
            target = (dest / m.filename).resolve()
            if m.filename.startswith(("/", "\\")) or not target.is_relative_to(root):
                raise VPError(f"The archive member {m.filename!r} would be written outside the dataset folder; refused.")
        existed = dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        name, member = Path(str(zip_path)).name, None
        try:
            for member in members:
                zf.extract(member, dest)
        except BaseException as e:
            if not existed:
                shutil.rmtree(dest, ignore_errors=True)
            if isinstance(e, (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError)):
                raise VPError(f"{name} is broken or encrypted and cannot be unpacked ({e}).") from e
            if isinstance(e, OSError):  # the archive reads, its member cannot be written here (full disk, names)
                hint = {errno.ENOSPC: "the server's disk is full; try again later",
                        errno.ENOTDIR: "the archive holds a file and a folder of the same name",
                        errno.EISDIR: "the archive holds a file and a folder of the same name",
                        errno.EEXIST: "the archive holds a file and a folder of the same name",
                        errno.ENAMETOOLONG: "shorten the names in the archive"}.get(e.errno)
                why = f"{e.strerror or e}" + (f": {hint}" if hint else "")
                raise VPError(f"{name} cannot be unpacked: its member {member.filename!r:.120} cannot be written "
                              f"({why}).") from e
            raise
    entries = [d for d in dest.iterdir() if not d.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return str(entries[0])
    return str(dest)
