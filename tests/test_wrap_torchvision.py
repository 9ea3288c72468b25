"""recede.wrap on torchvision classifiers: the model's own blocks, plain autograd at h = T (float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import check_wrap
from torch import nn

tv = pytest.importorskip("torchvision.models")
from torchvision.models import convnext, efficientnet, mobilenetv3  # noqa: E402

import recede  # noqa: E402


def _vgg() -> nn.Module:
    """A VGG with batch norm and a small classifier (VGG's own has 10^8 weights: built on meta, replaced)."""
    with torch.device("meta"):
        model = tv.VGG(tv.vgg.make_layers([4, "M", 8, 8, "M"], batch_norm=True), init_weights=False)
    model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.classifier = nn.Sequential(nn.Linear(8 * 7 * 7, 6), nn.ReLU(), nn.Dropout(0.0), nn.Linear(6, 3))
    return model


MV3 = mobilenetv3.InvertedResidualConfig
MODELS = {  # name -> (model maker, T)
    "resnet": (lambda: tv.ResNet(tv.resnet.BasicBlock, [1, 2, 1, 1], num_classes=3), 5),
    "wide-resnet": (lambda: tv.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], num_classes=3, width_per_group=16), 4),
    "vgg": (_vgg, 3),
    "mobilenet-v2": (
        lambda: tv.mobilenet_v2(num_classes=3, dropout=0.0, inverted_residual_setting=[[1, 8, 1, 1], [6, 8, 2, 2]]),
        3,
    ),
    "mobilenet-v3": (
        lambda: tv.MobileNetV3(
            [MV3(8, 3, 8, 8, True, "RE", 2, 1, 1.0), MV3(8, 3, 16, 16, False, "HS", 2, 1, 1.0)],
            last_channel=16,
            num_classes=3,
            dropout=0.0,
        ),
        2,
    ),
    "efficientnet": (
        lambda: tv.EfficientNet(
            [
                efficientnet.MBConvConfig(1, 3, 1, 8, 8, 1, 1.0, 1.0),
                efficientnet.MBConvConfig(6, 3, 2, 8, 16, 2, 1.0, 1.0),
            ],
            dropout=0.0,
            num_classes=3,
            last_channel=16,
        ),
        3,
    ),
    "convnext": (
        lambda: tv.ConvNeXt([convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 2)], num_classes=3),
        3,
    ),
    "vit": (
        lambda: tv.VisionTransformer(
            image_size=16, patch_size=4, num_layers=3, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
        ),
        3,
    ),
}


def _batch(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_h_T_is_plain_autograd_on_the_model_and_every_h_runs(name):
    make, T = MODELS[name]
    torch.manual_seed(0)
    net = check_wrap(make().double(), *_batch())
    assert net.T == T


def test_resnet_blocks_are_the_models_own_modules():
    model = MODELS["resnet"][0]()
    net = recede.wrap(model)
    stem, first = net.blocks[0]
    assert first is model.layer1[0] and stem.conv1 is model.conv1 and stem.maxpool is model.maxpool
    assert [net.blocks[t] for t in range(1, 5)] == [model.layer2[0], model.layer2[1], model.layer3[0], model.layer4[0]]
    assert net.head(net.T).fc is model.fc and stem.model is model
    x, y = _batch()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = model.fc.weight.detach().clone(), model.layer1[0].conv1.weight.detach().clone()
    recede.MPC(net, 2).backward(x.float(), y)
    opt.step()
    assert not torch.equal(before[0], model.fc.weight) and not torch.equal(before[1], model.layer1[0].conv1.weight)


def test_blocks_groups_and_heads_options():
    model = MODELS["resnet"][0]()
    grouped = recede.wrap(model, blocks=2)  # units 3 + 2
    assert grouped.T == 2 and list(grouped.blocks[1]) == [model.layer3[0], model.layer4[0]]
    assert grouped.head(2).fc is model.fc
    assert grouped.head(1).fc.in_features == 128  # layer2's width: an independent pool → linear head
    stage = recede.wrap(model, head="group")  # widths 64 | 128 128 | 256 | 512
    assert stage.head(2) is stage.head(3) and stage.head(1) is not stage.head(2)
    assert stage.head(5) is stage.head(stage.T)  # the last stage: the model's own fc path
    with pytest.raises(ValueError, match="cannot share the final head across depths"):
        recede.wrap(model, head="shared")
    vit = MODELS["vit"][0]()
    shared = recede.wrap(vit, head="shared")
    assert shared.shared_head and shared.head(1).heads is vit.heads
    independent = recede.wrap(vit)
    assert independent.head(1).fc.out_features == 3 and independent.head(1) is not independent.head(2)


def test_train_and_eval_follow_the_net():
    model = MODELS["vit"][0]().eval()
    net = recede.wrap(model)
    assert not model.training and not net.head(net.T).training  # wrapping leaves the mode alone
    net.train()
    assert model.training and model.encoder.layers[0].training
    net.eval()
    assert not model.training and not model.encoder.layers[0].training
    net.train()
    assert model.training and model.heads.training


class Overridden(tv.ResNet):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize(
    "model, message",
    [
        (lambda: tv.SqueezeNet(num_classes=3), r"found no blocks in torchvision SqueezeNet; name them with blocks="),
        (lambda: Overridden(tv.resnet.BasicBlock, [1, 1, 1, 1]), "Overridden overrides ResNet.forward"),
    ],
)
def test_unsupported_models_are_named(model, message):
    with pytest.raises(ValueError, match=message):
        recede.wrap(model())


@pytest.mark.parametrize("name", ["resnet", "vgg"])
def test_lokr_trains_only_adapters_and_heads_and_the_model_holds_the_adapters(name):
    pytest.importorskip("peft")
    from recede.models.peft_adapters import adapter_parameters, apply_adapter

    torch.manual_seed(0)
    model = MODELS[name][0]()
    net = apply_adapter(recede.wrap(model), "lokr")
    adapters = set(adapter_parameters(net))
    heads = {n for n, _ in net.named_parameters() if n.startswith("heads.")}
    x, y = _batch()
    x = x.float()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(2):  # LoKr's w2 starts at zero, so w1 first moves on the second step
        opt.zero_grad()
        recede.MPC(net, 2).backward(x, y)
        opt.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed & adapters and changed <= adapters | heads
    torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)  # the user's model is the trained one
