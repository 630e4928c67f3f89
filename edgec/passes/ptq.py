"""Post-training int8: stream calibration samples through observers (calibrate.py), round weights (GPTQ,
gptq.py), search activation ranges (range_search.py), then insert Q/DQ (qdq.py) with `Calibrated.quantized`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..calibration import CalibrationSet, Samples, fixed_inputs
from ..errors import ConfigError
from ..model import Model, ort_session
from ..progress import Steps
from . import gptq, range_search as rs, smoothquant
from .calibrate import ChannelMinMaxObserver, OutputRecorder, PercentileObserver, collect_statistics, make_observer
from .qdq import Placement, QuantPlan, insert_qdq, plan_quantization, with_recurrent_notes


MIN_CALIBRATION_SAMPLES = 8  # below this, activation ranges are guesses


WEIGHT_ROUNDINGS = ("gptq", "nearest")
# Relative output MSE of int8 vs fp32 (mean over the range search's screening samples, over the mean square of the
# fp32 output) below which the range search is skipped: 1e-3 is 30 dB, a cosine of about 1 - 5e-4. On the
# random-weight BERT of benchmarks/transformer_int8.py (relative 1e-4) the search took 72 s of an 83 s
# calibration and changed no held-out cosine in its 4th decimal; MobileNetV2/Fashion-MNIST, where it pays, is
# at 8.5e-3 (percentile ranges, nearest rounding).
SEARCH_WORTHWHILE = 1e-3


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
    outputs: list[np.ndarray] | None = None  # fp32 first output per calibration sample, if asked to keep them

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
            "float_nodes": list(keep), "calibration": self.samples,
            "recurrent": list(self.plan.recurrent_notes)}, "notes": with_recurrent_notes(self.model, self.plan)}
        return Model(proto, provenance)


def calibration_samples(model: Model, calibration: CalibrationSet | None) -> Samples:
    """The calibration split of `calibration` for `model`'s inputs; ConfigError when there is none or too few."""
    if calibration is None:
        raise ConfigError("int8 needs calibration data: pass --calib PATH (a .npz/.npy file or a folder) "
                          "or calibration=... in Python.")
    samples = calibration.load(model.inputs, "calibration", fixed_inputs(model))
    if samples is None:
        raise ConfigError(f"The calibration data has no calibration split (only val_ arrays): add arrays named "
                          f"after the inputs ({', '.join(s.name for s in model.inputs)}) or 'x'.")
    if len(samples) < MIN_CALIBRATION_SAMPLES:
        raise ConfigError(f"int8 calibration needs at least {MIN_CALIBRATION_SAMPLES} samples; {samples.description} "
                          "has fewer. A few hundred representative inputs are typical.")
    return samples


