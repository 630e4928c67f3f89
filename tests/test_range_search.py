"""Activation range search: candidates from one histogram, a greedy sweep that never makes the output worse."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgec import CalibrationSet
from edgec.model import Model
from edgec.passes.calibrate import PercentileObserver
from edgec.backends.openvino import PLACEMENT as OPENVINO
from edgec.passes import ptq
from edgec.passes.ptq import calibrate
from edgec.calibration import Samples
from edgec.passes.range_search import (SCREEN_SAMPLES, OutputError, _sides, candidate_ranges, plan_search, same_range,
                                       search_ranges)
from models import depthwise_onnx, tiny_conv_onnx, two_branch_onnx


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

    plan = plan_search(start, ["a", "b"], candidates, samples=8)
    ranges, log = search_ranges(start, plan, lambda r: r, lambda r: (lambda n, above=None: error(r)))
    assert ranges == target and log["changed"] == ["a"]
    assert log["output_error_after"] < log["output_error_before"]
    assert log["evaluations"] == 1 + 2 + 1                               # the current range is not rerun


def test_a_candidate_that_only_helps_on_the_screening_samples_is_not_kept() -> None:
    start = {"a": (0.0, 6.0)}
    plan = plan_search(start, ["a"], {"a": [(0.0, 2.0), (0.0, 6.0)]}, samples=64)
    assert plan.screen_samples == SCREEN_SAMPLES

    def score(r):  # (0, 2) looks better on the first 8 samples and is worse on all 64
        return lambda n, above=None: (0.5 if n <= SCREEN_SAMPLES else 2.0) if r["a"] == (0.0, 2.0) else 1.0

    ranges, log = search_ranges(start, plan, lambda r: r, score)
    assert ranges == start and log["confirmed"] == 1 and log["changed"] == []


def test_plan_skips_tensors_whose_candidates_agree_and_keeps_the_widest_spreads_in_graph_order() -> None:
    ranges = {t: (0.0, 1.0) for t in "abcde"}
    candidates = {"a": [(0.0, 1.0), (0.0, 1.005)],                       # 0.5% apart: nothing to search
                  "b": [(0.0, 1.0), (0.0, 3.0)], "c": [(0.0, 1.0), (0.0, 1.5)],
                  "d": [(0.0, 0.5), (0.0, 1.0), (0.0, 8.0)], "e": [(0.0, 1.0), (0.0, 1.1)]}
    plan = plan_search(ranges, list("abcde"), candidates, samples=64, max_tensors=3)
    assert plan.tensors == ["b", "c", "d"] and plan.considered == 5
    assert plan.candidates["d"] == [(0.0, 0.5), (0.0, 8.0)] and plan.evaluations == 4


def _run(proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)


def _output_mse(proto, model: Model, x: np.ndarray) -> float:
    return float(np.mean((_run(proto, x) - _run(model.proto, x)) ** 2))


def _output_error(proto, model: Model, x: np.ndarray) -> float:
    """The search's error on a one-output model: MSE over the variance of the fp32 output."""
    return _output_mse(proto, model, x) / float(np.var(_run(model.proto, x)))


def test_search_clips_a_calibration_outlier_that_ruins_min_max() -> None:
    """One 1000.0 pixel in a calibration sample outside the search subset stretches min/max ranges so far that
    ordinary inputs quantize to zero: the search picks percentile ranges instead, its logged errors are the
    models' real output errors, and held-out error falls by over 100x."""
    model = Model(tiny_conv_onnx(), {"source": "tiny", "kind": "onnx"})
    x = np.random.default_rng(5).random((32, 3, 16, 16), dtype=np.float32)
    x[1, 0, 7, 7] = 1000.0
    cal = calibrate(model, CalibrationSet({"x": x}), OPENVINO, "minmax", range_search=16)
    plain = calibrate(model, CalibrationSet({"x": x}), OPENVINO, "minmax")
    log = cal.range_search
    assert plain.range_search is None and plain.ranges["x"][1] == 1000.0
    assert log is not None and log["tensors"] == len(cal.plan.tensors()) and log["samples"].startswith("16 of")
    assert log["searched"] <= log["tensors"]
    assert cal.ranges["x"][1] < 2.0 and cal.ranges["r1"][1] < 0.1 * plain.ranges["r1"][1]
    assert {t for t in cal.ranges if cal.ranges[t] != plain.ranges[t]} == set(log["changed"])
    picked = np.unique(np.linspace(0, 31, 16).round().astype(int))  # subset_indices: an even spread
    assert 1 not in picked
    subset = x[picked]
    assert log["output_error_before"] == pytest.approx(_output_error(plain.quantized().proto, model, subset), rel=1e-5)
    assert log["output_error_after"] == pytest.approx(_output_error(cal.quantized().proto, model, subset), rel=1e-5)
    held_out = np.random.default_rng(6).random((32, 3, 16, 16), dtype=np.float32)
    searched, minmax = (_output_mse(c.quantized().proto, model, held_out) for c in (cal, plain))
    assert searched < minmax / 100


