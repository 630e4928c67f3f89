"""Accuracy: a candidate's outputs, every one of them, against the fp32 ONNX Runtime reference and the user's
labels, each in its task metric (metrics.py); the accuracy check's criteria; evaluators that score a model
on samples (mixed precision, the int8 guard)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from . import metrics
from .calibration import Samples
from .metrics import Labels, Metric
from .model import Model, ort_session

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
# The accuracy check, per output: a build is wrong (its compile fails, AccuracyCheckFailed) below the floor.
# Float builds must compute what ONNX Runtime computes: (cosine statistic, floor) on every output. An int8 build
# is judged in each output's task metric: at least INT8_FLOOR points of agreement with fp32 (top-1 agreement,
# mAP against fp32's boxes, mask IoU, x100 cosine ...). A mixed build is judged by its budget.
FLOAT_CRITERION = {"fp32": ("cosine_min", 0.999), "fp16": ("cosine_min", 0.99), "bf16": ("cosine_min", 0.98),
                   "int8-weights": ("cosine_min", 0.98)}
INT8_FLOOR = 90.0


def onnx_runtime_runner(proto: Any, fuse_qdq: bool = True) -> Runner:
    """An ONNX Runtime CPU session: of the fp32 model, the reference every backend is checked against.
    `fuse_qdq=False` runs Q/DQ pairs as they are (model.ort_session): how evaluators score candidate builds."""
    session = ort_session(proto, fuse_qdq=fuse_qdq)
    return lambda feeds: session.run(None, feeds)


def stacked(per_sample: Sequence[np.ndarray]) -> np.ndarray:
    """One output over the samples, [N, ...]: joined along the batch dim when each sample's output has a batch
    of one (or is a scalar), else stacked on a new leading axis (an output [T, 1, V] becomes [N, T, 1, V])."""
    arrays = [np.atleast_1d(o) for o in per_sample]
    if all(a.shape[0] == 1 for a in arrays) or any(a.shape != arrays[0].shape for a in arrays):
        return np.concatenate(arrays)
    return np.stack(arrays)


def collect(runner: Runner, samples: Samples) -> list[np.ndarray]:
    """Every output of the model on every sample: one [N, ...] array per output."""
    runs = [runner(feed) for feed in samples.feeds]
    return [stacked([run[i] for run in runs]) for i in range(len(runs[0]))]


@dataclass(frozen=True)
class Judge:
    """The metrics of one compile, chosen once from the fp32 reference: one per output, and the primary one
    (budgets, the headline). `spec`: see metrics.for_model."""

    names: tuple[str, ...]
    per_output: tuple[Metric, ...]
    primary: Metric

    @classmethod
    def of(cls, proto: Any, reference: Sequence[np.ndarray], spec: Any = None) -> "Judge":
        per_output, primary = metrics.for_model(proto, reference, spec)
        return cls(tuple(o.name for o in proto.graph.output), tuple(per_output), primary)


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], labels: Labels | None,
            judge: Judge) -> dict[str, Any]:
    """Every output against fp32 in its metric (and cosine, max-abs, rel-L2); the primary metric against the
    labels when it reads them. Top level: the worst output's cosine and errors."""
    rows = [_output_row(name, m, reference, candidate) for name, m in zip(judge.names, judge.per_output)]
    primary = judge.primary
    result: dict[str, Any] = {
        "samples": int(len(reference[0])), "metric": primary.name,
        "cosine_mean": min(r["cosine_mean"] for r in rows), "cosine_min": min(r["cosine_min"] for r in rows),
        "max_abs_error": max(r["max_abs_error"] for r in rows), "rel_l2_error": max(r["rel_l2_error"] for r in rows),
        "outputs": rows}
    if primary.output is None and labels is None:  # a callable: its truth is the labels when there are any
        result["score"] = round(primary.score(candidate, reference), 4)
    if judge.per_output[0].name == "top1":
        result["top1_agreement"] = round(rows[0]["agreement"] / 100, 5)
    quiet = sum(r.get("negligible_samples", 0) for r in rows)
    if quiet:
        result["negligible_samples"] = quiet  # both outputs all but zero: counted as agreeing
    if primary.against_labels(labels):
        ref_score, score = primary.score(reference, reference, labels), primary.score(candidate, reference, labels)
        result["labelled"] = {"metric": primary.name, "reference": round(ref_score, 4), "value": round(score, 4),
                              "drop_points": round(ref_score - score, 3),
                              "standard_error_points": round(metrics.standard_error_of_drop(primary, reference,
                                                                                         candidate, labels), 3)}
    return result


