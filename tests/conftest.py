"""Hardware and SDK by markers: a test marked requires_X is skipped, with the install hint, where X is missing."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

# The suite itself sends nothing: ONNX Runtime imported by a test (or its children) has telemetry off, and
# OpenVINO/NNCF calls made by tests directly are declined as edgec's own are (tests/test_no_network.py
# unsets the switch for the processes it watches).
os.environ["ORT_DISABLE_TELEMETRY"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    from edgec.isolation import telemetry_declined

    session = contextlib.ExitStack()
    session.enter_context(telemetry_declined())
    config.add_cleanup(session.close)

_REQUIREMENTS = {
    "requires_torch": (lambda: importlib.util.find_spec("torch") is not None,
                       "PyTorch is not installed: pip install 'edgec[torch]'"),
    "requires_openvino": (lambda: importlib.util.find_spec("openvino") is not None,
                          "OpenVINO is not installed: pip install 'edgec[openvino]'"),
    "requires_tvm": (lambda: importlib.util.find_spec("tvm") is not None,
                     "Apache TVM is not installed: pip install 'edgec[tvm]'"),
    "requires_tensorrt": (lambda: _has_tensorrt_api(),
                          "TensorRT is not installed (it ships with JetPack on a Jetson, or from NVIDIA's index)"),
    "requires_strace": (lambda: shutil.which("strace") is not None,
                        "strace watches for network connections in native code: apt-get install strace"),
    "requires_arm_board": (lambda: shutil.which("qemu-aarch64-static") is not None,
                           "the emulated ARM board needs qemu-user-static and an arm64 userland: edgec board setup"),
    "requires_zoo": (lambda: _zoo_subset_cached(),
                     "the zoo's CI subset is not fetched: python -m benchmarks.zoo --fetch --ci (make test does it)"),
}


def _zoo_subset_cached() -> bool:
    from benchmarks import zoo_models

    return all(m.cached().is_file() for m in zoo_models.ci_subset())


def _has_tensorrt_api() -> bool:
    """An importable `tensorrt` may be an empty namespace package (tensorrt-stubs): look for its API."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import tensorrt

    return hasattr(tensorrt, "Builder")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    available = {name: check() for name, (check, _) in _REQUIREMENTS.items()}
    for item in items:
        for name, (_, hint) in _REQUIREMENTS.items():
            if name in item.keywords and not available[name]:
                item.add_marker(pytest.mark.skip(reason=hint))


@pytest.fixture(autouse=True)
def private_build_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets an empty build cache of its own (and never touches the user's)."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("EDGEC_CACHE_DIR", str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    from models import tiny_conv_onnx

    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_conv_onnx().SerializeToString())
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    import sys

    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and sum(fuzz.OUTCOMES.values()):
        terminalreporter.write_line(fuzz.pytest_report_fuzz())
