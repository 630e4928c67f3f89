"""Drive a device (a Jetson) over the user's own OpenSSH client: push files, run a command, pull results.

`--device ssh://[user@]host[:port][/dir][?python=PATH]`. edgec runs the `ssh` binary with the user's keys and
~/.ssh/config (or `-F $EDGEC_SSH_CONFIG`), always with BatchMode=yes: it never prompts, and it never turns off
host key checking. Files travel as a tar stream over ssh, so the device needs only a POSIX sh and tar.
ssh's own failures (exit 255: unreachable, refused, key or host key rejected), a missing `ssh` and timeouts
raise BackendUnavailable (exit 3) with one line saying what failed and what to do.
"""
from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence
from urllib.parse import parse_qs, unquote

from edgec.errors import BackendUnavailable, ConfigError, brief
from edgec.fileio import fsync_dir

__all__ = ["SshAddress", "SshDevice", "is_ssh", "parse_ssh"]

_FORM = "ssh://[USER@]HOST[:PORT][/ABSOLUTE/DIR or /~/DIR][?python=/usr/bin/python3]"
_QUERY_KEYS = ("python",)
_BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONNECT_TIMEOUT_S = 10
_TRANSFER_TIMEOUT_S = 600.0
_EXIT_MARK = "EDGEC_SSH_EXIT="  # run() appends this line to stderr: the command ran and this was its exit code


@dataclass(frozen=True)
class SshAddress:
    """A parsed `ssh://` device. `remote_dir` is an absolute path, "~" or "~/..." (None: edgec's cache);
    `python` is the device's interpreter for the caller to put in its argv."""

    user: str | None
    host: str
    port: int | None
    remote_dir: str | None
    python: str = "python3"

    @property
    def display(self) -> str:
        """ "ssh://user@host:port" as written (IPv6 in brackets), without the folder or query."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return "ssh://" + (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")


def is_ssh(device: str) -> bool:
    """True when `device` is an ssh:// address (malformed or not: parse_ssh says which)."""
    return device.startswith("ssh://")


_ADDRESS = re.compile(r"ssh://(?:(?P<user>[^@/?:\s\[\]]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)"
                      r"(?::(?P<port>\d{1,5}))?(?P<path>/[^?\s]*)?(?:\?(?P<query>.*))?")


def parse_ssh(device: str) -> SshAddress:
    """Parse `ssh://[user@]host[:port][/dir][?python=PATH]`; ConfigError (exit 2) naming the accepted form on
    anything else: an empty or odd host, a port outside 1-65535, a user starting with '-', an unknown or
    repeated query key. `/abs/dir` is an absolute folder, `/~/dir` one under the login's home (%-escapes
    allowed, e.g. %20 for a space); a bare `/` means the default folder."""
    m = _ADDRESS.fullmatch(device.strip())
    port = int(m.group("port")) if m and m.group("port") else None
    user = m.group("user") if m else None
    if not m or (port is not None and not 1 <= port <= 65535) or (user or "").startswith("-"):
        raise ConfigError(f"--device '{device}' is not an ssh address edgec can use: write {_FORM}.")
    python = _query_python(device, m.group("query"))
    return SshAddress(user, m.group("host").strip("[]"), port, _remote_dir(device, m.group("path")), python)


def _query_python(device: str, query: str | None) -> str:
    if query is None:
        return "python3"
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        fields = {"": [""]}
    unknown = sorted(set(fields) - set(_QUERY_KEYS))
    values = fields.get("python", [])
    if unknown or len(values) != 1 or not values[0].strip():
        what = f"unknown key {', '.join(repr(k) for k in unknown)}" if unknown else "python needs one value"
        raise ConfigError(f"--device '{device}': {what} in the query; the only key is python "
                          f"(the device's interpreter), as in {_FORM}.")
    return values[0]


def _remote_dir(device: str, path: str | None) -> str | None:
    if not path or path == "/":
        return None
    text = unquote(path)
    if text.startswith("/~"):
        text = text[1:]
        if text != "~" and not text.startswith("~/"):
            raise ConfigError(f"--device '{device}': a folder under the home is written /~/DIR (not ~user); "
                              f"use {_FORM}.")
    if "\0" in text or "\n" in text:
        raise ConfigError(f"--device '{device}': the folder has a control character; use {_FORM}.")
    return text.rstrip("/") or "/"


