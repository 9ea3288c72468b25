"""recede.wrap by structure on vision models: torchvision Swin, RegNet, DenseNet, ShuffleNet and
timm models read by their ``blocks``/``stages`` conventions, cut by the generic path (float64).

``check_wrap`` (conftest) asserts that the net is the model bit for bit, that every h runs and
that h = T is plain autograd on ``cross_entropy(model(x), y)``; a slow per-use reference checks
every h on one model of each library (:func:`conftest.slow_horizon_gradient`).
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_blocks_get_g_h, check_wrap
from torch import nn

import recede

tv = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")
from torchvision.models import regnet, swin_transformer  # noqa: E402


def _swin(v2: bool = False) -> nn.Module:
    extra = (
        dict(block=swin_transformer.SwinTransformerBlockV2, downsample_layer=swin_transformer.PatchMergingV2)
        if v2
        else {}
    )
    return tv.SwinTransformer(
        patch_size=[2, 2],
        embed_dim=8,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[2, 2],
        num_classes=3,
        stochastic_depth_prob=0.0,
        **extra,
    )


def _regnet() -> nn.Module:
    params = regnet.BlockParams(
        depths=[1, 2],
        widths=[8, 16],
        group_widths=[8, 8],
        bottleneck_multipliers=[1.0, 1.0],
        strides=[2, 2],
        se_ratio=0.25,
    )
    return tv.RegNet(params, num_classes=3, stem_width=8)


TIMM_VIT = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
MODELS = {  # name -> (maker, image side, T)
    "tv-swin": (_swin, 16, 2),
    "tv-swin-v2": (lambda: _swin(v2=True), 16, 2),
    "tv-regnet": (_regnet, 16, 3),
    "tv-densenet": (
        lambda: tv.DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=3),
        32,
        2,
    ),
    "tv-shufflenet": (lambda: tv.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 32], num_classes=3), 32, 3),
    "timm-beit": (lambda: timm.create_model("beit_base_patch16_224", num_classes=3, **TIMM_VIT), 16, 2),
    "timm-eva02": (lambda: timm.create_model("eva02_tiny_patch14_224", num_classes=3, img_size=14, depth=2), 14, 2),
}
SLOW = {  # the other timm models, at their smallest (a few seconds each in float64)
    "timm-nfnet": (lambda: timm.create_model("test_nfnet", num_classes=3), 32, None),
    "timm-mobilevitv2": (lambda: timm.create_model("mobilevitv2_050", num_classes=3), 32, 9),
    "timm-levit": (lambda: timm.create_model("levit_128s", num_classes=3, img_size=32), 32, 9),
    "timm-regnety": (lambda: timm.create_model("regnety_002", num_classes=3), 32, 13),
    "timm-efficientvit": (lambda: timm.create_model("efficientvit_b0", num_classes=3), 32, 10),
    "timm-efficientvit-msra": (lambda: timm.create_model("efficientvit_m0", num_classes=3, img_size=32), 32, 6),
}


def _batch(side: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, side, side, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _check(make, side: int, T: int | None) -> recede.BlockNet:
    torch.manual_seed(0)
    net = check_wrap(make().double(), *_batch(side), horizons="ends")
    assert T is None or net.T == T
    return net


@pytest.mark.parametrize("name", sorted(MODELS))
def test_h_T_is_plain_autograd_on_the_model(name):
    _check(*MODELS[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_h_T_is_plain_autograd_on_the_model_slow(name):
    _check(*SLOW[name])


@pytest.mark.parametrize("name", ["tv-swin", "tv-densenet", "timm-beit"])
def test_every_h_is_g_h(name):
    make, side, _ = MODELS[name]
    torch.manual_seed(0)
    model = make().double()
    net, (x, y) = recede.wrap(model), _batch(side)
    assert_blocks_get_g_h(net, x, y)


def test_the_blocks_and_the_earlier_heads_are_read_from_the_structure():
    model = _swin()
    net = recede.wrap(model)
    assert net.blocks[0].block is model.features[1][0] and net.blocks[1].block is model.features[3][0]
    assert net.blocks[1].features_2 is model.features[2]  # patch merging rides with the next block
    assert net.head(1).fc.in_features == 8 and net.head(1).axis == -1  # Swin's maps are (N, H, W, C)
    dense = recede.wrap(tv.DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=3))
    assert dense.head(1).fc.in_features == 12 and dense.head(1).axis == 1  # 8 + 4: the concatenation
