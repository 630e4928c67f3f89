"""Calibration observers and collect_ranges: streaming statistics, threshold searches, ONNX Runtime runs."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from edgec.errors import ConfigError, PassError
from edgec.passes.calibrate import (OBSERVERS, ChannelMinMaxObserver, EntropyObserver, HistogramObserver, MinMaxObserver, MSEObserver,
                                    PercentileObserver, collect_ranges, entropy_threshold_bins, make_observer,
                                    quantization_sse)


def _fake_quant_mse(x: np.ndarray, lo: float, hi: float, levels: int = 256) -> float:
    """Symmetric int8 quantize-dequantize of x for the range (lo, hi): step t/127, codes -127..127."""
    t = max(abs(lo), abs(hi))
    qmax = levels // 2 - 1
    step = t / qmax
    return float(np.mean((np.clip(np.round(x / step), -qmax, qmax) * step - x) ** 2))


@pytest.fixture(scope="module")
def outliers() -> np.ndarray:
    """N(0, 1) with 0.1% outliers of magnitude 5..50."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000)
    idx = rng.choice(x.size, x.size // 1000, replace=False)
    x[idx] = rng.uniform(5, 50, idx.size) * rng.choice([-1.0, 1.0], idx.size)
    return x.astype(np.float32)


def _streamed(obs, x: np.ndarray, parts: int = 10):
    for part in np.array_split(x, parts):
        obs.update(part)
    return obs


# --- MinMax ----------------------------------------------------------------------------------------------

def test_minmax_matches_numpy_over_streamed_batches():
    rng = np.random.default_rng(1)
    batches = [rng.normal(i, 1 + i, size=(2, 3, 5)).astype(np.float32) for i in range(5)]
    obs = MinMaxObserver()
    for b in batches:
        obs.update(b)
    allx = np.concatenate([b.ravel() for b in batches])
    assert obs.range() == (float(allx.min()), float(allx.max()))
    t = float(np.abs(allx).max())
    assert obs.range(symmetric=True) == (-t, t)


def test_minmax_ten_batches_equal_one():
    x = np.random.default_rng(2).standard_normal((10, 64)).astype(np.float32)
    one, ten = MinMaxObserver(), MinMaxObserver()
    one.update(x)
    for row in x:
        ten.update(row)
    assert one.range() == ten.range() and one.count == ten.count == x.size


# --- Histogram -------------------------------------------------------------------------------------------

def test_histogram_memory_bounded_and_counts_everything():
    rng = np.random.default_rng(3)
    obs = HistogramObserver(bins=256)
    total, values = 0, []
    for i in range(200):
        x = rng.normal(0.1 * i, 1 + 0.05 * i, size=50)  # the range grows on both sides, many times
        obs.update(x)
        total += x.size
        values.append(x)
        assert obs.counts.shape == (256,)
    assert obs.count == total
    assert obs.counts.sum() == pytest.approx(total, rel=1e-9)
    allx = np.concatenate(values)
    assert obs.range() == (float(allx.min()), float(allx.max()))
    # Re-binning keeps the mass where it was: the histogram's mean is within a bin of the data's.
    centres = (obs.edges[:-1] + obs.edges[1:]) / 2
    assert abs(centres @ obs.counts / total - allx.mean()) < obs.bin_width


def test_histogram_constant_batches():
    obs = HistogramObserver(bins=16)
    obs.update(np.zeros(5))
    obs.update(np.full(3, 2.0))
    assert obs.range() == (0.0, 2.0)
    assert obs.counts.sum() == pytest.approx(8)


# --- Percentile ------------------------------------------------------------------------------------------

def test_percentile_within_a_bin_of_numpy():
    x = np.random.default_rng(4).standard_normal(200_000)
    obs = _streamed(PercentileObserver(percentile=99.99), x)
    lo, hi = obs.range()
    width = obs.bin_width
    assert abs(hi - np.percentile(x, 99.99)) < width
    assert abs(lo - np.percentile(x, 0.01)) < width
    assert obs.range(symmetric=True) == (-max(-lo, hi), max(-lo, hi))
    p99 = PercentileObserver(percentile=99.0)
    p99.update(x)
    assert abs(p99.range()[1] - np.percentile(x, 99.0)) < p99.bin_width
    p100 = _streamed(PercentileObserver(percentile=100), x)
    assert p100.range() == (float(x.min()), float(x.max()))


def test_percentile_non_negative_keeps_min():
    x = np.maximum(np.random.default_rng(5).standard_normal(10_000), 0)
    obs = PercentileObserver(percentile=99.9, bins=512)
    obs.update(x)
    lo, hi = obs.range()
    assert lo == 0.0 and abs(hi - np.percentile(x, 99.9)) < obs.bin_width


# --- Entropy ---------------------------------------------------------------------------------------------

def _reference_entropy_bins(hist: np.ndarray, levels: int) -> int:
    """A direct port of the loop in pytorch-quantization's `_compute_amax_entropy` (stride 1)."""
    bins = hist.astype(np.float64)
    divergences, arguments = [], []
    for i in range(levels, len(bins) + 1):
        space = np.linspace(0, i, num=levels + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        new_counts = np.zeros(levels)
        for idx, d in enumerate(digitized):
            if d != -1:
                new_counts[d] += bins[idx]
        for key, val in Counter(digitized).items():
            if key != -1:
                new_counts[key] /= val
        q = np.array([new_counts[d] if d != -1 else 0.0 for d in digitized])
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        nz = p > 0
        with np.errstate(divide="ignore"):
            divergences.append(float(np.sum(p[nz] * np.log(p[nz] / q[nz]))))  # scipy.stats.entropy(p, q)
        arguments.append(i)
    divergences = np.array(divergences)
    return arguments[len(divergences) - 1 - int(np.argmin(divergences[::-1]))]


@pytest.mark.parametrize("seed", [0, 1])
def test_entropy_search_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    hist = np.histogram(np.abs(rng.standard_t(3, 5000)), bins=220)[0]
    hist[rng.choice(220, 30, replace=False)] = 0  # empty bins exercise the zero handling
    assert entropy_threshold_bins(hist, 64) == _reference_entropy_bins(hist, 64)


def test_entropy_clips_outliers(outliers):
    obs = _streamed(EntropyObserver(), outliers)
    lo, hi = obs.range(symmetric=True)
    amax = float(np.abs(outliers).max())
    assert lo == -hi and 2.5 < hi < 10 < amax
    single = EntropyObserver()
    single.update(outliers)
    assert abs(single.range(symmetric=True)[1] - hi) < 0.5  # streaming ~ one batch


def test_entropy_uniform_keeps_full_range():
    x = np.random.default_rng(6).uniform(-1, 1, 100_000)
    lo, hi = _streamed(EntropyObserver(), x).range(symmetric=True)
    assert 0.9 < hi <= 1.0 and lo == -hi


def test_entropy_non_negative_and_signed_asymmetric():
    rng = np.random.default_rng(7)
    relu = np.maximum(rng.standard_normal(50_000), 0)
    obs = EntropyObserver()
    obs.update(relu)
    lo, hi = obs.range(symmetric=False)
    assert lo == 0.0 and 0 < hi <= relu.max()
    signed = EntropyObserver()
    signed.update(np.concatenate([rng.uniform(-0.5, 0, 1000), rng.uniform(0, 2, 1000)]))
    lo, hi = signed.range(symmetric=False)
    t = signed.range(symmetric=True)[1]
    assert lo == pytest.approx(signed.min) and hi == pytest.approx(min(t, signed.max))


# --- MSE -------------------------------------------------------------------------------------------------

def test_mse_beats_minmax_on_outliers(outliers):
    obs = _streamed(MSEObserver(), outliers)
    lo, hi = obs.range(symmetric=True)
    mm = MinMaxObserver()
    mm.update(outliers)
    assert lo == -hi and hi < mm.range(symmetric=True)[1]
    assert _fake_quant_mse(outliers, lo, hi) < _fake_quant_mse(outliers, *mm.range(symmetric=True))


def test_quantization_sse_matches_simulation():
    x = np.abs(np.random.default_rng(8).standard_normal(200_000))
    hist, edges = np.histogram(x, bins=512, range=(0, x.max()))
    width = edges[1] - edges[0]
    for t in (1.0, 2.5, float(x.max())):
        step = t / 127
        simulated = np.mean((np.minimum(np.round(x / step), 127) * step - x) ** 2)
        assert quantization_sse(hist, width, t, 127) / x.size == pytest.approx(simulated, rel=0.05)


def test_mse_uniform_keeps_full_range():
    x = np.random.default_rng(9).uniform(-1, 1, 50_000)
    obs = MSEObserver()
    obs.update(x)
    assert 0.9 < obs.range(symmetric=True)[1] <= 1.0


# --- errors and the registry -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(OBSERVERS))
def test_bad_input_and_no_data(method):
    obs = make_observer(method)
    with pytest.raises(ValueError, match="saw no data"):
        obs.range()
    with pytest.raises(ValueError, match="NaN or Inf"):
        obs.update(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        obs.update(np.array([np.inf]))
    obs.update(np.array([], np.float32))
    with pytest.raises(ValueError, match="saw no data"):
        obs.range()


def test_make_observer_errors():
    with pytest.raises(ConfigError, match="Choose from: minmax, percentile, entropy, mse"):
        make_observer("kl")
    with pytest.raises(ConfigError, match="minmax"):
        make_observer("minmax", bins=10)
    with pytest.raises(ConfigError, match="percentile"):
        make_observer("percentile", percentile=20)
    assert isinstance(make_observer("entropy", bins=512), EntropyObserver)


# --- collect_ranges --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def relu_mul():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Mul", ["r", "two"], ["y"], name="mul")],
        "relu_mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_collect_ranges_matches_numpy(relu_mul):
    rng = np.random.default_rng(10)
    samples = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(5)]
    before = relu_mul.SerializeToString()
    ranges = collect_ranges(relu_mul, ["r", "x", "y"], ({"x": s} for s in samples))
    allx = np.concatenate(samples)
    relu = np.maximum(allx, 0)
    assert ranges["r"] == (float(relu.min()), float(relu.max()))
    assert ranges["x"] == (float(allx.min()), float(allx.max()))
    assert ranges["y"] == (float(2 * relu.min()), float(2 * relu.max()))
    assert relu_mul.SerializeToString() == before  # the caller's model is untouched
    sym = collect_ranges(relu_mul, ["x"], [{"x": s} for s in samples], symmetric=True)
    assert sym["x"] == (-float(np.abs(allx).max()), float(np.abs(allx).max()))
    pct = collect_ranges(relu_mul, ["r"], [{"x": s} for s in samples], method="percentile", bins=64)
    assert pct["r"][0] == 0.0 and 0 < pct["r"][1] <= relu.max()


def test_collect_ranges_errors(relu_mul):
    x = np.ones((1, 4), np.float32)
    with pytest.raises(ConfigError, match="no calibration samples"):
        collect_ranges(relu_mul, ["r"], [])
    with pytest.raises(ConfigError, match="not in the model"):
        collect_ranges(relu_mul, ["nope"], [{"x": x}])
    with pytest.raises(ConfigError, match="Choose from"):
        collect_ranges(relu_mul, ["r"], [{"x": x}], method="kl")
    with pytest.raises(PassError, match="sample #1"):
        collect_ranges(relu_mul, ["r"], [{"x": x}, {"x": np.ones((1, 5), np.float32)}])
    with pytest.raises(PassError, match="NaN or Inf"):
        collect_ranges(relu_mul, ["x"], [{"x": np.full((1, 4), np.nan, np.float32)}])
    assert collect_ranges(relu_mul, [], [{"x": x}]) == {}


class _Recording:
    """An observer that notes the first value of every sample it sees, optionally slowly."""

    def __init__(self, delay: float = 0.0) -> None:
        self.seen: list[float] = []
        self.delay = delay

    def update(self, x: np.ndarray) -> None:
        import time

        time.sleep(self.delay)
        self.seen.append(float(np.asarray(x).reshape(-1)[0]))


def test_every_observer_sees_the_samples_in_order_however_slow_the_others(relu_mul):
    """Observers run on a thread pool beside the next samples' ONNX Runtime runs: each must still see every
    sample once and in order, whether it is slow (a wide layer's Hessian) or fast."""
    from edgec.passes.calibrate import collect_statistics

    samples = [{"x": np.full((1, 4), float(i), np.float32)} for i in range(12)]
    slow, fast, other = _Recording(0.01), _Recording(), _Recording()
    collect_statistics(relu_mul, ["x"], samples, extra={"x": [slow, fast], "y": [other]})
    assert slow.seen == fast.seen == [float(i) for i in range(12)]
    assert other.seen == [2.0 * i for i in range(12)]


def test_an_observer_that_fails_names_its_tensor_and_sample(relu_mul):
    from edgec.passes.calibrate import collect_statistics

    class Picky(_Recording):
        def update(self, x: np.ndarray) -> None:
            super().update(x)
            if len(self.seen) == 3:
                raise ValueError("this one is odd")

    samples = [{"x": np.full((1, 4), float(i), np.float32)} for i in range(8)]
    with pytest.raises(PassError, match=r"tensor 'r' on calibration sample #2: this one is odd"):
        collect_statistics(relu_mul, ["x"], samples, extra={"r": [Picky()]})


def test_channel_minmax_observer_keeps_each_channels_extremes() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, 1, (1, 4, 5, 5)) * np.array([0.1, 1, 10, 100])[None, :, None, None] for _ in range(3)]
    obs = ChannelMinMaxObserver(axis=1)
    for b in batches:
        obs.update(b)
    allx = np.concatenate(batches)
    lo, hi = obs.range()
    np.testing.assert_allclose(lo, allx.min(axis=(0, 2, 3)))
    np.testing.assert_allclose(hi, allx.max(axis=(0, 2, 3)))
    slo, shi = obs.range(symmetric=True)
    np.testing.assert_allclose(shi, np.maximum(-lo, hi))
    np.testing.assert_allclose(slo, -shi)
    with pytest.raises(ValueError, match="channels"):
        obs.update(np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="no data"):
        ChannelMinMaxObserver().range()
