"""recede.wrap(model, blocks=...): the model's own forward cut after the named blocks (float64).

At h = T the engine must give plain autograd's gradient of ``loss_fn(model(x), y)``; at every h
each block's gradient must be g_h by definition (a fresh forward of the split model to depth
t + h per block, :func:`conftest.slow_horizon_gradient` on the net itself); what cannot be split is refused in one line.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import torch
from conftest import assert_blocks_get_g_h
from torch import nn

import recede


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.linear(h))


class Outside(nn.Module):
    """A model of no family: embedding, blocks with the model's own glue between them (a
    scale, a parameter of the model's), a norm and a head after them."""

    def __init__(self, features: int = 4, width: int = 6, depth: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.gate = nn.Parameter(torch.tensor(0.7))
        self.layers = nn.ModuleList(Residual(width) for _ in range(depth))
        self.drop = nn.Dropout(0.0)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) * self.gate
        for i, layer in enumerate(self.layers):
            h = layer(h) / (1 + i / 4)  # the model's own code between blocks
        return self.out(self.norm(self.drop(h)))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)


def test_h_T_is_plain_autograd_and_every_h_is_g_h(float64):
    torch.manual_seed(0)
    model, (x, y) = Outside().double(), batch()
    net = recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss())
    assert net.T == 4 and all(net.blocks[t].block is model.layers[t] for t in range(4))
    assert net.blocks[0].embed is model.embed and net.blocks[0].gate is model.gate  # the stem rides
    assert net.head(4).norm is model.norm and net.head(4).out is model.out
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    recede.MPC(net, net.T).backward(x, y)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-12, atol=1e-14, msg=n)
    assert_blocks_get_g_h(net, x, y, rtol=1e-10)


def test_blocks_as_a_list_of_names_and_grouping_by_the_caller(float64):
    model, (x, y) = Outside().double(), batch()
    net = recede.wrap(model, blocks=["layers.0", "layers.2"], loss_fn=nn.CrossEntropyLoss(), head=nn.Linear(6, 3))
    assert net.T == 2 and net.blocks[1].block is model.layers[2]
    assert net.blocks[1].layers_1 is model.layers[1]  # an unnamed layer rides with the next block
    assert net.head(2).layers_3 is model.layers[3]  # and after the last, with the final head
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    recede.MPC(net, 2).backward(x, y)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-12, atol=1e-14, msg=n)


def test_heads_of_earlier_depths_can_be_given_or_made(float64):
    model, (x, y) = Outside().double(), batch()
    given = [nn.Linear(6, 3) for _ in range(3)]
    net = recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), head=[*given, None])
    assert [net.head(k) for k in (1, 2, 3)] == given and type(net.head(4)).__name__ == "Tail"
    shared = nn.Linear(6, 3)
    net = recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), head=shared)
    assert net.head(1) is shared and net.head(3) is shared and net.head(4) is not shared
    made = recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), example=x)
    assert made.head(1).fc.in_features == 6 and made.head(1).fc.out_features == 3
    recede.MPC(made, 2).backward(x, y)
    with pytest.raises(ValueError, match="the final head is the rest of the model's forward"):
        recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), head=[*given, nn.Linear(6, 3)])


def test_train_eval_no_grad_and_threads(float64):
    model, (x, y) = Outside().double(), batch()
    net = recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), head=nn.Linear(6, 3))
    net.eval()
    assert not model.training and not model.layers.training and not model.drop.training
    net.train()
    before = threading.active_count()
    net.check(x, y)  # no-grad forward in eval mode, then a gradient step, several times
    for h in (1, 2, 4, 1):
        recede.MPC(net, h).backward(x, y)
    net.blocks[0](x)  # an abandoned forward is cancelled by the next one
    with torch.no_grad():
        net(x)
    assert threading.active_count() <= before + 1


class CallsTwice(Outside):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in [*self.layers, self.layers[0]]:
            h = layer(h)
        return self.out(h)


class UsesEarlyParameterLate(Outside):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h) * self.gate  # gate is registered before the blocks, used in every unit
        return self.out(h)


