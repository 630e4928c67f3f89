"""TensorRT backend for NVIDIA Jetson: an explicit-quantization ONNX bundle, built into an engine on the device.

`build()` runs anywhere: it checks the graph against what TensorRT's ONNX parser supports and writes into OUT
`build.json` (precision, builder flags, DLA, optimization profiles, the versions the bundle needs) and the
device runner (`edgec_trt.py` + `edgec_trt_layers.py`, from edgec/device/), which needs only TensorRT's Python
bindings, numpy and libcudart. The engine is built where it runs: in-process where TensorRT is installed
(`edgec build OUT`), over OpenSSH on a Jetson (`edgec build OUT --device ssh://user@jetson`), or by running
`python3 OUT/edgec_trt.py OUT build` on the board itself.

What runs is what the host checked: TensorRT >= 10 builds strongly typed networks (precision from the graph:
fp16 as Casts in model.onnx, int8 from its Q/DQ, every other layer fp32); TensorRT 8.x gets fp16 graphs with
the FP16 flag and Q/DQ graphs with the INT8 flag only, so float layers stay fp32 as ONNX Runtime ran them here.
Written against TensorRT's documented Python API; verified here with its type stubs and binding symbols, not
run (no TensorRT in this workplace).
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import accuracy
from ..device import trt_layers, trt_runner
from ..errors import BackendUnavailable, BuildError, ConfigError, brief
from ..fileio import signals_deferred, write_bytes_atomic, write_json_atomic
from ..model import Model, all_nodes, load_model, node_sources
from ..passes.qdq import WEIGHTED_OPS, Placement
from ..profile import LatencyStats, LayerRow, Profile, with_shares
from ..ssh import SshDevice, is_ssh, parse_ssh
from ..target import Target
from .base import Artifact, Capabilities, Runner

# ONNX ops TensorRT 10's ONNX parser imports (onnx-tensorrt docs/operators.md), for the pre-flight check.
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU Hardmax HardSigmoid HardSwish
Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul
Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN
RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Trilu Unsqueeze Upsample Where Xor
""".split())
_DEVICE_HINT = ("TensorRT is not installed here: build the engine where it runs: `edgec build OUT --device "
                "ssh://user@jetson` (edgec copies the bundle over OpenSSH and runs its edgec_trt.py there), or on the "
                "Jetson itself `python3 OUT/edgec_trt.py OUT build` (JetPack ships TensorRT; the runner needs only "
                "TensorRT, numpy and CUDA). Then `edgec profile OUT` the same way.")
RUNNER_FILES = {"edgec_trt.py": trt_runner, "edgec_trt_layers.py": trt_layers}  # copied into OUT
_REMOTE_TIMEOUT_S = 3600.0  # an engine build on a Jetson Nano can take tens of minutes


# TensorRT explicit quantization: symmetric int8 everywhere; Q/DQ on the residual input of an Add lets the add
# fuse into the preceding convolution's int8 epilogue (TensorRT's Q/DQ placement guide).
PLACEMENT = Placement("tensorrt", WEIGHTED_OPS, residual_add="residual", symmetric_activations=True,
                      recurrent_float="edgec puts Q/DQ only around Conv, Gemm, MatMul and residual Adds for TensorRT "
                                      "(int8 LSTM/GRU/RNN are not tried there)")


