"""Data shipped with edgec: board files (`targets/`) and calibration recipes and samples (`calibration/`).

They sit at the top of a source checkout; a wheel carries them inside the package as `edgec/data/<folder>`
(pyproject.toml maps them there). Both are found the same way.
"""
from __future__ import annotations

from pathlib import Path


def shipped(folder: str) -> Path:
    """The shipped data folder `folder` ("targets" or "calibration")."""
    inside = Path(__file__).parent / "data" / folder
    return inside if inside.is_dir() else Path(__file__).resolve().parents[1] / folder
