"""edgec.device.trt_layers against real trtexec outputs (tests/fixtures/trtexec, from NVIDIA's TREx; see the
README there) and against hand-made layer dicts for the formats those 2022-era files do not contain
(Metadata, Myelin ForeignNode, DLA).

The fixtures ship without their ONNX models, so `onnx_order` is rebuilt from the fixture itself: the PyTorch
exporter named every node OpType_N with N increasing in graph order, so the "Word_N" parts of the layer names,
sorted by N, are (a subset of) the ONNX graph in graph order. Weight names such as "conv1.weight" are
initializers, not nodes, and are left out of that order on purpose.
"""
import json
import re
from pathlib import Path

from edgec.device.trt_layers import dla_fallback, layer_precision, layer_rows, onnx_nodes, trtexec_rows

FIXTURES = Path(__file__).parent / "fixtures" / "trtexec"
NODE = re.compile(r"^[A-Za-z]+_(\d+)$")


def _load(name: str):
    return json.loads((FIXTURES / name).read_text())


def _order_from_names(layer_info) -> list:
    """The ONNX node names a PyTorch-exported engine's layer names mention, in graph order (see module doc)."""
    names = set()
    for layer in layer_info["Layers"]:
        for part in re.split(r" \+ |PWN\(|, |\)", layer["Name"]):
            if NODE.match(part.strip()):
                names.add(part.strip())
    return sorted(names, key=lambda n: int(NODE.match(n).group(1)))


def test_real_graphs_give_a_precision_for_every_layer_with_formats() -> None:
    """Every layer of the four real graph JSONs has Inputs/Outputs formats and gets a precision; the counts per
    precision are the ones observed, so a parser regression (e.g. the old search for "Float" that never
    matched "FP32") shows as a changed number."""
    expected = {
        "mobilenet.qat": (73, {"int8": 70, "fp16": 2, "fp32": 1}),
        "resnet.fp16": (36, {"fp16": 35, "fp32": 1}),
        "resnet.fp32": (32, {"fp32": 32}),
        "tf-resnet.fp32": (103, {"fp32": 103}),
    }
    for stem, (count, precisions) in expected.items():
        info = _load(stem + ".onnx.engine.graph.json")
        rows = layer_rows(info, [])
        assert len(rows) == count == len(info["Layers"])
        with_formats = [layer for layer in info["Layers"] if layer["Inputs"] or layer["Outputs"]]
        assert len(with_formats) == count
        seen = {}
        for row in rows:
            seen[row["precision"]] = seen.get(row["precision"], 0) + 1
        assert seen == precisions, stem
        assert all(row["time_ms"] is None and row["device"] == "GPU" for row in rows)


def test_real_int8_rows_carry_op_tactic_and_nodes() -> None:
    """A QAT conv layer of the real int8 engine reads as int8 with its LayerType and TacticName, and maps to its
    Conv and Clip nodes; its weight and QuantizeLinear-on-weights parts drop out when they are not graph nodes
    (QuantizeLinear_8 is in the rebuilt order, so it stays, as the layer computes it)."""
    info = _load("mobilenet.qat.onnx.engine.graph.json")
    order = _order_from_names(info)
    rows = layer_rows(info, order)
    conv = rows[1]
    assert conv["layer"] == "features.0.0.weight + QuantizeLinear_8 + Conv_12 + PWN(Clip_16)"
    assert conv["op"] == "CaskConvolution"
    assert conv["exec"] == "volta_int8x4_icudnn_int8x4_128x32_relu_xregs_medium_c32_nn_v1"
    assert conv["precision"] == "int8"
    assert conv["onnx_nodes"] == ["QuantizeLinear_8", "Conv_12", "Clip_16"]
    quantize = rows[0]  # a Reformat layer that *is* the ONNX QuantizeLinear node: it is not glue
    assert (quantize["op"], quantize["precision"], quantize["onnx_nodes"]) == ("Reformat", "int8", ["QuantizeLinear_2"])
    assert all(row["onnx_nodes"] for row in rows if not row["layer"].startswith(("Reformatting", "copied_")))


