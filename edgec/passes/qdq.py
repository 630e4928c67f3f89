"""Q/DQ planning and insertion: which nodes run int8 under a backend's `Placement`, and the graph rewrite.

Weights: int8, symmetric, per output channel, stored as int8 initializers behind a DequantizeLinear.
Activations: per tensor, a QuantizeLinear -> DequantizeLinear pair on the edge, uint8 asymmetric or int8
symmetric as the placement says; where the placement asks for it (`per_channel_depthwise`), the input of a
depthwise Conv is quantized per channel instead (QuantPlan.channel_axes; its range is a pair of arrays). Each backend owns its Placement (edgec/backends/*.py); this module knows
no backend by name. Every node this pass creates copies `metadata_props` of the node it quantizes, so
profiles still map fused int8 kernels back to PyTorch modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import ConfigError, PassError
from ..model import Model, all_nodes
from .qmath import activation_qparams, channel_activation_qparams, dequantize, quantize_weight


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
# Ops of a model that is quantized already (by ORT's quantizer, NNCF, a QAT export): int8 on top is refused.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                           "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM",
                           "DynamicQuantizeMatMul", "QAttention", "QGemm", "MatMulIntegerToFloat"})


def already_quantized(proto: Any) -> str | None:
    """A refusal naming the quantized ops of `proto` (subgraphs included), or None when it has none."""
    found: dict[str, str] = {}
    for node, where in all_nodes(proto.graph):
        if node.op_type in QUANTIZED_OPS:
            found.setdefault(node.op_type, where)
    if not found:
        return None
    listed = ", ".join(f"{op} ({where})" for op, where in sorted(found.items()))
    return (f"The model is quantized already: {listed}. edgec calibrates float models; compile this one with "
            "--precision fp32 (the backend runs its int8 ops as they are), or give edgec the float model.")


@dataclass(frozen=True)
class Placement:
    """Which ops run in int8 on a backend, and how activations are quantized there."""

    name: str
    ops: tuple[str, ...]
    # Q/DQ on the inputs of two-input Adds, so residual adds fuse into int8 convolutions:
    # "none", "residual" (only the input that does not come straight from a weighted op) or "both".
    residual_add: str
    symmetric_activations: bool
    # Quantize the input of a depthwise Conv per channel (a scale and zero point per channel, exact min/max), as
    # NNCF does for OpenVINO's CPU plugin: after a BatchNorm + HardSwish the channels of a MobileNet-style block
    # span ranges 10x apart, and one per-tensor scale leaves the narrow ones a few levels (issue #16).
    per_channel_depthwise: bool = False
    # Why LSTM/GRU/RNN stay float (weights, inputs and states) under this backend: no backend edgec targets runs
    # them in int8, and none reads int8 weights for them (QuantPlan.recurrent_notes; the report shows it).
    recurrent_float: str = "edgec has no int8 placement for recurrent layers on this backend"


@dataclass(frozen=True)
class QuantPlan:
    """The graph's quantizable nodes and the activation tensors whose ranges calibration must observe."""

    nodes: tuple[str, ...]                      # names of nodes that will run in int8
    activations: dict[str, tuple[str, ...]]     # node -> activation inputs to quantize
    weights: dict[str, tuple[str, int]]         # node -> (weight initializer, channel axis)
    channel_axes: dict[str, int] = field(default_factory=dict)  # activation tensors quantized per channel -> axis
    recurrent_notes: tuple[dict[str, str], ...] = ()  # each LSTM/GRU/RNN of the model: kept float, and why
    # activations quantized int8 symmetric whatever the placement says: both inputs of a MatMul of two activations
    # (attention's query x key), as NNCF does for transformers; OpenVINO then runs that MatMul in i8
    symmetric: frozenset[str] = frozenset()

    def tensors(self) -> list[str]:
        return sorted({t for ts in self.activations.values() for t in ts})

    def per_tensor(self) -> list[str]:
        """The activation tensors quantized with one range (all but `channel_axes`)."""
        return [t for t in self.tensors() if t not in self.channel_axes]


