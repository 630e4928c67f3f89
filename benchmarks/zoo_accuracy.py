"""Task accuracy of int8 builds, side by side (issue #16): edgec int8 and mixed vs NNCF and ONNX Runtime's
quantize_static, on the zoo's models that have a task metric, in one process.

    python -m benchmarks.zoo_accuracy [--models a,b] [--quick] [--big] [--out benchmarks/results/NAME.md]

Per model, every tool gets the same 64 calibration samples (the zoo's ``calib`` split) and is scored on the same
held-out samples (the ``val`` split: other photos / files / random streams):

* fp32: the original ONNX in ONNX Runtime (CPU): the reference every metric is taken against (or the labels).
* edgec int8 / mixed: ``edgec.compile(path, "intel-cpu", ...)`` (OpenVINO IR). edgec's own accuracy check and
  mixed-precision search get a third, disjoint *search* split (``calib`` photos, another random stream), never
  the held-out samples. mixed's budget is ``--budget`` points (1.0) of the task metric when edgec takes a metric
  callable (``metric=``), else of edgec's default metric (said in the table).
* NNCF: ``nncf.quantize`` (defaults; ``model_type=TRANSFORMER`` for transformers; ``subset_size`` = the 64
  samples) of ``ov.convert_model`` of the original ONNX at the compile shapes.
* ORT: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, its default MinMax calibrator, no
  pre-processing) of the original ONNX, run in ONNX Runtime.

Metric: points, higher is better; vs labels where the samples are labelled (ddddocr-det: mAP@0.5 on drawn
characters' boxes; vit-digits: accuracy), else agreement with fp32's output in the task's terms (top-1, CTC string,
mask IoU, speech decision, detector score heads, cosine). Its drop vs fp32 comes with a paired bootstrap standard
error over the held-out samples. Latency: p50 of OpenVINO CPU (1 stream, LATENCY hint, f32 inference precision:
edgec's own settings) for edgec's IR, NNCF's IR and fp32 OpenVINO; ONNX Runtime (CPU, default threads) for ORT's
model; all timed in interleaved rounds in this process. Quantization wall time: the tool's call (edgec's includes its
build, accuracy check and a short profile, as a user runs it).
"""
from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks import zoo_detection as zd
from benchmarks import zoo_models

Feed = dict[str, np.ndarray]
CALIBRATION = 64
SEARCH = 64           # edgec's check / mixed-search split (disjoint from the held-out samples)
HELD_OUT = 100
TOOLS = ("edgec int8", "edgec mixed", "NNCF", "ORT")
HELD_OUT_DETECTOR = 200
BOOTSTRAP = 400
OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
SMALL = ("ddddocr-det", "ppocr-cls-v2", "pplcnet-orientation", "magika-v3.3", "ppocr-rec-v4", "ddddocr-ocr-beta",
         "silero-vad-v6-seq", "bert-tiny", "vit-digits")
BIG = ("picodet-layout-cdla", "ppocr-det-v4")  # minutes per tool: --big


# ------------------------------------------------------------------------------------------- task metrics
@dataclass(frozen=True)
class Task:
    """How a model is scored. ``prepare`` maps one sample's outputs (list, one array per output) to what the
    score compares (a class id, a string, a mask, detections); ``score(prepared, truth)`` maps lists of them
    over samples to points (0-100, higher is better). ``truth`` is the labels (``labelled``) or fp32's prepared
    outputs."""
    name: str
    prepare: Callable[[list[np.ndarray]], Any]
    score: Callable[[list[Any], list[Any]], float]
    labelled: bool = False
    pseudo: Callable[[Any], Any] | None = None  # labelled tasks: fp32's prepared output as a label (no labels)


def _mean_points(same: Callable[[Any, Any], float]) -> Callable[[list[Any], list[Any]], float]:
    return lambda cand, truth: 100.0 * float(np.mean([same(c, t) for c, t in zip(cand, truth)]))


