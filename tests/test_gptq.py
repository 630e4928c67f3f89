"""GPTQ weight rounding: the Hessians it needs, and that it lowers the layer output error it promises to."""
from __future__ import annotations

import numpy as np
import pytest
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgec import CalibrationSet
from edgec.model import Model
from edgec.passes.gptq import InputHessian, _gptq, gptq_quantize, im2col
from edgec.backends.openvino import PLACEMENT as OPENVINO
from edgec.passes.ptq import calibrate
from edgec.passes.qmath import dequantize, quantize_weight


def _conv_node(group: int = 1, stride: int = 1, pads=(1, 1, 1, 1)):
    return helper.make_node("Conv", ["x", "w"], ["y"], group=group, strides=[stride, stride], pads=list(pads),
                            kernel_shape=[3, 3])


def test_im2col_matches_a_direct_convolution() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 7, 6)).astype(np.float32)
    w = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
    cols = im2col(x, (3, 3), (2, 2), (1, 0, 1, 2), (1, 1))             # [C, 9, L]
    y = w.reshape(5, -1) @ cols.reshape(-1, cols.shape[2])
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 0, 1, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 7, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x[None]})[0]
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


def test_depthwise_hessian_is_one_small_matrix_per_channel() -> None:
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 5)).astype(np.float32)
    hess = InputHessian(_conv_node(group=3), (3, 1, 3, 3))
    hess.update(x)
    h = hess.hessian()
    assert h.shape == (3, 9, 9)
    cols = np.concatenate([im2col(s, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)) for s in x], axis=2)  # [3, 9, 2*25]
    expected = np.einsum("cil,cjl->cij", cols, cols) / cols.shape[2]
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-6)


def test_conv_hessian_is_the_full_symmetric_matrix_of_all_patches() -> None:
    """H of a regular conv, accumulated over many small buffers by syrk (which fills one triangle), is the whole
    symmetric E[x x^T] of every patch; take() hands over the same matrix."""
    x = np.random.default_rng(1).normal(size=(40, 6, 9, 9)).astype(np.float32)
    hess = InputHessian(_conv_node(), (4, 6, 3, 3), max_samples=len(x))
    for one in x:
        hess.update(one[None])
    cols = np.concatenate([im2col(s, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)) for s in x], axis=2).reshape(1, 54, -1)
    expected = np.einsum("gil,gjl->gij", cols, cols) / cols.shape[2]
    np.testing.assert_allclose(hess.hessian(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hess.take(), expected, rtol=1e-4, atol=1e-5)
    assert hess.sum is None


def test_hessian_stops_after_its_sample_budget() -> None:
    hess = InputHessian(helper.make_node("MatMul", ["x", "w"], ["y"]), (4, 2), max_samples=3)
    for _ in range(10):
        hess.update(np.ones((1, 4), np.float32))
    assert hess.samples == 3 and hess.rows == 3


def test_gptq_lowers_output_error_on_correlated_inputs() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=(2000, 4))
    x = np.concatenate([base, base @ rng.normal(size=(4, 28)) + 0.05 * rng.normal(size=(2000, 28))], 1)  # rank ~4
    w = rng.normal(size=(16, 32)).astype(np.float32)  # Gemm transB=1 layout: [out, in]
    hess = InputHessian(helper.make_node("Gemm", ["x", "w"], ["y"], transB=1), w.shape)
    hess.max_samples = len(x)
    hess.update(x.astype(np.float32))
    q_gptq, scale = gptq_quantize(w, 0, hess.hessian())
    q_near, scale_near = quantize_weight(w, 0)
    np.testing.assert_array_equal(scale, scale_near)                   # same grid, only the rounding differs
    assert q_gptq.dtype == np.int8 and np.abs(q_gptq).max() <= 127
    err = {name: np.mean((x @ (dequantize(q, scale, 0) - w).T) ** 2) for name, q in (("gptq", q_gptq), ("near", q_near))}
    assert err["gptq"] < 0.5 * err["near"]


