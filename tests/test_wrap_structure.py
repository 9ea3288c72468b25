"""recede.wrap by structure: transformers models whose layers are one ModuleList (float64).

Each family is checked at h = T against the model's own ``loss.backward()`` and, at every h,
against g_h by definition (:func:`conftest.slow_horizon_gradient`, with untied LM heads
and independent heads so that each parameter has one use).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import assert_blocks_get_g_h
from torch import nn

import recede
from recede.wrap.huggingface import next_token_loss

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 40, 8
COMMON = dict(
    num_hidden_layers=3,
    hidden_size=16,
    intermediate_size=24,
    num_attention_heads=4,
    vocab_size=VOCAB,
    max_position_embeddings=32,
    bos_token_id=None,
    eos_token_id=None,
)


def _lm(name: str, **extra):
    config = getattr(transformers, f"{name}Config")(**{**COMMON, **extra})
    return lambda **kw: getattr(transformers, f"{name}ForCausalLM")(config.__class__(**{**config.to_dict(), **kw}))


DECODERS = {  # the refused decoders
    "phi3": _lm("Phi3", num_key_value_heads=2, pad_token_id=None),
    "gemma": _lm("Gemma", num_key_value_heads=2, head_dim=4, pad_token_id=None),
    "gemma2": _lm("Gemma2", num_key_value_heads=2, head_dim=4, sliding_window=4, pad_token_id=None),
    "olmo": _lm("Olmo", num_key_value_heads=2, pad_token_id=None),
    "olmo2": _lm("Olmo2", num_key_value_heads=2, pad_token_id=None),
    "stablelm": _lm("StableLm", num_key_value_heads=2, pad_token_id=None),
    "falcon": lambda **kw: transformers.FalconForCausalLM(
        transformers.FalconConfig(
            num_hidden_layers=3,
            hidden_size=16,
            num_attention_heads=4,
            vocab_size=VOCAB,
            bos_token_id=None,
            eos_token_id=None,
            **kw,
        )
    ),
    "gptneox": _lm("GPTNeoX", pad_token_id=None),
}
FAST = ("gemma2", "falcon")  # every h in the default suite; the others' every-h checks are slow


def ids(batch: int = 3) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(0))


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(got: dict, want: dict, **tol) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name, **tol)


def engine_grads(model: nn.Module, net, h: int, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    recede.MPC(net, h).backward(x, y)
    return grads(model)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_at_h_T_is_the_models_own_loss_backward(float64, name):
    torch.manual_seed(0)
    model, x = DECODERS[name]().double(), ids()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated arguments passed (defect 4)
        net = recede.wrap(model)
        assert net.T == 3 and type(net.head(1)).__name__ == "NormAndHead"
        got = engine_grads(model, net, net.T, x, x)
    model.zero_grad()
    next_token_loss(model(x).logits, x).backward()  # the model's float64 logits: exact
    assert_same(got, grads(model), rtol=1e-10, atol=1e-12)
    model.zero_grad()
    model(x, labels=x).loss.backward()  # transformers' own loss, computed in float32
    assert_same(got, grads(model), rtol=1e-5, atol=1e-7)


def _every_h(name: str) -> None:
    torch.manual_seed(0)
    model, x = DECODERS[name](tie_word_embeddings=False).double(), ids()
    net = recede.wrap(model, head="independent")
    assert_blocks_get_g_h(net, x, x)


@pytest.mark.parametrize("name", FAST)
def test_decoder_every_h_is_g_h(float64, name):
    _every_h(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(DECODERS) - set(FAST)))
def test_decoder_every_h_is_g_h_slow(float64, name):
    _every_h(name)


def _encoder(kind: str, **extra) -> nn.Module:
    if kind == "distilbert":
        return transformers.DistilBertForSequenceClassification(
            transformers.DistilBertConfig(
                n_layers=3,
                dim=16,
                hidden_dim=24,
                n_heads=4,
                vocab_size=VOCAB,
                max_position_embeddings=32,
                dropout=0.0,
                attention_dropout=0.0,
                seq_classif_dropout=0.0,
                pad_token_id=0,
                **extra,
            )
        )
    if kind == "llama":
        return transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**COMMON, pad_token_id=0, **extra))
    config = dict(COMMON, pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra)
    classes = {"roberta": "Roberta", "bert": "Bert"}
    return getattr(transformers, f"{classes[kind]}ForSequenceClassification")(
        getattr(transformers, f"{classes[kind]}Config")(**config)
    )


LABELS = {
    "single": torch.tensor([0, 2, 1]),
    "multi": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]),
    "regression": torch.tensor([0.3, -1.2, 0.5]),
}


@pytest.mark.parametrize("kind", ["roberta", "distilbert", "llama", "bert"])
@pytest.mark.parametrize("problem", ["single", "multi", "regression"])
def test_sequence_classifiers_use_the_models_own_loss(float64, kind, problem):
    """h = T is the model's own ``model(x, labels=y).loss.backward()``: float multi-hot labels
    get transformers' multi-label BCE, one label MSE (defect 3), as transformers infers them."""
    torch.manual_seed(0)
    model, x, y = _encoder(kind, num_labels=1 if problem == "regression" else 3).double(), ids(), LABELS[problem]
    net = recede.wrap(model)
    model.zero_grad()
    own = model(x, labels=y).loss
    own.backward()
    want = grads(model)
    assert recede.MPC(net, net.T).backward(x, y) == pytest.approx(float(own.detach()), rel=1e-12)
    assert_same(engine_grads(model, net, net.T, x, y), want, rtol=1e-10, atol=1e-12)
    recede.MPC(net, 1).backward(x, y)  # every depth's head accepts the labels


