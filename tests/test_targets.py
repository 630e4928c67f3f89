from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec import ConfigError, list_targets, load_target
from edgec.target import TARGETS_DIR

REQUIRED = {"intel-cpu", "jetson-orin-nano", "jetson-agx-orin", "jetson-nano", "rpi4", "rpi5", "rk3588", "arm64"}


def test_every_required_target_exists_and_parses() -> None:
    targets = {t.name: t for t in list_targets()}
    assert REQUIRED <= set(targets)
    for t in targets.values():
        assert t.backend in ("openvino", "tvm", "tensorrt")
        assert t.default_precision in t.precisions


def _build_json(tmp_path: Path, model: Path, target: str, precision: str, **kw) -> dict:
    out = tmp_path / f"{Path(target).stem}-{precision}"
    edgec.compile(model, target, precision, output_dir=out, progress=False, **kw)
    return {**json.loads((out / "build.json").read_text()),
            "target": json.loads((out / "manifest.json").read_text())["target"]["name"]}


def test_the_target_file_drives_the_tensorrt_build(tmp_path: Path, tiny_onnx: Path) -> None:
    """`jetson` resolves to jetson-orin-nano and build.json takes the software stack, workspace and TensorRT flags
    from its file; an edited copy of the file (TensorRT 8.5: weakly typed, the FP16 flag) changes exactly those."""
    stock = _build_json(tmp_path, tiny_onnx, "jetson", "fp16")
    assert stock["target"] == "jetson-orin-nano"
    assert (stock["requires"]["compute_capability"], stock["workspace_mb"], stock["builder_flags"]) == ("8.7", 2048, [])
    assert stock["strongly_typed"] is True  # TensorRT 10.3: fp16 is in the graph
    text = (TARGETS_DIR / "jetson-orin-nano.toml").read_text()
    edited = tmp_path / "orin-edited.toml"
    edited.write_text(text.replace('name = "jetson-orin-nano"', 'name = "orin-edited"')
                      .replace('compute_capability = "8.7"', 'compute_capability = "7.2"')
                      .replace("workspace_mb = 2048", "workspace_mb = 512")
                      .replace('tensorrt_version = "10.3"', 'tensorrt_version = "8.5"'))
    changed = _build_json(tmp_path, tiny_onnx, str(edited), "fp16")
    assert changed["target"] == "orin-edited"
    assert (changed["requires"]["compute_capability"], changed["requires"]["tensorrt"]) == ("7.2", "8.5")
    assert changed["workspace_mb"] == 512
    assert changed["strongly_typed"] is False and changed["builder_flags"] == ["FP16"]
    assert {k for k in changed if changed[k] != stock[k]} == {
        "target", "requires", "workspace_mb", "strongly_typed", "builder_flags"}


def test_the_target_files_precisions_gate_the_build(tmp_path: Path, tiny_onnx: Path) -> None:
    """jetson-nano's file leaves out int8, so int8 is refused before any work; the same file with int8 listed builds
    an int8 engine config."""
    calibration = {"x": np.random.default_rng(0).random((32, 3, 16, 16), dtype=np.float32)}
    with pytest.raises(ConfigError, match="jetson-nano cannot run int8: it supports fp32, fp16"):
        edgec.compile(tiny_onnx, "nano", "int8", calibration=calibration, output_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    text = (TARGETS_DIR / "jetson-nano.toml").read_text()
    with_int8 = tmp_path / "nano-int8.toml"
    with_int8.write_text(text.replace('precisions = ["fp32", "fp16"]', 'precisions = ["fp32", "fp16", "int8"]'))
    built = _build_json(tmp_path, tiny_onnx, str(with_int8), "int8", calibration=calibration)
    # TensorRT 8.2: the INT8 flag only, so float layers stay fp32 as ONNX Runtime checked them
    assert built["precision"] == "int8" and built["builder_flags"] == ["INT8"]
    assert built["requires"]["compute_capability"] == "5.3"


def test_unknown_target_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_target("jetsn")
    msg = str(e.value)
    assert "Target 'jetsn' not found" in msg and "Did you mean 'jetson'" in msg and "intel-cpu" in msg


def test_target_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "my-board.toml"
    path.write_text('name = "my-board"\nbackend = "tvm"\narch = "aarch64"\nprecisions = ["fp32"]\n'
                    '[tvm]\nmcpu = "cortex-a53"\n')
    t = load_target(str(path))
    assert t.name == "my-board" and t.options["mcpu"] == "cortex-a53"


@pytest.mark.parametrize("text, match", [
    ('name = "x"\n', "lacks backend"),
    ('name = "x"\nbackend = "coreml"\narch = "a"\nprecisions = ["fp32"]\n', "backend 'coreml'"),
    ('name = "x"\nbackend = "tvm"\narch = "a"\nprecisions = ["fp8"]\n', "unknown precision"),
    ('name = = \n', "not valid TOML"),
])
def test_bad_target_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_target(str(path))
