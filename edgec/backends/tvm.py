"""TVM backend: ONNX -> Relax -> scheduled kernels -> model.so for ARM boards (cross-compiled) or this host.

Apache TVM 0.27 (Relax). The build: Relax ONNX front end (each ONNX node's result is bound to a variable
named after the node, which is how kernels map back to ONNX nodes), DecomposeOpsForInference, ConvertLayout
to NHWC/HWIO (channels innermost: what CPU vector units want), LegalizeOps, FoldConstant, FuseOps, FuseTIR,
then edgec's default CPU schedules (`tvm_schedules`: TVM's own default pipeline leaves every kernel
unscheduled, 36-40x slower than ONNX Runtime), then `tvm.compile` and `export_library` with the target's C
compiler (aarch64-linux-gnu-gcc for the boards). No tuning.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import helper as onnx_helper

from ..errors import BackendUnavailable, BuildError, ConfigError, EdgecError, brief
from ..fileio import signals_deferred, write_bytes_atomic
from ..model import Model, all_nodes, load_model, ort_session
from ..profile import LatencyStats, LayerRow, Profile, batch_size, with_shares
from ..target import Target
from ..device import tvm_runner
from ..device.tvm_runner import Session, cpu_name, num_threads, seeded_feeds
from .base import Artifact, Capabilities, Runner
from .tvm_schedules import schedule_module

_INSTALL_HINT = "Apache TVM is not installed: pip install 'edgec[tvm]'"
RUNTIME_FILE = "edgec_runtime.py"
# Desired layouts: channels innermost, weights HWIO, so conv kernels vectorize over output channels.
# Pooling and elementwise ops follow their input's layout (pools take no desired layout in 0.27).
# conv2d_transpose reaches Relax only where `_conv_transpose` leaves a ConvTranspose to TVM's converter: TOPI
# legalizes it in NCHW/IOHW only (in NHWC it stayed a raw Relax op and VM codegen refused it).
_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}
_VAR_PREFIX = re.compile(r"^e(\d+)_")
# `python benchmarks/tvm.py --int8` measures a fake-quant build against fp32 on the machine it runs on.
INT8_REFUSAL = (
    "--precision {precision} is not available on {target} (TVM): TVM 0.27's Relax imports a Q/DQ model as "
    "float fake-quant (every QuantizeLinear/DequantizeLinear becomes float arithmetic; Relax has no QNN "
    "lowering to int8 kernels), so an 'int8' build would be slower than fp32 and less accurate. "
    "Use --precision fp32 (the default)."
)


class TVMBackend:
    name = "tvm"
    capabilities = Capabilities(precisions=("fp32",))

    def qdq_placement(self, target: Target) -> None:
        return None  # Relax has no int8 lowering (INT8_REFUSAL)

    def wants_fp16_graph(self, target: Target) -> bool:
        return False

    def build_engine(self, out_dir: Path, manifest: dict[str, Any], device: str = "local") -> Path:
        raise ConfigError(f"'{out_dir}' is a TVM build: it is ready to run as it is (model.so + edgec_runtime.py); "
                          "edgec build is for TensorRT bundles.")

    # ---------------------------------------------------------------------------------------------- SDK
    def _tvm(self):
        try:
            with signals_deferred():  # Ctrl-C inside a native module's init would surface as an ImportError
                import tvm
                from tvm import relax  # noqa: F401 - the compiler half, not only the runtime
        except ImportError as e:
            raise BackendUnavailable(f"{_INSTALL_HINT} (import tvm: {brief(e)})") from e
        return tvm

    def versions(self) -> dict[str, str]:
        tvm = self._tvm()
        out = {"tvm": str(tvm.__version__)}
        try:
            import tvm_ffi

            out["tvm_ffi"] = str(getattr(tvm_ffi, "__version__", "unknown"))
        except ImportError:
            pass
        return out

    def precision_refusal(self, target: Target, precision: str) -> str | None:
        """Why `precision` is refused on `target`, for the pipeline's error message (None: no special reason)."""
        if precision in ("int8", "mixed", "int8-weights"):
            return INT8_REFUSAL.format(precision=precision, target=target.name)
        return None

    def can_run_here(self, target: Target) -> bool:
        return target.arch == platform.machine()

    def model_refusal(self, model: Model, target: Target) -> str | None:
        """The ops TVM cannot build (subgraphs of If/Loop/Scan included), or None.

        Supported: the Relax ONNX importer's own converter table, what it handles itself (If, Constant), and
        edgec's converters (`_CONVERTERS`, e.g. LSTM unrolled), so it follows the installed TVM. A node of an
        op edgec converts but whose attributes its converter does not implement (`_NODE_REFUSALS`, e.g. an
        LSTM with clip) is refused too, naming the node and what it lacks.
        """
        self._tvm()
        from tvm.relax.frontend.onnx import onnx_frontend as fe

        supported = set(fe._get_convert_map()) | _IMPORTER_HANDLES | set(_CONVERTERS)
        missing: dict[str, list[str]] = {}
        custom: set[str] = set()
        partial: list[str] = []
        for node, where in all_nodes(model.proto.graph):  # the importer looks converters up by op type alone
            if node.op_type not in supported:
                missing.setdefault(node.op_type, []).append(where)
                if node.domain not in ("", "ai.onnx"):
                    custom.add(f"{node.domain}.{node.op_type}")
            elif node.op_type in _NODE_REFUSALS and (why := _NODE_REFUSALS[node.op_type](node)):
                partial.append(f"{node.op_type} ({where}): {why}")
        if not missing and not partial:
            return None
        head = f"TVM {self.versions()['tvm']} cannot build this model for {target.name}: "
        if not missing:
            return (head + "; ".join(partial) + ". Compile with --target intel-cpu (OpenVINO runs these), or "
                    "re-export the model without these attributes.")
        listed = "; ".join(f"{op} ({nodes[0]}{f' and {len(nodes) - 1} more' if len(nodes) > 1 else ''})"
                           for op, nodes in sorted(missing.items()))
        standard = sorted(op for op in missing if not any(c.endswith(f".{op}") for c in custom))
        where_else = (f" intel-cpu (OpenVINO) runs {', '.join(standard)}: compile with --target intel-cpu, or "
                      "re-export the model without these ops (e.g. recurrent layers unrolled, NonMaxSuppression "
                      "moved to post-processing)." if standard else "")
        if custom:
            where_else += (f" {', '.join(sorted(custom))} belong to custom op domains, which no edgec target is "
                           "known to read: export with standard ONNX ops.")
        also = f" Also: {'; '.join(partial)}." if partial else ""
        return (head + f"its Relax ONNX importer has no converter for {len(missing)} op type(s): {listed}."
                f"{where_else}{also}")

    # -------------------------------------------------------------------------------------------- build
    def build(self, model: Model, target: Target, precision: str, out_dir: Path) -> Artifact:
        if precision != "fp32":
            raise ConfigError(self.precision_refusal(target, precision)
                              or f"--precision {precision} is not available with TVM; use fp32.")
        cc = self._compiler(target)  # before anything slow: a missing cross compiler fails in a second
        tvm = self._tvm()
        from tvm import relax

        refusal = self.model_refusal(model, target)  # the pipeline asked already; build() may be called alone
        if refusal:
            raise ConfigError(refusal)
        shapes = _static_shapes(model)
        target_json = tvm_target_json(target)
        try:
            tvm_target = tvm.target.Target(target_json)
        except Exception as e:  # noqa: BLE001 - LLVM rejects an unknown CPU or feature
            raise ConfigError(f"Target {target.name}: TVM/LLVM rejects {target_json}: {brief(e)}. "
                              f"Fix the [tvm] table of {target.path or 'the target file'}.") from e
        mod, names, map_note = _import(tvm, relax, model.proto, shapes)
        try:
            mod = tvm.transform.Sequential([
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.transform.ConvertLayout(_LAYOUTS),
                relax.transform.Normalize(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
            ])(mod)
            index = _var_nodes(relax, mod, names, _graph_output_nodes(model.proto))
            mod = relax.transform.FuseOps()(mod)
            fused_sites = _call_sites(relax, mod, index)
            mod = tvm.transform.Sequential([relax.transform.FuseTIR(),
                                            relax.transform.DeadCodeElimination()])(mod)
            layer_map = _layer_map(relax, mod, fused_sites) if names else {}
            with tvm_target:
                mod, kernels = schedule_module(mod, tvm_target)
            executable = tvm.compile(mod, target=tvm_target)
        except (ConfigError, BackendUnavailable):
            raise
        except Exception as e:  # noqa: BLE001 - wrap with context (convention 4)
            raise BuildError(f"TVM could not compile the model for {target.name}: {brief(e)}") from e
        _export(executable, out_dir / "model.so", cc)
        write_bytes_atomic(out_dir / RUNTIME_FILE, Path(tvm_runner.__file__).read_bytes())
        unscheduled = sorted(k for k, rule in kernels.items() if rule == "unscheduled")
        config = {
            "tvm_target": target_json, "cc": cc, "layout": "NHWC inside the model (transposed at its inputs and "
            "outputs)", "runtime": RUNTIME_FILE, "kernels": kernels, "unscheduled_kernels": unscheduled,
            "inputs": [s.to_json() for s in model.inputs], "outputs": [s.to_json() for s in model.outputs],
            "layer_map_note": map_note if not layer_map else
            "kernel call sites -> ONNX nodes whose results the kernel computes (from the Relax variables "
            "bound to each node's result); a kernel called from several places is listed as symbol#k",
        }
        return Artifact(self.name, precision, ["model.so", RUNTIME_FILE], config, layer_map)

    def _compiler(self, target: Target) -> str | None:
        """The C compiler export_library links model.so with; BackendUnavailable naming the package if missing."""
        cc = target.options.get("cc")
        host = target.arch == platform.machine()
        if cc is None and not host:
            raise ConfigError(f"Target {target.name} ({target.arch}) needs a cross compiler: set cc = "
                              f"\"{target.arch}-linux-gnu-gcc\" in the [tvm] table of {target.path or 'its file'}.")
        if cc is None:
            found = shutil.which("g++") or shutil.which("gcc")
            if not found:
                raise BackendUnavailable("TVM links model.so with the host C compiler, and there is none: "
                                         "apt-get install -y g++")
            return None
        if shutil.which(cc) is None:
            package = f"gcc-{cc[:-len('-gcc')]}" if cc.endswith("-gcc") else cc
            raise BackendUnavailable(f"Cross-compiling for {target.name} ({target.arch}) needs the C compiler "
                                     f"'{cc}', which is not on PATH: apt-get install -y {package}")
        return cc

    # ----------------------------------------------------------------------------------------- run/time
    def _session(self, out_dir: Path, manifest: dict[str, Any]):
        self._tvm()

        target = manifest["target"]
        if target.get("arch") != platform.machine():
            raise ConfigError(f"{out_dir} was built for {target.get('name')} ({target.get('arch')}); this machine is "
                              f"{platform.machine()}. Copy the folder to the board and run "
                              f"`python {RUNTIME_FILE} .` there.")
        spec = {"inputs": manifest["inputs"], "outputs": manifest["outputs"]}
        try:
            return Session(out_dir, spec)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from e
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"TVM could not load {out_dir / 'model.so'}: {brief(e)}") from e

    def runner(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        return self._session(out_dir, manifest).run

    def profile(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
        if device != "local":
            return self._profile_remote(out_dir, manifest, device, runs, warmup)

        session = self._session(out_dir, manifest)
        feeds = seeded_feeds(manifest["inputs"])
        samples = session.time(feeds, runs, warmup)
        kernels = session.time_kernels(feeds, max(5, min(runs, 30)), warmup=1)
        cfg = manifest["artifact"]["config"]
        return Profile(
            backend=self.name, device=f"CPU ({cpu_name()})", target=manifest["target"]["name"],
            precision=manifest["precision"], batch=batch_size(manifest), runs=runs, warmup=warmup,
            latency_ms=LatencyStats.from_samples(samples), layers=with_shares(_kernel_rows(manifest, kernels)),
            memory={"model_so_bytes": (out_dir / "model.so").stat().st_size},
            extra={"runtime": {"tvm": self.versions()["tvm"], "threads": num_threads(),
                               "tvm_target": cfg.get("tvm_target"),
                               "kernel_timing": "VM instrument around each kernel call (wall clock)"}},
        )

    def _profile_remote(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int,
                        warmup: int) -> Profile:
        """Upload model.so to a board over TVM RPC, check its outputs against ONNX Runtime here, time it there."""
        address = parse_device(device)  # ConfigError on a malformed address, before anything slow
        self._tvm()

        path = out_dir / "model.so"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: is '{out_dir}' a TVM build from edgec compile?")
        feeds = seeded_feeds(manifest["inputs"])
        reference = _onnx_runtime_outputs(out_dir / "model.onnx", feeds)
        result = remote_measure(address, path, manifest, feeds, runs, warmup, kernel_runs=max(3, min(runs, 10)))
        errors = [float(np.max(np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)))) if o.size else 0.0
                  for o, r in zip(result["outputs"], reference)]
        shapes_ok = len(result["outputs"]) == len(reference) and all(
            o.shape == r.shape for o, r in zip(result["outputs"], reference))
        max_abs = max(errors) if errors else 0.0
        scale = max((float(np.max(np.abs(r))) for r in reference if r.size), default=1.0)
        ok = bool(shapes_ok and max_abs <= 1e-3 * max(1.0, scale))
        info = result["board"]
        cfg = manifest["artifact"]["config"]
        about = [info["machine"]] if info.get("machine") else []
        about += [f"emulated {info['qemu_cpu']}"] if info.get("qemu_cpu") else []
        about += [f"board {info['address']}"] if info.get("address") and address.kind == "tracker" else []
        label = f"{address.display} ({', '.join(about)})" if about else address.display
        layers = with_shares(_kernel_rows(manifest, result["kernels"])) if result["kernels"] else []
        return Profile(
            backend=self.name, device=label, target=manifest["target"]["name"], precision=manifest["precision"],
            batch=batch_size(manifest), runs=runs, warmup=warmup, latency_ms=LatencyStats.from_samples(result["samples_ms"]),
            layers=layers, memory={"model_so_bytes": path.stat().st_size},
            extra={"accuracy": {"reference": "ONNX Runtime (CPU) on this host, same seeded inputs",
                                "max_abs_error": max_abs, "per_output_max_abs_error": errors, "ok": ok},
                   "runtime": {"tvm": info.get("tvm"), "board": info, "tvm_target": cfg.get("tvm_target"),
                               "rpc": {"connect_s": result["connect_s"], "upload_s": result["upload_s"]},
                               "latency_timing": result["latency_timing"],
                               "kernel_timing": result["kernel_timing"]}},
        )


