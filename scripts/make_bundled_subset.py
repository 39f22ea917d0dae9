"""Make assets/fashion_mnist_subset.safetensors (and a few example PNGs) from the full Fashion-MNIST.

Source: Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist). The subset is balanced and
deterministic: the first N_TRAIN images of each class from the official train split and the first N_TEST of each
class from the official test split.

    python scripts/make_bundled_subset.py [--train-per-class 300] [--test-per-class 100]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from visual_prompting.classnames import CLASSNAMES  # noqa: E402
from visual_prompting.data import ASSETS, BUNDLED_SUBSET, DEBIAN_FASHION_MNIST, read_idx  # noqa: E402


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    idx = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    return np.sort(np.concatenate(idx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=str(DEBIAN_FASHION_MNIST))
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--test-per-class", type=int, default=100)
    a = ap.parse_args()
    src = Path(a.source)
    out = {}
    for split, prefix, n in (("train", "train", a.train_per_class), ("test", "t10k", a.test_per_class)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        keep = first_per_class(labels, n)
        out[f"{split}_images"] = torch.from_numpy(images[keep].copy()).unsqueeze(1)
        out[f"{split}_labels"] = torch.from_numpy(labels[keep].copy())
    meta = {"class_names": json.dumps(CLASSNAMES["fashion_mnist"]),
            "source": "Fashion-MNIST (Zalando Research, MIT licence) via Debian dataset-fashion-mnist",
            "rule": f"first {a.train_per_class} per class of train, first {a.test_per_class} per class of test"}
    save_file(out, str(BUNDLED_SUBSET), metadata=meta)
    ex = ASSETS / "examples"
    ex.mkdir(parents=True, exist_ok=True)
    test_images, test_labels = out["test_images"], out["test_labels"]
    for c, name in enumerate(CLASSNAMES["fashion_mnist"]):
        i = int(torch.nonzero(test_labels == c)[0])
        img = Image.fromarray(test_images[i, 0].numpy()).resize((112, 112), Image.NEAREST)
        img.save(ex / f"{c}_{name.replace('/', '-').replace(' ', '_')}.png")
    print({k: tuple(v.shape) for k, v in out.items()}, "->", BUNDLED_SUBSET)


if __name__ == "__main__":
    main()
