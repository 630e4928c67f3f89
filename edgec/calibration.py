"""Sample data for calibration and accuracy checks: image folders, .npz / .npy files, Python iterables.

Image folders: every image under the folder (recursively, sorted), turned into model inputs by a recipe
(`edgec/recipes/*.toml`: colour, resize, crop, scale, mean/std, layout). Images in class subfolders
(`dog/1.jpg`, `cat/2.jpg`) are labelled by the sorted subfolder names, as torchvision's ImageFolder does.
Images are decoded one at a time when a sample is used, so memory stays bounded however many there are.

.npz / Python data: an array per model input, named after the input (`x` for a model with one data input),
read in one of two layouts, decided per input from its shape and said in the samples' description:
- a leading sample axis: `[N, *input_shape]` (a state input [2, 1, 128] as [N, 2, 1, 128]; a scalar as [N]);
- rows along the batch dim (the single-input layout): `[N x batch, *input_shape[1:]]`.
An array holding one sample (or a 0-d scalar) beside inputs with N is given once: the same for every sample.
Recurrent state inputs with no array are zeros (`fixed_inputs`); `--input-value NAME=VALUE` folds a constant
input into the model (frontend), so it needs no array either.
Optional `y` (or `labels`): integer class labels, one per row. Keys prefixed `val_` (`val_x`, `val_y`) form a
held-out split that accuracy checks prefer over the calibration split. In Python, a list of feed dicts
({input name: array of the input's shape}) reads as the leading-sample-axis layout.
"""
from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence as SequenceABC
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import labels as labels_io
from .errors import ConfigError
from .device.tvm_runner import seeded_feeds
from .model import Model, TensorSpec
from .shipped import shipped

_LABEL_KEYS = ("y", "labels")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
RECIPES_DIR = shipped("calibration")


@dataclass(frozen=True)
class Samples:
    """Model-ready feeds (one dict per inference) and labels per feed, if known."""

    feeds: Sequence[dict[str, np.ndarray]]
    labels: np.ndarray | list[np.ndarray] | None  # class ids, or per sample [k, 5] boxes (class, x1, y1, x2, y2)
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
    labels: str | None = None  # image folders only: a COCO json of boxes (YOLO txt files are found by themselves)

    def load(self, inputs: Sequence[TensorSpec], split: str = "calibration",
             fixed: Mapping[str, np.ndarray] | None = None) -> Samples | None:
        """Samples for `split` ('calibration' or 'validation'); None if the source has no such split. `fixed`
        (fixed_inputs()) fills inputs the data leaves out: zero recurrent state."""
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--calib-samples must be at least 1 (got {self.limit}).")
        fixed = dict(fixed or {})
        if isinstance(self.source, (str, Path)) and _is_image_folder(Path(self.source)):
            if split != "calibration":
                return None
            return _image_samples(Path(self.source), inputs, load_recipe(self.recipe or "unit"), self.limit,
                                  self.seed, fixed, self.labels)
        if self.labels is not None:
            raise ConfigError(f"--labels {self.labels}: a COCO json labels an image folder; in .npz or Python data "
                              "give boxes as 'boxes' / 'val_boxes' (rows: sample, class, x1, y1, x2, y2).")
        arrays, where = _read_source(self.source)
        prefix = "val_" if split == "validation" else ""
        chosen = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if split == "calibration":
            chosen = {k: v for k, v in chosen.items() if not k.startswith("val_")}
        label_key = next((k for k in _LABEL_KEYS if k in chosen), None)
        labels = chosen.pop(label_key) if label_key else None
        boxes = chosen.pop("boxes", None)
        if not chosen:
            return None
        read = read_arrays(chosen, inputs, where, fixed)
        order = np.arange(read.count)
        if self.limit is not None and self.limit < read.count:
            order = np.sort(np.random.default_rng(self.seed).choice(read.count, self.limit, replace=False))
        feeds = _LayoutFeeds(read, order)
        if labels is not None:
            rows = read.rows_per_sample
            labels = np.asarray(labels).reshape(-1)
            if len(labels) < read.count * rows:
                raise ConfigError(f"{where}: {len(labels)} labels for {read.count} samples of {rows} row(s) each; "
                                  "give one label per row.")
            labels = labels[: read.count * rows].reshape(read.count, rows)[order].reshape(-1)
        if boxes is not None:
            if labels is not None:
                raise ConfigError(f"{where}: give class labels ('{label_key}') or boxes ('boxes'), not both.")
            per_sample = _boxes_per_sample(boxes, read.count, where)
            labels = [per_sample[i] for i in order]
        return Samples(feeds, labels, f"{len(feeds)} {split} samples from {where} ({read.layout})")


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
            return {k: _joined(np.concatenate, [p[k] for p in parts], k, str(path)) for k in keys}, str(path)
        return _read_file(path), str(path)
    if isinstance(source, np.ndarray):
        return {"x": source}, "the given array"
    if isinstance(source, dict):
        return {k: _box_rows(v) if k.endswith("boxes") else np.asarray(v) for k, v in source.items()}, "the given dict"
    if isinstance(source, Iterable):
        items = list(source)
        if not items:
            raise ConfigError("The calibration iterable is empty.")
        where = "the given iterable"
        if all(isinstance(i, dict) for i in items):
            if any(set(i) != set(items[0]) for i in items):
                raise ConfigError(f"The feed dicts of {where} name different inputs; give every dict the same keys.")
            return {k: _joined(np.stack, [np.asarray(i[k]) for i in items], k, where) for k in items[0]}, where
        return {"x": _joined(np.stack, [np.asarray(i) for i in items], "x", where)}, where
    raise ConfigError(f"Can't read calibration data from a {type(source).__name__}: give a .npz/.npy path, "
                      "a folder of them, an array or an iterable of arrays.")


