"""Post-training int8: stream calibration samples through observers (calibrate.py), round weights (GPTQ,
gptq.py), search activation ranges (range_search.py), then insert Q/DQ (qdq.py) with `Calibrated.quantized`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .. import accuracy
from ..calibration import CalibrationSet
from ..errors import ConfigError
from ..model import Model
from . import gptq, range_search as rs
from .calibrate import PercentileObserver, collect_statistics, make_observer
from .qdq import Placement, QuantPlan, insert_qdq, plan_quantization


MIN_CALIBRATION_SAMPLES = 8  # below this, activation ranges are guesses


WEIGHT_ROUNDINGS = ("gptq", "nearest")


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


def calibrate(model: Model, calibration: CalibrationSet | None, placement: Placement,
              method: str = "percentile", observer_options: Mapping[str, Any] | None = None,
              bias_correction: bool = True, progress: Callable[[int, int], None] | None = None,
              weight_rounding: str = "gptq", range_search: int = 0,
              search_progress: Callable[[int, int], None] | None = None,
              rounding_progress: Callable[[int, int], None] | None = None) -> Calibrated:
    """Phase 1: plan Q/DQ under the backend's `placement` and stream the calibration samples through observers.

    weight_rounding "gptq" (default) rounds weights to minimise each layer's output error on the
    calibration inputs (passes/gptq.py; bias correction then applies only to layers GPTQ cannot take);
    "nearest" rounds each weight to its nearest level. `range_search` > 0: then refine activation ranges
    by the model's output error on that many calibration samples (passes/range_search.py).
    """
    if calibration is None:
        raise ConfigError("int8 needs calibration data: pass --calib PATH (a .npz/.npy file or a folder) "
                          "or calibration=... in Python.")
    samples = calibration.load(model.inputs, "calibration")
    if samples is None:
        raise ConfigError(f"The calibration data has no calibration split (only val_ arrays): add arrays named "
                          f"after the inputs ({', '.join(s.name for s in model.inputs)}) or 'x'.")
    if len(samples) < MIN_CALIBRATION_SAMPLES:
        raise ConfigError(f"int8 calibration needs at least {MIN_CALIBRATION_SAMPLES} samples; {samples.description} "
                          "has fewer. A few hundred representative inputs are typical.")
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise ConfigError(f"Unknown weight rounding '{weight_rounding}'; choose {' or '.join(WEIGHT_ROUNDINGS)}.")
    plan = plan_quantization(model.proto, placement)
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
                                       symmetric=placement.symmetric_activations, means_of=means_of,
                                       progress=(lambda done: progress(done, len(samples))) if progress else None,
                                       extra=extra, observers=range_observers)
    codes = gptq.round_weights(model.proto, hessians, plan.weights, progress=rounding_progress) if hessians else {}
    means = means if bias_correction else None
    search_log = None
    if histograms:
        ranges, search_log = _search_ranges(model, plan, ranges, means, codes, placement, histograms,
                                            rs.search_subset(samples, range_search), search_progress)
    return Calibrated(model, plan, ranges, means, placement, samples.description,
                      round(time.perf_counter() - t0, 3), codes, search_log)


def _search_ranges(model: Model, plan: QuantPlan, ranges: dict, means: Any, codes: dict, placement: Placement,
                   histograms: Mapping[str, Any], subset: Any, progress: Callable[[int, int], None] | None) -> tuple[dict, dict]:
    reference = accuracy.collect(accuracy.onnx_runtime_runner(model.proto), subset)[0].astype(np.float64)
    evaluate = accuracy.make_evaluator(subset, reference)
    order = list(dict.fromkeys(t for n in plan.nodes for t in plan.activations.get(n, ())))
    candidates = {t: rs.candidate_ranges(histograms[t], placement.symmetric_activations) for t in order}
    searched, log = rs.search_ranges(
        ranges, order, candidates, lambda r: Model(insert_qdq(model.proto, plan, r, placement, (), means, codes), {}),
        lambda m: evaluate(m).error, (lambda done: progress(done, len(order))) if progress else None)
    log["samples"] = subset.description
    return searched, log
