"""Accuracy: a candidate's outputs against the fp32 ONNX Runtime reference, and against labels; evaluators
that score a model on samples (mixed precision, range search) and the standard error of an accuracy drop."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .calibration import Samples
from .model import Model, ort_session

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
NEGLIGIBLE = 1e-3  # of the reference's largest magnitude (at least 1): outputs below it on both sides agree


def onnx_runtime_runner(proto: Any) -> Runner:
    """An fp32 ONNX Runtime CPU session: the reference every backend is checked against."""
    session = ort_session(proto)
    return lambda feeds: session.run(None, feeds)


def collect(runner: Runner, samples: Samples) -> list[np.ndarray]:
    """First output of every sample, concatenated along the batch dim: [N, ...]."""
    return [rows([runner(feed)[0] for feed in samples.feeds])]


def rows(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Per-sample outputs joined along the batch dim; a scalar output (0-d) counts as one row."""
    return np.concatenate([np.atleast_1d(o) for o in outputs])


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
            labels: np.ndarray | None = None) -> dict[str, Any]:
    """Agreement of the first output: top-1 (classification-shaped outputs), cosine, max-abs, rel-L2."""
    ref = np.asarray(reference[0], dtype=np.float64)
    cand = np.asarray(candidate[0], dtype=np.float64)
    n = ref.shape[0]
    r, c = ref.reshape(n, -1), cand.reshape(n, -1)
    cos = (r * c).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1), 1e-12)
    # A sample where both outputs are all but zero (a text detector's map of a photo: every pixel ~1e-6) has
    # no direction to compare: both say "nothing here", which agrees.
    floor = NEGLIGIBLE * max(1.0, float(np.abs(r).max()) if r.size else 1.0)
    quiet = (np.abs(r).max(1, initial=0.0) <= floor) & (np.abs(c).max(1, initial=0.0) <= floor)
    cos = np.where(quiet, 1.0, cos)
    result: dict[str, Any] = {
        "samples": int(n),
        "cosine_mean": round(float(cos.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
        "max_abs_error": float(np.abs(r - c).max()),
        "rel_l2_error": round(float(np.linalg.norm(r - c) / max(np.linalg.norm(r), 1e-12)), 6),
    }
    if quiet.any():
        result["negligible_samples"] = int(quiet.sum())  # both outputs all but zero: counted as agreeing
    if ref.ndim == 2 and ref.shape[1] > 1:
        top_ref, top_cand = ref.argmax(1), cand.argmax(1)
        result["top1_agreement"] = round(float((top_ref == top_cand).mean()), 5)
        if labels is not None and len(labels) == n:
            acc_ref = float((top_ref == labels).mean())
            acc_cand = float((top_cand == labels).mean())
            result["labelled"] = {"reference_accuracy": round(acc_ref, 5), "accuracy": round(acc_cand, 5),
                                  "drop_points": round(100 * (acc_ref - acc_cand), 3)}
    return result


@dataclass
class Evaluation:
    score: float        # labelled accuracy % or top-1 agreement with fp32 %
    error: float        # mean squared error of the first output vs fp32
    correct: np.ndarray  # per sample: top-1 is right (labels) or agrees with fp32 (no labels)


def drop_standard_error(fp32_correct: np.ndarray, other_correct: np.ndarray) -> float:
    """Standard error (points) of an accuracy drop from per-sample correctness: the drop is the mean over samples
    of +1 (fp32 right, the other wrong), -1 (the reverse) or 0, so only the samples whose prediction flipped count."""
    diff = np.asarray(fp32_correct, dtype=np.float64) - np.asarray(other_correct, dtype=np.float64)
    return 100.0 * float(diff.std()) / float(np.sqrt(len(diff)))


def make_evaluator(samples: Samples, reference_outputs: np.ndarray) -> Callable[[Model], Evaluation]:
    """Score a model with ONNX Runtime on `samples` against fp32 outputs (and labels when present)."""
    def evaluate(model: Model) -> Evaluation:
        session = ort_session(model.proto)
        out = rows([session.run(None, feed)[0] for feed in samples.feeds])
        error = float(np.mean((out.astype(np.float64) - reference_outputs) ** 2))
        top = out.reshape(len(out), -1).argmax(1)
        truth = samples.labels if samples.labels is not None else reference_outputs.reshape(len(out), -1).argmax(1)
        correct = top == truth
        return Evaluation(100.0 * float(correct.mean()), error, correct)

    return evaluate
