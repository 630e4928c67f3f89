"""compile(): frontend -> passes -> build -> verify -> profile -> report, into an atomically swapped folder."""
from __future__ import annotations

import dataclasses
import io
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import accuracy, cache, metrics
from .backends import Backend, get_backend
from .backends.tensorrt import profile_with_trtexec
from .calibration import CalibrationSet, Samples, fixed_inputs, synthetic_samples
from .errors import AccuracyCheckFailed, ConfigError
from .device.trt_runner import CHECK_FILE as DEVICE_CHECK_FILE
from .fileio import replace_dir, staged_dir, write_bytes_atomic, write_json_atomic
from .frontend import to_model
from .isolation import import_onnxruntime, isolated
from .model import Model, load_model, node_sources
from .passes import CleanupPass
from .passes.fp16 import Fp16Pass, fp16_rounding
from .passes.fp32 import Fp32Pass, has_float16
from .passes.opset import QDQ_MIN_OPSET, OpsetUpgradePass, default_opset
from .passes.mixed import MixedResult, budget, layer_times, search_mixed
from .passes.ptq import Calibrated, calibrate, calibration_samples
from .passes.qdq import WeightOnlyInt8Pass, already_quantized
from .profile import Profile, attach_sources, not_faster
from .progress import Steps
from .report import MANIFEST_SCHEMA, new_manifest, new_report, write_build_files
from .request import CompileOptions, CompileRequest
from .target import Target, load_target, with_dla

VALIDATION_SAMPLES = 1000
SEARCH_SAMPLES = 500  # of the validation samples, those the mixed search ranks layer sensitivity on
GUARD_SAMPLES, GUARD_RANK_SAMPLES = 256, 16  # ... those the int8 guard checks outputs on, and ranks layers on
# The guard aims this many points above the check's floor: it scores in ONNX Runtime, the check runs the backend
# (the layout detector's guard met 90 in ONNX Runtime and OpenVINO's build scored 89.94 on one head)
GUARD_MARGIN = 2.0
FP32_CHECK_SAMPLES = 64  # validation samples the fp32 comparison build is checked on


@dataclass
class Build:
    """A finished compile: the output folder and what was written into it; `cache_key` (None: not cacheable)
    and whether the build came from the build cache."""

    output_dir: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    cache_key: str | None = None
    cached: bool = False

    def profile(self, device: str = "local", runs: int = 100, warmup: int = 10) -> Profile:
        return profile(self.output_dir, device=device, runs=runs, warmup=warmup)

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        prof = self.report.get("profile") or {}
        return {"output_dir": str(self.output_dir), "target": m["target"]["name"], "backend": m["target"]["backend"],
                "precision": m["precision"], "inputs": m["inputs"], "outputs": m["outputs"],
                "files": [f["path"] for f in m["files"]], "accuracy": self.report["accuracy"],
                "latency_ms": prof.get("latency_ms"), "passes": [p["name"] for p in m["passes"]]}


# compile() arguments that say where a build goes and how it is reported, not what it is: the only ones
# outside the CompileRequest and so the build cache key (tests/test_cache_key.py checks every other one
# changes the key).
NOT_IN_CACHE_KEY = frozenset({"output_dir", "progress", "use_cache", "accept_inaccurate"})


