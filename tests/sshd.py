"""A real OpenSSH server on 127.0.0.1 for tests that drive a device over ssh (edgec.ssh and its callers).

Use from a test module (tests/ is on sys.path):

    pytest_plugins = ["sshd"]

    def test_something(ssh_env):            # EDGEC_SSH_CONFIG set for this test; ssh_env is the LoopbackSshd
        device = SshDevice(parse_ssh(ssh_env.url))

`sshd` (session-scoped) starts one server for the whole run; `ssh_env` (per test) also points
EDGEC_SSH_CONFIG at its client config. Both skip, with the install hint, where sshd or ssh-keygen is missing.
Everything the client needs goes through its -F config file: OpenSSH finds ~/.ssh from the passwd entry, not
$HOME, so the user's own keys and known_hosts are never read or written.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from processes import stop_escalating

SSHD = "/usr/sbin/sshd"
INSTALL_HINT = "a loopback sshd is needed: apt-get install openssh-server"


@dataclass(frozen=True)
class LoopbackSshd:
    """A running sshd: `url` (ssh://root@127.0.0.1:PORT), `config_file` (ssh -F, the right key and known_hosts),
    and paths to make broken client configs from (`other_key` is a key the server does not accept)."""

    port: int
    root: Path
    config_file: Path
    client_key: Path
    other_key: Path
    known_hosts: Path

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def client_config(self, name: str, *, key: Path | None = None, known_hosts: Path | None = None) -> Path:
        """Another client config (e.g. the wrong key, or an empty known_hosts), strict host key checking kept."""
        path = self.root / name
        path.write_text(_client_config(self.port, key or self.client_key, known_hosts or self.known_hosts))
        return path


def _client_config(port: int, key: Path, known_hosts: Path) -> str:
    return (f"Host 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
            "  PasswordAuthentication no\n  KbdInteractiveAuthentication no\n  LogLevel ERROR\n")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgec-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_server_files(root: Path, port: int) -> Path:
    for key in ("host_key", "client_key", "other_key"):
        _keygen(root / key)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    host_pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (root / "empty_known_hosts").write_text("")
    cfg = root / "sshd_config"
    cfg.write_text(f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {root / 'host_key'}\n"
                   f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
                   "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
                   f"PidFile {root / 'sshd.pid'}\nLogLevel ERROR\n")
    return cfg


def _wait_listening(proc: subprocess.Popen, port: int, log: Path, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {seconds:g} s: {log.read_text()[-2000:]}")


def start_sshd(root: Path) -> tuple[subprocess.Popen, LoopbackSshd]:
    """Keys, configs and a started `sshd -D -e` in `root`; the caller stops the process (stop_sshd)."""
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.skip(INSTALL_HINT)
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # sshd's privilege-separation dir
    port = _free_port()
    cfg = _write_server_files(root, port)
    log = root / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_listening(proc, port, log)
    except BaseException:
        stop_sshd(proc)
        raise
    server = LoopbackSshd(port, root, root / "ssh_config", root / "client_key", root / "other_key",
                          root / "known_hosts")
    server.config_file.write_text(_client_config(port, server.client_key, server.known_hosts))
    return proc, server


def stop_sshd(proc: subprocess.Popen) -> None:
    """Terminate sshd and its session children; kill if it does not exit within 10 s."""
    stop_escalating(proc, [(signal.SIGTERM, True, 10), (signal.SIGKILL, True, 10)])


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSshd]:
    """One loopback sshd for the session (skips with the install hint if OpenSSH's server is missing)."""
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(proc)


@pytest.fixture
def ssh_env(sshd: LoopbackSshd, monkeypatch: pytest.MonkeyPatch) -> LoopbackSshd:
    """The session's sshd with EDGEC_SSH_CONFIG pointing at its client config for this test."""
    monkeypatch.setenv("EDGEC_SSH_CONFIG", str(sshd.config_file))
    return sshd


def fake_jetson_python(tmp_path: Path) -> Path:
    """An executable standing in for a Jetson's python3 (for ?python= in an ssh:// device): the venv's Python
    running tests/fake_jetson.py, with HOME in tmp_path so the device-side timing cache lands there."""
    wrapper = tmp_path / "jetson-python3"
    wrapper.write_text(f"#!/bin/sh\nexport HOME={tmp_path / 'home'}\n"
                       f"exec {sys.executable} {Path(__file__).parent / 'fake_jetson.py'} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper
