"""Structured pruning as a dimension of `edgec tune` (PyTorch models): its choices, the pruned models, and what
pruning cost in accuracy.

A trial with `prune_ratio` > 0 compiles a pruned copy of the user's nn.Module: edgec.prune removes that share of
every prunable layer's channels (rounded to the target's `round_to`) and recovers by distillation from the dense
model for `recovery_epochs` at `recovery_lr`, training on the calibration split only (the held-out split scores
it). Each pruning configuration is pruned once, into OUT/pruned/<key>.onnx: trials of other precisions reuse it,
and `edgec compile` reproduces the trial from it. It is scored once against the dense model in ONNX Runtime on
the held-out samples, in the task metric (`PrunedModels.drop`). A trial's drop is that plus its build's drop
against the pruned fp32: exact against labels (the scores subtract), an upper estimate without them (losses of
agreement add).
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import accuracy
from .calibration import CalibrationSet, fixed_inputs
from .errors import EdgecError, PassError, brief
from .fileio import write_json_atomic
from .frontend import is_torch, to_model
from .model import Model
from .pipeline import validation_samples
from .prune import prune
from .target import Target

PRUNE_RATIOS = (0.25, 0.5)
RECOVERY_EPOCHS = (1, 3)
RECOVERY_LRS = (3e-4, 1e-3, 3e-3)


@dataclass(frozen=True)
class PruningChoices:
    """The pruning parameters a tune searches (empty: none), and why pruning is left out when it is."""

    ratios: tuple[float, ...] = ()
    epochs: tuple[int, ...] = ()
    lrs: tuple[float, ...] = ()
    absent: str | None = None


def pruning_choices(model: Any, dense: Model, calib: CalibrationSet | None) -> PruningChoices:
    """Pruning is searched for a PyTorch nn.Module with one data input and data with a held-out split."""
    if not is_torch(model, ("Module",)):
        return PruningChoices(absent="channel pruning retrains the model: pass the PyTorch nn.Module (with "
                                     "example_inputs), not its ONNX export")
    fixed = fixed_inputs(dense)
    data_inputs = [s.name for s in dense.inputs if s.name not in fixed]
    if len(data_inputs) != 1:
        return PruningChoices(absent=f"pruning's recovery trains on one input tensor; the model has "
                                     f"{len(data_inputs)} data inputs")
    if calib is None or calib.load(dense.inputs, "validation", fixed) is None:
        return PruningChoices(absent="the data has no held-out split (val_x, val_y in the .npz): recovery "
                                     "trains on the calibration split, so its cost must be scored on other samples")
    if importlib.util.find_spec("torch_pruning") is None:
        return PruningChoices(absent="torch-pruning is not installed: pip install 'edgec[prune]'")
    return PruningChoices(PRUNE_RATIOS, RECOVERY_EPOCHS, RECOVERY_LRS)


def pruning_key(ratio: float, epochs: int, lr: float) -> str:
    return f"r{ratio:g}-e{epochs}-lr{lr:g}"


class PrunedModels:
    """OUT/pruned: one pruned fp32 ONNX model per pruning configuration, and its drop against the dense model
    (`<key>.json`). A lock file per configuration: workers of one machine prune each configuration once."""

    def __init__(self, module: Any, example_inputs: Sequence[Any], dense: Model, calib: CalibrationSet,
                 target: Target, metric: Any, folder: Path, seed: int):
        self.module, self.example_inputs, self.dense, self.calib = module, example_inputs, dense, calib
        self.target, self.metric, self.folder, self.seed = target, metric, folder, seed
        self._reference: tuple[Any, list[np.ndarray], accuracy.Judge] | None = None

    def path(self, ratio: float, epochs: int, lr: float) -> Path:
        """The pruned model's ONNX file (pruned and recovered now, unless an earlier trial did)."""
        key = pruning_key(ratio, epochs, lr)
        path = self.folder / f"{key}.onnx"
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (self.folder / f"{key}.json").is_file():
                self._prune(ratio, epochs, lr, path)
        return path

    def drop(self, path: Path) -> dict[str, Any]:
        """What pruning cost: the pruned model's `drop_points` against the dense model (and its score)."""
        return json.loads(path.with_suffix(".json").read_text())

    def _prune(self, ratio: float, epochs: int, lr: float, path: Path) -> None:
        import torch

        torch.manual_seed(self.seed)
        try:
            result = prune(self.module, ratio, self.example_inputs, round_to=self.target.round_to,
                           data=self._training(), epochs=epochs, lr=lr, measure=False, progress=False)
        except EdgecError:
            raise
        except Exception as e:  # torch-pruning's dependency graph or the distillation loop can't handle the model
            raise PassError(f"Pruning {type(self.module).__name__} ({pruning_key(ratio, epochs, lr)}) failed: "
                            f"{brief(e)}. Channel pruning with distillation suits classifiers (logits [N, C], class "
                            "labels); tune this model from its ONNX file to leave pruning out.") from e
        pruned = to_model(result.model, self.example_inputs)
        pruned.save(path)
        samples, reference, judge = self._dense_reference()
        outputs = accuracy.collect(accuracy.onnx_runtime_runner(pruned.proto), samples)
        compared = accuracy.compare(reference, outputs, samples.labels, judge)
        write_json_atomic(path.with_suffix(".json"), {
            "ratio": ratio, "recovery_epochs": epochs, "recovery_lr": lr, "drop_points": accuracy.drop_points(compared),
            "labelled": compared.get("labelled"), "samples": samples.description,
            "params": result.report.get("params"), "macs": result.report.get("macs")})

    def _training(self) -> tuple[Any, ...]:
        """The calibration split as (inputs[, class labels]) tensors: what the recovery trains on."""
        import torch

        fixed = fixed_inputs(self.dense)
        samples = self.calib.load(self.dense.inputs, "calibration", fixed)
        name = next(s.name for s in self.dense.inputs if s.name not in fixed)
        inputs = torch.from_numpy(np.concatenate([np.asarray(f[name]) for f in samples.feeds]))
        labels = samples.labels
        if isinstance(labels, np.ndarray) and labels.ndim == 1 and len(labels) == len(inputs):
            return inputs, torch.from_numpy(labels.astype(np.int64))
        return (inputs,)

    def _dense_reference(self) -> tuple[Any, list[np.ndarray], accuracy.Judge]:
        """The held-out samples, the dense model's outputs on them (ONNX Runtime) and the metrics that judge them."""
        if self._reference is None:
            samples = validation_samples(self.dense, self.calib)
            reference = accuracy.collect(accuracy.onnx_runtime_runner(self.dense.proto), samples)
            self._reference = (samples, reference, accuracy.Judge.of(self.dense.proto, reference, self.metric))
        return self._reference
