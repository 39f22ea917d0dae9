"""scripts/reproduce_paper.py on CPU, offline, with tiny settings.

These tests check the script's *logic* only: that each dataset is trained through the library, that a dataset
that cannot be loaded is recorded with its error while the others still run, that Ctrl-C stops the loop but keeps
the results so far, that results.json / results.md hold what they should next to the paper's numbers, and that
prompts are shared under the right names (a dry-run upload folder, or a stand-in for the Hub push).

The model is ``clip:vp-tiny``, a tiny CLIP with *random* weights at 32 px, trained for 3 steps: its accuracies
mean nothing (about chance) and are only checked to be numbers in [0, 1]. No number here says anything about the
paper's results, which need the real CLIP ViT-B/32 and the full recipe on a GPU.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "reproduce_paper.py"
TINY = ["--model", "clip:vp-tiny", "--steps", "3", "--batch-size", "16", "--device", "cpu", "--quiet"]


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)  # scripts/ is not a package
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


rp = _load_script()


@pytest.fixture(autouse=True)
def _one_thread_offline(monkeypatch):
    """One torch thread: on a busy 2-core machine two threads per op oversubscribe the cores (measured here: a
    3-step tiny run took ~40 s with 2 threads next to a background job, ~2 s with 1). And no Hub access."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _results(out: Path) -> tuple[dict, str]:
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_defaults_are_the_papers_recipe(capsys):
    a = rp.build_parser().parse_args([])
    assert a.model == "clip:ViT-B-32/openai" and a.prompter == "pad" and a.prompt_size is None
    assert a.templates == "paper" and a.epochs == 1000 and a.steps is None
    assert (a.lr, a.momentum, a.warmup_steps) == (40.0, 0.9, 1000)
    assert a.download is True and a.out_dir == "runs/paper" and a.device == "auto"
    assert a.push_to is None and a.repo_prefix is None and a.dry_run_push is None  # no push unless asked
    assert a.datasets == ["cifar10", "cifar100", "svhn", "eurosat", "flowers102", "food101", "oxford_pets", "dtd"]
    cfg = rp.train_config(a, "cifar10", Path("runs/paper/cifar10"))
    d = rp.TrainConfig()
    assert (cfg.batch_size, cfg.weight_decay, cfg.clamp, cfg.init, cfg.seed) == (None, d.weight_decay, d.clamp,
                                                                                 d.init, d.seed)
    with pytest.raises(SystemExit) as e:
        rp.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--datasets", "--epochs", "--steps", "--push-to", "--repo-prefix", "--dry-run-push", "--token",
                 "--download", "UCF101", "1000 epochs"):
        assert word in out
    with pytest.raises(SystemExit) as e:
        rp.main(["--datasets", "no_such_set"])
    assert e.value.code == 2


