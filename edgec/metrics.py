"""Task metrics: a build's outputs judged in the terms of the model's task.

Every output of a model gets a metric, chosen from the op that produces it and the shape of one sample of it
(`choose`), or named by the user (`--metric NAME`, `--metric OUTPUT=NAME`, `metric=` in Python). A metric scores
one output stacked over the samples ([N, ...]: axis 0 is the sample) against the truth, in points (0-100),
higher is better. The truth is the user's labels where the metric reads them (class ids for classification,
boxes for detection) and the fp32 reference outputs otherwise: then the score is agreement with fp32, and
fp32 itself scores 100. The drop of a build is score(fp32) - score(build); `standard_error_of_drop` gives its
standard error by a paired bootstrap over the samples, for every metric alike (mAP is no mean over samples).

Metrics (NAMES):
- top1 / top5: classification (class scores or logits, one vector per sample); labelled accuracy with labels.
- binary: one probability per sample (a VAD's speech probability): the decision at 0.5.
- steps: sequences [T, V]: per-step argmax agreement.  ctc: greedy CTC decoding (blank 0), whole strings equal.
- mask_iou: dense probability maps [1, H, W] (text or segment masks) thresholded at 0.3: IoU over all pixels.
- miou: segmentation logits [C, H, W]: per-pixel argmax, mean IoU over classes.
- map50: detections [A, 4 + 1 + C] (YOLOv5 / YOLOX: cx, cy, w, h, objectness, classes) or [4 + C, A] (YOLOv8),
  boxes in input pixels: mAP at IoU 0.5 after NMS, against labelled boxes or fp32's boxes scoring >= 0.25.
- scores: per-anchor class scores [A, C] (raw detection heads): (anchor, class) pairs scoring >= 0.3, F1.
- cosine: anything else: mean per-sample cosine similarity x 100 (a sample where both sides are all but zero
  agrees).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import ConfigError

Labels = Any  # np.ndarray of class ids (one per sample or per row) or a list of [k, 5] box arrays per sample
NEGLIGIBLE = 1e-3  # of the reference's largest magnitude (at least 1): outputs below it on both sides agree
MASK_THRESHOLD = 0.3      # DBNet's binarisation threshold; a mask metric's default
SCORE_THRESHOLD = 0.3     # a detection head's (anchor, class) counts as firing at this score
BOX_THRESHOLD = 0.25      # fp32's detections at or above this score are the ground truth without labels
NMS_IOU = 0.5
_SHAPE_OPS = {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
_LOGIT_OPS = {"Softmax", "LogSoftmax", "Gemm", "MatMul"}


@dataclass(frozen=True)
class Metric:
    """How a build's outputs are scored: `agree(outputs, reference)` against the fp32 outputs, and
    `labelled(outputs, labels)` against the user's labels where the metric reads labels. Both take every
    output ([N, ...] each) and return points, higher is better."""

    name: str
    output: int | None          # the output it reads; None: a user callable reading every output
    why: str                    # why this metric, in a phrase for the report
    agree: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float]
    labelled: Callable[[Sequence[np.ndarray], Labels], float] | None = None
    # for a metric that is a mean over samples: the per-sample points behind `score` (an exact standard error)
    each: Callable[[Sequence[np.ndarray], Sequence[np.ndarray], Labels | None], np.ndarray] | None = None

    def score(self, outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray], labels: Labels | None = None) -> float:
        """Against the labels when given and read by this metric, else agreement with the fp32 `reference`."""
        if self.against_labels(labels):
            return float(self.labelled(outputs, labels))  # type: ignore[misc]
        return float(self.agree(outputs, reference))

    def against_labels(self, labels: Labels | None) -> bool:
        return labels is not None and self.labelled is not None


def _on_output(name: str, index: int, why: str, agree: Callable[[np.ndarray, np.ndarray], float],
               labelled: Callable[[np.ndarray, Labels], float] | None = None) -> Metric:
    """A metric of output `index`: `agree(candidate, fp32)` and `labelled(candidate, labels)` on [N, ...] arrays."""
    return Metric(name, index, why, lambda outs, ref: agree(outs[index], ref[index]),
                  None if labelled is None else (lambda outs, labels: labelled(outs[index], labels)))


def _mean_over_samples(name: str, index: int, why: str, agree: Callable[[np.ndarray, np.ndarray], np.ndarray],
                       labelled: Callable[[np.ndarray, Labels], np.ndarray] | None = None) -> Metric:
    """A metric of output `index` that is the mean of per-sample points: `agree(candidate, fp32)` and
    `labelled(candidate, labels)` return one value per sample."""
    def each(outs: Sequence[np.ndarray], ref: Sequence[np.ndarray], labels: Labels | None) -> np.ndarray:
        if labels is not None and labelled is not None:
            return labelled(outs[index], labels)
        return agree(outs[index], ref[index])

    return Metric(name, index, why, lambda outs, ref: float(each(outs, ref, None).mean()),
                  None if labelled is None else (lambda outs, labels: float(each(outs, [], labels).mean())), each)


def _per_sample(hits: np.ndarray, n: int) -> np.ndarray:
    """Points per sample from per-row hits ([N x rows] or [N, ...]): the mean over each sample's rows x 100."""
    return 100.0 * hits.reshape(n, -1).astype(np.float64).mean(1)


