"""BPModified (Paper B eq. 5, SPEC §5): scalars, statistics, gradients, optimizers, state."""

from __future__ import annotations

import pytest
import torch
from conftest import resmlp_independent, slow_horizon_gradient
from torch.func import functional_call, grad, vmap
from torch.utils.data import TensorDataset

from recede import MPC, BlockNet, BPModified
from recede.bpm.estimator import block_moments
from recede.bpm.scalars import fresh_lambda, step_cap
from recede.methods import build_method, parse_method
from recede.models import build
from recede.reproduce import torch_threads


def small_net(T: int = 5, width: int = 4, classes: int = 3) -> BlockNet:
    return resmlp_independent(T, width, classes)


def classification_data(n: int, width: int = 4, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g, dtype=torch.get_default_dtype())
    return TensorDataset(x, (x[:, 0] * 3 + x[:, 1]).floor().long().remainder(classes))


def micro_batches(data: TensorDataset, size: int):
    x, y = data.tensors
    return list(zip(x.split(size), y.split(size)))


def block_grads(net: BlockNet, blocks: list[int]) -> list[torch.Tensor]:
    return [p.grad.clone() for t in blocks for p in net.block_parameters(t)]


# -- gradients -----------------------------------------------------------------------------


def test_lambda_one_a_zero_with_exact_statistics_reproduces_g_T(float64):
    torch.manual_seed(0)
    net, data = small_net(), classification_data(32)
    method = BPModified(
        net, horizon=1, period=1, offset_samples=32, micro_batch=8, rule="fixed", a=0.0, lam=1.0, batch_size=32
    )
    method.refresh(micro_batches(data, 8))
    x, y = data.tensors
    method.backward(x, y)
    got = block_grads(net, range(net.T))
    net.zero_grad(set_to_none=True)
    net.loss(x, y).backward()
    want = block_grads(net, range(net.T))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_backward_applies_eq_5_and_accumulates(float64):
    torch.manual_seed(1)
    net, data = small_net(), classification_data(64)
    method = BPModified(net, horizon=2, period=5, offset_samples=32, micro_batch=8, rule="paper", batch_size=16)
    method.refresh(micro_batches(data, 8)[:4])
    x, y = data.tensors[0][:16], data.tensors[1][:16]
    MPC(net, 2).backward(x, y)
    local = {p: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()}
    net.zero_grad(set_to_none=True)
    prior = {p: torch.randn_like(p) for p in net.parameters()}
    for p in net.parameters():
        p.grad = prior[p].clone()
    method.backward(x, y)
    views = dict(zip(method.modified, method._offset_views()))
    for t in range(net.T):
        for i, p in enumerate(net.block_parameters(t)):
            if t in views:
                a, lam = float(method.a[t]), float(method.lam[t])
                expected = a * local[p] + lam * views[t][i]
            else:
                assert t >= net.T - 2 and method.a[t] == 1 and method.lam[t] == 0
                expected = local[p]
            torch.testing.assert_close(p.grad, prior[p] + expected)
    for k in range(2, net.T + 1):  # heads trained as MPC trains them
        for p in net.head(k).parameters():
            torch.testing.assert_close(p.grad, prior[p] + local[p])
    assert method.modified == list(range(net.T - 2))


def test_refresh_leaves_grads_and_batchnorm_buffers_alone():
    torch.manual_seed(2)
    net = build("resnet62", widths=(3, 4), blocks_per_stage=2, num_classes=3, in_channels=2)
    batches = [(torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4,))) for _ in range(3)]
    for p in net.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = [b.clone() for b in net.buffers()]
    BPModified(net, 1, 1, 12, 4, batch_size=4).refresh(batches)
    assert all(bool((p.grad == 7).all()) for p in net.parameters())
    assert all(torch.equal(b, c) for b, c in zip(net.buffers(), before))


