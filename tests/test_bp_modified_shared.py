"""BP-modified on shared and tied parameters: each use is its block's term, scaled once (SPEC §1, §5).

The tied net must give exactly what the same net with every use untied gives, summed back onto
the shared parameter: per block the same statistics, the same a and λ, the same offset.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, untie

from recede import BPModified

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("rule", [None, "bias", "fixed"])
@pytest.mark.parametrize("h", [1, 2])
@pytest.mark.parametrize("name", ["shared-blocks", "tied-embedding", "head-tied-to-block0"])
def test_each_use_is_scaled_once(name, h, rule):
    torch.manual_seed(0)
    make, sample = ARCHITECTURES[name]
    net = make()
    untied, origin = untie(net)
    micro_batches = [sample() for _ in range(4)]
    x, y = sample()
    options = {"a": 0.7, "lam": 0.4} if rule == "fixed" else {}
    if rule is not None:
        options["rule"] = rule
    for model in (net, untied):
        method = BPModified(model, h, period=5, offset_samples=32, micro_batch=8, batch_size=8, **options)
        method.refresh(micro_batches)
        model.zero_grad(set_to_none=True)
        method.backward(x, y)
    expected: dict = {}
    for copy, original in origin.items():
        if copy.grad is not None:
            expected[original] = expected[original] + copy.grad if original in expected else copy.grad
    assert {id(p) for p in expected} == {id(p) for p in net.parameters() if p.grad is not None}
    for p, g in expected.items():
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
