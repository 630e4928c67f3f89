"""One `edgec tune` worker for the tests:

    python tune_worker.py MODEL DATA OUT TRIALS [--storage URL --study NAME] [--target T --device D]

MODEL is an .onnx path, or `prunable_cnn` for tests/models.py's PyTorch CNN (pruning is searched). The default
target is intel-cpu without `mixed` (its search scores hundreds of candidates), and each accuracy evaluation is
slowed down (a metric that sleeps SLOW_S per call), so that the tests see trials running side by side and can
kill a worker in the middle of one; `--target T` tunes T with the default metric instead."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import edgec
from edgec.target import TARGETS_DIR

SLOW_S = 0.4


def slow_top1(outputs, truth) -> float:
    """Top-1 agreement with fp32 in points, after a pause."""
    time.sleep(SLOW_S)
    return 100.0 * float(np.mean(np.argmax(outputs[0], -1) == np.argmax(truth[0], -1)))


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("model", "data", "out"):
        p.add_argument(name)
    p.add_argument("trials", type=int)
    p.add_argument("--storage")
    p.add_argument("--study")
    p.add_argument("--target")
    p.add_argument("--device", default="local")
    a = p.parse_args()
    model, example = a.model, None
    if a.model == "prunable_cnn":
        import torch
        from models import prunable_cnn

        model, example = prunable_cnn(), (torch.zeros(1, 3, 16, 16),)
    target, metric = a.target, None
    if target is None:
        target, metric = str(Path(a.out).parent / f"{Path(a.out).name}-cpu-without-mixed.toml"), slow_top1
        Path(target).write_text((TARGETS_DIR / "intel-cpu.toml").read_text()  # one per worker: no write race
                                .replace('name = "intel-cpu"', 'name = "cpu"').replace(', "mixed"', ""))
    edgec.tune(model, target, a.data, trials=a.trials, storage=a.storage, study_name=a.study, output_dir=a.out,
               metric=metric, profile_runs=5, max_accuracy_drop=50.0, progress=False, example_inputs=example,
               device=a.device)


if __name__ == "__main__":
    main()