def per_sample_traces(net: BlockNet, data: TensorDataset, blocks: list[int]) -> torch.Tensor:
    """tr C_h, tr C_T, tr C_{h,T} per block (h = 1) from per-sample gradients by torch.func."""
    params = {name: p.detach() for name, p in net.named_parameters()}
    names = {id(p): name for name, p in net.named_parameters()}

    def losses(theta, x, y):
        x, y = x[None], y[None]
        z, local = x, []
        for t in range(net.T):
            out = functional_call(
                net.blocks[t],
                {n.split(".", 2)[2]: v for n, v in theta.items() if n.startswith(f"blocks.{t}.")},
                (z.detach(),),
            )
            local.append(
                functional_call(
                    net.heads[t],
                    {n.split(".", 2)[2]: v for n, v in theta.items() if n.startswith(f"heads.{t}.")},
                    (out,),
                )
            )
            z = out
        total = functional_call(net, theta, (x,))
        ff = sum(net.loss_fn(pred, y) for pred in local)
        return ff, net.loss_fn(total, y)

    g_ff = vmap(grad(lambda th, x, y: losses(th, x, y)[0]), (None, 0, 0))(params, *data.tensors)
    g_bp = vmap(grad(lambda th, x, y: losses(th, x, y)[1]), (None, 0, 0))(params, *data.tensors)
    out = []
    for t in blocks:
        keys = [names[id(p)] for p in net.block_parameters(t)]
        gh = torch.cat([g_ff[k].flatten(1) for k in keys], 1)
        gt = torch.cat([g_bp[k].flatten(1) for k in keys], 1)
        ch, ct = gh - gh.mean(0), gt - gt.mean(0)
        n = len(gh) - 1
        out.append(torch.stack([(ch * ch).sum() / n, (ct * ct).sum() / n, 2 * (ch * ct).sum() / n]))
    return torch.stack(out)


def test_micro_batch_traces_match_per_sample_gradients(float64):
    """SPEC §5: b' × the unbiased variance of micro-batch means estimates tr C per sample."""
    torch.manual_seed(3)
    net, data = small_net(T=4), classification_data(4096, seed=3)
    method = BPModified(net, 1, 1, 4096, 8, batch_size=8)
    m, _, _ = block_moments(method.accumulate(micro_batches(data, 8)), method._sizes)
    truth = per_sample_traces(net, data, method.modified)
    estimate = torch.stack([m.tr_h, m.tr_t, m.tr_ht], 1)
    # 512 micro-batches: the relative standard error of a variance is about sqrt(2/511) ≈ 6 %
    torch.testing.assert_close(estimate, truth, rtol=0.25, atol=1e-6 * float(truth.abs().max()))
    assert float(truth[:, 2].abs().min()) > 0  # the cross term is really exercised


def test_reduce_statistics_combines_workers(float64):
    """A data-parallel subclass that sums another worker's statistics equals one big refresh."""
    torch.manual_seed(4)
    net, data = small_net(), classification_data(64)
    batches = micro_batches(data, 8)
    whole = BPModified(net, 1, 3, 64, 8, rule="paper", batch_size=16)
    whole.refresh(batches)
    other = BPModified(net, 1, 3, 32, 8, batch_size=16).accumulate(batches[4:])

    class TwoWorkers(BPModified):
        def reduce_statistics(self, stats):
            return {k: v + other[k] for k, v in stats.items()}

    split = TwoWorkers(net, 1, 3, 32, 8, rule="paper", batch_size=16)
    split.refresh(batches[:4])
    torch.testing.assert_close(split.offset, whole.offset)
    torch.testing.assert_close(split.a, whole.a)
    torch.testing.assert_close(split.lam, whole.lam)


def test_bias_scaling_is_the_lambda_zero_ablation(float64):
    torch.manual_seed(5)
    net, data = small_net(), classification_data(64)
    method = BPModified(net, 1, 4, 64, 8, rule="bias", batch_size=16)
    method.refresh(micro_batches(data, 8))
    stats = method.accumulate(micro_batches(data, 8))
    m, _, _ = block_moments(stats, method._sizes)
    torch.testing.assert_close(method.a[method.modified], m.ht / m.hh)
    assert bool((method.lam == 0).all())
    assert method.last_stats.cos == pytest.approx([abs(c) for c in method.last_stats.cos_local])


