"""The prompts a workload sends: token ids, or text that goes through the engine's tokenizer.

Both modes send the same tokens: text prompts are built from :meth:`Workload.prompts`' ids.

- ``token-ids``: the ids themselves (the server skips tokenization; its detokenizer still runs
  unless the engine was started without a tokenizer).
- ``text`` with the synthetic tokenizer (config-only models; :mod:`pytest_mgpu.models.tokenizer`):
  ``"t<id> t<id> ..."``, exactly ``input_len`` tokens by construction, built here without any
  tokenizer library.
- ``text`` with the model's own tokenizer: built through the server's ``/tokenize`` and
  ``/detokenize`` endpoints as ``vllm bench serve``'s random dataset builds it with the tokenizer
  in-process: decode the ids, re-encode the text, and adjust (truncate, or append ids) until the
  text encodes to the target length; the target leaves room for the special tokens the server
  adds to a completion prompt (a BOS), so the server counts ``input_len`` prompt tokens.

The pytest process never imports ``transformers`` or ``tokenizers``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PromptError
from ..models.tokenizer import SYNTHETIC, TokenizerRef, synthetic_text
from .workload import PROMPT_MODES, Workload

TEXT, TOKEN_IDS = PROMPT_MODES
#: Decode/encode rounds per prompt before giving up (``vllm bench serve`` uses 10 too).
MAX_RETRIES = 10

Prompt = str | list[int]


@dataclass
class PromptSet:
    """The prompts of one workload: measured and warm-up, with the prompt tokens each should count."""

    measured: Sequence[Prompt]
    warmup: Sequence[Prompt]
    #: Prompt tokens the server should report per measured request (``usage.prompt_tokens``).
    expected_lens: list[int] = field(default_factory=list)


def resolve_mode(requested: str | None, tokenizer: TokenizerRef | None, engine: str) -> str:
    """The prompt mode to use: ``requested``, or text where the engine can tokenize (else token ids).

    Asking for text from an engine without a tokenizer raises :class:`PromptError` with the fix.
    """
    if requested is None:
        return TEXT if tokenizer is not None else TOKEN_IDS
    if requested not in PROMPT_MODES:
        raise PromptError(f"prompt={requested!r} is not a prompt mode; use one of {', '.join(PROMPT_MODES)}")
    if requested == TEXT and tokenizer is None:
        raise PromptError(
            f"{engine} was started without a tokenizer (e.g. skip-tokenizer-init), so it cannot take text "
            f"prompts; use --mgpu-prompt token-ids (or run(prompt='token-ids')), or drop that engine option"
        )
    return requested


def build_prompts(
    workload: Workload,
    tokenizer: TokenizerRef | None,
    base_url: str = "",
    timeout_s: float = 60.0,
) -> PromptSet:
    """The prompts ``workload`` sends in its prompt mode (measured: stream offset 0; warm-up: 1)."""
    n, w = workload.num_requests, workload.warmup_requests
    measured_ids = workload.prompts(n, offset=0)
    warm_ids = workload.prompts(w, offset=1) if w else []
    if workload.prompt == TOKEN_IDS:
        return PromptSet(list(measured_ids), list(warm_ids), [len(p) for p in measured_ids])
    if tokenizer is None:
        raise PromptError("text prompts need an engine tokenizer; use prompt='token-ids'")
    if tokenizer.kind == SYNTHETIC:
        return PromptSet(
            [synthetic_text(p) for p in measured_ids], [synthetic_text(p) for p in warm_ids],
            [len(p) for p in measured_ids],
        )
    server = ServerTokenizer(base_url, timeout_s)
    rng = np.random.default_rng([workload.seed, 7])
    vocab, specials = tokenizer_vocab(tokenizer.path)
    vocab = min(vocab or workload.vocab_size, workload.vocab_size)
    ids = [allowed_ids(p, vocab, specials) for p in measured_ids + warm_ids]
    texts, lens = server.texts(ids, vocab, rng, specials)
    return PromptSet(texts[:n], texts[n:], lens[:n])


def tokenizer_vocab(path: Path | None) -> tuple[int | None, set[int]]:
    """(vocabulary size, special ids) from a directory's ``tokenizer.json``, read as plain JSON; (None, {}) if absent.

    ``/detokenize`` silently drops an id beyond the tokenizer's vocabulary (which may be smaller
    than the model's ``vocab_size``), so prompt ids are kept below it and off the special ids.
    """
    f = path / "tokenizer.json" if path is not None else None
    if f is None or not f.is_file():
        return None, set()
    try:
        data = json.loads(f.read_text())
        vocab = data.get("model", {}).get("vocab")
        ids: list[int] = []
        if isinstance(vocab, dict):
            ids = [int(v) for v in vocab.values()]
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            ids = list(range(len(vocab)))
        added = data.get("added_tokens") or []
        ids += [int(t["id"]) for t in added]
        specials = {int(t["id"]) for t in added if t.get("special")}
        return (max(ids) + 1 if ids else None), specials
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None, set()


def allowed_ids(ids: Sequence[int], vocab: int, specials: set[int]) -> list[int]:
    """``ids`` moved into ``[0, vocab)`` and off ``specials`` (deterministically: the next allowed id)."""
    out = []
    for i in ids:
        j = i % vocab
        while j in specials:
            j = (j + 1) % vocab
        out.append(j)
    return out


class ServerTokenizer:
    """The engine's own tokenizer, reached through its ``/tokenize`` and ``/detokenize`` endpoints."""

    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise PromptError(
                f"POST {path} answered HTTP {exc.code}: {detail}; text prompts with the model's own tokenizer "
                f"need an engine that serves /tokenize and /detokenize (vLLM does); "
                f"use --mgpu-prompt token-ids for this engine"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PromptError(f"POST {path} failed: {exc}") from None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text`` (``/tokenize``)."""
        out = self._post("/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens})
        return [int(t) for t in out["tokens"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (``/detokenize``)."""
        return str(self._post("/detokenize", {"tokens": list(ids)})["prompt"])

    def num_special_tokens(self) -> int:
        """Tokens the server adds around a completion prompt (a BOS for Llama tokenizers)."""
        return len(self.encode("", add_special_tokens=True))

    def texts(
        self, id_prompts: Sequence[Sequence[int]], vocab_size: int, rng: np.random.Generator,
        special_ids: set[int] | None = None,
    ) -> tuple[list[str], list[int]]:
        """Texts that encode to ``len(ids) - specials`` tokens each, and the prompt tokens the server will count.

        As ``vllm bench serve``'s ``gen_prompt_decode_to_target_len``: decode, re-encode; truncate when
        too long, append random ids when too short; up to :data:`MAX_RETRIES` rounds. Byte-level
        tokenizers can oscillate there (random ids decode to partial UTF-8), so then the longest
        character prefix that encodes to at most the target is searched for (:meth:`fit_prefix`).
        A prompt that still misses its length is an error (vLLM's benchmark only warns).
        """
        added = self.num_special_tokens()
        texts: list[str] = []
        lens: list[int] = []
        for ids in id_prompts:
            target = max(1, len(ids) - added)
            seq = list(ids[:target])
            text = ""
            for _ in range(MAX_RETRIES + 1):
                text = self.decode(seq)
                seq = self.encode(text)
                if len(seq) == target:
                    break
                if len(seq) < target:
                    extra = rng.integers(0, vocab_size, size=target - len(seq)).tolist()
                    seq += allowed_ids(extra, vocab_size, special_ids or set())
                else:
                    seq = seq[:target]
            else:
                text = self.fit_prefix(text, target, vocab_size, rng, special_ids or set())
            texts.append(text)
            lens.append(target + added)
        return texts, lens

    def fit_prefix(
        self, text: str, target: int, vocab_size: int, rng: np.random.Generator, special_ids: set[int]
    ) -> str:
        """The longest character prefix of ``text`` (made long enough first) that encodes to ``target`` tokens.

        Token counts are nearly monotone in the prefix length: binary search for the longest prefix
        with at most ``target`` tokens, then try a few characters more. Raises :class:`PromptError`.
        """
        text = text.replace("\ufffd", "")
        for _ in range(MAX_RETRIES):
            if len(self.encode(text)) >= target:
                break
            more = allowed_ids(rng.integers(0, vocab_size, size=target).tolist(), vocab_size, special_ids)
            text += self.decode(more).replace("\ufffd", "")
        lo, hi = 0, len(text)
        while lo < hi:  # longest prefix with count <= target
            mid = (lo + hi + 1) // 2
            if len(self.encode(text[:mid])) <= target:
                lo = mid
            else:
                hi = mid - 1
        for cut in range(lo, min(lo + 4, len(text)) + 1):
            if len(self.encode(text[:cut])) == target:
                return text[:cut]
        raise PromptError(
            f"could not build a text prompt of {target} tokens with the server's tokenizer in {MAX_RETRIES} "
            f"decode/encode rounds nor by a prefix search; use --mgpu-prompt token-ids"
        )


__all__ = [
    "TEXT", "TOKEN_IDS", "PromptSet", "ServerTokenizer", "allowed_ids", "build_prompts", "resolve_mode",
    "tokenizer_vocab",
]
