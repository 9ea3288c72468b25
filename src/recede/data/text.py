"""Text for language models, offline: byte-level by default, optionally a BPE trained here.

``load("text")`` reads a corpus, splits it **by file** into training and validation text, turns
each split into one stream of token ids and cuts it into windows of ``seq_len`` tokens
(training windows start every ``stride`` tokens; validation windows never overlap).  A sample
is ``(ids, ids)``: the model's loss shifts the targets itself (next-token prediction).

* **Corpus.** By default the Python standard library's own source files (:data:`STDLIB_FILES`,
  a pinned, sorted list of ~150 modules present in CPython 3.10–3.13, about 5 MB), read from
  the running interpreter, so nothing is downloaded.  Their contents differ a little between
  Python versions, so the corpus is identified by a SHA-256 over its file names and bytes,
  recorded with the Python version in ``Task.info`` and written into every result.  ``path=``
  takes a user's folder of ``.txt`` files (searched recursively) or a single text file.
* **Split.** Files are ordered by the SHA-256 of their relative path and the first
  ``max(1, round(val_fraction · n))`` are validation: deterministic, independent of the order
  files are listed in, and no file is in both splits.  A single file is split by position
  (its last ``val_fraction`` of bytes).
* **Tokens.** ``tokenizer="bytes"``: the UTF-8 bytes, vocabulary 256.  ``tokenizer="bpe"``: a
  byte-level BPE of ``vocab_size`` tokens trained with the ``tokenizers`` package on the
  training split only.

The task's loss is nats per token; :meth:`recede.data.Task.metrics` turns a mean loss into bits
per byte (``loss / ln 2 / bytes_per_token``) and perplexity.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import Dataset

from recede.data import Task, register

TOKENIZERS = ("bytes", "bpe")

# Top-level modules and package files present as source in CPython 3.10, 3.11, 3.12 and 3.13
# (none removed by PEP 594 or 3.12's removals, none turned into a package in those versions,
# none split off by Linux distributions: no tkinter, idlelib, lib2to3, distutils or test).
STDLIB_FILES = (
    "_pydecimal.py",
    "abc.py",
    "argparse.py",
    "ast.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "asyncio/futures.py",
    "asyncio/tasks.py",
    "base64.py",
    "bdb.py",
    "bisect.py",
    "bz2.py",
    "cProfile.py",
    "calendar.py",
    "cmd.py",
    "code.py",
    "codecs.py",
    "codeop.py",
    "collections/__init__.py",
    "colorsys.py",
    "compileall.py",
    "concurrent/futures/_base.py",
    "concurrent/futures/process.py",
    "concurrent/futures/thread.py",
    "configparser.py",
    "contextlib.py",
    "contextvars.py",
    "copy.py",
    "copyreg.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "doctest.py",
    "email/_header_value_parser.py",
    "email/message.py",
    "email/utils.py",
    "enum.py",
    "filecmp.py",
    "fileinput.py",
    "fnmatch.py",
    "fractions.py",
    "ftplib.py",
    "functools.py",
    "genericpath.py",
    "getopt.py",
    "gettext.py",
    "glob.py",
    "graphlib.py",
    "gzip.py",
    "hashlib.py",
    "heapq.py",
    "hmac.py",
    "html/parser.py",
    "http/client.py",
    "http/cookiejar.py",
    "http/server.py",
    "imaplib.py",
    "inspect.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "keyword.py",
    "linecache.py",
    "locale.py",
    "logging/__init__.py",
    "logging/handlers.py",
    "lzma.py",
    "mailbox.py",
    "mimetypes.py",
    "modulefinder.py",
    "multiprocessing/connection.py",
    "multiprocessing/pool.py",
    "netrc.py",
    "ntpath.py",
    "numbers.py",
    "operator.py",
    "optparse.py",
    "os.py",
    "pdb.py",
    "pickle.py",
    "pickletools.py",
    "pkgutil.py",
    "platform.py",
    "plistlib.py",
    "poplib.py",
    "posixpath.py",
    "pprint.py",
    "profile.py",
    "pstats.py",
    "pty.py",
    "py_compile.py",
    "pyclbr.py",
    "pydoc.py",
    "queue.py",
    "quopri.py",
    "random.py",
    "reprlib.py",
    "rlcompleter.py",
    "runpy.py",
    "sched.py",
    "secrets.py",
    "selectors.py",
    "shelve.py",
    "shlex.py",
    "shutil.py",
    "signal.py",
    "smtplib.py",
    "socket.py",
    "socketserver.py",
    "ssl.py",
    "stat.py",
    "statistics.py",
    "string.py",
    "stringprep.py",
    "struct.py",
    "subprocess.py",
    "symtable.py",
    "sysconfig.py",
    "tabnanny.py",
    "tarfile.py",
    "tempfile.py",
    "textwrap.py",
    "threading.py",
    "timeit.py",
    "token.py",
    "tokenize.py",
    "trace.py",
    "traceback.py",
    "tracemalloc.py",
    "tty.py",
    "types.py",
    "typing.py",
    "unittest/case.py",
    "unittest/mock.py",
    "urllib/parse.py",
    "urllib/request.py",
    "uuid.py",
    "warnings.py",
    "wave.py",
    "weakref.py",
    "webbrowser.py",
    "xml/dom/minidom.py",
    "xml/etree/ElementTree.py",
    "zipimport.py",
    "zoneinfo/_zoneinfo.py",
)


class TokenWindows(Dataset):
    """Windows ``tokens[i·stride : i·stride + seq_len]`` of a token stream, as ``(ids, ids)``."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, stride: int) -> None:
        self.tokens, self.seq_len, self.stride = tokens, seq_len, stride

    def __len__(self) -> int:
        return (len(self.tokens) - self.seq_len) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        ids = self.tokens[i * self.stride : i * self.stride + self.seq_len].long()
        return ids, ids


