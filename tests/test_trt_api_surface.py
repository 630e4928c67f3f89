"""Static and API-surface checks of the standalone TensorRT runner (edgec/device/trt_runner.py + trt_layers.py),
which runs on Jetsons with nothing but TensorRT's bindings, numpy and libcudart, on Python 3.6+, and where TensorRT
itself cannot be installed here. What stands in for it, all from PyPI and cached by `make test` in
~/.cache/edgec/tensorrt-api (no network during the tests; a test skips, naming `make test`, if a file is missing):

- tensorrt-stubs 10.13.0.35.1: TensorRT 10.13's Python API as .pyi, for mypy;
- the real binding binaries tensorrt-bindings 8.6.1 (standing in for TensorRT 8.x), tensorrt-cu12-bindings 10.3.0
  (JetPack 6) and 11.4.0.106: pybind11 modules whose string tables hold the Python names of each release's API.

libcudart is real too (the CUDA toolkit's, or the nvidia-cuda-runtime-cu12 wheel of the dev extra).
"""
import ast
import ctypes
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Set

import pytest

from edgec.device import trt_runner

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "edgec" / "device" / "trt_runner.py"
LAYERS = ROOT / "edgec" / "device" / "trt_layers.py"
API_CACHE = Path.home() / ".cache" / "edgec" / "tensorrt-api"
STUBS_WHEEL = "tensorrt_stubs-10.13.0.35.1-*.whl"
BINDINGS = {"8.6.1": "tensorrt_bindings-8.6.1-*.whl", "10.3.0": "tensorrt_cu12_bindings-10.3.0-*.whl",
            "11.4.0.106": "tensorrt_cu12_bindings-11.4.0.106-*.whl"}
# The stubs' own generated code has errors mypy would report (e.g. `bool` shadowed by trt.bool, a DataType);
# they are not the runner's, so mypy ignores errors inside the stub modules, never in the runner.
MYPY_INI = """[mypy]
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*,tensorrt_libs]
ignore_errors = True
"""
# The TensorRT-8-only attributes TrtApi reaches behind `# type: ignore[attr-defined]` (absent from 10.x).
TRT8_ONLY = {"max_workspace_size", "num_bindings", "get_binding_name", "binding_is_input", "get_binding_dtype",
             "set_binding_shape", "get_binding_shape", "execute_async_v2"}


def _cached(pattern: str) -> Path:
    found = sorted(API_CACHE.glob(pattern))
    if not found:
        pytest.skip("{} is not in {}: run `make test` (it downloads TensorRT's stubs and binding wheels from PyPI "
                    "once)".format(pattern, API_CACHE))
    return found[-1]


