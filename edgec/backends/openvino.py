"""OpenVINO backend: ONNX -> IR (model.xml/.bin) for Intel/AMD x86 CPUs; profiles with PERF_COUNT."""
from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, BuildError, ConfigError, brief
from ..fileio import signals_deferred
from ..model import Model
from ..passes.qdq import OPENVINO_RECURRENT, WEIGHTED_OPS, Placement
from ..device.tvm_runner import seeded_feeds, time_runs
from ..profile import LatencyStats, LayerRow, Profile, batch_size, with_shares
from ..target import Target
from .base import Artifact, Capabilities, Runner

# OpenVINO's CPU plugin runs "fp32" models in bf16 on CPUs that have it: ask for the precision explicitly.
# int8/mixed: Q/DQ layers run int8; everything else stays true f32 (not bf16).
_INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "mixed": "f32", "int8-weights": "f32"}
_INSTALL_HINT = "OpenVINO is not installed: pip install 'edgec[openvino]'"


# OpenVINO's low-precision transformations fuse FakeQuantize into u8 x i8 kernels (brgconv_*_I8). With both Add
# inputs quantized (NNCF's scheme) the CPU plugin fuses the residual add into the producing convolution as an
# int8 sum post-op; otherwise each block output keeps an f32 add + FakeQuantize subgraph. Depthwise convolutions
# read their input quantized per channel (NNCF's CPU setup, q8_a_ch): the plugin still runs them in int8, and on
# PP-LCNet top-1 agreement with fp32 rose from 92% to 98% (benchmarks/results/lcnet-gap-2026-12-04-amd-epyc.md).
PLACEMENT = Placement("openvino", WEIGHTED_OPS, residual_add="both", symmetric_activations=False,
                      per_channel_depthwise=True, recurrent_float=OPENVINO_RECURRENT)


