"""``recede.wrap(model)``: a user's model as a :class:`~recede.core.blocks.BlockNet`, held, not copied.

Paper A eq. 1 reads a network as T blocks ``x_{t+1} = f_t(x_t, u_t)`` and asks for a loss that
accepts every block's output (SPEC §1).  A model family knows how its own model splits into
such a chain; this package asks it for a :class:`Layout` and turns that into a BlockNet:

* **units** — the finest blocks in order (a residual block, a transformer or decoder layer), with
  the input stage (stem, patch or token embedding) riding with the first;
* **final head** — the model's own path from the last unit to its prediction (pool → classifier,
  final norm → LM head), so that at h = T the gradients are plain autograd's on the model;
* **loss** — the family's own (cross-entropy, the shifted next-token loss of a causal LM);
* how to make a head for an earlier depth (Paper B App. A): a fresh one per depth
  (``"independent"``), or the final head at every depth (``"shared"``) where widths agree.

``wrap(model, blocks=N)`` groups consecutive units into N blocks (block granularity is the
user's choice, SPEC §2).  ``head`` is ``"auto"`` (the family's default), ``"independent"``,
``"shared"``, ``"group"`` (one head per group of consecutive units of equal width, where the
family has such groups), one module shared
by every depth, or one module per block.  Every module of the
BlockNet is the model's own or a new head: stepping an optimizer on ``net.parameters()`` trains
the user's model.

A family registers itself with :func:`register_family`, giving a predicate on the model and a
function ``layout(model, **options) -> Layout``; the first family whose predicate accepts the
model is used.  Predicates look at class names and modules, so no family imports its library
(torchvision, timm, transformers) until it is used.

Models of those libraries that no named layout describes are read by structure (one
``ModuleList`` of transformer layers, torchvision block classes, timm's ``blocks``/``stages``)
and, like any model whose blocks the user names (``wrap(model, blocks="model.layers")``), run
their own forward cut after each block (:mod:`recede.wrap.generic`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from torch import nn

from recede.core.blocks import BlockNet, LossFn, even_groups

HEAD_CHOICES = ("auto", "independent", "shared", "group")


@dataclass
class Layout:
    """A model read as a chain of units, what a family returns to :func:`wrap`.

    Attributes:
        units: the finest blocks, applied in order; each takes one argument (a tensor or a
            pytree: tuple, dict) and returns the next unit's input.
        final_head: maps the last unit's output to the model's prediction (``None``: the
            output already is the prediction).
        loss_fn: ``loss_fn(prediction, target)``, the family's own loss (``None``: the user must
            give one).
        independent_head: ``independent_head(i)`` makes a fresh head that reads the output of
            ``units[i]`` (``None``: the family cannot make one; the user must give heads).
        shareable: the final head accepts the output of every unit (equal widths), so
            ``head="shared"`` is allowed.
        default_head: what ``head="auto"`` means for this family.
        group_head: ``group_head(i)`` is the head shared by the units of ``units[i]``'s group
            of equal width (the final head for the last group); ``None``: ``head="group"`` is
            refused.
        earlier_shared: the head ``head="shared"`` uses at depths below T when that is not the
            final head (a split model's final head is the rest of its forward, which only the
            last depth can run).
        own_final: the final head is the layout's own whatever ``head=`` gives for the earlier
            depths (the generic path, :mod:`recede.wrap.generic`).
    """

    units: list[nn.Module]
    final_head: nn.Module | None
    loss_fn: LossFn | None
    independent_head: Callable[[int], nn.Module] | None = None
    shareable: bool = False
    default_head: str = "independent"
    group_head: Callable[[int], nn.Module] | None = None
    earlier_shared: nn.Module | None = None
    own_final: bool = False


@dataclass(frozen=True)
class Family:
    name: str
    matches: Callable[[nn.Module], bool]
    layout: Callable[..., Layout]


FAMILIES: list[Family] = []


def register_family(
    name: str, matches: Callable[[nn.Module], bool]
) -> Callable[[Callable[..., Layout]], Callable[..., Layout]]:
    """Decorator: ``layout(model, **options) -> Layout`` serves every model ``matches`` accepts."""

    def add(layout: Callable[..., Layout]) -> Callable[..., Layout]:
        if any(f.name == name for f in FAMILIES):
            raise ValueError(f"model family {name!r} is registered twice")
        FAMILIES.append(Family(name, matches, layout))
        return layout

    return add


def family_of(model: nn.Module) -> Family:
    """The first registered family that accepts ``model``; ``ValueError`` naming the class if none."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"recede.wrap needs an nn.Module, got {type(model).__name__}")
    for family in FAMILIES:
        if family.matches(model):
            return family
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    raise ValueError(
        f"recede.wrap does not know how to split {kind} into blocks; supported: "
        f"{', '.join(f.name for f in FAMILIES)}; otherwise build "
        "recede.BlockNet(blocks, heads, loss_fn) from your modules"
    )


