"""`edgec tune` on the MobileNetV2 / Fashion-MNIST probe at 224x224 (benchmarks/fmnist_probe.py), intel-cpu.

    python -m benchmarks.tune_probe [--trials 30] [--budget 0.5] [--out DIR] [--rerun]

Runs `edgec tune MODEL --target intel-cpu --calib DATA --max-accuracy-drop 0.5 --trials 30` (512 calibration
images; every trial scored on 1,000 held-out test images against their labels), then prints the front, the
recommended build against the default int8 anchor, the wall time and the build cache's hits. `--rerun` tunes
again into a new study with the same seed: the same configurations, answered by the build cache.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=Path.home() / ".cache" / "edgec" / "bench" / "tune-probe-224")
    p.add_argument("--rerun", action="store_true", help="tune again into a new study: the build cache answers")
    args = p.parse_args()
    probe = build_probe(resolution=224)
    print(f"probe: {probe.onnx_path} (fp32 {probe.fp32_accuracy:.4f} on its test images); {platform.processor()}")
    if args.out.exists() and not args.rerun:
        shutil.rmtree(args.out)
    wall, summary = run_tune(probe.onnx_path, probe.data_path, args.out, args.trials, args.budget,
                             "probe-rerun" if args.rerun else "probe")
    print(describe(summary, wall))


if __name__ == "__main__":
    main()