def _output_row(name: str, metric: Metric, reference: Sequence[np.ndarray],
                candidate: Sequence[np.ndarray]) -> dict[str, Any]:
    i = metric.output if metric.output is not None else 0
    ref, cand = np.asarray(reference[i], np.float64), np.asarray(candidate[i], np.float64)
    cos = metrics.cosines(ref, cand)
    row: dict[str, Any] = {"name": name, "metric": metric.name, "why": metric.why,
                           "agreement": round(metric.score(candidate, reference), 4),
                           "cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
                           "max_abs_error": float(np.abs(ref - cand).max()) if ref.size else 0.0,
                           "rel_l2_error": round(float(np.linalg.norm(ref - cand) / max(np.linalg.norm(ref), 1e-12)), 6)}
    quiet = int(metrics.negligible(ref, cand).sum())
    if quiet:
        row["negligible_samples"] = quiet
    broken = int(cand.size - np.isfinite(cand).sum())
    if broken:
        row["non_finite_values"] = broken  # inf/NaN (an fp16 overflow): fails the check whatever the metric says
    return row


def check(result: dict[str, Any], precision: str) -> dict[str, Any]:
    """Add the check's criterion, what was measured and ok to a `compare` result, for a `precision` build:
    every output must pass, and hold no inf or NaN where fp32 has none. Precisions without a criterion (mixed:
    its budget) are left as they are."""
    if precision in FLOAT_CRITERION:
        stat, floor = FLOAT_CRITERION[precision]
        failing = [r for r in result["outputs"] if not r[stat] >= floor or r.get("non_finite_values")]
        result["criterion"] = f"{stat} >= {floor} vs the fp32 reference on every output"
        worst = min(result["outputs"], key=lambda r: r[stat])
        result["measured"] = f"{stat} {worst[stat]} ({worst['name']})"
    elif precision == "int8":
        failing = [r for r in result["outputs"] if not r["agreement"] >= INT8_FLOOR or r.get("non_finite_values")]
        result["criterion"] = f"at least {INT8_FLOOR:g} points of agreement with fp32 in each output's metric"
        worst = min(result["outputs"], key=lambda r: r["agreement"])
        result["measured"] = f"{worst['metric']} {worst['agreement']:.2f} ({worst['name']})"
    else:
        return result
    result["ok"] = not failing
    if failing:
        result["failing_outputs"] = [r["name"] for r in failing]
        broken = [r for r in failing if r.get("non_finite_values")]
        if broken:
            result["measured"] += (f"; {broken[0]['non_finite_values']} inf/NaN values in {broken[0]['name']} (an "
                                   "overflow: fp16 tops out at 65504; build fp32, or scale that layer down)")
    return result


@dataclass
class Evaluation:
    """A model scored on samples: the primary metric (points: vs labels when given, else agreement with fp32),
    a continuous error for ranking, each output's agreement, and the outputs (for standard errors)."""
    score: float
    error: float                  # sum over outputs of MSE vs fp32 / the fp32 output's mean square
    agreements: list[float]       # per output, points of agreement with fp32 in its metric
    outputs: list[np.ndarray]


def reference_evaluation(reference: Sequence[np.ndarray], judge: Judge, labels: Labels | None) -> Evaluation:
    """The fp32 model's own evaluation, from its outputs: it agrees with itself on every output."""
    return Evaluation(judge.primary.score(reference, reference, labels), 0.0, [100.0] * len(judge.per_output),
                      list(reference))


def make_evaluator(samples: Samples, reference: Sequence[np.ndarray], judge: Judge) -> Callable[[Model], Evaluation]:
    """Score a model with ONNX Runtime on `samples` against fp32 `reference` outputs (and labels when present)."""
    ref64 = [np.asarray(r, np.float64) for r in reference]
    power = [max(float(np.mean(r ** 2)), 1e-12) for r in ref64]

    def evaluate(model: Model) -> Evaluation:
        outs = collect(onnx_runtime_runner(model.proto, fuse_qdq=False), samples)
        error = sum(float(np.mean((o.astype(np.float64) - r) ** 2)) / p for o, r, p in zip(outs, ref64, power))
        agreements = [m.score(outs, reference) for m in judge.per_output]
        return Evaluation(judge.primary.score(outs, reference, samples.labels), error, agreements, outs)

    return evaluate


def drop_standard_error(fp32_correct: np.ndarray, other_correct: np.ndarray) -> float:
    """Standard error (points) of an accuracy drop from per-sample correctness: the drop is the mean over samples
    of +1 (fp32 right, the other wrong), -1 (the reverse) or 0, so only the samples whose prediction flipped count.
    (metrics.standard_error_of_drop does the same for any metric, by bootstrap.)"""
    diff = np.asarray(fp32_correct, dtype=np.float64) - np.asarray(other_correct, dtype=np.float64)
    return 100.0 * float(diff.std()) / float(np.sqrt(len(diff)))


def drop_points(result: dict[str, Any]) -> float | None:
    """Points a candidate lost against fp32 in the primary metric, from a `compare` result: against the labels
    when it has them, else 100 - its agreement with fp32 (the measure --max-accuracy-drop bounds). None when the
    result has no rows (nothing was checked)."""
    if "labelled" in result:
        return round(float(result["labelled"]["drop_points"]), 4)
    rows = result.get("outputs") or []
    primary = next((r for r in rows if r["metric"] == result.get("metric")), rows[0] if rows else None)
    return None if primary is None else round(100.0 - float(primary["agreement"]), 4)
