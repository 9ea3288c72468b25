"""recede.wrap on Hugging Face models: GPT-2, the Llama/Mistral/Qwen2 layout and BERT, in float64.

At h = T the engine must give plain autograd's gradient on the model's own loss; every h must
run; the tied embedding of GPT-2 must follow SPEC §1's shared-parameter rule, checked against
the same model with the LM head untied (a use in block t gets g_h(u_t), the head's use at
depth k gets ∇L(x_k) whenever depth k is trained).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import slow_horizon_gradient
from torch import nn

import recede
from recede.wrap.huggingface import next_token_loss

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 48, 10


def gpt2(attention: str = "sdpa", **config) -> nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=4,
        n_embd=16,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=SEQ,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation=attention,
        **config,
    )
    return transformers.GPT2LMHeadModel(cfg).double()


def decoder(kind: str, attention: str = "sdpa") -> nn.Module:
    configs = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 4}),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    }
    config_class, model_class, extra = configs[kind]
    cfg = config_class(
        num_hidden_layers=3,
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation=attention,
        **extra,
    )
    return model_class(cfg).double()


def bert(num_labels: int = 3) -> nn.Module:
    cfg = transformers.BertConfig(
        num_hidden_layers=3,
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return transformers.BertForSequenceClassification(cfg).double()


def ids(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def engine_grads(model: nn.Module, net, h: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    recede.MPC(net, h).backward(x, y)
    return grads(model)


def assert_same(got: dict, want: dict, **tol) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name, **tol)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_gpt2_at_h_T_is_the_models_own_loss_backward(float64, attention):
    model, x = gpt2(attention), ids()
    net = recede.wrap(model)
    assert net.T == 4 and net.shared_head and net.head(1).head is model.lm_head
    assert model.lm_head.weight is model.transformer.wte.weight
    model.zero_grad()
    reference = model(x, labels=x).loss
    reference.backward()
    want = grads(model)
    model.zero_grad()
    loss = recede.MPC(net, net.T).backward(x, x)
    # transformers computes its LM loss in float32 (logits.float()): agree to float32 accuracy
    assert loss == pytest.approx(float(reference.detach()), rel=1e-6)
    assert_same(grads(model), want, rtol=1e-5, atol=1e-7)
    # against the model's float64 logits and the same shifted loss: exact
    model.zero_grad()
    next_token_loss(model(x).logits, x).backward()
    assert_same(engine_grads(model, net, net.T, x, x), grads(model), rtol=1e-10, atol=1e-12)


def test_next_token_loss_is_transformers_causal_lm_loss():
    logits, labels = torch.randn(2, 7, 11), torch.randint(0, 11, (2, 7))
    labels[0, 3] = -100
    from transformers.loss.loss_utils import ForCausalLMLoss

    assert float(next_token_loss(logits, labels)) == pytest.approx(float(ForCausalLMLoss(logits, labels, 11)))
    assert next_token_loss(logits.bfloat16(), labels).dtype == torch.float32


@pytest.mark.parametrize("head", ["shared", "independent"])
def test_gpt2_every_horizon_follows_the_definition_with_the_head_untied(float64, head):
    """Untied, the LM head is a head parameter like any other: the engine's block gradients are
    g_h by definition (a fresh forward to depth t + h per block)."""
    model = gpt2(tie_word_embeddings=False)
    assert model.lm_head.weight is not model.transformer.wte.weight
    net, x = recede.wrap(model, head=head), ids()
    for h in range(1, net.T + 1):
        model.zero_grad(set_to_none=True)
        recede.MPC(net, h).backward(x, x)
        for p, g in slow_horizon_gradient(net, x, x, h).items():
            torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


def _untied(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    twin.lm_head.weight = nn.Parameter(twin.lm_head.weight.detach().clone())
    return twin


@pytest.mark.parametrize("head", ["shared", "independent"])
def test_tied_embedding_gets_the_sum_of_its_uses_for_every_horizon(float64, head):
    """SPEC §1: the tied weight's gradient is its block-0 use's g_h plus the head's uses'
    ∇L(x_k) at every trained depth k — the untied twin's two gradients, summed."""
    model, x = gpt2(), ids()
    twin = _untied(model)
    net, twin_net = recede.wrap(model, head=head), recede.wrap(twin, head=head)
    if head == "independent":  # the earlier heads are copies: give both nets the same ones
        for k in range(1, net.T):
            twin_net.heads[k - 1].load_state_dict(net.heads[k - 1].state_dict())
    for h in range(1, net.T + 1):
        got, parts = engine_grads(model, net, h, x, x), engine_grads(twin, twin_net, h, x, x)
        want = {n: g for n, g in parts.items() if n != "lm_head.weight"}
        want["transformer.wte.weight"] = parts["transformer.wte.weight"] + parts["lm_head.weight"]
        assert_same(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_decoder_layout_at_h_T_is_plain_autograd_and_every_h_runs(float64, kind, attention):
    model, x = decoder(kind, attention), ids()
    net = recede.wrap(model)
    assert net.T == 3 and net.head(3).norm is model.model.norm
    model.zero_grad()
    next_token_loss(model(x).logits, x).backward()
    assert_same(engine_grads(model, net, net.T, x, x), grads(model), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        final = float(next_token_loss(model(x).logits, x))
    for h in range(1, net.T):
        assert recede.MPC(net, h).backward(x, x) == pytest.approx(final)


def test_mistral_sliding_window_is_used_by_every_unit(float64):
    """With a window shorter than the sequence, a causal-only mask would change the loss."""
    model, x = decoder("mistral", "eager"), ids()
    net = recede.wrap(model)
    with torch.no_grad():
        windowed = float(next_token_loss(model(x).logits, x))
        assert float(net.loss(x, x)) == pytest.approx(windowed, rel=1e-12)
        model.config.sliding_window = None
        assert float(next_token_loss(model(x).logits, x)) != pytest.approx(windowed, rel=1e-6)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_bert_at_h_T_is_the_models_own_loss_and_every_h_runs(float64, num_labels):
    model, x = bert(num_labels), ids()
    y = torch.tensor([0, 2, 1]) if num_labels > 1 else torch.randn(3)
    net = recede.wrap(model)
    assert not net.shared_head and net.head(3).classifier is model.classifier
    assert net.head(1).classifier is not model.classifier  # independent copies by default
    model.zero_grad()
    model(x, labels=y).loss.backward()
    want = grads(model)
    assert_same(engine_grads(model, net, net.T, x, y), want, rtol=1e-10, atol=1e-12)
    for h in range(1, net.T):
        recede.MPC(net, h).backward(x, y)
    assert recede.wrap(model, head="shared").head(1).classifier is model.classifier


def test_modules_are_held_not_copied_and_grouping_works():
    model = gpt2().float()
    net = recede.wrap(model, blocks=2)
    assert net.T == 2
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}
    with torch.no_grad():
        x = ids()
        torch.testing.assert_close(net(x), model(x).logits)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: gpt2(add_cross_attention=True), "cross-attention"),
        (
            lambda: transformers.BertForSequenceClassification(
                transformers.BertConfig(
                    num_hidden_layers=1, hidden_size=8, intermediate_size=8, num_attention_heads=2, is_decoder=True
                )
            ),
            "BERT as a decoder",
        ),
    ],
)
def test_unsupported_variants_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        recede.wrap(make())


def test_a_peft_lora_gpt2_trains_only_its_adapters_at_every_horizon(float64):
    """The user's own peft model: recede.wrap reads the GPT-2 inside it; the tied embedding and
    every base weight stay frozen; at h = T the gradient is the peft model's loss.backward()."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        gpt2(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    net, x = recede.wrap(model), ids()
    adapters = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    with torch.no_grad():  # LoRA's B starts at zero: move it so the adapters change the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.zero_grad()
    model(input_ids=x, labels=x).loss.backward()
    want = grads(model)
    assert set(want) == adapters
    assert_same(engine_grads(model, net, net.T, x, x), want, rtol=1e-5, atol=1e-7)
    for h in range(1, net.T):
        assert set(engine_grads(model, net, h, x, x)) == adapters
