"""Rate limits for a shared app: how often one caller may start runs, upload files or poll."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


class RateLimited(Exception):
    """A caller went over a limit; the message says which and when to try again."""


@dataclass
class RateLimit:
    """At most `count` events per `window_s` seconds for each key (a caller's identity or
    address). `count` None means no limit."""

    count: int | None
    window_s: float
    what: str  # "runs started", "uploads", ...
    _events: dict[str, deque] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, *keys: str | None, count: bool = True, now: float | None = None) -> None:
        """Count one event for every key given (None keys are skipped), or raise RateLimited
        without counting if any key is over the limit. With `count` false, only check (count
        the event once it has happened, so that a refused attempt costs nothing)."""
        if self.count is None:
            return
        now = time.monotonic() if now is None else now
        keys = tuple(k for k in keys if k)
        with self._lock:
            for key in keys:
                events = self._events.setdefault(key, deque())
                while events and events[0] <= now - self.window_s:
                    events.popleft()
                if len(events) >= self.count:
                    wait = events[0] + self.window_s - now
                    raise RateLimited(f"Too many {self.what}: at most {self.count} per {_window(self.window_s)}. "
                                      f"Try again in {max(1, round(wait))} s.")
            for key in keys if count else ():
                self._events[key].append(now)
            if len(self._events) > 10_000:  # forget callers that have been quiet for a whole window
                for key in [k for k, e in self._events.items() if not e or e[-1] <= now - self.window_s]:
                    del self._events[key]


def _window(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return "hour" if seconds == 3600 else f"{seconds / 3600:g} hours"
    if seconds >= 60 and seconds % 60 == 0:
        return "minute" if seconds == 60 else f"{seconds / 60:g} minutes"
    return "second" if seconds == 1 else f"{seconds:g} seconds"


# several people may share one network address (a school, an office): an address may start
# this many times as many runs as one owner
RUNS_PER_ADDRESS_FACTOR = 4


@dataclass(frozen=True)
class Limits:
    """The limits of one app: runs started per owner and per address per hour, uploads per
    address per minute, polls per session per second."""

    runs: RateLimit
    runs_per_address: RateLimit
    uploads: RateLimit
    polls: RateLimit

    @classmethod
    def create(cls, runs_per_hour: int | None, uploads_per_minute: int | None,
               polls_per_second: int | None) -> Limits:
        per_address = runs_per_hour * RUNS_PER_ADDRESS_FACTOR if runs_per_hour is not None else None
        return cls(RateLimit(runs_per_hour, 3600, "runs started"),
                   RateLimit(per_address, 3600, "runs started from this network address"),
                   RateLimit(uploads_per_minute, 60, "uploads"),
                   RateLimit(polls_per_second, 1, "polls"))
