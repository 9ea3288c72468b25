"""The defects found by trying recede.wrap as a new user would (issue 25), one test each.

1. a replaced torchvision classifier (``nn.Sequential``, ``nn.Identity`` with ``loss_fn=``, a
   user's module); 2. compiler errors named as compiler errors, blocks compiled with static
   shapes by default; 3. the model's own sequence-classification loss (test_wrap_structure.py);
   4. no deprecated transformers arguments (test_wrap_structure.py); 5. the head-list message;
   6. docs (docs/language-models.md); 7. a reentrant checkpoint inside a block, refused in one line.
"""

from __future__ import annotations

import pytest
import torch
from conftest import check_wrap
from torch import nn
from torch.utils.checkpoint import checkpoint

import recede

tv = pytest.importorskip("torchvision.models")


class UsersHead(nn.Module):
    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(width, 5)
        self.out = nn.Linear(5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def _resnet() -> nn.Module:
    return tv.ResNet(tv.resnet.BasicBlock, [1, 1, 1, 1], num_classes=3)


def _batch(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("fc", ["sequential", "users"])
def test_a_replaced_classifier_is_the_final_head(fc):
    torch.manual_seed(0)
    model = _resnet()
    model.fc = nn.Sequential(nn.Dropout(0.0), nn.Linear(512, 3)) if fc == "sequential" else UsersHead(512, 3)
    net = check_wrap(model.double(), *_batch(), horizons="ends")
    assert net.head(net.T).fc is model.fc and net.head(1).fc.out_features == 3


def test_an_identity_classifier_trains_features_with_the_users_loss(float64):
    torch.manual_seed(0)
    model = _resnet()
    model.fc = nn.Identity()
    x, _ = _batch()
    target = torch.randn(2, 512)
    net = recede.wrap(model, loss_fn=nn.MSELoss())
    assert net.head(1).fc.out_features == 512  # earlier heads give the features' width
    model.zero_grad()
    nn.functional.mse_loss(model(x), target).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    recede.MPC(net, net.T).backward(x, target)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-10, atol=1e-12, msg=n)
    recede.MPC(net, 1).backward(x, target)


def test_a_classifier_of_unknown_width_asks_for_heads():
    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(512, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    model = _resnet()
    model.fc = Opaque()
    with pytest.raises(ValueError, match=r"cannot tell how many outputs the classifier \(Opaque\) gives"):
        recede.wrap(model)
    assert recede.wrap(model, head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(3))).T == 4


def test_head_lists_end_with_the_models_own_or_none():
    model = _resnet()
    given = [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3)) for c in (64, 128, 256)]
    net = recede.wrap(model, head=[*given, None])
    assert net.head(net.T).fc is model.fc and net.head(1) is given[0]
    assert recede.wrap(model, head=given).head(net.T).fc is model.fc  # T - 1 heads: the same
    with pytest.raises(ValueError, match=r"an nn.Module for each of the 3 earlier depths .* got 2 item\(s\)"):
        recede.wrap(model, head=given[:2])
    with pytest.raises(ValueError, match=r"got 4 item\(s\), item 1 a NoneType"):
        recede.wrap(model, head=[given[0], None, given[2], None])


class Twice(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.tanh(x))


def _shapes_net() -> recede.BlockNet:
    """Blocks of one class with different shapes: Dynamo would mark their sizes dynamic."""
    return recede.BlockNet(
        [Twice(4), nn.Linear(4, 6), Twice(6)],
        [nn.Linear(4, 2), nn.Linear(6, 2), nn.Linear(6, 2)],
        nn.CrossEntropyLoss(),
    )


def test_compiled_blocks_have_static_shapes_by_default():
    torch._dynamo.reset()
    symbolic = []

    def recording(gm, example_inputs):
        inputs = [*example_inputs, *(n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder")]
        symbolic.append(
            any(isinstance(s, torch.SymInt) for t in inputs if isinstance(t, torch.Tensor) for s in t.shape)
        )
        return gm.forward

    net = _shapes_net()
    net.compile(backend=recording)
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 1])
    recede.MPC(net, 2).backward(x, y)
    recede.MPC(net, 2).backward(torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1]))  # another batch size
    assert symbolic and not any(symbolic)
    torch._dynamo.reset()
    symbolic.clear()
    net = _shapes_net()
    net.compile(backend=recording, dynamic=None)  # what Dynamo does unasked: sizes become symbolic
    recede.MPC(net, 2).backward(x, y)
    recede.MPC(net, 2).backward(torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1]))
    assert any(symbolic)
    torch._dynamo.reset()


def test_a_compiler_error_is_named_as_one():
    torch._dynamo.reset()

    def broken(gm, example_inputs):
        raise TypeError("cannot determine truth value of Relational: 40*s69*s87 < 40")

    net = _shapes_net()
    net.compile(backend=broken)
    with pytest.raises(
        RuntimeError,
        match=r"torch.compile failed on block 0 \(Twice\) given a tensor of shape "
        r"\(3, 4\).*TypeError: cannot determine truth value.*compiler's error",
    ) as info:
        recede.MPC(net, 1).backward(torch.randn(3, 4), torch.tensor([0, 1, 1]))
    assert "\n" not in str(info.value)
    eager = _shapes_net()  # an input that does not fit an eager block is still the input's fault
    with pytest.raises(ValueError, match=r"block 0 \(Twice\) failed on its input"):
        recede.MPC(eager, 1).backward(torch.randn(3, 5), torch.tensor([0, 1, 1]))
    torch._dynamo.reset()


class Checkpointed(nn.Module):
    def __init__(self, width: int, reentrant: bool) -> None:
        super().__init__()
        self.linear, self.reentrant = nn.Linear(width, width), reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + checkpoint(self.linear, x, use_reentrant=self.reentrant)


@pytest.mark.parametrize("h", [1, 2, 3])
def test_a_reentrant_checkpoint_is_refused_in_one_line_and_the_other_kind_works(float64, h):
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 1, 0])
    net = recede.BlockNet(
        [nn.Linear(4, 4), Checkpointed(4, True), Checkpointed(4, True)], nn.Linear(4, 2), nn.CrossEntropyLoss()
    )
    with pytest.raises(
        ValueError,
        match=r"block 1 \(Checkpointed\) uses torch.utils.checkpoint with "
        r"use_reentrant=True.*use_reentrant=False",
    ) as info:
        recede.MPC(net, h).backward(x, y)
    assert "\n" not in str(info.value)
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="use_reentrant=True"):  # every time, not only the first
        recede.MPC(net, h).backward(x, y)
    for block in net.blocks[1:]:
        block.reentrant = False
    recede.MPC(net, h).backward(x, y)
    assert all(p.grad is not None for p in net.parameters())


def test_a_block_that_changes_its_input_in_place_is_named() -> None:
    """A block whose first operation is in place (a bare nn.ReLU(inplace=True), as named
    through blocks=[...]) gets one line saying so, not torch's leaf-variable error."""
    net = recede.BlockNet(
        [nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)], nn.Identity(), nn.functional.mse_loss
    )
    with pytest.raises(ValueError, match=r"block 1 \(ReLU\) changes its input in place"):
        recede.MPC(net, 2).backward(torch.randn(3, 4), torch.randn(3, 2))
