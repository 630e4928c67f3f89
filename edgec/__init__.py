"""edgec: compile, quantize and profile models for edge boards.

    import edgec
    build = edgec.compile("model.onnx", target="intel-cpu", calibration="samples.npz")
    print(build.profile().table())

Importing edgec needs only onnx; each backend imports its SDK when used.
"""
from . import isolation  # noqa: F401  first: it turns ONNX Runtime's telemetry off before anything imports onnxruntime
from ._version import __version__
from .calibration import CalibrationSet
from .errors import AccuracyCheckFailed, BackendUnavailable, BuildError, ConfigError, EdgecError, PassError
from .model import Model, load_model
from .pipeline import Build, compile, profile
from .profile import LatencyStats, LayerRow, Profile
from .prune import PruneResult, prune
from .target import Target, list_targets, load_target
from .tune import TuneResult, tune

__all__ = [
    "__version__", "compile", "profile", "prune", "PruneResult", "load_target", "list_targets", "load_model", "Build", "Model", "Target",
    "Profile", "LayerRow", "LatencyStats", "CalibrationSet", "EdgecError", "ConfigError", "BackendUnavailable",
    "BuildError", "PassError", "AccuracyCheckFailed", "tune", "TuneResult",
]
