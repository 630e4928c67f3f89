"""TVM backend: x86 build end to end, aarch64 cross-compile, int8 refusal, missing cross compiler."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgec
import edgec.device.tvm_runner
from edgec import BackendUnavailable, ConfigError
from edgec.backends.tvm import TVMBackend
from edgec.device.tvm_runner import elf_machine

pytestmark = pytest.mark.requires_tvm

_CROSS_CC = "aarch64-linux-gnu-gcc"


@pytest.fixture(scope="module")
def x86_build(tmp_path_factory):
    from models import tiny_conv_onnx

    folder = tmp_path_factory.mktemp("tvm")
    path = folder / "tiny.onnx"
    path.write_bytes(tiny_conv_onnx().SerializeToString())
    return edgec.compile(path, "x86-tvm", output_dir=folder / "out", profile_runs=20, progress=False)


def test_x86_build_matches_onnx_runtime_and_profiles(x86_build) -> None:
    acc = x86_build.report["accuracy"]
    assert acc["ok"] is True and acc["max_abs_error"] < 1e-4
    prof = x86_build.report["profile"]
    assert prof["backend"] == "tvm" and prof["latency_ms"]["p50"] > 0
    files = {f["path"] for f in x86_build.manifest["files"]}
    assert {"model.so", "edgec_runtime.py", "model.onnx", "report.json"} <= files
    assert elf_machine(x86_build.output_dir / "model.so") == "x86_64"
    runner = (x86_build.output_dir / "edgec_runtime.py").read_bytes()
    assert runner == Path(edgec.device.tvm_runner.__file__).read_bytes()  # the device module, copied as it is
    cfg = x86_build.manifest["artifact"]["config"]
    assert cfg["tvm_target"]["kind"] == "llvm" and cfg["inputs"][0]["name"] == "x"
    assert "conv2d-nhwc" in cfg["kernels"].values()  # the convs got edgec's schedule, not the unscheduled default


def test_profile_rows_are_kernels_mapped_to_onnx_nodes(x86_build) -> None:
    prof = x86_build.profile(runs=10)
    assert prof.layers and all(r.time_ms >= 0 for r in prof.layers)
    convs = [r for r in prof.layers if "conv2d" in r.op]
    assert len(convs) == 2
    # A fused kernel names every ONNX node it computes: conv, residual add and ReLUs.
    assert sorted(tuple(r.onnx_nodes) for r in convs) == [("conv1", "relu1"), ("conv2", "add", "relu2")]
    assert prof.mapped_share("onnx_nodes") > 0.5
    assert "conv2d" in prof.table()
    with pytest.raises(ConfigError, match="not a device address"):
        x86_build.profile(device="rpc://127.0.0.1")  # on-board profiling over RPC: tests/test_arm_board.py


def test_standalone_runner_prints_json(x86_build) -> None:
    out = x86_build.output_dir
    result = subprocess.run([sys.executable, str(out / "edgec_runtime.py"), str(out), "--runs", "5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["runs"] == 5 and data["latency_ms"]["p50"] > 0
    assert data["outputs"] == [{"name": "logits", "shape": [1, 5], "dtype": "float32"}]
    assert any("conv2d" in k["kernel"] for k in data["kernels"])


def test_runtime_matches_the_runner(x86_build) -> None:
    from edgec.device.tvm_runner import Session, seeded_feeds

    session = Session(x86_build.output_dir)
    feeds = seeded_feeds(x86_build.manifest["inputs"])
    runner = TVMBackend().runner(x86_build.output_dir, x86_build.manifest)
    np.testing.assert_allclose(session.run(feeds)[0], runner(feeds)[0], rtol=0, atol=0)


def test_cross_compile_for_rpi4_gives_an_aarch64_library(tmp_path: Path, tiny_onnx: Path) -> None:
    if shutil.which(_CROSS_CC) is None:
        pytest.skip(f"{_CROSS_CC} is not installed: apt-get install -y gcc-aarch64-linux-gnu")
    build = edgec.compile(tiny_onnx, "rpi4", output_dir=tmp_path / "o", progress=False)
    assert elf_machine(tmp_path / "o" / "model.so") == "aarch64"
    assert "skipped" in build.report["accuracy"] and build.report["profile"] is None
    cfg = build.manifest["artifact"]["config"]
    assert cfg["tvm_target"]["mcpu"] == "cortex-a72" and cfg["cc"] == _CROSS_CC
    assert build.manifest["artifact"]["layer_map"]  # kernels -> ONNX nodes, ready for on-board profiling
    with pytest.raises(ConfigError, match="built for rpi4"):
        edgec.profile(tmp_path / "o", write=False)


def test_int8_on_tvm_is_refused_with_the_reason(tmp_path: Path, tiny_onnx: Path) -> None:
    reason = TVMBackend().precision_refusal(edgec.load_target("rpi4"), "int8")
    assert "fake-quant" in reason and "--precision fp32" in reason
    samples = {"x": np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)}
    with pytest.raises(ConfigError, match="fake-quant") as e:
        edgec.compile(tiny_onnx, "rpi4", "int8", calibration=samples, output_dir=tmp_path / "o", progress=False)
    assert "--precision fp32" in str(e.value)
    assert not (tmp_path / "o").exists()


def test_missing_cross_compiler_is_backend_unavailable(tmp_path: Path, tiny_onnx: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(BackendUnavailable, match="apt-get install -y gcc-aarch64-linux-gnu"):
        edgec.compile(tiny_onnx, "rpi4", output_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
