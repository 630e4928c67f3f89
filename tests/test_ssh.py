"""edgec.ssh against a real OpenSSH server on 127.0.0.1 (tests/sshd.py): parse, push, run, pull, failures."""
from __future__ import annotations

import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from edgec.errors import BackendUnavailable, ConfigError
from edgec.ssh import SshAddress, SshDevice, is_ssh, parse_ssh

pytest_plugins = ["sshd"]
pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("device, expected, display", [
    ("ssh://jetson", SshAddress(None, "jetson", None, None, "python3"), "ssh://jetson"),
    ("ssh://nvidia@jetson", SshAddress("nvidia", "jetson", None, None, "python3"), "ssh://nvidia@jetson"),
    ("ssh://nvidia@10.0.0.7:2222", SshAddress("nvidia", "10.0.0.7", 2222, None, "python3"),
     "ssh://nvidia@10.0.0.7:2222"),
    ("ssh://nvidia@jetson/opt/edgec/run", SshAddress("nvidia", "jetson", None, "/opt/edgec/run", "python3"),
     "ssh://nvidia@jetson"),
    ("ssh://nvidia@jetson/~/work%20dir/", SshAddress("nvidia", "jetson", None, "~/work dir", "python3"),
     "ssh://nvidia@jetson"),
    ("ssh://nvidia@jetson/~", SshAddress("nvidia", "jetson", None, "~", "python3"), "ssh://nvidia@jetson"),
    ("ssh://nvidia@jetson:22/?python=/usr/bin/python3.8",
     SshAddress("nvidia", "jetson", 22, None, "/usr/bin/python3.8"), "ssh://nvidia@jetson:22"),
    ("ssh://root@[::1]:2200/tmp/x?python=python3.10", SshAddress("root", "::1", 2200, "/tmp/x", "python3.10"),
     "ssh://root@[::1]:2200"),
])
def test_parse_ssh_accepts(device: str, expected: SshAddress, display: str) -> None:
    """Every documented form parses to its parts (IPv6 in brackets too); display is the address as written
    without folder or query."""
    assert is_ssh(device)
    address = parse_ssh(device)
    assert address == expected
    assert address.display == display


@pytest.mark.parametrize("device", [
    "ssh://", "ssh://nvidia@", "ssh://@jetson", "ssh://nvidia@jetson:", "ssh://nvidia@jetson:0",
    "ssh://nvidia@jetson:65536", "ssh://nvidia@jetson:22x", "ssh://nvidia@jetson?user=x",
    "ssh://nvidia@jetson?python=", "ssh://nvidia@jetson?python=a&python=b", "ssh://-oProxyCommand=x",
    "ssh://-l@jetson", "ssh://nvidia@jet son", "ssh://nvidia@jetson/~other/dir", "rpc://jetson:9090",
])
def test_parse_ssh_refuses(device: str) -> None:
    """Malformed addresses (empty host or user, bad port, unknown/repeated/empty query key, a host or user that
    ssh would read as an option) are ConfigError (exit 2) naming the accepted form."""
    with pytest.raises(ConfigError) as info:
        parse_ssh(device)
    assert info.value.exit_code == 2
    assert "ssh://[USER@]HOST[:PORT]" in str(info.value)


def _bundle(tmp_path: Path) -> Path:
    local = tmp_path / "out"
    (local / "sub").mkdir(parents=True)
    (local / "model.onnx").write_bytes(bytes(range(256)) * 1000)
    (local / "with space.json").write_text('{"a": 1}\n')
    (local / "sub" / "runner.py").write_text("print('hello from the device')\n")
    return local


def _device(ssh_env, tmp_path: Path) -> SshDevice:
    """A device whose folder is in this test's tmp dir (the server is this machine: keep /root clean)."""
    return SshDevice(parse_ssh(f"{ssh_env.url}{tmp_path / 'remote'}"))


def test_push_run_pull_round_trip(ssh_env, tmp_path: Path) -> None:
    """push copies files (a name with a space, a subfolder) to the default folder, ~/.cache/edgec/bundles/NAME,
    and returns its absolute path; run executes there (python3 reads a pushed file and writes a new one); pull
    brings the files back byte-for-byte, leaving no temp files."""
    local = _bundle(tmp_path)
    device = SshDevice(parse_ssh(ssh_env.url))
    files = ["model.onnx", "with space.json", "sub/runner.py"]
    name = f"edgec-test-{time.time_ns()}"
    remote = device.push(local, files, name)
    try:
        _round_trip(device, remote, local, files, tmp_path)
        assert remote == str(Path.home() / ".cache/edgec/bundles" / name)
    finally:
        subprocess.run(["rm", "-rf", "--", remote], timeout=30)


