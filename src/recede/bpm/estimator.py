"""The BP-modified local loss (Paper B eq. 5, §4.2, §5, Algorithm 1, App. C; SPEC §5).

A local method of horizon h gives block t the biased gradient g_{h,t} (Paper B eq. 4).  Every
K steps (the *period*) the BP-modified method measures, on B' fresh samples, how the true
gradient g_{T,t} differs from it, and until the next refresh it applies

    ĝ_{h,t} = a_{h,t} · mean_B[g_{h,t}] + λ_{h,t} · Δ_t,     Δ_t = mean_{B'}[g̃_{T,t} − a_{h,t} g̃_{h,t}]

(Paper B eq. 5).  The refresh follows Paper B §5: the B' samples are processed in micro-batches
of b', each giving one micro-batch mean of g̃_h and of g̃_T through :class:`recede.MPC`, so
the refresh costs the activations of BP on b' samples.  Only running sums are kept (per block:
the sum of the micro-batch means, their squared norms and cross products), from which

* the means ḡ_h, ḡ_T over the B' samples, and
* the traces of the *per-sample* covariances: with n micro-batch means m_1..m_n of b' samples
  each, Cov(m) = C / b', so ``tr C = b' · (Σ‖m_i‖² − n‖m̄‖²) / (n − 1)`` (unbiased); likewise
  ``tr C_{h,T} = 2 b' · (Σ m_h,i·m_T,i − n m̄_h·m̄_T) / (n − 1)`` for the two-sided
  ``C_{h,T} = Cov(g_h, g_T) + Cov(g_T, g_h)`` of Paper B eq. 7.

The scalars a, λ come from :mod:`recede.bpm.scalars`: ``rule="robust"`` (the default: a = 1
and a James–Stein λ weighted by how long the offset persists, measured on held-out samples,
grown from a probe only while the applied offset still pays; never worse than the local method
in the error of a period's mean update, for a given course of the bias: not a guarantee on
training, docs/paper-b.md), ``"paper"``
(Paper B's minimiser of the one-step error E(a, λ) of eq. 16 with App. C's factor K and
SPEC §5's corrections), ``"bias"`` (Paper B Table 3's ablation: λ = 0, a = a_bias) and
``"fixed"`` (the caller's a and λ).  From the second refresh on, the last period's estimator
is tested on the new refresh's independent samples (``RefreshStats.cos_held_out``).
Blocks whose horizon reaches T already receive g_T: a = 1, λ = 0, no offset.  Heads are
trained as :class:`recede.MPC` trains them (each by its own depth's loss), without offset.

Data-parallel training: every entry of the statistics dict is a *sum* over micro-batches
(``count``, ``samples``, the vector sums and the per-block sums of squares and products), so
a :class:`~recede.bpm.workers.Workers` strategy that all-reduces each tensor with SUM
(:meth:`BPModified.share_refreshes`) turns the per-rank statistics into those of all ranks'
samples before any mean or trace is formed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from recede.bpm.scalars import (
    RULES,
    BlockMoments,
    bias_scalars,
    bias_term,
    end_coefficient,
    fresh_lambda,
    paper_scalars,
    robust_scalars,
    step_cap,
    variance_term,
)
from recede.bpm.workers import SingleProcess, Workers
from recede.core.blocks import BlockNet, samples_in, to_device
from recede.core.chains import exact
from recede.core.engine import MPC, write_grads

log = logging.getLogger("recede.bpm.estimator")

Rule = Callable[[BlockMoments, int, "dict[str, torch.Tensor] | None", torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""An a/λ rule: (moments, B', the held-out check of the last offset or None at the first
refresh, the blocks' previous λ) → (a, λ) per modified block.  The check is the dict of
:meth:`BPModified._held_out`: ``end`` the lower confidence bound on the last offset's best
multiplier c at its period's end (what the robust rule reads), ``end_point`` c's point
estimate, ``e_dot`` and ``e_sq``."""


