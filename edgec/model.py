"""Model: an ONNX graph plus where it came from. Loading is safe; saving is atomic."""
from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, brief
from .fileio import write_bytes_atomic
from .isolation import import_onnxruntime

# Protobuf cannot serialise a message over 2 GiB; bigger models keep their weights as external data.
_PROTO_LIMIT = 2**31 - 2**20
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. Dims are ints, or strings for symbolic (dynamic) dims."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Model:
    """An ONNX model in memory and its provenance (source path/kind, sha256 of the input)."""

    proto: Any  # onnx.ModelProto
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> list[TensorSpec]:
        """The graph's inputs (not initializers), at the shapes edgec runs them: the graph's dims, or those in
        provenance["input_shapes"] for a graph whose dims must stay symbolic (frontend.set_input_shapes)."""
        init = {t.name for t in self.proto.graph.initializer}
        shapes = self.provenance.get("input_shapes") or {}
        specs = [_spec(v) for v in self.proto.graph.input if v.name not in init]
        return [TensorSpec(s.name, tuple(shapes[s.name]), s.dtype) if s.name in shapes else s for s in specs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [_spec(v) for v in self.proto.graph.output]

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically; weights go to `<name>.data` beside it above 2 GiB."""
        import onnx

        path = Path(path)
        if self.proto.ByteSize() < _PROTO_LIMIT:
            write_bytes_atomic(path, self.proto.SerializeToString())
            return
        data_name = path.name + ".data"
        tmp = path.with_name(f".{path.name}.tmp")
        copy = onnx.ModelProto()
        copy.CopyFrom(self.proto)  # save_model(save_as_external_data=True) strips the weights of what it saves
        onnx.save_model(copy, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name + ".tmp", size_threshold=1024)  # small tensors (shapes) stay inline
        if path.with_name(data_name + ".tmp").exists():
            os.replace(path.with_name(data_name + ".tmp"), path.with_name(data_name))
        # The proto now names "<data>.tmp": point it at the final name and rewrite the small header.
        proto = onnx.load_model(tmp, load_external_data=False)
        for t in _external_tensors(proto):
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = data_name
        write_bytes_atomic(path, proto.SerializeToString())
        tmp.unlink(missing_ok=True)

    def sha256(self) -> str:
        if self.proto.ByteSize() < _PROTO_LIMIT:
            return hashlib.sha256(self.proto.SerializeToString(deterministic=True)).hexdigest()
        import onnx

        h = hashlib.sha256()  # over 2 GiB: the graph without weights, then each weight on its own
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(self.proto)
        del skeleton.graph.initializer[:]
        h.update(skeleton.SerializeToString(deterministic=True))
        for t in self.proto.graph.initializer:
            h.update(t.SerializeToString(deterministic=True))
        return h.hexdigest()


def ort_session(proto: Any, log_level: int = 3, spin: bool = True, fuse_qdq: bool = True) -> Any:
    """An ONNX Runtime CPU session. Models over protobuf's 2 GiB limit go through a temp file with external data.
    `spin=False`: its threads sleep between runs instead of spinning, leaving the cores to other work.
    `fuse_qdq=False`: Q/DQ pairs run as they are (quantize, dequantize, float op) instead of being fused into
    ONNX Runtime's int8 kernels: the same rounding, and on CPUs without VNNI about twice as fast (PP-LCNet on an
    AMD EPYC: 23 vs 40-50 ms)."""
    ort = import_onnxruntime()

    opts = ort.SessionOptions()
    opts.log_severity_level = log_level
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not fuse_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if proto.ByteSize() < _PROTO_LIMIT:
        return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    tmp = tempfile.mkdtemp(prefix="edgec-ort-")
    try:
        Model(proto).save(Path(tmp) / "model.onnx")
        session = ort.InferenceSession(str(Path(tmp) / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(session, shutil.rmtree, tmp, True)
    return session


def subgraphs_of(node: Any) -> list[tuple[str, Any]]:
    """(attribute name, body) for each graph a node holds: an If's branches, a Loop's or Scan's body."""
    return [(attr.name, body) for attr in node.attribute
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def graphs(graph: Any) -> Iterator[Any]:
    """`graph` and every If/Loop/Scan body inside it, depth first."""
    yield graph
    for node in graph.node:
        for _, body in subgraphs_of(node):
            yield from graphs(body)


def all_nodes(graph: Any, path: str = "") -> list[tuple[Any, str]]:
    """(node, "node 'name'" with where it is) for every node, subgraphs (If/Loop/Scan bodies) included."""
    out = []
    for i, node in enumerate(graph.node):
        name = node.name or f"#{i} ({node.op_type})"
        out.append((node, f"node '{name}'" + (f" in {path}" if path else "")))
        for attr_name, body in subgraphs_of(node):
            out.extend(all_nodes(body, f"the {attr_name} of '{name}'" + (f" in {path}" if path else "")))
    return out


def _spec(value_info: Any) -> TensorSpec:
    t = value_info.type.tensor_type
    dims: list[int | str] = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or f"?{i}")
    return TensorSpec(value_info.name, tuple(dims), _ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"))


def _external_tensors(proto: Any):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(proto) if uses_external_data(t)]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(path: str | os.PathLike) -> Model:
    """Load and check an ONNX file. External data must stay inside the model's folder."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Model file '{path}' does not exist. Check the path.")
    if not path.is_file():
        raise ConfigError(f"'{path}' is not a file. Pass an .onnx file (or a PyTorch module from Python).")
    if path.stat().st_size == 0:
        raise ConfigError(f"Model file '{path}' is empty. Re-export the model.")
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
        raise ConfigError(f"'{path}' looks like a PyTorch checkpoint, not an ONNX model. Load it into your "
                          "nn.Module and call edgec.compile(module, example_inputs=...) from Python.")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning, ValueError...
        raise ConfigError(f"'{path}' is not a readable ONNX model ({type(e).__name__}: {brief(e)}). "
                          "It may be truncated or corrupt: re-export it.") from e
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ConfigError(f"'{path}' holds no ONNX graph (no nodes). Is it really an .onnx model?")
    base = path.resolve().parent
    for tensor in _external_tensors(proto):
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        _check_external_location(path, base, tensor.name, location)
    if _external_tensors(proto):
        try:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(proto, str(base))
        except Exception as e:
            raise ConfigError(f"Could not read external data of '{path}': {brief(e)}. "
                              "Keep the .data file next to the .onnx file.") from e
    check_model(proto, str(path))
    return Model(proto, {"source": str(path), "kind": "onnx", "sha256": file_sha256(path)})


def _check_external_location(path: Path, base: Path, tensor: str, location: str) -> None:
    target = (base / location).resolve()  # resolve() follows symlinks: a link out of the folder is refused too
    if os.path.isabs(location) or not target.is_relative_to(base):
        raise ConfigError(f"'{path}': tensor '{tensor}' points at external data '{location}' outside the "
                          f"model's folder {base}. Refusing to read it; move the data file next to the model.")
    if not target.is_file():
        raise ConfigError(f"'{path}': external data file '{location}' for tensor '{tensor}' is missing.")


def check_model(proto: Any, where: str) -> None:
    import onnx

    bad = _invalid_text(proto)
    if bad:
        raise ConfigError(f"'{where}' has text that is not valid UTF-8 (in {bad}): the file is corrupt. Re-export it.")
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and not 1 <= opset.version <= newest:
            raise ConfigError(f"'{where}' asks for ONNX opset {opset.version}; edgec's ONNX supports opsets 1 to "
                              f"{newest}. Re-export with an opset in that range (e.g. 18).")
    try:
        if proto.ByteSize() < _PROTO_LIMIT:
            onnx.checker.check_model(proto)
    except Exception as e:
        raise ConfigError(f"'{where}' is not a valid ONNX model: {brief(e)}") from e


def _invalid_text(message: Any, path: str = "model") -> str | None:
    """The first string field holding bytes that are not UTF-8 (protobuf's proto2 lets them through)."""
    from google.protobuf.descriptor import FieldDescriptor

    for desc, value in message.ListFields():
        if desc.type == FieldDescriptor.TYPE_STRING:
            values = value if desc.is_repeated else [value]
            if any(isinstance(v, bytes) for v in values):
                return f"{path}.{desc.name}"
        elif desc.type == FieldDescriptor.TYPE_MESSAGE:
            values = value if desc.is_repeated else [value]
            for v in values:
                found = _invalid_text(v, f"{path}.{desc.name}")
                if found:
                    return found
    return None


# --- provenance: ONNX node -> PyTorch module and source line -------------------------------------

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


@dataclass(frozen=True)
class NodeSource:
    """Where an ONNX node came from. `module`/`where` are None when the exporter did not record it."""

    node: str
    op: str
    module: str | None
    where: str | None


def node_sources(proto: Any) -> dict[str, NodeSource]:
    """Index every node by name and by output tensor name (backends name layers after either)."""
    index: dict[str, NodeSource] = {}
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        src = NodeSource(node.name, node.op_type, _module_path(meta), _user_frame(meta))
        index[node.name] = src
        for out in node.output:
            index.setdefault(out, src)
    return index


def _module_path(meta: dict[str, str]) -> str | None:
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if not scopes:
        return None
    try:
        names = ast.literal_eval(scopes)
    except (ValueError, SyntaxError):
        return None
    # name_scopes = ['', 'layer1', 'layer1.conv1', '<op>']: the module is the last scope before the op.
    return names[-2] if isinstance(names, list) and len(names) >= 2 else None


def _user_frame(meta: dict[str, str]) -> str | None:
    frames = _FRAME.findall(meta.get("pkg.torch.onnx.stack_trace", ""))
    for file, line in reversed(frames):  # innermost frame outside torch itself
        if f"{os.sep}torch{os.sep}" not in file:
            return f"{file}:{line}"
    return None


def fit_to_its_opset(proto: Any) -> str | None:
    """Drop, in place, what onnxscript's optimizer writes that the model's own opset does not know (a Reshape
    `allowzero=0`, the default, below opset 14); then why `proto` is still not valid at its opsets, or None."""
    import onnx

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 14:
        for node in proto.graph.node:
            if node.op_type == "Reshape":
                kept = [a for a in node.attribute if not (a.name == "allowzero" and a.i == 0)]
                del node.attribute[:]
                node.attribute.extend(kept)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # onnx raises ValidationError, or a bare Exception from its C++ checker
        return brief(e, 160)
    return None