def stdlib_root() -> Path:
    """The running interpreter's standard-library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _read(path: Path, name: str) -> bytes:
    """The bytes of a text file; a file with NUL bytes or that is not UTF-8 is refused."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"text: {name} is not UTF-8 text (byte {err.start}); binary files are not accepted") from None
    if b"\0" in raw:
        raise ValueError(f"text: {name} contains NUL bytes; binary files are not accepted")
    return raw


def corpus_files(path: str | None) -> tuple[dict[str, bytes], str]:
    """``({relative name: bytes}, description)`` of the corpus at ``path`` (None: the stdlib)."""
    if path is None:
        root = stdlib_root()
        missing = [f for f in STDLIB_FILES if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"text: the standard-library sources in {root} lack {missing[:5]}"
                f"{' …' if len(missing) > 5 else ''} ({len(missing)} of "
                f"{len(STDLIB_FILES)}); give path= a folder of .txt files"
            )
        return {f: _read(root / f, f) for f in STDLIB_FILES}, f"Python {platform.python_version()} stdlib"
    source = Path(path).expanduser()
    if source.is_file():
        return {source.name: _read(source, str(source))}, str(source)
    if not source.is_dir():
        raise FileNotFoundError(f"text: path {str(source)!r} is neither a file nor a folder")
    files = sorted(p for p in source.rglob("*.txt") if p.is_file())
    if not files:
        raise ValueError(f"text: folder {str(source)!r} has no .txt files")
    return {str(p.relative_to(source)): _read(p, str(p)) for p in files}, str(source)


def split_by_file(files: dict[str, bytes], val_fraction: float) -> tuple[bytes, bytes, list[str]]:
    """``(train, validation, validation names)``: whole files, ordered by name within a split."""
    if len(files) == 1:
        ((name, raw),) = files.items()
        cut = len(raw) - max(1, round(val_fraction * len(raw)))
        return raw[:cut], raw[cut:], [f"{name} (last {len(raw) - cut} bytes)"]
    by_hash = sorted(files, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    held_out = set(by_hash[: max(1, round(val_fraction * len(files)))])
    train = b"".join(files[n] for n in sorted(files) if n not in held_out)
    return train, b"".join(files[n] for n in sorted(held_out)), sorted(held_out)


def checksum(files: dict[str, bytes]) -> str:
    """SHA-256 over the sorted file names and their bytes: the corpus's identity."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()


def _bpe(train: bytes, vocab_size: int):
    """A byte-level BPE with ``vocab_size`` tokens, trained on the training text only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    lines = train.decode("utf-8").splitlines(keepends=True)
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer


def _encode(tokenizer, text: bytes) -> torch.Tensor:
    lines = text.decode("utf-8").splitlines(keepends=True)
    return torch.tensor([i for enc in tokenizer.encode_batch(lines) for i in enc.ids], dtype=torch.int32)


@register("text")
def text(
    path: str | None = None,
    seq_len: int = 256,
    stride: int | None = None,
    tokenizer: str = "bytes",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
) -> Task:
    """A language-modelling task on a text corpus (see the module docstring).

    Args:
        path: a folder of ``.txt`` files or one text file; ``None``: the pinned stdlib corpus.
        seq_len: tokens per sample (the model's context).
        stride: tokens between the starts of consecutive training windows (default ``seq_len``:
            no overlap; a larger stride skips text, a smaller one overlaps windows).
        tokenizer: ``"bytes"`` (vocabulary 256) or ``"bpe"`` (trained on the training split).
        vocab_size: the BPE's vocabulary (``tokenizer="bpe"`` only; default 1024).
        val_fraction: the share of files (of bytes, for one file) held out for validation.
    """
    stride = seq_len if stride is None else stride
    if seq_len < 2 or stride < 1:
        raise ValueError(f"text: seq_len must be >= 2 and stride >= 1, got seq_len={seq_len}, stride={stride}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"text: tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    if tokenizer == "bytes" and vocab_size is not None:
        raise ValueError(f"text: vocab_size={vocab_size} needs tokenizer=bpe (bytes have a vocabulary of 256)")
    if not 0 < val_fraction < 1:
        raise ValueError(f"text: val_fraction must be in (0, 1), got {val_fraction}")
    files, source = corpus_files(path)
    if not any(files.values()):
        raise ValueError(f"text: the corpus {source} is empty")
    train, val, held_out = split_by_file(files, val_fraction)
    if tokenizer == "bytes":
        vocab = 256
        train_ids, val_ids = (torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in (train, val))
    else:
        vocab_size = 1024 if vocab_size is None else vocab_size
        if vocab_size < 257:
            raise ValueError(f"text: a byte-level BPE needs vocab_size > 256, got {vocab_size}")
        bpe = _bpe(train, vocab_size)
        vocab = bpe.get_vocab_size()
        train_ids, val_ids = _encode(bpe, train), _encode(bpe, val)
    for split, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < seq_len:
            raise ValueError(
                f"text: seq_len {seq_len} is longer than the {split} split of {source} "
                f"({len(ids)} tokens); use a smaller seq_len or more text"
            )
    info = {
        "corpus": source,
        "sha256": checksum(files),
        "files": len(files),
        "validation files": held_out,
        "train tokens": len(train_ids),
        "validation tokens": len(val_ids),
        "tokenizer": tokenizer,
        "vocab_size": vocab,
        "bytes_per_token": len(val) / len(val_ids),
    }
    return Task(
        "text",
        TokenWindows(train_ids, seq_len, stride),
        TokenWindows(val_ids, seq_len, seq_len),
        "language-model",
        (seq_len,),
        vocab,
        info,
    )
