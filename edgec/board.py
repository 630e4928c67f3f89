"""The emulated ARM board from Python: setup(), start_board(), start_tracker() (tests and `edgec board`).

A thin layer over edgec/arm_board.sh (the one place that knows how the board is built and launched; shipped in
the package, so it works from a wheel as from a checkout): an
aarch64 Debian userland with the aarch64 TVM runtime under qemu-user, serving TVM RPC with
edgec/device/board_server.py on 127.0.0.1. Handles are context managers; stop() ends the process group this module
started, nothing else.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .errors import BackendUnavailable, ConfigError

__all__ = ["SCRIPT", "BoardProcess", "board_dir", "free_port", "is_set_up", "serve", "setup", "start_board", "start_tracker"]

SCRIPT = Path(__file__).resolve().parent / "arm_board.sh"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def board_dir() -> Path:
    """Where the board lives: $EDGEC_BOARD_DIR, default ~/.cache/edgec/arm-board."""
    env = os.environ.get("EDGEC_BOARD_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgec" / "arm-board"


def is_set_up() -> bool:
    rootfs = board_dir() / "rootfs"
    return (rootfs / ".edgec-debs").exists() and any(rootfs.glob(".edgec-wheels-*"))


def _script() -> Path:
    if not SCRIPT.is_file():
        raise BackendUnavailable(f"{SCRIPT} is missing: reinstall edgec (the emulated board's script ships "
                                 "inside the package).")
    return SCRIPT


def setup(quiet: bool = False) -> None:
    """Build the board (idempotent; about a minute the first time, seconds after)."""
    result = subprocess.run(["bash", str(_script()), "setup"], capture_output=quiet, text=True,
                            env={**os.environ, "EDGEC_PYTHON": sys.executable})  # its pip fetches the board's wheels
    if result.returncode != 0:
        detail = (result.stderr or "")[-2000:] if quiet else "see the lines above"
        raise BackendUnavailable(f"edgec board setup ({SCRIPT}) failed (exit {result.returncode}): {detail}")


def serve(port: int = 9090, cpu: str = "cortex-a72", key: str | None = None, tracker: str | None = None,
          host: str = "127.0.0.1") -> int:
    """Run a board in the foreground until interrupted (`edgec board start`); returns the server's exit code."""
    if not is_set_up():
        raise BackendUnavailable(f"No emulated board in {board_dir()}: run edgec board setup first.")
    return subprocess.run(_start_argv(port, cpu, host, key, tracker)).returncode


def _start_argv(port: int, cpu: str, host: str, key: str | None, tracker: str | None) -> list[str]:
    """`arm_board.sh start ...` for a board on `port` (registered with `tracker` under `key` when given)."""
    if tracker and not key:
        raise ConfigError("A board registered with a tracker needs a key, the name clients ask the tracker for "
                          "(--key rpi4, or key='rpi4').")
    argv = ["bash", str(_script()), "start", "--port", str(port), "--cpu", cpu, "--host", host]
    if key:
        argv += ["--key", key]
    if tracker:
        argv += ["--tracker", tracker]
    return argv


class BoardProcess:
    """A board or tracker this module started: address, log file, stop()."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, log: Path, what: str):
        self.proc, self.host, self.port, self.log, self.what = proc, host, port, log, what

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def device(self) -> str:
        """The --device string for this board (rpc://HOST:PORT)."""
        return f"rpc://{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """End the process group started for this board (the server and its session children)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout)

    def __enter__(self) -> "BoardProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{self.what} {self.address} pid {self.proc.pid}{'' if self.alive() else ' (stopped)'}>"


def _spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    finally:
        out.close()


def _log_path(name: str) -> Path:
    folder = board_dir() / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="edgec-board-logs-"))
    return folder / name


def _wait(handle: BoardProcess, ready: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready in handle.log_text():
            return
        if not handle.alive():
            raise BackendUnavailable(f"The {handle.what} on {handle.address} exited (code {handle.proc.returncode}) "
                                     f"before serving; its log ({handle.log}):\n{handle.log_text()[-2000:]}")
        time.sleep(0.2)
    handle.stop()
    raise BackendUnavailable(f"The {handle.what} on {handle.address} was not serving after {timeout:.0f} s; its log "
                             f"({handle.log}):\n{handle.log_text()[-2000:]}")


def start_board(port: int = 9090, cpu: str = "cortex-a72", key: str | None = None, tracker: str | None = None,
                host: str = "127.0.0.1", timeout: float = 60.0) -> BoardProcess:
    """Start an emulated board serving TVM RPC on host:port with QEMU_CPU=cpu; returns once it serves.

    With `tracker` ("HOST:PORT") and `key` it registers with that tracker (and this waits until it is listed).
    """
    if not is_set_up():
        raise BackendUnavailable(f"No emulated board in {board_dir()}: run edgec board setup "
                                 "(or edgec board setup) first.")
    argv = _start_argv(port, cpu, host, key, tracker)
    log = _log_path(f"board-{port}.log")
    log.write_text("")
    handle = BoardProcess(_spawn(argv, log), host, port, log, f"board ({cpu})")
    _wait(handle, "edgec board serving", timeout)
    if tracker and key:
        _wait_registered(handle, tracker, key, timeout)
    return handle


def _wait_registered(handle: BoardProcess, tracker: str, key: str, timeout: float) -> None:
    from tvm import rpc

    t_host, t_port = tracker.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            summary = rpc.connect_tracker(t_host, int(t_port)).summary()
            if any(str(k).split(":", 1)[-1] == key for k in (summary.get("queue_info") or {})):
                return
        except Exception:  # noqa: BLE001 - the tracker may still be starting
            pass
        if not handle.alive():
            break
        time.sleep(0.3)
    handle.stop()
    raise BackendUnavailable(f"The board on {handle.address} did not register with the tracker at {tracker} under "
                             f"key '{key}' within {timeout:.0f} s; its log:\n{handle.log_text()[-2000:]}")


def start_tracker(port: int = 9190, host: str = "127.0.0.1", timeout: float = 30.0) -> BoardProcess:
    """Start a TVM RPC tracker on this host (x86 python; boards register with it under keys)."""
    import importlib.util

    if importlib.util.find_spec("tornado") is None:
        raise BackendUnavailable("TVM's RPC tracker needs tornado on this host: pip install tornado")
    if host not in _LOOPBACK:
        print(f"edgec: WARNING: the tracker on {host}:{port} hands out boards to anyone who can reach it",
              file=sys.stderr)
    log = _log_path(f"tracker-{port}.log")
    log.write_text("")
    argv = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
            "--port-end", str(port + 1)]
    handle = BoardProcess(_spawn(argv, log), host, port, log, "tracker")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not handle.alive():
            raise BackendUnavailable(f"The tracker on {host}:{port} exited; its log:\n{handle.log_text()[-2000:]}")
        try:
            with socket.create_connection((host, port), timeout=1):
                pass
            time.sleep(0.2)
            return handle
        except OSError:
            time.sleep(0.2)
    handle.stop()
    raise BackendUnavailable(f"The tracker on {host}:{port} did not start within {timeout:.0f} s.")


def free_port() -> int:
    """A TCP port nothing on 127.0.0.1 listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
