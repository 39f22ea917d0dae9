"""Every bad or odd input, answered in words: one table of cases (images of every mode and format, broken and hostile
prompt files, broken and hostile dataset zips, impossible settings), run against the app's logic (VPApp, the
Gradio handlers' helpers) and the CLI (in-process through cli.main). Each case checks the message, in words, and
that the app or the CLI still works right after it (a valid prediction succeeds). Odd but valid images predict.

The app served through Gradio gets the three inputs that used to reach users as Gradio's generic error (a
decompression bomb, zero bytes, text named .png) at the end, through gradio_client."""
from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from visual_prompting import VPError
from visual_prompting.cli import main as cli_main
from visual_prompting.ui import UPLOADED_DATASET, AppConfig, VPApp

from conftest import EFFNET

EXAMPLE = str(Path(__file__).resolve().parent.parent / "assets" / "examples" / "7_sneaker.png")
# a traceback, Gradio's generic text or the app's own for a bug, is never an answer
NOT_WORDS = re.compile(r"Traceback|raised an exception|File \".*\", line \d+|Something went wrong")


# -- making the inputs ------------------------------------------------------------------------------------------

def _rgb(w=40, h=30, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(path: Path, w: int, h: int, bit_depth: int, color_type: int, raw: bytes) -> Path:
    """A PNG written by hand: any header PIL would not write itself (a 20000 x 20000 claim, 16-bit RGB)."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
                     + _png_chunk(b"IEND", b""))
    return path


def img_mode(mode):
    def make(tmp):
        base = Image.fromarray(_rgb())
        if mode == "P_transparent":  # palette index 0 transparent: the left half, and no other pixel, uses it
            img = base.convert("P")
            index = np.asarray(img).copy()
            assert not (index == 0).any()
            index[:, :20] = 0
            transparent = Image.fromarray(index, "P")
            transparent.putpalette(img.getpalette())
            return _save(transparent, tmp / "p.png", transparency=0)
        if mode in ("RGBA", "LA"):  # the left half transparent
            img = base.convert(mode)
            img.putalpha(Image.fromarray(np.where(np.arange(40) < 20, 0, 255).astype(np.uint8)[None].repeat(30, 0)))
            return _save(img, tmp / f"{mode.lower()}.png")
        if mode in ("1", "L"):
            return _save(base.convert(mode), tmp / f"{mode}.png")
        if mode == "I;16":
            arr = (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)
            return _save(Image.fromarray(arr, "I;16"), tmp / "i16.png")
        if mode == "I":
            return _save(Image.fromarray((np.arange(1200).reshape(30, 40) * 1000).astype(np.int32), "I"),
                         tmp / "i32.tiff")
        if mode == "F":
            arr = np.random.default_rng(0).random((30, 40)).astype(np.float32)
            arr[0, 0] = np.nan
            return _save(Image.fromarray(arr, "F"), tmp / "float.tiff")
        if mode == "CMYK":
            return _save(base.convert("CMYK"), tmp / "cmyk.jpg")
        if mode == "YCbCr":
            return _save(base.convert("YCbCr"), tmp / "ycbcr.jpg")
        raise AssertionError(mode)
    return make


def transparent_is_white(path, rgb):
    """What a viewer shows: transparent pixels white, the others their own colours (a break: black behind them)."""
    rgba = np.asarray(Image.open(path).convert("RGBA"))
    clear, solid = rgba[..., 3] == 0, rgba[..., 3] == 255
    assert clear.any() and solid.any() and (clear | solid).all()
    assert (rgb[clear] == 255).all(), rgb[clear][:3]
    assert np.array_equal(rgb[solid], rgba[..., :3][solid])


def stretched(path, rgb):
    """16-bit, 32-bit and float pixels stretched from their smallest to their largest value onto 0..255 in grey (NaN
    counts as 0), not clipped to 0..255."""
    values = np.nan_to_num(np.asarray(Image.open(path), dtype=np.float64))
    expected = 255 * (values - values.min()) / (values.max() - values.min())
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb == rgb[..., :1]).all()
    assert np.abs(rgb[..., 0] - expected).max() <= 1, np.abs(rgb[..., 0] - expected).max()


def as_pil_shows(path, rgb):
    assert np.array_equal(rgb, np.asarray(Image.open(path).convert("RGB")))


MODE_CHECKS = {"P_transparent": transparent_is_white, "RGBA": transparent_is_white, "LA": transparent_is_white,
               "I;16": stretched, "I": stretched, "F": stretched, "1": as_pil_shows, "L": as_pil_shows,
               "CMYK": as_pil_shows, "YCbCr": as_pil_shows}


def png16(tmp):
    raw = b"".join(b"\0" + np.full((40, 3), 1000 * r, ">u2").tobytes() for r in range(30))
    return _png(tmp / "rgb16.png", 40, 30, 16, 2, raw)


def animated_gif(tmp):
    frames = [Image.fromarray(_rgb(seed=i)).convert("P") for i in range(3)]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return tmp / "anim.gif"


def fmt(ext, **kw):
    return lambda tmp: _save(Image.fromarray(_rgb()), tmp / f"img.{ext}", **kw)


def size(w, h):
    return lambda tmp: _save(Image.new("RGB", (w, h), (200, 30, 30)), tmp / f"{w}x{h}.png")


def exif_rotated(tmp):
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise to view
    return _save(Image.fromarray(_rgb(60, 20)), tmp / "rotated.jpg", exif=exif.tobytes())


def truncated(ext):
    def make(tmp):
        data = io.BytesIO()
        Image.fromarray(_rgb(200, 200)).save(data, format="JPEG" if ext == "jpg" else "PNG")
        (tmp / f"cut.{ext}").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
        return tmp / f"cut.{ext}"
    return make


def zero_bytes(tmp):
    (tmp / "empty.png").write_bytes(b"")
    return tmp / "empty.png"


def text_png(tmp):
    (tmp / "notes.png").write_text("this is a text file, not a picture\n")
    return tmp / "notes.png"


def bomb(tmp):
    return _png(tmp / "bomb.png", 20000, 20000, 8, 2, b"\0" * 1000)  # 400 MP claimed, 1 kB on disk


def gif_bomb(tmp):
    header = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00"
    (tmp / "bomb.gif").write_bytes(header + b"\x2c" + struct.pack("<HHHH", 0, 0, 65535, 65535) + b"\x00\x02\x02"
                                   + b"\x44\x01\x00\x3b")
    return tmp / "bomb.gif"


# -- prompt files: a zoo prompt, rewritten ------------------------------------------------------------------------

def _zoo_prompt(vp):
    from safetensors import safe_open

    path = next(e["path"] for e in vp.entries.values() if e["meta"]["prompter"]["kind"] == "pad")
    with safe_open(path, "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def prompt_file(change):
    """A zoo prompt with ``change(header, meta, tensors)`` applied (to the header's strings, the parsed metadata or
    the tensors)."""
    def make(tmp, vp):
        header, tensors = _zoo_prompt(vp)
        original = header["metadata"]
        meta = json.loads(original)
        change(header, meta, tensors)
        if header.get("metadata") == original:
            header["metadata"] = json.dumps(meta)
        save_file(tensors, tmp / "p.safetensors", metadata=header)
        return tmp / "p.safetensors"
    return make


def _valid_bytes(vp):
    header, tensors = _zoo_prompt(vp)
    buf = io.BytesIO()
    from safetensors.torch import save

    buf.write(save(tensors, metadata=header))
    return buf.getvalue()


def _beyond(mapping, start: int):
    """A mapping laid out as ``mapping`` (an index, or a list of them, per class) whose indices start at ``start``."""
    if isinstance(mapping[0], list):
        k = len(mapping[0])
        return [[start + k * i + j for j in range(k)] for i in range(len(mapping))]
    return [start + i for i in range(len(mapping))]


def _set(meta, **kw):
    meta.update(kw)


def _header(header, **kw):
    header.update(kw)


def _deep(depth):
    """A change that adds a key to the metadata's JSON text holding a list ``depth`` lists deep."""
    def change(header, meta, tensors):
        header["metadata"] = json.dumps(meta)[:-1] + ', "notes": ' + "[" * depth + "]" * depth + "}"
    return change


def _nested(depth):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def _nan(tensors):
    k = next(iter(tensors))
    tensors[k] = tensors[k].clone()
    tensors[k][0, 0, 0] = float("nan")


def _fully_map(meta, tensors, weight_shape, bad=None):
    n = len(meta["class_names"])
    # a one-to-one starting mapping (the zoo prompt's own head may be a 10-source one)
    meta["head"] = {"kind": "fully_map", "method": "iterative", "mapping": list(range(n)), "num_source": 1000}
    w = torch.zeros(weight_shape)
    if bad is not None:
        w.view(-1)[0] = bad
    tensors["head.weight"], tensors["head.bias"] = w, torch.zeros(n)


# -- dataset zips --------------------------------------------------------------------------------------------------

def _png_bytes(seed=0, w=12, h=12):
    buf = io.BytesIO()
    Image.fromarray(_rgb(w, h, seed)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(tmp, members: dict, name="data.zip"):
    with zipfile.ZipFile(tmp / name, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            if isinstance(n, zipfile.ZipInfo):
                z.writestr(n, data)
            else:
                z.writestr(n, data)
    return tmp / name


def good_members(classes=2, per_class=6):
    return {f"set/c{c}/{i}.png": _png_bytes(10 * c + i) for c in range(classes) for i in range(per_class)}


def symlink_zip(tmp):
    link = zipfile.ZipInfo("set/c0/link.png")
    link.external_attr = (0o120777 << 16)  # a symbolic link to /etc/passwd
    members = good_members()
    members[link] = b"/etc/passwd"
    return _zip(tmp, members)


def lying_zip(tmp):
    """A member that declares 16 bytes and holds 2 MiB of zeros (the classic zip bomb trick): it must never write
    more than it declares."""
    path = _zip(tmp, {**good_members(), "set/c0/bomb.png": b"\0" * (2 << 20)})
    data = bytearray(path.read_bytes())
    name = b"set/c0/bomb.png"
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.find(sig)
        while i >= 0:
            name_off = i + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_off : name_off + len(name)] == name:
                data[i + off : i + off + 4] = struct.pack("<I", 16)
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))
    return path


