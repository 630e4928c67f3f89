"""Opset upgrade: per-channel QuantizeLinear/DequantizeLinear (an `axis` attribute) needs ONNX opset 13."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..calibration import fixed_inputs, synthetic_samples
from ..errors import ConfigError, brief
from ..model import Model, ort_session

QDQ_MIN_OPSET = 13
_AGREEMENT_RTOL = 1e-4  # relative L2 between the model before and after conversion, on seeded inputs


def default_opset(proto: Any) -> int:
    """The model's opset of the default ONNX domain."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


@dataclass(frozen=True)
class OpsetUpgradePass:
    """Convert a model below `min_opset` up to it with onnx's version converter, and prove the result computes
    what the original does (ONNX Runtime, seeded inputs). ConfigError, before any calibration, when either fails:
    the message says to re-export at opset >= `min_opset`. A model at or above `min_opset` passes unchanged."""

    min_opset: int = QDQ_MIN_OPSET
    name: str = "opset-upgrade"

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def run(self, model: Model) -> Model:
        import onnx.version_converter

        have = default_opset(model.proto)
        if have >= self.min_opset:
            return model
        refuse = (f"int8 needs ONNX opset >= {self.min_opset} (per-channel QuantizeLinear/DequantizeLinear); this "
                  f"model is opset {have}")
        try:
            proto = onnx.version_converter.convert_version(model.proto, self.min_opset)
        except Exception as e:  # the converter raises bare RuntimeError/ValueError per unsupported adapter
            raise ConfigError(f"{refuse}, and onnx's version converter could not convert it: {brief(e)}. Re-export "
                              f"the model at opset {self.min_opset} or newer, or compile with --precision fp32.") from e
        _check_same_outputs(model, Model(proto, model.provenance), refuse)
        notes = model.provenance.get("notes", []) + [f"converted from opset {have} to {self.min_opset} for int8 "
                                                     "(onnx version converter; outputs checked against the original)"]
        return Model(proto, {**model.provenance, "notes": notes, "converted_from_opset": have})


def _check_same_outputs(before: Model, after: Model, refuse: str) -> None:
    fixed = fixed_inputs(before)
    try:
        old, new = ort_session(before.proto, log_level=4), ort_session(after.proto, log_level=4)
        for feed in synthetic_samples(before.inputs, count=2, fixed=fixed).feeds:
            for a, b in zip(old.run(None, feed), new.run(None, feed)):
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                if a.shape != b.shape or np.linalg.norm(a - b) > _AGREEMENT_RTOL * max(np.linalg.norm(a), 1e-6):
                    raise ValueError(f"outputs differ (shape {list(a.shape)} vs {list(b.shape)})")
    except Exception as e:
        raise ConfigError(f"{refuse}; onnx's version converter converted it, but the result does not run as the "
                          f"original does ({brief(e)}). Re-export the model at opset {QDQ_MIN_OPSET} or newer, or "
                          "compile with --precision fp32.") from e