def _ctc(x: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC (blank 0) of one sample's sequence output: probabilities [.., T, C] or ids [.., T]."""
    x = np.asarray(x)
    ids = x.reshape(-1) if np.issubdtype(x.dtype, np.integer) else x.reshape(-1, x.shape[-1]).argmax(1)
    keep = np.concatenate([[True], ids[1:] != ids[:-1]]) & (ids != 0)
    return tuple(int(i) for i in ids[keep])


def _set_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


TOP1 = Task("top-1 agreement with fp32 %", lambda o: int(np.asarray(o[0]).reshape(-1).argmax()),
            _mean_points(lambda c, t: float(c == t)))
TASKS: dict[str, Task] = {
    "ppocr-cls-v2": TOP1, "pplcnet-orientation": TOP1, "magika-v3.3": TOP1,
    "vit-digits": Task("accuracy on labels %", lambda o: int(np.asarray(o[0]).reshape(-1).argmax()),
                       _mean_points(lambda c, t: float(c == t)), labelled=True, pseudo=lambda c: c),
    "ddddocr-det": Task("mAP@0.5 on labels", lambda o: zd.decode_ddddocr(o[0]), zd.map50, labelled=True,
                        pseudo=lambda d: np.column_stack([d[d[:, 4] >= 0.25][:, 5], d[d[:, 4] >= 0.25][:, :4]])),
    "picodet-layout-cdla": Task("score-head IoU with fp32 % (class scores > 0.3)",
                                lambda o: np.concatenate([np.asarray(x).reshape(-1) > 0.3 for x in o[:4]]),
                                _mean_points(_set_iou)),
    "ppocr-rec-v4": Task("CTC string = fp32's %", lambda o: _ctc(o[0]), _mean_points(lambda c, t: float(c == t))),
    "ddddocr-ocr-beta": Task("CTC string = fp32's %", lambda o: _ctc(o[0]), _mean_points(lambda c, t: float(c == t))),
    "ppocr-det-v4": Task("text-mask IoU with fp32 % (p > 0.3)", lambda o: np.asarray(o[0]).reshape(-1) > 0.3,
                         _mean_points(_set_iou)),
    "silero-vad-v6-seq": Task("speech decision (p > 0.5) = fp32's %", lambda o: np.asarray(o[0]).reshape(-1) > 0.5,
                              _mean_points(lambda c, t: float((c == t).mean()))),
    "bert-tiny": Task("cosine with fp32 x100 (last_hidden_state)",
                      lambda o: np.asarray(o[0], np.float64).reshape(-1), _mean_points(_cosine)),
}


def score_with_error(task: Task, ref: list[Any], cand: list[Any], truth: list[Any], seed: int = 0
                     ) -> tuple[float, float, float]:
    """(fp32 score, candidate score, standard error of the drop) on the same samples; the error is a paired
    bootstrap over samples (BOOTSTRAP resamples), so a metric that is no mean of per-sample terms (mAP) works."""
    base, got = task.score(ref, truth), task.score(cand, truth)
    rng = np.random.default_rng(seed)
    n = len(truth)
    drops = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, n, n)
        t = [truth[j] for j in i]
        drops.append(task.score([ref[j] for j in i], t) - task.score([cand[j] for j in i], t))
    return base, got, float(np.std(drops))


