"""Several prompts on the same images (visual_prompting.comparison and the CLI's ``compare``): real zoo prompts on
the bundled subset, the paired difference and McNemar's exact test checked against direct counts."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import with_metadata
from visual_prompting import VPError
from visual_prompting.cli import main
from visual_prompting.comparison import compare_prompts, mcnemar_p, paired_difference
from visual_prompting.data import load_splits
from visual_prompting.evaluation import evaluate
from visual_prompting.model import PromptedModel

ZOO = Path(__file__).resolve().parent.parent / "prompts_zoo"
LIVE = str(ZOO / "effnet-lite0-96_fashion-mnist_live.safetensors")
PAD = str(ZOO / "effnet-lite0-96_fashion-mnist_pad.safetensors")
SUBSET = "fashion_mnist_subset"


def binomial_two_sided(a: int, b: int) -> float:  # the exact test written out with whole numbers
    n, k = a + b, min(a, b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


@pytest.mark.parametrize("a, b", [(0, 0), (0, 10), (10, 0), (5, 5), (3, 7), (40, 61), (436, 515)])
def test_mcnemar_is_the_exact_binomial_test_of_the_disagreements(a, b):
    assert mcnemar_p(a, b) == pytest.approx(binomial_two_sided(a, b), rel=1e-9, abs=1e-300)


def test_mcnemar_known_values():
    assert mcnemar_p(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_p(3, 7) == pytest.approx(352 / 1024)
    assert mcnemar_p(6, 6) == 1.0


def test_paired_difference_counts_each_image_once():
    ref = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    other = torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.bool)
    d = paired_difference("a", "b", ref, other)
    assert d.difference == pytest.approx(100 * (4 - 3) / 6)
    assert (d.only_reference, d.only_other) == (1, 2)
    assert d.ci95[0] < d.difference < d.ci95[1]
    assert d.p_value == pytest.approx(binomial_two_sided(1, 2))
    back = paired_difference("b", "a", other, ref)  # the other way round: the same test, the opposite difference
    assert back.difference == pytest.approx(-d.difference) and back.p_value == d.p_value
    with pytest.raises(VPError, match="same images"):
        paired_difference("a", "b", ref, other[:3])


def test_compare_gives_each_prompts_own_accuracy_and_their_paired_difference():
    c = compare_prompts([LIVE, PAD], SUBSET, "test", "cpu")
    assert (c.dataset, c.split) == (SUBSET, "test")
    test = load_splits(SUBSET, image_size=96).test
    assert c.n == len(test)
    for score, path in zip(c.scores, (LIVE, PAD)):  # what `eval` gives, prompt by prompt
        model, _ = PromptedModel.from_prompt_file(path, "cpu")
        assert score.top1 == pytest.approx(evaluate(model, test, True).top1, abs=1e-9)
        assert score.top1_no_prompt == pytest.approx(evaluate(model, test, False).top1, abs=1e-9)
    assert [s.prompter for s in c.scores] == ["full_dct", "pad"]
    (d,) = c.differences
    assert (d.reference, d.other) == (LIVE, PAD)
    assert d.difference == pytest.approx(100 * (c.scores[1].top1 - c.scores[0].top1), abs=1e-9)
    assert d.only_other - d.only_reference == round(c.n * (c.scores[1].top1 - c.scores[0].top1))
    assert d.p_value == pytest.approx(binomial_two_sided(d.only_reference, d.only_other), rel=1e-9, abs=1e-300)
    assert d.difference < 0 and d.p_value < 0.05  # the paper-recipe pad prompt is far behind live, beyond noise


def test_the_cli_compares_and_prints_json(capsys):
    assert main(["compare", LIVE, PAD, LIVE, "--dataset", SUBSET, "--split", "val", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "McNemar p" in out and "full_dct" in out and "pad" in out
    assert "+0.00 points" in out  # a prompt against itself: no difference, p = 1
    assert main(["compare", LIVE, PAD, "--dataset", SUBSET, "--split", "val", "--device", "cpu", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["split"] == "val" and len(got["scores"]) == 2 and len(got["differences"]) == 1
    assert got["n"] == len(load_splits(SUBSET, image_size=96).val)


def test_compare_refuses_prompts_for_other_classes_and_a_single_prompt(tmp_path, capsys):
    other = with_metadata(LIVE, tmp_path / "other.safetensors",
                          lambda m: m.update(class_names=[f"class {i}" for i in range(10)]))
    assert main(["compare", LIVE, other, "--dataset", SUBSET, "--split", "val", "--device", "cpu"]) == 2
    assert "trained for the classes ['class 0'" in capsys.readouterr().err
    assert main(["compare", LIVE, "--dataset", SUBSET, "--device", "cpu"]) == 2
    assert "at least two prompts" in capsys.readouterr().err
    assert main(["compare", LIVE, str(tmp_path / "missing.safetensors"), "--device", "cpu"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
