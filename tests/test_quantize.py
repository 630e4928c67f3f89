"""int8 Q/DQ placement per backend, quantization math, bias correction, mixed-precision budget."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import edgec
from edgec import CalibrationSet, ConfigError
from edgec.model import Model
from edgec.accuracy import Judge, drop_standard_error, make_evaluator
from edgec.metrics import standard_error_of_drop
from edgec.backends.openvino import PLACEMENT as OPENVINO
from edgec.backends.tensorrt import PLACEMENT as TENSORRT
from edgec.passes.mixed import budget, search_mixed
from edgec.passes.ptq import calibrate
from edgec.passes.qdq import WEIGHTED_OPS, Placement, WeightOnlyInt8Pass, plan_quantization
from edgec.passes.qmath import activation_qparams, channel_activation_qparams, quantize_weight
from edgec.request import CompileOptions
from models import depthwise_onnx, lstm_onnx, tiny_conv_onnx, tiny_resnet_and_mobilenet


def _model(**kw) -> Model:
    return Model(tiny_conv_onnx(**kw), {"source": "tiny", "kind": "onnx"})


def _samples(n: int = 32, seed: int = 0, size: int = 16) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)}


def _run(proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def _consumers(proto, tensor: str) -> list[str]:
    return [n.op_type for n in proto.graph.node if tensor in n.input]


def test_openvino_placement_quantizes_weighted_ops_and_residual_adds() -> None:
    q = calibrate(_model(), CalibrationSet(_samples()), OPENVINO).quantized().proto
    onnx.checker.check_model(q)
    ops = Counter(n.op_type for n in q.graph.node)
    # activations x (conv1), r1 (conv2 and the add), c2 (the add) and f (fc): 4 Q/DQ pairs; weights: 3 DQ
    assert ops["QuantizeLinear"] == 4 and ops["DequantizeLinear"] == 7
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert list(add.input) == ["c2_dequantized", "r1_dequantized"]  # both residual inputs, NNCF's scheme
    zero_points = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_zero_point")
                   and not t.name.startswith(("w", "wf"))]
    assert {z.dtype for z in zero_points} == {np.dtype(np.uint8)}  # asymmetric u8 activations


def test_tensorrt_placement_is_symmetric_and_covers_residual_adds() -> None:
    q = calibrate(_model(), CalibrationSet(_samples()), TENSORRT).quantized().proto
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert add.input[0] == "c2" and add.input[1] == "r1_dequantized"  # conv output fused; residual quantized
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == node.input[2]))
            assert zp.dtype == np.int8 and int(zp) == 0
    weights = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_quantized")]
    assert weights and all(w.dtype == np.int8 and w.min() >= -127 for w in weights)


def test_weights_per_output_channel() -> None:
    q = calibrate(_model(), CalibrationSet(_samples()), OPENVINO).quantized().proto
    dq = {n.name: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    w1 = dq["w1_DequantizeLinear"]
    assert {a.name: a.i for a in w1.attribute}["axis"] == 0
    scale = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == "w1_scale"))
    assert scale.shape == (8,)
    fc = dq["wf_DequantizeLinear"]  # Gemm with transB=1: output channels on axis 0
    assert {a.name: a.i for a in fc.attribute}["axis"] == 0


def test_quantized_nodes_keep_provenance() -> None:
    proto = tiny_conv_onnx()
    for node in proto.graph.node:
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=f"['', '{node.name}', 'op']")
    q = calibrate(Model(proto), CalibrationSet(_samples()), OPENVINO).quantized().proto
    for node in q.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert any(p.key == "pkg.torch.onnx.name_scopes" for p in node.metadata_props), node.name


def test_int8_model_stays_close_to_fp32() -> None:
    x = _samples(64, seed=1)["x"]
    model = _model()
    q = calibrate(model, CalibrationSet(_samples(64)), OPENVINO).quantized().proto
    ref, got = _run(model.proto, x), _run(q, x)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.99
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_activation_qparams() -> None:
    scale, zp = activation_qparams(-1.0, 3.0, symmetric=False)
    assert zp.dtype == np.uint8 and abs(float(scale) - 4 / 255) < 1e-7 and int(zp) == round(1 / (4 / 255))
    scale, zp = activation_qparams(0.5, 2.0, symmetric=False)  # range always includes zero
    assert int(zp) == 0 and abs(float(scale) - 2 / 255) < 1e-7
    scale, zp = activation_qparams(-1.0, 3.0, symmetric=True)
    assert zp.dtype == np.int8 and int(zp) == 0 and abs(float(scale) - 3 / 127) < 1e-7
    scale, _ = activation_qparams(0.0, 0.0, symmetric=False)
    assert float(scale) > 0


def test_channel_activation_qparams_match_the_per_tensor_rule_channel_by_channel() -> None:
    lo, hi = np.array([-1.0, 0.0, 0.5, 0.0, -3.0]), np.array([1.0, 2.0, 4.0, 0.0, -1.0])
    for symmetric in (False, True):
        scales, zeros = channel_activation_qparams(lo, hi, symmetric)
        each = [activation_qparams(a, b, symmetric) for a, b in zip(lo, hi)]
        assert scales.dtype == np.float32 and zeros.dtype == each[0][1].dtype
        assert np.array_equal(scales, [s for s, _ in each]) and np.array_equal(zeros, [z for _, z in each])


def test_quantize_weight_round_trip() -> None:
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    w[2] *= 100  # channels with very different ranges: per-channel scales keep small ones precise
    q, scale = quantize_weight(w, 0)
    back = q.astype(np.float32) * scale[:, None, None, None]
    assert np.abs(back - w).max(axis=(1, 2, 3)).tolist() == pytest.approx((scale / 2).tolist(), rel=0.01, abs=1e-6) \
        or (np.abs(back - w).max(axis=(1, 2, 3)) <= scale / 2 + 1e-6).all()
    assert q.dtype == np.int8 and np.abs(q).max() == 127


def test_bias_correction_removes_the_mean_shift() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((64, 3, 16, 16), dtype=np.float32) + 2.0)  # large positive mean exposes weight error
    calib = CalibrationSet({"x": x})
    model = _model()
    plain = calibrate(model, calib, OPENVINO, "minmax", bias_correction=False, weight_rounding="nearest").quantized().proto
    corrected = calibrate(model, calib, OPENVINO, "minmax", bias_correction=True,
                          weight_rounding="nearest").quantized().proto
    ref = _run(model.proto, x)
    shift_plain = np.abs((_run(plain, x) - ref).mean(0)).mean()
    shift_corrected = np.abs((_run(corrected, x) - ref).mean(0)).mean()
    assert shift_corrected < shift_plain


def test_plan_skips_dynamic_weights_and_reports_tensors() -> None:
    plan = plan_quantization(tiny_conv_onnx(), Placement("no-residual", WEIGHTED_OPS, residual_add="none", symmetric_activations=False))
    assert plan.nodes == ("conv1", "conv2", "fc")
    assert plan.tensors() == sorted({"x", "r1", "f"})
    plan = plan_quantization(tiny_conv_onnx(), OPENVINO)
    assert plan.nodes == ("conv1", "conv2", "add", "fc")
    assert plan.activations["add"] == ("c2", "r1") and plan.tensors() == sorted({"x", "r1", "c2", "f"})
    assert plan.weights["conv1"] == ("w1", 0)


def _depthwise_samples(n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(0, 1, (n, 3, 16, 16)).astype(np.float32)}


def test_openvino_quantizes_depthwise_inputs_per_channel() -> None:
    model = Model(depthwise_onnx(), {"source": "tiny", "kind": "onnx"})
    cal = calibrate(model, CalibrationSet(_depthwise_samples()), OPENVINO)
    assert cal.plan.channel_axes == {"h": 1}
    lo, hi = cal.ranges["h"]
    assert lo.shape == hi.shape == (16,) and hi[-1] > 50 * hi[0]  # channels 0.03x..10x apart
    q = cal.quantized().proto
    onnx.checker.check_model(q)
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.name.startswith("h_")]
    assert len(qdq) == 2 and all(onnx.helper.get_attribute_value(n.attribute[0]) == 1 for n in qdq)
    scale = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == "h_scale"))
    assert scale.shape == (16,)
    per_tensor = calibrate(model, CalibrationSet(_depthwise_samples()),
                           dataclasses.replace(OPENVINO, per_channel_depthwise=False))
    assert per_tensor.plan.channel_axes == {} and np.ndim(per_tensor.ranges["h"][0]) == 0
    x = _depthwise_samples(16, seed=1)["x"]
    ref = _run(model.proto, x)
    err = {k: float(np.mean((_run(c.quantized().proto, x) - ref) ** 2)) for k, c in
           (("channel", cal), ("tensor", per_tensor))}
    assert err["channel"] < 0.5 * err["tensor"], err


def test_per_channel_only_where_every_reader_is_depthwise() -> None:
    shared = plan_quantization(depthwise_onnx(shared=True), OPENVINO)
    assert "h" in shared.tensors() and shared.channel_axes == {}  # one Q/DQ pair serves the plain conv too
    assert plan_quantization(depthwise_onnx(), TENSORRT).channel_axes == {}  # TensorRT: per-tensor activations


@pytest.mark.parametrize("data, match", [
    (None, "needs calibration data"),
    ({"val_x": np.zeros((4, 3, 16, 16), np.float32)}, "no calibration split"),
    ({"x": np.zeros((4, 3, 9, 9), np.float32)}, r"input 'x' is \[1, 3, 16, 16\]: give \[N, 1, 3, 16, 16\]"),
    ({"x": np.full((4, 3, 16, 16), np.inf, np.float32)}, "NaN or Inf"),
    ({"x": np.zeros((0, 3, 16, 16), np.float32)}, "fewer than one batch"),
    ({"x": np.zeros((3, 3, 16, 16), np.float32)}, "at least 8 samples"),
])
def test_bad_calibration_input(data, match) -> None:
    with pytest.raises(ConfigError, match=match):
        calibrate(_model(), CalibrationSet(data) if data is not None else None, OPENVINO)


def test_empty_calibration_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no .npy/.npz"):
        calibrate(_model(), CalibrationSet(tmp_path), OPENVINO)


def test_calibration_subset_is_seeded(tmp_path: Path) -> None:
    data = _samples(40)
    a = CalibrationSet(data, limit=10, seed=1).load(_model().inputs)
    b = CalibrationSet(data, limit=10, seed=1).load(_model().inputs)
    c = CalibrationSet(data, limit=10, seed=2).load(_model().inputs)
    assert len(a) == 10
    assert all(np.array_equal(p["x"], q["x"]) for p, q in zip(a.feeds, b.feeds))
    assert not all(np.array_equal(p["x"], q["x"]) for p, q in zip(a.feeds, c.feeds))


def _sensitive_model() -> Model:
    return Model(tiny_conv_onnx(classes=10, seed=4), {"source": "tiny", "kind": "onnx"})


def test_mixed_precision_honours_the_budget() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((96, 3, 16, 16), dtype=np.float32)
    x[::7, :, 0, 0] = 1000.0  # rare huge outliers: a per-tensor int8 input range then flattens every other pixel
    model = _sensitive_model()
    calibrated = calibrate(model, CalibrationSet({"x": x[:64]}), OPENVINO, "minmax")
    held = CalibrationSet({"x": x[64:]}).load(model.inputs)
    reference = [_run(model.proto, x[64:]).astype(np.float64)]
    judge = Judge.of(model.proto, reference)
    assert judge.primary.name == "top1"  # class scores from a Gemm
    evaluate = make_evaluator(held, reference, judge)
    fp32 = evaluate(model)
    int8 = evaluate(calibrated.quantized())
    assert fp32.score == 100.0 and int8.score < 50.0  # the search has work to do
    result = search_mixed(calibrated, evaluate, fp32, budget(fp32, 0.0),
                          rank_evaluate=make_evaluator(held.head(16), [reference[0][:16]], judge))
    assert result.met and result.final_score == 100.0 and result.int8_score == int8.score
    assert 0 < len(result.keep_float) < len(calibrated.plan.nodes)
    assert [d["node"] for d in result.decisions] == result.keep_float
    assert all("reason" in d for d in result.decisions)
    assert evaluate(calibrated.quantized(result.keep_float)).score == result.final_score
    assert standard_error_of_drop(judge.primary, reference, result.final.outputs) == 0.0  # met at 0: nothing flipped
    ranking = [r["node"] for r in result.ranking]  # every planned node, in the order the search tried them
    assert sorted(ranking) == sorted(calibrated.plan.nodes) and ranking[:len(result.keep_float)] == result.keep_float
    assert all(set(r) == {"node", "error_recovered", "int8_gain_ms"} for r in result.ranking)
    generous = search_mixed(calibrated, evaluate, fp32, budget(fp32, 100.0))
    assert generous.keep_float == [] and generous.met and generous.evaluations == 1
    assert generous.ranking == []  # plain int8 met the goal: no layer was scored
    agree = int8.outputs[0].argmax(1) == reference[0].argmax(1)
    error = standard_error_of_drop(judge.primary, reference, generous.final.outputs)
    assert error == pytest.approx(drop_standard_error(np.ones(len(agree), bool), agree)) and error > 0


def test_drop_standard_error_counts_flipped_samples() -> None:
    """Drop = mean of +1 (fp32 right, other wrong) / -1 / 0 per sample; its standard error is that mean's."""
    fp32 = np.array([True] * 80 + [False] * 20)
    other = fp32.copy()
    other[:3] = False   # 3 right -> wrong
    other[80] = True    # 1 wrong -> right
    diff = np.array([1.0] * 3 + [-1.0] + [0.0] * 96)
    assert drop_standard_error(fp32, other) == pytest.approx(100 * diff.std() / 10)
    assert drop_standard_error(fp32, fp32) == 0.0