class TensorRTBackend:
    name = "tensorrt"
    # The device runs exactly model.onnx's function: ONNX Runtime checks it here.
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8", "mixed"), dynamic_shapes=True,
                                off_device_check="onnx-runtime", builds_on_device=True)

    def precision_refusal(self, target: Target, precision: str) -> str | None:
        return None

    def model_refusal(self, model: Model, target: Target) -> str | None:
        """Nodes TensorRT's ONNX parser cannot import (If/Loop/Scan bodies included), before any work."""
        unsupported = unsupported_nodes(model)
        if not unsupported:
            return None
        listed = "; ".join(f"{n['in']} ({n['op']}" + (f", from {n['module']}" if n["module"] else "") + ")"
                           for n in unsupported[:10])
        return (f"TensorRT's ONNX parser cannot import {len(unsupported)} node(s): {listed}. Replace those ops in "
                "the model, or target a CPU board (intel-cpu runs every standard ONNX op).")

    def qdq_placement(self, target: Target) -> Placement:
        return PLACEMENT

    def wants_fp16_graph(self, target: Target) -> bool:
        """fp16 is always in the graph (Casts): what ONNX Runtime checks here is what the engine computes."""
        return True

    def versions(self) -> dict[str, str]:
        tensorrt = _import_tensorrt()
        if tensorrt is None:
            return {"tensorrt": "not installed here (the engine is built on the device)"}
        return {"tensorrt": tensorrt.__version__}

    def can_run_here(self, target: Target) -> bool:
        return _import_tensorrt() is not None and platform.machine() == target.arch

    def build(self, model: Model, target: Target, precision: str, out_dir: Path) -> Artifact:
        refusal = self.model_refusal(model, target)  # passes may have added ops since the pipeline asked
        if refusal:
            raise ConfigError(refusal)
        ranges = range_problems(model)
        if ranges:
            raise ConfigError("TensorRT cannot represent: " + "; ".join(ranges[:10]) + ". TensorRT computes indices "
                              "and shapes in int32: fix these in the model.")
        write_json_atomic(out_dir / "build.json", build_config(model, target, precision))
        for name, module in RUNNER_FILES.items():
            write_bytes_atomic(out_dir / name, Path(str(module.__file__)).read_bytes())
        return Artifact(self.name, precision, ["build.json", *RUNNER_FILES], {"build": "build.json"})

    # --- where the engine runs ---------------------------------------------------------------------
    def build_engine(self, out_dir: Path, manifest: dict[str, Any], device: str = "local") -> Path:
        """model.onnx -> model.engine with build.json's settings, on `device` ("local" or ssh://user@host)."""
        if is_ssh(device):
            result = _remote(out_dir, device, ["build"], bring_back=["model.engine", trt_runner.ENGINE_INFO])
        else:
            result = _on_device(trt_runner.build_engine, str(out_dir), self._trt())
        for warning in result.get("warnings", []):
            print(f"edgec: warning: {warning}", file=sys.stderr)
        return out_dir / result["engine"]

    def runner(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        trt = self._trt()
        cfg = json.loads((out_dir / "build.json").read_text())
        _on_device(trt_runner.engine_for_this_device, str(out_dir), cfg, trt, trt_runner.Cuda(),
                   trt_runner.CACHE_ROOT)
        session = _on_device(trt_runner.Session, str(out_dir), trt)
        return lambda feeds: _on_device(session.run, feeds)

    def profile(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
        """Check, time and profile the engine on `device`: here ("local") or over ssh; builds it first where
        that device has no engine of its own."""
        if is_ssh(device):
            args = ["profile", "--runs", str(runs), "--warmup", str(warmup)]
            result = _remote(out_dir, device, args, bring_back=["model.engine", trt_runner.ENGINE_INFO,
                                                                 trt_runner.PROFILE_FILE, trt_runner.OUTPUTS_FILE])
            label = f"{result['device']['gpu']} at {parse_ssh(device).display}"
        elif device == "local":
            result = _on_device(trt_runner.profile, str(out_dir), runs, warmup, self._trt())
            label = result["device"]["gpu"]
        else:
            raise ConfigError(f"--device {device!r}: TensorRT engines are profiled here (local, where TensorRT is "
                              "installed) or on a Jetson over OpenSSH: --device ssh://user@jetson.")
        return _to_profile(result, manifest, label, accuracy=device_accuracy(out_dir, result.get("check")))

    def _trt(self) -> Any:
        tensorrt = _import_tensorrt()
        if tensorrt is None:
            raise BackendUnavailable(_DEVICE_HINT)
        return tensorrt


def profile_with_trtexec(out_dir: Path, manifest: dict[str, Any], device: str, runs: int,
                         files: Sequence[Path] = ()) -> Profile:
    """The profile from trtexec: read JSON a user already has (`files`: --exportProfile, then optionally
    --exportLayerInfo and --exportTimes output), or run trtexec on `device` with those exports."""
    cfg = json.loads((out_dir / "build.json").read_text())
    if files:
        paths = [str(p) for p in files] + [None] * (3 - len(files))
        result = _on_device(trt_runner.from_trtexec_json, paths[0], paths[1], cfg.get("onnx_nodes", []), paths[2])
        label = f"trtexec JSON ({Path(paths[0]).name})"
    elif is_ssh(device):
        result = _remote(out_dir, device, ["profile", "--trtexec", "--runs", str(runs)], bring_back=[])
        label = f"trtexec at {parse_ssh(device).display}"
    else:
        result = _on_device(trt_runner.trtexec_profile, str(out_dir), runs)
        label = f"trtexec on {platform.node()}"
    return _to_profile(result, manifest, label, accuracy=None)


def device_accuracy(out_dir: Path, check: dict[str, Any] | None) -> dict[str, Any] | None:
    """The device's outputs on the host's validation samples, judged like the host check: each output in its
    task metric against the fp32 reference (device_check.npz), plus the device's own cosine check."""
    outputs_path, check_path = out_dir / trt_runner.OUTPUTS_FILE, out_dir / trt_runner.CHECK_FILE
    if check is None or not outputs_path.is_file() or not check_path.is_file():
        return None
    criteria, _inputs, reference = trt_runner.read_check(str(out_dir))
    names = [row["name"] for row in criteria["outputs"]]
    with np.load(outputs_path) as data:
        candidate = [accuracy.stacked(list(data[n])) for n in names]
    ref = [accuracy.stacked(list(reference[n])) for n in names]
    spec = {row["name"]: row["metric"] for row in criteria["outputs"] if row.get("metric")}
    proto = load_model(out_dir / "model.onnx").proto
    judge = accuracy.Judge.of(proto, ref, spec or None)
    result = accuracy.check(accuracy.compare(ref, candidate, None, judge), criteria["precision"])
    result["data"] = f"the host's first {criteria['samples']} validation samples ({trt_runner.CHECK_FILE})"
    return {"ok": bool(check["ok"]) and result.get("ok", True), "device_check": check, "task_metric": result,
            "reference": check["reference"], "max_abs_error": result["max_abs_error"]}


def _to_profile(result: dict[str, Any], manifest: dict[str, Any], label: str,
                accuracy: dict[str, Any] | None) -> Profile:
    rows = [LayerRow(layer=r["layer"], op=r["op"], exec=r["exec"], precision=r["precision"],
                     time_ms=round(float(r["time_ms"] or 0.0), 5), share=0.0, onnx_nodes=tuple(r["onnx_nodes"]))
            for r in result["layers"]]
    engine = result.get("engine") or {}
    extra: dict[str, Any] = {"runtime": {"tensorrt": (result.get("device") or {}).get("tensorrt"),
                                         "timing": result.get("timing"), "device": result.get("device"),
                                         "timing_cache": engine.get("timing_cache")}}
    on_gpu = trt_layers.dla_fallback(result["layers"])
    if engine.get("dla") or on_gpu:
        extra["dla"] = {**(engine.get("dla") or {}), "layers_on_gpu_in_engine": on_gpu}
    if accuracy is not None:
        extra["accuracy"] = accuracy
    samples = result.get("samples_ms") or []
    return Profile(backend="tensorrt", device=label, target=manifest["target"]["name"],
                   precision=manifest["precision"], batch=int(result.get("batch") or 1), runs=int(result.get("runs") or 0),
                   warmup=int(result.get("warmup") or 0),
                   latency_ms=LatencyStats.from_samples(samples),
                   layers=with_shares(rows), memory={"engine_bytes": result.get("engine_bytes")}, extra=extra)


def _on_device(call: Callable[..., Any], *args: Any) -> Any:
    """Call the device runner here, turning its errors into edgec's (exit 3 device, 2 bundle)."""
    try:
        return call(*args)
    except trt_runner.DeviceError as e:
        raise BackendUnavailable(str(e)) from e
    except trt_runner.BundleError as e:
        raise ConfigError(str(e)) from e


def _remote(out_dir: Path, device: str, args: list[str], bring_back: list[str]) -> dict[str, Any]:
    """Copy the bundle to the device over OpenSSH, run its edgec_trt.py with `args`, bring back `bring_back`;
    the runner's JSON result. Its errors come back as one line with its exit code's meaning."""
    address = parse_ssh(device)
    ssh = SshDevice(address)
    remote_dir = ssh.push(out_dir, _bundle_files(out_dir), bundle_name=_bundle_name(out_dir))
    proc = ssh.run([address.python, "edgec_trt.py", ".", *args, "--json"], remote_dir, timeout=_REMOTE_TIMEOUT_S)
    if proc.returncode in (0, trt_runner.CheckFailed.exit_code):
        if bring_back:
            ssh.pull(remote_dir, bring_back, out_dir)
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as e:
            raise BuildError(f"The runner on {address.display} printed no result: {brief(proc.stdout + proc.stderr)}") from e
    line = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), f"exit {proc.returncode}")
    line = line.replace("edgec_trt: error: ", "")
    where = f"On {address.display} ({remote_dir}): "
    if proc.returncode == trt_runner.BundleError.exit_code:
        raise ConfigError(where + line)
    if proc.returncode == 127 or ("No such file" in line and address.python in line):
        raise BackendUnavailable(where + f"'{address.python}' was not found: give the device's Python with "
                                 f"?python=/usr/bin/python3 in the address.")
    raise BackendUnavailable(where + line)


