"""A network as T blocks with a loss that accepts every block's output.

Paper A eq. 1 writes a network as ``x_{t+1} = f_t(x_t, u_t)``, t = 0..T-1, and assumes the loss
is *compatible* with every state: ``L(x_t)`` is defined for t = 1..T (Paper A §3, SPEC §1).
:class:`BlockNet` is that object: the T blocks ``f_t``, a head per depth that maps ``x_k`` to a
prediction, and ``loss_fn(prediction, target)``.  ``L(x_k) = loss_fn(head_k(x_k), y)``.

A state ``x_k`` is a tensor or a pytree of them (a tuple, a dict, a Hugging Face output):
blocks may pass hidden states together with masks or position ids.  Heads are either one module
per depth (``heads[k-1]`` reads ``x_k``, the output of block k-1, so ``heads[-1]`` is the final
head) or one module shared by all depths (Paper B, App. A).  The modules are held, not copied:
wrapping a model and stepping an optimizer on the wrapper trains the user's own modules.

**Shared parameters** (SPEC §1).  One parameter may be used by several blocks, or by a block
and a head (a tied embedding and LM head).  Each *use* is a separate term: the use in block t
gets g_h(u_t), the use in the head at depth k gets ∇L(x_k) whenever depth k is trained, and the
parameter's gradient is their sum; at h = T that is autograd's gradient.
:meth:`BlockNet.trainable_parameters` lists each use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch._functorch.config as functorch_config
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

LossFn = Callable[[Any, Any], torch.Tensor]
log = logging.getLogger("recede")

# errors of a block or head applied to an input it does not fit (shape, dtype, device, type)
_MISFIT = (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError)


def describe(tree: Any) -> str:
    """A short description of a tensor or pytree for error messages: shapes, dtypes, devices."""
    if isinstance(tree, torch.Tensor):
        return f"tensor of shape {tuple(tree.shape)}, {str(tree.dtype).removeprefix('torch.')} on {tree.device}"
    leaves = tree_leaves(tree)
    if len(leaves) == 1 and leaves[0] is tree:
        return f"{type(tree).__name__} {tree!r:.60}"
    parts = [describe(leaf) if isinstance(leaf, torch.Tensor) else type(leaf).__name__ for leaf in leaves[:4]]
    more = f", … ({len(leaves)} leaves)" if len(leaves) > 4 else ""
    return f"{type(tree).__name__} of [{'; '.join(parts)}{more}]"


def compiler_failed(module: nn.Module, what: str, z: Any, err: BaseException) -> None:
    """Raise a ``RuntimeError`` naming torch.compile if ``err`` came from compiling a compiled
    ``module`` (a Dynamo exception, or raised inside Dynamo or Inductor), so that it is not
    reported as the input's fault; otherwise return."""
    if not is_compiled(module):
        return
    dynamo = getattr(getattr(torch, "_dynamo", None), "exc", None)
    compiler = dynamo is not None and isinstance(err, dynamo.TorchDynamoException)
    tb = err.__traceback__
    while tb is not None and not compiler:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        compiler = "/torch/_inductor/" in name or ("/torch/_dynamo/" in name and not name.endswith("eval_frame.py"))
        tb = tb.tb_next
    if compiler:
        inner = getattr(err, "inner_exception", None) or err
        first = (str(inner).strip().splitlines() or [""])[0]
        raise RuntimeError(
            f"torch.compile failed on {what} ({type(module).__name__}) given a {describe(z)}: "
            f"{type(inner).__name__}: {first}; this is the compiler's error: try another "
            "backend or mode, or run without compiling"
        ) from err