def test_calibrate_uses_gptq_by_default_and_nearest_on_request() -> None:
    from models import tiny_conv_onnx

    model = Model(tiny_conv_onnx(), {"source": "tiny", "kind": "onnx"})
    x = np.random.default_rng(3).random((24, 3, 16, 16), dtype=np.float32)
    gptq = calibrate(model, CalibrationSet({"x": x}), OPENVINO, "minmax")
    near = calibrate(model, CalibrationSet({"x": x}), OPENVINO, "minmax", weight_rounding="nearest")
    assert set(gptq.weight_codes) == {w for w, _ in gptq.plan.weights.values()} and not near.weight_codes
    onnx.checker.check_model(gptq.quantized().proto)

    def out(proto):
        s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])

    ref = out(model.proto)
    assert np.abs(out(gptq.quantized().proto) - ref).max() < 0.05 * np.abs(ref).max()


def test_gptq_lowers_conv_output_error_on_smooth_images() -> None:
    rng = np.random.default_rng(4)
    noise = rng.normal(size=(8, 4, 20, 20))
    x = (noise + np.roll(noise, 1, 2) + np.roll(noise, 1, 3) + np.roll(noise, (1, 1), (2, 3))).astype(np.float32)
    # regular: 36 inputs per output share errors; depthwise: only 9, so less room to gain
    for group, w_shape, bound in ((1, (8, 4, 3, 3), 0.8), (4, (4, 1, 3, 3), 0.95)):
        w = rng.normal(size=w_shape).astype(np.float32)
        hess = InputHessian(_conv_node(group=group), w_shape, max_samples=len(x))
        hess.update(x)
        q_gptq, scale = gptq_quantize(w, 0, hess.hessian())
        q_near, _ = quantize_weight(w, 0)
        cols = np.concatenate([im2col(s, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)) for s in x], 2)
        cols = cols.reshape(group, -1, cols.shape[2])

        def err(q):
            dw = (dequantize(q, scale, 0) - w).reshape(group, w_shape[0] // group, -1)
            return np.mean(np.einsum("god,gdl->gol", dw, cols) ** 2)

        assert err(q_gptq) < bound * err(q_near), group


def _column_by_column(w: np.ndarray, h: np.ndarray, scale: np.ndarray, damp: float) -> np.ndarray:
    """GPTQ as the paper states it, one column at a time: the reference the blocked version must equal."""
    w, h = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    idx = np.arange(w.shape[2])
    h[:, idx, idx] += np.where(dead, 1.0, 0.0) + damp * diag.mean(1, keepdims=True)
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    upper = np.transpose(np.linalg.cholesky(np.linalg.inv(h)), (0, 2, 1))
    q = np.empty(w.shape)
    for i in range(w.shape[2]):
        q[:, :, i] = np.clip(np.round(w[:, :, i] / scale), -127, 127)
        err = (w[:, :, i] - q[:, :, i] * scale) / upper[:, i, i][:, None]
        w[:, :, i + 1:] -= err[:, :, None] * upper[:, i, None, i + 1:]
    return q.astype(np.int8)


@pytest.mark.parametrize("groups,rows,d", [(1, 48, 300), (4, 8, 130), (16, 2, 9)])
def test_blocked_gptq_equals_the_column_by_column_algorithm(groups: int, rows: int, d: int) -> None:
    """Block sizes that split the columns unevenly, depthwise-like groups and one partial block all round exactly
    as the one-column-at-a-time algorithm does."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(groups, 2 * d, d))
    x[:, :, 1:] += 0.8 * x[:, :, :-1]  # correlated inputs: errors really propagate
    h = np.einsum("gni,gnj->gij", x, x) / (2 * d)
    w = rng.normal(0, 0.05, size=(groups, rows, d))
    scale = np.abs(w).max(2) / 127
    expected = _column_by_column(w, h, scale, 0.1)
    assert (expected != np.clip(np.round(w / scale[:, :, None]), -127, 127)).any()  # GPTQ differs from nearest
    for block in (1, 7, 128, d + 5):
        np.testing.assert_array_equal(_gptq(w, h, scale, 0.1, block=block), expected)


@pytest.mark.parametrize("groups,d", [(1, 600), (5, 40)])
def test_inverse_cholesky_is_the_upper_factor_of_the_inverse(groups: int, d: int) -> None:
    """Blocked (256 columns, so d=600 spans three blocks) and per group: U^T U = H^-1 with U upper triangular."""
    from edgec.passes.gptq import inverse_cholesky_upper

    rng = np.random.default_rng(3)
    x = rng.normal(size=(groups, d, 2 * d))
    x[:, 1:] += 0.8 * x[:, :-1]
    h = np.einsum("gil,gjl->gij", x, x) / (2 * d) + 0.05 * np.eye(d)
    expected = np.transpose(np.linalg.cholesky(np.linalg.inv(h)), (0, 2, 1))
    upper = inverse_cholesky_upper(h.astype(np.float32))
    np.testing.assert_allclose(upper, expected, rtol=0, atol=2e-5 * np.abs(expected).max())
    assert np.all(np.tril(upper, -1) == 0)
    not_positive = -np.eye(4, dtype=np.float32)[None]
    assert inverse_cholesky_upper(not_positive) is None


def _smooth_conv_layer(seed: int = 4):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(16, 16, 24, 24))
    x = (noise + np.roll(noise, 1, 2) + np.roll(noise, 1, 3) + np.roll(noise, (1, 1), (2, 3))).astype(np.float32)
    w = rng.normal(0, 0.05, size=(32, 16, 3, 3)).astype(np.float32)
    hess = InputHessian(_conv_node(), w.shape, max_samples=len(x))
    hess.update(x)
    return w, hess.hessian()


def test_float32_gptq_rounds_as_the_float64_algorithm_does() -> None:
    """The float32 arithmetic (what edgec runs) and float64 round the same codes but for a few weights on a rounding
    boundary, and the layer's output error on H differs by well under 1%."""
    w, h = _smooth_conv_layer()
    q32, scale = gptq_quantize(w, 0, h)
    q64, _ = gptq_quantize(w, 0, h, dtype=np.float64)
    assert np.mean(q32 == q64) >= 0.995

    def err(q):
        dw = (dequantize(q, scale, 0) - w).reshape(1, w.shape[0], -1)
        return float(np.einsum("goi,gij,goj->", dw, h.astype(np.float64), dw))

    assert abs(err(q32) / err(q64) - 1) < 0.01


def test_rounding_layers_in_parallel_gives_the_codes_of_one_at_a_time() -> None:
    """gptq.Rounder rounds on worker threads, widest first, as Hessians complete: the same codes as gptq_quantize
    on each layer alone."""
    from edgec.passes.gptq import Rounder

    rng = np.random.default_rng(6)
    layers = {f"n{i}": rng.normal(0, 0.05, size=(8 * (i + 1), 4, 3, 3)).astype(np.float32) for i in range(4)}
    graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(w, f"w{n}") for n, w in layers.items()])
    proto = helper.make_model(graph)
    x = rng.normal(size=(6, 4, 10, 10)).astype(np.float32)
    hessians, alone = {}, {}
    for n, w in layers.items():
        hessians[n] = InputHessian(_conv_node(), w.shape, max_samples=len(x))
        hessians[n].update(x)
        alone[f"w{n}"] = gptq_quantize(w, 0, hessians[n].hessian())
    with Rounder(proto, {n: (f"w{n}", 0) for n in layers}) as rounder:
        for n in ("n0", "n2"):
            rounder.complete(n, hessians[n])
        codes = rounder.finish(hessians)
    assert set(codes) == set(alone)
    for w, (q, scale) in codes.items():
        np.testing.assert_array_equal(q, alone[w][0])
        np.testing.assert_array_equal(scale, alone[w][1])
    assert all(h.sum is None for h in hessians.values())                  # each H freed once its layer is rounded
