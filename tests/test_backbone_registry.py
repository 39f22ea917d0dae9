"""Backbone families and dataset sources are registries: a family registered from outside the package (here, from
this file) is usable from the CLI, the app and the model card; the CLI reads a .zip of class folders like the app;
timm backbones train and predict through the CLI."""
import zipfile

import pytest
import torch
from PIL import Image
from torch import nn

from visual_prompting import VPError, load_backbone
from visual_prompting.backbones import (BACKBONE_FAMILIES, BackboneSpec, ClassifierBackbone, backbone_examples,
                                        backbone_help, parse_spec, register_backbone_family,
                                        unregister_backbone_family)
from visual_prompting.cli import main
from visual_prompting.data import DATASET_SOURCES, dataset_help, dataset_names, load_splits

EXAMPLE = "assets/examples/7_sneaker.png"


class ToyNet(nn.Module):
    """Ten 'source classes' from a 4x4-strided convolution and a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture
def toy_family():
    loads = []

    @register_backbone_family("toy", description="toy nets registered by a test file", examples=("toy:net@32",),
                              hub_tag="toy-family")
    def load_toy(spec: str, p: BackboneSpec):
        if p.name != "net":
            raise VPError(f"No toy model {p.name!r}.")
        loads.append(spec)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = ToyNet()
        return ClassifierBackbone(spec, net, p.size or 32, (0.5,) * 3, (0.25,) * 3, [f"toy {i}" for i in range(10)])

    yield loads
    unregister_backbone_family("toy")
    assert "toy" not in BACKBONE_FAMILIES


def test_a_family_registered_outside_the_package_works_everywhere(toy_family, shapes_zip, tmp_path, capsys):
    assert parse_spec("toy:net@32") == ("toy", "net", None, 32)
    assert "toy:net@32" in backbone_examples() and "toy nets registered by a test file" in backbone_help()
    # the CLI's help lists it, and the CLI trains with it and writes a model card that names it
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "toy nets registered by a test file" in " ".join(capsys.readouterr().out.split())
    assert main(["info"]) == 0 and "toy:MODEL[/WEIGHTS]" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["train", "--model", "toy:net@32", "--dataset", str(shapes_zip), "--steps", "2", "--batch-size", "4",
                 "--label-mapping", "first_k", "--out-dir", str(out), "--device", "cpu", "--quiet"]) == 0
    assert toy_family == ["toy:net@32"]
    assert main(["predict", EXAMPLE, "--prompt", str(out / "best.safetensors"), "--device", "cpu"]) == 0
    assert "prompted" in capsys.readouterr().out
    assert main(["push", str(out / "best.safetensors"), "--repo-id", "someone/toy", "--dry-run", str(tmp_path / "up")]) == 0
    card = (tmp_path / "up" / "README.md").read_text()
    assert "- toy-family" in card and "`toy:net@32`" in card
    with pytest.raises(VPError, match="No toy model"):
        load_backbone("toy:other")


def test_the_app_offers_a_registered_family(toy_family, tmp_path):
    pytest.importorskip("gradio")
    import app
    from visual_prompting.ui import AppConfig, VPApp

    vp = VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu"))
    demo = app.build_app(vp)
    model_box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "train-model")
    assert "toy:net@32" in [c[0] if isinstance(c, (tuple, list)) else c for c in model_box.choices]
    cfg = vp.train_config("s-toy", model="toy:net@32", dataset="fashion_mnist_subset", steps=1, batch_size=4)
    assert cfg.model == "toy:net@32"


def test_unknown_spec_lists_every_family(toy_family):
    with pytest.raises(VPError) as e:
        parse_spec("nothing-like-it")
    assert all(f.form in str(e.value) for f in BACKBONE_FAMILIES.values())


@pytest.fixture(scope="module")
def shapes_zip(tmp_path_factory):
    """A .zip of two class folders with five 24x20 images each: CLI runs on it take seconds."""
    return _zip_of_class_folders(tmp_path_factory.mktemp("zip") / "shapes.zip")


def _zip_of_class_folders(path, top="shapes", n=5):
    with zipfile.ZipFile(path, "w") as zf:
        for c, colour in (("red_things", (255, 0, 0)), ("blue_things", (0, 0, 255))):
            for i in range(n):
                img = Image.new("RGB", (24, 20), colour)
                tmp = path.parent / f"{c}{i}.png"
                img.save(tmp)
                zf.write(tmp, f"{top}/{c}/{i}.png")
    return path


def test_one_registry_of_dataset_sources_and_the_cli_reads_a_zip(shapes_zip, tmp_path, capsys):
    assert list(DATASET_SOURCES)[:2] == ["folder", "zip"]
    assert dataset_names()[0] == "fashion_mnist_subset" and "cifar10" in dataset_names()
    assert ".zip" in dataset_help()
    archive = shapes_zip
    s = load_splits(str(archive), image_size=16)
    assert s.name == "shapes" and s.class_names == ["blue things", "red things"]
    assert len(s.train) + len(s.val) + len(s.test) == 10
    out = tmp_path / "run"
    assert main(["train", "--model", "clip:vp-tiny", "--dataset", str(archive), "--steps", "2", "--batch-size", "4",
                 "--out-dir", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "test top-1" in capsys.readouterr().out
    assert main(["info", str(out / "best.safetensors")]) == 0
    assert "shapes" in capsys.readouterr().out
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip")
    assert main(["train", "--dataset", str(bad), "--out-dir", str(tmp_path / "x")]) == 2
    assert "not a readable .zip" in capsys.readouterr().err


def test_timm_random_backbone_trains_and_predicts_through_the_cli(shapes_zip, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "timm:resnet18/random@32", "--dataset", str(shapes_zip), "--steps", "2",
                 "--batch-size", "4",
                 "--label-mapping", "first_k", "--out-dir", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "test top-1" in capsys.readouterr().out
    best = str(out / "best.safetensors")
    assert main(["predict", EXAMPLE, "--prompt", best, "-k", "3", "--device", "cpu"]) == 0
    assert "zero-shot (no prompt)" in capsys.readouterr().out
    assert main(["push", best, "--repo-id", "someone/timm", "--dry-run", str(tmp_path / "up")]) == 0
    card = (tmp_path / "up" / "README.md").read_text()
    assert "- timm" in card and "base_model" not in card  # random weights: no Hub repo to point to


def test_timm_random_backbone_trains_and_predicts_through_the_app(shapes_zip, tmp_path):
    from visual_prompting.ui import AppConfig, VPApp

    vp = VPApp(AppConfig(user_zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work", device="cpu"))
    assert "timm:resnet18/random" in backbone_examples()
    cfg = vp.train_config("s-timm", model="timm:resnet18/random@32", dataset="", upload=str(shapes_zip), steps=2,
                          batch_size=4, label_mapping="first_k")
    last = list(vp.train_stream(cfg, "s-timm", min_interval=0.0))[-1]
    assert last.done and last.result_path and "Test top-1" in last.status
    prompted, zero, pred = vp.predict(None, last.result_path, Image.open(EXAMPLE))
    # two classes: the top-k is both, with probabilities that sum to 1, with and without the prompt
    assert prompted.size == (32, 32) and set(pred) == set(zero) == {"red things", "blue things"}
    assert abs(sum(pred.values()) - 1) < 1e-4 and abs(sum(zero.values()) - 1) < 1e-4