@pytest.mark.parametrize(
    "make, blocks, message",
    [
        (Outside, "nowhere", "Outside has no submodule 'nowhere'"),
        (Outside, ["layers.1", "layers.0"], r"forward called block 1 \(layers.0\) when block 0 \(layers.1\) was due"),
        (Outside, ["layers.0", "layers.0"], "a module is named twice"),
        (CallsTwice, "layers", r"forward called block 0 \(layers.0\) when block 4 \(the end\) was due"),
        (UsesEarlyParameterLate, "layers", r"unit 1 of UsesEarlyParameterLate uses parameter\(s\) \['gate'\]"),
    ],
)
def test_what_cannot_be_split_is_refused_in_one_line(float64, make, blocks, message):
    model, (x, y) = make().double(), batch()
    with pytest.raises(ValueError, match=message) as info:
        net = recede.wrap(model, blocks=blocks, loss_fn=nn.CrossEntropyLoss(), head=nn.Linear(6, 3))
        recede.MPC(net, 1).backward(x, y)
    assert "\n" not in str(info.value)


def test_a_generic_split_needs_a_loss():
    with pytest.raises(ValueError, match=r"recede.wrap\(blocks=...\) models have no loss of their own"):
        recede.wrap(Outside(), blocks="layers", head=nn.Linear(6, 3))


DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"
MARKED = re.compile(r"<!-- test: (?P<name>[\w.-]+) -->\s*\n```python\n(?P<code>.*?)\n```", re.S)


@pytest.mark.parametrize("name", ["manual-decoder-lm", "manual-vision"])
def test_the_manual_recipes_in_docs_run_and_are_exact(name):
    """docs/models.md's BlockNet recipes run as written (the LM one asserts h = T is autograd)."""
    pytest.importorskip("transformers" if "lm" in name else "torchvision")
    code = {m["name"]: m["code"] for m in MARKED.finditer(DOCS.read_text())}[name]
    exec(compile(code, f"docs/models.md[{name}]", "exec"), {"__name__": f"docs_{name}"})


class HeadFirst(Outside):
    """Registers its classifier before its blocks: registration order is not the forward's."""

    def __init__(self) -> None:
        super().__init__()
        out = self.out
        del self.out
        layers = self.layers
        del self.layers
        self.out, self.layers = out, layers


def test_an_example_places_the_models_modules_by_where_the_forward_calls_them(float64):
    model, (x, y) = HeadFirst().double(), batch()
    assert [n for n, _ in model.named_children()].index("out") < [n for n, _ in model.named_children()].index("layers")
    with pytest.raises(ValueError, match=r"the final head of HeadFirst uses parameter\(s\) \['norm.bias'"):
        recede.MPC(
            recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), head=nn.Linear(6, 3)), 1
        ).backward(x, y)
    net = recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), example=x)
    assert net.head(net.T).out is model.out and not hasattr(net.blocks[0], "out")
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert_blocks_get_g_h(net, x, y, horizons=(1, net.T), rtol=1e-10)  # h = T last: its .grad stays
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-12, atol=1e-14, msg=n)


def test_compiling_a_split_model_compiles_its_blocks(float64):
    torch._dynamo.reset()
    model, (x, y) = Outside().double(), batch()
    twin = Outside().double()
    twin.load_state_dict(model.state_dict())
    heads = [nn.Linear(6, 3) for _ in range(3)]
    net = recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), head=[*heads, None])
    eager = recede.wrap(
        twin, blocks="layers", loss_fn=nn.CrossEntropyLoss(), head=[*(nn.Linear(6, 3) for _ in range(3)), None]
    )
    for mine, theirs in zip(heads, eager.heads):
        theirs.load_state_dict(mine.state_dict())
    net.compile(backend="aot_eager")
    assert all(recede.core.blocks.is_compiled(model.layers[t]) for t in range(4))
    for h in (2, 4):
        model.zero_grad(set_to_none=True)
        twin.zero_grad(set_to_none=True)
        recede.MPC(net, h).backward(x, y)
        recede.MPC(eager, h).backward(x, y)
        for (n, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=f"h={h} {n}")
    torch._dynamo.reset()


def test_a_deep_copy_is_a_split_of_the_copied_model(float64):
    import copy

    model, (x, y) = Outside().double(), batch()
    net = recede.wrap(model, blocks="layers", loss_fn=nn.CrossEntropyLoss(), head=nn.Linear(6, 3))
    twin = copy.deepcopy(net)
    assert twin.blocks[1].block is not model.layers[1]
    torch.testing.assert_close(twin(x), net(x), rtol=0, atol=0)
    with torch.no_grad():
        twin.blocks[0].block.linear.weight.add_(1.0)
    assert not torch.equal(twin(x), net(x))
    recede.MPC(twin, 2).backward(x, y)
    assert model.layers[0].linear.weight.grad is None
