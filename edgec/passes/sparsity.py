"""Weight sparsity on an ONNX graph: unstructured magnitude pruning or 2:4 semi-structured sparsity.

Safe on any ONNX model (shapes do not change), and honest about speed: zeros only make a model faster
where the backend exploits them, today TensorRT's sparse tensor cores (Ampere+ Jetsons) for 2:4.
Structured channel pruning, which does make models faster everywhere, needs the PyTorch model
(`edgec.prune`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..model import Model

_WEIGHTED = ("Conv", "Gemm", "MatMul")


def parse_prune_spec(spec: str) -> "WeightSparsityPass":
    """`unstructured:0.5` or `2:4`; `channels:R` explains that it needs the PyTorch model."""
    kind, _, value = spec.partition(":")
    if spec == "2:4":
        return WeightSparsityPass("2:4", 0.5)
    if kind == "unstructured":
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if not 0 < ratio < 1:
            raise ConfigError(f"Bad --prune '{spec}': write unstructured:RATIO with 0 < RATIO < 1.")
        return WeightSparsityPass("unstructured", ratio)
    if kind in ("channels", "structured"):
        raise ConfigError("Structured (channel) pruning needs the PyTorch model to rewire layers and recover "
                          "accuracy: edgec.prune(module, ratio=..., example_inputs=..., data=..., epochs=...) in "
                          "Python, then compile the result. On ONNX, --prune takes unstructured:RATIO or 2:4.")
    raise ConfigError(f"Bad --prune '{spec}': use unstructured:RATIO or 2:4 (structured pruning: edgec.prune).")


@dataclass(frozen=True)
class WeightSparsityPass:
    kind: str          # "unstructured" | "2:4"
    ratio: float
    name: str = "weight-sparsity"

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def run(self, model: Model) -> Model:
        import onnx
        from onnx import numpy_helper

        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        inits = {t.name: t for t in proto.graph.initializer}
        zeroed = total = 0
        for node in proto.graph.node:
            if node.op_type not in _WEIGHTED or len(node.input) < 2 or node.input[1] not in inits:
                continue
            t = inits[node.input[1]]
            w = numpy_helper.to_array(t)
            if w.dtype != np.float32 or w.ndim < 2:
                continue
            mask = _mask_2_4(w, node.op_type) if self.kind == "2:4" else _mask_magnitude(w, self.ratio)
            t.CopyFrom(numpy_helper.from_array(np.where(mask, w, 0).astype(np.float32), t.name))
            zeroed += int((~mask).sum())
            total += w.size
        if total == 0:
            raise ConfigError("--prune found no Conv/Gemm/MatMul weights to sparsify.")
        provenance = {**model.provenance, "sparsity": {"kind": self.kind, "zeros": round(zeroed / total, 4)}}
        return Model(proto, provenance)


def _mask_magnitude(w: np.ndarray, ratio: float) -> np.ndarray:
    k = int(ratio * w.size)
    if k == 0:
        return np.ones(w.shape, bool)
    threshold = np.partition(np.abs(w).ravel(), k - 1)[k - 1]
    return np.abs(w) > threshold


def _mask_2_4(w: np.ndarray, op: str) -> np.ndarray:
    """Keep the 2 largest of every 4 consecutive weights along the input-channel (reduction) axis."""
    axis = 1 if op == "Conv" else (0 if op == "MatMul" else 1)  # Gemm weights are [N, K] with transB (the export)
    moved = np.moveaxis(w, axis, -1)
    k = moved.shape[-1]
    pad = (-k) % 4
    padded = np.concatenate([np.abs(moved), np.full(moved.shape[:-1] + (pad,), -1.0, moved.dtype)], -1) if pad else np.abs(moved)
    groups = padded.reshape(*padded.shape[:-1], -1, 4)
    order = np.argsort(groups, axis=-1)
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, order[..., 2:], True, axis=-1)
    keep = keep.reshape(padded.shape)[..., :k]
    return np.moveaxis(keep, -1, axis)