def test_an_encoder_every_h_is_g_h(float64):
    torch.manual_seed(0)
    model, x, y = _encoder("roberta", num_labels=3).double(), ids(), LABELS["single"]
    net = recede.wrap(model)
    assert type(net.head(1)).__name__ == "SequenceHead" and net.head(1).token == "first"
    assert_blocks_get_g_h(net, x, y)


def test_a_bare_decoder_model_takes_the_users_loss_and_heads(float64):
    torch.manual_seed(0)
    model, x = transformers.LlamaModel(transformers.LlamaConfig(**COMMON)).double(), ids()
    target = torch.randn(3, SEQ, 16)
    with pytest.raises(ValueError, match="have no loss of their own: pass loss_fn="):
        recede.wrap(model)
    net = recede.wrap(model, loss_fn=nn.MSELoss(), head=nn.Identity())
    model.zero_grad()
    nn.functional.mse_loss(model(x).last_hidden_state, target).backward()
    assert_same(engine_grads(model, net, net.T, x, target), grads(model), rtol=1e-10, atol=1e-12)


def test_an_encoder_decoder_is_refused_in_one_line():
    t5 = transformers.T5ForConditionalGeneration(
        transformers.T5Config(num_layers=1, d_model=8, d_ff=8, num_heads=2, d_kv=4, vocab_size=VOCAB)
    )
    with pytest.raises(
        ValueError,
        match=r"T5ForConditionalGeneration is an encoder-decoder .* by hand "
        r"\(docs/models.md",
    ) as info:
        recede.wrap(t5)
    assert "\n" not in str(info.value)


def test_the_named_llama_family_passes_no_deprecated_argument(float64):
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, pad_token_id=None)).double()
    net, x = recede.wrap(model), ids()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recede.MPC(net, 1).backward(x, x)


def test_layers_group_into_fewer_blocks(float64):
    model, x = DECODERS["gemma2"]().double(), ids()
    net = recede.wrap(model, blocks=2)
    assert net.T == 2 and [len(b) if isinstance(b, nn.Sequential) else 1 for b in net.blocks] == [2, 1]
    got = engine_grads(model, net, 2, x, x)
    model.zero_grad()
    next_token_loss(model(x).logits, x).backward()
    assert_same(got, grads(model), rtol=1e-10, atol=1e-12)
    recede.MPC(net, 1).backward(x, x)


def test_a_peft_model_of_a_structural_family_trains_its_adapters(float64):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        DECODERS["gemma"]().double(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():  # LoRA's B starts at zero: move it so the adapters change the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    net, x = recede.wrap(model), ids()
    got = engine_grads(model, net, net.T, x, x)
    model.zero_grad()
    model(input_ids=x, labels=x).loss.backward()  # transformers' float32 loss
    want = grads(model)
    assert set(want) == {n for n, p in model.named_parameters() if p.requires_grad} and all("lora_" in n for n in want)
    assert_same(got, want, rtol=1e-5, atol=1e-7)
