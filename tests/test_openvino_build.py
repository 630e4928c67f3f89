"""OpenVINO end to end: true fp32, bf16, provenance in the profile, atomic output folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec import ConfigError
from edgec.backends.openvino import OpenVINOBackend

pytestmark = pytest.mark.requires_openvino


@pytest.fixture(scope="module")
def torch_build(tmp_path_factory):
    pytest.importorskip("torch")
    import torch
    from models import tiny_torch_model

    out = tmp_path_factory.mktemp("b") / "out"
    samples = {"x": np.random.default_rng(1).random((16, 3, 8, 8), dtype=np.float32)}
    return edgec.compile(tiny_torch_model(), "intel-cpu", example_inputs=(torch.zeros(1, 3, 8, 8),),
                         calibration=samples, output_dir=out, profile_runs=20, progress=False)


def test_fp32_really_runs_fp32(torch_build) -> None:
    prof = torch_build.report["profile"]
    assert prof["runtime"]["inference_precision"] == "<Type: 'float32'>" or "32" in prof["runtime"]["inference_precision"]
    assert {r["precision"] for r in prof["layers"]} <= {"fp32", "int32"}
    assert torch_build.report["accuracy"]["ok"] is True
    assert torch_build.report["accuracy"]["max_abs_error"] < 1e-4


def test_profile_rows_name_pytorch_modules(torch_build) -> None:
    prof = torch_build.profile(runs=10)
    assert prof.mapped_share("onnx_nodes") >= 0.9
    assert prof.mapped_share("module") >= 0.9
    reorders = [r for r in prof.layers if r.op == "Reorder"]  # the plugin's own layout changes
    assert all(r.onnx_nodes and r.module is not None for r in reorders), reorders
    modules = {r.module for r in prof.layers}
    assert {"stem", "head"} <= modules and any(m and m.startswith("block") for m in modules)
    assert all(r.where is None or ".py:" in r.where for r in prof.layers)
    table = prof.table()
    assert "PyTorch module" in table and "stem" in table
    assert json.loads((torch_build.output_dir / "profile.json").read_text())["runs"] == 10


def test_manifest_lists_files_with_hashes(torch_build) -> None:
    manifest = json.loads((torch_build.output_dir / "manifest.json").read_text())
    assert manifest["schema"] == "edgec.manifest/1"
    assert manifest["sdk"]["openvino"] and manifest["sdk"]["torch"].startswith("2.13")
    files = {f["path"] for f in manifest["files"]}
    assert {"model.onnx", "model.xml", "model.bin", "report.json", "report.html", "profile.json"} <= files
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    html = (torch_build.output_dir / "report.html").read_text()
    assert "class='bar'" in html and "stem" in html


def test_bf16_build_where_the_cpu_has_it(tmp_path: Path, tiny_onnx: Path) -> None:
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(ConfigError, match="no bf16"):
            edgec.compile(tiny_onnx, "intel-cpu", "bf16", output_dir=tmp_path / "o", progress=False)
        return
    build = edgec.compile(tiny_onnx, "intel-cpu", "bf16", output_dir=tmp_path / "o", profile_runs=5, progress=False)
    assert "bf16" in {r["precision"] for r in build.report["profile"]["layers"]}
    assert build.report["accuracy"]["cosine_min"] > 0.98


def test_recompile_replaces_the_folder(tmp_path: Path, tiny_onnx: Path) -> None:
    out = tmp_path / "out"
    first = edgec.compile(tiny_onnx, "intel-cpu", output_dir=out, profile_runs=5, progress=False)
    (out / "stale.txt").write_text("from an older build")
    second = edgec.compile(tiny_onnx, "intel-cpu", output_dir=out, profile_runs=5, progress=False)
    assert not (out / "stale.txt").exists()
    assert second.manifest["created"] >= first.manifest["created"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.onnx"]  # no staging or old folders left


def test_interrupted_build_keeps_the_previous_folder(tmp_path: Path, tiny_onnx: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    edgec.compile(tiny_onnx, "intel-cpu", output_dir=out, profile_runs=5, progress=False)
    before = (out / "manifest.json").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(OpenVINOBackend, "build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        edgec.compile(tiny_onnx, "intel-cpu", output_dir=out, profile_runs=5, progress=False, use_cache=False)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.onnx"]


def test_refuses_to_replace_a_folder_that_is_not_an_edgec_output(tmp_path: Path, tiny_onnx: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ConfigError, match="not an edgec output"):
        edgec.compile(tiny_onnx, "intel-cpu", output_dir=out, progress=False)
    assert (out / "holiday.jpg").exists()


def test_labels_give_labelled_accuracy(tmp_path: Path, tiny_onnx: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((20, 3, 16, 16), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, val_x=x[:10], val_y=rng.integers(0, 5, 10))
    build = edgec.compile(tiny_onnx, "intel-cpu", calibration=tmp_path / "d.npz", output_dir=tmp_path / "o",
                          profile_runs=5, progress=False)
    acc = build.report["accuracy"]
    assert acc["samples"] == 10 and "validation" in acc["data"]
    assert acc["labelled"]["drop_points"] == 0.0


@pytest.mark.parametrize("data, match", [
    ({"x": np.zeros((4, 3, 15, 16), np.float32)}, r"input 'x' is \[1, 3, 16, 16\]"),
    ({"x": np.full((4, 3, 16, 16), np.nan, np.float32)}, "NaN"),
    ({"image": np.zeros((4, 3, 16, 16), np.float32)}, "no array for input"),
])
def test_bad_sample_data(tmp_path: Path, tiny_onnx: Path, data, match) -> None:
    with pytest.raises(ConfigError, match=match):
        edgec.compile(tiny_onnx, "intel-cpu", calibration=data, output_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
