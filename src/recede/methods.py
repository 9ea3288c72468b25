"""Training methods by name: the strings the CLI and configs use.

==================  =================================================================
``bp``              exact back-propagation (horizon T)
``ff``              Forward-Forward / local losses (horizon 1)
``mpc:H``           horizon H (Paper A eq. 9)
``loco:N``          LoCo: the T blocks regrouped into N equal groups, horizon 2
                    (Paper A Remark 3.1, App. B, the "split loss" form)
``loco-double:N``   LoCo with the double gradient of Paper A eq. 20 (block 0 too)
``loco-eq21:N``     LoCo's double gradient as eq. 21 writes it: block 0 learns from L(x_2)
                    only (:mod:`recede.core.loco`)
``mpc-rc:H``        horizon H recomputing its window's graphs from kept block inputs
                    (``MPC(net, H, recompute=True)``: less memory, the same gradients)
``ckpt[:S]``        BP recomputing activations in S segments (``torch.utils.checkpoint``;
                    default T, every block its own segment, as its users do); :mod:`recede.core.recompute`
``sac[:S]``         selective checkpointing: ``ckpt[:S]`` keeping the outputs of matrix products,
                    convolutions and attention, recomputing only the other ops (norms,
                    activations, dropout, residual adds); exact
``bpm-ff``          BP-modified FF (Paper B eq. 5, :class:`recede.bpm.estimator.BPModified`)
``bpm-mpc:H``       BP-modified horizon H
``bpm-loco:N``      BP-modified LoCo (and ``bpm-loco-double:N``)
==================  =================================================================

``bpm-`` before any local method (not ``bp``) adds Paper B's offset.  Its refresh settings are
keywords of :func:`build_method`: ``refresh_data`` (the dataset B' is drawn from; required),
``batch_size`` (B), ``period`` (K; default one epoch of ``refresh_data`` at ``batch_size``),
``offset_samples`` (B'; default 1 % of K·B rounded to a multiple of b', at least 2 b'),
``micro_batch`` (b', default 8), ``rule`` (the a/λ rule: ``robust``/``paper``/``bias``/``fixed``,
:mod:`recede.bpm.scalars`), ``a``, ``lam``, ``seed``.  The other methods ignore those keywords, so one call
serves a whole comparison.

Every method object is a :class:`recede.core.method.Method`: ``backward(x, y, *, scaler=None)
-> float`` fills ``.grad`` and returns the final loss, so a training loop treats them all alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch.utils.data import Dataset

from recede.bpm.estimator import BPModified, Rule
from recede.core.blocks import BlockNet
from recede.core.engine import MPC
from recede.core.loco import LoCoEq21
from recede.core.method import Method
from recede.core.recompute import CheckpointedBP


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name."""

    kind: str  # "bp", "ff", "mpc", "loco", "ckpt" (sac is ckpt with selective)
    horizon: int | None = None  # mpc:H's H
    groups: int | None = None  # loco:N's N, the groups of consecutive blocks
    segments: int | None = None  # ckpt:S's and sac:S's S (None: T)
    selective: bool = False  # sac: selective checkpointing, CheckpointedBP(..., selective=True)
    double: bool = False
    modified: bool = False  # Paper B's BP-modified local loss
    eq21: bool = False  # LoCo's trajectory loss of Paper A eq. 21 (double, block 0 from L(x_2) only)
    recompute: bool = False  # MPC(..., recompute=True)

    @property
    def label(self) -> str:
        if self.kind in ("bp", "ff"):
            base = self.kind.upper()
        elif self.kind == "mpc":
            base = f"MPC(h={self.horizon})" + ("+rc" if self.recompute else "")
        elif self.kind == "ckpt":
            base = ("BP+sac" if self.selective else "BP+ckpt") + (
                f"({self.segments})" if self.segments is not None else ""
            )
        else:
            base = f"LoCo{self.groups}" + ("-eq21" if self.eq21 else "-double" if self.double else "")
        return f"{base}+BPM" if self.modified else base


