"""Build, check and profile an edgec TensorRT bundle on the device, with nothing but TensorRT's Python bindings,
numpy and the CUDA runtime library (libcudart, through ctypes: no PyTorch, no pycuda).

    python3 edgec_trt.py OUT build                      # model.onnx -> model.engine (+ engine.json)
    python3 edgec_trt.py OUT profile [--runs N] [--warmup N] [--trtexec]
    python3 edgec_trt.py OUT versions                   # what this device has, and what the bundle needs

The compile copies this file into OUT as `edgec_trt.py` (and trt_layers.py as `edgec_trt_layers.py`); on a
host with TensorRT, edgec imports it in-process: the same code builds and runs everywhere.

Every TensorRT release difference lives in `TrtApi` (8.2 on JetPack 4.6 / Python 3.6, 8.5 on JetPack 5 /
Python 3.8, 10.x on JetPack 6 / Python 3.10, 11.x): explicit batch, bindings vs named tensors, workspace
limits, which builder flags exist, strongly typed networks, DLA. A bundle that needs something this device's
TensorRT lacks is refused with what to do; no flag is ever dropped silently.

Profile output (stdout with --json, and OUT/device_profile.json): schema `edgec.tensorrt-run/1`: device
facts, latency (CUDA events, ms), per-layer rows (IProfiler times + engine inspector info, mapped to ONNX
node names), and the check of the outputs against the host's reference (OUT/device_check.npz).

Exit codes: 0 ok; 2 the bundle or an argument is wrong; 3 TensorRT/CUDA missing here, or the bundle needs
another TensorRT/GPU (the message says which JetPack or target); 4 the outputs disagree with the reference.

Runs on Python 3.6+: keep it free of newer syntax (the suite checks it with vermin) and of edgec imports.
"""
import argparse
import ctypes
import ctypes.util
import glob
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

try:
    import numpy as np
except ImportError:  # reported by main() as a device problem (exit 3), not a traceback
    np = None  # type: ignore

try:  # inside the edgec package
    from .trt_layers import layer_rows, trtexec_rows
except ImportError:  # copied into OUT beside edgec_trt_layers.py
    from edgec_trt_layers import layer_rows, trtexec_rows  # type: ignore
if TYPE_CHECKING:  # only for mypy, against tensorrt-stubs (TensorRT 10's API; tests/test_trt_api_surface.py)
    import tensorrt

BUILD_FILE = "build.json"
ENGINE_INFO = "engine.json"
CHECK_FILE = "device_check.npz"
PROFILE_FILE = "device_profile.json"
OUTPUTS_FILE = "device_outputs.npz"
CACHE_ROOT = os.path.join("~", ".cache", "edgec", "trt")
RUN_SCHEMA = "edgec.tensorrt-run/1"
ENGINE_SCHEMA = "edgec.tensorrt-engine/1"
# Jetson Linux (L4T) release -> JetPack major version
_L4T_JETPACK = {"32": "4", "34": "5", "35": "5", "36": "6", "38": "7"}
_JETPACK_HINT = ("JetPack ships TensorRT's Python bindings for its system Python (`sudo apt install "
                 "python3-libnvinfer` if missing); run this with /usr/bin/python3, not a virtualenv")


class DeviceError(Exception):
    """This device cannot do what the bundle asks (missing TensorRT/CUDA, another TensorRT or GPU): exit 3."""
    exit_code = 3


class BundleError(Exception):
    """The bundle or an argument is malformed: exit 2."""
    exit_code = 2


class CheckFailed(Exception):
    """The engine's outputs disagree with the host's reference: exit 4."""
    exit_code = 4


