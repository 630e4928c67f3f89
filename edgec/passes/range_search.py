"""Activation range search: pick each tensor's int8 range by what it does to the model's output.

A range estimator (percentile, MSE, ...) judges a tensor by its own rounding and clipping error, the
same way for every tensor. How much that error matters depends on what follows: a clipped outlier in
a residual stream can cost more than coarse steps after a ReLU6. After calibration, this pass tries a
few candidate ranges per activation tensor from the same calibration histogram (percentiles 99.9,
99.99, 99.999 and the exact min/max) and keeps a candidate when the whole model's output error against
fp32, run with ONNX Runtime, drops by more than 0.5%. The error sums, over the model's float outputs, each
output's mean squared error divided by the variance of its fp32 reference (so a detector's box coordinates
and its scores both count, whatever their units). Greedy coordinate descent in graph order, one sweep.
Before the sweep, each activation quantized per channel (passes/ptq.py `_search_ranges`) is offered its
per-tensor percentile range as its one candidate, by the same rule.

Its cost is bounded before it starts (`plan_search`), and stated once the first model is timed:
- Only tensors whose candidates differ are searched: the spread of a tensor is log(widest / narrowest
  candidate range); tensors under MIN_SPREAD (2%) are skipped, and at most MAX_TENSORS (16) of the
  widest-spread ones are searched, in graph order.
- Per tensor, candidates are tried outward from the current range: the next wider one, then wider
  still until a step makes the error worse; only if widening did not help, the narrower ones the same
  way. Error as a function of the clipping range is close to unimodal (flat where a range is far too
  wide), so this usually costs two candidates.
- Each candidate is scored on SCREEN_SAMPLES (8) of the search samples, spread over them; only one that
  lowers the error there by SCREEN_GAIN (2%) is scored on all the search samples (the same session, the
  remaining samples), and kept if it lowers the error on all of them by 0.5%.
So a search costs at most 1 + candidates (<= 3 x 16) screening runs of 8 samples plus one full run per
confirmed candidate, whatever the size of the graph, and usually about 2 x 16. A candidate stops being run as
soon as the samples run so far prove it loses (errors are non-negative: their sum bounds the mean from below).

Measured on MobileNetV2/Fashion-MNIST (benchmarks/quantization.py): the output error falls by about 30%
and held-out top-1 agreement with fp32 rises (results in the README). Written here; the idea of
choosing quantization parameters by the network's output loss rather than the tensor's own error is
from loss-aware PTQ (Nahshan et al., "Loss aware post-training quantization", 2021).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..calibration import Samples
from ..model import ort_session
from .calibrate import PercentileObserver

CANDIDATE_PERCENTILES = (99.9, 99.99, 99.999, 100.0)  # 100: exact min/max
DEFAULT_SEARCH_SAMPLES = 64
SCREEN_SAMPLES = 8
MAX_TENSORS = 16
MIN_SPREAD = 0.02
MIN_IMPROVEMENT = 0.005
SCREEN_GAIN = 0.02  # what a candidate must gain on the screening samples to be scored on all of them

Range = tuple[float, float]


def candidate_ranges(observer: PercentileObserver, symmetric: bool) -> list[Range]:
    """The distinct ranges the candidate percentiles give on one tensor's histogram."""
    out: list[Range] = []
    keep = observer.percentile
    try:
        for p in CANDIDATE_PERCENTILES:
            observer.percentile = p
            r = observer.range(symmetric)
            if r not in out:
                out.append(r)
    finally:
        observer.percentile = keep
    return out


def spread(candidates: Sequence[Range]) -> float:
    """log(widest / narrowest) of the candidate ranges: 0 when they are all the same width."""
    widths = [hi - lo for lo, hi in candidates if hi > lo]
    return math.log(max(widths) / min(widths)) if len(widths) > 1 else 0.0


@dataclass(frozen=True)
class SearchPlan:
    """Which tensors the search tries, in graph order, and how many candidate evaluations that is at most."""

    tensors: list[str]
    candidates: dict[str, list[Range]]
    considered: int           # activation tensors with a histogram
    screen_samples: int
    samples: int

    @property
    def evaluations(self) -> int:
        return sum(len(self.candidates[t]) for t in self.tensors)


