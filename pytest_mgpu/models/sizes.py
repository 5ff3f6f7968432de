"""Parameter arithmetic of a dense decoder-only (Llama-like) transformer, from its ``config.json``.

The one place that counts parameters, weight bytes, KV-cache bytes per token and bytes per
dtype: the sim's roofline model and the TensorRT-LLM adapter's memory budget both use it.
Exact for Llama/Mistral-style configs (GQA attention, gated MLP, RMSNorm); other
architectures get an estimate of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from . import read_config

#: Bytes per weight of each dtype spelling found in configs and engine options.
DTYPE_BYTES: dict[str, int] = {
    "float32": 4, "fp32": 4, "float": 4,
    "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2,
    "float8": 1, "fp8": 1, "int8": 1,
}
#: Activations whose MLP has three matrices (gate, up, down); others have two (up, down).
GATED_ACTIVATIONS = ("silu", "swiglu", "gelu_pytorch_tanh")


def config_dtype(config: Mapping[str, Any]) -> str:
    """The weight dtype a config names (``torch_dtype``, else ``dtype``, else float16)."""
    return str(config.get("torch_dtype") or config.get("dtype") or "float16")


def dtype_bytes(name: str, default: int | None = None) -> int:
    """Bytes per weight of dtype ``name`` (``torch.`` prefix and case ignored).

    An unknown name gives ``default``, or raises :class:`ModelError` listing the known ones.
    """
    key = str(name).lower().replace("torch.", "")
    if key in DTYPE_BYTES:
        return DTYPE_BYTES[key]
    if default is not None:
        return default
    raise ModelError(f"unknown weight dtype {key!r}; known: {', '.join(sorted(DTYPE_BYTES))}")


def weight_dtype_bytes(config: Mapping[str, Any], override: Any = None) -> int:
    """Bytes per weight from an explicit dtype option (``auto``: the config's) or the config."""
    name = str(override or config_dtype(config)).lower()
    if name == "auto":
        name = str(config.get("torch_dtype") or "float16").lower()
    return dtype_bytes(name)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a decoder-only transformer, by part."""

    embedding: int
    per_layer: int
    num_layers: int
    final_norm: int
    lm_head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        """All parameters."""
        return self.embedding + self.per_layer * self.num_layers + self.final_norm + self.lm_head


@dataclass(frozen=True)
class ModelShape:
    """The shape of a dense decoder-only transformer; every size below follows from it."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    dtype_bytes: int = 2
    head_dim: int = 0
    tied_embeddings: bool = False
    max_position: int = 4096
    gated_mlp: bool = True

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str = "model") -> ModelShape:
        """Read a Hugging Face ``config.json`` dict (Llama/Mistral/Qwen-style keys).

        ``intermediate_size`` defaults to 4 x hidden; an unknown dtype counts 2 bytes.
        """
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            return cls(
                name=name,
                layers=int(config["num_hidden_layers"]),
                hidden=hidden,
                intermediate=int(config.get("intermediate_size") or 4 * hidden),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                vocab=int(config["vocab_size"]),
                dtype_bytes=dtype_bytes(config_dtype(config), default=2),
                head_dim=int(config.get("head_dim") or 0),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                max_position=int(config.get("max_position_embeddings") or 4096),
                gated_mlp=str(config.get("hidden_act", "silu")) in GATED_ACTIVATIONS,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"config.json of {name} lacks a usable {exc}") from None

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelShape:
        """Read ``path/config.json``."""
        p = Path(path)
        cfg = p / "config.json"
        if not cfg.is_file():
            raise ModelError(f"no config.json in {p}; pass a model directory (e.g. pytest_mgpu/models/tiny-llama)")
        return cls.from_config(read_config(cfg, p.name), name=p.name)

    @property
    def mlp_matrices(self) -> int:
        """3 for a gated MLP (gate, up, down), else 2."""
        return 3 if self.gated_mlp else 2

    def layer_params_per_gpu(self, tp: int = 1) -> int:
        """Parameters of one layer on one of ``tp`` tensor-parallel GPUs.

        Attention heads and the MLP split over ``tp``; KV heads are replicated when ``tp``
        exceeds them; the two norms sit whole on every GPU.
        """
        h, d = self.hidden, self.head_dim
        heads, kv_heads = self.heads // tp, max(1, self.kv_heads // tp)
        attn = h * heads * d * 2 + h * kv_heads * d * 2  # q, o ; k, v
        return attn + self.mlp_matrices * h * self.intermediate // tp + 2 * h

    @property
    def layer_params(self) -> int:
        """Parameters of one transformer layer (attention, MLP, two norms)."""
        return self.layer_params_per_gpu(1)

    @property
    def embed_params(self) -> int:
        """Input embedding parameters."""
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """LM-head parameters (0 when tied to the embedding)."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    def param_counts(self) -> ParamCounts:
        """Parameter counts by part."""
        return ParamCounts(
            embedding=self.embed_params, per_layer=self.layer_params, num_layers=self.layers,
            final_norm=self.hidden, lm_head=self.head_params,
        )

    @property
    def param_count(self) -> int:
        """All parameters."""
        return self.param_counts().total

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights."""
        return self.param_count * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token takes over the whole model."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


def param_counts(config: Mapping[str, Any]) -> ParamCounts:
    """Parameter counts of the model a ``config.json`` dict describes."""
    return ModelShape.from_config(config).param_counts()


def weight_bytes_per_gpu(config: Mapping[str, Any], tp: int, pp: int, nbytes: int) -> int:
    """Weight bytes on the most loaded GPU of a ``tp`` x ``pp`` layout, split evenly.

    Layers split evenly over pipeline stages (the first ``L mod pp`` stages take one more);
    each stage's share splits over ``tp``. The embedding sits on the first stage, the LM head
    and final norm on the last, both sharded over ``tp`` (with pp=1 one stage holds all).
    """
    c = param_counts(config)
    layers_max = math.ceil(c.num_layers / pp)
    first = c.embedding + (c.lm_head + c.final_norm if pp == 1 else 0)
    last = c.lm_head + c.final_norm if pp > 1 else 0
    stage = layers_max * c.per_layer + max(first, last)
    return math.ceil(stage / tp) * nbytes
