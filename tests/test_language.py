"""The registry's language models (gpt2, llama): sizes from the text task, presets, LoRA with the
tied embedding frozen, weights from a local file, and train/compare/bench/select on text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recede import data
from recede.core.engine import MPC
from recede.models import build

pytest.importorskip("transformers")
pytest.importorskip("peft")

from conftest import SRC

from recede.models.peft_adapters import adapter_parameters  # noqa: E402

TINY_GPT2 = dict(n_layer=3, n_embd=8, n_head=2)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(8):
        (folder / f"doc{i}.txt").write_text("".join(f"line {j} of document {i}: x = {i * j}\n" for j in range(40)))
    return folder


def test_sizes_come_from_the_text_task_and_presets_are_overridden(corpus):
    task = data.load("text", path=str(corpus), seq_len=32)
    net = build("gpt2", task, **TINY_GPT2)
    model = net.head(net.T).head  # the LM head, tied to the token embedding
    assert model.weight.shape == (256, 8) and net.T == 3 and net.shared_head
    wpe = net.blocks[0][0].wpe
    assert wpe.num_embeddings == 32
    assert model.weight is net.blocks[0][0].wte.weight
    tiny = build("gpt2", vocab_size=20, n_positions=16)
    assert tiny.T == 4 and tiny.blocks[0][0].wte.embedding_dim == 128
    assert build("gpt2", vocab_size=20, n_positions=16, blocks=2, head="independent").T == 2
    llama = build("llama", task, n_layer=2, hidden_size=8, n_head=2, n_kv_head=1, intermediate_size=12)
    assert llama.T == 2 and llama.head(2).head.weight is llama.blocks[0][0].embed_tokens.weight
    untied = build(
        "llama", task, n_layer=2, hidden_size=8, n_head=2, n_kv_head=1, intermediate_size=12, tie_embeddings=False
    )
    assert untied.head(2).head.weight is not untied.blocks[0][0].embed_tokens.weight
    with pytest.raises(ValueError, match="preset must be one of"):
        build("gpt2", preset="huge")
    eager = build("gpt2", vocab_size=20, n_positions=16, attention="eager", **TINY_GPT2)
    assert eager.blocks[1].config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="attention must be one of"):
        build("llama", attention="flash")
    with pytest.raises(ValueError, match="model sizes must be at least 1, got n_layer=0"):
        build("gpt2", n_layer=0)


def test_lora_on_gpt2_trains_adapters_and_the_final_norm_never_the_tied_embedding():
    torch.manual_seed(0)
    net = build("gpt2", vocab_size=32, n_positions=8, adapter="lora", **TINY_GPT2)
    embedding = net.blocks[0][0].wte.weight
    adapters = adapter_parameters(net)
    assert len(adapters) == 2 * TINY_GPT2["n_layer"] and all(".c_attn.lora_" in n for n in adapters)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(adapters) | {"heads.0.norm.weight", "heads.0.norm.bias"}
    assert not embedding.requires_grad
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    x = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(0))
    for h in (1, 2, 3, 3):  # LoRA's B starts at zero, so A first moves on the second step
        opt.zero_grad()
        MPC(net, h).backward(x, x)
        assert embedding.grad is None
        opt.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


@pytest.mark.parametrize("store", ["state_dict", "once"])
def test_weights_load_from_a_local_file_with_the_tied_weight_stored_once(tmp_path, store):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, **TINY_GPT2))
    state = model.state_dict()
    if store == "once":  # as save_pretrained writes it: the LM head is the embedding
        del state["lm_head.weight"]
    path = tmp_path / "gpt2.pt"
    torch.save(state, path)
    torch.manual_seed(2)
    net = build("gpt2", vocab_size=32, n_positions=8, weights=str(path), **TINY_GPT2)
    assert torch.equal(net.blocks[0][0].wte.weight, model.transformer.wte.weight)
    assert net.head(3).head.weight is net.blocks[0][0].wte.weight
    torch.save({k: v for k, v in state.items() if k != "transformer.wpe.weight"}, path)
    with pytest.raises(ValueError, match="missing: transformer.wpe.weight"):
        build("gpt2", vocab_size=32, n_positions=8, weights=str(path), **TINY_GPT2)


def recede(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "recede", *argv], env=env, capture_output=True, text=True, timeout=300)


def lm_options(corpus: Path) -> list[str]:
    return [
        "--model",
        "gpt2",
        "--data",
        "text",
        "--data-opt",
        f"path={corpus}",
        "--data-opt",
        "seq_len=32",
        *[a for k, v in TINY_GPT2.items() for a in ("--model-opt", f"{k}={v}")],
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--no-progress",
    ]


def test_train_and_compare_report_bits_per_byte_tokens_per_second_and_the_corpus(corpus, tmp_path):
    common = lm_options(corpus)
    train = recede(
        "train",
        *common,
        "--epochs",
        "1",
        "--optimizer",
        "adam",
        "--lr",
        "3e-3",
        "--method",
        "bp",
        "--out",
        str(tmp_path / "t"),
    )
    assert train.returncode == 0, train.stderr
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    row = metrics["rows"][0]
    assert row["test bits/byte"] == pytest.approx(row["test loss"] / 0.6931471805599453)
    assert row["tokens/s"] > 0 and metrics["data"]["tokenizer"] == "bytes"
    assert len(metrics["data"]["sha256"]) == 64
    compare = recede(
        "compare",
        *common,
        "--epochs",
        "1",
        "--methods",
        "bp",
        "ckpt",
        "ff",
        "mpc:2",
        "loco:2",
        "bpm-ff",
        "--bpm-period",
        "4",
        "--bpm-samples",
        "16",
        "--timing-steps",
        "1",
        "--cosine-batches",
        "1",
        "--out",
        str(tmp_path / "c"),
    )
    assert compare.returncode == 0, compare.stderr
    rows = {r["method"]: r for r in json.loads((tmp_path / "c" / "metrics.json").read_text())["rows"]}
    assert list(rows) == ["BP", "BP+ckpt", "FF", "MPC(h=2)", "LoCo2", "FF+BPM"]
    assert rows["BP+ckpt"]["test bits/byte"] == pytest.approx(rows["BP"]["test bits/byte"], rel=1e-5)
    assert rows["FF"]["saved ratio"] < rows["MPC(h=2)"]["saved ratio"] < 1  # the meter; memory ratio is the real peak
    assert all(r["real MiB"] > 0 for r in rows.values())
    assert "test bits/byte" in (tmp_path / "c" / "report.md").read_text()


def test_bench_and_select_run_on_text(corpus, tmp_path):
    common = lm_options(corpus)
    bench = recede("bench", *common, "--methods", "ff", "mpc:2", "--repeats", "1", "--out", str(tmp_path / "b"))
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((tmp_path / "b" / "metrics.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["BP", "FF", "MPC(h=2)"] and all(r["tokens/s"] > 0 for r in rows)
    select = recede(
        "select",
        "--model",
        "gpt2",
        "--data",
        "text",
        "--data-opt",
        f"path={corpus}",
        "--data-opt",
        "seq_len=32",
        *[a for k, v in TINY_GPT2.items() for a in ("--model-opt", f"{k}={v}")],
        "--batch-size",
        "4",
        "--batches",
        "2",
        "--weight",
        "0.5",
        "--out",
        str(tmp_path / "s"),
    )
    assert select.returncode == 0, select.stderr
    selection = json.loads((tmp_path / "s" / "selection.json").read_text())
    assert 1 <= selection["h"] <= 3 and selection["data"]["files"] == 8
