"""Kill builds at random points: the output folder is always the previous whole build, never a partial one."""
from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.requires_openvino


def _whole_build(out: Path) -> str:
    """Check every file the manifest lists against its sha256; returns the manifest's creation stamp."""
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        assert hashlib.sha256((out / f["path"]).read_bytes()).hexdigest() == f["sha256"], f["path"]
    assert {p.name for p in out.iterdir()} == {f["path"] for f in manifest["files"]} | {"manifest.json"}
    return manifest["created"]


def test_killed_compiles_leave_the_previous_build(tmp_path: Path, tiny_onnx: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgec.cli", "compile", str(tiny_onnx), "--target", "intel-cpu", "-o", str(out),
           "--runs", "200", "-q", "--no-cache"]
    t0 = time.perf_counter()
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    duration = time.perf_counter() - t0  # kill points are spread over a whole run, wherever this machine is
    _whole_build(out)
    rng = random.Random(0)
    outcomes = []
    for i in range(6):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.1, 0.9) * duration)
        sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        outcomes.append((sig.name, proc.returncode))
        _whole_build(out)  # the old build or a new whole one, never a mix
        if sig == signal.SIGTERM and proc.returncode == 130:
            assert b"interrupted" in err
            assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]  # cleaned up on SIGTERM
    assert any(code not in (0,) for _, code in outcomes), outcomes  # at least one kill landed mid-build
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    _whole_build(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.onnx"]  # killed builds' staging removed
