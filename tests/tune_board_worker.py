"""One `edgec tune` worker on ARM boards for the tests: `python tune_board_worker.py DEVICE OUT STORAGE TRIALS`.

A tiny PyTorch conv net (so pruning is searched: TVM builds fp32 only), rpi4 target, each trial timed on the
board the tracker hands out."""
from __future__ import annotations

import sys

import numpy as np
import torch

import edgec
from models import tiny_resnet_and_mobilenet

if __name__ == "__main__":
    device, out, storage, trials = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.manual_seed(0)
    model = tiny_resnet_and_mobilenet()[0].eval()
    rng = np.random.default_rng(0)
    data = {"x": rng.random((32, 3, 16, 16), dtype=np.float32), "val_x": rng.random((16, 3, 16, 16), dtype=np.float32)}
    edgec.tune(model, "rpi4", data, example_inputs=(torch.zeros(1, 3, 16, 16),), trials=trials, storage=storage,
               study_name="boards", output_dir=out, device=device, profile_runs=5, max_accuracy_drop=100.0,
               progress=False)
