"""What the vision families (torchvision, timm) share: from a model's pieces to a :class:`Layout`.

A family lists its model's forward as *pieces* in order, each marked as a block (a residual
block, an inverted residual, a transformer block) or not (a stem, a downsampling layer, a
final 1×1 convolution); :func:`vision_layout` turns them into Paper A's chain of units:

* pieces before a block ride with it (the stem with the first block, a stage's downsampling
  with the stage's first block); pieces after the last block open the final head;
* the final head is the model's own classifier path, so that at h = T the gradients are plain
  autograd's on ``model(x)`` with cross-entropy;
* earlier depths get a fresh pool → linear head of the unit's output width (Paper B App. A),
  or, with ``head="group"``, one head per run of consecutive units of equal width (a ResNet
  stage), the last run using the final head; ``head="shared"`` is allowed when every unit has
  the final head's width (a ViT).

Where a family must run code of the model's own (a ViT's token embedding, timm's
``forward_head``), :class:`ModelPart` holds the submodules and parameters that code reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from recede.wrap import Layout

PartFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class ModelPart(nn.Module):
    """A piece of a model's forward, holding (not copying) the submodules and parameters it reads.

    Args:
        model: the user's model; kept unregistered (the BlockNet must not own all of it).  This
            module's ``training`` flag *is* the model's, since the model's own code may read it
            (timm's ``forward_head`` dropout): ``net.eval()`` reaches it.
        names: dotted paths of the model's submodules and parameters this piece uses, in forward
            order; they are registered here as the same objects (``"encoder.ln"`` as
            ``encoder_ln``), so they are trained, moved and switched with the BlockNet.
        fn: ``fn(model, x)``, the model's own code for this piece; ``None`` applies the named
            submodules in order.
    """

    model: nn.Module  # the user's model, kept out of the submodules (below)

    def __init__(self, model: nn.Module, names: Sequence[str], fn: PartFn | None = None) -> None:
        self.__dict__["model"] = model  # unregistered on purpose; set first: ``training`` reads it
        mode = model.training
        super().__init__()  # sets training = True, which is the model's flag
        model.training = mode
        self.fn = fn
        for name in names:
            owner, _, leaf = name.rpartition(".")
            value = getattr(model.get_submodule(owner) if owner else model, leaf)
            if value is not None:
                setattr(self, name.replace(".", "_"), value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            return self.fn(self.model, x)
        for module in self.children():
            x = module(x)
        return x

    @property
    def training(self) -> bool:
        return self.model.training

    @training.setter
    def training(self, mode: bool) -> None:
        self.model.training = mode

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__name__', None)}, of {type(self.model).__name__}"


def chain(pieces: Sequence[tuple[nn.Module, bool]]) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(units, tail)`` from ``(module, is_block)`` pieces in forward order.

    Each unit is a block with the non-block pieces just before it (``nn.Sequential`` of the
    model's own modules, or the block itself); ``tail`` is what follows the last block.
    ``nn.Identity`` pieces (a stage without downsampling) are left out.
    """
    units: list[nn.Module] = []
    riders: list[nn.Module] = []
    for module, is_block in pieces:
        if is_block:
            units.append(nn.Sequential(*riders, module) if riders else module)
            riders = []
        elif type(module) is not nn.Identity:
            riders.append(module)
    return units, riders


def out_width(module: nn.Module) -> int | None:
    """The channel or feature count of ``module``'s output: that of its last layer declaring one.

    Residual blocks, inverted residuals, ConvNeXt and transformer blocks all end (in
    registration order) with the convolution, linear or norm layer that sets their output width.
    """
    for m in reversed(list(module.modules())):
        for attr in ("out_channels", "out_features", "num_features"):
            value = getattr(m, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def vision_layout(
    model: nn.Module,
    family: str,
    pieces: Sequence[tuple[nn.Module, bool]],
    final_head: nn.Module,
    make_head: Callable[[int], nn.Module] | None,
) -> Layout:
    """The :class:`Layout` of a vision model (see the module docstring).

    Args:
        model: the user's model (checked to have every parameter in a unit or the final head).
        family: the model's family and class, for messages (``"torchvision ResNet"``).
        pieces: the forward as ``(module, is_block)`` in order, up to the classifier path.
        final_head: the model's own classifier path from the last piece's output.
        make_head: ``make_head(width)``, a new head for an earlier depth (``None``: the model has
            no classifier to size one; the user gives heads).
    """
    units, tail = chain(pieces)
    if not units:
        raise ValueError(f"{family}: found no blocks to split into")
    final = nn.Sequential(*tail, final_head) if tail else final_head
    _check_placed(model, [*units, final], family)
    widths = [out_width(u) for u in units]
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)

    def independent(i: int) -> nn.Module:
        width = widths[i]
        if width is None:
            raise ValueError(
                f"{family}: cannot tell the output width of block {i} ({type(units[i]).__name__}); pass head="
            )
        assert make_head is not None  # only offered below when there is one
        head = make_head(width)
        return head if reference is None else head.to(device=reference.device, dtype=reference.dtype)

    runs = [0]
    for before, width in zip(widths, widths[1:]):
        runs.append(runs[-1] + (width != before or width is None))
    per_run: dict[int, nn.Module] = {}

    def group(i: int) -> nn.Module:
        if runs[i] == runs[-1]:
            return final
        if runs[i] not in per_run:
            per_run[runs[i]] = independent(i)
        return per_run[runs[i]]

    return Layout(
        units=units,
        final_head=final,
        loss_fn=nn.CrossEntropyLoss(),
        independent_head=independent if make_head is not None else None,
        shareable=runs[-1] == 0 and widths[0] is not None,
        group_head=group if make_head is not None else None,
    )


def _check_placed(model: nn.Module, modules: list[nn.Module], family: str) -> None:
    """Every parameter of ``model`` must sit in a unit or the final head, or training misses it."""
    held = {id(p) for m in modules for p in m.parameters()}
    missing = [n for n, p in model.named_parameters() if id(p) not in held]
    if missing:
        raise ValueError(
            f"{family}: parameters {missing[:4]}{' …' if len(missing) > 4 else ''} "
            "fall in no block or head; this layout is not supported by recede.wrap"
        )
