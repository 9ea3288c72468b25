"""The text dataset: the pinned stdlib corpus, user folders and files, the split by file, windows,
the BPE option, and one clear error per bad input."""

from __future__ import annotations

import math

import pytest
import torch

from recede import data
from recede.data.text import STDLIB_FILES, split_by_file


def write(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    return folder


def corpus(tmp_path, n: int = 10, size: int = 400):
    return write(tmp_path / "corpus", {f"part{i:02d}.txt": f"<file {i}> " + chr(65 + i) * size for i in range(n)})


def stream(dataset) -> bytes:
    return bytes(dataset.tokens.tolist())


def test_stdlib_corpus_is_pinned_deterministic_and_split_by_file():
    first, second = data.load("text", seq_len=64), data.load("text", seq_len=64)
    assert first.kind == "language-model" and first.output_dim == 256 and first.input_shape == (64,)
    assert first.info["files"] == len(STDLIB_FILES) == len(set(STDLIB_FILES))
    assert list(STDLIB_FILES) == sorted(STDLIB_FILES)
    assert first.info == second.info and len(first.info["sha256"]) == 64
    assert torch.equal(first.train.tokens, second.train.tokens) and torch.equal(first.test.tokens, second.test.tokens)
    held_out = first.info["validation files"]
    assert set(held_out) < set(STDLIB_FILES) and len(held_out) == round(0.1 * len(STDLIB_FILES))
    assert first.info["train tokens"] + first.info["validation tokens"] == sum(
        len((data.text.stdlib_root() / f).read_bytes()) for f in STDLIB_FILES
    )


def test_a_folder_is_split_by_whole_files_and_windowed(tmp_path):
    task = data.load("text", path=str(corpus(tmp_path)), seq_len=32, stride=16, val_fraction=0.2)
    held_out = task.info["validation files"]
    assert len(held_out) == 2
    train, test = stream(task.train), stream(task.test)
    for i in range(10):
        marker = f"<file {i}>".encode()
        assert (marker in test) == (f"part{i:02d}.txt" in held_out) != (marker in train)
    x, y = task.train[1]
    assert x.dtype == torch.long and torch.equal(x, y) and bytes(x.tolist()) == train[16:48]
    assert len(task.train) == (len(train) - 32) // 16 + 1 and len(task.test) == len(test) // 32
    with pytest.raises(IndexError):
        task.train[len(task.train)]


def test_the_split_does_not_depend_on_other_files(tmp_path):
    files = {f"f{i}.txt": b"x" for i in range(20)}
    _, _, held_out = split_by_file(files, 0.1)
    fewer = {n: b for n, b in files.items() if n in held_out or n == "f3.txt"}
    assert set(split_by_file(fewer, 0.5)[2]) <= set(held_out)


def test_one_file_is_split_by_position(tmp_path):
    path = tmp_path / "book.md"
    path.write_text("abcdefghij" * 10)
    task = data.load("text", path=str(path), seq_len=8, val_fraction=0.2)
    assert stream(task.train) + stream(task.test) == b"abcdefghij" * 10 and len(stream(task.test)) == 20


def test_bpe_is_trained_on_the_training_split_and_deterministic(tmp_path):
    folder = write(
        tmp_path / "words", {f"d{i}.txt": "def function(argument):\n    return argument\n" * 30 for i in range(5)}
    )
    first = data.load("text", path=str(folder), seq_len=16, tokenizer="bpe", vocab_size=300)
    second = data.load("text", path=str(folder), seq_len=16, tokenizer="bpe", vocab_size=300)
    assert torch.equal(first.train.tokens, second.train.tokens)
    assert first.output_dim <= 300 and int(first.train.tokens.max()) < first.output_dim
    assert first.info["bytes_per_token"] > 2  # merges compress the repeated text


def test_metrics_are_bits_per_byte_and_perplexity(tmp_path):
    task = data.load("text", path=str(corpus(tmp_path)), seq_len=16)
    assert task.metrics(math.log(2)) == {"bits/byte": pytest.approx(1.0), "perplexity": pytest.approx(2.0)}
    assert data.load("trig", n=10, n_test=5).metrics(1.0) == {}


@pytest.mark.parametrize(
    "setup, options, error, message",
    [
        (lambda d: write(d / "empty", {}), {}, ValueError, "has no .txt files"),
        (lambda d: d / "absent", {}, FileNotFoundError, "neither a file nor a folder"),
        (
            lambda d: write(d / "short", {"a.txt": "abc", "b.txt": "de"}),
            {"seq_len": 8},
            ValueError,
            "seq_len 8 is longer than the training split",
        ),
        (lambda d: write(d / "blank", {"a.txt": "", "b.txt": ""}), {}, ValueError, "is empty"),
        (lambda d: d, {"seq_len": 1}, ValueError, "seq_len must be >= 2"),
        (lambda d: d, {"tokenizer": "wordpiece"}, ValueError, "tokenizer must be one of"),
        (lambda d: d, {"tokenizer": "bpe", "vocab_size": 100}, ValueError, "needs vocab_size > 256"),
        (lambda d: d, {"vocab_size": 512}, ValueError, "vocab_size=512 needs tokenizer=bpe"),
        (lambda d: d, {"val_fraction": 1.0}, ValueError, r"val_fraction must be in \(0, 1\)"),
    ],
)
def test_bad_input_is_named(tmp_path, setup, options, error, message):
    corpus(tmp_path)
    folder = setup(tmp_path / "corpus")
    with pytest.raises(error, match=message):
        data.load("text", path=str(folder), **options)


@pytest.mark.parametrize(
    "content, message", [(b"text\x00more", "contains NUL bytes"), (b"\xff\xfe\x00binary", "is not UTF-8 text")]
)
def test_binary_files_are_refused(tmp_path, content, message):
    folder = corpus(tmp_path)
    (folder / "image.txt").write_bytes(content)
    with pytest.raises(ValueError, match=f"image.txt {message}"):
        data.load("text", path=str(folder))
