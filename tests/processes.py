"""Stopping a test server process (sshd, PostgreSQL) for good: escalating signals, each given time to work."""
from __future__ import annotations

import os
import subprocess
from typing import Sequence


def stop_escalating(proc: subprocess.Popen, steps: Sequence[tuple[int, bool, float]]) -> None:
    """For each (signal, to the whole process group?, seconds to wait): send it unless `proc` has exited, then
    wait up to that long for it to exit."""
    for sig, group, wait_s in steps:
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
