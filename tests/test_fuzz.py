"""Fuzzing model loading and the front end: every input ends in a ConfigError (exit 2) or a usable Model.

Never an uncaught exception, a hang or a crash. Case counts are printed at the end of the run.
"""
from __future__ import annotations

import math
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgec import ConfigError
from edgec.frontend import to_model
from edgec.model import Model
from edgec.passes.cleanup import CleanupPass
from models import tiny_conv_onnx

OUTCOMES: Counter = Counter()  # "<kind>: <outcome>" -> cases; conftest.py prints pytest_report_fuzz() at the end
_SEED_BYTES = tiny_conv_onnx().SerializeToString()
_DIR = Path(tempfile.mkdtemp(prefix="edgec-fuzz-"))
_RUN_LIMIT = 1 << 20  # input elements up to which a loaded model is also run with ONNX Runtime
_FEEDABLE = {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"}


def _attempt(data: bytes, kind: str) -> None:
    """Load `data` as an .onnx file and record the outcome; an uncaught exception or an unusable model fails."""
    path = _DIR / "case.onnx"
    path.write_bytes(data)
    try:
        model = to_model(path)
        cleaned = CleanupPass().run(model)
    except ConfigError as e:
        outcome, problem = "ConfigError", None if str(e).strip() else "a ConfigError without a message"
    except Exception:
        OUTCOMES[f"{kind}: uncaught"] += 1
        raise
    else:
        outcome, problem = "loaded", _problem(model, cleaned, kind)
    if problem:
        OUTCOMES[f"{kind}: unusable"] += 1
        raise AssertionError(f"{kind}: {problem}")
    OUTCOMES[f"{kind}: {outcome}"] += 1


def _problem(model: Model, cleaned: Model, kind: str) -> str | None:
    """Why a loaded model is not usable: a kind that must be refused, a dynamic input, a cleanup the checker
    rejects, or (when ONNX Runtime can run it) outputs that fail to run, mismatch their declared shapes or
    change under cleanup."""
    if kind in MUST_REFUSE:
        return "loaded, but such a graph is invalid ONNX"
    if not model.inputs or not all(s.is_static for s in model.inputs):
        return f"inputs {[s.shape for s in model.inputs]} are not all static"
    try:
        onnx.checker.check_model(cleaned.proto)
    except Exception as e:  # noqa: BLE001
        return f"cleanup produced an invalid model: {e}"
    default = [o.version for o in model.proto.opset_import if o.domain in ("", "ai.onnx")]
    if (any(n.domain not in ("", "ai.onnx") for n in model.proto.graph.node) or not default or default[0] < 7
            or sum(math.prod(s.shape) for s in model.inputs) > _RUN_LIMIT
            or any(s.dtype not in _FEEDABLE for s in model.inputs)):
        return None  # custom ops, pre-opset-7, huge or exotic inputs: outside what ONNX Runtime runs here
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in model.inputs}
    try:
        before, after = (_ort(m, feeds) for m in (model, cleaned))
    except Exception as e:  # noqa: BLE001
        return f"ONNX Runtime cannot run it: {e}"
    declared = [s.shape for s in model.outputs]
    if len(before) != len(declared) or any(all(isinstance(v, int) for v in d) and a.shape != d
                                           for a, d in zip(before, declared)):
        return f"outputs {[a.shape for a in before]} do not match the declared {declared}"
    if not all(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True) for a, b in zip(before, after)):
        return "cleanup changed its outputs"
    return None


def _ort(model: Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _cases(fuzz) -> Counter:
    """Run a Hypothesis test and return the outcomes it recorded."""
    before = OUTCOMES.copy()
    fuzz()
    return OUTCOMES - before


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(_SEED_BYTES) - 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, len(_SEED_BYTES) - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(_SEED_BYTES)), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(_SEED_BYTES) - 1), st.integers(1, 16)),
)

def fast(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=True, database=None)


@fast(1500)
@given(st.lists(mutation, min_size=1, max_size=4))
def _byte_mutations(mutations) -> None:
    data = bytearray(_SEED_BYTES)
    for op, pos, arg in mutations:
        pos = min(pos, len(data))
        if op == "flip" and pos < len(data):
            data[pos] ^= arg
        elif op == "truncate":
            data = data[:pos]
        elif op == "insert":
            data[pos:pos] = bytes([arg])
        elif op == "delete":
            del data[pos:pos + arg]
    _attempt(bytes(data), "byte mutation")


def test_byte_mutations() -> None:
    """1,500 mutated copies of a valid model: each is refused with a ConfigError or loads usable; both happen."""
    cases = _cases(_byte_mutations)
    assert sum(cases.values()) >= 1400, cases
    assert cases["byte mutation: loaded"] > 0 and cases["byte mutation: ConfigError"] > 0, cases


