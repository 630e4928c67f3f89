"""Quantization arithmetic: int8 parameters for activations and weights, and dequantization. A leaf module."""
from __future__ import annotations

import numpy as np


def activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor scale and zero point: uint8 asymmetric, or int8 symmetric (zero point 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        t = max(abs(lo), abs(hi))
        scale = t / 127.0 if t > 0 else 1.0
        return np.array(scale, np.float32), np.array(0, np.int8)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(round(-lo / scale), 0, 255))
    return np.array(scale, np.float32), np.array(zero, np.uint8)


def channel_activation_qparams(lo: np.ndarray, hi: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """activation_qparams for each channel of 1-D `lo`, `hi`: (float32 scales, uint8 or int8 zero points)."""
    lo, hi = np.minimum(np.ravel(lo).astype(np.float64), 0.0), np.maximum(np.ravel(hi).astype(np.float64), 0.0)
    if symmetric:
        t = np.maximum(-lo, hi)
        return np.where(t > 0, t / 127.0, 1.0).astype(np.float32), np.zeros(t.shape, np.int8)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0)  # float64 here, as activation_qparams rounds its zero point
    return scale.astype(np.float32), np.clip(np.round(-lo / scale), 0, 255).astype(np.uint8)


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 along `axis`: returns (int8 weights, float32 scales)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce) if reduce else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """Float values of per-channel int8 weights `q` with `scale` along `axis`."""
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)
