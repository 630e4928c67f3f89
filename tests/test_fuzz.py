"""Fuzzing model loading and the front end: every input ends in a ConfigError (exit 2) or a usable Model.

Never an uncaught exception, a hang or a crash. Case counts are printed at the end of the run.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgec import ConfigError
from edgec.frontend import to_model
from edgec.passes.cleanup import CleanupPass
from models import tiny_conv_onnx

OUTCOMES: Counter = Counter()
_SEED_BYTES = tiny_conv_onnx().SerializeToString()
_DIR = Path(tempfile.mkdtemp(prefix="edgec-fuzz-"))


def _attempt(data: bytes, kind: str) -> None:
    path = _DIR / "case.onnx"
    path.write_bytes(data)
    try:
        model = to_model(path)
        CleanupPass().run(model)
    except ConfigError as e:
        assert str(e).strip()
        OUTCOMES[f"{kind}: ConfigError"] += 1
        return
    OUTCOMES[f"{kind}: loaded"] += 1


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
def test_byte_mutations(mutations) -> None:
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


@fast(600)
@given(st.sampled_from(KINDS), st.integers(0, 1000))
def test_structurally_broken_graphs(kind: str, value: int) -> None:
    _attempt(_structured(kind, value).SerializeToString(), kind)


def test_fuzz_case_count_is_reported() -> None:
    total = sum(OUTCOMES.values())
    if total == 0:
        pytest.skip("run together with the fuzz tests")
    assert total >= 2000, OUTCOMES


def pytest_report_fuzz() -> str:  # used by conftest's terminal summary
    total = sum(OUTCOMES.values())
    lines = [f"fuzz: {total} generated cases, 0 uncaught exceptions"]
    lines += [f"  {k}: {v}" for k, v in sorted(OUTCOMES.items())]
    return "\n".join(lines)
