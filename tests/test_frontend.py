"""Front end: input shapes, cleanup, and PyTorch provenance carried into ONNX."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgec import ConfigError
from edgec.frontend import parse_input_shapes, to_model
from edgec.model import node_sources
from edgec.passes.cleanup import CleanupPass, name_nodes
from models import tiny_conv_onnx, tiny_torch_model


def _save(tmp_path: Path, model) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_parse_input_shapes() -> None:
    assert parse_input_shapes(["x=1x3x224x224", "mask=1X16"]) == {"x": (1, 3, 224, 224), "mask": (1, 16)}
    for bad in ["x", "x=", "=1x2", "x=1x-3", "x=axb", "x=1x0"]:
        with pytest.raises(ConfigError, match="Bad --input-shape"):
            parse_input_shapes([bad])


def test_dynamic_batch_defaults_to_one_with_a_note(tmp_path: Path) -> None:
    model = to_model(_save(tmp_path, tiny_conv_onnx(batch="N")))
    assert model.inputs[0].shape == (1, 3, 16, 16)
    assert model.outputs[0].shape == (1, 5)
    assert any("batch" in n for n in model.provenance["notes"])


def test_input_shape_fixes_dynamic_dims(tmp_path: Path) -> None:
    model = to_model(_save(tmp_path, tiny_conv_onnx(batch="N")), input_shapes={"x": (4, 3, 16, 16)})
    assert model.inputs[0].shape == (4, 3, 16, 16)
    assert model.outputs[0].shape == (4, 5)


def test_input_shape_that_does_not_match_a_static_dim(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not match it at dim 1"):
        to_model(_save(tmp_path, tiny_conv_onnx()), input_shapes={"x": (1, 4, 16, 16)})


def test_input_shape_that_does_not_fit_the_graph(tmp_path: Path) -> None:
    # channels are dynamic in the input but the conv weights want 3
    model = tiny_conv_onnx(batch="N")
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"
    with pytest.raises(ConfigError, match="do not fit the model"):
        to_model(_save(tmp_path, model), input_shapes={"x": (1, 5, 16, 16)})


def test_input_shape_wrong_rank_and_unknown_name(tmp_path: Path) -> None:
    path = _save(tmp_path, tiny_conv_onnx())
    with pytest.raises(ConfigError, match="rank 4"):
        to_model(path, input_shapes={"x": (1, 3, 16)})
    with pytest.raises(ConfigError, match="model's inputs are: x"):
        to_model(path, input_shapes={"image": (1, 3, 16, 16)})


def test_other_dynamic_dims_need_an_input_shape(tmp_path: Path) -> None:
    model = tiny_conv_onnx(batch="N")
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(ConfigError, match="--input-shape x=1x3x1x16"):
        to_model(_save(tmp_path, model))


def test_unsupported_source_type() -> None:
    with pytest.raises(ConfigError, match="Can't compile a int"):
        to_model(3)


def test_name_nodes_makes_names_unique() -> None:
    model = tiny_conv_onnx()
    model.graph.node[0].name = ""
    model.graph.node[2].name = "relu1"  # duplicate of node 1
    name_nodes(model)
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names) and "" not in names
    assert names[1] == "relu1"


def test_cleanup_keeps_the_function(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    model = to_model(_save(tmp_path, tiny_conv_onnx()))
    cleaned = CleanupPass().run(model)
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    run = lambda m: ort.InferenceSession(m.proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(cleaned), run(model), rtol=1e-5, atol=1e-6)


@pytest.mark.requires_torch
def test_torch_export_keeps_module_paths_and_lines() -> None:
    import torch

    model = to_model(tiny_torch_model(), example_inputs=(torch.zeros(1, 3, 8, 8),))
    assert model.provenance["kind"] == "torch"
    sources = node_sources(model.proto)
    modules = {s.module for s in sources.values()}
    assert {"stem", "block", "head"} <= modules
    convs = [s for s in sources.values() if s.op == "Conv"]
    assert convs and all(s.where and s.where.split(":")[0].endswith("models.py") for s in convs)


@pytest.mark.requires_torch
def test_torch_export_needs_example_inputs() -> None:
    with pytest.raises(ConfigError, match="needs example inputs"):
        to_model(tiny_torch_model())


@pytest.mark.requires_torch
def test_torch_export_failure_is_a_config_error() -> None:
    import torch

    with pytest.raises(ConfigError, match="could not export"):
        to_model(tiny_torch_model(), example_inputs=(torch.zeros(1, 5, 8, 8),))  # wrong channel count