def _blockwise_dot(u: torch.Tensor, v: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Per block (consecutive chunks of ``sizes``) the dot product u·v, in float64."""
    if not sizes:
        return torch.zeros(0, dtype=torch.float64, device=u.device)
    return torch.stack([(a.double() * b.double()).sum() for a, b in zip(u.split(sizes), v.split(sizes))])


def _cos(dot: torch.Tensor, sq: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
    """dot / √(sq · tt), 0 where a norm is 0."""
    return dot / (sq * tt).clamp_min(0).sqrt().clamp_min(1e-300)


def block_moments(stats: dict[str, torch.Tensor], sizes: list[int]) -> tuple[BlockMoments, torch.Tensor, torch.Tensor]:
    """Means ḡ_h, ḡ_T and per-block moments from the refresh sums (SPEC §5).

    With n micro-batch means of b' samples each, a per-sample covariance trace is b' times
    the unbiased sample variance of the micro-batch means.  Returns (moments, ḡ_h, ḡ_T); the
    means are ``stats["sum_h"]`` and ``stats["sum_t"]`` divided in place (no parameter-sized copy).
    """
    n, samples = float(stats["count"]), float(stats["samples"])
    if n < 2:
        raise ValueError(f"a refresh needs at least two micro-batches to estimate covariances, got {n:g}")
    mean_h, mean_t = stats["sum_h"].div_(n), stats["sum_t"].div_(n)
    hh, ht, tt = (_blockwise_dot(u, v, sizes) for u, v in ((mean_h, mean_h), (mean_h, mean_t), (mean_t, mean_t)))
    unbiased = samples / n / (n - 1)
    m = BlockMoments(
        hh,
        ht,
        tt,
        unbiased * (stats["sq_h"] - n * hh).clamp_min(0),
        unbiased * (stats["sq_t"] - n * tt).clamp_min(0),
        2 * unbiased * (stats["prod_ht"] - n * ht),
    )
    return m, mean_h, mean_t


@dataclass
class RefreshStats:
    """What one refresh measured, per block (lists indexed by block t = 0..T-1).

    ``bias`` and ``variance`` are the two terms of Paper B's E(a, λ) at the chosen scalars;
    ``cos`` is cos(E[ĝ_t], ḡ_T) with E[ĝ] = (1−λ) a ḡ_h + λ ḡ_T (Paper B eq. 27) on the refresh's
    own samples (in-sample: the offset was fitted to them), ``cos_local`` is cos(ḡ_h, ḡ_T) of the
    unmodified method; ``cos_all``/``cos_local_all`` are the same over the parameters of all
    modified blocks together.  From the second refresh on, the last period's estimator is tested
    on this refresh's independent samples (held out from it): ``cos_held_out`` is cos(ĝ_end, ḡ_T)
    for ĝ_end = a ḡ_h + λ Δ with the last a, λ, Δ (compare with ``cos_local``), and
    ``end_bound`` the lower confidence bound on the best multiplier of the last offset at the
    end of its period (:func:`recede.bpm.scalars.end_coefficient`), ``end_point`` its point
    estimate c = d̂_r·Δ/‖Δ‖² (1: the last offset was still whole at the period's end; 0: stale).
    ``lam_fresh`` and ``step_cap`` are the robust rule's James–Stein factor and step cap
    (:func:`recede.bpm.scalars.fresh_lambda`, :func:`recede.bpm.scalars.step_cap`) whatever the
    rule, to show which bound set λ.  Exact blocks show a = 1, λ = 0, zero bias, cos = 1.
    """

    step: int
    samples: int
    micro_batch: int
    a: list[float]
    lam: list[float]
    bias: list[float]
    variance: list[float]
    cos: list[float]
    cos_local: list[float]
    cos_all: float
    cos_local_all: float
    cos_held_out: list[float] | None = None
    end_bound: list[float] | None = None
    cos_held_out_all: float | None = None
    end_point: list[float] | None = None
    lam_fresh: list[float] | None = None
    step_cap: list[float] | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class BPModified:
    """Paper B's BP-modified local loss around a horizon-h method; ``backward`` like :class:`MPC`.

    >>> method = BPModified(net, horizon=1, period=len(loader), offset_samples=320,
    ...                     micro_batch=8, data=train_set)
    >>> for x, y in loader:                      # refreshes itself every `period` steps
    ...     opt.zero_grad(); method.backward(x, y); opt.step()

    Without ``data`` the caller drives the refreshes: ``method.refresh(micro_batches)`` with
    any iterable of equally sized (x, y) micro-batches.  Until the first refresh the method is
    the plain local method (a = 1, λ = 0, no offset).

    Args:
        net: the block network (for LoCo, its regrouped view).
        horizon: h in [1, T], as in :class:`recede.MPC`.
        period: K, the number of ``backward`` calls between refreshes (also the K of E).
        offset_samples: B', samples per refresh (a multiple of ``micro_batch``, ≥ 2 micro-batches).
        micro_batch: b', samples per micro-batch of the refresh.
        rule: the rule for a and λ: ``"robust"``, ``"paper"``, ``"bias"`` (λ = 0, a = a_bias)
            or ``"fixed"`` (needs a, lam), :mod:`recede.bpm.scalars`; or a :data:`Rule`, a
            function given the moments and the held-out check (a study's variant of a rule).
        a, lam: the fixed scalars for ``rule="fixed"``.
        double: LoCo's double gradient (Paper A eq. 20), as in :class:`recede.MPC`.
        data: a dataset of (x, y) pairs to draw the B' samples from on the method's own schedule.
        batch_size: B of E(a, λ); by default the size of the last batch given to ``backward``.
        seed: the draws of refresh r use a generator seeded with (seed, r), so runs and resumed
            runs draw the same samples.
        engines: ``(local, exact)``, objects with ``backward(x, y)`` to use instead of
            ``MPC(net, horizon, double)`` and ``MPC(net, T)`` (a pipeline stage's engines).
        blocks: modify only these blocks (a pipeline stage's; default all).  Each block's a, λ
            and Δ depend on that block's statistics only.
    """

    def __init__(
        self,
        net: BlockNet,
        horizon: int,
        period: int,
        offset_samples: int,
        micro_batch: int,
        rule: str | Rule = "robust",
        a: float | None = None,
        lam: float | None = None,
        double: bool = False,
        data: Dataset | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        engines: tuple | None = None,
        blocks: Iterable[int] | None = None,
    ) -> None:
        self.local, self.exact = engines if engines is not None else (MPC(net, horizon, double), MPC(net, net.T))
        self.net, self.horizon = net, horizon
        for name, value in (("period", period), ("offset_samples", offset_samples), ("micro_batch", micro_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if offset_samples % micro_batch or offset_samples < 2 * micro_batch:
            raise ValueError(
                f"offset_samples (B' = {offset_samples}) must be a multiple of "
                f"micro_batch (b' = {micro_batch}) and hold at least two micro-batches"
            )
        if not callable(rule) and rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
        if (rule == "fixed") != (a is not None and lam is not None):
            raise ValueError("rule='fixed' needs both a and lam (--bpm-a, --bpm-lam), and only it takes them")
        if lam is not None and not 0 <= lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if data is not None and len(data) < offset_samples:  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
            raise ValueError(f"data holds {len(data)} samples, fewer than offset_samples = {offset_samples}")  # type: ignore[arg-type]
        self.period, self.offset_samples, self.micro_batch = period, offset_samples, micro_batch
        self.rule, self.fixed = rule, (a, lam)
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.modified = [
            t for t in (range(net.T) if blocks is None else blocks) if not exact(t, net.T, horizon, double)
        ]
        self.params = {t: net.block_parameters(t) for t in self.modified}
        self._sizes = [sum(p.numel() for p in self.params[t]) for t in self.modified]
        trainable = [p for p in net.parameters() if p.requires_grad]
        ref = trainable[0] if trainable else torch.zeros(())
        self.offset = torch.zeros(sum(self._sizes), dtype=ref.dtype, device=ref.device)
        self.a = torch.ones(net.T, dtype=torch.float64)
        self.lam = torch.zeros(net.T, dtype=torch.float64)
        self.step = 0
        self.refreshes = 0
        self._refresh_due = False
        self.last_stats: RefreshStats | None = None
        self.workers: Workers = SingleProcess()

    @property
    def last_losses(self) -> dict[int, float]:
        return self.local.last_losses

    # -- training step -----------------------------------------------------------------

    def backward(self, x: Any, y: Any, *, scaler: torch.amp.GradScaler | None = None) -> float:
        """Accumulate ĝ_{h,t} (Paper B eq. 5) into ``.grad``; return L(x_T).

        Each use of a parameter is its block's term (SPEC §1): a parameter of several blocks
        gets each block's ĝ once, a head's use the plain local gradient.  With ``data``, first
        refreshes when a period begins (a refresh whose fp16 gradients overflow is retried at
        the next step).  With an enabled ``scaler`` the gradients are scaled as
        :meth:`recede.MPC.backward` scales them, offsets included.
        """
        self.batch_size = self.batch_size or samples_in(x) * self.workers.world_size
        if self.data is not None and self.step % self.period == 0:
            self._refresh_due = True
        if self._refresh_due:
            self._refresh_due = self.refresh(self.draw(self.refreshes), scaler=scaler) is None
        step = self.local.gradients(x, y, scaler=scaler, per_use=True)
        for t, offset in zip(self.modified, self._offset_views()):
            a, lam = float(self.a[t]), float(self.lam[t])
            grads = step.blocks[t]
            for p, delta in zip(self.params[t], offset):
                g = grads.get(p)
                g = torch.zeros_like(p) if g is None else g * a if a != 1 else g
                if lam != 0:
                    g = g.add(delta if step.scale is None else delta * step.scale, alpha=lam)
                grads[p] = g
        write_grads(step.total())
        self.step += 1
        return float(step.losses[self.net.T])

    # -- refresh -------------------------------------------------------------------------

    def draw(self, refresh_index: int) -> Iterator[tuple[Any, Any]]:
        """The micro-batches of refresh ``refresh_index``: B' distinct samples of ``data`` (this
        process's share of them, :meth:`share_refreshes`)."""
        if self.data is None:
            raise ValueError("BPModified has no data to draw from; pass data= or call refresh() yourself")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + refresh_index)
        chosen = torch.randperm(len(self.data), generator=generator)[: self.offset_samples]  # type: ignore[arg-type]  # torch's Dataset type has no __len__; ours all do
        return self.workers.share(self._collate(part) for part in chosen.split(self.micro_batch))

    def _collate(self, part: torch.Tensor) -> tuple[Any, Any]:
        assert self.data is not None
        x, y = default_collate([self.data[int(i)] for i in part])
        return x, y

    def refresh(
        self, micro_batches: Iterable[tuple[Any, Any]], *, scaler: torch.amp.GradScaler | None = None
    ) -> RefreshStats | None:
        """Measure g̃_h and g̃_T on ``micro_batches`` and set a, λ and Δ (Algorithm 1, lines 4–9).

        Every micro-batch must hold the same number b' of samples, and there must be at least
        two.  ``.grad`` and buffers (BatchNorm running statistics) are left as they were.  With
        an enabled ``scaler`` the gradients are taken at its scale and unscaled; if they
        overflow, nothing changes and ``None`` is returned.
        """
        stats = self.accumulate(micro_batches, scaler=scaler)
        if stats is None:
            log.warning(
                "refresh at step %d skipped: fp16 gradients overflowed at the GradScaler's "
                "scale; the offset of the last refresh is kept",
                self.step,
            )
            return None
        return self._set_scalars(self.reduce_statistics(stats))

    def accumulate(
        self, micro_batches: Iterable[tuple[Any, Any]], *, scaler: torch.amp.GradScaler | None = None
    ) -> dict[str, torch.Tensor] | None:
        """Sufficient statistics of the refresh, all sums over micro-batches.

        ``count`` (micro-batches), ``samples``, ``sum_h``/``sum_t`` (flat sums of the micro-batch
        mean gradients over the modified blocks, one entry per use), and per modified block
        ``sq_h``, ``sq_t``, ``prod_ht`` (sums of ‖m_h‖², ‖m_T‖², m_h·m_T) and ``proj``, ``proj_sq``
        (sums of (m_T − m_h)·Δ and its square, Δ the current offset: the held-out test of the last
        offset, :meth:`_held_out`).  Holds one graph of b' samples at a time; besides the offset,
        the two running sums are the refresh's only parameter-sized memory (the second becomes the
        new offset).  ``None`` when a scaled gradient overflowed.
        """
        n_blocks, device = len(self.modified), self.offset.device
        stats = {
            "count": torch.zeros((), dtype=torch.float64, device=device),
            "samples": torch.zeros((), dtype=torch.float64, device=device),
            "sum_h": torch.zeros_like(self.offset),
            "sum_t": torch.zeros_like(self.offset),
            **{
                k: torch.zeros(n_blocks, dtype=torch.float64, device=device)
                for k in ("sq_h", "sq_t", "prod_ht", "proj", "proj_sq")
            },
        }
        buffers = [(b, b.clone()) for b in self.net.buffers()]
        size = None
        try:
            for x, y in micro_batches:
                x, y = to_device(x, device), to_device(y, device)
                n = samples_in(x)
                size = size or n
                if n != size:
                    raise ValueError(f"refresh micro-batches must all hold b' = {size} samples, got {n}")
                m_h = self._flat_gradient(self.local, x, y, scaler)
                m_t = self._flat_gradient(self.exact, x, y, scaler)
                if m_h is None or m_t is None:
                    return None
                stats["count"] += 1
                stats["samples"] += n
                stats["sum_h"] += m_h
                stats["sum_t"] += m_t
                for k, (u, v) in (("sq_h", (m_h, m_h)), ("sq_t", (m_t, m_t)), ("prod_ht", (m_h, m_t))):
                    stats[k] += _blockwise_dot(u, v, self._sizes)
                proj = _blockwise_dot(m_t, self.offset, self._sizes) - _blockwise_dot(m_h, self.offset, self._sizes)
                stats["proj"] += proj
                stats["proj_sq"] += proj * proj
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
        return stats

    def share_refreshes(self, workers: Workers) -> None:
        """Make each refresh one refresh over ``workers`` (data-parallel processes): statistics
        summed over them, the micro-batches :meth:`draw` gives split among them, and an unset B
        (Paper B eq. 16) the global batch, ``workers.world_size`` times the local one."""
        self.workers = workers

    def reduce_statistics(self, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Combine the refresh statistics across workers before they are used.

        Every tensor in ``stats`` is a sum over micro-batches, so ``self.workers`` (or a
        subclass) all-reduces each one with SUM (in place or returning new tensors).
        """
        return self.workers.sum_statistics(stats)

    def _flat_gradient(self, engine: MPC, x: Any, y: Any, scaler: torch.amp.GradScaler | None) -> torch.Tensor | None:
        """The micro-batch mean gradient of the modified blocks under ``engine``, one entry per
        use, flattened and unscaled; ``None`` if a scaled gradient overflowed."""
        step = engine.gradients(x, y, scaler=scaler, per_use=True)
        parts = [step.blocks[t].get(p, torch.zeros_like(p)).reshape(-1) for t in self.modified for p in self.params[t]]
        flat = torch.cat(parts).to(self.offset.dtype) if parts else self.offset.new_zeros(0)
        if step.scale is not None:
            flat = flat / step.scale
            if not bool(torch.isfinite(flat).all()):
                return None
        return flat

    def _set_scalars(self, stats: dict[str, torch.Tensor]) -> RefreshStats:
        m, mean_h, mean_t = block_moments(stats, self._sizes)
        samples = int(stats["samples"])
        b_prime = samples / float(stats["count"])
        B, K = self.batch_size, self.period
        if B is None:
            raise ValueError("BPModified needs the training batch size B: pass batch_size= or call backward() first")
        index = torch.tensor(self.modified, dtype=torch.long)
        check = self._held_out(m, mean_h, mean_t, stats, index) if self.refreshes else None
        if callable(self.rule):
            a, lam = self.rule(m, samples, check, self.lam[index])
        elif self.rule == "robust":
            a, lam = robust_scalars(m, samples, None if check is None else check["end"], self.lam[index])
        elif self.rule == "paper":
            a, lam = paper_scalars(m, B, samples, K)
        elif self.rule == "bias":
            a, lam = bias_scalars(m)
        else:
            fixed_a, fixed_lam = self.fixed
            assert fixed_a is not None and fixed_lam is not None  # rule 'fixed' is checked to have both
            a, lam = torch.full_like(m.hh, fixed_a), torch.full_like(m.hh, fixed_lam)
        offset = mean_t
        for view, h_view, scale in zip(offset.split(self._sizes), mean_h.split(self._sizes), a):
            view.sub_(h_view, alpha=float(scale))
        self.offset = offset
        self.a = torch.ones(self.net.T, dtype=torch.float64)
        self.lam = torch.zeros(self.net.T, dtype=torch.float64)
        self.a[index], self.lam[index] = a.cpu(), lam.cpu()
        self.refreshes += 1
        self.last_stats = self._report(m, a, lam, B, samples, K, int(b_prime), check)
        log.info(
            "refresh %d at step %d: B'=%d b'=%d mean a=%.3g mean λ=%.3g cos(ĝ,g_T)=%.3f (local %.3f)",
            self.refreshes,
            self.step,
            samples,
            int(b_prime),
            float(a.mean()) if len(a) else 1.0,
            float(lam.mean()) if len(lam) else 0.0,
            self.last_stats.cos_all,
            self.last_stats.cos_local_all,
        )
        return self.last_stats

    def _held_out(
        self,
        m: BlockMoments,
        mean_h: torch.Tensor,
        mean_t: torch.Tensor,
        stats: dict[str, torch.Tensor],
        index: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The last refresh's offset Δ and scalars, tested on this refresh's independent samples.

        Per block: ``e_dot``, ``e_sq`` — ĝ_end·ḡ_T and ‖ĝ_end‖² for ĝ_end = a ḡ_h + λ Δ, the
        estimator of the last period at its end (mean over this refresh's samples); ``end`` —
        the lower confidence bound on the best multiplier of Δ at the period's end, from the n
        micro-batch projections (m_T − m_h)·Δ (:func:`recede.bpm.scalars.end_coefficient`).
        """
        a, lam = self.a[index].to(m.hh), self.lam[index].to(m.hh)
        dh, dt, dd = (_blockwise_dot(self.offset, v, self._sizes) for v in (mean_h, mean_t, self.offset))
        n = float(stats["count"])
        spread = ((stats["proj_sq"] - stats["proj"] ** 2 / n) / (n - 1)).clamp_min(0)
        return {
            "e_dot": a * m.ht + lam * dt,
            "e_sq": (a * a * m.hh + 2 * a * lam * dh + lam * lam * dd).clamp_min(0),
            "end": end_coefficient(dt - dh, dd, (spread / n).sqrt(), int(n)),
            "end_point": torch.where(dd > 0, (dt - dh) / dd.clamp_min(1e-300), torch.zeros_like(dd)),
        }

    def _report(
        self,
        m: BlockMoments,
        a: torch.Tensor,
        lam: torch.Tensor,
        B: int,
        B_prime: int,
        K: int,
        b_prime: int,
        check: dict[str, torch.Tensor] | None,
    ) -> RefreshStats:
        T = self.net.T
        w = (1 - lam) * a  # E[ĝ] = w ḡ_h + λ ḡ_T
        dot = w * m.ht + lam * m.tt
        norm2 = (w * w * m.hh + 2 * w * lam * m.ht + lam * lam * m.tt).clamp_min(0)
        values = {
            "bias": (bias_term(a, lam, m), 0.0),
            "variance": (variance_term(a, lam, m, B, B_prime, K), 0.0),
            "cos": (_cos(dot, norm2, m.tt), 1.0),
            "cos_local": (_cos(m.ht, m.hh, m.tt), 1.0),
            "lam_fresh": (fresh_lambda(m, B_prime), 0.0),
            "step_cap": (step_cap(m), 0.0),
        }
        totals = {
            "cos_all": _cos(dot.sum(), norm2.sum(), m.tt.sum()),
            "cos_local_all": _cos(m.ht.sum(), m.hh.sum(), m.tt.sum()),
        }
        if check is not None:
            values |= {
                "cos_held_out": (_cos(check["e_dot"], check["e_sq"], m.tt), 1.0),
                "end_bound": (check["end"].clamp_min(-1e300), 1.0),
                "end_point": (check["end_point"], 1.0),
            }
            totals["cos_held_out_all"] = _cos(check["e_dot"].sum(), check["e_sq"].sum(), m.tt.sum())
        full: dict[str, list[float]] = {}
        for name, (tensor, default) in values.items():
            full[name] = [default] * T
            for t, v in zip(self.modified, tensor.tolist()):
                full[name][t] = v
        return RefreshStats(
            self.step,
            B_prime,
            b_prime,
            self.a.tolist(),
            self.lam.tolist(),  # keywords: its fields
            **full,  # type: ignore[arg-type]
            **{k: float(v) for k, v in totals.items()},  # type: ignore[arg-type]
        )

    def _offset_views(self) -> Iterator[list[torch.Tensor]]:
        for chunk, t in zip(self.offset.split(self._sizes), self.modified):
            yield [v.view_as(p) for v, p in zip(chunk.split([p.numel() for p in self.params[t]]), self.params[t])]

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Offsets, scalars, step and refresh counters, and B."""
        return {
            "offset": self.offset.clone(),
            "a": self.a.clone(),
            "lam": self.lam.clone(),
            "step": self.step,
            "refreshes": self.refreshes,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; shapes must match this network."""
        if state["offset"].shape != self.offset.shape or state["a"].shape != self.a.shape:
            raise ValueError(
                f"BPModified state does not fit this network: offset {tuple(state['offset'].shape)} "
                f"vs {tuple(self.offset.shape)}, scalars {tuple(state['a'].shape)} vs {tuple(self.a.shape)}"
            )
        self.offset = state["offset"].to(self.offset.device, self.offset.dtype).clone()
        self.a, self.lam = state["a"].double().clone(), state["lam"].double().clone()
        self.step, self.refreshes = int(state["step"]), int(state["refreshes"])
        self.batch_size = state["batch_size"]
