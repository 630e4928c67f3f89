"""Structured pruning speed-ups, side by side: dense vs 30%/50% channel pruning, with and without rounding.

    python benchmarks/pruning.py [--rounds 5] [--runs 50]

ResNet-18-like and MobileNetV2-like (seeded random weights, 1x3x224x224), pruned by edgec.prune (L2
magnitude, no recovery: latency does not depend on the weights' values), exported to ONNX, run fp32 on
OpenVINO CPU and ONNX Runtime in one process. Latency: median over interleaved rounds of each variant's
median. Rounding: channel counts rounded to 16 (intel-cpu's `round_to`) vs not rounded.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgec  # noqa: E402
from edgec.isolation import telemetry_declined  # noqa: E402
from benchmarks.quantization import interleaved_latency, ort_runner, ov_compile, ov_runner  # noqa: E402


def export(model, path: Path) -> Path:
    import torch

    from edgec.frontend import _quiet_exporter

    with _quiet_exporter():
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), dynamo=True, input_names=["x"]).save(path)
    return path


def main() -> None:
    import torch

    from benchmarks.models import mobilenet_v2_like, resnet18_like

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(2)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    example = (torch.zeros(1, 3, 224, 224),)
    with tempfile.TemporaryDirectory() as tmp:
        for name, factory in (("resnet18-like", resnet18_like), ("mobilenetv2-like", mobilenet_v2_like)):
            paths = {"dense": export(factory(), Path(tmp) / f"{name}-dense.onnx")}
            for ratio in (0.3, 0.5):
                for round_to in (1, 16):
                    pruned = edgec.prune(factory(), ratio, example, round_to=round_to, measure=False, progress=False)
                    key = f"{int(ratio * 100)}% {'round 16' if round_to > 1 else 'no rounding'}"
                    paths[key] = export(pruned.model, Path(tmp) / f"{name}-{ratio}-{round_to}.onnx")
            runners = {}
            for key, path in paths.items():
                runners[f"OpenVINO {key}"] = ov_runner(ov_compile(str(path)))
                runners[f"ORT {key}"] = ort_runner(path)
            lat = interleaved_latency(runners, x, args.rounds, args.runs)
            print(f"\n== {name} 1x3x224x224, fp32, median of {args.rounds} interleaved rounds x {args.runs} runs")
            print(f"{'variant':32} {'OpenVINO ms':>12} {'vs dense':>9} {'ORT ms':>9} {'vs dense':>9}")
            for key in paths:
                ov, ort = lat[f"OpenVINO {key}"], lat[f"ORT {key}"]
                print(f"{key:32} {ov:12.3f} {ov / lat['OpenVINO dense']:9.3f} {ort:9.3f} {ort / lat['ORT dense']:9.3f}",
                      flush=True)


if __name__ == "__main__":
    with telemetry_declined():  # NNCF and ov.convert_model, called directly here, report usage otherwise
        main()
