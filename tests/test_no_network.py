"""edgec opens no network connection: watched in the process, in native code and in every child.

Two watchers: strace (-f) records every IPv4/IPv6 connect/sendto/sendmsg system call, from Python or native
code (ONNX Runtime's telemetry is native), in the process and all its children; an audit hook (a
sitecustomize on PYTHONPATH, inherited by forked children and loaded by spawned ones) records and blocks
every DNS look-up and IPv4/IPv6 connect from Python. Commands run in an empty network namespace where one
can be made (root), so nothing can leave this machine even when something tries. CI=true would make
OpenVINO's converter skip its telemetry on its own; the variables it reads are removed so the test sees
what a user's shell sees. The controls show that each watcher sees what the SDKs do without edgec.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.requires_openvino, pytest.mark.requires_strace]

_AUDIT_HOOK = '''
import os, socket, sys
_LOG = os.environ["EDGEC_TEST_NETWORK_LOG"]
_LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"}
_SENDS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
def _inet(sock):
    return getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6)
def _hook(event, args):
    if event in _LOOKUPS or (event in _SENDS and _inet(args[0])):
        with open(_LOG, "a") as f:
            f.write(f"pid {os.getpid()} {event} {args[0] if event in _LOOKUPS else args[1]!r}\\n")
        raise ConnectionRefusedError(f"{event} blocked by test_no_network")
sys.addaudithook(_hook)
'''


def _offline_prefix() -> list[str]:
    try:
        subprocess.run(["unshare", "-n", "true"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return ["unshare", "-n"]


class Watched:
    """Runs commands under both watchers with an empty HOME; `attempts()` lists what tried to reach out."""

    def __init__(self, tmp_path: Path):
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_AUDIT_HOOK)
        self.home = tmp_path / "home"  # no OpenVINO consent file: its telemetry is on, as for a new user
        self.home.mkdir()
        self.hook_log, self.trace_log = tmp_path / "network.log", tmp_path / "strace.log"
        # CI=true silences OpenVINO's converter; ORT_DISABLE_TELEMETRY must come from edgec, not from this process
        unset = ("CI", "TF_BUILD", "JENKINS_URL", "ORT_DISABLE_TELEMETRY")
        self.env = {k: v for k, v in os.environ.items() if k not in unset}
        self.env.update(HOME=str(self.home), EDGEC_TEST_NETWORK_LOG=str(self.hook_log),
                        PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.prefix = _offline_prefix() + ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg",
                                           "-o", str(self.trace_log), "-A"]

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(self.prefix + argv, env=self.env, capture_output=True, text=True, timeout=300)

    def attempts(self) -> list[str]:
        traced = self.trace_log.read_text().splitlines() if self.trace_log.exists() else []
        hooked = self.hook_log.read_text().splitlines() if self.hook_log.exists() else []
        return [line for line in traced if "AF_INET" in line] + hooked

    def home_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.home)) for p in self.home.rglob("*") if p.is_file())


def test_strace_sees_connects_from_native_code(tmp_path: Path) -> None:
    """Control: a connect made through libc directly (no Python audit event) is seen (to loopback, closed port)."""
    watched = Watched(tmp_path)
    code = ("import ctypes, socket, struct; s = socket.socket(); "
            "a = struct.pack('<HH4s8x', socket.AF_INET, socket.htons(9), socket.inet_aton('127.0.0.1')); "
            "ctypes.CDLL(None).connect(s.fileno(), a, len(a))")
    assert watched.run([sys.executable, "-c", code]).returncode == 0
    assert any("127.0.0.1" in line for line in watched.attempts()), watched.attempts()
    assert not watched.hook_log.exists()


def test_the_watchers_catch_openvino_telemetry(tmp_path: Path, tiny_onnx: Path) -> None:
    """Control: OpenVINO's converter used directly, outside edgec, tries to reach its telemetry server."""
    watched = Watched(tmp_path)
    code = "import openvino as ov, sys; ov.convert_model(sys.argv[1])"
    assert watched.run([sys.executable, "-c", code, str(tiny_onnx)]).returncode == 0
    assert any("google-analytics" in line for line in watched.attempts()), watched.attempts()
    assert any(f.startswith("intel/") for f in watched.home_files())  # its client ID, in the user's home


def test_onnx_runtime_telemetry_is_on_without_edgec(tmp_path: Path, tiny_onnx: Path) -> None:
    """Control: ONNX Runtime used directly writes its telemetry device ID (its uploads follow later)."""
    watched = Watched(tmp_path)
    code = ("import numpy as np, onnxruntime as ort, sys; s = ort.InferenceSession(sys.argv[1]); "
            "s.run(None, {'x': np.zeros((1, 3, 16, 16), np.float32)})")
    assert watched.run([sys.executable, "-c", code, str(tiny_onnx)]).returncode == 0
    assert any("onnxruntime/deviceid" in f for f in watched.home_files()), watched.home_files()


def test_int8_compile_and_profile_open_no_connection(tiny_onnx: Path, tmp_path: Path) -> None:
    watched = Watched(tmp_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(16, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "out"
    edgec = [sys.executable, "-m", "edgec.cli"]
    for argv in (["compile", str(tiny_onnx), "--target", "intel-cpu", "--precision", "int8", "--calib", str(calib),
                  "--range-search", "4", "-o", str(out), "-q", "--no-cache"],
                 ["profile", str(out), "--runs", "20"]):
        result = watched.run(edgec + argv)
        assert result.returncode == 0, result.stderr[-3000:]
    assert watched.trace_log.exists()  # strace really watched
    assert watched.attempts() == []
    assert watched.home_files() == []  # no telemetry client ID, consent file or device ID written
