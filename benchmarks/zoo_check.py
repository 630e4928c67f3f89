"""Self-check of the model zoo, run by hand (not a test): ``python -m benchmarks.zoo_check [NAME ...]``.

For every model (or those named): fetch + verify it, check that the published graph matches the catalogue
(opset, node counts, input names), run ONNX Runtime on calib and val samples at ``input_shapes``, require finite,
non-constant outputs, run a model-specific sanity check (OCR decodes a rendered line, VAD scores speech above
silence, detectors score something on a page, ...) and print a table: name, package, opset, nodes, inputs,
ORT latency (median ms, 1 thread), output shapes, sanity result. Exit status 1 if any model fails.
"""
from __future__ import annotations

import ast
import json
import sys
import time
import zipfile

import numpy as np
import onnx

from benchmarks import zoo_data as data
from benchmarks import zoo_models as zm


def _graph_facts(m: zm.ZooModel) -> tuple[int, int, int, list[str]]:
    model = onnx.load(str(m.path()))

    def count(g: onnx.GraphProto) -> int:
        return sum(1 + sum(count(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
                   + sum(count(sg) for a in n.attribute for sg in a.graphs) for n in g.node)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inits = {i.name for i in model.graph.initializer}
    return opset, len(model.graph.node), count(model.graph), [i.name for i in model.graph.input if i.name not in inits]


def _ctc(probs: np.ndarray, chars: list[str]) -> str:
    idx = probs.argmax(-1)
    return "".join(chars[i] for j, i in enumerate(idx) if i != 0 and (j == 0 or i != idx[j - 1]))


def _sane_ppocr_rec(m: zm.ZooModel, sess) -> str:  # noqa: ANN001
    chars = ["blank"] + sess.get_modelmeta().custom_metadata_map["character"].splitlines() + [" "]
    rng = np.random.default_rng(1)
    out = []
    for text in ("Invoice No. 2024", "Total 1,284.50 EUR"):
        img, _ = data.render_line(rng, text)
        x = zm._ppocr_line(img, 48, 320)
        out.append(_ctc(sess.run(None, {"x": x})[0][0], chars))
    return " | ".join(repr(o) for o in out)


def _sane_ppocr_cls(m: zm.ZooModel, sess) -> str:  # noqa: ANN001
    rng = np.random.default_rng(2)
    right = 0
    for k in range(10):
        img, _ = data.render_line(rng)
        img = img[:, :img.shape[0] * 4]
        flip = k % 2 == 1
        x = zm._ppocr_line(np.ascontiguousarray(img[::-1, ::-1]) if flip else img, 48, 192)
        right += int(sess.run(None, {"x": x})[0][0].argmax() == int(flip))
    return f"{right}/10 upright/flipped lines classified right"


def _sane_vad(m: zm.ZooModel, sess) -> str:  # noqa: ANN001
    rng = np.random.default_rng(3)
    probs = {}
    for kind, gen in (("speech", data.speech_like), ("silence", data.silence)):
        audio = gen(rng, 1.1)
        if "state" in m.input_shapes:
            state, sr = np.zeros((2, 1, 128), np.float32), np.array(16000, np.int64)
            ctx, ps = np.zeros(64, np.float32), []
            for i in range(0, 16384, 512):
                x = np.concatenate([ctx, audio[i:i + 512]])[None]
                p, state = sess.run(None, {"input": x, "state": state, "sr": sr})
                ctx = x[0, -64:]
                ps.append(float(p.ravel()[0]))
        else:
            chunks = audio[:16384].reshape(32, 512)
            ctx = np.concatenate([np.zeros((1, 64), np.float32), chunks[:-1, -64:]])
            z = np.zeros((1, 1, 128), np.float32)
            ps = sess.run(None, {"input": np.concatenate([ctx, chunks], 1), "h": z, "c": z})[0].ravel().tolist()
        probs[kind] = float(np.mean(ps[4:]))
    return f"mean p(speech): speech-like {probs['speech']:.3f}, silence {probs['silence']:.3f}"


def _sane_magika(m: zm.ZooModel, sess) -> str:  # noqa: ANN001
    with zipfile.ZipFile(zm.wheel_path(m.package)) as zf:
        labels = json.loads(zf.read("magika/models/standard_v3_3/config.min.json"))["target_labels_space"]
        files = ["magika/magika.py", "magika/models/standard_v3_3/config.min.json",
                 "magika/models/standard_v3_3/README.md"]
        got = [labels[int(sess.run(None, {"bytes": zm._magika_features(zf.read(f))})[0].argmax())] for f in files]
    with zipfile.ZipFile(zm.wheel_path(zm.SKIMAGE)) as zf:
        png = zm._magika_features(zf.read("skimage/data/chelsea.png"))
        got.append(labels[int(sess.run(None, {"bytes": png})[0].argmax())])
    return "py/json/md/png -> " + "/".join(got)


def _sane_ddddocr_ocr(m: zm.ZooModel, sess) -> str:  # noqa: ANN001
    with zipfile.ZipFile(zm.wheel_path(m.package)) as zf:
        src = zf.read("ddddocr/charsets.py").decode()
    name = "CHARSET_OLD" if m.member.endswith("common_old.onnx") else "CHARSET_BETA"  # type: ignore[union-attr]
    chars = next(ast.literal_eval(node.value) for node in ast.parse(src).body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name)
    rng = np.random.default_rng(5)
    right, seen = 0, []
    for _ in range(10):
        x, text = zm.captcha(rng, "val", 192, 64)
        got = _ctc(sess.run(None, {"input1": x})[0].reshape(-1, len(chars)), chars)
        right += int(got == text)
        seen.append(f"{text}->{got}")
    return f"{right}/10 captchas read exactly, e.g. {', '.join(seen[:3])}"


def _sane_orientation(m: zm.ZooModel, sess) -> str:  # noqa: ANN001
    rng = np.random.default_rng(4)
    got = []
    for k in range(8):
        page = data.render_page(rng, zm._photos("val"), (1000, 1400))
        img = np.ascontiguousarray(np.rot90(page, k=k % 4))
        h, w = img.shape[:2]
        img = zm._resize(img, max(224, round(w * 256 / min(h, w))), max(224, round(h * 256 / min(h, w))))
        y, x = (img.shape[0] - 224) // 2, (img.shape[1] - 224) // 2
        feed = zm._bgr_chw(img[y:y + 224, x:x + 224], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        got.append(int(sess.run(None, {"x": feed})[0].argmax()))
    return f"pages turned by np.rot90 k=0,1,2,3,0,1,2,3 -> labels {got} (0/90/180/270)"


def _sane_bert(m: zm.ZooModel, sess) -> str:  # noqa: ANN001
    import torch
    model, _ = zm.bert_tiny()
    feed = m.samples(1, seed=7)[0]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    got = sess.run(None, feed)
    return f"max |ORT - torch| = {max(float(np.abs(r.numpy() - g).max()) for r, g in zip(ref, got)):.2e}"


def _sane_generic(m: zm.ZooModel, outs: list[list[np.ndarray]]) -> str:
    if m.name in ("picodet-layout-cdla",):
        return f"max class score per page: {[round(float(o[:4][i].max()), 2) for o in outs for i in range(4)][:4]}"
    if m.name == "ddddocr-det":
        return f"max obj*cls per image: {[round(float((o[0][0, :, 4] * o[0][0, :, 5]).max()), 2) for o in outs][:4]}"
    if m.name == "ppocr-det-v4":
        return f"text pixels (p>0.3): {[round(float((o[0] > 0.3).mean()), 3) for o in outs][:4]}"
    if m.name == "pplcnet-orientation":
        return f"argmax: {[int(o[0].argmax()) for o in outs]}"
    return f"output std: {[round(float(o[0].std()), 3) for o in outs][:4]}"


SANE = {"ppocr-rec-v4": _sane_ppocr_rec, "ppocr-cls-v2": _sane_ppocr_cls, "ppocr-cls-fp16": _sane_ppocr_cls,
        "silero-vad-v6": _sane_vad, "silero-vad-v6-op15": _sane_vad, "silero-vad-v6-seq": _sane_vad,
        "magika-v3.3": _sane_magika, "ddddocr-ocr": _sane_ddddocr_ocr, "ddddocr-ocr-beta": _sane_ddddocr_ocr,
        "bert-tiny": _sane_bert, "pplcnet-orientation": _sane_orientation}


def check(m: zm.ZooModel) -> tuple[list[str], bool]:
    """One model's table row and whether it passed."""
    opset, nodes, nodes_all, inputs = _graph_facts(m)
    problems = [f"{k}: catalogue {a} != graph {b}" for k, a, b in
                (("opset", m.opset, opset), ("nodes", m.nodes, nodes), ("nodes_all", m.nodes_all, nodes_all),
                 ("inputs", [i.name for i in m.inputs], inputs)) if a != b]
    sess = zm._session(m.path())
    t0 = time.perf_counter()
    feeds = m.samples(4, seed=0, split="calib") + m.samples(2, seed=0, split="val")
    t_samples = (time.perf_counter() - t0) / len(feeds)
    for f in feeds:
        for k, shape in m.input_shapes.items():
            if f[k].shape != shape:
                problems.append(f"sample {k} shape {f[k].shape} != {shape}")
    outs = [sess.run(None, f) for f in feeds]
    for j in range(len(outs[0])):
        stacked = np.stack([o[j] for o in outs])
        if not np.isfinite(stacked).all() or float(stacked.std()) == 0.0:
            problems.append(f"output {j} is non-finite or the same for every sample")
    times = []
    for _ in range(5):
        t = time.perf_counter()
        sess.run(None, feeds[0])
        times.append((time.perf_counter() - t) * 1000)
    sanity = SANE[m.name](m, sess) if m.name in SANE else _sane_generic(m, outs)
    shapes = " ".join("x".join(map(str, a.shape)) for a in outs[0])
    ins = " ".join(f"{k}={'x'.join(map(str, s)) or 'scalar'}" for k, s in m.input_shapes.items())
    row = [m.name, m.package, str(opset), f"{nodes}/{nodes_all}", ins, f"{np.median(times):.1f}",
           f"{t_samples * 1000:.0f}", shapes, "; ".join(problems) or "ok", sanity]
    return row, not problems


def main(names: list[str]) -> int:
    models = [zm.get(n) for n in names] if names else list(zm.ZOO)
    head = ["name", "package", "opset", "nodes", "compile shapes", "ORT ms", "sample ms", "outputs", "check",
            "sanity"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
    ok = True
    for m in models:
        try:
            row, good = check(m)
        except Exception as e:  # noqa: BLE001 - a self-check reports every model, then fails
            row, good = [m.name, m.package] + [""] * 6 + [f"FAILED: {type(e).__name__}: {e}", ""], False
        ok &= good
        print("| " + " | ".join(row) + " |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