@pytest.mark.requires_openvino
def test_openvino_int8_runs_int8_kernels(tmp_path: Path, tiny_onnx: Path) -> None:
    build = edgec.compile(tiny_onnx, "intel-cpu", "int8", calibration=_samples(32), output_dir=tmp_path / "o",
                          profile_runs=10, progress=False)
    layers = build.report["profile"]["layers"]
    convs = [r for r in layers if r["op"] in ("Convolution", "GroupConvolution")]
    assert convs and all(r["precision"] == "int8" and r["exec"].endswith("I8") for r in convs)
    assert build.report["accuracy"]["cosine_min"] > 0.98
    comparison = build.report["comparison"]
    assert set(comparison) == {"fp32", "int8"}
    assert comparison["int8"]["artifact_bytes"] > 0 and comparison["fp32"]["latency_ms_p50"] > 0
    assert [p["name"] for p in build.manifest["passes"]] == ["cleanup", "calibrate", "quantize-int8"]


@pytest.mark.requires_openvino
@pytest.mark.requires_torch
@pytest.mark.parametrize("which", [0, 1], ids=["resnet-like", "mobilenet-like"])
def test_openvino_fuses_residual_adds_into_int8_convolutions(tmp_path: Path, which: int) -> None:
    import torch

    model = tiny_resnet_and_mobilenet()[which]
    build = edgec.compile(model, "intel-cpu", "int8", calibration=_samples(32, size=32),
                          example_inputs=(torch.zeros(1, 3, 32, 32),), output_dir=tmp_path / "o", profile_runs=5,
                          progress=False, use_cache=False)
    layers = build.report["profile"]["layers"]
    float_layers = [(r["layer"], r["op"]) for r in layers if r["precision"] == "fp32"]
    # Left in f32: the global average pool and, on some CPUs, quantizing the graph input (a Subgraph on AMD EPYC
    # with AVX-512; fused away on the CI's CPU). Every residual add is fused into an int8 convolution (with only the
    # residual input quantized, each block kept an f32 add/FakeQuantize Subgraph of its own).
    assert not any(op in ("Add", "Eltwise") for _, op in float_layers), float_layers
    assert sum(op == "Subgraph" for _, op in float_layers) <= 1, float_layers
    assert sum(r["op"] in ("Convolution", "GroupConvolution") and r["precision"] == "int8" for r in layers) >= 5


