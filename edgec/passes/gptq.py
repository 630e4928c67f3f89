"""GPTQ weight rounding: int8 weights that minimise each layer's output error on calibration inputs.

GPTQ (Frantar et al., 2022) rounds one input column at a time and spreads each rounding error over the
columns not yet rounded, weighted by the inverse of H = E[x x^T] of the layer's inputs.
- `supports(node, weight_shape)`: 2-D Conv with explicit pads, Gemm/MatMul with a 2-D weight.
- `InputHessian(node, weight_shape, max_samples=128, rows_per_column=4)`: streams H from the node's input
  (`update(x)`, e.g. as an `extra` observer of calibrate.collect_statistics), one H per Conv group. It takes
  the input rows of the first `max_samples` samples, but no more than the larger of `rows_per_column` x d
  (d = inputs per output channel) and what ROW_BUDGET_MACS of work buys (rows x groups x d^2 multiply-adds):
  small layers take every row, large ones a bounded number. A Conv keeps an even spread of the output
  positions of each sample when that cap binds. Rows are buffered and folded in with one float32 matrix
  product x x^T per buffer (BLAS syrk).
- `gptq_quantize(w, axis, hessian, damp=0.1)` -> (int8 codes, float32 scales): symmetric per output
  channel with the scales of nearest rounding (max|w|/127), only the rounding changes; H is dampened by
  `damp` x its mean diagonal, and a still singular H falls back to nearest rounding. Float32 throughout
  (the float64 path rounds the same codes but for a few weights on a rounding boundary: tests/test_gptq.py).
- `Rounder(proto, weights, damp)`: rounds each layer on a worker thread as soon as its H is complete
  (InputHessian's `on_complete`), during the calibration pass; `finish()` -> {weight initializer: (codes,
  scales)}. The quantize pass uses these codes as given, with no bias correction on top.
Design notes and measurements: benchmarks/results/calibration-design-notes.md.
"""
from __future__ import annotations

import heapq
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping

import numpy as np
from onnx import helper, numpy_helper

from .qmath import quantize_weight

DEFAULT_SAMPLES = 128  # calibration samples that feed each H: GPTQ's usual count
DEFAULT_ROWS_PER_COLUMN = 4  # input rows per column of H for large layers (benchmarks/results/compile-time-*)
DEFAULT_DAMP = 0.1
ROW_BUDGET_MACS = 1 << 33  # Hessian work per layer (~0.1 s on one core) below which rows are never dropped
_FLUSH_VALUES = 1 << 20  # input values (4 MB) buffered per layer before one x x^T product, or a quarter of H's
                         # size when that is more: wide layers then update H in a few large products


def _attrs(node: Any) -> dict[str, Any]:
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
           dilations: tuple[int, int], positions: np.ndarray | None = None) -> np.ndarray:
    """One sample's patches: x [C, H, W] -> [C, kh*kw, L], zero padding as Conv does. L is every output
    position, or only `positions` (flat indices into the out_h x out_w output) when given."""
    kh, kw = kernel
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    out_h, out_w = conv_output_size(x.shape[1:], kernel, strides, pads, dilations)
    if positions is not None:
        rows, cols_ = np.divmod(positions, out_w)
        rows, cols_ = rows * strides[0], cols_ * strides[1]
    count = out_h * out_w if positions is None else len(positions)
    cols = np.empty((x.shape[0], kh * kw, count), np.float32)
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilations[0], j * dilations[1]
            if positions is None:
                patch = xp[:, r:r + strides[0] * (out_h - 1) + 1:strides[0], c:c + strides[1] * (out_w - 1) + 1:strides[1]]
                cols[:, i * kw + j] = patch.reshape(x.shape[0], -1)
            else:
                cols[:, i * kw + j] = xp[:, rows + r, cols_ + c]
    return cols


