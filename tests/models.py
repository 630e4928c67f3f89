"""Tiny models built in code for tests: ONNX graphs via onnx.helper (no torch needed) and small nn.Modules."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_conv_onnx(batch: int | str = 1, channels: int = 3, size: int = 16, classes: int = 5,
                   seed: int = 0) -> onnx.ModelProto:
    """x[N,C,H,W] -> Conv(8) -> Relu -> Conv(8) -> Add(residual) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, channels, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (classes, 8)).astype(np.float32), "wf"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgec-tests", ir_version=10)
    onnx.checker.check_model(model)
    return model


def tiny_torch_model():
    """A small residual CNN with named submodules, for provenance tests."""
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.block = Block(8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = self.block(torch.relu(self.stem(x)))
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    return TinyNet().eval()


def tiny_mlp_onnx(tokens: int = 16, dim: int = 64, hidden: int = 256, seed: int = 0) -> onnx.ModelProto:
    """A Transformer-style MLP block: x[1,T,D] -> MatMul -> Relu -> MatMul -> + x."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, (dim, hidden)).astype(np.float32), "w_up"),
             numpy_helper.from_array(rng.normal(0, 0.1, (hidden, dim)).astype(np.float32), "w_down")]
    nodes = [helper.make_node("MatMul", ["x", "w_up"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w_down"], ["d"], name="down"),
             helper.make_node("Add", ["d", "x"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def tiny_resnet_and_mobilenet():
    """(ResNet-like, MobileNetV2-like) nn.Modules: a basic residual block and an inverted residual block."""
    import torch
    import torch.nn as nn

    class Basic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)

        def forward(self, x):
            return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)

    class ResNetLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.layer1 = nn.Sequential(Basic(), Basic())
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.layer1(torch.relu(self.stem(x))).mean((2, 3)))

    class Inverted(nn.Module):
        def __init__(self, c=8, e=4):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(c, c * e, 1), nn.ReLU6(), nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e),
                                      nn.ReLU6(), nn.Conv2d(c * e, c, 1))

        def forward(self, x):
            return x + self.conv(x)

    class MobileNetLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6())
            self.blocks = nn.Sequential(Inverted(), Inverted())
            self.classifier = nn.Linear(8, 10)

        def forward(self, x):
            return self.classifier(self.blocks(self.stem(x)).mean((2, 3)))

    torch.manual_seed(0)
    return ResNetLike().eval(), MobileNetLike().eval()


def tiny_concat_model():
    """Two conv branches concatenated, then a conv and a classifier: pruning must keep the concat consistent."""
    import torch
    import torch.nn as nn

    class ConcatNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, padding=1)
            self.left = nn.Conv2d(32, 32, 3, padding=1)
            self.right = nn.Conv2d(32, 32, 1)
            self.fuse = nn.Conv2d(64, 64, 3, padding=1)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
            return self.head(torch.relu(self.fuse(x)).mean((2, 3)))

    torch.manual_seed(0)
    return ConcatNet().eval()


def if_lstm_onnx(take_lstm_when: int = 16000, seed: int = 0) -> onnx.ModelProto:
    """A Silero-VAD-shaped graph: inputs x [N, M] (dynamic), state [2, 1, 4] (recurrent), sr (int64 scalar);
    `If (sr == take_lstm_when)` runs an LSTM on x reshaped to [1, 1, 8]; the other branch squeezes x, which at
    a fixed x of [1, 8] feeds the LSTM rank 2: shape inference (and ONNX Runtime's loader) reject the fixed
    dims although that branch is never taken. Outputs: y (a scalar) and state_out [2, 1, 4]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 16, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "R")]

    def branch(name: str, squeeze: bool) -> onnx.GraphProto:
        if squeeze:
            head = [helper.make_node("Constant", [], [f"{name}_axes"], value=helper.make_tensor(
                        f"{name}_axes_v", TensorProto.INT64, [1], [0])),
                    helper.make_node("Squeeze", ["x"], [f"{name}_q"], name=f"{name}_squeeze"),
                    helper.make_node("Unsqueeze", [f"{name}_q", f"{name}_axes"], [f"{name}_in"], name=f"{name}_unsq")]
        else:
            head = [helper.make_node("Constant", [], [f"{name}_shape"], value=helper.make_tensor(
                        f"{name}_shape_v", TensorProto.INT64, [3], [1, 1, 8])),
                    helper.make_node("Reshape", ["x", f"{name}_shape"], [f"{name}_in"], name=f"{name}_reshape")]
        body = head + [helper.make_node("LSTM", [f"{name}_in", "W", "R"], [f"{name}_h"], hidden_size=4,
                                        name=f"{name}_lstm"),
                       helper.make_node("ReduceSum", [f"{name}_h"], [f"{name}_y"], keepdims=0, name=f"{name}_sum")]
        return helper.make_graph(body, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [])])

    nodes = [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k_v", TensorProto.INT64, [], [take_lstm_when])),
             helper.make_node("Equal", ["sr", "k"], ["cond"], name="is_rate"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch("then", False),
                              else_branch=branch("else", True)),
             helper.make_node("Tanh", ["state"], ["state_out"], name="state_update")]
    graph = helper.make_graph(
        nodes, "if_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, 1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def old_opset_conv_onnx(opset: int = 11, scaler: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x [1, 3, 16, 16] -> (ImageScaler, an op removed after opset 9, when `scaler`) -> Conv(8) -> Relu ->
    GlobalAveragePool -> Flatten: y [1, 8], at an old opset, as exporters of a few years ago wrote."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("ImageScaler", ["x"], ["xs"], name="scale", scale=0.5, bias=[0.0, 0.1, 0.2])] if scaler else []
    nodes += [helper.make_node("Conv", ["xs" if scaler else "x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["y"], name="flatten")]
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b")]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=6)


def fp16_conv_onnx(seed: int = 0) -> onnx.ModelProto:
    """tiny_conv_onnx with float16 weights, activations and interface (x and logits are float16)."""
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(tiny_conv_onnx(seed=seed), keep_io_types=False)


def three_head_onnx(seed: int = 0, gain: float = 400.0) -> onnx.ModelProto:
    """x[1,3,16,16] -> Conv(8) -> Relu -> three outputs: "logits" [1,5] (GlobalAveragePool, Gemm), "embedding"
    [1,8,16,16] (a Conv), and "mask" [1,1,16,16] = Sigmoid(gain x (Conv_a(x) - Conv_b(x)) - 0.85): two all-but-equal
    convolutions subtracted and amplified, about half the pixels over 0.3, so the rounding of int8 moves the mask
    and little else."""
    rng = np.random.default_rng(seed)
    wa = rng.normal(0, 0.3, (1, 3, 3, 3)).astype(np.float32)
    arrays = {"w1": rng.normal(0, 0.3, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, (8,)),
              "we": rng.normal(0, 0.2, (8, 8, 1, 1)), "wf": rng.normal(0, 0.3, (5, 8)), "bf": np.linspace(0.2, -0.2, 5),
              "wa": wa, "wb": wa + rng.normal(0, 0.01, wa.shape), "gain": np.array(gain), "half": np.array(-0.85)}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
        helper.make_node("Conv", ["r1", "we"], ["embedding"], name="embed"),
        helper.make_node("Conv", ["x", "wa"], ["ma"], name="mask_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["mb"], name="mask_b", pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["ma", "mb"], ["d"], name="diff"),
        helper.make_node("Mul", ["d", "gain"], ["g"], name="amplify"),
        helper.make_node("Add", ["g", "half"], ["z"], name="shift"),
        helper.make_node("Sigmoid", ["z"], ["mask"], name="mask"),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5]),
               helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 8, 16, 16]),
               helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 16, 16])]
    graph = helper.make_graph(nodes, "three_heads",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgec-tests",
                              ir_version=10)
    onnx.checker.check_model(model)
    return model


