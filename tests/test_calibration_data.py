"""Calibration sources: image folders with recipes, .npz/.npy files and folders, iterables; clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgec import CalibrationSet, ConfigError
from edgec.calibration import load_recipe
from edgec.model import TensorSpec

GREY = [TensorSpec("x", (1, 1, 28, 28), "float32")]
RGB = [TensorSpec("x", (1, 3, 16, 16), "float32")]


def _images(folder: Path, n: int, classes: tuple[str, ...] = (), size=(40, 30), mode="RGB") -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(sub / f"img{i}.png")


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    _images(tmp_path, 6, classes=("cat", "dog"))
    samples = CalibrationSet(tmp_path).load(RGB)
    assert len(samples) == 6 and samples.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x = samples.feeds[0]["x"]
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert "recipe 'unit'" in samples.description and "2 classes" in samples.description
    assert CalibrationSet(tmp_path).load(RGB, "validation") is None


def test_image_folder_recipes(tmp_path: Path) -> None:
    _images(tmp_path, 3, size=(300, 260))
    spec = [TensorSpec("x", (1, 3, 224, 224), "float32")]
    x = CalibrationSet(tmp_path, recipe="imagenet").load(spec).feeds[0]["x"]
    assert x.shape == (1, 3, 224, 224) and x.min() < 0  # mean/std normalised
    grey = CalibrationSet(tmp_path, recipe="fashion-mnist").load(GREY).feeds[0]["x"]
    assert grey.shape == (1, 1, 28, 28)
    with pytest.raises(ConfigError, match="wants"):
        CalibrationSet(tmp_path, recipe="imagenet").load(GREY)
    with pytest.raises(ConfigError, match="not found. Choose from"):
        CalibrationSet(tmp_path, recipe="nope").load(RGB)


def test_image_folder_subset_is_seeded_and_lazy(tmp_path: Path) -> None:
    _images(tmp_path, 20)
    a = CalibrationSet(tmp_path, limit=5, seed=3).load(RGB)
    b = CalibrationSet(tmp_path, limit=5, seed=3).load(RGB)
    assert len(a) == 5 and a.feeds.files == b.feeds.files
    assert type(a.feeds).__name__ == "_LazyFeeds"


def test_broken_image_is_named(tmp_path: Path) -> None:
    _images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ConfigError, match="broken.png"):  # sorted first: decoded when the set is loaded
        CalibrationSet(tmp_path).load(RGB)
    (tmp_path / "broken.png").rename(tmp_path / "zz-broken.png")
    samples = CalibrationSet(tmp_path).load(RGB)
    with pytest.raises(ConfigError, match="zz-broken.png"):
        [f for f in samples.feeds]


def test_custom_recipe_file(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.toml"
    recipe.write_text('color = "L"\nscale = 1.0\nmean = [0.5]\nstd = [2.0]\n')
    r = load_recipe(recipe)
    assert r.color == "L" and r.std == (2.0,)
    recipe.write_text("color = = 1")
    with pytest.raises(ConfigError, match="not valid"):
        load_recipe(recipe)


def test_npz_npy_and_folders_of_them(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "a.npy", x)
    assert len(CalibrationSet(tmp_path / "a.npy").load(GREY)) == 6
    folder = tmp_path / "parts"
    folder.mkdir()
    np.savez(folder / "1.npz", x=x[:3], y=np.arange(3))
    np.savez(folder / "2.npz", x=x[3:], y=np.arange(3))
    s = CalibrationSet(folder).load(GREY)
    assert len(s) == 6 and s.labels.tolist() == [0, 1, 2, 0, 1, 2]
    one = CalibrationSet({"x": x[0, 0]}).load([TensorSpec("x", (1, 28, 28), "float32")])  # no batch dim
    assert len(one) == 1


def test_iterables_and_errors(tmp_path: Path) -> None:
    items = [np.zeros((1, 28, 28), np.float32) for _ in range(4)]
    assert len(CalibrationSet(items).load(GREY)) == 4
    with pytest.raises(ConfigError, match="empty"):
        CalibrationSet([]).load(GREY)
    with pytest.raises(ConfigError, match="does not exist"):
        CalibrationSet(tmp_path / "missing").load(GREY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .npy/.npz"):
        CalibrationSet(tmp_path / "empty").load(GREY)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="Could not read"):
        CalibrationSet(tmp_path / "bad.npz").load(GREY)
    with pytest.raises(ConfigError, match="at least 1"):
        CalibrationSet(items, limit=0).load(GREY)


@pytest.mark.requires_openvino
def test_cli_int8_with_an_image_folder(tmp_path: Path, capsys) -> None:
    from edgec.cli import main
    from models import tiny_conv_onnx

    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_conv_onnx().SerializeToString())
    _images(tmp_path / "imgs", 12, classes=("a", "b", "c"))
    code = main(["compile", str(model), "--target", "intel-cpu", "--precision", "int8", "--calib",
                 str(tmp_path / "imgs"), "-o", str(tmp_path / "out"), "--runs", "10", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    import json
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["comparison"]) == {"fp32", "int8"}
    assert "labelled" in report["accuracy"] and "12 images" in report["accuracy"]["data"]
    assert all(report["comparison"][k]["latency_ms_p50"] > 0 for k in ("fp32", "int8"))


@pytest.mark.requires_openvino
def test_cli_int8_rounding_and_range_search_flags_reach_the_manifest(tmp_path: Path, capsys) -> None:
    import json

    from edgec.cli import main
    from models import tiny_conv_onnx

    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_conv_onnx().SerializeToString())
    np.savez(tmp_path / "s.npz", x=np.random.default_rng(0).random((16, 3, 16, 16), dtype=np.float32))
    configs = {}
    for name, flags in (("default", []), ("plain", ["--weight-rounding", "nearest", "--range-search", "0"])):
        code = main(["compile", str(model), "--target", "intel-cpu", "--precision", "int8", "--calib",
                     str(tmp_path / "s.npz"), "-o", str(tmp_path / name), "--runs", "10", "-q", *flags])
        assert code == 0, capsys.readouterr().err
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        configs[name] = next(p["config"] for p in manifest["passes"] if p["name"] == "calibrate")
    assert configs["default"]["weight_rounding"] == "gptq" and configs["default"]["gptq_weights"] == 3
    assert configs["default"]["range_search"]["samples"].startswith("16 of")
    assert configs["plain"]["weight_rounding"] == "nearest" and configs["plain"]["gptq_weights"] == 0
    assert configs["plain"]["range_search"] is None
    code = main(["compile", str(model), "--target", "intel-cpu", "--precision", "int8", "--calib",
                 str(tmp_path / "s.npz"), "-o", str(tmp_path / "bad"), "--range-search", "-1", "-q"])
    assert code == 2 and "range_search must be" in capsys.readouterr().err
