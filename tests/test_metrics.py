"""Task metrics (edgec/metrics.py), every output checked, budgets in a chosen metric, detection labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

import edgec
from edgec import cli, metrics
from edgec.accuracy import Judge, check, compare, drop_standard_error
from edgec.calibration import CalibrationSet
from edgec.errors import ConfigError

from models import three_head_onnx

RNG = np.random.default_rng(0)


def _detections(boxes: np.ndarray, scores: np.ndarray, anchors: int = 1200) -> np.ndarray:
    """One sample of YOLOv5-layout rows [anchors, 4 + 1 + 1]: the given x1y1x2y2 boxes first, then empty rows."""
    rows = np.zeros((anchors, 6), np.float32)
    rows[:, 2:4] = 4.0
    rows[:len(boxes), 0:2] = (boxes[:, :2] + boxes[:, 2:]) / 2
    rows[:len(boxes), 2:4] = boxes[:, 2:] - boxes[:, :2]
    rows[:len(boxes), 4] = scores
    rows[:, 5] = 1.0
    return rows[None]


def test_classification_agreement_and_labels() -> None:
    ref = np.array([[3.0, 1, 0], [0, 2, 1], [0, 0, 5], [1, 2, 0]])
    cand = ref.copy()
    cand[3] = [2, 1, 0]  # one flip
    assert metrics.top1(cand, ref).mean() == 75.0 and metrics.top5(cand, ref).mean() == 100.0
    assert metrics.top1_labelled(cand, np.array([0, 1, 2, 1])).mean() == 75.0
    with pytest.raises(ConfigError, match="3 class labels for 4 output rows"):
        metrics.top1_labelled(cand, np.array([0, 1, 2]))
    assert metrics.binary(np.array([0.2, 0.7, 0.6]), np.array([0.1, 0.9, 0.4])).mean() == pytest.approx(200 / 3)


def test_sequences_per_step_and_ctc_strings() -> None:
    ids = np.array([[0, 3, 3, 0, 3, 5, 5, 0]])
    ref = np.eye(6)[ids]                                  # [1, 8, 6] one-hot steps
    assert metrics.ctc_strings(ref) == [(3, 3, 5)]        # repeats collapse, a blank separates the two 3s
    cand = ref.copy()
    cand[0, 2] = np.eye(6)[0]                             # a step moves: 3,3 -> 3,blank decodes the same
    assert metrics.steps(cand, ref).mean() == pytest.approx(100 * 7 / 8) and metrics.ctc(cand, ref).mean() == 100.0
    cand = ref.copy()
    cand[0, 3] = np.eye(6)[3]                             # the blank between the 3s goes: "3 5" now
    assert metrics.ctc(cand, ref).mean() == 0.0


def test_dense_maps_are_thresholded() -> None:
    ref = np.zeros((2, 1, 8, 8))
    ref[:, :, :4] = 0.9
    cand = ref.copy()
    cand[0, 0, 4] = 0.5                                   # 8 more pixels over 0.3: IoU 64 / 72
    assert metrics.mask_iou(cand, ref) == pytest.approx(100 * 64 / 72)
    assert metrics.mask_iou(np.zeros_like(ref), np.zeros_like(ref)) == 100.0
    seg = RNG.random((3, 4, 8, 8))
    assert metrics.miou(seg, seg) == 100.0 and metrics.miou(np.roll(seg, 1, axis=1), seg) < 50.0


def test_map50_against_fp32_boxes_and_labels() -> None:
    boxes = np.array([[10, 10, 50, 50], [60, 60, 100, 120]], np.float64)
    ref = _detections(boxes, np.array([0.9, 0.8]))
    score = metrics.map50("v5")
    assert score(ref, ref) == 100.0
    moved = _detections(boxes + [[0, 0, 0, 0], [30, 30, 30, 30]], np.array([0.9, 0.8]))  # second box: IoU < 0.5
    assert score(moved, ref) == pytest.approx(50.0)
    labels = [np.array([[0, 10, 10, 50, 50], [0, 60, 60, 100, 120]], np.float64)]
    assert metrics.map50_labelled("v5")(ref, labels) == 100.0
    assert metrics.map50_labelled("v5")(moved, labels) == pytest.approx(50.0)
    v8 = np.ascontiguousarray(np.delete(ref, 4, axis=2).transpose(0, 2, 1))  # [1, 4 + 1 class, anchors]
    v8[0, 4, :2] = [0.9, 0.8]
    v8[0, 4, 2:] = 0.0
    assert metrics.map50("v8")(v8, v8) == 100.0


def test_metrics_are_chosen_from_the_producing_op_and_shape() -> None:
    def chosen(op: str, shape: tuple[int, ...], values: np.ndarray | None = None) -> str:
        ref = values if values is not None else RNG.random(shape).astype(np.float32)
        return metrics.choose(op, 0, ref).name

    assert chosen("Softmax", (4, 10)) == "top1" and chosen("Gemm", (4, 10)) == "top1"
    assert chosen("Softmax", (4, 40, 97)) == "steps"
    assert chosen("Softmax", (4, 5, 16, 16)) == "miou"
    assert chosen("Sigmoid", (4, 1, 32, 32)) == "mask_iou"
    assert chosen("Sigmoid", (4, 500, 10)) == "scores" and chosen("Sigmoid", (4, 1, 960, 736)) == "mask_iou"
    assert chosen("Sigmoid", (4, 32)) == "binary"
    assert chosen("Identity", (4, 1)) == "binary" and chosen("If", (4,), 5 * RNG.random(4)) == "relative"
    assert chosen("Tanh", (4, 128)) == "cosine" and chosen("LayerNormalization", (4, 64, 128)) == "cosine"
    boxes = np.array([[10, 10, 50, 50], [60, 60, 100, 120]], np.float64)
    decoded = np.concatenate([_detections(boxes, np.array([0.9, 0.8]))] * 2)
    assert chosen("Concat", decoded.shape, decoded) == "map50"
    raw = decoded.copy()
    raw[..., 2:4] = -1.0  # log sizes of a raw head: not boxes in pixels
    assert chosen("Concat", raw.shape, raw) == "scores"


def test_producers_look_through_reshapes_and_written_out_softmax() -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Exp", ["a"], ["e"]), helper.make_node("ReduceSum", ["e"], ["s"], keepdims=1),
             helper.make_node("Div", ["e", "s"], ["d"]), helper.make_node("Reshape", ["d", "shape"], ["probs"]),
             helper.make_node("Identity", ["a"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("probs", "logits")],
                              [onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
                               onnx.numpy_helper.from_array(np.zeros(3, np.float32), "b"),
                               onnx.numpy_helper.from_array(np.array([1, 3], np.int64), "shape")])
    assert metrics.producers(helper.make_model(graph)) == ["Softmax", "MatMul"]


def test_standard_error_is_exact_for_means_and_bootstrapped_otherwise() -> None:
    ref = RNG.random((100, 10))
    cand = ref.copy()
    cand[:7] = RNG.random((7, 10))
    top1 = metrics.named("top1", 0, ref)
    agree = cand.argmax(1) == ref.argmax(1)
    assert metrics.standard_error_of_drop(top1, [ref], [cand]) == pytest.approx(
        drop_standard_error(np.ones(100, bool), agree))
    maps = RNG.random((100, 1, 8, 8))
    noisy = maps + 0.1 * RNG.standard_normal(maps.shape)
    iou = metrics.named("mask_iou", 0, maps)
    error = metrics.standard_error_of_drop(iou, [maps], [noisy])
    assert 0 < error < 100 - iou.score([noisy], [maps])
    assert metrics.standard_error_of_drop(iou, [maps], [maps]) == 0.0


def test_a_build_wrong_only_in_its_third_output_fails_the_check() -> None:
    reference = [RNG.random((8, 5)), RNG.random((8, 16)), RNG.random((8, 1, 16, 16))]
    judge = Judge(("logits", "embedding", "mask"), tuple(metrics.choose(op, i, r) for i, (op, r) in
                                                         enumerate(zip(["Gemm", "Relu", "Sigmoid"], reference))),
                  metrics.choose("Gemm", 0, reference[0]))
    candidate = [r.copy() for r in reference]
    assert check(compare(reference, candidate, None, judge), "fp32")["ok"]
    candidate[2] = 1 - candidate[2]  # only the mask is wrong
    for precision in ("fp32", "int8"):
        result = check(compare(reference, candidate, None, judge), precision)
        assert not result["ok"] and result["failing_outputs"] == ["mask"], precision
        assert [r["metric"] for r in result["outputs"]] == ["top1", "cosine", "mask_iou"]
        assert result["outputs"][0]["agreement"] == 100.0 and "(mask)" in result["measured"]


@pytest.mark.requires_openvino
def test_int8_keeps_in_float_the_layers_that_break_one_output(tmp_path: Path) -> None:
    """int8 breaks only the mask of a three-output model: the int8 build names that output, keeps the layers
    that break it in float, and every output then passes its check."""
    path = tmp_path / "three.onnx"
    onnx.save(three_head_onnx(), path)
    x = RNG.random((64, 3, 16, 16), dtype=np.float32)
    build = edgec.compile(path, "intel-cpu", "int8", {"x": x[:32], "val_x": x[32:]}, output_dir=tmp_path / "o",
                          calibration_method="minmax", range_search=0, profile_runs=5, progress=False, use_cache=False)
    guard = build.report["int8_guard"]
    assert [b.split(" ")[0] for b in guard["broken_outputs"]] == ["mask"]
    assert {d["node"] for d in guard["float_layers"]} <= {"mask_a", "mask_b"} and guard["met"]
    acc = build.report["accuracy"]
    assert acc["ok"] and [r["name"] for r in acc["outputs"]] == ["logits", "embedding", "mask"]
    assert all(r["agreement"] >= 90 for r in acc["outputs"])


@pytest.mark.requires_openvino
def test_mixed_budget_in_mask_iou(tmp_path: Path) -> None:
    path = tmp_path / "three.onnx"
    onnx.save(three_head_onnx(), path)
    x = RNG.random((64, 3, 16, 16), dtype=np.float32)
    build = edgec.compile(path, "intel-cpu", "mixed", {"x": x[:32], "val_x": x[32:]}, output_dir=tmp_path / "o",
                          max_accuracy_drop=1.0, metric={"mask": "mask_iou"}, calibration_method="minmax",
                          range_search=0, profile_runs=5, progress=False, use_cache=False)
    mixed = build.report["mixed_precision"]
    assert mixed["metric"] == "mask_iou agreement with fp32" and mixed["met"]
    assert mixed["int8"] < 99.0 <= mixed["mixed"] and mixed["fp32"] == 100.0
    assert {d["node"] for d in mixed["float_layers"]} & {"mask_a", "mask_b"}
    assert mixed["standard_error_points"] >= 0
    assert "mask_iou agreement with fp32" in (tmp_path / "o" / "report.html").read_text()


@pytest.mark.requires_openvino
def test_a_python_metric_is_the_budget_and_is_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "three.onnx"
    onnx.save(three_head_onnx(), path)
    x = RNG.random((48, 3, 16, 16), dtype=np.float32)
    seen = []

    def mask_pixels(outputs, truth):  # points of mask pixels over 0.3 that agree with the truth's
        seen.append(len(outputs))
        return 100.0 * float(((outputs[2] >= 0.3) == (truth[2] >= 0.3)).mean())

    build = edgec.compile(path, "intel-cpu", "mixed", {"x": x[:32], "val_x": x[32:]}, output_dir=tmp_path / "o",
                          max_accuracy_drop=0.5, metric=mask_pixels, calibration_method="minmax", range_search=0,
                          profile_runs=5, progress=False)
    mixed = build.report["mixed_precision"]
    assert mixed["metric"] == "mask_pixels agreement with fp32" and mixed["met"] and mixed["mixed"] >= 99.5
    assert seen and set(seen) == {3}
    assert build.report["accuracy"]["metric"] == "mask_pixels" and build.report["accuracy"]["score"] >= 99.5
    assert not list(edgec.cache.cache_dir().glob("*/manifest.json")) or all(
        json.loads(p.read_text())["model"]["sha256"] != build.manifest["model"]["sha256"]
        for p in edgec.cache.cache_dir().glob("*/manifest.json"))


def test_metric_options_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    path = tmp_path / "three.onnx"
    onnx.save(three_head_onnx(), path)
    base = ["compile", str(path), "-p", "fp32", "-o", str(tmp_path / "o"), "-q"]
    assert cli.main(base + ["--metric", "mAP"]) == 2
    assert "Unknown metric 'mAP'" in capsys.readouterr().err
    assert cli.main(base + ["--metric", "boxes=map50"]) == 2
    assert "output 'boxes'" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert cli.main(base + ["--metric", "mask=mask_iou", "--metric", "top1"]) == 2
    assert "--metric OUTPUT=NAME" in capsys.readouterr().err


def _photo_folder(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(folder / f"{i}.png")
        Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_yolo_txt_and_coco_boxes_follow_the_recipe_onto_the_input(tmp_path: Path) -> None:
    spec = three_head_onnx().graph.input[0]
    model = edgec.Model(three_head_onnx(), {"source": "t", "kind": "onnx"})
    assert spec.name == "x"
    _photo_folder(tmp_path / "data" / "images", [(32, 64), (64, 64)])
    labels = tmp_path / "data" / "labels"
    labels.mkdir()
    (labels / "0.txt").write_text("2 0.5 0.25 0.5 0.25\n")   # x 8..24 of 32, y 8..24 of 64
    samples = CalibrationSet(str(tmp_path / "data" / "images")).load(model.inputs)
    assert "boxes from YOLO txt files" in samples.description
    assert np.allclose(samples.labels[0], [[2, 4, 2, 12, 6]]) and samples.labels[1].shape == (0, 5)  # -> 16x16
    coco = {"images": [{"id": 1, "file_name": "0.png", "width": 32, "height": 64},
                       {"id": 2, "file_name": "1.png", "width": 64, "height": 64}],
            "annotations": [{"image_id": 2, "category_id": 7, "bbox": [0, 32, 32, 16]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    samples = CalibrationSet(str(tmp_path / "data" / "images"), labels=str(tmp_path / "coco.json")).load(model.inputs)
    assert samples.labels[0].shape == (0, 5) and np.allclose(samples.labels[1], [[7, 0, 8, 8, 12]])
    with pytest.raises(ConfigError, match="no entry for 1 calibration image"):
        coco["images"].pop()
        (tmp_path / "coco.json").write_text(json.dumps(coco))
        CalibrationSet(str(tmp_path / "data" / "images"), labels=str(tmp_path / "coco.json")).load(model.inputs)


def test_box_labels_in_python_data() -> None:
    model = edgec.Model(three_head_onnx(), {"source": "t", "kind": "onnx"})
    x = RNG.random((3, 3, 16, 16), dtype=np.float32)
    boxes = [np.array([[0, 1, 1, 5, 5]]), np.zeros((0, 5)), np.array([[1, 2, 2, 9, 9], [0, 0, 0, 3, 3]])]
    samples = CalibrationSet({"x": x, "boxes": boxes}).load(model.inputs)
    assert [len(b) for b in samples.labels] == [1, 0, 2] and np.allclose(samples.labels[2][0], [1, 2, 2, 9, 9])
    with pytest.raises(ConfigError, match="not both"):
        CalibrationSet({"x": x, "boxes": boxes, "y": np.zeros(3)}).load(model.inputs)
    with pytest.raises(ConfigError, match=r"\[M, 6\] rows"):
        CalibrationSet({"x": x, "boxes": np.zeros((2, 4))}).load(model.inputs)


def test_labels_of_the_wrong_kind_are_a_config_error() -> None:
    ref = RNG.random((2, 1200, 6))
    boxes = [np.zeros((0, 5)), np.array([[0, 1, 1, 5, 5]])]
    with pytest.raises(ConfigError, match="detection boxes"):
        metrics.named("top1", 0, RNG.random((2, 4))).score([RNG.random((2, 4))], [RNG.random((2, 4))], boxes)
    with pytest.raises(ConfigError, match="needs boxes"):
        metrics.named("map50", 0, ref).score([ref], [ref], np.array([0, 1]))