def _round_trip(device: SshDevice, remote: str, local: Path, files: list[str], tmp_path: Path) -> None:
    """run a pushed-file reader, list the folder, pull everything back and compare."""
    script = ("import json, sys; d = json.load(open('with space.json')); "
              "open('result file.txt', 'w').write(str(d['a'] + 41)); print('ok', len(open('model.onnx','rb').read()))")
    done = device.run([device.address.python, "-c", script], remote, timeout=30)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok 256000", "")
    listing = device.run(["ls", "-1"], remote, timeout=30)
    assert listing.stdout.splitlines() == ["model.onnx", "result file.txt", "sub", "with space.json"]

    back = tmp_path / "back"
    back.mkdir()
    pulled = device.pull(remote, files + ["result file.txt"], back)
    assert pulled == files + ["result file.txt"]
    for name in files:
        assert (back / name).read_bytes() == (local / name).read_bytes()
    assert (back / "result file.txt").read_text() == "42"
    assert sorted(p.name for p in back.iterdir()) == ["model.onnx", "result file.txt", "sub", "with space.json"]
    assert [p.name for p in (back / "sub").iterdir()] == ["runner.py"]


def test_pull_skips_missing_files(ssh_env, tmp_path: Path) -> None:
    """pull returns only the names that exist remotely (none at all: an empty list) and writes nothing else."""
    device = _device(ssh_env, tmp_path)
    remote = device.push(_bundle(tmp_path), ["with space.json"], "skip")
    back = tmp_path / "back"
    back.mkdir()
    assert device.pull(remote, ["nope.bin", "with space.json", "sub/also-missing"], back) == ["with space.json"]
    assert device.pull(remote, ["nope.bin"], back) == []
    assert [p.name for p in back.iterdir()] == ["with space.json"]


def test_nonzero_exit_comes_back(ssh_env, tmp_path: Path) -> None:
    """A remote command's nonzero exit code, even 255 (ssh's own failure code), is returned with its output,
    not raised; a missing remote folder is a nonzero code too."""
    device = _device(ssh_env, tmp_path)
    remote = device.push(_bundle(tmp_path), ["with space.json"], "exit")
    for code in (3, 255):
        done = device.run(["sh", "-c", f"echo out; echo err >&2; exit {code}"], remote, timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (code, "out\n", "err\n")
    missing = device.run(["true"], remote + "/not-there", timeout=30)
    assert missing.returncode != 0 and "not-there" in missing.stderr


def test_remote_dir_from_address_is_used(ssh_env, tmp_path: Path) -> None:
    """A folder in the address (here with a space, %20-escaped) is where push puts the files and what it returns."""
    target = tmp_path / "remote dir" / "nested"
    device = SshDevice(parse_ssh(f"{ssh_env.url}{str(target).replace(' ', '%20')}"))
    assert device.push(_bundle(tmp_path), ["sub/runner.py"], "ignored-name") == str(target)
    assert (target / "sub" / "runner.py").read_text() == "print('hello from the device')\n"
    done = device.run(["python3", "sub/runner.py"], str(target), timeout=30)
    assert done.stdout == "hello from the device\n"


def test_home_relative_remote_dir(ssh_env, tmp_path: Path) -> None:
    """/~/DIR in the address is a folder under the login's home: push answers with its absolute path."""
    name = f"edgec-test-{time.time_ns()}"
    device = SshDevice(parse_ssh(f"{ssh_env.url}/~/{name}"))
    remote = device.push(_bundle(tmp_path), ["with space.json"], "x")
    try:
        assert remote == str(Path.home() / name) or remote.endswith("/" + name)
        assert device.run(["cat", "with space.json"], f"~/{name}", timeout=30).stdout == '{"a": 1}\n'
    finally:
        subprocess.run(["rm", "-rf", "--", remote], timeout=30)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: nothing listens there


def test_connection_refused_is_backend_unavailable(ssh_env, tmp_path: Path) -> None:
    """A closed port: every operation raises BackendUnavailable (exit 3) whose one line says it could not reach
    the address, quotes ssh's reason and names the command to try."""
    device = SshDevice(parse_ssh(f"ssh://root@127.0.0.1:{_closed_port()}"))
    for call in (lambda: device.run(["true"], "/tmp", timeout=30),
                 lambda: device.push(_bundle(tmp_path / "a"), ["with space.json"], "b"),
                 lambda: device.pull("/tmp", ["x"], tmp_path)):
        with pytest.raises(BackendUnavailable) as info:
            call()
        message = str(info.value)
        assert info.value.exit_code == 3 and "\n" not in message
        assert message.startswith(f"Could not reach {device.address.display}: ") and "refused" in message
        assert "works without a password prompt" in message and "BatchMode" in message


@pytest.mark.parametrize("broken", ["wrong key", "unknown host key"])
def test_rejected_key_fails_without_prompt(ssh_env, tmp_path: Path, broken: str) -> None:
    """A key the server refuses, or a host key not in known_hosts, is BackendUnavailable at once: BatchMode never
    prompts (stdin is not even read) and host key checking is kept."""
    if broken == "wrong key":
        config = ssh_env.client_config("wrong-key.conf", key=ssh_env.other_key)
        reason = "Permission denied"
    else:
        config = ssh_env.client_config("no-known-hosts.conf", known_hosts=ssh_env.root / "empty_known_hosts")
        reason = "Host key verification failed"
    device = SshDevice(parse_ssh(ssh_env.url), config_file=str(config))
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"Could not reach .*{reason}") as info:
        device.run(["true"], "/tmp", timeout=30)
    assert time.monotonic() - start < 20
    assert f"-F {shlex.quote(str(config))}" in str(info.value)