# ------------------------------------------------------------------------------------------------ remote
_CONNECT_TIMEOUT_S = float(os.environ.get("EDGEC_RPC_CONNECT_TIMEOUT", "10"))
_SESSION_TIMEOUT_S = int(os.environ.get("EDGEC_RPC_SESSION_TIMEOUT", "600"))
_DEVICE_FORMS = "rpc://HOST:PORT or tracker://HOST:PORT/KEY"


@dataclass(frozen=True)
class DeviceAddress:
    """A parsed --device: kind 'rpc' (host, port) or 'tracker' (host, port, key)."""

    kind: str
    host: str
    port: int
    key: str | None = None

    @property
    def display(self) -> str:
        return f"{self.kind}://{self.host}:{self.port}" + (f"/{self.key}" if self.key else "")


def parse_device(device: str) -> DeviceAddress:
    """'rpc://HOST:PORT' or 'tracker://HOST:PORT/KEY'; ConfigError naming the accepted forms otherwise."""
    m = re.fullmatch(r"(rpc|tracker)://(\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(\d{1,5})(?:/([^/\s]+))?/?", device.strip())
    if not m or int(m.group(3)) > 65535 or (m.group(1) == "tracker") != bool(m.group(4)):
        raise ConfigError(f"--device '{device}' is not a device address edgec knows: use local, {_DEVICE_FORMS}.")
    return DeviceAddress(m.group(1), m.group(2).strip("[]"), int(m.group(3)), m.group(4))