def _box_rows(boxes: Any) -> np.ndarray:
    """Detection labels as one [M, 6] array (sample, class, x1, y1, x2, y2) from that array or from a list of
    per-sample [k, 5] arrays."""
    if isinstance(boxes, np.ndarray):
        return boxes
    try:
        per_sample = [np.asarray(b, np.float64).reshape(-1, 5) for b in boxes]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"boxes: give one [k, 5] array (class, x1, y1, x2, y2 in input pixels) per sample ({e}).") from e
    return np.concatenate([np.zeros((0, 6))] + [np.column_stack([np.full(len(b), i), b])
                                                for i, b in enumerate(per_sample)])


def _boxes_per_sample(rows: np.ndarray, count: int, where: str) -> list[np.ndarray]:
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2 or rows.shape[1] != 6 or (len(rows) and (rows[:, 0].min() < 0 or rows[:, 0].max() >= count)):
        raise ConfigError(f"{where}: 'boxes' must be [M, 6] rows (sample index < {count}, class, x1, y1, x2, y2 in "
                          f"input pixels); got {list(rows.shape)}.")
    index = rows[:, 0].astype(np.int64)
    return [rows[index == i, 1:] for i in range(count)]


def _joined(join: Callable[[list[np.ndarray]], np.ndarray], parts: list[np.ndarray], key: str,
            where: str) -> np.ndarray:
    try:
        return join(parts)
    except ValueError as e:
        shapes = sorted({str(list(p.shape)) for p in parts})
        raise ConfigError(f"{where}: the '{key}' arrays have different shapes ({', '.join(shapes[:4])}); give every "
                          "sample the same shape.") from e


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


_LAYOUT_NAMES = {"samples": "a leading sample axis per input: [N, *input_shape], scalars [N]",
                 "rows": "rows along the model's batch dim: [N x batch, ...]",
                 "constant": "given once for every sample"}
_STATE_NAME = re.compile(r"(^|[_./])(state|states|h0|c0|hx|cx|hidden|past|cache|memory|mem)($|[_./\d])",
                         re.IGNORECASE)


@dataclass(frozen=True)
class InputArrays:
    """Arrays read for a model's inputs, and how each is cut into samples: per input "samples" (a[i]),
    "rows" (a[i*batch:(i+1)*batch], the layout of single-input files from before) or "constant" (a itself)."""

    arrays: Mapping[str, np.ndarray]
    kinds: Mapping[str, str]
    count: int
    rows_per_sample: int
    layout: str  # what the file was read as, for the samples' description

    def feed(self, i: int) -> dict[str, np.ndarray]:
        out = {}
        for name, a in self.arrays.items():
            kind = self.kinds[name]
            if kind == "samples":
                out[name] = a[i]
            elif kind == "rows":
                rows = len(a) // self.count
                out[name] = a[i * rows:(i + 1) * rows]
            else:
                out[name] = a
        return out


class _LayoutFeeds(SequenceABC):
    """The feeds of an InputArrays, cut on access (the arrays are not copied per sample)."""

    def __init__(self, read: InputArrays, order: np.ndarray):
        self.read, self.order = read, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return _LayoutFeeds(self.read, self.order[i])
        return self.read.feed(int(self.order[i]))