@isolated
def compile(model: Any, target: str | Target = "intel-cpu", precision: str | None = None,
            calibration: Any = None, *, example_inputs: Sequence[Any] | None = None,
            input_shapes: Mapping[str, Sequence[int]] | None = None,
            input_values: Mapping[str, Any] | None = None, output_dir: str | Path | None = None,
            max_accuracy_drop: float | None = None, calibration_method: str = "percentile",
            weight_rounding: str = "gptq", range_search: int = 64, prune: str | None = None,
            profile_runs: int = 100, metric: Any = None, calibration_samples: int | None = None,
            keep_float: Sequence[str] = (), dla: int | None = None, gpu_fallback: bool = False,
            progress: bool = True, use_cache: bool = True, accept_inaccurate: bool = False) -> Build:
    """Compile `model` (nn.Module, ExportedProgram, ModelProto or .onnx path) for `target`.

    int8 and mixed need `calibration` data; `weight_rounding` is "gptq" (error-compensating, passes/gptq.py)
    or "nearest"; `range_search` calibration samples judge candidate activation ranges by the model's output
    (passes/range_search.py; 0 turns it off). `input_values` bind constant inputs ({"sr": 16000}): folded into
    the graph (the built model has no such input) and recorded in the manifest. `metric` judges the outputs
    (edgec/metrics.py): None (chosen per output from its shape and op), a name ("map50"), {output name: name},
    or a callable `metric(outputs, truth) -> points`, higher is better (truth: the labels, else the fp32
    outputs); it is the primary metric. `calibration_samples`: calibrate on a seeded subset of that many samples
    of the calibration split, the validation samples unchanged (`edgec tune` varies it). `keep_float` (int8
    only): ONNX node names of the quantization plan (manifest.json's quantize-int8 pass lists them; report.json's
    mixed_precision.ranking ranks them) that stay in float, besides any the int8 guard keeps. `max_accuracy_drop` is
    the budget for `mixed`, in points of the primary
    metric (against labels when given, else agreement with fp32). Writes `output_dir` atomically: on
    any failure or interrupt the previous folder (or nothing) remains. A build that fails its accuracy check
    (accuracy.check: every output, in its metric for int8) raises AccuracyCheckFailed and is moved to `<output_dir>.rejected/` for inspection, unless
    `accept_inaccurate`; a build that can't be checked here says so in report.json ("accuracy": {"skipped"}).
    `dla` (TensorRT boards with DLA, fp16): the DLA core to build for; `gpu_fallback` lets layers DLA can't run
    fall back to the GPU.
    """
    tgt = load_target(target)
    calib = calibration if isinstance(calibration, CalibrationSet) or calibration is None else CalibrationSet(calibration)
    precision = precision or tgt.default_precision
    tgt = with_dla(tgt, dla, gpu_fallback, precision)
    backend = get_backend(tgt.backend)
    sdk = _sdk_versions(backend, tgt, precision)
    options = CompileOptions(tgt, precision, calib, calibration_method, weight_rounding, range_search,
                             max_accuracy_drop, prune, profile_runs, metric, calibration_samples, keep_float)
    steps = Steps(progress)
    with steps.step("loading the model"):
        model_in = to_model(model, example_inputs, input_shapes, input_values)
    refusal = backend.model_refusal(model_in, tgt)  # e.g. ops the backend cannot read: before any work
    if refusal:
        raise ConfigError(refusal)
    request = plan(model_in, options, backend, sdk)
    out = Path(output_dir) if output_dir else Path("edgec-out") / f"{_stem(model_in)}-{tgt.name}-{options.precision}"
    _check_output_dir(out)
    return execute(request, backend, out, steps, use_cache, accept_inaccurate)


def _sdk_versions(backend: Backend, tgt: Target, precision: str) -> dict[str, str]:
    """The SDK versions for the cache key; fails fast (exit 3) when the SDK is missing, and refuses (exit 2) a
    precision the backend does not build, with its reason, before any other check or work."""
    versions = {**_base_versions(), **backend.versions()}
    if precision not in backend.capabilities.precisions:
        reason = backend.precision_refusal(tgt, precision)
        raise ConfigError(reason or f"Precision '{precision}' on {tgt.name} ({backend.name}) is not available "
                          f"in this edgec release; available: {', '.join(backend.capabilities.precisions)}.")
    return versions


def plan(model: Model, options: CompileOptions, backend: Backend, sdk: Mapping[str, str]) -> CompileRequest:
    """The request for `model`, checked against what the backend can build."""
    if model.provenance.get("dynamic_shapes") and not backend.capabilities.dynamic_shapes:
        raise ConfigError(f"Dynamic input dims (MIN:OPT:MAX) are for TensorRT targets; {options.target.name} "
                          f"({backend.name}) builds static shapes: give plain sizes in --input-shape.")
    if options.precision in ("int8", "mixed", "int8-weights"):
        refusal = already_quantized(model.proto)
        if refusal:
            raise ConfigError(refusal)
    metrics.check_spec(options.metric, [o.name for o in model.proto.graph.output])
    versions = dict(sdk)
    if model.provenance.get("kind") == "torch":
        import torch  # the exporter's version shapes the graph; torch is loaded already when kind is torch

        versions["torch"] = torch.__version__
    return CompileRequest(model, options, versions)


