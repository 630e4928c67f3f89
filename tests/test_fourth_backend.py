"""A fourth backend written from the Backend protocol alone: ONNX Runtime on this CPU.

If the pipeline asked a backend for anything the protocol does not declare, this backend would fail here.
It builds ONNX Runtime's own optimised graph, checks it and profiles it with ONNX Runtime's node profiler.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgec
from edgec.backends import BACKENDS, Artifact, Backend, Capabilities, get_backend
from edgec.errors import ConfigError
from edgec.model import load_model
from edgec.passes.qdq import WEIGHTED_OPS, Placement
from edgec.profile import LatencyStats, LayerRow, Profile, with_shares


class OnnxRuntimeBackend:
    name = "onnxruntime"
    capabilities = Capabilities(precisions=("fp32", "int8", "mixed"))

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    def can_run_here(self, target) -> bool:
        return target.arch == platform.machine()

    def precision_refusal(self, target, precision: str) -> str | None:
        return None

    def model_refusal(self, model, target) -> str | None:
        return None

    def qdq_placement(self, target) -> Placement:
        return Placement("onnxruntime", WEIGHTED_OPS, residual_add="none", symmetric_activations=False)

    def wants_fp16_graph(self, target) -> bool:
        return False

    def build(self, model, target, precision: str, out_dir: Path) -> Artifact:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no NCHWc layouts: keeps node names
        options.optimized_model_filepath = str(out_dir / "model.ort.onnx")
        ort.InferenceSession(str(out_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
        return Artifact(self.name, precision, ["model.ort.onnx"])

    def _session(self, out_dir: Path, profiling: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.enable_profiling = profiling
        options.profile_file_prefix = str(out_dir / ".ort-profile")
        return ort.InferenceSession(str(out_dir / "model.ort.onnx"), options, providers=["CPUExecutionProvider"])

    def runner(self, out_dir: Path, manifest: dict[str, Any]):
        session = self._session(out_dir)
        return lambda feeds: session.run(None, feeds)

    def profile(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
        feeds = {s["name"]: np.zeros(s["shape"], s["dtype"]) for s in manifest["inputs"]}
        session = self._session(out_dir, profiling=True)
        samples = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            session.run(None, feeds)
            if i >= warmup:
                samples.append((time.perf_counter() - t0) * 1000)
        trace = Path(session.end_profiling())
        per_node: dict[str, list[Any]] = {}
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                row = per_node.setdefault(event["name"][:-len("_kernel_time")], [event["args"]["op_name"], 0.0])
                row[1] += event["dur"] / 1000 / (warmup + runs)
        trace.unlink()
        graph = {n.name for n in load_model(out_dir / "model.onnx").proto.graph.node}
        rows = [LayerRow(layer=n, op=op, exec="CPUExecutionProvider", precision=manifest["precision"],
                         time_ms=ms, share=0.0, onnx_nodes=(n,) if n in graph else ())
                for n, (op, ms) in per_node.items()]
        return Profile(backend=self.name, device="CPU (onnxruntime)", target=manifest["target"]["name"],
                       precision=manifest["precision"], batch=1, runs=runs, warmup=warmup,
                       latency_ms=LatencyStats.from_samples(samples), layers=with_shares(rows))

    def build_engine(self, out_dir: Path, manifest: dict[str, Any], device: str = "local") -> Path:
        raise ConfigError("ONNX Runtime builds are ready to run as they are.")


@pytest.fixture
def onnxruntime_target(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setitem(BACKENDS, "onnxruntime", f"{__name__}:OnnxRuntimeBackend")
    target = tmp_path / "ort-cpu.toml"
    target.write_text(f'name = "ort-cpu"\nbackend = "onnxruntime"\narch = "{platform.machine()}"\n'
                      'precisions = ["fp32", "int8", "mixed"]\n')
    return target


def test_the_protocol_is_all_a_backend_needs(onnxruntime_target: Path) -> None:
    backend = get_backend("onnxruntime")
    assert isinstance(backend, Backend)
    declared = {*Backend.__annotations__, *(m for m in vars(Backend) if not m.startswith("_"))}
    assert declared <= set(vars(OnnxRuntimeBackend))  # it implements the protocol and nothing more is asked


def test_compile_check_and_profile_with_a_fourth_backend(onnxruntime_target: Path, tiny_onnx: Path,
                                                         tmp_path: Path) -> None:
    data = {"x": np.random.default_rng(0).normal(size=(32, 3, 16, 16)).astype(np.float32)}
    for precision in ("fp32", "int8"):
        build = edgec.compile(tiny_onnx, str(onnxruntime_target), precision, calibration=data, range_search=0,
                              output_dir=tmp_path / precision, profile_runs=20, progress=False)
        assert "model.ort.onnx" in {f["path"] for f in build.manifest["files"]}
        assert build.report["accuracy"]["cosine_min"] > (0.9999 if precision == "fp32" else 0.98)
        profile = build.profile(runs=20)
        assert profile.backend == "onnxruntime" and profile.latency_ms.p50 > 0
        ops = {row.op for row in profile.layers}
        assert "Conv" in ops if precision == "fp32" else {"QuantizeLinear", "QGemm"} <= ops, ops  # int8 kernels
        # rows, not time shares: on a 0.1 ms model one preempted kernel can hold most of the time (seen in CI)
        mapped = [r for r in profile.layers if r.onnx_nodes]
        assert len(mapped) >= 0.9 * len(profile.layers), [(r.layer, r.onnx_nodes) for r in profile.layers]


def test_a_class_missing_part_of_the_protocol_is_refused(monkeypatch) -> None:
    monkeypatch.setitem(BACKENDS, "half", f"{__name__}:HalfBackend")
    with pytest.raises(TypeError, match="lacks .*qdq_placement"):
        get_backend("half")


class HalfBackend:
    name = "half"
    capabilities = Capabilities(precisions=("fp32",))

    def versions(self) -> dict[str, str]:
        return {}
