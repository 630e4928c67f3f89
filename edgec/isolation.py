"""How edgec behaves inside a process: no usage telemetry from its SDKs, no BLAS thread pool that can deadlock,
no Ctrl-C mistaken for a broken install.

`@isolated` wraps every public entry point (compile, profile, prune, build_engine); it nests.

- Native imports. pybind11 turns a Ctrl-C that lands inside a module's initialisation into
  `ImportError: initialization failed`, which would read as a broken install: onnx and onnxruntime are loaded
  with SIGINT/SIGTERM held back (raised as soon as the import ends) before an entry point runs.
- ONNX Runtime telemetry. ONNX Runtime (1.31 on Linux) uploads usage events from native threads (DNS
  look-ups of mobile.events.data.microsoft.com seen with strace) and writes a device ID under
  ~/.cache/Microsoft. It reads its switch, ORT_DISABLE_TELEMETRY, once, when onnxruntime is imported:
  edgec imports it only through `import_onnxruntime()`, with the switch set for that import alone (the
  environment that child processes inherit is left as it was). If the user's code imported onnxruntime
  before edgec, that is too late; then importing edgec turns its events off through
  `onnxruntime.disable_telemetry_events()`, which is all ONNX Runtime offers at that point.
- OpenVINO telemetry. OpenVINO (and NNCF, through the same `openvino_telemetry` package) send anonymous usage
  data by default: each `ov.convert_model` forks a process that resolves and posts to Google Analytics.
  While edgec runs, that package's own two gates say no: its consent check answers "declined" (so no
  client-ID or consent file is written under ~/intel) and its sender drops messages (for a telemetry
  object the user's code created earlier, consent given). The user's consent file is never read or changed,
  and other processes (the user's own OpenVINO tools) are not affected. The SDK's telemetry object is
  created once per process: one that edgec created stays declined in this process afterwards.
- BLAS threads. A threaded OpenBLAS call in flight while another thread forks never returns: OpenBLAS's
  fork handler stops its worker pool from the forking thread, and the caller spins in `exec_blas`
  (numpy 2.4's OpenBLAS 0.3.31; reproduced by benchmarks/fork_race.py, which also shows that one BLAS
  thread is immune). numpy's BLAS therefore runs single-threaded inside edgec (threadpoolctl, restored on
  return). The SDKs' own pools (OpenVINO's TBB, TVM's, torch's OpenMP) are not touched.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from .fileio import signals_deferred

F = TypeVar("F", bound=Callable[..., Any])

if "onnxruntime" in sys.modules:  # imported by the user's code before edgec: its switch was read already
    sys.modules["onnxruntime"].disable_telemetry_events()


def import_onnxruntime() -> Any:
    """The onnxruntime module, imported (the first time) with its telemetry switched off."""
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    previous = os.environ.get("ORT_DISABLE_TELEMETRY")
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    try:
        with signals_deferred():
            import onnxruntime
    finally:
        if previous is None:
            del os.environ["ORT_DISABLE_TELEMETRY"]
        else:
            os.environ["ORT_DISABLE_TELEMETRY"] = previous
    return onnxruntime

_lock = threading.Lock()
_depth = 0
_saved: tuple[Any, ...] = ()


@contextmanager
def telemetry_declined() -> Iterator[None]:
    """OpenVINO/NNCF usage telemetry declined for the duration (re-entrant, thread-safe)."""
    global _depth, _saved
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
        from openvino_telemetry.utils.sender import TelemetrySender
    except ImportError:  # no OpenVINO installed, or a release without this package: nothing to decline
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = (OptInChecker.check, TelemetrySender.send)
            OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
            TelemetrySender.send = lambda self, backend, message: None
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                OptInChecker.check, TelemetrySender.send = _saved


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread for the duration; the previous limits are restored after."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def load_native_modules() -> None:
    """onnx and onnxruntime, loaded whole with interrupts held back (see the module docstring)."""
    with signals_deferred():
        import onnx  # noqa: F401 - loaded here rather than wherever a Ctrl-C would find it first
    import_onnxruntime()


def isolated(fn: F) -> F:
    """Run `fn` with SDK telemetry declined and single-threaded BLAS."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        load_native_modules()
        with telemetry_declined(), single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
