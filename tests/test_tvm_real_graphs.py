"""TVM builds of the op patterns that broke on published models (#15), as tiny graphs built in code.

- ConvTranspose (PaddleOCR's DBNet text detector): conv2d_transpose reached VM codegen unlowered.
- int32 bytes -> Cast -> Conv1D with a Max clamp (Google's magika): ConvertLayout failed on the Max.
- MatMul + bias whose width has no vector-sized divisor (PP-OCRv4 rec's CTC head, 6625 classes): the
  reduction schedule vectorized a loop around the reduction and the build computed garbage; then it ran
  unvectorized (22 of 38 ms) until such weights were padded to whole vectors.
- Ops TVM's importer cannot read (RNN, a GRU inside an If): refused before any work, naming the nodes.
- LSTM (silero VAD, ddddocr's OCR): no converter in TVM's importer; edgec unrolls it over the static
  sequence. What the unrolling does not implement (clip, ...) is refused before any work.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgec
from edgec import ConfigError
from edgec.backends.tvm import TVMBackend
from edgec.model import Model

pytestmark = pytest.mark.requires_tvm

_RNG = np.random.default_rng(15)


def _weight(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array(_RNG.normal(0, scale, shape).astype(np.float32), name)


def _model(nodes, inputs, output: str, out_shape, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _build(tmp_path: Path, model: onnx.ModelProto, samples: dict[str, np.ndarray] | None = None) -> edgec.Build:
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return edgec.compile(path, "x86-tvm", calibration=samples, output_dir=tmp_path / "out", profile_runs=3,
                         progress=False)


def _assert_matches_onnx_runtime(build: edgec.Build) -> dict[str, str]:
    acc = build.report["accuracy"]
    assert acc["ok"] is True and acc["cosine_min"] > 0.9999 and acc["max_abs_error"] < 1e-3, acc
    return build.manifest["artifact"]["config"]["kernels"]


# (kernel, stride, pads, output_padding, group, bias): the 2x upsampling of DBNet (kernel == stride) and the
# general form (zeros inserted between pixels, then a conv), grouped and with output_padding.
_DECONVS = {
    "k2s2-bias": (2, 2, [0, 0, 0, 0], [0, 0], 1, True),
    "k3s2-pad1-outpad1-bias": (3, 2, [1, 1, 1, 1], [1, 1], 1, True),
    "k4s2-pad1-grouped": (4, 2, [1, 1, 1, 1], [0, 0], 2, False),
}


def _conv_transpose_onnx(kernel: int, stride: int, pads: list[int], out_pad: list[int], group: int,
                         bias: bool) -> onnx.ModelProto:
    """x[1,8,7,9] -> Conv3x3 -> Relu -> ConvTranspose(16) -> Relu: the transposed conv sits between NHWC convs."""
    inits = [_weight("w0", (8, 8, 3, 3)), _weight("w", (8, 16 // group, kernel, kernel)), _weight("b", (16,))]
    up_inputs = ["r0", "w"] + (["b"] if bias else [])
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("ConvTranspose", up_inputs, ["up"], name="up", kernel_shape=[kernel, kernel],
                              strides=[stride, stride], pads=pads, output_padding=out_pad, group=group),
             helper.make_node("Relu", ["up"], ["y"], name="relu1")]
    out_hw = [stride * (n - 1) + out_pad[i] + kernel - pads[i] - pads[i + 2] for i, n in enumerate((7, 9))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 7, 9])], "y",
                  [1, 16, *out_hw], inits if bias else inits[:2])


@pytest.mark.parametrize("case", list(_DECONVS))
def test_conv_transpose_builds_as_a_scheduled_conv_and_matches_onnx_runtime(tmp_path: Path, case: str) -> None:
    build = _build(tmp_path, _conv_transpose_onnx(*_DECONVS[case]))
    kernels = _assert_matches_onnx_runtime(build)
    layer_map = build.manifest["artifact"]["layer_map"]
    # The transposed conv runs as a conv edgec's NHWC rule schedules, and its kernels map back to node 'up'.
    up_kernels = [k for k, nodes in layer_map.items() if "up" in nodes]
    assert any(kernels.get(k.split("#")[0]) == "conv2d-nhwc" for k in up_kernels), (layer_map, kernels)


def test_int32_bytes_cast_conv1d_with_a_max_clamp_builds(tmp_path: Path) -> None:
    """magika's pattern: int32 bytes -> Cast -> Conv1D -> Max(., 0) -> Unsqueeze -> Conv2D [5x1] -> Squeeze.

    TVM's Max converter stacks its inputs; ConvertLayout's rule for stack then failed the build with
    "Invalid SLayout: can't find S in source layout ABCD".
    """
    inits = [_weight("w1", (8, 4, 3), 0.01), _weight("b1", (8,)), _weight("w2", (8, 8, 5, 1)), numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
             numpy_helper.from_array(np.array([3], np.int64), "ax")]
    nodes = [helper.make_node("Cast", ["bytes"], ["xf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Conv", ["xf", "w1", "b1"], ["c1"], name="conv1d", pads=[1, 1]),
             helper.make_node("Max", ["c1", "zero"], ["m"], name="clamp"),
             helper.make_node("Unsqueeze", ["m", "ax"], ["u"], name="unsqueeze"),
             helper.make_node("Conv", ["u", "w2"], ["c2"], name="conv2d"),
             helper.make_node("Squeeze", ["c2", "ax"], ["y"], name="squeeze")]
    model = _model(nodes, [helper.make_tensor_value_info("bytes", TensorProto.INT32, [1, 4, 32])], "y", [1, 8, 28],
                   inits)
    byte_values = {"bytes": _RNG.integers(0, 256, (4, 4, 32)).astype(np.int32)}  # synthetic ints are zeros
    build = _build(tmp_path, model, byte_values)
    kernels = _assert_matches_onnx_runtime(build)
    assert build.report["accuracy"]["samples"] == 4 and build.manifest["inputs"][0]["dtype"] == "int32"
    assert "unscheduled" not in kernels.values(), kernels
    assert any("clamp" in nodes for nodes in build.manifest["artifact"]["layer_map"].values())


def test_matmul_bias_with_an_odd_width_matches_onnx_runtime(tmp_path: Path) -> None:
    """PP-OCRv4 rec's CTC head in small: [1,8,16] @ [16,37] + bias (37, like 6625, has no vector-sized divisor).

    The reduction schedule vectorized the loop around the whole reduction by 8 lanes straddling rows:
    cosine 0.13 against ONNX Runtime before the fix.
    """
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="head"),
             helper.make_node("Add", ["mm", "b"], ["y"], name="bias")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])], "y", [1, 8, 37],
                   [_weight("w", (16, 37)), _weight("b", (37,))])
    kernels = _assert_matches_onnx_runtime(_build(tmp_path, model))
    assert list(kernels.values()) == ["reduction"]


def test_matmul_by_a_wide_odd_constant_is_padded_to_whole_vectors(tmp_path: Path) -> None:
    """[1,4,16] @ [16,100] + bias: N = 100 is padded to 112 so the reduction rule vectorizes it, then cut back."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="head"),
             helper.make_node("Add", ["mm", "b"], ["y"], name="bias")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])], "y", [1, 4, 100],
                   [_weight("w", (16, 100)), _weight("b", (100,))])
    build = _build(tmp_path, model)
    kernels = _assert_matches_onnx_runtime(build)
    assert any("strided_slice" in k and rule == "reduction" for k, rule in kernels.items()), kernels
    assert build.manifest["outputs"][0]["shape"] == [1, 4, 100]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_by_a_wide_odd_constant_is_padded_to_whole_vectors(tmp_path: Path, trans_b: int) -> None:
    """[4,16] x [16,100] + bias as a Gemm (transB either way): padded like the MatMul, same result."""
    shape = (100, 16) if trans_b else (16, 100)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="classifier", transB=trans_b)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])], "y", [4, 100],
                   [_weight("w", shape), _weight("b", (100,))])
    kernels = _assert_matches_onnx_runtime(_build(tmp_path, model))
    assert any("strided_slice" in k for k in kernels), kernels


