import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from visual_prompting import VPError
from visual_prompting.fullmap import FullyMapHead
from visual_prompting.heads import LabelMappingHead


def test_counts_its_trainable_numbers_and_is_not_input_only():
    h = FullyMapHead(1000, 10)
    assert h.trainable_params() == 1000 * 10 + 10 == 10_010
    assert h.describe()["trainable_params"] == 10_010 and h.describe()["kind"] == "fully_map"
    assert FullyMapHead.input_only is False


def test_mapping_init_starts_as_the_label_mapping():
    mapping = [5, 3, 999, 0]
    h = FullyMapHead(1000, 4, init="mapping", mapping=mapping)
    ref = LabelMappingHead(mapping, 1000, "frequency")
    logits = torch.randn(8, 1000)
    assert torch.equal(h(logits), ref(logits))
    assert h.describe()["init_mapping"] == mapping
    assert torch.equal(FullyMapHead(20, 3)(torch.eye(20))[:3], torch.eye(3))  # no mapping given: first k


def test_random_init_is_seeded():
    a, b = FullyMapHead(50, 4, init="random", seed=1), FullyMapHead(50, 4, init="random", seed=1)
    c = FullyMapHead(50, 4, init="random", seed=2)
    assert torch.equal(a.linear.weight, b.linear.weight) and not torch.equal(a.linear.weight, c.linear.weight)
    assert float(a.linear.weight.abs().max()) <= 50 ** -0.5


def test_it_learns_what_a_one_to_one_mapping_cannot():
    # each class is the *sum* of two source logits: no single source logit separates them, a linear layer does
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(3, 12)
    w[0, [0, 1]] = w[1, [2, 3]] = w[2, [4, 5]] = 1.0
    x = torch.randn(600, 12, generator=g)
    y = (x @ w.T).argmax(1)
    h = FullyMapHead(12, 3, mapping=[0, 2, 4])
    start = float((h(x).argmax(1) == y).float().mean())
    opt = torch.optim.Adam(h.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(h(x), y).backward()
        opt.step()
    end = float((h(x).argmax(1) == y).float().mean())
    assert start < 0.85 and end > 0.95


def test_state_round_trip_through_safetensors(tmp_path):
    h = FullyMapHead(30, 5, init="random", seed=3)
    with torch.no_grad():
        h.linear.bias.add_(0.25)
    path = str(tmp_path / "h.safetensors")
    save_file({**h.state_tensors(), "prompt.pad_up": torch.zeros(2)}, path)
    back = FullyMapHead.from_state(h.describe(), load_file(path))
    x = torch.randn(4, 30)
    assert torch.equal(back(x), h(x)) and back.describe() == h.describe()


@pytest.mark.parametrize("call, msg", [
    (lambda: FullyMapHead(10, 1), "at least two classes"),
    (lambda: FullyMapHead(10, 3, init="xavier"), "Unknown fully-map init"),
    (lambda: FullyMapHead(10, 3, mapping=[0, 1, 10]), "one source index"),
    (lambda: FullyMapHead.from_state({"num_source": 4, "num_classes": 2}, {}), "missing"),
    (lambda: FullyMapHead.from_state({"num_source": 4, "num_classes": 2},
                                     {"head.weight": torch.zeros(2, 5), "head.bias": torch.zeros(2)}), "shape"),
    (lambda: FullyMapHead.from_state({"num_classes": 2}, {}), "num_source"),
])
def test_errors_say_what_is_wrong(call, msg):
    with pytest.raises(VPError, match=msg):
        call()