# ------------------------------------------------------------------------------------------------- CUDA
class Cuda(object):
    """The few CUDA runtime calls a TensorRT runner needs, on libcudart through ctypes (as Polygraphy does).

    Pointers, streams and events are plain ints. Every call checks its status and raises DeviceError naming
    the call and CUDA's own message."""

    H2D, D2H = 1, 2  # cudaMemcpyKind

    def __init__(self, lib: Any = None) -> None:
        self.lib = lib if lib is not None else load_cudart()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p

    def check(self, status: int, call: str) -> None:
        if status != 0:
            message = self.lib.cudaGetErrorString(ctypes.c_int(status))
            text = message.decode() if message else "unknown error"
            raise DeviceError("CUDA {} failed with error {} ({}): is this a machine with an NVIDIA GPU and its "
                              "driver?".format(call, status, text))

    def runtime_version(self) -> int:
        value = ctypes.c_int(0)
        self.check(self.lib.cudaRuntimeGetVersion(ctypes.byref(value)), "cudaRuntimeGetVersion")
        return value.value

    def device_count(self) -> int:
        value = ctypes.c_int(0)
        self.check(self.lib.cudaGetDeviceCount(ctypes.byref(value)), "cudaGetDeviceCount")
        return value.value

    def attribute(self, attribute: int, device: int = 0) -> int:
        value = ctypes.c_int(0)
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(value), attribute, device), "cudaDeviceGetAttribute")
        return value.value

    def device_name(self, device: int = 0) -> str:
        """cudaDeviceProp starts with `char name[256]` in every CUDA release; the rest of the struct is ignored."""
        props = ctypes.create_string_buffer(4096)
        call = getattr(self.lib, "cudaGetDeviceProperties_v2", None) or self.lib.cudaGetDeviceProperties
        self.check(call(props, device), "cudaGetDeviceProperties")
        return props.raw[:256].split(b"\0", 1)[0].decode(errors="replace")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(int(nbytes), 1))), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def to_device(self, ptr: int, array: "np.ndarray", stream: int) -> None:
        array = np.ascontiguousarray(array)
        self.check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(ptr), array.ctypes.data_as(ctypes.c_void_p),
                                            ctypes.c_size_t(array.nbytes), self.H2D, ctypes.c_void_p(stream)),
                   "cudaMemcpyAsync (host to device)")
        self.synchronize(stream)  # `array` may be a temporary: it must outlive the copy

    def to_host(self, array: "np.ndarray", ptr: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr),
                                            ctypes.c_size_t(array.nbytes), self.D2H, ctypes.c_void_p(stream)),
                   "cudaMemcpyAsync (device to host)")

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return int(handle.value or 0)

    def synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def event(self) -> int:
        handle = ctypes.c_void_p()
        self.check(self.lib.cudaEventCreate(ctypes.byref(handle)), "cudaEventCreate")
        return int(handle.value or 0)

    def record(self, event: int, stream: int) -> None:
        self.check(self.lib.cudaEventRecord(ctypes.c_void_p(event), ctypes.c_void_p(stream)), "cudaEventRecord")

    def elapsed_ms(self, start: int, end: int) -> float:
        self.check(self.lib.cudaEventSynchronize(ctypes.c_void_p(end)), "cudaEventSynchronize")
        ms = ctypes.c_float(0.0)
        self.check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end)),
                   "cudaEventElapsedTime")
        return float(ms.value)


