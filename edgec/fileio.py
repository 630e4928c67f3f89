"""Atomic writes: a crash never leaves a valid-looking file or output folder.

Files: temp file in the destination dir, fsync, os.replace.
Folders: build in a sibling temp dir, then swap it in with renames (`staged_dir`, `replace_dir`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A fresh staging dir beside `final`, swapped in when the block completes.

    On any exception or interrupt inside the block the staging dir is removed and `final` is left as it
    was. SIGINT/SIGTERM never split the steps that keep this true (creating the staging dir, the swap, the
    clean-up): they are raised as soon as those finish. A SIGKILL leaves the staging dir behind; its name
    carries the pid, and the next build into `final` removes it.
    """
    staging: Path | None = None
    try:
        with signals_deferred():
            staging = _make_staging_dir(final)
        yield staging
        with signals_deferred():
            replace_dir(staging, final)
    except BaseException:
        if staging is not None:
            with signals_deferred():
                shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside the block are re-raised (to their own handlers) when it ends.

    Only the main thread can hold signals back (Python runs handlers there); elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for s in _DEFERRED:  # inside the try: a signal handled while installing still gets every handler back
            previous[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


def _make_staging_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-{os.getpid()}-"))
    staging.chmod(0o777 & ~_umask())
    return staging


def remove_stale_staging(final: Path) -> None:
    """Remove what killed builds of `final` left (their pid is dead); a swap killed half-way is undone."""
    for path in sorted(final.parent.glob(f".{final.name}.*-*-*")):
        kind, _, rest = path.name[len(final.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("staging", "old") or not pid.isdigit() or pid_alive(int(pid)):
            continue
        if kind == "old" and (path / "out").is_dir() and not final.exists():
            os.replace(path / "out", final)  # killed between the two renames of replace_dir: put the old back
        shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_dir(staging: Path, final: Path) -> None:
    """Swap a finished staging dir into place. Readers see the old folder or the new one, never a mix.

    Two renames (old aside, new in) because POSIX cannot atomically replace a non-empty directory;
    between them `final` is briefly absent, never partial. If the second rename fails the old folder
    is put back.
    """
    for p in staging.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(staging)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-{os.getpid()}-"))
        os.replace(final, old / "out")
    try:
        os.replace(staging, final)
    except BaseException:
        if old is not None:
            os.replace(old / "out", final)
            shutil.rmtree(old, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