def plan_quantization(proto: Any, placement: Placement) -> QuantPlan:
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    constants = set(inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n.op_type for n in graph.node for o in n.output}
    nodes, activations, weights, symmetric = [], {}, {}, set()
    for node in graph.node:
        if node.op_type in placement.ops:
            acts, weight = _weighted_inputs(node, inits, constants)
            if weight is None and len(acts) < 2 and node.op_type == "MatMul":
                continue  # MatMul by a computed constant: leave it
            if weight is None and any(producers.get(a) == "Softmax" for a in acts):
                continue  # attention probabilities x values: float, as NNCF's transformer scheme and OpenVINO's MHA
            nodes.append(node.name)
            activations[node.name] = tuple(acts)
            if weight is not None:
                weights[node.name] = weight
            elif node.op_type == "MatMul":
                symmetric.update(acts)
        elif node.op_type == "Add" and placement.residual_add != "none":
            acts = [i for i in node.input if i not in constants]
            # Only an Add fed by a convolution fuses into it; elsewhere (transformer residuals, embeddings,
            # attention masks) Q/DQ on its inputs would only add error.
            if len(acts) == 2 and any(producers.get(a) == "Conv" for a in acts):
                # TensorRT fuses Conv + Add when the add's *other* (residual) input is quantized: quantize the
                # inputs that do not come straight from a weighted op; if both or neither do, quantize both.
                residual = [a for a in acts if producers.get(a) not in placement.ops]
                nodes.append(node.name)
                one_side = placement.residual_add == "residual" and len(residual) == 1
                activations[node.name] = tuple(residual if one_side else acts)
    axes = _depthwise_inputs(graph, inits, activations) if placement.per_channel_depthwise else {}
    return QuantPlan(tuple(nodes), activations, weights, axes, recurrent_notes(proto, placement), frozenset(symmetric))


def recurrent_notes(proto: Any, placement: Placement) -> tuple[dict[str, str], ...]:
    """A note per LSTM/GRU/RNN of `proto` (subgraphs included): {"node", "op", "where", "int8": "none", "why"}.
    They are never quantized: their weights, inputs and states stay float, for the placement's reason."""
    return tuple({"node": node.name, "op": node.op_type, "where": where, "int8": "none",
                  "why": f"kept in float (weights, inputs and states): {placement.recurrent_float}"}
                 for node, where in all_nodes(proto.graph) if node.op_type in RECURRENT_OPS)


def is_depthwise(node: Any, inits: Mapping[str, Any]) -> bool:
    """A Conv with more than one group and one input channel per group (its weight initializer says so)."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    dims = inits[node.input[1]].dims
    return group > 1 and len(dims) >= 3 and dims[1] == 1


def _depthwise_inputs(graph: Any, inits: Mapping[str, Any], activations: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    """{tensor: 1} for each planned activation whose every planned reader is a depthwise Conv reading it as data
    (a tensor shared with another int8 node keeps one range: it gets one Q/DQ pair)."""
    by_name = {n.name: n for n in graph.node}
    readers: dict[str, list[Any]] = {}
    for name, tensors in activations.items():
        for t in tensors:
            readers.setdefault(t, []).append(by_name[name])
    return {t: 1 for t, nodes in readers.items()
            if all(is_depthwise(n, inits) and n.input[0] == t for n in nodes)}


def _weighted_inputs(node: Any, inits: Mapping[str, Any], constants: set[str]) -> tuple[list[str], tuple[str, int] | None]:
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv":
        data, weight = node.input[0], node.input[1]
        axis = 0
    elif node.op_type == "Gemm":
        data, weight = node.input[0], node.input[1]
        axis = 0 if attrs.get("transB") is not None and attrs["transB"].i == 1 else 1
        if attrs.get("transA") is not None and attrs["transA"].i == 1:
            return [], None
    else:  # MatMul
        data, weight = node.input[0], node.input[1]
        if weight in inits:
            axis = len(inits[weight].dims) - 1
        else:
            return [t for t in (data, weight) if t not in constants], None
    if weight not in inits or inits[weight].data_type != 1:
        return [data], None
    return [data], (weight, axis)


def insert_qdq(proto: Any, plan: QuantPlan, ranges: Mapping[str, tuple[float, float]], placement: Placement,
               keep_float: Iterable[str] = (), channel_means: Mapping[str, np.ndarray] | None = None,
               weight_codes: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Any:
    """A copy of `proto` with Q/DQ for every planned node except those in `keep_float`.

    Weights in `weight_codes` ({initializer: (int8, scales)}, e.g. rounded by GPTQ) are used as given;
    the others are rounded to nearest, and with `channel_means` (per-channel means of each weighted
    node's input on calibration data) the bias of each such Conv/Gemm absorbs the mean output shift
    its int8 weights cause (bias correction).
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    keep = set(keep_float)
    by_name = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    new_inits: list[Any] = []
    act_dq: dict[str, str] = {}       # activation tensor -> its DQ output
    pending: dict[str, list[Any]] = {}  # DQ output -> [Q, DQ] nodes, emitted before the first consumer
    weight_dq: dict[str, str] = {}
    for name in plan.nodes:
        if name in keep:
            continue
        node = by_name[name]
        meta = list(node.metadata_props)
        for tensor in plan.activations.get(name, ()):
            if tensor not in act_dq:
                if tensor not in ranges:
                    raise PassError(f"quantize: no calibration range for tensor '{tensor}' (input of {name}).")
                qparams, qdq = _activation_qdq(tensor, ranges[tensor],
                                               placement.symmetric_activations or tensor in plan.symmetric, meta,
                                               plan.channel_axes.get(tensor))
                new_inits += qparams
                act_dq[tensor] = qdq[-1].output[0]
                pending[qdq[-1].output[0]] = qdq
            _replace_input(node, tensor, act_dq[tensor])
        if name in plan.weights:
            wname, axis = plan.weights[name]
            given = (weight_codes or {}).get(wname)
            q, scale, corrected_bias = _int8_weight(node, inits, wname, axis, given, channel_means, act_dq)
            new_inits += corrected_bias
            if wname not in weight_dq:
                codes, dq = _weight_dq(wname, q, scale, axis, meta)
                new_inits += codes
                weight_dq[wname] = dq.output[0]
                pending[dq.output[0]] = [dq]
            _replace_input(node, wname, weight_dq[wname])
    _emit_pending(graph, pending)
    _replace_initializers(graph, new_inits)
    return out


def _activation_qdq(tensor: str, lo_hi: tuple[Any, Any], symmetric: bool, meta: list[Any],
                    axis: int | None = None) -> tuple[list[Any], list[Any]]:
    """([scale, zero point] initializers, [QuantizeLinear, DequantizeLinear]) for activation `tensor`
    calibrated to the range `lo_hi`; the nodes carry `meta` (the quantized node's metadata_props).
    With `axis` and two arrays in `lo_hi` (a range per channel along `axis`), the pair quantizes per channel; a
    scalar range (the range search found per-tensor better there) quantizes per tensor."""
    from onnx import helper, numpy_helper

    if axis is not None and np.ndim(lo_hi[0]) == 0:
        axis = None
    if axis is None:
        scale, zero = activation_qparams(*lo_hi, symmetric)
    else:
        scale, zero = channel_activation_qparams(*lo_hi, symmetric)
    base = _safe(tensor)
    qparams = [numpy_helper.from_array(scale, f"{base}_scale"),
               numpy_helper.from_array(zero, f"{base}_zero_point")]
    q = helper.make_node("QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zero_point"],
                         [f"{base}_quantized"], name=f"{base}_QuantizeLinear")
    dq = helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                          [f"{base}_dequantized"], name=f"{base}_DequantizeLinear")
    for n in (q, dq):
        n.metadata_props.extend(meta)
        if axis is not None:
            n.attribute.append(helper.make_attribute("axis", axis))
    return qparams, [q, dq]


