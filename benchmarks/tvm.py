"""edgec's TVM build vs ONNX Runtime, fp32, side by side in one process, on this x86 machine.

    python benchmarks/tvm.py [--rounds 7] [--runs 30] [--model resnet18|mobilenetv2] [--int8]

The model (ResNet-18-like by default, seeded random weights, 1x3x224x224) is exported once with
torch.onnx (dynamo), compiled by edgec for the `x86-tvm` target, and timed against an ONNX Runtime CPU
session on the same ONNX: `rounds` interleaved rounds of `runs` inferences each (after warm-up), and we
report the median of the round medians and the TVM/ORT ratio (goal: <= 1.5).

--int8 also times TVM on the QDQ model (ONNX Runtime quantize_static), imported by Relax as float
fake-quant, against the TVM fp32 build: the numbers behind refusing --precision int8 on TVM targets.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# `python benchmarks/tvm.py` puts benchmarks/ first on sys.path, where this file would shadow the tvm package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import edgec  # noqa: E402
from edgec.device.tvm_runner import Session  # noqa: E402


def interleaved_latency(runners: dict, rounds: int, runs: int, warmup: int = 10) -> dict[str, float]:
    """Median over rounds of each runner's median latency (ms); runners alternate within each round."""
    per_round: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for name, fn in runners.items():
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            per_round[name].append(float(np.median(ts)) * 1000)
    return {k: float(np.median(v)) for k, v in per_round.items()}


def ort_runner(path: Path, x: np.ndarray):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda: session.run(None, {name: x})), (lambda: session.run(None, {name: x})[0])


def tvm_runner(out: Path, x: np.ndarray):
    session = Session(out)
    args = session.to_device({session.input_names[0]: x})
    return (lambda: session.run_device(args)), (lambda: session.run({session.input_names[0]: x})[0])


def export(model_name: str, path: Path) -> None:
    import torch

    from benchmarks.models import mobilenet_v2_like, resnet18_like

    model = {"resnet18": resnet18_like, "mobilenetv2": mobilenet_v2_like}[model_name]()
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), dynamo=True, input_names=["x"]).save(path)


def qdq_model(onnx_path: Path, out: Path, seed: int = 0) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)

    rng = np.random.default_rng(seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": rng.random((1, 3, 224, 224), dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


def build_raw_tvm(onnx_path: Path, out: Path) -> Path:
    """Build a QDQ model through the same Relax pipeline edgec uses, bypassing the int8 refusal."""
    import json

    import onnx

    from edgec.backends.tvm import TVMBackend
    from edgec.model import Model

    out.mkdir(parents=True, exist_ok=True)
    model = Model(onnx.load(str(onnx_path)))
    target = edgec.load_target("x86-tvm")
    artifact = TVMBackend().build(model, target, "fp32", out)  # "fp32" here means: compile the graph as it is
    (out / "manifest.json").write_text(json.dumps({"inputs": artifact.config["inputs"],
                                                   "outputs": artifact.config["outputs"]}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["resnet18", "mobilenetv2"], default="resnet18")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--int8", action="store_true", help="also time TVM fake-quant int8 vs TVM fp32")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_path = work / f"{args.model}.onnx"
        t0 = time.perf_counter()
        export(args.model, onnx_path)
        print(f"exported {args.model} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        t0 = time.perf_counter()
        build = edgec.compile(onnx_path, "x86-tvm", output_dir=work / "tvm", profile_runs=20, progress=True,
                              use_cache=False)
        build_s = time.perf_counter() - t0
        x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        ort_time, ort_out = ort_runner(onnx_path, x)
        tvm_time, tvm_out = tvm_runner(build.output_dir, x)
        ref, got = ort_out(), tvm_out()
        runners = {"onnxruntime": ort_time, "edgec-tvm": tvm_time}
        if args.int8:
            qdq = qdq_model(onnx_path, work / "qdq.onnx")
            q_time, q_out = tvm_runner(build_raw_tvm(qdq, work / "tvm-qdq"), x)
            runners["tvm-fake-quant-int8"] = q_time
        lat = interleaved_latency(runners, args.rounds, args.runs)
        cfg = build.manifest["artifact"]["config"]
        print(f"model: {args.model}-like 1x3x224x224 fp32 | machine: {platform.machine()} | "
              f"rounds {args.rounds} x runs {args.runs}, median of round medians")
        print(f"edgec TVM build: {build_s:.1f}s (whole compile incl. accuracy check and profile), "
              f"target {cfg['tvm_target']}, unscheduled kernels: {len(cfg['unscheduled_kernels'])}")
        print(f"max |TVM - ORT| on one input: {float(np.abs(got - ref).max()):.2e}")
        for name, ms in lat.items():
            print(f"  {name:22s} {ms:8.2f} ms")
        print(f"TVM/ORT latency ratio: {lat['edgec-tvm'] / lat['onnxruntime']:.2f} (goal <= 1.5)")
        if args.int8:
            print(f"TVM fake-quant int8 / TVM fp32: {lat['tvm-fake-quant-int8'] / lat['edgec-tvm']:.2f}; "
                  f"max |int8 - fp32 ORT| {float(np.abs(q_out() - ref).max()):.2e}")


if __name__ == "__main__":
    main()
