"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (idx files, gzip)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_split(split: str, root: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N,1,28,28], labels uint8 [N]) for 'train' or 't10k'."""
    images = root / f"{split}-images-idx3-ubyte.gz"
    if not images.exists():
        raise SystemExit(f"{images} not found: apt-get install dataset-fashion-mnist")
    x = _idx(images, 16).reshape(-1, 1, 28, 28)
    y = _idx(root / f"{split}-labels-idx1-ubyte.gz", 8)
    return x, y
