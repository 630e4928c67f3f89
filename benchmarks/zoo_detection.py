"""Labelled click-captchas for ddddocr's detector, its head decoded as ddddocr does it, and mAP@0.5 (issue #16).

* :func:`labelled_ddddocr_det` draws the same captchas as the zoo's ``_ddddocr_det`` sampler (same random
  stream, same pixels) and also returns each drawn character's box: the glyph's ``textbbox`` scaled into the
  416x416 letterboxed input, as float32 ``[k, 5]`` rows ``(class 0, x1, y1, x2, y2)``.
* :func:`write_yolo_labels` writes those boxes as YOLO txt (``class cx cy w h``, normalised by 416).
* :func:`decode_ddddocr` turns the head's ``[1, 3549, 6]`` output into detections the way ddddocr 1.6.1's
  ``DetectionEngine.get_bbox`` does (grid + stride for xy, exp * stride for wh, obj * cls scores, NMS 0.45),
  but in input pixels (no rescale to the original image) and with a low score threshold (0.01) so that
  average precision sees the whole precision-recall curve.
* :func:`average_precision` / :func:`map50`: VOC-style all-point AP at IoU 0.5, mean over the classes present
  in the ground truth.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import ImageDraw

from benchmarks import zoo_data as data
from benchmarks import zoo_models
from benchmarks.zoo_models import ZooModel

__all__ = ["labelled_ddddocr_det", "write_yolo_labels", "decode_ddddocr", "average_precision", "map50",
           "Detections"]

STRIDES = (8, 16, 32)
CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
Detections = np.ndarray  # float32 [m, 6]: x1, y1, x2, y2, score, class


def labelled_ddddocr_det(m: ZooModel, rng: np.random.Generator, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One captcha as ``_ddddocr_det`` draws it (identical random draws, so identical pixels) and its boxes:
    float32 [k, 5] = (0, x1, y1, x2, y2) in the letterboxed 416x416 input's pixels."""
    _, _, H, W = m.input_shapes["images"]
    w, h = int(rng.integers(280, 420)), int(rng.integers(160, 360))
    img = zoo_models._captcha_background(rng, split, w, h)
    draw = ImageDraw.Draw(img)
    boxes = []
    for _ in range(int(rng.integers(3, 7))):
        ch = CHARS[int(rng.integers(34))]
        size = int(rng.integers(28, 56))
        xy = (int(rng.integers(0, w - size)), int(rng.integers(0, h - size)))
        font = data.ImageFont.load_default(size=size)
        draw.text(xy, ch, font=font, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        boxes.append(draw.textbbox(xy, ch, font=font))
    arr = np.asarray(img)
    r = min(H / h, W / w)
    canvas = np.full((H, W, 3), 114, np.uint8)
    canvas[:int(h * r), :int(w * r)] = zoo_models._resize(arr, int(w * r), int(h * r))
    feed = {"images": np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32)}
    truth = np.array([[0, *(np.asarray(b, np.float64) * r)] for b in boxes], np.float32).reshape(-1, 5)
    return feed, truth