# -- the table -----------------------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    kind: str  # image | prompt | zip | setting | zoo | cli
    make: object  # builds the input in a tmp folder (or the settings / argv)
    error: str | None = None  # a words-level regex the message must match; None: the input is fine
    check: object = None  # a fine image: check(path, its RGB pixels as the app reads them)
    warning: str | None = None  # a fine dataset: a regex the warnings of its run must match (all of them together)


CASES = [
    # odd but valid images: they predict
    *[Case(f"image-mode-{m}", "image", img_mode(m), check=MODE_CHECKS[m]) for m in
      ("1", "L", "P_transparent", "RGBA", "LA", "I;16", "I", "F", "CMYK", "YCbCr")],
    Case("image-png-16-bit-rgb", "image", png16),
    Case("image-animated-gif", "image", animated_gif),
    Case("image-tiff", "image", fmt("tiff")),
    Case("image-webp", "image", fmt("webp")),
    Case("image-bmp", "image", fmt("bmp")),
    Case("image-1x1", "image", size(1, 1)),
    Case("image-1x10000", "image", size(1, 10000)),
    Case("image-exif-rotated-jpeg", "image", exif_rotated),
    Case("image-pil-object-La-premultiplied", "image", lambda tmp: Image.new("La", (30, 20), (90, 128))),
    Case("image-pil-object-YCbCr", "image", lambda tmp: Image.new("YCbCr", (30, 20), (90, 100, 160))),
    Case("image-float-array", "image", lambda tmp: np.random.default_rng(0).random((20, 30, 3)) * 300),
    # broken and hostile images
    Case("image-truncated-jpeg", "image", truncated("jpg"), r"cut\.jpg cannot be read.*(truncated|broken)"),
    Case("image-truncated-png", "image", truncated("png"), r"cut\.png cannot be read.*(truncated|broken|EOF)"),
    Case("image-zero-bytes", "image", zero_bytes, r"empty\.png cannot be read.*Try a PNG or JPEG"),
    Case("image-text-named-png", "image", text_png, r"notes\.png cannot be read.*Try a PNG or JPEG"),
    Case("image-decompression-bomb-png", "image", bomb, r"bomb\.png has 400 MP; the limit is 50 MP"),
    Case("image-decompression-bomb-gif", "image", gif_bomb, r"bomb\.gif has 4295 MP; the limit is 50 MP"),
    Case("image-60-mp-header", "image", lambda tmp: _png(tmp / "big.png", 10000, 6000, 8, 0, b"\0" * 100),
         r"big\.png is 10000 x 6000 pixels \(60 MP\); the limit is 50 MP"),
    Case("image-array-of-wrong-shape", "image", lambda tmp: np.zeros((4, 4, 7), "uint8"), r"Cannot read an image of shape"),
    Case("image-not-an-image-object", "image", lambda tmp: {"path": None}, r"Cannot read a dict as an image"),
    Case("image-none", "image", lambda tmp: None, r"Upload an image or pick an example"),
    # broken and hostile prompt files
    Case("prompt-pickle-renamed", "prompt", lambda tmp, vp: _write(tmp, b"\x80\x04\x95" + b"\0" * 64),
         r"is not a safetensors prompt file"),
    Case("prompt-zero-bytes", "prompt", lambda tmp, vp: _write(tmp, b""), r"is not a safetensors prompt file"),
    Case("prompt-truncated", "prompt", lambda tmp, vp: _write(tmp, _valid_bytes(vp)[:-100]),
         r"is not a safetensors prompt file"),
    Case("prompt-huge-header-length", "prompt", lambda tmp, vp: _write(tmp, struct.pack("<Q", 1 << 60) + b"{}"),
         r"is not a safetensors prompt file"),
    Case("prompt-text-file", "prompt", lambda tmp, vp: _write(tmp, b"hello, I am a prompt"),
         r"is not a safetensors prompt file"),
    Case("prompt-no-format", "prompt", prompt_file(lambda h, m, t: h.pop("format")), r"not a visual-prompting prompt"),
    Case("prompt-metadata-not-json", "prompt", prompt_file(lambda h, m, t: _header(h, metadata="{not json")),
         r"metadata is not valid JSON"),
    Case("prompt-metadata-a-list", "prompt", prompt_file(lambda h, m, t: _header(h, metadata="[1, 2]")),
         r"metadata must be a JSON object"),
    Case("prompt-class-names-a-string", "prompt", prompt_file(lambda h, m, t: _set(m, class_names="abc")),
         r"'class_names' must be a list"),
    Case("prompt-size-a-string", "prompt", prompt_file(lambda h, m, t: m["prompter"].update(size="big")),
         r"prompter's size must be a whole number from 1 to its image_size \(96\), not 'big'"),
    Case("prompt-size-negative", "prompt", prompt_file(lambda h, m, t: m["prompter"].update(size=-5)),
         r"prompter's size must be a whole number from 1 .* not -5"),
    Case("prompt-image-size-huge", "prompt", prompt_file(lambda h, m, t: m["prompter"].update(image_size=10**9)),
         r"image_size must be a whole number of pixels from 1 to 2048, not 1000000000"),
    Case("prompt-backbone-not-a-dict", "prompt", prompt_file(lambda h, m, t: _set(m, backbone="effnet")),
         r"'backbone' must say which model"),
    Case("prompt-mapping-out-of-range", "prompt", prompt_file(lambda h, m, t: m["head"].update(
        mapping=[10**6 + i for i in range(len(m["class_names"]))])), r"'mapping' points outside the 1000 source classes"),
    Case("prompt-nan-tensor", "prompt", prompt_file(lambda h, m, t: _nan(t)), r"holds NaN or infinite values"),
    Case("prompt-wrong-shape", "prompt", prompt_file(lambda h, m, t: t.update({next(iter(t)): torch.zeros(3, 2, 2)})),
         r"has shape \(3, 2, 2\), expected"),
    Case("prompt-missing-tensor", "prompt", prompt_file(lambda h, m, t: t.pop(next(iter(t)))),
         r"tensors do not match a pad prompt \(missing"),
    Case("prompt-unknown-kind", "prompt", prompt_file(lambda h, m, t: m["prompter"].update(kind="hypnotic_spiral")),
         r"unknown prompter kind 'hypnotic_spiral'; this version knows pad"),
    Case("prompt-unknown-prompter-key", "prompt", prompt_file(lambda h, m, t: m["prompter"].update(evil=1)),
         r"'prompter' must be a prompter config"),
    Case("prompt-format-version-99", "prompt", prompt_file(lambda h, m, t: _header(h, format_version="99")),
         r"format version '99' is not supported"),
    Case("prompt-unknown-head-kind", "prompt", prompt_file(lambda h, m, t: m["head"].update(kind="oracle")),
         r"'head.kind' must be"),
    Case("prompt-fully-map-wrong-shape", "prompt", prompt_file(lambda h, m, t: _fully_map(m, t, (3, 3))),
         r"head.weight has shape \(3, 3\), expected \(10, 1000\)"),
    Case("prompt-fully-map-nan", "prompt", prompt_file(lambda h, m, t: _fully_map(m, t, (10, 1000), math.nan)),
         r"head.weight holds NaN or infinite values"),
    Case("prompt-fully-map-missing-tensors", "prompt",
         prompt_file(lambda h, m, t: (_fully_map(m, t, (10, 1000)), t.pop("head.bias"))),
         r"fully_map head needs the tensors head.weight and head.bias"),
    Case("prompt-head-tensors-on-a-mapping-head", "prompt",
         prompt_file(lambda h, m, t: t.update({"head.weight": torch.zeros(2)})), r"has no trained tensors"),
    # metadata that Python's own parser, or a walk over it, cannot take; values of the wrong type (issue 28, item 7)
    Case("prompt-metadata-nested-100000-deep", "prompt", prompt_file(_deep(100_000)),
         r"^p\.safetensors: the metadata is nested more than 32 levels deep"),
    Case("prompt-metadata-nested-40-deep", "prompt", prompt_file(lambda h, m, t: m["metrics"].update(x=_nested(40))),
         r"^p\.safetensors: the metadata is nested more than 32 levels deep"),
    Case("prompt-metadata-number-of-5000-digits", "prompt",
         prompt_file(lambda h, m, t: _header(h, metadata=json.dumps(m)[:-1] + ', "n": ' + "9" * 5000 + "}")),
         r"the metadata is not valid JSON \(Exceeds the limit"),
    Case("prompt-kind-a-list", "prompt", prompt_file(lambda h, m, t: m["prompter"].update(kind=["pad"])),
         r"unknown prompter kind \['pad'\]"),
    Case("prompt-clamp-a-dict", "prompt", prompt_file(lambda h, m, t: m["prompter"].update(clamp={"a": 1})),
         r"the prompter's clamp \(\{'a': 1\}\) or init"),
    Case("prompt-seed-past-64-bits", "prompt", prompt_file(lambda h, m, t: m["prompter"].update(seed=2**64)),
         r"seed a whole number \(64 bits\)"),
    Case("prompt-mapping-of-empty-lists", "prompt", prompt_file(lambda h, m, t: m["head"].update(
        mapping=[[] for _ in m["class_names"]])), r"'mapping' must list one source-class index"),
    Case("prompt-mapping-method-a-list", "prompt", prompt_file(lambda h, m, t: m["head"].update(method=["x"])),
         r"the head's 'method' must name a label mapping, not \['x'\]"),
    Case("prompt-metrics-a-text", "prompt", prompt_file(lambda h, m, t: _set(m, metrics="great")),
         r"'metrics' must be a JSON object, not 'great'"),
    Case("prompt-test-accuracy-a-text", "prompt", prompt_file(lambda h, m, t: m["metrics"].update(test_top1="high")),
         r"metrics\.test_top1 must be a number, not 'high'"),
    Case("prompt-dataset-a-number", "prompt", prompt_file(lambda h, m, t: _set(m, dataset=-1)),
         r"'dataset' must be a text, not -1"),
    Case("prompt-train-config-a-list", "prompt", prompt_file(lambda h, m, t: _set(m, train_config=[1])),
         r"'train_config' must be a JSON object"),
    Case("prompt-float8-tensors", "prompt", prompt_file(lambda h, m, t: t.update(
        {k: v.to(torch.float8_e4m3fn) for k, v in t.items()})), r"holds float8_e4m3fn values.*float32"),
    Case("prompt-clip-head-on-a-classifier", "prompt", prompt_file(lambda h, m, t: _set(
        m, head={"kind": "clip_text", "templates": ["a {}"]})), r"a clip_text head does not fit the backbone"),
    Case("prompt-mapping-head-on-clip", "prompt", prompt_file(lambda h, m, t: m["backbone"].update(
        spec="clip:vp-tiny@96")), r"a label_mapping head does not fit the backbone 'clip:vp-tiny@96'"),
    Case("prompt-baseline-mapping-without-num-source", "prompt", prompt_file(lambda h, m, t: (m["head"].pop(
        "num_source"), m["head"].update(baseline_mapping=_beyond(m["head"]["mapping"], 5000)))),
         r"'baseline_mapping' needs the number of source classes"),
    *[Case(f"prompt-clip-template-{i}", "prompt", prompt_file(lambda h, m, t, tpl=tpl: (m["backbone"].update(
        spec="clip:vp-tiny@96"), _set(m, head={"kind": "clip_text", "templates": [tpl]}))),
        r"each with one '\{\}' for the class name and no other braces") for i, tpl in enumerate(
        ["a {} of {x}", "a {} of {}", "{0.__class__} {}", "a {:>999999999}", "a {"])],
    Case("prompt-clip-1000-templates", "prompt", prompt_file(lambda h, m, t: (m["backbone"].update(
        spec="clip:vp-tiny@96"), _set(m, head={"kind": "clip_text", "templates": [f"{i} {{}}" for i in range(1000)]}))),
        r"needs 1 to 100 'templates'"),
    Case("prompt-clip-2000-classes-x-100-templates", "prompt", prompt_file(lambda h, m, t: (m["backbone"].update(
        spec="clip:vp-tiny@96"), _set(m, class_names=[f"c{i}" for i in range(2000)], head={
            "kind": "clip_text", "templates": [f"{i} {{}}" for i in range(100)]}))),
        r"2000 classes x 100 templates is 200000 texts to encode; at most 100000 are"),
    Case("prompt-100001-classes", "prompt", prompt_file(lambda h, m, t: _set(
        m, class_names=[f"c{i}" for i in range(100_001)])), r"lists 100001 classes; at most 10000 are read"),
    # broken and hostile dataset zips (training: train_config, then the run)
    Case("zip-not-a-zip", "zip", lambda tmp: _write(tmp, b"PK but not really", "data.zip"), r"not a readable \.zip file"),
    Case("zip-zero-bytes", "zip", lambda tmp: _write(tmp, b"", "data.zip"), r"not a readable \.zip file"),
    Case("zip-bomb-by-declared-size", "zip", lambda tmp: _zip(tmp, {**good_members(), "set/c0/big.png": b"\0" * (3 << 20)}),
         r"unpacks to more than the 2\.0 MiB allowed \(3\.0 MiB\)"),
    Case("zip-bomb-lying-about-its-size", "zip", lying_zip, r"broken or encrypted and cannot be unpacked"),
    Case("zip-member-name-too-long", "zip", lambda tmp: _zip(tmp, {**good_members(), "set/c0/" + "x" * 300 + ".png":
                                                                   _png_bytes()}),
         r"data\.zip cannot be unpacked: its member 'set/c0/x+ cannot be written \(File name too long: shorten the "
         r"names in the archive\)"),
    Case("zip-a-file-and-a-folder-of-one-name", "zip", lambda tmp: _zip(tmp, {**good_members(), "set/c2": b"x",
                                                                            "set/c2/0.png": _png_bytes()}),
         r"data\.zip cannot be unpacked: its member 'set/c2/0\.png' cannot be written \(Not a directory: the archive "
         r"holds a file and a folder of the same name\)"),
    Case("zip-too-many-files", "zip", lambda tmp: _zip(tmp, good_members(2, 30)), r"holds 60 files; the limit is 50"),
    Case("zip-path-traversal", "zip", lambda tmp: _zip(tmp, {**good_members(), "set/../../evil.png": b"x"}),
         r"would be written outside the dataset folder"),
    Case("zip-absolute-path", "zip", lambda tmp: _zip(tmp, {**good_members(), "/tmp/evil.png": b"x"}),
         r"would be written outside the dataset folder"),
    Case("zip-symlink-member", "zip", symlink_zip,  # written as a plain (unreadable) file: trains on the rest
         warning=r"^Skipped 1 unreadable image\(s\): set/c0/link\.png$"),
    Case("zip-some-unreadable-images", "zip", lambda tmp: _zip(tmp, {**good_members(), "set/c1/broken.png": b"no"}),
         warning=r"^Skipped 1 unreadable image\(s\): set/c1/broken\.png$"),  # named as inside the .zip
    Case("zip-classes-at-its-root-none-readable", "zip",
         lambda tmp: _zip(tmp, {f"c{c}/{i}.png": b"not a png" for c in range(2) for i in range(4)}),
         r"^None of the images of the uploaded \.zip could be read"),
    Case("zip-empty", "zip", lambda tmp: _zip(tmp, {}), r"needs at least two class folders"),
    Case("zip-single-class", "zip", lambda tmp: _zip(tmp, good_members(1)), r"needs at least two class folders"),
    Case("zip-a-class-folder-without-images", "zip",  # not a class the model answers and nothing teaches
         lambda tmp: _zip(tmp, {**good_members(), "set/c2/notes.txt": b"hello", "set/c3/.keep": b""}),
         r"Class folders with no images .* under .*set: c2, c3\. Add images to them or remove them\."),
    Case("zip-non-image-files-only", "zip",
         lambda tmp: _zip(tmp, {f"set/c{c}/{i}.txt": b"hello" for c in range(2) for i in range(4)}), r"No images"),
    Case("zip-unreadable-images", "zip",
         lambda tmp: _zip(tmp, {f"set/c{c}/{i}.png": b"not a png" for c in range(2) for i in range(4)}),
         r"None of the images .* could be read"),
    Case("zip-over-the-upload-size", "zip", lambda tmp: _write(tmp, np.random.default_rng(0).bytes(3 << 20), "data.zip"),
         r"is 3\.0 MiB; the limit is 2 MiB"),
    # impossible settings (the Train tab's fields)
    Case("setting-steps-0", "setting", {"steps": 0}, r"Steps must be between 1 and 500"),
    Case("setting-steps-over-the-limit", "setting", {"steps": 10**9}, r"Steps must be between 1 and 500"),
    Case("setting-steps-not-a-number", "setting", {"steps": "many"}, r"Steps must be a number, not 'many'"),
    Case("setting-lr-negative", "setting", {"lr": -1}, r"learning rate must be between 0 and 10000"),
    Case("setting-lr-nan", "setting", {"lr": math.nan}, r"learning rate must be between 0 and 10000"),
    Case("setting-lr-infinite", "setting", {"lr": math.inf}, r"learning rate must be between 0 and 10000"),
    Case("setting-batch-0", "setting", {"batch_size": 0}, r"Batch size must be between 1 and 64"),
    Case("setting-batch-over-the-limit", "setting", {"batch_size": 100_000}, r"Batch size must be between 1 and 64"),
    Case("setting-prompt-size-larger-than-the-image", "setting", {"prompt_size": 500},
         r"Pad width 500 is too large for 64px images"),
    Case("setting-unknown-model", "setting", {"model": "resnet9000-turbo"}, r"Unknown backbone spec 'resnet9000-turbo'. Use one of"),
    Case("setting-unknown-dataset", "setting", {"dataset": "imagenet-42k"}, r"Pick a dataset from the list"),
    Case("setting-unknown-prompter", "setting", {"prompter": "spiral"}, r"Unknown prompter 'spiral'; choose one of pad"),
    Case("setting-upload-without-a-file", "setting", {"dataset": UPLOADED_DATASET}, r"Upload a \.zip"),
    # the Zoo and sharing: what a user types next to a trained prompt (a zoo prompt stands in for it)
    Case("zoo-name-path-traversal", "zoo", ("add", "../../evil"), r"Zoo names use letters, digits"),
    Case("zoo-name-empty", "zoo", ("add", "  "), r"Zoo names use letters, digits"),
    Case("zoo-nothing-trained-yet", "zoo", ("add-none", "mine"), r"Train a prompt first"),
    Case("zoo-push-bad-repo-id", "zoo", ("push", "not a repo id!"), r"Bad Hub repo id 'not a repo id!': use USER/NAME"),
    Case("zoo-push-without-a-token", "zoo", ("push-no-token", "me/x"), r"Give a Hugging Face token"),
    # the CLI (in-process)
    Case("cli-image-scale-out-of-range", "cli", ["train", "--prompter", "shrink_pad", "--image-scale", "2"],
         r"error: Image scale must be between 0 and 1"),
    Case("cli-steps-0", "cli", ["train", "--steps", "0"], r"error: Steps must be at least 1"),
    Case("cli-lr-nan", "cli", ["train", "--lr", "nan"], r"learning rate must be a positive number"),
    Case("cli-unknown-model", "cli", ["train", "--model", "resnet9000-turbo", "--steps", "1"],
         r"error: Unknown backbone spec 'resnet9000-turbo'"),
    Case("cli-predict-bomb", "cli", ["predict", "{bomb}", "--prompt", "{prompt}"],
         r"bomb\.png has 400 MP; the limit is 50 MP"),
    Case("cli-predict-over-its-own-pixel-limit", "cli", ["predict", EXAMPLE, "--prompt", "{prompt}", "--max-image-mp",
                                                        "0.0001"], r"7_sneaker\.png is \d+ x \d+ pixels.*limit is 0\.0001 MP"),
    Case("cli-predict-zero-bytes", "cli", ["predict", "{empty}", "--prompt", "{prompt}"], r"Cannot read .*empty\.png"),
    Case("cli-predict-text-png", "cli", ["predict", "{text}", "--prompt", "{prompt}"], r"Cannot read .*notes\.png"),
    Case("cli-info-pickle", "cli", ["info", "{pickle}"], r"is not a safetensors prompt file"),
    Case("cli-predict-top-k-0", "cli", ["predict", EXAMPLE, "--prompt", "{prompt}", "-k", "0"],
         r"argument -k/--top-k: must be a number above 0, not '0'"),
    Case("cli-predict-top-k-negative", "cli", ["predict", EXAMPLE, "--prompt", "{prompt}", "-k", "-3"],
         r"argument -k/--top-k: must be a number above 0, not '-3'"),
    Case("cli-predict-pixel-limit-nan", "cli", ["predict", EXAMPLE, "--prompt", "{prompt}", "--max-image-mp", "nan"],
         r"argument --max-image-mp: must be a number above 0, not 'nan'"),
    Case("cli-predict-unknown-device", "cli", ["predict", EXAMPLE, "--prompt", "{prompt}", "--device", "tpu:7"],
         r"'tpu:7' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    Case("cli-predict-save-prompted-onto-a-file", "cli", ["predict", EXAMPLE, "--prompt", "{prompt}",
                                                         "--save-prompted", "{prompt}"], r"is a file; give it a folder"),
    Case("cli-eval-batch-size-0", "cli", ["eval", "--prompt", "{prompt}", "--batch-size", "0"],
         r"argument --batch-size: must be a number above 0, not '0'"),
    Case("cli-eval-batch-size-negative", "cli", ["eval", "--prompt", "{prompt}", "--batch-size", "-5"],
         r"argument --batch-size: must be a number above 0, not '-5'"),
    Case("cli-info-metadata-nested-100000-deep", "cli", ["info", "{deep}"], r"the metadata is nested more than 32"),
    Case("cli-predict-metadata-nested-100000-deep", "cli", ["predict", EXAMPLE, "--prompt", "{deep}"],
         r"the metadata is nested more than 32"),
    Case("cli-predict-fully-map-nan", "cli", ["predict", EXAMPLE, "--prompt", "{nan_head}"],
         r"head.weight holds NaN"),
]