@pytest.mark.requires_openvino
def test_mixed_needs_a_budget_and_data(tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="--max-accuracy-drop"):
        edgec.compile(tiny_onnx, "intel-cpu", "mixed", calibration=_samples(8), output_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="needs calibration data"):
        edgec.compile(tiny_onnx, "intel-cpu", "int8", output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.requires_openvino
def test_mixed_build_reports_float_layers(tmp_path: Path, monkeypatch) -> None:
    from edgec import pipeline

    monkeypatch.setattr(pipeline, "SEARCH_SAMPLES", 8)  # rank layers on 8 of the 16 validation samples
    path = tmp_path / "sensitive.onnx"
    _sensitive_model().save(path)
    rng = np.random.default_rng(0)
    x = rng.random((48, 3, 16, 16), dtype=np.float32)
    x[::7, :, 0, 0] = 1000.0  # as in test_mixed_precision_honours_the_budget: all-int8 misses
    data = {"x": x[:32], "val_x": x[32:]}
    build = edgec.compile(path, "intel-cpu", "mixed", calibration=data, max_accuracy_drop=0.0, calibration_method="minmax",
                          output_dir=tmp_path / "o", profile_runs=10, progress=False, use_cache=False)
    mixed = build.report["mixed_precision"]
    assert mixed["met"] and mixed["metric"] == "top1 agreement with fp32" and mixed["int8"] < mixed["fp32"]
    assert mixed["float_layers"] and mixed["search_data"].startswith("16 validation samples")
    assert mixed["standard_error_points"] == 0.0  # a 0-point budget met: no sample flipped
    # The budget was checked on the samples the report's accuracy comparison scores: they agree.
    assert build.report["comparison"]["mixed"]["accuracy"]["top1_agreement"] == 1.0
    assert set(build.report["comparison"]) == {"fp32", "int8", "mixed"}
    assert build.manifest["quantization"]["float_nodes"] == [d["node"] for d in mixed["float_layers"]]
    ranking = [r["node"] for r in mixed["ranking"]]
    assert sorted(ranking) == ["add", "conv1", "conv2", "node_Gemm_1"]
    assert ranking[:len(mixed["float_layers"])] == [d["node"] for d in mixed["float_layers"]]
    assert all(isinstance(r["error_recovered"], float) for r in mixed["ranking"])


def test_weight_only_int8_keeps_activations_float() -> None:
    from edgec.passes.qdq import WeightOnlyInt8Pass
    from models import tiny_mlp_onnx

    model = Model(tiny_mlp_onnx())
    q = WeightOnlyInt8Pass().run(model).proto
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] == 2
    dq = {n.name: {a.name: a.i for a in n.attribute} for n in q.graph.node if n.op_type == "DequantizeLinear"}
    assert dq["w_up_DequantizeLinear"]["axis"] == 1  # MatMul [K, N]: per output column
    x = np.random.default_rng(0).normal(size=(1, 16, 64)).astype(np.float32)
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    ref, got = run(model.proto), run(q)
    assert np.abs(ref - got).max() / np.abs(ref).max() < 0.02
    with pytest.raises(ConfigError, match="no MatMul"):
        WeightOnlyInt8Pass(ops=("Gemm",)).run(model)


