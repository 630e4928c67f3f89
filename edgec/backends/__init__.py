"""Backends by listing: name -> "module:Class". Each imports its SDK lazily, inside methods."""
from __future__ import annotations

import importlib

from ..errors import BackendUnavailable
from .base import Artifact, Backend

BACKENDS = {
    "openvino": "edgec.backends.openvino:OpenVINOBackend",
    "tvm": "edgec.backends.tvm:TVMBackend",
}

# Backends that targets name but this release does not ship yet: say so instead of failing obscurely.
_PLANNED = {
    "tensorrt": "the TensorRT backend for NVIDIA Jetson",
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        what = _PLANNED.get(name, f"backend '{name}'")
        raise BackendUnavailable(f"This edgec release does not include {what} yet. "
                                 f"Available backends: {', '.join(BACKENDS)}.")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Artifact", "Backend", "BACKENDS", "get_backend"]
