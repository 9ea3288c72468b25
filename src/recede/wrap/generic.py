"""The generic path: ``recede.wrap(model, blocks="model.layers")`` splits the model's own forward.

The user names the blocks (a container, whose children are the blocks, or a list of module
names).  Nothing of the model's forward is rewritten: what lies before, between and after the
blocks is the model's own code, run as the model runs it.  :class:`Split` runs ``model(x)`` in
a worker thread and pauses it after each named block (a forward hook):

* unit 0 starts the forward and returns block 0's output ``x_1`` (the stem, embedding, mask and
  rotary computations ride with it);
* unit t hands its input ``z_t`` back to the paused forward as block t-1's output, lets it run
  on through block t (and whatever the model does between the two: a downsampling layer, a
  rescaling), and returns block t's output;
* the final head hands ``z_T`` back and returns the forward's result (its ``logits``, or the
  tensor itself): the model's own path to its prediction, so at h = T the gradients are plain
  autograd's of ``loss_fn(model(x), y)``.

So Paper A eq. 1's chain is the model's own computation, cut at the named blocks.  Grad mode and
autocast, which are per thread, follow the caller at every hand-over.

Each unit holds (for ``net.parameters()``, ``.to()``, ``.train()``) its block and the model's
block-free subtrees registered between the previous block and this one, or, given an
``example`` batch, those its part of the forward calls (one shape-only forward on fake
tensors tells); the final head holds the rest; ``.train()`` and ``.eval()`` also switch the
model and the containers of its blocks.  The first time a unit runs with gradients, recede
checks in its autograd graph that every parameter it used is one it holds; a parameter used
elsewhere, which is also how a gradient-carrying value passed around a block is caught, and a
block called twice, out of order or not at all are refused in one line: the split would not
be the model (build the BlockNet by hand then, docs/models.md).  Its blocks run only in order
within one forward, so nothing can call one alone (``recede.measure.cost``'s calibration, pipeline
stages).
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from recede.core.blocks import graph_nodes

if TYPE_CHECKING:
    from recede.wrap import Layout

RECIPE = "build recede.BlockNet(blocks, heads, loss_fn) by hand (docs/models.md, 'Manual recipes')"
AUTOCAST_DEVICES = ("cpu", "cuda")


def resolve_blocks(model: nn.Module, blocks: str | Sequence[str]) -> tuple[list[str], list[nn.Module]]:
    """The named blocks: a container's children (``"model.layers"``) or modules by name, in order."""

    def get(name: str) -> nn.Module:
        try:
            return model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"recede.wrap(blocks=...): {type(model).__name__} has no submodule {name!r}") from None

    if isinstance(blocks, str):
        container = get(blocks)
        named = [(f"{blocks}.{n}" if blocks else n, m) for n, m in container.named_children()]
        if len(named) < 1:
            raise ValueError(
                f"recede.wrap(blocks={blocks!r}): {type(container).__name__} has no children to "
                "use as blocks; name the blocks as a list"
            )
    else:
        names = list(blocks)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"recede.wrap(blocks=...) needs a module name or a list of them, got {blocks!r}")
        named = [(n, get(n)) for n in names]
    modules = [m for _, m in named]
    if len({id(m) for m in modules}) < len(modules):
        raise ValueError("recede.wrap(blocks=...): a module is named twice; each block must be its own module")
    return [n for n, _ in named], modules


def _mode() -> tuple:
    """The caller thread's grad mode and autocast state, to be set in the worker."""
    autocast = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in AUTOCAST_DEVICES)
    return torch.is_grad_enabled(), autocast


def _set_mode(mode: tuple) -> None:
    grad, autocast = mode
    torch.set_grad_enabled(grad)
    for device, enabled, dtype in autocast:
        torch.set_autocast_enabled(device, enabled)
        torch.set_autocast_dtype(device, dtype)


class _Cancelled(BaseException):
    """Unwinds an abandoned forward in its worker thread."""


class _Run:
    """One paused ``model(x)`` in a worker thread."""

    def __init__(self, split: Split, x: Any) -> None:
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.next = 0  # the block whose output the forward hands over next
        self.finished = False
        self.thread = threading.Thread(
            target=self._work, args=(split, x, _mode()), daemon=True, name="recede-wrap-forward"
        )

    def _work(self, split: Split, x: Any, mode: tuple) -> None:
        split.workers[threading.get_ident()] = self
        try:
            _set_mode(mode)
            self.outbox.put(("done", split.call(split.model, x)))
        except _Cancelled:
            pass
        except BaseException as err:  # handed to the caller, raised there
            self.outbox.put(("error", err))
        finally:
            split.workers.pop(threading.get_ident(), None)

    def wait(self) -> tuple:
        kind, *rest = self.outbox.get()
        if kind == "error":
            self.finished = True
            raise rest[0]
        return (kind, *rest)

    def resume(self, value: Any) -> tuple:
        self.inbox.put((value, _mode()))
        return self.wait()

    def cancel(self) -> None:
        if not self.finished and self.thread.is_alive():
            self.inbox.put((_Cancelled, None))
        self.finished = True