def test_real_reformat_layers_map_to_nothing() -> None:
    """TensorRT's "Reformatting CopyNode for Input/Output Tensor N to LAYER" layers (43 of them in the TF ResNet
    engine, as Reformat or NoOp) compute no ONNX node even though LAYER's node names follow "to"."""
    info = _load("tf-resnet.fp32.onnx.engine.graph.json")
    order = [n for layer in info["Layers"] if not layer["Name"].startswith("Reformatting")
             for n in layer["Name"].split(" + ")]
    rows = layer_rows(info, order)
    glue = [row for row in rows if row["layer"].startswith("Reformatting CopyNode for ")]
    assert len(glue) == 43
    assert {row["op"] for row in glue} == {"Reformat", "NoOp"}
    assert all(row["onnx_nodes"] == [] for row in glue)
    fused = next(row for row in rows if row["layer"].startswith("resnet50/conv2_block1_0_conv/Conv2D + "))
    assert fused["onnx_nodes"] == ["resnet50/conv2_block1_0_conv/Conv2D", "resnet50/conv2_block1_add/add",
                                   "resnet50/conv2_block1_out/Relu"]


def test_metadata_entries_win_over_the_name() -> None:
    """Detailed info's Metadata ([ONNX Layer: NAME] entries joined by 0x1F, the form onnx-tensorrt writes, with
    " | caller (Function)" suffixes for ONNX local functions, or 0x1E as TensorRT 8.6 wrote) gives the nodes,
    in order, without duplicates, dropping names that are not in the graph."""
    order = ["/conv/Conv", "/act/Relu", "/fn/Mul", "/add/Add"]
    info = {"Name": "myelin_fused_7", "LayerType": "kgen",
            "Metadata": "[ONNX Layer: /conv/Conv]\x1f[ONNX Layer: /act/Relu]\x1f[ONNX Layer: /conv/Conv]"
                        "\x1e[ONNX Layer: /fn/Mul | /block (MyFunc)]\x1f[ONNX Layer: not_in_graph]"}
    assert onnx_nodes(info["Name"], info, order) == ["/conv/Conv", "/act/Relu", "/fn/Mul"]
    concatenated = {"Metadata": "[ONNX Layer: /add/Add][ONNX Layer: /act/Relu]"}
    assert onnx_nodes("whatever", concatenated, order) == ["/add/Add", "/act/Relu"]


def test_names_fused_with_plus_and_pwn() -> None:
    """Without Metadata the name is read: " + " parts, nested PWN(a, PWN(b, c)) opened, order kept, weights and
    TensorRT's own names (not in the graph) dropped, a whole-name match kept as one node."""
    order = ["conv1", "relu1", "Mul_3", "Add_4", "Sigmoid_5", "odd + name"]
    assert onnx_nodes("conv1 + relu1", None, order) == ["conv1", "relu1"]
    assert onnx_nodes("conv1.weight + conv1 + PWN(Mul_3, PWN(Add_4, Sigmoid_5))", None, order) == \
        ["conv1", "Mul_3", "Add_4", "Sigmoid_5"]
    assert onnx_nodes("PWN(PWN(Sigmoid_5, Mul_3), relu1)", "plain string", order) == ["Sigmoid_5", "Mul_3", "relu1"]
    assert onnx_nodes("odd + name", None, order) == ["odd + name"]
    assert onnx_nodes("(Unnamed Layer* 849) [Shuffle] + relu1 + relu1", None, order) == ["relu1"]
    assert onnx_nodes("nothing_here", None, order) == []