def execute(request: CompileRequest, backend: Backend, out: Path, steps: Steps, use_cache: bool = True,
            accept_inaccurate: bool = False) -> Build:
    """Build `request` into `out` atomically (or restore it from the build cache). A build failing its accuracy
    check goes to `<out>.rejected` and raises AccuracyCheckFailed (kept in `out`, uncached, when
    `accept_inaccurate`)."""
    key = request.cache_key if use_cache else None
    entry = cache.lookup(key) if key else None
    if entry is not None:
        with steps.step(f"reusing the cached build {entry}"):
            cache.restore(entry, out)
        return Build(out, json.loads((out / "manifest.json").read_text()),
                     json.loads((out / "report.json").read_text()), key, cached=True)
    job = _Job(request, backend, steps)
    with staged_dir(out) as staging:
        manifest, report = job.run(staging)
        failed = report["accuracy"].get("ok") is False
        if failed and not accept_inaccurate:
            rejected = out.with_name(out.name + ".rejected")
            replace_dir(staging, rejected)
            remedy = ("the backend does not compute what ONNX Runtime computes: try another target, and please "
                      "report the model" if manifest["precision"] == "fp32" else
                      "try another --precision (fp32, or mixed with --max-accuracy-drop)")
            raise AccuracyCheckFailed(f"{_check_failure(report['accuracy'], manifest['precision'])}. '{out}' was left "
                                      f"as it was; the failing build is in '{rejected}' for inspection. To go on, "
                                      f"{remedy}, or pass --accept-inaccurate to keep it anyway.")
    if key and not failed:
        cache.store(key, out)
    return Build(out, manifest, report, key)


def _check_failure(accuracy: Mapping[str, Any], precision: str) -> str:
    return (f"The {precision} build fails its accuracy check: {accuracy.get('measured')}, wanted "
            f"{accuracy.get('criterion')} (max abs error {accuracy.get('max_abs_error', float('nan')):.3g}; "
            f"{accuracy.get('data')})")


def _check_keep_float(names: Sequence[str], calibrated: Calibrated) -> None:
    """ConfigError (before any build) when keep_float names nodes the quantization plan does not hold."""
    planned = calibrated.plan.nodes
    unknown = sorted(set(names) - set(planned), key=list(names).index)
    if unknown:
        shown = ", ".join(planned[:8]) + (f", ... ({len(planned)} in all)" if len(planned) > 8 else "")
        raise ConfigError(f"--keep-float names nodes that are not in this model's int8 quantization plan: "
                          f"{', '.join(unknown)}. Quantized nodes here: {shown}. Take the names from an int8 "
                          "build's manifest.json (the quantize-int8 pass: config.nodes) or, ranked by how much "
                          "float helps, from a mixed build's report.json (mixed_precision.ranking).")


