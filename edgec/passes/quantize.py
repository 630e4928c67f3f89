"""Int8 quantization as an ONNX pass: plan where Q/DQ go (per backend), calibrate, insert Q/DQ.

Phase 1 (`calibrate.collect_ranges`) streams calibration samples through observers; phase 2 (here)
rewrites the graph. Weights: int8, symmetric, per output channel, stored as int8 initializers behind a
DequantizeLinear. Activations: per tensor, a QuantizeLinear -> DequantizeLinear pair on the edge,
uint8 asymmetric (OpenVINO, TVM) or int8 symmetric (TensorRT explicit quantization).

Every node this pass creates copies `metadata_props` of the node it quantizes, so profiles still map
fused int8 kernels back to PyTorch modules.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..calibration import CalibrationSet
from ..errors import ConfigError, PassError
from ..model import Model

_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
MIN_CALIBRATION_SAMPLES = 8  # below this, activation ranges are guesses
WEIGHT_ROUNDINGS = ("gptq", "nearest")


@dataclass(frozen=True)
class Placement:
    """Which ops run in int8 on a backend, and how activations are quantized there."""

    name: str
    ops: tuple[str, ...]
    # Q/DQ on the inputs of two-input Adds, so residual adds fuse into int8 convolutions:
    # "none", "residual" (only the input that does not come straight from a weighted op) or "both".
    residual_add: str
    symmetric_activations: bool


PLACEMENTS = {
    # OpenVINO's low-precision transformations fuse FakeQuantize into u8 x i8 kernels (brgconv_*_I8). With both
    # Add inputs quantized (NNCF's scheme) the CPU plugin fuses the residual add into the producing convolution
    # as an int8 sum post-op; otherwise each block output keeps an f32 add + FakeQuantize subgraph.
    "openvino": Placement("openvino", _WEIGHTED_OPS, residual_add="both", symmetric_activations=False),
    # TensorRT explicit quantization: symmetric int8 everywhere; Q/DQ on the residual input of an Add lets
    # the add fuse into the preceding convolution's int8 epilogue (TensorRT's Q/DQ placement guide).
    "tensorrt": Placement("tensorrt", _WEIGHTED_OPS, residual_add="residual", symmetric_activations=True),
    "tvm": Placement("tvm", _WEIGHTED_OPS, residual_add="none", symmetric_activations=False),
}


@dataclass(frozen=True)
class QuantPlan:
    """The graph's quantizable nodes and the activation tensors whose ranges calibration must observe."""

    nodes: tuple[str, ...]                      # names of nodes that will run in int8
    activations: dict[str, tuple[str, ...]]     # node -> activation inputs to quantize
    weights: dict[str, tuple[str, int]]         # node -> (weight initializer, channel axis)

    def tensors(self) -> list[str]:
        return sorted({t for ts in self.activations.values() for t in ts})


def plan_quantization(proto: Any, placement: Placement) -> QuantPlan:
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    constants = set(inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n.op_type for n in graph.node for o in n.output}
    nodes, activations, weights = [], {}, {}
    for node in graph.node:
        if node.op_type in placement.ops:
            acts, weight = _weighted_inputs(node, inits, constants)
            if weight is None and len(acts) < 2 and node.op_type == "MatMul":
                continue  # MatMul by a computed constant: leave it
            nodes.append(node.name)
            activations[node.name] = tuple(acts)
            if weight is not None:
                weights[node.name] = weight
        elif node.op_type == "Add" and placement.residual_add != "none":
            acts = [i for i in node.input if i not in constants]
            if len(acts) == 2:
                # TensorRT fuses Conv + Add when the add's *other* (residual) input is quantized: quantize the
                # inputs that do not come straight from a weighted op; if both or neither do, quantize both.
                residual = [a for a in acts if producers.get(a) not in placement.ops]
                nodes.append(node.name)
                one_side = placement.residual_add == "residual" and len(residual) == 1
                activations[node.name] = tuple(residual if one_side else acts)
    return QuantPlan(tuple(nodes), activations, weights)


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


def activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor scale and zero point: uint8 asymmetric, or int8 symmetric (zero point 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        t = max(abs(lo), abs(hi))
        scale = t / 127.0 if t > 0 else 1.0
        return np.array(scale, np.float32), np.array(0, np.int8)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(round(-lo / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zero, np.uint8)


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 along `axis`: returns (int8 weights, float32 scales)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce) if reduce else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


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
    from onnx import helper, numpy_helper

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
                scale, zero = activation_qparams(*ranges[tensor], placement.symmetric_activations)
                base = _safe(tensor)
                new_inits += [numpy_helper.from_array(scale, f"{base}_scale"),
                              numpy_helper.from_array(zero, f"{base}_zero_point")]
                q = helper.make_node("QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zero_point"],
                                     [f"{base}_quantized"], name=f"{base}_QuantizeLinear")
                dq = helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                                      [f"{base}_dequantized"], name=f"{base}_DequantizeLinear")
                for n in (q, dq):
                    n.metadata_props.extend(meta)
                act_dq[tensor] = dq.output[0]
                pending[dq.output[0]] = [q, dq]
            _replace_input(node, tensor, act_dq[tensor])
        if name in plan.weights:
            wname, axis = plan.weights[name]
            w = numpy_helper.to_array(inits[wname])
            given = (weight_codes or {}).get(wname)
            q, scale = given if given is not None else quantize_weight(w, axis)
            data = node.input[0] if node.input[0] not in act_dq.values() else _source_of(node.input[0], act_dq)
            if given is None and channel_means is not None and data in channel_means:
                new_inits += _correct_bias(node, w, _dequantize(q, scale, axis), channel_means[data], inits)
            if wname not in weight_dq:
                base = _safe(wname)
                new_inits += [numpy_helper.from_array(q, f"{base}_quantized"),
                              numpy_helper.from_array(scale, f"{base}_scale"),
                              numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")]
                dq = helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                                      [f"{base}_dequantized"], name=f"{base}_DequantizeLinear", axis=axis)
                dq.metadata_props.extend(meta)
                weight_dq[wname] = dq.output[0]
                pending[dq.output[0]] = [dq]
            _replace_input(node, wname, weight_dq[wname])
    ordered = []
    for node in graph.node:
        for i in node.input:
            ordered.extend(pending.pop(i, ()))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    still_used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept_inits = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    return out