class Split:
    """``model``'s forward cut after each of ``blocks`` (see the module docstring).

    Args:
        model: the user's model.
        names, blocks: the blocks, in the order the forward calls them.
        call: ``call(model, x)`` runs the model (default: ``model(x)``, ``model(**x)`` for a
            dict, ``model(*x)`` for a tuple or list).
        output: ``output(result)``, the prediction in what the model returns (default: the
            tensor itself, else its ``logits``, else its first element).
    """

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        blocks: list[nn.Module],
        call: Callable[[nn.Module, Any], Any] | None = None,
        output: Callable[[Any], Any] | None = None,
    ) -> None:
        self.model, self.names, self.blocks = model, names, blocks
        self.call = call or _call
        self.output = output or prediction
        self.index = {id(b): i for i, b in enumerate(blocks)}
        self.workers: dict[int, _Run] = {}
        self.ancestors: list[nn.Module] = [model]  # the model and the containers of its blocks
        self.widths: list[tuple[int, int] | None] = [None] * len(blocks)  # from a probe, if any
        self.run: _Run | None = None
        ref = weakref.ref(self)
        self.handles = [
            block.register_forward_hook(lambda module, args, out, ref=ref: _hook(ref, module, args, out))
            for block in blocks
        ]

    def __deepcopy__(self, memo: dict) -> Split:
        """A split of the copied model (``copy.deepcopy(net)``), hooked to its own blocks."""
        model = copy.deepcopy(self.model, memo)
        blocks = [copy.deepcopy(b, memo) for b in self.blocks]
        for block, handle in zip(blocks, self.handles):
            block._forward_hooks.pop(handle.id, None)  # the copied hook would serve this split
        new = Split(model, self.names, blocks, self.call, self.output)
        memo[id(self)] = new
        new.ancestors = [copy.deepcopy(a, memo) for a in self.ancestors]
        new.widths = list(self.widths)
        return new

    def start(self, x: Any) -> Any:
        """Unit 0: a fresh forward of ``x``, run up to block 0's output."""
        if self.run is not None:
            self.run.cancel()
        self.run = _Run(self, x)
        self.run.thread.start()
        return self._expect(self.run.wait(), 0)

    def resume(self, t: int, z: Any) -> Any:
        """Unit t ≥ 1 (``t = T``: the final head): ``z`` as block t-1's output, run on."""
        run = self.run
        if run is None or run.finished or run.next != t:
            where = "no forward in progress" if run is None or run.finished else f"block {run.next} runs next"
            what = "the final head" if t == len(self.blocks) else f"unit {t}"
            raise RuntimeError(
                f"recede.wrap: {what} of a split {type(self.model).__name__} was called out of "
                f"order ({where}); call the blocks in order, starting from block 0"
            )
        return self._expect(run.resume(z), t)

    def _expect(self, message: tuple, t: int) -> Any:
        run = self.run
        assert run is not None, "a split's unit answered with no forward running"  # start() made one
        T = len(self.blocks)
        if message[0] == "done":
            run.finished = True
            if t != T:
                raise ValueError(
                    f"recede.wrap(blocks=...): {type(self.model).__name__}'s forward returned "
                    f"without calling block {t} ({self.names[t]}); name the blocks its forward "
                    f"calls, or {RECIPE}"
                )
            return self.output(message[1])
        _, i, out = message
        if i != t:
            run.cancel()
            found = f"block {i} ({self.names[i]})"
            raise ValueError(
                f"recede.wrap(blocks=...): {type(self.model).__name__}'s forward called {found} "
                f"when block {t} ({self.names[t] if t < T else 'the end'}) was due; the blocks "
                f"must be called once each, in order; otherwise {RECIPE}"
            )
        run.next = t + 1
        return out

    def __del__(self) -> None:
        if self.run is not None:
            self.run.cancel()


@torch.compiler.disable  # thread hand-over: not for Dynamo to trace when the block is compiled
def _hook(ref: weakref.ref, module: nn.Module, args: tuple, out: Any) -> Any:
    """A block's forward hook: in a split's worker thread, hand its output over and wait for the
    next unit's input; anywhere else, do nothing."""
    split = ref()
    run = None if split is None else split.workers.get(threading.get_ident())
    if split is None or run is None:
        return None
    i = split.index[id(module)]
    if run.next != i:  # hand the caller the wrong block; it names it and cancels
        run.outbox.put(("block", i, out))
        raise _Cancelled
    run.outbox.put(("block", i, out))
    value, mode = run.inbox.get()
    if value is _Cancelled:
        raise _Cancelled
    _set_mode(mode)
    return value


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def prediction(result: Any) -> Any:
    """The prediction in a model's result: a tensor as is, else its ``logits``, else its first item."""
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    if logits is not None:
        return logits
    if isinstance(result, (tuple, list)) or hasattr(result, "to_tuple"):
        return result[0]
    return result