def test_foreign_node_ranges_expand_in_graph_order() -> None:
    """A Myelin "{ForeignNode[first...last]}" layer computes every node from first to last in ONNX graph order
    (including ones its name never mentions); an end that is itself a fused name uses its earliest/latest known
    node; ends not in the graph give [] rather than a guess."""
    order = ["/Constant_7", "/a/MatMul", "/a/Softmax", "/b/MatMul", "/Einsum_1", "/tail/Add"]
    assert onnx_nodes("{ForeignNode[/a/MatMul.../Einsum_1]}", None, order) == \
        ["/a/MatMul", "/a/Softmax", "/b/MatMul", "/Einsum_1"]
    assert onnx_nodes("{ForeignNode[/Constant_7 + ONNXTRT_Broadcast.../b/MatMul]}", None, order) == \
        ["/Constant_7", "/a/MatMul", "/a/Softmax", "/b/MatMul"]
    assert onnx_nodes("{ForeignNode[/tail/Add]}", None, order) == ["/tail/Add"]
    assert onnx_nodes("{ForeignNode[/missing...Einsum_9]}", None, order) == []


def test_layer_precision_variants() -> None:
    """Precision comes from the format strings, output first, int8 input winning; TensorRT 10's bare datatypes
    ("Half", "BFloat16") are read too, BFloat16 is not taken for Float, and no formats give ""."""
    def layer(inp, out, key="Format/Datatype"):
        return {"Inputs": [{key: inp}], "Outputs": [{key: out}]}
    fp16 = "Channel major FP16 format where channel % 8 == 0"
    assert layer_precision(layer("Row major linear FP32", fp16)) == "fp16"
    int8 = "Four wide channel vectorized row major Int8 format"
    assert layer_precision(layer(int8, "Row major linear FP32")) == "int8"
    assert layer_precision(layer("Half", "BFloat16")) == "bf16"
    assert layer_precision(layer("Float", "Float")) == "fp32"
    assert layer_precision(layer("Int32", "Bool", key="Datatype")) == "bool"
    assert layer_precision(layer("Row major linear FP8 format", "Row major linear FP8 format")) == "fp8"
    assert layer_precision(layer("Unknown format", "Unknown format")) == ""
    assert layer_precision({"Name": "x"}) == "" and layer_precision("x") == ""


def test_layer_times_are_averaged_over_runs() -> None:
    """layer_times hold totals over `runs` runs: time_ms is total / runs; a layer with no time gets None."""
    info = {"Layers": [{"Name": "conv1 + relu1", "LayerType": "CaskConvolution"}, {"Name": "fc"}]}
    rows = layer_rows(info, ["conv1", "relu1", "fc"], {"conv1 + relu1": 3.0}, runs=4)
    assert rows[0]["time_ms"] == 0.75 and rows[1]["time_ms"] is None
    assert rows[0]["onnx_nodes"] == ["conv1", "relu1"] and rows[1]["onnx_nodes"] == ["fc"]


def test_plain_string_layers() -> None:
    """With LAYER_NAMES_ONLY verbosity "Layers" is a list of names: rows have empty op/exec/precision and nodes
    read from the names."""
    info = {"Layers": ["Reformatting CopyNode for Input Tensor 0 to conv1 + relu1", "conv1 + relu1"],
            "Bindings": ["x", "y"]}
    rows = layer_rows(info, ["conv1", "relu1"])
    assert [(r["op"], r["exec"], r["precision"], r["onnx_nodes"]) for r in rows] == \
        [("", "", "", []), ("", "", "", ["conv1", "relu1"])]