def _run(argv: List[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=240, **kw)


# ------------------------------------------------------------------------------------------------ vermin
def _vermin(*paths: str) -> subprocess.CompletedProcess:
    pytest.importorskip("vermin", reason="vermin is not installed: `make test` installs the dev extra")
    code = "import sys; from vermin import main; sys.argv[0] = 'vermin'; sys.exit(main())"
    return _run([sys.executable, "-c", code, "-t=3.6-", "--violations", "--no-tips"] + list(paths))


def test_runner_is_python36_compatible(tmp_path: Path) -> None:
    """vermin finds nothing in trt_runner.py / trt_layers.py that needs a Python newer than 3.6 (JetPack 4.6's
    system Python), and the same check fails on a file with a walrus operator (3.8): the check can fail."""
    ok = _vermin(str(RUNNER), str(LAYERS))
    assert ok.returncode == 0, ok.stdout
    bad = tmp_path / "walrus.py"
    bad.write_text("import re\nif (m := re.match('a', 'a')):\n    print(m)\n")
    failed = _vermin(str(bad))
    assert failed.returncode != 0 and "3.8" in failed.stdout, failed.stdout


# -------------------------------------------------------------------------------------------------- mypy
def _patch_stub_def(line: str) -> str:
    """A generated `def` line that is not valid Python, made valid: a parameter named `in` (a keyword) becomes
    `in_`, and a parameter without a default after one with a default gets `= ...`. Valid lines are kept."""
    m = re.match(r"^(\s*def \w+\()(.*)(\)(?: -> .*)?:\s*)$", line)
    if not m:
        return line
    try:
        ast.parse(line.strip() + "\n    ...")
        return line
    except SyntaxError:
        pass
    params, depth, cur = [], 0, ""
    for ch in m.group(2):  # split on top-level commas only (types such as dict[str, int] have their own)
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            params.append(cur)
            cur = ""
        else:
            cur += ch
    params.append(cur)
    fixed, defaulted = [], False
    for p in params:
        p = re.sub(r"^(\s*)in(?=\s*:)", r"\1in_", p)
        if "=" in p and not p.strip().startswith("*"):
            defaulted = True
        elif defaulted and ":" in p and not p.strip().startswith("*"):
            p += " = ..."
        fixed.append(p)
    return m.group(1) + ",".join(fixed) + m.group(3)


@pytest.fixture(scope="session")
def trt_stubs(tmp_path_factory) -> Path:
    """tensorrt-stubs 10.13 extracted to a temp folder (never into site-packages: its `tensorrt/` would shadow a
    real TensorRT as an empty package), patched so mypy can read it: the generated `in` parameters renamed `in_`,
    defaults added where a required parameter follows a defaulted one (e.g. add_scale_nd's channel_axis), and an
    empty stub for `tensorrt_libs`, which the stubs' tensorrt/__init__.pyi imports."""
    wheel = _cached(STUBS_WHEEL)
    out = tmp_path_factory.mktemp("tensorrt-stubs")
    with zipfile.ZipFile(str(wheel)) as z:
        z.extractall(str(out))
    patched = 0
    for pyi in out.rglob("*.pyi"):
        lines = pyi.read_text().split("\n")
        fixed = [_patch_stub_def(line) for line in lines]
        patched += sum(a != b for a, b in zip(lines, fixed))
        text = "\n".join(fixed)
        ast.parse(text)  # every stub is valid Python now
        pyi.write_text(text)
    assert patched > 0, "the stubs no longer need patching: drop _patch_stub_def"
    (out / "tensorrt_libs").mkdir(exist_ok=True)
    (out / "tensorrt_libs" / "__init__.pyi").write_text("")
    shutil.rmtree(str(out / "tensorrt_stubs"), ignore_errors=True)  # its __init__.py only re-exports tensorrt
    return out


def _mypy(stubs: Path, tmp: Path, *paths: str) -> subprocess.CompletedProcess:
    pytest.importorskip("mypy", reason="mypy is not installed: `make test` installs the dev extra")
    ini = tmp / "mypy.ini"
    ini.write_text(MYPY_INI)
    env = dict(os.environ, MYPYPATH=str(stubs))
    # --python-version 3.10: the oldest mypy 2.x accepts; the runner's 3.6 syntax is vermin's job.
    # No --ignore-missing-imports: `import tensorrt` must resolve (to the stubs), or mypy reports it.
    return _run([sys.executable, "-m", "mypy", "--config-file", str(ini), "--python-version", "3.10",
                 "--follow-imports=silent", "--warn-unused-ignores", "--show-error-codes", "--no-color-output",
                 "--cache-dir", str(stubs.parent / "mypy-cache")] + list(paths), env=env, cwd=str(tmp))


def test_mypy_runner_against_tensorrt10_stubs(trt_stubs: Path, tmp_path: Path) -> None:
    """mypy reads the runner with TensorRT 10.13's stubs and finds no error. TrtApi's version-dependent methods
    take tensorrt.ICudaEngine / IExecutionContext / IBuilderConfig (a TYPE_CHECKING import), so their calls are
    checked against TensorRT 10's API; --warn-unused-ignores proves every `# type: ignore` is needed, in
    particular that each TensorRT-8-only call really is absent from TensorRT 10 (and an unused one, e.g. on
    `import tensorrt`, would show the stubs were not found)."""
    result = _mypy(trt_stubs, tmp_path, str(RUNNER), str(LAYERS))
    assert result.returncode == 0 and "Success: no issues found in 2 source files" in result.stdout, result.stdout
    ignored = set()
    for line in RUNNER.read_text().splitlines():
        if "# type: ignore[attr-defined]" in line:
            ignored |= set(re.findall(r"\.(\w+)", line.split("#")[0])) & TRT8_ONLY
    assert ignored == TRT8_ONLY, "the TensorRT-8-only calls behind ignores changed: update TRT8_ONLY"


def test_mypy_negative_controls(trt_stubs: Path, tmp_path: Path) -> None:
    """The stubs are really in use and the ignores really hide something: a misspelled TensorRT method and a
    wrong argument type are mypy errors, and the runner with its `# type: ignore[attr-defined]` removed has
    exactly the TensorRT-8-only attributes reported missing on TensorRT 10's ICudaEngine/IExecutionContext/
    IBuilderConfig."""
    pkg = tmp_path / "copy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(str(LAYERS), str(pkg / "trt_layers.py"))
    (pkg / "trt_runner.py").write_text(RUNNER.read_text().replace("  # type: ignore[attr-defined]", ""))
    (tmp_path / "misspelled.py").write_text(
        "import tensorrt as trt\n"
        "builder = trt.Builder(trt.Logger())\n"
        "builder.create_netwrk(0)\n"
        "builder.create_network('explicit')\n")
    result = _mypy(trt_stubs, tmp_path, "misspelled.py", "copy")
    out = result.stdout
    assert result.returncode == 1, out
    assert re.search(r'misspelled\.py:3: error: "Builder" has no attribute "create_netwrk"', out), out
    assert re.search(r'misspelled\.py:4: error: Argument 1 to "create_network" of "Builder" has incompatible '
                     r'type "str"; expected "int"', out), out
    missing = set(re.findall(r'copy/trt_runner\.py:\d+: error: "(?:ICudaEngine|IExecutionContext|IBuilderConfig)"'
                             r' has no attribute "(\w+)"(?:; maybe [^\n]*)?  \[attr-defined\]', out))
    assert missing == TRT8_ONLY, out
    copy_errors = re.findall(r"^copy/trt_runner\.py:\d+: error: .*$", out, re.M)
    assert all(e.endswith("[attr-defined]") for e in copy_errors), out


# ----------------------------------------------------------------------------------------- real bindings
class Strings(object):
    """The identifier-like NUL-terminated strings of a binding .so (pybind11 keeps every Python name as one),
    plus the names its Python files define. The linker merges a string into the tail of a longer one
    ("Logger" into "ILogger"), so `has` also accepts a name found only as such a suffix: presence is strong
    evidence either way, absence (`lacks`: not even as a suffix) is weaker, so it is only asserted of long
    names."""

    def __init__(self, wheel: Path) -> None:
        with zipfile.ZipFile(str(wheel)) as z:
            self.data = z.read(next(n for n in z.namelist() if n.endswith("tensorrt_bindings/tensorrt.so")))
            init = z.read(next(n for n in z.namelist() if n.endswith("tensorrt_bindings/__init__.py"))).decode()
        self.exact = set(m.decode() for m in re.findall(rb"(?<=\0)[A-Za-z_][A-Za-z0-9_]*(?=\0)", self.data))
        self.exact |= set(re.findall(r"^(\w+)\s*=", init, re.M)) | set(re.findall(r"^def (\w+)", init, re.M))
        self.version = re.search(r"^__version__\s*=\s*[\"']([^\"']+)", init, re.M).group(1)

    def has(self, name: str) -> bool:
        return name in self.exact or re.search(b"[A-Za-z0-9_]" + name.encode() + b"\0", self.data) is not None

    def lacks(self, name: str) -> bool:
        return name not in self.exact and name.encode() + b"\0" not in self.data


@pytest.fixture(scope="module")
def bindings() -> Dict[str, Strings]:
    return {version: Strings(_cached(pattern)) for version, pattern in BINDINGS.items()}


COMMON = ["__version__", "Builder", "Logger", "WARNING", "Runtime", "OnnxParser", "create_network",
          "create_builder_config", "create_optimization_profile", "set_shape", "add_optimization_profile",
          "build_serialized_network", "parse_from_file", "num_errors", "get_error", "create_timing_cache",
          "set_timing_cache", "ignore_mismatch", "get_timing_cache", "serialize", "deserialize_cuda_engine",
          "create_execution_context", "create_engine_inspector", "get_engine_information", "IProfiler",
          "report_layer_time", "profiler", "ProfilingVerbosity", "profiling_verbosity", "DETAILED", "BuilderFlag",
          "set_flag", "set_memory_pool_limit", "MemoryPoolType", "WORKSPACE", "LayerInformationFormat", "JSON",
          "NetworkDefinitionCreationFlag", "TensorIOMode", "INPUT"]
NAMED_TENSORS = ["num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "set_input_shape",
                 "get_tensor_shape", "set_tensor_address", "execute_async_v3"]
BINDING_API = ["num_bindings", "get_binding_name", "binding_is_input", "get_binding_dtype", "set_binding_shape",
               "get_binding_shape", "execute_async_v2", "max_workspace_size"]
DLA = ["DLA_core", "can_run_on_DLA", "default_device_type", "num_DLA_cores", "GPU_FALLBACK", "DeviceType", "DLA",
       "num_layers", "get_layer", "name"]
# What the runner uses on each generation, from TrtApi: the binding API and EXPLICIT_BATCH below 8.5 / 10
# (8.6.1 stands in for 8.x, so both API families must be there), STRONGLY_TYPED from 10, DLA up to 10.7.
USES = {"8.6.1": COMMON + NAMED_TENSORS + BINDING_API + ["EXPLICIT_BATCH"] + DLA,
        "10.3.0": COMMON + NAMED_TENSORS + ["STRONGLY_TYPED"] + DLA,
        "11.4.0.106": COMMON + NAMED_TENSORS + ["STRONGLY_TYPED"]}


@pytest.mark.parametrize("version", sorted(USES))
def test_bindings_have_what_the_runner_uses(bindings: Dict[str, Strings], version: str) -> None:
    """Every TensorRT name the runner uses on this generation (hand list from TrtApi and the build/run code)
    is in that release's real binding binary, and the wheel is the release it claims to be."""
    b = bindings[version]
    assert b.version == version
    absent = [n for n in USES[version] if not b.has(n)]
    assert not absent, "TensorRT {} bindings lack {}".format(version, absent)


def test_version_facts_trtapi_relies_on(bindings: Dict[str, Strings]) -> None:
    """The release differences TrtApi encodes, where the binaries can show them: execute_async_v2 and the rest of
    the binding API exist in 8.6 and are gone in 10.3 and 11.4 (long names: suffix merging cannot hide them);
    STRONGLY_TYPED is absent from 8.6 (so TrtApi.network_flags refuses strongly typed bundles there) and
    present from 10.3; EXPLICIT_BATCH still exists in 10.3 (the runner leaves it out from 10 on)."""
    v8, v10, v11 = bindings["8.6.1"], bindings["10.3.0"], bindings["11.4.0.106"]
    for name in ["execute_async_v2", "get_binding_shape", "set_binding_shape", "max_workspace_size"]:
        assert v8.has(name) and v10.lacks(name) and v11.lacks(name), name
    assert v8.lacks("STRONGLY_TYPED") and b"STRONGLY_TYPED" not in v8.data
    assert v10.has("STRONGLY_TYPED") and v11.has("STRONGLY_TYPED")
    assert v10.has("EXPLICIT_BATCH")


def _stub_vocabulary(stubs: Path) -> Set[str]:
    names = set()  # type: Set[str]
    for node in ast.walk(ast.parse((stubs / "tensorrt_bindings" / "tensorrt.pyi").read_text())):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names - {n for n in names if n.startswith("__") and n != "__version__"}


def test_every_trt_attribute_of_the_runner_is_in_real_bindings(trt_stubs: Path,
                                                                bindings: Dict[str, Strings]) -> None:
    """Beyond the hand lists: every attribute name trt_runner.py accesses anywhere (ast.Attribute nodes, and the
    constant names given to getattr/hasattr) that TensorRT 10.13's stubs define as a class, method, property or
    enum member is in at least one real binding binary (8.6.1, 10.3.0, 11.4.0.106). Names the stubs do not
    know are numpy/ctypes/stdlib attributes or 8.x-only ones (checked by the hand lists); a TensorRT name
    misspelled in the runner, or one that exists in neither release's binary, fails here."""
    tree = ast.parse(RUNNER.read_text())
    used = set()  # type: Set[str]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            used.add(node.args[1].value)
    trt_names = used & _stub_vocabulary(trt_stubs)
    assert {"create_builder_config", "set_memory_pool_limit", "execute_async_v3", "profiler"} <= trt_names
    nowhere = sorted(n for n in trt_names if not any(b.has(n) for b in bindings.values()))
    assert not nowhere, "in the 10.13 stubs but in no real binding: {}".format(nowhere)


# ------------------------------------------------------------------------------------------------- CUDA
def _cuda_calls() -> Set[str]:
    return set(re.findall(r"self\.lib\.(cuda\w+)", RUNNER.read_text()))


def test_cudart_real_library() -> None:
    """trt_runner.Cuda() loads a real libcudart here through ctypes; cudaRuntimeGetVersion works without a GPU;
    every cuda* function the runner calls (self.lib.cuda...) exists in that library, and one of the
    cudaGetDeviceProperties(_v2) pair device_name() picks from; on a machine without a GPU/driver,
    device_count() raises DeviceError naming the CUDA call and its error."""
    try:
        cuda = trt_runner.Cuda()
    except trt_runner.DeviceError as e:
        pytest.skip("no libcudart here ({}): `make test` installs nvidia-cuda-runtime-cu12 (dev extra)".format(e))
    assert cuda.runtime_version() > 0
    calls = _cuda_calls()
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaEventElapsedTime", "cudaGetErrorString"} <= calls
    missing = sorted(c for c in calls if not hasattr(cuda.lib, c))
    assert not missing, "{} lacks {}".format(cuda.lib._name, missing)
    assert hasattr(cuda.lib, "cudaGetDeviceProperties_v2") or hasattr(cuda.lib, "cudaGetDeviceProperties")
    try:
        count = cuda.device_count()
    except trt_runner.DeviceError as e:
        assert re.search(r"CUDA cudaGetDeviceCount failed with error \d+ \(.+\)", str(e)), str(e)
    else:
        pytest.skip("a GPU is present ({} devices): the no-GPU error path is not exercised".format(count))


def test_cudart_candidates_every_found_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGEC_CUDART comes first among the candidates, and load_cudart() loads it; every other libcudart the
    search finds on this machine (CUDA toolkit, the pip wheel) also has all the functions the runner calls."""
    found = [p for p in trt_runner.cudart_candidates() if os.path.isabs(p) and os.path.isfile(p)]
    if not found:
        pytest.skip("no libcudart file here: `make test` installs nvidia-cuda-runtime-cu12 (dev extra)")
    monkeypatch.setenv("EDGEC_CUDART", found[-1])
    assert trt_runner.cudart_candidates()[0] == found[-1]
    assert trt_runner.load_cudart()._name == found[-1]
    monkeypatch.setenv("EDGEC_CUDART", str(tmp_path / "nowhere" / "libcudart.so"))
    assert trt_runner.cudart_candidates()[0] == str(tmp_path / "nowhere" / "libcudart.so")
    for path in sorted(set(os.path.realpath(p) for p in found)):
        lib = ctypes.CDLL(path)
        missing = sorted(c for c in _cuda_calls() if not hasattr(lib, c))
        assert not missing, "{} lacks {}".format(path, missing)