def edgec_metric(task: Task) -> Callable[[list[np.ndarray], Any], float]:
    """The task as edgec's metric callable ``metric(outputs, truth) -> points``: ``outputs`` holds each model
    output over the samples, axis 0 the sample (edgec stacks per-sample outputs, or joins them along a batch dim
    of 1); ``truth`` is the labels (one per sample) or fp32's outputs in the same layout."""
    def split(stacked: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        return [[np.asarray(o)[i] for o in stacked] for i in range(len(stacked[0]))]

    def is_outputs(truth: Any, n: int) -> bool:
        return (isinstance(truth, (list, tuple)) and len(truth) == n_outputs[0] and n > 1
                and all(isinstance(t, np.ndarray) and len(t) == n for t in truth))

    n_outputs = [0]

    def metric(outputs: list[np.ndarray], truth: Any) -> float:
        n_outputs[0] = len(outputs)
        cand = [task.prepare(o) for o in split(outputs)]
        if not is_outputs(truth, len(cand)):  # the labels
            return task.score(cand, list(truth))
        ref = [task.prepare(o) for o in split(truth)]  # fp32's outputs: agreement with them, in the task's terms
        return task.score(cand, [task.pseudo(r) for r in ref] if task.pseudo else ref)
    metric.__name__ = task.name
    return metric


# ------------------------------------------------------------------------------------------------ samples
@dataclass
class Bench:
    """One model's inputs for every tool: the ONNX, its compile shapes, calibration / search / held-out feeds
    and the held-out (and search) labels when it has them."""
    name: str
    onnx: Path
    shapes: dict[str, tuple[int, ...]]
    calib: list[Feed]
    search: list[Feed]
    held: list[Feed]
    task: Task
    transformer: bool = False
    held_truth: list[Any] | None = None
    search_truth: list[Any] | None = None
    notes: list[str] = field(default_factory=list)


def zoo_bench(name: str, held: int) -> Bench:
    """A zoo model's samples: calib (seed 0), search (calib photos, seed 1), held-out (val, seed 0)."""
    m = zoo_models.get(name)
    shapes = {k: tuple(v) for k, v in m.input_shapes.items()}
    b = Bench(name, m.path(), shapes, m.samples(CALIBRATION, 0, "calib"), m.samples(SEARCH, 1, "calib"), [],
              TASKS[name], transformer=name == "bert-tiny")
    if name == "ddddocr-det":
        b.held, b.held_truth = zd.labelled_samples(m, held, 0, "val")
        b.search, b.search_truth = zd.labelled_samples(m, SEARCH, 1, "calib")
    else:
        b.held = m.samples(held, 0, "val")
    return b


def _vit_module():  # noqa: ANN202
    """benchmarks/vit_digits.py (imported lazily: it needs torch and transformers)."""
    from benchmarks import vit_digits
    return vit_digits


def vit_bench(held: int) -> Bench:
    """The ViT fine-tuned on sklearn digits (real weights), exported to ONNX (torch dynamo, opset 18) in the
    bench cache; held-out = the first ``held`` of its 600 held-out images, search = the next SEARCH."""
    import torch
    vd = _vit_module()
    model, calib, held_feeds, labels = vd.vit_digits()
    onnx_path = vd.CACHE_DIR / f"{vd.RECIPE}.onnx"
    if not onnx_path.exists():
        prog = torch.onnx.export(model, (torch.from_numpy(calib[0]["pixel_values"]),), dynamo=True, opset_version=18,
                                 input_names=["pixel_values"], output_names=["logits"])
        tmp = onnx_path.with_suffix(".tmp.onnx")
        prog.save(str(tmp))
        tmp.replace(onnx_path)
    held = min(held, len(held_feeds) - SEARCH)
    return Bench("vit-digits", onnx_path, {"pixel_values": tuple(calib[0]["pixel_values"].shape)}, calib, held_feeds[held:held + SEARCH],
                 held_feeds[:held], TASKS["vit-digits"], transformer=True, held_truth=[int(v) for v in labels[:held]],
                 search_truth=[int(v) for v in labels[held:held + SEARCH]])


# ------------------------------------------------------------------------------------------------- tools
@dataclass
class Result:
    """One tool on one model: metric, its drop vs fp32 with standard error, latency, quantization seconds."""
    model: str
    tool: str
    score: float | None = None
    fp32_score: float | None = None
    drop_se: float | None = None
    latency_ms: float | None = None
    latency_min_ms: float | None = None  # the fastest run: less hit by the machine's other load than p50
    runtime: str = ""
    quant_seconds: float | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _ov_compiled(xml_or_model: Any):  # noqa: ANN202
    import openvino as ov
    return ov.Core().compile_model(xml_or_model, "CPU", OV_CONFIG)


def _ov_runner(compiled: Any) -> Callable[[Feed], list[np.ndarray]]:
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]

    def run(feed: Feed) -> list[np.ndarray]:
        request.infer({k: feed[k] for k in names})
        return [np.array(request.get_output_tensor(i).data) for i in range(len(compiled.outputs))]
    return run


def _ort_session(path: Path):  # noqa: ANN202
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_runner(path: Path) -> Callable[[Feed], list[np.ndarray]]:
    s = _ort_session(path)
    names = [i.name for i in s.get_inputs()]
    return lambda feed: s.run(None, {k: feed[k] for k in names})


