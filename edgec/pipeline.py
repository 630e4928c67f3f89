"""compile(): frontend -> passes -> build -> verify -> profile -> report, into an atomically swapped folder."""
from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import accuracy
from ._version import __version__
from .backends import get_backend
from .calibration import CalibrationSet, Samples, synthetic_samples
from .errors import ConfigError, EdgecError
from .fileio import make_staging_dir, replace_dir, write_json_atomic, write_text_atomic
from .frontend import to_model
from .model import Model, file_sha256, load_model, node_sources
from .passes import CleanupPass
from .profile import Profile, attach_sources
from .report import render_html
from .target import Target, load_target

MANIFEST_SCHEMA = "edgec.manifest/1"
REPORT_SCHEMA = "edgec.report/1"
VALIDATION_SAMPLES = 1000
# Agreement with the fp32 reference below which a float build is reported as wrong.
_COSINE_FLOOR = {"fp32": 0.999, "fp16": 0.99, "bf16": 0.98}


@dataclass
class Build:
    """A finished compile: the output folder and what was written into it."""

    output_dir: Path
    manifest: dict[str, Any]
    report: dict[str, Any]

    def profile(self, device: str = "local", runs: int = 100, warmup: int = 10) -> Profile:
        return profile(self.output_dir, device=device, runs=runs, warmup=warmup)

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        prof = self.report.get("profile") or {}
        return {"output_dir": str(self.output_dir), "target": m["target"]["name"], "backend": m["target"]["backend"],
                "precision": m["precision"], "inputs": m["inputs"], "outputs": m["outputs"],
                "files": [f["path"] for f in m["files"]], "accuracy": self.report["accuracy"],
                "latency_ms": prof.get("latency_ms"), "passes": [p["name"] for p in m["passes"]]}