def plan_search(ranges: Mapping[str, Range], order: Sequence[str], candidates: Mapping[str, Sequence[Range]],
                samples: int, max_tensors: int = MAX_TENSORS) -> SearchPlan:
    """The `max_tensors` tensors of `order` whose candidates spread most (at least MIN_SPREAD), in graph order,
    each with its candidates other than its current range."""
    spreads = {t: spread(candidates.get(t, ())) for t in order}
    chosen = set(sorted((t for t in order if spreads[t] >= MIN_SPREAD), key=lambda t: -spreads[t])[:max_tensors])
    tensors = [t for t in order if t in chosen]
    return SearchPlan(tensors, {t: [c for c in candidates[t] if not same_range(c, ranges[t])] for t in tensors}, len(order),
                      min(SCREEN_SAMPLES, samples), samples)


class OutputError:
    """Per-sample output error of a model against the fp32 reference, computed lazily: `score(proto)` returns a
    function of n, the mean error over the first n samples, running only those not yet run. The first `screen`
    samples are spread evenly over the set.

    `reference[i]` holds sample i's fp32 outputs, one array per graph output in graph order (a bare array: the
    model's only output). A sample's error is the sum over the float outputs (all outputs if none is float) of
    MSE(output, reference) / the variance of that output's reference over every sample (1 where it is constant);
    an output whose shape differs from its reference's (a detector keeping another number of boxes) counts 1.
    """

    def __init__(self, samples: Samples, reference: Sequence[Any], screen: int = SCREEN_SAMPLES):
        n = len(samples.feeds)
        first = subset_indices(n, screen)
        order = first + sorted(set(range(n)) - set(first))
        self.feeds = [samples.feeds[i] for i in order]
        given = [_as_outputs(reference[i]) for i in order]
        self.scored = _scored_outputs(given[0]) if given else []
        self.reference = [{k: r[k].astype(np.float64) for k in self.scored} for r in given]
        self.variance = {k: _variance([r[k] for r in self.reference]) for k in self.scored}

    def sample_error(self, outputs: Sequence[np.ndarray], i: int) -> float:
        """Sample i's error (class docstring) for the model's `outputs` on it."""
        total = 0.0
        for k in self.scored:
            out, ref = np.asarray(outputs[k]).astype(np.float64), self.reference[i][k]
            total += float(np.mean((out - ref) ** 2)) / self.variance[k] if out.shape == ref.shape else 1.0
        return total

    def score(self, proto: Any) -> Callable[..., float]:
        """mean(n, above=None): the mean error over the first n samples. With `above`, it stops running samples
        once those run put the mean over n above `above` whatever the rest give (errors are >= 0), and returns
        that lower bound: the caller only needed to know the candidate loses."""
        session = ort_session(proto, fuse_qdq=False)  # the same rounding as ORT's int8 kernels, twice as fast here
        errors: list[float] = []

        def mean(n: int, above: float | None = None) -> float:
            for i in range(len(errors), n):
                errors.append(self.sample_error(session.run(None, self.feeds[i]), i))
                if above is not None and sum(errors) / n > above:
                    return sum(errors) / n
            return float(np.mean(errors[:n]))

        return mean


def _as_outputs(sample: Any) -> list[np.ndarray]:
    """One sample's reference as a list of arrays, one per output (a bare array: the only output)."""
    return [np.asarray(sample)] if isinstance(sample, np.ndarray) else [np.asarray(a) for a in sample]


def _scored_outputs(first: Sequence[np.ndarray]) -> list[int]:
    """Indices of the outputs the error sums: the float ones, or every numeric one when none is float."""
    floats = [k for k, a in enumerate(first) if a.dtype.kind == "f"]
    return floats or [k for k, a in enumerate(first) if a.dtype.kind in "iub"]


def _variance(arrays: Sequence[np.ndarray]) -> float:
    """The variance of every value of `arrays` (shapes may differ); 1.0 when that is 0 (a constant output)."""
    v = float(np.var(np.concatenate([a.ravel() for a in arrays]))) if arrays else 0.0
    return v if v > 0 else 1.0


