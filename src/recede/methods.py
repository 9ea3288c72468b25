"""Training methods by name: the strings the CLI and configs use.

==================  =================================================================
``bp``              exact back-propagation (horizon T)
``ff``              Forward-Forward / local losses (horizon 1)
``mpc:H``           horizon H (Paper A eq. 9)
``loco:N``          LoCo: the T blocks regrouped into N equal stages, horizon 2
                    (Paper A Remark 3.1, App. B, the "split loss" form)
``loco-double:N``   LoCo with the double gradient of Paper A eq. 20
``ckpt``, ``ckpt:S`` BP with activation checkpointing in S segments (default round(√T));
                    :mod:`recede.recompute`
==================  =================================================================

Every method object has ``backward(x, y) -> float`` that fills ``.grad`` and returns the
final loss, so a training loop treats them all alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from recede.blocks import BlockNet
from recede.engine import MPC
from recede.recompute import CheckpointedBP


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name."""

    kind: str  # "bp", "ff", "mpc", "loco", "ckpt"
    value: int | None = None  # horizon for mpc, stages for loco, segments for ckpt
    double: bool = False

    @property
    def label(self) -> str:
        if self.kind in ("bp", "ff"):
            return self.kind.upper()
        if self.kind == "mpc":
            return f"MPC(h={self.value})"
        if self.kind == "ckpt":
            return "BP+ckpt" + (f"({self.value})" if self.value is not None else "")
        return f"LoCo{self.value}" + ("-double" if self.double else "")


def parse_method(text: str) -> MethodSpec:
    """Parse ``bp``, ``ff``, ``mpc:H``, ``loco:N``, ``loco-double:N``, ``ckpt`` or ``ckpt:S``."""
    name, _, arg = text.strip().lower().partition(":")
    if name in ("bp", "ff", "ckpt") and not arg:
        return MethodSpec(name)
    if name in ("mpc", "loco", "loco-double", "ckpt") and arg:
        try:
            value = int(arg)
        except ValueError:
            raise ValueError(f"method {text!r}: {arg!r} is not an integer") from None
        if name in ("mpc", "ckpt"):
            return MethodSpec(name, value)
        return MethodSpec("loco", value, double=name == "loco-double")
    raise ValueError(f"unknown method {text!r}; use bp, ff, mpc:H, loco:N, loco-double:N or ckpt[:S]")


def build_method(net: BlockNet, spec: MethodSpec | str) -> MPC | CheckpointedBP:
    """The engine that trains ``net`` by ``spec`` (LoCo runs on a regrouped view of ``net``)."""
    spec = parse_method(spec) if isinstance(spec, str) else spec
    if spec.kind == "bp":
        return MPC(net, net.T)
    if spec.kind == "ff":
        return MPC(net, 1)
    if spec.kind == "mpc":
        return MPC(net, spec.value)
    if spec.kind == "ckpt":
        return CheckpointedBP(net, spec.value)
    if not 2 <= spec.value <= net.T:
        raise ValueError(f"LoCo needs between 2 and T = {net.T} stages, got {spec.value}")
    return MPC(net.regroup(spec.value), 2, double=spec.double)