@pytest.mark.requires_openvino
def test_openvino_int8_weights_build(tmp_path: Path) -> None:
    from models import tiny_mlp_onnx

    path = tmp_path / "mlp.onnx"
    path.write_bytes(tiny_mlp_onnx(dim=128, hidden=512).SerializeToString())
    build = edgec.compile(path, "intel-cpu", "int8-weights", output_dir=tmp_path / "o", profile_runs=10, progress=False)
    assert build.report["accuracy"]["ok"]
    sizes = build.report["comparison"]
    assert sizes["int8-weights"]["artifact_bytes"] < 0.5 * sizes["fp32"]["artifact_bytes"]
    assert [p["name"] for p in build.manifest["passes"]] == ["cleanup", "quantize-int8-weights"]


def test_speed_warning_needs_both_median_and_fastest_run_not_faster(capsys) -> None:
    from edgec.pipeline import _speed_warnings

    def comparison(p50: float, fastest: float) -> dict:
        return {"fp32": {"latency_ms_p50": 1.0, "latency_ms_min": 0.9},
                "int8": {"latency_ms_p50": p50, "latency_ms_min": fastest}}

    assert _speed_warnings(comparison(0.8, 0.7), "int8") == []
    assert _speed_warnings(comparison(2.0, 0.7), "int8") == []  # a load burst doubled the median only
    warned = _speed_warnings(comparison(1.2, 1.1), "int8")
    assert len(warned) == 1 and "not faster than fp32" in warned[0] and "1.200 ms vs 1.000 ms" in warned[0]
    assert "WARNING" in capsys.readouterr().err
    assert _speed_warnings({"fp32": {"latency_ms_p50": 1.0}, "int8": {"latency_ms_p50": 1.5}}, "int8")  # no min: p50


