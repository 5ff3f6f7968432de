"""Workload definitions: fixed input/output lengths, arrival process, deterministic prompts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import WorkloadError

#: How prompts are sent: ``text`` goes through the engine's tokenizer (as real traffic does);
#: ``token-ids`` sends the ids and skips it.
PROMPT_MODES = ("text", "token-ids")


@dataclass(frozen=True)
class Workload:
    """One measurement's traffic, with the knobs of ``vllm bench serve``."""

    input_len: int = 128
    output_len: int = 128
    num_requests: int = 256
    request_rate: float = 32.0  # requests/s; math.inf sends everything at once
    burstiness: float = 1.0  # gamma shape; 1.0 is Poisson
    max_concurrency: int | None = None
    warmup_requests: int = 4
    seed: int = 0
    vocab_size: int = 32000
    prompt: str = "token-ids"  # one of PROMPT_MODES; results recorded before it existed used token ids

    def __post_init__(self) -> None:
        for name in ("input_len", "output_len", "num_requests"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise WorkloadError(f"{name}={v!r} must be a positive int")
        if not self.request_rate > 0:
            raise WorkloadError(f"request_rate={self.request_rate!r} must be > 0 (inf = all at once)")
        if not self.burstiness > 0:
            raise WorkloadError(f"burstiness={self.burstiness!r} must be > 0")
        mc = self.max_concurrency
        if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
            raise WorkloadError(f"max_concurrency={mc!r} must be an int >= 1 or None")
        for name in ("warmup_requests", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise WorkloadError(f"{name}={v!r} must be an int >= 0")
        if self.prompt not in PROMPT_MODES:
            raise WorkloadError(f"prompt={self.prompt!r} must be one of {', '.join(PROMPT_MODES)}")

    @property
    def name(self) -> str:
        """Stable short name used as the key of this workload in results and baselines."""
        rate = "inf" if math.isinf(self.request_rate) else f"{self.request_rate:g}"
        parts = [f"in{self.input_len}", f"out{self.output_len}", f"n{self.num_requests}", f"qps{rate}"]
        if self.burstiness != 1.0:
            parts.append(f"b{self.burstiness:g}")
        if self.max_concurrency is not None:
            parts.append(f"c{self.max_concurrency}")
        if self.prompt == "text":
            # Token-id names stay as they were, so baselines recorded before text prompts keep their ids.
            parts.append("text")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``inf`` is written as the string ``"inf"``."""
        d = asdict(self)
        if math.isinf(self.request_rate):
            d["request_rate"] = "inf"
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workload:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        d["request_rate"] = float(d.get("request_rate", 32.0))
        return cls(**d)

    def prompts(self, count: int, offset: int = 0) -> list[list[int]]:
        """Deterministic random token-id prompts of ``input_len`` tokens.

        Each prompt is distinct, so that a prefix cache can never shorten prefill. Text prompts are
        built from these ids (:mod:`pytest_mgpu.measure.prompts`), so both modes send the same tokens.
        """
        rng = np.random.default_rng([self.seed, offset])
        # Stay clear of low ids that are often special tokens (bos/eos/pad).
        low = min(100, self.vocab_size - 1)
        arr = rng.integers(low, self.vocab_size, size=(count, self.input_len))
        return arr.tolist()

    def arrival_offsets(self) -> list[float]:
        """Send time of each measured request, seconds from the start, as vLLM computes them.

        Gaps are ``gamma(shape=burstiness, scale=1/(rate*burstiness))`` (constant ``1/rate`` when
        ``burstiness`` is inf). As in vLLM's ``get_request`` (vLLM >= 0.10), request ``i`` is sent
        after the sum of the first ``i + 1`` gaps, and these cumulative delays are rescaled so
        that the last request lands at ``num_requests / rate``.
        """
        n = self.num_requests
        if math.isinf(self.request_rate):
            return [0.0] * n
        if math.isinf(self.burstiness):
            gaps = np.full(n, 1.0 / self.request_rate)
        else:
            rng = np.random.default_rng(self.seed)
            theta = 1.0 / (self.request_rate * self.burstiness)
            gaps = rng.gamma(shape=self.burstiness, scale=theta, size=n)
        delays = np.cumsum(gaps)
        if delays[-1] > 0:
            delays = delays * ((n / self.request_rate) / delays[-1])
        return delays.tolist()