def calibrate(model: Model, calibration: CalibrationSet | Samples | None, placement: Placement,
              method: str = "percentile", observer_options: Mapping[str, Any] | None = None,
              bias_correction: bool = True, weight_rounding: str = "gptq", range_search: int = 0,
              steps: Steps | None = None, keep_outputs: bool = False, smooth: bool = True) -> Calibrated:
    """Phase 1: plan Q/DQ under the backend's `placement` and stream the calibration samples through observers.

    weight_rounding "gptq" (default) rounds weights to minimise each layer's output error on the
    calibration inputs (passes/gptq.py; bias correction then applies only to layers GPTQ cannot take);
    "nearest" rounds each weight to its nearest level. `range_search` > 0: then refine activation ranges
    by the model's output error on that many calibration samples (passes/range_search.py). `steps` reports
    each phase (statistics, GPTQ, range search) with its progress and time, and the search's estimate.
    `calibration` is a CalibrationSet (its calibration split is loaded) or samples already loaded.
    `smooth`: first migrate activation outliers of token-sequence MatMuls into their weights (SmoothQuant,
    passes/smoothquant.py; a no-op without outliers); `Calibrated.model` is then the smoothed model.
    `keep_outputs`: `Calibrated.outputs` holds the fp32 model's first output on every sample, recorded in
    the statistics pass (a reference that costs no second run).
    """
    samples = calibration if isinstance(calibration, Samples) else calibration_samples(model, calibration)
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise ConfigError(f"Unknown weight rounding '{weight_rounding}'; choose {' or '.join(WEIGHT_ROUNDINGS)}.")
    plan = plan_quantization(model.proto, placement)
    if not plan.nodes:
        rnn = "; ".join(f"{n['op']} {n['where']}" for n in plan.recurrent_notes)
        raise ConfigError("Nothing to quantize: the model has no Conv, Gemm or MatMul with float weights"
                          + (f" (its recurrent layers stay float: {rnn})" if rnn else "")
                          + ". Compile it with --precision fp32.")
    steps = steps or Steps(enabled=False)
    t0 = time.perf_counter()
    if smooth:
        model, plan = _smoothed(model, plan, placement, samples, steps)
    with gptq.Rounder(model.proto, plan.weights, progress=steps.counter("layers rounded")) as rounder:
        hessians = _input_hessians(model, plan, rounder) if weight_rounding == "gptq" else {}
        means_of = ([plan.activations[n][0] for n in plan.weights if plan.activations.get(n) and n not in hessians]
                    if bias_correction else [])  # GPTQ's layers take no bias correction
        range_observers = _range_observers(plan, method, observer_options)
        histograms = _histograms(range_observers) if range_search > 0 else {}
        recorders = [OutputRecorder() for _ in model.proto.graph.output] if keep_outputs or range_search > 0 else []
        extra = _extra_observers(model, plan, hessians, histograms, range_observers, recorders)
        counter = steps.counter("samples")
        with steps.step(f"calibration statistics: {len(samples)} samples, {len(range_observers)} activation tensors"
                        + (f", inputs of {len(hessians)} layers for GPTQ (each rounded once its inputs are in)"
                           if hessians else "")):
            ranges, means = collect_statistics(model.proto, plan.tensors(), samples.feeds, method=method,
                                               symmetric=placement.symmetric_activations, means_of=means_of,
                                               progress=(lambda done: counter(done, len(samples))) if counter else None,
                                               extra=extra, observers=range_observers)
        codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if hessians:
            with steps.step(f"GPTQ weight rounding: {len(hessians)} layers"):
                codes = rounder.finish(hessians)
    means = means if bias_correction else None
    search_log = None
    if histograms:
        with steps.step("activation range search"):
            picked = rs.subset_indices(len(samples), range_search)
            subset = Samples([samples.feeds[i] for i in picked], None, f"{len(picked)} of {samples.description}")
            ranges, search_log = _search_ranges(model, plan, ranges, means, codes, placement, histograms, subset,
                                                [[r.values[i] for r in recorders] for i in picked], steps)
    return Calibrated(model, plan, ranges, means, placement, samples.description,
                      round(time.perf_counter() - t0, 3), codes, search_log, recorders[0].values if keep_outputs else None)


