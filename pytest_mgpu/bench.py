"""The ``mgpu_bench`` fixture object: run a workload against the engine, repeat, record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .engines import RunningEngine
from .errors import EngineError
from .metrics import RequestRecord, invalid_reason, summarize
from .prompts import PromptSet, build_prompts, resolve_mode
from .results import BenchResult, RepeatResult
from .workload import Workload


def prompt_len_mismatch(records: list[RequestRecord], expected: list[int]) -> str | None:
    """Why the server's prompt token counts differ from those the prompts were built with, or None.

    A text prompt that the server tokenizes to another length means its tokenizer is not the one
    the prompts were built for: the run measured other prompts than it says.
    """
    bad = [(i, r.prompt_len, e) for i, (r, e) in enumerate(zip(records, expected)) if r.success and r.prompt_len != e]
    if not bad:
        return None
    i, got, want = bad[0]
    return (
        f"{len(bad)} of {len(records)} requests had another prompt length on the server than sent "
        f"(request {i}: {got} tokens, expected {want}); the engine's tokenizer does not match the prompts"
    )


class Bench:
    """Drives workloads against one test's engine; every result is recorded for the gate and reports."""

    def __init__(
        self,
        engine: RunningEngine,
        *,
        nodeid: str,
        test_name: str,
        module: str,
        repeats: int,
        request_timeout_s: float,
        env: dict[str, Any],
        record: Callable[[BenchResult], None],
        prompt: str | None = None,
    ) -> None:
        self.engine = engine
        self.nodeid = nodeid
        self.test_name = test_name
        self.module = module
        self.repeats = repeats
        self.request_timeout_s = request_timeout_s
        self.env = env
        self._record = record
        #: ``--mgpu-prompt``: ``text``, ``token-ids``, or None for text where the engine can tokenize.
        self.prompt = prompt
        self.results: list[BenchResult] = []
        self._prompts: dict[Workload, PromptSet] = {}

    def run(
        self,
        input_len: int = 128,
        output_len: int = 128,
        num_requests: int = 256,
        request_rate: float = 32.0,
        *,
        burstiness: float = 1.0,
        max_concurrency: int | None = None,
        warmup_requests: int = 4,
        seed: int = 0,
        label: str | None = None,
        repeats: int | None = None,
        prompt: str | None = None,
    ) -> BenchResult:
        """Measure a workload ``repeats`` times (default ``--mgpu-repeats``) and return the result.

        ``request_rate=math.inf`` sends every request at once (largest batch). ``prompt`` is
        ``"text"`` (through the engine's tokenizer) or ``"token-ids"``; by default ``--mgpu-prompt``,
        else text where the engine can tokenize. The result is checked against the baseline after
        the test body returns.
        """
        mode = resolve_mode(prompt if prompt is not None else self.prompt, self.engine.tokenizer, self.engine.name)
        workload = Workload(
            input_len=input_len, output_len=output_len, num_requests=num_requests,
            request_rate=float(request_rate), burstiness=burstiness, max_concurrency=max_concurrency,
            warmup_requests=warmup_requests, seed=seed, vocab_size=self.engine.model.vocab_size, prompt=mode,
        )
        if label is not None and not label.strip():
            raise ValueError("label must be a non-empty string or None")
        entry = f"{self.test_name}::{label or workload.name}"
        if any(r.entry_id == entry for r in self.results):
            raise ValueError(
                f"{self.nodeid}: workload {label or workload.name!r} was already measured in this test; "
                f"pass label= to tell two runs of the same workload apart"
            )
        result = BenchResult(
            nodeid=self.nodeid, test_name=self.test_name, module=self.module, workload=workload,
            layout=self.engine.layout, engine=self.engine.name, engine_version=self.engine.version,
            model=self.engine.model.name, env=dict(self.env), label=label,
        )
        result.repeats = self.measure(workload, repeats or self.repeats)
        self.results.append(result)
        self._record(result)
        return result

    def measure(self, workload: Workload, repeats: int) -> list[RepeatResult]:
        """Run ``workload`` ``repeats`` times; an engine that dies mid-run raises EngineError."""
        from .client import run_workload  # lazy: pulls in aiohttp

        out: list[RepeatResult] = []
        prompts = self.prompts_for(workload)
        for _ in range(repeats):
            if not self.engine.alive:
                raise EngineError(
                    f"{self.engine.name} ({self.engine.layout.id}) is not running", self.engine.log_path
                )
            outcome = run_workload(
                self.engine.base_url, self.engine.model.name, workload, timeout_s=self.request_timeout_s,
                prompts=(prompts.measured, prompts.warmup),
            )
            if not self.engine.alive:
                raise EngineError(
                    f"{self.engine.name} ({self.engine.layout.id}) died during the workload "
                    f"{workload.name}", self.engine.log_path,
                )
            summary = summarize(outcome.records, self.engine.num_gpus, outcome.dispatch_start)
            reason = invalid_reason(outcome.records, workload.num_requests, workload.output_len)
            reason = reason or prompt_len_mismatch(outcome.records, prompts.expected_lens)
            out.append(RepeatResult(summary=summary, invalid=reason, records=outcome.records))
        return out

    def prompts_for(self, workload: Workload) -> PromptSet:
        """The workload's prompts in its mode, built once per workload (repeats send the same ones)."""
        if workload not in self._prompts:
            self._prompts[workload] = build_prompts(workload, self.engine.tokenizer, self.engine.base_url)
        return self._prompts[workload]