def depthwise_onnx(channels: int = 16, size: int = 16, classes: int = 4, shared: bool = False,
                   seed: int = 0) -> onnx.ModelProto:
    """A MobileNet-style block: x[1,3,H,W] -> Conv 1x1 (output channels scaled 0.03x..10x) -> HardSwish -> h ->
    depthwise Conv 3x3 -> HardSwish -> GlobalAveragePool -> Flatten -> Gemm -> logits. `shared`: h also feeds a
    plain 1x1 Conv whose output is added to the depthwise output."""
    rng = np.random.default_rng(seed)
    spread = np.logspace(-1.5, 1, channels).astype(np.float32)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (channels, 3, 1, 1)).astype(np.float32) * spread[:, None, None, None], "w1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (channels, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None], "wd"),
             numpy_helper.from_array(rng.normal(0, 0.1, (channels,)).astype(np.float32), "bd"),
             numpy_helper.from_array(rng.normal(0, 0.3, (classes, channels)).astype(np.float32), "wf"),
             numpy_helper.from_array(np.zeros(classes, np.float32), "bf")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("HardSwish", ["c1"], ["h"], name="hswish1"),
             helper.make_node("Conv", ["h", "wd", "bd"], ["d"], name="dwconv", group=channels, pads=[1, 1, 1, 1])]
    if shared:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (channels, channels, 1, 1)).astype(np.float32), "ws"))
        nodes += [helper.make_node("Conv", ["h", "ws"], ["s"], name="side"),
                  helper.make_node("Add", ["d", "s"], ["ds"], name="add")]
    nodes += [helper.make_node("HardSwish", ["ds" if shared else "d"], ["h2"], name="hswish2"),
              helper.make_node("GlobalAveragePool", ["h2"], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "depthwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgec-tests", ir_version=10)
    onnx.checker.check_model(model)
    return model


def two_branch_onnx(seed: int = 0) -> onnx.ModelProto:
    """Two inputs, two outputs, no path between them: a[1,3,8,8] -> Conv 3x3 -> Relu -> oa; b[1,3,8,8] -> Conv
    3x3 -> Relu -> ob (both [1,4,8,8])."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    for v in ("a", "b"):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), f"w{v}"))
        nodes += [helper.make_node("Conv", [v, f"w{v}"], [f"c{v}"], name=f"conv_{v}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{v}"], [f"o{v}"], name=f"relu_{v}")]
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3 if n in "ab" else 4, 8, 8])  # noqa: E731
    graph = helper.make_graph(nodes, "two_branch", [io("a"), io("b")], [io("oa"), io("ob")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgec-tests", ir_version=10)
    onnx.checker.check_model(model)
    return model


def lstm_onnx(steps: int = 6, features: int = 8, hidden: int = 16, classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """x[steps, 1, features] -> LSTM(hidden) -> Y [steps, 1, 1, hidden] -> Reshape [steps, hidden] -> MatMul ->
    logits [steps, classes]: a recurrent layer beside an int8-quantizable MatMul."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (1, 4 * hidden, features)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.3, (1, 4 * hidden, hidden)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.1, (1, 8 * hidden)).astype(np.float32), "B"),
             numpy_helper.from_array(np.array([steps, hidden], np.int64), "shape"),
             numpy_helper.from_array(rng.normal(0, 0.5, (hidden, classes)).astype(np.float32), "wf")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y"], name="lstm", hidden_size=hidden),
             helper.make_node("Reshape", ["Y", "shape"], ["h"], name="flatten"),
             helper.make_node("MatMul", ["h", "wf"], ["logits"], name="fc")]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, features])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [steps, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgec-tests", ir_version=10)
    onnx.checker.check_model(model)
    return model


def prunable_cnn(channels: int = 64, classes: int = 4):
    """A small CNN for 3x16x16 inputs whose convolutions edgec.prune can thin at every target's round_to."""
    import torch
    import torch.nn as nn

    class PrunableCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, channels, 3, padding=1)
            self.bn = nn.BatchNorm2d(channels)
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
            self.head = nn.Linear(channels, classes)

        def forward(self, x):
            x = torch.relu(self.conv(torch.relu(self.bn(self.stem(x)))))
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    return PrunableCNN().eval()