def cudart_candidates() -> List[str]:
    """Where libcudart may be: $EDGEC_CUDART, the loader's search path, CUDA's and JetPack's folders, pip's
    nvidia-cuda-runtime wheels (newest version first)."""
    found = [os.environ["EDGEC_CUDART"]] if os.environ.get("EDGEC_CUDART") else []
    name = ctypes.util.find_library("cudart")
    found += [name] if name else []
    folders = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/*/lib", "/usr/lib/*-linux-gnu"]
    folders += [os.path.join(p, "nvidia", "cuda_runtime", "lib") for p in sys.path if p]
    for folder in folders:
        found += sorted(glob.glob(os.path.join(folder, "libcudart.so*")), reverse=True)
    found += ["libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2"]
    unique = []  # type: List[str]
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def load_cudart() -> Any:
    """The first libcudart that loads; DeviceError naming where it looked."""
    tried = cudart_candidates()
    for path in tried:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    raise DeviceError("The CUDA runtime library (libcudart) was not found (tried {}): JetPack installs it under "
                      "/usr/local/cuda; set EDGEC_CUDART=/path/to/libcudart.so if it is elsewhere.".format(
                          ", ".join(tried[:6])))


# --------------------------------------------------------------------------------------------- TensorRT
def parse_version(text: str) -> Tuple[int, int]:
    """'10.3.0.30' -> (10, 3)."""
    parts = re.findall(r"\d+", str(text))
    if not parts:
        raise DeviceError("Cannot read a TensorRT version from {!r}".format(text))
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def import_tensorrt() -> Any:
    """TensorRT's Python module; DeviceError where it is missing or empty (tensorrt-stubs, a failed pip install)."""
    try:
        import tensorrt
    except ImportError as e:
        raise DeviceError("TensorRT's Python bindings are not importable by {} (Python {}): {}. {}.".format(
            sys.executable, platform.python_version(), e, _JETPACK_HINT))
    if not hasattr(tensorrt, "Builder") or not hasattr(tensorrt, "__version__"):
        raise DeviceError("The `tensorrt` module at {} has no TensorRT API (an empty package, e.g. tensorrt-stubs or "
                          "a failed `pip install tensorrt`). {}.".format(getattr(tensorrt, "__path__", "?"),
                                                                         _JETPACK_HINT))
    return tensorrt


_NUMPY_TYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
                "BOOL": "bool", "UINT8": "uint8", "DOUBLE": "float64"}


class TrtApi(object):
    """TensorRT's Python API across releases, in one place. `trt` is the imported module (or a stand-in with
    the same names, in edgec's tests); every version-dependent call of this runner goes through here."""

    def __init__(self, trt: Any) -> None:
        self.trt = trt
        self.version = parse_version(trt.__version__)
        if self.version < (8, 2):
            raise DeviceError("TensorRT {} is too old: edgec's runner needs TensorRT 8.2 or later (JetPack 4.6 or "
                              "later).".format(trt.__version__))

    @property
    def named_tensors(self) -> bool:
        """Named I/O tensors and execute_async_v3 (8.5+); before: binding indices and execute_async_v2."""
        return self.version >= (8, 5)

    @property
    def has_dla(self) -> bool:
        """TensorRT 10.7 was the last release with DLA (TensorRT 11 documentation)."""
        return self.version <= (10, 7)

    def has_flag(self, name: str) -> bool:
        return hasattr(self.trt.BuilderFlag, name)

    def network_flags(self, strongly_typed: bool) -> int:
        """EXPLICIT_BATCH where the ONNX parser needs it (8.x; the default from 10, gone in 11); STRONGLY_TYPED
        where the bundle carries its own precision (9+)."""
        flags = 0
        kinds = self.trt.NetworkDefinitionCreationFlag
        if self.version < (10, 0):
            flags |= 1 << int(kinds.EXPLICIT_BATCH)
        if strongly_typed:
            if not hasattr(kinds, "STRONGLY_TYPED"):
                raise DeviceError("This bundle is a strongly typed network (precision in the ONNX graph), which needs "
                                  "TensorRT 10 or later; this device has TensorRT {}: compile for a target of this "
                                  "device's JetPack (edgec targets), or flash JetPack 6.".format(self.trt.__version__))
            flags |= 1 << int(kinds.STRONGLY_TYPED)
        return flags

    def set_workspace(self, config: "tensorrt.IBuilderConfig", megabytes: int) -> None:
        if self.version >= (8, 4):
            config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(megabytes) << 20)
        else:
            config.max_workspace_size = int(megabytes) << 20  # type: ignore[attr-defined]  # 8.2-8.3 only

    def set_flags(self, config: Any, names: Sequence[str], bundle: str) -> None:
        """Set each builder flag; a flag this TensorRT lacks is an error naming what to do, never skipped."""
        missing = [n for n in names if not self.has_flag(n)]
        if missing:
            raise DeviceError("This bundle asks TensorRT for builder flag(s) {} that TensorRT {} on this device does "
                              "not have (it was compiled for {}): recompile it for a target of this device's "
                              "TensorRT (edgec targets; TensorRT 11 takes fp16/int8 from the graph), or build it on "
                              "the JetPack it was made for.".format(", ".join(missing), self.trt.__version__, bundle))
        for name in names:
            config.set_flag(getattr(self.trt.BuilderFlag, name))

    def numpy_dtype(self, dtype: Any) -> Any:
        name = str(dtype).split(".")[-1].upper()
        if name not in _NUMPY_TYPES:
            raise BundleError("The engine has a {} input or output, which numpy cannot hold: keep model inputs and "
                              "outputs in fp32/fp16/int types.".format(name))
        return np.dtype(_NUMPY_TYPES[name])

    def io_tensors(self, engine: "tensorrt.ICudaEngine") -> List[Tuple[str, bool, Any]]:
        """(name, is_input, numpy dtype) of every engine I/O tensor, in binding order."""
        out = []
        if self.named_tensors:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT
                out.append((name, is_input, self.numpy_dtype(engine.get_tensor_dtype(name))))
        else:
            for i in range(engine.num_bindings):  # type: ignore[attr-defined]  # TensorRT < 8.5
                out.append((engine.get_binding_name(i), engine.binding_is_input(i),  # type: ignore[attr-defined]
                            self.numpy_dtype(engine.get_binding_dtype(i))))  # type: ignore[attr-defined]
        return out

    def set_input_shape(self, context: "tensorrt.IExecutionContext", index: int, name: str,
                        shape: Sequence[int]) -> None:
        if self.named_tensors:
            if not context.set_input_shape(name, tuple(shape)):
                raise BundleError("TensorRT refused shape {} for input '{}': outside the engine's optimization "
                                  "profile (build.json).".format(list(shape), name))
        else:
            context.set_binding_shape(index, tuple(shape))  # type: ignore[attr-defined]

    def output_shape(self, context: "tensorrt.IExecutionContext", index: int, name: str) -> Tuple[int, ...]:
        if self.named_tensors:
            # Dims iterates by index (__len__/__getitem__); its stub has no __iter__
            return tuple(context.get_tensor_shape(name))  # type: ignore[arg-type]
        return tuple(context.get_binding_shape(index))  # type: ignore[attr-defined]

    def execute(self, context: "tensorrt.IExecutionContext", addresses: Sequence[Tuple[str, int]],
                stream: int) -> None:
        if self.named_tensors:
            for name, address in addresses:
                context.set_tensor_address(name, address)
            ok = context.execute_async_v3(stream)
        else:
            ok = context.execute_async_v2([a for _, a in addresses], stream)  # type: ignore[attr-defined]
        if not ok:
            raise DeviceError("TensorRT could not run the engine (execute returned False); TensorRT's log above "
                              "says why.")


# ------------------------------------------------------------------------------------------------ facts
def jetpack() -> Optional[str]:
    """'6 (L4T R36.4.3)' from /etc/nv_tegra_release on a Jetson; None elsewhere."""
    try:
        with open("/etc/nv_tegra_release") as f:
            line = f.readline()
    except OSError:
        return None
    match = re.search(r"R(\d+)\D+REVISION:\s*([\d.]+)", line)
    if not match:
        return None
    release, revision = match.group(1), match.group(2)
    return "{} (L4T R{}.{})".format(_L4T_JETPACK.get(release, "?"), release, revision)


def device_facts(trt: Any, cuda: Cuda) -> Dict[str, Any]:
    """What this device is: GPU, compute capability, CUDA, TensorRT, Python, JetPack."""
    if cuda.device_count() < 1:
        raise DeviceError("CUDA sees no GPU on this machine.")
    major, minor = cuda.attribute(75), cuda.attribute(76)  # cudaDevAttrComputeCapabilityMajor/Minor
    runtime = cuda.runtime_version()
    return {"gpu": cuda.device_name(), "compute_capability": "{}.{}".format(major, minor),
            "cuda": "{}.{}".format(runtime // 1000, runtime % 1000 // 10), "tensorrt": trt.__version__,
            "python": platform.python_version(), "jetpack": jetpack(), "machine": platform.machine()}


def device_key(facts: Dict[str, Any]) -> str:
    """The timing cache's folder name: an engine's tactics are only valid for one GPU, CUDA and TensorRT."""
    raw = "{}-sm{}-trt{}-cuda{}".format(facts["gpu"], facts["compute_capability"], facts["tensorrt"], facts["cuda"])
    return re.sub(r"[^A-Za-z0-9.-]+", "_", raw).strip("_")


def requirement_problems(cfg: Dict[str, Any], facts: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """(refusals, warnings) from comparing build.json's `requires` with this device."""
    need = cfg.get("requires") or {}
    refusals, warnings = [], []  # type: List[str], List[str]
    made_for = "target {} (JetPack {}, TensorRT {})".format(cfg.get("target"), need.get("jetpack"),
                                                           need.get("tensorrt"))
    if need.get("tensorrt"):
        wanted, have = parse_version(need["tensorrt"]), parse_version(facts["tensorrt"])
        if wanted[0] != have[0]:
            refusals.append("this bundle was compiled for {}, this device has TensorRT {}: compile it for a target "
                            "of this device's JetPack (edgec targets lists each target's TensorRT), or flash JetPack "
                            "{}".format(made_for, facts["tensorrt"], need.get("jetpack")))
        elif have < wanted:
            warnings.append("TensorRT {} here is older than the {} this bundle was compiled for".format(
                facts["tensorrt"], need["tensorrt"]))
    cc = float(facts["compute_capability"])
    precision = cfg.get("precision")
    if precision in ("int8", "mixed") and cc < 6.1:
        refusals.append("int8 needs compute capability 6.1 or higher; this GPU ({}) has {}: compile with --precision "
                        "fp16".format(facts["gpu"], facts["compute_capability"]))
    if need.get("compute_capability") and need["compute_capability"] != facts["compute_capability"]:
        warnings.append("compiled for compute capability {} ({}), this GPU is {} ({})".format(
            need["compute_capability"], made_for, facts["compute_capability"], facts["gpu"]))
    return refusals, warnings


# ------------------------------------------------------------------------------------------------ build
def read_json(path: str, what: str) -> Any:
    """The parsed JSON: an object for edgec's files, a list for trtexec's --exportProfile/--exportTimes."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BundleError("Cannot read {} ({}): {}. Is this an edgec TensorRT output folder?".format(path, what, e))


def write_atomic(path: str, data: bytes) -> None:
    """Temp file in the destination folder, fsync, rename: a crash never leaves a valid-looking file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def configure(api: TrtApi, builder: Any, network: Any, cfg: Dict[str, Any]) -> Tuple[Any, List[str]]:
    """The builder config from build.json: workspace, flags, DLA, optimization profiles. Returns it with the
    layers that cannot run on DLA (they fall back to the GPU)."""
    trt = api.trt
    config = builder.create_builder_config()
    api.set_workspace(config, cfg["workspace_mb"])
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info for the engine inspector
    api.set_flags(config, cfg["builder_flags"], str(cfg.get("target")))
    on_gpu = []  # type: List[str]
    if cfg.get("dla_core") is not None:
        on_gpu = configure_dla(api, builder, network, config, cfg)
    for prof in cfg["optimization_profiles"]:
        p = builder.create_optimization_profile()
        for name, shapes in prof.items():
            p.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(p)
    return config, on_gpu


def configure_dla(api: TrtApi, builder: Any, network: Any, config: Any, cfg: Dict[str, Any]) -> List[str]:
    """Put the network on DLA core cfg['dla_core']; the layers DLA cannot run, which GPU fallback moves to the
    GPU (without it they are an error)."""
    trt, core = api.trt, int(cfg["dla_core"])
    if not api.has_dla:
        raise DeviceError("TensorRT {} has no DLA support (10.7 was the last release with it): compile without "
                          "--dla.".format(trt.__version__))
    cores = int(builder.num_DLA_cores)
    if core >= cores:
        raise DeviceError("This bundle asks for DLA core {}; this device has {} DLA core(s): compile with --dla "
                          "{} or without --dla.".format(core, cores, max(cores - 1, 0)) if cores else
                          "This bundle asks for DLA core {}; this device has no DLA: compile without --dla.".format(core))
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    on_gpu = [network.get_layer(i).name for i in range(network.num_layers)
              if not config.can_run_on_DLA(network.get_layer(i))]
    if cfg.get("gpu_fallback"):
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    elif on_gpu:
        raise BundleError("DLA cannot run {} layer(s) of this model ({}): recompile with --gpu-fallback, or "
                          "without --dla.".format(len(on_gpu), ", ".join(on_gpu[:8])))
    return on_gpu


def parse_network(api: TrtApi, builder: Any, onnx_path: str, strongly_typed: bool, logger: Any) -> Tuple[Any, Any]:
    """The network from model.onnx (external weights beside it are read too); BundleError with the parser's
    messages when it cannot."""
    network = builder.create_network(api.network_flags(strongly_typed))
    parser = api.trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError("TensorRT {} could not parse {}: {}".format(api.trt.__version__, onnx_path, errors))
    return network, parser


def load_timing_cache(config: Any, path: str) -> bool:
    """Seed the builder with this device's timing cache; True when one existed."""
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return bool(data)


def build_engine(out_dir: str, trt: Any = None, cuda: Optional[Cuda] = None,
                 cache_root: str = CACHE_ROOT) -> Dict[str, Any]:
    """model.onnx + build.json -> model.engine and engine.json (what was built, where, with which cache).

    The timing cache is kept per device in `cache_root/<device key>/timing.cache`, shared by every bundle
    built there. Raises DeviceError / BundleError with what to do."""
    api, cuda = TrtApi(trt if trt is not None else import_tensorrt()), cuda or Cuda()
    cfg = read_json(os.path.join(out_dir, BUILD_FILE), "the TensorRT build settings")
    facts = device_facts(api.trt, cuda)
    refusals, warnings = requirement_problems(cfg, facts)
    if refusals:
        raise DeviceError("; ".join(refusals) + ".")
    logger = api.trt.Logger(api.trt.Logger.WARNING)
    builder = api.trt.Builder(logger)
    network, _parser = parse_network(api, builder, os.path.join(out_dir, cfg["onnx"]), cfg["strongly_typed"], logger)
    config, on_gpu = configure(api, builder, network, cfg)
    key = device_key(facts)
    cache_path = os.path.join(os.path.expanduser(cache_root), key, "timing.cache")
    cache_hit = load_timing_cache(config, cache_path)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError("TensorRT {} could not build an engine from {} (its log above says why).".format(
            api.trt.__version__, cfg["onnx"]))
    seconds = time.perf_counter() - t0
    write_atomic(os.path.join(out_dir, cfg["engine"]), bytes(serialized))
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    info = {"schema": ENGINE_SCHEMA, "engine": cfg["engine"], "device": facts, "device_key": key,
            "timing_cache": {"path": cache_path, "was_warm": cache_hit}, "build_seconds": round(seconds, 3),
            "builder_flags": list(cfg["builder_flags"]), "strongly_typed": cfg["strongly_typed"],
            "dla": ({"core": cfg["dla_core"], "gpu_fallback": bool(cfg.get("gpu_fallback")), "layers_on_gpu": on_gpu}
                    if cfg.get("dla_core") is not None else None),
            "warnings": warnings}
    write_atomic(os.path.join(out_dir, ENGINE_INFO), json.dumps(info, indent=2).encode())
    return info


# -------------------------------------------------------------------------------------------------- run
class Session(object):
    """One deserialized engine with one execution context, a stream and device buffers for its I/O."""

    def __init__(self, out_dir: str, trt: Any = None, cuda: Optional[Cuda] = None) -> None:
        self.api, self.cuda = TrtApi(trt if trt is not None else import_tensorrt()), cuda or Cuda()
        cfg = read_json(os.path.join(out_dir, BUILD_FILE), "the TensorRT build settings")
        path = os.path.join(out_dir, cfg["engine"])
        if not os.path.isfile(path):
            raise BundleError("{} does not exist: build it on this device first (`python3 edgec_trt.py OUT build`, "
                              "or `edgec build OUT`).".format(path))
        with open(path, "rb") as f:
            data = f.read()
        trt = self.api.trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise DeviceError("TensorRT {} could not load {}: an engine only loads on the GPU and TensorRT version "
                              "that built it: rebuild it here (`edgec build OUT`).".format(trt.__version__, path))
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self.tensors = self.api.io_tensors(self.engine)
        self.buffers = {}  # type: Dict[str, Tuple[int, int]]  # name -> (pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self.buffers[name] = (ptr, size)
        return ptr

    def _bind(self, feeds: Dict[str, "np.ndarray"]) -> List[Tuple[str, int, "np.ndarray"]]:
        """Copy the inputs to the device; allocate outputs; return (name, pointer, host array) per I/O tensor."""
        bound = []
        for index, (name, is_input, dtype) in enumerate(self.tensors):
            if is_input:
                if name not in feeds:
                    raise BundleError("No data for the engine's input '{}' (got {}).".format(name, sorted(feeds)))
                array = np.ascontiguousarray(feeds[name], dtype=dtype)
                self.api.set_input_shape(self.context, index, name, array.shape)
                ptr = self._buffer(name, array.nbytes)
                self.cuda.to_device(ptr, array, self.stream)
                bound.append((name, ptr, array))
        for index, (name, is_input, dtype) in enumerate(self.tensors):
            if not is_input:
                host = np.empty(self.api.output_shape(self.context, index, name), dtype=dtype)
                bound.append((name, self._buffer(name, host.nbytes), host))
        order = {name: i for i, (name, _, _) in enumerate(self.tensors)}
        return sorted(bound, key=lambda b: order[b[0]])

    def run(self, feeds: Dict[str, "np.ndarray"]) -> List["np.ndarray"]:
        """Outputs in engine order, copied back to the host."""
        bound = self._bind(feeds)
        self.api.execute(self.context, [(n, p) for n, p, _ in bound], self.stream)
        outputs = []
        for (name, is_input, _), (_, ptr, host) in zip(self.tensors, bound):
            if not is_input:
                self.cuda.to_host(host, ptr, self.stream)
                outputs.append(host)
        self.cuda.synchronize(self.stream)
        return outputs

    def output_names(self) -> List[str]:
        return [name for name, is_input, _ in self.tensors if not is_input]

    def timed(self, feeds: Dict[str, "np.ndarray"], runs: int, warmup: int) -> List[float]:
        """Milliseconds of each of `runs` executions (CUDA events around the enqueue), after `warmup`."""
        bound = self._bind(feeds)
        addresses = [(n, p) for n, p, _ in bound]
        start, end = self.cuda.event(), self.cuda.event()
        for _ in range(warmup):
            self.api.execute(self.context, addresses, self.stream)
        self.cuda.synchronize(self.stream)
        samples = []
        for _ in range(runs):
            self.cuda.record(start, self.stream)
            self.api.execute(self.context, addresses, self.stream)
            self.cuda.record(end, self.stream)
            samples.append(self.cuda.elapsed_ms(start, end))
        return samples

    def layer_times(self, feeds: Dict[str, "np.ndarray"], runs: int) -> Dict[str, float]:
        """Total ms per engine layer over `runs` executions, from TensorRT's IProfiler."""
        totals = {}  # type: Dict[str, float]
        profiler = make_profiler(self.api.trt, totals)
        self.context.profiler = profiler
        bound = self._bind(feeds)
        for _ in range(runs):
            self.api.execute(self.context, [(n, p) for n, p, _ in bound], self.stream)
            self.cuda.synchronize(self.stream)
        self.context.profiler = None
        return totals

    def layer_info(self) -> Dict[str, Any]:
        """The engine inspector's JSON (every layer's type, tactic, formats and ONNX metadata)."""
        inspector = self.engine.create_engine_inspector()
        text = inspector.get_engine_information(self.api.trt.LayerInformationFormat.JSON)
        try:
            return json.loads(text)
        except ValueError:
            return {"Layers": []}

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cuda.free(ptr)
        self.buffers = {}


def make_profiler(trt: Any, totals: Dict[str, float]) -> Any:
    """A trt.IProfiler adding each layer's reported milliseconds into `totals`."""

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            totals[layer_name] = totals.get(layer_name, 0.0) + float(ms)

    return LayerTimes()


# ------------------------------------------------------------------------------------------------ check
def read_check(out_dir: str) -> Optional[Tuple[Dict[str, Any], Dict[str, "np.ndarray"], Dict[str, "np.ndarray"]]]:
    """(criteria, inputs [N, ...] per input, fp32 reference outputs [N, ...] per output) from the host's
    device_check.npz; None when the bundle has none."""
    path = os.path.join(out_dir, CHECK_FILE)
    if not os.path.isfile(path):
        return None
    with np.load(path) as data:
        criteria = json.loads(str(data["criteria"]))
        inputs = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
        reference = {k[len("reference."):]: data[k] for k in data.files if k.startswith("reference.")}
    return criteria, inputs, reference


def sample_feeds(inputs: Dict[str, "np.ndarray"], criteria: Dict[str, Any]) -> List[Dict[str, "np.ndarray"]]:
    return [{name: inputs[name][i] for name in inputs} for i in range(int(criteria["samples"]))]


def cosine_min(reference: "np.ndarray", candidate: "np.ndarray") -> float:
    """The smallest per-sample cosine similarity; 1.0 where both are all zeros; -1 for non-finite output."""
    worst = 1.0
    for ref, got in zip(reference, candidate):
        r, g = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
        if not np.all(np.isfinite(g)):
            return -1.0
        norms = float(np.linalg.norm(r) * np.linalg.norm(g))
        worst = min(worst, float(np.dot(r, g)) / norms if norms > 0 else float(np.allclose(r, g)))
    return worst


def check_outputs(criteria: Dict[str, Any], reference: Dict[str, "np.ndarray"],
                  outputs: Dict[str, "np.ndarray"]) -> Dict[str, Any]:
    """Each output's worst-sample cosine against the fp32 reference, against the floor the host set from its
    own check (the full task-metric check runs on the host when the outputs come back)."""
    rows, ok = [], True
    for row in criteria["outputs"]:
        name = row["name"]
        got = cosine_min(reference[name], outputs[name])
        passed = got >= row["device_cosine_floor"]
        ok = ok and passed
        rows.append({"name": name, "metric": row.get("metric"), "cosine_min": round(got, 6),
                     "host_cosine_min": row.get("host_cosine_min"), "floor": row["device_cosine_floor"],
                     "ok": passed})
    return {"ok": ok, "samples": int(criteria["samples"]), "outputs": rows,
            "reference": "fp32 ONNX Runtime outputs on the host's validation samples (device_check.npz)"}


def run_check(session: Session, out_dir: str) -> Optional[Tuple[Dict[str, Any], Dict[str, "np.ndarray"]]]:
    """Run the host's validation samples; (the cosine check, the outputs stacked per name) or None."""
    found = read_check(out_dir)
    if found is None:
        return None
    criteria, inputs, reference = found
    names = session.output_names()
    per_sample = [session.run(feeds) for feeds in sample_feeds(inputs, criteria)]
    outputs = {name: np.stack([o[i] for o in per_sample]) for i, name in enumerate(names)}
    return check_outputs(criteria, reference, outputs), outputs


# ---------------------------------------------------------------------------------------------- profile
def opt_feeds(cfg: Dict[str, Any], manifest: Dict[str, Any]) -> Dict[str, "np.ndarray"]:
    """Seeded uniform [0, 1) inputs (zeros for integer inputs) at each input's optimization-profile `opt`
    shape: the same inputs the host's profile uses."""
    rng = np.random.default_rng(0) if hasattr(np.random, "default_rng") else None
    profiles = cfg["optimization_profiles"][0] if cfg["optimization_profiles"] else {}
    feeds = {}
    for spec in manifest["inputs"]:
        shape = profiles[spec["name"]]["opt"] if spec["name"] in profiles else spec["shape"]
        shape = [int(d) for d in shape]
        if not spec["dtype"].startswith("float"):
            feeds[spec["name"]] = np.zeros(shape, dtype=spec["dtype"])
        elif rng is not None:
            feeds[spec["name"]] = rng.random(shape).astype(spec["dtype"])
        else:  # numpy < 1.17 (JetPack 4.6's Python 3.6)
            feeds[spec["name"]] = np.random.RandomState(0).random_sample(shape).astype(spec["dtype"])
    return feeds


def latency_stats(samples: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {k: round(float(v), 4) for k, v in (("mean", a.mean()), ("p50", p50), ("p90", p90), ("p99", p99),
                                               ("min", a.min()), ("max", a.max()), ("std", a.std()))}


def profile(out_dir: str, runs: int = 100, warmup: int = 10, trt: Any = None, cuda: Optional[Cuda] = None,
            cache_root: str = CACHE_ROOT) -> Dict[str, Any]:
    """Build the engine if this device has none (or another device built it), check the outputs, time it and
    its layers. Writes device_profile.json and device_outputs.npz into OUT; returns the profile."""
    trt = trt if trt is not None else import_tensorrt()
    cuda = cuda or Cuda()
    cfg = read_json(os.path.join(out_dir, BUILD_FILE), "the TensorRT build settings")
    manifest = read_json(os.path.join(out_dir, "manifest.json"), "the edgec manifest")
    built = engine_for_this_device(out_dir, cfg, trt, cuda, cache_root)
    session = Session(out_dir, trt, cuda)
    try:
        checked = run_check(session, out_dir)
        feeds = opt_feeds(cfg, manifest)
        session.run(feeds)
        samples = session.timed(feeds, runs, warmup)
        layer_runs = max(5, min(runs, 30))
        rows = layer_rows(session.layer_info(), cfg.get("onnx_nodes", []), session.layer_times(feeds, layer_runs),
                          layer_runs)
    finally:
        session.close()
    result = {"schema": RUN_SCHEMA, "device": built["device"], "engine": built, "runs": runs, "warmup": warmup,
              "batch": batch_of(feeds, manifest), "latency_ms": latency_stats(samples), "samples_ms": samples,
              "timing": "CUDA events around each enqueue", "layers": rows, "layer_runs": layer_runs,
              "engine_bytes": os.path.getsize(os.path.join(out_dir, cfg["engine"])),
              "check": checked[0] if checked else None}
    if checked:
        # mypy checks a **dict against savez's keyword-only allow_pickle: bool (a false positive)
        np.savez(os.path.join(out_dir, OUTPUTS_FILE), **checked[1])  # type: ignore[arg-type]
    write_atomic(os.path.join(out_dir, PROFILE_FILE), json.dumps(result, indent=2).encode())
    return result


def batch_of(feeds: Dict[str, "np.ndarray"], manifest: Dict[str, Any]) -> int:
    first = feeds[manifest["inputs"][0]["name"]]
    return int(first.shape[0]) if first.ndim else 1


def engine_for_this_device(out_dir: str, cfg: Dict[str, Any], trt: Any, cuda: Cuda, cache_root: str) -> Dict[str, Any]:
    """engine.json of an engine built on this device: the existing one, or a fresh build when there is none or
    another device (GPU, CUDA, TensorRT) built it."""
    info_path = os.path.join(out_dir, ENGINE_INFO)
    if os.path.isfile(os.path.join(out_dir, cfg["engine"])) and os.path.isfile(info_path):
        info = read_json(info_path, "the engine's build record")
        if info.get("device_key") == device_key(device_facts(trt, cuda)):
            return info
    return build_engine(out_dir, trt, cuda, cache_root)


# ---------------------------------------------------------------------------------------------- trtexec
def find_trtexec() -> str:
    """trtexec on PATH, or where JetPack and NVIDIA's containers put it."""
    for path in [os.environ.get("EDGEC_TRTEXEC", ""), "trtexec", "/usr/src/tensorrt/bin/trtexec",
                 "/usr/local/tensorrt/bin/trtexec"]:
        if path and (os.path.isfile(path) or _on_path(path)):
            return path
    raise DeviceError("trtexec was not found (looked on PATH and in /usr/src/tensorrt/bin): JetPack ships it in "
                      "/usr/src/tensorrt/bin; set EDGEC_TRTEXEC=/path/to/trtexec.")


def _on_path(name: str) -> bool:
    return any(os.access(os.path.join(p, name), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep) if p)


def trtexec_profile(out_dir: str, runs: int, warmup_ms: int = 200, run: Callable[..., Any] = subprocess.run
                    ) -> Dict[str, Any]:
    """Run trtexec on OUT's engine with per-layer profiling and read its JSON back (`from_trtexec_json`)."""
    cfg = read_json(os.path.join(out_dir, BUILD_FILE), "the TensorRT build settings")
    engine = os.path.join(out_dir, cfg["engine"])
    if not os.path.isfile(engine):
        raise BundleError("{} does not exist: build it first (`edgec build OUT`).".format(engine))
    files = {k: os.path.join(out_dir, "trtexec." + k + ".json") for k in ("profile", "layers", "times")}
    argv = [find_trtexec(), "--loadEngine=" + engine, "--iterations={}".format(runs), "--warmUp={}".format(warmup_ms),
            "--exportProfile=" + files["profile"], "--exportLayerInfo=" + files["layers"],
            "--exportTimes=" + files["times"], "--profilingVerbosity=detailed", "--separateProfileRun"]
    proc = run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        tail = (proc.stdout or "").strip().splitlines()[-3:]
        raise DeviceError("trtexec failed (exit {}): {}".format(proc.returncode, " | ".join(tail)))
    return from_trtexec_json(files["profile"], files["layers"], cfg.get("onnx_nodes", []), files["times"])


def from_trtexec_json(profile_path: str, layers_path: Optional[str], onnx_order: Sequence[str],
                      times_path: Optional[str] = None) -> Dict[str, Any]:
    """Rows and latency from trtexec's JSON files: latency per inference from --exportTimes (computeMs) when
    given, else the sum of the layers' averageMs (one number: trtexec's profile keeps no per-run times)."""
    profile_json = read_json(profile_path, "trtexec --exportProfile output")
    layers_json = read_json(layers_path, "trtexec --exportLayerInfo output") if layers_path else None
    rows = trtexec_rows(profile_json, layers_json, list(onnx_order))
    if not rows:
        raise BundleError("{} has no layer rows: is it trtexec's --exportProfile output?".format(profile_path))
    count = next((int(item["count"]) for item in profile_json if isinstance(item, dict) and "count" in item), 1)
    total = sum(float(r["time_ms"] or 0.0) for r in rows)
    result = {"schema": RUN_SCHEMA, "layers": rows, "runs": count, "samples_ms": [total],
              "latency_ms": latency_stats([total]),
              "timing": "sum of the layers' averageMs in trtexec --exportProfile"}  # type: Dict[str, Any]
    if times_path and os.path.isfile(times_path):
        times = read_json(times_path, "trtexec --exportTimes output")
        samples = [float(t["computeMs"]) for t in times if isinstance(t, dict) and "computeMs" in t]
        if samples:
            result.update(latency_ms=latency_stats(samples), samples_ms=samples, runs=len(samples),
                          timing="trtexec --exportTimes computeMs (GPU compute per inference)")
    return result


# ------------------------------------------------------------------------------------------------ CLI
def versions(out_dir: str) -> Dict[str, Any]:
    """This device's facts, the bundle's requirements, and the verdict."""
    trt = import_tensorrt()
    facts = device_facts(trt, Cuda())
    cfg = read_json(os.path.join(out_dir, BUILD_FILE), "the TensorRT build settings")
    refusals, warnings = requirement_problems(cfg, facts)
    return {"device": facts, "requires": cfg.get("requires"), "refusals": refusals, "warnings": warnings}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 edgec_trt.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="edgec output folder (model.onnx, build.json, manifest.json)")
    p.add_argument("action", choices=["build", "profile", "versions"])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--trtexec", action="store_true", help="profile with trtexec instead of the Python API")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be at least 1 and --warmup at least 0")
    if np is None:
        print("edgec_trt: error: numpy is not installed for {} (Python {}): `sudo apt install python3-numpy` "
              "(JetPack's TensorRT bindings need it too)".format(sys.executable, platform.python_version()),
              file=sys.stderr)
        return DeviceError.exit_code
    try:
        if args.action == "build":
            result = build_engine(args.out)
        elif args.action == "versions":
            result = versions(args.out)
        elif args.trtexec:
            result = trtexec_profile(args.out, args.runs)
        else:
            result = profile(args.out, args.runs, args.warmup)
    except (DeviceError, BundleError, CheckFailed) as e:
        print("edgec_trt: error: {}".format(e), file=sys.stderr)
        return e.exit_code
    print(json.dumps(result, indent=None if args.json else 2))
    check = result.get("check") if isinstance(result, dict) else None
    return CheckFailed.exit_code if check and not check["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
