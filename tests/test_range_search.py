"""Activation range search: candidates from one histogram, a greedy sweep that never makes the output worse."""
from __future__ import annotations

import numpy as np

from edgec import CalibrationSet
from edgec.model import Model
from edgec.passes.calibrate import PercentileObserver
from edgec.passes.quantize import calibrate
from edgec.passes.range_search import candidate_ranges, search_ranges
from models import tiny_conv_onnx


def test_candidates_come_from_one_histogram_and_include_min_max() -> None:
    obs = PercentileObserver(99.99)
    rng = np.random.default_rng(0)
    obs.update(np.concatenate([rng.normal(size=100_000), [40.0, -30.0]]))
    cands = candidate_ranges(obs, symmetric=False)
    assert (-30.0, 40.0) in cands and len(cands) == len(set(cands)) >= 3
    assert obs.percentile == 99.99                                       # the observer is left as it was
    assert all(lo < 0 < hi for lo, hi in cands)
    assert sorted(hi for _, hi in cands) == [hi for _, hi in sorted(cands, key=lambda r: r[1])]


def test_sweep_keeps_only_candidates_that_lower_the_error() -> None:
    target = {"a": (0.0, 4.0), "b": (-1.0, 1.0)}
    start = {"a": (0.0, 6.0), "b": (-1.0, 1.0)}
    candidates = {"a": [(0.0, 2.0), (0.0, 4.0), (0.0, 6.0)], "b": [(-3.0, 3.0), (-1.0, 1.0)]}

    def error(r):  # distance of the ranges from the best ones, plus a floor
        return 1.0 + sum(abs(r[k][1] - target[k][1]) for k in r)

    ranges, log = search_ranges(start, ["a", "b"], candidates, lambda r: r, error)
    assert ranges == target and log["changed"] == ["a"]
    assert log["output_mse_after"] < log["output_mse_before"]
    assert log["evaluations"] == 1 + 3 + 1                               # the current range is not rerun


def test_calibrate_with_search_never_raises_the_output_error() -> None:
    model = Model(tiny_conv_onnx(), {"source": "tiny", "kind": "onnx"})
    x = np.random.default_rng(5).random((32, 3, 16, 16), dtype=np.float32)
    x[3] *= 20  # one outlier sample stretches min/max ranges
    cal = calibrate(model, CalibrationSet({"x": x}), "openvino", "minmax", range_search=16)
    log = cal.range_search
    assert log is not None and log["tensors"] == len(cal.plan.tensors())
    assert log["output_mse_after"] <= log["output_mse_before"]
    assert log["samples"].startswith("16 of")
    plain = calibrate(model, CalibrationSet({"x": x}), "openvino", "minmax")
    assert plain.range_search is None
    changed = set(log["changed"])
    assert {t for t in cal.ranges if cal.ranges[t] != plain.ranges[t]} == changed
