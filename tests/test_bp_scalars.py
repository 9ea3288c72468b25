"""The scalars of the BP-modified loss (recede.bpm.scalars): Paper B's minimiser of E(a, λ) and the
robust rule (a = 1, λ = min(λ_start, max(0, c_lower), ‖ḡ_h‖/‖d̂‖))."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recede.bpm.scalars import (
    BlockMoments,
    end_coefficient,
    fresh_lambda,
    offset_signal,
    one_step_error,
    paper_scalars,
    robust_scalars,
    step_cap,
)


def random_moments(n_blocks: int, seed: int) -> BlockMoments:
    """Moments of random per-sample gradient populations with a shared and a local part."""
    g = torch.Generator().manual_seed(seed)
    d, n = 6, 40
    rows = []
    for _ in range(n_blocks):
        scale = 10 ** (4 * torch.rand((), generator=g) - 2)
        g_t = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.randn(d, generator=g, dtype=torch.float64)
        mix = torch.rand((), generator=g, dtype=torch.float64)
        g_h = (
            mix * g_t
            + scale * torch.randn(n, d, generator=g, dtype=torch.float64)
            + torch.randn(d, generator=g, dtype=torch.float64) * 2
        )
        rows.append(moments_of(g_h, g_t))
    return BlockMoments(*torch.tensor(rows, dtype=torch.float64).T)


def moments_of(g_h: torch.Tensor, g_t: torch.Tensor) -> list[float]:
    """[‖ḡ_h‖², ḡ_h·ḡ_T, ‖ḡ_T‖², tr C_h, tr C_T, tr C_{h,T}] of per-sample rows (unbiased traces)."""
    n = len(g_h)
    mh, mt = g_h.mean(0), g_t.mean(0)
    ch, ct = g_h - mh, g_t - mt
    return [
        float(v)
        for v in (
            mh @ mh,
            mh @ mt,
            mt @ mt,
            (ch * ch).sum() / (n - 1),
            (ct * ct).sum() / (n - 1),
            2 * (ch * ct).sum() / (n - 1),
        )
    ]


def one(i: int, m: BlockMoments) -> BlockMoments:
    return BlockMoments(*(getattr(m, f)[i] for f in ("hh", "ht", "tt", "tr_h", "tr_t", "tr_ht")))


# -- paper ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("B, B_prime, K", [(64, 320, 1), (32, 64, 50), (8, 16, 700)])
def test_paper_scalars_minimise_the_one_step_error_on_a_grid(B, B_prime, K):
    m = random_moments(8, seed=B + K)
    a, lam = paper_scalars(m, B, B_prime, K)
    assert bool(((lam >= 0) & (lam <= 1)).all())
    best = one_step_error(a, lam, m, B, B_prime, K)
    grid_a = torch.linspace(-3, 3, 1201, dtype=torch.float64)
    grid_lam = torch.linspace(0, 1, 501, dtype=torch.float64)
    A, L = torch.meshgrid(grid_a, grid_lam, indexing="ij")
    for i in range(len(m.hh)):
        mi = one(i, m)
        grid = one_step_error(A, L, mi, B, B_prime, K)
        assert float(best[i]) <= float(grid.min()) * (1 + 1e-9) + 1e-12
        # and it is a stationary point: neither variable can improve on its own
        for da, dl in ((1e-4, 0), (-1e-4, 0), (0, 1e-4), (0, -1e-4)):
            trial = one_step_error(a[i] + da, (lam[i] + dl).clamp(0, 1), mi, B, B_prime, K)
            assert float(trial) >= float(best[i]) - 1e-12 * (1 + float(best[i]))


def test_paper_scalars_limits():
    """Eq. 18's limits: pure bias and a noiseless offset → λ = 1; an unbiased local gradient
    and a noisy offset → λ = 0, a = 1."""
    one_, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    biased_noiseless = BlockMoments(hh=one_, ht=zero, tt=one_, tr_h=zero, tr_t=zero, tr_ht=zero)
    a, lam = paper_scalars(biased_noiseless, 64, 320, 10)
    assert float(lam) == pytest.approx(1.0)
    unbiased = BlockMoments(hh=one_, ht=one_, tt=one_, tr_h=one_, tr_t=100 * one_, tr_ht=zero)
    a, lam = paper_scalars(unbiased, 64, 320, 10)
    assert float(lam) == pytest.approx(0.0, abs=1e-3) and float(a) == pytest.approx(1.0, abs=0.05)


def test_paper_scalars_can_choose_a_negative_or_huge_a():
    """The failure the robust rule avoids: a local gradient nearly orthogonal to, or much smaller
    than, the true one gives Paper B's a* < 0 or ≫ 1 (a_bias = ḡ_h·ḡ_T / ‖ḡ_h‖²)."""

    def t(*v: float) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float64)

    m = BlockMoments(
        hh=t(1.0, 1e-4), ht=t(-0.5, 0.01), tt=t(1.0, 1.0), tr_h=t(0.1, 1e-4), tr_t=t(50.0, 50.0), tr_ht=t(0.0, 0.0)
    )
    a, _ = paper_scalars(m, 64, 320, 782)
    assert float(a[0]) < 0 and float(a[1]) > 10