def _sh_path(path: str) -> str:
    """`path` for a remote POSIX shell: quoted, with a leading ~ left bare so the shell expands it."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + (shlex.quote(path[2:]) if path[2:] else "")
    return shlex.quote(path)


def _check_names(files: Sequence[str]) -> list[str]:
    """The file names as given; ValueError (a caller's bug) on an absolute, empty, '..' or unnormalised one."""
    names = [str(f) for f in files]
    for name in names:
        if not name or name == "." or name.startswith("/") or posixpath.normpath(name) != name or ".." in name.split("/"):
            raise ValueError(f"file name {name!r} must be a normalised relative path inside the folder")
    return names


class SshDevice:
    """One device reached with the user's `ssh`. Cheap to make; every method opens one ssh connection.

    `config_file` is passed as `ssh -F` (default: $EDGEC_SSH_CONFIG if set, else ssh's own ~/.ssh/config).
    $EDGEC_SSH_CONNECT_TIMEOUT sets ssh's ConnectTimeout (seconds, default 10).
    """

    def __init__(self, address: SshAddress, config_file: str | None = None):
        self.address = address
        self.config_file = config_file if config_file is not None else (os.environ.get("EDGEC_SSH_CONFIG") or None)
        self.connect_timeout = _connect_timeout()

    def push(self, local_dir: Path, files: Sequence[str], bundle_name: str, *,
             timeout: float = _TRANSFER_TIMEOUT_S) -> str:
        """Copy `files` (relative to `local_dir`) into the remote folder and return its absolute path there.

        The folder is `address.remote_dir`, else ~/.cache/edgec/bundles/<bundle_name>; it is created if
        missing and files already in it stay. One `tar -cf - | ssh 'mkdir -p DIR && cd DIR && tar -xf -'`.
        ValueError on a bundle_name outside [A-Za-z0-9._-] (or starting with '.', '_', '-') or a bad file
        name; ConfigError if a file is missing here; BackendUnavailable if the transfer fails.
        """
        if not _BUNDLE_NAME.fullmatch(bundle_name):
            raise ValueError(f"bundle name {bundle_name!r} must match {_BUNDLE_NAME.pattern}")
        names = _check_names(files)
        missing = [n for n in names if not (Path(local_dir) / n).is_file()]
        if missing:
            raise ConfigError(f"Cannot push to {self.address.display}: {Path(local_dir) / missing[0]} does not "
                              "exist. Is the output folder complete? Build it again.")
        folder = self.address.remote_dir or f"~/.cache/edgec/bundles/{bundle_name}"
        script = f"mkdir -p {_sh_path(folder)} && cd {_sh_path(folder)} && tar -xf - && pwd"
        tar = ["tar", "-C", str(local_dir), "-cf", "-", "--", *names]
        result = self._through_tar(tar, script, f"pushing {len(names)} file(s) to {folder}", timeout)
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise BackendUnavailable(f"{self.address.display} could not unpack the files into {folder}: "
                                     f"{_last_line(result.stderr) or f'exit code {result.returncode}'}. "
                                     "Check that tar is installed there and the folder is writable with space left.")
        return lines[-1]

    def run(self, argv: Sequence[str], remote_dir: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run `cd remote_dir && argv` on the device (each word quoted; argv[0] is the program, e.g.
        address.python) and return its exit code, stdout and stderr as text, whatever the code (a failed `cd`
        too). BackendUnavailable when ssh itself fails, or after `timeout` seconds (ssh is killed; a command
        already started on the device may go on)."""
        command = " ".join(shlex.quote(str(a)) for a in argv)
        script = (f"cd {_sh_path(remote_dir)} && {command}; rc=$?; "
                  f"printf '\\n{_EXIT_MARK}%d\\n' \"$rc\" >&2; exit \"$rc\"")
        what = f"running `{command}` in {remote_dir}"
        result = self._ssh(script, what, timeout)
        stderr, ran = _strip_exit_mark(result.stderr)
        if not ran and result.returncode == 255:
            raise self._unreachable(result.stderr)
        return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, stderr)

    def pull(self, remote_dir: str, files: Sequence[str], local_dir: Path, *,
             timeout: float = _TRANSFER_TIMEOUT_S) -> list[str]:
        """Bring back those of `files` (relative to `remote_dir`) that exist there as files; return their names,
        in the order asked. Each lands atomically in `local_dir` (its subfolders made as needed), and only once
        the whole transfer has succeeded: a failed one leaves every local file as it was. Only the names asked
        for are written, whatever the device sends. BackendUnavailable if the transfer fails."""
        names = _check_names(files)
        quoted = " ".join(shlex.quote(n) for n in names)
        script = (f"cd {_sh_path(remote_dir)} && set -- && for f in {quoted}; do "
                  "if [ -f \"$f\" ]; then set -- \"$@\" \"$f\"; fi; done && "
                  "if [ $# -gt 0 ]; then tar -chf - -- \"$@\"; fi")
        local_dir = Path(local_dir)
        staged: dict[str, Path] = {}
        try:
            self._pull_stream(script, f"pulling {len(names)} file(s) from {remote_dir}", timeout,
                              lambda stream: _stage_members(stream, set(names), local_dir, staged))
            pulled = [n for n in names if n in staged]
            for name in pulled:
                os.replace(staged.pop(name), local_dir / name)
            for folder in sorted({(local_dir / n).parent for n in pulled}):
                fsync_dir(folder)
        finally:
            for tmp in staged.values():
                tmp.unlink(missing_ok=True)
        return pulled

    def _ssh_argv(self, script: str) -> list[str]:
        """The ssh command line running `script` under the device's sh (so the login shell may be any)."""
        if shutil.which("ssh") is None:
            raise BackendUnavailable("The OpenSSH client `ssh` is not installed here, and edgec drives "
                                     f"{self.address.display} with it: apt-get install openssh-client.")
        argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        argv += ["-F", self.config_file] if self.config_file else []
        argv += ["-p", str(self.address.port)] if self.address.port else []
        argv += ["-l", self.address.user] if self.address.user else []
        return argv + ["--", self.address.host, "sh -c " + shlex.quote(script)]

    def _ssh(self, script: str, what: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run `script` there (stdin empty); BackendUnavailable when ssh is missing or `timeout` passes.
        The exit code is not checked."""
        argv = self._ssh_argv(script)
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, text=True,
                                  encoding="utf-8", errors="replace", start_new_session=True)
        except subprocess.TimeoutExpired as e:
            raise self._timed_out(what, timeout) from e

    def _through_tar(self, tar: list[str], script: str, what: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """`tar ... | ssh host script`: ssh's result (any exit code but 255); BackendUnavailable if ssh fails
        (255), times out, or the local tar reports an error."""
        argv = self._ssh_argv(script)  # first: names a missing ssh before tar starts
        with tempfile.TemporaryFile() as tar_err, \
                subprocess.Popen(tar, stdout=subprocess.PIPE, stderr=tar_err, stdin=subprocess.DEVNULL) as packer:
            try:
                result = subprocess.run(argv, stdin=packer.stdout, capture_output=True, timeout=timeout, text=True,
                                        encoding="utf-8", errors="replace", start_new_session=True)
            except BaseException as e:
                packer.kill()
                if isinstance(e, subprocess.TimeoutExpired):
                    raise self._timed_out(what, timeout) from e
                raise
            finally:
                packer.stdout.close()  # type: ignore[union-attr]  # ssh gone: a tar still writing gets EPIPE
            packed_code = packer.wait()
            tar_err.seek(0)
            packed = tar_err.read().decode("utf-8", "replace")
        if result.returncode == 255:
            raise self._unreachable(result.stderr)
        if packed_code > 0:  # an error of its own (a signal is SIGPIPE: the device stopped reading, reported below)
            raise BackendUnavailable(f"tar could not pack the files for {self.address.display} ({what}): "
                                     f"{_last_line(packed) or f'exit code {packed_code}'}.")
        return result

    def _pull_stream(self, script: str, what: str, timeout: float, read: Callable[[IO[bytes]], None]) -> None:
        """Run `script` there and hand its stdout (a tar stream, or nothing) to `read`; BackendUnavailable when
        ssh or the remote tar fails, the stream breaks or `timeout` passes (a timer kills ssh)."""
        argv = self._ssh_argv(script)
        fired = threading.Event()
        with tempfile.TemporaryFile() as err, subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True) as proc:
            timer = threading.Timer(timeout, lambda: (fired.set(), proc.kill()))
            timer.start()
            try:
                broken = _read_tar(proc.stdout, read)  # type: ignore[arg-type]
            except BaseException:
                proc.kill()
                raise
            finally:
                timer.cancel()
            code = proc.wait()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        if fired.is_set():
            raise self._timed_out(what, timeout)
        if code == 255:
            raise self._unreachable(stderr)
        if code != 0 or broken:
            detail = _last_line(stderr) or broken or f"exit code {code}"
            raise BackendUnavailable(f"{what[0].upper() + what[1:]} on {self.address.display} failed: {detail}. "
                                     "Check that the folder exists there and tar is installed.")

    def _unreachable(self, stderr: str) -> BackendUnavailable:
        """ssh's own failure (exit 255) as one line: what failed and the command to try by hand."""
        by_hand = ["ssh"] + (["-F", self.config_file] if self.config_file else [])
        by_hand += ["-p", str(self.address.port)] if self.address.port else []
        by_hand += [(f"{self.address.user}@" if self.address.user else "") + self.address.host, "true"]
        return BackendUnavailable(
            f"Could not reach {self.address.display}: {_last_line(stderr) or 'ssh failed (exit 255)'}. "
            f"Check the address and that `{shlex.join(by_hand)}` works without a password prompt "
            "(edgec uses your OpenSSH keys and ~/.ssh/config, BatchMode).")

    def _timed_out(self, what: str, timeout: float) -> BackendUnavailable:
        return BackendUnavailable(f"{what[0].upper() + what[1:]} on {self.address.display} timed out after "
                                  f"{timeout:g} s. Check that the device is up and not overloaded, or allow longer.")


def _connect_timeout() -> int:
    text = os.environ.get("EDGEC_SSH_CONNECT_TIMEOUT", "").strip()
    if not text:
        return _CONNECT_TIMEOUT_S
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"EDGEC_SSH_CONNECT_TIMEOUT={text!r} must be a whole number of seconds (at least 1).")
    return int(text)


def _last_line(text: str) -> str:
    """The last non-empty line of ssh's (or tar's) stderr, trimmed, for a one-line message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return brief(lines[-1], 200) if lines else ""


def _strip_exit_mark(stderr: str) -> tuple[str, bool]:
    """(stderr without run()'s trailing exit-code line, whether that line was there: the command ran)."""
    head, sep, tail = stderr.rpartition("\n" + _EXIT_MARK)
    if not sep or not tail.rstrip("\n").lstrip("-").isdigit():
        return stderr, False
    return head, True


def _read_tar(stream: IO[bytes], read: Callable[[IO[bytes]], None]) -> str | None:
    """read(stream) unless it is empty; what broke (a truncated or garbled tar stream) or None."""
    if not stream.peek(1):  # type: ignore[attr-defined]
        return None
    try:
        read(stream)
    except (tarfile.TarError, EOFError) as e:
        return f"the transfer broke off ({brief(e, 120)})"
    return None


def _stage_members(stream: IO[bytes], wanted: set[str], local_dir: Path, staged: dict[str, Path]) -> None:
    """Write each regular-file member named in `wanted` to a temp file beside its destination (fsynced);
    record it in `staged`. Anything else in the stream is read past, never written."""
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            name = posixpath.normpath(member.name)
            if not member.isreg() or name not in wanted or name in staged:
                continue
            dest = local_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            staged[name] = Path(tmp)
            os.fchmod(fd, 0o666 & ~_umask())
            source = archive.extractfile(member)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out)  # type: ignore[arg-type]
                out.flush()
                os.fsync(out.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
