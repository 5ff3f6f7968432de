"""The sim's modelled clock and the arrival schedules clients announce on it.

The server runs its roofline model on a *modelled* clock that never restarts: each step starts
when the previous one ended (or, when idle, at the next arrival) and lasts what the model says.
The wall clock only paces it: modelled time ``M`` is due at wall time ``W0 + (M - M0) / scale``,
``scale`` times faster than real time (``time_scale``; 1 is real time).

Pacing alone would make results depend on the host: a server or client that runs late shifts
every later event. So a client that wants host-independent numbers announces its arrival schedule
first (:class:`ClientRun`, ``POST /sim/run``), tags each request with its index, and the server

* gives each tagged request its *announced* modelled arrival (``origin + offset``; with
  ``max_concurrency`` the time a slot frees, as a client's semaphore would allow);
* never starts a step at modelled time ``T`` before it has received every tagged request due by
  ``T`` (it stalls its modelled clock until the request arrives);
* stamps every token chunk with its modelled time, from which the client computes its metrics.

The numbers then depend only on the schedule, the model and the configured noise, never on when
the host got round to sending or reading a chunk. Untagged requests (plain clients such as
``vllm bench serve``) arrive at the modelled time the wall clock maps to, as on a real server;
use ``time_scale=1`` for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: The wall clock may run this far behind the model before an untagged-only server re-anchors.
MAX_LAG_S = 0.002


class ModelClock:
    """Modelled time and its mapping to the wall clock (``time.monotonic()`` seconds)."""

    def __init__(self, scale: float, wall_now: float) -> None:
        if not scale > 0:
            raise ValueError(f"time scale {scale!r} must be > 0")
        self.scale = scale
        self.now = 0.0  # end of the last modelled step: never goes back, never restarts
        self.m0 = 0.0  # the anchor: modelled m0 is due at wall w0
        self.w0 = wall_now
        self.reanchors = 0

    @property
    def unpaced(self) -> bool:
        """``time_scale=inf``: run the model as fast as the host allows."""
        return math.isinf(self.scale)

    def wall_of(self, m: float) -> float:
        """When modelled time ``m`` is due on the wall clock."""
        if self.unpaced:
            return self.w0
        return self.w0 + (m - self.m0) / self.scale

    def model_of(self, wall: float) -> float:
        """The modelled time a wall-clock instant maps to (never before :attr:`now`)."""
        if self.unpaced:
            return self.now
        return max(self.now, self.m0 + (wall - self.w0) * self.scale)

    def anchor(self, m: float, wall: float) -> None:
        """From now on, modelled ``m`` is due at ``wall``."""
        self.m0, self.w0 = m, wall

    def advance(self, m: float) -> None:
        """A step ended at modelled ``m``."""
        if m < self.now:  # pragma: no cover - an invariant of the engine loop
            raise ValueError(f"modelled clock cannot go back from {self.now} to {m}")
        self.now = m


@dataclass
class ClientRun:
    """An announced schedule: request ``i`` arrives ``offsets[i]`` modelled seconds after ``origin``.

    Requests start in index order, as a client dispatches them (with ``max_concurrency`` through
    a FIFO semaphore): request ``k`` starts at its offset, or, when ``max_concurrency`` = c
    requests are in flight, when the ``(k - c + 1)``-th of the earlier ones finished, whichever
    is later. ``received`` holds tagged requests not yet admitted to the scheduler.
    """

    run_id: int
    origin: float
    offsets: Sequence[float]
    concurrency: int | None = None
    next: int = 0  # the next index to admit
    finishes: list[float] = field(default_factory=list)  # modelled finish times, in order
    received: dict[int, Any] = field(default_factory=dict)
    closed: bool = False

    @property
    def size(self) -> int:
        """Requests in the schedule."""
        return len(self.offsets)

    @property
    def done(self) -> bool:
        """Every request was admitted and finished (or the client closed the run)."""
        return self.closed or len(self.finishes) >= self.size

    def start_of(self, k: int) -> float | None:
        """Modelled start of request ``k``; None while it waits for a slot that has not freed yet.

        A slot frees at a modelled finish, always later than every step already run, so None
        means "not before the next step ends".
        """
        arrival = self.origin + self.offsets[k]
        c = self.concurrency
        if c is None or k < c:
            return arrival
        need = k - c + 1  # this many earlier requests must have finished
        if len(self.finishes) < need:
            return None
        return max(arrival, self.finishes[need - 1])

    def next_start(self) -> float | None:
        """Modelled start of the next request to admit; None if unknown yet or none is left."""
        if self.closed or self.next >= self.size:
            return None
        return self.start_of(self.next)

    def finished(self, m: float) -> None:
        """One of this run's requests finished (or was dropped) at modelled ``m``."""
        self.finishes.append(max(m, self.finishes[-1]) if self.finishes else m)

    def describe(self) -> dict[str, Any]:
        """State for ``GET /sim/info``."""
        return {"run": self.run_id, "origin": self.origin, "requests": self.size, "concurrency": self.concurrency,
                "admitted": self.next, "finished": len(self.finishes), "closed": self.closed}


def validate_schedule(data: Any) -> tuple[list[float], int | None]:
    """Check a ``POST /sim/run`` body: ``{"offsets": [...], "max_concurrency": c | null}``.

    Offsets are modelled seconds from the run's origin, finite, >= 0 and non-decreasing (clients
    dispatch in this order). Raises ValueError naming the problem.
    """
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object with 'offsets' and 'max_concurrency'")
    offsets = data.get("offsets")
    if not isinstance(offsets, list) or not offsets:
        raise ValueError("'offsets' must be a non-empty list of seconds")
    out: list[float] = []
    for x in offsets:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise ValueError(f"'offsets' must hold finite numbers >= 0, got {x!r}")
        if out and x < out[-1]:
            raise ValueError("'offsets' must be non-decreasing (the order requests are dispatched in)")
        out.append(float(x))
    c = data.get("max_concurrency")
    if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
        raise ValueError(f"'max_concurrency' must be an int >= 1 or null, got {c!r}")
    return out, c