def test_a_wide_gemm_is_blocked_like_a_1x1_conv(tmp_path: Path) -> None:
    """[16, 32] x [32, 100] (M >= 8 rows, N padded to 112): the conv rule's register tiling, not the reduction rule
    (6.6x faster on ddddocr's [24, 1024] x [1024, 8224] classifier)."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="classifier", transB=1)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 32])], "y", [16, 100],
                   [_weight("w", (100, 32)), _weight("b", (100,))])
    kernels = _assert_matches_onnx_runtime(_build(tmp_path, model))
    assert [rule for k, rule in kernels.items() if "matmul" in k] == ["conv2d-nhwc"], kernels


def test_conv1d_with_an_odd_channel_count_is_tiled_as_a_padded_conv2d(tmp_path: Path) -> None:
    """An STFT as Conv1D (1 -> 100 channels, kernel 16, stride 4): a conv2d over [N, C, 1, L] with the output
    channels padded to 112 and cut back, scheduled by the conv rule (conv1d has no CPU schedule)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="stft", strides=[4])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64])], "y", [1, 100, 13],
                   [_weight("w", (100, 1, 16)), _weight("b", (100,))])
    build = _build(tmp_path, model)
    kernels = _assert_matches_onnx_runtime(build)
    assert "conv2d-nhwc" in kernels.values(), kernels
    assert build.manifest["outputs"][0]["shape"] == [1, 100, 13]


