"""Stand-ins for TensorRT's Python module, one per API generation, and for libcudart: for testing the device
runner's version logic on a machine without a GPU. They are test doubles, never shipped, never used by edgec.

`fake_tensorrt(version)` has exactly the names TensorRT's Python API has in that release, as documented and as
the 10.13 stubs and the real 8.6.1 / 10.3.0 / 11.4.0 binding binaries show them (tests/test_trt_api_surface.py
checks the runner against those): TensorRT 8.2 has binding indices, `max_workspace_size` and
`execute_async_v2`; 8.5 adds named tensors and `execute_async_v3`, 8.4 `set_memory_pool_limit`; 10 makes
explicit batch the default and adds STRONGLY_TYPED; 11 drops EXPLICIT_BATCH, the FP16/INT8 builder flags and DLA.
Its "engine" is the ONNX model itself, run by ONNX Runtime, reading and writing the device buffers the runner
allocated, so shapes, dtypes and copies are checked with real numbers. Every API call lands in `module.calls`.

`FakeCudart` implements the libcudart calls the runner makes on host memory (real addresses), with CUDA's
ctypes calling convention (out-parameters through byref).
"""
from __future__ import annotations

import ctypes
import json
import time
import types
from typing import Any

import numpy as np
import onnx


class _Member(int):
    """An enum member: an int with TensorRT's repr (`DataType.FLOAT`)."""

    def __new__(cls, enum: str, name: str, value: int) -> "_Member":
        member = super().__new__(cls, value)
        member.enum, member.name = enum, name
        return member

    def __str__(self) -> str:
        return f"{self.enum}.{self.name}"


def _enum(name: str, members: list[str]) -> type:
    return type(name, (), {m: _Member(name, m, i) for i, m in enumerate(members)})


def _generation(version: str) -> tuple[int, int]:
    major, minor = (int(p) for p in version.split(".")[:2])
    return major, minor


_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
_NP_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
             "BOOL": np.bool_}


