"""Build cache keyed by content: the same model, target, precision, data and SDK versions reuse a build.

Entries live in $EDGEC_CACHE_DIR (default ~/.cache/edgec/builds)/<key>/, a copy of an output folder.
Every file is checked against the entry's manifest sha256 before use; a damaged entry (truncated file,
hash mismatch, missing manifest) is removed and the build runs again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import staged_dir
from .model import file_sha256


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEC_CACHE_DIR") or Path.home() / ".cache" / "edgec" / "builds")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of edgec's own source and data files: a changed pass or schedule never reuses an old build."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".toml"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def data_fingerprint(source: Any) -> str:
    """Content hash of calibration data: files by bytes, folders by every file, arrays by bytes."""
    h = hashlib.sha256()
    if source is None:
        return "none"
    if isinstance(source, (str, Path)):
        path = Path(source)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in files:
            h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
            h.update(file_sha256(p).encode() if p.exists() else b"missing")
        return h.hexdigest()
    if isinstance(source, dict):
        for k in sorted(source):
            h.update(k.encode())
            for part in source[k] if isinstance(source[k], (list, tuple)) else [source[k]]:  # boxes: per sample
                a = np.ascontiguousarray(part)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.tobytes())
        return h.hexdigest()
    if isinstance(source, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()
    return "uncacheable"  # an arbitrary iterable: no stable identity


def lookup(key: str) -> Path | None:
    """The entry for `key` if it exists and every file matches its manifest; damaged entries are dropped."""
    entry = cache_dir() / key
    if not entry.is_dir():
        return None
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        for f in manifest["files"]:
            if file_sha256(entry / f["path"]) != f["sha256"]:
                raise ValueError(f"{f['path']} does not match its sha256")
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"edgec: cache entry {entry} is damaged ({e}); removed it, building again", file=sys.stderr)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return entry


def store(key: str, out: Path) -> None:
    """Copy a finished output folder into the cache (atomically; a failure to cache never fails a build)."""
    entry = cache_dir() / key
    try:
        with staged_dir(entry) as staging:
            _copy_files(out, staging)
    except OSError as e:
        print(f"edgec: could not write the build cache at {cache_dir()} ({e}); continuing", file=sys.stderr)


def restore(entry: Path, out: Path) -> None:
    with staged_dir(out) as staging:
        _copy_files(entry, staging)


def _copy_files(src: Path, dst: Path) -> None:
    for p in src.iterdir():
        if p.is_file():
            shutil.copy2(p, dst / p.name)