def _with_timeout(what: str, seconds: float, fn: Any) -> Any:
    """fn() in a daemon thread; BackendUnavailable if it takes longer than `seconds` (the thread is abandoned)."""
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    thread = threading.Thread(target=target, name=f"edgec-rpc-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise BackendUnavailable(f"{what} did not answer within {seconds:.0f} s; is the board up and serving TVM "
                                 "RPC? (EDGEC_RPC_CONNECT_TIMEOUT sets the limit)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _reachable(address: DeviceAddress, timeout: float) -> None:
    import socket

    what = "tracker" if address.kind == "tracker" else "board"
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            pass
    except OSError as e:
        raise BackendUnavailable(f"Cannot reach the {what} at {address.host}:{address.port} ({brief(e, 120)}). "
                                 f"Start it (an emulated one: edgec board start --port {address.port}) "
                                 "or check the address.") from e


def connect(address: DeviceAddress, timeout: float | None = None) -> Any:
    """An RPC session with the board at `address`, in bounded time (BackendUnavailable naming the address)."""
    from tvm import rpc

    timeout = _CONNECT_TIMEOUT_S if timeout is None else timeout
    _reachable(address, timeout)
    if address.kind == "rpc":
        try:
            return _with_timeout(f"The board at {address.display}", timeout,
                                 lambda: rpc.connect(address.host, address.port, session_timeout=_SESSION_TIMEOUT_S))
        except EdgecError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BackendUnavailable(f"The board at {address.display} refused the RPC session: {brief(e, 200)}. "
                                     "Is that port a TVM RPC server?") from e
    try:
        tracker = _with_timeout(f"The tracker at {address.host}:{address.port}", timeout,
                                lambda: rpc.connect_tracker(address.host, address.port))
        summary = _with_timeout(f"The tracker at {address.host}:{address.port}", timeout, tracker.summary)
    except EdgecError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BackendUnavailable(f"{address.host}:{address.port} is not a TVM RPC tracker: {brief(e, 200)}") from e
    keys = sorted(k.split(":", 1)[-1] for k in (summary.get("queue_info") or {}))
    keys += sorted({str(s.get("key", "")).split(":", 1)[-1] for s in summary.get("server_info") or []} - set(keys))
    if address.key not in keys:
        raise BackendUnavailable(f"The tracker at {address.host}:{address.port} has no board with key "
                                 f"'{address.key}'; boards: {', '.join(k for k in keys if k) or 'none'}.")
    try:
        return _with_timeout(f"A board with key '{address.key}' from the tracker at {address.host}:{address.port}",
                             max(timeout, 60.0), lambda: tracker.request(address.key, priority=1,
                                                                          session_timeout=_SESSION_TIMEOUT_S,
                                                                          max_retry=3))
    except EdgecError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BackendUnavailable(f"The tracker at {address.host}:{address.port} could not give a board with key "
                                 f"'{address.key}': {brief(e, 200)}") from e


def _remote_json(remote: Any, name: str, *args: Any) -> Any:
    """Call the edgec board function `name` and decode its JSON; None if the server lacks it (a stock server)."""
    import json

    try:
        func = remote.get_function(name)
    except Exception:  # noqa: BLE001 - not an edgec board server
        return None
    return json.loads(func(*args))


def _remote_outputs(vm: Any, *index: int) -> list[np.ndarray]:
    """The outputs of the VM's last stateful call of main, flattened. Over RPC a tuple result is an opaque handle,
    so they are read one by one; not VirtualMachine.get_outputs, whose recursive closure keeps the VM (and the
    board's only RPC session) alive until the garbage collector runs."""
    arity = vm._get_output_arity("main", *index)
    if arity == -1:
        return [vm._get_output("main", *index).numpy()]
    return [a for i in range(arity) for a in _remote_outputs(vm, *index, i)]


def remote_measure(address: DeviceAddress, model_so: Path, manifest: dict[str, Any], feeds: dict[str, Any],
                   runs: int, warmup: int, kernel_runs: int = 5) -> dict[str, Any]:
    """Upload, load, run once (outputs), time on the board. Remote handles stay inside this function."""
    import time

    import tvm

    t0 = time.perf_counter()
    remote = connect(address)
    connect_s = time.perf_counter() - t0
    info = _remote_json(remote, "edgec.board_info") or {}
    stage = "uploading model.so"
    try:
        t0 = time.perf_counter()
        remote.upload(str(model_so), target="model.so")
        stage = "loading model.so"
        lib = remote.load_module("model.so")
        upload_s = time.perf_counter() - t0
        dev = remote.cpu(0)
        from tvm.runtime.vm import VirtualMachine

        stage = "running the model"
        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[s["name"]]), dev) for s in manifest["inputs"]]
        vm = VirtualMachine(lib, dev)
        vm.set_input("main", *args)
        vm.invoke_stateful("main")
        outputs = _remote_outputs(vm)
        stage = "timing the model"
        measured = _remote_json(remote, "edgec.measure", lib, runs, warmup, kernel_runs, *args) \
            if info else None
        if measured is not None:
            samples, kernels = measured["samples_ms"], measured["kernels"]
            latency_timing = "on the board: wall clock around each run of main (no RPC in the numbers)"
            kernel_timing = "on the board: VM instrument around each kernel call (wall clock)"
        else:  # a stock TVM RPC server: whole-model timing only
            vm.set_input("main", *args)
            for _ in range(warmup):
                vm.invoke_stateful("main")
            timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=runs)
            samples = [r * 1000.0 for r in timer("main").results]
            kernels = []
            latency_timing = "on the board: TVM time_evaluator, one run per sample"
            kernel_timing = ("none: the board runs a stock TVM RPC server; per-kernel rows need edgec's "
                             "edgec/device/board_server.py (edgec board start) or --device local on the board")
    except EdgecError:
        raise
    except Exception as e:  # noqa: BLE001 - find out whether the board crashed, then re-raise with context
        failure = _board_failure(address, manifest, stage, info, e)
        # The RPC handles must be gone before the interpreter is: one still alive at exit (held by this frame or
        # the traceback) made TVM call std::terminate, and the CLI's exit code became SIGABRT.
        remote = lib = vm = args = None  # noqa: F841
        e.__traceback__ = None
        raise failure from None
    return {"outputs": outputs, "samples_ms": samples, "kernels": kernels, "board": info,
            "connect_s": round(connect_s, 3), "upload_s": round(upload_s, 3),
            "latency_timing": latency_timing, "kernel_timing": kernel_timing}