def edgec_build(b: Bench, precision: str, work: Path, budget: float, metric_api: bool) -> tuple[Any, float, dict]:
    """edgec.compile for intel-cpu; (compiled OpenVINO model, wall seconds, what its report says)."""
    import edgec
    data: dict[str, Any] = {k: np.stack([f[k] for f in b.calib]) for k in b.calib[0]}
    data.update({f"val_{k}": np.stack([f[k] for f in b.search]) for k in b.search[0]})
    kwargs: dict[str, Any] = {}
    if b.search_truth is not None:  # boxes: a [k, 5] array per sample; classes: one id per sample
        boxes = b.name == "ddddocr-det"
        if metric_api or not boxes:
            data["val_boxes" if boxes else "val_y"] = b.search_truth if boxes else np.asarray(b.search_truth)
    if metric_api:
        kwargs["metric"] = edgec_metric(b.task)
    if precision == "mixed":
        kwargs["max_accuracy_drop"] = budget
    out = work / f"{b.name}-{precision}"
    t0 = time.perf_counter()
    build = edgec.compile(str(b.onnx), "intel-cpu", precision, calibration=data, input_shapes=b.shapes,
                          output_dir=out, profile_runs=20, progress=False, use_cache=False, accept_inaccurate=True,
                          **kwargs)
    seconds = time.perf_counter() - t0
    acc = build.report.get("accuracy") or {}
    info = {"check_ok": acc.get("ok"), "criterion": acc.get("criterion"),
            "int8_layers": next((p["config"].get("int8_nodes") for p in build.manifest["passes"]
                                 if p["name"] == "quantize-int8"), None)}
    info["edgec_says"] = {k: acc.get(k) for k in ("metric", "score", "labelled") if k in acc}
    mixed = build.report.get("mixed_precision")
    if mixed:
        info["mixed"] = {k: mixed.get(k) for k in ("metric", "budget_points", "met", "fp32", "int8", "mixed",
                                                   "standard_error_points", "int8_layers")}
        info["mixed"]["float_layers"] = len(mixed.get("float_layers") or [])
    return _ov_compiled(str(out / "model.xml")), seconds, info


def nncf_build(b: Bench) -> tuple[Any, float]:
    """nncf.quantize (defaults, TRANSFORMER for transformers) of OpenVINO's conversion at the compile shapes."""
    import nncf
    import openvino as ov
    from edgec.isolation import telemetry_declined
    with telemetry_declined():
        t0 = time.perf_counter()
        model = ov.convert_model(str(b.onnx), input=[(k, ov.PartialShape(list(v))) for k, v in b.shapes.items()])
        kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if b.transformer else {}
        q = nncf.quantize(model, nncf.Dataset(b.calib), subset_size=len(b.calib), **kwargs)
        seconds = time.perf_counter() - t0
        return _ov_compiled(q), seconds


def ort_build(b: Bench, work: Path) -> tuple[Path, float]:
    """onnxruntime.quantization.quantize_static: QDQ, per-channel, default (MinMax) calibration."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(b.calib)

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    out = work / f"{b.name}-ort-int8.onnx"
    t0 = time.perf_counter()
    quantize_static(str(b.onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return out, time.perf_counter() - t0


def time_interleaved(calls: dict[str, Callable[[], Any]], rounds: int, per_round: int
                     ) -> dict[str, tuple[float, float]]:
    """(p50, min) in ms of each call, timed in ``rounds`` rounds that take turns (``per_round`` runs each after 3
    warm-up runs per round), so the machine's load changes hit every tool alike."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            for _ in range(3):
                call()
            for _ in range(per_round):
                t0 = time.perf_counter()
                call()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


# ------------------------------------------------------------------------------------------------ a model
def run_model(b: Bench, work: Path, budget: float, metric_api: bool, rounds: int,
              tools: Sequence[str] = TOOLS) -> list[Result]:
    """Every tool in `tools` on one model; a tool that raises gets its error in its row, the others still run."""
    task = b.task
    fp32 = _ort_runner(b.onnx)
    ref_raw = [fp32(f) for f in b.held]
    ref = [task.prepare(o) for o in ref_raw]
    truth = b.held_truth if task.labelled else ref
    base = task.score(ref, truth)
    results = [Result(b.name, "fp32", score=base, fp32_score=base, drop_se=0.0, runtime="ONNX Runtime")]
    feed = b.held[0]
    timed: dict[str, Callable[[], Any]] = {}
    import openvino as ov
    ov_fp32 = _ov_compiled(ov.convert_model(str(b.onnx), input=[(k, ov.PartialShape(list(v)))
                                                                  for k, v in b.shapes.items()]))
    timed["fp32 (OpenVINO)"] = (lambda r: lambda: r(feed))(_ov_runner(ov_fp32))

    def tool(name: str, build: Callable[[], tuple[Callable[[Feed], list[np.ndarray]], float, dict]], runtime: str) -> None:
        if name not in tools:
            return
        r = Result(b.name, name, runtime=runtime)
        try:
            run, r.quant_seconds, r.extra = build()
            cand = [task.prepare(run(f)) for f in b.held]
            r.fp32_score, r.score, r.drop_se = score_with_error(task, ref, cand, truth)
            timed[name] = lambda: run(feed)
        except Exception as e:  # the table says what failed, on which model
            r.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            traceback.print_exc()
        results.append(r)
        print(f"  {b.name:20} {name:12} {_cell(r)}", flush=True)

    def edgec_tool(precision: str):  # noqa: ANN202
        def build():  # noqa: ANN202
            compiled, s, info = edgec_build(b, precision, work, budget, metric_api)
            return _ov_runner(compiled), s, info
        return build

    tool("edgec int8", edgec_tool("int8"), "OpenVINO CPU")
    tool("edgec mixed", edgec_tool("mixed"), "OpenVINO CPU")
    tool("NNCF", lambda: (lambda c, s: (_ov_runner(c), s, {}))(*nncf_build(b)), "OpenVINO CPU")
    tool("ORT", lambda: (lambda p, s: (_ort_runner(p), s, {}))(*ort_build(b, work)), "ONNX Runtime")
    lat = time_interleaved(timed, rounds, 20)
    for r in results:
        key = "fp32 (OpenVINO)" if r.tool == "fp32" else r.tool
        if key in lat:
            r.latency_ms, r.latency_min_ms = lat[key]
            if r.tool == "fp32":
                r.runtime = "metric: ONNX Runtime; latency: OpenVINO CPU"
    return results


