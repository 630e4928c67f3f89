"""Realistic raw inputs for the model zoo, made offline: photos, rendered text, synthetic speech, file bytes.

Everything here is deterministic for a ``numpy.random.Generator`` and reads only pinned PyPI wheels from the
zoo's cache (see :mod:`benchmarks.zoo_models`), so two machines draw the same samples:

* photos: the ~25 pictures bundled in the scikit-image wheel (``skimage/data/*.png|jpg``), read with zipfile;
  the ``calib`` and ``val`` splits use disjoint photos;
* text lines and document pages rendered with Pillow's default (FreeType) font;
* speech-like audio (source-filter syllables: glottal pulses through vowel formants, fricatives, pauses,
  noise) and
  near-silence, at 16 kHz;
* bytes of real files (Python sources, PNGs, JSON, shared objects, ...) taken from the pinned wheels.

Images are returned as HxWx3 uint8 **RGB**; a model's own preprocessing (in ``zoo_models``) converts them.
"""
from __future__ import annotations

import functools
import io
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "SPLITS", "photos", "random_photo_crop", "render_line", "render_page", "speech_like", "silence",
    "audio_clip", "wheel_file_bytes", "TEXT_LINES",
]

SPLITS = ("calib", "val")

# Lines a document might hold: words, digits, punctuation, mixed case (the OCR models read Latin script too).
TEXT_LINES = (
    "Quarterly revenue increased by 12.4% to $3.2 million",
    "The quick brown fox jumps over the lazy dog",
    "Invoice No. 2024-00871  Due date: 15 March 2025",
    "Table 3: Latency (ms) of each backend at batch 1",
    "Figure 2. Accuracy versus model size on ImageNet",
    "Please return the signed form before Friday",
    "Total amount payable: 1,284.50 EUR",
    "Section 4.2 describes the calibration procedure",
    "Contact: support@example.com  Tel. +44 20 7946 0958",
    "Results were averaged over 5 independent runs",
    "Deployment on edge hardware requires int8 models",
    "Meeting notes - Tuesday 10:30 - Room B12",
    "Order #55821 shipped via express delivery",
    "All measurements are reported in millimetres",
    "Abstract: We present a compiler for small devices",
    "Chapter 7  Signals and Systems",
    "Temperature 23.5 C   Humidity 41 %",
    "Page 12 of 48",
    "Name: Jane Doe   Date of birth: 04/07/1990",
    "WARNING: do not open the cover while powered",
)


# ----------------------------------------------------------------------------------------------------- photos
@functools.lru_cache(maxsize=4)
def _all_photos(wheel: Path) -> tuple[np.ndarray, ...]:
    """Every photo under ``skimage/data/`` in the wheel (sorted by name), as RGB uint8; tiny ones skipped."""
    out = []
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist()
                       if n.startswith("skimage/data/") and n.count("/") == 2 and n.endswith((".png", ".jpg")))
        for n in names:
            img = Image.open(io.BytesIO(zf.read(n)))
            if min(img.size) < 128:  # chessboards, phantom: not photos
                continue
            out.append(np.asarray(img.convert("RGB")))
    return tuple(out)


