"""vLLM-like continuous batching over the roofline model: requests, steps, the scheduler.

Driven either offline (:func:`simulate`, :func:`throughput`) or step by step, in real time, by
the HTTP server (:mod:`.server`).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import SimError
from .model import PerfModel


@dataclass
class SimRequest:
    """One request inside the scheduler. Times are seconds on the caller's clock."""

    rid: int
    arrival: float
    prompt_len: int
    max_tokens: int
    num_computed: int = 0  # tokens whose KV is in the cache
    num_output: int = 0  # tokens emitted
    blocks: int = 0
    first_token: float | None = None
    finish: float | None = None
    preemptions: int = 0
    state: str = "new"  # new, waiting, running, done, aborted
    user: Any = field(default=None, repr=False)  # the server's stream handle

    @property
    def finished(self) -> bool:
        """All ``max_tokens`` emitted."""
        return self.num_output >= self.max_tokens

    @property
    def ttft(self) -> float:
        """First token minus arrival, seconds."""
        assert self.first_token is not None
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        """vLLM's TPOT: ``(finish - first) / (out - 1)``, None for one token."""
        if self.num_output < 2 or self.finish is None or self.first_token is None:
            return None
        return (self.finish - self.first_token) / (self.num_output - 1)


@dataclass
class Step:
    """One planned engine step: (request, tokens) pairs and its duration."""

    items: list[tuple[SimRequest, int]]
    duration: float
    start: float


