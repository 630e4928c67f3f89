"""`edgec tune` on the MobileNetV2 / Fashion-MNIST probe at 224x224 (benchmarks/fmnist_probe.py), intel-cpu.

    python -m benchmarks.tune_probe [--trials 30] [--budget 0.5] [--out DIR] [--rerun]
    python -m benchmarks.tune_probe --torch [--resolution 64] [--trials 16] [--budget 0.5] [--out DIR]

Runs `edgec tune MODEL --target intel-cpu --calib DATA --max-accuracy-drop 0.5 --trials 30` (512 calibration
images; every trial scored on 1,000 held-out test images against their labels), then prints the front, the
recommended build against the default int8 anchor, the wall time and the build cache's hits. `--rerun` tunes
again into a new study with the same seed: the same configurations, answered by the build cache.

`--torch` tunes the probe's PyTorch module instead (fmnist_probe.load_probe_torch) through the Python API,
`edgec.tune(module, "intel-cpu", DATA, example_inputs=(torch.zeros(1, 1, 28, 28),), ...)`: with the module and
the data's held-out split, structured channel pruning (ratio, recovery epochs and learning rate; distilled from
the dense model on the calibration split) is in the search space. It prints the same table, the pruning's own
drop for each pruned trial, and the trials that failed with their errors. `--resolution` picks the probe's
input resolution (default 224, as the ONNX mode; 64 keeps pruning's recovery short on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.fmnist_probe import build_probe


def run_tune(onnx: Path, data: Path, out: Path, trials: int, budget: float, study: str) -> tuple[float, dict]:
    """The CLI as a user runs it; (wall seconds, tune.json)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgec.cli", "tune", str(onnx), "--target", "intel-cpu", "--calib",
                           str(data), "--max-accuracy-drop", str(budget), "--trials", str(trials), "--study", study,
                           "-o", str(out)], text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 4):
        raise SystemExit(f"edgec tune exited {proc.returncode}")
    return wall, json.loads((out / "tune.json").read_text())


def describe(summary: dict, wall: float) -> str:
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    lines = [f"{len(done)} trials in {wall:.0f} s wall ({summary['cache_hits']} answered by the build cache, "
             f"{summary['duplicates_pruned']} duplicate proposals pruned)", "",
             "| # | configuration | latency p50 ms | drop (points, labels) | artifact MB | front |", "|---|---|---|---|---|---|"]
    front = set(summary["front"])
    for t in sorted(done, key=lambda t: t["objectives"]["latency_ms"]):
        o = t["objectives"]
        lines.append(f"| {t['number']} | {t['label']}{' (' + t['anchor'] + ')' if t.get('anchor') else ''} | "
                     f"{o['latency_ms']:.3f} | {o['drop_points']:.2f} | {o['artifact_bytes'] / 1e6:.2f} | "
                     f"{'yes' if t['number'] in front else ''} |")
    best, versus = summary.get("recommended"), summary.get("versus_default_int8")
    if best:
        lines += ["", f"recommended: #{best['number']} {best['label']}, `{best['command']}`"]
    if versus:
        lines.append(f"vs default int8 (#{versus['default_int8']}): latency x{versus['latency_ratio']:.3f}, drop "
                     f"{versus['drop_difference_points']:+.2f} points")
    if summary.get("remeasured_p50_ms"):
        lines.append(f"close calls re-timed (median p50 ms of 5 interleaved rounds): {summary['remeasured_p50_ms']}")
    return "\n".join(lines)


def run_tune_torch(resolution: int, probe, out: Path, trials: int, budget: float, study: str) -> tuple[float, dict]:
    """The Python API on the probe's nn.Module (pruning searched); (wall seconds, tune.json). No configuration
    within the budget still writes tune.json (edgec.AccuracyCheckFailed): it is read all the same."""
    import torch

    import edgec
    from benchmarks.fmnist_probe import load_probe_torch

    module = load_probe_torch(probe).eval()
    t0 = time.perf_counter()
    try:
        edgec.tune(module, "intel-cpu", str(probe.data_path), example_inputs=(torch.zeros(1, 1, 28, 28),),
                   max_accuracy_drop=budget, trials=trials, output_dir=out, study_name=study)
    except edgec.AccuracyCheckFailed as e:
        print(f"edgec.tune: {e}")
    wall = time.perf_counter() - t0
    return wall, json.loads((out / "tune.json").read_text())