def photos(wheel: Path, split: str) -> tuple[np.ndarray, ...]:
    """The split's photos: ``calib`` takes even-indexed photos, ``val`` odd-indexed ones (disjoint sets)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    allp = _all_photos(wheel)
    return allp[SPLITS.index(split)::2]


def random_photo_crop(rng: np.random.Generator, pics: tuple[np.ndarray, ...], min_frac: float = 0.5) -> np.ndarray:
    """A random crop (``min_frac``..1 of each side) of a random photo, flipped left-right half of the time."""
    img = pics[int(rng.integers(len(pics)))]
    h, w = img.shape[:2]
    ch = int(h * rng.uniform(min_frac, 1.0))
    cw = int(w * rng.uniform(min_frac, 1.0))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    crop = img[y:y + ch, x:x + cw]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


# ------------------------------------------------------------------------------------------------------- text
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _ink_and_paper(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    paper = tuple(int(v) for v in rng.integers(205, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    return ink, paper  # type: ignore[return-value]


def render_line(rng: np.random.Generator, text: str | None = None) -> tuple[np.ndarray, str]:
    """A single rendered text line (tight box plus a small margin, light noise) and its text."""
    text = text if text is not None else TEXT_LINES[int(rng.integers(len(TEXT_LINES)))]
    size = int(rng.integers(22, 44))
    font = _font(size)
    ink, paper = _ink_and_paper(rng)
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    mx, my = int(rng.integers(4, 16)), int(rng.integers(3, 10))
    img = Image.new("RGB", (x1 - x0 + 2 * mx, y1 - y0 + 2 * my), paper)
    ImageDraw.Draw(img).text((mx - x0, my - y0), text, font=font, fill=ink)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 4, (img.size[1], img.size[0], 1))
    return np.clip(arr, 0, 255).astype(np.uint8), text


def _draw_table(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int],
                ink: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
    font = _font(int(rng.integers(14, 20)))
    for r in range(rows + 1):
        y = y0 + (y1 - y0) * r // rows
        draw.line([(x0, y), (x1, y)], fill=ink, width=1)
    for c in range(cols + 1):
        x = x0 + (x1 - x0) * c // cols
        draw.line([(x, y0), (x, y1)], fill=ink, width=1)
    for r in range(rows):
        for c in range(cols):
            cell = f"{rng.uniform(0, 1000):.1f}" if (r and c) else TEXT_LINES[int(rng.integers(20))].split()[0]
            draw.text((x0 + (x1 - x0) * c // cols + 4, y0 + (y1 - y0) * r // rows + 3), cell, font=font, fill=ink)


def render_page(rng: np.random.Generator, pics: tuple[np.ndarray, ...],
                size: tuple[int, int] = (1240, 1754)) -> np.ndarray:
    """A document page (W x H = ``size``): a title, paragraphs, usually a figure (a photo) and a table."""
    w, h = size
    ink, paper = _ink_and_paper(rng)
    page = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(page)
    margin = int(w * rng.uniform(0.06, 0.1))
    y = margin
    draw.text((margin, y), TEXT_LINES[int(rng.integers(len(TEXT_LINES)))], font=_font(int(w * 0.03)), fill=ink)
    y += int(w * 0.07)
    body = _font(int(w * rng.uniform(0.014, 0.02)))
    line_h = int(body.size * 1.5) if hasattr(body, "size") else 20
    while y < h - margin - line_h:
        block = rng.random()
        if block < 0.15 and y < h * 0.6:  # a figure with a caption
            fig = Image.fromarray(random_photo_crop(rng, pics))
            fw = int((w - 2 * margin) * rng.uniform(0.4, 0.8))
            fh = min(int(fw * fig.size[1] / fig.size[0]), h - margin - y - 3 * line_h)
            if fh > 40:
                page.paste(fig.resize((fw, fh), Image.BILINEAR), ((w - fw) // 2, y))
                y += fh + line_h // 2
                draw.text(((w - fw) // 2, y), "Figure 1. " + TEXT_LINES[int(rng.integers(20))], font=body, fill=ink)
            y += 2 * line_h
        elif block < 0.25 and y < h * 0.7:  # a table
            th = int(h * rng.uniform(0.1, 0.2))
            _draw_table(draw, rng, (margin, y, w - margin, y + th), ink)
            y += th + 2 * line_h
        else:  # a paragraph
            for _ in range(int(rng.integers(2, 8))):
                if y >= h - margin - line_h:
                    break
                draw.text((margin, y), TEXT_LINES[int(rng.integers(len(TEXT_LINES)))], font=body, fill=ink)
                y += line_h
            y += line_h
    arr = np.asarray(page).astype(np.float32) + rng.normal(0, 3, (h, w, 1))
    return np.clip(arr, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------ audio
# (F1, F2, F3) of a few vowels (Peterson & Barney averages, adult male)
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (660, 1720, 2410), (300, 870, 2240),
           (570, 840, 2410), (440, 1020, 2240), (490, 1350, 1690))


def _formant_filter(x: np.ndarray, formants: tuple[float, ...], sr: int, bandwidths=(80.0, 100.0, 150.0)) -> np.ndarray:
    """Cascade of two-pole resonators (one per formant), applied in the frequency domain (zero-padded FFT)."""
    nfft = 1 << int(np.ceil(np.log2(len(x) + sr // 20)))
    z = np.exp(-1j * 2 * np.pi * np.fft.rfftfreq(nfft, 1 / sr) / sr)
    h = np.ones_like(z)
    for f, b in zip(formants, bandwidths):
        r, th = np.exp(-np.pi * b / sr), 2 * np.pi * f / sr
        h *= (1 - r) / (1 - 2 * r * np.cos(th) * z + r * r * z * z)
    return np.fft.irfft(np.fft.rfft(x, nfft) * h, nfft)[:len(x)]


def _syllable(rng: np.random.Generator, sr: int, f0: float) -> np.ndarray:
    """One syllable by source-filter synthesis: a glottal pulse train (jittered, falling pitch) through the
    formant resonators of a random vowel, optionally after a fricative (differentiated noise burst)."""
    n = int(sr * rng.uniform(0.08, 0.25))
    t = np.arange(n) / sr
    pitch = f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)) * np.linspace(1.1, 0.9, n)
    pulses = np.diff(np.floor(np.cumsum(pitch) / sr), prepend=0.0)
    source = np.diff(np.convolve(pulses, np.hanning(max(3, int(sr / f0 * 0.4))), mode="same"), prepend=0.0)
    vowel = _formant_filter(source, _VOWELS[int(rng.integers(len(_VOWELS)))], sr)
    vowel *= np.sin(np.pi * np.arange(n) / n) ** 0.5 / (np.abs(vowel).max() + 1e-9)
    if rng.random() < 0.5:
        m = int(sr * rng.uniform(0.03, 0.1))
        fricative = np.diff(rng.normal(0, 1, m), prepend=0.0) * 0.15 * np.hanning(m)
        vowel = np.concatenate([fricative, vowel])
    return vowel


def speech_like(rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    """Speech-like float32 audio in [-1, 1]: syllables and short pauses over a little background noise."""
    n = int(seconds * sr)
    out = np.zeros(n)
    f0 = rng.uniform(90, 240)
    pos = int(rng.integers(0, sr // 20))
    while pos < n:
        syl = _syllable(rng, sr, f0 * rng.uniform(0.9, 1.1))
        end = min(n, pos + len(syl))
        out[pos:end] += syl[:end - pos]
        pos = end + int(sr * (rng.uniform(0.01, 0.06) if rng.random() < 0.85 else rng.uniform(0.15, 0.4)))
    out *= rng.uniform(0.2, 0.6) / max(1e-6, np.abs(out).max())
    out += rng.normal(0, rng.uniform(0.001, 0.01), n)
    return np.clip(out, -1, 1).astype(np.float32)


def silence(rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    """Near-silence: faint white noise with a slow hum, float32."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    hum = rng.uniform(0, 0.002) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t)
    return (rng.normal(0, rng.uniform(0.0002, 0.003), n) + hum).astype(np.float32)