# -- robust --------------------------------------------------------------------------------------


def test_fresh_lambda_is_the_positive_part_james_stein_factor():
    m = random_moments(6, seed=1)
    d2 = m.hh - 2 * m.ht + m.tt
    v = m.tr_h + m.tr_t - m.tr_ht
    torch.testing.assert_close(fresh_lambda(m, 16), (1 - v / (16 * d2)).clamp_min(0))
    torch.testing.assert_close(offset_signal(m, 16), d2 - v / 16)


def test_james_stein_offset_has_less_error_than_the_raw_offset(float64):
    """On Monte-Carlo refreshes (B' = 16 in 2 micro-batches, as at CPU scale), λ_start d̂ is
    closer to the true bias d than d̂ is, and λ_start → 1 when the noise vanishes."""
    g = torch.Generator().manual_seed(0)
    p, B_prime, b_prime = 50, 16, 8
    d = torch.randn(p, generator=g) * 0.3
    raw, shrunk, lams = [], [], []
    for _ in range(400):
        g_h = torch.randn(B_prime, p, generator=g)
        g_t = g_h + d + torch.randn(B_prime, p, generator=g) * torch.linspace(0.1, 3, p)
        means_h, means_t = g_h.view(2, b_prime, p).mean(1), g_t.view(2, b_prime, p).mean(1)
        m = micro_batch_moments(means_h, means_t, b_prime)
        lam = float(fresh_lambda(m, B_prime))
        d_hat = g_t.mean(0) - g_h.mean(0)
        raw.append(float(((d_hat - d) ** 2).sum()))
        shrunk.append(float(((lam * d_hat - d) ** 2).sum()))
        lams.append(lam)
    assert sum(shrunk) < 0.8 * sum(raw)
    assert 0 < sum(lams) / len(lams) < 1
    quiet = micro_batch_moments(torch.zeros(2, p), torch.stack([d, d]) + 1e-6 * torch.randn(2, p, generator=g), 8)
    assert float(fresh_lambda(quiet, 16)) == pytest.approx(1.0, abs=1e-6)


def micro_batch_moments(means_h: torch.Tensor, means_t: torch.Tensor, b_prime: int) -> BlockMoments:
    """Moments as recede.bpm.estimator.block_moments forms them from micro-batch means."""
    n = len(means_h)
    mh, mt = means_h.mean(0), means_t.mean(0)
    hh, ht, tt = mh @ mh, mh @ mt, mt @ mt
    k = b_prime / (n - 1)
    return BlockMoments(
        hh,
        ht,
        tt,
        k * ((means_h**2).sum() - n * hh),
        k * ((means_t**2).sum() - n * tt),
        2 * k * ((means_h * means_t).sum() - n * ht),
    )


def test_end_coefficient_is_a_lower_confidence_bound():
    def f64(*v: float) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float64)

    cross, norm_sq, se = f64(2.0, -1.0, 5.0), f64(4.0, 1.0, 0.0), f64(0.5, 0.1, 1.0)
    got = end_coefficient(cross, norm_sq, se, 20)  # three blocks: level 1 − 0.025/3, t(19) = 2.625
    torch.testing.assert_close(got[:2], (cross[:2] - 2.6251 * se[:2]) / norm_sq[:2], rtol=1e-4, atol=1e-9)
    assert got[2] == -torch.inf  # no last offset to test
    assert float(end_coefficient(f64(3.0), f64(4.0), f64(0.0), 2)) == 0.75  # no noise: c itself
    # two micro-batches: Student's t with one degree of freedom, 12.7 standard errors
    assert float(end_coefficient(f64(3.0), f64(1.0), f64(0.2), 2)) == pytest.approx(3.0 - 12.7062 * 0.2, rel=1e-5)


def test_end_coefficient_covers_the_truth_at_its_level():
    """Monte Carlo: for one block the bound lies below the true c in about 97.5 % of refreshes."""
    g = torch.Generator().manual_seed(7)
    delta, d_true, n = (
        torch.randn(30, generator=g, dtype=torch.float64),
        torch.randn(30, generator=g, dtype=torch.float64),
        6,
    )
    c_true = float(d_true @ delta / (delta @ delta))
    below = 0
    for _ in range(2000):
        proj = (d_true + 3 * torch.randn(n, 30, generator=g, dtype=torch.float64)) @ delta  # micro-batch projections
        se = proj.std() / n**0.5
        below += float(end_coefficient(proj.mean()[None], (delta @ delta)[None], se[None], n)) <= c_true
    assert 0.96 < below / 2000 < 0.99


def test_robust_first_refresh_is_the_local_method():
    m = random_moments(5, seed=3)
    a, lam = robust_scalars(m, 64, None)
    assert bool((a == 1).all()) and bool((lam == 0).all())


