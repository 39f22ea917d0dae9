"""Write the UCI handwritten digits (scikit-learn's bundled copy: 1,797 8 x 8 greyscale images, 10 classes; no
download) as a folder of class folders, the layout ``--dataset PATH`` reads: ``train/<digit>/*.png`` and
``test/<digit>/*.png`` (a fixed, stratified 30% test split). A second real dataset that works offline, far from
ImageNet and from Fashion-MNIST, to check recipes on.

    pip install scikit-learn
    python scripts/make_digits.py /tmp/digits          # then: --dataset /tmp/digits
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("scikit-learn is needed (its package holds the digits): pip install scikit-learn") from None
    d = load_digits()
    rng = np.random.default_rng(a.seed)
    n = 0
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == digit))
        cut = round(len(idx) * a.test_fraction)
        for split, part in (("test", idx[:cut]), ("train", idx[cut:])):
            folder = a.out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:  # 0..16 -> 0..255, white digits on black like Fashion-MNIST's objects
                Image.fromarray(np.round(d.images[i] * 255 / 16).astype(np.uint8), "L").save(folder / f"{i:04d}.png")
                n += 1
    print(f"wrote {n} images to {a.out} (train/ and test/, one folder per digit)")


if __name__ == "__main__":
    main()
