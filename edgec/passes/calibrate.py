"""Calibration, phase 1 of post-training quantization: per-tensor statistics turned into float ranges.

Observers stream: `update(x)` folds one batch of any shape into a fixed-size state (memory O(bins),
however many samples); NaN or Inf raise ValueError. `range(symmetric=False)` returns (lo, hi), or (-t, t)
if symmetric; ValueError if no data was seen. `make_observer(method, **options)` makes one (OBSERVERS):
- `minmax`: the exact running min and max.
- `percentile` (percentile=99.99, bins=2048): clip at the p-th percentile (100 - p below, if signed).
- `entropy` (bins=2048, quant_levels=128): TensorRT's threshold minimising KL(P||Q) over |x|'s histogram.
- `mse` (bins=2048, levels=256): the threshold minimising the expected squared quantize-dequantize error.
`ChannelMinMaxObserver(axis)` keeps the exact min and max of each channel instead; its range() is a pair of
arrays (the quantize pass uses it for activations quantized per channel).
Entropy and MSE search symmetric thresholds on |x| (exact zeros left out: they quantize exactly); with
symmetric=False a non-negative tensor gets (0, t) with twice the levels, a signed one the symmetric range
clipped to the observed [min, max]. Ranges are raw statistics: making zero representable is the quantize
pass's job.

`collect_ranges(proto, tensors, feeds, method, symmetric, **options)` runs an ONNX model with ONNX Runtime
over `feeds`, one at a time, and returns {tensor: (lo, hi)}; `collect_statistics` also returns per-channel
means and feeds extra observers in the same pass. Design notes and measurements:
benchmarks/results/calibration-design-notes.md.
"""
from __future__ import annotations

import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, PassError, brief
from ..model import ort_session

__all__ = [
    "MinMaxObserver", "ChannelMinMaxObserver", "HistogramObserver", "PercentileObserver", "EntropyObserver", "MSEObserver",
    "OBSERVERS", "make_observer", "collect_ranges",
]


def _symmetric(lo: float, hi: float) -> tuple[float, float]:
    t = max(abs(lo), abs(hi))
    return (-t if t else 0.0), t


# --- observers --------------------------------------------------------------------------------------

class _Observer:
    """Shared state: exact running min/max and the number of values seen."""

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        """Fold one batch (any shape) into the statistics. NaN or Inf raise ValueError."""
        self._observe(self._check(x))

    def _check(self, x: Any) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype.kind not in "fiub":
            raise ValueError(f"{type(self).__name__}.update needs a numeric array, got dtype {a.dtype}.")
        if a.size and a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise ValueError(f"{type(self).__name__}.update: {bad} of {a.size} values are NaN or Inf; "
                             "calibration needs finite activations. Check the inputs and the model in fp32.")
        return a

    def _observe(self, a: np.ndarray) -> None:
        if not a.size:
            return
        self.min = min(self.min, float(a.min()))
        self.max = max(self.max, float(a.max()))
        self.count += a.size

    def _require_data(self) -> None:
        if not self.count:
            raise ValueError(f"{type(self).__name__} saw no data: call update() with at least one "
                             "non-empty batch before range().")

    def range(self, symmetric: bool = False) -> tuple[float, float]:
        """(lo, hi) to quantize to; (-t, t) if symmetric. Raises ValueError if no data was seen."""
        self._require_data()
        return _symmetric(self.min, self.max) if symmetric else (self.min, self.max)


class MinMaxObserver(_Observer):
    """Running min and max; range() is (min, max), or (-t, t) with t = max(|min|, |max|)."""