def test_missing_ssh_names_the_package(ssh_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `ssh` on PATH: BackendUnavailable naming openssh-client."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="apt-get install openssh-client"):
        SshDevice(parse_ssh(ssh_env.url)).run(["true"], "/tmp", timeout=30)


def test_timeout_names_the_step(ssh_env, tmp_path: Path) -> None:
    """A command running past its timeout is BackendUnavailable saying which step and after how long."""
    device = SshDevice(parse_ssh(ssh_env.url))
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"Running `sleep 30` in /tmp on .* timed out after 1 s"):
        device.run(["sleep", "30"], "/tmp", timeout=1)
    assert time.monotonic() - start < 15


def test_broken_pull_leaves_local_files_as_they_were(ssh_env, tmp_path: Path) -> None:
    """A pull cut off mid-stream (here by its timeout, inside a 64 GiB sparse file) raises BackendUnavailable
    naming the step; files already received are not moved in (the old local copy stays) and no temp file stays."""
    device = _device(ssh_env, tmp_path)
    remote = device.push(_bundle(tmp_path), ["with space.json"], "broken")
    subprocess.run(["truncate", "-s", "64G", str(Path(remote) / "huge.bin")], check=True, timeout=30)
    back = tmp_path / "back"
    back.mkdir()
    (back / "with space.json").write_text("old\n")
    with pytest.raises(BackendUnavailable, match=r"Pulling 2 file\(s\) from .* timed out after 1 s"):
        device.pull(remote, ["with space.json", "huge.bin"], back, timeout=1)
    assert [p.name for p in back.iterdir()] == ["with space.json"]
    assert (back / "with space.json").read_text() == "old\n"


def test_bad_names_are_refused_before_connecting(ssh_env, tmp_path: Path) -> None:
    """Bundle names outside [A-Za-z0-9._-] (or '.', '..') and file names escaping the folder are the caller's
    bug (ValueError); a file missing locally is a ConfigError naming it."""
    device = SshDevice(parse_ssh(ssh_env.url))
    local = _bundle(tmp_path)
    for bad in ("..", ".", "a/b", "a b", ""):
        with pytest.raises(ValueError):
            device.push(local, ["model.onnx"], bad)
    for bad in ("../x", "/etc/passwd", "a/../b", ""):
        with pytest.raises(ValueError):
            device.pull("/tmp", [bad], tmp_path)
    with pytest.raises(ConfigError, match="absent.onnx does not exist"):
        device.push(local, ["absent.onnx"], "ok")


def test_push_into_an_impossible_folder(ssh_env, tmp_path: Path) -> None:
    """A remote folder that cannot be made (a file is in the way) is BackendUnavailable quoting the device's
    error and naming the folder, not a returned path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    device = SshDevice(parse_ssh(f"{ssh_env.url}{blocker}/bundle"))
    with pytest.raises(BackendUnavailable, match=f"could not unpack the files into {blocker}/bundle: .*Not a directory"):
        device.push(_bundle(tmp_path), ["with space.json"], "x")


def test_connect_timeout_setting(ssh_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGEC_SSH_CONNECT_TIMEOUT sets ssh's ConnectTimeout; a value that is not whole seconds is a ConfigError."""
    monkeypatch.setenv("EDGEC_SSH_CONNECT_TIMEOUT", "3")
    device = SshDevice(parse_ssh(ssh_env.url))
    assert device.run(["true"], "/", timeout=30).args[:6] == ["ssh", "-T", "-o", "BatchMode=yes", "-o",
                                                              "ConnectTimeout=3"]
    monkeypatch.setenv("EDGEC_SSH_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="EDGEC_SSH_CONNECT_TIMEOUT"):
        SshDevice(parse_ssh(ssh_env.url))
