"""Safe loading of ONNX files: every bad input is a ConfigError with a message, never a traceback."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgec import ConfigError, load_model
from models import tiny_conv_onnx


def test_loads_a_valid_model(tiny_onnx: Path) -> None:
    model = load_model(tiny_onnx)
    assert [s.name for s in model.inputs] == ["x"]
    assert model.inputs[0].shape == (1, 3, 16, 16)
    assert model.outputs[0].shape == (1, 5)
    assert len(model.provenance["sha256"]) == 64


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_model_is_rejected(tiny_onnx: Path, keep: float) -> None:
    data = tiny_onnx.read_bytes()
    tiny_onnx.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ConfigError, match="corrupt|not a readable ONNX|no ONNX graph|not a valid ONNX"):
        load_model(tiny_onnx)


def test_non_model_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n" * 20)
    with pytest.raises(ConfigError):
        load_model(path)


def test_missing_and_empty_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        load_model(tmp_path / "empty.onnx")
    with pytest.raises(ConfigError, match="not a file"):
        load_model(tmp_path)


def test_pytorch_checkpoint_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConfigError, match="PyTorch checkpoint"):
        load_model(path)


def _with_external_weights(folder: Path, location: str) -> Path:
    """Save tiny_conv_onnx with its first conv weight stored as external data at `location`."""
    model = tiny_conv_onnx()
    tensor = model.graph.initializer[0]
    array = numpy_helper.to_array(tensor)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    array = numpy_helper.to_array(tiny_conv_onnx().graph.initializer[0])
    (tmp_path / "weights.bin").write_bytes(array.tobytes())
    model = load_model(_with_external_weights(tmp_path, "weights.bin"))
    np.testing.assert_array_equal(numpy_helper.to_array(model.proto.graph.initializer[0]), array)


@pytest.mark.parametrize("location", ["../secret.bin", "../../etc/passwd", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="outside the model's folder"):
        load_model(_with_external_weights(folder, location))


def test_external_data_symlink_escape_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    os.symlink(tmp_path / "secret.bin", folder / "weights.bin")
    with pytest.raises(ConfigError, match="outside the model's folder"):
        load_model(_with_external_weights(folder, "weights.bin"))


def test_missing_external_data_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        load_model(_with_external_weights(tmp_path, "absent.bin"))


def test_model_failing_the_checker(tmp_path: Path) -> None:
    model = tiny_conv_onnx()
    model.graph.node[1].input[0] = "no_such_tensor"
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ConfigError, match="not a valid ONNX model"):
        load_model(path)


def test_save_is_atomic_and_round_trips(tmp_path: Path, tiny_onnx: Path) -> None:
    model = load_model(tiny_onnx)
    out = tmp_path / "copy.onnx"
    model.save(out)
    assert load_model(out).sha256() == model.sha256()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.requires_openvino
def test_models_over_the_protobuf_limit_use_external_data(tmp_path: Path, monkeypatch) -> None:
    """The >2 GiB path, exercised by lowering the limit: weights go to model.onnx.data, every step still works."""
    import edgec
    import edgec.model
    from models import tiny_mlp_onnx

    source = tmp_path / "mlp.onnx"
    source.write_bytes(tiny_mlp_onnx(dim=128, hidden=512).SerializeToString())
    monkeypatch.setattr(edgec.model, "_PROTO_LIMIT", 1000)
    data = {"x": np.random.default_rng(0).normal(size=(16, 16, 128)).astype(np.float32)}
    build = edgec.compile(source, "intel-cpu", "int8", calibration=data, output_dir=tmp_path / "o",
                          profile_runs=5, progress=False)
    files = {f["path"] for f in build.manifest["files"]}
    assert {"model.onnx", "model.onnx.data"} <= files
    assert (tmp_path / "o" / "model.onnx").stat().st_size < 20_000  # weights are not inside
    reloaded = load_model(tmp_path / "o" / "model.onnx")
    assert len(reloaded.proto.graph.initializer) > 0 and len(reloaded.sha256()) == 64
    assert build.report["accuracy"]["cosine_min"] > 0.98