def audio_clip(rng: np.random.Generator, seconds: float, speech_prob: float = 0.7) -> tuple[np.ndarray, bool]:
    """A clip that is speech-like with probability ``speech_prob``, else near-silence; and whether it is speech."""
    is_speech = bool(rng.random() < speech_prob)
    return (speech_like if is_speech else silence)(rng, seconds), is_speech


# ------------------------------------------------------------------------------------------------- file bytes
@functools.lru_cache(maxsize=8)
def _wheel_members(wheels: tuple[Path, ...]) -> tuple[tuple[Path, str], ...]:
    keep = (".py", ".pyi", ".json", ".yaml", ".txt", ".png", ".jpg", ".so", ".md", ".csv", ".html", ".npy",
            ".npz", ".onnx", ".pyx", ".toml", ".cfg", "METADATA", "RECORD", "LICENSE", ".c", ".h", ".js")
    out = []
    for w in wheels:
        with zipfile.ZipFile(w) as zf:
            out += [(w, i.filename) for i in zf.infolist()
                    if 64 <= i.file_size <= 5_000_000 and i.filename.endswith(keep)]
    return tuple(sorted(out))


def wheel_file_bytes(rng: np.random.Generator, wheels: tuple[Path, ...], split: str,
                     accept: Callable[[str], bool] = lambda name: True) -> tuple[bytes, str]:
    """The bytes of a random real file from the wheels (``calib``/``val`` take alternate files) and its name."""
    members = [m for m in _wheel_members(wheels) if accept(m[1])][SPLITS.index(split)::2]
    wheel, name = members[int(rng.integers(len(members)))]
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(name), name