def read_arrays(arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], where: str,
                fixed: Mapping[str, np.ndarray] | None = None) -> InputArrays:
    """Match named arrays to the model's inputs and decide each one's layout (InputArrays); inputs without an
    array take their `fixed` value. ConfigError naming the input, its shape and the layouts it accepts."""
    fixed = dict(fixed or {})
    data_inputs = [s for s in inputs if s.name in arrays or s.name not in fixed]
    if len(data_inputs) == 1 and data_inputs[0].name not in arrays and "x" in arrays:
        arrays = {data_inputs[0].name: arrays["x"]}
    missing = [s.name for s in data_inputs if s.name not in arrays]
    if missing:
        raise ConfigError(f"{where} has no array for input(s) {', '.join(missing)} (it has {', '.join(arrays)}). "
                          "Name arrays after the model's inputs ('x' for a single data input), or give a constant "
                          "with --input-value NAME=VALUE (input_values= in Python).")
    out: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    counts: dict[str, int] = {}
    for spec in data_inputs:
        a = _as_input_dtype(np.asarray(arrays[spec.name]), spec, where)
        kinds[spec.name], counts[spec.name], out[spec.name] = _layout_of(a, spec, where)
    count = _sample_count(counts, kinds, out, where)
    notes = sorted({_LAYOUT_NAMES[k] for k in kinds.values()})
    for name, value in fixed.items():
        if name not in out:
            out[name], kinds[name] = value, "constant"
            notes.append(f"'{name}' zeros (recurrent state: give an array named after it to set it)")
    first = data_inputs[0] if data_inputs else inputs[0]
    rows = first.shape[0] if first.shape and isinstance(first.shape[0], int) else 1
    return InputArrays(out, kinds, count, rows, "; ".join(notes))


def _layout_of(a: np.ndarray, spec: TensorSpec, where: str) -> tuple[str, int, np.ndarray]:
    """(kind, sample count, array) for one input's array."""
    shape = tuple(spec.shape)
    if a.ndim == len(shape) + 1 and _fits(a.shape[1:], shape):
        return "samples", a.shape[0], a
    if shape and a.ndim == len(shape) and _fits(a.shape[1:], shape[1:]):
        batch = shape[0] if isinstance(shape[0], int) else 1
        if a.shape[0] % batch:
            raise ConfigError(f"{where}: array '{spec.name}' has {a.shape[0]} rows, not a multiple of the model's "
                              f"batch {batch}.")
        return "rows", a.shape[0] // batch, a
    if shape and a.ndim == len(shape) - 1 and _fits(a.shape, shape[1:]):
        return "rows", 1, a[None]  # one sample without its batch dim
    if a.ndim == 0 and not shape:
        return "constant", 0, a
    want = ", ".join(map(str, shape))
    raise ConfigError(f"{where}: array '{spec.name}' has shape {list(a.shape)}; input '{spec.name}' is [{want}]: "
                      f"give [N, {want}] (a leading sample axis)" + (f" or [N x {shape[0]}, {', '.join(map(str, shape[1:]))}]"
                                                                     if shape else "") + ".")


def _sample_count(counts: Mapping[str, int], kinds: dict[str, str], arrays: dict[str, np.ndarray],
                  where: str) -> int:
    """The common sample count. An array holding one sample beside inputs with more becomes a constant (in
    place in `kinds` and `arrays`)."""
    empty = [n for n, c in counts.items() if kinds[n] != "constant" and c == 0]
    if empty:
        raise ConfigError(f"{where}: the array for input '{empty[0]}' holds no samples (fewer than one batch).")
    many = {n: c for n, c in counts.items() if kinds[n] != "constant" and c > 1}
    if len(set(many.values())) > 1:
        listed = ", ".join(f"'{n}' {c}" for n, c in many.items())
        raise ConfigError(f"{where}: the inputs' arrays hold different numbers of samples ({listed}); give every "
                          "input the same count, or one sample of an input that is the same for all.")
    for name in counts:
        if many and name not in many and kinds[name] != "constant":
            arrays[name] = arrays[name][0] if kinds[name] == "samples" else arrays[name]
            kinds[name] = "constant"
    if many:
        return next(iter(many.values()))
    if any(k != "constant" for k in kinds.values()):
        return 1
    raise ConfigError(f"{where}: every array is a single value; give at least one input with a leading sample "
                      "axis.")


def _fits(have: Sequence[int], want: Sequence[int | str]) -> bool:
    return len(have) == len(want) and all(not isinstance(w, int) or w == h for h, w in zip(have, want))