def wrap(
    model: nn.Module,
    *,
    blocks: int | str | Sequence[str] | None = None,
    head: str | nn.Module | Sequence[nn.Module] = "auto",
    loss_fn: LossFn | None = None,
    **options: object,
) -> BlockNet:
    """``model`` as a BlockNet of its own modules (see the module docstring).

    Args:
        model: an ``nn.Sequential``, a model of a registered family, or any model with
            ``blocks`` named.
        blocks: an int groups the family's units into this many blocks of consecutive units
            (``torch.tensor_split`` sizes); ``None``: one block per unit.  A module name
            (``"model.layers"``: its children are the blocks) or a list of module names takes
            the generic path (:mod:`recede.wrap.generic`): the model's own forward, cut after
            each named block.
        head: ``"auto"``, ``"independent"``, ``"shared"``, ``"group"``, one module for every
            depth, or a list with one module per block (``heads[k-1]`` reads the output of
            block k-1); the list's last item may be ``None`` (or left out) for the model's own
            final head.
        loss_fn: replaces the family's loss.
        options: passed to the family's layout function.
    """
    if isinstance(blocks, str) or (isinstance(blocks, (list, tuple)) and not isinstance(blocks, bool)):
        from recede.wrap.generic import generic_layout

        family = Family("recede.wrap(blocks=...)", lambda m: True, generic_layout)
        layout, count = _layout(family, model, {**options, "blocks": blocks}), None
    else:
        family = family_of(model)
        layout, count = _layout(family, model, options), cast("int | None", blocks)  # _group checks it
    groups = _group(layout.units, count)
    loss_fn = loss_fn if loss_fn is not None else layout.loss_fn
    if loss_fn is None:
        raise ValueError(f"{family.name} models have no loss of their own: pass loss_fn=")
    return BlockNet([_chain(g) for g in groups], _heads(layout, groups, head, family.name), loss_fn)


def _layout(family: Family, model: nn.Module, options: dict) -> Layout:
    accepted = list(inspect.signature(family.layout).parameters)[1:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{family.name} models have no wrap option(s) {unknown}; they take {accepted}")
    return family.layout(model, **options)


def _group(units: list[nn.Module], blocks: int | None) -> list[list[nn.Module]]:
    if not units:
        raise ValueError("the model has no units to split into blocks")
    if blocks is None:
        return [[u] for u in units]
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= len(units):
        raise ValueError(
            f"blocks must be an integer in [1, {len(units)}] (the model has {len(units)} units), got {blocks!r}"
        )
    return [units[group.start : group.stop] for group in even_groups(len(units), blocks)]


def _chain(group: list[nn.Module]) -> nn.Module:
    return group[0] if len(group) == 1 else nn.Sequential(*group)


def _heads(
    layout: Layout, groups: list[list[nn.Module]], head: str | nn.Module | Sequence[nn.Module], family: str
) -> nn.Module | list[nn.Module]:
    """The BlockNet's heads: one shared module or one per block, the last being the final head."""
    final = layout.final_head if layout.final_head is not None else nn.Identity()
    T = len(groups)
    if isinstance(head, nn.Module):
        return [head] * (T - 1) + [final] if layout.own_final else head
    if not isinstance(head, str):
        heads = list(head)
        bad = [i for i, h in enumerate(heads) if not isinstance(h, nn.Module)]
        if layout.final_head is None:  # no final head of its own (nn.Sequential): one per block
            if len(heads) != T or bad:
                got = f"{len(heads)} item(s)" + (f", item {bad[0]} a {type(heads[bad[0]]).__name__}" if bad else "")
                raise ValueError(
                    f"head= as a list needs one nn.Module per block ({T}), the last being the "
                    f"final head ({family} models have none of their own); got {got}"
                )
            return heads
        if len(heads) == T - 1 or (len(heads) == T and heads[-1] is None):
            heads = heads[: T - 1] + [final]
        bad = [i for i, h in enumerate(heads) if not isinstance(h, nn.Module)]
        if len(heads) != T or bad:
            got = f"{len(heads)} item(s)" + (f", item {bad[0]} a {type(heads[bad[0]]).__name__}" if bad else "")
            raise ValueError(
                f"head= as a list needs an nn.Module for each of the {T - 1} earlier depths "
                f"(heads[k-1] reads block k-1's output), then the final head or None for the "
                f"model's own; got {got}"
            )
        if layout.own_final and heads[-1] is not final:
            raise ValueError(
                f"{family}: the final head is the rest of the model's forward; end head= "
                "with None (or leave the last one out)"
            )
        return heads
    if head not in HEAD_CHOICES:
        raise ValueError(f"head must be one of {HEAD_CHOICES}, an nn.Module or a list of them, got {head!r}")
    head = layout.default_head if head == "auto" else head
    if head == "shared":
        if layout.earlier_shared is not None:
            return [layout.earlier_shared] * (T - 1) + [final]
        if not layout.shareable:
            raise ValueError(
                f"{family} models cannot share the final head across depths (their "
                "widths differ); use head='independent' or give heads"
            )
        return final
    ends = [sum(len(g) for g in groups[: i + 1]) for i in range(len(groups))]
    if head == "group":
        if layout.group_head is None:
            raise ValueError(
                f"{family} models have no groups of equal width to share heads within; use "
                "head='independent' or give heads"
            )
        return [layout.group_head(end - 1) for end in ends[:-1]] + [final]
    if layout.independent_head is None:
        if len(groups) == 1:
            return [final]
        raise ValueError(
            f"{family} models have no heads for earlier depths of their own: pass "
            "head= (one module shared by every depth, or one per block)"
        )
    return [layout.independent_head(end - 1) for end in ends[:-1]] + [final]


from recede.wrap import (  # noqa: E402,F401  (registration side effect)
    huggingface,
    huggingface_layers,  # noqa: E402,F401  (after the named transformers families)
    sequential,
    timm,
    torchvision,
)