def fake_tensorrt(version: str, dla_cores: int = 0, dla_refuses: tuple[str, ...] = ("GlobalAveragePool",)) -> Any:
    """A module object shaped like `import tensorrt` of `version` (e.g. "8.2.1.8", "10.3.0.30", "11.4.0.106").
    `dla_cores`: what Builder.num_DLA_cores says; `dla_refuses`: ONNX ops can_run_on_DLA answers False for."""
    gen = _generation(version)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    record = trt.calls.append
    flags = ["FP16", "INT8", "GPU_FALLBACK", "TF32", "SPARSE_WEIGHTS", "REFIT", "DEBUG", "STRICT_TYPES"]
    if gen >= (10, 0):
        flags = [f for f in flags if f != "STRICT_TYPES"] + ["BF16", "FP8", "WEIGHT_STREAMING"]
    if gen >= (11, 0):
        flags = [f for f in flags if f not in ("FP16", "INT8", "BF16", "FP8")]
    trt.BuilderFlag = _enum("BuilderFlag", flags)
    network_flags = (["EXPLICIT_BATCH", "EXPLICIT_PRECISION"] if gen < (10, 0) else
                     ["EXPLICIT_BATCH", "STRONGLY_TYPED"] if gen < (11, 0) else ["STRONGLY_TYPED_PLACEHOLDER", "STRONGLY_TYPED"])
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", network_flags)
    trt.DataType = _enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL"] + (["INT64"] if gen >= (10, 0) else []))
    trt.DeviceType = _enum("DeviceType", ["GPU", "DLA"])
    trt.ProfilingVerbosity = _enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    trt.LayerInformationFormat = _enum("LayerInformationFormat", ["ONELINE", "JSON"])
    if gen >= (8, 4):
        trt.MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    if gen >= (8, 5):
        trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity: int = 1) -> None:
            self.severity = severity

    class IProfiler:
        def __init__(self) -> None:
            pass

    class Layer:
        def __init__(self, node: onnx.NodeProto) -> None:
            self.name, self.op = node.name, node.op_type

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.layers, self.model = flags, [], None

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, index: int) -> Layer:
            return self.layers[index]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            record(("parse_from_file", path))
            explicit = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if gen < (10, 0) else 0
            if gen < (10, 0) and not self.network.flags & explicit:
                self.errors.append("ModelImporter: the ONNX parser only supports networks with an explicit batch "
                                   "dimension")
                return False
            self.network.model = onnx.load(path)
            self.network.layers = [Layer(n) for n in self.network.model.graph.node]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.entries = int(data.decode().split(":")[1]) if data else 0

        def serialize(self) -> bytes:
            return f"timing:{self.entries + 1}".encode()

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags, self.profiles, self.cache = set(), [], None
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            self.default_device_type, self.DLA_core = trt.DeviceType.GPU, -1

        def set_flag(self, flag: Any) -> None:
            record(("set_flag", str(flag)))
            self.flags.add(str(flag))

        def add_optimization_profile(self, profile: Any) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

        def can_run_on_DLA(self, layer: Layer) -> bool:
            return layer.op not in dla_refuses

    if gen >= (8, 4):
        def set_memory_pool_limit(self: Any, pool: Any, size: int) -> None:
            record(("set_memory_pool_limit", str(pool), size))

        BuilderConfig.set_memory_pool_limit = set_memory_pool_limit
    else:
        def _set_workspace(self: Any, size: int) -> None:
            record(("max_workspace_size", size))

        BuilderConfig.max_workspace_size = property(lambda self: 0, _set_workspace)

    class OptimizationProfile:
        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
            record(("set_shape", name, tuple(min), tuple(opt), tuple(max)))

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            record(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            record(("build_serialized_network", sorted(config.flags), config.default_device_type == trt.DeviceType.DLA))
            strongly = gen >= (9, 0) and network.flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            if strongly and {"BuilderFlag.FP16", "BuilderFlag.INT8"} & config.flags:
                return None  # TensorRT: precision flags are not allowed in a strongly typed network
            header = json.dumps({"flags": sorted(config.flags), "dla": config.DLA_core}).encode()
            return len(header).to_bytes(4, "little") + header + network.model.SerializeToString()

    trt.Logger, trt.IProfiler, trt.Builder, trt.OnnxParser = Logger, IProfiler, Builder, OnnxParser

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            size = int.from_bytes(data[:4], "little")
            return Engine(onnx.load_from_string(bytes(data[4 + size:])))

    trt.Runtime = Runtime
    _add_engine(trt, gen)
    Engine = trt._Engine
    return trt


def _add_engine(trt: Any, gen: tuple[int, int]) -> None:
    """Engine, execution context and inspector of the generation: the ONNX model run by ONNX Runtime."""
    import onnxruntime as ort

    record = trt.calls.append

    class Engine:
        def __init__(self, model: onnx.ModelProto) -> None:
            self.model = model
            self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            inits = {t.name for t in model.graph.initializer}
            self.io = [(v.name, True, v) for v in model.graph.input if v.name not in inits]
            self.io += [(v.name, False, v) for v in model.graph.output]

        def _dtype(self, index: int) -> Any:
            return getattr(trt.DataType, _ONNX_TYPES[self.io[index][2].type.tensor_type.elem_type])

        def create_execution_context(self) -> Any:
            return Context(self)

        def create_engine_inspector(self) -> Any:
            return Inspector(self)

    if gen >= (8, 5):
        Engine.num_io_tensors = property(lambda self: len(self.io))
        Engine.get_tensor_name = lambda self, i: self.io[i][0]
        Engine.get_tensor_mode = lambda self, name: (trt.TensorIOMode.INPUT if self._io(name)[1]
                                                     else trt.TensorIOMode.OUTPUT)
        Engine.get_tensor_dtype = lambda self, name: self._dtype([n for n, _, _ in self.io].index(name))
        Engine._io = lambda self, name: next(t for t in self.io if t[0] == name)
    else:
        Engine.num_bindings = property(lambda self: len(self.io))
        Engine.get_binding_name = lambda self, i: self.io[i][0]
        Engine.binding_is_input = lambda self, i: self.io[i][1]
        Engine.get_binding_dtype = lambda self, i: self._dtype(i)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.shapes, self.addresses, self.profiler = engine, {}, {}, None

        def _outputs(self) -> dict[str, np.ndarray]:
            feeds = {name: _read(self.addresses[name], self.shapes[name], self.engine, name)
                     for name, is_input, _ in self.engine.io if is_input}
            names = [n for n, is_input, _ in self.engine.io if not is_input]
            return dict(zip(names, self.engine.session.run(names, feeds)))

        def _output_shape(self, name: str) -> tuple[int, ...]:
            feeds = {n: np.zeros(self.shapes[n], dtype=_np_type(self.engine, n))
                     for n, is_input, _ in self.engine.io if is_input}
            return tuple(self.engine.session.run([name], feeds)[0].shape)

        def _execute(self) -> bool:
            t0 = time.perf_counter()
            for name, array in self._outputs().items():
                out = np.ascontiguousarray(array)
                ctypes.memmove(self.addresses[name], out.ctypes.data, out.nbytes)
            if self.profiler is not None:
                spent = (time.perf_counter() - t0) * 1e3 / max(len(self.engine.model.graph.node), 1)
                for node in self.engine.model.graph.node:
                    self.profiler.report_layer_time(node.name, spent)
            return True

    if gen >= (8, 5):
        def set_input_shape(self: Context, name: str, shape: tuple[int, ...]) -> bool:
            record(("set_input_shape", name, tuple(shape)))
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self: Context, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self: Context, stream_handle: int) -> bool:
            record(("execute_async_v3", stream_handle))
            return self._execute()

        Context.set_input_shape, Context.set_tensor_address = set_input_shape, set_tensor_address
        Context.get_tensor_shape = lambda self, name: self._output_shape(name)
        Context.execute_async_v3 = execute_async_v3
    else:
        def set_binding_shape(self: Context, index: int, shape: tuple[int, ...]) -> bool:
            record(("set_binding_shape", index, tuple(shape)))
            self.shapes[self.engine.io[index][0]] = tuple(shape)
            return True

        def execute_async_v2(self: Context, bindings: list[int], stream_handle: int) -> bool:
            record(("execute_async_v2", len(bindings), stream_handle))
            self.addresses = {name: int(ptr) for (name, _, _), ptr in zip(self.engine.io, bindings)}
            return self._execute()

        Context.set_binding_shape = set_binding_shape
        Context.get_binding_shape = lambda self, i: self._output_shape(self.engine.io[i][0])
        Context.execute_async_v2 = execute_async_v2

    class Inspector:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine

        def get_engine_information(self, fmt: Any) -> str:
            layers = [{"Name": n.name, "LayerType": n.op_type, "Metadata": f"[ONNX Layer: {n.name}]",
                       "TacticName": "fake_kernel", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}
                      for n in self.engine.model.graph.node]
            return json.dumps({"Layers": layers})

    trt._Engine = Engine


