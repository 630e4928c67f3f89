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
        """A progress callback for long loops, at most every 2 seconds, with the time left at the rate so far:
        `edgec:   250/1000 samples (~30 s left)`."""
        if not self.enabled:
            return None
        start, last = time.perf_counter(), [0.0]

        def report(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] >= 2.0 or done == total:
                last[0] = now
                left = (now - start) / max(done, 1) * (total - done)
                eta = f" (~{left:.0f} s left)" if 0 < done < total else ""
                print(f"edgec:   {done}/{total} {unit}{eta}", file=sys.stderr, flush=True)

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
