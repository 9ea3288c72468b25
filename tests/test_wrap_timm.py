"""recede.wrap on timm classifiers: the model's own blocks, plain autograd at h = T (float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import check_wrap

timm = pytest.importorskip("timm")

import recede  # noqa: E402

VIT = dict(num_classes=3, img_size=16, patch_size=4, embed_dim=8, depth=3, num_heads=2)
MODELS = {  # name -> (timm.create_model arguments, wrap options, T)
    "resnet": (("test_resnet",), dict(head="group"), 4),
    "resnet50-tiny": (("resnet50", dict(layers=(1, 2, 1, 1), channels=(2, 4, 4, 8))), {}, 5),
    "convnext": (("test_convnext",), dict(blocks=3), 3),
    "convnext-conv-mlp": (("test_convnext3",), {}, 4),
    "efficientnet": (("test_efficientnet",), {}, 5),
    "mobilenetv3": (("mobilenetv3_small_050",), dict(blocks=4), 4),
    "vit": (("vit_base_patch16_224", VIT), dict(head="shared"), 3),
    "vit-registers-avg": (
        ("vit_base_patch16_224", dict(VIT, reg_tokens=2, class_token=False, global_pool="avg", no_embed_class=True)),
        {},
        3,
    ),
    "vit-attention-pool": (("vit_base_patch16_224", dict(VIT, global_pool="map", reg_tokens=1)), {}, 3),
    "vit-dynamic-size": (("vit_base_patch16_224", dict(VIT, dynamic_img_size=True)), dict(head="group"), 3),
}


def _model(name: str):
    args = MODELS[name][0]
    options = args[1] if len(args) > 1 else {}
    return timm.create_model(args[0], pretrained=False, **{"num_classes": 3, **options})


def _batch(side: int = 16, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, side, side, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_h_T_is_plain_autograd_on_the_model_and_every_h_runs(name):
    torch.manual_seed(0)
    _, options, T = MODELS[name]
    net = check_wrap(_model(name).double(), *_batch(16 if name.startswith("vit") else 32), **options)
    assert net.T == T


def test_blocks_are_the_models_own_modules():
    model = _model("convnext")
    net = recede.wrap(model)
    stem, first = net.blocks[0]
    assert stem.stem is model.stem and first is model.stages[0].blocks[0]
    downsample, block = net.blocks[1]  # the second stage's downsampling rides with its first block
    assert downsample is model.stages[1].downsample and block is model.stages[1].blocks[0]
    assert net.head(net.T).head is model.head and net.head(net.T).norm_pre is model.norm_pre
    vit = _model("vit")
    net = recede.wrap(vit)
    embedding, first = net.blocks[0]
    assert first is vit.blocks[0] and embedding.patch_embed is vit.patch_embed
    assert embedding.pos_embed is vit.pos_embed and embedding.cls_token is vit.cls_token
    assert all(net.blocks[t] is vit.blocks[t] for t in (1, 2))
    assert {id(p) for p in vit.parameters()} <= {id(p) for p in net.parameters()}


def test_heads_are_sized_by_block_widths():
    net = recede.wrap(_model("resnet50-tiny"))  # bottleneck outputs 8 | 16 16 | 16 | 32
    assert [net.head(k).fc.in_features for k in range(1, net.T)] == [8, 16, 16, 16]
    vit = recede.wrap(_model("vit-registers-avg"))
    head = vit.head(1)
    assert (head.pool, head.prefix, head.fc.in_features) == ("avg", 2, 8)
    with pytest.raises(ValueError, match="no heads for earlier depths of their own: pass head="):
        recede.wrap(timm.create_model("test_resnet", num_classes=0))


def test_the_heads_dropout_follows_net_train_and_eval():
    model = timm.create_model("test_resnet", num_classes=3, drop_rate=0.5)
    net = recede.wrap(model)
    x, _ = _batch(32)
    x = x.float()
    net.eval()
    assert not model.training
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
    net.train()
    assert model.training
    torch.manual_seed(1)
    dropped = net(x)
    torch.manual_seed(1)
    torch.testing.assert_close(dropped, model(x), rtol=0, atol=0)
    assert not torch.equal(dropped, net.eval()(x))


def test_one_step_at_h_T_is_plain_pytorch_with_batchnorm_and_dropout():
    import copy

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=3, drop_rate=0.5, drop_path_rate=0.2).double()
    plain = copy.deepcopy(model)
    x, y = _batch(32)
    net = recede.wrap(model)  # new heads draw their initial weights here
    torch.manual_seed(1)
    recede.MPC(net, net.T).backward(x, y)
    after_wrapped = torch.get_rng_state()
    torch.manual_seed(1)
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    assert torch.equal(after_wrapped, torch.get_rng_state())  # the same dropout draws, no more
    for (name, b), ref in zip(model.named_buffers(), plain.buffers()):
        assert torch.equal(b, ref), name  # BatchNorm statistics and num_batches_tracked
    for (name, p), ref in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_compiled_blocks_give_the_eager_gradients_at_every_h():
    import copy

    torch.manual_seed(0)
    eager = recede.wrap(_model("vit-registers-avg").double())
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="aot_eager")
    x, y = _batch()
    for h in range(1, eager.T + 1):
        for net in (eager, compiled):
            net.zero_grad(set_to_none=True)
            recede.MPC(net, h).backward(x, y)
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            assert (p.grad is None) == (q.grad is None), (h, name)
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=f"h={h} {name}")


class Custom(timm.models.VisionTransformer):
    def forward_features(self, x):
        return super().forward_features(x) * 2


@pytest.mark.parametrize(
    "model, message",
    [
        (lambda: Custom(**VIT), "Custom overrides VisionTransformer.forward_features"),
    ],
)
def test_unsupported_models_are_named(model, message):
    with pytest.raises(ValueError, match=message):
        recede.wrap(model())
