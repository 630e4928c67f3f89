"""Detection labels for image folders, as boxes in model-input pixels: one [k, 5] array (class, x1, y1, x2, y2)
per image, k = 0 where nothing is labelled.

- YOLO txt (Ultralytics): `<stem>.txt` beside each image, or in the `labels` folder twin of an `images` folder
  (`data/images/a.jpg` -> `data/labels/a.txt`); a line per box: `class cx cy w h`, normalised to the image.
- COCO json (`--labels instances.json`): `images[].file_name` matched to the image's name, `annotations[].bbox`
  [x, y, w, h] in image pixels, `category_id` as the class.

Boxes follow the image through the calibration recipe (resize, centre crop) onto the model's input, and are
clipped to it; a box the crop removes is dropped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import ConfigError

# maps image-pixel boxes [k, 4] (x1, y1, x2, y2) of an image of (width, height) onto the model input
Placement = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


def yolo_file(image: Path) -> Path | None:
    """The YOLO txt of `image`, beside it or in the `labels` twin of its `images` folder; None if neither."""
    beside = image.with_suffix(".txt")
    if beside.is_file():
        return beside
    parts = list(image.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        twin = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
        if twin.is_file():
            return twin
    return None


def has_yolo_labels(images: Sequence[Path]) -> bool:
    return any(yolo_file(p) is not None for p in images)


def _read_yolo(path: Path) -> np.ndarray:
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        table = np.asarray([[float(v) for v in r[:5]] for r in rows], np.float64).reshape(-1, 5)
    except ValueError as e:
        raise ConfigError(f"{path}: not a YOLO label file ({e}); each line must be 'class cx cy w h', "
                          "normalised to the image.") from e
    if any(len(r) < 5 for r in rows):
        raise ConfigError(f"{path}: a line has fewer than 5 numbers; each line must be 'class cx cy w h'.")
    return table


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, ValueError...
        raise ConfigError(f"Could not read image '{path}': {e}.") from e


def yolo_boxes(images: Sequence[Path], place: Placement) -> list[np.ndarray]:
    """Per image its YOLO boxes on the model input (an image without a txt has none)."""
    out = []
    for image in images:
        path = yolo_file(image)
        table = _read_yolo(path) if path is not None else np.zeros((0, 5))
        w, h = _image_size(image)
        cx, cy, bw, bh = (table[:, 1] * w, table[:, 2] * h, table[:, 3] * w, table[:, 4] * h)
        pixels = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        out.append(_kept(table[:, 0], place(pixels, (w, h))))
    return out


def coco_boxes(path: Path, images: Sequence[Path], place: Placement) -> list[np.ndarray]:
    """Per image its COCO boxes on the model input, matched by file name."""
    try:
        data = json.loads(Path(path).read_text())
        by_name = {Path(im["file_name"]).name: im for im in data["images"]}
        boxes: dict[int, list[list[float]]] = {}
        for a in data.get("annotations", []):
            if len(a["bbox"]) != 4:
                raise ValueError(f"annotation bbox {a['bbox']} is not [x, y, w, h]")
            boxes.setdefault(a["image_id"], []).append([float(a["category_id"]), *map(float, a["bbox"])])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"Could not read COCO labels from '{path}': {e}. Give a COCO instances json with "
                          "'images' (id, file_name, width, height) and 'annotations' (image_id, category_id, bbox).") from e
    missing = [p.name for p in images if p.name not in by_name]
    if missing:
        raise ConfigError(f"'{path}' has no entry for {len(missing)} calibration image(s) ({', '.join(missing[:3])}"
                          "...): label every image (an image with no box still needs its 'images' entry).")
    out = []
    for image in images:
        entry = by_name[image.name]
        table = np.asarray(boxes.get(entry["id"], []), np.float64).reshape(-1, 5)
        pixels = np.concatenate([table[:, 1:3], table[:, 1:3] + table[:, 3:5]], 1)
        size = (int(entry.get("width") or 0), int(entry.get("height") or 0))
        out.append(_kept(table[:, 0], place(pixels, size if all(size) else _image_size(image))))
    return out


def _kept(classes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[k, 5] rows of the boxes that keep some area on the input."""
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return np.concatenate([classes[keep, None], boxes[keep]], 1)