def _board_failure(address: DeviceAddress, manifest: dict[str, Any], stage: str, info: dict[str, Any],
                   error: BaseException) -> EdgecError:
    """The error to raise when a remote step failed: names an illegal instruction when the session crashed so."""
    target = manifest.get("target", {})
    tvm_target = (manifest.get("artifact", {}).get("config", {}) or {}).get("tvm_target") or {}
    crash = None
    crashes_before = info.get("crashes")
    if crashes_before is not None:  # an edgec board server: ask it why the session ended
        try:
            remote = connect(address, timeout=min(_CONNECT_TIMEOUT_S, 10.0))
            now = _remote_json(remote, "edgec.board_info") or {}
            if now.get("crashes", 0) > crashes_before:
                crash = _remote_json(remote, "edgec.last_crash")
        except Exception:  # noqa: BLE001 - the board is gone as well: report the first error
            crash = None
    built_for = f"mcpu={tvm_target.get('mcpu')}, mattr={','.join(tvm_target.get('mattr') or []) or 'none'}"
    if crash and crash.get("signal") == "SIGILL":
        return BuildError(
            f"model.so crashed the board at {address.display} with SIGILL (illegal instruction) while "
            f"{stage}: it was built for {target.get('name')} ({built_for}) and the board's CPU"
            f"{' (' + info['qemu_cpu'] + ')' if info.get('qemu_cpu') else ''} lacks an instruction set extension "
            "the build uses (ISA mismatch). Compile for this board's target (e.g. --target rpi4 for a "
            "Cortex-A72), or drop the extension from the target's mattr. The board keeps serving.")
    if crash:
        return BuildError(f"model.so crashed the board at {address.display} ({crash.get('signal')}) while {stage}"
                          f" (built for {target.get('name')}, {built_for}): {brief(error, 200)}")
    return BuildError(f"The board at {address.display} failed while {stage} (model built for "
                      f"{target.get('name')}, {built_for}): {brief(error, 300)}")


def _onnx_runtime_outputs(path: Path, feeds: dict[str, Any]) -> list[Any]:
    """The fp32 reference for the board's outputs: the build's model.onnx in ONNX Runtime on this host."""
    session = ort_session(load_model(path).proto)
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def _kernel_rows(manifest: dict[str, Any], kernels: list[dict[str, Any]]) -> list[LayerRow]:
    layer_map = manifest["artifact"].get("layer_map") or {}
    rules = manifest["artifact"]["config"].get("kernels", {})
    return [LayerRow(layer=k["kernel"], op=_op_name(k["symbol"]), exec=f"tvm:{rules.get(k['symbol'], '?')}",
                     precision=manifest["precision"], time_ms=k["time_ms"], share=0.0,
                     onnx_nodes=tuple(layer_map.get(k["kernel"], ())))
            for k in kernels]


# ------------------------------------------------------------------------------------------------ target
def tvm_target_json(target: Target) -> dict[str, Any]:
    """The dict for tvm.target.Target from the target file's [tvm] table (0.27 rejects target strings)."""
    opts = target.options
    missing = [k for k in ("mtriple", "mcpu") if k not in opts]
    if missing:
        raise ConfigError(f"Target {target.name}: the [tvm] table of {target.path or 'its file'} lacks "
                          f"{', '.join(missing)} (e.g. mtriple = \"aarch64-linux-gnu\", mcpu = \"cortex-a72\").")
    out: dict[str, Any] = {"kind": "llvm", "mtriple": str(opts["mtriple"]), "mcpu": str(opts["mcpu"])}
    if opts.get("mattr"):
        out["mattr"] = [str(a) for a in opts["mattr"]]
    if opts.get("cores"):
        out["num-cores"] = int(opts["cores"])
    return out


def _static_shapes(model: Model) -> dict[str, list[int]]:
    dynamic = [s for s in model.inputs if not s.is_static]
    if dynamic:
        s = dynamic[0]
        example = "x".join(str(d) if isinstance(d, int) else "1" for d in s.shape)
        raise ConfigError(f"TVM builds need static input shapes; input '{s.name}' has shape {list(s.shape)}. "
                          f"Pass --input-shape {s.name}={example}.")
    return {s.name: [int(d) for d in s.shape] for s in model.inputs}


# ------------------------------------------------------------------------------------------------ import
# Ops the Relax ONNX importer handles itself, outside its converter table (onnx_frontend._construct_nodes).
_IMPORTER_HANDLES = frozenset({"If", "Constant"})


def _import(tvm: Any, relax: Any, proto: Any, shapes: dict[str, list[int]]) -> tuple[Any, dict[str, str], str]:
    """Relax module, {variable prefix: ONNX node name}, and a note on the layer map.

    Each ONNX node's result is bound to a variable `e<k>_<node name>`; those names survive the passes up to
    FuseOps, which is how kernels map back to ONNX nodes. Falls back to the plain importer (no layer map)
    if the naming importer fails on a model.
    """
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod, names = _import_named(relax, proto, shapes)
        return mod, names, ""
    except EdgecError:
        raise  # an edgec converter's own error (it names the node); the plain importer would not do better
    except Exception as first:  # noqa: BLE001 - retry without naming, then report the real error
        try:
            mod = from_onnx(proto, shape_dict=shapes)
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"TVM's Relax ONNX importer could not read the model: {brief(e)} (with edgec's "
                             f"converters: {brief(first, 300)})") from first
        return mod, {}, f"no layer map: the naming importer failed ({brief(first, 120)})"


