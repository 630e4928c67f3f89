"""The search space of `edgec tune`: what one trial compiles (`TrialConfig`) and what a target allows
(`search_space`)."""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .backends import Backend
from .errors import ConfigError
from .passes.calibrate import OBSERVERS
from .passes.ptq import MIN_CALIBRATION_SAMPLES, WEIGHT_ROUNDINGS
from .target import Target
from .tune_pruning import PruningChoices

SAMPLE_COUNTS = (64, 128, 256, 512)
RANGE_SEARCHES = (0, 16, 64)
FLOAT_LAYERS = (0, 1, 2, 4, 8)  # int8 with the first k layers of the mixed search's sensitivity ranking in float


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search space: what one compile is asked to do."""

    precision: str
    calibration_method: str | None = None
    calibration_samples: int | None = None
    weight_rounding: str | None = None
    range_search: int | None = None
    budget: float | None = None  # mixed: the accuracy budget its search keeps layers float for
    float_layers: int = 0  # int8: how many of the study's most sensitive layers stay float (`keep_float`)
    keep_float: tuple[str, ...] = ()
    prune_ratio: float = 0.0  # PyTorch models: the share of channels pruned (tune_pruning.py), and its recovery
    recovery_epochs: int | None = None
    recovery_lr: float | None = None

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def compile_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"precision": self.precision}
        if self.precision in ("int8", "mixed"):
            options.update(calibration_method=self.calibration_method, calibration_samples=self.calibration_samples,
                           weight_rounding=self.weight_rounding, range_search=self.range_search)
        if self.precision == "mixed":
            options["max_accuracy_drop"] = self.budget
        if self.keep_float:
            options["keep_float"] = self.keep_float
        return options

    def label(self) -> str:
        pruned = (f" pruned{self.prune_ratio:g} e{self.recovery_epochs} lr{self.recovery_lr:g}"
                  if self.prune_ratio else "")
        if self.precision not in ("int8", "mixed"):
            return self.precision + pruned
        parts = [self.precision, self.calibration_method, f"n{self.calibration_samples}", self.weight_rounding,
                 f"rs{self.range_search}"]
        extra = f" b{self.budget:g}" if self.precision == "mixed" else f" float{self.float_layers}" if self.float_layers else ""
        return " ".join(str(p) for p in parts) + extra + pruned

    def command(self, model: str, target: str, calib: str | None, out: str) -> str:
        """The `edgec compile` line that builds this configuration from `model` (for a pruned configuration: the
        pruned model, OUT/pruned/<key>.onnx)."""
        words = ["edgec", "compile", model, "--target", target, "--precision", self.precision]
        if calib:
            words += ["--calib", calib]
        if self.precision in ("int8", "mixed"):
            words += ["--calib-method", str(self.calibration_method), "--calib-subset", str(self.calibration_samples),
                      "--weight-rounding", str(self.weight_rounding), "--range-search", str(self.range_search)]
        if self.precision == "mixed":
            words += ["--max-accuracy-drop", f"{self.budget:g}"]
        if self.keep_float:
            words += ["--keep-float", ",".join(self.keep_float)]
        return " ".join(shlex.quote(w) for w in [*words, "-o", out])


@dataclass(frozen=True)
class SearchSpace:
    """What a target allows: each tuple is one parameter's choices (empty: not searched)."""

    precisions: tuple[str, ...]
    calibration_methods: tuple[str, ...] = ()
    calibration_samples: tuple[int, ...] = ()
    weight_roundings: tuple[str, ...] = ()
    range_searches: tuple[int, ...] = ()
    budgets: tuple[float, ...] = ()
    float_layers: tuple[int, ...] = ()  # int8: with the mixed search's most sensitive layers float (0: none)
    prune_ratios: tuple[float, ...] = ()  # besides 0 (not pruned)
    recovery_epochs: tuple[int, ...] = ()
    recovery_lrs: tuple[float, ...] = ()
    pruning_absent: str | None = None  # why pruning is not searched

    def suggest(self, trial: Any) -> TrialConfig:
        """The trial's configuration; int8 parameters only for int8 and mixed, recovery parameters only when
        pruned (a conditional space)."""
        precision = trial.suggest_categorical("precision", list(self.precisions))
        config = TrialConfig(precision)
        if precision in ("int8", "mixed"):
            config = TrialConfig(
                precision, trial.suggest_categorical("calibration_method", list(self.calibration_methods)),
                trial.suggest_categorical("calibration_samples", list(self.calibration_samples)),
                trial.suggest_categorical("weight_rounding", list(self.weight_roundings)),
                trial.suggest_categorical("range_search", list(self.range_searches)),
                trial.suggest_categorical("budget", list(self.budgets)) if precision == "mixed" else None,
                trial.suggest_categorical("float_layers", list(self.float_layers))
                if precision == "int8" and self.float_layers else 0)
        ratio = trial.suggest_categorical("prune_ratio", [0.0, *self.prune_ratios]) if self.prune_ratios else 0.0
        if not ratio:
            return config
        return replace(config, prune_ratio=ratio,
                       recovery_epochs=trial.suggest_categorical("recovery_epochs", list(self.recovery_epochs)),
                       recovery_lr=trial.suggest_categorical("recovery_lr", list(self.recovery_lrs)))

    def size(self) -> int:
        """How many distinct configurations the space holds."""
        quantized = (len(self.calibration_methods) * len(self.calibration_samples) * len(self.weight_roundings)
                     * len(self.range_searches))
        per_precision = {"mixed": len(self.budgets), "int8": max(1, len(self.float_layers))}
        precisions = sum(quantized * per_precision[p] if p in per_precision else 1 for p in self.precisions)
        return precisions * (1 + len(self.prune_ratios) * len(self.recovery_epochs) * len(self.recovery_lrs))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "configurations": self.size()}


