"""int8 transformers side by side: edgec int8 vs NNCF (model_type=TRANSFORMER) on OpenVINO CPU, against fp32.

    python benchmarks/transformer_int8.py [--model bert|vit|both] [--rounds 15] [--runs 40] [--labels 2]
                                          [--range-search 64] [--weight-rounding gptq|nearest]

Everything runs in this one process on the same data:
- BERT: HF ``transformers`` BertForSequenceClassification-shaped classifier (4 layers, hidden 256, 4 heads,
  FFN 1024, eager attention, Linear head on the pooled output, ``--labels`` classes), seeded random weights,
  sequence 64. 64 calibration + 128 held-out token samples (benchmarks/zoo_models._bert_tokens, seeds 1 / 2).
  Accuracy: cosine of the logits vs fp32 ONNX Runtime, min and mean over the held-out samples, and top-1
  agreement.
- ViT-digits: a ViT with real weights trained here (benchmarks/vit_digits.py): labelled accuracy and top-1
  agreement with fp32 on 600 held-out images (+- standard error), and the same cosines.
fp32 is edgec's own fp32 build of the module (its model.onnx is the graph NNCF quantizes too, converted by
ov.convert_model). edgec int8 is `edgec.compile(module, "intel-cpu", "int8", calibration=64 feeds,
example_inputs=...)`, cache off; its time is the whole compile (export, calibration, build, check, profile),
and the calibrate pass's own seconds from the manifest. NNCF's time is nncf.quantize alone.
Latency: OpenVINO CPU, f32 inference precision, LATENCY hint, batch 1; in each of `rounds` rounds the variants
take turns inference by inference, `runs` each; "vs fp32" / "vs NNCF" are medians over rounds of the ratio of
the round medians (paired: this shared machine drifts and has bursts). Kernel precisions: per-layer exec types of the MatMul/FullyConnected layers (PERF_COUNT).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgec  # noqa: E402
from edgec.accuracy import drop_standard_error  # noqa: E402
from benchmarks.zoo_models import _bert_tokens  # noqa: E402
from benchmarks.vit_digits import vit_digits  # noqa: E402

F32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
SEQ = 64


def bert_classifier(labels: int, seed: int = 0):  # noqa: ANN201
    """(module returning logits, example inputs as torch tensors): the issue's 4-layer BERT classifier."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=1024, max_position_embeddings=512, num_labels=labels)
            cfg._attn_implementation = "eager"
            self.bert = BertForSequenceClassification(cfg)

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN202
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    torch.manual_seed(seed)
    model = Classifier().eval()
    example = _bert_tokens(np.random.default_rng(seed), SEQ)
    return model, tuple(torch.from_numpy(v) for v in example.values())


def bert_case(labels: int) -> dict:
    model, example = bert_classifier(labels)
    calib = [_bert_tokens(np.random.default_rng(1000 + i), SEQ) for i in range(64)]
    held = [_bert_tokens(np.random.default_rng(2000 + i), SEQ) for i in range(128)]
    return {"name": "bert", "model": model, "example": example, "calib": calib, "held": held, "labels": None}


def vit_case() -> dict:
    import torch

    model, calib, held, labels = vit_digits()
    return {"name": "vit-digits", "model": model, "example": (torch.from_numpy(calib[0]["pixel_values"]),),
            "calib": calib, "held": held, "labels": labels}


def ov_compile(model, config=F32):  # noqa: ANN001, ANN201
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", config)


def ov_outputs(compiled, feeds: list[dict]) -> np.ndarray:  # noqa: ANN001
    request = compiled.create_infer_request()
    return np.concatenate([np.array(request.infer(f)[compiled.outputs[0]]).reshape(1, -1) for f in feeds])


def ort_outputs(path: Path, feeds: list[dict]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([session.run(None, {k: v for k, v in f.items() if k in names})[0].reshape(1, -1)
                           for f in feeds])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def nncf_quantize(onnx_path: Path, calib: list[dict], shapes: dict):  # noqa: ANN201
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path), input=[(k, v) for k, v in shapes.items()])
    return nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib), model_type=nncf.ModelType.TRANSFORMER)


def interleaved_rounds(runners: dict, feed: dict, rounds: int, runs: int) -> dict[str, list[float]]:
    """Each runner's median latency (ms) per round. Within a round the runners take turns inference by inference
    (A B C A B C ..., reversed every other round), so a burst of load from other processes on this shared
    machine hits all of them alike; per-round ratios are then paired at the finest grain."""
    per_round: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        for _ in range(20):
            fn(feed)
    for r in range(rounds):
        order = list(runners.items()) if r % 2 == 0 else list(runners.items())[::-1]
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(runs):
            for name, fn in order:
                t0 = time.perf_counter()
                fn(feed)
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            per_round[name].append(float(np.median(ts)) * 1000)
    return per_round


def kernel_precisions(compiled, feed: dict) -> dict[str, int]:  # noqa: ANN001
    """{'<layer type> <exec type>': count} of the MatMul / FullyConnected layers that ran (PERF_COUNT on), and of
    the Subgraph (snippets) layers of 30 us or more: OpenVINO's fused attention (MHA) is one of those."""
    request = compiled.create_infer_request()
    request.infer(feed)
    out: dict[str, int] = {}
    for p in request.profiling_info:
        long_subgraph = p.node_type == "Subgraph" and p.real_time.total_seconds() >= 30e-6
        if (p.node_type in ("MatMul", "FullyConnected") and p.real_time.total_seconds() > 0) or long_subgraph:
            key = f"{p.node_type} {p.exec_type}"
            out[key] = out.get(key, 0) + 1
    return out


