"""Model registry: every model at tiny size under the horizon engine; the timm builders are
recede.wrap of the timm model; LoRA/LoKr train only adapters and heads; local weights files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recede.core.engine import MPC
from recede.methods import build_method
from recede.models import available, build

timm = pytest.importorskip("timm")
pytest.importorskip("peft")

from recede.models.peft_adapters import adapter_parameters, apply_adapter  # noqa: E402
from recede.models.weights import load_weights  # noqa: E402

TINY_RESNET50 = dict(num_classes=3, layers=(1, 2, 1, 1), channels=(2, 4, 4, 8))
TINY_VIT = dict(num_classes=3, img_size=8, patch_size=4, embed_dim=8, depth=3, num_heads=2)


def _tiny_sequential() -> dict:
    seq = nn.Sequential(
        nn.Sequential(nn.Linear(6, 5), nn.Tanh()), nn.Sequential(nn.Linear(5, 5), nn.Tanh()), nn.Linear(5, 5)
    )
    return dict(model=seq, head=nn.Linear(5, 3))


TINY = {  # name -> (options, input shape without batch, targets: "class", "ids" or number of outputs)
    "linear-resnet": (lambda: dict(width=4, depth=5), (4,), 4),
    "resmlp": (lambda: dict(width=4, depth=5), (1,), 4),
    "resnet62": (lambda: dict(num_classes=3, widths=(2, 4), blocks_per_stage=2), (3, 8, 8), "class"),
    "resnet50": (lambda: dict(TINY_RESNET50), (3, 16, 16), "class"),
    "vit-b16": (lambda: dict(TINY_VIT), (3, 8, 8), "class"),
    "sequential": (_tiny_sequential, (6,), "class"),
    "gpt2": (lambda: dict(vocab_size=32, n_positions=8, n_layer=3, n_embd=8, n_head=2), (8,), "ids"),
    "llama": (
        lambda: dict(
            vocab_size=32, n_positions=8, n_layer=3, hidden_size=8, n_head=2, n_kv_head=1, intermediate_size=12
        ),
        (8,),
        "ids",
    ),
}


def _batch(shape: tuple[int, ...], target: int | str, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if target == "ids":  # a language model: token ids, the targets are the ids themselves
        x = torch.randint(0, 32, (n, *shape), generator=g)
        return x, x
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = (
        torch.randint(0, 3, (n,), generator=g)
        if target == "class"
        else torch.randn(n, target, generator=g, dtype=torch.float64)
    )
    return x, y


def _grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-12, msg=name)


def test_every_registered_model_has_a_tiny_configuration():
    assert sorted(TINY) == available()


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_runs_every_horizon_and_h_T_is_backprop(name):
    options, shape, target = TINY[name]
    torch.manual_seed(0)
    net = build(name, **options()).double()
    x, y = _batch(shape, target)
    for h in sorted({1, (net.T + 1) // 2, net.T}):
        net.zero_grad()
        loss = MPC(net, h).backward(x, y)
        assert torch.isfinite(torch.tensor(loss))
        for t in range(net.T):
            assert all(p.grad is not None for p in net.block_parameters(t)), (h, t)
    mpc = _grads(net)  # h = T, the last horizon run
    net.zero_grad()
    net.loss(x, y).backward()
    _assert_same_grads(mpc, _grads(net))


def test_timm_builders_wrap_the_timm_model_with_its_head_options():
    torch.manual_seed(0)
    stage = build("resnet50", head="group", **TINY_RESNET50)  # widths 8 | 16 16 | 16 | 32
    assert len({id(stage.head(k)) for k in range(1, stage.T + 1)}) == 3  # one per run of equal widths
    assert stage.head(2) is stage.head(4) and stage.head(5) is stage.head(stage.T)  # last: timm's fc path
    assert type(stage.head(stage.T).model).__name__ == "ResNet"
    shared = build("vit-b16", head="shared", **TINY_VIT)
    assert shared.shared_head and type(shared.head(1).model).__name__ == "VisionTransformer"
    independent = build("vit-b16", **TINY_VIT)
    assert len({id(independent.head(k)) for k in range(1, independent.T + 1)}) == independent.T
    with pytest.raises(ValueError, match="cannot share the final head across depths"):
        build("resnet50", head="shared", **TINY_RESNET50)
    with pytest.raises(ValueError, match="head must be one of"):
        build("vit-b16", head="bogus", **TINY_VIT)
    with pytest.raises(ValueError, match="four stages"):
        build("resnet50", layers=(1, 1, 1), channels=(2, 4, 4))


@pytest.mark.parametrize("name,adapter", [("vit-b16", "lora"), ("resnet50", "lokr")])
def test_adapters_train_only_adapter_and_head_parameters(name, adapter):
    options, shape, _ = TINY[name]
    torch.manual_seed(0)
    net = build(name, **options())
    blocks_before = list(net.blocks)
    apply_adapter(net, adapter, r=1, alpha=4)
    assert all(a is b for a, b in zip(net.blocks, blocks_before))
    adapters = adapter_parameters(net)
    assert adapters and all(p.requires_grad for p in adapters.values())
    head_ids = {id(p) for p in net.heads.parameters()}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(adapters) | {n for n, p in net.named_parameters() if id(p) in head_ids}

    net = net.double()
    x, y = _batch(shape, "class")
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(2):  # LoRA's B starts at zero, so A first moves on the second step
        opt.zero_grad()
        MPC(net, 2).backward(x, y)
        opt.step()
    for spec in ("ff", "loco:2"):  # the other methods run unchanged on the adapted model
        build_method(net, spec).backward(x, y)
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert changed & set(adapters)
    assert all(net.get_parameter(n).grad is None for n in before if n not in trainable)
    model = net.head(net.T).model  # the timm model holds the adapters too: it is the trained model
    torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)

    opt.zero_grad()
    MPC(net, net.T).backward(x, y)
    mpc = _grads(net)
    opt.zero_grad()
    net.loss(x, y).backward()
    _assert_same_grads(mpc, _grads(net))


def test_build_with_adapter_option_uses_paper_b_rank_and_alpha():
    net = build("vit-b16", adapter="lora", **TINY_VIT)
    lora_a = [p for n, p in adapter_parameters(net).items() if "lora_A" in n]
    assert len(lora_a) == TINY_VIT["depth"] and all(p.shape[0] == 1 for p in lora_a)
    with pytest.raises(ValueError, match="adapter must be one of"):
        build("vit-b16", adapter="ia3", **TINY_VIT)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(1)
    source = timm.create_model("resnet50", pretrained=False, **{**TINY_RESNET50, "num_classes": 7})
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": source.state_dict()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(2)
    net = build("resnet50", weights=str(path), **TINY_RESNET50)  # 3 classes: the classifier stays fresh
    assert torch.equal(net.blocks[0][0].conv1.weight, source.conv1.weight)
    assert torch.equal(net.blocks[-1].conv3.weight, source.layer4[-1].conv3.weight)
    assert net.head(net.T).fc.weight.shape[0] == 3


def test_weights_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build("vit-b16", weights=str(missing), **TINY_VIT)
    other = timm.create_model("resnet50", pretrained=False, **TINY_RESNET50)
    path = tmp_path / "resnet.pth"
    torch.save(other.state_dict(), path)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, **TINY_VIT)
    with pytest.raises(ValueError, match="do not fit VisionTransformer: missing: .*unexpected: "):
        load_weights(model, path)


def test_registry_sequential_is_recede_wrap():
    seq = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))
    head = nn.Linear(4, 2)
    net = build("sequential", model=seq, head=[nn.Linear(4, 2), head])
    assert net.T == 2 and net.blocks[1] is seq[1] and net.head(2) is head
    with pytest.raises(ValueError, match="option model must be a Sequential object"):
        build("sequential", model=nn.Linear(3, 4), head=head)


def test_core_package_imports_without_the_models_extra():
    import subprocess
    import sys

    code = (
        "import sys, recede.models, recede.data; "
        "print(sorted({'timm', 'torchvision', 'peft', 'safetensors', 'mnist1d', 'transformers', "
        "'tokenizers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_resmlp_cross_entropy_classifies():
    net = build("resmlp", width=4, depth=4, in_dim=2, out_dim=3, loss="cross-entropy")
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 1, 0])
    assert isinstance(net.loss_fn, torch.nn.CrossEntropyLoss) and net(x).shape == (5, 3)
    assert torch.isfinite(net.loss(x, y))
    with pytest.raises(ValueError, match="loss must be one of"):
        build("resmlp", loss="hinge")


def test_a_classification_task_gives_resmlp_cross_entropy_unless_told_otherwise():
    from recede import data

    spirals = data.load("spirals", n=40, n_test=10)
    net = build("resmlp", spirals, width=4, depth=3)
    assert isinstance(net.loss_fn, torch.nn.CrossEntropyLoss)
    x, y = next(iter(torch.utils.data.DataLoader(spirals.train, batch_size=8)))
    assert net(x).shape == (8, spirals.output_dim) and torch.isfinite(net.loss(x, y))
    assert isinstance(build("resmlp", spirals, loss="mse", out_dim=1).loss_fn, torch.nn.MSELoss)
    assert isinstance(build("resmlp", data.load("trig", n=20, n_test=5)).loss_fn, torch.nn.MSELoss)
