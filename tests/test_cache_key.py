"""Every compile option is part of the build cache key: changing any one of them changes the key.

The key is read from the real compile() at its cache lookup, so an option that compile() uses but leaves out
of the key shows up here; a new compile() argument fails the coverage test until it has a case below.
"""
from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgec
from edgec import cache
from edgec.backends.openvino import OpenVINOBackend
from edgec.pipeline import NOT_IN_CACHE_KEY
from edgec.target import TARGETS_DIR
from models import tiny_conv_onnx

pytestmark = pytest.mark.requires_openvino


class _KeySeen(Exception):
    pass


def _key(monkeypatch, model, **options) -> str:
    seen: list[str] = []

    def lookup(key: str):
        seen.append(key)
        raise _KeySeen

    monkeypatch.setattr(cache, "lookup", lookup)
    with pytest.raises(_KeySeen):
        edgec.compile(model, progress=False, **options)
    return seen[0]


@pytest.fixture
def setup(tmp_path: Path):
    """A dynamic-batch model, an image folder, a recipe file and a target file, each one editable."""
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_conv_onnx(batch="N").SerializeToString())
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    recipe = tmp_path / "photos.toml"
    recipe.write_text('description = "test"\nscale = 255.0\nmean = [0.5]\nstd = [0.25]\n')
    target = tmp_path / "my-cpu.toml"
    shutil.copy(TARGETS_DIR / "intel-cpu.toml", target)
    base = dict(target=str(target), precision="int8", input_shapes={"x": [1, 3, 16, 16]},
                calibration=edgec.CalibrationSet(str(images), limit=4, seed=0, recipe=str(recipe)),
                max_accuracy_drop=None, calibration_method="percentile", weight_rounding="gptq", range_search=64,
                prune=None, profile_runs=100)
    return model, images, recipe, target, base


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


# For each compile() argument: how to change it (a new value, or an edit of the file it names).
CHANGES = {
    "model": lambda s, o: {"model": tiny_conv_onnx(batch="N", seed=1)},
    "target": lambda s, o: _edit(s[3], 'device = "CPU"', 'device = "CPU"\nnum_streams = 1'),
    "precision": lambda s, o: {"precision": "fp32"},
    "calibration": lambda s, o: Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(s[1] / "0.png"),
    "input_shapes": lambda s, o: {"input_shapes": {"x": [2, 3, 16, 16]}},
    "input_values": lambda s, o: {"input_values": {"x": 0.5}},
    "max_accuracy_drop": lambda s, o: {"max_accuracy_drop": 0.5},
    "calibration_method": lambda s, o: {"calibration_method": "minmax"},
    "weight_rounding": lambda s, o: {"weight_rounding": "nearest"},
    "range_search": lambda s, o: {"range_search": 8},
    "prune": lambda s, o: {"prune": "unstructured:0.5"},
    "profile_runs": lambda s, o: {"profile_runs": 50},
    "metric": lambda s, o: {"metric": "top5"},
    "calibration_samples": lambda s, o: {"calibration_samples": 3},
    "keep_float": lambda s, o: {"keep_float": ["conv2"]},
}
MORE_CHANGES = {
    "recipe file contents": lambda s, o: _edit(s[2], "mean = [0.5]", "mean = [0.4]"),
    "calibration subset (limit)": lambda s, o: {"calibration": edgec.CalibrationSet(
        str(s[1]), limit=3, seed=0, recipe=str(s[2]))},
    "calibration subset (seed)": lambda s, o: {"calibration": edgec.CalibrationSet(
        str(s[1]), limit=4, seed=1, recipe=str(s[2]))},
    "YOLO box labels": lambda s, o: (s[1] / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n") and None,
}


def test_every_compile_argument_has_a_case() -> None:
    arguments = set(inspect.signature(edgec.compile).parameters) - NOT_IN_CACHE_KEY
    # example_inputs: test_example_inputs_change_the_key; dla, gpu_fallback: test_dla_choices_change_the_key
    assert arguments == set(CHANGES) | {"example_inputs", "dla", "gpu_fallback"}


def test_dla_choices_change_the_key(setup, monkeypatch) -> None:
    """--dla N and --gpu-fallback (TensorRT boards with DLA, fp16) are part of the key: each changes it."""
    model = setup[0]
    base = dict(target="jetson-agx-orin", precision="fp16", input_shapes={"x": [1, 3, 16, 16]})
    keys = {_key(monkeypatch, model, **base), _key(monkeypatch, model, dla=0, **base),
            _key(monkeypatch, model, dla=1, **base), _key(monkeypatch, model, dla=1, gpu_fallback=True, **base)}
    assert len(keys) == 4


@pytest.mark.parametrize("change", [*CHANGES, *MORE_CHANGES])
def test_changing_an_option_changes_the_key(change: str, setup, monkeypatch) -> None:
    model, *_, base = setup
    before = _key(monkeypatch, model, **base)
    assert _key(monkeypatch, model, **base) == before  # the key is stable for the same inputs
    override = {**CHANGES, **MORE_CHANGES}[change](setup, base) or {}
    options = {**base, **{k: v for k, v in override.items() if k != "model"}}
    assert _key(monkeypatch, override.get("model", model), **options) != before


@pytest.mark.parametrize("part", ["sdk", "code"])
def test_sdk_versions_and_edgec_code_change_the_key(part: str, setup, monkeypatch) -> None:
    model, *_, base = setup
    before = _key(monkeypatch, model, **base)
    if part == "sdk":
        monkeypatch.setattr(OpenVINOBackend, "versions", lambda self: {"openvino": "2099.0.0"})
    else:
        monkeypatch.setattr(cache, "code_fingerprint", lambda: "edited-pass")
    assert _key(monkeypatch, model, **base) != before


@pytest.mark.requires_torch
def test_example_inputs_change_the_key(monkeypatch) -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    small = _key(monkeypatch, net, target="intel-cpu", example_inputs=(torch.zeros(1, 3, 8, 8),))
    large = _key(monkeypatch, net, target="intel-cpu", example_inputs=(torch.zeros(1, 3, 12, 12),))
    assert small != large
