"""The build cache: reuse identical builds; detect, drop and rebuild damaged entries."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.backends.openvino import OpenVINOBackend

pytestmark = pytest.mark.requires_openvino


def _counting_builds(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = OpenVINOBackend.build

    def build(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OpenVINOBackend, "build", build)
    return calls


def test_identical_compile_is_reused(tmp_path: Path, tiny_onnx: Path, monkeypatch, private_build_cache: Path) -> None:
    calls = _counting_builds(monkeypatch)
    data = {"x": np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)}
    first = edgec.compile(tiny_onnx, "intel-cpu", calibration=data, output_dir=tmp_path / "a", profile_runs=5, progress=False)
    second = edgec.compile(tiny_onnx, "intel-cpu", calibration=data, output_dir=tmp_path / "b", profile_runs=5, progress=False)
    assert len(calls) == 1
    assert second.manifest["files"] == first.manifest["files"]
    other = {"x": data["x"] + 1}  # different data: a different key
    edgec.compile(tiny_onnx, "intel-cpu", calibration=other, output_dir=tmp_path / "c", profile_runs=5, progress=False)
    edgec.compile(tiny_onnx, "intel-cpu", calibration=data, output_dir=tmp_path / "d", profile_runs=5, progress=False,
                  use_cache=False)
    assert len(calls) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_entry_is_dropped_and_rebuilt(tmp_path: Path, tiny_onnx: Path, monkeypatch, private_build_cache: Path,
                                              damage: str, capsys) -> None:
    calls = _counting_builds(monkeypatch)
    edgec.compile(tiny_onnx, "intel-cpu", output_dir=tmp_path / "a", profile_runs=5, progress=False)
    (entry,) = [p for p in private_build_cache.iterdir() if not p.name.startswith(".")]
    target = entry / "model.bin"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (entry / "manifest.json").write_text("{not json")
    build = edgec.compile(tiny_onnx, "intel-cpu", output_dir=tmp_path / "b", profile_runs=5, progress=False)
    assert len(calls) == 2  # rebuilt, not reused
    assert "damaged" in capsys.readouterr().err
    assert build.report["accuracy"]["ok"]
    assert [p.name for p in private_build_cache.iterdir() if not p.name.startswith(".")] == [entry.name]  # re-cached
