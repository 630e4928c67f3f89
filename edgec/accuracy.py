"""Accuracy: a candidate's outputs against the fp32 ONNX Runtime reference, and against labels."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .calibration import Samples
from .model import ort_session

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def onnx_runtime_runner(proto: Any) -> Runner:
    """An fp32 ONNX Runtime CPU session: the reference every backend is checked against."""
    session = ort_session(proto)
    return lambda feeds: session.run(None, feeds)


def collect(runner: Runner, samples: Samples) -> list[np.ndarray]:
    """First output of every sample, concatenated along the batch dim: [N, ...]."""
    return [np.concatenate([runner(feed)[0] for feed in samples.feeds])]


def compare(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
            labels: np.ndarray | None = None) -> dict[str, Any]:
    """Agreement of the first output: top-1 (classification-shaped outputs), cosine, max-abs, rel-L2."""
    ref = np.asarray(reference[0], dtype=np.float64)
    cand = np.asarray(candidate[0], dtype=np.float64)
    n = ref.shape[0]
    r, c = ref.reshape(n, -1), cand.reshape(n, -1)
    cos = (r * c).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1), 1e-12)
    result: dict[str, Any] = {
        "samples": int(n),
        "cosine_mean": round(float(cos.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
        "max_abs_error": float(np.abs(r - c).max()),
        "rel_l2_error": round(float(np.linalg.norm(r - c) / max(np.linalg.norm(r), 1e-12)), 6),
    }
    if ref.ndim == 2 and ref.shape[1] > 1:
        top_ref, top_cand = ref.argmax(1), cand.argmax(1)
        result["top1_agreement"] = round(float((top_ref == top_cand).mean()), 5)
        if labels is not None and len(labels) == n:
            acc_ref = float((top_ref == labels).mean())
            acc_cand = float((top_cand == labels).mean())
            result["labelled"] = {"reference_accuracy": round(acc_ref, 5), "accuracy": round(acc_cand, 5),
                                  "drop_points": round(100 * (acc_ref - acc_cand), 3)}
    return result
