"""GPTQ weight rounding: int8 weights that minimise each layer's output error on calibration inputs.

GPTQ (Frantar et al., 2022) rounds one input column at a time and spreads each rounding error over the
columns not yet rounded, weighted by the inverse of H = E[x x^T] of the layer's inputs.
- `supports(node, weight_shape)`: 2-D Conv with explicit pads, Gemm/MatMul with a 2-D weight.
- `InputHessian(node, weight_shape, max_samples=128)`: streams H from the node's input (`update(x)`, e.g.
  as an `extra` observer of calibrate.collect_statistics), one H per Conv group; updates after
  `max_samples` samples are ignored.
- `gptq_quantize(w, axis, hessian, damp=0.1)` -> (int8 codes, float32 scales): symmetric per output
  channel with the scales of nearest rounding (max|w|/127), only the rounding changes; H is dampened by
  `damp` x its mean diagonal, and a still singular H falls back to nearest rounding.
- `round_weights(proto, hessians, weights, damp)` -> {weight initializer: (codes, scales)} for every node
  whose H saw data. The quantize pass uses these codes as given, with no bias correction on top.
Design notes and measurements: benchmarks/results/calibration-design-notes.md.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from .qmath import quantize_weight

DEFAULT_SAMPLES = 128  # calibration samples that feed each H: GPTQ's usual count
DEFAULT_DAMP = 0.1


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def supports(node: Any, weight_shape: tuple[int, ...]) -> bool:
    """GPTQ handles 2-D Conv (explicit pads) and Gemm/MatMul with a 2-D weight; others round to nearest."""
    attrs = _attrs(node)
    if node.op_type == "Conv":
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        return len(weight_shape) == 4 and auto_pad in (b"NOTSET", "NOTSET")
    if node.op_type == "Gemm":
        return len(weight_shape) == 2 and not attrs.get("transA", 0)
    return node.op_type == "MatMul" and len(weight_shape) == 2


def im2col(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int], pads: tuple[int, int, int, int],
           dilations: tuple[int, int]) -> np.ndarray:
    """One sample's patches: x [C, H, W] -> [C, kh*kw, L] (L output positions), zero padding as Conv does."""
    kh, kw = kernel
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    out_h = (xp.shape[1] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (xp.shape[2] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    cols = np.empty((x.shape[0], kh * kw, out_h * out_w), np.float32)
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilations[0], j * dilations[1]
            patch = xp[:, r:r + strides[0] * (out_h - 1) + 1:strides[0], c:c + strides[1] * (out_w - 1) + 1:strides[1]]
            cols[:, i * kw + j] = patch.reshape(x.shape[0], -1)
    return cols


class InputHessian:
    """Streaming H = E[x x^T] over the input rows a weighted node multiplies, one H per Conv group.

    `update(x)` takes the node's input as the model computes it (a batch); after `max_samples` samples
    further updates are ignored, so the cost is bounded however large the calibration set is.
    """

    def __init__(self, node: Any, weight_shape: tuple[int, ...], max_samples: int = DEFAULT_SAMPLES):
        attrs = _attrs(node)
        self.op = node.op_type
        self.weight_shape = tuple(weight_shape)
        self.groups = int(attrs.get("group", 1)) if self.op == "Conv" else 1
        if self.op == "Conv":
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            self.conv = dict(kernel=tuple(self.weight_shape[2:]), strides=tuple(attrs.get("strides", [1, 1])),
                             pads=(pads[0], pads[1], pads[2], pads[3]), dilations=tuple(attrs.get("dilations", [1, 1])))
        self.max_samples = max_samples
        self.samples = 0
        self.rows = 0
        self.sum: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        if self.samples >= self.max_samples:
            return
        x = np.asarray(x, np.float32)
        if self.op == "Conv":
            for one in x:
                cols = im2col(one, **self.conv)
                channels, taps, positions = cols.shape
                cols = cols.reshape(self.groups, channels // self.groups * taps, positions)
                self._add(np.einsum("gil,gjl->gij", cols, cols, optimize=True), positions)
            self.samples += len(x)
        else:
            rows = x.reshape(-1, x.shape[-1])
            self._add((rows.T.astype(np.float64) @ rows)[None], rows.shape[0])
            self.samples += x.shape[0] if x.ndim > 1 else 1

    def _add(self, part: np.ndarray, rows: int) -> None:
        part = part.astype(np.float64)
        self.sum = part if self.sum is None else self.sum + part
        self.rows += rows

    def hessian(self) -> np.ndarray:
        """[groups, d, d], d = inputs per output channel (Cin/groups*kh*kw, or K)."""
        if self.sum is None:
            raise ValueError("no calibration data reached this layer")
        return self.sum / max(self.rows, 1)


def gptq_quantize(w: np.ndarray, axis: int, hessian: np.ndarray, damp: float = DEFAULT_DAMP) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 of `w` (channel axis `axis`) rounded by GPTQ: (int8 weights, float32 scales).

    Conv weights [Cout, Cin/g, kh, kw] with hessian [g, d, d]; Gemm/MatMul 2-D weights with [1, K, K].
    """
    _, scale = quantize_weight(w, axis)
    if w.ndim == 4:
        groups = hessian.shape[0]
        rows = w.reshape(groups, w.shape[0] // groups, -1)               # [g, Cout/g, d]
        q = _gptq(rows, hessian, scale.reshape(groups, -1), damp)
        return q.reshape(w.shape), scale
    rows = w if axis == 0 else w.T                                       # [out, K]
    q = _gptq(rows[None], hessian, scale[None], damp)[0]
    return (q if axis == 0 else q.T), scale


def _gptq(w: np.ndarray, h: np.ndarray, scale: np.ndarray, damp: float, block: int = 128) -> np.ndarray:
    """Batched GPTQ over groups: w [g, rows, d], h [g, d, d], scale [g, rows] -> int8 [g, rows, d].

    Columns are rounded in blocks of `block` (the authors' "lazy batch"): the same arithmetic as one column
    at a time, with the updates of later columns gathered into one matrix product per block."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    d = w.shape[2]
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0                                   # inputs that were always zero: their weights never matter
    idx = np.arange(d)
    h[:, idx, idx] += np.where(dead, 1.0, 0.0) + damp * np.maximum(diag.mean(1, keepdims=True), 1e-12)
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    try:
        upper = np.transpose(np.linalg.cholesky(np.linalg.inv(h)), (0, 2, 1))  # [g, d, d], upper triangular
    except np.linalg.LinAlgError:
        upper = None
    s = scale.astype(np.float64)[:, :, None]                                  # [g, rows, 1]
    if upper is None:  # numerically singular even after damping: plain rounding
        return np.clip(np.round(w / s), -127, 127).astype(np.int8)
    q = np.empty(w.shape, np.float64)
    for b0 in range(0, d, block):  # GPTQ's lazy batch: the column loop updates one block of columns ...
        b1 = min(b0 + block, d)
        wb = w[:, :, b0:b1]                                                    # a view: updated in place
        errs = np.empty(wb.shape, np.float64)
        for i in range(b1 - b0):
            col = wb[:, :, i]
            qi = np.clip(np.round(col / s[:, :, 0]), -127, 127)
            q[:, :, b0 + i] = qi
            errs[:, :, i] = (col - qi * s[:, :, 0]) / upper[:, b0 + i, b0 + i][:, None]   # [g, rows]
            wb[:, :, i + 1:] -= errs[:, :, i, None] * upper[:, b0 + i, None, b0 + i + 1:b1]
        if b1 < d:  # ... and the columns after it take the block's errors at once, in one matrix product
            w[:, :, b1:] -= np.matmul(errs, upper[:, b0:b1, b1:])
    return q.astype(np.int8)


def round_weights(proto: Any, hessians: Mapping[str, InputHessian], weights: Mapping[str, tuple[str, int]],
                  damp: float = DEFAULT_DAMP, progress: Callable[[int, int], None] | None = None,
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{weight initializer: (int8, scales)} for every node in `hessians` that saw calibration data;
    `progress(done, total)` after each layer."""
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for done, (node_name, hess) in enumerate(hessians.items(), 1):
        wname, axis = weights[node_name]
        if wname not in codes and hess.sum is not None:
            codes[wname] = gptq_quantize(numpy_helper.to_array(inits[wname]), axis, hess.hessian(), damp)
        if progress is not None:
            progress(done, len(hessians))
    return codes