def _write(tmp, data: bytes, name="p.safetensors") -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def test_the_table_has_at_least_forty_bad_inputs():
    assert INSPECTED <= {c.id for c in CASES if c.kind == "image" and c.error is None}
    bad = [c for c in CASES if c.error]
    assert len(bad) >= 40 and len({c.id for c in CASES}) == len(CASES)


# -- running it ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    return VPApp(AppConfig(user_zoo_dir=tmp / "zoo", work_dir=tmp / "work", device="cpu", max_steps=500,
                           max_batch_size=64, max_upload_mb=2, max_dataset_mb=2, max_dataset_files=50))


@pytest.fixture(scope="module")
def name(vp):
    return next(n for n, e in vp.entries.items() if e["meta"]["prompter"]["kind"] == "pad")


def still_works(vp, name):
    _, _, labels = vp.predict(name, None, EXAMPLE)
    assert len(labels) == 5


def _words(msg: str, pattern: str) -> None:
    assert re.search(pattern, msg, re.S), f"{msg!r} does not match {pattern!r}"
    assert not NOT_WORDS.search(msg), msg


def _no_server_paths(msg: str, vp, *more) -> None:
    """A message the app shows names no place on the server (the upload's temporary folder, the run's folders,
    the zoo's or the code's): the user knows their files by their own names."""
    for place in (vp.cfg.work_dir, vp.cfg.zoo_dir, vp.cfg.user_zoo_dir, Path(EXAMPLE).parents[2], *more):
        for p in {str(place), os.path.realpath(place)}:
            assert p not in msg, (p, msg)


