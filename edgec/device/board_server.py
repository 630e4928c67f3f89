"""TVM RPC server for a board (real or emulated): `python board_server.py --port 9090 [--key K --tracker H:P]`.

Runs on the board with only the standard library, numpy and the TVM runtime (keep it that way: it is copied
to the board by edgec/arm_board.sh and never imports edgec; it imports edgec_runtime, a copy of edgec/device/tvm_runner.py
placed beside it, which has the same rule). Differences from `python -m tvm.exec.rpc_server`:

* the listen loop runs in this process (sessions are forked children; nothing re-launches sys.executable,
  which under qemu-user is an aarch64 binary the host kernel cannot exec);
* a session that crashes (SIGILL from a model built for an instruction set the CPU lacks, SIGSEGV...) is
  logged and remembered, and the board keeps serving; stock TVM 0.27 stops accepting after the first crash;
* it registers `edgec.*` functions the host's profiler calls: `edgec.board_info`, `edgec.last_crash`, and
  `edgec.measure` (per-run latency and per-kernel times measured on the board, so RPC costs are not in them).
* it binds to 127.0.0.1 unless --host says otherwise (then it warns).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import time

import tvm
import tvm.rpc.server as _server
from edgec_runtime import time_call_sites, time_runs  # edgec/device/tvm_runner.py, copied beside this file by edgec/arm_board.sh

log = logging.getLogger("edgec.board")
_STATE = {"crashes": 0, "last_crash": None, "started": time.time()}
_original_serving = _server._serving


def _signal_name(code: str) -> str:
    try:
        number = int(code)
    except ValueError:
        return code
    if number < 0:
        try:
            return signal.Signals(-number).name
        except ValueError:
            return f"signal {-number}"
    return f"exit code {number}"


def _serving(sock, addr, opts, load_library):
    """The stock session handler, but a crashed session is recorded instead of ending the listen loop."""
    cwd = os.getcwd()
    try:
        _original_serving(sock, addr, opts, load_library)
    except RuntimeError as e:
        how = _signal_name(str(e).rsplit(" ", 1)[-1])
        _STATE["crashes"] += 1
        # Sessions are forked from this process, so later sessions see this record.
        _STATE["last_crash"] = {"n": _STATE["crashes"], "signal": how, "client": list(addr)[:2],
                                "time": time.time(), "message": str(e)}
        log.error("session from %s crashed (%s): %s; the board keeps serving", addr, how, e)
        os.chdir(cwd)
        try:
            sock.close()
        except OSError:
            pass


_server._serving = _serving


@tvm.register_global_func("edgec.board_info")
def _board_info() -> str:
    cpu = os.environ.get("QEMU_CPU")
    return json.dumps({"machine": platform.machine(), "python": platform.python_version(), "tvm": tvm.__version__,
                       "qemu_cpu": cpu, "emulated": bool(cpu or os.environ.get("QEMU_LD_PREFIX")),
                       "crashes": _STATE["crashes"], "cpus": os.cpu_count(), "address": _STATE.get("address")})


@tvm.register_global_func("edgec.last_crash")
def _last_crash() -> str:
    return json.dumps(_STATE["last_crash"])


@tvm.register_global_func("edgec.measure")
def _measure(lib, runs, warmup, kernel_runs, *args) -> str:
    """Run the VM's main on `args`: per-run wall times (ms), then mean time per kernel call site (ms).

    Kernel times come from tvm_runner.py's time_call_sites (symbol#k per call site; VM builtins left out).
    """
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(lib, tvm.cpu(0))
    main = vm["main"]
    samples = time_runs(lambda: main(*args), runs, warmup)
    kernels = time_call_sites(vm, main, args, int(kernel_runs)) if int(kernel_runs) > 0 else []
    return json.dumps({"samples_ms": samples, "kernels": kernels})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="TVM RPC server for an edgec board")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--port-end", type=int, default=None, help="try ports up to this one (exclusive)")
    p.add_argument("--tracker", default=None, metavar="HOST:PORT", help="register with this RPC tracker")
    p.add_argument("--key", default="", help="the board's key on the tracker (e.g. rpi4)")
    p.add_argument("--custom-addr", default=None, help="address the tracker hands out for this board")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s board %(levelname)s %(message)s", stream=sys.stderr)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach port %d can upload and run code on this board",
                    a.host, a.port)
    tracker = None
    if a.tracker:
        host, port = a.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    _server._popen_start_rpc_server(a.host, a.port, a.port_end or a.port + 1, tracker_addr=tracker, key=a.key,
                                    custom_addr=a.custom_addr)
    _STATE["address"] = f"{a.host}:{getattr(_server.PopenRPCServerState.current, 'port', a.port)}"
    log.info("edgec board serving (machine %s, QEMU_CPU=%s, key %r)", platform.machine(),
             os.environ.get("QEMU_CPU"), a.key)
    _server.PopenRPCServerState.current.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
