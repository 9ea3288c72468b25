"""Shared fixtures: small block networks of several architectures, and the slow reference g_h."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from recede import BlockNet
from recede.models import build, mlp

# Tests run two per core under pytest-xdist and start subprocesses of their own: one thread each
# avoids OpenMP oversubscription, which slows these tiny models tenfold on two cores.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


SRC = str(Path(__file__).resolve().parents[1] / "src")
"""The source tree: PYTHONPATH for the command line run in a subprocess."""


TINY_DEMO = [
    *("--model-opt", "blocks_per_stage=2", "--data-opt", "test_fraction=0.9", "--epochs", "1", "--no-progress"),
    *("--bpm-period", "4", "--bpm-samples", "16", "--seeds", "2", "--timing-steps", "1", "--cosine-batches", "1"),
]
"""Flags of a seconds-long ``recede demo``: 2 blocks per stage, one epoch, two seeds, one timed step."""


def tiny_run(depth: int = 3, n: int = 60, n_test: int = 20, batch_size: int = 20, epochs: int = 1) -> list[str]:
    """Flags of a seconds-long command-line run on the default workload (resmlp on trig)."""
    return [
        *("--model-opt", f"depth={depth}", "--data-opt", f"n={n}", "--data-opt", f"n_test={n_test}"),
        *("--batch-size", str(batch_size), "--epochs", str(epochs), "--no-progress"),
    ]


def tanh_residual(width: int) -> nn.Module:
    """``x + tanh(linear(x))``, the tests' residual block."""
    return mlp.Residual(width, activation=nn.Tanh)


def resmlp_independent(T: int = 6, width: int = 5, classes: int = 3) -> BlockNet:
    """Residual MLP, one linear head per depth, cross-entropy."""
    return BlockNet(
        [tanh_residual(width) for _ in range(T)], [nn.Linear(width, classes) for _ in range(T)], nn.CrossEntropyLoss()
    )


def resmlp_shared(T: int = 6, width: int = 5, classes: int = 3) -> BlockNet:
    """Residual MLP, one head shared by every depth."""
    return BlockNet([tanh_residual(width) for _ in range(T)], nn.Linear(width, classes), nn.CrossEntropyLoss())


def conv_resnet() -> BlockNet:
    """ResNet-62's structure at tiny size: BatchNorm, strided transitions, pool → linear heads."""
    return build("resnet62", widths=(3, 4), blocks_per_stage=2, num_classes=3, in_channels=2)


def linear_resnet() -> BlockNet:
    """M1: deep linear residual net, identity heads, MSE."""
    return build("linear-resnet", width=4, depth=5)


class ResidualWith(nn.Module):
    """``x + tanh(linear(x))`` around a linear layer it is given (and may share)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.linear(x))


def shared_blocks(width: int = 5, classes: int = 3) -> BlockNet:
    """One Linear used by four blocks (two of them the same module object), independent heads."""
    shared = nn.Linear(width, width)
    first = ResidualWith(shared)
    blocks = [first, ResidualWith(shared), tanh_residual(width), ResidualWith(shared), first]
    return BlockNet(blocks, [nn.Linear(width, classes) for _ in blocks], nn.CrossEntropyLoss())


class TiedHead(nn.Module):
    """GPT-style LM head: layer norm, then logits against the token embedding's own weight."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embedding.embedding_dim)
        self.embedding = embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) @ self.embedding.weight.T


def tied_embedding(vocab: int = 7, width: int = 5, T: int = 5) -> BlockNet:
    """Token ids → embedding (block 0) → residual blocks; one head shared by every depth whose
    output layer is the embedding (tied, as GPT-2's wte and lm_head)."""
    embedding = nn.Embedding(vocab, width)
    return BlockNet(
        [embedding, *(tanh_residual(width) for _ in range(T - 1))], TiedHead(embedding), nn.CrossEntropyLoss()
    )