def graph_nodes(out: Any, z: Any) -> Iterator[Any]:
    """Every autograd node of the graph from ``z`` to ``out`` (tensors or pytrees), each once:
    the walk starts at ``out``'s ``grad_fn`` and stops at ``z``'s, so the graph below ``z`` is
    not visited.  Parameters show as ``AccumulateGrad`` nodes (their ``.variable``)."""
    stop = {t.grad_fn for t in tree_leaves(z) if isinstance(t, torch.Tensor) and t.grad_fn is not None}
    todo = [t.grad_fn for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen: set = set()
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        yield node
        todo.extend(f for f, _ in node.next_functions if f is not None)


def reentrant_checkpoint(out: Any, z: Any) -> bool:
    """Whether the graph from ``z`` to ``out`` holds a ``torch.utils.checkpoint(use_reentrant=True)``
    (whose backward ``torch.autograd.grad`` refuses, and which gives no gradient to its weights
    when its input does not require one)."""
    return any(type(node).__name__ == "CheckpointFunctionBackward" for node in graph_nodes(out, z))


def samples_in(batch: Any) -> int:
    """The number of samples in a batch: the leading size of its first tensor (0 if none)."""
    first = next((t for t in tree_leaves(batch) if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    return 0 if first is None else int(first.shape[0])


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Every tensor of a batch (a tensor or a pytree) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batch)


def even_groups(n: int, groups: int) -> list[range]:
    """``n`` consecutive indices in ``groups`` groups as equal as ``torch.tensor_split`` makes
    them (the first ``n % groups`` groups one longer); a group may be empty when n < groups."""
    if groups < 1:
        raise ValueError(f"cannot split {n} items into {groups} groups")
    size, extra = divmod(n, groups)
    bounds = [r * size + min(r, extra) for r in range(groups + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class Uses:
    """The trainable parameters of one step, per use (SPEC §1).

    ``blocks[t]``: the trainable parameters block t uses, each once; ``heads[k-1]``: those the
    head at depth k uses (a parameter tied to a block appears in both).  ``shared``: some
    parameter is used by more than one block or by a block and the final head, so a single
    backward pass gives its total, not each use's share.
    """

    blocks: list[list[nn.Parameter]]
    heads: list[list[nn.Parameter]]
    shared: bool


def is_compiled(module: nn.Module) -> bool:
    """``module``, or a module inside it, was compiled in place (``module.compile()``) or is
    ``torch.compile(m)``: a block of ``recede.wrap`` holds the model's own modules, which the
    user may have compiled before wrapping."""
    # read __dict__ and _modules directly: a missing attribute through nn.Module.__getattr__ raises,
    # and this runs over every module of the net on every step (keep_compiled_graphs)
    return any(m.__dict__.get("_compiled_call_impl") is not None or "_orig_mod" in m._modules for m in module.modules())


def keep_compiled_graphs(modules: Iterable[nn.Module]) -> None:
    """Let compiled ``modules`` be back-propagated through more than once (``retain_graph``).

    Horizons 1 < h < T carry several cotangents through one block graph.  AOTAutograd's
    *donated buffers* let a compiled backward overwrite the tensors it saved, so a graph that
    was compiled with them and is used twice gives wrong gradients, and PyTorch's own check
    cannot tell such a graph from a safe one.  So the first time a compiled module meets
    recede while they are on, they are turned off for the rest of the process
    (``torch._functorch.config.donated_buffer = False``) and Dynamo's caches are reset once, so
    that everything compiled before is compiled again without them.
    """
    if not functorch_config.donated_buffer or not any(is_compiled(m) for m in modules):
        return
    functorch_config.donated_buffer = False
    torch._dynamo.reset()
    log.warning(
        "recede turned off AOTAutograd's donated buffers for this process "
        "(torch._functorch.config.donated_buffer = False) and reset torch.compile's caches "
        "once: receding horizons back-propagate through a compiled block more than once"
    )


class BlockNet(nn.Module):
    """T blocks ``f_0..f_{T-1}``, heads for depths 1..T, and a loss.

    Args:
        blocks: the T block modules, applied in order.
        heads: a sequence of T modules (``heads[k-1]`` reads the output of block k-1), or one
            module shared by every depth.
        loss_fn: ``loss_fn(prediction, target) -> scalar tensor``.
    """

    def __init__(self, blocks: Sequence[nn.Module], heads: Sequence[nn.Module] | nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if len(self.blocks) == 0:
            raise ValueError("BlockNet needs at least one block; got an empty sequence")
        self.shared_head = isinstance(heads, nn.Module) and not isinstance(heads, nn.ModuleList)
        if isinstance(heads, nn.Module) and not isinstance(heads, nn.ModuleList):
            self.heads = nn.ModuleList([heads])
        else:
            self.heads = nn.ModuleList(heads)
            if len(self.heads) != len(self.blocks):
                raise ValueError(
                    f"BlockNet got {len(self.blocks)} blocks but {len(self.heads)} heads; "
                    "give one head per block output or a single shared head module"
                )
        self.loss_fn = loss_fn

    @property
    def T(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    def head(self, k: int) -> nn.Module:
        """The head that reads ``x_k``, the output of block k-1 (k = 1..T)."""
        if not 1 <= k <= self.T:
            raise IndexError(f"depth k must be in [1, {self.T}], got {k}")
        return self.heads[0] if self.shared_head else self.heads[k - 1]

    def block_parameters(self, t: int) -> list[nn.Parameter]:
        """The trainable parameters ``u_t`` block t uses (those that require grad), each once."""
        return [p for p in self.blocks[t].parameters() if p.requires_grad]

    def head_parameters(self, k: int) -> list[nn.Parameter]:
        """The trainable parameters the head at depth k uses, tied ones included."""
        return [p for p in self.head(k).parameters() if p.requires_grad]

    def trainable_parameters(self) -> Uses:
        """Every use of a trainable parameter in this step, gathered in one pass (SPEC §1)."""
        blocks = [[p for p in b.parameters() if p.requires_grad] for b in self.blocks]
        per_head = [[p for p in h.parameters() if p.requires_grad] for h in self.heads]
        heads = per_head * self.T if self.shared_head else per_head
        uses = [p for params in blocks for p in params] + heads[-1]
        return Uses(blocks, heads, len({id(p) for p in uses}) < len(uses))

    def run_block(self, t: int, z: Any) -> Any:
        """``f_t(z)``; an input the block does not fit raises ``ValueError`` naming block and input
        (a compiled block's compiler error is named as one, :func:`compiler_failed`)."""
        try:
            out = self.blocks[t](z)
        except torch.OutOfMemoryError:
            raise
        except _MISFIT as err:
            compiler_failed(self.blocks[t], f"block {t}", z, err)
            if "leaf Variable that requires grad is being used in an in-place operation" in str(err):
                raise ValueError(
                    f"block {t} ({type(self.blocks[t]).__name__}) changes its input in place "
                    "(e.g. nn.ReLU(inplace=True) as its first module); each block reads its "
                    "input as a separate leaf tensor, which must not be modified: make that "
                    "operation out-of-place, or make it part of the block before"
                ) from err
            raise ValueError(
                f"block {t} ({type(self.blocks[t]).__name__}) failed on its input, a {describe(z)}: {err}"
            ) from err
        key = (t, self.blocks[t].training)
        checked = self.__dict__.setdefault("_checked", set())  # (block, training) already looked at
        if torch.is_grad_enabled() and key not in checked:
            if reentrant_checkpoint(out, z):
                raise ValueError(
                    f"block {t} ({type(self.blocks[t]).__name__}) uses torch.utils.checkpoint with "
                    "use_reentrant=True, which cannot give the input-only gradients receding "
                    "horizons take; use use_reentrant=False (Hugging Face: model."
                    "gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': "
                    "False}))"
                )
            checked.add(key)
        return out

    def depth_loss(self, x_k: Any, y: Any, k: int) -> torch.Tensor:
        """``L(x_k) = loss_fn(head_k(x_k), y)``; a head or loss that does not fit is named."""
        try:
            prediction = self.head(k)(x_k)
        except torch.OutOfMemoryError:
            raise
        except _MISFIT as err:
            compiler_failed(self.head(k), f"the head at depth {k}", x_k, err)
            raise ValueError(
                f"the head at depth {k} does not accept the output of block {k - 1} (a {describe(x_k)}): {err}"
            ) from err
        try:
            loss = self.loss_fn(prediction, y)
        except torch.OutOfMemoryError:
            raise
        except _MISFIT as err:
            raise ValueError(
                f"loss_fn does not accept the prediction of the head at depth {k} "
                f"(a {describe(prediction)}) with targets (a {describe(y)}): {err}"
            ) from err
        if not isinstance(loss, torch.Tensor):
            raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} at depth {k}")
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)} at depth {k}")
        return loss

    def forward(self, x: Any) -> Any:
        """The final prediction ``head_T(x_T)``."""
        for block in self.blocks:
            x = block(x)
        return self.head(self.T)(x)

    def loss(self, x: Any, y: Any) -> torch.Tensor:
        """The final loss ``L(x_T)`` through one ordinary forward pass."""
        return self.loss_fn(self(x), y)

    def check(self, x: Any, y: Any) -> None:
        """Check that every block, every head and the loss accept ``(x, y)``, without side effects.

        One no-grad forward in eval mode; BatchNorm buffers, the RNG state and the train/eval
        mode are as before the call.  Raises ``ValueError`` naming the first block or depth
        that does not fit.
        """
        modes = [(m, m.training) for m in self.modules()]
        buffers = [(b, b.clone()) for b in self.buffers()]
        devices = sorted(
            {t.device.index for t in tree_leaves(x) if isinstance(t, torch.Tensor) and t.device.type == "cuda"} - {None}
        )
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                self.eval()
                for t in range(self.T):
                    x = self.run_block(t, x)
                    self.depth_loss(x, y, t + 1)
        finally:
            for module, training in modes:
                module.training = training
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Compile every block and head in place (``nn.Module.compile`` with these arguments).

        The engine calls each block and head on its own, so compiling the BlockNet's own
        ``forward`` (``torch.compile(net)``) would leave the training step eager.  Turns off
        AOTAutograd's donated buffers for the process (:func:`keep_compiled_graphs`).

        ``dynamic`` defaults to ``False``: blocks of one class but different shapes would
        otherwise make Dynamo mark their sizes dynamic, which some backends cannot compile
        (inductor on timm's ConvNeXt).  Blocks of one class share a code object, so Dynamo counts every block
        of another shape
        (and every train/eval switch) as a recompile of it; past ``recompile_limit`` (8 by
        default) it would run the rest eagerly without a word.  The limit is raised for the
        process to twice the number of modules compiled, if lower.
        """
        modules = list({id(m): m for m in [*self.blocks, *self.heads]}.values())
        kwargs.setdefault("dynamic", False)
        for module in modules:
            module.compile(*args, **kwargs)
        from torch._dynamo import config as dynamo  # imported by compile() above

        dynamo.recompile_limit = max(dynamo.recompile_limit, 2 * len(modules))
        keep_compiled_graphs(self.blocks)

    def regroup(self, groups: int) -> BlockNet:
        """The same modules as ``groups`` groups of consecutive blocks (LoCo's blocks).

        Blocks are split as evenly as ``torch.tensor_split`` splits T items (:func:`even_groups`);
        each group's head is the head of its last block.  Parameters are shared with ``self``,
        not copied.
        """
        if not 1 <= groups <= self.T:
            raise ValueError(f"groups must be in [1, {self.T}], got {groups}")
        merged, heads = [], []
        for group in even_groups(self.T, groups):
            merged.append(nn.Sequential(*self.blocks[group.start : group.stop]))
            heads.append(self.head(group.stop))
        return BlockNet(merged, heads[0] if self.shared_head else heads, self.loss_fn)