def _int8_weight(node: Any, inits: Mapping[str, Any], wname: str, axis: int,
                 given: tuple[np.ndarray, np.ndarray] | None, channel_means: Mapping[str, np.ndarray] | None,
                 act_dq: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(int8 codes, scales, new bias initializers) of `node`'s weight `wname`: `given` codes as they are,
    else rounded to nearest per channel along `axis`, with bias correction when the mean of the node's
    input is in `channel_means` (which rewires the node to a corrected bias)."""
    from onnx import numpy_helper

    w = numpy_helper.to_array(inits[wname])
    q, scale = given if given is not None else quantize_weight(w, axis)
    data = node.input[0] if node.input[0] not in act_dq.values() else _source_of(node.input[0], act_dq)
    if given is None and channel_means is not None and data in channel_means:
        return q, scale, _correct_bias(node, w, dequantize(q, scale, axis), channel_means[data], inits)
    return q, scale, []


def _weight_dq(wname: str, q: np.ndarray, scale: np.ndarray, axis: int, meta: list[Any]) -> tuple[list[Any], Any]:
    """([codes, scales, zero points] initializers, DequantizeLinear) of weight `wname`, per channel on `axis`."""
    from onnx import helper, numpy_helper

    base = _safe(wname)
    codes = [numpy_helper.from_array(q, f"{base}_quantized"),
             numpy_helper.from_array(scale, f"{base}_scale"),
             numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")]
    dq = helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                          [f"{base}_dequantized"], name=f"{base}_DequantizeLinear", axis=axis)
    dq.metadata_props.extend(meta)
    return codes, dq


def _emit_pending(graph: Any, pending: dict[str, list[Any]]) -> None:
    """Insert each pending Q/DQ chain just before the first node that reads its output (keeps the graph
    topologically sorted); consumes `pending`."""
    ordered = []
    for node in graph.node:
        for i in node.input:
            ordered.extend(pending.pop(i, ()))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)


def _replace_initializers(graph: Any, new_inits: list[Any]) -> None:
    """Drop the initializers nothing reads any more (float weights now stored as int8); append `new_inits`."""
    still_used = {i for node, _ in all_nodes(graph) for i in node.input} | {o.name for o in graph.output}
    kept_inits = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)


def _source_of(dq_output: str, act_dq: Mapping[str, str]) -> str:
    return next(t for t, d in act_dq.items() if d == dq_output)


def _correct_bias(node: Any, w: np.ndarray, wq: np.ndarray, mean_in: np.ndarray, inits: Mapping[str, Any]) -> list[Any]:
    """Shift the bias by -(Wq - W) @ E[x] so the int8 layer's mean output matches fp32. Returns new initializers."""
    from onnx import numpy_helper

    dw = (wq - w).astype(np.float64)
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv":
        groups = attrs["group"].i if "group" in attrs else 1
        cout, cin_g = dw.shape[0], dw.shape[1]
        if mean_in.shape[0] != cin_g * groups:
            return []
        per_out = dw.reshape(cout, cin_g, -1).sum(2)                    # [Cout, Cin/g]
        means = mean_in.reshape(groups, cin_g)[np.arange(cout) // (cout // groups)]
        shift = (per_out * means).sum(1)
    elif node.op_type == "Gemm":
        trans_b = "transB" in attrs and attrs["transB"].i == 1
        shift = dw @ mean_in if trans_b else mean_in @ dw
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        shift = shift / beta if beta else shift * 0
        if len(node.input) > 2 and node.input[2] and node.input[2] in inits:
            bias = numpy_helper.to_array(inits[node.input[2]])
            if bias.shape != shift.shape:
                return []  # broadcast bias of another shape: leave it
    else:
        return []
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits:
            return []
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
    else:
        bias = np.zeros(shift.shape, np.float64)
    name = f"{_safe(node.name)}_corrected_bias"
    if len(node.input) > 2:
        node.input[2] = name
    else:
        node.input.append(name)
    return [numpy_helper.from_array((bias - shift).astype(np.float32), name)]


def _replace_input(node: Any, old: str, new: str) -> None:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "_")


# Measured, OpenVINO 2026.4: with W behind a DequantizeLinear the CPU plugin refuses the model ("LSTMSequence node
# ... expects Constant for port 4"), and it has no int8 LSTM/GRU/RNN kernels.
OPENVINO_RECURRENT = ("OpenVINO's CPU plugin runs LSTM/GRU/RNN in f32 only and takes their weights only as "
                      "constants (int8 weights behind a DequantizeLinear fail to load)")


@dataclass(frozen=True)
class WeightOnlyInt8Pass:
    """int8 weights, float activations: for models whose activations do not quantize statically
    (LSTM/Transformer MatMuls). Weights are stored int8 (per output channel) behind a DequantizeLinear;
    the runtime decompresses them (OpenVINO keeps MatMul weights compressed). Needs no calibration data.
    LSTM/GRU/RNN keep float weights (OpenVINO reads them only as constants); the provenance lists each one."""

    ops: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    name: str = "quantize-int8-weights"

    def config(self) -> dict[str, Any]:
        return {"ops": list(self.ops)}

    def run(self, model: Model) -> Model:
        placement = Placement("weights-only", self.ops, residual_add="none", symmetric_activations=True,
                              recurrent_float=OPENVINO_RECURRENT)
        full = plan_quantization(model.proto, placement)
        plan = QuantPlan(tuple(n for n in full.nodes if n in full.weights), {}, full.weights, {}, full.recurrent_notes)
        if not plan.nodes:
            raise ConfigError("int8-weights: the model has no MatMul, Gemm or Conv with float weight initializers"
                              + (" (LSTM/GRU/RNN weights stay float: " + OPENVINO_RECURRENT + ")"
                                 if plan.recurrent_notes else "") + ". Compile it with --precision fp32.")
        proto = insert_qdq(model.proto, plan, {}, placement)
        return Model(proto, {**model.provenance, "quantization": {
            "placement": "weights-only", "int8_nodes": len(plan.nodes), "float_nodes": [],
            "recurrent": list(plan.recurrent_notes)}, "notes": with_recurrent_notes(model, plan)})


def with_recurrent_notes(model: Model, plan: QuantPlan) -> list[str]:
    """The model's notes plus one line per recurrent node saying what int8 did with it (shown in the report)."""
    lines = [f"int8: {n['op']} {n['where']} {n['why']}." for n in plan.recurrent_notes]
    return list(model.provenance.get("notes", [])) + lines
