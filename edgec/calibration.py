"""Sample data for calibration and accuracy checks: image folders, .npz / .npy files, Python iterables.

Image folders: every image under the folder (recursively, sorted), turned into model inputs by a recipe
(`edgec/recipes/*.toml`: colour, resize, crop, scale, mean/std, layout). Images in class subfolders
(`dog/1.jpg`, `cat/2.jpg`) are labelled by the sorted subfolder names, as torchvision's ImageFolder does.
Images are decoded one at a time when a sample is used, so memory stays bounded however many there are.

.npz layout: an array per model input (named after the input, or `x` for a single-input model), leading
dim = samples; optional `y` (or `labels`) with integer class labels. Keys prefixed `val_` (`val_x`,
`val_y`) form a held-out split that accuracy checks prefer over the calibration split.
"""
from __future__ import annotations

import tomllib
from collections.abc import Sequence as SequenceABC
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import ConfigError
from .device.tvm_runner import seeded_feeds
from .model import TensorSpec
from .shipped import shipped

_LABEL_KEYS = ("y", "labels")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
RECIPES_DIR = shipped("calibration")


@dataclass(frozen=True)
class Samples:
    """Model-ready feeds (one dict per inference) and labels per feed, if known."""

    feeds: Sequence[dict[str, np.ndarray]]
    labels: np.ndarray | None
    description: str

    def __len__(self) -> int:
        return len(self.feeds)

    def head(self, n: int) -> "Samples":
        """The first `n` samples (all of them when there are no more)."""
        if n >= len(self.feeds):
            return self
        return Samples(self.feeds[:n], None if self.labels is None else self.labels[:n],
                       f"the first {n} of {self.description}")


@dataclass(frozen=True)
class CalibrationSet:
    """Where samples come from. Cheap to construct; `load()` reads and checks them."""

    source: Any
    limit: int | None = None
    seed: int = 0
    recipe: str | None = None  # image folders only: a name in edgec/recipes or a .toml path; default "unit"

    def load(self, inputs: Sequence[TensorSpec], split: str = "calibration") -> Samples | None:
        """Samples for `split` ('calibration' or 'validation'); None if the source has no such split."""
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--calib-samples must be at least 1 (got {self.limit}).")
        if isinstance(self.source, (str, Path)) and _is_image_folder(Path(self.source)):
            if split != "calibration":
                return None
            return _image_samples(Path(self.source), inputs, load_recipe(self.recipe or "unit"), self.limit, self.seed)
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
        if len(a.shape) != len(spec.shape) or any(isinstance(w, int) and w != h for w, h in zip(want, a.shape[1:])):
            raise ConfigError(f"{where}: array '{spec.name}' has shape {list(a.shape)}; the model wants "
                              f"[N, {', '.join(map(str, want))}] for input '{spec.name}'.")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ConfigError(f"{where}: array '{spec.name}' contains NaN or Inf values. Clean the data first.")
        out[spec.name] = a.astype(np.dtype(spec.dtype)) if spec.dtype in ("float32", "float16", "int64", "int32",
                                                                          "uint8", "int8") else a
    return out


def synthetic_samples(inputs: Sequence[TensorSpec], count: int = 16, seed: int = 0) -> Samples:
    """Seeded inputs (tvm_runner.seeded_feeds: uniform [0, 1), zeros for integer inputs; dynamic dims 1), for
    checks when the user gave no data. Says so in its description."""
    specs = [{"name": s.name, "shape": [d if isinstance(d, int) else 1 for d in s.shape], "dtype": s.dtype}
             for s in inputs]
    feeds = [seeded_feeds(specs, seed + i) for i in range(count)]
    return Samples(feeds, None, f"{count} synthetic random samples (no data given: agreement on noise says "
                                "little about real accuracy; pass --calib)")


