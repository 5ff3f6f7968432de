"""Config-only models shipped with the plugin, run with dummy (random) weights."""

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
        """The parsed ``config.json`` (read once per Model)."""
        return json.loads((self.path / "config.json").read_text())

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


def builtin_names() -> list[str]:
    """Names of the models shipped in ``pytest_mgpu/models``."""
    return sorted(p.parent.name for p in BUILTIN_DIR.glob("*/config.json"))


def resolve_model(ref: str, search: list[Path] | None = None) -> Model:
    """Find a model by name (built-in or under ``search`` dirs) or by directory path."""
    candidates = [Path(ref)] + [d / ref for d in (search or [])] + [BUILTIN_DIR / ref]
    for c in candidates:
        if (c / "config.json").is_file():
            return Model(name=c.name, path=c.resolve())
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