def labelled_samples(m: ZooModel, count: int, seed: int = 0, split: str = "val") -> tuple[list[dict], list[np.ndarray]]:
    """``count`` labelled captchas, drawn from the same random stream as ``m.samples(count, seed, split)``."""
    import zlib
    rng = np.random.default_rng([seed, data.SPLITS.index(split), zlib.crc32(m.name.encode())])
    pairs = [labelled_ddddocr_det(m, rng, split) for _ in range(count)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def write_yolo_labels(truth: Sequence[np.ndarray], folder: Path, size: int = 416) -> list[Path]:
    """One ``NNNNN.txt`` per sample in ``folder``: lines ``class cx cy w h`` normalised by ``size``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, t in enumerate(truth):
        lines = [f"{int(c)} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
                 f"{(y2 - y1) / size:.6f}" for c, x1, y1, x2, y2 in t]
        p = folder / f"{i:05d}.txt"
        p.write_text("\n".join(lines) + "\n")
        paths.append(p)
    return paths


def _grids(size: int = 416) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for s in STRIDES:
        n = size // s
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


_GRID, _STRIDE = _grids()


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Greedy single-class NMS, as ddddocr's (the +1 pixel convention included); indices kept, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        order = order[1:][inter / (areas[i] + areas[order[1:]] - inter) <= thr]
    return keep


def decode_ddddocr(raw: np.ndarray, score_thr: float = 0.01, nms_thr: float = 0.45) -> Detections:
    """One sample's head output ([1, 3549, 6] or [3549, 6]) -> detections [m, 6] (x1, y1, x2, y2, score, class)
    in input pixels, best first."""
    p = np.asarray(raw, np.float32).reshape(-1, 6)
    xy = (p[:, :2] + _GRID) * _STRIDE
    wh = np.exp(np.minimum(p[:, 2:4], 20.0)) * _STRIDE
    scores = p[:, 4:5] * p[:, 5:]
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    keep = best > score_thr
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[keep]
    best, cls = best[keep], cls[keep]
    if not len(best):
        return np.zeros((0, 6), np.float32)
    k = nms(boxes, best, nms_thr)
    return np.concatenate([boxes[k], best[k, None], cls[k, None]], 1).astype(np.float32)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    w = np.maximum(0.0, np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]))
    h = np.maximum(0.0, np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]))
    inter = w * h
    area = lambda b: np.maximum(0.0, b[..., 2] - b[..., 0]) * np.maximum(0.0, b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(others) - inter, 1e-9)


def average_precision(dets: Sequence[Detections], truth: Sequence[np.ndarray], cls: int, iou: float = 0.5) -> float:
    """All-point AP (VOC 2010+) of class ``cls`` over images: detections sorted by score over all images, each
    matched greedily to the unmatched truth box of highest IoU >= ``iou`` in its image. NaN if no truth box."""
    gts = [t[t[:, 0] == cls, 1:5] for t in truth]
    n_gt = sum(len(g) for g in gts)
    if n_gt == 0:
        return float("nan")
    rows = [(d[4], i, d[:4]) for i, ds in enumerate(dets) for d in ds if int(d[5]) == cls]
    rows.sort(key=lambda r: -r[0])
    used = [np.zeros(len(g), bool) for g in gts]
    tp = np.zeros(len(rows))
    for j, (_, i, box) in enumerate(rows):
        if len(gts[i]):
            ious = np.where(used[i], -1.0, _iou(box, gts[i]))
            k = int(ious.argmax())
            if ious[k] >= iou:
                used[i][k] = True
                tp[j] = 1
    if not len(rows):
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(rows) + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


def map50(dets: Sequence[Detections], truth: Sequence[np.ndarray]) -> float:
    """mAP@0.5 in points (0-100): mean AP over the classes present in ``truth``."""
    classes = sorted({int(c) for t in truth for c in t[:, 0]})
    aps = [average_precision(dets, truth, c) for c in classes]
    return 100.0 * float(np.mean(aps)) if aps else float("nan")


def recall_at(dets: Sequence[Detections], truth: Sequence[np.ndarray], score_thr: float = 0.1) -> float:
    """Share (%) of truth boxes matched at IoU 0.5 by a detection scoring above ``score_thr`` (ddddocr's own
    threshold): how many characters a user of ddddocr gets."""
    hit = total = 0
    for ds, t in zip(dets, truth):
        ds = ds[ds[:, 4] > score_thr]
        total += len(t)
        for box in t[:, 1:5]:
            hit += bool(len(ds)) and bool((_iou(box, ds[:, :4]) >= 0.5).any())
    return 100.0 * hit / max(total, 1)


def write_dataset(folder: Path, count: int, split: str = "val", seed: int = 0) -> Path:
    """``count`` labelled captchas for the CLI path: ``images/NNNNN.png`` (the letterboxed 416x416 input, RGB),
    ``labels/NNNNN.txt`` (YOLO) and ``samples.npz`` (``images`` [N, 1, 3, 416, 416] float32 BGR 0..255 as the
    model reads it, ``boxes`` [sum k, 6] = sample index, class, x1, y1, x2, y2 in input pixels)."""
    from PIL import Image
    m = zoo_models.get("ddddocr-det")
    feeds, truth = labelled_samples(m, count, seed, split)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(feeds):
        rgb = f["images"][0].transpose(1, 2, 0)[..., ::-1].astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(rgb)).save(folder / "images" / f"{i:05d}.png")
    write_yolo_labels(truth, folder / "labels")
    boxes = np.concatenate([np.concatenate([np.full((len(t), 1), i, np.float32), t], 1) for i, t in enumerate(truth)])
    np.savez(folder / "samples.npz", images=np.stack([f["images"] for f in feeds]), boxes=boxes)
    return folder


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="Write labelled ddddocr-det captchas (PNG + YOLO txt + npz).")
    p.add_argument("folder", type=Path)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--split", default="val", choices=data.SPLITS)
    a = p.parse_args()
    print(write_dataset(a.folder, a.count, a.split))