def test_robust_falls_back_to_the_local_method_where_the_offset_cannot_help():
    """λ = 0 where the offset is lost in its noise (D ≤ 0) or went stale / overshot (c_lower ≤ 0)."""
    m = random_moments(4, seed=4)
    noisy = offset_signal(m, 2) <= 0
    assert bool(noisy.any())
    _, lam = robust_scalars(m, 2, torch.ones(4, dtype=torch.float64))
    assert bool((lam[noisy] == 0).all())
    _, lam = robust_scalars(m, 10_000, torch.tensor([-0.5, 0.0, -torch.inf, 0.3], dtype=torch.float64))
    assert lam[:3].tolist() == [0, 0, 0] and 0 < float(lam[3]) <= 0.3


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    B_prime=st.integers(2, 5000),
    end=st.lists(st.floats(-1e6, 1e6), min_size=4, max_size=4),
    previous=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_robust_scalars_are_bounded(seed, B_prime, end, previous):
    """a is always 1 (never negative or unbounded); 0 ≤ λ ≤ min(λ_start, max(0, c_lower), cap,
    max(2 λ_{r−1}, 0.1 cap)) ≤ 1 with cap = ‖ḡ_h‖/‖d̂‖."""
    m = random_moments(4, seed)
    previous = torch.tensor(previous, dtype=torch.float64)
    a, lam = robust_scalars(m, B_prime, torch.tensor(end, dtype=torch.float64), previous)
    assert bool((a == 1).all())
    assert bool(((lam >= 0) & (lam <= 1)).all())
    assert bool((lam <= fresh_lambda(m, B_prime) + 1e-15).all())
    assert bool((lam <= torch.tensor(end, dtype=torch.float64).clamp_min(0) + 1e-15).all())
    assert bool((lam <= step_cap(m) + 1e-15).all())
    assert bool((lam <= torch.maximum(2 * previous, 0.1 * step_cap(m)) + 1e-15).all())


def test_robust_lambda_grows_from_a_probe_while_the_applied_offset_pays():
    """The evidence c_lower comes from a period run with the last λ, so λ starts as a probe (an
    offset a tenth of the local gradient's length) and at most doubles per refresh up to what
    λ_start, c_lower and the cap allow; an applied offset that overshot (c_lower ≤ 0) stops it."""
    g_h = torch.tensor([4.0, 0.0], dtype=torch.float64)
    g_t = g_h + torch.tensor([0.0, 1.0], dtype=torch.float64)  # d̂ = (0, 1): cap = 4
    m = BlockMoments(
        (g_h @ g_h)[None],
        (g_h @ g_t)[None],
        (g_t @ g_t)[None],
        *(torch.zeros(1, dtype=torch.float64) for _ in range(3)),
    )
    still_pays = torch.full((1,), 0.9, dtype=torch.float64)
    lam, path = torch.zeros(1, dtype=torch.float64), []
    for _ in range(4):
        _, lam = robust_scalars(m, 64, still_pays, lam)
        path.append(float(lam))
    assert path == pytest.approx([0.4, 0.8, 0.9, 0.9])  # 0.1 × cap, doubled, then c_lower binds
    _, lam = robust_scalars(m, 64, torch.full((1,), -0.6, dtype=torch.float64), lam)
    assert float(lam) == 0


def test_robust_lambda_never_increases_the_period_error():
    """With the bias moving linearly within the period from d_0 to d_K (no noise), λ never exceeds
    the period's best λ*, so E_K(1, λ) ≤ E_K(1, 0) (module docstring)."""
    g = torch.Generator().manual_seed(5)
    applied = 0
    for _ in range(200):
        g_h, d0, dK = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(3))
        g_h, d0 = g_h * 4, d0 * 3
        g_t = g_h + d0  # no noise: the measured offset is d_0
        m = BlockMoments(g_h @ g_h, g_h @ g_t, g_t @ g_t, *(torch.zeros((), dtype=torch.float64) for _ in range(3)))
        end = (dK @ d0) / (d0 @ d0)  # what this offset is worth at the period's end
        _, lam = robust_scalars(m, 64, end)
        steps = [d0 + (dK - d0) * k / 99 for k in range(100)]

        def error(lam: float, d0: torch.Tensor = d0, steps: list = steps) -> float:
            return sum(float(((d - lam * d0) ** 2).sum()) for d in steps)

        assert error(float(lam)) <= error(0.0) + 1e-9
        applied += float(lam) > 0
    assert applied > 50  # the offset is used where it helps


def test_robust_offset_never_outgrows_the_local_gradient():
    """M2 at lr 0.03 after an early blow-up: the true gradient 1000 times the local one.  Without
    the cap λ would be ≈ 1 (noiseless, fresh, still valid at the period's end); with it the
    offset adds at most the local gradient's length."""
    g_h = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g_t = g_h + torch.tensor([0.0, 1000.0], dtype=torch.float64)
    m = BlockMoments(
        (g_h @ g_h)[None],
        (g_h @ g_t)[None],
        (g_t @ g_t)[None],
        *(torch.zeros(1, dtype=torch.float64) for _ in range(3)),
    )
    _, lam = robust_scalars(m, 64, torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert float(fresh_lambda(m, 64)) == 1 and float(lam) == pytest.approx(1e-3)