# ------------------------------------------------------------------------------------------------- output
def _pts(x: float) -> str:
    """Points: 2 decimals, 3 below 0.1 (a cosine's drops are small)."""
    return f"{x:.3f}" if abs(x) < 0.1 else f"{x:.2f}"


def _cell(r: Result) -> str:
    if r.error:
        return f"FAILED: {r.error}"
    s = f"{r.score:.2f} (drop {r.fp32_score - r.score:+.2f} +- {r.drop_se:.2f})"
    if r.latency_ms is not None:
        s += f", {r.latency_ms:.2f} ms"
    if r.quant_seconds is not None:
        s += f", quantized in {r.quant_seconds:.1f} s"
    return s


def table(results: Sequence[Result]) -> str:
    """Markdown: one row per model and tool."""
    lines = ["| model | metric | tool | score | drop vs fp32 +- SE | latency p50 ms (runtime) | vs NNCF | min vs NNCF "
             "| quant. s | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    nncf = {r.model: r.latency_ms for r in results if r.tool == "NNCF" and r.latency_ms}
    nncf_min = {r.model: r.latency_min_ms for r in results if r.tool == "NNCF" and r.latency_min_ms}
    for r in results:
        metric = TASKS[r.model].name if r.tool == "fp32" else ""
        if r.error:
            lines.append(f"| {r.model} | {metric} | {r.tool} | **failed** | | | | | | {r.error[:200]} |")
            continue
        drop = "-" if r.tool == "fp32" else f"{r.fp32_score - r.score:+.2f} +- {_pts(r.drop_se)}"
        lat = f"{r.latency_ms:.2f} ({r.runtime})" if r.latency_ms is not None else "-"
        ratio = f"{r.latency_ms / nncf[r.model]:.2f}x" if r.latency_ms and r.model in nncf else "-"
        rmin = f"{r.latency_min_ms / nncf_min[r.model]:.2f}x" if r.latency_min_ms and r.model in nncf_min else "-"
        q = f"{r.quant_seconds:.1f}" if r.quant_seconds is not None else "-"
        lines.append(f"| {r.model} | {metric} | {r.tool} | {r.score:.2f} | {drop} | {lat} | {ratio} | {rmin} | {q} | "
                     f"{_notes(r)} |")
    return "\n".join(lines)


def _notes(r: Result) -> str:
    notes = []
    if r.extra.get("check_ok") is False:
        notes.append("edgec's own check failed (accepted to measure it)")
    mixed = r.extra.get("mixed")
    if mixed:
        notes.append(f"budget {mixed['budget_points']} pt of {mixed['metric']}: {'met' if mixed['met'] else 'NOT met'}"
                     f" on the search split ({mixed['float_layers']} layers float, {mixed['int8_layers']} int8)")
    return "; ".join(notes)


def compact(results: Sequence[Result]) -> str:
    """README table: per model, each tool's drop +- SE and latency / NNCF's."""
    tools = ("edgec int8", "edgec mixed", "NNCF", "ORT")
    by = {(r.model, r.tool): r for r in results}
    models = list(dict.fromkeys(r.model for r in results))
    lines = ["| model (metric) | fp32 | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    for m in models:
        f = by[(m, "fp32")]
        nncf = by.get((m, "NNCF"))
        cells = []
        for t in tools:
            r = by.get((m, t))
            if r is None:
                cells.append("-")
            elif r.error:
                cells.append("failed")
            else:
                c = f"{r.fp32_score - r.score:+.2f} +- {_pts(r.drop_se)}"
                if r.latency_ms and nncf and nncf.latency_ms and not nncf.error:
                    c += f", {r.latency_ms / nncf.latency_ms:.2f}x"
                cells.append(c)
        lines.append(f"| {m} ({TASKS[m].name}) | {f.score:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _versions() -> str:
    import nncf
    import onnxruntime
    import openvino
    import edgec
    return (f"edgec {edgec.__version__}, OpenVINO {openvino.__version__.split('-')[0]}, NNCF {nncf.__version__}, "
            f"ONNX Runtime {onnxruntime.__version__}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help=f"comma-separated (default: {','.join(SMALL)}; with --big also {','.join(BIG)})")
    p.add_argument("--big", action="store_true", help="also the big models (minutes per tool)")
    p.add_argument("--quick", action="store_true", help="32 held-out samples, 3 timing rounds")
    p.add_argument("--held-out", type=int, default=None, help=f"held-out samples (default {HELD_OUT}; "
                   f"{HELD_OUT_DETECTOR} for the detector)")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of {','.join(TOOLS)}")
    p.add_argument("--budget", type=float, default=1.0, help="mixed's budget in points of the metric (default 1.0)")
    p.add_argument("--out", type=Path, help="write the markdown here and the results as .json beside it (the "
                   ".json after every model)")
    p.add_argument("--update", type=Path, metavar="JSON", help="results of an earlier run (--out's .json): its "
                   "models not run again here stay in the table")
    p.add_argument("--render", type=Path, metavar="JSON", help="only write the tables of earlier results (with --out)")
    args = p.parse_args(argv)
    if args.render:
        results = [Result(**r) for r in json.loads(args.render.read_text())]
        md = args.render.with_suffix(".md")
        text = render(results, md.read_text().split("\n\n")[0] + "\n" if md.exists() else
                      f"# python -m benchmarks.zoo_accuracy: {args.render}\n")
        (args.out or args.render.with_suffix(".md")).write_text(text)
        print(text)
        return 0
    names = args.models.split(",") if args.models else list(SMALL) + (list(BIG) if args.big else [])
    import edgec
    metric_api = "metric" in inspect.signature(edgec.compile).parameters
    rounds = 3 if args.quick else 7
    results: list[Result] = []
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="edgec-zoo-acc-") as tmp:
        for name in names:
            held = args.held_out or (32 if args.quick else HELD_OUT_DETECTOR if name == "ddddocr-det" else HELD_OUT)
            t0 = time.time()
            try:
                b = vit_bench(held) if name == "vit-digits" else zoo_bench(name, held)
            except Exception as e:
                results.append(Result(name, "fp32", error=f"samples: {type(e).__name__}: {e}"))
                continue
            print(f"{name}: {len(b.calib)} calibration, {len(b.search)} search, {len(b.held)} held-out", flush=True)
            results += run_model(b, Path(tmp), args.budget, metric_api, rounds, args.tools.split(","))
            print(f"  ({time.time() - t0:.0f} s)", flush=True)
            if args.out:
                _save(args.out.with_suffix(".json"), results)
    if args.update:
        fresh = {(r.model, r.tool) for r in results}
        results = [Result(**r) for r in json.loads(args.update.read_text())
                   if (r["model"], r["tool"]) not in fresh] + results
    head = (f"# python -m benchmarks.zoo_accuracy {' '.join(argv if argv is not None else sys.argv[1:])}\n"
            f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}, {_cpu()} (2 cores, shared, noisy), "
            f"{_versions()}; {time.time() - t_start:.0f} s.\n# {CALIBRATION} calibration samples; edgec's check and "
            f"mixed search on {SEARCH} other samples; scored on the held-out samples. edgec metric API "
            f"(metric=): {'yes' if metric_api else 'NO: mixed budget in edgec default metric'}.\n")
    text = render(results, head)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
        _save(args.out.with_suffix(".json"), results)
    return 0


def render(results: Sequence[Result], head: str) -> str:
    """The markdown: ``head``, the full table, the compact one."""
    return (head + "\n" + table(results) + "\n\nCompact (drop vs fp32 +- SE in points; latency / NNCF's):\n\n"
            + compact(results) + "\n")


def _save(path: Path, results: Sequence[Result]) -> None:
    path.write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
