import subprocess
import sys

import pytest

from visual_prompting import VPError
from visual_prompting.cli import main

EXAMPLE = "assets/examples/7_sneaker.png"


def test_help_works_as_a_module():
    out = subprocess.run([sys.executable, "-m", "visual_prompting", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "predict" in out.stdout


@pytest.mark.parametrize("cmd, words", [("train", ["--prompter", "--lr", "paper"]), ("eval", ["--split"]),
                                        ("predict", ["--prompt", "-k"]), ("compare", ["--split", "McNemar"]),
                                        ("info", ["prompt"]),
                                        ("push", ["--repo-id", "--private", "--dry-run"])])
def test_every_command_explains_its_options(cmd, words, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(w in out for w in words)


def test_train_then_info_eval_predict(tmp_path, capsys):
    out_dir = tmp_path / "run"
    rc = main(["train", "--recipe", "paper", "--model", "clip:vp-tiny", "--steps", "4", "--batch-size", "16",
               "--out-dir", str(out_dir), "--device", "cpu", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "test top-1" in out and "prompted" in out
    best = str(out_dir / "best.safetensors")
    assert main(["info", best]) == 0
    out = capsys.readouterr().out
    assert "clip:vp-tiny" in out and "pad, size 4 at 32px" in out and "CLIP text classifier" in out
    assert main(["eval", "--prompt", best, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "no prompt" in out and "1000 images" in out
    assert main(["predict", EXAMPLE, "--prompt", best, "-k", "3", "--device", "cpu",
                 "--save-prompted", str(tmp_path / "png")]) == 0
    out = capsys.readouterr().out
    assert "zero-shot (no prompt)" in out and "prompted" in out
    assert (tmp_path / "png" / "7_sneaker_prompted.png").is_file()


def test_errors_are_one_clear_line(tmp_path, capsys, trained):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("nope")
    assert main(["info", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a safetensors" in err and "Traceback" not in err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    best = trained[0].best_path
    assert main(["predict", str(broken), EXAMPLE, "--prompt", best]) == 1  # one bad image, the other is classified
    captured = capsys.readouterr()
    assert "Cannot read" in captured.err and "7_sneaker" in captured.out
    assert main(["train", "--dataset", "no_such_set", "--out-dir", str(tmp_path / "x")]) == 2
    assert "Unknown dataset" in capsys.readouterr().err
    assert main(["info"]) == 0
    assert "fashion_mnist_subset" in capsys.readouterr().out


def test_push_dry_run_writes_the_upload_folder_and_it_loads_back(tmp_path, capsys, trained):
    best = trained[0].best_path
    assert main(["push", best, "--repo-id", "someone/fmnist-pad", "--dry-run", str(tmp_path / "up")]) == 0
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == ["README.md", "config.json", "prompt.png",
                                                                    "prompt.safetensors"]
    capsys.readouterr()
    assert main(["info", str(tmp_path / "up")]) == 0  # a folder is accepted wherever a prompt is
    assert "effnet-lite0@64" in capsys.readouterr().out


def test_train_says_when_the_prompt_is_below_no_prompt(tmp_path, capsys):
    """Two steps at an lr that wrecks the image (Adam, 1000: every pixel clamped after one step): the kept prompt is
    below no prompt on validation, and the CLI says so and what to do, instead of leaving a number to puzzle over."""
    rc = main(["train", "--model", "effnet-lite0@32", "--dataset", "fashion_mnist_subset", "--steps", "2",
               "--eval-every", "1", "--batch-size", "16", "--lr", "1000", "--mapping-samples", "200",
               "--out-dir", str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "The prompt is below no prompt on validation after 2 step(s)" in out and "--time-budget" in out


def test_train_refuses_an_unknown_device_a_file_as_out_dir_and_a_resume_with_other_settings(tmp_path, capsys):
    base = ["train", "--model", "effnet-lite0@32", "--dataset", "fashion_mnist_subset", "--steps", "2", "--batch-size",
            "8", "--eval-every", "2", "--mapping-samples", "64", "--start-samples", "64", "--quiet"]
    with pytest.raises(SystemExit) as e:  # refused as the options are parsed: TrainConfig.device's own check
        main(base + ["--device", "tpu:7", "--out-dir", str(tmp_path / "a")])
    assert e.value.code == 2 and not (tmp_path / "a").exists()
    assert "argument --device: 'tpu:7' is not a device; use auto, cpu" in capsys.readouterr().err
    from visual_prompting.settings import check_config
    from visual_prompting.train_config import TrainConfig

    with pytest.raises(VPError, match="'tpu:7' is not a device"):  # the same rule for the library, app and scripts
        check_config(TrainConfig(device="tpu:7"))
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    assert main(base + ["--device", "cpu", "--out-dir", str(afile)]) == 2
    assert "is a file; give --out-dir a folder" in capsys.readouterr().err and afile.read_text() == "mine"
    run = str(tmp_path / "run")
    assert main(base + ["--device", "cpu", "--optimizer", "sgd", "--lr", "1", "--out-dir", run]) == 0
    last = (tmp_path / "run" / "last.safetensors").read_bytes()
    capsys.readouterr()
    from PIL import Image

    for c in range(3):  # a dataset of other classes
        (tmp_path / "three" / f"k{c}").mkdir(parents=True)
        for i in range(6):
            Image.open(EXAMPLE).convert("RGB").rotate(10 * i + c).save(tmp_path / "three" / f"k{c}" / f"{i}.png")
    for other, words in ((["--optimizer", "adam", "--lr", "0.01"], "optimizer 'sgd' (this run: 'adam')"),
                         (["--optimizer", "sgd", "--lr", "1", "--label-mapping", "frequency"], "label mapping"),
                         (["--optimizer", "sgd", "--lr", "1", "--dataset", str(tmp_path / "three")],
                          "10 other classes (this run: 3)")):
        assert main([*base[:6], "4", *base[7:], "--device", "cpu", *other, "--out-dir", run, "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and words in err and "use a new --out-dir" in err and "Traceback" not in err
        assert (tmp_path / "run" / "last.safetensors").read_bytes() == last  # refused before anything was written