def describe_pruning(summary: dict) -> str:
    """The pruned trials' own cost (pruned fp32 vs the dense model, on the held-out samples), the failed trials
    with their errors, and why pruning was not searched when it was not."""
    space = summary.get("space", {})
    lines = [f"search space: {space.get('configurations')} configurations; pruning ratios "
             f"{space.get('prune_ratios')}, recovery epochs {space.get('recovery_epochs')}, recovery lr "
             f"{space.get('recovery_lrs')}"]
    if space.get("pruning_absent"):
        lines.append(f"pruning NOT searched: {space['pruning_absent']}")
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    pruned = [t for t in done if t.get("pruning")]
    lines.append(f"{len(pruned)} of {len(done)} finished trials are pruned configurations")
    if pruned:
        lines += ["", "| # | configuration | pruning's own drop (points) | params | MACs | trial drop | latency p50 ms |",
                  "|---|---|---|---|---|---|---|"]
        for t in sorted(pruned, key=lambda t: t["objectives"]["latency_ms"]):
            pr = t["pruning"]
            lines.append(f"| {t['number']} | {t['label']} | {pr['drop_points']:.2f} | {_counts(pr.get('params'))} | "
                         f"{_counts(pr.get('macs'))} | {t['objectives']['drop_points']:.2f} | "
                         f"{t['objectives']['latency_ms']:.3f} |")
    failed = [t for t in summary["trials"] if t["state"] == "FAIL"]
    for t in failed:
        lines.append(f"FAILED trial {t['number']} ({t['label']}): {t.get('error')}")
    return "\n".join(lines)


def _counts(value) -> str:
    """params / MACs as edgec.prune reports them: [before, after] (kept as given otherwise)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0] / 1e6:.2f}M -> {value[1] / 1e6:.2f}M"
    return f"{value:,}" if isinstance(value, (int, float)) else str(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=Path.home() / ".cache" / "edgec" / "bench" / "tune-probe-224")
    p.add_argument("--rerun", action="store_true", help="tune again into a new study: the build cache answers")
    p.add_argument("--torch", action="store_true",
                   help="tune the probe's PyTorch module through edgec.tune (structured pruning in the space)")
    p.add_argument("--resolution", type=int, default=224, help="the probe's input resolution (default 224)")
    args = p.parse_args()
    if args.torch:
        out = args.out
        if out == p.get_default("out"):
            out = out.with_name(f"tune-probe-torch-{args.resolution}")
        probe = build_probe(resolution=args.resolution)
        print(f"probe: {probe.data_path} (fp32 {probe.fp32_accuracy:.4f} on its test images, {args.resolution}x"
              f"{args.resolution}, PyTorch module); {platform.processor()}")
        if out.exists() and not args.rerun:
            shutil.rmtree(out)
        wall, summary = run_tune_torch(args.resolution, probe, out, args.trials, args.budget,
                                       "probe-torch-rerun" if args.rerun else "probe-torch")
        print(describe(summary, wall))
        print()
        print(describe_pruning(summary))
        print(f"\nresults: {out / 'tune.json'}, {out / 'pareto.png'}")
        return
    probe = build_probe(resolution=args.resolution)
    print(f"probe: {probe.onnx_path} (fp32 {probe.fp32_accuracy:.4f} on its test images); {platform.processor()}")
    if args.out.exists() and not args.rerun:
        shutil.rmtree(args.out)
    wall, summary = run_tune(probe.onnx_path, probe.data_path, args.out, args.trials, args.budget,
                             "probe-rerun" if args.rerun else "probe")
    print(describe(summary, wall))


if __name__ == "__main__":
    main()