def conv_output_size(size: tuple[int, ...], kernel: tuple[int, int], strides: tuple[int, int],
                     pads: tuple[int, int, int, int], dilations: tuple[int, int]) -> tuple[int, int]:
    """(out_h, out_w) of a 2-D Conv on an input of spatial `size` (h, w)."""
    (kh, kw), (top, left, bottom, right) = kernel, pads
    out_h = (size[0] + top + bottom - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (size[1] + left + right - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    return out_h, out_w


class InputHessian:
    """Streaming H = E[x x^T] over the input rows a weighted node multiplies, one H per Conv group.

    `update(x)` takes the node's input as the model computes it (a batch). Only the first `max_samples`
    samples count and at most max(`rows_per_column` x d, ROW_BUDGET_MACS / (groups x d^2)) rows, so the cost
    is bounded however large the calibration set or the feature map is.
    """

    def __init__(self, node: Any, weight_shape: tuple[int, ...], max_samples: int = DEFAULT_SAMPLES,
                 rows_per_column: int = DEFAULT_ROWS_PER_COLUMN,
                 on_complete: Callable[["InputHessian"], None] | None = None):
        attrs = _attrs(node)
        self.op = node.op_type
        self.weight_shape = tuple(weight_shape)
        self.groups = int(attrs.get("group", 1)) if self.op == "Conv" else 1
        if self.op == "Conv":
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            self.conv = dict(kernel=tuple(self.weight_shape[2:]), strides=tuple(attrs.get("strides", [1, 1])),
                             pads=(pads[0], pads[1], pads[2], pads[3]), dilations=tuple(attrs.get("dilations", [1, 1])))
            self.d = int(np.prod(self.weight_shape[1:]))
        else:  # the input width K: MatMul [K, N], Gemm [K, N] or, with transB, [N, K]
            self.d = int(self.weight_shape[1] if self.op == "Gemm" and attrs.get("transB", 0) else self.weight_shape[0])
        self.max_samples = max_samples
        self.max_rows = max(rows_per_column * self.d, ROW_BUDGET_MACS // (self.groups * self.d * self.d))
        self.samples = 0
        self.rows = 0
        self.sum: np.ndarray | None = None  # float32 [groups, d, d]
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.on_complete = on_complete

    def update(self, x: np.ndarray) -> None:
        if self.samples >= self.max_samples:
            return
        x = np.asarray(x, np.float32)
        if self.op == "Conv":
            for one in x[:self.max_samples - self.samples]:
                out_h, out_w = conv_output_size(one.shape[1:], **self.conv)
                positions = self._positions(out_h * out_w)
                cols = im2col(one, **self.conv, positions=positions)
                channels, taps, count = cols.shape
                self._add(cols.reshape(self.groups, channels // self.groups * taps, count))
                self.samples += 1
        else:
            count = min(x.shape[0] if x.ndim > 1 else 1, self.max_samples - self.samples)
            rows = x.reshape(-1, x.shape[-1])
            rows = rows[:len(rows) // max(x.shape[0], 1) * count] if x.ndim > 1 else rows
            positions = self._positions(len(rows), count)
            self._add((rows if positions is None else rows[positions]).T[None])
            self.samples += count
        if self.samples >= self.max_samples and self.on_complete is not None:
            self.on_complete(self)

    def _positions(self, total: int, samples: int = 1) -> np.ndarray | None:
        """Rows to keep of the next `samples` samples' `total`: all, or an even spread when the row budget binds."""
        keep = -(-self.max_rows // self.max_samples) * samples
        if total <= keep:
            return None
        step = total / keep
        offset = (self.samples * 0.618034 % 1.0) * step  # a different phase per sample covers the whole map
        return np.minimum((offset + step * np.arange(keep)).astype(np.intp), total - 1)

    def _add(self, cols: np.ndarray) -> None:
        """cols [groups, d, rows] of one sample."""
        self._buffer.append(cols)
        self._buffered += cols.shape[2]
        self.rows += cols.shape[2]
        groups, d, _ = cols.shape
        if self._buffered * d * groups >= max(_FLUSH_VALUES, groups * d * d // 4):
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        cols = np.concatenate(self._buffer, axis=2) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer, self._buffered = [], 0
        groups, d, _ = cols.shape
        if groups > 1:  # small per-group matrices (depthwise): one batched product, added
            part = np.matmul(cols, cols.transpose(0, 2, 1))
            self.sum = part if self.sum is None else self.sum + part
            return
        flat = np.ascontiguousarray(cols[0])
        part = flat @ flat.T  # one operand the other's transpose: numpy calls BLAS syrk (and releases the GIL)
        if self.sum is None:
            self.sum = part[None]
        else:
            self.sum[0] += part

    def _full(self) -> np.ndarray:
        self._flush()
        if self.sum is None:
            raise ValueError("no calibration data reached this layer")
        return self.sum

    def hessian(self) -> np.ndarray:
        """[groups, d, d] float32, d = inputs per output channel (Cin/groups*kh*kw, or K)."""
        return self._full() / np.float32(max(self.rows, 1))

    def take(self) -> np.ndarray:
        """hessian() without a copy: the matrix is handed over and this object releases it."""
        h = self._full()
        h /= np.float32(max(self.rows, 1))
        self.release()
        return h

    def release(self) -> None:
        """Free H (a layer's H is d x d floats per group); later updates are ignored."""
        self.sum, self._buffer, self.samples = None, [], max(self.samples, self.max_samples)


def gptq_quantize(w: np.ndarray, axis: int, hessian: np.ndarray, damp: float = DEFAULT_DAMP,
                  dtype: type = np.float32, overwrite_hessian: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 of `w` (channel axis `axis`) rounded by GPTQ: (int8 weights, float32 scales).

    Conv weights [Cout, Cin/g, kh, kw] with hessian [g, d, d]; Gemm/MatMul 2-D weights with [1, K, K].
    `dtype` is the arithmetic's (float64 only to check float32 against). `overwrite_hessian`: the hessian's
    memory may be reused (it is garbage after), which saves a copy of a d x d matrix.
    """
    _, scale = quantize_weight(w, axis)
    if w.ndim == 4:
        groups = hessian.shape[0]
        rows = w.reshape(groups, w.shape[0] // groups, -1)               # [g, Cout/g, d]
        q = _gptq(rows, hessian, scale.reshape(groups, -1), damp, dtype=dtype, overwrite_h=overwrite_hessian)
        return q.reshape(w.shape), scale
    rows = w if axis == 0 else w.T                                       # [out, K]
    q = _gptq(rows[None], hessian, scale[None], damp, dtype=dtype, overwrite_h=overwrite_hessian)[0]
    return (q if axis == 0 else q.T), scale


def inverse_cholesky_upper(h: np.ndarray) -> np.ndarray | None:
    """U upper triangular with H^-1 = U^T U, per group of h [g, d, d], written over h; None if some H is not
    positive definite (h is garbage then).

    With J the order reversal, J H J = L L^T gives H = (J L J)(J L J)^T and so U = J L^-1 J: one Cholesky and
    one triangular inverse, a third of the work of inverting H and factoring the inverse. Both are blocked
    (_cholesky_lower, _invert_lower): numpy matrix products, which release the GIL, so layers round in
    parallel threads beside the calibration pass (scipy's LAPACK wrappers hold the GIL while they run).
    """
    low = _cholesky_lower(np.ascontiguousarray(h[:, ::-1, ::-1]))
    if low is None:
        return None
    h[:] = _invert_lower(low)[:, ::-1, ::-1]
    return h


def _cholesky_lower(a: np.ndarray, block: int = 256) -> np.ndarray | None:
    """In place, per group of a [g, d, d] symmetric positive definite: the lower Cholesky factor (the upper
    triangle is left as garbage), by blocks of `block` columns; None if some group is not positive definite."""
    d = a.shape[1]
    for k0 in range(0, d, block):
        k1 = min(k0 + block, d)
        try:
            lkk = np.linalg.cholesky(a[:, k0:k1, k0:k1].astype(np.float64))
        except np.linalg.LinAlgError:
            return None
        a[:, k0:k1, k0:k1] = lkk
        if k1 < d:
            panel = a[:, k1:, k0:k1]
            panel[:] = panel @ np.linalg.inv(lkk).transpose(0, 2, 1).astype(a.dtype)   # L_ik = A_ik L_kk^-T
            for j0 in range(k1, d, block):  # trailing update of the lower block triangle: A_ij -= L_ik L_jk^T
                j1 = min(j0 + block, d)
                a[:, j0:, j0:j1] -= panel[:, j0 - k1:] @ panel[:, j0 - k1:j1 - k1].transpose(0, 2, 1)
    return a


def _invert_lower(low: np.ndarray, block: int = 256) -> np.ndarray:
    """In place, per group: the inverse of the lower-triangular low [g, d, d] (read from its lower triangle;
    the result's upper triangle is zero), block row by block row: X_ii = L_ii^-1, X_i,<i = -X_ii L_i,<i X_<i."""
    d = low.shape[1]
    for i0 in range(0, d, block):
        i1 = min(i0 + block, d)
        xii = np.linalg.inv(np.tril(low[:, i0:i1, i0:i1]).astype(np.float64)).astype(low.dtype)
        if i0:  # rows above hold X already; X_<i is lower triangular, so block column j sums over k >= j only
            row = low[:, i0:i1, :i0]
            sums = np.empty_like(row)
            for j0 in range(0, i0, block):
                j1 = min(j0 + block, i0)
                sums[:, :, j0:j1] = row[:, :, j0:] @ low[:, j0:i0, j0:j1]
            row[:] = -xii @ sums
        low[:, i0:i1, i0:i1] = np.tril(xii)
        low[:, i0:i1, i1:] = 0
    return low


def _gptq(w: np.ndarray, h: np.ndarray, scale: np.ndarray, damp: float, block: int = 128,
          dtype: type = np.float32, overwrite_h: bool = False) -> np.ndarray:
    """Batched GPTQ over groups: w [g, rows, d], h [g, d, d], scale [g, rows] -> int8 [g, rows, d].

    Columns are rounded in blocks of `block` (the authors' "lazy batch"): the same arithmetic as one column
    at a time, with the updates of later columns gathered into one matrix product per block."""
    w = w.astype(dtype, copy=True)
    h = h.astype(dtype, copy=not overwrite_h)
    d = w.shape[2]
    diag = np.einsum("gii->gi", h).astype(np.float64)
    dead = diag <= 0                                   # inputs that were always zero: their weights never matter
    idx = np.arange(d)
    h[:, idx, idx] += (np.where(dead, 1.0, 0.0) + damp * np.maximum(diag.mean(1, keepdims=True), 1e-12)).astype(dtype)
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    upper = inverse_cholesky_upper(h)                                          # [g, d, d]
    s = scale.astype(dtype)[:, :, None]                                        # [g, rows, 1]
    if upper is None:  # numerically singular even after damping: plain rounding
        return np.clip(np.round(w / s), -127, 127).astype(np.int8)
    q = np.empty(w.shape, dtype)
    for b0 in range(0, d, block):  # GPTQ's lazy batch: the column loop updates one block of columns ...
        b1 = min(b0 + block, d)
        wb = w[:, :, b0:b1]                                                    # a view: updated in place
        errs = np.empty(wb.shape, dtype)
        for i in range(b1 - b0):
            col = wb[:, :, i]
            qi = np.clip(np.round(col / s[:, :, 0]), -127, 127)
            q[:, :, b0 + i] = qi
            errs[:, :, i] = (col - qi * s[:, :, 0]) / upper[:, b0 + i, b0 + i][:, None]   # [g, rows]
            wb[:, :, i + 1:] -= errs[:, :, i, None] * upper[:, b0 + i, None, b0 + i + 1:b1]
        if b1 < d:  # ... and the columns after it take the block's errors at once, in one matrix product
            w[:, :, b1:] -= np.matmul(errs, upper[:, b0:b1, b1:])
    return q.astype(np.int8)


class Rounder:
    """Rounds layers with GPTQ on worker threads (one BLAS thread each), each as soon as its Hessian is complete:
    hooked to InputHessian's `on_complete`, rounding overlaps the rest of the calibration pass, the widest
    waiting layer first (so that no long one is left to run alone at the end), and each H is freed once its
    layer is rounded. Use as a context manager; `finish(hessians)` rounds the layers whose H never filled up and
    returns {weight initializer: (int8, scales)} for every layer whose H saw data."""

    def __init__(self, proto: Any, weights: Mapping[str, tuple[str, int]], damp: float = DEFAULT_DAMP,
                 progress: Callable[[int, int], None] | None = None):
        self.inits = {t.name: t for t in proto.graph.initializer}
        self.weights, self.damp, self.progress = weights, damp, progress
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self._results: dict[str, Future] = {}
        self._waiting: list[tuple[int, int, str, int, InputHessian]] = []  # heap: widest layer first
        self._lock = threading.Lock()

    def __enter__(self) -> "Rounder":
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._waiting.clear()
        self._pool.shutdown(wait=True)

    def complete(self, node_name: str, hess: InputHessian) -> None:
        """Queue `node_name`'s layer for rounding (once per weight; nothing if its H saw no data)."""
        wname, axis = self.weights[node_name]
        with self._lock:
            if wname in self._results or not hess.rows:
                return
            self._results[wname] = Future()
            heapq.heappush(self._waiting, (-hess.d * hess.d * hess.groups, len(self._results), wname, axis, hess))
        self._pool.submit(self._round_widest)

    def _round_widest(self) -> None:
        with self._lock:
            if not self._waiting:
                return
            _, _, wname, axis, hess = heapq.heappop(self._waiting)
        result = self._results[wname]
        try:
            result.set_result(gptq_quantize(numpy_helper.to_array(self.inits[wname]), axis, hess.take(), self.damp,
                                            overwrite_hessian=True))
        except BaseException as e:  # noqa: BLE001 - re-raised by finish() in the calibrating thread
            result.set_exception(e)

    def finish(self, hessians: Mapping[str, InputHessian]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        for node_name, hess in hessians.items():
            self.complete(node_name, hess)
        codes = {}
        for done, (wname, result) in enumerate(self._results.items(), 1):
            codes[wname] = result.result()
            if self.progress is not None:
                self.progress(done, len(self._results))
        return codes
