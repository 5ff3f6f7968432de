"""Text and token-id prompts: the synthetic tokenizer, the server's /tokenize path, mode choice, checks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_mgpu.errors import PromptError, WorkloadError
from pytest_mgpu.measure.client import request_body
from pytest_mgpu.measure.metrics import RequestRecord
from pytest_mgpu.measure.prompts import allowed_ids, build_prompts, resolve_mode, tokenizer_vocab
from pytest_mgpu.measure.workload import Workload
from pytest_mgpu.models.tokenizer import (
    TokenizerRef,
    synthetic_text,
    synthetic_token_count,
    synthetic_tokenizer_dir,
    write_synthetic_tokenizer,
)
from pytest_mgpu.run.bench import prompt_len_mismatch

SYN = TokenizerRef("synthetic")


@given(input_len=st.integers(1, 300), n=st.integers(1, 8), w=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_synthetic_text_has_exactly_the_ids_of_the_token_mode(input_len: int, n: int, w: int, seed: int) -> None:
    wl = Workload(input_len=input_len, num_requests=n, warmup_requests=w, seed=seed)
    ids = build_prompts(wl, None)
    text = build_prompts(Workload(**{**wl.__dict__, "prompt": "text"}), SYN)
    assert ids.measured == wl.prompts(n, 0) and ids.warmup == (wl.prompts(w, 1) if w else [])
    assert all(isinstance(t, str) for t in text.measured + text.warmup)
    # Same tokens, word for word: "t<id>" per id, so the synthetic tokenizer counts input_len.
    assert [t.split() for t in text.measured] == [[f"t{i}" for i in p] for p in ids.measured]  # type: ignore[union-attr]
    assert [synthetic_token_count(t) for t in text.measured] == [input_len] * n  # type: ignore[arg-type]
    assert text.expected_lens == ids.expected_lens == [input_len] * n


def test_synthetic_text_and_count() -> None:
    assert synthetic_text([100, 7, 31999]) == "t100 t7 t31999"
    assert synthetic_token_count(" t1  t2\tt3\n") == 3


def test_synthetic_tokenizer_is_idempotent_and_has_no_post_processor(tmp_path: Path) -> None:
    d = synthetic_tokenizer_dir(tmp_path, 500)
    assert d == tmp_path / "tokenizer-synthetic-v500-f2" and not (d / "config.json").exists()
    with_config = synthetic_tokenizer_dir(tmp_path, 500, {"model_type": "llama", "vocab_size": 500})
    assert with_config.name.startswith("tokenizer-synthetic-v500-f2-") and with_config != d
    assert json.loads((with_config / "config.json").read_text())["model_type"] == "llama"
    tok = json.loads((d / "tokenizer.json").read_text())
    # No post-processor: the server adds no BOS, so n words are n prompt tokens.
    assert tok["post_processor"] is None and tok["pre_tokenizer"] == {"type": "WhitespaceSplit"}
    assert [a["id"] for a in tok["added_tokens"]] == [0, 1, 2]
    before = (d / "tokenizer.json").stat().st_mtime_ns
    assert synthetic_tokenizer_dir(tmp_path, 500) == d and (d / "tokenizer.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="too small"):
        write_synthetic_tokenizer(tmp_path / "x", 3)


def test_workload_mode_is_validated_and_named() -> None:
    assert Workload().name == "in128-out128-n256-qps32"
    assert Workload(prompt="text").name == "in128-out128-n256-qps32-text"
    assert Workload(prompt="text").to_dict()["prompt"] == "text"
    # A result recorded before prompt modes existed was sent as token ids.
    old = Workload().to_dict()
    del old["prompt"]
    assert Workload.from_dict(old).prompt == "token-ids"
    with pytest.raises(WorkloadError, match="prompt='words' must be one of text, token-ids"):
        Workload(prompt="words")


def test_mode_defaults_to_text_where_the_engine_can_tokenize() -> None:
    assert resolve_mode(None, SYN, "sim") == "text"
    assert resolve_mode(None, None, "vllm") == "token-ids"
    assert resolve_mode("token-ids", SYN, "sim") == "token-ids"
    with pytest.raises(PromptError, match="vllm was started without a tokenizer .* use --mgpu-prompt token-ids"):
        resolve_mode("text", None, "vllm")
    with pytest.raises(PromptError, match="not a prompt mode"):
        resolve_mode("ids", SYN, "sim")


def test_request_body_sends_text_as_a_string() -> None:
    assert request_body("m", "t1 t2", 4)["prompt"] == "t1 t2"
    assert request_body("m", (5, 6), 4)["prompt"] == [5, 6]


def test_prompt_len_mismatch_names_the_tokenizer() -> None:
    recs = [RequestRecord(prompt_len=n, expected_output_len=2, start=0.0, chunk_times=[1.0]) for n in (8, 9, 8)]
    assert prompt_len_mismatch(recs, [8, 9, 8]) is None
    msg = prompt_len_mismatch(recs, [8, 8, 8])
    assert msg is not None and "1 of 3 requests" in msg and "request 1: 9 tokens, expected 8" in msg
    assert "tokenizer does not match" in msg


# --- the server's own tokenizer -------------------------------------------------------------
class FakeTokenizerServer(BaseHTTPRequestHandler):
    """/tokenize and /detokenize of a word tokenizer with a BOS, whose ids >= 900 decode to two words.

    Decoding such an id and re-encoding gives one token more, the kind of drift real BPE
    tokenizers show, so the builder must truncate and decode again.
    """

    calls: ClassVar[list[str]] = []
    serve_tokenize = True
    doubling = False  # a character tokenizer whose decode writes every character twice: never converges

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeTokenizerServer.calls.append(self.path)
        if self.doubling and self.path == "/tokenize":
            ids = [ord(c) for c in body["prompt"]]
            out: dict[str, object] = {"count": len(ids), "tokens": ids}
        elif self.doubling and self.path == "/detokenize":
            out = {"prompt": "".join(chr(97 + i % 26) * 2 for i in body["tokens"])}
        elif self.path == "/tokenize" and self.serve_tokenize:
            ids = [int(w[1:]) for w in body["prompt"].split()]
            if body.get("add_special_tokens", True):
                ids = [1, *ids]
            out = {"count": len(ids), "tokens": ids}
        elif self.path == "/detokenize" and self.serve_tokenize:
            out = {"prompt": " ".join(f"w{i // 2} w{i - i // 2}" if i >= 900 else f"w{i}" for i in body["tokens"])}
        else:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"detail":"Not Found"}')
            return
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_server() -> Iterator[str]:
    FakeTokenizerServer.calls = []
    FakeTokenizerServer.serve_tokenize = True
    FakeTokenizerServer.doubling = False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeTokenizerServer)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_model_tokenizer_prompts_leave_room_for_the_bos_and_hit_the_length(fake_server: str) -> None:
    wl = Workload(input_len=40, num_requests=6, warmup_requests=2, prompt="text", vocab_size=1000, seed=3)
    ps = build_prompts(wl, TokenizerRef("model", Path("/m")), fake_server)
    assert len(ps.measured) == 6 and len(ps.warmup) == 2
    for text in ps.measured + ps.warmup:
        assert isinstance(text, str) and len(text.split()) == 39  # + the BOS the server adds = 40
    assert ps.expected_lens == [40] * 6
    # 1 call for the specials, then at least one decode/encode round per prompt, and more where an id
    # drifted (ids >= 900 are about a tenth of them): the adjusting path ran.
    assert FakeTokenizerServer.calls.count("/tokenize") > 1 + 8


def test_engine_without_tokenize_endpoint_says_use_token_ids(fake_server: str) -> None:
    FakeTokenizerServer.serve_tokenize = False
    wl = Workload(input_len=8, num_requests=1, warmup_requests=0, prompt="text")
    with pytest.raises(PromptError, match="HTTP 404.*serves /tokenize and /detokenize.*--mgpu-prompt token-ids"):
        build_prompts(wl, TokenizerRef("model", Path("/m")), fake_server)


def test_a_tokenizer_that_never_converges_gets_a_prefix_search(fake_server: str) -> None:
    FakeTokenizerServer.doubling = True
    wl = Workload(input_len=33, num_requests=3, warmup_requests=0, prompt="text", seed=5)
    ps = build_prompts(wl, TokenizerRef("model", None), fake_server)
    # decode -> encode doubles every time (vLLM's loop alone would only warn); the prefix search fits.
    assert [len(t) for t in ps.measured] == [33, 33, 33] and ps.expected_lens == [33] * 3  # type: ignore[arg-type]


def test_prompt_ids_stay_inside_the_tokenizers_vocabulary(tmp_path: Path) -> None:
    write_synthetic_tokenizer(tmp_path, 1000)
    vocab, specials = tokenizer_vocab(tmp_path)
    assert (vocab, specials) == (1000, {0, 1, 2})
    assert tokenizer_vocab(tmp_path / "none") == (None, set())
    assert allowed_ids([5, 999, 1000, 1001, 2002], 1000, {0, 1, 2}) == [5, 999, 3, 3, 3]


@given(ids=st.lists(st.integers(0, 10**6), max_size=50), vocab=st.integers(10, 5000),
       specials=st.sets(st.integers(0, 9), max_size=5))
def test_allowed_ids_property(ids: list[int], vocab: int, specials: set[int]) -> None:
    out = allowed_ids(ids, vocab, specials)
    assert len(out) == len(ids) and all(0 <= i < vocab and i not in specials for i in out)