def test_statistics_are_reported_and_logged(float64, caplog):
    torch.manual_seed(6)
    net, data = small_net(), classification_data(64)
    method = BPModified(net, 1, 4, 64, 8, rule="paper", batch_size=16)
    with caplog.at_level("INFO", logger="recede.bpm.estimator"):
        stats = method.refresh(micro_batches(data, 8))
    assert "refresh 1" in caplog.text
    assert len(stats.a) == len(stats.lam) == len(stats.bias) == len(stats.variance) == net.T
    assert stats.cos_all > stats.cos_local_all  # the offset turns ĝ towards g_T
    assert all(v >= 0 for v in stats.bias + stats.variance)
    assert stats.as_dict()["samples"] == 64


def test_robust_applies_an_offset_only_after_a_held_out_test(float64):
    """Refresh 1: λ = 0 (nothing tested yet).  Refresh 2, on other samples at the same weights:
    the last offset is tested on them (cos_held_out, end_bound) and λ = min(λ_start, c_lower₊, cap,
    max(2 λ_1, 0.1 cap)), cap = ‖ḡ_h‖/‖d̂‖: a probe.  Refresh 3: the applied offset still pays, λ grows."""
    torch.manual_seed(9)
    net, data = small_net(), classification_data(512, seed=9)
    batches = micro_batches(data, 8)
    method = BPModified(net, 1, 10, 256, 8, batch_size=16)
    first = method.refresh(batches[:32])
    assert first.lam == [0.0] * net.T and first.cos_held_out is None
    assert first.cos_all == pytest.approx(first.cos_local_all)
    stats = method.accumulate(batches[32:])
    offset_t = torch.stack(
        [
            (v.double() * w.double()).sum()
            for v, w in zip(method.offset.split(method._sizes), (stats["sum_t"] - stats["sum_h"]).split(method._sizes))
        ]
    )
    torch.testing.assert_close(stats["proj"], offset_t)  # Σ (m_T − m_h)·Δ over micro-batches
    second = method.refresh(batches[32:])
    m, _, _ = block_moments(stats, method._sizes)
    expected = torch.minimum(
        torch.minimum(fresh_lambda(m, 256), torch.tensor(second.end_bound[:-1]).clamp_min(0)), 0.1 * step_cap(m)
    )  # λ_1 = 0: at most the probe
    torch.testing.assert_close(method.lam[method.modified], expected)
    assert max(second.lam) > 0  # the weights did not move: the offset persists
    # the last estimator was the local gradient (λ = 0), so on the new samples it scores as the local one
    assert second.cos_held_out == pytest.approx(second.cos_local)
    assert second.cos_held_out_all == pytest.approx(second.cos_local_all)
    probe = method.lam[method.modified].clone()
    m3, _, _ = block_moments(method.accumulate(batches[:32]), method._sizes)
    third = method.refresh(batches[:32])
    assert third.cos_held_out_all > third.cos_local_all  # an offset that persists helps on held-out samples
    lam3 = method.lam[method.modified]
    assert bool((lam3 <= torch.maximum(2 * probe, 0.1 * step_cap(m3)) + 1e-12).all())
    assert float(lam3.max()) > float(probe.max())  # it grows while the applied offset pays


