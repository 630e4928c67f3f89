"""Structured pruning of PyTorch models (edgec.prune) and weight sparsity on ONNX (--prune)."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgec
from edgec import ConfigError
from edgec.model import Model
from edgec.passes.sparsity import WeightSparsityPass, parse_prune_spec
from models import tiny_concat_model, tiny_conv_onnx, tiny_resnet_and_mobilenet


def _convs(model):
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.requires_torch
@pytest.mark.parametrize("which", ["resnet-like", "mobilenet-like", "concat"])
def test_pruning_is_dependency_correct(which: str) -> None:
    import torch

    model = {"resnet-like": lambda: tiny_resnet_and_mobilenet()[0], "mobilenet-like": lambda: tiny_resnet_and_mobilenet()[1],
             "concat": tiny_concat_model}[which]()
    x = torch.randn(2, 3, 16, 16)
    result = edgec.prune(model, 0.5, (x[:1],), round_to=4, measure=False, progress=False)
    out = result.model(x)  # runs: residual adds, depthwise groups and concats stayed consistent
    assert out.shape == model(x).shape
    assert result.report["params"][1] < result.report["params"][0]
    assert result.report["macs"][1] < result.report["macs"][0]
    for name, conv in _convs(result.model).items():
        if conv.groups > 1:
            assert conv.groups == conv.in_channels == conv.out_channels  # depthwise stays depthwise
    assert all(c % 4 == 0 for c in result.report["channels"].values())  # rounding honoured
    assert sum(p.numel() for p in model.parameters()) == result.report["params"][0]  # input model untouched


@pytest.mark.requires_torch
def test_kept_layers_are_untouched() -> None:
    import torch

    model = tiny_concat_model()
    result = edgec.prune(model, 0.5, (torch.zeros(1, 3, 16, 16),), keep=["stem", "le*"], measure=False, progress=False)
    pruned = dict(result.model.named_modules())
    assert pruned["stem"].out_channels == 32 and pruned["left"].out_channels == 32
    assert torch.equal(pruned["stem"].weight, model.stem.weight)
    assert pruned["head"].out_features == 10  # the output layer is always kept
    assert result.report["kept"] == ["stem", "left", "head"]


@pytest.mark.requires_torch
def test_bad_pruning_requests() -> None:
    import torch

    x = (torch.zeros(1, 3, 16, 16),)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        edgec.prune(tiny_concat_model(), 1.5, x, measure=False)
    with pytest.raises(ConfigError, match="keep names no module"):
        edgec.prune(tiny_concat_model(), 0.3, x, keep=["nope"], measure=False)
    with pytest.raises(ConfigError, match="needs data"):
        edgec.prune(tiny_concat_model(), 0.3, x, importance="taylor", measure=False)


@pytest.mark.requires_torch
def test_recovery_training_improves_the_pruned_model() -> None:
    import torch

    torch.manual_seed(0)
    model = tiny_concat_model()
    x = torch.randn(256, 3, 16, 16)
    y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(0))  # labels to fit
    plain = edgec.prune(model, 0.5, (x[:1],), measure=False, progress=False, data=(x, y))
    recovered = edgec.prune(model, 0.5, (x[:1],), measure=False, progress=False, data=(x, y), epochs=8, lr=3e-3)
    assert recovered.report["accuracy_recovered"] > plain.report["accuracy_pruned"]
    calls = []
    edgec.prune(model, 0.5, (x[:1],), measure=False, progress=False, finetune=lambda m: calls.append(m))
    assert len(calls) == 1


def test_onnx_unstructured_and_2_4_sparsity() -> None:
    model = Model(tiny_conv_onnx())
    half = WeightSparsityPass("unstructured", 0.5).run(model)
    w = numpy_helper.to_array(next(t for t in half.proto.graph.initializer if t.name == "w2"))
    assert abs((w == 0).mean() - 0.5) < 0.02
    assert half.provenance["sparsity"]["kind"] == "unstructured"
    two4 = WeightSparsityPass("2:4", 0.5).run(model)
    w = numpy_helper.to_array(next(t for t in two4.proto.graph.initializer if t.name == "w2"))  # [8, 8, 3, 3]
    groups = np.moveaxis(w, 1, -1).reshape(-1, 4)
    assert ((groups != 0).sum(1) <= 2).all()
    onnx.checker.check_model(two4.proto)


def test_prune_spec_parsing() -> None:
    assert parse_prune_spec("2:4").kind == "2:4"
    assert parse_prune_spec("unstructured:0.3").ratio == 0.3
    with pytest.raises(ConfigError, match="needs the PyTorch model"):
        parse_prune_spec("channels:0.3")
    for bad in ("unstructured:2", "unstructured:x", "3:8"):
        with pytest.raises(ConfigError, match="Bad --prune"):
            parse_prune_spec(bad)


def test_cli_prune_2_4_for_jetson_sets_sparse_weights(tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    from edgec.cli import main

    code = main(["compile", str(tiny_onnx), "--target", "jetson", "--precision", "fp16", "--prune", "2:4",
                 "-o", str(tmp_path / "o"), "-q"])
    assert code == 0, capsys.readouterr().err
    build = json.loads((tmp_path / "o" / "build.json").read_text())
    assert "SPARSE_WEIGHTS" in build["builder_flags"]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["sparsity"]["kind"] == "2:4" and "weight-sparsity" in [p["name"] for p in manifest["passes"]]
    code = main(["compile", str(tiny_onnx), "--target", "jetson", "--prune", "channels:0.3", "-o", str(tmp_path / "p")])
    assert code == 2 and "edgec.prune" in capsys.readouterr().err


def _fixed_latency(monkeypatch, ms: dict[str, tuple[float, float]]) -> list[str]:
    """Replace edgec.prune's latency measurement with fixed (dense, pruned) p50s per target; returns the targets
    measured, in order. It checks it is handed the dense model and the smaller pruned one."""
    measured = []

    def measure(teacher, student, example, tgt, log):
        assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
        measured.append(tgt.name)
        dense, pruned = ms[tgt.name]
        return {"dense": dense, "pruned": pruned, "ratio": round(pruned / dense, 3), "runs": 200}

    monkeypatch.setattr(importlib.import_module("edgec.prune"), "_measure", measure)
    return measured


@pytest.mark.requires_torch
@pytest.mark.parametrize("pruned_ms", [1.0, 1.25])
def test_a_pruned_model_not_faster_on_its_target_is_refused(monkeypatch, pruned_ms: float) -> None:
    """Equal or slower p50 on the target: ConfigError naming both latencies, and nothing is returned."""
    pytest.importorskip("torch_pruning")
    import torch

    measured = _fixed_latency(monkeypatch, {"intel-cpu": (1.0, pruned_ms)})
    with pytest.raises(ConfigError, match=rf"not faster on intel-cpu \({pruned_ms:.3f} ms vs dense 1\.000 ms\)"):
        edgec.prune(tiny_concat_model(), 0.5, (torch.zeros(1, 3, 32, 32),), target="intel-cpu", progress=False)
    assert measured == ["intel-cpu"]


@pytest.mark.requires_torch
def test_a_faster_pruned_model_is_returned_and_slower_elsewhere_only_warns(monkeypatch, capsys) -> None:
    """Faster on the target: returned with its latencies; slower on a `measure_on` target: a warning, not a refusal."""
    pytest.importorskip("torch_pruning")
    import torch

    measured = _fixed_latency(monkeypatch, {"intel-cpu": (1.0, 0.6), "x86-tvm": (2.0, 2.5)})
    result = edgec.prune(tiny_concat_model(), 0.5, (torch.zeros(1, 3, 32, 32),), target="intel-cpu",
                         measure_on=["x86-tvm"], progress=False)
    assert measured == ["intel-cpu", "x86-tvm"]
    assert result.report["latency_ms"] == {"dense": 1.0, "pruned": 0.6, "ratio": 0.6, "runs": 200}
    assert set(result.report["latency_ms_by_target"]) == {"intel-cpu", "x86-tvm"}
    assert result.report["warnings"] == ["the pruned model is not faster on x86-tvm (2.500 ms vs dense 2.000 ms)"]
    assert "edgec: WARNING: the pruned model is not faster on x86-tvm" in capsys.readouterr().err


@pytest.mark.requires_torch
@pytest.mark.requires_openvino
@pytest.mark.requires_tvm
def test_report_has_weight_bytes_and_latency_per_backend(capsys) -> None:
    import torch

    model = tiny_concat_model()
    result = edgec.prune(model, 0.5, (torch.zeros(1, 3, 32, 32),), measure_on=["intel-cpu", "x86-tvm", "rpi4"],
                         progress=False)
    report = result.report
    dense_bytes, pruned_bytes = report["weights_bytes"]
    assert 4 * report["params"][0] <= dense_bytes < 4 * report["params"][0] + 4096  # fp32 weights + BN stats
    assert 4 * report["params"][1] <= pruned_bytes < 0.6 * dense_bytes
    by_target = report["latency_ms_by_target"]
    assert set(by_target) == {"intel-cpu", "x86-tvm", "rpi4"}
    for name in ("intel-cpu", "x86-tvm"):  # built and timed here, OpenVINO and TVM
        assert by_target[name]["dense"] > 0 and by_target[name]["pruned"] > 0
        assert by_target[name]["ratio"] == pytest.approx(by_target[name]["pruned"] / by_target[name]["dense"], abs=1e-3)
    assert by_target["rpi4"]["dense"] is None and "profile on the device" in by_target["rpi4"]["note"]
    slower = [n for n in ("intel-cpu", "x86-tvm") if by_target[n]["pruned"] >= by_target[n]["dense"]]
    # slower elsewhere is reported, not refused; profile.not_faster also asks the fastest run, so a p50 that is
    # not faster (a burst of load) warns only when the fastest run is not faster either
    assert all(any(f"on {n} " in w for n in slower) for w in report["warnings"]) and len(report["warnings"]) <= len(slower)
    assert "latency_ms" not in report  # no target to prune for, so nothing to refuse


def test_measure_on_an_unknown_target_fails_before_pruning() -> None:
    pytest.importorskip("torch_pruning")
    import torch

    with pytest.raises(ConfigError, match="jetsn"):
        edgec.prune(tiny_concat_model(), 0.5, (torch.zeros(1, 3, 32, 32),), measure_on=["jetsn"], progress=False)
