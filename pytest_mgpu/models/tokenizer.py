"""Tokenizers for prompts: the model directory's own, or a synthetic one for config-only models.

The synthetic tokenizer is a word-level vocabulary with one word per id, ``t<id>`` (ids 0-2 are
the specials ``<unk>``, ``<s>``, ``</s>``), split on whitespace. Its text is known by
construction, so the pytest process builds text prompts of exactly ``n`` tokens without importing
``transformers`` or ``tokenizers``: ``synthetic_text(ids)`` is ``" ".join(f"t{i}" ...)``, and a
server that loaded the same files counts ``len(text.split())`` tokens (no special tokens are
added: there is no post-processor).

It is written as plain JSON in the ``tokenizers`` format that Hugging Face's
``PreTrainedTokenizerFast`` (and so vLLM and ``trtllm-serve``) loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Files any of which makes a directory hold a Hugging Face tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
#: The synthetic tokenizer's special tokens (unk, bos, eos) and their ids: prompts never use them.
#: Their text must not be a prefix of any word: added tokens are matched inside the text before it
#: is split into words, so a special ``t2`` would cut ``t27234`` into ``t2`` + ``7234``.
SYNTHETIC_SPECIALS = {0: "<unk>", 1: "<s>", 2: "</s>"}
SYNTHETIC_SPECIAL_IDS = tuple(SYNTHETIC_SPECIALS)
#: Version of the files :func:`write_synthetic_tokenizer` writes (in the directory name, so an old
#: copy in a log directory is never reused).
FORMAT = "f2"
#: Lowest id a prompt uses: clear of the special ids, as :meth:`Workload.prompts` draws them.
PROMPT_MIN_ID = 100

#: The kinds of tokenizer an engine may serve with.
SYNTHETIC = "synthetic"
MODEL = "model"


@dataclass(frozen=True)
class TokenizerRef:
    """The tokenizer an engine was started with.

    ``kind`` is ``"synthetic"`` (written by the plugin: text is built here, by construction) or
    ``"model"`` (the model directory's own, or one named by an engine option: text prompts are
    built through the server's ``/tokenize`` and ``/detokenize``). ``path`` is its directory (None
    for an engine that tokenizes the synthetic way without files, such as the sim).
    """

    kind: str
    path: Path | None = None


def has_tokenizer(model_dir: Path) -> bool:
    """Whether the directory holds a Hugging Face tokenizer."""
    return any((model_dir / f).is_file() for f in TOKENIZER_FILES)


def synthetic_word(token_id: int) -> str:
    """The synthetic tokenizer's word for ``token_id`` (``t<id>``; the three specials have their own)."""
    return SYNTHETIC_SPECIALS.get(token_id, f"t{token_id}")


def synthetic_text(ids: Iterable[int]) -> str:
    """The text the synthetic tokenizer encodes to exactly ``ids`` (ids >= 3: prompts never hold a special)."""
    return " ".join(synthetic_word(i) for i in ids)


def synthetic_token_count(text: str) -> int:
    """Tokens the synthetic tokenizer makes of ``text``: its whitespace-separated words."""
    return len(text.split())


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_synthetic_tokenizer(directory: Path, vocab_size: int) -> Path:
    """Write a word-level tokenizer with ids ``0..vocab_size-1`` (words ``t<id>``, specials below).

    Config-only models have no tokenizer. With this one an engine tokenizes text prompts and
    detokenizes outputs as it would for a real model, while the plugin knows every prompt's
    tokens by construction (:func:`synthetic_text`). Ids 0-2 are the special ``<unk>``, ``<s>``,
    ``</s>``; nothing is added around a prompt, so ``n`` words are ``n`` tokens. Idempotent.
    """
    if vocab_size < len(SYNTHETIC_SPECIAL_IDS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for a synthetic tokenizer")
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {synthetic_word(i): i for i in range(vocab_size)}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": synthetic_word(i), "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i in SYNTHETIC_SPECIAL_IDS
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": synthetic_word(0)},
    }
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": SYNTHETIC_SPECIALS[0], "bos_token": SYNTHETIC_SPECIALS[1], "eos_token": SYNTHETIC_SPECIALS[2],
        "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 1_000_000,
    }
    _atomic_write(directory / "tokenizer.json", json.dumps(tok))
    _atomic_write(directory / "tokenizer_config.json", json.dumps(cfg))
    return directory


def synthetic_tokenizer_dir(root: Path, vocab_size: int, config: Mapping[str, Any] | None = None) -> Path:
    """Where the synthetic tokenizer of ``vocab_size`` words lives under ``root`` (written if absent).

    With the model's ``config`` the directory also gets that ``config.json`` (and a name that
    depends on it): vLLM parses a tokenizer directory's config too, and without one it logs two
    "Error parsing config ... Unrecognized model" lines per process and sleeps 2 s on each.
    """
    name = f"tokenizer-synthetic-v{vocab_size}-{FORMAT}"
    text = None
    if config is not None:
        text = json.dumps(dict(config), sort_keys=True, indent=1)
        name += "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    d = root / name
    if not ((d / "tokenizer.json").is_file() and (d / "tokenizer_config.json").is_file()):
        write_synthetic_tokenizer(d, vocab_size)
    if text is not None and not (d / "config.json").is_file():
        _atomic_write(d / "config.json", text)
    return d


__all__ = [
    "MODEL",
    "SYNTHETIC",
    "TOKENIZER_FILES",
    "TokenizerRef",
    "has_tokenizer",
    "synthetic_text",
    "synthetic_token_count",
    "synthetic_tokenizer_dir",
    "write_synthetic_tokenizer",
]
