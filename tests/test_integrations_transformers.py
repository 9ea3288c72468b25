"""recede.integrations.transformers: the Hugging Face Trainer with a receding horizon."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from recede.integrations.transformers import RecedeTrainer, batch_to_xy

VOCAB, SEQ = 64, 16


def gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=3,
            n_embd=32,
            n_head=2,
            vocab_size=VOCAB,
            n_positions=SEQ,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory (nothing is downloaded): token i is "t{i}"."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"[PAD]": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]")


def token_data(n: int = 24, seq: int = SEQ, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB - 1, (seq,), generator=g).tolist()} for _ in range(n)]


def arguments(tmp_path, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=1,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**(options | overrides))


def collator():
    return DataCollatorForLanguageModeling(tokenizer(), mlm=False)


def losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_horizon_T_is_the_stock_trainer_bitwise(tmp_path, accumulate: int) -> None:
    """fp32 on CPU, gradient accumulation (the loss normalised over the accumulated tokens),
    clipping, a warm-up + linear schedule: the same logged losses and the same weights."""
    runs = {}
    for name, cls, extra in (("stock", Trainer, {}), ("recede", RecedeTrainer, {"horizon": 3})):
        model = gpt2()
        trainer = cls(
            model=model,
            args=arguments(tmp_path / name, gradient_accumulation_steps=accumulate),
            train_dataset=token_data(),
            data_collator=collator(),
            **extra,
        )
        trainer.train()
        runs[name] = (losses(trainer), model, trainer.state.log_history)
    assert runs["recede"][0] == runs["stock"][0] and len(runs["stock"][0]) == 3
    assert same_weights(runs["recede"][1], runs["stock"][1])
    assert [e.get("grad_norm") for e in runs["recede"][2]] == [e.get("grad_norm") for e in runs["stock"][2]]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_at_horizon_T_matches_the_stock_trainer(tmp_path, precision: str) -> None:
    """CPU autocast (accelerate makes no GradScaler on the CPU, so fp16 runs unscaled here)."""
    runs = {}
    for name, cls, extra in (("stock", Trainer, {}), ("recede", RecedeTrainer, {"horizon": None})):
        model = gpt2()
        trainer = cls(
            model=model,
            args=arguments(tmp_path / name, max_steps=2, **{precision: True}),
            train_dataset=token_data(),
            data_collator=collator(),
            **extra,
        )
        trainer.train()
        runs[name] = (losses(trainer), model)
    assert runs["recede"][0] == pytest.approx(runs["stock"][0], rel=1e-6)
    for p, q in zip(runs["recede"][1].parameters(), runs["stock"][1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_horizon_2_trains_evaluates_and_resumes_bitwise(tmp_path) -> None:
    def trainer(model, out, **kw):
        return RecedeTrainer(
            model=model,
            args=arguments(
                out, max_steps=4, save_steps=2, save_strategy="steps", eval_strategy="steps", eval_steps=2, **kw
            ),
            train_dataset=token_data(),
            eval_dataset=token_data(8, seed=2),
            data_collator=collator(),
            horizon=2,
        )

    whole = gpt2()
    first = trainer(whole, tmp_path / "a")
    first.train()
    assert any("eval_loss" in e for e in first.state.log_history)
    before = gpt2()
    assert not same_weights(whole, before)  # it trained
    resumed = gpt2()
    trainer(resumed, tmp_path / "a").train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert same_weights(whole, resumed)


def test_lora_at_horizon_2_trains_only_the_adapters(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        gpt2(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = RecedeTrainer(
        model=model,
        args=arguments(tmp_path, save_strategy="steps", save_steps=3),
        train_dataset=token_data(),
        data_collator=collator(),
        horizon=2,
    )
    trainer.train()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert (tmp_path / "checkpoint-3" / "adapter_model.safetensors").exists()


def test_bp_modified_refreshes_from_the_train_dataset(tmp_path) -> None:
    trainer = RecedeTrainer(
        model=gpt2(),
        args=arguments(tmp_path, max_steps=4, gradient_accumulation_steps=1),
        train_dataset=token_data(),
        data_collator=collator(),
        horizon=1,
        bp_modified={"period": 2, "offset_samples": 8, "micro_batch": 4},
    )
    trainer.train()
    assert trainer.recede_method.refreshes == 2 and all(torch.isfinite(torch.tensor(losses(trainer))))


def test_new_heads_are_trained_and_checkpointed_with_the_model(tmp_path) -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    )
    data = [{"input_ids": d["input_ids"], "labels": i % 3} for i, d in enumerate(token_data())]
    trainer = RecedeTrainer(
        model=model, args=arguments(tmp_path, save_strategy="steps", save_steps=3), train_dataset=data, horizon=1
    )
    head = copy.deepcopy(model.recede_heads[0])
    trainer.train()
    assert not same_weights(head, model.recede_heads[0])  # h = 1: block 0 learns from the new head
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoint-3" / "model.safetensors"))
    assert any(k.startswith("recede_heads.") for k in saved)


def test_refusals_are_one_line(tmp_path) -> None:
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="padded batch"):
        batch_to_xy({"input_ids": ids, "labels": ids, "attention_mask": torch.tensor([[1, 1, 1, 0], [1] * 4])})
    with pytest.raises(ValueError, match="position_ids"):
        batch_to_xy({"input_ids": ids, "labels": ids, "position_ids": ids})
    x, y = batch_to_xy({"input_ids": ids, "labels": ids, "attention_mask": torch.ones(2, 4)})
    assert x is ids and y is ids
    with pytest.raises(ValueError, match="label smoothing"):
        RecedeTrainer(model=gpt2(), args=arguments(tmp_path, label_smoothing_factor=0.1), horizon=2)
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(gpt2(), peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    with pytest.raises(ValueError, match="adapters"):
        RecedeTrainer(model=lora, args=arguments(tmp_path), head="independent", horizon=2)
    padded = [{"input_ids": d["input_ids"][: SEQ - i % 2]} for i, d in enumerate(token_data(8))]
    trainer = RecedeTrainer(
        model=gpt2(), args=arguments(tmp_path, max_steps=1), train_dataset=padded, data_collator=collator(), horizon=2
    )
    with pytest.raises(ValueError, match="padded batch"):
        trainer.train()


def test_a_torchvision_model_trains_from_pixel_values(tmp_path) -> None:
    """Any model recede.wrap accepts: a torchvision ResNet, batches of pixel_values and labels
    (``remove_unused_columns=False``: its forward names neither)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    g = torch.Generator().manual_seed(3)
    data = [{"pixel_values": torch.randn(3, 16, 16, generator=g), "labels": i % 4} for i in range(16)]
    before = copy.deepcopy(model.layer1[0].conv1.weight)
    trainer = RecedeTrainer(
        model=model, args=arguments(tmp_path, max_steps=2, remove_unused_columns=False), train_dataset=data, horizon=2
    )
    trainer.train()
    assert len(losses(trainer)) == 2 and not torch.equal(before, model.layer1[0].conv1.weight)
    assert len(model.recede_heads) == 7  # new pool → linear heads at depths 1-7, trained with the model
