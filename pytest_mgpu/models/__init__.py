"""Config-only models shipped with the plugin, run with dummy (random) weights.

Shared by every layer (model sizes, the synthetic tokenizer); imports only ``errors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import ModelError

BUILTIN_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Model:
    """A model directory holding at least ``config.json``."""

    name: str
    path: Path

    @cached_property
    def config(self) -> dict[str, Any]:
        """The parsed and checked ``config.json`` (read once per Model); ModelError names the model and file."""
        return read_config(self.path / "config.json", self.name)

    @property
    def num_heads(self) -> int:
        """Attention heads, which tensor parallelism must divide."""
        return int(self.config["num_attention_heads"])

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads (GQA); equals ``num_heads`` for MHA."""
        c = self.config
        return int(c.get("num_key_value_heads") or c["num_attention_heads"])

    @property
    def num_layers(self) -> int:
        """Transformer layers, which pipeline parallelism splits."""
        return int(self.config["num_hidden_layers"])

    @property
    def vocab_size(self) -> int:
        """Vocabulary size, the upper bound for prompt token ids."""
        return int(self.config["vocab_size"])


#: Keys every model's config.json must hold, as positive ints: the layout checks and sizes need them.
REQUIRED_KEYS = ("num_attention_heads", "num_hidden_layers", "hidden_size", "vocab_size")
#: Keys that may be absent or null, but must be positive ints when given.
OPTIONAL_INT_KEYS = ("num_key_value_heads", "intermediate_size", "max_position_embeddings", "head_dim")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_config(path: Path, name: str) -> dict[str, Any]:
    """Read and check a model's ``config.json``; a truncated, empty or non-object file is a ModelError.

    The message names the model, the file and what is wrong with it.
    """
    where = f"model {name!r}: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{where} cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"is it truncated? Restore the model's config.json"
        ) from None
    if not isinstance(data, dict):
        raise ModelError(
            f"{where} holds a JSON {type(data).__name__}, not an object of model settings "
            f"(a Hugging Face config.json such as pytest_mgpu/models/tiny-llama/config.json)"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelError(f"{where} lacks {', '.join(missing)}; a model config needs {', '.join(REQUIRED_KEYS)}")
    bad = [f"{k}={data[k]!r}" for k in REQUIRED_KEYS if not _positive_int(data[k])]
    bad += [f"{k}={data[k]!r}" for k in OPTIONAL_INT_KEYS if data.get(k) is not None and not _positive_int(data[k])]
    if bad:
        raise ModelError(f"{where} has {', '.join(bad)}; these must be positive integers")
    return data


def builtin_names() -> list[str]:
    """Names of the models shipped in ``pytest_mgpu/models``."""
    return sorted(p.parent.name for p in BUILTIN_DIR.glob("*/config.json"))


def resolve_model(ref: str, search: list[Path] | None = None) -> Model:
    """Find a model by name (built-in or under ``search`` dirs) or by directory path.

    Its ``config.json`` is read and checked here (:func:`read_config`).
    """
    candidates = [Path(ref)] + [d / ref for d in (search or [])] + [BUILTIN_DIR / ref]
    for c in candidates:
        if (c / "config.json").is_file():
            model = Model(name=c.name, path=c.resolve())
            model.config  # noqa: B018  # read and check it now: a broken config.json is an error here
            return model
    raise ModelError(
        f"model {ref!r} not found: no config.json in {', '.join(str(c) for c in candidates)}; "
        f"built-in models: {', '.join(builtin_names())}"
    )


def check_layout(model: Model, tp: int, pp: int) -> str | None:
    """Why ``tp``/``pp`` cannot run ``model``, or None if they can."""
    if model.num_heads % tp:
        return f"tp={tp} does not divide the {model.num_heads} attention heads of {model.name}"
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        return f"tp={tp} is incompatible with the {model.num_kv_heads} KV heads of {model.name}"
    if pp > model.num_layers:
        return f"pp={pp} exceeds the {model.num_layers} layers of {model.name}"
    return None
