"""Progress lines: counters say how far a loop is and, at the rate so far, how long is left."""
from __future__ import annotations

import edgec.progress
from edgec.progress import Steps


def test_counter_prints_the_time_left_at_the_rate_so_far(monkeypatch, capsys) -> None:
    clock = iter([100.0, 110.0, 111.0, 140.0])  # created, then three calls
    monkeypatch.setattr(edgec.progress.time, "perf_counter", lambda: next(clock))
    report = Steps(enabled=True).counter("layers")
    report(1, 4)   # 10 s for 1 of 4: ~30 s left
    report(2, 4)   # 1 s later: under the 2 s between lines, not printed
    report(4, 4)   # done: no estimate
    assert capsys.readouterr().err.splitlines() == ["edgec:   1/4 layers (~30 s left)", "edgec:   4/4 layers"]


def test_a_quiet_run_has_no_counter() -> None:
    assert Steps(enabled=False).counter("samples") is None