# --- image folders -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """How an image becomes a model input."""

    name: str
    description: str = ""
    color: str = "auto"          # "RGB", "L" (grey) or "auto" (from the input's channel count)
    resize: int | None = None    # shorter side; None: straight to the input's H x W
    crop: int | None = None      # centre crop (square); None: no crop
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"

    def apply(self, path: Path, spec: TensorSpec) -> np.ndarray:
        from PIL import Image

        channel_axis = 1 if self.layout == "NCHW" else 3
        if len(spec.shape) != 4:
            raise ConfigError(f"Image calibration needs a 4-D image input; '{spec.name}' is {list(spec.shape)}.")
        channels = spec.shape[channel_axis]
        height, width = (spec.shape[2], spec.shape[3]) if self.layout == "NCHW" else (spec.shape[1], spec.shape[2])
        mode = self.color if self.color != "auto" else ("L" if channels == 1 else "RGB")
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                if self.resize:
                    w, h = im.size
                    k = self.resize / min(w, h)
                    im = im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.BILINEAR)
                else:
                    im = im.resize((width, height), Image.BILINEAR)
                if self.crop:
                    w, h = im.size
                    left, top = (w - self.crop) // 2, (h - self.crop) // 2
                    im = im.crop((left, top, left + self.crop, top + self.crop))
                a = np.asarray(im, dtype=np.float32)
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, ValueError, DecompressionBombError...
            raise ConfigError(f"Could not read image '{path}': {e}. Remove it from the calibration folder.") from e
        a = a[..., None] if a.ndim == 2 else a
        a = (a / self.scale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        a = a.transpose(2, 0, 1) if self.layout == "NCHW" else a
        want = tuple(spec.shape[1:])
        if a.shape != want:
            raise ConfigError(f"Recipe '{self.name}' turns '{path.name}' into {list(a.shape)}, but input '{spec.name}' "
                              f"wants {list(want)}. Choose a recipe whose crop/resize/colour fit the model "
                              f"(--calib-recipe; recipes in {RECIPES_DIR}).")
        return a[None].astype(spec.dtype)


def load_recipe(name: str | Path) -> Recipe:
    path = Path(name)
    if path.suffix != ".toml":
        path = RECIPES_DIR / f"{name}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
        raise ConfigError(f"Calibration recipe '{name}' not found. Choose from: {', '.join(names)}, "
                          "or give a .toml path.")
    try:
        data = tomllib.loads(path.read_text())
        return Recipe(name=path.stem, description=data.get("description", ""), color=data.get("color", "auto"),
                      resize=data.get("resize"), crop=data.get("crop"), scale=float(data.get("scale", 255.0)),
                      mean=tuple(data.get("mean", (0.0,))), std=tuple(data.get("std", (1.0,))),
                      layout=data.get("layout", "NCHW"))
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as e:
        raise ConfigError(f"Calibration recipe '{path}' is not valid: {e}") from e


def recipe_fingerprint(name: str | Path | None) -> dict[str, Any] | None:
    """What a recipe does (its parsed fields), for the build cache key: an edited recipe file is a new key."""
    return None if name is None else asdict(load_recipe(name))


def _is_image_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in _IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file())


class _LazyFeeds(SequenceABC):
    """Feeds decoded on access: a calibration pass holds one image at a time."""

    def __init__(self, files: Sequence[Path], make: Callable[[Path], dict[str, np.ndarray]]):
        self.files, self.make = list(files), make

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return _LazyFeeds(self.files[i], self.make)
        return self.make(self.files[i])


def _image_samples(folder: Path, inputs: Sequence[TensorSpec], recipe: Recipe, limit: int | None,
                   seed: int) -> Samples:
    if len(inputs) != 1:
        raise ConfigError(f"An image folder can calibrate a single-input model; this one has {len(inputs)} inputs. "
                          "Use an .npz with one array per input.")
    spec = inputs[0]
    if isinstance(spec.shape[0], int) and spec.shape[0] != 1:
        raise ConfigError(f"Image folders feed batch 1; input '{spec.name}' has batch {spec.shape[0]}. "
                          f"Compile with --input-shape {spec.name}=1x... or use an .npz.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if limit is not None and limit < len(files):
        files = [files[i] for i in np.sort(np.random.default_rng(seed).choice(len(files), limit, replace=False))]
    classes = sorted({p.relative_to(folder).parts[0] for p in files if len(p.relative_to(folder).parts) > 1})
    labelled = bool(classes) and all(len(p.relative_to(folder).parts) > 1 for p in files)
    labels = np.array([classes.index(p.relative_to(folder).parts[0]) for p in files]) if labelled else None
    feeds = _LazyFeeds(files, lambda p: {spec.name: recipe.apply(p, spec)})
    feeds[0]  # decode one now: a recipe that does not fit the model fails before any work is done
    what = f"{len(files)} images from {folder} (recipe '{recipe.name}'" + (f", {len(classes)} classes)" if labelled else ")")
    return Samples(feeds, labels, what)