def _np_type(engine: Any, name: str) -> Any:
    value = next(v for n, _, v in engine.io if n == name)
    return _NP_TYPES[_ONNX_TYPES[value.type.tensor_type.elem_type]]


def _read(address: int, shape: tuple[int, ...], engine: Any, name: str) -> np.ndarray:
    dtype = np.dtype(_np_type(engine, name))
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = (ctypes.c_char * nbytes).from_address(address)
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)


class _Call:
    """A C function: callable, with a settable restype like ctypes' foreign functions."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.restype = fn, ctypes.c_int

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class FakeCudart:
    """libcudart's calls the runner makes, on host memory: cudaMalloc returns a real address, copies move real
    bytes, events read the host clock. `gpu` and `compute_capability` describe the pretend device."""

    def __init__(self, gpu: str = "Orin (fake)", compute_capability: tuple[int, int] = (8, 7),
                 runtime: int = 12060) -> None:
        self.buffers: dict[int, Any] = {}
        self.events: dict[int, float] = {}
        attrs = {75: compute_capability[0], 76: compute_capability[1]}

        def out(ref: Any, value: Any) -> int:
            ref._obj.value = value
            return 0

        def malloc(ref: Any, size: Any) -> int:
            buf = ctypes.create_string_buffer(int(size.value))
            self.buffers[ctypes.addressof(buf)] = buf
            return out(ref, ctypes.addressof(buf))

        def memcpy(dst: Any, src: Any, size: Any, kind: int, stream: Any) -> int:
            ctypes.memmove(dst.value, src.value, size.value)
            return 0

        def name(props: Any, device: int) -> int:
            encoded = gpu.encode()
            ctypes.memmove(props, encoded, len(encoded))
            return 0

        def record(event: Any, stream: Any) -> int:
            self.events[event.value] = time.perf_counter()
            return 0

        def elapsed(ref: Any, start: Any, end: Any) -> int:
            return out(ref, (self.events[end.value] - self.events[start.value]) * 1e3)

        counter = iter(range(1, 1 << 30))
        calls = {
            "cudaGetErrorString": lambda status: b"fake error",
            "cudaRuntimeGetVersion": lambda ref: out(ref, runtime),
            "cudaGetDeviceCount": lambda ref: out(ref, 1),
            "cudaDeviceGetAttribute": lambda ref, attr, device: out(ref, attrs[attr]),
            "cudaGetDeviceProperties_v2": name,
            "cudaMalloc": malloc,
            "cudaFree": lambda ptr: self.buffers.pop(ptr.value) and 0,
            "cudaMemcpyAsync": memcpy,
            "cudaStreamCreate": lambda ref: out(ref, next(counter)),
            "cudaStreamSynchronize": lambda stream: 0,
            "cudaEventCreate": lambda ref: out(ref, next(counter)),
            "cudaEventRecord": record,
            "cudaEventSynchronize": lambda event: 0,
            "cudaEventElapsedTime": elapsed,
        }
        for key, fn in calls.items():
            setattr(self, key, _Call(fn))
