import numpy as np
import pytest
import torch
from PIL import Image

from visual_prompting import VPError
from visual_prompting.classnames import CLASSNAMES
from visual_prompting.data import (DEBIAN_FASHION_MNIST, TensorImageSet, carve, load_splits, open_image,
                                   pil_to_uint8, read_idx, to_model_input)


def test_bundled_subset_splits(subset_splits):
    s = subset_splits
    assert (len(s.train), len(s.val), len(s.test)) == (2700, 300, 1000)
    assert s.class_names == CLASSNAMES["fashion_mnist"]
    assert isinstance(s.train, TensorImageSet) and s.train.images.dtype == torch.uint8
    assert torch.bincount(s.test.labels).tolist() == [100] * 10


def test_validation_is_carved_from_train_deterministically(subset_splits):
    again = load_splits("fashion_mnist_subset", image_size=64)
    assert torch.equal(again.val.images, subset_splits.val.images)
    keep, held = carve(3000, 0.1)
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == 3000
    # train and val never share an image
    tr = {bytes(x.numpy()) for x in subset_splits.train.images}
    assert not any(bytes(x.numpy()) in tr for x in subset_splits.val.images[:50])


def test_batches_cover_the_set_once(subset_splits):
    seen = []
    for images, labels in subset_splits.val.batches(64, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert images.dtype == torch.uint8 and len(images) <= 64
        seen.append(labels)
    assert sorted(torch.cat(seen).tolist()) == sorted(subset_splits.val.labels.tolist())


def test_model_input_is_rgb_float_at_the_right_size():
    x = to_model_input(torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8), 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x[:, 0], x[:, 1])


def _halves(mode, left, right, size=(40, 20)):
    """An image of ``mode``: ``left`` on its left half, ``right`` on its right half."""
    img = Image.new(mode, size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def _transparent_p():
    img = _halves("P", 1, 0)
    img.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
    img.info["transparency"] = 0  # palette index 0 (the right half) is transparent
    return img


# an odd image, and the RGB colours its left and right halves must become: transparency over white (as a viewer
# shows it), 16-bit and float values stretched from their smallest to their largest onto 0..255 (not clipped)
ODD = {
    "RGBA": (lambda: _halves("RGBA", (200, 30, 10, 255), (200, 30, 10, 0)), (200, 30, 10), (255, 255, 255)),
    "LA": (lambda: _halves("LA", (70, 255), (70, 0)), (70, 70, 70), (255, 255, 255)),
    "P": (_transparent_p, (200, 30, 10), (255, 255, 255)),
    "L": (lambda: _halves("L", 70, 180), (70, 70, 70), (180, 180, 180)),
    "1": (lambda: _halves("1", 1, 0), (255, 255, 255), (0, 0, 0)),
    "CMYK": (lambda: _halves("CMYK", (0, 255, 255, 0), (0, 0, 0, 0)), (255, 0, 0), (255, 255, 255)),
    "I;16": (lambda: Image.fromarray(np.where(np.arange(40) < 20, 1000, 3000).astype(np.uint16)[None].repeat(20, 0),
                                     "I;16"), (0, 0, 0), (255, 255, 255)),  # (PIL pastes a number into I;16 wrongly)
    "I": (lambda: _halves("I", -70000, -20000), (0, 0, 0), (255, 255, 255)),
    "F": (lambda: _halves("F", 0.25, 0.5), (0, 0, 0), (255, 255, 255)),
}


@pytest.mark.parametrize("mode", list(ODD))
def test_odd_images_become_rgb(mode):
    make, left, right = ODD[mode]
    img = make()
    assert img.mode == mode
    t = pil_to_uint8(img, 16)
    assert t.shape == (3, 16, 16) and t.dtype == torch.uint8
    wide = pil_to_uint8(img, None)  # no resizing: the exact colours
    assert wide.shape == (3, 20, 40)
    assert (wide[:, :, :20] == torch.tensor(left, dtype=torch.uint8)[:, None, None]).all(), wide[:, 0, 0]
    assert (wide[:, :, 20:] == torch.tensor(right, dtype=torch.uint8)[:, None, None]).all(), wide[:, 0, -1]


def test_wide_range_images_are_stretched_not_clipped():
    ramp = np.linspace(0, 60000, 256).astype(np.uint16)[None].repeat(4, 0)
    for img in (Image.fromarray(ramp, "I;16"), Image.fromarray(ramp.astype(np.float32) / 60000, "F")):
        grey = pil_to_uint8(img, None)[0, 0].numpy().astype(int)
        assert grey[0] == 0 and grey[-1] == 255 and (np.diff(grey) >= 0).all()
        assert np.abs(grey - np.arange(256)).max() <= 1, grey  # evenly spread, as the values are


def test_broken_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(VPError, match="Cannot read"):
        open_image(bad)
    (tmp_path / "note.jpg").write_text("hello")
    with pytest.raises(VPError, match="Cannot read"):
        open_image(tmp_path / "note.jpg")


def _make_folder(root, classes=("cats", "dogs"), n=6, size=(20, 30)):
    for c, colour in zip(classes, ((255, 0, 0), (0, 0, 255))):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, colour).save(root / c / f"{i}.png")