def _as_input_dtype(a: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if a.dtype == want:
        pass
    elif want.kind in "iub" and a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        raise ConfigError(f"{where}: input '{spec.name}' is {spec.dtype}, but its array holds fractional "
                          f"{a.dtype} values; give integers.")
    elif a.dtype.kind not in "biuf":
        raise ConfigError(f"{where}: array '{spec.name}' is {a.dtype}; input '{spec.name}' wants {spec.dtype}.")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ConfigError(f"{where}: array '{spec.name}' contains NaN or Inf values. Clean the data first.")
    return a if a.dtype == want else a.astype(want)


def fixed_inputs(model: Model) -> dict[str, np.ndarray]:
    """Inputs that need no data: recurrent state, zero (an input named like state, h0, c0, hidden, past or cache,
    or any input but the first that has an output of its shape and type, as an LSTM's state has). Data given
    for one wins. (Constants given with --input-value are no inputs any more: frontend folds them in.)"""
    outputs = {(tuple(o.shape), o.dtype) for o in model.outputs}
    fixed = {}
    for i, spec in enumerate(model.inputs):
        if _STATE_NAME.search(spec.name) or (i > 0 and (tuple(spec.shape), spec.dtype) in outputs):
            fixed[spec.name] = np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], dtype=spec.dtype)
    return fixed


def synthetic_samples(inputs: Sequence[TensorSpec], count: int = 16, seed: int = 0,
                      fixed: Mapping[str, np.ndarray] | None = None) -> Samples:
    """Seeded inputs (tvm_runner.seeded_feeds: uniform [0, 1), zeros for integer inputs; dynamic dims 1), for
    checks when the user gave no data; `fixed` inputs (fixed_inputs()) keep their value. Says so in its
    description."""
    fixed = dict(fixed or {})
    specs = [{"name": s.name, "shape": [d if isinstance(d, int) else 1 for d in s.shape], "dtype": s.dtype}
             for s in inputs]
    feeds = [{**seeded_feeds(specs, seed + i), **fixed} for i in range(count)]
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

    def box_placement(self, spec: TensorSpec) -> Callable[[np.ndarray, tuple[int, int]], np.ndarray]:
        """Maps x1y1x2y2 boxes in the pixels of an image of (width, height) onto the input, as `apply` maps the
        image (resize, centre crop), clipped to the input."""
        height, width = (spec.shape[2], spec.shape[3]) if self.layout == "NCHW" else (spec.shape[1], spec.shape[2])

        def place(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
            w, h = size
            if self.resize:
                k = self.resize / min(w, h)
                new_w, new_h = max(1, round(w * k)), max(1, round(h * k))
            else:
                new_w, new_h = width, height
            left, top = ((new_w - self.crop) // 2, (new_h - self.crop) // 2) if self.crop else (0, 0)
            scale = np.array([new_w / w, new_h / h] * 2)
            moved = boxes * scale - np.array([left, top] * 2)
            return np.clip(moved, 0, np.array([width, height] * 2, np.float64))

        return place


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
                   seed: int, fixed: Mapping[str, np.ndarray], coco: str | None = None) -> Samples:
    images = [s for s in inputs if s.name not in fixed]
    if len(images) != 1:
        raise ConfigError(f"An image folder feeds one input; this model has {len(images)} inputs without a fixed "
                          f"value ({', '.join(s.name for s in images)}). Use an .npz with one array per input, or "
                          "give the others with --input-value NAME=VALUE.")
    spec = images[0]
    if isinstance(spec.shape[0], int) and spec.shape[0] != 1:
        raise ConfigError(f"Image folders feed batch 1; input '{spec.name}' has batch {spec.shape[0]}. "
                          f"Compile with --input-shape {spec.name}=1x... or use an .npz.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if limit is not None and limit < len(files):
        files = [files[i] for i in np.sort(np.random.default_rng(seed).choice(len(files), limit, replace=False))]
    classes = sorted({p.relative_to(folder).parts[0] for p in files if len(p.relative_to(folder).parts) > 1})
    labelled = bool(classes) and all(len(p.relative_to(folder).parts) > 1 for p in files)
    labels: Any = np.array([classes.index(p.relative_to(folder).parts[0]) for p in files]) if labelled else None
    feeds = _LazyFeeds(files, lambda p: {spec.name: recipe.apply(p, spec), **fixed})
    feeds[0]  # decode one now: a recipe that does not fit the model fails before any work is done
    what = f"{len(files)} images from {folder} (recipe '{recipe.name}'" + (f", {len(classes)} classes)" if labelled else ")")
    if coco is not None:
        labels = labels_io.coco_boxes(Path(coco), files, recipe.box_placement(spec))
        what = what[:-1] + f", boxes from {coco})"
    elif labels_io.has_yolo_labels(files):
        labels = labels_io.yolo_boxes(files, recipe.box_placement(spec))
        what = what[:-1] + ", boxes from YOLO txt files)"
    return Samples(feeds, labels, what)
