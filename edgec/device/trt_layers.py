"""Map TensorRT's per-layer information and timings back to the ONNX nodes each engine layer computes.

Contract:
- Runs on a Jetson beside a standalone runner: Python 3.6+, standard library only, no edgec imports.
- Inputs are plain parsed JSON: TensorRT's engine-inspector output
  (IEngineInspector.get_engine_information(LayerInformationFormat.JSON), the same format as
  `trtexec --exportLayerInfo=FILE`), whose "Layers" list holds dicts (profiling verbosity DETAILED) or
  plain layer-name strings (LAYER_NAMES_ONLY); and `trtexec --exportProfile=FILE`, a list whose first
  item is {"count": N} and whose other items are {"name", "timeMs", "averageMs", ["medianMs"], "percentage"}.
- Every public function returns rows or names and never raises on an unknown layer: what cannot be read
  is left empty ("" or []) rather than guessed. An ONNX node name is only returned when it is in
  `onnx_order`, the ONNX graph's node names in graph order.

Public functions: layer_rows, onnx_nodes, layer_precision, trtexec_rows, dla_fallback. A row is a dict
with keys layer, op, exec, precision, time_ms, onnx_nodes, device.
"""
import re
from typing import Any, Dict, List, Optional, Sequence

# TensorRT joins the entries of a fused layer's Metadata with the unit separator (0x1F); TREx also
# replaces the record separator (0x1E), which TensorRT 8.6 used, so both count as separators.
_METADATA_SEPARATORS = ("\x1f", "\x1e")
_ONNX_LAYER = "[ONNX Layer: "
_FOREIGN_NODE = re.compile(r"^\{ForeignNode\[(.*)\]\}$", re.DOTALL)
# Layers TensorRT inserts that compute no ONNX node: format copies, and the DLA transfer layers
# ("images to nvm", "head_3 from nvm", "images copy finish" in a trtexec DLA profile).
_GLUE_PREFIXES = ("Reformatting CopyNode for ",)
_GLUE_SUFFIXES = (" to nvm", " from nvm", " copy finish")
# Words of a Format/Datatype string -> precision. Checked word by word, so "BFloat16" never reads as
# "Float" and "UInt8" never as "Int8".
_PRECISION_WORDS = {
    "fp32": "fp32", "float": "fp32", "float32": "fp32",
    "fp16": "fp16", "half": "fp16", "float16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp8": "fp8", "e4m3": "fp8", "fp8e4m3": "fp8",
    "fp4": "fp4", "fp4e2m1": "fp4",
    "int8": "int8", "uint8": "uint8", "int4": "int4",
    "int32": "int32", "int64": "int64", "bool": "bool",
    "double": "fp64",
}
_FORMAT_KEYS = ("Format/Datatype", "Datatype", "DataType", "Format")


def _layer_name(info: Any) -> str:
    """The TensorRT layer name of one "Layers" item: the string itself, or a dict's "Name" ("" if none)."""
    if isinstance(info, dict):
        return str(info.get("Name", ""))
    return str(info)


def _is_glue(name: str) -> bool:
    """True when `name` is a layer TensorRT inserted (reformat copy, DLA transfer) that computes no ONNX node."""
    return name.startswith(_GLUE_PREFIXES) or name.endswith(_GLUE_SUFFIXES)


def _metadata_names(metadata: str) -> List[str]:
    """The node names in a Metadata string, in order.

    Each entry reads "[ONNX Layer: NAME]" or, with ONNX local functions, "[ONNX Layer: NAME | caller (Fn) | ...]";
    entries are joined by 0x1F/0x1E or simply concatenated. Returns [] when there is no such entry.
    """
    names = []
    for part in metadata.split(_ONNX_LAYER)[1:]:
        for sep in _METADATA_SEPARATORS:
            part = part.split(sep)[0]
        end = part.rfind("]")
        inner = part[:end] if end >= 0 else part
        names.append(inner.split(" | ")[0].strip())
    return names


