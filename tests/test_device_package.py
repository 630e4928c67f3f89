"""edgec/device/ runs on boards: it imports nothing from edgec's host side, only the standard library, numpy
and the board's runtime, and every file there is one the host copies to the board."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import edgec.device

DEVICE = Path(edgec.device.__file__).parent
# the board's runtimes, numpy, and the files copied beside them (edgec_runtime.py, edgec_trt_layers.py)
ALLOWED = {"numpy", "tvm", "tvm_ffi", "tensorrt", "edgec_runtime", "edgec_trt_layers"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module and (DEVICE / f"{node.module}.py").is_file():
                continue  # a sibling device module: it travels with this one
            names.add("." if node.level else node.module.split(".")[0])
    return names


def test_device_code_imports_only_the_standard_library_numpy_and_the_runtime() -> None:
    files = sorted(p for p in DEVICE.glob("*.py") if p.name != "__init__.py")
    assert {p.name for p in files} == {"tvm_runner.py", "board_server.py", "trt_layers.py", "trt_runner.py"}
    for path in files:
        foreign = {n for n in _imports(path) if n not in sys.stdlib_module_names and n not in ALLOWED}
        assert not foreign, f"{path.name} imports {sorted(foreign)}: device code may not import the host side"