def _form(upload=None, **settings):
    form = dict(model=EFFNET, dataset=UPLOADED_DATASET if upload else "fashion_mnist_subset", upload=upload,
                prompter="pad", steps=2, batch_size=16, lr=40.0)
    return {**form, **settings}


def _train(vp, session, upload=None, **settings):
    cfg = vp.train_config(session, **_form(upload, **settings))
    updates = list(vp.train_stream(cfg, session, min_interval=0))
    return cfg, updates[-1]


INSPECTED = {"image-mode-RGBA", "image-mode-I;16", "image-1x10000", "image-exif-rotated-jpeg", "image-float-array"}


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "image"], ids=lambda c: c.id)
def test_images(case, vp, name, tmp_path):
    image = case.make(tmp_path)
    image = str(image) if isinstance(image, Path) else image
    if case.error is None:
        _, zero, prompted = vp.predict(name, None, image)
        assert len(zero) == len(prompted) == 5
        # the five shown are the top of probabilities over all the prompt's classes that sum to 1
        model = vp.model(vp.prompt_path(name))[0]
        full = model.predict_both([vp.read_image(image)], len(model.class_names))[1][0]
        assert abs(sum(p for _, p in full) - 1) < 1e-5, full
        assert [c for c, _ in full[:5]] == list(prompted) and all(abs(prompted[c] - p) < 1e-6 for c, p in full[:5])
        if case.check is not None:
            case.check(image, np.asarray(vp.read_image(image)))
        if case.id == "image-exif-rotated-jpeg":  # shown (and classified) the way a viewer shows it
            assert vp.read_image(image).size == (20, 60)
        if case.id in INSPECTED:  # Inspect reads images through the same VPApp.read_image as Try: a few suffice
            assert vp.inspect(name, None, image)["saliency"] is not None
    else:
        with pytest.raises(VPError) as e:
            vp.predict(name, None, image)
        _words(str(e.value), case.error)
        _no_server_paths(str(e.value), vp, tmp_path)  # the upload's temporary folder is not the user's business
        if image is not None:  # (Inspect without an image shows the prompt alone)
            with pytest.raises(VPError):
                vp.inspect(name, None, image)
    still_works(vp, name)


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "prompt"], ids=lambda c: c.id)
def test_prompt_files(case, vp, name, tmp_path):
    path = str(case.make(tmp_path, vp))
    with pytest.raises(VPError) as e:
        vp.predict(None, path, EXAMPLE)
    _words(str(e.value), case.error)
    with pytest.raises(VPError) as again:
        vp.inspect(None, path)
    text, choices = vp.prompt_summary(None, path)  # the Try tab's line about an uploaded prompt says it at once
    assert text.startswith("**Cannot use this prompt:**") and len(choices) == 1
    assert re.search(case.error, text.removeprefix("**Cannot use this prompt:** "), re.S)
    for msg in (str(e.value), str(again.value), text):  # the upload by its own name, never its temporary place
        assert "p.safetensors" in msg
        _no_server_paths(msg, vp, tmp_path)
    still_works(vp, name)