def _recurrent_onnx() -> onnx.ModelProto:
    """x[5,1,4] -> RNN(hidden 3) 'encoder_rnn'; an If whose then-branch holds a GRU 'gru_in_branch'."""
    gru = helper.make_node("GRU", ["h", "gw", "gr"], ["", "gh"], name="gru_in_branch", hidden_size=3)
    then_branch = helper.make_graph([gru], "then", [], [helper.make_tensor_value_info("gh", TensorProto.FLOAT, [1, 1, 3])],
                                    [_weight("gw", (1, 9, 3)), _weight("gr", (1, 9, 3))])
    other = helper.make_graph([helper.make_node("Identity", ["yh"], ["eh"], name="keep")], "else", [],
                              [helper.make_tensor_value_info("eh", TensorProto.FLOAT, [1, 1, 3])])
    nodes = [helper.make_node("RNN", ["x", "w", "r"], ["", "yh"], name="encoder_rnn", hidden_size=3),
             helper.make_node("Reshape", ["yh", "shape"], ["h"], name="as_sequence"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch, else_branch=other)]
    inits = [_weight("w", (1, 3, 4)), _weight("r", (1, 3, 3)),
             numpy_helper.from_array(np.array([1, 1, 3], np.int64), "shape"),
             numpy_helper.from_array(np.array(True), "cond")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_ops_the_importer_cannot_read_are_refused_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "rnn.onnx"
    path.write_bytes(_recurrent_onnx().SerializeToString())
    with pytest.raises(ConfigError) as e:
        edgec.compile(path, "x86-tvm", output_dir=tmp_path / "out", progress=False)
    message = str(e.value)
    assert "RNN (node 'encoder_rnn')" in message
    assert "GRU (node 'gru_in_branch' in the then_branch of 'branch')" in message  # inside an If's subgraph
    assert "intel-cpu (OpenVINO) runs GRU, RNN" in message and "--target intel-cpu" in message
    assert "If (" not in message and "Reshape (" not in message  # what the importer reads is not listed
    assert not (tmp_path / "out").exists()


def test_supported_set_is_the_importers_own_table_plus_edgecs_converters() -> None:
    from tvm.relax.frontend.onnx import onnx_frontend

    convert_map = onnx_frontend._get_convert_map()
    assert "RNN" not in convert_map and "GRU" not in convert_map  # what the refusal above relies on
    assert "LSTM" not in convert_map  # LSTM builds through edgec's converter (the tests below)
    model = Model(_conv_transpose_onnx(*_DECONVS["k2s2-bias"]), {})
    assert TVMBackend().model_refusal(model, edgec.load_target("x86-tvm")) is None


def _lstm_onnx(direction: str = "forward", seq: int = 6, batch: int = 2, size: int = 5, hidden: int = 4,
               optional: tuple[str, ...] = ("B", "initial_h", "initial_c"), layout: int = 0,
               **attrs) -> onnx.ModelProto:
    """x -> LSTM 'rnn' with the optional inputs named in `optional` (initial states as graph inputs) ->
    Y, Y_h and Y_c each through a Relu (so every output is used by another node, as in real models)."""
    dirs = 2 if direction == "bidirectional" else 1
    x_shape = [seq, batch, size] if layout == 0 else [batch, seq, size]
    state_shape = [dirs, batch, hidden] if layout == 0 else [batch, dirs, hidden]
    y_shape = [seq, dirs, batch, hidden] if layout == 0 else [batch, seq, dirs, hidden]
    inits = [_weight("w", (dirs, 4 * hidden, size)), _weight("r", (dirs, 4 * hidden, hidden))]
    inits += [_weight("b", (dirs, 8 * hidden))] if "B" in optional else []
    inits += [_weight("p", (dirs, 3 * hidden))] if "P" in optional else []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_shape)
               for n in ("initial_h", "initial_c") if n in optional]
    names = ["x", "w", "r", "b" if "B" in optional else "", "",
             *(n if n in optional else "" for n in ("initial_h", "initial_c")), "p" if "P" in optional else ""]
    while names[-1] == "":
        names.pop()
    nodes = [helper.make_node("LSTM", names, ["y", "yh", "yc"], name="rnn", hidden_size=hidden, direction=direction,
                              layout=layout, **attrs)]
    nodes += [helper.make_node("Relu", [o], [f"{o}_out"], name=f"relu_{o}") for o in ("y", "yh", "yc")]
    outs = [helper.make_tensor_value_info("y_out", TensorProto.FLOAT, y_shape),
            helper.make_tensor_value_info("yh_out", TensorProto.FLOAT, state_shape),
            helper.make_tensor_value_info("yc_out", TensorProto.FLOAT, state_shape)]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outs, inits),
                              opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _lstm_samples(model: onnx.ModelProto, n: int = 4) -> dict[str, np.ndarray]:
    return {i.name: _RNG.normal(0, 1, [n] + [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


# (direction, optional inputs, layout): forward with every optional input; without initial states (zeros);
# reverse with peepholes; bidirectional with and without B and initial states.
_LSTMS = {
    "forward-B-h0-c0": ("forward", ("B", "initial_h", "initial_c"), 0),
    "forward-no-state": ("forward", ("B",), 0),
    "reverse-peepholes": ("reverse", ("B", "initial_h", "initial_c", "P"), 0),
    "bidirectional-B-h0-c0": ("bidirectional", ("B", "initial_h", "initial_c"), 0),
    "bidirectional-no-B-no-state": ("bidirectional", (), 0),
}


@pytest.mark.parametrize("case", list(_LSTMS))
def test_lstm_is_unrolled_and_matches_onnx_runtime(tmp_path: Path, case: str) -> None:
    """LSTM has no converter in TVM's importer: edgec unrolls it (one X·Wᵀ matmul, then a step per element of
    the sequence). All three outputs (Y, Y_h, Y_c) are compared with ONNX Runtime."""
    direction, optional, layout = _LSTMS[case]
    model = _lstm_onnx(direction, optional=optional, layout=layout)
    build = _build(tmp_path, model, _lstm_samples(model))
    kernels = _assert_matches_onnx_runtime(build)
    assert "unscheduled" not in kernels.values(), kernels
    assert [o["name"] for o in build.manifest["outputs"]] == ["y_out", "yh_out", "yc_out"]
    assert any("rnn" in nodes for nodes in build.manifest["artifact"]["layer_map"].values())


@pytest.mark.parametrize("attrs, words", [({"clip": 3.0}, "clip=3.0"), ({"layout": 1}, "layout=1"),
                                          ({"activations": ["Relu", "Tanh", "Tanh"]}, "activations=")],
                         ids=["clip", "layout1", "activations"])
def test_lstm_variants_the_unrolling_lacks_are_refused_before_any_work(tmp_path: Path, attrs: dict,
                                                                      words: str) -> None:
    path = tmp_path / "lstm.onnx"
    path.write_bytes(_lstm_onnx(**attrs).SerializeToString())
    with pytest.raises(ConfigError) as e:
        edgec.compile(path, "x86-tvm", output_dir=tmp_path / "out", progress=False)
    message = str(e.value)
    assert "LSTM (node 'rnn')" in message and words in message and "--target intel-cpu" in message
    assert not (tmp_path / "out").exists()


def test_conv1d_then_squeeze_of_the_last_axis_builds(tmp_path: Path) -> None:
    """silero VAD's encoder -> LSTM: Conv1D -> Relu -> Squeeze(axes=[-1]). ConvertLayout crashed the build
    with std::bad_alloc on the negative axis; edgec's Squeeze converter makes it non-negative."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Squeeze", ["r", "ax"], ["y"], name="squeeze")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1])], "y", [1, 8],
                   [_weight("w", (8, 4, 3)), numpy_helper.from_array(np.array([-1], np.int64), "ax")])
    _assert_matches_onnx_runtime(_build(tmp_path, model))
