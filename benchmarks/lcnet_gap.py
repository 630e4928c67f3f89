"""edgec int8 vs NNCF on one zoo classifier (issue #16): top-1 agreement with fp32, cosine, latency, time.

    python -m benchmarks.lcnet_gap [--model pplcnet-orientation] [--calib 64] [--val 200] [--rounds 15]
                                   [--runs 30] [--variants compile,nncf] [--keep DIR]

Variants (comma separated):
- `compile`: `edgec.compile(path, "intel-cpu", "int8", calibration=...)` with defaults, timed end to end
  (that includes edgec's fp32 and int8 builds, accuracy check and profiles);
- `nearest`, `nosearch`, `plain`: the same with weight_rounding="nearest", range_search=0, both;
- `nncf`: `nncf.quantize` on `ov.convert_model(path)` with defaults (benchmarks/quantization.py).
Every variant sees the same `--calib` calibration samples (the zoo's "calib" split); they are scored on
`--val` held-out samples (the "val" split) with OpenVINO CPU in f32 inference precision against the fp32 model
on the same runtime: top-1 agreement (+- its binomial standard error), min and mean cosine of the outputs.
Latency: interleaved rounds (benchmarks/quantization.py), ratio to NNCF as the median of per-round ratios.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgec  # noqa: E402
from benchmarks.quantization import interleaved_rounds, nncf_quantize, ov_compile, ov_runner  # noqa: E402
from benchmarks.zoo_models import get  # noqa: E402
from edgec.isolation import telemetry_declined  # noqa: E402

EDGEC_VARIANTS = {"compile": {}, "nearest": {"weight_rounding": "nearest"}, "nosearch": {"range_search": 0},
                  "plain": {"weight_rounding": "nearest", "range_search": 0}}


def stack(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Feeds of one sample each -> {input: [N, ...]} (the zoo's samples carry a batch axis of 1)."""
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def predict(compiled, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    request = compiled.create_infer_request()
    return np.concatenate([request.infer(list(f.values()))[0].reshape(1, -1) for f in feeds])


def scores(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (%) and its standard error, min and mean cosine per sample."""
    agree = (out.argmax(1) == ref.argmax(1)).astype(np.float64)
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1) + 1e-30)
    n = len(agree)
    p = agree.mean()
    return {"agree": 100 * p, "se": 100 * float(np.sqrt(p * (1 - p) / n)), "min_cos": float(cos.min()),
            "mean_cos": float(cos.mean())}


def edgec_variant(path: Path, calib: dict, options: dict, out: Path, shapes: dict) -> tuple[Path, float, dict]:
    t0 = time.perf_counter()
    build = edgec.compile(path, "intel-cpu", "int8", calibration=calib, output_dir=out, progress=False,
                          use_cache=False, accept_inaccurate=True, input_shapes=shapes, **options)
    seconds = time.perf_counter() - t0
    passes = {p["name"]: p["seconds"] for p in build.manifest["passes"]} if hasattr(build, "manifest") else {}
    return out / "model.xml", seconds, passes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pplcnet-orientation")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--check", type=int, default=32, help="held-out samples edgec itself checks on (val_ arrays)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--variants", default="compile,nncf")
    p.add_argument("--keep", type=Path, help="keep the builds here")
    args = p.parse_args()
    zm = get(args.model)
    path = zm.path()
    calib_feeds, val_feeds = zm.samples(args.calib, split="calib"), zm.samples(args.val, split="val")
    calib = stack(calib_feeds)
    calib.update({f"val_{k}": v for k, v in stack(zm.samples(args.check, seed=1, split="val")).items()})
    work = args.keep or Path(tempfile.mkdtemp())
    import openvino as ov
    fp32 = ov.convert_model(str(path), input=[(k, list(v)) for k, v in zm.input_shapes.items()])
    compiled, seconds = {"fp32": ov_compile(fp32)}, {}
    for v in args.variants.split(","):
        if v == "nncf":
            t0 = time.perf_counter()
            shape = list(calib_feeds[0][next(iter(calib_feeds[0]))].shape)
            model = nncf_quantize(path, calib[next(iter(calib_feeds[0]))], shape)
            seconds[v] = time.perf_counter() - t0
            ov.save_model(model, str(work / "nncf.xml"), compress_to_fp16=False)
            compiled[v] = ov_compile(model)
        else:
            xml, seconds[v], passes = edgec_variant(path, calib, EDGEC_VARIANTS[v], work / v, zm.input_shapes)
            print(f"{v}: {seconds[v]:.1f} s; passes {passes}", flush=True)
            compiled[v] = ov_compile(str(xml))
    ref = predict(compiled["fp32"], val_feeds)
    results = {k: scores(predict(c, val_feeds), ref) for k, c in compiled.items() if k != "fp32"}
    per_round = interleaved_rounds({k: ov_runner(c) for k, c in compiled.items()}, list(val_feeds[0].values())[0],
                                   args.rounds, args.runs)
    base = "nncf" if "nncf" in compiled else "fp32"
    print(f"\n{args.model}: {args.calib} calibration samples, {args.val} held-out; latency {args.rounds} rounds x "
          f"{args.runs} runs; ratio vs {base} = median of per-round ratios")
    print(f"{'variant':10} {'agree %':>8} {'+-se':>5} {'min cos':>8} {'mean cos':>9} {'p50 ms':>7} {'ratio':>6} {'quant s':>8}")
    for k in compiled:
        r = results.get(k, {"agree": 100, "se": 0, "min_cos": 1, "mean_cos": 1})
        ratio = float(np.median(np.asarray(per_round[k]) / np.asarray(per_round[base])))
        print(f"{k:10} {r['agree']:8.1f} {r['se']:5.1f} {r['min_cos']:8.4f} {r['mean_cos']:9.5f} "
              f"{np.median(per_round[k]):7.3f} {ratio:6.3f} {seconds.get(k, 0):8.1f}")


if __name__ == "__main__":
    with telemetry_declined():
        main()
