"""Text for the byte-level language model: the tokenizer, the corpora, batches of windows, baselines.

* Tokens are bytes (vocabulary 256): any text, any language, any encoding round-trips exactly, and the model's
  cross-entropy in bits is directly "bits per byte".
* The built-in corpus is the Python standard library's own `.py` files: present wherever Python is, so
  training needs no download. Files are split into train/validation by a hash of their relative path (the
  split does not depend on which files exist besides, nor on their order).
* `--text PATH`: the researcher's own UTF-8 text, a file or a folder of files. It stays on the trainer's
  machine; volunteers only see hidden states.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "VOCAB_SIZE",
    "TextCorpus",
    "TextDataError",
    "builtin_corpus",
    "decode",
    "encode",
    "evaluation_windows",
    "load_corpus",
    "load_text",
    "sample_windows",
    "unigram_bpb",
]

VOCAB_SIZE = 256
#: Validation share of the files (by hash), or of the bytes when the text is a single file.
VALIDATION_FRACTION = 0.1
#: A folder may hold at most this much text (bytes): the corpus lives in the trainer's memory.
MAX_TEXT_BYTES = 1 << 30


class TextDataError(ValueError):
    """The text cannot be used: missing path, no files, a binary file; the message names the path."""


def encode(text: str | bytes) -> torch.Tensor:
    """UTF-8 bytes as token ids `[n]` (int64)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        if data
        else torch.zeros(0, dtype=torch.long)
    )


def decode_bytes(tokens: Iterable[int] | torch.Tensor) -> bytes:
    values = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    return bytes(values)


def decode(tokens: Iterable[int] | torch.Tensor) -> str:
    """Token ids back to text; bytes that are not valid UTF-8 (a sample cut mid-character) become U+FFFD."""
    return decode_bytes(tokens).decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class TextCorpus:
    """Train and validation bytes (uint8 tensors) and where they came from."""

    name: str
    train: torch.Tensor
    validation: torch.Tensor
    train_files: int
    validation_files: int

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.train)} training bytes ({self.train_files} files), "
            f"{len(self.validation)} validation bytes ({self.validation_files} files)"
        )


def _is_validation(relative: str, fraction: float) -> bool:
    digest = hashlib.sha256(relative.encode("utf-8", errors="surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _as_tensor(chunks: list[bytes]) -> torch.Tensor:
    data = b"".join(chunks)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _check_text(path: Path, data: bytes) -> None:
    if b"\x00" in data:
        raise TextDataError(f"{path} looks binary (it contains NUL bytes): --text takes UTF-8 text files")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextDataError(
            f"{path} is not UTF-8 text (invalid byte at offset {exc.start}): --text takes UTF-8 text files"
        ) from None


def _split_files(
    name: str, root: Path, files: list[Path], fraction: float, max_bytes: int | None, check: bool
) -> TextCorpus:
    train: list[bytes] = []
    validation: list[bytes] = []
    sizes = [0, 0]
    for path in files:
        relative = path.relative_to(root).as_posix()
        held_out = _is_validation(relative, fraction)
        budget = None if max_bytes is None else (max_bytes * fraction if held_out else max_bytes)
        if budget is not None and sizes[held_out] >= budget:
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            if check:
                raise TextDataError(f"cannot read {path}: {exc.strerror or exc}") from exc
            continue
        if check:
            _check_text(path, data)
        elif b"\x00" in data:
            continue
        if sum(sizes) + len(data) > MAX_TEXT_BYTES:
            raise TextDataError(f"{root} holds more than {MAX_TEXT_BYTES} bytes of text")
        (validation if held_out else train).append(data)
        sizes[held_out] += len(data)
    # A few files may all hash to one side: then the last training file (or first validation file) moves.
    if not validation and len(train) >= 2:
        validation.append(train.pop())
    elif not train and len(validation) >= 2:
        train.append(validation.pop(0))
    if not train or not validation:
        raise TextDataError(f"{root}: need at least two non-empty files (one to train on, one to validate)")
    return TextCorpus(name, _as_tensor(train), _as_tensor(validation), len(train), len(validation))


def builtin_corpus(max_bytes: int | None = None, fraction: float = VALIDATION_FRACTION) -> TextCorpus:
    """The standard library's `.py` sources (tests included: real code too), at most `max_bytes` of
    training text (and about `fraction` of that for validation), in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if p.is_file() and "site-packages" not in p.parts)
    return _split_files("python-stdlib", root, files, fraction, max_bytes, check=False)


def load_text(path: str | Path, fraction: float = VALIDATION_FRACTION) -> TextCorpus:
    """The researcher's own text: a UTF-8 file (its last `fraction` of bytes validate) or a folder of them
    (split by file; hidden files and folders are skipped). TextDataError says what is wrong."""
    root = Path(path)
    if not root.exists():
        raise TextDataError(f"--text {path}: no such file or folder")
    if root.is_file():
        try:
            data = root.read_bytes()
        except OSError as exc:
            raise TextDataError(f"cannot read {root}: {exc.strerror or exc}") from exc
        _check_text(root, data)
        if len(data) < 2:
            raise TextDataError(f"{root} is empty (need some text to train on)")
        cut = max(1, min(len(data) - 1, round(len(data) * (1 - fraction))))
        return TextCorpus(root.name, _as_tensor([data[:cut]]), _as_tensor([data[cut:]]), 1, 1)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise TextDataError(f"--text {path}: the folder holds no files")
    if len(files) == 1:
        return load_text(files[0], fraction)
    return _split_files(root.name, root, files, fraction, None, check=True)


def load_corpus(text: str | None, max_bytes: int | None = None) -> TextCorpus:
    """`--text PATH` if given, else the built-in corpus (capped at `max_bytes` of training text)."""
    return load_text(text) if text else builtin_corpus(max_bytes)


def sample_windows(
    data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs `[batch, seq]` and next-byte targets `[batch, seq]` (int64)."""
    if len(data) < seq_len + 1:
        raise TextDataError(f"the text has {len(data)} bytes, fewer than a window of {seq_len + 1}")
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    windows = data[starts[:, None] + offsets].long()
    return windows[:, :-1], windows[:, 1:]


def evaluation_windows(
    data: torch.Tensor, seq_len: int, max_windows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed windows for validation: evenly spaced over the text (the same every evaluation)."""
    available = len(data) - seq_len - 1
    if available < 0:
        raise TextDataError(
            f"the validation text has {len(data)} bytes, fewer than a window of {seq_len + 1}"
        )
    count = max(1, min(max_windows, available // seq_len + 1))
    starts = torch.linspace(0, available, count).long()
    windows = data[starts[:, None] + torch.arange(seq_len + 1)].long()
    return windows[:, :-1], windows[:, 1:]


def unigram_bpb(train: torch.Tensor, validation: torch.Tensor) -> float:
    """Bits per byte of the validation text under the training text's byte frequencies (add-one smoothed):
    the baseline a language model must beat clearly."""
    counts = torch.bincount(train.long(), minlength=VOCAB_SIZE).double() + 1.0
    log_probs = torch.log2(counts / counts.sum())
    return float(-log_probs[validation.long()].mean()) if len(validation) else math.nan
