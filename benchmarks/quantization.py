"""int8 side by side: edgec int8, edgec mixed, NNCF, ONNX Runtime quantize_static, against fp32.

    python benchmarks/quantization.py [--resolution 64|224] [--rounds 21] [--runs 50] [--skip-resnet]
                                      [--preprocess graph|outside|both] [--eval heldout|all|search|none]

Everything runs in this one process on the same data:
- MobileNetV2 (torchvision's ImageNet weights) + a linear head trained on Fashion-MNIST
  (benchmarks/fmnist_probe.py; 512 calibration images from the train split). edgec mixed checks its budget
  on 1,000 of the first 2,000 test images (the probe's val split; edgec's default validation sample count);
  accuracy is reported on the other 8,000 test images, which no tool saw (--eval all: all 10,000; --eval
  search: the 2,000 only; --eval none: latency only, with the spread of the per-round ratios).
  Twice: with the 28x28 -> RxR resize and normalisation inside the graph (input [1,1,28,28]; every variant
  pays the same f32 Interpolate, ~0.22 ms at 224 on OpenVINO), and as the network alone (input
  [1,3,R,R], the same preprocessing done in PyTorch beforehand) -- the same weights and images.
- ResNet-18-like (seeded random weights, 224x224; no labels: accuracy is top-1 agreement with fp32 on
  random inputs, latency is what matters there).
Latency: OpenVINO CPU, batch 1, LATENCY hint; each variant timed in `rounds` interleaved rounds of
`runs` inferences; we report the median of the round medians, and as "vs fp32" the median over rounds of
each round's ratio to fp32 (paired: this shared machine drifts by 10-20% over minutes).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgec  # noqa: E402
from edgec.isolation import telemetry_declined  # noqa: E402
from edgec.accuracy import drop_standard_error  # noqa: E402

F32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
ORT_SAMPLES = 128


def ov_compile(model, config=F32):
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", config)


def _chunks(x: np.ndarray, prepare: Callable[[np.ndarray], np.ndarray]):
    """Batch-1 inputs of x, each through `prepare` (done 250 samples at a time)."""
    for start in range(0, len(x), 250):
        chunk = prepare(x[start:start + 250])
        yield from (chunk[i:i + 1] for i in range(len(chunk)))


def ov_predict(compiled, x: np.ndarray, prepare: Callable = lambda a: a) -> np.ndarray:
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: xi})[0] for xi in _chunks(x, prepare)])


def ort_predict(path: Path, x: np.ndarray, prepare: Callable = lambda a: a) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: xi})[0] for xi in _chunks(x, prepare)])


def interleaved_latency(runners: dict, x: np.ndarray, rounds: int, runs: int) -> dict[str, float]:
    """Median over rounds of each runner's median latency (ms); runners alternate within each round."""
    return {k: float(np.median(v)) for k, v in interleaved_rounds(runners, x, rounds, runs).items()}


