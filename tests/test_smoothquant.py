"""SmoothQuant (passes/smoothquant.py): exact in fp32, lower int8 error with an outlier activation channel;
and the transformer placement rules of qdq.plan_quantization."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgec.backends.openvino import PLACEMENT as OPENVINO
from edgec.calibration import Samples
from edgec.model import Model
from edgec.passes import smoothquant
from edgec.passes.ptq import calibrate
from edgec.passes.qdq import plan_quantization
from models import tiny_mlp_onnx

OUTLIER = 5  # the channel of x that is 40x larger than the others


def _feeds(n: int = 16, seed: int = 0, outlier: float = 40.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 1, 16, 64)).astype(np.float32)
    x[..., OUTLIER] *= outlier
    return [{"x": xi} for xi in x]


def _run(proto, feeds) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, f)[0] for f in feeds])


def _model() -> Model:
    return Model(tiny_mlp_onnx(), {"source": "tiny", "kind": "onnx"})


def test_smoothing_keeps_the_fp32_function():
    model, feeds = _model(), _feeds()
    smoothed, log = smoothquant.smooth(model, plan_quantization(model.proto, OPENVINO), feeds)
    assert "x" in log and log["x"]["ratio_after"] < log["x"]["ratio_before"]
    assert sum(n.op_type == "Mul" for n in smoothed.proto.graph.node) == len(log)
    onnx.checker.check_model(smoothed.proto)
    before, after = _run(model.proto, feeds), _run(smoothed.proto, feeds)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * float(np.abs(before).max()))


def test_no_outliers_no_smoothing():
    model = _model()
    smoothed, log = smoothquant.smooth(model, plan_quantization(model.proto, OPENVINO), _feeds(outlier=1.0))
    assert smoothed is model and log == {}


def _int8_error(smooth: bool) -> float:
    model, feeds, held = _model(), _feeds(), _feeds(seed=1)
    calibrated = calibrate(model, Samples(feeds, None, "16 samples"), OPENVINO, weight_rounding="nearest",
                           range_search=0, smooth=smooth)
    reference = _run(model.proto, held)
    return float(np.mean((_run(calibrated.quantized().proto, held) - reference) ** 2) / np.mean(reference ** 2))


def test_smoothing_lowers_int8_error_with_an_outlier_channel():
    plain, smoothed = _int8_error(False), _int8_error(True)
    assert smoothed < 0.5 * plain, (plain, smoothed)


def _attention_onnx() -> onnx.ModelProto:
    """x -> (x Wq)(x Wk)^T -> + mask -> Softmax -> @ (x Wv) -> + x: one attention head with a residual."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, (16, 16)).astype(np.float32), n) for n in ("wq", "wk", "wv")]
    nodes = [helper.make_node("MatMul", ["x", w], [o], name=o) for w, o in (("wq", "q"), ("wk", "k"), ("wv", "v"))]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
              helper.make_node("Add", ["s", "mask"], ["sm"], name="masked"),
              helper.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["o"], name="context"),
              helper.make_node("Add", ["o", "x"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16]),
                                                   helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_transformer_placement_keeps_softmax_matmul_and_adds_in_float():
    plan = plan_quantization(_attention_onnx(), OPENVINO)
    assert set(plan.nodes) == {"q", "k", "v", "scores"}  # not the probabilities x values, nor any Add
    assert plan.activations["scores"] == ("q", "kt")


def test_range_search_is_skipped_when_int8_is_already_close():
    """An int8 model within SEARCH_WORTHWHILE (relative output MSE) of fp32 gets no range search: it says why."""
    from edgec.passes import ptq

    model, feeds = _model(), _feeds(outlier=1.0)
    calibrated = calibrate(model, Samples(feeds, None, "16 samples"), OPENVINO, range_search=16)
    log = calibrated.range_search
    assert "skipped" in log and log["relative_output_mse"] < ptq.SEARCH_WORTHWHILE
