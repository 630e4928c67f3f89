"""Front end: nn.Module / ExportedProgram / ONNX file -> Model with static input shapes."""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import ConfigError, brief
from .model import Model, TensorSpec, check_model, fit_to_its_opset, load_model, ort_session, subgraphs_of

ONNX_OPSET = 18


Dim = int | tuple[int, int, int]  # a size, or (min, opt, max) for a dynamic dim (TensorRT optimization profiles)


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[Dim, ...]]:
    """Parse CLI `NAME=1x3x224x224` specs; a dim `MIN:OPT:MAX` stays dynamic (e.g. x=1:4:8x3x224x224)."""
    shapes: dict[str, tuple[Dim, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(_parse_dim(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ConfigError(f"Bad --input-shape '{spec}': write NAME=DIMxDIMx..., e.g. input=1x3x224x224, "
                              "or MIN:OPT:MAX for a dynamic dim (input=1:4:8x3x224x224).") from None
        shapes[name] = shape
    return shapes


def _parse_dim(text: str) -> Dim:
    if ":" in text:
        lo, opt, hi = (int(v) for v in text.split(":"))
        if not 0 < lo <= opt <= hi:
            raise ValueError
        return (lo, opt, hi)
    value = int(text)
    if value <= 0:
        raise ValueError
    return value


def to_model(source: Any, example_inputs: Sequence[Any] | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None,
             input_values: Mapping[str, Any] | None = None) -> Model:
    """Turn what the user has into a checked Model whose inputs all have static shapes; `input_values` (constant
    inputs, e.g. a sample rate) are folded into the graph (set_input_shapes)."""
    if isinstance(source, (str, os.PathLike)):
        model = load_model(Path(source))
    elif type(source).__name__ == "ModelProto":
        check_model(source, "the given ModelProto")
        model = Model(source, {"source": "<ModelProto>", "kind": "onnx"})
    elif is_torch(source):
        model = export_torch(source, example_inputs)
    else:
        raise ConfigError(f"Can't compile a {type(source).__name__}: pass an .onnx path, an onnx.ModelProto, "
                          "a torch.nn.Module (with example_inputs) or a torch.export.ExportedProgram.")
    return set_input_shapes(model, dict(input_shapes or {}), dict(input_values or {}))


def parse_input_values(specs: Sequence[str]) -> dict[str, Any]:
    """Parse CLI `NAME=VALUE` specs (a number, or comma-separated numbers for a vector)."""
    values: dict[str, Any] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            numbers = [float(v) if any(c in v for c in ".eE") else int(v) for v in text.split(",")]
        except ValueError:
            raise ConfigError(f"Bad --input-value '{spec}': write NAME=NUMBER (e.g. sr=16000) or "
                              "NAME=N1,N2,... for a vector.") from None
        values[name] = numbers[0] if len(numbers) == 1 else numbers
    return values


def is_torch(obj: Any, kinds: tuple[str, ...] = ("Module", "ExportedProgram")) -> bool:
    """Whether `obj` is one of PyTorch's `kinds` (nn.Module, ExportedProgram), without importing torch."""
    return any(c.__module__.startswith("torch") and c.__name__ in kinds for c in type(obj).__mro__)


def export_torch(module: Any, example_inputs: Sequence[Any] | None) -> Model:
    """Export with the dynamo exporter: every node keeps its module path and source line."""
    import torch

    if example_inputs is None and not isinstance(module, torch.export.ExportedProgram):
        raise ConfigError("Exporting a torch.nn.Module needs example inputs: "
                          "edgec.compile(module, example_inputs=(torch.randn(1, 3, 224, 224),), ...)")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    t0 = time.perf_counter()
    try:
        if isinstance(module, torch.nn.Module):
            module = module.eval()
        with _quiet_exporter():
            program = torch.onnx.export(module, tuple(example_inputs or ()), dynamo=True,
                                        opset_version=ONNX_OPSET, verbose=False)
    except Exception as e:
        raise ConfigError(f"torch.onnx.export could not export {type(module).__name__}: {brief(e)}. "
                          "Check that the model runs on the example inputs and uses exportable ops.") from e
    proto = program.model_proto
    check_model(proto, f"export of {type(module).__name__}")
    return Model(proto, {"source": type(module).__qualname__, "kind": "torch", "exporter": "torch.onnx dynamo",
                         "export_seconds": round(time.perf_counter() - t0, 2)})


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about torchvision ops and deprecated pytree APIs on every call: noise for users."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def set_input_shapes(model: Model, shapes: dict[str, Sequence[Dim]],
                     values: Mapping[str, Any] | None = None) -> Model:
    """Fix input dims from `shapes`; a remaining dynamic leading (batch) dim becomes 1. Inputs in `values` become
    constants folded into the graph (the built model has no such input; the values stay in
    provenance["input_values"]).

    A (min, opt, max) dim stays symbolic; its range is kept in provenance["dynamic_shapes"]. When fixed dims
    break shape inference inside a subgraph (an `If` branch the inputs never take) so that ONNX Runtime can no
    longer load the model, the graph keeps its symbolic dims and the shapes go to provenance["input_shapes"]
    (Model.inputs reports them): the model still runs as it did before, at the user's shapes.
    """
    by_name = {spec.name: spec for spec in model.inputs}
    values = dict(values or {})
    for flag, names in (("--input-shape", shapes), ("--input-value", values)):
        unknown = sorted(set(names) - set(by_name))
        if unknown:
            raise ConfigError(f"{flag} names {', '.join(unknown)}, but the model's inputs are: {', '.join(by_name)}.")
    wanted, notes = _wanted_shapes([s for s in model.inputs if s.name not in values], shapes)
    opt_shapes = {n: tuple(d[1] if isinstance(d, tuple) else d for d in w) for n, w in wanted.items()}
    provenance = dict(model.provenance)
    if values:
        provenance["input_values"] = _checked_values(values, model.inputs, opt_shapes)
    bound = _bind_constants(model.proto, provenance.get("input_values", {}))
    if values:
        notes.append(f"input(s) {', '.join(values)} bound to the given value(s) and folded into the model: the "
                     "built model has no such input")
    fixed = type(bound)()
    fixed.CopyFrom(bound)
    for value in fixed.graph.input:
        if value.name in wanted:
            _write_dims(value, value.name, wanted[value.name])
    proto, inference_note = _reinfer_shapes(Model(fixed))
    run_shapes = {n: v for n, v in opt_shapes.items() if n not in values}
    if shapes or values or inference_note:
        try:
            _dry_run(proto, run_shapes, inference_note)
        except ConfigError:
            if inference_note is None:
                raise
            proto = _keep_symbolic_dims(bound, run_shapes, inference_note)
            provenance["input_shapes"] = {n: list(v) for n, v in run_shapes.items()}
            inference_note = (f"input dims kept symbolic in the graph ({', '.join(run_shapes)}): fixed dims break "
                              f"shape inference in a subgraph branch these inputs never take; edgec runs the model "
                              f"at {', '.join(f'{n}={_fmt(v)}' for n, v in run_shapes.items())}")
    if inference_note:
        notes.append(inference_note)
    if notes:
        provenance["notes"] = provenance.get("notes", []) + notes
    dynamic = {n: {key: [d[k] if isinstance(d, tuple) else d for d in w] for k, key in enumerate(("min", "opt", "max"))}
               for n, w in wanted.items() if any(isinstance(d, tuple) for d in w)}
    if dynamic:
        provenance["dynamic_shapes"] = dynamic
    return Model(proto, provenance)


def _wanted_shapes(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[Dim]]
                   ) -> tuple[dict[str, tuple[Dim, ...]], list[str]]:
    """The dims to write per input (given, or a dynamic batch of 1) and notes on what was assumed."""
    wanted: dict[str, tuple[Dim, ...]] = {}
    notes = []
    for spec in inputs:
        given = shapes.get(spec.name)
        if given is not None:
            wanted[spec.name] = _checked_shape(spec, given)
            continue
        batch_of_one = _batch_of_one(spec)
        if batch_of_one is not None:
            wanted[spec.name] = batch_of_one
            notes.append(f"dynamic batch dim of '{spec.name}' set to 1 (use --input-shape to change it)")
    return wanted, notes


def _bind_constants(proto: Any, values: Mapping[str, Any]) -> Any:
    """A copy of `proto` whose inputs named in `values` are initializers holding those values, constant-folded
    (onnxscript's optimizer): an `If` on such an input (a sample rate) keeps only the branch it takes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    if not values:
        return out
    graph = out.graph
    for value in [v for v in graph.input if v.name in values]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        graph.input.remove(value)
        graph.initializer.append(numpy_helper.from_array(np.asarray(values[value.name], dtype=dtype), value.name))
    try:
        import onnxscript.optimizer

        folded = onnxscript.optimizer.optimize(out)
    except Exception:  # folding is an optimisation: the bound graph is valid without it
        return out
    return out if fit_to_its_opset(folded) else folded


def _keep_symbolic_dims(proto: Any, shapes: Mapping[str, tuple[int, ...]], inference_note: str) -> Any:
    """`proto` as it came (symbolic input dims, leniently inferred) once ONNX Runtime runs it at `shapes`."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=False)
    except Exception:
        inferred = proto
    _dry_run(inferred, shapes, inference_note)
    return inferred


def _checked_shape(spec: TensorSpec, given: Sequence[Dim]) -> tuple[Dim, ...]:
    """`given` as ints and (min, opt, max) int tuples; ConfigError unless it has the input's rank and agrees
    with its fixed dims."""
    wanted = tuple(tuple(int(v) for v in d) if isinstance(d, tuple) else int(d) for d in given)
    if len(wanted) != len(spec.shape):
        raise ConfigError(f"Input '{spec.name}' has rank {len(spec.shape)} {_fmt(spec.shape)}, but "
                          f"--input-shape gives rank {len(wanted)} {_fmt(wanted)}.")
    clash = [i for i, (have, want) in enumerate(zip(spec.shape, wanted))
             if isinstance(have, int) and (have != want if isinstance(want, int) else {have} != set(want))]
    if clash:
        raise ConfigError(f"Input '{spec.name}' is fixed at {_fmt(spec.shape)}; --input-shape "
                          f"{_fmt(wanted)} does not match it at dim {clash[0]}.")
    return wanted


def _batch_of_one(spec: TensorSpec) -> tuple[int, ...] | None:
    """The input's shape with its dynamic batch dim set to 1; None when it has no dynamic dim. ConfigError
    when another dim is dynamic (that needs an explicit --input-shape)."""
    dynamic = [i for i, d in enumerate(spec.shape) if not isinstance(d, int)]
    if not dynamic:
        return None
    if dynamic != [0]:
        raise ConfigError(f"Input '{spec.name}' has dynamic dims {_fmt(spec.shape)}. Give a concrete "
                          f"shape: --input-shape {spec.name}=" + "x".join(
                              "1" if not isinstance(d, int) else str(d) for d in spec.shape))
    return (1,) + tuple(spec.shape[1:])


def _write_dims(value: Any, name: str, wanted: Sequence[Dim]) -> None:
    """Set the dims of graph input `value` in place: a size, or a symbol `<name>_dim<i>` for a range."""
    dims = value.type.tensor_type.shape.dim
    for i, (dim, size) in enumerate(zip(dims, wanted)):
        dim.Clear()
        if isinstance(size, tuple):
            dim.dim_param = f"{name}_dim{i}"
        else:
            dim.dim_value = size


def _checked_values(values: Mapping[str, Any], inputs: Sequence[TensorSpec],
                    shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """`values` as JSON lists/numbers of each input's dtype; ConfigError when one does not fit its input."""
    import numpy as np

    out = {}
    for spec in inputs:
        if spec.name not in values:
            continue
        shape = shapes.get(spec.name, tuple(d if isinstance(d, int) else 1 for d in spec.shape))
        try:
            array = np.broadcast_to(np.asarray(values[spec.name], dtype=spec.dtype), shape)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--input-value {spec.name}: {values[spec.name]!r} does not fit input '{spec.name}' "
                              f"({spec.dtype}{list(shape)}): {e}.") from e
        out[spec.name] = array.tolist()
    return out


def _reinfer_shapes(model: Model) -> tuple[Any, str | None]:
    """The model's proto with every non-input shape inferred again from its (new) input shapes, and a note when
    strict inference failed and the lenient one was used (the dry run then decides)."""
    import onnx

    graph = model.proto.graph
    # Outputs and intermediate shapes may still carry the old symbols: drop them and re-infer.
    del graph.value_info[:]
    for out in graph.output:
        for dim in out.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    try:
        return onnx.shape_inference.infer_shapes(model.proto, check_type=True, strict_mode=True, data_prop=True), None
    except Exception as e:
        if not _has_subgraphs(model.proto):
            given = ", ".join(f"{s.name}={_fmt(s.shape)}" for s in Model(model.proto).inputs)
            raise ConfigError(f"The input shapes {given} do not fit the model: {brief(e)}") from e
        strict_error = brief(e)
    try:
        proto = onnx.shape_inference.infer_shapes(model.proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        proto = model.proto
    return proto, (f"shape inference could not follow the input shapes into every subgraph ({strict_error}); "
                   "ONNX Runtime ran the model with them")


def _has_subgraphs(proto: Any) -> bool:
    return any(subgraphs_of(node) for node in proto.graph.node)


def _dry_run(proto: Any, shapes: Mapping[str, tuple[int, ...]], inference_note: str | None) -> None:
    """Run once on zeros: shape inference misses some clashes (e.g. Conv channels), the runtime does not."""
    import numpy as np

    inputs = Model(proto).inputs
    try:
        session = ort_session(proto, log_level=4)
        session.run(None, {s.name: np.zeros(shapes.get(s.name, s.shape), dtype=s.dtype) for s in inputs})
    except Exception as e:
        given = ", ".join(f"{s.name}={_fmt(shapes.get(s.name, s.shape))}" for s in inputs)
        hint = f" ({inference_note.split(';')[0]})" if inference_note else ""
        raise ConfigError(f"The input shapes {given} do not fit the model: {brief(e)}{hint}. If an input selects a "
                          "branch (e.g. a sample rate), fix it with --input-value NAME=VALUE.") from e


def _fmt(shape: Sequence[Any]) -> str:
    return "x".join(":".join(map(str, d)) if isinstance(d, tuple) else str(d) for d in shape)
