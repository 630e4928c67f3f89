"""edgec command line: parse, call the Python API, print. Exceptions become exit codes here, and only here."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections import Counter
from typing import Any, Sequence

from . import board, metrics
from .calibration import CalibrationSet
from .errors import AccuracyCheckFailed, ConfigError, EdgecError
from .frontend import parse_input_shapes, parse_input_values
from .isolation import load_native_modules
from .model import load_model, node_sources
from .pipeline import build_engine, compile, profile
from .tune import tune
from .profile import Profile
from .target import list_targets, load_target

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INACCURATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _raise_interrupt)  # run cleanup (staging dirs) on kill, like Ctrl-C
    try:
        load_native_modules()
        return args.func(args) or EXIT_OK
    except AccuracyCheckFailed as e:
        if isinstance(e.profile, Profile) and not getattr(args, "json", False):
            print(e.profile.table())
        print(f"edgec: error: {e}", file=sys.stderr)
        return e.exit_code
    except EdgecError as e:
        print(f"edgec: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edgec: interrupted; the output folder holds a whole build (the previous one unless the new one was "
              "already in place), never a partial one.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug in edgec or an SDK: one line, the traceback only on request
        if os.environ.get("EDGEC_DEBUG"):
            raise
        print(f"edgec: internal error: {type(e).__name__}: {e}. Set EDGEC_DEBUG=1 for the traceback and "
              "please report it.", file=sys.stderr)
        return EXIT_ERROR


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgec", description="Compile, quantize and profile models for edge boards.")
    sub = p.add_subparsers(metavar="COMMAND")
    _add_compile_command(sub)
    _add_profile_command(sub)
    _add_build_command(sub)
    _add_tune_command(sub)
    _add_board_command(sub)
    _add_targets_command(sub)
    _add_inspect_command(sub)
    return p


def _add_compile_command(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compile", help="compile a model for a target board")
    c.add_argument("model", help="path to an .onnx file")
    c.add_argument("--target", "-t", default="intel-cpu", help="target name, alias or .toml path (edgec targets)")
    c.add_argument("--precision", "-p", help="fp32 | fp16 | bf16 | int8 | mixed | int8-weights (default: the target's)")
    c.add_argument("--calib", metavar="PATH", help=".npz/.npy file or folder: calibration and validation samples")
    c.add_argument("--labels", metavar="COCO_JSON",
                   help="image folders: detection boxes from a COCO json (YOLO txt files beside the images, or in a "
                        "labels/ twin of images/, are read without it); scored by --metric map50")
    c.add_argument("--calib-samples", type=int, metavar="N", help="use N samples (seeded random subset)")
    c.add_argument("--calib-seed", type=int, default=0, help="seed of the --calib-samples subset (default 0)")
    c.add_argument("--calib-subset", type=int, metavar="N", help="calibrate on a seeded subset of N calibration "
                   "samples, checking on the same validation samples as without it (edgec tune's choice)")
    c.add_argument("--calib-recipe", metavar="NAME|TOML", help="image folders: preprocessing recipe (unit, imagenet, fashion-mnist, or a .toml; default unit)")
    c.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy", "mse"],
                   help="activation range estimator for int8 (default percentile 99.99)")
    c.add_argument("--weight-rounding", default="gptq", choices=["gptq", "nearest"],
                   help="int8 weight rounding: gptq minimises each layer's output error on the calibration "
                        "data (default); nearest rounds each weight alone")
    c.add_argument("--range-search", type=int, default=64, metavar="N",
                   help="int8: choose each activation range by the model's output error on N calibration samples "
                        "(default 64; 0 = off, faster)")
    c.add_argument("--keep-float", action="append", default=[], metavar="NODE[,NODE...]",
                   help="int8: keep these ONNX nodes of the quantization plan in float (repeatable; names from an "
                        "int8 build's manifest.json or a mixed build's report.json mixed_precision.ranking)")
    c.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                   help="mixed: accuracy budget in points of the --metric (against labels when given, else agreement "
                        "with fp32)")
    c.add_argument("--metric", action="append", default=[], metavar="NAME|OUTPUT=NAME",
                   help=f"how outputs are judged ({', '.join(metrics.NAMES)}); default: chosen per output from its "
                        "shape and op. NAME sets the first output's (the budget's) metric; OUTPUT=NAME another "
                        "output's (repeatable; the first one given is the budget's)")
    c.add_argument("--prune", metavar="SPEC", help="weight sparsity on ONNX: unstructured:RATIO or 2:4 "
                   "(channel pruning needs the PyTorch model: edgec.prune)")
    c.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="fix an input's shape (repeatable)")
    c.add_argument("--input-value", action="append", default=[], metavar="NAME=VALUE",
                   help="bind a constant input (e.g. sr=16000; repeatable): folded into the model, which then has "
                        "no such input; recurrent state inputs not in the data are zeros")
    c.add_argument("--dla", type=int, metavar="N", help="TensorRT boards with DLA (jetson-agx-orin, jetson-xavier-nx), "
                   "fp16: build for DLA core N")
    c.add_argument("--gpu-fallback", action="store_true", help="with --dla: layers DLA cannot run fall back to the "
                   "GPU (without it they are an error at engine build)")
    c.add_argument("--output", "-o", metavar="OUT", help="output folder (default edgec-out/<model>-<target>-<precision>)")
    c.add_argument("--runs", type=int, default=100, help="timed runs for the built-in profile (default 100)")
    c.add_argument("--json", action="store_true", help="print the build summary as JSON")
    c.add_argument("--no-cache", action="store_true", help="build even if an identical build is cached")
    c.add_argument("--accept-inaccurate", action="store_true",
                   help="keep a build that fails its accuracy check against fp32 (default: exit 4, the build is "
                        "moved to OUT.rejected/ and OUT is left as it was)")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    c.set_defaults(func=_compile)


def _add_profile_command(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("profile", help="profile a compiled output folder")
    pr.add_argument("out", metavar="OUT", help="folder written by edgec compile")
    pr.add_argument("--device", default="local",
                    help="local (default), rpc://HOST:PORT or tracker://HOST:PORT/KEY (a board serving TVM RPC), or "
                         "ssh://USER@HOST[:PORT][/DIR][?python=PATH] (a Jetson, over your OpenSSH keys)")
    pr.add_argument("--runs", type=int, default=100)
    pr.add_argument("--warmup", type=int, default=10)
    pr.add_argument("--trtexec", action="store_true", help="TensorRT: profile with NVIDIA's trtexec (on --device) "
                    "and map its per-layer rows back to ONNX nodes and PyTorch modules")
    pr.add_argument("--trtexec-json", nargs="+", default=[], metavar="FILE",
                    help="TensorRT: read trtexec JSON you already have: --exportProfile, then optionally "
                         "--exportLayerInfo and --exportTimes output")
    pr.add_argument("--json", action="store_true", help="print edgec.profile/1 JSON")
    pr.set_defaults(func=_profile)


def _add_build_command(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="build the TensorRT engine of a compiled bundle, here or on --device")
    b.add_argument("out", metavar="OUT", help="folder written by edgec compile --target jetson...")
    b.add_argument("--device", default="local", help="local (default: TensorRT installed here) or "
                   "ssh://USER@HOST[:PORT][/DIR][?python=PATH]: copy the bundle there, build, bring model.engine back")
    b.set_defaults(func=_build)


def _add_tune_command(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tune", help="search precision and calibration for the fastest build within an accuracy budget")
    t.add_argument("model", help="path to an .onnx file")
    t.add_argument("--target", "-t", default="intel-cpu", help="target name, alias or .toml path")
    t.add_argument("--calib", metavar="PATH", help="calibration data (.npz/.npy/folder); val_ arrays are the "
                   "held-out samples every trial is scored on")
    t.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="the budget: points of the task metric a build may lose against fp32 (default 1.0)")
    t.add_argument("--trials", type=int, help="finished trials in the study, all workers together (default 30)")
    t.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop this worker after SECONDS")
    t.add_argument("--storage", metavar="URL|FILE", help="Optuna storage shared by workers: sqlite:///x.db, "
                   "postgresql://user@host/db, or a journal file (default: OUT/tune.journal)")
    t.add_argument("--study", metavar="NAME", help="study name (default: the model's digest and the target)")
    t.add_argument("--device", default="local", help="where trials are timed: local (default), or the target's "
                   "device as edgec profile takes it (ssh://USER@HOST for a Jetson)")
    t.add_argument("--metric", action="append", default=[], metavar="NAME|OUTPUT=NAME", help="as for compile")
    t.add_argument("--runs", type=int, default=50, help="timed runs per trial (default 50)")
    t.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    t.add_argument("--output", "-o", metavar="OUT", help="output folder (default edgec-out/tune-<model>-<target>)")
    t.add_argument("--json", action="store_true", help="print tune.json")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    t.set_defaults(func=_tune)


def _add_board_command(sub: argparse._SubParsersAction) -> None:
    bo = sub.add_parser("board", help="an emulated ARM board (qemu-user) serving TVM RPC: `board setup`, `board start`")
    bo.add_argument("action", choices=["setup", "start"], help="setup: build it (idempotent); start: serve (Ctrl-C stops)")
    bo.add_argument("--port", type=int, default=9090, help="TVM RPC port (default 9090)")
    bo.add_argument("--cpu", help="QEMU CPU model (default: the --target's qemu_cpu, else cortex-a72)")
    bo.add_argument("--target", "-t", help="emulate this target's CPU (e.g. rpi4 -> cortex-a72, rk3588 -> cortex-a76)")
    bo.add_argument("--key", help="register with --tracker under this key (e.g. rpi4)")
    bo.add_argument("--tracker", metavar="HOST:PORT", help="TVM RPC tracker to register with")
    bo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; anything else warns)")
    bo.set_defaults(func=_board)


def _add_targets_command(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("targets", help="list targets, or `targets show NAME`")
    t.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    t.add_argument("name", nargs="?")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_targets)


def _add_inspect_command(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("inspect", help="show a model's inputs, outputs, ops and provenance")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_inspect)


def _compile(args: argparse.Namespace) -> int:
    calib = CalibrationSet(args.calib, limit=args.calib_samples, seed=args.calib_seed,
                           recipe=args.calib_recipe, labels=args.labels) if args.calib else None
    build = compile(args.model, target=args.target, precision=args.precision, calibration=calib,
                    input_shapes=parse_input_shapes(args.input_shape),
                    input_values=parse_input_values(args.input_value), output_dir=args.output,
                    max_accuracy_drop=args.max_accuracy_drop, calibration_method=args.calib_method,
                    weight_rounding=args.weight_rounding, range_search=args.range_search, prune=args.prune,
                    profile_runs=args.runs, metric=metrics.parse_spec(args.metric), progress=not args.quiet,
                    calibration_samples=args.calib_subset, keep_float=parse_node_list(args.keep_float),
                    dla=args.dla, gpu_fallback=args.gpu_fallback, use_cache=not args.no_cache,
                    accept_inaccurate=args.accept_inaccurate)
    if args.json:
        print(json.dumps(build.summary(), indent=2))
        return EXIT_OK
    if build.report.get("profile"):
        print(Profile.from_json(build.report["profile"]).table())
        print()
    acc = build.report.get("accuracy") or {}
    if "outputs" in acc:
        print("\n".join(_accuracy_lines(acc)))
    elif "skipped" in acc:
        print(f"accuracy: NOT CHECKED: {acc['skipped']}")
    if acc.get("ok") is False:
        print(f"edgec: WARNING: kept with --accept-inaccurate although it fails its check ({acc['criterion']})",
              file=sys.stderr)
    for name, variant in (build.report.get("comparison") or {}).items():
        lab = variant["accuracy"].get("labelled")
        agreement = variant["accuracy"].get("agreement") or {}
        score = (f"{lab['metric']} {lab['value']:.2f}" if lab else
                 f"{variant['accuracy'].get('metric')} agreement {next(iter(agreement.values())):.2f}" if agreement
                 else f"cosine {variant['accuracy'].get('cosine_mean', float('nan')):.6f}")
        print(f"{name:6} {score}, latency p50 {variant['latency_ms_p50']:.3f} ms, artifact "
              f"{variant['artifact_bytes'] / 1e6:.2f} MB")
    mixed = build.report.get("mixed_precision")
    if mixed:
        print(f"mixed: {len(mixed['float_layers'])} layers kept in float, {mixed['int8_layers']} in int8; budget "
              f"{'met' if mixed['met'] else 'NOT met'} ({mixed['metric']}: fp32 {mixed['fp32']:.2f}, "
              f"int8 {mixed['int8']:.2f}, mixed {mixed['mixed']:.2f})")
    print(f"wrote {build.output_dir}/ (report: {build.output_dir / 'report.html'})")
    return EXIT_OK


def _accuracy_lines(acc: dict) -> list[str]:
    """The accuracy check as the CLI prints it: one line per output in its metric, the labelled score."""
    lines = [f"accuracy vs the fp32 reference ({acc['data']}):"]
    for row in acc["outputs"]:
        lines.append(f"  {row['name']:<24} {row['metric']:>8} {row['agreement']:7.2f} points  cosine "
                     f"{row['cosine_mean']:.6f}  max abs {row['max_abs_error']:.3g}  ({row['why']})")
    if "labelled" in acc:
        lab = acc["labelled"]
        lines.append(f"  against the labels: {lab['metric']} {lab['value']:.2f} (fp32 {lab['reference']:.2f}, drop "
                     f"{lab['drop_points']:.2f} +- {lab['standard_error_points']:.2f} points)")
    if "criterion" in acc:
        lines.append(f"  check: {'ok' if acc.get('ok') else 'FAILED'}: {acc['measured']} (wanted {acc['criterion']})")
    return lines


def _profile(args: argparse.Namespace) -> int:
    prof = profile(args.out, device=args.device, runs=args.runs, warmup=args.warmup, trtexec=args.trtexec,
                   trtexec_json=args.trtexec_json)
    if args.json:
        print(json.dumps(prof.to_json(), indent=2))
        return EXIT_OK
    print(prof.table())
    acc = prof.extra.get("accuracy")
    if acc and "task_metric" in acc:
        print("\n".join(_accuracy_lines(acc["task_metric"])).replace("accuracy vs", "device outputs vs", 1))
    elif acc:
        print(f"outputs vs ONNX Runtime: max abs error {acc['max_abs_error']:.3g} "
              f"({'ok' if acc.get('ok') else 'MISMATCH'})")
    return EXIT_OK


def _tune(args: argparse.Namespace) -> int:
    trials = args.trials if args.trials is not None or args.time_budget is not None else 30
    result = tune(args.model, target=args.target, calibration=CalibrationSet(args.calib) if args.calib else None,
                  max_accuracy_drop=args.max_accuracy_drop, trials=trials, time_budget=args.time_budget,
                  storage=args.storage, study_name=args.study, output_dir=args.output, device=args.device,
                  metric=metrics.parse_spec(args.metric), profile_runs=args.runs, seed=args.seed,
                  progress=not args.quiet)
    s = result.summary
    if args.json:
        print(json.dumps(s, indent=2))
        return EXIT_OK
    done = [t for t in s["trials"] if t["state"] == "COMPLETE"]
    print(f"{len(done)} trials finished in {s['wall_s']:.0f}s ({s['cache_hits']} from the build cache, "
          f"{s['duplicates_pruned']} duplicates and {s['hopeless_pruned']} hopeless prunings skipped); Pareto front: "
          f"{', '.join(f'#{n}' for n in s['front'])}")
    if s.get("latency_note"):
        print(f"note: {s['latency_note']}")
    best = s["recommended"]
    print(f"recommended: #{best['number']} {best['label']}: {best['objectives']['latency_ms']:.3f} ms, drop "
          f"{best['objectives']['drop_points']:.2f} points -> {result.output_dir / 'best'}")
    versus = s.get("versus_default_int8")
    if versus:
        print(f"vs default int8 (#{versus['default_int8']}): latency x{versus['latency_ratio']:.3f}, drop "
              f"{versus['drop_difference_points']:+.2f} points")
    print(f"reproduce: {best['command']}")
    print(f"wrote {result.output_dir}/tune.json, pareto.png, report.html")
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    print(f"wrote {build_engine(args.out, device=args.device)}")
    return EXIT_OK


def _board(args: argparse.Namespace) -> int:
    if args.action == "setup":
        board.setup()
        return EXIT_OK
    cpu = args.cpu
    if cpu is None and args.target:
        cpu = load_target(args.target).options.get("qemu_cpu")
    return board.serve(args.port, cpu or "cortex-a72", key=args.key, tracker=args.tracker, host=args.host)


def _targets(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise _usage("edgec targets show NAME")
        t = load_target(args.name)
        print(json.dumps(t.to_json(), indent=2))
        return EXIT_OK
    targets = list_targets()
    if args.json:
        print(json.dumps([t.to_json() for t in targets], indent=2))
        return EXIT_OK
    rows = [(t.name, t.backend, t.arch, ",".join(t.precisions), ",".join(t.aliases)) for t in targets]
    header = ("target", "backend", "arch", "precisions", "aliases")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    ops = Counter(n.op_type for n in model.proto.graph.node)
    sources = node_sources(model.proto)
    with_module = sum(1 for n in model.proto.graph.node if sources[n.name if n.name else n.output[0]].module is not None)
    info = {"model": args.model, "opset": {o.domain or "ai.onnx": o.version for o in model.proto.opset_import},
            "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
            "inputs": [s.to_json() for s in model.inputs], "outputs": [s.to_json() for s in model.outputs],
            "nodes": len(model.proto.graph.node), "ops": dict(ops.most_common()),
            "nodes_with_module_path": with_module, "sha256": model.provenance["sha256"]}
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    for k in ("model", "producer", "opset", "nodes", "nodes_with_module_path", "sha256"):
        print(f"{k:24} {info[k]}")
    for kind in ("inputs", "outputs"):
        for s in info[kind]:
            print(f"{kind[:-1]:24} {s['name']} {s['dtype']}[{'x'.join(map(str, s['shape']))}]")
    print("ops".ljust(24), ", ".join(f"{k} {v}" for k, v in ops.most_common()))
    return EXIT_OK


def parse_node_list(values: Sequence[str]) -> tuple[str, ...]:
    """--keep-float's node names: comma lists, repeatable; blanks dropped, order kept (CompileOptions keeps each
    name once)."""
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


def _usage(msg: str) -> EdgecError:

    return ConfigError(f"usage: {msg}")


if __name__ == "__main__":
    sys.exit(main())
