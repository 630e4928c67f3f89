"""TensorRT bundles: explicit Q/DQ placed the way TensorRT fuses it, build.json, checks that run without TensorRT."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import edgec
from edgec import BackendUnavailable, ConfigError
from edgec.backends.tensorrt import TensorRTBackend
from edgec.cli import main
from edgec.frontend import to_model
from edgec.passes.cleanup import CleanupPass
from edgec.backends.tensorrt import PLACEMENT as TENSORRT
from edgec.passes.ptq import calibrate
from models import tiny_conv_onnx, tiny_resnet_and_mobilenet


def _check_tensorrt_qdq(proto) -> None:
    """TensorRT's explicit-quantization rules: every weighted op has Q/DQ'd data and int8 weights,
    symmetric zero points, a residual Add fuses with the conv feeding it (only its other input is Q/DQ'd)."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            data, weight = (producers.get(node.input[0]), producers.get(node.input[1]))
            assert data is not None and data.op_type == "DequantizeLinear", node.name
            assert weight is not None and weight.op_type == "DequantizeLinear", node.name
            assert inits[weight.input[0]].data_type == onnx.TensorProto.INT8
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = onnx.numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), node.name
        if node.op_type == "Add":
            sources = [producers.get(i) for i in node.input]
            kinds = sorted(s.op_type if s is not None else "input" for s in sources)
            assert kinds == ["Conv", "DequantizeLinear"], (node.name, kinds)


@pytest.mark.requires_torch
@pytest.mark.parametrize("which", [0, 1], ids=["resnet-like", "mobilenet-like"])
def test_qdq_placement_follows_tensorrt_fusion_rules(which: int) -> None:
    import torch

    module = tiny_resnet_and_mobilenet()[which]
    model = CleanupPass().run(to_model(module, example_inputs=(torch.zeros(1, 3, 16, 16),)))
    data = {"x": np.random.default_rng(0).random((16, 3, 16, 16), dtype=np.float32)}
    q = calibrate(model, edgec.CalibrationSet(data), TENSORRT).quantized().proto
    onnx.checker.check_model(q)
    _check_tensorrt_qdq(q)
    adds = [n for n in q.graph.node if n.op_type == "Add"]
    assert len(adds) == 2  # two residual blocks in each model


