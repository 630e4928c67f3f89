"""Progress on stderr for long work: steps with their durations, counters for loops, one-line notes."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator


class Steps:
    """Progress lines on stderr: `edgec: <step> ... 1.2s`."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.timings: dict[str, float] = {}

    def counter(self, unit: str) -> Callable[[int, int], None] | None:
        """A progress callback for long loops: `edgec:   250/1000 samples`, at most every 2 seconds."""
        if not self.enabled:
            return None
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] >= 2.0 or done == total:
                last[0] = now
                print(f"edgec:   {done}/{total} {unit}", file=sys.stderr, flush=True)

        return report

    def note(self, text: str) -> None:
        """One line: `edgec: <text>`."""
        if self.enabled:
            print(f"edgec: {text}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        if self.enabled:
            print(f"edgec: {what} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        yield
        self.timings[what] = round(time.perf_counter() - t0, 3)
        if self.enabled:
            print(f"edgec: {what} done ({self.timings[what]:.1f}s)", file=sys.stderr, flush=True)