def _dequantize(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


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


@dataclass(frozen=True)
class Int8QuantizePass:
    """Static int8: calibrate activation ranges on real samples, then insert Q/DQ for the backend."""

    calibration: CalibrationSet
    placement: str = "openvino"
    method: str = "percentile"
    observer_options: Mapping[str, Any] = field(default_factory=dict)
    keep_float: tuple[str, ...] = ()
    bias_correction: bool = True
    weight_rounding: str = "gptq"
    range_search: int = 0
    name: str = "quantize-int8"

    def config(self) -> dict[str, Any]:
        return {"placement": self.placement, "method": self.method, "observer_options": dict(self.observer_options),
                "keep_float": list(self.keep_float), "bias_correction": self.bias_correction,
                "weight_rounding": self.weight_rounding, "range_search": self.range_search,
                "calibration_limit": self.calibration.limit, "calibration_seed": self.calibration.seed}

    def run(self, model: Model) -> Model:
        calibrated = calibrate(model, self.calibration, self.placement, self.method, self.observer_options,
                               self.bias_correction, weight_rounding=self.weight_rounding,
                               range_search=self.range_search)
        return calibrated.quantized(self.keep_float)


@dataclass
class Calibrated:
    """A model with its quantization plan and measured ranges: `quantized(keep_float)` is cheap to repeat."""

    model: Model
    plan: QuantPlan
    ranges: dict[str, tuple[float, float]]
    channel_means: dict[str, np.ndarray] | None
    placement: Placement
    samples: str
    seconds: float
    weight_codes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # GPTQ-rounded weights
    range_search: dict[str, Any] | None = None  # what the activation range search did, if it ran

    def quantized(self, keep_float: Iterable[str] = ()) -> Model:
        keep = tuple(keep_float)
        unknown = sorted(set(keep) - set(self.plan.nodes))
        if unknown:
            raise ConfigError(f"keep_float names nodes that are not quantizable here: {', '.join(unknown)}.")
        proto = insert_qdq(self.model.proto, self.plan, self.ranges, self.placement, keep, self.channel_means,
                           self.weight_codes)
        provenance = {**self.model.provenance, "quantization": {
            "placement": self.placement.name, "int8_nodes": len(self.plan.nodes) - len(keep),
            "gptq_weights": len(self.weight_codes),
            "float_nodes": list(keep), "calibration": self.samples}}
        return Model(proto, provenance)


def calibrate(model: Model, calibration: CalibrationSet | None, placement: str = "openvino",
              method: str = "percentile", observer_options: Mapping[str, Any] | None = None,
              bias_correction: bool = True, progress: Callable[[int, int], None] | None = None,
              weight_rounding: str = "gptq", range_search: int = 0,
              search_progress: Callable[[int, int], None] | None = None) -> Calibrated:
    """Phase 1: plan Q/DQ for the backend and stream the calibration samples through observers.

    weight_rounding "gptq" (default) rounds weights to minimise each layer's output error on the
    calibration inputs (passes/gptq.py; bias correction then applies only to layers GPTQ cannot take);
    "nearest" rounds each weight to its nearest level. `range_search` > 0: then refine activation ranges
    by the model's output error on that many calibration samples (passes/range_search.py).
    """
    from . import gptq, range_search as rs
    from .calibrate import PercentileObserver, collect_statistics, make_observer

    if calibration is None:
        raise ConfigError("int8 needs calibration data: pass --calib PATH (a .npz/.npy file or a folder) "
                          "or calibration=... in Python.")
    if placement not in PLACEMENTS:
        raise ConfigError(f"Unknown Q/DQ placement '{placement}'; choose from {', '.join(PLACEMENTS)}.")
    samples = calibration.load(model.inputs, "calibration")
    if samples is None:
        raise ConfigError(f"The calibration data has no calibration split (only val_ arrays): add arrays named "
                          f"after the inputs ({', '.join(s.name for s in model.inputs)}) or 'x'.")
    if len(samples) < MIN_CALIBRATION_SAMPLES:
        raise ConfigError(f"int8 calibration needs at least {MIN_CALIBRATION_SAMPLES} samples; {samples.description} "
                          "has fewer. A few hundred representative inputs are typical.")
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise ConfigError(f"Unknown weight rounding '{weight_rounding}'; choose {' or '.join(WEIGHT_ROUNDINGS)}.")
    plan = plan_quantization(model.proto, PLACEMENTS[placement])
    if not plan.nodes:
        raise ConfigError("Nothing to quantize: the model has no Conv, Gemm or MatMul with float weights.")
    t0 = time.perf_counter()
    means_of = [plan.activations[n][0] for n in plan.weights if plan.activations.get(n)] if bias_correction else []
    hessians: dict[str, Any] = {}
    if weight_rounding == "gptq":
        nodes = {n.name: n for n in model.proto.graph.node}
        shapes = {t.name: tuple(t.dims) for t in model.proto.graph.initializer}
        hessians = {n: gptq.InputHessian(nodes[n], shapes[w]) for n, (w, _) in plan.weights.items()
                    if plan.activations.get(n) and gptq.supports(nodes[n], shapes[w])}
    extra: dict[str, list[Any]] = {}
    for n, hess in hessians.items():
        extra.setdefault(plan.activations[n][0], []).append(hess)
    range_observers = {t: make_observer(method, **dict(observer_options or {})) for t in plan.tensors()}
    histograms: dict[str, Any] = {}
    if range_search > 0:  # candidates come from a percentile histogram: reuse the range observer's when it has one
        for t, obs in range_observers.items():
            histograms[t] = obs if isinstance(obs, PercentileObserver) else PercentileObserver()
            if histograms[t] is not obs:
                extra.setdefault(t, []).append(histograms[t])
    ranges, means = collect_statistics(model.proto, plan.tensors(), samples.feeds, method=method,
                                       symmetric=PLACEMENTS[placement].symmetric_activations, means_of=means_of,
                                       progress=(lambda done: progress(done, len(samples))) if progress else None,
                                       extra=extra, observers=range_observers)
    codes = gptq.round_weights(model.proto, hessians, plan.weights) if hessians else {}
    means = means if bias_correction else None
    search_log = None
    if histograms:
        ranges, search_log = _search_ranges(model, plan, ranges, means, codes, PLACEMENTS[placement], histograms,
                                            rs.search_subset(samples, range_search), search_progress)
    return Calibrated(model, plan, ranges, means, PLACEMENTS[placement], samples.description,
                      round(time.perf_counter() - t0, 3), codes, search_log)


def _search_ranges(model: Model, plan: QuantPlan, ranges: dict, means: Any, codes: dict, placement: Placement,
                   histograms: Mapping[str, Any], subset: Any, progress: Callable[[int, int], None] | None) -> tuple[dict, dict]:
    from .. import accuracy
    from . import range_search as rs
    from .mixed import make_evaluator

    reference = accuracy.collect(accuracy.onnx_runtime_runner(model.proto), subset)[0].astype(np.float64)
    evaluate = make_evaluator(subset, reference)
    order = list(dict.fromkeys(t for n in plan.nodes for t in plan.activations.get(n, ())))
    candidates = {t: rs.candidate_ranges(histograms[t], placement.symmetric_activations) for t in order}
    searched, log = rs.search_ranges(
        ranges, order, candidates, lambda r: Model(insert_qdq(model.proto, plan, r, placement, (), means, codes), {}),
        lambda m: evaluate(m).error, (lambda done: progress(done, len(order))) if progress else None)
    log["samples"] = subset.description
    return searched, log



@dataclass(frozen=True)
class WeightOnlyInt8Pass:
    """int8 weights, float activations: for models whose activations do not quantize statically
    (LSTM/Transformer MatMuls). Weights are stored int8 (per output channel) behind a DequantizeLinear;
    the runtime decompresses them (OpenVINO keeps MatMul weights compressed). Needs no calibration data.
    """

    ops: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    name: str = "quantize-int8-weights"

    def config(self) -> dict[str, Any]:
        return {"ops": list(self.ops)}

    def run(self, model: Model) -> Model:
        placement = Placement("weights-only", self.ops, residual_add="none", symmetric_activations=True)
        full = plan_quantization(model.proto, placement)
        plan = QuantPlan(tuple(n for n in full.nodes if n in full.weights), {}, full.weights)
        if not plan.nodes:
            raise ConfigError("int8-weights: the model has no MatMul, Gemm or Conv with float weight initializers.")
        proto = insert_qdq(model.proto, plan, {}, placement)
        return Model(proto, {**model.provenance, "quantization": {"placement": "weights-only",
                                                                  "int8_nodes": len(plan.nodes), "float_nodes": []}})