def test_tiny_run_records_failure_and_continues(tmp_path, capsys):
    out, up, empty = tmp_path / "out", tmp_path / "upload", tmp_path / "no-data"
    empty.mkdir()
    rc = rp.main([*TINY, "--datasets", "fashion_mnist_subset", "cifar10", "--data-root", str(empty), "--no-download",
                  "--out-dir", str(out), "--dry-run-push", str(up)])
    assert rc == 1  # one dataset failed
    doc, md = _results(out)
    assert doc["finished"] is True and doc["interrupted"] is False
    ok, failed = doc["results"]
    assert ok["dataset"] == "fashion_mnist_subset" and ok["status"] == "ok" and "error" not in ok
    for k in ("test_top1", "test_top5", "test_top1_no_prompt", "best_val_top1"):
        assert isinstance(ok[k], float) and 0.0 <= ok[k] <= 1.0, k  # meaningless values, random tiny model
    assert ok["steps"] == 3 and ok["test_n"] == 1000 and ok["seconds"] > 0
    assert Path(ok["prompt"]).is_file() and ok["upload_dir"] == str(up / "fashion_mnist_subset")
    assert "hub_url" not in ok and "hub_error" not in ok
    assert {p.name for p in (up / "fashion_mnist_subset").iterdir()} == {"prompt.safetensors", "config.json",
                                                                         "README.md", "prompt.png"}
    cfg = json.loads((up / "fashion_mnist_subset" / "config.json").read_text())
    assert cfg["backbone"]["spec"] == "clip:vp-tiny" and cfg["metrics"]["steps"] == 3

    assert failed["dataset"] == "cifar10" and failed["status"] == "failed" and "test_top1" not in failed
    assert isinstance(failed["error"], str) and "cifar10" in failed["error"]
    assert failed["paper_visual_prompt_pct"] == 94.0 and failed["paper_linear_probe_pct"] == 95.0

    assert doc["paper"]["linear_probe_pct"]["svhn"] == 65.4 and "confirmed" in doc["paper"]["caveat"]
    (avg,) = doc["averages"]  # only the dataset that ran; it has no paper number
    assert avg["datasets"] == ["fashion_mnist_subset"] and avg["paper_visual_prompt_pct"] is None
    assert math.isclose(avg["visual_prompt_pct"], 100 * ok["test_top1"])

    header = ("| dataset | zero-shot (ours) | visual prompt (ours) | visual prompt (paper, approx.†) | "
              "linear probe (paper) | delta vs paper |")
    assert header in md and "to be confirmed from the PDF" in md
    assert f"| fashion_mnist_subset | {100 * ok['test_top1_no_prompt']:.1f} | {100 * ok['test_top1']:.1f} |" in md
    assert "| cifar10 | failed‡ | failed‡ | ~94.0 | 95.0 | — |" in md and failed["error"] in md
    assert "average over the 1 that ran" in md
    assert header in capsys.readouterr().out  # the table is printed too


def test_push_names_each_repo_and_ctrl_c_keeps_results(tmp_path, monkeypatch):
    """--push-to USER pushes every best prompt as USER/vp-MODEL-DATASET (the Hub call is replaced by a stand-in);
    a Ctrl-C while the second dataset loads stops the loop, writes the results so far and skips the third."""
    pushed, trained = [], []
    real_train = rp.train

    def fake_push(path, repo_id, token=None, private=False):
        assert Path(path).is_file()
        pushed.append((repo_id, token))
        return f"https://huggingface.co/{repo_id}"

    def train_then_ctrl_c(cfg, callbacks=None, cache=None):
        trained.append(cfg.dataset)
        if len(trained) == 2:
            raise KeyboardInterrupt
        return real_train(cfg, callbacks=callbacks, cache=cache)

    monkeypatch.setattr(rp, "push_prompt", fake_push)
    monkeypatch.setattr(rp, "train", train_then_ctrl_c)
    out = tmp_path / "out"
    rc = rp.main([*TINY, "--datasets", "fashion_mnist_subset", "cifar10", "svhn", "--out-dir", str(out),
                  "--push-to", "alice", "--token", "hf_secret"])
    assert rc == 130 and trained == ["fashion_mnist_subset", "cifar10"]
    assert pushed == [("alice/vp-clip-vp-tiny-fashion_mnist_subset", "hf_secret")]
    doc, md = _results(out)
    assert doc["interrupted"] is True and doc["finished"] is False
    assert [r["dataset"] for r in doc["results"]] == ["fashion_mnist_subset", "cifar10"]
    first, second = doc["results"]
    assert first["status"] == "ok" and first["hub_url"] == "https://huggingface.co/alice/vp-clip-vp-tiny-fashion_mnist_subset"
    assert second["status"] == "interrupted" and "interrupted" in second["error"]
    assert "hf_secret" not in (out / "results.json").read_text() and "token" not in doc["config"]
    assert "svhn" not in md and "https://huggingface.co/alice/vp-clip-vp-tiny-fashion_mnist_subset" in md
    assert rp.repo_prefix(rp.build_parser().parse_args(["--push-to", "bob"])) == "bob/vp-clip-vit-b-32-openai-"