def _split_top(text: str, sep: str) -> List[str]:
    """Split `text` on `sep` where it is outside parentheses; "PWN(a, b) + c" on " + " -> ["PWN(a, b)", "c"]."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _name_tokens(name: str, known: Dict[str, int]) -> List[str]:
    """Candidate ONNX names in a fused layer name: " + " parts, with PWN(a, PWN(b, c)) opened up.

    A part that is itself a known node name is kept whole (a node may be named "PWN(x)" or contain ", ").
    """
    tokens = []
    for part in _split_top(name, " + "):
        part = part.strip()
        if part in known:
            tokens.append(part)
        elif part.startswith("PWN(") and part.endswith(")"):
            for arg in _split_top(part[4:-1], ", "):
                tokens.extend(_name_tokens(arg, known))
        else:
            tokens.append(part)
    return tokens


def _range_end(text: str, known: Dict[str, int], last: bool) -> Optional[int]:
    """The graph index of one end of a ForeignNode range: `text` may itself be a fused name, whose
    earliest (or, with `last`, latest) known node is the end. None when no part of it is a known node."""
    indices = [known[t] for t in _name_tokens(text, known) if t in known]
    if not indices:
        return None
    return max(indices) if last else min(indices)


def _foreign_nodes(inner: str, known: Dict[str, int], order: Sequence[str]) -> List[str]:
    """Nodes of "{ForeignNode[FIRST...LAST]}" (inner = "FIRST...LAST"): every node from FIRST to LAST in graph
    order. Tries each "..." in turn (node names may contain dots) and uses the first split whose two ends are
    both known; a single name without "..." is resolved like a fused name. [] when the ends are unknown."""
    if inner in known:
        return [inner]
    start = inner.find("...")
    while start >= 0:
        first = _range_end(inner[:start], known, last=False)
        end = _range_end(inner[start + 3:], known, last=True)
        if first is not None and end is not None and first <= end:
            return list(order[first:end + 1])
        start = inner.find("...", start + 1)
    return [t for t in _name_tokens(inner, known) if t in known]


def _unique_known(names: Sequence[str], known: Dict[str, int]) -> List[str]:
    """`names` that are in the ONNX graph, first occurrence kept, order kept."""
    seen, out = set(), []
    for name in names:
        if name in known and name not in seen:
            seen.add(name)
            out.append(name)
    return out


def onnx_nodes(layer_name: str, info: Any, onnx_order: Sequence[str]) -> List[str]:
    """The ONNX node names (each one in `onnx_order`, no duplicates) that TensorRT layer `layer_name` computes.

    `info` is the layer's detailed dict (or None / a plain string). Its Metadata "[ONNX Layer: ...]" entries
    win when present; otherwise the name is read: the whole name when it is a node, [] for reformat/DLA-transfer
    layers TensorRT inserted, every node of a Myelin "{ForeignNode[first...last]}" range in graph order, else
    the parts of "a + b + PWN(c, PWN(d, e))". Parts that are not ONNX nodes (weights, TensorRT's own names)
    are dropped, never guessed.
    """
    order = list(onnx_order)
    known = {}  # type: Dict[str, int]
    for index, node in enumerate(order):
        known.setdefault(node, index)
    metadata = info.get("Metadata") if isinstance(info, dict) else None
    if isinstance(metadata, str) and _ONNX_LAYER in metadata:
        return _unique_known(_metadata_names(metadata), known)
    name = layer_name.strip()
    if name in known:
        return [name]
    if _is_glue(name):
        return []
    foreign = _FOREIGN_NODE.match(name)
    if foreign:
        return _unique_known(_foreign_nodes(foreign.group(1), known, order), known)
    return _unique_known(_name_tokens(name, known), known)


def _format_precision(tensor: Any) -> str:
    """The precision ("fp32", "fp16", "int8", ...) a tensor's Format/Datatype string names, or "" if none.

    Reads "Format/Datatype" (TensorRT 8.x and 10: "Row major linear FP32", "Channel major FP16 format where
    channel % 8 == 0", or a bare datatype such as "Half" for Myelin/kgen layers), then "Datatype",
    "DataType", "Format" in case a version splits them.
    """
    if not isinstance(tensor, dict):
        return ""
    for key in _FORMAT_KEYS:
        text = tensor.get(key)
        if not isinstance(text, str):
            continue
        for word in re.split(r"[^0-9A-Za-z]+", text):
            precision = _PRECISION_WORDS.get(word.lower())
            if precision:
                return precision
    return ""


def layer_precision(info: Any) -> str:
    """The compute precision of one layer from its detailed dict's Inputs/Outputs formats, or "" if unknown.

    It is the precision of the first output whose format names one, except that a layer with an int8 input
    (a quantized convolution whose output is dequantized, a DequantizeLinear reformat) is "int8". A plain
    string (non-detailed verbosity) or a layer without formats gives "".
    """
    if not isinstance(info, dict):
        return ""
    inputs = [_format_precision(t) for t in info.get("Inputs") or []]
    if "int8" in inputs:
        return "int8"
    for tensor in info.get("Outputs") or []:
        precision = _format_precision(tensor)
        if precision:
            return precision
    return ""


def _device(name: str, op: str) -> str:
    """"DLA" for a layer that runs on a DLA core, else "GPU".

    A DLA subgraph is one layer whose LayerType names DLA (trtexec's log prints it as "Layer(DLA):
    {ForeignNode[...]}"); the "X to nvm" / "X from nvm" / "X copy finish" layers move its inputs and outputs.
    """
    if "dla" in op.lower() or name.endswith(_GLUE_SUFFIXES):
        return "DLA"
    return "GPU"


def _exec_name(info: Any) -> str:
    """The tactic or kernel a detailed layer runs: TacticName, else TacticValue, else ""."""
    if not isinstance(info, dict):
        return ""
    for key in ("TacticName", "TacticValue"):
        value = info.get(key)
        if value not in (None, ""):
            return str(value)
    return ""


def _row(name: str, info: Any, onnx_order: Sequence[str], time_ms: Optional[float]) -> Dict[str, Any]:
    """One row for layer `name` with detailed dict (or string / None) `info`, timed at `time_ms` per run."""
    op = str(info.get("LayerType", "")) if isinstance(info, dict) else ""
    return {
        "layer": name,
        "op": op,
        "exec": _exec_name(info),
        "precision": layer_precision(info),
        "time_ms": time_ms,
        "onnx_nodes": onnx_nodes(name, info, onnx_order),
        "device": _device(name, op),
    }


def _layers(layer_info: Any) -> List[Any]:
    """The "Layers" list of an engine-inspector JSON (a dict), or the list itself if given one; [] if none."""
    if isinstance(layer_info, dict):
        layers = layer_info.get("Layers")
    else:
        layers = layer_info
    return list(layers) if isinstance(layers, list) else []


def layer_rows(layer_info: Any, onnx_order: Sequence[str], layer_times: Optional[Dict[str, float]] = None,
               runs: int = 1) -> List[Dict[str, Any]]:
    """One row per engine layer of `layer_info` (engine-inspector JSON), in engine order.

    `layer_times` maps a layer name to its total ms over `runs` runs (what an IProfiler collects); a row's
    time_ms is that total / runs, and None for a layer absent from layer_times (or for every row when
    layer_times is None). Rows hold layer, op, exec, precision, time_ms, onnx_nodes, device.
    """
    rows = []
    for info in _layers(layer_info):
        name = _layer_name(info)
        time_ms = None  # type: Optional[float]
        if layer_times is not None and name in layer_times:
            time_ms = float(layer_times[name]) / max(int(runs), 1)
        rows.append(_row(name, info, onnx_order, time_ms))
    return rows


def trtexec_rows(profile_json: Any, layer_info: Any, onnx_order: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per layer of a `trtexec --exportProfile` JSON, in profile order, time_ms = its averageMs.

    The {"count": N} header (and any item without a "name") is skipped. Each layer's op/exec/precision come
    from `layer_info` (engine-inspector JSON) when it lists that name; when layer_info is None or lacks the
    layer, op/exec/precision are "" and the ONNX nodes come from the name alone, and such a ForeignNode layer
    counts as DLA when the profile has DLA transfer layers (see _infer_dla).
    """
    by_name = {}  # type: Dict[str, Any]
    for info in _layers(layer_info):
        if isinstance(info, dict):
            by_name.setdefault(_layer_name(info), info)
    rows = []
    items = profile_json if isinstance(profile_json, list) else []
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            continue
        name = str(item["name"])
        average = item.get("averageMs")
        time_ms = float(average) if isinstance(average, (int, float)) else None
        rows.append(_row(name, by_name.get(name), onnx_order, time_ms))
    return _infer_dla(rows)


def _infer_dla(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mark "{ForeignNode[...]}" rows with no LayerType (no layer info) as DLA when the engine has DLA transfer
    layers ("x to nvm", ...): in a trtexec profile of a DLA engine the DLA subgraph shows only by that name
    (NVIDIA/TensorRT#3143). Rows whose LayerType is known are left as they are. Returns `rows`."""
    if not any(row["layer"].endswith(_GLUE_SUFFIXES) for row in rows):
        return rows
    for row in rows:
        if not row["op"] and _FOREIGN_NODE.match(row["layer"].strip()):
            row["device"] = "DLA"
    return rows


def dla_fallback(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """Names of the layers that run on the GPU in an engine that has DLA layers, in row order.

    [] when no row runs on DLA. Layers TensorRT inserted that compute no ONNX node (reformat copies, DLA
    transfers) are not fallback and are left out.
    """
    if not any(row.get("device") == "DLA" for row in rows):
        return []
    return [row["layer"] for row in rows
            if row.get("device") != "DLA" and not _is_glue(str(row.get("layer", "")))]
