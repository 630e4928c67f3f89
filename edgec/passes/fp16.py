"""fp16 graph: float weights and activations in float16, float32 at the graph's inputs and outputs.

For runtimes that take the precision from the graph itself (TensorRT 11's strongly typed networks).
Uses onnxconverter-common's maintained converter; every original node keeps its metadata_props.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import PassError, brief
from ..model import Model


@dataclass(frozen=True)
class Fp16Pass:
    keep_io_types: bool = True
    name: str = "fp16-graph"

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def run(self, model: Model) -> Model:
        try:
            from onnxconverter_common import float16
        except ImportError as e:
            raise PassError("An fp16 graph needs onnxconverter-common: pip install onnxconverter-common") from e
        try:
            proto = float16.convert_float_to_float16(model.proto, keep_io_types=self.keep_io_types,
                                                     disable_shape_infer=False)
        except Exception as e:
            raise PassError(f"fp16 conversion failed on {model.provenance.get('source')}: {brief(e)}") from e
        return Model(proto, model.provenance)


FP16_MAX = 65504.0


def fp16_rounding(fp32: Model, fp16: Model) -> Model:
    """A float32 graph that stores what `fp16` stores in float16: `fp32`'s graph with every tensor that `fp16`
    holds as float16 (node outputs by name, and initializers) rounded to float16 and back, computing in float32
    in between, as a GPU's fp16 layers store their outputs. For checking `fp16` on a CPU: ONNX Runtime computes a
    float16 graph's ops in float32 without rounding between them (it casts whole regions), so it never sees a
    float16 overflow; this graph does (past 65504 -> inf). Initializers are clipped to +-65504 first, as the fp16
    conversion clips them. Main graph only: tensors inside If/Loop bodies are not rounded."""
    import onnx
    from onnx import helper, numpy_helper

    halves = _float16_names(fp16.proto)
    proto = onnx.ModelProto()
    proto.CopyFrom(fp32.proto)
    graph = proto.graph
    for init in graph.initializer:
        if init.name in halves and init.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(init)
            rounded = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for i, name in enumerate(node.output):
            if name in halves:
                stored = f"{name}__edgec_fp32"
                node.output[i] = stored
                nodes += [helper.make_node("Cast", [stored], [f"{name}__edgec_fp16"], to=onnx.TensorProto.FLOAT16,
                                           name=f"{name}__edgec_round16"),
                          helper.make_node("Cast", [f"{name}__edgec_fp16"], [name], to=onnx.TensorProto.FLOAT,
                                           name=f"{name}__edgec_back32")]
    del graph.node[:]
    graph.node.extend(nodes)
    return Model(proto, fp32.provenance)


def _float16_names(proto: Any) -> set[str]:
    """Names of the float16 tensors of a graph: initializers, and values shape inference types as float16."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    names = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            names.add(value.name)
    return names