class OpenVINOBackend:
    name = "openvino"
    capabilities = Capabilities(precisions=("fp32", "bf16", "int8", "mixed", "int8-weights"))

    def precision_refusal(self, target: Target, precision: str) -> str | None:
        return None

    def model_refusal(self, model: Model, target: Target) -> None:
        return None  # unsupported ops surface in the build, with the SDK's own message

    def qdq_placement(self, target: Target) -> Placement:
        return PLACEMENT

    def wants_fp16_graph(self, target: Target) -> bool:
        return False

    def build_engine(self, out_dir: Path, manifest: dict[str, Any], device: str = "local") -> Path:
        raise ConfigError(f"'{out_dir}' is an OpenVINO build: it is ready to run as it is; edgec build is for "
                          "TensorRT bundles.")

    def _ov(self):
        try:
            with signals_deferred():  # Ctrl-C inside pybind11's module init would surface as an ImportError
                import openvino
        except ImportError as e:
            raise BackendUnavailable(f"{_INSTALL_HINT} (import openvino: {brief(e)})") from e
        return openvino

    def versions(self) -> dict[str, str]:
        return {"openvino": self._ov().get_version().split("-")[0]}

    def can_run_here(self, target: Target) -> bool:
        import platform

        return target.arch == platform.machine()

    def build(self, model: Model, target: Target, precision: str, out_dir: Path) -> Artifact:
        ov = self._ov()
        device = target.options.get("device", "CPU")
        if precision == "bf16":
            caps = ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in caps:
                raise ConfigError(f"This {device} has no bf16 support (capabilities: {', '.join(caps)}). "
                                  "Use --precision fp32.")
        try:
            # The shapes edgec runs (Model.inputs): the graph's own, or those kept beside a graph whose dims stay
            # symbolic (frontend.set_input_shapes).
            shapes = [(s.name, ov.PartialShape([d if isinstance(d, int) else -1 for d in s.shape])) for s in model.inputs]
            ov_model = ov.convert_model(str(out_dir / "model.onnx"), input=shapes)
            ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
        except Exception as e:
            raise BuildError(f"OpenVINO could not convert the model: {brief(e)}") from e
        config = {"device": device, "compile_config": {"INFERENCE_PRECISION_HINT": _INFERENCE_PRECISION[precision]}}
        return Artifact(self.name, precision, ["model.xml", "model.bin"], config)

    def _compile(self, out_dir: Path, manifest: dict[str, Any], extra: dict[str, Any] | None = None):
        ov = self._ov()
        cfg = manifest["artifact"]["config"]
        device = cfg.get("device", "CPU")
        try:
            return ov.Core().compile_model(str(out_dir / "model.xml"), device,
                                           {**cfg.get("compile_config", {}), **(extra or {})})
        except Exception as e:
            raise BuildError(f"OpenVINO could not load {out_dir / 'model.xml'} on {device}: {brief(e)}") from e

    def runner(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        compiled = self._compile(out_dir, manifest)
        request = compiled.create_infer_request()

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            result = request.infer(feeds)
            return [np.array(result[out]) for out in compiled.outputs]

        return run

    def profile(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
        if device != "local":
            raise ConfigError(f"OpenVINO artifacts are profiled on the machine that runs them: use --device local "
                              f"(got '{device}'). Copy the output folder to that machine and run edgec profile there.")
        feeds = seeded_feeds(manifest["inputs"])
        rss_before = _rss_mb()
        # Latency without per-layer counters (they add overhead), then a second compile with them.
        compiled = self._compile(out_dir, manifest, {"PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        samples = time_runs(lambda: _infer_in_place(request, feeds), runs, warmup)
        model_mb = _rss_mb() - rss_before  # the compiled model, its request and buffers, after the timed runs
        layers = self._layers(out_dir, manifest, feeds, max(5, min(runs, 30)), warmup)
        cfg = manifest["artifact"]["config"]
        return Profile(
            backend=self.name, device=f"{cfg.get('device', 'CPU')} ({self._cpu_name(cfg.get('device', 'CPU'))})",
            target=manifest["target"]["name"], precision=manifest["precision"], batch=batch_size(manifest),
            runs=runs, warmup=warmup, latency_ms=LatencyStats.from_samples(samples), layers=layers,
            memory={"weights_bytes": (out_dir / "model.bin").stat().st_size, "model_rss_mb": round(model_mb, 1),
                    "process_peak_rss_mb": round(_peak_rss_mb(), 1)},
            extra={"runtime": {"openvino": self.versions()["openvino"],
                               "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
                               "threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))}},
        )

    def _cpu_name(self, device: str) -> str:
        return str(self._ov().Core().get_property(device, "FULL_DEVICE_NAME"))

    def _layers(self, out_dir: Path, manifest: dict[str, Any], feeds: dict[str, np.ndarray],
                runs: int, warmup: int) -> list[LayerRow]:
        compiled = self._compile(out_dir, manifest, {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        for _ in range(warmup):
            _infer_in_place(request, feeds)
        totals: dict[str, float] = {}
        info: dict[str, Any] = {}
        for _ in range(runs):
            _infer_in_place(request, feeds)
            for p in request.get_profiling_info():
                if p.status.name != "EXECUTED":
                    continue
                totals[p.node_name] = totals.get(p.node_name, 0.0) + p.real_time.total_seconds() * 1000.0
                info[p.node_name] = p
        originals = _original_layers(compiled)
        rows = []
        for name, total in totals.items():
            p = info[name]
            rows.append(LayerRow(layer=name, op=p.node_type, exec=p.exec_type, precision=_precision_of(p.exec_type),
                                 time_ms=round(total / runs, 5), share=0.0, onnx_nodes=tuple(originals.get(name, ()))))
        return with_shares(rows)


def _infer_in_place(request: Any, feeds: dict[str, np.ndarray]) -> None:
    """One timed inference without copying inputs in or outputs out, as benchmark_app times it: the
    copies are numpy's cost, not the runtime's (~0.05 ms for a 224x224 RGB input)."""
    request.infer(feeds, share_inputs=True, share_outputs=True)


def _original_layers(compiled: Any) -> dict[str, list[str]]:
    """Runtime (fused) layer -> names of the ops it came from, which are the ONNX node or output names.

    Layers the plugin adds itself (layout Reorders) have no original names; they are charged to the
    layers that consume their output, since they exist only to feed them.
    """
    out: dict[str, list[str]] = {}
    for op in reversed(compiled.get_runtime_model().get_ordered_ops()):
        rt = op.get_rt_info()
        names = [n for n in (rt["originalLayersNames"].astype(str) if "originalLayersNames" in rt else "").split(",") if n]
        if not names:
            consumers = [t.get_node().get_friendly_name() for o in op.outputs() for t in o.get_target_inputs()]
            names = list(dict.fromkeys(n for c in consumers for n in out.get(c, ())))
        out[op.get_friendly_name()] = names
    return out


def _precision_of(exec_type: str) -> str:
    suffix = exec_type.rsplit("_", 1)[-1].lower()
    return {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8", "i32": "int32"}.get(suffix, suffix)


def _peak_rss_mb() -> float:
    """The whole process's high-water mark (everything it did before, calibration included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb() -> float:
    """Resident memory now (Linux /proc; elsewhere the peak, the best this process can say)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()
    return pages * resource.getpagesize() / 2**20
