"""Models as users bring them: several inputs (recurrent state, a scalar sample rate), an `If` whose untaken
branch breaks shape inference at fixed shapes, old opsets, fp16 weights; and builds that fail their check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgec
from edgec import cli
from edgec.calibration import CalibrationSet, fixed_inputs, read_arrays
from edgec.errors import AccuracyCheckFailed, ConfigError
from edgec.frontend import to_model
from edgec.model import Model, ort_session
from models import fp16_conv_onnx, if_lstm_onnx, old_opset_conv_onnx, tiny_conv_onnx

RNG = np.random.default_rng(0)


def _vad() -> Model:
    return to_model(if_lstm_onnx(), input_shapes={"x": [1, 8]}, input_values={"sr": 16000})


def test_leading_sample_axis_per_input() -> None:
    model = to_model(if_lstm_onnx(take_lstm_when=0), input_shapes={"x": [1, 8]})
    x, state, sr = RNG.standard_normal((5, 1, 8)), RNG.standard_normal((5, 2, 1, 4)), np.zeros(5, np.int64)
    read = read_arrays({"x": x, "state": state, "sr": sr}, model.inputs, "data.npz")
    assert read.count == 5 and set(read.kinds.values()) == {"samples"}
    feed = read.feed(3)
    assert feed["x"].shape == (1, 8) and feed["state"].shape == (2, 1, 4) and feed["sr"].shape == ()
    assert np.array_equal(feed["state"], state[3].astype(np.float32)) and feed["x"].dtype == np.float32
    assert "leading sample axis" in read.layout


def test_rows_layout_state_zero_and_constants_given_once() -> None:
    model = _vad()
    assert [s.name for s in model.inputs] == ["x", "state"]  # sr is folded into the graph
    samples = CalibrationSet({"x": RNG.standard_normal((6, 8))}).load(model.inputs, fixed=fixed_inputs(model))
    assert len(samples) == 6 and samples.feeds[2]["x"].shape == (1, 8)
    assert not samples.feeds[2]["state"].any() and samples.feeds[2]["state"].shape == (2, 1, 4)
    assert "rows along the model's batch dim" in samples.description and "'state' zeros" in samples.description
    one_state = RNG.standard_normal((2, 1, 4)).astype(np.float32)  # one sample beside 6: the same for all
    given = CalibrationSet({"x": RNG.standard_normal((6, 8)), "state": one_state}).load(model.inputs)
    assert all(np.array_equal(f["state"], one_state) for f in given.feeds)
    assert "given once for every sample" in given.description


def test_list_of_feed_dicts_and_bad_data() -> None:
    model = _vad()
    feeds = [{"x": RNG.standard_normal((1, 8)), "state": RNG.standard_normal((2, 1, 4))} for _ in range(4)]
    samples = CalibrationSet(feeds).load(model.inputs)
    assert len(samples) == 4 and np.allclose(samples.feeds[1]["state"], feeds[1]["state"])
    with pytest.raises(ConfigError, match="name different inputs"):
        CalibrationSet(feeds + [{"x": feeds[0]["x"]}]).load(model.inputs)
    with pytest.raises(ConfigError, match=r"different numbers of samples \('x' 6, 'state' 4\)"):
        CalibrationSet({"x": RNG.standard_normal((6, 8)), "state": RNG.standard_normal((4, 2, 1, 4))}).load(model.inputs)
    unbound = to_model(if_lstm_onnx(take_lstm_when=0), input_shapes={"x": [1, 8]})
    with pytest.raises(ConfigError, match=r"no array for input\(s\) sr.*--input-value"):
        CalibrationSet({"x": RNG.standard_normal((6, 8))}).load(unbound.inputs, fixed=fixed_inputs(unbound))


def test_if_branch_folded_by_a_bound_input() -> None:
    model = _vad()
    assert "If" not in {n.op_type for n in model.proto.graph.node}
    assert model.provenance["input_values"] == {"sr": 16000}
    out = ort_session(model.proto).run(None, {"x": np.ones((1, 8), np.float32), "state": np.zeros((2, 1, 4), np.float32)})
    reference = ort_session(if_lstm_onnx()).run(None, {"x": np.ones((1, 8), np.float32),
                                                       "state": np.zeros((2, 1, 4), np.float32), "sr": np.array(16000)})
    assert np.allclose(out[0], reference[0])
    with pytest.raises(ConfigError, match=r"x=1x8.*fix it with --input-value NAME=VALUE"):
        to_model(if_lstm_onnx(), input_shapes={"x": [1, 8]})  # sr = 0 takes the branch that can't run


def test_fixed_dims_that_break_an_untaken_branch_stay_symbolic() -> None:
    model = to_model(if_lstm_onnx(take_lstm_when=0), input_shapes={"x": [1, 8]})  # zeros take the LSTM branch
    assert model.provenance["input_shapes"]["x"] == [1, 8]
    assert [s.shape for s in model.inputs] == [(1, 8), (2, 1, 4), ()]
    assert any("kept symbolic" in n for n in model.provenance["notes"])
    ort_session(model.proto).run(None, {"x": np.ones((1, 8), np.float32), "state": np.zeros((2, 1, 4), np.float32),
                                        "sr": np.array(0)})


@pytest.mark.requires_openvino
def test_stateful_model_with_a_sample_rate_compiles_from_the_cli(tmp_path: Path, capsys) -> None:
    onnx.save(if_lstm_onnx(), tmp_path / "vad.onnx")
    np.savez(tmp_path / "audio.npz", x=RNG.standard_normal((16, 1, 8)).astype(np.float32))
    code = cli.main(["compile", str(tmp_path / "vad.onnx"), "-p", "fp32", "--calib", str(tmp_path / "audio.npz"),
                     "--input-shape", "x=1x8", "--input-value", "sr=16000", "-o", str(tmp_path / "o"), "-q",
                     "--runs", "5", "--no-cache"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["input_values"] == {"sr": 16000} and [i["name"] for i in manifest["inputs"]] == ["x", "state"]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["accuracy"]["ok"] and "'state' zeros" in report["accuracy"]["data"]


@pytest.mark.requires_openvino
def test_int8_on_an_old_opset_converts_it_up(tmp_path: Path) -> None:
    build = edgec.compile(old_opset_conv_onnx(11), "intel-cpu", "int8", RNG.random((16, 3, 16, 16), np.float32),
                          output_dir=tmp_path / "o", profile_runs=5, progress=False, use_cache=False)
    assert "opset-upgrade" in [p["name"] for p in build.manifest["passes"]]
    assert any("converted from opset 11 to 13" in n for n in build.manifest["notes"])
    proto = onnx.load(tmp_path / "o" / "model.onnx")
    assert any(n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute) for n in proto.graph.node)
    assert build.report["accuracy"]["ok"]


def test_int8_refuses_an_old_opset_it_cannot_convert_before_calibrating(tmp_path: Path, monkeypatch) -> None:
    from edgec.passes import ptq

    monkeypatch.setattr(ptq, "calibrate", lambda *a, **k: pytest.fail("calibrated an unconvertible model"))
    with pytest.raises(ConfigError, match=r"opset >= 13.*this model is opset 9.*could not convert it.*Re-export"):
        edgec.compile(old_opset_conv_onnx(9, scaler=True), "intel-cpu", "int8", RNG.random((16, 3, 16, 16), np.float32),
                      output_dir=tmp_path / "o", progress=False, use_cache=False)


@pytest.mark.requires_openvino
def test_fp16_weights_compute_in_fp32_behind_the_fp16_interface(tmp_path: Path) -> None:
    build = edgec.compile(fp16_conv_onnx(), "intel-cpu", "int8", RNG.random((16, 3, 16, 16)).astype(np.float16),
                          output_dir=tmp_path / "o", profile_runs=5, progress=False, use_cache=False)
    assert [i["dtype"] for i in build.manifest["inputs"]] == ["float16"]
    assert [o["dtype"] for o in build.manifest["outputs"]] == ["float16"]
    assert "fp16-to-fp32" in [p["name"] for p in build.manifest["passes"]] and build.report["accuracy"]["ok"]
    fp32 = edgec.compile(fp16_conv_onnx(), "intel-cpu", "fp32", output_dir=tmp_path / "f", profile_runs=5,
                         progress=False, use_cache=False)  # computes in fp32, as asked
    assert "fp16-to-fp32" in [p["name"] for p in fp32.manifest["passes"]] and fp32.report["accuracy"]["ok"]
    assert [i["dtype"] for i in fp32.manifest["inputs"]] == ["float16"]


@pytest.mark.requires_openvino
def test_int8_keeps_the_layers_it_breaks_in_float(tmp_path: Path, capsys) -> None:
    """All-int8 flips most top-1 predictions of this model (outlier pixels flatten the input's int8 range): the
    int8 build keeps the layers that break it in float, found by measured sensitivity, and says so."""
    onnx.save(tiny_conv_onnx(classes=10, seed=4), tmp_path / "m.onnx")
    x = RNG.random((32, 3, 16, 16), dtype=np.float32)
    x[::7, :, 0, 0] = 1000.0
    build = edgec.compile(tmp_path / "m.onnx", "intel-cpu", "int8", {"x": x}, output_dir=tmp_path / "o",
                          calibration_method="minmax", range_search=0, profile_runs=5, progress=False, use_cache=False)
    guard = build.report["int8_guard"]
    assert guard["broken_outputs"][0].startswith("logits (top1") and guard["met"]
    assert 0 < len(guard["float_layers"]) and all(d["reason"] for d in guard["float_layers"])
    assert build.report["accuracy"]["ok"] and build.report["accuracy"]["outputs"][0]["agreement"] >= 90
    assert "stay in float" in capsys.readouterr().err
    assert "Layers int8 breaks" in (tmp_path / "o" / "report.html").read_text()


def test_a_build_failing_its_check_fails_the_compile(tmp_path: Path, capsys, monkeypatch) -> None:
    from edgec import accuracy

    monkeypatch.setattr(accuracy, "INT8_FLOOR", 100.5)  # a floor not even fp32 meets: the guard can't help
    onnx.save(tiny_conv_onnx(classes=10, seed=4), tmp_path / "m.onnx")
    x = RNG.random((32, 3, 16, 16), dtype=np.float32)
    x[::7, :, 0, 0] = 1000.0  # rare huge outliers: per-tensor int8 of the input flattens every other pixel
    np.savez(tmp_path / "data.npz", x=x)
    out = tmp_path / "o"
    args = ["compile", str(tmp_path / "m.onnx"), "-p", "int8", "--calib", str(tmp_path / "data.npz"), "-o", str(out),
            "-q", "--runs", "5", "--no-cache", "--calib-method", "minmax", "--range-search", "0"]
    assert cli.main(args[:2] + ["-p", "fp32"] + args[4:]) == 0
    before = (out / "manifest.json").read_text()
    assert cli.main(args) == 4
    err = capsys.readouterr().err
    assert "fails its accuracy check: top1 100.00 (logits)" in err and "--accept-inaccurate" in err
    assert (out / "manifest.json").read_text() == before  # the previous build is untouched
    assert json.loads((tmp_path / "o.rejected" / "report.json").read_text())["accuracy"]["ok"] is False
    assert cli.main(args + ["--accept-inaccurate"]) == 0
    assert json.loads((out / "report.json").read_text())["accuracy"]["ok"] is False
    with pytest.raises(AccuracyCheckFailed):
        edgec.compile(tmp_path / "m.onnx", "intel-cpu", "int8", {"x": x}, output_dir=tmp_path / "p",
                      calibration_method="minmax", range_search=0, profile_runs=5, progress=False, use_cache=False)


def test_outputs_that_are_all_but_zero_on_both_sides_agree() -> None:
    from edgec.accuracy import Judge, compare
    from edgec.metrics import named

    reference = np.zeros((3, 100))
    reference[0] = RNG.random(100)           # a page with text: a real map
    reference[1:] = 1e-6 * RNG.random((2, 100))  # photos: "no text" everywhere
    candidate = reference.copy()
    candidate[1] = 0.0                        # a backend that rounds "no text" to exactly zero
    judge = Judge(("map",), (named("cosine", 0, reference),), named("cosine", 0, reference))
    result = compare([reference], [candidate], None, judge)
    assert result["cosine_min"] == 1.0 and result["negligible_samples"] == 2
    candidate[2, 5] = 0.5                     # a real disagreement on a quiet sample still counts
    assert compare([reference], [candidate], None, judge)["cosine_min"] < 0.5


def test_newer_opset_attributes_are_dropped_or_reported_for_old_models() -> None:
    """onnxscript's optimizer writes Reshape(allowzero=0) into opset-12 graphs (ddddocr's OCR then failed to load)."""
    from onnx import TensorProto, helper

    from edgec.model import fit_to_its_opset

    def model(allowzero: int) -> onnx.ModelProto:
        shape = helper.make_tensor("s", TensorProto.INT64, [2], [1, 8])
        graph = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"], name="r", allowzero=allowzero)], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [shape])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)

    default = model(0)
    assert fit_to_its_opset(default) is None and not default.graph.node[0].attribute
    ort_session(default).run(None, {"x": np.zeros((2, 4), np.float32)})
    assert "allowzero" in fit_to_its_opset(model(1))
