"""Float16 -> float32: a model stored or computing in fp16 becomes an fp32 graph, for fp32 builds (CPUs without
fp16 arithmetic run it 2x slower in fp16) and for int8 calibration and Q/DQ (QuantizeLinear takes float16
only from opset 19, and calibration statistics want fp32).

fp16 -> fp32 is exact for weights. Graph inputs and outputs keep their fp16 type (a Cast at each boundary), so
the model's interface does not change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..model import Model, graphs

_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16


def has_float16(proto: Any) -> bool:
    """Whether any initializer, constant or Cast of the model (subgraphs included) is float16."""
    for graph in graphs(proto.graph):
        if any(t.data_type == _FLOAT16 for t in graph.initializer):
            return True
        for node in graph.node:
            if node.op_type == "Cast" and any(a.name == "to" and a.i == _FLOAT16 for a in node.attribute):
                return True
            if any(a.type == a.TENSOR and a.t.data_type == _FLOAT16 for a in node.attribute):
                return True
    return False


@dataclass(frozen=True)
class Fp32Pass:
    """Every float16 initializer, constant and Cast target becomes float32; fp16 graph inputs and outputs get a
    Cast at the boundary. Nodes keep their names and metadata_props."""

    name: str = "fp16-to-fp32"

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def run(self, model: Model) -> Model:
        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        for graph in graphs(proto.graph):
            _upcast_graph(graph)
        _cast_boundaries(proto.graph)
        del proto.graph.value_info[:]
        try:
            proto = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # types unknown: no Cast is dropped below, the graph stays valid
            pass
        _drop_float_to_float_casts(proto.graph)
        notes = model.provenance.get("notes", []) + ["float16 weights and casts upcast to float32 (exact): the "
                                                     "model computes in float32"]
        return Model(proto, {**model.provenance, "notes": notes})


def _upcast_graph(graph: Any) -> None:
    for i, t in enumerate(graph.initializer):
        if t.data_type == _FLOAT16:
            graph.initializer[i].CopyFrom(_to_float32(t))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT16:
                attr.i = _FLOAT
            elif attr.type == attr.TENSOR and attr.t.data_type == _FLOAT16:
                attr.t.CopyFrom(_to_float32(attr.t))
    for value in list(graph.value_info):
        if value.type.tensor_type.elem_type == _FLOAT16:
            value.type.tensor_type.elem_type = _FLOAT


def _drop_float_to_float_casts(graph: Any) -> None:
    """Remove the Casts that upcasting left from float32 to float32 (they would block Q/DQ fusions); a Cast
    producing a graph output stays."""
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)}
    types.update({t.name: t.data_type for t in graph.initializer})
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [alias.get(n, n) for n in node.input]
        if (node.op_type == "Cast" and node.output[0] not in outputs and types.get(node.input[0]) == _FLOAT
                and any(a.name == "to" and a.i == _FLOAT for a in node.attribute)):
            alias[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    for body in graphs(graph):
        if body is not graph:
            for node in body.node:
                node.input[:] = [alias.get(n, n) for n in node.input]
    del graph.node[:]
    graph.node.extend(kept)


def _to_float32(tensor: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def _cast_boundaries(graph: Any) -> None:
    """fp16 graph inputs feed a Cast to fp32; fp16 graph outputs come from a Cast of the fp32 result."""
    import onnx

    renames: dict[str, str] = {}
    heads = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == _FLOAT16:
            renames[value.name] = f"{value.name}_fp32"
            heads.append(onnx.helper.make_node("Cast", [value.name], [renames[value.name]], to=_FLOAT,
                                               name=f"{value.name}_to_fp32"))
    tails = []
    for value in graph.output:
        if value.type.tensor_type.elem_type == _FLOAT16 and value.name not in renames:
            renames[value.name] = f"{value.name}_fp32"
            tails.append(onnx.helper.make_node("Cast", [renames[value.name]], [value.name], to=_FLOAT16,
                                               name=f"{value.name}_to_fp16"))
    for graph_ in graphs(graph):
        for node in graph_.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            if graph_ is graph:
                node.output[:] = [renames.get(n, n) for n in node.output]
    nodes = heads + list(graph.node) + tails
    del graph.node[:]
    graph.node.extend(nodes)
