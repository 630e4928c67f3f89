"""Atomic folders: a staged build is swapped in whole or not at all; interrupts wait for the steps that must
not be split."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from edgec.fileio import remove_stale_staging, signals_deferred, staged_dir


class _Interrupted(Exception):
    pass


def _interrupt(signum, frame) -> None:
    raise _Interrupted


def test_an_interrupt_inside_a_deferred_block_is_raised_when_it_ends() -> None:
    """With its own SIGTERM handler (the process's SIGINT handler is whatever earlier tests or SDKs left)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        reached_end = False
        with pytest.raises(_Interrupted):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                reached_end = True  # the signal did not cut the block short
        assert reached_end
        assert signal.getsignal(signal.SIGTERM) is _interrupt  # the handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_failed_build_leaves_the_previous_folder_and_no_staging(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_dir(out) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(out) as staging:
            (staging / "a.txt").write_text("second")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_swap_killed_half_way_is_undone_by_the_next_build(tmp_path: Path) -> None:
    """Killed between replace_dir's two renames: the old folder waits in .out.old-PID-*/out, `out` is absent."""
    old = tmp_path / ".out.old-999999999-abc"  # a pid that cannot be alive
    (old / "out").mkdir(parents=True)
    (old / "out" / "a.txt").write_text("previous build")
    (tmp_path / ".out.staging-999999999-def").mkdir()
    remove_stale_staging(tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "previous build"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