def test_a_baseline_mapping_past_the_backbones_classes_is_refused_in_words(vp, name, tmp_path):
    """The file is consistent in itself (its ``num_source`` claims 5000 classes): only the backbone it is loaded on
    tells that its no-prompt mapping points past that backbone's 1000 classes (it was an IndexError at predict)."""
    path = prompt_file(lambda h, m, t: m["head"].update(num_source=5000,
                                                        baseline_mapping=_beyond(m["head"]["mapping"], 3000)))
    with pytest.raises(VPError, match=r"The no-prompt \(baseline\) label mapping points outside the backbone's "
                                      r"1000 source classes"):
        vp.predict(None, str(path(tmp_path, vp)), EXAMPLE)
    still_works(vp, name)


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "zip"], ids=lambda c: c.id)
def test_dataset_zips(case, vp, name, tmp_path):
    archive = str(case.make(tmp_path))
    session = re.sub(r"\W", "-", case.id)
    if case.error is None:
        with warnings.catch_warnings(record=True) as caught:  # (the run's thread warns too)
            warnings.simplefilter("always")
            cfg = vp.train_config(session, **_form(archive))
            unpacked = Path(cfg.out_dir) / "data"  # as unpacked, before training reads (and removes) it
            assert unpacked.is_dir() and not any(p.is_symlink() for p in unpacked.rglob("*"))
            last = list(vp.train_stream(cfg, session, min_interval=0))[-1]
        assert last.done and last.status.startswith("Done.")
        assert not unpacked.exists()  # decoded into memory: the unpacked copy is gone
        told = "\n".join(str(w.message) for w in caught if "unreadable" in str(w.message))
        assert re.search(case.warning, told, re.MULTILINE) if case.warning else not told, told
        _no_server_paths(told, vp, tmp_path)
    else:
        with pytest.raises(VPError) as e:
            _train(vp, session, archive)
        _words(str(e.value), case.error)
        _no_server_paths(str(e.value), vp, tmp_path)
        runs = list((Path(vp.cfg.work_dir) / session).glob("run-*"))
        assert runs == []  # a failed run leaves nothing on disk
        assert not (Path(vp.cfg.work_dir).parent / "evil.png").exists() and not Path("/tmp/evil.png").exists()
    still_works(vp, name)


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "setting"], ids=lambda c: c.id)
def test_impossible_settings(case, vp, name):
    session = re.sub(r"\W", "-", case.id)
    with pytest.raises(VPError) as e:
        _train(vp, session, **case.make)
    _words(str(e.value), case.error)
    _no_server_paths(str(e.value), vp)
    assert list((Path(vp.cfg.work_dir) / session).glob("run-*")) == []
    still_works(vp, name)


