"""TensorRT backend for NVIDIA Jetson: an explicit-quantization ONNX bundle, built into an engine on the device.

`build()` runs anywhere: it checks the graph against what TensorRT's ONNX parser supports and writes
`build.json` (precision, workspace, DLA, optimization profiles, timing cache) next to `model.onnx`
(explicit Q/DQ for int8). `build_engine()` and `profile()` need the `tensorrt` package, i.e. the
device (JetPack ships it): `edgec build OUT` then `edgec profile OUT` there.

TensorRT 10.x (JetPack 6) takes fp16 as a builder flag and int8 from the Q/DQ nodes; TensorRT 11
dropped the INT8/FP16 flags and implicit int8: it wants explicit Q/DQ and strongly typed networks.
Written against the documented Python API; it could not be run here (no TensorRT in this workplace).
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, BuildError, ConfigError
from ..fileio import signals_deferred, write_bytes_atomic, write_json_atomic
from ..model import Model, all_nodes, node_sources
from ..passes.qdq import WEIGHTED_OPS, Placement
from ..profile import LatencyStats, LayerRow, Profile, with_shares
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
_DEVICE_HINT = ("TensorRT is needed on the device to build and profile this bundle: copy the output folder to the "
                "Jetson (JetPack ships TensorRT), then run `edgec build OUT` and `edgec profile OUT` there.")


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
        """TensorRT 11 builds strongly typed networks: fp16 must be in the ONNX (Casts), not a builder flag."""
        return _strongly_typed(target)

    def _trt(self):
        tensorrt = _import_tensorrt()
        if tensorrt is None:
            raise BackendUnavailable(_DEVICE_HINT)
        return tensorrt

    def versions(self) -> dict[str, str]:
        tensorrt = _import_tensorrt()
        if tensorrt is None:
            return {"tensorrt": "not installed here (the engine is built on the device)"}
        return {"tensorrt": tensorrt.__version__}

    def can_run_here(self, target: Target) -> bool:
        import importlib.util

        return importlib.util.find_spec("tensorrt") is not None and platform.machine() == target.arch

    def build(self, model: Model, target: Target, precision: str, out_dir: Path) -> Artifact:
        refusal = self.model_refusal(model, target)  # passes may have added ops since the pipeline asked
        if refusal:
            raise ConfigError(refusal)
        ranges = range_problems(model)
        if ranges:
            raise ConfigError("TensorRT cannot represent: " + "; ".join(ranges[:10]) + ". TensorRT computes indices "
                              "and shapes in int32: fix these in the model.")
        config = build_config(model, target, precision)
        write_json_atomic(out_dir / "build.json", config)
        return Artifact(self.name, precision, ["build.json"], {"build": "build.json"})

    # --- on the device ----------------------------------------------------------------------------
    def build_engine(self, out_dir: Path, manifest: dict[str, Any]) -> Path:
        """Parse model.onnx, build model.engine with build.json's settings and a persistent timing cache."""
        trt = self._trt()
        cfg = json.loads((out_dir / "build.json").read_text())
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if cfg["strongly_typed"]:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse((out_dir / "model.onnx").read_bytes(), str(out_dir / "model.onnx")):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BuildError(f"TensorRT could not parse model.onnx: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg["workspace_mb"] << 20)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info for the inspector
        for flag in cfg["builder_flags"]:
            if hasattr(trt.BuilderFlag, flag):  # TensorRT 11 removed INT8/FP16: strongly typed instead
                config.set_flag(getattr(trt.BuilderFlag, flag))
        if cfg["dla_core"] is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = cfg["dla_core"]
            if cfg["gpu_fallback"]:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        for prof in cfg["optimization_profiles"]:
            p = builder.create_optimization_profile()
            for name, shapes in prof.items():
                p.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
            config.add_optimization_profile(p)
        cache_path = out_dir / cfg["timing_cache"]
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        t0 = time.perf_counter()
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise BuildError("TensorRT failed to build the engine; run with TensorRT's verbose log to see why.")
        write_bytes_atomic(out_dir / cfg["engine"], bytes(engine))
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        print(f"edgec: built {out_dir / cfg['engine']} in {time.perf_counter() - t0:.1f}s", flush=True)
        return out_dir / cfg["engine"]

    def _engine(self, out_dir: Path, manifest: dict[str, Any]):
        trt = self._trt()
        cfg = json.loads((out_dir / "build.json").read_text())
        path = out_dir / cfg["engine"]
        if not path.exists():
            self.build_engine(out_dir, manifest)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BuildError(f"TensorRT could not load {path}: rebuild it on this device with `edgec build OUT`.")
        return trt, engine

    def runner(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        trt, engine = self._engine(out_dir, manifest)
        session = _Session(trt, engine)
        return session.run

    def profile(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
        if device != "local":
            raise ConfigError("TensorRT engines are profiled on the Jetson itself: run `edgec profile OUT` there.")
        trt, engine = self._engine(out_dir, manifest)
        session = _Session(trt, engine)
        feeds = {s["name"]: np.random.default_rng(0).random(_opt_shape(s, manifest)).astype(s["dtype"])
                 for s in manifest["inputs"]}
        for _ in range(warmup):
            session.run(feeds)
        samples = [session.timed(feeds) for _ in range(runs)]  # CUDA events around execute_async_v3
        layer_ms: dict[str, float] = {}

        class _LayerTimes(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                layer_ms[layer_name] = layer_ms.get(layer_name, 0.0) + ms

        session.context.profiler = _LayerTimes()
        layer_runs = max(5, min(runs, 30))
        for _ in range(layer_runs):
            session.run(feeds)
        info = _layer_info(engine, trt)
        rows = [LayerRow(layer=name, op=info.get(name, {}).get("LayerType", ""),
                         exec=info.get(name, {}).get("TacticName", ""),
                         precision=_precision(info.get(name, {})), time_ms=round(ms / layer_runs, 5), share=0.0,
                         onnx_nodes=tuple(onnx_names(name, info.get(name, {}))))
                for name, ms in layer_ms.items()]
        return Profile(backend=self.name, device=_device_name(), target=manifest["target"]["name"],
                       precision=manifest["precision"], batch=int(_opt_shape(manifest["inputs"][0], manifest)[0]),
                       runs=runs, warmup=warmup, latency_ms=LatencyStats.from_samples(samples),
                       layers=with_shares(rows), memory={"engine_bytes": (out_dir / "model.engine").stat().st_size},
                       extra={"runtime": {"tensorrt": trt.__version__, "timing": "CUDA events"}})


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
    """build.json: everything the device-side engine build needs, decided here from the target file."""
    trt_version = str(target.options.get("tensorrt_version", "10"))
    strongly_typed = _strongly_typed(target)
    flags = []
    if not strongly_typed:
        if precision in ("fp16", "mixed", "int8"):
            flags.append("FP16")  # layers left in float may run fp16
        if precision in ("int8", "mixed"):
            flags.append("INT8")  # TensorRT 10 still wants the flag for explicit Q/DQ networks
    sparse = (model.provenance.get("sparsity") or {}).get("kind") == "2:4"
    if sparse and target.options.get("sparse_tensor_cores"):
        flags.append("SPARSE_WEIGHTS")  # Ampere+ sparse tensor cores use 2:4 weights
    dynamic = model.provenance.get("dynamic_shapes") or {}
    profiles = [{name: ranges for name, ranges in dynamic.items()}] if dynamic else []
    dla_cores = int(target.options.get("dla_cores", 0))
    return {
        "schema": "edgec.tensorrt-build/1", "precision": precision, "tensorrt_version": trt_version,
        "compute_capability": target.options.get("compute_capability"), "strongly_typed": strongly_typed,
        "builder_flags": flags, "workspace_mb": int(target.options.get("workspace_mb", 1024)),
        # DLA is opt-in (set dla_core to 0 or 1): it saves power but is slower than the GPU for most models.
        "dla_cores_available": dla_cores, "dla_core": None, "gpu_fallback": True,
        "optimization_profiles": profiles, "timing_cache": "timing.cache", "engine": "model.engine",
        "notes": (["TensorRT 11 strongly typed: model.onnx carries fp16 weights and activations itself"]
                  if strongly_typed and precision == "fp16" else []),
    }


def _strongly_typed(target: Target) -> bool:
    return int(str(target.options.get("tensorrt_version", "10")).split(".")[0]) >= 11


def onnx_names(layer: str, info: dict[str, Any]) -> list[str]:
    """ONNX node names behind a TensorRT layer: from the inspector's metadata, else from the fused name."""
    meta = info.get("Metadata", "")
    names = [part.split("]")[0].strip() for part in meta.split("[ONNX Layer:")[1:]] if meta else []
    if names:
        return names
    cleaned = layer.replace("PWN(", "").replace(")", "")
    return [p.strip() for p in cleaned.replace("+", ",").split(",") if p.strip()]


def _layer_info(engine: Any, trt: Any) -> dict[str, dict[str, Any]]:
    inspector = engine.create_engine_inspector()
    try:
        data = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except (ValueError, TypeError):
        return {}
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    return {layer["Name"]: layer for layer in layers if isinstance(layer, dict) and "Name" in layer}


def _precision(info: dict[str, Any]) -> str:
    text = json.dumps(info.get("Outputs", "")) + json.dumps(info.get("Inputs", ""))
    for key, name in (("Int8", "int8"), ("Half", "fp16"), ("FP16", "fp16"), ("Float", "fp32")):
        if key in text:
            return name
    return ""


def _opt_shape(spec: dict[str, Any], manifest: dict[str, Any]) -> list[int]:
    dynamic = (manifest.get("dynamic_shapes") or {}).get(spec["name"])
    return list(dynamic["opt"]) if dynamic else list(spec["shape"])


def _device_name() -> str:
    try:
        import torch
        return torch.cuda.get_device_name(0)
    except Exception:
        return "CUDA device"


class _Session:
    """One execution context with device buffers (PyTorch's CUDA allocator) and CUDA-event timing."""

    def __init__(self, trt: Any, engine: Any):
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable("Running TensorRT engines needs PyTorch with CUDA on the device "
                                     "(NVIDIA's JetPack PyTorch wheel).") from e
        self.torch, self.trt, self.engine = torch, trt, engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]

    def _bind(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        torch = self.torch
        buffers = {}
        for name in self.inputs:
            buffers[name] = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            self.context.set_input_shape(name, tuple(buffers[name].shape))
        for name in self.names:
            if name not in buffers:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = torch.from_numpy(np.zeros(0, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
                buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, buffers[name].data_ptr())
        return buffers

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        buffers = self._bind(feeds)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BuildError("TensorRT execution failed (execute_async_v3 returned False).")
        self.stream.synchronize()
        return [buffers[n].cpu().numpy() for n in self.names if n not in self.inputs]

    def timed(self, feeds: dict[str, np.ndarray]) -> float:
        self._bind(feeds)
        start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        self.context.execute_async_v3(self.stream.cuda_stream)
        end.record(self.stream)
        end.synchronize()
        return float(start.elapsed_time(end))


def _import_tensorrt():
    """TensorRT's Python module, or None where it is missing or has no API (an empty namespace package, as
    `pip install tensorrt-stubs` or a failed `pip install tensorrt` leave behind)."""
    try:
        with signals_deferred():  # Ctrl-C inside a native module's init would surface as an ImportError
            import tensorrt
    except ImportError:
        return None
    return tensorrt if hasattr(tensorrt, "Builder") and hasattr(tensorrt, "__version__") else None