def parse_method(text: str) -> MethodSpec:
    """Parse ``bp``, ``ff``, ``mpc:H``, ``mpc-rc:H``, ``loco:N``, ``loco-double:N``,
    ``loco-eq21:N``, ``ckpt``, ``ckpt:S``, ``sac``, ``sac:S``, or a local method (ff, mpc, loco, loco-double)
    prefixed with ``bpm-``."""
    name, _, arg = text.strip().lower().partition(":")
    if name.startswith("bpm-"):
        base = parse_method(text.strip()[4:])
        if base.kind in ("bp", "ckpt") or base.modified or base.eq21 or base.recompute:
            raise ValueError(
                f"method {text!r}: bpm- modifies a local method (ff, mpc:H, loco:N, "
                "loco-double:N), not bp, ckpt, sac, mpc-rc or loco-eq21"
            )
        return dataclasses.replace(base, modified=True)
    if name in ("bp", "ff", "ckpt") and not arg:
        return MethodSpec(name)
    if name == "sac" and not arg:
        return MethodSpec("ckpt", selective=True)
    if name in ("mpc", "mpc-rc", "loco", "loco-double", "loco-eq21", "ckpt", "sac") and arg:
        try:
            value = int(arg)
        except ValueError:
            raise ValueError(f"method {text!r}: {arg!r} is not an integer") from None
        if name in ("ckpt", "sac"):
            return MethodSpec("ckpt", segments=value, selective=name == "sac")
        if name in ("mpc", "mpc-rc"):
            return MethodSpec("mpc", horizon=value, recompute=name == "mpc-rc")
        return MethodSpec("loco", groups=value, double=name != "loco", eq21=name == "loco-eq21")
    raise ValueError(
        f"unknown method {text!r}; use bp, ff, mpc:H, mpc-rc:H, loco:N, loco-double:N, loco-eq21:N, "
        "ckpt[:S] or sac[:S], "
        "the local ones optionally prefixed with bpm-"
    )


def build_method(
    net: BlockNet,
    spec: MethodSpec | str,
    *,
    refresh_data: Dataset | None = None,
    batch_size: int | None = None,
    period: int | None = None,
    offset_samples: int | None = None,
    micro_batch: int = 8,
    rule: str | Rule = "robust",
    a: float | None = None,
    lam: float | None = None,
    seed: int = 0,
) -> Method:
    """The engine that trains ``net`` by ``spec`` (LoCo runs on a regrouped view of ``net``).

    The keywords configure ``bpm-`` methods (see the module table) and are ignored otherwise.
    """
    spec = parse_method(spec) if isinstance(spec, str) else spec
    if spec.kind == "bp":
        return MPC(net, net.T)
    if spec.kind == "ckpt":
        return CheckpointedBP(net, spec.segments, selective=spec.selective)
    horizon, double = {"ff": (1, False), "mpc": (spec.horizon, False)}.get(spec.kind, (2, spec.double))
    if spec.kind == "loco":
        if spec.groups is None or not 2 <= spec.groups <= net.T:
            raise ValueError(f"LoCo needs between 2 and T = {net.T} groups, got {spec.groups}")
        net = net.regroup(spec.groups)
    assert horizon is not None  # parse_method gives every mpc spec its horizon
    if spec.eq21:
        return LoCoEq21(net)
    if not spec.modified:
        return MPC(net, horizon, double=double, recompute=spec.recompute)
    if refresh_data is None:
        raise ValueError(f"method {spec.label} needs refresh_data=, the dataset its offsets are drawn from")
    if period is None:
        if batch_size is None:
            raise ValueError(f"method {spec.label} needs period= or batch_size= (K defaults to one epoch)")
        period = epoch_steps(refresh_data, batch_size)
    if offset_samples is None:
        offset_samples = default_offset_samples(period, batch_size or 1, micro_batch)
    return BPModified(
        net,
        horizon,
        period,
        offset_samples,
        micro_batch,
        rule,
        a,
        lam,
        double,
        data=refresh_data,
        batch_size=batch_size,
        seed=seed,
    )


def epoch_steps(dataset: Dataset, batch_size: int) -> int:
    """The steps of one epoch of ``dataset`` at ``batch_size`` (the last batch may be short):
    a BP-modified method's default period K, "one epoch"."""
    return -(-len(dataset) // batch_size)  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do


def default_offset_samples(period: int, batch_size: int, micro_batch: int, share: float = 0.01) -> int:
    """B' ≈ ``share`` of K·B as a multiple of b', at least 2 b'.  The default 1 % is Paper B
    App. D.2's advice; Paper B §6 ran 320 of 782 · 64, i.e. 0.64 %."""
    return max(2, round(share * period * batch_size / micro_batch)) * micro_batch
