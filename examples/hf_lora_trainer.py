"""LoRA fine-tuning of a small GPT-2 with the Hugging Face Trainer at horizon 2.

Offline and CPU-only (seconds): the text is a source file of the installed torch,
read as bytes; the model is built from a config (use ``from_pretrained`` for real weights).
"""

import pathlib
import tempfile

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from recede.integrations import memory_against_bp
from recede.integrations.transformers import RecedeTrainer

torch.manual_seed(0)
text = pathlib.Path(torch.__file__).with_name("functional.py").read_bytes()[: 48 * 1024]
ids = torch.tensor(list(text)).view(-1, 64)  # 64-byte windows, vocabulary 256
data = [{"input_ids": row, "labels": row} for row in ids]  # the model's loss shifts the labels

model = GPT2LMHeadModel(
    GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=256, n_positions=64, bos_token_id=0, eos_token_id=0)
)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True))
args = TrainingArguments(
    output_dir=tempfile.mkdtemp(),
    per_device_train_batch_size=8,
    max_steps=30,
    learning_rate=1e-2,
    logging_steps=10,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    disable_tqdm=True,
)
trainer = RecedeTrainer(model=model, args=args, train_dataset=data[:-32], eval_dataset=data[-32:], horizon=2)
trainer.train()
print(f"eval loss {trainer.evaluate()['eval_loss']:.3f} nats/byte")

batch = ids[:16]
print(memory_against_bp(trainer.recede_net, batch, batch, horizon=2))
