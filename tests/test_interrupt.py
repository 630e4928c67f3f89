"""Kill builds at random points: the output folder is always the previous whole build, never a partial one."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_openvino

# EDGEC_INTERRUPT_SEED varies the kill points (the 20-run check in the README uses seeds 0-19).
SEED = int(os.environ.get("EDGEC_INTERRUPT_SEED", "0"))


def _whole_build(out: Path) -> str:
    """Check every file the manifest lists against its sha256; returns the manifest's creation stamp."""
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        assert hashlib.sha256((out / f["path"]).read_bytes()).hexdigest() == f["sha256"], f["path"]
    assert {p.name for p in out.iterdir()} == {f["path"] for f in manifest["files"]} | {"manifest.json"}
    return manifest["created"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".staging-" in p.name or ".old-" in p.name)


def test_killed_compiles_leave_the_previous_build(tmp_path: Path, tiny_onnx: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgec.cli", "compile", str(tiny_onnx), "--target", "intel-cpu", "-o", str(out),
           "--runs", "200", "-q", "--no-cache"]
    t0 = time.perf_counter()
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    duration = time.perf_counter() - t0  # kill points are spread over a whole run, wherever this machine is
    _whole_build(out)
    rng = random.Random(SEED)
    outcomes = []
    stale: set[str] = set()  # what SIGKILL'd builds left; the next build that gets as far as staging removes it
    killed: set[int] = set()
    for sig in [signal.SIGTERM, signal.SIGINT, signal.SIGKILL] * 3:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 1.0) * duration)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        outcomes.append((sig.name, proc.returncode))
        _whole_build(out)  # the old build or a new whole one, never a mix
        if sig == signal.SIGKILL:
            assert proc.returncode in (0, -signal.SIGKILL), (sig.name, proc.returncode, err.decode()[-2000:])
            killed.add(proc.pid)
            stale = set(_leftovers(tmp_path))
            assert all(int(name.split("-")[1]) in killed for name in stale), (stale, killed)
            continue
        # 130: edgec caught it and cleaned up; -sig: it landed before edgec's handler existed (nothing written yet)
        assert proc.returncode in (0, 130, -sig), (sig.name, proc.returncode, err.decode()[-2000:])
        if proc.returncode == 130:
            assert b"interrupted" in err
        assert set(_leftovers(tmp_path)) <= stale, (sig.name, proc.returncode, _leftovers(tmp_path))
    assert any(code == 130 for _, code in outcomes), outcomes  # edgec's own clean-up ran at least once
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    _whole_build(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.onnx"]  # killed builds' staging removed