class Tied(nn.Module):
    """A head whose weight is another module's: ``x W^T`` restricted to the first ``out`` rows."""

    def __init__(self, linear: nn.Linear, out: int) -> None:
        super().__init__()
        self.linear, self.out = linear, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.linear.weight[: self.out].T


def head_tied_to_block0(width: int = 5, classes: int = 3, T: int = 4) -> BlockNet:
    """Independent heads, of which those at depths 1 and 3 use block 0's weight."""
    first = nn.Linear(width, width)
    heads = [Tied(first, classes), nn.Linear(width, classes), Tied(first, classes), nn.Linear(width, classes)]
    return BlockNet([first, *(tanh_residual(width) for _ in range(T - 1))], heads[:T], nn.CrossEntropyLoss())


class TupleBlock(nn.Module):
    """A block whose state is ``(hidden, positions, gate)``: an integer leaf and a constant leaf
    pass through, the hidden state and the gate carry gradients."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, state: tuple) -> tuple:
        hidden, positions, gate = state
        step = torch.tanh(self.linear(hidden)) * (gate + self.gate) + 0.01 * positions.unsqueeze(-1)
        return hidden + step, positions, gate * self.gate


class DictBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, state: dict) -> dict:
        return {
            "hidden": state["hidden"] + torch.tanh(self.linear(state["hidden"])) * state["mask"],
            "mask": state["mask"],
        }


class ReadHidden(nn.Module):
    def __init__(self, width: int, classes: int, key: object = 0) -> None:
        super().__init__()
        self.linear, self.key = nn.Linear(width, classes), key

    def forward(self, state) -> torch.Tensor:
        return self.linear(state[self.key])


def tuple_states(T: int = 4, width: int = 5, classes: int = 3) -> BlockNet:
    return BlockNet(
        [TupleBlock(width) for _ in range(T)], [ReadHidden(width, classes) for _ in range(T)], nn.CrossEntropyLoss()
    )


def dict_states(T: int = 4, width: int = 5, classes: int = 3) -> BlockNet:
    return BlockNet([DictBlock(width) for _ in range(T)], ReadHidden(width, classes, "hidden"), nn.CrossEntropyLoss())


def _tuple_batch():
    gate = torch.rand(8, 1)  # a float leaf without gradient at the input
    return (torch.randn(8, 5), torch.arange(8), gate), torch.randint(0, 3, (8,))


ARCHITECTURES = {
    "shared-blocks": (shared_blocks, lambda: (torch.randn(8, 5), torch.randint(0, 3, (8,)))),
    "tied-embedding": (tied_embedding, lambda: (torch.randint(0, 7, (8,)), torch.randint(0, 7, (8,)))),
    "head-tied-to-block0": (head_tied_to_block0, lambda: (torch.randn(8, 5), torch.randint(0, 3, (8,)))),
    "tuple-states": (tuple_states, _tuple_batch),
    "dict-states": (
        dict_states,
        lambda: ({"hidden": torch.randn(8, 5), "mask": torch.rand(8, 1)}, torch.randint(0, 3, (8,))),
    ),
    "resmlp-independent": (resmlp_independent, lambda: (torch.randn(8, 5), torch.randint(0, 3, (8,)))),
    "resmlp-shared": (resmlp_shared, lambda: (torch.randn(8, 5), torch.randint(0, 3, (8,)))),
    "conv-resnet": (conv_resnet, lambda: (torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4,)))),
    "linear-resnet": (linear_resnet, lambda: (torch.randn(8, 4), torch.randn(8, 4))),
}


@pytest.fixture
def float64():
    """Gradient comparisons run in float64; the default dtype is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def untie(net: BlockNet) -> tuple[BlockNet, dict]:
    """A copy of ``net`` in which every block and head holds its own copy of each parameter
    (SPEC §1: "what each use would get if it were a separate parameter"), and the map from
    each copy back to the original parameter."""
    blocks = [copy.deepcopy(b) for b in net.blocks]
    heads = [copy.deepcopy(h) for h in net.heads]
    untied = BlockNet(blocks, heads[0] if net.shared_head else heads, net.loss_fn)
    origin = {}
    for new, old in zip([*blocks, *heads], [*net.blocks, *net.heads]):
        origin.update(zip(new.parameters(), old.parameters()))
    return untied, origin


