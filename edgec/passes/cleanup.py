"""Cleanup: constant folding and dead-code removal (onnxscript's optimizer), unique node names."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import PassError, brief
from ..model import Model, fit_to_its_opset


@dataclass(frozen=True)
class CleanupPass:
    """Fold constants, drop dead nodes, give every node a unique name (profiles map layers by name)."""

    fold_constants: bool = True
    name: str = "cleanup"

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def run(self, model: Model) -> Model:
        proto = model.proto
        provenance = model.provenance
        if self.fold_constants:
            import onnx_ir as ir
            import onnxscript.optimizer

            try:
                model_ir = ir.serde.deserialize_model(proto)
                onnxscript.optimizer.optimize_ir(model_ir, should_fold=_fold_small_constant_of_shape)
                proto = ir.serde.serialize_model(model_ir)
            except Exception as e:
                raise PassError(f"cleanup: onnxscript's optimizer failed on {model.provenance.get('source')}: "
                                f"{brief(e)}. Retry with fold_constants=False.") from e
            problem = fit_to_its_opset(proto)
            if problem:  # the optimizer writes newer-opset attributes into old graphs (Reshape allowzero < 14)
                proto = model.proto
                provenance = {**provenance, "notes": provenance.get("notes", []) + [
                    f"cleanup kept the model unfolded: onnxscript's optimizer made it invalid for its opset ({problem})"]}
        name_nodes(proto)
        return Model(proto, provenance)


_SMALL_FILL = 4096  # elements: a ConstantOfShape up to this size is folded (a pad or shape vector, not a tensor)


def _fold_small_constant_of_shape(node: Any) -> bool | None:
    """onnxscript's should_fold: True for a ConstantOfShape of constant shape with few elements, else its default.

    onnxscript keeps every ConstantOfShape (so as not to grow the model); silero VAD builds its STFT's Pad
    widths from one, and TVM's importer cannot read a Pad whose widths are computed at run time.
    """
    if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return None
    shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
    if shape is None:
        return None
    return int(abs(shape.numpy()).prod()) <= _SMALL_FILL


def name_nodes(proto: Any) -> None:
    """Give unnamed or duplicate-named nodes unique names `<OpType>_<i>`; the first of a name keeps it."""
    taken = {n.name for n in proto.graph.node if n.name}
    kept: set[str] = set()
    counter = 0
    for node in proto.graph.node:
        if node.name and node.name not in kept:
            kept.add(node.name)
            continue
        while f"{node.op_type}_{counter}" in taken:
            counter += 1
        node.name = f"{node.op_type}_{counter}"
        taken.add(node.name)
        kept.add(node.name)