def ratio(per_round: dict, a: str, b: str) -> tuple[float, float, float]:
    r = np.asarray(per_round[a]) / np.asarray(per_round[b])
    return float(np.median(r)), float(np.percentile(r, 25)), float(np.percentile(r, 75))


def run_case(case: dict, args: argparse.Namespace, work: Path) -> dict:
    name, calib, held = case["name"], case["calib"], case["held"]
    print(f"\n== {name}: {len(calib)} calibration + {len(held)} held-out samples", flush=True)
    fp32 = edgec.compile(case["model"], "intel-cpu", "fp32", example_inputs=case["example"],
                         output_dir=work / f"{name}-fp32", profile_runs=10, progress=False, use_cache=False)
    onnx_path = fp32.output_dir / "model.onnx"
    t0 = time.perf_counter()
    int8 = edgec.compile(case["model"], "intel-cpu", "int8", calibration=calib, example_inputs=case["example"],
                         output_dir=work / f"{name}-int8", profile_runs=10, progress=args.progress, use_cache=False,
                         range_search=args.range_search, weight_rounding=args.weight_rounding, accept_inaccurate=True)
    t_edgec = time.perf_counter() - t0
    passes = {p["name"]: p.get("seconds") for p in int8.manifest["passes"]}
    shapes = {s["name"]: s["shape"] for s in fp32.manifest["inputs"]}
    t0 = time.perf_counter()
    nncf_model = nncf_quantize(onnx_path, calib, shapes)
    t_nncf = time.perf_counter() - t0
    compiled = {"fp32": ov_compile(str(fp32.output_dir / "model.xml")),
                "edgec int8": ov_compile(str(int8.output_dir / "model.xml")), "NNCF int8": ov_compile(nncf_model)}
    ref = ort_outputs(onnx_path, held)
    outs = {k: ov_outputs(c, held) for k, c in compiled.items()}
    per_round = interleaved_rounds({k: c.create_infer_request().infer for k, c in compiled.items()}, held[0],
                                   args.rounds, args.runs)
    kernels = {k: kernel_precisions(ov_compile(m, {**F32, "PERF_COUNT": True}), held[0]) for k, m in
               {"edgec int8": str(int8.output_dir / "model.xml"), "NNCF int8": nncf_model}.items()}
    return report(case, ref, outs, per_round, {"edgec int8": t_edgec, "NNCF int8": t_nncf}, passes, kernels)


def report(case: dict, ref: np.ndarray, outs: dict, per_round: dict, seconds: dict, passes: dict,
           kernels: dict) -> dict:
    truth, top_ref = case["labels"], ref.argmax(1)
    rows = {}
    print(f"{'variant':12} {'cos min':>8} {'cos mean':>9} {'agree %':>8} {'acc %':>7} {'+-se':>5} {'p50 ms':>7} "
          f"{'vs fp32':>8} {'vs NNCF':>8} {'quant s':>8}")
    for k, o in outs.items():
        c = cosines(o, ref)
        top = o.argmax(1)
        acc = float((top == truth).mean()) if truth is not None else float("nan")
        se = drop_standard_error(top_ref == truth, top == truth) if truth is not None else float("nan")
        row = {"cos_min": float(c.min()), "cos_mean": float(c.mean()), "agree": float((top == top_ref).mean()),
               "accuracy": acc, "drop_se_points": se, "p50_ms": float(np.median(per_round[k])),
               "vs_fp32": ratio(per_round, k, "fp32"), "vs_nncf": ratio(per_round, k, "NNCF int8"),
               "quant_seconds": seconds.get(k)}
        rows[k] = row
        print(f"{k:12} {row['cos_min']:8.4f} {row['cos_mean']:9.5f} {100 * row['agree']:8.2f} {100 * acc:7.2f} "
              f"{se:5.2f} {row['p50_ms']:7.3f} {row['vs_fp32'][0]:8.3f} {row['vs_nncf'][0]:8.3f} "
              f"{'' if seconds.get(k) is None else f'{seconds[k]:.1f}':>8}")
    if truth is not None:
        print(f"fp32 ORT accuracy {100 * (top_ref == truth).mean():.2f}% on {len(truth)} labelled images")
    a, b = (outs[k].argmax(1) for k in ("edgec int8", "NNCF int8"))
    for what, base in (("accuracy", truth), ("agreement", top_ref)):
        if base is not None:  # paired: the same images, so the standard error is that of the per-image difference
            gap = 100 * float((a == base).mean() - (b == base).mean())
            rows["edgec int8"][f"{what}_vs_nncf_points"] = (gap, drop_standard_error(b == base, a == base))
            print(f"edgec - NNCF {what}: {gap:+.2f} pt +- {drop_standard_error(b == base, a == base):.2f} (paired)")
    print(f"edgec passes (s): {json.dumps(passes)}")
    print(f"MatMul kernels: {json.dumps(kernels)}")
    return {"rows": rows, "passes": passes, "kernels": kernels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("bert", "vit", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--range-search", type=int, default=64)
    ap.add_argument("--weight-rounding", default="gptq")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--work", type=Path, help="keep the builds here (default: a temporary folder)")
    args = ap.parse_args()
    from edgec.isolation import telemetry_declined

    results = {}
    # NNCF and ov.convert_model, called directly here, report usage otherwise
    with telemetry_declined(), tempfile.TemporaryDirectory() as tmp:
        tmp = args.work or tmp
        cases = ([bert_case(args.labels)] if args.model in ("bert", "both") else []) + \
                ([vit_case()] if args.model in ("vit", "both") else [])
        for case in cases:
            results[case["name"]] = run_case(case, args, Path(tmp))
    print(f"\nlatency: median of {args.rounds} rounds x {args.runs} runs (variants taking turns run by run), batch 1; "
          "ratios: median over rounds of the round's ratio (IQR in --json)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