class Scheduler:
    """vLLM-like continuous batching: FCFS, chunked prefill, paged KV blocks, recompute preemption.

    Each step: running requests first (one decode token each, or their next prefill chunk), then
    waiting requests while the token budget (``max_num_batched_tokens``), ``max_num_seqs`` and
    free KV blocks allow. A running request that needs a block when none is free preempts the
    newest running request, which goes back to the head of the queue and recomputes its KV.

    Noise: each transition from idle to busy draws a drift factor ``exp(N(0, noise))`` that
    scales every step until the next idle period; ``jitter`` adds an independent per-step factor.
    """

    def __init__(self, perf: PerfModel) -> None:
        self.perf = perf
        self.opts = perf.opts
        self.block_size = self.opts.block_size
        self.total_blocks = perf.kv_blocks
        self.free_blocks = perf.kv_blocks
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.rng = random.Random(self.opts.seed)
        self.factor = 1.0
        self.idle = True
        self.peak_blocks = 0
        self.peak_running = 0
        self.busy_periods = 0
        self.steps = 0

    # --- requests ----------------------------------------------------------------------------
    def check(self, prompt_len: int, max_tokens: int) -> str | None:
        """Why a request cannot be served (vLLM's max_model_len rule), or None."""
        total = prompt_len + max_tokens
        if prompt_len < 1:
            return "the prompt is empty"
        if total > self.perf.max_model_len:
            return (
                f"This model's maximum context length is {self.perf.max_model_len} tokens. However, you "
                f"requested {total} tokens ({prompt_len} in the messages, {max_tokens} in the completion). "
                f"Please reduce the length of the messages or completion."
            )
        return None

    def add(self, req: SimRequest) -> None:
        """Queue a request (its arrival must not be later than the next step's start)."""
        why = self.check(req.prompt_len, req.max_tokens)
        if why:
            raise SimError(why)
        req.state = "waiting"
        self.waiting.append(req)

    def abort(self, req: SimRequest) -> None:
        """Drop a request (client went away) and free its blocks."""
        if req.state == "running":
            self.running.remove(req)
        elif req.state == "waiting":
            self.waiting.remove(req)
        self.free_blocks += req.blocks
        req.blocks = 0
        req.state = "aborted"
        if not self.has_work:
            self.idle = True

    @property
    def has_work(self) -> bool:
        """Anything running or waiting."""
        return bool(self.running or self.waiting)

    # --- steps -------------------------------------------------------------------------------
    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _preempt(self) -> SimRequest:
        victim = self.running.pop()
        victim.state = "waiting"
        self.free_blocks += victim.blocks
        victim.blocks = 0
        victim.num_computed = 0
        victim.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def plan(self, now: float) -> Step | None:
        """Choose the next step's work at time ``now``; None if nothing can run yet."""
        budget = self.opts.max_num_batched_tokens
        items: list[tuple[SimRequest, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.prompt_len + req.num_output - req.num_computed, budget)
            need = self._blocks_for(req.num_computed + n) - req.blocks
            while need > self.free_blocks:
                victim = self._preempt()
                preempted = True
                if victim is req:
                    break
            if req.state != "running":
                break
            self.free_blocks -= need
            req.blocks += need
            items.append((req, n))
            budget -= n
            i += 1
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < self.opts.max_num_seqs:
                req = self.waiting[0]
                if req.arrival > now:
                    break
                n = min(req.prompt_len + req.num_output - req.num_computed, budget)
                need = self._blocks_for(req.num_computed + n) - req.blocks
                if need > self.free_blocks:
                    break
                self.waiting.popleft()
                req.state = "running"
                self.free_blocks -= need
                req.blocks += need
                self.running.append(req)
                items.append((req, n))
                budget -= n
        if not items:
            return None
        used = self.total_blocks - self.free_blocks
        self.peak_blocks = max(self.peak_blocks, used)
        self.peak_running = max(self.peak_running, len(self.running))
        if self.idle:
            self.idle = False
            self.busy_periods += 1
            self.factor = math.exp(self.rng.gauss(0.0, self.opts.noise)) if self.opts.noise else 1.0
        return Step(items=items, duration=self.duration(items), start=now)

    def duration(self, items: Sequence[tuple[SimRequest, int]]) -> float:
        """Modelled seconds of a step over ``items``, with speed, drift and jitter applied."""
        if self.opts.instant:
            return 0.0
        tokens = ctx = pairs = 0
        for req, n in items:
            end = req.num_computed + n
            tokens += n
            ctx += end
            pairs += n * req.num_computed + n * (n + 1) // 2
        t = self.perf.step_time(tokens, len(items), ctx, pairs) / self.opts.speed * self.factor
        if self.opts.jitter:
            t *= math.exp(self.rng.gauss(0.0, self.opts.jitter))
        return t

    def finish(self, step: Step, end: float) -> list[SimRequest]:
        """Apply a step that ended at ``end``; return the requests that emitted a token."""
        emitted: list[SimRequest] = []
        done = False
        self.steps += 1
        for req, n in step.items:
            if req.state != "running":  # aborted meanwhile
                continue
            req.num_computed += n
            if req.num_computed >= req.prompt_len + req.num_output:
                req.num_output += 1
                if req.first_token is None:
                    req.first_token = end
                if req.num_output >= req.max_tokens:
                    req.finish = end
                    req.state = "done"
                    self.free_blocks += req.blocks
                    req.blocks = 0
                    done = True
                emitted.append(req)
        if done:
            self.running = [r for r in self.running if r.state == "running"]
        if not self.has_work:
            self.idle = True
        return emitted


def simulate(
    perf: PerfModel,
    arrivals: Sequence[float],
    input_lens: Sequence[int] | int,
    output_lens: Sequence[int] | int,
) -> list[SimRequest]:
    """Offline run: per-request true first-token and finish times for the given arrivals.

    Requests arriving during a step join at the next step, as in a real engine.
    """
    n = len(arrivals)
    ins = [input_lens] * n if isinstance(input_lens, int) else list(input_lens)
    outs = [output_lens] * n if isinstance(output_lens, int) else list(output_lens)
    reqs = [SimRequest(i, float(a), ins[i], outs[i]) for i, a in enumerate(arrivals)]
    order = sorted(reqs, key=lambda r: (r.arrival, r.rid))
    sched = Scheduler(perf)
    t = 0.0 if not order else min(0.0, order[0].arrival)
    k = 0
    while k < len(order) or sched.has_work:
        while k < len(order) and order[k].arrival <= t:
            sched.add(order[k])
            k += 1
        step = sched.plan(t)
        if step is None:
            if k < len(order):
                t = max(t, order[k].arrival)
                continue
            raise SimError("scheduler stalled with work left")  # pragma: no cover - invariant
        t += step.duration
        sched.finish(step, t)
    return reqs


def throughput(perf: PerfModel, num_requests: int, input_len: int, output_len: int) -> dict[str, float]:
    """Offline benchmark at rate inf: output tok/s overall and per GPU, mean TTFT/TPOT in ms."""
    reqs = simulate(perf, [0.0] * num_requests, input_len, output_len)
    dur = max(r.finish or 0.0 for r in reqs)
    out = sum(r.num_output for r in reqs)
    tpots = [t for r in reqs if (t := r.tpot) is not None]
    return {
        "duration_s": dur,
        "output_throughput": out / dur,
        "output_throughput_per_gpu": out / dur / perf.num_gpus,
        "mean_ttft_ms": 1e3 * sum(r.ttft for r in reqs) / len(reqs),
        "mean_tpot_ms": 1e3 * sum(tpots) / max(1, len(tpots)),
    }