def test_after_every_failure_the_same_session_trains(vp, name):
    for case in [c for c in CASES if c.kind == "setting"][:3]:
        with pytest.raises(VPError):
            _train(vp, "again", **case.make)
    _, last = _train(vp, "again")
    assert last.done and Path(last.result_path).is_file()


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "zoo"], ids=lambda c: c.id)
def test_zoo_and_sharing(case, vp, name):
    action, text = case.make
    path = None if action == "add-none" else vp.entries[name]["path"]
    with pytest.raises(VPError) as e:
        if action.startswith("add"):
            vp.add_to_zoo(path, text)
        else:
            vp.push(path, text, None if action == "push-no-token" else "hf_not_a_real_token")
    _words(str(e.value), case.error)
    _no_server_paths(str(e.value), vp)
    assert not any(Path(vp.cfg.user_zoo_dir).parent.rglob("evil*"))
    still_works(vp, name)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, vp):
    tmp = tmp_path_factory.mktemp("cli")
    nan_head = prompt_file(lambda h, m, t: _fully_map(m, t, (10, 1000), math.nan))
    (tmp / "nan").mkdir()
    (tmp / "deep").mkdir()
    return {"bomb": str(bomb(tmp)), "empty": str(zero_bytes(tmp)), "text": str(text_png(tmp)),
            "pickle": str(_write(tmp, b"\x80\x04\x95" + b"\0" * 64, "evil.safetensors")),
            "nan_head": str(nan_head(tmp / "nan", vp)), "deep": str(prompt_file(_deep(100_000))(tmp / "deep", vp)),
            "prompt": next(e["path"] for e in vp.entries.values())}


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "cli"], ids=lambda c: c.id)
def test_cli(case, cli_files, capsys, tmp_path):
    argv = [a.format(**cli_files) for a in case.make]
    if argv[0] == "train":
        argv += ["--out-dir", str(tmp_path / "run"), "--device", "cpu", "--quiet"]
    try:
        rc = cli_main(argv)
    except SystemExit as e:  # argparse's own answer to an option out of range
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    _words(err, case.error)
    assert "error:" in err
    assert cli_main(["predict", EXAMPLE, "--prompt", cli_files["prompt"], "--device", "cpu"]) == 0  # still works
    assert "sneaker" in capsys.readouterr().out