def _range_observers(plan: QuantPlan, method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A `method` observer per activation tensor quantized per tensor; exact per-channel min/max for the tensors
    the plan quantizes per channel (as NNCF does: a clipped channel has no neighbour to share its error with)."""
    observers: dict[str, Any] = {t: make_observer(method, **dict(options or {})) for t in plan.per_tensor()}
    observers.update({t: ChannelMinMaxObserver(axis) for t, axis in plan.channel_axes.items()})
    return observers


def _smoothed(model: Model, plan: QuantPlan, placement: Placement, samples: Samples,
              steps: Steps) -> tuple[Model, QuantPlan]:
    """The SmoothQuant-ed model and its plan (the same ones when no activation has outlier channels)."""
    if not smoothquant.candidates(model.proto, plan):
        return model, plan
    with steps.step(f"SmoothQuant: channel maxima of MatMul inputs on {len(samples)} samples"):
        smoothed, log = smoothquant.smooth(model, plan, samples.feeds)
    if not log:
        return model, plan
    steps.note(f"SmoothQuant: {len(log)} activation tensors smoothed (alpha {smoothquant.ALPHA})")
    return smoothed, plan_quantization(smoothed.proto, placement)


def _histograms(range_observers: Mapping[str, Any]) -> dict[str, PercentileObserver]:
    """The percentile histogram of every activation tensor, for range search candidates: the range observer's own
    when it is one, else a new one (a per-channel tensor's: its per-tensor alternative)."""
    return {t: obs if isinstance(obs, PercentileObserver) else PercentileObserver() for t, obs in range_observers.items()}


def _extra_observers(model: Model, plan: QuantPlan, hessians: Mapping[str, gptq.InputHessian],
                     histograms: Mapping[str, PercentileObserver], range_observers: Mapping[str, Any],
                     recorders: Sequence[OutputRecorder]) -> dict[str, list[Any]]:
    """{tensor: observers besides its range observer}: Hessians on layer inputs, histograms the range observers
    do not already keep, and `recorders[k]` on graph output k."""
    extra: dict[str, list[Any]] = {}
    for n, hess in hessians.items():
        extra.setdefault(plan.activations[n][0], []).append(hess)
    for t, hist in histograms.items():
        if hist is not range_observers[t]:
            extra.setdefault(t, []).append(hist)
    for recorder, output in zip(recorders, model.proto.graph.output):
        extra.setdefault(output.name, []).append(recorder)
    return extra


def _input_hessians(model: Model, plan: QuantPlan, rounder: gptq.Rounder) -> dict[str, gptq.InputHessian]:
    """An input Hessian for every planned node GPTQ can round, handing its layer to `rounder` once complete."""
    nodes = {n.name: n for n in model.proto.graph.node}
    shapes = {t.name: tuple(t.dims) for t in model.proto.graph.initializer}
    return {n: gptq.InputHessian(nodes[n], shapes[w], on_complete=lambda h, n=n: rounder.complete(n, h))
            for n, (w, _) in plan.weights.items() if plan.activations.get(n) and gptq.supports(nodes[n], shapes[w])}


def _relative_error(proto: Any, subset: Samples, reference: Sequence[Sequence[np.ndarray]], n: int) -> float:
    """int8's output MSE over the outputs' mean square (summed over outputs) on `n` samples spread over `subset`."""
    session = ort_session(proto, fuse_qdq=False)
    total = 0.0
    for i in rs.subset_indices(len(subset.feeds), n):
        for out, ref in zip(session.run(None, subset.feeds[i]), reference[i]):
            ref = np.asarray(ref, np.float64)
            power = float(np.mean(np.square(ref)))
            total += float(np.mean((np.asarray(out, np.float64) - ref) ** 2)) / power if power > 0 else 0.0
    return total / max(n, 1)


def _search_ranges(model: Model, plan: QuantPlan, ranges: dict, means: Any, codes: dict, placement: Placement,
                   histograms: Mapping[str, Any], subset: Samples, reference: list[list[np.ndarray]],
                   steps: Steps) -> tuple[dict, dict]:
    """Per-channel tensors first: each tries its per-tensor percentile range instead (kept when the output error
    falls, as any candidate); then the sweep over the per-tensor ranges (range_search.py). Skipped when int8's
    output error is already below SEARCH_WORTHWHILE of the outputs' power."""
    order = list(dict.fromkeys(t for n in plan.nodes for t in plan.activations.get(n, ()) if t in histograms))
    channel = [t for t in order if np.ndim(ranges[t][0])]
    build = lambda r: insert_qdq(model.proto, plan, r, placement, (), means, codes)  # noqa: E731
    screen = min(rs.SCREEN_SAMPLES, len(subset))
    relative = _relative_error(build(ranges), subset, reference, screen)
    if relative < SEARCH_WORTHWHILE:
        steps.note(f"range search skipped: int8's output error is already {relative:.1e} of the output's power")
        return ranges, {"skipped": f"relative output MSE {relative:.2e} < {SEARCH_WORTHWHILE:g}",
                        "relative_output_mse": relative, "samples": subset.description}
    error = rs.OutputError(subset, reference, screen)
    per_tensor = {t: [histograms[t].range(placement.symmetric_activations)] for t in channel}
    first = rs.SearchPlan(channel, per_tensor, len(channel), screen, len(subset))
    ranges, granularity = rs.search_ranges(ranges, first, build, error.score) if channel else (ranges, None)
    rest = [t for t in order if not np.ndim(ranges[t][0])]
    candidates = {t: rs.candidate_ranges(histograms[t], placement.symmetric_activations) for t in rest}
    search = rs.plan_search(ranges, rest, candidates, len(subset))
    searched, log = rs.search_ranges(ranges, search, build, error.score, steps.counter("tensors searched"), steps.note)
    log["samples"] = subset.description
    if granularity is not None:
        log.update(output_error_before=granularity["output_error_before"], per_channel_tensors=len(channel),
                   per_tensor_instead=granularity["changed"], seconds=log["seconds"] + granularity["seconds"],
                   evaluations=log["evaluations"] + granularity["evaluations"])
    return searched, log