def _import_named(relax: Any, proto: Any, shapes: dict[str, list[int]]) -> tuple[Any, dict[str, str]]:
    import tvm
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    names: dict[str, str] = {}

    class NamingImporter(fe.ONNXGraphImporter):
        def _check_for_unsupported_ops(self, graph):  # edgec's converters count as supported
            known = set(fe._get_convert_map()) | _IMPORTER_HANDLES | set(_CONVERTERS)
            missing = {n.op_type for n in graph.node} - known
            if missing:
                raise tvm.error.OpNotImplemented(f"No converter for {', '.join(sorted(missing))}")

        def _convert_operator(self, op_name, inputs, attrs, opset):
            node = (attrs.get("tvm_custom") or {}).get("name") or ""
            key = f"e{len(names)}"
            hint = f"{key}_{re.sub(r'[^0-9A-Za-z_]', '_', node)[:48]}"

            def emit(expr):  # intermediate results of edgec's converters carry the node's name too
                if not node:
                    return expr
                names[key] = node
                return self.bb.emit(expr, name_hint=hint)

            convert = _CONVERTERS.get(op_name)
            sym = convert(relax, self.bb, emit, inputs, attrs, opset) if convert else None
            if sym is None:
                sym = super()._convert_operator(op_name, inputs, attrs, opset)
            if node and isinstance(sym, relax.Call) and not all(isinstance(a, tvm.ir.Constant) for a in sym.args):
                names[key] = node
                sym = self.bb.emit(sym, name_hint=hint)
            return sym

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = NamingImporter(shapes, "float32", keep_params_in_input=False, sanitize=True)
    return importer.from_onnx(proto.graph, opset), names