def search_space(target: Target, backend: Backend, calibration_count: int, max_accuracy_drop: float,
                 cpu_flags: frozenset[str] = frozenset(), pruning: PruningChoices = PruningChoices()) -> SearchSpace:
    """The configurations `target` allows: its precisions that its backend builds and its hardware computes
    natively (bf16/fp16 on CPUs only with the instructions), int8 and mixed only with calibration data and a
    Q/DQ placement; each of them dense or pruned as `pruning` allows. ConfigError when no precision is left."""
    precisions = [p for p in ("fp32", "fp16", "bf16", "int8", "mixed")
                  if p in target.precisions and p in backend.capabilities.precisions]
    if backend.name == "openvino":  # without the instructions OpenVINO computes these in fp32 or bf16
        precisions = [p for p in precisions if (p != "bf16" or {"avx512_bf16", "amx_bf16"} & cpu_flags)
                      and (p != "fp16" or "avx512_fp16" in cpu_flags)]
    if calibration_count < MIN_CALIBRATION_SAMPLES or backend.qdq_placement(target) is None:
        precisions = [p for p in precisions if p not in ("int8", "mixed")]
    if not precisions:
        raise ConfigError(f"Nothing to search on {target.name}: none of its precisions ({', '.join(target.precisions)}) "
                          f"is built by {backend.name} here; int8 and mixed need --calib with at least "
                          f"{MIN_CALIBRATION_SAMPLES} samples.")
    pruned = dict(prune_ratios=pruning.ratios, recovery_epochs=pruning.epochs, recovery_lrs=pruning.lrs,
                  pruning_absent=pruning.absent)
    if not {"int8", "mixed"} & set(precisions):
        return SearchSpace(tuple(precisions), **pruned)
    counts = tuple(n for n in SAMPLE_COUNTS if n < calibration_count) + (calibration_count,)
    # mixed searches for the user's budget only: a tighter one is below what its 256 samples resolve (0.39 points
    # a sample), and its greedy search then keeps layer after layer float (12+ minutes on MobileNetV2 at 224)
    budgets = (max_accuracy_drop,)
    # int8 with float layers from the ranking that mixed's search measures (so only with mixed in the space)
    float_layers = FLOAT_LAYERS if {"int8", "mixed"} <= set(precisions) else ()
    return SearchSpace(tuple(precisions), tuple(OBSERVERS), counts[-4:], tuple(WEIGHT_ROUNDINGS), RANGE_SEARCHES,
                       budgets if "mixed" in precisions else (), float_layers, **pruned)


def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (Linux /proc/cpuinfo); empty where unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
