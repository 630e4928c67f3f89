"""A real PostgreSQL server on 127.0.0.1 for tests of Optuna's RDB storage (`edgec tune --storage postgresql://...`).

Use from a test module (tests/ is on sys.path):

    pytest_plugins = ["postgres"]

    def test_something(postgres):           # postgres is the LoopbackPostgres
        storage = optuna.storages.RDBStorage(postgres.url)

`postgres` (session-scoped) runs `initdb` in a fresh temporary directory and starts one `postgres` for the whole
run, with a database `edgec_test`; `postgres.url` is postgresql+psycopg2://postgres@127.0.0.1:PORT/edgec_test.
`postgres.create_database(name)` gives a test its own, empty database. The fixture skips, with the install hint,
only where PostgreSQL's server binaries (Debian: /usr/lib/postgresql/<major>/bin) are missing; any other start-up
failure is an error with the server's log.

The server refuses to run as root, so under root initdb and postgres run as the `postgres` user (subprocess's
user=/group=) and the directory is chowned to it. It listens on 127.0.0.1 only, on a free port, with its unix
socket in the temporary directory (never /var/run/postgresql); pg_hba.conf trusts 127.0.0.1 and that socket and
nothing else. Durability is off (fsync, synchronous_commit, full_page_writes): it is a throwaway test server.
At teardown it gets a fast shutdown (SIGINT), then an immediate one (SIGQUIT), then SIGKILL to its process group.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from processes import stop_escalating

INSTALL_HINT = "a loopback PostgreSQL server is needed: apt-get install postgresql"
DATABASE = "edgec_test"
SUPERUSER = "postgres"


@dataclass(frozen=True)
class LoopbackPostgres:
    """A running PostgreSQL server: `url` (SQLAlchemy URL of the `edgec_test` database), `port`, `root` (the
    temporary directory: data/, the socket, server.log) and `bin_dir` (initdb, postgres, psql, ...)."""

    port: int
    root: Path
    bin_dir: Path
    database: str = DATABASE

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command through psql over TCP (what a client on another machine would do)."""
        result = subprocess.run([str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                 "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database,
                                 "-c", sql], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str) -> str:
        """A new empty database (e.g. one per test); returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        self.psql(f"CREATE DATABASE {name}")
        return self.url_for(name)


def find_bin_dir() -> Path | None:
    """Debian's /usr/lib/postgresql/<major>/bin with the newest major that has initdb, postgres and psql."""
    candidates = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bin_dir = Path(initdb).parent
        major = bin_dir.parent.name
        if all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "postgres", "psql", "pg_isready")):
            candidates.append((int(major) if major.isdigit() else -1, bin_dir))
    return max(candidates)[1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> dict[str, Any]:
    """subprocess keyword arguments that run a command as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SUPERUSER)
    except KeyError:
        pytest.skip(f"running as root and there is no '{SUPERUSER}' user to run the server as; {INSTALL_HINT}")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown_tree(path: Path, run_as: dict[str, Any]) -> None:
    if not run_as:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(name, run_as["user"], run_as["group"])


def _wait_ready(proc: subprocess.Popen, bin_dir: Path, port: int, log: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: {log.read_text()[-3000:]}")
        ready = subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "2"],
                               capture_output=True, timeout=10)
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"postgres did not accept connections on 127.0.0.1:{port} within {seconds:g} s: "
                       f"{log.read_text()[-3000:]}")


def start_postgres(root: Path) -> tuple[subprocess.Popen, LoopbackPostgres]:
    """initdb in `root`/data and a started `postgres` on 127.0.0.1 with database `edgec_test`; the caller stops
    the process (stop_postgres). `root` must be reachable by the `postgres` user when we are root."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(INSTALL_HINT)
    run_as = _as_server_user()
    data, sock = root / "data", root / "socket"
    sock.mkdir()
    _chown_tree(root, run_as)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PGDATA", None)
    init = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                           "--no-locale", "--no-sync", "--no-instructions"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=root, **run_as)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed ({init.returncode}): {init.stdout[-2000:]}{init.stderr[-2000:]}")
    # Only the socket in `root` and TCP from 127.0.0.1; initdb's default also trusts ::1 and replication.
    (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    port = _free_port()
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sock}",
                                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                 "-c", "max_connections=100", "-c", "logging_collector=off"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True, **run_as)
    if run_as:
        os.chown(log, run_as["user"], run_as["group"])
    try:
        _wait_ready(proc, bin_dir, port, log)
        server = LoopbackPostgres(port, root, bin_dir)
        server.create_database(DATABASE)
    except BaseException:
        stop_postgres(proc)
        raise
    return proc, server


def stop_postgres(proc: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT: disconnect clients, stop), then immediate (SIGQUIT), then SIGKILL to the group (the
    backends too, which the postmaster would otherwise reap)."""
    stop_escalating(proc, [(signal.SIGINT, False, 15), (signal.SIGQUIT, False, 10), (signal.SIGKILL, True, 10)])


@pytest.fixture(scope="session")
def postgres() -> Iterator[LoopbackPostgres]:
    """One loopback PostgreSQL server for the session (skips with the install hint if it is not installed)."""
    if find_bin_dir() is None:
        pytest.skip(INSTALL_HINT)
    # Not tmp_path_factory: pytest's base directory is 0700 and root's, so the postgres user could not reach it.
    root = Path(tempfile.mkdtemp(prefix="edgec-postgres-"))
    try:
        proc, server = start_postgres(root)
        try:
            yield server
        finally:
            stop_postgres(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