def _bundle_files(out_dir: Path) -> list[str]:
    names = ["manifest.json", "build.json", "model.onnx", *RUNNER_FILES, trt_runner.CHECK_FILE,
             "model.engine", trt_runner.ENGINE_INFO]
    external = [p.name for p in out_dir.glob("*.data")] + [p.name for p in out_dir.glob("*.onnx.data")]
    return [n for n in dict.fromkeys(names + external) if (out_dir / n).is_file()]


def _bundle_name(out_dir: Path) -> str:
    """A per-bundle folder name on the device: the folder's name and its model.onnx digest."""
    digest = hashlib.sha256((out_dir / "model.onnx").read_bytes()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", out_dir.resolve().name)[:60] or "bundle"
    return f"{safe}-{digest}"


def unsupported_nodes(model: Model) -> list[dict[str, Any]]:
    """Nodes TensorRT's ONNX parser cannot import (name, where it is, op), with the PyTorch module they came from."""
    sources = node_sources(model.proto)
    out = []
    for node, where in all_nodes(model.proto.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            src = sources.get(node.name)
            out.append({"node": node.name, "in": where, "op": f"{node.domain + '::' if node.domain else ''}{node.op_type}",
                        "module": src.module if src else None, "where": src.where if src else None})
    return out


def range_problems(model: Model) -> list[str]:
    """Values TensorRT's int32 shapes and indices cannot hold (int64 constants, huge dims)."""
    from onnx import numpy_helper

    limit = 2**31 - 1
    # Slice starts/ends beyond int32 (exporters write INT64_MAX for "to the end") are safe: TensorRT casts int64
    # down clamping to +-INT_MAX (onnx-tensorrt docs/operators.md), and a slice clamps to the dim anyway.
    slice_bounds = {i for node, _ in all_nodes(model.proto.graph) if node.op_type == "Slice" for i in node.input[1:3]}
    problems = []
    for t in model.proto.graph.initializer:
        if t.data_type == 7 and not t.external_data and t.name not in slice_bounds:  # INT64
            values = numpy_helper.to_array(t)
            if values.size and np.abs(values).max() > limit:
                problems.append(f"int64 initializer '{t.name}' holds {int(np.abs(values).max())}")
    for spec in model.inputs:
        big = [d for d in spec.shape if isinstance(d, int) and d > limit]
        if big:
            problems.append(f"input '{spec.name}' has a dim of {big[0]}")
    return problems


def build_config(model: Model, target: Target, precision: str) -> dict[str, Any]:
    """build.json: everything the device-side engine build needs, decided here from the target file.

    TensorRT >= 10 without DLA: a strongly typed network, no precision flags (fp16 and int8 are in the graph).
    TensorRT 8.x, and DLA on 10.x (documented with flags): weakly typed, FP16 for an fp16 graph, INT8 only
    for a Q/DQ graph (its float layers then run fp32, as checked here)."""
    options = target.options
    dla_core = options.get("dla_core")
    strongly_typed = _trt_major(target) >= 10 and dla_core is None
    flags = []
    if not strongly_typed:
        if precision == "fp16":
            flags.append("FP16")
        if precision in ("int8", "mixed"):
            flags.append("INT8")  # explicit Q/DQ networks still need the flag before TensorRT 10
    sparse = (model.provenance.get("sparsity") or {}).get("kind") == "2:4"
    if sparse and options.get("sparse_tensor_cores"):
        flags.append("SPARSE_WEIGHTS")  # Ampere+ sparse tensor cores use 2:4 weights
    dynamic = model.provenance.get("dynamic_shapes") or {}
    notes = []
    if precision in ("fp32", "mixed", "int8") and _trt_major(target) >= 8:
        notes.append("fp32 layers may use TF32 tensor cores on Ampere GPUs (TensorRT's default)")
    return {
        "schema": "edgec.tensorrt-build/2", "target": target.name, "precision": precision,
        "requires": {k: (str(options[key]) if options.get(key) is not None else None) for k, key in
                     (("jetpack", "jetpack"), ("tensorrt", "tensorrt_version"), ("cuda", "cuda"),
                      ("python", "python"), ("compute_capability", "compute_capability"))},
        "strongly_typed": strongly_typed, "builder_flags": flags, "workspace_mb": int(options.get("workspace_mb", 1024)),
        "dla_core": dla_core, "gpu_fallback": bool(options.get("gpu_fallback", False)),
        "optimization_profiles": [dict(dynamic)] if dynamic else [],
        "timing_cache": f"per device: {trt_runner.CACHE_ROOT}/<device key>/timing.cache",
        "onnx": "model.onnx", "engine": "model.engine",
        "onnx_nodes": [node.name for node in model.proto.graph.node],  # graph order, for Myelin ranges
        "notes": notes,
    }


def _trt_major(target: Target) -> int:
    return int(str(target.options.get("tensorrt_version", "10")).split(".")[0])


def _import_tensorrt():
    """TensorRT's Python module, or None where it is missing or has no API (an empty namespace package, as
    `pip install tensorrt-stubs` or a failed `pip install tensorrt` leave behind)."""
    try:
        with signals_deferred():  # Ctrl-C inside a native module's init would surface as an ImportError
            import tensorrt
    except ImportError:
        return None
    return tensorrt if hasattr(tensorrt, "Builder") and hasattr(tensorrt, "__version__") else None
