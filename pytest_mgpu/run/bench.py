"""The ``mgpu_bench`` fixture object: run a workload against the engine, repeat, record."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..engines import RunningEngine
from ..errors import EngineError, WorkloadError
from ..judge.results import BenchResult, RepeatResult
from ..measure import telemetry
from ..measure.client import run_workload
from ..measure.metrics import RequestRecord, invalid_reason, summarize
from ..measure.prompts import PromptSet, build_prompts, resolve_mode
from ..measure.workload import Workload
from ..report.regime import kv_cache_tokens
from ..report.sweep import Sweep, sweep_info
from .progress import Progress


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_repeats(nodeid: str, repeats: Any, default: int) -> None:
    """``run(repeats=...)`` is None (``--mgpu-repeats``) or an int >= 1; anything else names the test."""
    if repeats is not None and (not _is_int(repeats) or repeats < 1):
        raise WorkloadError(
            f"{nodeid}: mgpu_bench.run(repeats={repeats!r}): repeats must be an int >= 1, "
            f"or None for --mgpu-repeats ({default})"
        )


def checked_workload(nodeid: str, *, request_rate: float, **fields: Any) -> Workload:
    """The :class:`Workload` of a ``run()`` call; a bad argument is a WorkloadError naming the test."""
    try:
        return Workload(request_rate=float(request_rate), **fields)
    except WorkloadError as exc:
        raise WorkloadError(f"{nodeid}: mgpu_bench.run(): {exc}") from None


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
        roofline: dict[str, Any] | None = None,
        progress: Progress | None = None,
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
        #: The layout's decode floor on its card (:mod:`pytest_mgpu.report.regime`), recorded with each result.
        self.roofline = roofline
        #: Live progress on the terminal (:mod:`pytest_mgpu.run.progress`), if any.
        self.progress = progress

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
        check_repeats(self.nodeid, repeats, self.repeats)
        workload = checked_workload(
            self.nodeid, input_len=input_len, output_len=output_len, num_requests=num_requests,
            request_rate=request_rate, burstiness=burstiness, max_concurrency=max_concurrency,
            warmup_requests=warmup_requests, seed=seed, vocab_size=self.engine.model.vocab_size, prompt=mode,
        )
        if label is not None and not label.strip():
            raise ValueError("label must be a non-empty string or None")
        if any((r.label or r.workload.name) == (label or workload.name) for r in self.results):
            raise ValueError(
                f"{self.nodeid}: workload {label or workload.name!r} was already measured in this test; "
                f"pass label= to tell two runs of the same workload apart"
            )
        env = dict(self.env)
        if self.engine.name == "sim" and self.engine.spec is not None:
            # How fast the modelled clock ran: never changes the numbers, recorded to show that.
            env["sim_time_scale"] = float(self.engine.spec.options_dict.get("time_scale", "1"))
        result = BenchResult(
            nodeid=self.nodeid, test_name=self.test_name, module=self.module, workload=workload,
            layout=self.engine.layout, engine=self.engine.name, engine_version=self.engine.version,
            model=self.engine.model.name, env=env, label=label,
            engine_options=dict(self.engine.spec.options) if self.engine.spec is not None else {},
        )
        result.roofline = self.roofline
        result.repeats = self.measure(workload, self.repeats if repeats is None else repeats)
        self.results.append(result)
        self._record(result)
        return result

    def measure(self, workload: Workload, repeats: int) -> list[RepeatResult]:
        """Run ``workload`` ``repeats`` times; an engine that dies mid-run raises EngineError."""
        out: list[RepeatResult] = []
        prompts = self.prompts_for(workload)
        # On the sim, time by its modelled clock: the numbers must not depend on this host's load. The
        # sim's clock=wall option times it like a real engine instead (the client's own clock).
        spec = self.engine.spec
        sim = self.engine.name == "sim" and (spec is None or spec.options_dict.get("clock", "model") != "wall")
        for i in range(repeats):
            if not self.engine.alive:
                raise EngineError(
                    f"{self.engine.name} ({self.engine.layout.id}) is not running", self.engine.log_path
                )
            sampler = telemetry.sampler_for(self.engine.gpu_ids)
            if sampler is not None:
                sampler.start()
            with contextlib.ExitStack() as stack:
                report = None
                if self.progress is not None:
                    report = stack.enter_context(self.progress.repeat(
                        self.test_name, workload.name, i + 1, repeats, "model" if sim else "wall"))
                try:
                    outcome = run_workload(
                        self.engine.base_url, self.engine.model.name, workload, timeout_s=self.request_timeout_s,
                        prompts=(prompts.measured, prompts.warmup), sim_clock=sim, progress=report,
                    )
                finally:
                    if sampler is not None:
                        sampler.stop()
            # The measured phase only: warm-up and the idle moments around it are left out.
            gpu = None
            if sampler is not None:
                meta = outcome.meta
                wall = (meta["wall_dispatch_start"], meta["wall_finished"]) if meta.get("clock") == "model" else (
                    outcome.dispatch_start, outcome.finished)
                gpu = sampler.summary(*wall)
            if not self.engine.alive:
                raise EngineError(
                    f"{self.engine.name} ({self.engine.layout.id}) died during the workload "
                    f"{workload.name}", self.engine.log_path,
                )
            summary = summarize(outcome.records, self.engine.num_gpus, outcome.dispatch_start)
            reason = invalid_reason(outcome.records, workload.num_requests, workload.output_len)
            reason = reason or prompt_len_mismatch(outcome.records, prompts.expected_lens)
            out.append(RepeatResult(summary=summary, invalid=reason, records=outcome.records, telemetry=gpu))
        return out

    def prompts_for(self, workload: Workload) -> PromptSet:
        """The workload's prompts in its mode, built once per workload (repeats send the same ones)."""
        if workload not in self._prompts:
            self._prompts[workload] = build_prompts(workload, self.engine.tokenizer, self.engine.base_url)
        return self._prompts[workload]

    def sweep(
        self,
        concurrency: Sequence[int] | None = None,
        rate: Sequence[float] | None = None,
        *,
        input_len: int = 128,
        output_len: int = 128,
        num_requests: int | None = None,
        requests_per_slot: int = 4,
        burstiness: float = 1.0,
        warmup_requests: int = 4,
        seed: int = 0,
        label: str | None = None,
        repeats: int | None = None,
        prompt: str | None = None,
    ) -> Sweep:
        """Measure one result per point of ``concurrency=[1, 2, 4, ...]`` or ``rate=[...]``; find the knee.

        A concurrency point sends every request at once with at most ``c`` in flight (a batch of
        ``c``), ``num_requests`` requests (default ``max(8, requests_per_slot * c)``); a rate point
        sends ``num_requests`` (default 256) Poisson arrivals at that rate. Each point is an ordinary
        result, gated like any other; the report shows the curve and says where the regime changes
        (:func:`pytest_mgpu.report.regime.find_knee`), and ``--mgpu-plot`` draws it.
        """
        if (concurrency is None) == (rate is None):
            raise ValueError("sweep() takes exactly one of concurrency=[...] or rate=[...]")
        axis = "concurrency" if concurrency is not None else "rate"
        raw = list(concurrency if concurrency is not None else rate or [])
        if not raw:
            raise ValueError(f"sweep({axis}=[]) has no points")
        if axis == "concurrency" and any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in raw):
            raise ValueError(f"sweep(concurrency={raw!r}): every point must be an int >= 1")
        if axis == "rate" and any(not (float(r) > 0) for r in raw):
            raise ValueError(f"sweep(rate={raw!r}): every point must be > 0 (inf sends all at once)")
        if len(set(raw)) != len(raw):
            raise ValueError(f"sweep({axis}={raw!r}) repeats a point")
        if requests_per_slot < 1:
            raise ValueError(f"requests_per_slot={requests_per_slot!r} must be >= 1")
        if label is not None and not label.strip():
            raise ValueError("label must be a non-empty string or None")
        mode = resolve_mode(prompt if prompt is not None else self.prompt, self.engine.tokenizer, self.engine.name)
        sweep_id = label or f"sweep-{axis}"
        sw = Sweep(f"{self.test_name}::{sweep_id}", axis, kv_cache_tokens=kv_cache_tokens(self.engine.log_path))
        for x in raw:
            if axis == "concurrency":
                n = num_requests or max(8, requests_per_slot * int(x))
                wl_kw: dict[str, Any] = {"request_rate": math.inf, "max_concurrency": int(x), "num_requests": n}
            else:
                wl_kw = {"request_rate": float(x), "num_requests": num_requests or 256}
            name = Workload(input_len=input_len, output_len=output_len, burstiness=burstiness, prompt=mode,
                            **wl_kw).name
            r = self.run(
                input_len=input_len, output_len=output_len, burstiness=burstiness, warmup_requests=warmup_requests,
                seed=seed, repeats=repeats, prompt=mode, label=f"{label}-{name}" if label else None, **wl_kw,
            )
            r.sweep = sweep_info(sweep_id, axis, float(x), sw.kv_cache_tokens)
            sw.points.append(r)
        return sw