def test_trtexec_profile_rows() -> None:
    """The real --exportProfile JSON: the {"count": N} header is skipped, each row's time_ms is the layer's
    averageMs, op/precision come from the layer info when given and are "" for a layer missing from it (or
    when no layer info is given), where the nodes still come from the name."""
    profile = _load("mobilenet.qat.onnx.engine.profile.json")
    info = _load("mobilenet.qat.onnx.engine.graph.json")
    order = _order_from_names(info)
    assert profile[0] == {"count": 6610}
    rows = trtexec_rows(profile, info, order)
    assert len(rows) == len(profile) - 1 == 73
    assert [r["time_ms"] for r in rows] == [float(p["averageMs"]) for p in profile[1:]]
    assert rows[0]["time_ms"] == 0.00474854 and rows[0]["op"] == "Reformat"
    partial = {"Layers": info["Layers"][1:]}
    first = trtexec_rows(profile, partial, order)[0]
    assert (first["op"], first["exec"], first["precision"], first["onnx_nodes"]) == ("", "", "", ["QuantizeLinear_2"])
    bare = trtexec_rows(profile, None, order)
    assert all(r["op"] == r["precision"] == "" for r in bare)
    assert bare[1]["onnx_nodes"] == ["QuantizeLinear_8", "Conv_12", "Clip_16"]
    old = trtexec_rows([{"count": 2}, {"name": "Conv_12", "timeMs": 1.0, "averageMs": 0.5, "percentage": 100}],
                       None, order)  # older trtexec: no medianMs
    assert old[0]["time_ms"] == 0.5 and old[0]["onnx_nodes"] == ["Conv_12"]


def test_dla_fallback() -> None:
    """In an engine with a DLA layer (LayerType "DLA", as trtexec prints "Layer(DLA): {ForeignNode[...]}") the GPU
    layers that compute ONNX nodes are the fallback; DLA transfers ("x to nvm", "y from nvm", "x copy finish",
    names seen in a trtexec DLA profile, NVIDIA/TensorRT#3143) and reformat copies are not. An all-GPU engine
    (the real fixture) has no fallback."""
    order = ["Conv_0", "Relu_1", "Conv_2", "NonMaxSuppression_3"]
    info = {"Layers": [
        {"Name": "images to nvm", "LayerType": "Reformat"},
        {"Name": "{ForeignNode[Conv_0...Conv_2]}", "LayerType": "DLA"},
        {"Name": "out from nvm", "LayerType": "Reformat"},
        {"Name": "Reformatting CopyNode for Input Tensor 0 to NonMaxSuppression_3", "LayerType": "Reformat"},
        {"Name": "NonMaxSuppression_3", "LayerType": "NMS"},
        {"Name": "images copy finish", "LayerType": "Reformat"},
    ]}
    rows = layer_rows(info, order)
    assert [r["device"] for r in rows] == ["DLA", "DLA", "DLA", "GPU", "GPU", "DLA"]
    assert rows[1]["onnx_nodes"] == ["Conv_0", "Relu_1", "Conv_2"]
    assert dla_fallback(rows) == ["NonMaxSuppression_3"]
    assert dla_fallback(layer_rows(_load("resnet.fp16.onnx.engine.graph.json"), [])) == []


def test_dla_from_a_profile_without_layer_info() -> None:
    """A trtexec profile of a DLA engine without --exportLayerInfo (layer names as in NVIDIA/TensorRT#3143): the
    "{ForeignNode[...]}" layer is the DLA subgraph because the engine has "... to nvm" transfer layers, so only
    the GPU layer that computes an ONNX node is fallback; without transfer layers a ForeignNode stays GPU
    (Myelin)."""
    order = ["Conv_0", "Relu_1", "Concat_198", "TopK_199"]
    profile = [{"count": 10}] + [{"name": n, "timeMs": 1.0, "averageMs": 0.1, "medianMs": 0.1, "percentage": 20}
                                 for n in ("images to nvm", "{ForeignNode[Conv_0...Concat_198]}", "head_3 from nvm",
                                           "images copy finish", "TopK_199")]
    rows = trtexec_rows(profile, None, order)
    assert [r["device"] for r in rows] == ["DLA", "DLA", "DLA", "DLA", "GPU"]
    assert rows[1]["onnx_nodes"] == ["Conv_0", "Relu_1", "Concat_198"]
    assert dla_fallback(rows) == ["TopK_199"]
    myelin = trtexec_rows([profile[0], profile[2], profile[5]], None, order)
    assert [r["device"] for r in myelin] == ["GPU", "GPU"] and dla_fallback(myelin) == []