def search_ranges(ranges: Mapping[str, Range], plan: SearchPlan, build: Callable[[dict], Any],
                  score: Callable[[Any], Callable[..., float]], progress: Callable[[int, int], None] | None = None,
                  note: Callable[[str], None] | None = None) -> tuple[dict, dict[str, Any]]:
    """Greedy sweep over `plan.tensors`, candidates outward from the current range (module docstring): screen
    each on `plan.screen_samples`; one that gains SCREEN_GAIN there is scored on `plan.samples` and kept when the
    error on them falls by more than MIN_IMPROVEMENT. `score(build(ranges))(n, above)` is the mean output error on the
    first n samples, or a lower bound of it over `above` (OutputError.score: a losing candidate stops early; the
    decisions are the same). `note` receives the time estimate once the first model has been timed.

    Returns (new ranges, a log: starting and final error, evaluations, tensors changed, tensors searched).
    """
    current = dict(ranges)
    t0 = time.perf_counter()
    now = score(build(current))
    best_screen = now(plan.screen_samples)
    per_screen = time.perf_counter() - t0
    best = now(plan.samples)
    confirming = time.perf_counter() - t0 - per_screen  # the samples a confirmation adds
    if note is not None:
        note(f"range search: {len(plan.tensors)} of {plan.considered} activation tensors, {plan.evaluations} "
             f"candidates on {plan.screen_samples} samples, ~{plan.evaluations * per_screen:.0f} s (a candidate that "
             f"helps is confirmed on {plan.samples} samples, ~{confirming:.1f} s more)")
    start, screened, confirmed, changed = best, 0, 0, []
    for i, tensor in enumerate(plan.tensors):
        for side in _sides(plan.candidates[tensor], current[tensor]):
            for cand in side:  # outward from the current range, through plateaus, until a step makes it worse
                trial = {**current, tensor: cand}
                error = score(build(trial))
                screened += 1
                screen = error(plan.screen_samples, best_screen * (1 + MIN_IMPROVEMENT))
                if screen > best_screen * (1 + MIN_IMPROVEMENT):
                    break
                if screen >= best_screen * (1 - SCREEN_GAIN):
                    continue  # about the same: the next step may still help (a range far too wide flattens out)
                confirmed += 1
                full = error(plan.samples, best * (1 - MIN_IMPROVEMENT))
                if full >= best * (1 - MIN_IMPROVEMENT):
                    break
                best, best_screen, current = full, screen, trial
            if not same_range(current[tensor], ranges[tensor]):
                break  # wider helped: narrower is not tried
        if not same_range(current[tensor], ranges[tensor]):
            changed.append(tensor)
        if progress is not None:
            progress(i + 1, len(plan.tensors))
    return current, {"output_error_before": start, "output_error_after": best, "evaluations": 1 + screened,
                     "confirmed": confirmed, "tensors": plan.considered, "searched": len(plan.tensors),
                     "screen_samples": plan.screen_samples, "changed": changed,
                     "seconds": round(time.perf_counter() - t0, 3)}


def same_range(a: Any, b: Any) -> bool:
    """Whether two ranges (lo, hi) are equal; lo and hi may be per-channel arrays."""
    return np.shape(a[0]) == np.shape(b[0]) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _sides(candidates: Sequence[Range], current: Range) -> list[list[Range]]:
    """The candidates wider than `current`, nearest first, then the narrower ones, nearest first. A per-channel
    `current` (arrays) has no width to order by: its candidates are tried as given."""
    if np.ndim(current[0]):
        return [list(candidates)]
    width = current[1] - current[0]
    wider = sorted((c for c in candidates if c[1] - c[0] > width), key=lambda c: c[1] - c[0])
    narrower = sorted((c for c in candidates if c[1] - c[0] <= width and c != current), key=lambda c: c[0] - c[1])
    return [wider, narrower]


def subset_indices(n: int, count: int) -> list[int]:
    """`count` of n sample indices spread evenly over them (all if there are fewer)."""
    return [int(i) for i in np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int))]