def test_staleness_and_robust_bounds_are_reported_against_a_plain_reference(float64):
    """end_point = (ḡ_T − ḡ_h)·Δ/‖Δ‖² on the new refresh's samples for the last offset Δ, with ḡ_h,
    ḡ_T the means of per-micro-batch autograd gradients (slow_horizon_gradient); lam_fresh and
    step_cap are the robust rule's λ_fresh = (1 − V/(B'‖d̂‖²))₊ and ‖ḡ_h‖/‖d̂‖ from the same means."""
    torch.manual_seed(4)
    net, data = small_net(), classification_data(128, seed=4)
    batches = micro_batches(data, 8)
    method = BPModified(net, 1, 10, 64, 8, rule="paper", batch_size=16)
    method.refresh(batches[:8])
    offset = [d.clone() for d in method.offset.split(method._sizes)]
    second = method.refresh(batches[8:])
    assert second.end_point is not None and second.lam_fresh is not None and second.step_cap is not None
    for i, t in enumerate(method.modified):
        params = net.block_parameters(t)
        per_batch = []
        for x, y in batches[8:]:
            g_h, g_t = (slow_horizon_gradient(net, x, y, h) for h in (1, net.T))
            per_batch.append(
                (torch.cat([g_h[p].reshape(-1) for p in params]), torch.cat([g_t[p].reshape(-1) for p in params]))
            )
        mean_h = sum(h for h, _ in per_batch) / len(per_batch)
        mean_t = sum(g for _, g in per_batch) / len(per_batch)
        d = mean_t - mean_h
        assert second.end_point[t] == pytest.approx(float(d @ offset[i] / (offset[i] @ offset[i])), rel=1e-9)
        diffs = torch.stack([g - h for h, g in per_batch])
        V = 8 * float(((diffs - d) ** 2).sum()) / (len(per_batch) - 1)  # per-sample trace: b' × var of the means
        assert second.lam_fresh[t] == pytest.approx(max(0.0, 1 - V / (64 * float(d @ d))), rel=1e-9, abs=1e-12)
        assert second.step_cap[t] == pytest.approx(float(mean_h.norm() / d.norm()), rel=1e-9)
    assert second.end_point[net.T - 1] == 1.0 and second.lam_fresh[net.T - 1] == 0.0  # the exact last block


def test_default_scaling_does_not_lose_to_ff_where_paper_b_s_does():
    """The 2-D spirals task at a tiny size (deterministic): BP-modified FF with Paper B's scalars
    ends below FF, the default (robust) does not."""
    from recede import data as datasets
    from recede.reproduce.bpm_robustness import run_one

    spec = {
        "model": "resmlp",
        "model_options": {"width": 10, "depth": 10, "loss": "cross-entropy"},
        "batch_size": 64,
        "epochs": 2,
        "optimizer": {"name": "sgd", "momentum": 0.9},
    }
    task = datasets.load("spirals", n=500, n_test=200)
    regime = {"period_epochs": 1.0, "offset_share": 0.0064, "micro_batch": 8}
    with torch_threads(1):
        ff, paper, robust = (
            run_one(spec, task, m, 0.03, 1, regime, s)
            for m, s in (("ff", None), ("bpm-ff", "paper"), ("bpm-ff", "robust"))
        )
    assert paper["metric"] is None or paper["metric"] <= ff["metric"] - 3  # points of test accuracy
    assert robust["metric"] >= ff["metric"] - 1.5  # within 3 of the 200 test points


# -- training ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
    ],
)
def test_trains_under_sgd_momentum_and_adam_on_its_own_schedule(optimizer):
    torch.manual_seed(7)
    net, data = small_net(T=6, width=4), classification_data(256, seed=7)
    method = BPModified(net, 1, period=8, offset_samples=32, micro_batch=8, data=data)
    opt = optimizer(net.parameters())
    x, y = data.tensors
    initial = float(net.loss(x, y).detach())
    for _ in range(5):
        for xb, yb in zip(x.split(32), y.split(32)):
            opt.zero_grad(set_to_none=True)
            method.backward(xb, yb)
            opt.step()
    assert method.step == 40 and method.refreshes == 5
    assert float(net.loss(x, y).detach()) < 0.9 * initial


def test_state_dict_round_trip(float64):
    torch.manual_seed(8)
    net, data = small_net(), classification_data(128)
    first = BPModified(net, 1, 3, 32, 8, data=data)
    x, y = data.tensors[0][:16], data.tensors[1][:16]
    for _ in range(4):
        net.zero_grad(set_to_none=True)
        first.backward(x, y)
    state = first.state_dict()
    second = BPModified(net, 1, 3, 32, 8, data=data)
    second.load_state_dict(state)
    grads = []
    for method in (first, second):  # step 4, 5: no refresh; step 6 refreshes with draw 2
        for _ in range(3):
            net.zero_grad(set_to_none=True)
            method.backward(x, y)
        grads.append(block_grads(net, range(net.T)))
    assert second.step == first.step == 7 and second.refreshes == first.refreshes == 3
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        BPModified(small_net(T=3), 1, 3, 32, 8).load_state_dict(state)