def paired_ratio(per_round: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of name's round median / base's round median: the two ran seconds apart in each round,
    so slow drifts of a shared machine cancel (the ratio of the overall medians does not have that property)."""
    return float(np.median(np.asarray(per_round[name]) / np.asarray(per_round[base])))


def interleaved_rounds(runners: dict, x: np.ndarray, rounds: int, runs: int) -> dict[str, list[float]]:
    """Each runner's median latency (ms) in each round; runners alternate within each round, in reverse order
    every other round (so none always runs right after the same neighbour)."""
    per_round: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        for _ in range(20):
            fn(x)
    for r in range(rounds):
        for name, fn in (list(runners.items()) if r % 2 == 0 else list(runners.items())[::-1]):
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn(x)
                ts.append(time.perf_counter() - t0)
            per_round[name].append(float(np.median(ts)) * 1000)
    return per_round


def ov_runner(compiled):
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x}, share_inputs=True, share_outputs=True)  # as edgec profile times it


def ort_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def ort_quantize(onnx_path: Path, calib: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    pre = out.with_name("ort_pre.onnx")
    quant_pre_process(str(onnx_path), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile)
    return out


def nncf_quantize(onnx_path: Path, calib: np.ndarray, shape: list[int]):
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path), input=[shape])
    return nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]), subset_size=len(calib))


def run(name: str, onnx_path: Path, data: dict, x_val: np.ndarray, labels: np.ndarray | None, rounds: int,
        runs: int, work: Path, budget: float | None, prepare: Callable = lambda a: a, score: bool = True) -> None:
    """Quantize `onnx_path` every way, then compare accuracy on (prepare(x_val), labels) and interleaved latency.
    budget None: no mixed. score False: latency only (x_val[:1] is the timing input)."""
    calib = data["x"]
    shape = list(calib.shape[1:])
    t = {}
    print(f"\n== {name}: {onnx_path.name}, {len(calib)} calibration samples, {len(x_val)} evaluation samples", flush=True)
    t0 = time.perf_counter()
    int8 = edgec.compile(onnx_path, "intel-cpu", "int8", calibration=data, output_dir=work / f"{name}-int8",
                         profile_runs=20, progress=False)
    t["edgec int8"] = time.perf_counter() - t0
    nearest = edgec.compile(onnx_path, "intel-cpu", "int8", calibration=data, weight_rounding="nearest",
                            output_dir=work / f"{name}-int8-nearest", profile_runs=20, progress=False)
    mixed = None
    if budget is not None:
        t0 = time.perf_counter()
        mixed = edgec.compile(onnx_path, "intel-cpu", "mixed", calibration=data, max_accuracy_drop=budget,
                              output_dir=work / f"{name}-mixed", profile_runs=20, progress=False)
        t["edgec mixed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    nncf_model = nncf_quantize(onnx_path, calib, [1, *shape])
    t["nncf"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # ORT's percentile calibrator holds every activation of every sample in memory: 512 samples at 224x224
    # were OOM-killed at 24 GB on this 24 GB machine, so it gets the first ORT_SAMPLES of the same set.
    ort_path = ort_quantize(onnx_path, calib[:ORT_SAMPLES], work / f"{name}-ort-int8.onnx")
    t["ort"] = time.perf_counter() - t0

    compiled = {
        "fp32 (OpenVINO f32)": ov_compile(str(onnx_path)),
        "edgec int8": ov_compile(str(int8.output_dir / "model.xml")),
        "edgec int8, nearest rounding": ov_compile(str(nearest.output_dir / "model.xml")),
        "NNCF nncf.quantize": ov_compile(nncf_model),
        "ORT quantize_static on OpenVINO": ov_compile(str(ort_path)),
    }
    if mixed is not None:
        compiled[f"edgec mixed ({budget} pt)"] = ov_compile(str(mixed.output_dir / "model.xml"))
    runners = {k: ov_runner(c) for k, c in compiled.items()}
    runners["fp32 on ORT"] = ort_runner(onnx_path)
    runners["ORT quantize_static on ORT"] = ort_runner(ort_path)
    per_round = interleaved_rounds(runners, prepare(x_val[:1]), rounds, runs)
    lat = {k: float(np.median(v)) for k, v in per_round.items()}

    q = np.percentile  # spread of the per-round ratios: how firm "vs fp32" is on this machine today
    if not score:
        print(f"{'variant':36} {'p50 ms':>8} {'vs fp32':>8} {'ratio IQR over rounds':>22}")
        for k in per_round:
            base = "fp32 on ORT" if k.endswith("on ORT") else "fp32 (OpenVINO f32)"
            r = np.array(per_round[k]) / np.array(per_round[base])
            print(f"{k:36} {lat[k]:8.3f} {paired_ratio(per_round, k, base):8.3f} {q(r, 25):14.3f}-{q(r, 75):.3f}")
    else:
        preds = {k: ov_predict(c, x_val, prepare) for k, c in compiled.items()}
        preds["ORT quantize_static on ORT"] = ort_predict(ort_path, x_val, prepare)
        preds["fp32 on ORT"] = ort_predict(onnx_path, x_val, prepare)
        ref = preds["fp32 (OpenVINO f32)"].argmax(1)
        truth = labels if labels is not None else ref
        base_acc = float((ref == truth).mean())
        print(f"{'variant':36} {'accuracy':>9} {'drop pt':>8} {'+-s.e.':>6} {'agree':>7} {'p50 ms':>8} {'vs fp32':>8}")
        for k, p in preds.items():
            top = p.argmax(1)
            acc = float((top == truth).mean())
            base = "fp32 on ORT" if k.endswith("on ORT") else "fp32 (OpenVINO f32)"
            print(f"{k:36} {100 * acc:8.2f}% {100 * (base_acc - acc):8.2f} "
                  f"{drop_standard_error(ref == truth, top == truth):6.2f} {100 * (top == ref).mean():6.1f}% "
                  f"{lat[k]:8.3f} {paired_ratio(per_round, k, base):8.3f}")
    if mixed is None:
        print("mixed: skipped (no labels and random weights: a budget on top-1 agreement means nothing here)")
    else:
        m = mixed.report["mixed_precision"]
        print(f"mixed kept {len(m['float_layers'])} of {len(m['float_layers']) + m['int8_layers']} quantizable layers "
              f"in float: {', '.join(d['node'] for d in m['float_layers']) or '-'}; on its search data "
              f"({m['search_data']}) fp32 {m['fp32']:.2f}, mixed {m['mixed']:.2f} (+-{m['standard_error_points']:.2f})")
    print("quantization time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())
          + "  (edgec times include building, checking and profiling fp32/int8 variants)")
    print(f"latency: median of {rounds} interleaved rounds x {runs} runs, batch 1; vs fp32: median over rounds of "
          f"the round's ratio to fp32")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=224, help="MobileNetV2 probe input resolution (64 or 224)")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--budget", type=float, default=0.2, help="mixed --max-accuracy-drop, points")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--preprocess", choices=["graph", "outside", "both"], default="both",
                   help="MobileNetV2 probe with its 28->R resize + normalisation inside the graph (an f32 Interpolate "
                        "every variant pays), outside it (the network alone, input [1,3,R,R]), or both")
    p.add_argument("--eval", choices=["heldout", "all", "search", "none"], default="heldout",
                   help="which Fashion-MNIST test images score accuracy (default: the 8,000 the mixed search never "
                        "sees; none: latency only)")
    args = p.parse_args()
    from benchmarks.fmnist_probe import build_probe

    probe = build_probe(resolution=args.resolution)
    data = probe.load()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from benchmarks.fmnist_probe import load_fashion_mnist

        images, labels = load_fashion_mnist("t10k")
        search = len(data["val_x"])
        assert np.array_equal(images[:search].astype(np.float32) / 255, data["val_x"])  # val split = first test images
        pick = {"heldout": slice(search, None), "all": slice(None), "search": slice(0, search),
                "none": slice(search, search + 1)}[args.eval]
        x_eval, y_eval = images[pick].astype(np.float32) / 255, labels[pick].astype(np.int64)
        score = args.eval != "none"
        print(f"accuracy on {len(x_eval)} Fashion-MNIST test images ({args.eval}); the probe's val split (mixed's "
              f"search data) is the first {search}" if score else "latency only (--eval none)")
        if args.preprocess in ("graph", "both"):
            run(f"mobilenetv2-fmnist-{args.resolution}", probe.onnx_path, data, x_eval, y_eval, args.rounds,
                args.runs, work, args.budget, score=score)
        if args.preprocess in ("outside", "both"):
            from benchmarks.fmnist_probe import export_network_only, preprocess

            r = args.resolution
            path = export_network_only(probe, work / f"mobilenetv2-fmnist-{r}-rgb.onnx")
            rgb = {"x": preprocess(data["x"], r), "val_x": preprocess(data["val_x"], r), "val_y": data["val_y"]}
            run(f"mobilenetv2-fmnist-{r}-rgb", path, rgb, x_eval, y_eval, args.rounds, args.runs, work, args.budget,
                prepare=lambda a: preprocess(a, r), score=score)
            del rgb
        if not args.skip_resnet:
            import torch
            from benchmarks.models import resnet18_like

            path = work / "resnet18_like.onnx"
            torch.onnx.export(resnet18_like(), (torch.zeros(1, 3, 224, 224),), dynamo=True, input_names=["x"]).save(path)
            rng = np.random.default_rng(0)
            rdata = {"x": rng.standard_normal((256, 3, 224, 224), dtype=np.float32),
                     "val_x": rng.standard_normal((300, 3, 224, 224), dtype=np.float32)}
            run("resnet18-like-224", path, rdata, rdata["val_x"], None, args.rounds, args.runs, work, None, score=score)


if __name__ == "__main__":
    with telemetry_declined():  # NNCF and ov.convert_model, called directly here, report usage otherwise
        main()
