"""TVM backend: ONNX -> Relax -> scheduled kernels -> model.so for ARM boards (cross-compiled) or this host.

Apache TVM 0.27 (Relax). The build: Relax ONNX front end (each ONNX node's result is bound to a variable
named after the node, which is how kernels map back to ONNX nodes), DecomposeOpsForInference, ConvertLayout
to NHWC/HWIO (channels innermost: what CPU vector units want), LegalizeOps, FoldConstant, FuseOps, FuseTIR,
then edgec's default CPU schedules (`tvm_schedules`: TVM's own default pipeline leaves every kernel
unscheduled, 36-40x slower than ONNX Runtime), then `tvm.compile` and `export_library` with the target's C
compiler (aarch64-linux-gnu-gcc for the boards). No tuning.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, BuildError, ConfigError, brief
from ..fileio import write_bytes_atomic
from ..model import Model
from ..profile import LatencyStats, LayerRow, Profile, with_shares
from ..target import Target
from .base import Artifact, Runner

_INSTALL_HINT = "Apache TVM is not installed: pip install 'edgec[tvm]'"
RUNTIME_FILE = "edgec_runtime.py"
# Desired layouts: channels innermost, weights HWIO, so conv kernels vectorize over output channels.
# Pooling and elementwise ops follow their input's layout (pools take no desired layout in 0.27).
_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"]}
_VAR_PREFIX = re.compile(r"^e(\d+)_")

# Measured with `python benchmarks/tvm.py --int8` (x86 AMD EPYC, 2 cores; ResNet-18-like, 1x3x224x224; ORT
# quantize_static per-channel QDQ built through the same Relax pipeline, 7 interleaved rounds x 30 runs).
INT8_MEASURED = ("; measured on x86 with a ResNet-18-like model: fake-quant 'int8' 13.6 ms vs fp32 11.2 ms (1.22x "
                 "slower), max abs error 0.07 vs fp32")
INT8_REFUSAL = (
    "--precision {precision} is not available on {target} (TVM): TVM 0.27's Relax imports a Q/DQ model as "
    "float fake-quant (every QuantizeLinear/DequantizeLinear becomes float arithmetic; Relax has no QNN "
    "lowering to int8 kernels), so an 'int8' build would be slower than fp32 and less accurate{numbers}. "
    "Use --precision fp32 (the default)."
)


class TVMBackend:
    name = "tvm"
    precisions = ("fp32",)

    # ---------------------------------------------------------------------------------------------- SDK
    def _tvm(self):
        try:
            import tvm
            from tvm import relax  # noqa: F401 - the compiler half, not only the runtime
        except ImportError as e:
            raise BackendUnavailable(_INSTALL_HINT) from e
        return tvm

    def versions(self) -> dict[str, str]:
        tvm = self._tvm()
        out = {"tvm": str(tvm.__version__)}
        try:
            import tvm_ffi

            out["tvm_ffi"] = str(getattr(tvm_ffi, "__version__", "unknown"))
        except ImportError:
            pass
        return out

    def precision_refusal(self, target: Target, precision: str) -> str | None:
        """Why `precision` is refused on `target`, for the pipeline's error message (None: no special reason)."""
        if precision in ("int8", "mixed", "int8-weights"):
            return INT8_REFUSAL.format(precision=precision, target=target.name, numbers=INT8_MEASURED)
        return None

    def can_run_here(self, target: Target) -> bool:
        return target.arch == platform.machine()

    # -------------------------------------------------------------------------------------------- build
    def build(self, model: Model, target: Target, precision: str, out_dir: Path) -> Artifact:
        if precision != "fp32":
            raise ConfigError(self.precision_refusal(target, precision)
                              or f"--precision {precision} is not available with TVM; use fp32.")
        cc = self._compiler(target)  # before anything slow: a missing cross compiler fails in a second
        tvm = self._tvm()
        from tvm import relax

        from .tvm_schedules import schedule_module

        shapes = _static_shapes(model)
        target_json = tvm_target_json(target)
        try:
            tvm_target = tvm.target.Target(target_json)
        except Exception as e:  # noqa: BLE001 - LLVM rejects an unknown CPU or feature
            raise ConfigError(f"Target {target.name}: TVM/LLVM rejects {target_json}: {brief(e)}. "
                              f"Fix the [tvm] table of {target.path or 'the target file'}.") from e
        mod, names, map_note = _import(tvm, relax, model.proto, shapes)
        try:
            mod = tvm.transform.Sequential([
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.transform.ConvertLayout(_LAYOUTS),
                relax.transform.Normalize(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
            ])(mod)
            index = _var_nodes(relax, mod, names, _graph_output_nodes(model.proto))
            mod = relax.transform.FuseOps()(mod)
            fused_sites = _call_sites(relax, mod, index)
            mod = tvm.transform.Sequential([relax.transform.FuseTIR(),
                                            relax.transform.DeadCodeElimination()])(mod)
            layer_map = _layer_map(relax, mod, fused_sites) if names else {}
            with tvm_target:
                mod, kernels = schedule_module(mod, tvm_target)
            executable = tvm.compile(mod, target=tvm_target)
        except (ConfigError, BackendUnavailable):
            raise
        except Exception as e:  # noqa: BLE001 - wrap with context (convention 4)
            raise BuildError(f"TVM could not compile the model for {target.name}: {brief(e)}") from e
        _export(executable, out_dir / "model.so", cc)
        write_bytes_atomic(out_dir / RUNTIME_FILE, (Path(__file__).resolve().parents[1] / "runtime.py").read_bytes())
        unscheduled = sorted(k for k, rule in kernels.items() if rule == "unscheduled")
        config = {
            "tvm_target": target_json, "cc": cc, "layout": "NHWC inside the model (transposed at its inputs and "
            "outputs)", "runtime": RUNTIME_FILE, "kernels": kernels, "unscheduled_kernels": unscheduled,
            "inputs": [s.to_json() for s in model.inputs], "outputs": [s.to_json() for s in model.outputs],
            "layer_map_note": map_note if not layer_map else
            "kernel call sites -> ONNX nodes whose results the kernel computes (from the Relax variables "
            "bound to each node's result); a kernel called from several places is listed as symbol#k",
        }
        return Artifact(self.name, precision, ["model.so", RUNTIME_FILE], config, layer_map)

    def _compiler(self, target: Target) -> str | None:
        """The C compiler export_library links model.so with; BackendUnavailable naming the package if missing."""
        cc = target.options.get("cc")
        host = target.arch == platform.machine()
        if cc is None and not host:
            raise ConfigError(f"Target {target.name} ({target.arch}) needs a cross compiler: set cc = "
                              f"\"{target.arch}-linux-gnu-gcc\" in the [tvm] table of {target.path or 'its file'}.")
        if cc is None:
            found = shutil.which("g++") or shutil.which("gcc")
            if not found:
                raise BackendUnavailable("TVM links model.so with the host C compiler, and there is none: "
                                         "apt-get install -y g++")
            return None
        if shutil.which(cc) is None:
            package = f"gcc-{cc[:-len('-gcc')]}" if cc.endswith("-gcc") else cc
            raise BackendUnavailable(f"Cross-compiling for {target.name} ({target.arch}) needs the C compiler "
                                     f"'{cc}', which is not on PATH: apt-get install -y {package}")
        return cc

    # ----------------------------------------------------------------------------------------- run/time
    def _session(self, out_dir: Path, manifest: dict[str, Any]):
        self._tvm()
        from ..runtime import Session

        target = manifest["target"]
        if target.get("arch") != platform.machine():
            raise ConfigError(f"{out_dir} was built for {target.get('name')} ({target.get('arch')}); this machine is "
                              f"{platform.machine()}. Copy the folder to the board and run "
                              f"`python {RUNTIME_FILE} .` there.")
        spec = {"inputs": manifest["inputs"], "outputs": manifest["outputs"]}
        try:
            return Session(out_dir, spec)
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from e
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"TVM could not load {out_dir / 'model.so'}: {brief(e)}") from e

    def runner(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        return self._session(out_dir, manifest).run

    def profile(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
        if device != "local":
            raise ConfigError(f"Profiling a TVM build on '{device}' (RPC) is not in this edgec release: use "
                              "--device local on the machine that runs it (copy the output folder to the board, "
                              f"then `edgec profile OUT` or `python OUT/{RUNTIME_FILE} OUT`).")
        from ..runtime import cpu_name, num_threads, seeded_feeds

        session = self._session(out_dir, manifest)
        feeds = seeded_feeds(manifest["inputs"])
        samples = session.time(feeds, runs, warmup)
        kernels = session.time_kernels(feeds, max(5, min(runs, 30)), warmup=1)
        cfg = manifest["artifact"]["config"]
        layer_map = manifest["artifact"].get("layer_map") or {}
        rules = cfg.get("kernels", {})
        rows = [LayerRow(layer=k["kernel"], op=_op_name(k["symbol"]), exec=f"tvm:{rules.get(k['symbol'], '?')}",
                         precision=manifest["precision"], time_ms=k["time_ms"], share=0.0,
                         onnx_nodes=tuple(layer_map.get(k["kernel"], ())))
                for k in kernels]
        return Profile(
            backend=self.name, device=f"CPU ({cpu_name()})", target=manifest["target"]["name"],
            precision=manifest["precision"], batch=int(manifest["inputs"][0]["shape"][0]) if manifest["inputs"] else 1,
            runs=runs, warmup=warmup, latency_ms=LatencyStats.from_samples(samples), layers=with_shares(rows),
            memory={"model_so_bytes": (out_dir / "model.so").stat().st_size},
            extra={"runtime": {"tvm": self.versions()["tvm"], "threads": num_threads(),
                               "tvm_target": cfg.get("tvm_target"),
                               "kernel_timing": "VM instrument around each kernel call (wall clock)"}},
        )


# ------------------------------------------------------------------------------------------------ target
def tvm_target_json(target: Target) -> dict[str, Any]:
    """The dict for tvm.target.Target from the target file's [tvm] table (0.27 rejects target strings)."""
    opts = target.options
    missing = [k for k in ("mtriple", "mcpu") if k not in opts]
    if missing:
        raise ConfigError(f"Target {target.name}: the [tvm] table of {target.path or 'its file'} lacks "
                          f"{', '.join(missing)} (e.g. mtriple = \"aarch64-linux-gnu\", mcpu = \"cortex-a72\").")
    out: dict[str, Any] = {"kind": "llvm", "mtriple": str(opts["mtriple"]), "mcpu": str(opts["mcpu"])}
    if opts.get("mattr"):
        out["mattr"] = [str(a) for a in opts["mattr"]]
    if opts.get("cores"):
        out["num-cores"] = int(opts["cores"])
    return out


def _static_shapes(model: Model) -> dict[str, list[int]]:
    dynamic = [s for s in model.inputs if not s.is_static]
    if dynamic:
        s = dynamic[0]
        example = "x".join(str(d) if isinstance(d, int) else "1" for d in s.shape)
        raise ConfigError(f"TVM builds need static input shapes; input '{s.name}' has shape {list(s.shape)}. "
                          f"Pass --input-shape {s.name}={example}.")
    return {s.name: [int(d) for d in s.shape] for s in model.inputs}


# ------------------------------------------------------------------------------------------------ import
def _import(tvm: Any, relax: Any, proto: Any, shapes: dict[str, list[int]]) -> tuple[Any, dict[str, str], str]:
    """Relax module, {variable prefix: ONNX node name}, and a note on the layer map.

    Each ONNX node's result is bound to a variable `e<k>_<node name>`; those names survive the passes up to
    FuseOps, which is how kernels map back to ONNX nodes. Falls back to the plain importer (no layer map)
    if the naming importer fails on a model.
    """
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod, names = _import_named(relax, proto, shapes)
        return mod, names, ""
    except Exception as first:  # noqa: BLE001 - retry without naming, then report the real error
        try:
            mod = from_onnx(proto, shape_dict=shapes)
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"TVM's Relax ONNX importer could not read the model: {brief(e)}") from e
        return mod, {}, f"no layer map: the naming importer failed ({brief(first, 120)})"


def _import_named(relax: Any, proto: Any, shapes: dict[str, list[int]]) -> tuple[Any, dict[str, str]]:
    import tvm
    from tvm.relax.frontend.onnx import onnx_frontend as fe

    names: dict[str, str] = {}

    class NamingImporter(fe.ONNXGraphImporter):
        def _convert_operator(self, op_name, inputs, attrs, opset):
            sym = _clip(relax, inputs, attrs, opset) if op_name == "Clip" else None
            if sym is None:
                sym = super()._convert_operator(op_name, inputs, attrs, opset)
            node = (attrs.get("tvm_custom") or {}).get("name") or ""
            if node and isinstance(sym, relax.Call) and not all(isinstance(a, tvm.ir.Constant) for a in sym.args):
                key = f"e{len(names)}"
                names[key] = node
                sym = self.bb.emit(sym, name_hint=f"{key}_{re.sub(r'[^0-9A-Za-z_]', '_', node)[:48]}")
            return sym

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = NamingImporter(shapes, "float32", keep_params_in_input=False, sanitize=True)
    return importer.from_onnx(proto.graph, opset), names


def _clip(relax: Any, inputs: Any, attrs: dict[str, Any], opset: int) -> Any:
    """Clip with constant bounds (ReLU6) as Relax maximum/minimum, or None to use TVM's converter.

    TVM's converter emits Clip as two prebuilt TIR kernels, which ConvertLayout cannot see through: every
    ReLU6 of a MobileNet got a transpose to NCHW and back around it.
    """
    import numpy as np
    import tvm

    x = inputs[0]
    dtype = getattr(getattr(x, "ty", None), "dtype", None)
    if dtype is None or not str(dtype).startswith("float"):
        return None
    if opset < 11:
        bounds = [attrs.get("min"), attrs.get("max")]
    else:
        bounds = []
        for b in (inputs[1] if len(inputs) > 1 else None, inputs[2] if len(inputs) > 2 else None):
            if b is None:
                bounds.append(None)
            elif isinstance(b, tvm.ir.Constant) and b.value.numpy().size == 1:
                bounds.append(float(b.value.numpy().reshape(())))
            else:
                return None  # bounds computed at run time: leave it to TVM's converter
    if any(v is not None and np.isnan(v) for v in bounds):
        return None
    out = x
    if bounds[0] is not None:
        out = relax.op.maximum(out, relax.const(bounds[0], str(dtype)))
    if bounds[1] is not None:
        out = relax.op.minimum(out, relax.const(bounds[1], str(dtype)))
    return out


def _var_nodes(relax: Any, mod: Any, names: dict[str, str], graph_outputs: list[str]) -> dict[str, Any]:
    """Before FuseOps: {variable name: ONNX nodes} and {(kernel, argument names): variable name} of main."""
    call_tir = _op("relax.call_tir")
    var_nodes: dict[str, list[str]] = {}
    by_call: dict[tuple, str] = {}
    for binding in _bindings(mod["main"]):
        m = _VAR_PREFIX.match(binding.var.name)
        if m and f"e{m.group(1)}" in names:
            var_nodes[binding.var.name] = [names[f"e{m.group(1)}"]]
        value = binding.value
        if isinstance(value, relax.Call) and value.op.same_as(call_tir):
            by_call[_call_key(relax, value, {})] = binding.var.name
    # The graph outputs lose their names to main's output variables: map those to the producing nodes.
    body = mod["main"].body.body
    outs = list(body.fields) if isinstance(body, relax.Tuple) else [body]
    for var, node in zip(outs, graph_outputs):
        if isinstance(var, relax.Var) and node:
            var_nodes.setdefault(var.name, [node])
    return {"vars": var_nodes, "calls": by_call}


def _call_key(relax: Any, call: Any, env: dict[str, str]) -> tuple:
    """(kernel name, argument names) of a call_tir, argument names translated through `env`; constants '#c'."""
    args = call.args[1]
    args = list(args.fields) if isinstance(args, relax.Tuple) else [args]
    sig = tuple(env.get(a.name, a.name) if isinstance(a, relax.Var) else "#c" for a in args)
    return (call.args[0].name_hint, sig)


def _call_sites(relax: Any, mod: Any, index: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """After FuseOps: each kernel call in main, in order, with the ONNX nodes whose variables it computes.

    FuseOps shares one fused function between identical groups (ResNet's repeated blocks), so the names
    inside it belong to one of them only. Each call is therefore replayed: the fused function's kernel calls,
    with its parameters bound to this call's arguments, are matched (kernel, argument names) against main
    before fusion, which recovers the original variable, hence the ONNX node, of every step.
    """
    call_tir = _op("relax.call_tir")
    var_nodes, by_call = index["vars"], index["calls"]
    rename: dict[str, str] = {}  # main variable after fusion -> the variable it was before fusion
    sites = []
    for binding in _bindings(mod["main"]):
        value = binding.value
        if not isinstance(value, relax.Call):
            continue
        originals: list[str] = []
        if value.op.same_as(call_tir):
            original = by_call.get(_call_key(relax, value, rename))
            originals.append(original or binding.var.name)
        elif isinstance(value.op, relax.GlobalVar) and isinstance(mod[value.op], relax.Function):
            func = mod[value.op]
            env = {p.name: (rename.get(a.name, a.name) if isinstance(a, relax.Var) else "#c")
                   for p, a in zip(func.params, value.args)}
            last = None
            for inner in _bindings(func):
                if isinstance(inner.value, relax.Call) and inner.value.op.same_as(call_tir):
                    original = by_call.get(_call_key(relax, inner.value, env))
                    env[inner.var.name] = last = original or inner.var.name
                    originals.append(last)
            if last is None:
                continue
        else:
            continue
        rename[binding.var.name] = originals[-1]
        nodes: list[str] = []
        for v in originals:
            for node in var_nodes.get(v, []):
                if node not in nodes:
                    nodes.append(node)
        sites.append((binding.var.name, nodes))
    return sites


def _layer_map(relax: Any, mod: Any, fused_sites: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """After FuseTIR: kernel call site (symbol, or symbol#k when called k+1 times) -> ONNX nodes."""
    call_tir = _op("relax.call_tir")
    calls = [(b.var.name, b.value.args[0].name_hint) for b in _bindings(mod["main"])
             if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir)]
    if len(calls) == len(fused_sites):
        nodes_per_call = [nodes for _, nodes in fused_sites]
    else:  # align by variable name where the counts differ
        by_var = dict(fused_sites)
        nodes_per_call = [by_var.get(var, []) for var, _ in calls]
    totals: dict[str, int] = {}
    for _, symbol in calls:
        totals[symbol] = totals.get(symbol, 0) + 1
    seen: dict[str, int] = {}
    out: dict[str, list[str]] = {}
    for (_, symbol), nodes in zip(calls, nodes_per_call):
        k = seen.get(symbol, 0)
        seen[symbol] = k + 1
        out[symbol if totals[symbol] == 1 else f"{symbol}#{k}"] = list(nodes)
    return out


def _graph_output_nodes(proto: Any) -> list[str]:
    producer = {out: (n.name or n.output[0]) for n in proto.graph.node for out in n.output}
    return [producer.get(o.name, "") for o in proto.graph.output]


def _bindings(func: Any) -> list[Any]:
    body = func.body
    return [b for block in getattr(body, "blocks", []) for b in block.bindings]


def _op(name: str) -> Any:
    import tvm

    return tvm.ir.Op.get(name)


def _op_name(symbol: str) -> str:
    """'fused_conv2d_nhwc_add_relu3' -> 'conv2d_nhwc+add+relu' (a readable op label for the profile)."""
    base = re.sub(r"\d+$", "", symbol)
    base = base[len("fused_"):] if base.startswith("fused_") else base
    return base


# ------------------------------------------------------------------------------------------------ export
def _export(executable: Any, path: Path, cc: str | None) -> None:
    """export_library into a temp file beside `path`, fsync, rename: never a half-written model.so."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".so")
    os.close(fd)
    try:
        if cc:
            executable.export_library(tmp, cc=cc)
        else:
            executable.export_library(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001
        Path(tmp).unlink(missing_ok=True)
        raise BuildError(f"Linking {path.name} with {cc or 'the host compiler'} failed: {brief(e)}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
