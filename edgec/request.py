"""What a compile is asked to do: `CompileOptions` (checked before any work) and `CompileRequest` (with the
loaded model and the SDK versions). A request's canonical form is its build cache key: an option that is part
of a compile is part of the request, and so of the key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Sequence

from . import cache
from ._version import __version__
from .calibration import CalibrationSet, recipe_fingerprint
from .errors import ConfigError
from .model import Model
from .passes.calibrate import OBSERVERS
from .passes.ptq import WEIGHT_ROUNDINGS
from .passes.sparsity import WeightSparsityPass, parse_prune_spec
from .target import Target

@dataclass(frozen=True)
class CompileOptions:
    """Every choice of a compile except the model; construction checks them (ConfigError, before any work)."""

    target: Target
    precision: str
    calibration: CalibrationSet | None = None
    calibration_method: str = "percentile"
    weight_rounding: str = "gptq"
    range_search: int = 64
    max_accuracy_drop: float | None = None
    prune: str | None = None
    profile_runs: int = 100
    metric: Any = None  # metrics.for_model's spec: None, a name, {output: name} or a callable
    calibration_samples: int | None = None  # a seeded subset of the calibration split; validation unchanged
    keep_float: Sequence[str] = ()  # int8: ONNX node names of the quantization plan that stay in float

    def __post_init__(self) -> None:
        tgt, precision = self.target, self.precision
        if precision not in tgt.precisions:
            raise ConfigError(f"Target {tgt.name} cannot run {precision}: it supports {', '.join(tgt.precisions)}. "
                              f"({tgt.description})")
        if precision in ("int8", "mixed") and self.calibration is None:
            raise ConfigError(f"--precision {precision} needs calibration data: --calib PATH (.npz/.npy file or "
                              "folder), or calibration=... in Python.")
        if not isinstance(self.range_search, int) or self.range_search < 0:
            raise ConfigError(f"range_search must be a sample count >= 0 (0 turns it off), got {self.range_search!r}.")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ConfigError(f"Unknown weight rounding '{self.weight_rounding}': choose "
                              f"{' or '.join(WEIGHT_ROUNDINGS)}.")
        if self.calibration_method not in OBSERVERS:
            raise ConfigError(f"Unknown calibration method '{self.calibration_method}': choose "
                              f"{', '.join(OBSERVERS)}.")
        if precision == "mixed" and self.max_accuracy_drop is None:
            raise ConfigError("--precision mixed needs a budget: --max-accuracy-drop POINTS (e.g. 0.5).")
        if self.calibration_samples is not None and (not isinstance(self.calibration_samples, int)
                                                     or self.calibration_samples < 1):
            raise ConfigError(f"calibration_samples must be a count >= 1, got {self.calibration_samples!r}.")
        if not isinstance(self.profile_runs, int) or self.profile_runs < 1:
            raise ConfigError(f"--runs must be at least 1 (got {self.profile_runs!r}).")
        self._check_keep_float()
        self.sparsity  # parses --prune now: a bad spec fails before any work

    def _check_keep_float(self) -> None:
        """keep_float becomes a tuple of node names (a frozen dataclass: set through object.__setattr__)."""
        names = (self.keep_float,) if isinstance(self.keep_float, str) else self.keep_float
        try:
            names = tuple(names)
        except TypeError:
            names = (names,)
        if not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"keep_float must be ONNX node names (strings), got {self.keep_float!r}.")
        if names and self.precision != "int8":
            raise ConfigError(f"--keep-float is for --precision int8; mixed chooses its own float layers (got "
                              f"--precision {self.precision}): drop --keep-float, or build int8.")
        object.__setattr__(self, "keep_float", tuple(dict.fromkeys(names)))

    @cached_property
    def sparsity(self) -> WeightSparsityPass | None:
        return parse_prune_spec(self.prune) if self.prune else None


@dataclass(frozen=True)
class CompileRequest:
    """A model and the options to compile it with, for SDKs of these versions."""

    model: Model
    options: CompileOptions
    sdk: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def canonical(self) -> dict[str, Any] | None:
        """Everything that decides the build, as plain JSON data; None when the calibration data has no stable
        identity (an arbitrary iterable): such a build is not cached."""
        o = self.options
        calibration = None
        if o.calibration is not None:
            data = cache.data_fingerprint(o.calibration.source)  # hashes every calibration file: once
            if data == "uncacheable":
                return None
            calibration = {"data": data, "limit": o.calibration.limit, "seed": o.calibration.seed,
                           "recipe": recipe_fingerprint(o.calibration.recipe),
                           "labels": None if o.calibration.labels is None else cache.data_fingerprint(o.calibration.labels)}
        if callable(o.metric):
            return None  # a Python callable has no stable identity: such a build is not cached
        return {"edgec": __version__, "code": cache.code_fingerprint(), "sdk": dict(self.sdk),
                "model": self.model.sha256(),
                "input_values": self.model.provenance.get("input_values"), "target": o.target.to_json(), "precision": o.precision,
                "calibration": calibration, "calibration_method": o.calibration_method,
                "weight_rounding": o.weight_rounding, "range_search": o.range_search,
                "max_accuracy_drop": o.max_accuracy_drop, "prune": o.prune, "profile_runs": o.profile_runs,
                "metric": o.metric, "calibration_samples": o.calibration_samples,
                "keep_float": sorted(o.keep_float)}

    @property
    def cache_key(self) -> str | None:
        if self.canonical is None:
            return None
        text = json.dumps(self.canonical, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]