class _Part(nn.Module):
    """What one unit holds: its block (if any) and the model's own modules and parameters that
    ride with it (registered here as the same objects)."""

    split: Split  # in __dict__, not registered (see __init__)

    def __init__(self, split: Split, t: int, riders: list[tuple[str, nn.Module | nn.Parameter]]) -> None:
        super().__init__()
        self.__dict__["split"] = split  # unregistered: the BlockNet must not own the whole model
        self.t = t
        self.checked = False
        if t < len(split.blocks):
            self.block = split.blocks[t]
        for name, value in riders:
            key = (name or "model").replace(".", "_")
            if isinstance(value, nn.Parameter):
                self.register_parameter(key, value)
            else:
                self.add_module(key, value)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Compile the block in place (the model's own code around it runs as it is); the
        hand-over between threads is not something to compile."""
        from recede.core.blocks import keep_compiled_graphs

        block = getattr(self, "block", None)
        if block is not None:
            block.compile(*args, **kwargs)
            keep_compiled_graphs([block])

    def train(self, mode: bool = True) -> _Part:
        """Switch what this unit holds, and the model and the containers of its blocks (whose
        own code may read ``self.training``)."""
        super().train(mode)
        for module in self.split.ancestors:
            module.training = mode
        return self

    def _check(self, x: Any, out: Any) -> None:
        """Every parameter this unit's graph used must be one it holds (first run with grad)."""
        self.checked = True
        held = {id(p) for p in self.parameters()}
        names = {id(p): n for n, p in self.split.model.named_parameters()}
        inputs = {id(t) for t in tree_leaves(x) if isinstance(t, torch.Tensor)}
        used = [getattr(node, "variable", None) for node in graph_nodes(out, x)]  # parameters: AccumulateGrad
        stray = [
            names[id(v)] for v in used if v is not None and id(v) in names and id(v) not in held and id(v) not in inputs
        ]
        if stray:
            where = "the final head" if self.t == len(self.split.blocks) else f"unit {self.t}"
            raise ValueError(
                f"recede.wrap(blocks=...): {where} of {type(self.split.model).__name__} uses "
                f"parameter(s) {sorted(stray)[:3]} registered elsewhere in the model; the split "
                f"cannot tell which block they belong to; {RECIPE}"
            )


class Unit(_Part):
    """Block t of a split model, with what the model's forward does before it (since block t-1)."""

    def forward(self, x: Any) -> Any:
        out = self.split.start(x) if self.t == 0 else self.split.resume(self.t, x)
        if not self.checked and torch.is_grad_enabled():
            self._check(x, out)
        return out


class Tail(_Part):
    """The final head of a split model: the rest of the model's forward after its last block."""

    def forward(self, x: Any) -> Any:
        out = self.split.resume(self.t, x)
        if not self.checked and torch.is_grad_enabled():
            self._check(x, out)
        return out


def split_units(
    model: nn.Module,
    blocks: str | Sequence[str],
    call: Callable[[nn.Module, Any], Any] | None = None,
    output: Callable[[Any], Any] | None = None,
    example: Any = None,
) -> tuple[list[Unit], Tail, Split]:
    """The units and final head of ``model`` cut at ``blocks`` (see the module docstring).

    Each block-free subtree of the model rides with the unit it is registered in (between the
    previous block and the next); with ``example``, with the unit(s) whose part of the forward
    calls it, read from one shape-only forward (:func:`probe`; ``split.widths`` then holds
    each block's output width and channel axis)."""
    names, modules = resolve_blocks(model, blocks)
    split = Split(model, names, modules, call, output)
    inside = {id(m) for b in modules for m in b.modules()}
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    ancestors = {id(model): model}
    for block in modules:
        node = parents.get(id(block))
        while node is not None and id(node) not in ancestors:
            ancestors[id(node)] = node
            node = parents.get(id(node))
    split.ancestors = list(ancestors.values())
    riders: list[list[tuple[str, nn.Module | nn.Parameter]]] = [[] for _ in range(len(modules) + 1)]
    roots: list[tuple[str, nn.Module, int]] = []  # block-free subtrees and their registration segment
    segment, taken = 0, set[int]()
    for name, module in model.named_modules():
        if id(module) in split.index:
            segment = split.index[id(module)] + 1
        elif id(module) in ancestors:  # a container of blocks: its own parameters only (a class token)
            riders[min(segment, len(modules))] += [
                (f"{name}.{n}" if name else n, p) for n, p in module.named_parameters(recurse=False)
            ]
        elif id(module) not in inside and id(module) not in taken and id(parents.get(id(module))) in ancestors:
            roots.append((name, module, min(segment, len(modules))))
            taken.update(id(m) for m in module.modules())
    split.widths, used = (
        probe(split, example, [m for _, m, _ in roots])
        if example is not None
        else ([None] * len(modules), [set() for _ in roots])
    )
    for (name, module, registered), calls in zip(roots, used):
        for where in sorted(calls) or [registered]:
            riders[where].append((name, module))
    units = [Unit(split, t, riders[t]) for t in range(len(modules))]
    return units, Tail(split, len(modules), riders[-1]), split


def generic_layout(
    model: nn.Module,
    blocks: str | Sequence[str],
    call: Callable[[nn.Module, Any], Any] | None = None,
    output: Callable[[Any], Any] | None = None,
    example: Any = None,
) -> Layout:
    """``recede.wrap(model, blocks=..., example=x)``: the split units, the rest of the forward as
    the final head, and for earlier depths a :class:`~recede.wrap.heads.FeatureHead` (pool →
    linear) from the block's output width to the model's (its last layer's) number of outputs.

    The widths are read from one shape-only forward of ``example`` (a batch, or any tensor of
    its shape; run on fake tensors, so nothing is computed), else guessed from the layers: what
    the next block's first layer takes, else what the block's last layer gives."""
    from recede.wrap import Layout
    from recede.wrap.heads import FeatureHead
    from recede.wrap.vision import out_width

    units, tail, split = split_units(model, blocks, call, output, example)
    probed = split.widths
    classes = out_width(model)
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)

    def independent(i: int) -> nn.Module:
        width, axis = probed[i] or (in_width(units[i + 1]) or out_width(units[i].block), None)
        if width is None or classes is None:
            raise ValueError(
                f"recede.wrap(blocks=...): cannot tell the output width of block {i} "
                f"({type(units[i].block).__name__}) or of the model; pass head= or example="
            )
        head = FeatureHead(width, classes, axis)
        return head if reference is None else head.to(device=reference.device, dtype=reference.dtype)

    return Layout(units=list(units), final_head=tail, loss_fn=None, independent_head=independent, own_final=True)