def test_bad_settings_are_named():
    net = small_net()
    with pytest.raises(ValueError, match="multiple of"):
        BPModified(net, 1, 4, 30, 8)
    with pytest.raises(ValueError, match="rule"):
        BPModified(net, 1, 4, 32, 8, rule="best")
    with pytest.raises(ValueError, match="fixed"):
        BPModified(net, 1, 4, 32, 8, rule="fixed", a=1.0)
    with pytest.raises(ValueError, match="period"):
        BPModified(net, 1, 0, 32, 8)
    with pytest.raises(ValueError, match="horizon"):
        BPModified(net, 9, 4, 32, 8)
    method = BPModified(net, 1, 4, 32, 8, batch_size=4)
    with pytest.raises(ValueError, match="b' = 8"):
        method.refresh(
            [
                (torch.randn(8, 4), torch.zeros(8, dtype=torch.long)),
                (torch.randn(4, 4), torch.zeros(4, dtype=torch.long)),
            ]
        )
    with pytest.raises(ValueError, match="two micro-batches"):
        method.refresh([(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))])


# -- method names --------------------------------------------------------------------------


def test_bpm_method_names_build_bp_modified_engines():
    data = classification_data(200)
    net = small_net(T=6)
    assert parse_method("bpm-mpc:3").label == "MPC(h=3)+BPM"
    ff = build_method(net, "bpm-ff", refresh_data=data, batch_size=20)
    assert isinstance(ff, BPModified) and ff.horizon == 1 and ff.period == 10
    assert ff.offset_samples == 16 and ff.micro_batch == 8
    loco = build_method(net, "bpm-loco:3", refresh_data=data, period=5, offset_samples=24)
    assert loco.net.T == 3 and loco.horizon == 2 and loco.modified == [0]
    assert isinstance(build_method(net, "ff", refresh_data=data), MPC)
    with pytest.raises(ValueError, match="refresh_data"):
        build_method(net, "bpm-mpc:2")
    with pytest.raises(ValueError, match="not bp"):
        parse_method("bpm-bp")


def test_a_rule_function_replaces_the_named_rule(float64):
    """``rule=`` takes an a/λ rule (:data:`recede.bpm.estimator.Rule`): the robust rule passed as
    such a function gives the named rule's scalars, and another function's a and λ are used as given."""
    from recede.bpm.scalars import robust_scalars

    torch.manual_seed(6)
    net, data = small_net(), classification_data(64)
    named = BPModified(net, 1, 4, 64, 8, batch_size=16)
    given = BPModified(
        net,
        1,
        4,
        64,
        8,
        batch_size=16,
        rule=lambda m, B_prime, check, previous: robust_scalars(
            m, B_prime, None if check is None else check["end"], previous
        ),
    )
    for _ in range(2):  # the second refresh passes the held-out check to the rule
        named.refresh(micro_batches(data, 8))
        given.refresh(micro_batches(data, 8))
    torch.testing.assert_close(given.a, named.a)
    torch.testing.assert_close(given.lam, named.lam)
    seen = []

    def half(m, B_prime, check, previous):
        seen.append((B_prime, check is None))
        return torch.full_like(m.hh, 2.0), torch.full_like(m.hh, 0.5)

    custom = BPModified(net, 1, 4, 64, 8, rule=half, batch_size=16)
    custom.refresh(micro_batches(data, 8))
    custom.refresh(micro_batches(data, 8))
    assert seen == [(64, True), (64, False)]
    assert custom.a[custom.modified].tolist() == [2.0] * len(custom.modified)
    assert custom.lam[custom.modified].tolist() == [0.5] * len(custom.modified)
    with pytest.raises(ValueError, match="unknown rule"):
        BPModified(net, 1, 4, 64, 8, rule="nope")
