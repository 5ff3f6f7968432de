"""Copy a config-only model dir and add a word-level tokenizer with one token per id.

``vllm bench serve``'s ``random`` dataset needs a tokenizer even for a dummy-weight model: it
samples token ids, decodes them to text and sends text. A word-level vocabulary ``t<id>`` with
whitespace splitting makes that round trip exact (one word = one token).

Run it with the engine's interpreter (it needs ``tokenizers`` and ``transformers``)::

    .venv-vllm-cpu/bin/python benchmarks/make_tokenizer.py pytest_mgpu/models/tiny-llama OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

SPECIALS = {0: "<unk>", 1: "<s>", 2: "</s>"}


def make_tokenizer(model_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir`` = ``model_dir``'s config.json + a word-level tokenizer; return ``out_dir``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    config = json.loads((model_dir / "config.json").read_text())
    vocab_size = int(config["vocab_size"])
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_dir / "config.json", out_dir / "config.json")
    vocab = {SPECIALS.get(i, f"t{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        model_max_length=int(config.get("max_position_embeddings", 2048)),
    )
    fast.save_pretrained(str(out_dir))
    return out_dir


def main() -> None:
    """CLI: ``make_tokenizer.py MODEL_DIR OUT_DIR``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    a = ap.parse_args()
    out = make_tokenizer(a.model_dir, a.out_dir)
    print(out)


if __name__ == "__main__":
    main()