class Steps:
    """Progress lines on stderr: `edgec: <step> ... 1.2s`."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        if self.enabled:
            print(f"edgec: {what} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        yield
        self.timings[what] = round(time.perf_counter() - t0, 3)
        if self.enabled:
            print(f"edgec: {what} done ({self.timings[what]:.1f}s)", file=sys.stderr, flush=True)


def compile(model: Any, target: str | Target = "intel-cpu", precision: str | None = None,
            calibration: Any = None, *, example_inputs: Sequence[Any] | None = None,
            input_shapes: Mapping[str, Sequence[int]] | None = None, output_dir: str | Path | None = None,
            profile_runs: int = 100, progress: bool = True) -> Build:
    """Compile `model` (nn.Module, ExportedProgram, ModelProto or .onnx path) for `target`.

    Writes `output_dir` atomically: on any failure or interrupt the previous folder (or nothing) remains.
    """
    tgt = load_target(target)
    precision = precision or tgt.default_precision
    _check_precision(tgt, precision)
    backend = get_backend(tgt.backend)
    versions = {**_base_versions(), **backend.versions()}  # fails fast (exit 3) when the SDK is missing
    if precision not in backend.precisions:
        raise ConfigError(f"Precision '{precision}' on {tgt.name} ({backend.name}) is not available in this edgec "
                          f"release; available: {', '.join(backend.precisions)}.")
    calib = calibration if isinstance(calibration, CalibrationSet) or calibration is None else CalibrationSet(calibration)

    steps = Steps(progress)
    with steps.step("loading the model"):
        model_in = to_model(model, example_inputs, input_shapes)
    out = Path(output_dir) if output_dir else Path("edgec-out") / f"{_stem(model_in)}-{tgt.name}-{precision}"
    _check_output_dir(out)
    if model_in.provenance.get("kind") == "torch":
        import torch
        versions["torch"] = torch.__version__
    staging = make_staging_dir(out)
    try:
        passes = [CleanupPass()]
        pass_log = []
        current = model_in
        for p in passes:
            t0 = time.perf_counter()
            with steps.step(f"pass {p.name}"):
                current = p.run(current)
            pass_log.append({"name": p.name, "config": p.config(), "seconds": round(time.perf_counter() - t0, 3)})
        current.save(staging / "model.onnx")
        with steps.step(f"building for {tgt.name} with {backend.name} ({precision})"):
            artifact = backend.build(current, tgt, precision, staging)
        manifest = {
            "schema": MANIFEST_SCHEMA, "edgec": __version__, "sdk": versions,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": {"machine": platform.machine(), "python": platform.python_version()},
            "target": tgt.to_json(), "precision": precision,
            "input": {k: v for k, v in model_in.provenance.items() if k != "notes"},
            "notes": model_in.provenance.get("notes", []),
            "passes": pass_log,
            "inputs": [s.to_json() for s in current.inputs], "outputs": [s.to_json() for s in current.outputs],
            "artifact": {"backend": artifact.backend, "files": artifact.files, "config": artifact.config,
                         "layer_map": artifact.layer_map},
        }
        report: dict[str, Any] = {"schema": REPORT_SCHEMA, "model": manifest["input"], "target": tgt.name,
                                  "precision": precision, "accuracy": None, "profile": None}
        if backend.can_run_here(tgt):
            with steps.step("checking accuracy against the fp32 ONNX Runtime reference"):
                report["accuracy"] = _verify(current, backend.runner(staging, manifest), calib, precision)
            with steps.step(f"profiling ({profile_runs} runs)"):
                prof = _profile_folder(staging, manifest, "local", profile_runs, warmup=10)
            write_json_atomic(staging / "profile.json", prof.to_json())
            report["profile"] = prof.to_json()
        else:
            report["accuracy"] = {"skipped": f"{backend.name} artifacts for {tgt.arch} do not run on this "
                                             f"{platform.machine()} machine; run edgec profile on the device"}
        report["size"] = {f: (staging / f).stat().st_size for f in ["model.onnx", *artifact.files]}
        report["timings_s"] = steps.timings
        write_json_atomic(staging / "report.json", report)
        write_text_atomic(staging / "report.html", render_html(report, manifest))
        manifest["files"] = [{"path": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                             for p in sorted(staging.iterdir()) if p.is_file()]
        write_json_atomic(staging / "manifest.json", manifest)  # last: its presence marks a whole build
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Build(out, manifest, report)


def profile(output_dir: str | Path, device: str = "local", runs: int = 100, warmup: int = 10,
            write: bool = True) -> Profile:
    """Profile a compiled output folder on `device`; writes `profile.json` into it."""
    out = Path(output_dir)
    manifest = read_manifest(out)
    prof = _profile_folder(out, manifest, device, runs, warmup)
    if write:
        write_json_atomic(out / "profile.json", prof.to_json())
    return prof


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"'{out}' is not an edgec output folder (no manifest.json). "
                          "Run edgec compile MODEL --target NAME -o OUT first.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); recompile into that folder.") from e
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path} has schema {manifest.get('schema')!r}, expected {MANIFEST_SCHEMA}.")
    return manifest


def _profile_folder(out: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
    if runs < 1 or warmup < 0:
        raise ConfigError(f"--runs must be at least 1 and warm-up at least 0 (got {runs}, {warmup}).")
    backend = get_backend(manifest["artifact"]["backend"])
    prof = backend.profile(out, manifest, device, runs, warmup)
    prof.layers = attach_sources(prof.layers, node_sources(load_model(out / "model.onnx").proto))
    return prof


def _verify(model: Model, runner: accuracy.Runner, calib: CalibrationSet | None, precision: str) -> dict[str, Any]:
    samples = _validation_samples(model, calib)
    reference = accuracy.collect(accuracy.onnx_runtime_runner(model.proto), samples)
    result = accuracy.compare(reference, accuracy.collect(runner, samples), samples.labels)
    result["data"] = samples.description
    floor = _COSINE_FLOOR.get(precision)
    if floor is not None:
        result["criterion"] = f"cosine_min >= {floor} vs fp32 reference"
        result["ok"] = result["cosine_min"] >= floor
        if not result["ok"]:
            print(f"edgec: WARNING: the {precision} build disagrees with the fp32 reference "
                  f"(cosine_min {result['cosine_min']} < {floor}); see report.json", file=sys.stderr)
    return result


def _validation_samples(model: Model, calib: CalibrationSet | None) -> Samples:
    if calib is None:
        return synthetic_samples(model.inputs)
    limited = CalibrationSet(calib.source, limit=calib.limit or VALIDATION_SAMPLES, seed=calib.seed)
    return (limited.load(model.inputs, "validation") or limited.load(model.inputs, "calibration")
            or synthetic_samples(model.inputs))


def _check_precision(tgt: Target, precision: str) -> None:
    if precision not in tgt.precisions:
        raise ConfigError(f"Target {tgt.name} cannot run {precision}: it supports {', '.join(tgt.precisions)}. "
                          f"({tgt.description})")


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Output path '{out}' is a file. Choose a folder with -o.")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ConfigError(f"Output folder '{out}' exists and is not an edgec output; refusing to replace it. "
                          "Choose another folder with -o or empty it.")


def _stem(model: Model) -> str:
    src = str(model.provenance.get("source", "model"))
    return (Path(src).stem if model.provenance.get("kind") == "onnx" else src.rsplit(".", 1)[-1]).lower() or "model"


def _base_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def sdk_versions_text(manifest: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in manifest.get("sdk", {}).items())
