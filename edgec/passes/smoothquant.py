"""SmoothQuant scale migration (Xiao et al. 2023; NNCF's SmoothQuant): move activation outliers into the weights.

For a MatMul/Gemm y = X W whose activation X has a few channels (last axis) far larger than the rest, per-tensor
int8 of X spends its levels on those channels. With s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (W_j: the
weight row that multiplies channel j), y = (X / s)(s W) exactly; X / s has flatter channels and s W absorbs
them, where per-output-channel weight scales cope far better. The rewrite inserts one Mul(X, 1/s) in front
of the smoothed consumers of X (other consumers still read X) and scales their weights: the fp32 function is
unchanged up to float rounding. OpenVINO folds the Mul into the FakeQuantize that follows it.

Which tensors: activations of rank >= 3 (token sequences) feeding planned int8 MatMul/Gemm nodes with float
weight initializers, whose channel maxima on the calibration samples have outliers: max / median >=
OUTLIER_RATIO. Consumers of one tensor share one scale, that of the consumer with the flattest scales (NNCF's
rule). Scales are clipped below at their 10th percentile and above at 100, as NNCF does; alpha 0.95 is
NNCF's default for MatMuls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..model import Model
from .calibrate import collect_statistics
from .qdq import QuantPlan

ALPHA = 0.95
OUTLIER_RATIO = 6.0  # max / median of the per-channel |X| maxima at which a tensor counts as having outliers
SCALE_MAX = 100.0
SCALE_QUANTILE = 10.0


@dataclass(frozen=True)
class Consumer:
    """A smoothable node: its weight initializer and the weight axis that runs over X's channels."""

    node: str
    weight: str
    axis: int


class ChannelAbsMax:
    """Running max of |x| per channel of the last axis (an observer: `update(x)`)."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, np.float32)).reshape(-1, np.shape(x)[-1]).max(0)
        self.value = a if self.value is None else np.maximum(self.value, a)


def candidates(proto: Any, plan: QuantPlan) -> dict[str, list[Consumer]]:
    """{activation tensor: its smoothable consumers}: planned MatMul (weight [K, N]) and Gemm nodes (no transA)
    whose activation has a known rank >= 3, the weight being a float initializer read by that node alone."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    ranks = _ranks(proto)
    out: dict[str, list[Consumer]] = {}
    for name, (wname, axis) in plan.weights.items():
        node, acts = nodes[name], plan.activations.get(name, ())
        if node.op_type not in ("MatMul", "Gemm") or len(acts) != 1 or readers.get(wname) != 1:
            continue
        if len(inits[wname].dims) != 2 or ranks.get(acts[0], 0) < 3:
            continue
        out.setdefault(acts[0], []).append(Consumer(name, wname, 1 - axis))  # the other axis of a 2-D weight
    return out


def _ranks(proto: Any) -> dict[str, int]:
    """Rank of every tensor shape inference can tell (graph inputs, value_info, outputs)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - a graph shape inference can't read: no ranks, so nothing is smoothed
        return {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


def smoothing_scales(act_max: np.ndarray, weights: Sequence[np.ndarray], alpha: float = ALPHA) -> np.ndarray:
    """One scale per channel for activation maxima `act_max` [K] and the consumers' weight maxima per channel
    (each [K]): each consumer's NNCF scale, clipped to [10th percentile, SCALE_MAX]; the flattest one wins."""
    eps = np.finfo(np.float32).eps
    a = np.maximum(act_max, 1e-5)
    best, best_ratio = None, -1.0
    for w in weights:
        s = a ** alpha / (np.maximum(w, 1e-5) ** (1 - alpha) + eps)
        s = np.clip(s, np.percentile(s, SCALE_QUANTILE), SCALE_MAX)
        ratio = float(s.min() / (s.max() + eps))
        if ratio > best_ratio:
            best, best_ratio = s, ratio
    return best.astype(np.float32)


def has_outliers(act_max: np.ndarray) -> bool:
    """Whether some channels' maxima stand far above the typical channel's (max / median >= OUTLIER_RATIO)."""
    median = float(np.median(act_max))
    return median > 0 and float(act_max.max()) / median >= OUTLIER_RATIO


def smooth(model: Model, plan: QuantPlan, feeds: Sequence[Mapping[str, np.ndarray]],
           alpha: float = ALPHA) -> tuple[Model, dict[str, Any]]:
    """(the smoothed model, a log {tensor: max/median before, after}); the model itself when no activation
    has outliers. One ONNX Runtime pass over `feeds` measures the channel maxima."""
    groups = candidates(model.proto, plan)
    if not groups:
        return model, {}
    observers = {t: ChannelAbsMax() for t in groups}
    collect_statistics(model.proto, [], feeds, extra={t: [o] for t, o in observers.items()})
    maxima = {t: o.value for t, o in observers.items() if o.value is not None and has_outliers(o.value)}
    if not maxima:
        return model, {}
    proto, log = apply_smoothing(model.proto, {t: groups[t] for t in maxima}, maxima, alpha)
    return Model(proto, {**model.provenance, "smoothquant": {"alpha": alpha, "tensors": log}}), log


def apply_smoothing(proto: Any, groups: Mapping[str, list[Consumer]], maxima: Mapping[str, np.ndarray],
                    alpha: float = ALPHA) -> tuple[Any, dict[str, Any]]:
    """A copy of `proto` with each tensor of `groups` divided by its smoothing scale in front of its consumers,
    whose weights take the scale; and a log {tensor: {"ratio_before", "ratio_after", "nodes"}}."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    muls: dict[str, Any] = {}
    log: dict[str, Any] = {}
    for tensor, consumers in groups.items():
        weights = [numpy_helper.to_array(inits[c.weight]) for c in consumers]
        w_max = [np.abs(w).max(axis=1 - c.axis) for w, c in zip(weights, consumers)]
        s = smoothing_scales(maxima[tensor], w_max, alpha)
        base = f"{tensor.replace('/', '_').replace(':', '_')}_smoothed"
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), f"{base}_inverse_scale"))
        mul = helper.make_node("Mul", [tensor, f"{base}_inverse_scale"], [base], name=f"{base}_Mul")
        mul.metadata_props.extend(nodes[consumers[0].node].metadata_props)
        muls[consumers[0].node] = mul
        for c, w in zip(consumers, weights):
            shape = [1, 1]
            shape[c.axis] = -1
            inits[c.weight].CopyFrom(numpy_helper.from_array((w * s.reshape(shape)).astype(np.float32), c.weight))
            node = nodes[c.node]
            node.input[list(node.input).index(tensor)] = base
        smoothed = maxima[tensor] / s
        log[tensor] = {"ratio_before": round(float(maxima[tensor].max() / np.median(maxima[tensor])), 2),
                       "ratio_after": round(float(smoothed.max() / np.median(smoothed)), 2),
                       "nodes": [c.node for c in consumers]}
    _insert_before(graph, muls)
    return out, log


def _insert_before(graph: Any, muls: Mapping[str, Any]) -> None:
    """Put each Mul of `muls` ({node name: Mul}) just before the first of its consumers (keeps the graph sorted)."""
    outputs = {m.output[0]: m for m in muls.values()}
    ordered = []
    for node in graph.node:
        for i in node.input:
            if i in outputs:
                ordered.append(outputs.pop(i))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