def test_broken_files_in_a_zoo_are_named_as_the_prompt_lists_name_them(tmp_path, vp):
    """The Zoo tab's toast for a file it skipped, or the message for a zoo index it cannot read, names the file as
    the prompt lists do (my/NAME), never by its folder on the server."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    _write(zoo, b"not a prompt", "broken.safetensors")
    prompt_file(_deep(100_000))(zoo, vp).rename(zoo / "deep.safetensors")
    with pytest.warns(UserWarning, match="^Skipping my/"):  # (the app's first look, without a toast to show)
        mine = VPApp(AppConfig(user_zoo_dir=zoo, work_dir=tmp_path / "work", device="cpu"))
    told = []
    assert not any(n.startswith("my/") for n in mine.refresh_zoo(warn=told.append))
    assert len(told) == 2, told
    assert re.fullmatch(r"Skipping my/broken\.safetensors: my/broken\.safetensors is not a safetensors prompt file "
                        r"\(.+\)\.", told[0]), told
    assert told[1] == ("Skipping my/deep.safetensors: my/deep.safetensors: the metadata is nested more than 32 "
                       "levels deep; refused."), told
    for msg in told:
        _no_server_paths(msg, mine, tmp_path)
    (zoo / "index.json").write_text('{"version": 1, "prompts": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(VPError, match=r"^my/index\.json is nested more than 32 levels deep; refused\.$"):
        mine.refresh_zoo()


# -- through Gradio ------------------------------------------------------------------------------------------------

def test_unexpected_errors_reach_the_user_in_words_and_the_log_with_a_traceback(caplog):
    import gradio as gr

    import app

    with pytest.raises(gr.Error) as e, caplog.at_level("ERROR"):
        with app.user_errors("classifying the image"):
            {}["a bug"]
    assert "went wrong on the server while classifying the image (KeyError)" in e.value.message
    assert "Traceback" not in e.value.message and caplog.records[-1].exc_info is not None
    with pytest.raises(gr.Error, match="Upload an image"), app.user_errors():
        raise VPError("Upload an image or pick an example first.")


def test_the_image_input_hands_over_the_path_without_decoding_it(tmp_path):
    from gradio.data_classes import ImageData

    import app

    image = app.image_input()
    for make in (bomb, zero_bytes, text_png):
        path = str(make(tmp_path))
        assert image.preprocess(ImageData(path=path, orig_name=Path(path).name)) == path
    assert image.preprocess(None) is None
    # an image sent inline (base64, through the API) is decoded by Gradio: its failures are still a sentence
    import base64

    import gradio as gr

    for make in (bomb, text_png):
        inline = "data:image/png;base64," + base64.b64encode(make(tmp_path).read_bytes()).decode()
        with pytest.raises(gr.Error, match=r"The image cannot be read \((DecompressionBomb|UnidentifiedImage)Error"):
            image.preprocess(ImageData(path=None, url=inline))


def test_hostile_uploads_through_the_served_app(vp, name, tmp_path):
    """What a user of the page sees: the app's own sentence for each, never Gradio's generic error; then a valid
    prediction still works."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "screenshots.py"
    spec = importlib.util.spec_from_file_location("screenshots", script)
    shots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shots)
    demo = shots.launch_app(vp)
    try:
        client = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "dl"))
        for make, words in ((bomb, r"has 400 MP; the limit is 50 MP"), (zero_bytes, r"cannot be read"),
                            (text_png, r"cannot be read.*Try a PNG or JPEG")):
            with pytest.raises(AppError) as e:
                client.predict(name, handle_file(str(make(tmp_path))), api_name="/predict")
            _words(str(e.value), words)
            assert client.predict(name, handle_file(EXAMPLE), api_name="/predict")[2]["label"]
        # a prompt whose metadata is nested 100,000 deep: its own name and what is wrong, not a generic error, and
        # not Gradio's upload folder (a hash-named folder in its cache)
        (tmp_path / "mine").mkdir()
        deep = prompt_file(_deep(100_000))(tmp_path / "mine", vp).rename(tmp_path / "mine" / "my prompt.safetensors")
        with pytest.raises(AppError) as e:
            client.predict(None, handle_file(EXAMPLE), handle_file(str(deep)), api_name="/predict")
        _words(str(e.value), r"^my prompt\.safetensors: the metadata is nested more than 32 levels deep; refused\.$")
        _no_server_paths(str(e.value), vp, tmp_path, demo.GRADIO_CACHE)
        assert not re.search(r"[0-9a-f]{32}", str(e.value)), str(e.value)
        assert client.predict(name, handle_file(EXAMPLE), api_name="/predict")[2]["label"]
    finally:
        demo.close()
