"""One `edgec tune` worker for the tests: `python tune_worker.py MODEL DATA OUT TRIALS [STORAGE STUDY]`.

The target is intel-cpu without `mixed` (its search scores hundreds of candidates), and each accuracy
evaluation is slowed down (a metric that sleeps SLOW_S per call), so that the tests see trials running side
by side and can kill a worker in the middle of one."""
from __future__ import annotations

import sys
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


if __name__ == "__main__":
    model, data, out, trials = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    storage, study = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else (None, None)
    target = Path(out).parent / f"{Path(out).name}-cpu-without-mixed.toml"  # one per worker: no write race
    target.write_text((TARGETS_DIR / "intel-cpu.toml").read_text().replace('name = "intel-cpu"', 'name = "cpu"')
                      .replace(', "mixed"', ""))
    edgec.tune(model, str(target), data, trials=trials, storage=storage, study_name=study, output_dir=out,
               metric=slow_top1, profile_runs=5, max_accuracy_drop=50.0, progress=False)
