import json

import pytest
import torch
from safetensors.torch import save_file

from visual_prompting import PromptedModel, VPError, create_prompter, load_prompt, save_prompt
from visual_prompting.prompt_file import build_metadata, check_backbone, read_metadata


def _meta(p, **over):
    m = build_metadata(p, backbone={"spec": "clip:vp-tiny", "kind": "clip"}, class_names=["cat", "dog"],
                       head={"kind": "clip_text", "templates": ["This is a photo of a {}"]}, dataset="toy",
                       train_config={"lr": 40.0}, metrics={"val_top1": 0.5})
    m.update(over)
    return m


@pytest.mark.parametrize("kind", ["pad", "fixed_patch", "random_patch", "shrink_pad", "full_dct"])
def test_round_trip_is_exact(tmp_path, kind):
    p = create_prompter(kind=kind, image_size=32, size=4, init="randn", init_std=0.3)
    path = save_prompt(tmp_path / "p.safetensors", p, _meta(p))
    pf = load_prompt(path)
    assert pf.meta == json.loads(json.dumps(_meta(p)))
    for (k, a), (k2, b) in zip(p.named_parameters(), pf.prompter.named_parameters()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(p.eval()(x), pf.prompter.eval()(x))


def test_file_is_plain_safetensors_with_json_metadata(tmp_path):
    p = create_prompter(kind="pad", image_size=32, size=4)
    path = save_prompt(tmp_path / "p.safetensors", p, _meta(p))
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"]["format"] == "visual-prompting"
    assert json.loads(header["__metadata__"]["metadata"])["prompter"]["kind"] == "pad"
    assert read_metadata(path)["class_names"] == ["cat", "dog"]


def test_errors_say_what_is_wrong(tmp_path):
    p = create_prompter(kind="pad", image_size=32, size=4)
    with pytest.raises(VPError, match="not found"):
        load_prompt(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(VPError, match="not a safetensors"):
        load_prompt(junk)
    pickled = tmp_path / "pickled.pt"
    torch.save({"prompt": torch.zeros(3)}, pickled)  # a pickle is refused, never unpickled
    with pytest.raises(VPError, match="not a safetensors"):
        load_prompt(pickled)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(VPError, match="not a visual-prompting prompt"):
        load_prompt(other)
    good = dict(p.named_parameters())
    wrong = tmp_path / "wrong.safetensors"
    header = {"format": "visual-prompting", "format_version": "1", "metadata": json.dumps(_meta(p))}
    save_file({f"prompt.{k}": (torch.zeros(3, 5, 5) if k == "pad_up" else v.detach()) for k, v in good.items()},
              str(wrong), metadata=header)
    with pytest.raises(VPError, match="pad_up.*shape"):
        load_prompt(wrong)
    missing = tmp_path / "missing.safetensors"
    save_file({f"prompt.{k}": v.detach() for k, v in good.items() if k != "pad_left"}, str(missing), metadata=header)
    with pytest.raises(VPError, match="missing: \\['pad_left'\\]"):
        load_prompt(missing)
    nokey = tmp_path / "nokey.safetensors"
    m = _meta(p)
    del m["class_names"]
    save_file({f"prompt.{k}": v.detach() for k, v in good.items()}, str(nokey),
              metadata={**header, "metadata": json.dumps(m)})
    with pytest.raises(VPError, match="missing class_names"):
        load_prompt(nokey)
    future = tmp_path / "future.safetensors"
    save_file({f"prompt.{k}": v.detach() for k, v in good.items()}, str(future), metadata={**header, "format_version": "99"})
    with pytest.raises(VPError, match="version"):
        load_prompt(future)
    nan = tmp_path / "nan.safetensors"
    save_file({f"prompt.{k}": torch.full_like(v, float("nan")) for k, v in good.items()}, str(nan), metadata=header)
    with pytest.raises(VPError, match="NaN"):
        load_prompt(nan)


def test_bad_metadata_is_refused_on_save(tmp_path):
    p = create_prompter(kind="pad", image_size=32, size=4)
    with pytest.raises(VPError, match="mapping"):
        save_prompt(tmp_path / "x.safetensors", p,
                    _meta(p, head={"kind": "label_mapping", "method": "first_k", "mapping": [1]}))
    with pytest.raises(VPError, match="same source class"):
        save_prompt(tmp_path / "x.safetensors", p,
                    _meta(p, head={"kind": "label_mapping", "method": "first_k", "mapping": [1, 1]}))


def test_prompt_is_never_applied_to_another_backbone_silently(tmp_path):
    p = create_prompter(kind="pad", image_size=32, size=4)
    path = save_prompt(tmp_path / "p.safetensors", p, _meta(p))
    assert check_backbone(read_metadata(path), "clip:vp-tiny") is None
    assert "trained for clip:vp-tiny" in check_backbone(read_metadata(path), "effnet-lite0")
    with pytest.raises(VPError, match="trained for clip:vp-tiny"):
        PromptedModel.from_prompt_file(path, backbone="effnet-lite0")
    model, _ = PromptedModel.from_prompt_file(path)
    assert model.backbone.spec == "clip:vp-tiny" and model.class_names == ["cat", "dog"]


@pytest.mark.parametrize("what", ["prompt", "text"])
def test_threads_saving_one_path_at_once_all_succeed_and_leave_a_whole_file(tmp_path, what):
    """The app serves users from threads of one process: each writer (a prompt, a zoo's index.json) needs its own
    temporary file (one per process made them rename each other's away: FileNotFoundError)."""
    import json
    import threading

    from visual_prompting.utils import write_text_atomic

    p = create_prompter(kind="pad", image_size=32, size=4)
    target, errors = tmp_path / ("same.safetensors" if what == "prompt" else "same.json"), []

    def write():
        try:
            for i in range(5):
                if what == "prompt":
                    save_prompt(target, p, _meta(p))
                else:
                    write_text_atomic(target, json.dumps({"writer": threading.get_ident(), "i": i, "pad": "x" * 4096}))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    if what == "prompt":
        assert load_prompt(target).meta["prompter"]["kind"] == "pad"
    else:
        assert json.loads(target.read_text())["i"] == 4  # a whole file, the last write of one writer
    assert [f.name for f in tmp_path.iterdir()] == [target.name]  # no temporary file left behind
