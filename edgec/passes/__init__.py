"""Graph passes: Model -> Model. A pass never imports a backend SDK.

Each pass is a frozen dataclass with `name`, `config()` (recorded in the manifest) and `run(model)`.
"""
from .cleanup import CleanupPass

__all__ = ["CleanupPass"]
