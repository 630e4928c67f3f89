"""Backends by listing: name -> "module:Class". Each imports its SDK lazily, inside methods."""
from __future__ import annotations

import importlib

from ..errors import BackendUnavailable
from .base import Artifact, Backend

BACKENDS = {
    "openvino": "edgec.backends.openvino:OpenVINOBackend",
    "tvm": "edgec.backends.tvm:TVMBackend",
    "tensorrt": "edgec.backends.tensorrt:TensorRTBackend",
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailable(f"edgec has no backend '{name}'. Available backends: {', '.join(BACKENDS)}.")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Artifact", "Backend", "BACKENDS", "get_backend"]