# ---------------------------------------------------------------------------------------------- classification
def _classes(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(-1, 1)


def _top_k(scores: np.ndarray, want: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return (best == want[:, None]).any(1)


def top1(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return _per_sample(_classes(cand).argmax(1) == _classes(ref).argmax(1), len(cand))


def top5(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return _per_sample(_top_k(_classes(cand), _classes(ref).argmax(1), 5), len(cand))


def top1_labelled(cand: np.ndarray, labels: Labels) -> np.ndarray:
    pred = _classes(cand).argmax(1)
    return _per_sample(pred == _label_ids(labels, len(pred)), len(cand))


def top5_labelled(cand: np.ndarray, labels: Labels) -> np.ndarray:
    scores = _classes(cand)
    return _per_sample(_top_k(scores, _label_ids(labels, len(scores)), 5), len(cand))


def _label_ids(labels: Labels, rows: int) -> np.ndarray:
    if isinstance(labels, list):
        raise ConfigError("The labels are detection boxes, but the metric compares class ids: name the detection "
                          "output's metric (--metric OUTPUT=map50), or give class labels (y / val_y).")
    ids = np.asarray(labels).reshape(-1)
    if len(ids) != rows:
        raise ConfigError(f"{len(ids)} class labels for {rows} output rows: give one label per sample (or per row).")
    return ids.astype(np.int64)


def binary(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return _per_sample((cand >= 0.5) == (ref >= 0.5), len(cand))


# ---------------------------------------------------------------------------------------------------- sequences
def steps(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return _per_sample(cand.argmax(-1) == ref.argmax(-1), len(cand))


def ctc_strings(x: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, ..., V] per-step scores (blank 0): repeats collapsed, blanks dropped."""
    ids = x.reshape(len(x), -1, x.shape[-1]).argmax(-1)
    out = []
    for row in ids:
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != 0)
        out.append(tuple(int(i) for i in row[keep]))
    return out


def ctc(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return 100.0 * np.array([a == b for a, b in zip(ctc_strings(cand), ctc_strings(ref))], np.float64)


# --------------------------------------------------------------------------------------------------- dense maps
def mask_iou(cand: np.ndarray, truth: np.ndarray, threshold: float = MASK_THRESHOLD) -> float:
    c, t = cand >= threshold, truth >= threshold
    union = float((c | t).sum())
    return 100.0 if union == 0 else 100.0 * float((c & t).sum()) / union


def miou(cand: np.ndarray, truth: np.ndarray) -> float:
    c, t = cand.argmax(1), truth.argmax(1)
    ious = [float(((c == k) & (t == k)).sum()) / float(((c == k) | (t == k)).sum())
            for k in range(cand.shape[1]) if ((c == k) | (t == k)).any()]
    return 100.0 * float(np.mean(ious)) if ious else 100.0


# -------------------------------------------------------------------------------------------------- regression
def cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of [N, ...] arrays; a sample where both are all but zero counts 1, one where
    the candidate has inf/NaN that the reference lacks counts -1 (the worst)."""
    n = ref.shape[0]
    r, c = ref.reshape(n, -1).astype(np.float64), cand.reshape(n, -1).astype(np.float64)
    broken = ~np.isfinite(c).all(1) & np.isfinite(r).all(1)
    with np.errstate(invalid="ignore", over="ignore"):
        cos = (r * c).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1), 1e-12)
        return np.where(broken, -1.0, np.where(negligible(ref, cand), 1.0, cos))


def negligible(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per sample of [N, ...] arrays: both sides all but zero (under NEGLIGIBLE of the reference's largest
    magnitude, at least 1): a text map of a photo, where there is no direction to compare and both agree."""
    n = ref.shape[0]
    r, c = np.abs(ref.reshape(n, -1)), np.abs(cand.reshape(n, -1))
    floor = NEGLIGIBLE * max(1.0, float(r.max()) if r.size else 1.0)
    return (r.max(1, initial=0.0) <= floor) & (c.max(1, initial=0.0) <= floor)


def cosine(cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return 100.0 * cosines(ref, cand)


# --------------------------------------------------------------------------------------------------- detection
def anchor_scores(cand: np.ndarray, truth: np.ndarray, threshold: float = SCORE_THRESHOLD) -> float:
    """F1 (points) of the (sample, anchor, class) triples scoring >= threshold, against fp32's."""
    c, t = cand >= threshold, truth >= threshold
    both, fired = float((c & t).sum()), float(c.sum() + t.sum())
    return 100.0 if fired == 0 else 100.0 * 2 * both / fired


def detections(x: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample's detection rows -> (boxes [A, 4] x1y1x2y2, scores [A], classes [A]). layout "v5": rows
    [cx, cy, w, h, objectness, class scores...]; "v8": the transpose, [4 + C, A], no objectness."""
    rows = x.reshape(-1, x.shape[-1]) if layout == "v5" else x.reshape(x.shape[-2], -1).T
    xywh = rows[:, :4]
    cls = rows[:, 5:] if layout == "v5" else rows[:, 4:]
    obj = rows[:, 4] if layout == "v5" else 1.0
    if cls.shape[1] == 0:
        cls = np.ones((len(rows), 1), rows.dtype)
    classes = cls.argmax(1)
    scores = obj * cls[np.arange(len(rows)), classes]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    return boxes, scores, classes


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box with each of `boxes` [K, 4]."""
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, min_score: float,
        max_boxes: int = 300) -> np.ndarray:
    """Indices kept by class-aware greedy NMS (IoU NMS_IOU) among boxes scoring >= min_score, best first."""
    order = np.flatnonzero(scores >= min_score)
    order = order[np.argsort(-scores[order], kind="stable")][:10 * max_boxes]
    keep: list[int] = []
    while len(order) and len(keep) < max_boxes:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        same = classes[rest] == classes[i]
        order = rest[~(same & (iou(boxes[i], boxes[rest]) > NMS_IOU))]
    return np.asarray(keep, np.int64)


def average_precision_50(found: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                         truth: Sequence[np.ndarray]) -> float:
    """mAP at IoU 0.5 (points): `found` per sample (boxes, scores, classes), `truth` per sample [k, 5] arrays
    (class, x1, y1, x2, y2); all-point interpolated AP per class present in the truth, averaged."""
    classes = sorted({int(c) for t in truth for c in np.asarray(t).reshape(-1, 5)[:, 0]})
    if not classes:
        return 100.0 if all(len(f[1]) == 0 for f in found) else 0.0
    aps = []
    for k in classes:
        hits, scores, total = [], [], 0
        for (boxes, sc, cl), t in zip(found, truth):
            gt = np.asarray(t, np.float64).reshape(-1, 5)
            gt = gt[gt[:, 0] == k, 1:]
            total += len(gt)
            used = np.zeros(len(gt), bool)
            for i in np.flatnonzero(cl == k)[np.argsort(-sc[cl == k], kind="stable")]:
                overlaps = iou(boxes[i], gt) if len(gt) else np.zeros(0)
                j = int(overlaps.argmax()) if len(gt) else -1
                hit = j >= 0 and overlaps[j] >= 0.5 and not used[j]
                if hit:
                    used[j] = True
                hits.append(hit)
                scores.append(sc[i])
        aps.append(_ap(np.asarray(hits)[np.argsort(-np.asarray(scores), kind="stable")], total))
    return 100.0 * float(np.mean(aps))


def _ap(hits: np.ndarray, total: int) -> float:
    if total == 0:
        return 0.0
    tp = np.cumsum(hits)
    recall = np.concatenate([[0.0], tp / total, [1.0]])
    precision = np.concatenate([[1.0], tp / np.arange(1, len(hits) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def _found(cand: np.ndarray, layout: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    found = []
    for x in cand:
        boxes, scores, classes = detections(x, layout)
        keep = nms(boxes, scores, classes, 0.001)
        found.append((boxes[keep], scores[keep], classes[keep]))
    return found


def map50_labelled(layout: str) -> Callable[[np.ndarray, Labels], float]:
    """mAP@0.5 of stacked detection outputs against labelled boxes (one [k, 5] array per sample)."""
    def score(cand: np.ndarray, labels: Labels) -> float:
        if not isinstance(labels, list):
            raise ConfigError("map50 against labels needs boxes (boxes / val_boxes, YOLO txt or --labels COCO json); "
                              "the labels given are class ids.")
        if len(labels) != len(cand):
            raise ConfigError(f"{len(labels)} box labels for {len(cand)} samples: give one [k, 5] array (class, "
                              "x1, y1, x2, y2 in input pixels) per sample, empty where nothing is there.")
        return average_precision_50(_found(cand, layout), labels)
    return score


def map50(layout: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """mAP@0.5 of stacked detection outputs against fp32's detections scoring >= BOX_THRESHOLD."""
    return lambda cand, ref: average_precision_50(_found(cand, layout), [_pseudo_labels(x, layout) for x in ref])


def _pseudo_labels(x: np.ndarray, layout: str) -> np.ndarray:
    boxes, scores, classes = detections(x, layout)
    keep = nms(boxes, scores, classes, BOX_THRESHOLD)
    return np.concatenate([classes[keep, None].astype(np.float64), boxes[keep]], 1)


def _decoded(ref: np.ndarray, layout: str) -> bool:
    """Whether detection rows hold boxes in input pixels (exported with the decode, as YOLOv5/v8 do) rather than
    a raw head's offsets and log sizes (YOLOX without decode): fp32's confident boxes have positive sizes of
    more than a pixel."""
    boxes, scores, _ = detections(ref[0], layout)
    top = np.argsort(-scores)[:20]
    sizes = boxes[top, 2:] - boxes[top, :2]
    return bool(len(top)) and bool((sizes > 1.0).all())


def relative(cand: np.ndarray, ref: np.ndarray) -> float:
    """100 x (1 - relative L2 error), at least 0: for outputs with one value per sample, where a per-sample
    cosine says nothing."""
    r, c = ref.astype(np.float64).reshape(-1), cand.astype(np.float64).reshape(-1)
    return 100.0 * max(0.0, 1.0 - float(np.linalg.norm(r - c)) / max(float(np.linalg.norm(r)), 1e-12))


def _detection_scores(layout: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """`scores` on a detection output's combined scores (objectness x class), for heads whose boxes are raw."""
    def score(cand: np.ndarray, ref: np.ndarray) -> float:
        return anchor_scores(np.stack([detections(x, layout)[1] for x in cand]),
                             np.stack([detections(x, layout)[1] for x in ref]))
    return score


# --------------------------------------------------------------------------------------------------- choosing
NAMES = ("top1", "top5", "binary", "steps", "ctc", "mask_iou", "miou", "map50", "scores", "cosine", "relative")


def named(name: str, index: int, ref: np.ndarray, why: str = "") -> Metric:
    """The metric called `name` on output `index` (whose fp32 values, stacked, are `ref`)."""
    why = why or "asked for"
    core = tuple(d for d in ref.shape[1:] if d != 1)
    means: Mapping[str, tuple[Any, Any]] = {
        "top1": (top1, top1_labelled), "top5": (top5, top5_labelled), "binary": (binary, None), "steps": (steps, None),
        "ctc": (ctc, None), "cosine": (cosine, None)}
    wholes = {"mask_iou": mask_iou, "miou": miou, "scores": anchor_scores, "relative": relative}
    if name in means:
        return _mean_over_samples(name, index, why, *means[name])
    if name in wholes:
        return _on_output(name, index, why, wholes[name])
    if name == "map50":
        if len(core) != 2:
            raise ConfigError(f"--metric map50 needs detection rows [anchors, 4 + 1 + classes] or [4 + classes, "
                              f"anchors] per sample; output {index} has {list(ref.shape[1:])}. Name the detection "
                              "output: --metric OUTPUT=map50.")
        layout = "v5" if core[0] > core[1] else "v8"
        return _on_output(name, index, why, map50(layout), map50_labelled(layout))
    raise ConfigError(f"Unknown metric '{name}'. Choose from: {', '.join(NAMES)}; or pass a callable "
                      "metric(outputs, truth) -> points in Python.")


def producers(proto: Any) -> list[str]:
    """Per graph output, the op that computes it, looking through ops that only move or relabel data
    (Reshape, Transpose, Identity, ...); a softmax written out as Exp / sum reads as Softmax."""
    graph = proto.graph
    made_by = {o: n for n in graph.node for o in n.output}
    ops = []
    for out in graph.output:
        node = made_by.get(out.name)
        while node is not None and node.op_type in _SHAPE_OPS and node.input:
            node = made_by.get(node.input[0])
        op = node.op_type if node is not None else "input"
        if op == "Div" and made_by.get(node.input[0]) is not None and made_by[node.input[0]].op_type == "Exp":
            op = "Softmax"
        if op == "Add" and any(made_by.get(i) is not None and made_by[i].op_type in ("MatMul", "Gemm")
                               for i in node.input):
            op = "MatMul"
        ops.append(op)
    return ops


def choose(op: str, index: int, ref: np.ndarray) -> Metric:
    """The metric for output `index`, produced by `op`, with fp32 values `ref` ([N, ...] stacked samples)."""
    core = tuple(d for d in ref.shape[1:] if d != 1)
    if not core:
        in_unit = ref.size and float(ref.min()) >= 0.0 and float(ref.max()) <= 1.0
        return named("binary" if in_unit else "relative", index, ref,
                     "one probability per sample" if in_unit else "one value per sample")
    if op in _LOGIT_OPS and len(core) == 1 and core[0] >= 2:
        return named("top1", index, ref, f"class scores from {op}")
    if op in _LOGIT_OPS and len(core) == 2:
        return named("steps", index, ref, f"per-step scores [{core[0]}, {core[1]}] from {op}")
    if op == "Softmax" and len(core) == 3 and min(core[1:]) >= 8:
        return named("miou", index, ref, f"per-pixel class scores {list(core)}")
    sample = ref.shape[1:]
    if op == "Sigmoid" and len(core) == 1:
        return named("binary", index, ref, f"{core[0]} probabilities per sample")
    if op == "Sigmoid" and len(sample) == 2 and sample[0] >= 100:
        return named("scores", index, ref, f"per-anchor class scores [{sample[0]}, {sample[1]}]")
    if op == "Sigmoid" and len(sample) >= 3 and min(sample[-2:]) >= 8:
        return named("mask_iou", index, ref, f"a probability map {list(sample)}")
    if op == "Concat" and len(core) == 2 and max(core) >= 1000 and 5 <= min(core) <= 300:
        layout = "v5" if core[0] > core[1] else "v8"
        if _decoded(ref, layout):
            return named("map50", index, ref, f"detections {list(core)} (boxes in pixels)")
        return _on_output("scores", index, f"detection rows {list(core)} with raw boxes: objectness x class",
                          _detection_scores(layout))
    return named("cosine", index, ref, "no task shape recognised")


def for_model(proto: Any, reference: Sequence[np.ndarray], spec: Any = None) -> tuple[list[Metric], Metric]:
    """One metric per output (`choose`, or as `spec` names them) and the primary metric (budgets and the
    headline): `spec` is None, a metric name (for the first output), {output name: metric name}, or a callable
    `metric(outputs, truth) -> points` over every output (truth: the labels, or the fp32 outputs)."""
    names = [o.name for o in proto.graph.output]
    chosen = [choose(op, i, ref) for i, (op, ref) in enumerate(zip(producers(proto), reference))]
    if spec is None:
        return chosen, chosen[0]
    if callable(spec):
        name = getattr(spec, "__name__", "metric")
        return chosen, Metric(name, None, "given in Python", spec, spec)
    check_spec(spec, names)
    wanted = {names[0]: spec} if isinstance(spec, str) else dict(spec)
    for out, name in wanted.items():
        i = names.index(out)
        chosen[i] = named(name, i, reference[i])
    return chosen, chosen[names.index(next(iter(wanted)))]


def check_spec(spec: Any, outputs: Sequence[str]) -> None:
    """ConfigError, before any work, for a metric spec naming an unknown metric or output."""
    if spec is None or callable(spec):
        return
    if not isinstance(spec, (str, Mapping)):
        raise ConfigError(f"metric must be a name, {{output: name}} or a callable, not {type(spec).__name__}.")
    wanted = {outputs[0] if outputs else "": spec} if isinstance(spec, str) else dict(spec)
    for out, name in wanted.items():
        if name not in NAMES:
            raise ConfigError(f"Unknown metric '{name}'. Choose from: {', '.join(NAMES)}; or pass a callable "
                              "metric(outputs, truth) -> points in Python.")
        if out not in outputs:
            raise ConfigError(f"--metric names output '{out}', which the model does not have; its outputs: "
                              f"{', '.join(outputs)}.")


def parse_spec(values: Sequence[str]) -> Any:
    """--metric values (NAME or OUTPUT=NAME, repeatable) -> a spec for `for_model` (None when none given)."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    spec: dict[str, str] = {}
    for v in values:
        out, sep, name = v.rpartition("=")
        if not sep:
            raise ConfigError(f"--metric {v}: with several --metric options, name the output of each: "
                              "--metric OUTPUT=NAME.")
        spec[out] = name
    return spec


# ----------------------------------------------------------------------------------------------- uncertainty
def _take(labels: Labels, idx: np.ndarray, n: int) -> Labels:
    if isinstance(labels, np.ndarray):
        return labels.reshape(n, -1)[idx].reshape(-1)
    return [labels[i] for i in idx]


def standard_error_of_drop(metric: Metric, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                        labels: Labels | None = None, resamples: int = 100, seed: int = 0) -> float:
    """Standard error (points) of score(fp32) - score(candidate): exact for a mean over samples, else by a paired
    bootstrap over the samples (the same resampled samples score both sides)."""
    n = len(reference[0])
    if n < 2:
        return 0.0
    labelled = metric.against_labels(labels)
    if metric.each is not None:  # a mean over samples: the standard error of the mean per-sample difference
        base = metric.each(reference, reference, labels) if labelled else np.full(n, 100.0)
        diff = base - metric.each(candidate, reference, labels if labelled else None)
        return float(diff.std()) / float(np.sqrt(n))
    rng = np.random.default_rng(seed)
    drops = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        ref = [r[idx] for r in reference]
        cand = [c[idx] for c in candidate]
        sub = _take(labels, idx, n) if labelled else None
        base = 100.0 if metric.output is not None and not labelled else metric.score(ref, ref, sub)
        drops.append(base - metric.score(cand, ref, sub))
    return float(np.std(drops))