class _Job:
    """One compile's state: runs passes, builds variants into folders, checks and profiles them."""

    def __init__(self, request: CompileRequest, backend: Backend, steps: Steps):
        o = request.options
        self.request, self.backend, self.steps = request, backend, steps
        self.tgt, self.calib, self.runs, self.versions, self.model_in = (o.target, o.calibration, o.profile_runs,
                                                                         dict(request.sdk), request.model)
        self.pass_log: list[dict[str, Any]] = []
        self.mixed: dict[str, Any] | None = None
        self.int8_guard: dict[str, Any] | None = None
        self.keep_float: dict[str, Any] | None = None  # the user's keep_float: requested and kept layers
        self._reference: tuple[Samples, list[Any]] | None = None
        self.judge: accuracy.Judge | None = None  # the metrics, chosen with the reference
        self._validation: Samples | None = None  # loaded before calibration when quantizing

    def run(self, staging: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """Passes, build, check and profile into `staging`; writes report.json, report.html, manifest.json (last)."""
        o = self.request.options
        fp32 = self.run_pass(CleanupPass(), self.model_in)
        if o.sparsity is not None:
            fp32 = self.run_pass(o.sparsity, fp32)
        if o.precision in ("fp32", "int8", "mixed", "int8-weights") and has_float16(fp32.proto):
            fp32 = self.run_pass(Fp32Pass(), fp32)  # computes in fp32 as asked (and Q/DQ wants fp32 around it)
        if o.precision in ("int8", "mixed", "int8-weights") and default_opset(fp32.proto) < QDQ_MIN_OPSET:
            fp32 = self.run_pass(OpsetUpgradePass(), fp32)
        comparison: dict[str, Any] = {}
        final = fp32
        if o.precision in ("int8", "mixed"):
            final = self.quantize(fp32, staging, comparison)
        elif o.precision == "fp16" and self.backend.wants_fp16_graph(self.tgt):
            final = self.run_pass(Fp16Pass(), fp32)
        elif o.precision == "int8-weights":
            if self.backend.can_run_here(self.tgt):
                comparison["fp32"], _ = self.variant(fp32, fp32, "fp32", staging / ".fp32")
            final = self.run_pass(WeightOnlyInt8Pass(), fp32)
        manifest, report = self.build_and_check(final, fp32, o.precision, staging, o.profile_runs)
        if comparison:
            comparison[o.precision] = _summarize(report, staging, manifest["artifact"]["files"])
            report["comparison"] = comparison
            report["warnings"] = _speed_warnings(comparison, o.precision)
        if self.int8_guard is not None:
            report["int8_guard"] = self.int8_guard
        if self.keep_float is not None:
            report["keep_float"] = self.keep_float
        if self.mixed is not None:
            report["mixed_precision"] = self.mixed
            report["accuracy"].update(criterion=f"the mixed-precision budget: {self.mixed['metric']} at most "
                                                f"{self.mixed['budget_points']} points below fp32",
                                      measured=f"{self.mixed['mixed']:.2f} vs fp32 {self.mixed['fp32']:.2f}",
                                      ok=bool(self.mixed["met"]))
        write_build_files(staging, manifest, report, self.steps.timings)
        return manifest, report

    def reference(self, fp32: Model) -> tuple[Samples, list[Any]]:
        """Validation samples and the fp32 ONNX Runtime outputs on them (every output), and the metrics that
        judge them (`self.judge`): computed once per compile, shared by the final build and every variant."""
        if self._reference is None:
            samples = self._validation or validation_samples(fp32, self.calib)
            self._reference = (samples, accuracy.collect(accuracy.onnx_runtime_runner(fp32.proto), samples))
        if self.judge is None:
            self.judge = accuracy.Judge.of(fp32.proto, self._reference[1], self.request.options.metric)
        return self._reference

    def run_pass(self, p: Any, model: Model) -> Model:
        t0 = time.perf_counter()
        with self.steps.step(f"pass {p.name}"):
            result = p.run(model)
        self.pass_log.append({"name": p.name, "config": p.config(), "seconds": round(time.perf_counter() - t0, 3)})
        return result

    def build_and_check(self, model: Model, fp32: Model, precision: str, folder: Path, runs: int,
                        check_samples: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Build `model` into `folder`; when it runs here, check it against fp32 (on the first `check_samples`
        validation samples, or all) and profile it."""
        folder.mkdir(exist_ok=True)
        model.save(folder / "model.onnx")
        with self.steps.step(f"building for {self.tgt.name} with {self.backend.name} ({precision})"):
            artifact = self.backend.build(model, self.tgt, precision, folder)
        manifest = new_manifest(self.model_in, model, self.tgt, precision, self.versions, self.pass_log, artifact)
        report = new_report(manifest)
        judged_as = precision
        if precision in ("fp32", "fp16", "bf16") and already_quantized(self.model_in.proto):
            judged_as = "int8"  # the model computes in int8 itself: backends round its int8 ops their own way
        if not self.backend.can_run_here(self.tgt):
            if self.backend.capabilities.off_device_check == "onnx-runtime":
                # ONNX Runtime computes a float16 graph in float32 between ops: a copy rounding what it stores in
                # float16 shows what the device computes, fp16 overflows included
                rounded = precision == "fp16" and has_float16(model.proto)
                checked = fp16_rounding(fp32, model) if rounded else model
                with self.steps.step(f"checking {precision} model.onnx with ONNX Runtime (the device runs this function)"):
                    report["accuracy"] = _verify(self.reference(fp32), accuracy.onnx_runtime_runner(checked.proto),
                                                 judged_as, self.judge)
                report["accuracy"]["runtime"] = (f"onnxruntime on this {platform.machine()} machine, executing the "
                                                 f"bundle's model.onnx" + (" with every float16 tensor rounded to "
                                                 "float16 as the device stores it" if rounded else "") +
                                                 f"; {self.backend.name} itself runs on the device")
                if self.backend.capabilities.builds_on_device:
                    manifest["artifact"]["files"].append(
                        write_device_check(folder, fp32, self.reference(fp32)[0], report["accuracy"], precision))
            else:
                report["accuracy"] = {"skipped": f"{self.backend.name} artifacts for {self.tgt.arch} do not run on this "
                                                 f"{platform.machine()} machine: `edgec profile OUT --device ...` "
                                                 "checks the outputs on the board (exit 4 on a mismatch)"}
            return manifest, report
        with self.steps.step(f"checking {precision} accuracy against the fp32 ONNX Runtime reference"):
            report["accuracy"] = _verify(_head(self.reference(fp32), check_samples), self.backend.runner(folder, manifest),
                                         judged_as, self.judge)
        if judged_as != precision:
            report["accuracy"]["criterion"] += " (judged as int8: the model holds int8 ops itself)"
        with self.steps.step(f"profiling {precision} ({runs} runs)"):
            prof = _profile_folder(folder, manifest, "local", runs, warmup=10)
        write_json_atomic(folder / "profile.json", prof.to_json())
        report["profile"] = prof.to_json()
        return manifest, report

    def quantize(self, fp32: Model, staging: Path, comparison: dict[str, Any]) -> Model:
        """Calibrate and insert Q/DQ; for mixed, search which layers stay float. Fills `comparison`."""
        subset = self.request.options.calibration_samples
        samples = calibration_samples(fp32, dataclasses.replace(self.calib, limit=subset) if subset else self.calib)
        validation = self._validation = validation_samples(fp32, self.calib, calibration=None if subset else samples)
        single = len(fp32.proto.graph.output) == 1  # the statistics pass records the first output only
        calibrated = self._calibrate(fp32, samples, keep_outputs=validation is samples and single)
        _check_keep_float(self.request.options.keep_float, calibrated)
        if calibrated.outputs is not None:  # the statistics pass ran the fp32 model on the validation samples
            self._reference = (validation, [accuracy.stacked(calibrated.outputs)])
        fp32_layers = None
        if self.backend.can_run_here(self.tgt):
            comparison["fp32"], fp32_layers = self.variant(fp32, fp32, "fp32", staging / ".fp32")
        int8 = calibrated.quantized()
        self.pass_log.append({"name": "quantize-int8", "config": {"int8_nodes": len(calibrated.plan.nodes),
                                                                  "nodes": list(calibrated.plan.nodes)},
                              "seconds": 0.0})
        if self.request.options.precision == "int8":
            return calibrated.quantized(self._int8_float_layers(fp32, calibrated))
        gains = None
        if fp32_layers is not None:
            comparison["int8"], int8_layers = self.variant(int8, fp32, "int8", staging / ".int8")
            t32 = layer_times(fp32_layers, calibrated.plan.nodes)
            t8 = layer_times(int8_layers, calibrated.plan.nodes)
            gains = {n: t32[n] - t8.get(n, 0.0) for n in t32}
        return calibrated.quantized(self._search_mixed(fp32, calibrated, gains))

    def _calibrate(self, fp32: Model, samples: Samples, keep_outputs: bool) -> Calibrated:
        o = self.request.options
        placement = self.backend.qdq_placement(self.tgt)
        if placement is None:
            raise ConfigError(f"{self.backend.name} builds no int8 for {self.tgt.name}; use --precision fp32.")
        t0 = time.perf_counter()
        with self.steps.step(f"calibrating int8 ranges ({o.calibration_method}) for {placement.name}"):
            calibrated = calibrate(fp32, samples, placement, o.calibration_method, weight_rounding=o.weight_rounding,
                                   range_search=o.range_search, steps=self.steps, keep_outputs=keep_outputs)
        self.pass_log.append({"name": "calibrate", "config": {"method": o.calibration_method, "placement": placement.name,
                                                              "weight_rounding": o.weight_rounding,
                                                              "gptq_weights": len(calibrated.weight_codes),
                                                              "bias_correction": "layers not rounded by GPTQ",
                                                              "range_search": calibrated.range_search,
                                                              "data": calibrated.samples},
                              "seconds": round(time.perf_counter() - t0, 3)})
        return calibrated

    def _evaluators(self, fp32: Model, rank_samples: int, samples_at_most: int = 0) -> tuple[Any, Any, accuracy.Evaluation]:
        """(evaluate, rank, fp32's evaluation) on the validation samples (the first `samples_at_most`, if given);
        `rank` scores the first `rank_samples` of them (None when that is all of them): per-layer sensitivity
        needs fewer samples than the goal."""
        samples, reference = _head(self.reference(fp32), samples_at_most)
        assert self.judge is not None
        evaluate = accuracy.make_evaluator(samples, reference, self.judge)
        rank = None
        if len(samples) > rank_samples:
            head, head_ref = _head((samples, reference), rank_samples)
            rank = accuracy.make_evaluator(head, head_ref, self.judge)
        return evaluate, rank, accuracy.reference_evaluation(reference, self.judge, samples.labels)

    def _int8_float_layers(self, fp32: Model, calibrated: Calibrated) -> list[str]:
        """The layers an int8 build keeps in float: the user's keep_float, then those the int8 guard adds."""
        requested = list(self.request.options.keep_float)
        guarded = self._guard_int8(fp32, calibrated)
        keep = list(dict.fromkeys(requested + guarded))
        if requested:
            self.keep_float = {"requested": requested, "kept": keep,
                               "added_by_int8_guard": [n for n in guarded if n not in requested]}
            self.pass_log.append({"name": "keep-float", "config": {"requested": requested, "kept": keep},
                                  "seconds": 0.0})
        return keep

    def _guard_int8(self, fp32: Model, calibrated: Calibrated) -> list[str]:
        """Layers an int8 build keeps in float: none, unless int8 (run in ONNX Runtime on the validation samples)
        breaks an output, below the check's floor + GUARD_MARGIN in its metric (a detector's heads, a log-mel
        frontend): then the fewest layers, ranked by measured sensitivity, that bring every output back above it."""
        evaluate, rank, fp32_eval = self._evaluators(fp32, GUARD_RANK_SAMPLES, GUARD_SAMPLES)
        with self.steps.step("checking int8 in ONNX Runtime, output by output"):
            int8 = evaluate(calibrated.quantized())
        aim = accuracy.INT8_FLOOR + GUARD_MARGIN
        if all(a >= aim for a in int8.agreements):
            return []
        assert self.judge is not None
        broken = [f"{n} ({m.name} {a:.1f})" for n, m, a in zip(self.judge.names, self.judge.per_output, int8.agreements)
                  if a < aim]
        t0 = time.perf_counter()
        with self.steps.step(f"int8 breaks {', '.join(broken)}: finding the layers to keep in float"):
            result = search_mixed(calibrated, evaluate, fp32_eval,
                                  lambda e: all(a >= aim for a in e.agreements),
                                  metric=self.judge.primary.name, progress=self.steps.counter("layers scored"),
                                  rank_evaluate=rank, int8=int8)
        self._attach_sources(fp32, result)
        self.int8_guard = {"floor_points": accuracy.INT8_FLOOR, "aim_points": aim, "broken_outputs": broken,
                           "float_layers": result.decisions, "met": result.met, "evaluations": result.evaluations,
                           "agreements_after": {n: round(a, 3) for n, a in zip(self.judge.names, result.final.agreements)}}
        self.pass_log.append({"name": "int8-guard", "config": {"floor_points": accuracy.INT8_FLOOR,
                                                               "float_layers": len(result.keep_float)},
                              "seconds": round(time.perf_counter() - t0, 3)})
        print(f"edgec: note: int8 broke {', '.join(broken)}; {len(result.keep_float)} layer(s) stay in float "
              "(report.json: int8_guard)", file=sys.stderr)
        return result.keep_float

    def _attach_sources(self, fp32: Model, result: MixedResult) -> None:
        sources = node_sources(fp32.proto)
        for decision in result.decisions:
            src = sources.get(decision["node"])
            decision["module"], decision["where"] = (src.module, src.where) if src else (None, None)

    def _search_mixed(self, fp32: Model, calibrated: Calibrated, gains: dict[str, float] | None) -> list[str]:
        """The layers to keep in float for the budget, in the primary metric. The budget is checked on the samples
        the report's accuracy comparison scores; the per-layer sensitivity (output error, a continuous measure)
        on the first SEARCH_SAMPLES of them."""
        max_drop = float(self.request.options.max_accuracy_drop or 0.0)
        evaluate, rank, fp32_eval = self._evaluators(fp32, SEARCH_SAMPLES)
        samples, reference = self.reference(fp32)
        assert self.judge is not None
        primary = self.judge.primary
        metric = (f"{primary.name} against the labels" if primary.against_labels(samples.labels)
                  else f"{primary.name} agreement with fp32")
        t0 = time.perf_counter()
        with self.steps.step(f"mixed precision: searching layers to keep in float (budget {max_drop} points of {metric})"):
            result = search_mixed(calibrated, evaluate, fp32_eval, budget(fp32_eval, max_drop), gains, metric,
                                  progress=self.steps.counter("layers scored"), rank_evaluate=rank)
        self.pass_log.append({"name": "mixed-precision", "config": {"max_accuracy_drop": max_drop, "metric": metric,
                                                                    "search_data": samples.description},
                              "seconds": round(time.perf_counter() - t0, 3)})
        self._attach_sources(fp32, result)
        error = metrics.standard_error_of_drop(primary, reference, result.final.outputs, samples.labels)
        self.mixed = {"metric": metric, "search_data": samples.description, "budget_points": max_drop,
                      "met": result.met, "fp32": result.fp32_score, "int8": result.int8_score,
                      "mixed": result.final_score, "standard_error_points": round(error, 3),
                      "float_layers": result.decisions,
                      "int8_layers": len(calibrated.plan.nodes) - len(result.keep_float),
                      "evaluations": result.evaluations,
                      "ranking": [{k: r[k] for k in ("node", "error_recovered", "int8_gain_ms")}
                                  for r in result.ranking]}
        _mixed_notes(result, max_drop, len(samples), error)
        return result.keep_float

    def variant(self, model: Model, fp32: Model, precision: str, folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Build, check and profile a comparison build in `folder` (half the runs, at least 20), then remove it:
        (summary, layer rows). The fp32 build is checked on the first FP32_CHECK_SAMPLES validation samples only:
        its check proves the build runs the graph as ONNX Runtime does, which takes few samples."""
        manifest, report = self.build_and_check(model, fp32, precision, folder, max(20, self.runs // 2),
                                                FP32_CHECK_SAMPLES if precision == "fp32" else 0)
        summary = _summarize(report, folder, manifest["artifact"]["files"])
        if report["accuracy"].get("ok") is False:
            print(f"edgec: WARNING: the {precision} comparison build fails its accuracy check "
                  f"({_check_failure(report['accuracy'], precision)}); its numbers in report.json are not "
                  "comparable", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        return summary, report["profile"]["layers"]


def _speed_warnings(comparison: Mapping[str, Any], precision: str) -> list[str]:
    """int8 must be faster than fp32 (profile.not_faster); when it is not, say so loudly instead of shipping it
    quietly."""
    fp32, mine = comparison.get("fp32") or {}, comparison.get(precision) or {}
    if not fp32.get("latency_ms_p50") or not mine.get("latency_ms_p50"):
        return []
    if not not_faster(*({"p50": e["latency_ms_p50"], "min": e.get("latency_ms_min")} for e in (mine, fp32))):
        return []
    warning = (f"the {precision} build is not faster than fp32 here (p50 {mine['latency_ms_p50']:.3f} ms vs "
               f"{fp32['latency_ms_p50']:.3f} ms): the model is too small for int8 to pay off on this CPU, or the "
               "timing is noisy; consider shipping fp32")
    print(f"edgec: WARNING: {warning}", file=sys.stderr)
    return [warning]


def _mixed_notes(result: MixedResult, max_drop: float, samples: int, standard_error: float) -> None:
    """Say when the budget was missed, or when it is within the noise of the search samples."""
    if not result.met:
        print(f"edgec: WARNING: mixed precision could not meet the {max_drop}-point budget on the search data "
              f"({result.final_score:.2f} vs fp32 {result.fp32_score:.2f}); see report.json", file=sys.stderr)
    elif max_drop < 2 * standard_error:
        print(f"edgec: note: the {max_drop}-point budget is within the noise of {samples} search samples "
              f"(the drop is measured to +-{standard_error:.2f} points, one standard error); more labelled "
              f"validation samples (val_x/val_y: edgec scores up to {VALIDATION_SAMPLES}, or --calib-samples N) "
              f"make it firmer", file=sys.stderr)


def _summarize(report: Mapping[str, Any], folder: Path, files: Sequence[str]) -> dict[str, Any]:
    acc = report.get("accuracy") or {}
    prof = report.get("profile") or {}
    summary = {k: acc[k] for k in ("metric", "top1_agreement", "cosine_mean", "max_abs_error", "labelled") if k in acc}
    if "outputs" in acc:
        summary["agreement"] = {r["name"]: r["agreement"] for r in acc["outputs"]}
    return {"accuracy": summary,
            "latency_ms_p50": prof.get("latency_ms", {}).get("p50"),
            "latency_ms_min": prof.get("latency_ms", {}).get("min"),
            "artifact_bytes": sum((folder / f).stat().st_size for f in files)}


@isolated
def profile(output_dir: str | Path, device: str = "local", runs: int = 100, warmup: int = 10,
            write: bool = True, trtexec: bool = False, trtexec_json: Sequence[str | Path] = ()) -> Profile:
    """Profile a compiled output folder on `device`; writes `profile.json` into it. Raises AccuracyCheckFailed
    (after writing it) when the device's outputs disagree with the reference on the same inputs.
    `trtexec` (TensorRT builds): profile with NVIDIA's trtexec instead; `trtexec_json`: read trtexec's
    --exportProfile [--exportLayerInfo [--exportTimes]] JSON files a user already has."""
    out = Path(output_dir)
    manifest = read_manifest(out)
    if trtexec or trtexec_json:
        prof = _trtexec_profile(out, manifest, device, runs, [Path(p) for p in trtexec_json])
    else:
        prof = _profile_folder(out, manifest, device, runs, warmup)
    if write:
        write_json_atomic(out / "profile.json", prof.to_json())
    check = prof.extra.get("accuracy") or {}
    if check.get("ok") is False:
        raise AccuracyCheckFailed(f"The build's outputs on {prof.device} disagree with ONNX Runtime's on the same "
                                  f"inputs (max abs error {check.get('max_abs_error', float('nan')):.3g}; "
                                  f"{check.get('reference')}): do not deploy it. Rebuild for this board's target "
                                  "(edgec targets) or report the model.", profile=prof)
    return prof


@isolated
def build_engine(output_dir: str | Path, device: str = "local") -> Path:
    """Turn a TensorRT bundle into model.engine on `device`: here ("local") or ssh://user@host (edgec build OUT)."""
    out = Path(output_dir)
    manifest = read_manifest(out)
    return get_backend(manifest["artifact"]["backend"]).build_engine(out, manifest, device)


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


DEVICE_CHECK_SAMPLES, DEVICE_CHECK_BYTES = 16, 32 << 20


def write_device_check(folder: Path, fp32: Model, samples: Samples, host: Mapping[str, Any], precision: str) -> str:
    """device_check.npz: validation inputs, fp32 ONNX Runtime outputs on them (one per sample, stacked) and the
    criteria the device runner checks its engine's outputs against: per output the host check's metric and
    worst cosine, and a floor allowing the device twice the host's deviation (+0.002: other kernels). At most
    DEVICE_CHECK_SAMPLES samples and DEVICE_CHECK_BYTES. Returns the file name."""
    run = accuracy.onnx_runtime_runner(fp32.proto)
    names = [o.name for o in fp32.proto.graph.output]
    feeds, outputs, size = [], [], 0
    for feed in samples.feeds[:DEVICE_CHECK_SAMPLES]:
        result = run(feed)
        size += sum(a.nbytes for a in feed.values()) + sum(np.asarray(o).nbytes for o in result)
        if feeds and size > DEVICE_CHECK_BYTES:
            break
        feeds.append(feed)
        outputs.append(result)
    rows = {r["name"]: r for r in host["outputs"]}
    criteria = {"samples": len(feeds), "precision": precision, "outputs": [
        {"name": n, "metric": rows[n]["metric"], "host_cosine_min": rows[n]["cosine_min"],
         "device_cosine_floor": round(max(0.0, 1 - 2 * (1 - rows[n]["cosine_min"]) - 0.002), 6)} for n in names]}
    arrays = {"criteria": np.array(json.dumps(criteria))}
    arrays.update({f"input.{k}": np.stack([f[k] for f in feeds]) for k in feeds[0]})
    arrays.update({f"reference.{n}": np.stack([np.asarray(o[i]) for o in outputs]) for i, n in enumerate(names)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(folder / DEVICE_CHECK_FILE, buffer.getvalue())
    return DEVICE_CHECK_FILE


def _trtexec_profile(out: Path, manifest: dict[str, Any], device: str, runs: int, files: list[Path]) -> Profile:
    if manifest["artifact"]["backend"] != "tensorrt":
        raise ConfigError(f"--trtexec profiles TensorRT engines; '{out}' is a {manifest['artifact']['backend']} build.")
    missing = [str(p) for p in files if not p.is_file()]
    if missing or len(files) > 3:
        raise ConfigError(f"--trtexec-json takes 1 to 3 existing files (trtexec's --exportProfile, --exportLayerInfo, "
                          f"--exportTimes output, in that order); not found: {', '.join(missing) or '-'}.")
    prof = profile_with_trtexec(out, manifest, device, runs, files)
    prof.layers = attach_sources(prof.layers, node_sources(load_model(out / "model.onnx").proto))
    return prof


def _head(reference: tuple[Samples, list[Any]], n: int) -> tuple[Samples, list[Any]]:
    """The first `n` samples of a (samples, [outputs]) reference; all of it when n is 0 or not smaller."""
    samples, outputs = reference
    if not n or n >= len(samples):
        return reference
    return samples.head(n), [o[:len(o) // len(samples) * n] for o in outputs]


def _verify(reference: tuple[Samples, list[Any]], runner: accuracy.Runner, precision: str,
            judge: accuracy.Judge | None) -> dict[str, Any]:
    samples, outputs = reference
    assert judge is not None  # chosen with the reference
    result = accuracy.compare(outputs, accuracy.collect(runner, samples), samples.labels, judge)
    result["data"] = samples.description
    return accuracy.check(result, precision)


def validation_samples(model: Model, calib: CalibrationSet | None, limit: int = 0,
                       calibration: Samples | None = None) -> Samples:
    """The validation split (at most `limit` or VALIDATION_SAMPLES), else the calibration samples: then the
    very `calibration` object when it was loaded already and is not over the limit."""
    fixed = fixed_inputs(model)
    if calib is None:
        return synthetic_samples(model.inputs, fixed=fixed)
    most = limit or calib.limit or VALIDATION_SAMPLES
    limited = dataclasses.replace(calib, limit=most)
    validation = limited.load(model.inputs, "validation", fixed)
    if validation is not None:
        return validation
    if calibration is not None and len(calibration) <= most:
        return calibration
    return limited.load(model.inputs, "calibration", fixed) or synthetic_samples(model.inputs, fixed=fixed)


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

    return {"onnx": onnx.__version__, "onnxruntime": import_onnxruntime().__version__}