def _top1(model_path: Path):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return lambda x: np.array([session.run(None, {"x": x[i:i + 1]})[0].argmax() for i in range(len(x))])


def _straddling_pair(top1, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two inputs about a float32 step apart on the segment a -> b, on either side of an fp32 top-1 boundary:
    int8's error moves both alike, so at least one of them flips."""
    lo, hi, start = 0.0, 1.0, top1(a[None])[0]
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if top1((a + mid * (b - a))[None].astype(np.float32))[0] == start else (lo, mid)
    return np.stack([a + lo * (b - a), a + hi * (b - a)]).astype(np.float32)


@pytest.mark.requires_openvino
def test_mixed_notes_a_budget_within_two_standard_errors(tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    """The standard error in report.json and report.html is that of the shipped model's top-1 flips on the search
    samples (recounted here with ONNX Runtime); the within-the-noise note is printed when the met budget is under
    two standard errors, and not when it is at or above."""
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:  # per-channel contrast, so the tiny model's top-1 varies
        return (rng.random((n, 3, 16, 16)) * rng.random((n, 3, 1, 1)) * 4 - 1).astype(np.float32)

    pool = images(200)
    logits = _run(onnx.load(tiny_onnx), pool)
    top, ranked = logits.argmax(1), np.sort(logits, 1)
    margin = ranked[:, -1] - ranked[:, -2]
    fp32_top1 = _top1(tiny_onnx)
    pair = _straddling_pair(fp32_top1, pool[0], pool[top != top[0]][0])
    val = np.concatenate([pool[margin > np.median(margin)][:14], pair])
    calibration = {"x": images(32), "val_x": val}

    def build(budget: float, name: str) -> tuple[dict, str, str]:
        edgec.compile(tiny_onnx, "intel-cpu", "mixed", calibration=calibration, max_accuracy_drop=budget,
                      output_dir=tmp_path / name, profile_runs=5, progress=False, use_cache=False)
        report = json.loads((tmp_path / name / "report.json").read_text())["mixed_precision"]
        return report, capsys.readouterr().err, (tmp_path / name / "report.html").read_text()

    loose, err, html = build(100.0, "loose")
    agree = _top1(tmp_path / "loose" / "model.onnx")(val) == fp32_top1(val)
    flips, n = int((~agree).sum()), len(val)
    se = drop_standard_error(np.ones(n, bool), agree)
    assert se == pytest.approx(100 * np.sqrt(flips / n * (1 - flips / n) / n))
    assert loose["met"] and loose["float_layers"] == [] and loose["mixed"] == pytest.approx(100 * agree.mean())
    assert loose["standard_error_points"] == pytest.approx(se, abs=1e-3)
    assert flips >= 1 and 100 * flips / n < 2 * se < 100.0
    assert "within the noise" not in err
    assert f"&plusmn;{se:.2f} points, one standard error" in html
    budget = round((100 * flips / n + 2 * se) / 2, 1)
    tight, err, html = build(budget, "tight")
    assert tight["met"] and tight["standard_error_points"] == loose["standard_error_points"]
    assert f"the {budget}-point budget is within the noise of {n} search samples" in err
    assert f"(the drop is measured to +-{se:.2f} points, one standard error)" in err
    assert f"&plusmn;{se:.2f} points, one standard error" in html
    strict, err, _ = build(0.0, "strict")  # layers go back to float: the error is the final model's, not int8's
    agree = _top1(tmp_path / "strict" / "model.onnx")(val) == fp32_top1(val)
    assert strict["met"] and strict["float_layers"]
    assert strict["standard_error_points"] == pytest.approx(drop_standard_error(np.ones(n, bool), agree), abs=1e-3)
    assert "within the noise" not in err


@pytest.mark.requires_openvino
def test_openvino_runs_per_channel_depthwise_in_int8(tmp_path: Path) -> None:
    path = tmp_path / "dw.onnx"
    onnx.save(depthwise_onnx(), path)
    build = edgec.compile(path, "intel-cpu", "int8", calibration=_depthwise_samples(), output_dir=tmp_path / "o",
                          profile_runs=5, progress=False, use_cache=False, range_search=0)
    layers = build.report["profile"]["layers"]
    depthwise = [r for r in layers if r["op"] == "GroupConvolution"]
    assert depthwise and all(r["precision"] == "int8" for r in depthwise), depthwise
    assert build.report["accuracy"]["cosine_min"] > 0.99


def _lstm_samples(n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """n sequences of lstm_onnx's input [6, 1, 8], stacked along its first axis as calibration data takes them."""
    return {"x": np.random.default_rng(seed).normal(0, 1, (n * 6, 1, 8)).astype(np.float32)}


def test_lstm_stays_float_and_the_plan_says_why_for_every_recurrent_node() -> None:
    model = Model(lstm_onnx(), {"source": "tiny", "kind": "onnx"})
    cal = calibrate(model, CalibrationSet(_lstm_samples()), OPENVINO)
    assert cal.plan.nodes == ("fc",)
    q = cal.quantized()
    lstm = next(n for n in q.proto.graph.node if n.op_type == "LSTM")
    assert list(lstm.input) == ["x", "W", "R", "B"]  # float weights, float input
    (note,) = q.provenance["quantization"]["recurrent"]
    assert (note["node"], note["int8"]) == ("lstm", "none") and "only as constants" in note["why"]
    assert any(line.startswith("int8: LSTM node 'lstm' kept in float") for line in q.provenance["notes"])
    (trt,) = plan_quantization(lstm_onnx(), TENSORRT).recurrent_notes
    assert trt["int8"] == "none" and "TensorRT" in trt["why"]


def test_int8_weights_keeps_lstm_weights_float_and_says_so() -> None:
    out = WeightOnlyInt8Pass().run(Model(lstm_onnx(), {"source": "tiny", "kind": "onnx"}))
    assert [n["int8"] for n in out.provenance["quantization"]["recurrent"]] == ["none"]
    names = {t.name for t in out.proto.graph.initializer}
    assert "wf_quantized" in names and {"W", "R"} <= names


@pytest.mark.requires_openvino
def test_openvino_int8_build_with_an_lstm_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "lstm.onnx"
    onnx.save(lstm_onnx(), path)
    build = edgec.compile(path, "intel-cpu", "int8", calibration=_lstm_samples(), output_dir=tmp_path / "o",
                          profile_runs=5, progress=False, use_cache=False, range_search=0)
    assert build.manifest["quantization"]["recurrent"][0]["int8"] == "none"
    assert any("LSTM node 'lstm' kept in float" in line for line in build.manifest["notes"])
    assert build.report["accuracy"]["cosine_min"] > 0.99


def _produced_by(proto) -> dict[str, str]:
    return {o: n.op_type for n in proto.graph.node for o in n.output}


@pytest.mark.requires_openvino
def test_keep_float_keeps_exactly_those_nodes_float(tmp_path: Path, tiny_onnx: Path) -> None:
    build = edgec.compile(tiny_onnx, "intel-cpu", "int8", calibration=_samples(32), keep_float=["conv2"],
                          output_dir=tmp_path / "o", profile_runs=5, progress=False, use_cache=False)
    assert "int8_guard" not in build.report  # int8 broke nothing: conv2 is float only because it was asked
    proto = onnx.load(str(tmp_path / "o" / "model.onnx"))
    producers, inits = _produced_by(proto), {t.name: t for t in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    conv2 = nodes["conv2"]
    assert not any(producers.get(i) == "DequantizeLinear" for i in conv2.input)  # float input and weights
    assert inits[conv2.input[1]].data_type == onnx.TensorProto.FLOAT
    for name in ("conv1", "node_Gemm_1"):  # the others still run int8
        assert producers[nodes[name].input[0]] == "DequantizeLinear"
        assert producers[nodes[name].input[1]] == "DequantizeLinear"
    assert build.manifest["precision"] == "int8" and build.report["precision"] == "int8"
    assert build.report["keep_float"] == {"requested": ["conv2"], "kept": ["conv2"], "added_by_int8_guard": []}
    assert build.manifest["quantization"]["float_nodes"] == ["conv2"]
    assert {"name": "keep-float", "config": {"requested": ["conv2"], "kept": ["conv2"]}, "seconds": 0.0} in \
        build.manifest["passes"]


@pytest.mark.requires_openvino
def test_keep_float_refuses_names_not_in_the_plan(tmp_path: Path, tiny_onnx: Path) -> None:
    with pytest.raises(ConfigError, match=r"not in this model's int8 quantization plan: nope, relu1\. "
                                          r"Quantized nodes here: .*conv1.*mixed_precision\.ranking"):
        edgec.compile(tiny_onnx, "intel-cpu", "int8", calibration=_samples(16), keep_float=["conv1", "nope", "relu1"],
                      output_dir=tmp_path / "o", range_search=0, progress=False, use_cache=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("precision", ["mixed", "fp32"])
def test_keep_float_is_for_int8_only(precision: str) -> None:
    with pytest.raises(ConfigError, match="--keep-float is for --precision int8; mixed chooses its own"):
        CompileOptions(edgec.load_target("intel-cpu"), precision, CalibrationSet(_samples(8)),
                       max_accuracy_drop=1.0, keep_float=("conv1",))
    with pytest.raises(ConfigError, match="ONNX node names"):
        CompileOptions(edgec.load_target("intel-cpu"), "int8", CalibrationSet(_samples(8)), keep_float=[1])
    options = CompileOptions(edgec.load_target("intel-cpu"), "int8", CalibrationSet(_samples(8)),
                             keep_float=["fc", "conv1", "fc"])
    assert options.keep_float == ("fc", "conv1")