def in_width(module: nn.Module) -> int | None:
    """The width ``module`` reads: that of its first layer declaring one (riders before the block)."""
    parts = [m for n, m in module.named_children() if n != "block"] + [getattr(module, "block", None)]
    for part in parts:
        if part is None:
            continue
        for m in part.modules():
            for attr in ("in_channels", "in_features", "num_features"):
                value = getattr(m, attr, None)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
            shape = getattr(m, "normalized_shape", None)
            if isinstance(shape, tuple) and shape:
                return int(shape[-1])
    return None


def probe(split: Split, example: Any, roots: list[nn.Module]) -> tuple[list[tuple[int, int] | None], list[set[int]]]:
    """One forward of ``example`` on fake tensors (shapes only; the model's train/eval modes are
    restored): ``(width, channel axis)`` of each block's output (``None`` where unknown), and
    for each of ``roots`` the units whose part of the forward calls it (0: before block 0,
    t: after block t-1, T: the final head; empty if never called as a module)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._pytree import tree_map

    found: list[tuple[int, int] | None] = [None] * len(split.blocks)
    used: list[set[int]] = [set() for _ in roots]
    done = [0]  # blocks run so far

    def record(i: int, out: Any) -> None:
        done[0] = i + 1
        t = (
            out
            if isinstance(out, torch.Tensor)
            else next((leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)), None)
        )
        if t is None or t.dim() < 2:
            return
        shape = tuple(t.shape)
        channels_last = t.dim() in (2, 3) or (t.dim() == 4 and shape[1] == shape[2] != shape[3])
        found[i] = (int(shape[-1]), -1) if channels_last else (int(shape[1]), 1)

    hooks = [b.register_forward_hook(lambda m, a, o, i=i: record(i, o)) for i, b in enumerate(split.blocks)]
    hooks += [r.register_forward_pre_hook(lambda m, a, j=j: used[j].add(done[0])) for j, r in enumerate(roots)]
    modes = [(m, m.training) for m in split.model.modules()]
    logger = logging.getLogger("torch._subclasses.fake_tensor")  # it logs the failure we handle
    level, logger.level = logger.level, logging.CRITICAL
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
            split.model.eval()
            fake = tree_map(lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t, example)
            split.call(split.model, fake)
    except Exception:  # noqa: BLE001  (a model fake tensors cannot run: fall back to the layers)
        return [None] * len(split.blocks), [set() for _ in roots]
    finally:
        logger.setLevel(level)
        for hook in hooks:
            hook.remove()
        for module, training in modes:
            module.training = training
    return found, used
