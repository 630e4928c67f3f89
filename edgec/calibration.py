"""Sample data for calibration and accuracy checks: .npz / .npy files, folders of them, Python iterables.

.npz layout: an array per model input (named after the input, or `x` for a single-input model), leading
dim = samples; optional `y` (or `labels`) with integer class labels. Keys prefixed `val_` (`val_x`,
`val_y`) form a held-out split that accuracy checks prefer over the calibration split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import ConfigError
from .model import TensorSpec

_LABEL_KEYS = ("y", "labels")


@dataclass(frozen=True)
class Samples:
    """Model-ready feeds (one dict per inference) and labels per feed, if known."""

    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    description: str

    def __len__(self) -> int:
        return len(self.feeds)


@dataclass(frozen=True)
class CalibrationSet:
    """Where samples come from. Cheap to construct; `load()` reads and checks them."""

    source: Any
    limit: int | None = None
    seed: int = 0

    def load(self, inputs: Sequence[TensorSpec], split: str = "calibration") -> Samples | None:
        """Samples for `split` ('calibration' or 'validation'); None if the source has no such split."""
        arrays, where = _read_source(self.source)
        prefix = "val_" if split == "validation" else ""
        chosen = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if split == "calibration":
            chosen = {k: v for k, v in chosen.items() if not k.startswith("val_")}
        if not chosen:
            return None
        label_key = next((k for k in _LABEL_KEYS if k in chosen), None)
        labels = chosen.pop(label_key) if label_key else None
        if not chosen:
            return None
        per_input = _match_inputs(chosen, inputs, where)
        n = min(len(a) for a in per_input.values())
        batch = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else 1
        count = n // batch
        if count == 0:
            raise ConfigError(f"{where}: {n} samples, fewer than one batch of {batch}.")
        order = np.arange(count)
        if self.limit is not None and self.limit < count:
            order = np.sort(np.random.default_rng(self.seed).choice(count, self.limit, replace=False))
        feeds = [{name: a[i * batch:(i + 1) * batch] for name, a in per_input.items()} for i in order]
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)[: count * batch].reshape(count, batch)[order].reshape(-1)
        return Samples(feeds, labels, f"{len(feeds)} {split} samples from {where}")


def _read_source(source: Any) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"Calibration data '{path}' does not exist.")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
            if not files:
                raise ConfigError(f"Calibration folder '{path}' holds no .npy/.npz files.")
            parts = [_read_file(p) for p in files]
            keys = set(parts[0])
            if any(set(p) != keys for p in parts):
                raise ConfigError(f"Files in '{path}' hold different arrays; give every file the same keys.")
            return {k: np.concatenate([p[k] for p in parts]) for k in keys}, str(path)
        return _read_file(path), str(path)
    if isinstance(source, np.ndarray):
        return {"x": source}, "the given array"
    if isinstance(source, dict):
        return {k: np.asarray(v) for k, v in source.items()}, "the given dict"
    if isinstance(source, Iterable):
        items = list(source)
        if not items:
            raise ConfigError("The calibration iterable is empty.")
        if all(isinstance(i, dict) for i in items):
            return {k: np.stack([np.asarray(i[k]) for i in items]) for k in items[0]}, "the given iterable"
        return {"x": np.stack([np.asarray(i) for i in items])}, "the given iterable"
    raise ConfigError(f"Can't read calibration data from a {type(source).__name__}: give a .npz/.npy path, "
                      "a folder of them, an array or an iterable of arrays.")


def _read_file(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
    except (ValueError, OSError, EOFError) as e:
        raise ConfigError(f"Could not read calibration file '{path}': {e}. Save it with numpy (no pickles).") from e
    raise ConfigError(f"Calibration file '{path}' is not .npz or .npy.")


def _match_inputs(arrays: dict[str, np.ndarray], inputs: Sequence[TensorSpec], where: str) -> dict[str, np.ndarray]:
    if len(inputs) == 1 and inputs[0].name not in arrays and "x" in arrays:
        arrays = {inputs[0].name: arrays["x"]}
    missing = [s.name for s in inputs if s.name not in arrays]
    if missing:
        raise ConfigError(f"{where} has no array for input(s) {', '.join(missing)} (it has {', '.join(arrays)}). "
                          "Name arrays after the model's inputs, or 'x' for a single-input model.")
    out = {}
    for spec in inputs:
        a = arrays[spec.name]
        want = tuple(spec.shape[1:])
        if a.shape == want:
            a = a[None]  # a single sample without its batch dim
        if tuple(a.shape[1:]) != want:
            raise ConfigError(f"{where}: array '{spec.name}' has shape {list(a.shape)}; the model wants "
                              f"[N, {', '.join(map(str, want))}] for input '{spec.name}'.")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ConfigError(f"{where}: array '{spec.name}' contains NaN or Inf values. Clean the data first.")
        out[spec.name] = a.astype(np.dtype(spec.dtype)) if spec.dtype in ("float32", "float16", "int64", "int32",
                                                                          "uint8", "int8") else a
    return out


def synthetic_samples(inputs: Sequence[TensorSpec], count: int = 16, seed: int = 0) -> Samples:
    """Seeded uniform [0, 1) inputs, for checks when the user gave no data. Says so in its description."""
    rng = np.random.default_rng(seed)
    feeds = [{s.name: rng.random(s.shape, dtype=np.float32).astype(s.dtype) for s in inputs} for _ in range(count)]
    return Samples(feeds, None, f"{count} synthetic random samples (no data given: agreement on noise says "
                                "little about real accuracy; pass --calib)")
