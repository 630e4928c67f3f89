"""fp16 graph: float weights and activations in float16, float32 at the graph's inputs and outputs.

For runtimes that take the precision from the graph itself (TensorRT 11's strongly typed networks).
Uses onnxconverter-common's maintained converter; every original node keeps its metadata_props.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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