def _add(grads: dict, p, g) -> None:
    grads[p] = grads[p] + g if p in grads else g


def slow_horizon_gradient(net: BlockNet, x, y, h: int, heads: bool = False, copy_uses: bool = True) -> dict:
    """g_h by definition, the slow way: for each block t of the untied net, a fresh full forward to
    x_{min(t+h,T)} and autograd for its own copy of its parameters; each original parameter gets
    the sum over its uses.  With ``heads``, every head also gets ∇L(x_k) at each depth k some
    block learns from (k ≥ h), so the result is the whole step's gradient.  ``copy_uses=False``
    runs ``net`` itself, for a split model (``recede.wrap(blocks=...)``: its units share the
    model's forward, so they cannot be copied one by one; each parameter there sits in one unit)."""
    untied, origin = untie(net) if copy_uses else (net, {p: p for p in net.parameters()})
    grads: dict = {}
    for t in range(untied.T):
        params = untied.block_parameters(t)
        if not params:
            continue
        k = min(t + h, untied.T)
        z = x
        for j in range(k):
            z = untied.blocks[j](z)
        for p, g in zip(params, torch.autograd.grad(untied.depth_loss(z, y, k), params, allow_unused=True)):
            if g is not None:
                _add(grads, origin[p], g)
    if heads:
        z = x
        for k in range(1, untied.T + 1):
            z = untied.blocks[k - 1](z)
            params = untied.head_parameters(k)
            if k >= h and params:
                loss = untied.depth_loss(z, y, k)
                for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)):
                    if g is not None:
                        _add(grads, origin[p], g)
    return grads


def assert_blocks_get_g_h(net: BlockNet, x, y, horizons=None, rtol: float = 1e-9, copy_uses: bool = False) -> None:
    """For each h (default: every h), one MPC(net, h) step gives every block's parameters g_h,
    as :func:`slow_horizon_gradient` computes it (``copy_uses=False``: for split models)."""
    import recede

    for h in range(1, net.T + 1) if horizons is None else horizons:
        net.zero_grad(set_to_none=True)
        recede.MPC(net, h).backward(x, y)
        reference = slow_horizon_gradient(net, x, y, h, copy_uses=copy_uses)
        for t in range(net.T):
            for p in net.block_parameters(t):
                torch.testing.assert_close(p.grad, reference[p], rtol=rtol, atol=1e-12)


def check_wrap(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, horizons: str = "all", **options: object
) -> BlockNet:
    """``recede.wrap(model, **options)`` is the model itself, in pieces, with its own loss.

    Checks that the BlockNet holds every parameter of ``model`` (new ones are heads' only),
    that ``net(x)`` is ``model(x)`` bit for bit, that MPC runs for every h (``horizons="ends"``:
    h = 1 and T) and fills every block's gradient, and that at h = T the gradients equal plain
    autograd's of ``cross_entropy(model(x), y)``.  Returns the net.
    """
    import recede

    net = recede.wrap(model, **options)
    own = {id(p) for p in model.parameters()}
    assert own <= {id(p) for p in net.parameters()}
    block_ids = {id(p) for b in net.blocks for p in b.parameters()}
    assert not [p for p in net.parameters() if id(p) not in own and id(p) in block_ids]  # only heads are new
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
    for h in range(1, net.T + 1) if horizons == "all" else sorted({1, net.T}):
        net.zero_grad(set_to_none=True)
        recede.MPC(net, h).backward(x, y)
        for t in range(net.T):
            assert all(p.grad is not None for p in net.block_parameters(t)), (h, t)
    wrapped = {n: p.grad for n, p in model.named_parameters()}  # h = T, the last horizon run
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert (wrapped[name] is None) == (p.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(wrapped[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)
    return net