def test_image_folder_with_and_without_split_folders(tmp_path):
    _make_folder(tmp_path / "flat")
    s = load_splits(str(tmp_path / "flat"), image_size=16)
    assert s.class_names == ["cats", "dogs"]
    assert len(s.train) + len(s.val) + len(s.test) == 12 and len(s.test) >= 2
    assert s.train.images.shape[1:] == (3, 16, 16)
    _make_folder(tmp_path / "split" / "train")
    _make_folder(tmp_path / "split" / "test", n=3)
    s = load_splits(str(tmp_path / "split"), image_size=16)
    assert len(s.test) == 6 and len(s.train) + len(s.val) == 12


def test_image_folder_skips_broken_images_and_names_them(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "cats" / "bad.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="bad.png"):
        s = load_splits(str(tmp_path), image_size=16)
    assert len(s.train) + len(s.val) + len(s.test) == 12


def test_image_folder_problems_are_clear(tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(VPError, match="two class folders"):
        load_splits(str(tmp_path), image_size=16)


def test_unknown_dataset_and_missing_download(tmp_path):
    with pytest.raises(VPError, match="Unknown dataset"):
        load_splits("imagenet-42", image_size=16)
    with pytest.raises(VPError, match="--download"):
        load_splits("cifar10", image_size=16, root=str(tmp_path))


def test_idx_reader(tmp_path):
    import gzip
    data = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(range(8))
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(data)
    arr = read_idx(tmp_path / "x-idx3-ubyte.gz")
    assert arr.shape == (2, 2, 2) and arr.ravel().tolist() == list(range(8))
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x09")
    with pytest.raises(VPError):
        read_idx(tmp_path / "bad")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_full_fashion_mnist_from_debian():
    s = load_splits("fashion_mnist", image_size=28)
    assert len(s.train) + len(s.val) == 60000 and len(s.test) == 10000
    assert np.bincount(s.test.labels.numpy()).tolist() == [1000] * 10


def test_small_sets_are_resized_once_with_the_same_pixels_as_per_batch():
    big = load_splits("fashion_mnist_subset", image_size=48, resize_cache_bytes=0)  # kept at 28 px
    small = load_splits("fashion_mnist_subset", image_size=48)  # resized once to 48 px
    assert big.val.images.shape[-1] == 28 and small.val.images.shape[-1] == 48
    a = to_model_input(big.val.images[:64], 48)
    b = to_model_input(small.val.images[:64], 48)
    assert torch.equal(a, b)


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.tobytes())


def test_torchvision_mnist_path_with_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    s = load_splits("MNIST", image_size=32, root=str(tmp_path))
    assert s.class_names == [str(i) for i in range(10)]
    assert len(s.train) + len(s.val) == 40 and len(s.test) == 20
    assert s.test.images.shape[1:] == (1, 32, 32)


def test_torchvision_eurosat_path_decodes_and_holds_out_a_test_split(tmp_path):
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
               "PermanentCrop", "Residential", "River", "SeaLake"]
    for i, c in enumerate(folders):
        d = tmp_path / "eurosat" / "2750" / c
        d.mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (64, 64), (25 * i, 10 * j, 0)).save(d / f"{c}_{j}.jpg")
    s = load_splits("eurosat", image_size=24, root=str(tmp_path))
    assert s.class_names[0] == "annual crop land" and len(s.class_names) == 10
    assert len(s.train) + len(s.val) + len(s.test) == 30 and len(s.test) == 6
    assert s.train.images.shape[1:] == (3, 24, 24)


def test_image_extensions_are_torchvisions_and_gif():
    """Written out in data.py (reading data does not import torchvision)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from visual_prompting.data import IMAGE_EXTS

    assert IMAGE_EXTS == (*IMG_EXTENSIONS, ".gif")