def test_the_statistics_pass_records_the_reference_and_the_search_states_its_cost(capsys, monkeypatch) -> None:
    """keep_outputs gives the fp32 outputs of every calibration sample from the statistics pass (what a separate
    ONNX Runtime run gives); the range search prints its bound and time estimate before it runs, and every phase
    reports its time."""
    from edgec.progress import Steps

    monkeypatch.setattr(ptq, "SEARCH_WORTHWHILE", 0.0)  # int8 of this model is close enough to be skipped otherwise

    model = Model(tiny_conv_onnx(), {"source": "tiny", "kind": "onnx"})
    x = np.random.default_rng(7).random((24, 3, 16, 16), dtype=np.float32)
    steps = Steps(enabled=True)
    cal = calibrate(model, CalibrationSet({"x": x}), OPENVINO, range_search=16, steps=steps, keep_outputs=True)
    session = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    plain = [session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))]
    assert cal.outputs is not None and len(cal.outputs) == len(x)
    np.testing.assert_allclose(np.concatenate(cal.outputs), np.concatenate(plain), rtol=1e-5, atol=1e-6)
    err = capsys.readouterr().err
    log = cal.range_search
    assert (f"range search: {log['searched']} of {log['tensors']} activation tensors, " in err
            and f"candidates on {SCREEN_SAMPLES} samples, ~" in err)
    assert {"calibration statistics", "GPTQ weight rounding", "activation range search"} <= {
        k.split(":")[0] for k in steps.timings}


def test_the_search_scores_every_output_not_only_the_first() -> None:
    """Input b, read only by the second output, has a 50.0 outlier in a calibration sample outside the search
    subset: scoring the first output alone, nothing the search tries on b's range would change the error."""
    model = Model(two_branch_onnx(), {"source": "tiny", "kind": "onnx"})
    rng = np.random.default_rng(3)
    data = {"a": rng.random((32, 3, 8, 8), dtype=np.float32), "b": rng.random((32, 3, 8, 8), dtype=np.float32)}
    data["b"][1, 0, 4, 4] = 50.0
    cal = calibrate(model, CalibrationSet(data), OPENVINO, "minmax", weight_rounding="nearest", range_search=16)
    assert cal.ranges["b"][1] < 2.0 and "b" in cal.range_search["changed"]
    assert cal.range_search["output_error_after"] < 0.1 * cal.range_search["output_error_before"]


def test_output_error_weighs_outputs_by_their_variance_and_counts_a_shape_change_as_one() -> None:
    rng = np.random.default_rng(0)
    reference = [[rng.normal(0, 100, (1, 4)), rng.normal(0, 0.01, (1, 2)), np.array([i])] for i in range(8)]
    err = OutputError(Samples([{}] * 8, None, "8"), reference, screen=8)
    assert err.scored == [0, 1]                                          # the int64 output is not scored
    big, small, _ = reference[3]
    scale = lambda a: float(np.var(np.concatenate([r[a].ravel() for r in reference])))  # noqa: E731
    e = err.sample_error([big + 1.0, small + 0.001, np.array([9])], 3)
    assert e == pytest.approx(1.0 / scale(0) + 1e-6 / scale(1))
    assert err.sample_error([big, np.zeros((1, 3))], 3) == pytest.approx(1.0)


def test_a_losing_candidate_stops_running_samples_once_it_has_lost() -> None:
    x = np.random.default_rng(0).random((16, 3, 16, 16), dtype=np.float32)
    model = Model(tiny_conv_onnx(), {"source": "tiny", "kind": "onnx"})
    session = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = [session.run(None, {"x": x[i:i + 1]}) for i in range(16)]
    err = OutputError(Samples([{"x": x[i:i + 1]} for i in range(16)], None, "16"), reference)
    bad = calibrate(model, CalibrationSet({"x": x}), OPENVINO, "minmax", weight_rounding="nearest")
    bad.ranges["x"] = (0.0, 100.0)                                      # coarse steps: a large error on every sample
    mean = err.score(bad.quantized().proto)
    bound = mean(16, above=1e-9)
    exact = err.score(bad.quantized().proto)(16)
    assert 1e-9 < bound < exact                                         # stopped after the first sample
    assert mean(16) == pytest.approx(exact)                             # asked again: the rest are run


def test_a_per_channel_range_is_tried_against_its_per_tensor_alternative(monkeypatch) -> None:
    """The search first offers each per-channel tensor its per-tensor range; the log says which it kept, and the
    quantized model quantizes each tensor the way its range says (arrays: per channel, scalars: per tensor)."""
    monkeypatch.setattr(ptq, "SEARCH_WORTHWHILE", 0.0)  # int8 of this model is close enough to be skipped otherwise
    model = Model(depthwise_onnx(), {"source": "tiny", "kind": "onnx"})
    x = np.random.default_rng(0).normal(0, 1, (24, 3, 16, 16)).astype(np.float32)
    cal = calibrate(model, CalibrationSet({"x": x}), OPENVINO, weight_rounding="nearest", range_search=16)
    log = cal.range_search
    assert log["per_channel_tensors"] == 1
    assert log["per_tensor_instead"] == [] and np.ndim(cal.ranges["h"][0]) == 1  # channels 0.03x..10x apart
    q = cal.quantized().proto
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "h_quantized")
    assert [a.name for a in dq.attribute] == ["axis"]


def test_per_channel_ranges_compare_and_order_as_ranges() -> None:
    a = (np.array([0.0, -1.0]), np.array([1.0, 2.0]))
    assert same_range(a, (a[0].copy(), a[1].copy())) and not same_range(a, (0.0, 2.0))
    assert not same_range((0.0, 1.0), a) and same_range((0.0, 1.0), (0.0, 1.0))
    assert _sides([(-1.0, 2.0)], a) == [[(-1.0, 2.0)]]