def _clip(relax: Any, bb: Any, emit: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
    """Clip with constant bounds (ReLU6) as Relax maximum/minimum, or None to use TVM's converter.

    TVM's converter emits Clip as two prebuilt TIR kernels, which ConvertLayout cannot see through: every
    ReLU6 of a MobileNet got a transpose to NCHW and back around it.
    """
    import numpy as np
    import tvm

    x = inputs[0]
    dtype = getattr(getattr(x, "ty", None), "dtype", None)
    if dtype is None or not str(dtype).startswith("float"):
        return None
    if opset < 11:
        bounds = [attrs.get("min"), attrs.get("max")]
    else:
        bounds = []
        for b in (inputs[1] if len(inputs) > 1 else None, inputs[2] if len(inputs) > 2 else None):
            if b is None:
                bounds.append(None)
            elif isinstance(b, tvm.ir.Constant) and b.value.numpy().size == 1:
                bounds.append(float(b.value.numpy().reshape(())))
            else:
                return None  # bounds computed at run time: leave it to TVM's converter
    if any(v is not None and np.isnan(v) for v in bounds):
        return None
    out = x
    if bounds[0] is not None:
        out = relax.op.maximum(out, relax.const(bounds[0], str(dtype)))
    if bounds[1] is not None:
        out = relax.op.minimum(out, relax.const(bounds[1], str(dtype)))
    return out


def _variadic(op_name: str) -> Any:
    """Max/Min/Sum/Mean of several tensors folded pairwise (maximum, minimum, add), or None for TVM's converter.

    TVM's converter broadcasts the inputs, stacks them on a new axis and reduces it; ConvertLayout's layout
    rule for `stack` names the new axis 'S', which the reduction's rule then cannot find ("Invalid SLayout:
    can't find S in source layout ABC"). That failed Google's magika file classifier (a LayerNorm's
    max(0, var)) whenever the model also had a conv. The pairwise form is the converter's own
    (`_impl_dynamic`, used for inputs of unknown shape): the same function, with broadcasting ops only.
    """
    def convert(relax: Any, bb: Any, emit: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
        import tvm
        from tvm.relax.frontend.onnx import onnx_frontend as fe

        args = [x for x in inputs if x is not None]
        if len(args) < 2 or all(isinstance(x, tvm.ir.Constant) for x in args):
            return None  # one input (identity) or constants (folded by TVM's converter)
        return getattr(fe, op_name)._impl_dynamic(bb, args)

    return convert


def _conv_transpose(relax: Any, bb: Any, emit: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
    """2-D ConvTranspose as a conv2d (which ConvertLayout turns NHWC and edgec's conv rule schedules), or None.

    TVM's converter emits relax.nn.conv2d_transpose, which TOPI legalizes only in NCHW and which no CPU rule
    schedules. Kernel == stride with no padding (DBNet/U-Net upsampling): a 1x1 conv to C_out*s*s channels,
    then depth-to-space. Otherwise: zeros inserted between input pixels (stride), then a stride-1 conv with
    the flipped, transposed kernel. `output_shape` and SAME auto_pad go to TVM's converter.
    """
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    xs, ws = _static_shape(x), _static_shape(w)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if xs is None or ws is None or len(xs) != 4 or len(ws) != 4 or "output_shape" in attrs \
            or auto_pad not in ("NOTSET", "VALID"):
        return None
    k = ws[2:]
    s = list(attrs.get("strides", [1, 1]))
    d = list(attrs.get("dilations", [1, 1]))
    out_pad = list(attrs.get("output_padding", [0, 0]))
    pads = [0, 0, 0, 0] if auto_pad == "VALID" else list(attrs.get("pads", [0, 0, 0, 0]))
    groups = int(attrs.get("group", 1))
    if k == s and pads == [0, 0, 0, 0] and d == [1, 1] and out_pad == [0, 0] and groups == 1:
        y = _deconv_as_depth_to_space(relax, emit, x, w, bias, xs, ws)
    else:
        y = _deconv_as_conv(relax, emit, x, w, xs, ws, k, s, d, pads, out_pad, groups)
        if y is not None and bias is not None:
            y = relax.op.add(y, relax.op.reshape(bias, [1, -1, 1, 1]))
    return y


def _conv1d(relax: Any, bb: Any, emit: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
    """1-D Conv as a conv2d over [N, C, 1, L] (which ConvertLayout turns NHWC and edgec's conv rule schedules;
    conv1d has no CPU schedule: an STFT done as a 512-wide conv1d took 6 ms vs ONNX Runtime's 0.2), or None
    for TVM's converter (other ranks, SAME auto_pad)."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    xs, ws = _static_shape(x), _static_shape(w)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if xs is None or ws is None or len(xs) != 3 or len(ws) != 3 or auto_pad not in ("NOTSET", "VALID"):
        return None
    pads = [0, 0] if auto_pad == "VALID" else list(attrs.get("pads", [0, 0]))
    groups = int(attrs.get("group", 1))
    w, bias, c_out = _padded_out_channels(relax, w, bias, ws[0], groups)
    y = relax.op.nn.conv2d(relax.op.reshape(x, [xs[0], xs[1], 1, xs[2]]),
                           relax.op.reshape(w, [_static_shape(w)[0], ws[1], 1, ws[2]]),
                           strides=[1, int(attrs.get("strides", [1])[0])], padding=[0, pads[0], 0, pads[1]],
                           dilation=[1, int(attrs.get("dilations", [1])[0])], groups=groups)
    if bias is not None:
        y = relax.op.add(y, relax.op.reshape(bias, [1, -1, 1, 1]))
    y = emit(y)
    out = _static_shape(y)
    y = relax.op.reshape(y, [out[0], out[1], out[3]])
    return y if out[1] == c_out else relax.op.strided_slice(emit(y), axes=[1], begin=[0], end=[c_out])


def _padded_out_channels(relax: Any, w: Any, bias: Any, c_out: int, groups: int) -> tuple[Any, Any, int]:
    """A constant conv weight [O, ...] (and bias) zero-padded to whole vectors of output channels (_vector_padded:
    an STFT's 257 bins: the conv rule could not tile it and the kernel ran unblocked), so the conv is tiled and
    its extra channels cut off after. (w, bias, O) unchanged otherwise."""
    import tvm

    if groups != 1 or not isinstance(w, tvm.ir.Constant) or (bias is not None and not isinstance(bias, tvm.ir.Constant)):
        return w, bias, c_out
    padded = _vector_padded(w.value.numpy(), 0)
    if padded is None:
        return w, bias, c_out
    if bias is not None:
        bias = relax.const(_vector_padded(bias.value.numpy().reshape(-1), 0))
    return relax.const(padded), bias, c_out


def _vector_padded(value: Any, axis: int) -> Any:
    """`value` (numpy) zero-padded along `axis` to a multiple of 16 when that extent has no vector-sized divisor
    (not a multiple of 8) and is wide enough (>= 64) to pay for cutting the result back; None otherwise."""
    import numpy as np

    n = value.shape[axis]
    if n % 8 == 0 or n < 64:
        return None
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, -(-n // 16) * 16 - n)
    return np.pad(value, widths)


def _deconv_as_depth_to_space(relax: Any, emit: Any, x: Any, w: Any, bias: Any, xs: list[int],
                              ws: list[int]) -> Any:
    """ConvTranspose with kernel == stride, no padding: out[n, o, h*s+i, w*s+j] = sum_c x[n, c, h, w] W[c, o, i, j]."""
    n, _, h, wd = xs
    c_in, c_out, sh, sw = ws
    w1 = relax.op.reshape(relax.op.permute_dims(w, [1, 2, 3, 0]), [c_out * sh * sw, c_in, 1, 1])
    y = relax.op.nn.conv2d(x, w1)
    if bias is not None:  # added before the shuffle: it fuses into the conv kernel's epilogue
        y = relax.op.add(y, relax.op.reshape(relax.op.repeat(bias, sh * sw, axis=0), [1, c_out * sh * sw, 1, 1]))
    y = emit(y)
    y = relax.op.permute_dims(relax.op.reshape(y, [n, c_out, sh, sw, h, wd]), [0, 1, 4, 2, 5, 3])
    return relax.op.reshape(emit(y), [n, c_out, h * sh, wd * sw])


def _deconv_as_conv(relax: Any, emit: Any, x: Any, w: Any, xs: list[int], ws: list[int], k: list[int],
                    s: list[int], d: list[int], pads: list[int], out_pad: list[int], groups: int) -> Any:
    """ConvTranspose = zeros inserted between input pixels, padded by d*(k-1)-pad, conv with the flipped kernel."""
    n, c, h, wd = xs
    c_in, c_out_g, kh, kw = ws
    before = [d[i] * (k[i] - 1) - pads[i] for i in range(2)]
    after = [d[i] * (k[i] - 1) - pads[i + 2] + out_pad[i] for i in range(2)]
    if min(before + after) < 0:
        return None  # padding beyond the kernel's reach: leave it to TVM's converter
    if s != [1, 1]:  # zero insertion: [N,C,H,1,W,1] padded to [N,C,H,s,W,s]; the trailing s-1 zeros are cut
        y = relax.op.reshape(x, [n, c, h, 1, wd, 1])
        y = relax.op.nn.pad(y, [0, 0, 0, 0, 0, 0, 0, s[0] - 1, 0, 0, 0, s[1] - 1])
        y = relax.op.reshape(y, [n, c, h * s[0], wd * s[1]])
        x = emit(relax.op.strided_slice(y, axes=[2, 3], begin=[0, 0],
                                        end=[(h - 1) * s[0] + 1, (wd - 1) * s[1] + 1]))
    # W [C_in, C_out/g, kh, kw] -> [C_out, C_in/g, kh, kw], spatially flipped.
    w1 = relax.op.reshape(w, [groups, c_in // groups, c_out_g, kh, kw])
    w1 = relax.op.reshape(relax.op.permute_dims(w1, [0, 2, 1, 3, 4]), [groups * c_out_g, c_in // groups, kh, kw])
    w1 = relax.op.flip(relax.op.flip(w1, axis=2), axis=3)
    return relax.op.nn.conv2d(x, w1, padding=[before[0], before[1], after[0], after[1]], dilation=d, groups=groups)


def _matmul(relax: Any, bb: Any, emit: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
    """MatMul by a constant [K, N] whose N has no vector-sized divisor: N zero-padded to a multiple of 16, the
    result cut back to N. Or None for TVM's converter.

    The reduction schedule vectorizes N; with N = 6625 (PP-OCRv4 rec's CTC head) it could not, and that one
    scalar matmul took 22 of the model's 38 ms. The padding costs one copy of the output (a slice kernel).
    """
    import tvm

    w = inputs[1]
    shape = _static_shape(w)
    if not isinstance(w, tvm.ir.Constant) or shape is None or len(shape) != 2 or not str(w.ty.dtype).startswith("float"):
        return None
    n = shape[1]
    padded = _vector_padded(w.value.numpy(), 1)
    if padded is None or _static_shape(inputs[0]) is None:
        return None
    y = emit(relax.op.matmul(inputs[0], relax.const(padded)))
    rank = len(_static_shape(inputs[0]))
    return relax.op.strided_slice(y, axes=[rank - 1], begin=[0], end=[n])


def _gemm(relax: Any, bb: Any, emit: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
    """Gemm by a constant weight whose output width has no vector-sized divisor, padded as _matmul pads it (the
    1024 -> 8210 classifier after ddddocr's LSTM: 135 ms unpadded). Plain Gemm only (alpha = beta = 1, A not
    transposed, a constant [N] bias or none); otherwise None for TVM's converter."""
    import numpy as np
    import tvm

    a, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
    shape = _static_shape(w)
    if (not plain or not isinstance(w, tvm.ir.Constant) or shape is None or len(shape) != 2
            or (bias is not None and not isinstance(bias, tvm.ir.Constant))):
        return None
    value = w.value.numpy().T if attrs.get("transB", 0) else w.value.numpy()
    n = value.shape[1]
    padded = _vector_padded(value, 1)
    if padded is None or not str(value.dtype).startswith("float") or _static_shape(a) is None:
        return None
    if bias is not None and bias.value.numpy().size not in (1, n):
        return None
    y = emit(relax.op.matmul(a, relax.const(padded)))
    if bias is not None:
        full = np.broadcast_to(bias.value.numpy().reshape(-1), (n,)).astype(value.dtype)
        y = emit(relax.op.add(y, relax.const(_vector_padded(full, 0))))
    return relax.op.strided_slice(y, axes=[1], begin=[0], end=[n])


def _squeeze(relax: Any, bb: Any, emit: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
    """Squeeze with negative axes made non-negative (static rank, constant axes), or None for TVM's converter.

    ConvertLayout's rule for a squeeze with axis -1 after a conv1d (silero VAD's encoder -> LSTM) crashed
    the build with std::bad_alloc; the same squeeze with axis 2 converts.
    """
    import tvm

    x = inputs[0]
    shape = _static_shape(x)
    if opset < 13:
        axes = attrs.get("axes")
    else:
        a = inputs[1] if len(inputs) > 1 else None
        axes = [int(v) for v in a.value.numpy().reshape(-1)] if isinstance(a, tvm.ir.Constant) else None
    if shape is None or not axes or all(int(v) >= 0 for v in axes):
        return None
    return relax.op.squeeze(x, axis=sorted(int(v) % len(shape) for v in axes))


def _static_shape(x: Any) -> list[int] | None:
    shape = getattr(getattr(x, "ty", None), "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):  # a symbolic dimension
        return None


# ------------------------------------------------------------------------------------------------ LSTM
_LSTM_ACTIVATIONS = ("sigmoid", "tanh", "tanh")


def lstm_refusal(node: Any) -> str | None:
    """Why edgec's LSTM converter cannot build `node` (an ONNX LSTM NodeProto), or None when it can.

    The converter implements ONNX LSTM with the default activations (Sigmoid, Tanh, Tanh), optional B,
    initial_h, initial_c and peepholes P, in every direction. It refuses what it does not
    implement: clip, other activations, input_forget, sequence_lens (per-sequence lengths) and layout=1.
    """
    attrs = {a.name: onnx_helper.get_attribute_value(a) for a in node.attribute}
    reasons = []
    if "clip" in attrs:
        reasons.append(f"clip={attrs['clip']}")
    if int(attrs.get("input_forget", 0)):
        reasons.append("input_forget=1")
    if attrs.get("activation_alpha") or attrs.get("activation_beta"):
        reasons.append("activation_alpha/activation_beta")
    acts = [a.decode().lower() if isinstance(a, bytes) else str(a).lower() for a in attrs.get("activations", [])]
    if acts and any(acts[i] != _LSTM_ACTIVATIONS[i % 3] for i in range(len(acts))):
        reasons.append(f"activations={acts}")
    if len(node.input) > 4 and node.input[4]:
        reasons.append(f"sequence_lens ('{node.input[4]}')")
    if int(attrs.get("layout", 0)):
        reasons.append("layout=1 (batch first; ONNX Runtime, edgec's accuracy reference, cannot run it either)")
    if not reasons:
        return None
    return (f"edgec's LSTM converter does not implement {', '.join(reasons)} (it unrolls LSTMs with the "
            "default Sigmoid/Tanh/Tanh activations, no clip, no input_forget, every sequence of full length, layout 0)")


def _lstm(relax: Any, bb: Any, emit: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
    """ONNX LSTM unrolled over its static sequence length: (Y, Y_h, Y_c) as a relax.Tuple.

    X·Wᵀ + Wb + Rb for every step and direction is one matmul; then per step and direction gates =
    that row + H·Rᵀ, split in ONNX's order i, o, f, c; c = f*c + i*g; h = o*tanh(c) (peepholes added to
    i, f and o when P is given). Y is [seq, num_directions, batch, hidden] (layout 0).
    What `lstm_refusal` refuses is refused before the build; a dynamic shape here raises BuildError.
    """
    x, w, r = inputs[0], inputs[1], inputs[2]
    opt = [inputs[i] if len(inputs) > i else None for i in range(3, 8)]
    b, _, h0, c0, p = opt
    hidden = int(attrs["hidden_size"])
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    name = (attrs.get("tvm_custom") or {}).get("name") or "LSTM"
    xs, ws = _static_shape(x), _static_shape(w)
    if xs is None or ws is None or len(xs) != 3:
        raise BuildError(f"LSTM node '{name}': its input X has no static shape ({xs}); pass --input-shape for "
                         "the model's inputs so the sequence length is known, or compile for --target intel-cpu.")
    steps, batch, _ = xs
    dirs = ws[0]
    gates = 4 * hidden
    # One matmul for every step and direction: [seq*batch, input] @ [input, dirs*4H] (+ Wb + Rb).
    xw = relax.op.matmul(relax.op.reshape(x, [steps * batch, xs[2]]),
                         relax.op.permute_dims(relax.op.reshape(w, [dirs * gates, xs[2]]), [1, 0]))
    if b is not None:
        bias = relax.op.reshape(b, [dirs, 2, gates])
        bias = relax.op.add(relax.op.strided_slice(bias, axes=[1], begin=[0], end=[1]),
                            relax.op.strided_slice(bias, axes=[1], begin=[1], end=[2]))
        xw = relax.op.add(xw, relax.op.reshape(bias, [dirs * gates]))
    xw = _bind(relax, bb, emit, relax.op.reshape(_bind(relax, bb, emit, xw), [steps, batch, dirs * gates]))
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        state = [None if s is None else _bind(relax, bb, emit, _pick(relax, s, d, [batch, hidden]))
                 for s in (h0, c0)]
        weights = (_bind(relax, bb, emit, relax.op.permute_dims(_pick(relax, r, d, [gates, hidden]), [1, 0])),
                   None if p is None else _bind(relax, bb, emit, _pick(relax, p, d, [3, 1, hidden])))
        y, h, c = _lstm_direction(relax, bb, emit, xw, d, weights, state, (steps, batch, hidden), reverse)
        ys.append(y)
        hs.append(relax.op.reshape(h, [1, batch, hidden]))
        cs.append(relax.op.reshape(c, [1, batch, hidden]))
    y = relax.op.concat(ys, axis=1) if dirs > 1 else ys[0]   # [seq, dirs, batch, hidden]
    y_h = relax.op.concat(hs, axis=0) if dirs > 1 else hs[0]  # [dirs, batch, hidden]
    y_c = relax.op.concat(cs, axis=0) if dirs > 1 else cs[0]
    return relax.Tuple([_bind(relax, bb, emit, v) for v in (y, y_h, y_c)])


def _lstm_direction(relax: Any, bb: Any, emit: Any, xw: Any, d: int, weights: tuple[Any, Any],
                    state: list[Any], dims: tuple[int, int, int], reverse: bool) -> tuple[Any, Any, Any]:
    """One direction of an LSTM, step by step: (Y [seq, 1, batch, hidden] in time order, last h, last c).

    `xw` [seq, batch, dirs*4H] holds X·Wᵀ + biases; `weights` = (Rᵀ [H, 4H], P [3, 1, H] or None);
    `state` = (h0, c0), None meaning zeros (the first step then skips H·Rᵀ and f*c).
    """
    steps, batch, hidden = dims
    r_t, p = weights
    h, c = state
    gates, width = 4 * hidden, _static_shape(xw)[-1]
    outs: list[Any] = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        g = relax.op.reshape(relax.op.strided_slice(xw, axes=[0], begin=[t], end=[t + 1]), [batch, width])
        if width != gates:  # bidirectional: this direction's half
            g = relax.op.strided_slice(g, axes=[1], begin=[d * gates], end=[(d + 1) * gates])
        if h is not None:
            g = relax.op.add(g, relax.op.matmul(h, r_t))
        g = _bind(relax, bb, emit, g)
        i, o, f, cell = (relax.op.strided_slice(g, axes=[1], begin=[k * hidden], end=[(k + 1) * hidden])
                         for k in range(4))
        if p is not None and c is not None:
            i = relax.op.add(i, relax.op.multiply(_peephole(relax, p, 0, hidden), c))
            f = relax.op.add(f, relax.op.multiply(_peephole(relax, p, 2, hidden), c))
        new_c = relax.op.multiply(relax.op.sigmoid(i), relax.op.tanh(cell))
        if c is not None:
            new_c = relax.op.add(relax.op.multiply(relax.op.sigmoid(f), c), new_c)
        c = _bind(relax, bb, emit, new_c)
        if p is not None:
            o = relax.op.add(o, relax.op.multiply(_peephole(relax, p, 1, hidden), c))
        h = _bind(relax, bb, emit, relax.op.multiply(relax.op.sigmoid(o), relax.op.tanh(c)))
        outs[t] = relax.op.reshape(h, [1, 1, batch, hidden])
    return _bind(relax, bb, emit, relax.op.concat(outs, axis=0)), h, c


def _peephole(relax: Any, p: Any, k: int, hidden: int) -> Any:
    """Row k of the peepholes [3, 1, H] (ONNX order i, o, f) as [1, H]."""
    return relax.op.reshape(relax.op.strided_slice(p, axes=[0], begin=[k], end=[k + 1]), [1, hidden])


def _pick(relax: Any, t: Any, d: int, shape: list[int]) -> Any:
    """Direction d of a [num_directions, ...] tensor, reshaped to `shape`."""
    return relax.op.reshape(relax.op.strided_slice(t, axes=[0], begin=[d], end=[d + 1]), shape)


def _bind(relax: Any, bb: Any, emit: Any, expr: Any) -> Any:
    """`expr` bound to a variable (named after the ONNX node when it has a name): each value is computed once."""
    out = emit(expr)
    return out if isinstance(out, relax.Var) else bb.emit(out)


_CONVERTERS = {"Clip": _clip, "Conv": _conv1d, "ConvTranspose": _conv_transpose, "MatMul": _matmul, "Gemm": _gemm, "LSTM": _lstm,
               "Squeeze": _squeeze,
               **{op: _variadic(op) for op in ("Max", "Min", "Sum", "Mean")}}
# Ops edgec converts, with the nodes whose attributes their converter does not implement: node -> reason or None.
_NODE_REFUSALS = {"LSTM": lstm_refusal}


def _var_nodes(relax: Any, mod: Any, names: dict[str, str], graph_outputs: list[str]) -> dict[str, Any]:
    """Before FuseOps: {variable name: ONNX nodes} and {(kernel, argument names): variable name} of main."""
    call_tir = _op("relax.call_tir")
    var_nodes: dict[str, list[str]] = {}
    by_call: dict[tuple, str] = {}
    for binding in _bindings(mod["main"]):
        m = _VAR_PREFIX.match(binding.var.name)
        if m and f"e{m.group(1)}" in names:
            var_nodes[binding.var.name] = [names[f"e{m.group(1)}"]]
        value = binding.value
        if isinstance(value, relax.Call) and value.op.same_as(call_tir):
            by_call[_call_key(relax, value, {})] = binding.var.name
    # The graph outputs lose their names to main's output variables: map those to the producing nodes.
    body = mod["main"].body.body
    outs = list(body.fields) if isinstance(body, relax.Tuple) else [body]
    for var, node in zip(outs, graph_outputs):
        if isinstance(var, relax.Var) and node:
            var_nodes.setdefault(var.name, [node])
    return {"vars": var_nodes, "calls": by_call}


def _call_key(relax: Any, call: Any, env: dict[str, str]) -> tuple:
    """(kernel name, argument names) of a call_tir, argument names translated through `env`; constants '#c'."""
    args = call.args[1]
    args = list(args.fields) if isinstance(args, relax.Tuple) else [args]
    sig = tuple(env.get(a.name, a.name) if isinstance(a, relax.Var) else "#c" for a in args)
    return (call.args[0].name_hint, sig)


def _call_sites(relax: Any, mod: Any, index: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """After FuseOps: each kernel call in main, in order, with the ONNX nodes whose variables it computes.

    FuseOps shares one fused function between identical groups (ResNet's repeated blocks), so the names
    inside it belong to one of them only. Each call is therefore replayed: the fused function's kernel calls,
    with its parameters bound to this call's arguments, are matched (kernel, argument names) against main
    before fusion, which recovers the original variable, hence the ONNX node, of every step.
    """
    call_tir = _op("relax.call_tir")
    var_nodes, by_call = index["vars"], index["calls"]
    rename: dict[str, str] = {}  # main variable after fusion -> the variable it was before fusion
    sites = []
    for binding in _bindings(mod["main"]):
        value = binding.value
        if not isinstance(value, relax.Call):
            continue
        originals: list[str] = []
        if value.op.same_as(call_tir):
            original = by_call.get(_call_key(relax, value, rename))
            originals.append(original or binding.var.name)
        elif isinstance(value.op, relax.GlobalVar) and isinstance(mod[value.op], relax.Function):
            func = mod[value.op]
            env = {p.name: (rename.get(a.name, a.name) if isinstance(a, relax.Var) else "#c")
                   for p, a in zip(func.params, value.args)}
            last = None
            for inner in _bindings(func):
                if isinstance(inner.value, relax.Call) and inner.value.op.same_as(call_tir):
                    original = by_call.get(_call_key(relax, inner.value, env))
                    env[inner.var.name] = last = original or inner.var.name
                    originals.append(last)
            if last is None:
                continue
        else:
            continue
        rename[binding.var.name] = originals[-1]
        nodes: list[str] = []
        for v in originals:
            for node in var_nodes.get(v, []):
                if node not in nodes:
                    nodes.append(node)
        sites.append((binding.var.name, nodes))
    return sites


def _layer_map(relax: Any, mod: Any, fused_sites: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """After FuseTIR: kernel call site (symbol, or symbol#k when called k+1 times) -> ONNX nodes."""
    call_tir = _op("relax.call_tir")
    calls = [(b.var.name, b.value.args[0].name_hint) for b in _bindings(mod["main"])
             if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir)]
    if len(calls) == len(fused_sites):
        nodes_per_call = [nodes for _, nodes in fused_sites]
    else:  # align by variable name where the counts differ
        by_var = dict(fused_sites)
        nodes_per_call = [by_var.get(var, []) for var, _ in calls]
    totals: dict[str, int] = {}
    for _, symbol in calls:
        totals[symbol] = totals.get(symbol, 0) + 1
    seen: dict[str, int] = {}
    out: dict[str, list[str]] = {}
    for (_, symbol), nodes in zip(calls, nodes_per_call):
        k = seen.get(symbol, 0)
        seen[symbol] = k + 1
        out[symbol if totals[symbol] == 1 else f"{symbol}#{k}"] = list(nodes)
    return out


def _graph_output_nodes(proto: Any) -> list[str]:
    producer = {out: (n.name or n.output[0]) for n in proto.graph.node for out in n.output}
    return [producer.get(o.name, "") for o in proto.graph.output]


def _bindings(func: Any) -> list[Any]:
    body = func.body
    return [b for block in getattr(body, "blocks", []) for b in block.bindings]


def _op(name: str) -> Any:
    import tvm

    return tvm.ir.Op.get(name)


def _op_name(symbol: str) -> str:
    """'fused_conv2d_nhwc_add_relu3' -> 'conv2d_nhwc+add+relu' (a readable op label for the profile)."""
    base = re.sub(r"\d+$", "", symbol)
    base = base[len("fused_"):] if base.startswith("fused_") else base
    return base


# ------------------------------------------------------------------------------------------------ export
def _export(executable: Any, path: Path, cc: str | None) -> None:
    """export_library into a temp file beside `path`, fsync, rename: never a half-written model.so."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".so")
    os.close(fd)
    try:
        if cc:
            executable.export_library(tmp, cc=cc)
        else:
            executable.export_library(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001
        Path(tmp).unlink(missing_ok=True)
        raise BuildError(f"Linking {path.name} with {cc or 'the host compiler'} failed: {brief(e)}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
