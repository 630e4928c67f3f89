"""The Backend protocol and the Artifact it builds."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..model import Model
from ..profile import Profile
from ..target import Target

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Artifact:
    """What a backend wrote into the output folder.

    `files` are relative to the folder; `config` is what the runtime needs to load it the way it was
    built (e.g. OpenVINO's inference precision); `layer_map` maps backend layers to ONNX node names
    where the build already knows it (OpenVINO only knows after compiling on the device).
    """

    backend: str
    precision: str
    files: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    layer_map: dict[str, list[str]] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]

    def versions(self) -> dict[str, str]:
        """SDK versions; raises BackendUnavailable with the install hint when the SDK is missing."""

    def build(self, model: Model, target: Target, precision: str, out_dir: Path) -> Artifact:
        """Write the deployable artifact for `target` into `out_dir` (model.onnx is already there)."""

    def can_run_here(self, target: Target) -> bool:
        """True when this machine can execute the artifact (for the built-in accuracy check and profile)."""

    def runner(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        """Load the artifact and return feeds -> outputs."""

    def profile(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
        """Time the artifact and return per-layer rows with `onnx_nodes` filled."""
