"""The Backend protocol: everything the pipeline asks of a backend, and the Artifact it builds.

The pipeline calls only what `Backend` declares; `get_backend` refuses a class that lacks any of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, runtime_checkable

import numpy as np

from ..model import Model
from ..passes.qdq import Placement
from ..profile import Profile

if TYPE_CHECKING:  # edgec.target imports BACKENDS to check target files; annotations only here
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


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, whatever the target.

    `precisions`: what it builds (a target may allow fewer). `dynamic_shapes`: builds MIN:OPT:MAX input
    dims. `off_device_check`: how a build is checked where it cannot run (`can_run_here` False):
    "onnx-runtime" runs the artifact's model.onnx here, the same function the device runs on other
    kernels; "none" leaves the check to `edgec profile` on the device. Where it can run, the artifact
    itself is checked. `builds_on_device`: the engine is built on the device (`edgec build OUT`).
    """

    precisions: tuple[str, ...]
    dynamic_shapes: bool = False
    off_device_check: Literal["onnx-runtime", "none"] = "none"
    builds_on_device: bool = False


@runtime_checkable
class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def versions(self) -> dict[str, str]:
        """SDK versions; raises BackendUnavailable with the install hint when the SDK is missing."""

    def build(self, model: Model, target: Target, precision: str, out_dir: Path) -> Artifact:
        """Write the deployable artifact for `target` into `out_dir` (model.onnx is already there)."""

    def can_run_here(self, target: Target) -> bool:
        """True when this machine can execute the artifact (for the built-in accuracy check and profile)."""

    def precision_refusal(self, target: Target, precision: str) -> str | None:
        """Why `precision`, outside `capabilities.precisions`, is refused on `target`; None: no particular reason."""

    def model_refusal(self, model: Model, target: Target) -> str | None:
        """Why `model` cannot be built for `target` (e.g. ops the backend's ONNX reader lacks), naming the nodes
        and a target that can run them; asked before any work. None: nothing known against it."""

    def qdq_placement(self, target: Target) -> Placement | None:
        """Where Q/DQ go so that this backend's int8 kernels fuse them; None for a backend without int8."""

    def wants_fp16_graph(self, target: Target) -> bool:
        """fp16 must be in the ONNX graph (Casts) rather than a build option."""

    def runner(self, out_dir: Path, manifest: dict[str, Any]) -> Runner:
        """Load the artifact and return feeds -> outputs."""

    def profile(self, out_dir: Path, manifest: dict[str, Any], device: str, runs: int, warmup: int) -> Profile:
        """Time the artifact and return per-layer rows with `onnx_nodes` filled."""

    def build_engine(self, out_dir: Path, manifest: dict[str, Any], device: str = "local") -> Path:
        """Build the engine from the bundle on `device` (only where `capabilities.builds_on_device`): "local"
        (this machine) or a device address (ssh://user@host)."""