def _graph(nodes, inputs=None, outputs=None, inits=(), opset=17, ir=10):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def _structured(kind: str, value: int):
    relu = helper.make_node("Relu", ["x"], ["y"], name="relu")
    if kind == "cycle":
        return _graph([helper.make_node("Add", ["x", "b"], ["a"], name="a1"),
                       helper.make_node("Relu", ["a"], ["b"], name="r1"),
                       helper.make_node("Identity", ["b"], ["y"], name="i1")])
    if kind == "missing initializer":
        return _graph([helper.make_node("Add", ["x", f"w{value}"], ["y"], name="add")])
    if kind == "wrong dtype":
        w = onnx.numpy_helper.from_array(np.ones((1, 4), np.int64), "w")
        return _graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], inits=[w])
    if kind == "huge dims":
        big = 2 ** (20 + value % 40)
        return _graph([relu], inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [big, big])],
                      outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [big, big])])
    if kind == "negative dims":
        return _graph([relu], inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [-value - 1, 4])])
    if kind == "unknown op":
        return _graph([helper.make_node(f"NoSuchOp{value}", ["x"], ["y"], name="n")])
    if kind == "unknown domain":
        m = _graph([helper.make_node("Relu", ["x"], ["y"], name="n", domain=f"com.example{value}")])
        m.opset_import.append(helper.make_opsetid(f"com.example{value}", 1))
        return m
    if kind == "opset out of range":
        return _graph([relu], opset=[0, 1, 5, 99, 1000, -3][value % 6])
    if kind == "ir version out of range":
        return _graph([relu], ir=[0, 1, 2, 99, 10000][value % 5])
    if kind == "dangling output":
        return _graph([relu], outputs=[helper.make_tensor_value_info(f"z{value}", TensorProto.FLOAT, [1, 4])])
    if kind == "duplicate outputs":
        return _graph([relu, helper.make_node("Relu", ["x"], ["y"], name="relu2")])
    if kind == "empty graph":
        return _graph([])
    raise AssertionError(kind)


KINDS = ["cycle", "missing initializer", "wrong dtype", "huge dims", "negative dims", "unknown op", "unknown domain",
         "opset out of range", "ir version out of range", "dangling output", "duplicate outputs", "empty graph"]
MUST_REFUSE = {"cycle", "missing initializer", "wrong dtype", "unknown op", "ir version out of range",
               "dangling output", "duplicate outputs", "empty graph"}


@fast(600)
@given(st.sampled_from(KINDS), st.integers(0, 1000))
def _structurally_broken_graphs(kind: str, value: int) -> None:
    _attempt(_structured(kind, value).SerializeToString(), kind)


def test_structurally_broken_graphs() -> None:
    """600 hand-broken graphs over every kind: invalid ONNX is refused, the rest (custom domains, huge or
    negative dims, old opsets) loads usable."""
    cases = _cases(_structurally_broken_graphs)
    assert sum(cases.values()) >= 550, cases
    assert {k.split(": ")[0] for k in cases} == set(KINDS), cases
    assert any(k.endswith(": loaded") for k in cases), cases


def test_summary_counts_the_recorded_outcomes(monkeypatch) -> None:
    """Each outcome is recorded, uncaught exceptions and unusable models included, and the summary line counts them."""
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "OUTCOMES", Counter())
    _attempt(_SEED_BYTES, "seed")
    _attempt(_SEED_BYTES[:200], "seed")

    def crash(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(module, "to_model", crash)
    with pytest.raises(RuntimeError):
        _attempt(_SEED_BYTES, "seed")
    monkeypatch.setattr(module, "to_model", lambda path: Model(tiny_conv_onnx(batch="N")))
    with pytest.raises(AssertionError, match="not all static"):
        _attempt(_SEED_BYTES, "seed")
    assert module.OUTCOMES == {"seed: loaded": 1, "seed: ConfigError": 1, "seed: uncaught": 1, "seed: unusable": 1}
    assert pytest_report_fuzz().splitlines() == [
        "fuzz: 4 cases: 1 loaded and checked, 1 refused (ConfigError), 1 unusable, 1 uncaught exceptions",
        "  seed: ConfigError: 1", "  seed: loaded: 1", "  seed: uncaught: 1", "  seed: unusable: 1"]


def pytest_report_fuzz() -> str:  # used by conftest's terminal summary
    def count(outcome: str) -> int:
        return sum(v for k, v in OUTCOMES.items() if k.endswith(f": {outcome}"))

    lines = [(f"fuzz: {sum(OUTCOMES.values())} cases: {count('loaded')} loaded and checked, "
              f"{count('ConfigError')} refused (ConfigError), {count('unusable')} unusable, "
              f"{count('uncaught')} uncaught exceptions")]
    lines += [f"  {k}: {v}" for k, v in sorted(OUTCOMES.items())]
    return "\n".join(lines)
