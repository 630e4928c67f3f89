"""Backends by listing: name -> "module:Class". Each imports its SDK lazily, inside methods."""
from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import Artifact, Backend, Capabilities

BACKENDS = {
    "openvino": "edgec.backends.openvino:OpenVINOBackend",
    "tvm": "edgec.backends.tvm:TVMBackend",
    "tensorrt": "edgec.backends.tensorrt:TensorRTBackend",
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"edgec has no backend '{name}'. Available backends: {', '.join(BACKENDS)}.")
    module, _, cls = BACKENDS[name].partition(":")
    backend = getattr(importlib.import_module(module), cls)()
    if not isinstance(backend, Backend):
        declared = [*Backend.__annotations__, *(m for m in vars(Backend) if not m.startswith("_"))]
        missing = [m for m in declared if not hasattr(backend, m)]
        raise TypeError(f"{BACKENDS[name]} does not implement the Backend protocol: it lacks {', '.join(missing)}")
    return backend


__all__ = ["Artifact", "Backend", "BACKENDS", "Capabilities", "get_backend"]
