"""Which of 50 popular architectures ``recede.wrap`` splits, and whether h = T is plain autograd.

The 50 are issue 25's tour: 27 that wrapped by family before (torchvision ResNet, Wide-ResNet,
ResNeXt, VGG, MobileNet v2/v3, EfficientNet v1/v2, ConvNeXt, ViT; timm ResNet, ResNet-D,
ConvNeXt, EfficientNet, MobileNetV3, ViT, DeiT, ViT with registers; Hugging Face GPT-2, Llama,
Mistral, Qwen2, Qwen3, BERT; an ``nn.Sequential``) and the 23 it refused (Phi3, Gemma,
Gemma2, OLMo, OLMo2, StableLM, Falcon, GPT-NeoX, RoBERTa, DistilBERT, T5,
LlamaForSequenceClassification, LlamaModel; torchvision Swin, RegNet, DenseNet, ShuffleNet;
timm MobileViT-v2, BEiT, LeViT, RegNetY, EfficientViT, EVA-02).  Each is built at random
init with a tiny configuration (few layers, small widths; nothing is downloaded), in float64.

For each the script wraps the model with ``recede.wrap(model)`` and compares, on one batch, the
gradient of every parameter from ``MPC(net, net.T)`` with plain autograd's on the model's own
loss: cross-entropy on the classifier's output, the shifted next-token loss on a causal LM's
float64 logits, ``model(x, labels=y).loss`` for a sequence classifier, the user's loss for a
bare model or a sequential.  It prints one row per model — how it is wrapped (its family, by
structure, or refused with the reason), T, the largest relative error — then the share wrapped
with h = T equal to autograd (relative error below 1e-10), and the rows as a Markdown table.
Without ``--smoke`` it also runs every model at h = 1 (that it runs, not what it gives: the
tests compare every h with the definition).

    python benchmarks/wrap_coverage.py [--smoke] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import recede

TOLERANCE = 1e-10
V, S = 40, 8  # vocabulary, sequence length


def _tv():
    import torchvision.models as tv

    return tv


def _timm(name: str, **kw) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=3, **kw)


def _hf(kind: str, head: str = "ForCausalLM", **kw) -> nn.Module:
    import transformers as tr

    common = dict(
        num_hidden_layers=2,
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=4,
        vocab_size=V,
        max_position_embeddings=32,
        bos_token_id=None,
        eos_token_id=None,
    )
    config = getattr(tr, f"{kind}Config")(**{**common, **kw})
    return getattr(tr, f"{kind}{head}")(config)


def _vgg() -> nn.Module:
    tv = _tv()
    with torch.device("meta"):
        model = tv.VGG(tv.vgg.make_layers([4, "M", 8, "M"], batch_norm=True), init_weights=False)
    model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.classifier = nn.Sequential(nn.Linear(8 * 7 * 7, 6), nn.ReLU(), nn.Dropout(0.0), nn.Linear(6, 3))
    return model


def _torchvision() -> dict[str, Callable[[], nn.Module]]:
    tv = _tv()
    from torchvision.models import convnext, efficientnet, regnet

    fused = [
        efficientnet.FusedMBConvConfig(1, 3, 1, 8, 8, 1),
        efficientnet.FusedMBConvConfig(4, 3, 2, 8, 16, 1),
        efficientnet.MBConvConfig(4, 3, 2, 16, 16, 1, 1.0, 1.0),
    ]
    regnet_params = regnet.BlockParams(
        depths=[1, 1],
        widths=[8, 16],
        group_widths=[8, 8],
        bottleneck_multipliers=[1.0, 1.0],
        strides=[2, 2],
        se_ratio=0.25,
    )
    return {
        "tv resnet18": lambda: tv.ResNet(tv.resnet.BasicBlock, [1, 1, 1, 1], num_classes=3),
        "tv resnet50": lambda: tv.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], num_classes=3),
        "tv wide_resnet50": lambda: tv.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], num_classes=3, width_per_group=128),
        "tv resnext50": lambda: tv.ResNet(
            tv.resnet.Bottleneck, [1, 1, 1, 1], num_classes=3, groups=32, width_per_group=4
        ),
        "tv vgg11_bn": _vgg,
        "tv mobilenet_v2": lambda: tv.mobilenet_v2(num_classes=3, width_mult=0.25, dropout=0.0),
        "tv mobilenet_v3_small": lambda: tv.mobilenet_v3_small(num_classes=3, width_mult=0.25, dropout=0.0),
        "tv mobilenet_v3_large": lambda: tv.mobilenet_v3_large(num_classes=3, width_mult=0.25, dropout=0.0),
        "tv efficientnet_b0": lambda: tv.EfficientNet(
            [
                efficientnet.MBConvConfig(1, 3, 1, 8, 8, 1, 1.0, 1.0),
                efficientnet.MBConvConfig(6, 3, 2, 8, 16, 2, 1.0, 1.0),
            ],
            dropout=0.0,
            num_classes=3,
            last_channel=16,
            stochastic_depth_prob=0.0,
        ),
        "tv efficientnet_v2": lambda: tv.EfficientNet(
            fused, dropout=0.0, num_classes=3, last_channel=16, stochastic_depth_prob=0.0
        ),
        "tv convnext": lambda: tv.ConvNeXt(
            [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 2)],
            num_classes=3,
            stochastic_depth_prob=0.0,
        ),
        "tv vit_b_16": lambda: tv.VisionTransformer(
            image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
        ),
        "tv swin_t": lambda: tv.SwinTransformer(
            patch_size=[2, 2],
            embed_dim=8,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=[2, 2],
            num_classes=3,
            stochastic_depth_prob=0.0,
        ),
        "tv regnet": lambda: tv.RegNet(regnet_params, num_classes=3, stem_width=8),
        "tv densenet": lambda: tv.DenseNet(
            growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=3
        ),
        "tv shufflenet_v2": lambda: tv.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 32], num_classes=3),
    }


def _timm_models() -> dict[str, Callable[[], nn.Module]]:
    vit = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)
    return {
        "timm resnet50": lambda: _timm("resnet50", layers=(1, 1, 1, 1)),
        "timm resnet50d": lambda: _timm("resnet50d", layers=(1, 1, 1, 1)),
        "timm convnext_atto": lambda: _timm("convnext_atto"),
        "timm efficientnet_b0": lambda: _timm("efficientnet_b0"),
        "timm mobilenetv3_large_100": lambda: _timm("mobilenetv3_large_100"),
        "timm vit_small": lambda: _timm("vit_small_patch16_224", **vit),
        "timm deit_tiny": lambda: _timm("deit_tiny_patch16_224", **vit),
        "timm vit_small_reg4": lambda: _timm("vit_small_patch14_reg4_dinov2", **vit),
        "timm mobilevitv2_050": lambda: _timm("mobilevitv2_050"),
        "timm beit": lambda: _timm("beit_base_patch16_224", **vit),
        "timm levit_128s": lambda: _timm("levit_128s", img_size=32),
        "timm regnety_002": lambda: _timm("regnety_002"),
        "timm efficientvit_b0": lambda: _timm("efficientvit_b0"),
        "timm eva02_tiny": lambda: _timm("eva02_tiny_patch14_224", img_size=14, depth=2),
    }


def _hf_models() -> dict[str, tuple[Callable[[], nn.Module], str]]:
    """name -> (maker, task): "lm" (next-token), "cls" (sequence classification), "bare"."""
    import transformers as tr

    kv = dict(num_key_value_heads=2, pad_token_id=None)
    return {
        "hf gpt2": (
            lambda: tr.GPT2LMHeadModel(
                tr.GPT2Config(
                    n_layer=2,
                    n_embd=16,
                    n_head=2,
                    vocab_size=V,
                    n_positions=32,
                    resid_pdrop=0.0,
                    embd_pdrop=0.0,
                    attn_pdrop=0.0,
                    bos_token_id=None,
                    eos_token_id=None,
                )
            ),
            "lm",
        ),
        "hf llama": (lambda: _hf("Llama", **kv), "lm"),
        "hf mistral": (lambda: _hf("Mistral", sliding_window=4, **kv), "lm"),
        "hf qwen2": (lambda: _hf("Qwen2", **kv), "lm"),
        "hf qwen3": (lambda: _hf("Qwen3", head_dim=4, **kv), "lm"),
        "hf bert (classifier)": (
            lambda: _hf(
                "Bert",
                "ForSequenceClassification",
                num_labels=3,
                pad_token_id=0,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            ),
            "cls",
        ),
        "hf phi3": (lambda: _hf("Phi3", **kv), "lm"),
        "hf gemma": (lambda: _hf("Gemma", head_dim=4, **kv), "lm"),
        "hf gemma2": (lambda: _hf("Gemma2", head_dim=4, sliding_window=4, **kv), "lm"),
        "hf olmo": (lambda: _hf("Olmo", **kv), "lm"),
        "hf olmo2": (lambda: _hf("Olmo2", **kv), "lm"),
        "hf stablelm": (lambda: _hf("StableLm", **kv), "lm"),
        "hf falcon": (
            lambda: tr.FalconForCausalLM(
                tr.FalconConfig(
                    num_hidden_layers=2,
                    hidden_size=16,
                    num_attention_heads=4,
                    vocab_size=V,
                    bos_token_id=None,
                    eos_token_id=None,
                )
            ),
            "lm",
        ),
        "hf gpt_neox": (lambda: _hf("GPTNeoX", pad_token_id=None), "lm"),
        "hf roberta (classifier)": (
            lambda: _hf(
                "Roberta",
                "ForSequenceClassification",
                num_labels=3,
                pad_token_id=0,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            ),
            "cls",
        ),
        "hf distilbert (classifier)": (
            lambda: tr.DistilBertForSequenceClassification(
                tr.DistilBertConfig(
                    n_layers=2,
                    dim=16,
                    hidden_dim=24,
                    n_heads=4,
                    vocab_size=V,
                    max_position_embeddings=32,
                    num_labels=3,
                    dropout=0.0,
                    attention_dropout=0.0,
                    seq_classif_dropout=0.0,
                    pad_token_id=0,
                )
            ),
            "cls",
        ),
        "hf llama (classifier)": (
            lambda: _hf("Llama", "ForSequenceClassification", num_labels=3, pad_token_id=0),
            "cls",
        ),
        "hf llama (bare LlamaModel)": (lambda: _hf("Llama", "Model"), "bare"),
        "hf t5": (
            lambda: tr.T5ForConditionalGeneration(
                tr.T5Config(num_layers=2, d_model=16, d_ff=24, num_heads=2, d_kv=8, vocab_size=V)
            ),
            "seq2seq",
        ),
    }


def _route(net: recede.BlockNet) -> str:
    unit = type(net.blocks[0]).__name__
    return "structure (generic path)" if unit == "Unit" else "family"


def _relative_error(model: nn.Module, got: dict, loss: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    loss.backward()
    worst = 0.0
    for name, p in model.named_parameters():
        if p.grad is None and got.get(name) is None:
            continue
        if p.grad is None or got.get(name) is None:
            return float("inf")
        scale = float(p.grad.abs().max()) or 1.0
        worst = max(worst, float((got[name] - p.grad).abs().max()) / scale)
    return worst


def check(name: str, make: Callable[[], nn.Module], task: str, every_h: bool) -> dict:
    """Wrap one model, compare h = T with autograd; a row of the table."""
    from recede.wrap.huggingface import next_token_loss

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = make().double()
    options: dict = {}
    if task in ("lm", "cls", "bare", "seq2seq"):
        x = torch.randint(1, V, (3, S), generator=g)
        y = {
            "lm": x,
            "cls": torch.tensor([0, 2, 1]),
            "bare": torch.randn(3, S, 16, generator=g, dtype=torch.float64),
            "seq2seq": x,
        }[task]
        if task == "bare":
            options = dict(loss_fn=nn.MSELoss(), head=nn.Identity())
    elif task == "sequential":
        x, y = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g)
        options = dict(head=nn.Linear(6, 3).double(), loss_fn=nn.CrossEntropyLoss())
    else:
        side = 14 if "eva02" in name else 16 if task == "vit" else 32
        x, y = torch.randn(2, 3, side, side, generator=g, dtype=torch.float64), torch.tensor([0, 2])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = recede.wrap(model, **options)
    except ValueError as err:
        return dict(name=name, route="refused", T="", error="", ok=False, why=str(err))
    model.zero_grad(set_to_none=True)
    recede.MPC(net, net.T).backward(x, y)
    got = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    if task == "lm":
        loss = next_token_loss(model(x).logits, x)
    elif task == "cls":
        loss = model(x, labels=y).loss
    elif task == "bare":
        loss = nn.functional.mse_loss(model(x).last_hidden_state, y)
    elif task == "sequential":
        loss = nn.functional.cross_entropy(net.head(net.T)(model(x)), y)
    else:
        loss = nn.functional.cross_entropy(model(x), y)
    error = _relative_error(model, got, loss)
    if every_h:
        recede.MPC(net, 1).backward(x, y)
    return dict(name=name, route=_route(net), T=net.T, error=f"{error:.1e}", ok=error < TOLERANCE, why="")


def models() -> dict[str, tuple[Callable[[], nn.Module], str]]:
    """All 50: name -> (maker, task)."""
    found: dict[str, tuple[Callable[[], nn.Module], str]] = {}
    small = {"tv vit_b_16", "timm vit_small", "timm deit_tiny", "timm vit_small_reg4", "timm beit"}  # 16 × 16 images
    for name, make in {**_torchvision(), **_timm_models()}.items():
        found[name] = (make, "vit" if name in small else "image")
    found.update(_hf_models())
    found["nn.Sequential"] = (
        lambda: nn.Sequential(*(nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(4))),
        "sequential",
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="h = T only")
    parser.add_argument("--only", nargs="*", help="model names (default: all 50)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, (make, task) in models().items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            row = check(name, make, task, every_h=not args.smoke)
        except Exception as err:  # noqa: BLE001  (a row, not a crash: the table says what failed)
            row = dict(name=name, route="error", T="", error="", ok=False, why=f"{type(err).__name__}: {err}")
        rows.append(row)
        print(
            f"{name:28s} {row['route']:26s} T={row['T']!s:3s} rel.err={row['error'] or '-':8s} "
            f"{'ok' if row['ok'] else 'NO'}  {time.perf_counter() - start:5.1f}s  {row['why'][:100]}",
            flush=True,
        )
    wrapped = sum(r["ok"] for r in rows)
    print(
        f"\nwrapped with h = T equal to autograd (relative error < {TOLERANCE:g}): {wrapped} of {len(rows)} "
        f"({100 * wrapped / max(len(rows), 1):.0f} %)\n"
    )
    print("| architecture | how | T | h = T vs autograd (max rel. error) | note |")
    print("|---|---|---|---|---|")
    for r in rows:
        how = r["route"] if r["route"] != "refused" else "refused: manual recipe"
        print(f"| {r['name']} | {how} | {r['T']} | {r['error'] or '—'} | {r['why']} |")


if __name__ == "__main__":
    main()