def test_jetson_int8_bundle_is_checked_with_onnx_runtime(tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    data = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((32, 3, 16, 16), dtype=np.float32), val_x=rng.random((16, 3, 16, 16), dtype=np.float32))
    code = main(["compile", str(tiny_onnx), "--target", "jetson", "--precision", "int8", "--calib", str(data),
                 "-o", str(tmp_path / "out"), "-q"])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "out"
    assert {"manifest.json", "model.onnx", "build.json", "report.json", "report.html"} <= {p.name for p in out.iterdir()}
    bundle = onnx.load(out / "model.onnx")
    onnx.checker.check_model(bundle)
    _check_tensorrt_qdq(bundle)
    build = json.loads((out / "build.json").read_text())
    # TensorRT 10.3 (JetPack 6.2): strongly typed, no precision flags: int8 from the Q/DQ, float layers fp32
    assert build["builder_flags"] == [] and build["strongly_typed"] is True
    assert build["requires"] == {"jetpack": "6.2", "tensorrt": "10.3", "cuda": "12.6", "python": "3.10",
                                 "compute_capability": "8.7"}
    assert build["optimization_profiles"] == [] and build["onnx_nodes"] == [n.name for n in bundle.graph.node]
    assert {"edgec_trt.py", "edgec_trt_layers.py", "device_check.npz"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"]["cosine_min"] > 0.98 and "onnxruntime" in report["accuracy"]["runtime"]
    code = main(["profile", str(out)])
    err = capsys.readouterr().err
    assert code == 3 and "edgec build OUT" in err and "edgec profile OUT" in err


def test_jetson_nano_refuses_int8(tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="jetson-nano cannot run int8"):
        edgec.compile(tiny_onnx, "jetson-nano", "int8", calibration={"x": np.zeros((8, 3, 16, 16), np.float32)},
                      output_dir=tmp_path / "o", progress=False)
    build = edgec.compile(tiny_onnx, "jetson-nano", "fp16", output_dir=tmp_path / "o", progress=False)
    assert json.loads((build.output_dir / "build.json").read_text())["builder_flags"] == ["FP16"]


def test_dynamic_batch_becomes_an_optimization_profile(tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    path.write_bytes(tiny_conv_onnx(batch="N").SerializeToString())
    build = edgec.compile(path, "jetson", "fp16", input_shapes={"x": ((1, 4, 8), 3, 16, 16)},
                          output_dir=tmp_path / "o", progress=False)
    profiles = json.loads((build.output_dir / "build.json").read_text())["optimization_profiles"]
    assert profiles == [{"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}]
    assert build.manifest["inputs"][0]["shape"][0] == "x_dim0"


@pytest.mark.requires_openvino
def test_dynamic_dims_are_refused_for_static_backends(tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    path.write_bytes(tiny_conv_onnx(batch="N").SerializeToString())
    with pytest.raises(ConfigError, match="for TensorRT targets"):
        edgec.compile(path, "intel-cpu", input_shapes={"x": ((1, 4, 8), 3, 16, 16)}, output_dir=tmp_path / "o")


def test_unsupported_ops_are_listed_with_their_source(tmp_path: Path) -> None:
    model = tiny_conv_onnx()
    custom = helper.make_node("FancyNorm", ["r2"], ["r2n"], name="fancy", domain="com.example")
    custom.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'norm', 'fancy']")
    nodes = list(model.graph.node)
    pool = next(n for n in nodes if n.op_type == "GlobalAveragePool")
    pool.input[0] = "r2n"
    nodes.insert(nodes.index(pool), custom)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    from edgec.backends.tensorrt import unsupported_nodes
    from edgec.model import Model

    found = unsupported_nodes(Model(model))
    assert found == [{"node": "fancy", "in": "node 'fancy'", "op": "com.example::FancyNorm", "module": "norm",
                      "where": None}]


def test_without_tensorrt_the_engine_build_names_the_device(tmp_path: Path, tiny_onnx: Path, monkeypatch,
                                                            capsys) -> None:
    """Where `import tensorrt` fails, the bundle still compiles, versions() says the engine is built on the device,
    and `edgec build` stops with BackendUnavailable (exit 3) and the JetPack hint, writing no engine."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    build = edgec.compile(tiny_onnx, "jetson", "fp16", output_dir=tmp_path / "o", progress=False)
    assert build.manifest["sdk"]["tensorrt"].startswith("not installed here")
    with pytest.raises(BackendUnavailable, match="JetPack ships TensorRT"):
        edgec.pipeline.build_engine(tmp_path / "o")
    capsys.readouterr()
    assert main(["build", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert "edgec: error: TensorRT is not installed here" in err and "--device ssh://" in err
    assert not (tmp_path / "o" / "model.engine").exists()


def test_a_tensorrt_module_without_its_api_is_unavailable(tmp_path: Path, tiny_onnx: Path, monkeypatch) -> None:
    """A `tensorrt` that imports but lacks the API (an empty namespace package) is BackendUnavailable too."""
    edgec.compile(tiny_onnx, "jetson", "fp16", output_dir=tmp_path / "o", progress=False)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(BackendUnavailable, match="JetPack ships TensorRT"):
        edgec.pipeline.build_engine(tmp_path / "o")


@pytest.mark.requires_tensorrt
def test_an_installed_tensorrt_reports_its_version() -> None:
    """Where TensorRT is installed, versions() (recorded in every manifest) is its release, not the device note."""
    import tensorrt

    version = TensorRTBackend().versions()["tensorrt"]
    assert version == tensorrt.__version__ and re.match(r"\d+\.\d+", version)


@pytest.mark.requires_tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_build_and_profile_where_tensorrt_is_installed(tmp_path: Path, tiny_onnx: Path, precision: str) -> None:
    """On any machine with TensorRT and an NVIDIA GPU (not only a Jetson): compile a bundle for a target of this
    TensorRT release, then `edgec build OUT` and `edgec profile OUT` here: the engine is built with a per-device
    timing cache, its outputs on the host's validation samples pass the task-metric check, its layers map back."""
    import tensorrt

    release = ".".join(tensorrt.__version__.split(".")[:2])
    target = tmp_path / "this-gpu.toml"
    target.write_text('name = "this-gpu"\nbackend = "tensorrt"\narch = "aarch64"\nprecisions = ["fp16", "int8"]\n'
                      f'[tensorrt]\ntensorrt_version = "{release}"\n')
    rng = np.random.default_rng(0)
    build = edgec.compile(tiny_onnx, str(target), precision, progress=False, output_dir=tmp_path / "o",
                          calibration={"x": rng.random((32, 3, 16, 16), dtype=np.float32)})
    engine = edgec.pipeline.build_engine(build.output_dir)
    info = json.loads((build.output_dir / "engine.json").read_text())
    assert engine.is_file() and Path(info["timing_cache"]["path"]).is_file()
    prof = edgec.profile(build.output_dir, runs=20)
    assert prof.latency_ms.p50 > 0 and prof.layers and prof.mapped_share("onnx_nodes") >= 0.9
    assert prof.extra["accuracy"]["ok"] is True


def test_tensorrt_11_fp16_is_in_the_graph(tmp_path: Path, tiny_onnx: Path) -> None:
    target = tmp_path / "orin-trt11.toml"
    target.write_text('name = "orin-trt11"\nbackend = "tensorrt"\narch = "aarch64"\nprecisions = ["fp32", "fp16"]\n'
                      '[tensorrt]\ncompute_capability = "8.7"\ntensorrt_version = "11.0"\n')
    build = edgec.compile(tiny_onnx, str(target), "fp16", output_dir=tmp_path / "o", progress=False)
    cfg = json.loads((build.output_dir / "build.json").read_text())
    assert cfg["strongly_typed"] is True and cfg["builder_flags"] == []
    bundle = onnx.load(build.output_dir / "model.onnx")
    onnx.checker.check_model(bundle)
    float_inits = {t.data_type for t in bundle.graph.initializer if t.data_type in (1, 10)}
    assert float_inits == {onnx.TensorProto.FLOAT16}
    assert bundle.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stay fp32
    assert [p["name"] for p in build.manifest["passes"]] == ["cleanup", "fp16-graph"]
    assert build.report["accuracy"]["cosine_min"] > 0.99  # ONNX Runtime runs the fp16 graph here


def test_values_beyond_int32_are_reported() -> None:
    from edgec.backends.tensorrt import range_problems
    from edgec.model import Model

    model = tiny_conv_onnx()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([2**40], np.int64), "huge_index"))
    assert range_problems(Model(model)) == ["int64 initializer 'huge_index' holds 1099511627776"]
    assert range_problems(Model(tiny_conv_onnx())) == []


def _overflowing_onnx(path: Path, weight: float) -> Path:
    """x[1,3,16,16] in [0, 1) -> Conv (every weight `weight`) -> Div 1000 -> GlobalAveragePool -> Flatten: with
    weight 6000 the Conv's outputs reach ~80,000, past float16's 65504, and come back into range after the Div."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="big_conv", pads=[1, 1, 1, 1]),
             helper.make_node("Div", ["c", "k"], ["d"], name="scale_down"),
             helper.make_node("GlobalAveragePool", ["d"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["y"], name="flatten")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
                              [onnx.numpy_helper.from_array(np.full((4, 3, 3, 3), weight, np.float32), "w"),
                               onnx.numpy_helper.from_array(np.array(1000.0, np.float32), "k")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def test_fp16_overflow_is_caught_on_the_host(tmp_path: Path) -> None:
    """--precision fp16 for a Jetson is checked by running its fp16 graph, not the fp32 one: a Conv whose outputs
    pass 65504 makes the fp16 build fail its check (exit 4) naming the overflow, where ONNX Runtime running the
    float16 graph as it is (float32 between ops) would have passed it. Below the limit the same model builds."""
    calib = {"x": np.random.default_rng(0).random((16, 3, 16, 16), dtype=np.float32)}
    with pytest.raises(edgec.AccuracyCheckFailed, match="inf/NaN values in y \\(an overflow: fp16 tops out at 65504"):
        edgec.compile(_overflowing_onnx(tmp_path / "big.onnx", 6000.0), "jetson", "fp16", calibration=calib,
                      output_dir=tmp_path / "big", progress=False)
    bundle = onnx.load(tmp_path / "big.rejected" / "model.onnx")
    import onnxruntime as ort

    as_is = ort.InferenceSession(bundle.SerializeToString()).run(None, {"x": calib["x"][:1]})[0]
    assert np.isfinite(as_is).all()  # why the fp16 graph alone would not do as the check
    ok = edgec.compile(_overflowing_onnx(tmp_path / "small.onnx", 60.0), "jetson", "fp16", calibration=calib,
                       output_dir=tmp_path / "small", progress=False)
    assert ok.report["accuracy"]["ok"] and "rounded to float16" in ok.report["accuracy"]["runtime"]