class ChannelMinMaxObserver(_Observer):
    """Exact running min and max of each channel along `axis`; range() is (mins, maxs), two float64 arrays
    ((-t, t) per channel if symmetric). ValueError when a batch's channel count differs from the first's."""

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis
        self.mins: np.ndarray | None = None
        self.maxs: np.ndarray | None = None

    def _observe(self, a: np.ndarray) -> None:
        if not a.size:
            return
        if a.ndim <= self.axis:
            raise ValueError(f"ChannelMinMaxObserver: a {a.ndim}-D tensor has no channel axis {self.axis}.")
        reduce = tuple(i for i in range(a.ndim) if i != self.axis)
        lo, hi = a.min(axis=reduce).astype(np.float64), a.max(axis=reduce).astype(np.float64)
        if self.mins is not None and lo.shape != self.mins.shape:
            raise ValueError(f"ChannelMinMaxObserver: {lo.size} channels, earlier batches had {self.mins.size}.")
        self.mins = lo if self.mins is None else np.minimum(self.mins, lo)
        self.maxs = hi if self.maxs is None else np.maximum(self.maxs, hi)
        super()._observe(a)

    def range(self, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        self._require_data()
        if symmetric:
            t = np.maximum(np.abs(self.mins), np.abs(self.maxs))
            return -t, t
        return self.mins.copy(), self.maxs.copy()


class HistogramObserver(_Observer):
    """Streaming histogram: `bins` counts over [min, max] of everything seen; range() is the exact (min, max).

    When a batch falls outside the current range, the range widens to fit exactly and the old counts
    are re-binned into the new bins in proportion to overlap (values taken as uniform inside a bin),
    as torch.ao's HistogramObserver does. Memory is O(bins) and the resolution is always `bins` over
    the data's span; each widening blurs the old counts by under one new bin width. Counts are floats.
    """

    _fold = False  # histogram |x| on [0, max |x|] instead of x on [min, max]

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 2:
            raise ConfigError(f"{type(self).__name__}: bins must be an integer >= 2, got {bins!r}.")
        self.bins = int(bins)
        self.counts = np.zeros(bins, dtype=np.float64)
        self.zeros = 0  # exact zeros seen, counted for folded histograms (they sit in its bin 0)
        self._lo = 0.0
        self._hi = 0.0

    @property
    def edges(self) -> np.ndarray:
        """The bins + 1 bin edges of the histogram."""
        return np.linspace(self._lo, self._hi, self.bins + 1)

    @property
    def bin_width(self) -> float:
        return (self._hi - self._lo) / self.bins

    def _observe(self, a: np.ndarray) -> None:
        if not a.size:
            return
        first = self.count == 0
        amin, amax = float(a.min()), float(a.max())
        self.min, self.max, self.count = min(self.min, amin), max(self.max, amax), self.count + a.size
        # float32 activations stay float32 here (half the memory traffic of float64; a bin index is exact
        # enough in float32 for any bin count up to millions).
        v = a.reshape(-1) if a.dtype == np.float32 else np.asarray(a, dtype=np.float64).reshape(-1)
        if self._fold:
            self.zeros += a.size - int(np.count_nonzero(v))
            v = np.abs(v)
            vmin = 0.0 if amin <= 0.0 <= amax else min(abs(amin), abs(amax))
            vmax = max(abs(amin), abs(amax))
        else:
            vmin, vmax = amin, amax
        if first:
            self._lo = 0.0 if self._fold else vmin
            # A constant first batch still needs a non-empty range.
            self._hi = max(vmax, self._lo + max(1e-30, 1e-6 * max(abs(vmin), abs(vmax))))
        else:
            self._widen(vmin, vmax)
        scaled = (v - v.dtype.type(self._lo)) * v.dtype.type(self.bins / (self._hi - self._lo))
        idx = scaled.astype(np.intp)  # truncation = floor: scaled >= 0
        np.minimum(idx, self.bins - 1, out=idx)
        np.maximum(idx, 0, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)

    def _widen(self, vmin: float, vmax: float) -> None:
        """Widen the range to cover [vmin, vmax]; re-bin the old counts by linear interpolation of their CDF."""
        lo, hi = min(self._lo, vmin), max(self._hi, vmax)
        if lo == self._lo and hi == self._hi:
            return
        old_edges = self.edges
        cdf = np.concatenate([[0.0], np.cumsum(self.counts)])
        self._lo, self._hi = lo, hi
        self.counts = np.maximum(np.diff(np.interp(self.edges, old_edges, cdf)), 0.0)

    def _abs_histogram(self) -> tuple[np.ndarray, float, float]:
        """(counts of |x| without exact zeros, bin width, max |x|), trimmed after the last non-empty bin."""
        assert self._fold
        hist = self.counts.copy()
        hist[0] = max(0.0, hist[0] - self.zeros)
        nonzero = np.flatnonzero(hist)
        used = int(nonzero[-1]) + 1 if nonzero.size else 0
        return hist[:used], self.bin_width, max(abs(self.min), abs(self.max))


class PercentileObserver(HistogramObserver):
    """Clip at the `percentile`-th percentile (and at 100 - percentile below, for a signed tensor).

    For a non-negative tensor the lower end is the exact min. Estimated from the histogram: within
    about a bin width of np.percentile over all the values seen.
    """

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(bins)
        if not 50 < percentile <= 100:
            raise ConfigError(f"PercentileObserver: percentile must be in (50, 100], got {percentile!r}.")
        self.percentile = float(percentile)

    def range(self, symmetric: bool = False) -> tuple[float, float]:
        self._require_data()
        if self.percentile == 100:
            return super().range(symmetric)
        edges = self.edges
        hi = min(self.max, histogram_percentile(self.counts, edges, self.percentile))
        if self.min >= 0:
            lo = self.min
        else:
            lo = max(self.min, histogram_percentile(self.counts, edges, 100.0 - self.percentile))
        return _symmetric(lo, hi) if symmetric else (lo, hi)


class _AbsThresholdObserver(HistogramObserver):
    """Base of observers that pick a threshold t on the histogram of |x|."""

    _fold = True

    def _threshold(self, hist: np.ndarray, width: float, amax: float, unsigned: bool) -> float:
        raise NotImplementedError

    def range(self, symmetric: bool = False) -> tuple[float, float]:
        self._require_data()
        hist, width, amax = self._abs_histogram()
        unsigned = not symmetric and self.min >= 0
        t = min(amax, self._threshold(hist, width, amax, unsigned)) if hist.size else 0.0
        if unsigned:
            return 0.0, t
        lo, hi = _symmetric(-t, t)
        return (lo, hi) if symmetric else (max(lo, self.min), min(hi, self.max))


class EntropyObserver(_AbsThresholdObserver):
    """TensorRT-style threshold: the t minimising KL(P||Q) between |x|'s histogram and its quantized copy.

    Tries every threshold from `quant_levels` bins up to the last non-empty bin. `quant_levels` is the
    number of levels on each side (128 for int8); a non-negative tensor quantized with
    symmetric=False gets twice as many over [0, t].
    """

    def __init__(self, bins: int = 2048, quant_levels: int = 128) -> None:
        super().__init__(bins)
        if not isinstance(quant_levels, (int, np.integer)) or quant_levels < 2:
            raise ConfigError(f"EntropyObserver: quant_levels must be an integer >= 2, got {quant_levels!r}.")
        self.quant_levels = int(quant_levels)

    def _threshold(self, hist: np.ndarray, width: float, amax: float, unsigned: bool) -> float:
        levels = self.quant_levels * (2 if unsigned else 1)
        return entropy_threshold_bins(hist, levels) * width


class MSEObserver(_AbsThresholdObserver):
    """The threshold t minimising the expected squared error of quantize-dequantize (rounding + clipping).

    `levels` is the number of integer codes (256 for 8 bits). Symmetric: step t / (levels/2 - 1), codes
    -127..127 for int8. Non-negative with symmetric=False: step t / (levels - 1), codes 0..255. The
    candidates are every bin edge up to max |x|.
    """

    def __init__(self, bins: int = 2048, levels: int = 256) -> None:
        super().__init__(bins)
        if not isinstance(levels, (int, np.integer)) or levels < 4 or levels % 2:
            raise ConfigError(f"MSEObserver: levels must be an even integer >= 4, got {levels!r}.")
        self.levels = int(levels)

    def _threshold(self, hist: np.ndarray, width: float, amax: float, unsigned: bool) -> float:
        qmax = self.levels - 1 if unsigned else self.levels // 2 - 1
        return mse_threshold(hist, width, amax, qmax)


OBSERVERS: dict[str, type[_Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MSEObserver,
}


def make_observer(method: str, **kw: Any) -> _Observer:
    """A fresh observer for `method` (a key of OBSERVERS) with options `kw`."""
    cls = OBSERVERS.get(method)
    if cls is None:
        raise ConfigError(f"Unknown calibration method '{method}'. Choose from: {', '.join(OBSERVERS)}.")
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"Bad options {sorted(kw)} for calibration method '{method}': {brief(e)}.") from e


# --- histogram math -----------------------------------------------------------------------------------

def histogram_percentile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """np.percentile(values, q) (linear interpolation) estimated from a histogram of the values.

    Values are taken as uniform inside each bin; the k-th smallest (0-based) sits where the histogram's
    cumulative count reaches k + 0.5.
    """
    cum = np.cumsum(counts)
    n = int(round(cum[-1]))

    def kth(k: int) -> float:
        j = min(int(np.searchsorted(cum, k + 0.5, side="right")), len(counts) - 1)
        before = cum[j] - counts[j]
        share = min(1.0, max(0.0, (k + 0.5 - before) / counts[j])) if counts[j] > 0 else 0.5
        return float(edges[j] + share * (edges[j + 1] - edges[j]))

    rank = q / 100.0 * (n - 1)
    k = int(math.floor(rank))
    v = kth(k)
    if rank > k and k + 1 < n:
        v += (rank - k) * (kth(k + 1) - v)
    return v


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(P||Q) of two count vectors, normalised here; inf where P > 0 and Q = 0 (or Q is all zero)."""
    psum, qsum = p.sum(), q.sum()
    if psum <= 0 or qsum <= 0:
        return math.inf
    mask = p > 0
    pm, qm = p[mask] / psum, q[mask] / qsum
    if not qm.all():
        return math.inf
    return float(np.sum(pm * np.log(pm / qm)))


def quantize_distribution(hist: np.ndarray, levels: int) -> np.ndarray:
    """Merge len(hist) bins into `levels` equal groups; spread each group's total over its non-empty bins."""
    n = len(hist)
    group = (np.arange(n) * levels) // n
    nonempty = hist > 0
    totals = np.bincount(group, weights=hist, minlength=levels)
    filled = np.bincount(group, weights=nonempty, minlength=levels)
    per_bin = np.divide(totals, filled, out=np.zeros(levels), where=filled > 0)
    return np.where(nonempty, per_bin[group], 0.0)


def entropy_threshold_bins(hist: np.ndarray, levels: int) -> int:
    """How many bins of `hist` the KL-optimal threshold keeps (TensorRT's entropy calibration).

    For each candidate i in [levels, len(hist)]: P = hist[:i] with the tail sum(hist[i:]) added to its
    last bin, Q = quantize_distribution(hist[:i], levels); keep the i with the smallest KL(P||Q),
    the largest i on ties.
    """
    n = len(hist)
    if n <= levels:
        return n
    hist = np.asarray(hist, dtype=np.float64)
    tail = hist.sum() - np.cumsum(hist)  # tail[i - 1] = sum(hist[i:])
    best_i, best = n, math.inf
    for i in range(levels, n + 1):
        p = hist[:i].copy()
        p[-1] += tail[i - 1]
        kl = kl_divergence(p, quantize_distribution(hist[:i], levels))
        if kl <= best:
            best_i, best = i, kl
    return best_i


def _sawtooth_sq_integral(y: np.ndarray, step: float) -> np.ndarray:
    """Integral over [0, y] of ((z mod step) - step/2)^2 dz: squared rounding error, shifted by step/2."""
    k = np.floor(y / step)
    r = y - k * step
    half = step / 2
    return k * step**3 / 12 + ((r - half) ** 3 + half**3) / 3


def quantization_sse(hist: np.ndarray, width: float, t: float, qmax: int) -> float:
    """Expected sum of squared errors of quantizing |x| to the grid {0, s, ..., qmax*s}, s = t / qmax.

    Bin j of `hist` covers [j*width, (j+1)*width) and its values are taken as uniform inside it.
    Values up to t round to the nearest grid point; above t they clip to t.
    """
    step = t / qmax
    half = step / 2
    n = len(hist)
    m = min(n, int(t // width))  # bins wholly below t
    # Rounding: integral of the squared sawtooth over each bin below t.
    below = np.diff(_sawtooth_sq_integral(np.arange(m + 1) * width + half, step))
    sse = float(hist[:m] @ below)
    if m < n:
        a = m * width  # bin m straddles t: rounding over [a, t], clipping over [t, a + width]
        straddle = _sawtooth_sq_integral(np.array([a, t]) + half, step)
        sse += float(hist[m]) * (straddle[1] - straddle[0] + max(a + width - t, 0.0) ** 3 / 3)
        lower = np.arange(m + 1, n) * width - t  # bins above t: clipping, (v - t)^2 integrated
        sse += float(hist[m + 1:] @ (((lower + width) ** 3 - lower**3) / 3))
    return sse / width


def mse_threshold(hist: np.ndarray, width: float, amax: float, qmax: int) -> float:
    """The threshold t (a bin edge below amax, or amax itself) with the smallest quantization_sse."""
    candidates = [i * width for i in range(1, len(hist)) if i * width < amax] + [amax]
    errors = [quantization_sse(hist, width, t, qmax) for t in candidates]
    return float(candidates[int(np.argmin(errors))])


# --- statistics over an ONNX model ------------------------------------------------------------------

class ChannelMeanObserver:
    """Running mean per channel (axis 1) of a tensor: what bias correction needs."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        a = np.asarray(x)
        if a.ndim < 2:
            return
        axes = (0, *range(2, a.ndim))
        part = a.sum(axis=axes, dtype=np.float64)
        self.total = part if self.total is None else self.total + part
        self.count += a.size // a.shape[1]

    def mean(self) -> np.ndarray:
        if self.total is None:
            raise ValueError("no data observed")
        return self.total / max(self.count, 1)


class OutputRecorder:
    """Keeps every array it is given, in order (a model output per sample, as a reference)."""

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []

    def update(self, x: np.ndarray) -> None:
        self.values.append(x)


def collect_ranges(proto: Any, tensors: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                   method: str = "minmax", symmetric: bool = False,
                   **observer_kw: Any) -> dict[str, tuple[float, float]]:
    """Run `proto` (onnx.ModelProto) over `feeds` with ONNX Runtime (CPU); return {tensor: (lo, hi)}.

    Each requested tensor (an intermediate, a graph input or output, or an initializer) becomes a
    graph output of a copy of the model. Feeds are consumed one at a time and only the current batch's
    activations are held. `method` picks the observer (OBSERVERS); `observer_kw` are its options;
    `symmetric` goes to each observer's range(). No tensors asked for: {} without running anything.
    Raises ConfigError for an unknown method or tensor or empty feeds, PassError if ONNX Runtime fails
    or a tensor holds NaN/Inf.
    """
    return collect_statistics(proto, tensors, feeds, method, symmetric, **observer_kw)[0]


def collect_statistics(proto: Any, tensors: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                       method: str = "minmax", symmetric: bool = False, means_of: Sequence[str] = (),
                       progress: Callable[[int], None] | None = None,
                       extra: Mapping[str, Sequence[Any]] | None = None,
                       observers: Mapping[str, _Observer] | None = None,
                       **observer_kw: Any) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """collect_ranges, plus per-channel means of the tensors in `means_of`, in the same single pass.

    `extra` maps tensor names to more observers (anything with `update(array)`, e.g. gptq.InputHessian)
    that see the same values. `observers` gives the range observers of some tensors ready-made (the caller
    keeps them, e.g. to read other percentiles off their histograms); the others are made from `method`.
    `progress(samples_done)` is called after each sample.
    """
    range_names = list(dict.fromkeys(tensors))
    mean_names = list(dict.fromkeys(means_of))
    extra = {k: list(v) for k, v in (extra or {}).items() if v}
    names = list(dict.fromkeys(range_names + mean_names + list(extra)))
    if not names:
        return {}, {}
    given = dict(observers or {})
    observers = {name: given[name] if name in given else make_observer(method, **observer_kw) for name in range_names}
    mean_observers = {name: ChannelMeanObserver() for name in mean_names}
    _check_tensors_exist(proto.graph, names)
    session = _session_with_outputs(proto, names)
    # Per tensor, every observer of its values, in the order they are updated: range, mean, extra.
    sinks = {name: [obs[name] for obs in (observers, mean_observers) if name in obs] + extra.get(name, [])
             for name in names}
    _observe_feeds(session, names, feeds, sinks, progress)
    ranges = _read_ranges(observers, symmetric)
    means = {name: mobs.mean() for name, mobs in mean_observers.items() if mobs.total is not None}
    return ranges, means


def _check_tensors_exist(graph: Any, names: Sequence[str]) -> None:
    """ConfigError unless every name is a graph input, an initializer or a node output of the main graph."""
    known = ({v.name for v in graph.input} | {t.name for t in graph.initializer}
             | {o for node in graph.node for o in node.output if o})
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"calibrate: tensor(s) {', '.join(map(repr, missing[:5]))} are not in the model "
                          f"(it has {len(known)} tensors, e.g. {', '.join(sorted(known)[:5])}). "
                          "Ask for names of node outputs in the main graph.")


def _session_with_outputs(proto: Any, names: Sequence[str]) -> Any:
    """An ONNX Runtime session of a copy of `proto` in which every tensor of `names` is a graph output."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    outputs = {v.name for v in model.graph.output}
    for name in names:
        if name not in outputs:
            # A name-only output: ONNX Runtime infers its type, so intermediates need no value_info.
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        return ort_session(model, spin=False)  # between runs the observers need the cores
    except Exception as e:
        raise PassError(f"calibrate: ONNX Runtime could not load the model with {len(names)} calibration "
                        f"outputs added: {brief(e)}. Check that the model runs in fp32 first.") from e


SAMPLES_IN_FLIGHT = 4  # samples whose values may wait for their observers: bounds the memory of the pipeline


def _observe_feeds(session: Any, names: Sequence[str], feeds: Iterable[dict[str, np.ndarray]],
                   sinks: Mapping[str, Sequence[Any]], progress: Callable[[int], None] | None) -> None:
    """Run the session on each feed in turn and pass each tensor of `names` to its observers in `sinks`.

    Every observer gets the samples in order, on a pool of threads (numpy and BLAS release the GIL for the heavy
    work), and is never held up by another: a slow one (a wide layer's Hessian) runs beside the next samples'
    ONNX Runtime runs and the other observers. At most SAMPLES_IN_FLIGHT samples' values are held. ConfigError if
    `feeds` is empty; PassError naming the tensor and sample if ONNX Runtime or an observer fails."""
    tracker = _Tracker()
    seen = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        queues = [(name, _ObserverQueue(obs, name, pool, tracker)) for name in names for obs in sinks[name]]
        for i, feed in enumerate(feeds):
            tracker.wait(below=SAMPLES_IN_FLIGHT)
            try:
                values = dict(zip(names, session.run(names, feed)))
            except Exception as e:
                keys = ", ".join(f"{k}{list(np.shape(v))}" for k, v in feed.items()) if isinstance(feed, dict) else "?"
                raise PassError(f"calibrate: ONNX Runtime failed on calibration sample #{i} ({keys}): "
                                f"{brief(e)}. Check the sample's input names, shapes and dtypes.") from e
            tracker.start(i, len(queues))
            for name, queue in queues:
                queue.send(i, values[name])
            del values
            seen += 1
            if progress is not None:
                progress(seen)
        tracker.wait(below=1)
    if not seen:
        raise ConfigError("calibrate: no calibration samples: the feeds are empty. Pass --calib with data "
                          "(a .npz/.npy file or folder) holding at least one sample.")


class _Tracker:
    """Counts each sample's outstanding observer updates; keeps the first failure and raises it on wait()."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._left: dict[int, int] = {}
        self.error: PassError | None = None

    def start(self, sample: int, updates: int) -> None:
        with self._cond:
            self._left[sample] = updates

    def done(self, sample: int, error: PassError | None = None) -> None:
        with self._cond:
            self.error = self.error or error
            self._left[sample] -= 1
            if not self._left[sample]:
                del self._left[sample]
            self._cond.notify_all()

    def wait(self, below: int) -> None:
        """Until fewer than `below` samples are outstanding; then raise the first observer failure, if any."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._left) < below or self.error is not None)
            if self.error is not None:
                raise self.error


class _ObserverQueue:
    """One observer's values in arrival order, drained on the pool by at most one task at a time."""

    def __init__(self, observer: Any, name: str, pool: ThreadPoolExecutor, tracker: _Tracker):
        self.observer, self.name, self.pool, self.tracker = observer, name, pool, tracker
        self._items: deque[tuple[int, np.ndarray]] = deque()
        self._lock = threading.Lock()
        self._draining = False

    def send(self, sample: int, value: np.ndarray) -> None:
        with self._lock:
            self._items.append((sample, value))
            if self._draining:
                return
            self._draining = True
        self.pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    self._draining = False
                    return
                sample, value = self._items.popleft()
            error = None
            try:
                if self.tracker.error is None:
                    self.observer.update(value)
            except ValueError as e:
                error = PassError(f"calibrate: tensor '{self.name}' on calibration sample #{sample}: {e}")
            except Exception as e:  # noqa: BLE001 - re-raised in the calibrating thread by _Tracker.wait
                error = PassError(f"calibrate: observing tensor '{self.name}' on calibration sample #{sample} "
                                  f"failed: {brief(e)}")
                error.__cause__ = e
            self.tracker.done(sample, error)


def _read_ranges(observers: Mapping[str, _Observer], symmetric: bool) -> dict[str, tuple[float, float]]:
    """{tensor: observer.range(symmetric)}; PassError for a tensor whose every batch was empty."""
    ranges = {}
    for name, obs in observers.items():
        try:
            ranges[name] = obs.range(symmetric=symmetric)
        except ValueError as e:  # every batch of this tensor was empty
            raise PassError(f"calibrate: tensor '{name}' was empty on every calibration sample: {e}") from e
    return ranges
